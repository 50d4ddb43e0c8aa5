//! `sc-trainer`: train CIFAR ResNets with super-convergence schedules on candle, test the paper's
//! claims, and export ONNX for `sc-runtime`.

/// serde's defaults for the optional fields of a config struct that also has fields a file must
/// give (so the struct cannot be `#[serde(default)]` as a whole): each function reads its field
/// from the struct's one `Default`, so every default value is written once.
///
/// `field_defaults!(model_defaults for ModelConfig { bn_momentum: f64 })` makes
/// `model_defaults::bn_momentum()`, for `#[serde(default = "model_defaults::bn_momentum")]`.
macro_rules! field_defaults {
    ($module:ident for $ty:ty { $($field:ident: $t:ty),* $(,)? }) => {
        mod $module {
            use super::*;
            $(pub fn $field() -> $t {
                <$ty as Default>::default().$field
            })*
        }
    };
}

pub mod checkpoint;
pub mod cli;
pub mod collective;
pub mod config;
pub mod data;
pub mod devcheck;
pub mod device;
pub mod ema;
pub mod export;
pub mod fetch;
pub mod io;
pub mod lrfind;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod reproduce;
pub mod run_dir;
pub mod schedule;
pub mod train;

/// This crate's version, recorded in runs and exported models.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! `sc-trainer`: train CIFAR ResNets with super-convergence schedules on candle, test the paper's
//! claims, and export ONNX for `sc-runtime`.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod devcheck;
pub mod device;
pub mod export;
pub mod io;
pub mod lrfind;
pub mod optim;
pub mod plot;
pub mod reproduce;
pub mod schedule;
pub mod train;

/// This crate's version, recorded in runs and exported models.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

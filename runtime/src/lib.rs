//! `sc-runtime`: run super-convergence image classifiers (ONNX) on the CPU, no candle. tract-onnx
//! parses and plans every model; ResNet-style graphs then run on `sc-kernels` (the trainer's
//! convolutions, AVX-512, AVX2+FMA or portable as the CPU allows) when their logits agree with
//! tract's plan on probe inputs and they run faster than it, and everything else on tract
//! ([`Classifier::executor`] says which and why).
//!
//! ```no_run
//! let clf = sc_runtime::Classifier::load("model.onnx")?;
//! let img = sc_runtime::load_image("cat.png".as_ref())?;
//! for p in clf.classify(&img, 3)? {
//!     println!("{} {:.3}", p.class, p.probability);
//! }
//! # Ok::<(), sc_runtime::RuntimeError>(())
//! ```
//!
//! Bad input is an error naming the file, never a panic: a panic inside tract or an image decoder
//! (some malformed files cause them) comes back as an error. To keep those panics off stderr, the
//! first load or decode installs a panic hook that is silent only while such a call is running on
//! that thread and defers to the previously installed hook otherwise (docs/RELIABILITY.md).

pub mod bench;
/// The dataset readers (`sc-data`), re-exported.
pub use sc_data::dataset as data;
/// Folders of images (`sc-data`), re-exported: layouts, the decoded cache.
pub use sc_data::folder;
/// Decoding and fitting one image as the trainer does (`sc-data`), re-exported.
pub use sc_data::images as data_images;
mod classifier;
mod contract;
mod engine;
mod error;
mod evaluate;
mod executor;
mod guard;
pub mod metadata;
mod model_file;
mod native;
mod noise;
mod preprocess;
mod probe;
pub mod quantize;
mod runner;
#[cfg(feature = "serve")]
pub mod serve;
mod team;

pub use classifier::{
    default_threads, softmax, Classifier, NativeLayout, Prediction, Tta, DEFAULT_CHUNK,
};
pub use contract::{MAX_INPUT_SIDE, MAX_RUN_VALUES};
pub use data::{Dataset, Split};
pub use error::{BoxError, Result, RuntimeError};
pub use evaluate::{ClassAccuracy, Evaluation};
pub use executor::{check_environment, ENGINE_ENV, LAYOUT_ENV};
pub use metadata::{InputSpec, ModelMetadata, Normalization};
pub use model_file::{Dim, ModelInfo, TensorInfo};
pub use preprocess::{
    decode_image, load_image, InputDescription, Preprocessing, MAX_IMAGE_ALLOC, MAX_IMAGE_SIDE,
};

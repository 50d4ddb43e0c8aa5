//! `sc-data`: what the trainer, the model definitions and the runtime must agree on, with no
//! framework underneath (no candle, no tract).
//!
//! - [`dataset`]: readers for the data formats we train and evaluate on (CIFAR binary, IDX).
//! - [`archive`]: the same, found in a directory or read straight from the official `.tar.gz`.
//! - [`metadata`]: the model contract's `sc.*` ONNX metadata: the keys, their typed values
//!   ([`InputSpec`], [`Normalization`]) and the parser ([`ModelMetadata`]).

pub mod archive;
pub mod dataset;
pub mod metadata;

pub use dataset::{DataError, Dataset, Split};
pub use metadata::{InputSpec, MetadataError, ModelMetadata, Normalization};

//! `sc-data`: what the trainer, the model definitions and the runtime must agree on, with no
//! framework underneath (no candle, no tract).
//!
//! - [`dataset`]: readers for the data formats we train and evaluate on (CIFAR binary, IDX).
//! - [`archive`]: the same, found in a directory or read straight from the official `.tar.gz`.
//! - [`folder`]: folders of the user's own images (`DIR/<class>/*`, or `train/`, `val/`), decoded
//!   once into a cache; [`images`]: decoding and fitting one image, shared with the runtime.
//! - [`metadata`]: the model contract's `sc.*` ONNX metadata: the keys, their typed values
//!   ([`InputSpec`], [`Normalization`]) and the parser ([`ModelMetadata`]).

pub mod archive;
pub mod dataset;
pub mod folder;
pub mod images;
pub mod metadata;
pub mod named;

pub use dataset::{DataError, Dataset, Split};
pub use metadata::{InputSpec, MetadataError, ModelMetadata, Normalization, Preprocess, Resize};

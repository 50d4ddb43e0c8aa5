//! The runtime's error type: every variant names the file (model, image or data set) and the problem.

use std::path::PathBuf;

/// A boxed source error (tract's errors are carried this way so no tract type leaks into the API).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong loading a model, preparing an input or running it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The file could not be read at all (missing, permissions, a directory, ...).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable ONNX model (empty, not protobuf, truncated, no graph).
    #[error("{path}: not a usable ONNX model: {problem}")]
    NotOnnx { path: PathBuf, problem: String },
    /// The graph does not follow the image-classifier contract (inputs, shapes, types).
    #[error("{path}: {problem}")]
    Contract { path: PathBuf, problem: String },
    /// An `sc.*` metadata entry is malformed or contradicts the graph.
    #[error("{path}: metadata `{key}`: {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    /// The preprocessing description (ours or the caller's) is missing or inconsistent.
    #[error("{path}: preprocessing: {problem}")]
    Preprocessing { path: PathBuf, problem: String },
    /// tract could not build or optimize a plan for the model.
    #[error("{path}: cannot build an inference plan: {source}")]
    Plan {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// tract failed while running the model.
    #[error("{path}: inference failed: {source}")]
    Inference {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// An image could not be read or decoded, or is unusable.
    #[error("{path}: {problem}")]
    Image { path: PathBuf, problem: String },
    /// A data set could not be read (the reader names the file).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A data set does not fit the model (shape, classes).
    #[error("{path}: {problem}")]
    DatasetMismatch { path: PathBuf, problem: String },
    /// The caller asked for something impossible (zero threads, empty batch list...).
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Converts a tract (anyhow) error into a boxed source error keeping its chain.
pub(crate) fn boxed(e: impl Into<BoxError>) -> BoxError {
    e.into()
}

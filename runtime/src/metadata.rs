//! Our `sc.*` ONNX metadata: the keys, their typed values and the parser live in `sc-data`
//! (the contract the exporter writes to and the runtime reads from); re-exported here.

pub use sc_data::metadata::{
    keys, InputSpec, MetadataError, ModelMetadata, Normalization, Preprocess, Resize, INPUT_NAME,
    OUTPUT_NAME, PREFIX,
};

impl From<MetadataError> for crate::RuntimeError {
    fn from(e: MetadataError) -> Self {
        crate::RuntimeError::Metadata {
            path: e.path,
            key: e.key,
            problem: e.problem,
        }
    }
}

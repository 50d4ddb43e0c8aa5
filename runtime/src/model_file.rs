//! Reading an ONNX file: decoding the protobuf, finding the one image input and one output, and
//! describing the model ([`ModelInfo`]) in plain Rust types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;

use crate::error::{Result, RuntimeError};

/// One dimension of a graph tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Dim {
    Fixed(usize),
    /// A named symbolic dimension such as `"batch"`.
    Symbolic(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type name (`"float32"`, `"int64"`, ...).
    pub element_type: String,
    /// `None` when the graph does not declare a shape.
    pub shape: Option<Vec<Dim>>,
}

/// What an ONNX file holds, read without building a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub ir_version: i64,
    /// The default-domain opset version (0 when not declared).
    pub opset: i64,
    pub producer: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// All `metadata_props`, ours (`sc.*`) and others.
    pub metadata: BTreeMap<String, String>,
    /// Number of nodes per operator type.
    pub op_counts: BTreeMap<String, usize>,
    /// Number of weight tensors and their total element count.
    pub initializers: usize,
    pub weights: u64,
}

/// Reads a file fully, naming it in every error; directories and empty files are refused.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let io = |e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if std::fs::metadata(path).map_err(io)?.is_dir() {
        return Err(RuntimeError::NotOnnx {
            path: path.to_path_buf(),
            problem: "is a directory, expected an .onnx file".into(),
        });
    }
    std::fs::read(path).map_err(io)
}

/// Decodes ONNX protobuf bytes; checks that there is a graph with nodes.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto> {
    let bad = |problem: String| RuntimeError::NotOnnx {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    let proto = pb::ModelProto::decode(bytes).map_err(|e| {
        bad(format!(
            "protobuf decoding failed ({e}); truncated or not ONNX?"
        ))
    })?;
    match &proto.graph {
        Some(g) if !g.node.is_empty() && !g.output.is_empty() => Ok(proto),
        _ => Err(bad(
            "no graph with nodes and outputs (not an ONNX model?)".into()
        )),
    }
}

/// Checks the wiring that tract's ONNX parser takes for granted (it panics on a graph that breaks
/// it): every graph output is a node output, an initializer or a graph input.
pub(crate) fn check_wiring(path: &Path, proto: &pb::ModelProto) -> Result<()> {
    let Some(g) = proto.graph.as_ref() else {
        return Ok(());
    };
    let defined: std::collections::HashSet<&str> = (g.node.iter())
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(g.initializer.iter().map(|t| t.name.as_str()))
        .chain(g.input.iter().map(|i| i.name.as_str()))
        .collect();
    if let Some(o) = g.output.iter().find(|o| !defined.contains(o.name.as_str())) {
        return Err(RuntimeError::Contract {
            path: path.to_path_buf(),
            problem: format!(
                "the graph output `{}` is not produced by any node, weight or input",
                o.name
            ),
        });
    }
    Ok(())
}

fn element_type(t: i32) -> String {
    pb::tensor_proto::DataType::try_from(t)
        .map(|d| match d {
            pb::tensor_proto::DataType::Float => "float32".to_string(),
            pb::tensor_proto::DataType::Double => "float64".to_string(),
            other => other.as_str_name().to_lowercase(),
        })
        .unwrap_or_else(|_| format!("type {t}"))
}

fn tensor_info(v: &pb::ValueInfoProto) -> TensorInfo {
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    });
    let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    TensorInfo {
        name: v.name.clone(),
        element_type: tensor.map_or("unknown".into(), |t| element_type(t.elem_type)),
        shape,
    }
}

impl ModelInfo {
    /// Reads an ONNX file's description (inputs, outputs, metadata, op counts); builds no plan.
    pub fn read(path: &Path) -> Result<ModelInfo> {
        let bytes = read_bytes(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// The description of ONNX bytes held in memory; `name` labels errors (and becomes `path`).
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<ModelInfo> {
        let path = name.as_ref();
        Ok(Self::from_proto(path, &decode(path, bytes)?))
    }

    pub(crate) fn from_proto(path: &Path, proto: &pb::ModelProto) -> ModelInfo {
        let g = proto.graph.as_ref().expect("decode checked the graph");
        let weights: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut op_counts = BTreeMap::new();
        for n in &g.node {
            *op_counts.entry(n.op_type.clone()).or_insert(0) += 1;
        }
        ModelInfo {
            path: path.to_path_buf(),
            ir_version: proto.ir_version,
            opset: (proto.opset_import.iter())
                .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
                .map_or(0, |o| o.version),
            producer: format!("{} {}", proto.producer_name, proto.producer_version)
                .trim()
                .to_string(),
            // Old exporters list weights among the inputs too; they are not inputs to feed.
            inputs: (g.input.iter())
                .filter(|i| !weights.contains(i.name.as_str()))
                .map(tensor_info)
                .collect(),
            outputs: g.output.iter().map(tensor_info).collect(),
            metadata: (proto.metadata_props.iter())
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect(),
            op_counts,
            initializers: g.initializer.len(),
            // Saturating: the dims are the file's word, and may multiply past u64.
            weights: (g.initializer.iter())
                .map(|t| (t.dims.iter()).fold(1u64, |n, &d| n.saturating_mul(d.max(0) as u64)))
                .fold(0, u64::saturating_add),
        }
    }

    /// The single image input `[N, C, H, W]` (float32), or a contract error saying what is wrong.
    pub(crate) fn image_input(&self) -> Result<(&TensorInfo, [Dim; 4])> {
        let bad = |problem: String| RuntimeError::Contract {
            path: self.path.clone(),
            problem,
        };
        let names = |v: &[TensorInfo]| {
            v.iter()
                .map(|t| format!("`{}`", t.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.inputs.len() != 1 {
            return Err(bad(format!(
                "the graph has {} inputs ({}); an image classifier has exactly one",
                self.inputs.len(),
                names(&self.inputs)
            )));
        }
        if self.outputs.len() != 1 {
            return Err(bad(format!(
                "the graph has {} outputs ({}); an image classifier has exactly one (the logits)",
                self.outputs.len(),
                names(&self.outputs)
            )));
        }
        let input = &self.inputs[0];
        if input.element_type != "float32" {
            return Err(bad(format!(
                "input `{}` is {}, expected float32",
                input.name, input.element_type
            )));
        }
        match input.shape.as_deref() {
            Some([n, c, h, w]) if ![c, h, w].iter().any(|d| **d == Dim::Fixed(0)) => {
                Ok((input, [n.clone(), c.clone(), h.clone(), w.clone()]))
            }
            other => Err(bad(format!(
                "input `{}` has shape {}, expected [N, C, H, W]",
                input.name,
                other.map_or("(undeclared)".to_string(), |s| format!(
                    "[{}]",
                    s.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
                ))
            ))),
        }
    }
}

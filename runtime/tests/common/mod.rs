//! Test helpers: tiny ONNX image classifiers built with tract's protobuf types and images in real
//! formats (hand-written PNG). Nothing here reads /work/shared.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;

/// A graph-input dimension.
#[derive(Clone)]
pub enum D {
    N(i64),
    P(&'static str),
}

/// `image [N,C,H,W] -> Conv 1x1 (identity) -> ReduceMean [2,3] -> Gemm(W [C,K], b [K]) -> logits`:
/// logits = (per-channel mean of the input) @ W + b, easy to compute by hand.
#[derive(Clone)]
pub struct Tiny {
    pub channels: usize,
    pub size: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub input_name: String,
    pub input_dims: Vec<D>,
    pub metadata: Vec<(String, String)>,
    pub extra_input: bool,
}

impl Tiny {
    /// Our model: `classes` names, weight = 10 * identity-like map (channel c votes for class c).
    pub fn ours(channels: usize, size: usize, classes: &[&str]) -> Tiny {
        let k = classes.len();
        let mut weight = vec![0.0; channels * k];
        for c in 0..channels.min(k) {
            weight[c * k + c] = 10.0;
        }
        let mut t = Tiny {
            channels,
            size,
            weight,
            bias: vec![0.0; k],
            input_name: "image".into(),
            input_dims: vec![
                D::P("batch"),
                D::N(channels as i64),
                D::N(size as i64),
                D::N(size as i64),
            ],
            metadata: vec![],
            extra_input: false,
        };
        t.metadata = our_metadata(channels, size, classes);
        t
    }

    /// The same graph with no metadata and the input named `input` (as PyTorch exports name it).
    pub fn foreign(channels: usize, size: usize, k: usize) -> Tiny {
        let names: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut t = Tiny::ours(channels, size, &refs);
        t.metadata.clear();
        t.input_name = "input".into();
        t
    }

    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    pub fn set_meta(&mut self, key: &str, value: &str) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.into(), value.into()));
    }

    /// Hand-computed logits for per-channel means `m` (of the values fed to the graph).
    pub fn logits(&self, m: &[f32]) -> Vec<f32> {
        let k = self.classes();
        (0..k)
            .map(|j| {
                self.bias[j]
                    + (0..self.channels)
                        .map(|c| m[c] * self.weight[c * k + j])
                        .sum::<f32>()
            })
            .collect()
    }

    pub fn proto(&self) -> pb::ModelProto {
        let (c, k) = (self.channels as i64, self.classes() as i64);
        let mut conv_w = vec![0.0f32; (c * c) as usize];
        for i in 0..c as usize {
            conv_w[i * c as usize + i] = 1.0;
        }
        let mut inputs = vec![value_info(&self.input_name, &self.input_dims)];
        if self.extra_input {
            inputs.push(value_info("mask", &[D::P("batch"), D::N(1)]));
        }
        let graph = pb::GraphProto {
            name: "tiny".into(),
            node: vec![
                node(
                    "Conv",
                    &[&self.input_name, "conv.w", "conv.b"],
                    "x1",
                    vec![ints("kernel_shape", &[1, 1])],
                ),
                node(
                    "ReduceMean",
                    &["x1"],
                    "x2",
                    vec![ints("axes", &[2, 3]), int("keepdims", 0)],
                ),
                node("Gemm", &["x2", "fc.w", "fc.b"], "logits", vec![]),
            ],
            initializer: vec![
                tensor("conv.w", &[c, c, 1, 1], &conv_w),
                tensor("conv.b", &[c], &vec![0.0; c as usize]),
                tensor("fc.w", &[c, k], &self.weight),
                tensor("fc.b", &[k], &self.bias),
            ],
            input: inputs,
            output: vec![value_info("logits", &[D::P("batch"), D::N(k)])],
            ..Default::default()
        };
        model(graph, &self.metadata)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.proto().encode_to_vec()
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

/// An opset-13 model around `graph` with these metadata entries.
pub fn model(graph: pb::GraphProto, metadata: &[(String, String)]) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "sc-runtime tests".into(),
        graph: Some(graph),
        metadata_props: (metadata.iter())
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn our_metadata(channels: usize, size: usize, classes: &[&str]) -> Vec<(String, String)> {
    let mean = vec![0.5; channels];
    let std = vec![0.25; channels];
    vec![
        ("sc.classes".into(), serde_json::to_string(classes).unwrap()),
        (
            "sc.input".into(),
            format!(
                r#"{{"layout":"NCHW","channels":{channels},"height":{size},"width":{size},"pixel_range":[0.0,1.0],"name":"image"}}"#
            ),
        ),
        // Deliberately not identity: the runtime must not apply it (the graph would do it).
        (
            "sc.normalization".into(),
            serde_json::json!({"mean": mean, "std": std}).to_string(),
        ),
        (
            "sc.architecture".into(),
            r#"{"name":"tiny","config":{}}"#.into(),
        ),
        ("sc.parameters".into(), "42".into()),
        ("sc.val_accuracy".into(), "0.5".into()),
        ("sc.producer".into(), "tests".into()),
    ]
}

pub fn value_info(name: &str, dims: &[D]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                D::N(n) => DimValue::DimValue(*n),
                D::P(p) => DimValue::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

pub fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// A PNG file written by hand (so header fields can lie): colour type 3 (palette) when `palette` is
/// given, else 2 (RGB); 8 bits per sample; `pixels` are palette indices or RGB bytes, row-major.
pub fn png(width: u32, height: u32, palette: Option<&[[u8; 3]]>, pixels: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let bpp = if palette.is_some() { 1 } else { 3 };
    let mut raw = Vec::new();
    for row in pixels.chunks((width as usize * bpp).max(1)) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&raw).unwrap();
    let idat = z.finish().unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, if palette.is_some() { 3 } else { 2 }, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(p) = palette {
        chunk(&mut out, b"PLTE", &p.concat());
    }
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A CIFAR-10 image (planar 3x32x32) filled with one colour.
pub fn solid_cifar(rgb: [u8; 3]) -> Vec<u8> {
    rgb.iter()
        .flat_map(|&v| std::iter::repeat_n(v, 1024))
        .collect()
}

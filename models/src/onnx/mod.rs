//! The ONNX rendering of [`ArchConfig`]: the deployable graph, with the trained weights as
//! initializers named exactly like the candle variables, and our metadata.
//!
//! Contract (docs/DESIGN.md): input `image` float32 `[batch, C, H, W]`, pixels in [0, 1];
//! normalization inside the graph; output `logits` `[batch, classes]`; BatchNorm in inference
//! form; global average pooling as `ReduceMean` over axes [2, 3]; opset 13, IR version 7.

mod graph;
mod proto;

use std::collections::HashMap;

use candle_core::Tensor;
use prost::Message;
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};

use sc_data::metadata::{InputSpec, ModelMetadata};

use crate::config::{ArchConfig, Normalization, Shortcut};
use graph::{attr_float, attr_int, attr_ints, float_value, Dim, GraphBuilder};

/// The opset we emit: accepted by tract-onnx, candle-onnx and onnxruntime, and the last one in which
/// `ReduceMean` takes its axes as an attribute (at opset 18 tract and candle-onnx disagree).
pub const OPSET: i64 = 13;
/// ONNX IR version 7 (ONNX 1.8), what PyTorch writes at opset 13.
pub const IR_VERSION: i64 = 7;
/// Names of the graph input and output (the contract, in `sc-data`).
pub use sc_data::metadata::{INPUT_NAME, OUTPUT_NAME};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the weights have no tensor named '{0}'")]
    MissingWeight(String),
    #[error("weight '{name}' has shape {found:?}, the architecture needs {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("normalization has {found} channels, the model takes {expected}")]
    Normalization { found: usize, expected: usize },
    #[error("{found} class names given, the model has {expected} classes")]
    Classes { found: usize, expected: usize },
    #[error("invalid architecture: {0}")]
    Arch(String),
    #[error("reading weight '{name}': {source}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// What the exporter needs beyond the architecture and the weights.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub normalization: Normalization,
    pub class_names: Vec<String>,
    /// Extra `metadata_props` (for example `sc.recipe`, `sc.val_accuracy`, `sc.producer`).
    pub extra_metadata: Vec<(String, String)>,
}

struct Weights<'a> {
    map: &'a HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn get(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ExportError> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| ExportError::MissingWeight(name.to_string()))?;
        if t.dims() != expected {
            return Err(ExportError::Shape {
                name: name.to_string(),
                found: t.dims().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let wrap = |source| ExportError::Tensor {
            name: name.to_string(),
            source,
        };
        t.to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(wrap)
    }
}

struct Emitter<'a> {
    g: GraphBuilder,
    w: Weights<'a>,
    cfg: &'a ArchConfig,
}

impl Emitter<'_> {
    /// Conv (no bias) + BatchNormalization (inference form), optionally ReLU.
    fn conv_bn(
        &mut self,
        x: &str,
        conv: &str,
        bn: &str,
        (c_in, c_out, k, stride): (usize, usize, usize, usize),
        relu: bool,
    ) -> Result<String, ExportError> {
        let wname = format!("{conv}.weight");
        let w = self.w.get(&wname, &[c_out, c_in, k, k])?;
        self.g.init_f32(&wname, &[c_out, c_in, k, k], &w);
        let p = (k / 2) as i64;
        let y = self.g.node(
            "Conv",
            conv,
            &[x, &wname],
            vec![
                attr_ints("kernel_shape", &[k as i64, k as i64]),
                attr_ints("strides", &[stride as i64, stride as i64]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ],
        );
        let mut bn_inputs = vec![y];
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            let n = format!("{bn}.{leaf}");
            let v = self.w.get(&n, &[c_out])?;
            bn_inputs.push(self.g.init_f32(&n, &[c_out], &v));
        }
        let refs: Vec<&str> = bn_inputs.iter().map(String::as_str).collect();
        let y = self.g.node(
            "BatchNormalization",
            bn,
            &refs,
            vec![attr_float("epsilon", self.cfg.bn_eps as f32)],
        );
        Ok(if relu {
            self.g.node("Relu", &format!("{bn}.relu"), &[&y], vec![])
        } else {
            y
        })
    }

    fn block(
        &mut self,
        x: &str,
        name: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<String, ExportError> {
        let y = self.conv_bn(
            x,
            &format!("{name}.conv1"),
            &format!("{name}.bn1"),
            (c_in, c_out, 3, stride),
            true,
        )?;
        let y = self.conv_bn(
            &y,
            &format!("{name}.conv2"),
            &format!("{name}.bn2"),
            (c_out, c_out, 3, 1),
            false,
        )?;
        let s = if stride == 1 && c_in == c_out {
            x.to_string()
        } else {
            match self.cfg.shortcut {
                Shortcut::A => {
                    // Fixed 0/1 selection: output channel i < c_in copies input channel i.
                    let wname = format!("{name}.shortcut.select");
                    let mut w = vec![0f32; c_out * c_in];
                    for i in 0..c_in.min(c_out) {
                        w[i * c_in + i] = 1.0;
                    }
                    self.g.init_f32(&wname, &[c_out, c_in, 1, 1], &w);
                    self.g.node(
                        "Conv",
                        &format!("{name}.shortcut"),
                        &[x, &wname],
                        vec![
                            attr_ints("kernel_shape", &[1, 1]),
                            attr_ints("strides", &[stride as i64, stride as i64]),
                            attr_ints("pads", &[0, 0, 0, 0]),
                            attr_ints("dilations", &[1, 1]),
                            attr_int("group", 1),
                        ],
                    )
                }
                Shortcut::B => self.conv_bn(
                    x,
                    &format!("{name}.shortcut.0"),
                    &format!("{name}.shortcut.1"),
                    (c_in, c_out, 1, stride),
                    false,
                )?,
            }
        };
        let sum = self
            .g
            .node("Add", &format!("{name}.add"), &[&y, &s], vec![]);
        Ok(self
            .g
            .node("Relu", &format!("{name}.relu"), &[&sum], vec![]))
    }
}

/// Builds the ONNX model of a CIFAR ResNet with the given trained weights.
pub fn resnet_to_onnx(
    cfg: &ArchConfig,
    weights: &HashMap<String, Tensor>,
    opts: &ExportOptions,
) -> Result<ModelProto, ExportError> {
    cfg.validate().map_err(ExportError::Arch)?;
    let c = cfg.in_channels;
    let norm = &opts.normalization;
    if norm.mean.len() != c || norm.std.len() != c {
        return Err(ExportError::Normalization {
            found: norm.mean.len().min(norm.std.len()),
            expected: c,
        });
    }
    if opts.class_names.len() != cfg.num_classes {
        return Err(ExportError::Classes {
            found: opts.class_names.len(),
            expected: cfg.num_classes,
        });
    }
    let mut e = Emitter {
        g: GraphBuilder::default(),
        w: Weights { map: weights },
        cfg,
    };
    // Normalization inside the graph: (x - mean) / std.
    let mean = e.g.init_f32("normalize.mean", &[1, c, 1, 1], &norm.mean);
    let std = e.g.init_f32("normalize.std", &[1, c, 1, 1], &norm.std);
    let x =
        e.g.node("Sub", "normalize.sub", &[INPUT_NAME, &mean], vec![]);
    let x = e.g.node("Div", "normalize", &[&x, &std], vec![]);

    let mut x = e.conv_bn(
        &x,
        "conv1",
        "bn1",
        (c, cfg.widths[0], 3, cfg.stem_stride),
        true,
    )?;
    for (name, c_in, c_out, stride) in cfg.blocks() {
        x = e.block(&x, &name, c_in, c_out, stride)?;
    }
    let pooled = e.g.node(
        "ReduceMean",
        "pool",
        &[&x],
        vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
    );
    let (k, f) = (cfg.num_classes, cfg.widths[2]);
    let fw = e.w.get("fc.weight", &[k, f])?;
    let fb = e.w.get("fc.bias", &[k])?;
    e.g.init_f32("fc.weight", &[k, f], &fw);
    e.g.init_f32("fc.bias", &[k], &fb);
    e.g.node(
        "Gemm",
        OUTPUT_NAME,
        &[&pooled, "fc.weight", "fc.bias"],
        vec![attr_int("transB", 1)],
    );

    let inputs = vec![float_value(
        INPUT_NAME,
        &[
            Dim::Named("batch"),
            Dim::Fixed(c as i64),
            Dim::Fixed(cfg.height as i64),
            Dim::Fixed(cfg.width as i64),
        ],
    )];
    let outputs = vec![float_value(
        OUTPUT_NAME,
        &[Dim::Named("batch"), Dim::Fixed(k as i64)],
    )];
    let graph = e.g.finish(&cfg.name(), inputs, outputs);

    let mut contract = ModelMetadata::new(
        opts.class_names.clone(),
        InputSpec::ours(c, cfg.height, cfg.width),
    );
    contract.normalization = Some(norm.clone());
    contract.architecture = Some(serde_json::json!({ "name": cfg.name(), "config": cfg }));
    contract.parameters = Some(cfg.parameter_count() as u64);
    let mut meta = contract.to_props();
    meta.extend(opts.extra_metadata.iter().cloned());
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "sc-models".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(graph),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// The model as ONNX protobuf bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

//! Static post-training quantization to int8 (`sc-runtime quantize`): the float model's BatchNorms
//! folded into their convolutions (the native executor's folding, `native::fuse`), activation
//! ranges calibrated on training images with tract, and the graph rewritten in the standard ONNX
//! QDQ form (opset 13 or later):
//!
//! - weights of `Conv` and `Gemm`: int8 initializers, one scale per output channel, zero point 0,
//!   read through `DequantizeLinear`; biases int32 with scale `input scale × weight scale`;
//! - activations: uint8 with one scale and zero point per tensor, as `QuantizeLinear →
//!   DequantizeLinear` pairs on every activation input of `Conv`, `Gemm`, `Add` and the pooling
//!   operations, so a convolution reads `DequantizeLinear → Conv` and a residual `DQ, DQ → Add`;
//! - everything else (ReLU, normalization, reshapes) stays as it was, in float.
//!
//! The file keeps its `sc.*` metadata and gains `sc.quantization` ([`KEY`]): the calibration
//! method, the number of images and the layers that stayed float (and why).

mod calibrate;
mod rewrite;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tract_onnx::pb;

use crate::classifier::Classifier;
use crate::data::{Dataset, Split};
use crate::error::{Result, RuntimeError};
use crate::model_file;
use crate::preprocess::Preprocessing;

pub use calibrate::Calibration;

/// The metadata key of the quantization record (JSON, [`Record`]).
pub const KEY: &str = "sc.quantization";

/// Default number of calibration images.
pub const DEFAULT_IMAGES: usize = 1000;

/// How to quantize.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Calibration images, spread evenly over the training split.
    pub images: usize,
    pub calibration: Calibration,
    /// Layers to keep in float: node names, or `first-conv` (the first `Conv`) and `classifier`
    /// (the last `Gemm` or `MatMul`).
    pub keep_float: Vec<String>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            images: DEFAULT_IMAGES,
            calibration: Calibration::MinMax,
            keep_float: Vec::new(),
        }
    }
}

/// A layer (an operation with weights) that stayed float.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FloatLayer {
    pub node: String,
    pub op: String,
    pub reason: String,
}

/// What `sc.quantization` holds.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Record {
    /// `"qdq"`: standard ONNX QuantizeLinear/DequantizeLinear.
    pub format: String,
    /// `"minmax"` or `"percentile"`.
    pub method: String,
    /// The percentile of each activation's values kept (percentile method only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Calibration images, from the training split of `data`.
    pub images: usize,
    /// The calibration data by content: `name@sha256:<16 hex digits>` of its training split (a
    /// known set by name, any other as `data@…`), never a path of the machine that made the file.
    pub data: String,
    pub weights: String,
    pub activations: String,
    /// Operations whose inputs were quantized (convolutions, dense layers, adds, pooling).
    pub quantized_nodes: usize,
    /// BatchNormalizations folded into the convolution before them.
    pub folded_batchnorms: usize,
    pub float_layers: Vec<FloatLayer>,
}

impl Record {
    /// The record of a model's metadata, if it is quantized (`None` for a float model, an error
    /// naming the file for a malformed record).
    pub fn of(info: &model_file::ModelInfo) -> Result<Option<Record>> {
        let Some(v) = info.metadata.get(KEY) else {
            return Ok(None);
        };
        serde_json::from_str(v)
            .map(Some)
            .map_err(|e| RuntimeError::Metadata {
                path: info.path.clone(),
                key: KEY.into(),
                problem: e.to_string(),
            })
    }
}

/// A quantized model: the ONNX bytes and what was done.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub bytes: Vec<u8>,
    pub record: Record,
    /// Top-1 agreement of the int8 model with the float one on the calibration images (tract),
    /// in [0, 1], and the images compared.
    pub agreement: f64,
    pub compared: usize,
    /// Largest absolute logit difference seen in that comparison.
    pub max_logit_diff: f32,
}

/// Opens the training split of `data` for calibration, refusing what is known to be test images
/// (a short name of a test split, a test batch file).
pub fn open_training_set(data: &Path) -> Result<Dataset> {
    let refuse = |problem: &str| RuntimeError::DatasetMismatch {
        path: data.to_path_buf(),
        problem: problem.into(),
    };
    if !data.exists() {
        // A short name: a `-test` name is refused; any other (`cifar10`, `cifar10-train`) reads
        // the training split of the data set it names.
        if let Some(r) = sc_data::named::resolve(data) {
            let (dir, split) = r?;
            if split == Some(Split::Test) {
                return Err(refuse(
                    "names a test split; calibration reads training images only (give the data set, e.g. its directory or training name)",
                ));
            }
            return Ok(Dataset::open(&dir, Split::Train)?);
        }
    } else if data.is_file() {
        let name = (data.file_name())
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.contains("test") || name.starts_with("t10k") {
            return Err(refuse(
                "is a test file; calibration reads training images only (give the data set's directory)",
            ));
        }
    }
    Ok(Dataset::open(data, Split::Train)?)
}

/// Quantizes the model at `model` (ours, or a foreign one with `pre`) on training images of
/// `data`.
pub fn quantize_file(
    model: &Path,
    pre: Option<Preprocessing>,
    data: &Path,
    opts: &QuantizeOptions,
) -> Result<Quantized> {
    let clf = match &pre {
        Some(p) => Classifier::load_with(model, p.clone())?,
        None => Classifier::load(model)?,
    };
    let bytes = model_file::read_bytes(model)?;
    let proto = model_file::decode(model, &bytes)?;
    let set = open_training_set(data)?;
    quantize(&clf, model, proto, &set, data, pre, opts)
}

/// The calibration images: `n` spread evenly over the set.
fn pick(set: &Dataset, n: usize) -> Vec<usize> {
    let len = set.len();
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

fn quantize(
    clf: &Classifier,
    path: &Path,
    proto: pb::ModelProto,
    set: &Dataset,
    data: &Path,
    pre: Option<Preprocessing>,
    opts: &QuantizeOptions,
) -> Result<Quantized> {
    if opts.images == 0 {
        return Err(RuntimeError::InvalidArgument(
            "--images must be at least 1".into(),
        ));
    }
    if let Calibration::Percentile(p) = opts.calibration {
        if !(p > 50.0 && p <= 100.0) {
            return Err(RuntimeError::InvalidArgument(format!(
                "--percentile {p}: expected a number in (50, 100], e.g. 99.99"
            )));
        }
    }
    clf.check_dataset(set)?;
    let idx = pick(set, opts.images);
    let contract = |problem: String| RuntimeError::Contract {
        path: path.to_path_buf(),
        problem,
    };
    let plan = rewrite::Plan::new(proto, &opts.keep_float).map_err(contract)?;
    let images: Vec<f32> = {
        let t = &clf.transform;
        let mut v = vec![0.0; idx.len() * t.image_len()];
        for (k, &i) in idx.iter().enumerate() {
            let n = t.image_len();
            t.planar_bytes(set.image(i), &mut v[k * n..(k + 1) * n]);
        }
        v
    };
    let ranges = calibrate::ranges(
        path,
        plan.float_model(),
        plan.activations(),
        &images,
        clf.transform.image_len(),
        clf.input_chw(),
        clf.fixed_batch(),
        opts.calibration,
    )?;
    let (method, percentile) = match opts.calibration {
        Calibration::MinMax => ("minmax", None),
        Calibration::Percentile(p) => ("percentile", Some(p)),
    };
    let record = Record {
        format: "qdq".into(),
        method: method.into(),
        percentile,
        images: idx.len(),
        // By content (`cifar10@sha256:…`), not by a path of the machine that quantized it.
        data: sc_data::named::DataIdentity::of_training_set(set, None).key(),
        weights: "int8, symmetric, one scale per output channel (zero point 0); int32 biases"
            .into(),
        activations: "uint8, one scale and zero point per tensor".into(),
        quantized_nodes: plan.quantized_nodes(),
        folded_batchnorms: plan.folded_batchnorms(),
        float_layers: plan.float_layers().to_vec(),
    };
    let record_json = serde_json::to_string(&record).expect("the record serializes");
    let out = plan.emit(&ranges, &record_json).map_err(contract)?;
    use prost::Message;
    let bytes = out.encode_to_vec();
    // The result must load (tract); compare it with the float model on the calibration images.
    let name = format!("{} (int8)", path.display());
    let q = match pre {
        Some(p) => Classifier::from_bytes_with(&bytes, &name, p)?,
        None => Classifier::from_bytes(&bytes, &name)?,
    };
    let compared = idx.len().min(256);
    let input = &images[..compared * clf.transform.image_len()];
    let (a, b) = (clf.logits_for_input(input)?, q.logits_for_input(input)?);
    let mut agree = 0;
    let mut max_diff = 0.0f32;
    for (x, y) in a.iter().zip(&b) {
        agree += usize::from(argmax(x) == argmax(y));
        for (u, v) in x.iter().zip(y) {
            max_diff = max_diff.max((u - v).abs());
        }
    }
    let _ = data;
    Ok(Quantized {
        bytes,
        record,
        agreement: agree as f64 / compared.max(1) as f64,
        compared,
        max_logit_diff: max_diff,
    })
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.total_cmp(&v[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// Where `quantize` writes by default: `MODEL-int8.onnx` beside the model.
pub fn default_out(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy());
    model.with_file_name(format!("{stem}-int8.onnx"))
}

//! The native executor: runs the image-classifier graphs this project exports, and CIFAR ResNets
//! exported from PyTorch, on `sc-kernels` (the trainer's convolutions: AVX-512, AVX2+FMA or
//! portable) instead of tract's interpreter. tract stays the loader, the reference and the
//! fallback: a graph is compiled here only when every node is one of the operations below with
//! constant weights, and it is used only after its logits agree with tract's plan on probe inputs
//! and it runs faster than that plan ([`crate::executor`]).
//!
//! Operations (NCHW, float32, the batch axis untouched): `Conv` (square kernel, equal strides and
//! symmetric padding, no groups or dilation, optional bias), `BatchNormalization` (inference form),
//! `Relu`, `Add`, `Sub`/`Mul`/`Div` by a per-channel or scalar constant, `Pad` (zeros),
//! `Slice` (positive steps), `GlobalAveragePool`, `ReduceMean` over H and W, `Flatten`, `Reshape`
//! (to `[batch, features]`), `Gemm`/`MatMul` by constant weights, `Identity`, `Dropout`, `Constant`.
//!
//! Compilation folds BatchNorm into the preceding convolution's weights and bias, and a ReLU into the
//! operation before it, when nothing else reads the intermediate value.

use std::collections::HashMap;

use sc_kernels::conv::{self, Epilogue, Geom, Packed};
use tract_onnx::pb;

use crate::team::Team;

/// Why a graph is left to tract.
pub(crate) type Unsupported = String;

/// A compiled graph: steps over numbered values, each with a per-image shape.
pub(crate) struct Graph {
    steps: Vec<Step>,
    /// Per-image shape of each value.
    shapes: Vec<Vec<usize>>,
    input: usize,
    output: usize,
    classes: usize,
}

enum Step {
    Conv {
        x: usize,
        y: usize,
        /// (cin, h, w, cout, k, stride, pad)
        dims: [usize; 7],
        weight: Vec<f32>,
        packed: Option<Packed>,
        bias: Vec<f32>,
        /// A value added before the ReLU (a residual Add folded in).
        residual: Option<usize>,
        relu: bool,
    },
    /// `y = x · scale[c] + shift[c]` over the first per-image axis.
    Affine {
        x: usize,
        y: usize,
        scale: Vec<f32>,
        shift: Vec<f32>,
        relu: bool,
    },
    Relu {
        x: usize,
        y: usize,
    },
    Add {
        a: usize,
        b: usize,
        y: usize,
        relu: bool,
    },
    /// Zero padding of a `[c, h, w]` image: `begin` per axis (the output shape has the rest).
    Pad {
        x: usize,
        y: usize,
        begin: [usize; 3],
    },
    /// `y[i][j][k] = x[start + i · step]...` per axis of a `[c, h, w]` image.
    Slice {
        x: usize,
        y: usize,
        start: [usize; 3],
        step: [usize; 3],
    },
    /// Mean over H and W of a `[c, h, w]` image.
    Mean {
        x: usize,
        y: usize,
    },
    /// `y = W x + b`, `W` is `[out][in]`.
    Dense {
        x: usize,
        y: usize,
        w: Vec<f32>,
        b: Vec<f32>,
    },
    Copy {
        x: usize,
        y: usize,
    },
}

impl Step {
    fn inputs(&self) -> Vec<usize> {
        match *self {
            Step::Add { a, b, .. } => vec![a, b],
            Step::Conv {
                x,
                residual: Some(r),
                ..
            } => vec![x, r],
            Step::Conv { x, .. }
            | Step::Affine { x, .. }
            | Step::Relu { x, .. }
            | Step::Pad { x, .. }
            | Step::Slice { x, .. }
            | Step::Mean { x, .. }
            | Step::Dense { x, .. }
            | Step::Copy { x, .. } => vec![x],
        }
    }

    fn output(&self) -> usize {
        match *self {
            Step::Conv { y, .. }
            | Step::Affine { y, .. }
            | Step::Relu { y, .. }
            | Step::Add { y, .. }
            | Step::Pad { y, .. }
            | Step::Slice { y, .. }
            | Step::Mean { y, .. }
            | Step::Dense { y, .. }
            | Step::Copy { y, .. } => y,
        }
    }
}

/// The values a step reads: the graph input (the caller's slice) or computed ones.
struct Values<'a> {
    input: (usize, &'a [f32]),
    bufs: &'a [Vec<f32>],
}

impl std::ops::Index<usize> for Values<'_> {
    type Output = [f32];
    fn index(&self, id: usize) -> &[f32] {
        if id == self.input.0 {
            self.input.1
        } else {
            &self.bufs[id]
        }
    }
}

/// A constant tensor: dims and values (floats, or integers as i64).
#[derive(Clone)]
struct Const {
    dims: Vec<usize>,
    f: Vec<f32>,
    i: Vec<i64>,
}

fn read_tensor(t: &pb::TensorProto) -> Result<Const, Unsupported> {
    use pb::tensor_proto::DataType;
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(format!("`{}` keeps its data in an external file", t.name));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = dims.iter().product();
    let raw = |width: usize| -> Result<&[u8], Unsupported> {
        if t.raw_data.len() == n * width {
            Ok(&t.raw_data)
        } else {
            Err(format!(
                "`{}`: {} raw bytes for {n} values",
                t.name,
                t.raw_data.len()
            ))
        }
    };
    let (f, i) = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => {
            let f: Vec<f32> = if !t.float_data.is_empty() {
                t.float_data.clone()
            } else {
                raw(4)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            (f, Vec::new())
        }
        Ok(DataType::Int64) => {
            let i: Vec<i64> = if !t.int64_data.is_empty() {
                t.int64_data.clone()
            } else {
                raw(8)?
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect()
            };
            (Vec::new(), i)
        }
        _ => return Err(format!("`{}` has element type {}", t.name, t.data_type)),
    };
    if f.len().max(i.len()) != n {
        return Err(format!(
            "`{}`: {} values for dims {dims:?}",
            t.name,
            f.len().max(i.len())
        ));
    }
    Ok(Const { dims, f, i })
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_float(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

struct Builder {
    consts: HashMap<String, Const>,
    ids: HashMap<String, usize>,
    shapes: Vec<Vec<usize>>,
    steps: Vec<Step>,
}

impl Builder {
    fn value(&self, name: &str, node: &pb::NodeProto) -> Result<usize, Unsupported> {
        self.ids.get(name).copied().ok_or_else(|| {
            format!(
                "{} `{}` reads `{name}`, which is neither a computed value nor supported as a constant there",
                node.op_type, node.name
            )
        })
    }

    fn konst(&self, name: &str, node: &pb::NodeProto) -> Result<&Const, Unsupported> {
        self.consts.get(name).ok_or_else(|| {
            format!(
                "{} `{}`: `{name}` is not a constant",
                node.op_type, node.name
            )
        })
    }

    /// A new computed value; refuses one larger than the runtime accepts for an input (tract
    /// then decides what to do with the graph).
    fn new_value(&mut self, name: &str, shape: Vec<usize>) -> Result<usize, Unsupported> {
        let size = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&v| v <= crate::contract::MAX_RUN_VALUES);
        if size.is_none() {
            return Err(format!("`{name}` would hold {shape:?} values per image"));
        }
        let id = self.shapes.len();
        self.shapes.push(shape);
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// A per-channel (or scalar) constant as `c` values, if it broadcasts that way over `shape`.
    fn per_channel(&self, k: &Const, shape: &[usize]) -> Option<Vec<f32>> {
        if k.f.is_empty() {
            return None;
        }
        let c = shape.first().copied().unwrap_or(1);
        if k.f.len() == 1 {
            return Some(vec![k.f[0]; c]);
        }
        // [C], [C,1,1] against a 3-D image; [1,C,1,1] against the batch; [C] against a 1-D value.
        let mut d = k.dims.clone();
        if d.len() == shape.len() + 1 && d[0] == 1 {
            d.remove(0);
        }
        let per_channel = d.first() == Some(&c)
            && d.len() <= shape.len()
            && d.iter().skip(1).all(|&v| v == 1)
            && (d.len() == shape.len() || shape.len() == 1);
        per_channel.then(|| k.f.clone())
    }

    fn node(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        let out = node.output.first().cloned().unwrap_or_default();
        let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
        match op {
            "Constant" => {
                let a = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| format!("Constant `{}` without a tensor value", node.name))?;
                let k = read_tensor(a)?;
                self.consts.insert(out, k);
            }
            "Identity" | "Dropout" => {
                if let Some(k) = self.consts.get(input(0)).cloned() {
                    self.consts.insert(out, k);
                } else {
                    let x = self.value(input(0), node)?;
                    let y = self.new_value(&out, self.shapes[x].clone())?;
                    self.steps.push(Step::Copy { x, y });
                }
            }
            "Conv" => {
                let x = self.value(input(0), node)?;
                let w = self.konst(input(1), node)?.clone();
                let s = self.shapes[x].clone();
                let (&[cin, h, wd], &[cout, wcin, kh, kw]) = (s.as_slice(), w.dims.as_slice())
                else {
                    return Err(format!(
                        "Conv `{}`: input {s:?}, weight {:?}",
                        node.name, w.dims
                    ));
                };
                let strides = attr_ints(node, "strides").unwrap_or(vec![1, 1]);
                let pads = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                let dil = attr_ints(node, "dilations").unwrap_or(vec![1, 1]);
                let auto_pad = attr(node, "auto_pad").map_or(&b"NOTSET"[..], |a| &a.s[..]);
                let ok = wcin == cin
                    && kh == kw
                    && attr_int(node, "group", 1) == 1
                    && dil.iter().all(|&d| d == 1)
                    && strides.len() == 2
                    && strides[0] == strides[1]
                    && strides[0] > 0
                    && strides[0] <= 64
                    && kh <= 64
                    && pads.len() == 4
                    && pads.iter().all(|&p| p == pads[0] && (0..=64).contains(&p))
                    && (auto_pad == b"NOTSET" || auto_pad.is_empty());
                if !ok {
                    return Err(format!(
                        "Conv `{}`: only square kernels, equal strides, symmetric padding, no groups or dilation",
                        node.name
                    ));
                }
                let (k, stride, pad) = (kh, strides[0] as usize, pads[0] as usize);
                let g = Geom::new(1, cin, h, wd, cout, k, stride, pad)
                    .ok_or_else(|| format!("Conv `{}`: empty output", node.name))?;
                let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => {
                        let b = self.konst(b, node)?;
                        if b.f.len() != cout {
                            return Err(format!("Conv `{}`: bias of {}", node.name, b.f.len()));
                        }
                        b.f.clone()
                    }
                    None => vec![0.0; cout],
                };
                let y = self.new_value(&out, vec![cout, g.ho, g.wo])?;
                self.steps.push(Step::Conv {
                    x,
                    y,
                    dims: [cin, h, wd, cout, k, stride, pad],
                    weight: w.f,
                    packed: None,
                    bias,
                    residual: None,
                    relu: false,
                });
            }
            "BatchNormalization" => {
                let x = self.value(input(0), node)?;
                let s = self.shapes[x].clone();
                let c = s.first().copied().unwrap_or(0);
                let get = |i: usize| -> Result<Vec<f32>, Unsupported> {
                    let k = self.konst(input(i), node)?;
                    if k.f.len() == c {
                        Ok(k.f.clone())
                    } else {
                        Err(format!("BatchNormalization `{}`: {c} channels", node.name))
                    }
                };
                let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
                let eps = attr_float(node, "epsilon", 1e-5);
                let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
                let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
                let y = self.new_value(&out, s)?;
                self.steps.push(Step::Affine {
                    x,
                    y,
                    scale,
                    shift,
                    relu: false,
                });
            }
            "Relu" => {
                let x = self.value(input(0), node)?;
                let y = self.new_value(&out, self.shapes[x].clone())?;
                self.steps.push(Step::Relu { x, y });
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (input(0), input(1));
                match (self.ids.get(a).copied(), self.ids.get(b).copied()) {
                    (Some(a), Some(b)) if op == "Add" => {
                        if self.shapes[a] != self.shapes[b] {
                            return Err(format!(
                                "Add `{}`: operands of different shapes",
                                node.name
                            ));
                        }
                        let y = self.new_value(&out, self.shapes[a].clone())?;
                        self.steps.push(Step::Add {
                            a,
                            b,
                            y,
                            relu: false,
                        });
                    }
                    (Some(x), None) | (None, Some(x)) => {
                        let const_first = !self.ids.contains_key(a);
                        let kname = if const_first { a } else { b };
                        let s = self.shapes[x].clone();
                        let k = self.konst(kname, node)?;
                        let v = self.per_channel(k, &s).ok_or_else(|| {
                            format!(
                                "{op} `{}`: constant {:?} is not per-channel",
                                node.name, k.dims
                            )
                        })?;
                        let c = v.len();
                        let (scale, shift): (Vec<f32>, Vec<f32>) = match (op, const_first) {
                            ("Add", _) => (vec![1.0; c], v),
                            ("Mul", _) => (v, vec![0.0; c]),
                            ("Sub", false) => (vec![1.0; c], v.iter().map(|t| -t).collect()),
                            ("Sub", true) => (vec![-1.0; c], v),
                            ("Div", false) => (v.iter().map(|t| 1.0 / t).collect(), vec![0.0; c]),
                            _ => return Err(format!("{op} `{}`: constant / value", node.name)),
                        };
                        let y = self.new_value(&out, s)?;
                        self.steps.push(Step::Affine {
                            x,
                            y,
                            scale,
                            shift,
                            relu: false,
                        });
                    }
                    _ => return Err(format!("{op} `{}`: unsupported operands", node.name)),
                }
            }
            "Pad" => {
                let x = self.value(input(0), node)?;
                let mode = attr(node, "mode").map_or(&b"constant"[..], |a| &a.s[..]);
                let pads = match attr_ints(node, "pads") {
                    Some(p) => p,
                    None => self.konst(input(1), node)?.i.clone(),
                };
                if let Some(v) = node.input.get(2).filter(|v| !v.is_empty()) {
                    let v = self.konst(v, node)?;
                    if v.f.iter().any(|&t| t != 0.0) {
                        return Err(format!("Pad `{}`: a non-zero constant", node.name));
                    }
                }
                if node.input.get(3).is_some_and(|a| !a.is_empty()) || mode != b"constant" {
                    return Err(format!(
                        "Pad `{}`: only constant zero padding of every axis",
                        node.name
                    ));
                }
                let s = self.shapes[x].clone();
                if s.len() != 3
                    || pads.len() != 8
                    || pads[0] != 0
                    || pads[4] != 0
                    || pads.iter().any(|&p| p < 0)
                {
                    return Err(format!("Pad `{}`: pads {pads:?} on {s:?}", node.name));
                }
                let begin = [pads[1] as usize, pads[2] as usize, pads[3] as usize];
                let end = [pads[5] as usize, pads[6] as usize, pads[7] as usize];
                let y = self.new_value(
                    &out,
                    (0..3)
                        .map(|i| s[i].saturating_add(begin[i]).saturating_add(end[i]))
                        .collect(),
                )?;
                self.steps.push(Step::Pad { x, y, begin });
            }
            "Slice" => {
                let x = self.value(input(0), node)?;
                let s = self.shapes[x].clone();
                if s.len() != 3 {
                    return Err(format!(
                        "Slice `{}` of a {}-D value",
                        node.name,
                        s.len() + 1
                    ));
                }
                let ints = |i: usize| -> Result<Option<Vec<i64>>, Unsupported> {
                    match node.input.get(i).filter(|v| !v.is_empty()) {
                        Some(v) => Ok(Some(self.konst(v, node)?.i.clone())),
                        None => Ok(None),
                    }
                };
                let starts = ints(1)?.ok_or_else(|| format!("Slice `{}`: no starts", node.name))?;
                let ends = ints(2)?.ok_or_else(|| format!("Slice `{}`: no ends", node.name))?;
                let axes = ints(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = ints(4)?.unwrap_or_else(|| vec![1; starts.len()]);
                if starts.len() != ends.len()
                    || axes.len() != starts.len()
                    || steps.len() != starts.len()
                {
                    return Err(format!("Slice `{}`: inconsistent inputs", node.name));
                }
                let (mut start, mut step, mut shape) = ([0usize; 3], [1usize; 3], s.clone());
                for j in 0..axes.len() {
                    let axis = if axes[j] < 0 {
                        axes[j].saturating_add(4)
                    } else {
                        axes[j]
                    };
                    let st = steps[j];
                    if !(0..4).contains(&axis) || st <= 0 {
                        return Err(format!("Slice `{}`: axis {} step {st}", node.name, axes[j]));
                    }
                    let clamp = |v: i64, dim: i64| {
                        if v < 0 {
                            v.saturating_add(dim).max(0)
                        } else {
                            v.min(dim)
                        }
                    };
                    if axis == 0 {
                        if starts[j] != 0 || ends[j] < i32::MAX as i64 || st != 1 {
                            return Err(format!("Slice `{}` over the batch", node.name));
                        }
                        continue;
                    }
                    let a = axis as usize - 1;
                    let dim = s[a] as i64;
                    let (b, e) = (clamp(starts[j], dim), clamp(ends[j], dim));
                    start[a] = b as usize;
                    step[a] = st as usize;
                    shape[a] = if e > b {
                        ((e - b) as u64).div_ceil(st as u64) as usize
                    } else {
                        0
                    };
                }
                if shape.contains(&0) {
                    return Err(format!("Slice `{}`: empty result", node.name));
                }
                let y = self.new_value(&out, shape)?;
                self.steps.push(Step::Slice { x, y, start, step });
            }
            "GlobalAveragePool" | "ReduceMean" => {
                let x = self.value(input(0), node)?;
                let s = self.shapes[x].clone();
                let keep = op == "GlobalAveragePool" || attr_int(node, "keepdims", 1) == 1;
                if op == "ReduceMean" {
                    let axes = match attr_ints(node, "axes") {
                        Some(a) => a,
                        None => self.konst(input(1), node)?.i.clone(),
                    };
                    let mut axes: Vec<i64> = axes
                        .iter()
                        .map(|&a| if a < 0 { a.saturating_add(4) } else { a })
                        .collect();
                    axes.sort_unstable();
                    if axes != [2, 3] {
                        return Err(format!("ReduceMean `{}` over axes {axes:?}", node.name));
                    }
                }
                if s.len() != 3 {
                    return Err(format!("{op} `{}` of {s:?}", node.name));
                }
                let shape = if keep { vec![s[0], 1, 1] } else { vec![s[0]] };
                let y = self.new_value(&out, shape)?;
                self.steps.push(Step::Mean { x, y });
            }
            "Flatten" | "Reshape" => {
                let x = self.value(input(0), node)?;
                let s = self.shapes[x].clone();
                let total: usize = s.iter().product();
                if op == "Flatten" && attr_int(node, "axis", 1) != 1 {
                    return Err(format!("Flatten `{}` at axis != 1", node.name));
                }
                if op == "Reshape" {
                    let t = self.konst(input(1), node)?.i.clone();
                    let ok = t.len() == 2
                        && matches!(t[0], 0 | -1)
                        && (t[1] == total as i64 || (t[1] == -1 && t[0] == 0));
                    if !ok {
                        return Err(format!("Reshape `{}` to {t:?}", node.name));
                    }
                }
                let y = self.new_value(&out, vec![total])?;
                self.steps.push(Step::Copy { x, y });
            }
            "Gemm" | "MatMul" => {
                let x = self.value(input(0), node)?;
                let s = self.shapes[x].clone();
                let k_in: usize = s.iter().product();
                if s.len() != 1 {
                    return Err(format!("{op} `{}` of a {s:?} value", node.name));
                }
                let b = self.konst(input(1), node)?.clone();
                let trans_b = op == "Gemm" && attr_int(node, "transB", 0) == 1;
                if (op == "Gemm" && attr_int(node, "transA", 0) != 0) || b.dims.len() != 2 {
                    return Err(format!(
                        "{op} `{}`: transposed input or weight dims {:?}",
                        node.name, b.dims
                    ));
                }
                let (alpha, beta) = if op == "Gemm" {
                    (
                        attr_float(node, "alpha", 1.0),
                        attr_float(node, "beta", 1.0),
                    )
                } else {
                    (1.0, 1.0)
                };
                let (rows, cols) = (b.dims[0], b.dims[1]);
                let (k_out, w): (usize, Vec<f32>) = if trans_b {
                    (rows, b.f.iter().map(|v| v * alpha).collect())
                } else {
                    let mut w = vec![0f32; rows * cols];
                    for i in 0..rows {
                        for j in 0..cols {
                            w[j * rows + i] = b.f[i * cols + j] * alpha;
                        }
                    }
                    (cols, w)
                };
                if w.len() != k_out * k_in {
                    return Err(format!(
                        "{op} `{}`: weight {:?} for {k_in} inputs",
                        node.name, b.dims
                    ));
                }
                let bias = match node.input.get(2).filter(|c| !c.is_empty() && op == "Gemm") {
                    Some(c) => {
                        let c = self.konst(c, node)?;
                        match c.f.len() {
                            1 => vec![c.f[0] * beta; k_out],
                            n if n == k_out => c.f.iter().map(|v| v * beta).collect(),
                            _ => return Err(format!("Gemm `{}`: bias {:?}", node.name, c.dims)),
                        }
                    }
                    None => vec![0.0; k_out],
                };
                let y = self.new_value(&out, vec![k_out])?;
                self.steps.push(Step::Dense { x, y, w, b: bias });
            }
            _ => return Err(format!("operation {op} (node `{}`)", node.name)),
        }
        Ok(())
    }
}

impl Graph {
    /// Compiles `proto` for per-image input `chw`, or says why not.
    pub fn compile(proto: &pb::ModelProto, chw: [usize; 3]) -> Result<Graph, Unsupported> {
        let g = proto.graph.as_ref().ok_or("no graph")?;
        let mut b = Builder {
            consts: HashMap::new(),
            ids: HashMap::new(),
            shapes: Vec::new(),
            steps: Vec::new(),
        };
        for t in &g.initializer {
            b.consts.insert(t.name.clone(), read_tensor(t)?);
        }
        let inputs: Vec<&pb::ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !b.consts.contains_key(&i.name))
            .collect();
        let [inp] = inputs[..] else {
            return Err(format!("{} graph inputs", inputs.len()));
        };
        let input = b.new_value(&inp.name, chw.to_vec())?;
        for node in &g.node {
            if node.output.len() > 1
                && !(node.op_type == "Dropout" || node.op_type == "BatchNormalization")
            {
                return Err(format!(
                    "{} `{}` has several outputs",
                    node.op_type, node.name
                ));
            }
            b.node(node)?;
        }
        let [out] = &g.output[..] else {
            return Err(format!("{} graph outputs", g.output.len()));
        };
        let output = *b.ids.get(&out.name).ok_or("the output is a constant")?;
        let classes: usize = b.shapes[output].iter().product();
        let mut graph = Graph {
            steps: b.steps,
            shapes: b.shapes,
            input,
            output,
            classes,
        };
        graph.fuse();
        for s in &mut graph.steps {
            if let Step::Conv {
                dims,
                weight,
                packed,
                ..
            } = s
            {
                let [cin, h, w, cout, k, stride, pad] = *dims;
                let g =
                    Geom::new(1, cin, h, w, cout, k, stride, pad).expect("checked when compiled");
                *packed = Some(Packed::new(&g, weight));
                *weight = Vec::new();
            }
        }
        Ok(graph)
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// How many steps read each value (the graph output counts as a reader).
    fn readers(&self) -> Vec<usize> {
        let mut r = vec![0; self.shapes.len()];
        for s in &self.steps {
            for i in s.inputs() {
                r[i] += 1;
            }
        }
        r[self.output] += 1;
        r
    }

    /// BatchNorm into the convolution before it, a residual Add into the convolution that makes
    /// one of its operands (the convolution moves down to the Add's place, where the other operand
    /// exists), and ReLU into the step before it, wherever the value between them has no other
    /// reader.
    fn fuse(&mut self) {
        self.fuse_pairs();
        while self.fuse_residual() {}
        self.fuse_pairs();
    }

    fn fuse_residual(&mut self) -> bool {
        let readers = self.readers();
        let producer: HashMap<usize, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.output(), i))
            .collect();
        for i in 0..self.steps.len() {
            let Step::Add { a, b, y, relu } = self.steps[i] else {
                continue;
            };
            for (mine, other) in [(a, b), (b, a)] {
                let Some(&p) = producer.get(&mine) else {
                    continue;
                };
                let fusable = readers[mine] == 1
                    && mine != other
                    && matches!(
                        self.steps[p],
                        Step::Conv {
                            residual: None,
                            relu: false,
                            ..
                        }
                    );
                if !fusable {
                    continue;
                }
                let mut conv = self.steps.remove(p);
                if let Step::Conv {
                    residual,
                    relu: r,
                    y: cy,
                    ..
                } = &mut conv
                {
                    *residual = Some(other);
                    *r = relu;
                    *cy = y;
                }
                // The Add is now at i - 1; the convolution takes its place.
                self.steps[i - 1] = conv;
                return true;
            }
        }
        false
    }

    fn fuse_pairs(&mut self) {
        loop {
            let readers = self.readers();
            let producer: HashMap<usize, usize> = self
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.output(), i))
                .collect();
            let mut fused = None;
            for (i, s) in self.steps.iter().enumerate() {
                let (x, y) = match *s {
                    Step::Affine {
                        x, y, relu: false, ..
                    }
                    | Step::Relu { x, y } => (x, y),
                    _ => continue,
                };
                let Some(&p) = producer.get(&x) else { continue };
                if readers[x] != 1 {
                    continue;
                }
                let ok = matches!(
                    (&self.steps[p], s),
                    (
                        Step::Conv {
                            relu: false,
                            residual: None,
                            ..
                        },
                        Step::Affine { .. }
                    ) | (Step::Conv { relu: false, .. }, Step::Relu { .. })
                        | (Step::Affine { relu: false, .. }, Step::Relu { .. })
                        | (Step::Add { relu: false, .. }, Step::Relu { .. })
                );
                if ok {
                    fused = Some((p, i, y));
                    break;
                }
            }
            let Some((p, i, y)) = fused else { break };
            let step = self.steps.remove(i);
            let target = &mut self.steps[p];
            match (target, step) {
                (
                    Step::Conv {
                        dims,
                        weight,
                        bias,
                        y: cy,
                        ..
                    },
                    Step::Affine { scale, shift, .. },
                ) => {
                    let per = dims[0] * dims[4] * dims[4];
                    for (co, (&a, &t)) in scale.iter().zip(&shift).enumerate() {
                        for w in &mut weight[co * per..(co + 1) * per] {
                            *w *= a;
                        }
                        bias[co] = bias[co] * a + t;
                    }
                    *cy = y;
                }
                (Step::Conv { relu, y: py, .. }, Step::Relu { .. })
                | (Step::Affine { relu, y: py, .. }, Step::Relu { .. })
                | (Step::Add { relu, y: py, .. }, Step::Relu { .. }) => {
                    *relu = true;
                    *py = y;
                }
                _ => unreachable!("only the pairs matched above are fused"),
            }
        }
    }

    /// Logits of `n` images (`input`: `n` preprocessed images, NCHW). With a `team`, each
    /// convolution splits its output channels over the team's threads (one request on several
    /// threads); without, several images spread over rayon's pool and one image runs on this
    /// thread. `bufs` keeps the intermediate values between calls.
    pub fn run(
        &self,
        n: usize,
        input: &[f32],
        bufs: &mut Vec<Vec<f32>>,
        team: Option<&Team>,
    ) -> Vec<f32> {
        let size = |id: usize| n * self.shapes[id].iter().product::<usize>();
        assert_eq!(input.len(), size(self.input), "input of the wrong size");
        bufs.resize_with(self.shapes.len(), Vec::new);
        for s in &self.steps {
            let yid = s.output();
            let mut y = std::mem::take(&mut bufs[yid]);
            y.resize(size(yid), 0.0);
            let src = Values {
                input: (self.input, input),
                bufs,
            };
            self.step(s, n, &src, &mut y, team);
            bufs[yid] = y;
        }
        bufs[self.output].clone()
    }

    fn step(&self, s: &Step, n: usize, bufs: &Values, y: &mut [f32], team: Option<&Team>) {
        let relu_if = |v: f32, relu: bool| if relu { v.max(0.0) } else { v };
        match s {
            Step::Conv {
                x,
                dims,
                packed,
                bias,
                residual,
                relu,
                ..
            } => {
                let [cin, h, w, cout, k, stride, pad] = *dims;
                let g =
                    Geom::new(n, cin, h, w, cout, k, stride, pad).expect("checked when compiled");
                let packed = packed.as_ref().expect("packed when compiled");
                let ep = Epilogue {
                    bias: bias.iter().any(|&b| b != 0.0).then_some(&bias[..]),
                    residual: residual.map(|r| &bufs[r]),
                    relu: *relu,
                };
                if let Some(team) = team {
                    let for_each = |k: usize, f: &(dyn Fn(usize) + Sync)| team.for_each(k, f);
                    conv::forward_packed_within(
                        &g,
                        packed,
                        &bufs[*x],
                        y,
                        ep,
                        team.threads(),
                        &for_each,
                    );
                } else {
                    conv::forward_packed(&g, packed, &bufs[*x], y, ep, |_, _| {});
                }
            }
            Step::Affine {
                x,
                scale,
                shift,
                relu,
                ..
            } => {
                let c = scale.len();
                let x = &bufs[*x];
                let per = x.len() / (n * c).max(1);
                for (i, (yo, xo)) in y.chunks_mut(per).zip(x.chunks(per)).enumerate() {
                    let (a, t) = (scale[i % c], shift[i % c]);
                    for (o, &v) in yo.iter_mut().zip(xo) {
                        *o = relu_if(v * a + t, *relu);
                    }
                }
            }
            Step::Relu { x, .. } => {
                for (o, &v) in y.iter_mut().zip(&bufs[*x]) {
                    *o = v.max(0.0);
                }
            }
            Step::Add { a, b, relu, .. } => {
                for ((o, &u), &v) in y.iter_mut().zip(&bufs[*a]).zip(&bufs[*b]) {
                    *o = relu_if(u + v, *relu);
                }
            }
            Step::Pad {
                x, y: yid, begin, ..
            } => {
                let (si, so) = (&self.shapes[*x], &self.shapes[*yid]);
                let (xi, xo) = (si.iter().product::<usize>(), so.iter().product::<usize>());
                y.fill(0.0);
                for img in 0..n {
                    let src = &bufs[*x][img * xi..][..xi];
                    let dst = &mut y[img * xo..][..xo];
                    for c in 0..si[0] {
                        for r in 0..si[1] {
                            let d = ((c + begin[0]) * so[1] + r + begin[1]) * so[2] + begin[2];
                            dst[d..d + si[2]]
                                .copy_from_slice(&src[(c * si[1] + r) * si[2]..][..si[2]]);
                        }
                    }
                }
            }
            Step::Slice {
                x,
                y: yid,
                start,
                step,
            } => {
                let (si, so) = (&self.shapes[*x], &self.shapes[*yid]);
                let (xi, xo) = (si.iter().product::<usize>(), so.iter().product::<usize>());
                for img in 0..n {
                    let src = &bufs[*x][img * xi..][..xi];
                    let dst = &mut y[img * xo..][..xo];
                    let mut o = 0;
                    for c in 0..so[0] {
                        let sc = start[0] + c * step[0];
                        for r in 0..so[1] {
                            let row =
                                &src[(sc * si[1] + start[1] + r * step[1]) * si[2]..][..si[2]];
                            for q in 0..so[2] {
                                dst[o] = row[start[2] + q * step[2]];
                                o += 1;
                            }
                        }
                    }
                }
            }
            Step::Mean { x, .. } => {
                let c = y.len() / n;
                let src = &bufs[*x];
                let hw = src.len() / (n * c);
                for (o, plane) in y.iter_mut().zip(src.chunks(hw)) {
                    *o = (plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
                }
            }
            Step::Dense { x, w, b, .. } => {
                let (k_out, src) = (b.len(), &bufs[*x]);
                let k_in = src.len() / n;
                for img in 0..n {
                    let xi = &src[img * k_in..][..k_in];
                    for (j, o) in y[img * k_out..][..k_out].iter_mut().enumerate() {
                        let row = &w[j * k_in..][..k_in];
                        *o = b[j] + row.iter().zip(xi).map(|(a, v)| a * v).sum::<f32>();
                    }
                }
            }
            Step::Copy { x, .. } => y.copy_from_slice(&bufs[*x]),
        }
    }
}

//! Compilation: ONNX nodes into steps, one function per operation, found by op type in [`OPS`]
//! (as tract's `register_all_ops` registers its parsers); the graph is then fused and its
//! convolution weights packed.

use std::collections::HashMap;

use sc_kernels::conv::{Geom, Packed};
use tract_onnx::pb;

use super::graph::{Graph, Step};
use super::Unsupported;

/// How one ONNX operation compiles: adds its steps (or constants) to the builder, or says why not.
type Compile = fn(&mut Builder, &pb::NodeProto) -> Result<(), Unsupported>;

/// The operations the native executor takes, by ONNX op type.
const OPS: &[(&str, Compile)] = &[
    ("Constant", Builder::constant),
    ("Shape", Builder::shape),
    ("Gather", Builder::gather),
    ("Unsqueeze", Builder::unsqueeze),
    ("Squeeze", Builder::squeeze),
    ("Concat", Builder::concat),
    ("ConstantOfShape", Builder::constant_of_shape),
    ("Cast", Builder::cast),
    ("Transpose", Builder::transpose),
    ("Identity", Builder::identity),
    ("Dropout", Builder::identity),
    ("Conv", Builder::conv),
    ("BatchNormalization", Builder::batch_norm),
    ("Relu", Builder::relu),
    ("Add", Builder::arithmetic),
    ("Sub", Builder::arithmetic),
    ("Mul", Builder::arithmetic),
    ("Div", Builder::arithmetic),
    ("Pad", Builder::pad),
    ("Slice", Builder::slice),
    ("GlobalAveragePool", Builder::mean),
    ("ReduceMean", Builder::mean),
    ("Flatten", Builder::flatten),
    ("Reshape", Builder::flatten),
    ("Gemm", Builder::dense),
    ("MatMul", Builder::dense),
];

/// A constant tensor: dims and values (floats, or integers as i64). An integer tensor computed
/// from `Shape` may hold the batch size, which is not known when compiling: `batch` marks those
/// entries (their `i` is a placeholder), and is empty when there are none.
#[derive(Clone)]
pub(crate) struct Const {
    pub(crate) dims: Vec<usize>,
    pub(crate) f: Vec<f32>,
    pub(crate) i: Vec<i64>,
    pub(super) batch: Vec<bool>,
}

pub(crate) fn read_tensor(t: &pb::TensorProto) -> Result<Const, Unsupported> {
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
        Ok(DataType::Float) => (decode(&t.float_data, raw, f32::from_le_bytes)?, Vec::new()),
        Ok(DataType::Int64) => (Vec::new(), decode(&t.int64_data, raw, i64::from_le_bytes)?),
        // 8- and 32-bit integers (the int8 executor's weights, biases and zero points): ONNX
        // keeps them in `int32_data` when typed.
        Ok(DataType::Int32) => (
            Vec::new(),
            widen(decode(&t.int32_data, raw, i32::from_le_bytes)?),
        ),
        Ok(DataType::Int8) if t.int32_data.is_empty() => (
            Vec::new(),
            raw(1)?.iter().map(|&b| b as i8 as i64).collect(),
        ),
        Ok(DataType::Uint8) if t.int32_data.is_empty() => {
            (Vec::new(), raw(1)?.iter().map(|&b| b as i64).collect())
        }
        Ok(DataType::Int8 | DataType::Uint8) => (Vec::new(), widen(t.int32_data.clone())),
        _ => return Err(format!("`{}` has element type {}", t.name, t.data_type)),
    };
    if f.len().max(i.len()) != n {
        return Err(format!(
            "`{}`: {} values for dims {dims:?}",
            t.name,
            f.len().max(i.len())
        ));
    }
    Ok(Const {
        dims,
        f,
        i,
        batch: Vec::new(),
    })
}

fn widen(v: Vec<i32>) -> Vec<i64> {
    v.into_iter().map(i64::from).collect()
}

/// A tensor's values: its typed field when that is set, else its raw data read as little-endian
/// `W`-byte values (`raw(W)` checks the length).
fn decode<'a, T: Clone, const W: usize>(
    typed: &[T],
    raw: impl FnOnce(usize) -> Result<&'a [u8], Unsupported>,
    from_le_bytes: fn([u8; W]) -> T,
) -> Result<Vec<T>, Unsupported> {
    if !typed.is_empty() {
        return Ok(typed.to_vec());
    }
    Ok(raw(W)?
        .chunks_exact(W)
        .map(|b| from_le_bytes(b.try_into().expect("W bytes")))
        .collect())
}

pub(super) fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(super) fn attr_int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

pub(super) fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub(super) fn attr_float(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}
/// The node's first output (empty when it has none).
pub(super) fn output(node: &pb::NodeProto) -> String {
    node.output.first().cloned().unwrap_or_default()
}

/// The node's `i`-th input (empty when absent).
pub(super) fn input(node: &pb::NodeProto, i: usize) -> &str {
    node.input.get(i).map(String::as_str).unwrap_or("")
}

pub(super) struct Builder {
    /// Constants, and what folding made of them.
    pub(super) consts: HashMap<String, Const>,
    pub(super) ids: HashMap<String, usize>,
    /// Zeros of a per-image shape for every image of the batch (`ConstantOfShape` of a shape
    /// holding the batch size): no step, only `Concat` with a computed value takes them.
    pub(super) zeros: HashMap<String, Vec<usize>>,
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) steps: Vec<Step>,
}

impl Builder {
    pub(super) fn value(&self, name: &str, node: &pb::NodeProto) -> Result<usize, Unsupported> {
        self.ids.get(name).copied().ok_or_else(|| {
            if self.zeros.contains_key(name) {
                return format!(
                    "{} `{}` reads `{name}`, zeros for every image of the batch, which only Concat with a computed value takes",
                    node.op_type, node.name
                );
            }
            format!(
                "{} `{}` reads `{name}`, which is neither a computed value nor supported as a constant there",
                node.op_type, node.name
            )
        })
    }

    /// The node's first input, a computed value, with its per-image shape.
    fn operand(&self, node: &pb::NodeProto) -> Result<(usize, Vec<usize>), Unsupported> {
        let x = self.value(input(node, 0), node)?;
        Ok((x, self.shapes[x].clone()))
    }

    /// A constant that may hold the batch size (see [`Const::batch`]).
    pub(super) fn shape_konst(
        &self,
        name: &str,
        node: &pb::NodeProto,
    ) -> Result<&Const, Unsupported> {
        self.consts.get(name).ok_or_else(|| {
            format!(
                "{} `{}`: `{name}` is not a constant",
                node.op_type, node.name
            )
        })
    }

    /// A constant that does not depend on the batch size.
    pub(super) fn konst(&self, name: &str, node: &pb::NodeProto) -> Result<&Const, Unsupported> {
        let k = self.shape_konst(name, node)?;
        if k.batch.contains(&true) {
            return Err(format!(
                "{} `{}`: `{name}` depends on the batch size",
                node.op_type, node.name
            ));
        }
        Ok(k)
    }

    /// A new computed value; refuses one larger than the runtime accepts for an input (tract
    /// then decides what to do with the graph).
    pub(super) fn new_value(
        &mut self,
        name: &str,
        shape: Vec<usize>,
    ) -> Result<usize, Unsupported> {
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

    /// Adds the step `make(y)`, whose value `y` is the node's output with per-image `shape`.
    pub(super) fn emit(
        &mut self,
        node: &pb::NodeProto,
        shape: Vec<usize>,
        make: impl FnOnce(usize) -> Step,
    ) -> Result<(), Unsupported> {
        let y = self.new_value(&output(node), shape)?;
        self.steps.push(make(y));
        Ok(())
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

    /// Compiles one node by its entry in [`OPS`].
    fn node(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        match OPS.iter().find(|(name, _)| *name == op) {
            Some((_, compile)) => compile(self, node),
            None => Err(format!("operation {op} (node `{}`)", node.name)),
        }
    }

    /// A constant tensor, kept for the operations that read it.
    fn constant(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let a = attr(node, "value")
            .and_then(|a| a.t.as_ref())
            .ok_or_else(|| format!("Constant `{}` without a tensor value", node.name))?;
        let k = read_tensor(a)?;
        self.consts.insert(output(node), k);
        Ok(())
    }

    /// A copy (or an alias of a constant).
    fn identity(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        if let Some(k) = self.consts.get(input(node, 0)).cloned() {
            self.consts.insert(output(node), k);
        } else {
            let x = self.value(input(node, 0), node)?;
            self.emit(node, self.shapes[x].clone(), |y| Step::Copy { x, y })?;
        }
        Ok(())
    }

    /// A square convolution with equal strides and symmetric padding, no groups or dilation.
    fn conv(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let (x, s) = self.operand(node)?;
        let w = self.konst(input(node, 1), node)?.clone();
        let (&[cin, h, wd], &[cout, wcin, kh, kw]) = (s.as_slice(), w.dims.as_slice()) else {
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
        self.emit(node, vec![cout, g.ho, g.wo], |y| Step::Conv {
            x,
            y,
            dims: [cin, h, wd, cout, k, stride, pad],
            weight: w.f,
            packed: None,
            bias,
            residual: None,
            relu: false,
        })
    }

    /// Inference-form BatchNormalization, as a per-channel affine step.
    fn batch_norm(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let (x, s) = self.operand(node)?;
        let c = s.first().copied().unwrap_or(0);
        let get = |i: usize| -> Result<Vec<f32>, Unsupported> {
            let k = self.konst(input(node, i), node)?;
            if k.f.len() == c {
                Ok(k.f.clone())
            } else {
                Err(format!("BatchNormalization `{}`: {c} channels", node.name))
            }
        };
        let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
        let eps = attr_float(node, "epsilon", 1e-5);
        let (scale, shift) = super::fuse::batch_norm_affine(&gamma, &beta, &mean, &var, eps);
        self.emit(node, s, |y| Step::Affine {
            x,
            y,
            scale,
            shift,
            relu: false,
        })
    }

    /// ReLU.
    fn relu(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let x = self.value(input(node, 0), node)?;
        self.emit(node, self.shapes[x].clone(), |y| Step::Relu { x, y })
    }

    /// Two computed values added, or one by a per-channel or scalar constant.
    fn arithmetic(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        let (a, b) = (input(node, 0), input(node, 1));
        match (self.ids.get(a).copied(), self.ids.get(b).copied()) {
            (Some(a), Some(b)) if op == "Add" => {
                if self.shapes[a] != self.shapes[b] {
                    return Err(format!("Add `{}`: operands of different shapes", node.name));
                }
                self.emit(node, self.shapes[a].clone(), |y| Step::Add {
                    a,
                    b,
                    y,
                    relu: false,
                })?;
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
                self.emit(node, s, |y| Step::Affine {
                    x,
                    y,
                    scale,
                    shift,
                    relu: false,
                })?;
            }
            _ => return Err(format!("{op} `{}`: unsupported operands", node.name)),
        }
        Ok(())
    }

    /// Zero padding of the per-image axes.
    fn pad(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let x = self.value(input(node, 0), node)?;
        let mode = attr(node, "mode").map_or(&b"constant"[..], |a| &a.s[..]);
        let pads = match attr_ints(node, "pads") {
            Some(p) => p,
            None => self.konst(input(node, 1), node)?.i.clone(),
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
        self.emit(
            node,
            (0..3)
                .map(|i| s[i].saturating_add(begin[i]).saturating_add(end[i]))
                .collect(),
            |y| Step::Pad { x, y, begin },
        )
    }

    /// A slice with positive steps (the batch axis whole), or of a constant.
    fn slice(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        if self.consts.contains_key(input(node, 0)) {
            return self.fold_slice(node);
        }
        let (x, s) = self.operand(node)?;
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
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
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
        self.emit(node, shape, |y| Step::Slice { x, y, start, step })
    }

    /// The mean over H and W.
    fn mean(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        let (x, s) = self.operand(node)?;
        let keep = op == "GlobalAveragePool" || attr_int(node, "keepdims", 1) == 1;
        if op == "ReduceMean" {
            let axes = match attr_ints(node, "axes") {
                Some(a) => a,
                None => self.konst(input(node, 1), node)?.i.clone(),
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
        self.emit(node, shape, |y| Step::Mean { x, y })
    }

    /// Flattening to `[batch, features]`, or a constant reshaped.
    fn flatten(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        if op == "Reshape" && self.consts.contains_key(input(node, 0)) {
            return self.fold_reshape(node);
        }
        let (x, s) = self.operand(node)?;
        let total: usize = s.iter().product();
        if op == "Flatten" && attr_int(node, "axis", 1) != 1 {
            return Err(format!("Flatten `{}` at axis != 1", node.name));
        }
        if op == "Reshape" {
            // The target's first entry may be the batch size itself (`x.view(x.size(0), -1)`).
            let k = self.shape_konst(input(node, 1), node)?;
            let batch = |j: usize| k.batch.get(j).copied().unwrap_or(false);
            let t = k.i.clone();
            let first = if batch(0) {
                0
            } else {
                t.first().copied().unwrap_or(1)
            };
            let ok = t.len() == 2
                && !batch(1)
                && matches!(first, 0 | -1)
                && (t[1] == total as i64 || (t[1] == -1 && first == 0));
            if !ok {
                return Err(format!("Reshape `{}` to {t:?}", node.name));
            }
        }
        self.emit(node, vec![total], |y| Step::Copy { x, y })
    }

    /// A matrix product by constant weights, with Gemm's bias.
    fn dense(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let op = node.op_type.as_str();
        let (x, s) = self.operand(node)?;
        let k_in: usize = s.iter().product();
        if s.len() != 1 {
            return Err(format!("{op} `{}` of a {s:?} value", node.name));
        }
        let b = self.konst(input(node, 1), node)?.clone();
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
        self.emit(node, vec![k_out], |y| Step::Dense { x, y, w, b: bias })
    }
}

impl Graph {
    /// Compiles `proto` for per-image input `chw`, or says why not.
    pub fn compile(proto: &pb::ModelProto, chw: [usize; 3]) -> Result<Graph, Unsupported> {
        let g = proto.graph.as_ref().ok_or("no graph")?;
        if let Some(n) = (g.node.iter())
            .find(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
        {
            let plan = super::int8::QPlan::compile(proto, chw).map_err(|why| {
                format!(
                    "an int8 (QDQ) graph ({} `{}` …) the int8 executor does not take: {why}",
                    n.op_type, n.name
                )
            })?;
            let classes = plan.classes();
            return Ok(Graph {
                steps: Vec::new(),
                shapes: vec![chw.to_vec(), vec![classes]],
                input: 0,
                output: 1,
                classes,
                blocked: Err("an int8 graph (its own NHWC uint8 layout)".into()),
                use_blocked: false,
                int8: Some(Box::new(plan)),
            });
        }
        let mut b = Builder {
            consts: HashMap::new(),
            ids: HashMap::new(),
            zeros: HashMap::new(),
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
            blocked: Err(String::new()),
            use_blocked: false,
            int8: None,
        };
        graph.fuse();
        // Before the flat packing below drops the weights it packs.
        graph.blocked = super::blocked::Plan::compile(&graph);
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
}

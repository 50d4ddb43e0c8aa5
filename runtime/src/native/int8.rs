//! The native int8 executor: runs the QDQ graphs `sc-runtime quantize` writes (and graphs of the
//! same pattern from other tools) on `sc_kernels::qconv`, with uint8 maps between layers.
//!
//! The pattern, as ONNX QDQ spells it:
//! - the input: float pixels, per-channel `Sub`/`Div`/`Mul`/`Add` by constants, then
//!   `QuantizeLinear` — one step that writes the first uint8 map;
//! - `DequantizeLinear → Conv (int8 weights per output channel, zero point 0; bias) [→ Relu] →
//!   QuantizeLinear`: a convolution with requantization (and ReLU) in its epilogue;
//! - `DQ(a), DQ(b) → Add [→ Relu] → QuantizeLinear`, where `a` is a convolution's output read by
//!   this `Add` only: fused into that convolution's epilogue, `a`'s own quantization included
//!   (`sc_kernels::qconv::Mid`), so the graph's roundings are all kept (a value on a rounding
//!   boundary may land one step away: the probe tolerance allows for it);
//! - `DQ → ReduceMean over H, W` (or `GlobalAveragePool`) `[→ QuantizeLinear → DQ]`,
//!   `Flatten`/`Reshape`, then `Gemm` with int8 or float weights: the head, in float.
//!
//! Anything else is refused with the reason, and the model runs on tract. Maps are NHWC with a
//! one-pixel border holding each map's zero point (`sc_kernels::qconv::Map`); one image runs
//! through all layers before the next (its maps stay in cache), and with a team each layer's rows
//! are split over the team's threads.

use std::collections::HashMap;
use std::sync::Mutex;

use sc_kernels::int8::{self, Int8Isa};
use sc_kernels::qconv::{qconv_rows, Map, Mid, QConv, Requant};
use tract_onnx::pb;

use super::compile::{attr, attr_float, attr_int, attr_ints, output, read_tensor, Const};
use super::Unsupported;
use crate::team::Team;

/// A uint8 map value: its geometry, real channels and quantization.
struct QValue {
    map: Map,
    channels: usize,
    scale: f32,
    zero_point: u8,
}

/// A per-channel float operation of the input chain.
#[derive(Clone, Copy)]
enum ChannelOp {
    Sub,
    Div,
    Mul,
    Add,
}

enum QStep {
    /// Float NCHW pixels through `ops` (each by a per-channel constant), quantized into `y`.
    Input {
        y: usize,
        ops: Vec<(ChannelOp, Vec<f32>)>,
    },
    Conv {
        x: usize,
        y: usize,
        conv: QConv,
        mul: Vec<f32>,
        add: Vec<f32>,
        relu: bool,
        /// The residual add folded in: (the convolution's own zero point, scale ratio, the
        /// residual value, its zero point, its scale ratio).
        mid: Option<(u8, f32, usize, u8, f32)>,
    },
}

/// The head: mean over the pixels of `x` (requantized to `pool` when the graph does), then
/// `logits = w · pooled + b` in float.
struct Head {
    x: usize,
    pool: Option<(f32, u8)>,
    w: Vec<f32>,
    b: Vec<f32>,
}

/// A compiled int8 graph.
pub(crate) struct QPlan {
    values: Vec<QValue>,
    steps: Vec<QStep>,
    head: Head,
    chw: [usize; 3],
    classes: usize,
    isa: Int8Isa,
    /// How far the logits may be from tract's for the same input: `TOLERANCE_STEPS` quantization
    /// steps of every pooled feature, through the classifier's weights.
    tolerance: f32,
    /// Scratch maps of one image each (one set per concurrent caller).
    scratch: Mutex<Vec<Vec<Vec<u8>>>>,
}

/// The probe tolerance, in quantization steps of the pooled features (the executor and tract may
/// round a value that lands on a rounding boundary differently, by one step, and such a step can
/// move later ones).
pub(crate) const TOLERANCE_STEPS: f32 = 2.0;

/// `v` rounded to the nearest integer, ties to even (as `f32::round_ties_even`, which without
/// SSE4.1 is a library call), for `|v| < 2^22`: adding and subtracting 1.5 · 2^23 leaves no
/// fraction bits, and the addition rounds to nearest even.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (v + M) - M
}

/// What a tensor name stands for while compiling.
#[derive(Clone)]
enum Val {
    /// The graph input, after `ops`.
    Pixels(Vec<(ChannelOp, Vec<f32>)>),
    /// A uint8 map (the output of a `QuantizeLinear`).
    Q(usize),
    /// A dequantized map.
    Dq(usize),
    /// A float convolution output not yet quantized (index into `pending`).
    Conv(usize, bool),
    /// The float sum of two dequantized maps.
    Sum(usize, usize, bool),
    /// The mean over the pixels of a map (float vector).
    Pooled(usize),
    /// The pooled vector quantized, and dequantized.
    PooledQ(usize, f32, u8),
    PooledDq(usize, f32, u8),
    Logits,
}

struct PendingConv {
    x: usize,
    w: Vec<i8>,
    w_scale: Vec<f32>,
    bias: Vec<f32>,
    dims: [usize; 5], // cin, cout, k, stride, pad
}

/// A dequantized initializer: integer values, dims, scales (one, or one per index of the axis),
/// and the axis.
type Deq = (Vec<i64>, Vec<usize>, Vec<f32>, Vec<i64>);

struct Builder<'a> {
    consts: HashMap<String, Const>,
    deq: HashMap<String, Deq>,
    vals: HashMap<String, Val>,
    values: Vec<QValue>,
    steps: Vec<QStep>,
    pending: Vec<PendingConv>,
    head: Option<Head>,
    /// The graph's nodes (to count who reads a value).
    nodes: &'a [pb::NodeProto],
    /// The graph's output names.
    outputs: Vec<&'a str>,
    /// The tensor name each value was quantized to.
    names: Vec<String>,
    /// The step that writes each value (when it is a convolution).
    writer: HashMap<usize, usize>,
    input_chw: [usize; 3],
    isa: Int8Isa,
    /// Initializers' element types.
    dtypes: HashMap<String, i32>,
    /// Convolution outputs folded into a residual's step (no longer written).
    fused: Vec<usize>,
}

fn scalar_f(c: &Const, what: &str) -> Result<f32, Unsupported> {
    match c.f[..] {
        [v] => Ok(v),
        _ => Err(format!("{what}: a scale of {} values", c.f.len())),
    }
}

fn scalar_u8(c: &Const, what: &str) -> Result<u8, Unsupported> {
    match c.i[..] {
        [v] if (0..=255).contains(&v) => Ok(v as u8),
        _ => Err(format!("{what}: not one uint8 zero point")),
    }
}

impl<'a> Builder<'a> {
    fn konst(&self, name: &str, node: &pb::NodeProto) -> Result<&Const, Unsupported> {
        self.consts.get(name).ok_or_else(|| {
            format!(
                "{} `{}`: `{name}` is not a constant",
                node.op_type, node.name
            )
        })
    }

    fn val(&self, name: &str, node: &pb::NodeProto) -> Result<Val, Unsupported> {
        self.vals
            .get(name)
            .cloned()
            .ok_or_else(|| format!("{} `{}`: input `{name}` unknown", node.op_type, node.name))
    }

    /// Quantization parameters of a `QuantizeLinear`/`DequantizeLinear` on activations.
    fn qparams(&self, node: &pb::NodeProto) -> Result<(f32, u8), Unsupported> {
        let what = format!("{} `{}`", node.op_type, node.name);
        let scale = node
            .input
            .get(1)
            .ok_or_else(|| format!("{what}: no scale"))?;
        let s = scalar_f(self.konst(scale, node)?, &what)?;
        let z = match node.input.get(2).filter(|z| !z.is_empty()) {
            Some(z) => {
                // A zero point's type is the quantized type: only uint8 activations run here.
                if self.dtypes.get(z.as_str()) != Some(&(pb::tensor_proto::DataType::Uint8 as i32))
                {
                    return Err(format!("{what}: activations not uint8"));
                }
                scalar_u8(self.konst(z, node)?, &what)?
            }
            None => return Err(format!("{what}: no zero point (int8 activations)")),
        };
        if !(s > 0.0 && s.is_finite()) {
            return Err(format!("{what}: scale {s}"));
        }
        Ok((s, z))
    }

    fn node(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let name = || format!("{} `{}`", node.op_type, node.name);
        let out = node.output.first().cloned().unwrap_or_default();
        let one = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
        match node.op_type.as_str() {
            "DequantizeLinear" if self.consts.contains_key(one(0)) => {
                let q = self.konst(one(0), node)?;
                let s = self.konst(one(1), node)?;
                let z = match node.input.get(2).filter(|z| !z.is_empty()) {
                    Some(z) => self.konst(z, node)?.i.clone(),
                    None => vec![0],
                };
                if q.i.len() != q.dims.iter().product::<usize>() || s.f.is_empty() {
                    return Err(format!(
                        "{}: not an integer tensor with float scales",
                        name()
                    ));
                }
                let axis = attr_int(node, "axis", 1);
                self.deq
                    .insert(out, (q.i.clone(), q.dims.clone(), s.f.clone(), vec![axis]))
                    .map_or(Ok(()), |_| Err(format!("{}: output written twice", name())))?;
                if z.iter().any(|&v| v != 0) {
                    return Err(format!("{}: weights with a non-zero zero point", name()));
                }
                Ok(())
            }
            "DequantizeLinear" => {
                let (s, z) = self.qparams(node)?;
                let v = match self.val(one(0), node)? {
                    Val::Q(id) => {
                        let q = &self.values[id];
                        if q.scale != s || q.zero_point != z {
                            return Err(format!("{}: not the quantization of its input", name()));
                        }
                        Val::Dq(id)
                    }
                    Val::PooledQ(id, ps, pz) if ps == s && pz == z => Val::PooledDq(id, ps, pz),
                    _ => return Err(format!("{}: input is not quantized here", name())),
                };
                self.vals.insert(out, v);
                Ok(())
            }
            "QuantizeLinear" => {
                let (s, z) = self.qparams(node)?;
                let v = match self.val(one(0), node)? {
                    Val::Pixels(ops) => {
                        let [c, h, w] = self.input_chw;
                        let id = self.new_value(&out, Map::new(h, w, c), c, s, z);
                        self.steps.push(QStep::Input { y: id, ops });
                        Val::Q(id)
                    }
                    Val::Conv(p, relu) => Val::Q(self.conv(p, relu, s, z, node)?),
                    Val::Sum(a, b, relu) => Val::Q(self.residual(a, b, relu, s, z, node)?),
                    Val::Pooled(x) => Val::PooledQ(x, s, z),
                    _ => return Err(format!("{}: quantizes an unsupported value", name())),
                };
                self.vals.insert(out, v);
                Ok(())
            }
            "Sub" | "Div" | "Mul" | "Add" => {
                let op = match node.op_type.as_str() {
                    "Sub" => ChannelOp::Sub,
                    "Div" => ChannelOp::Div,
                    "Mul" => ChannelOp::Mul,
                    _ => ChannelOp::Add,
                };
                match (
                    self.vals.get(one(0)).cloned(),
                    self.vals.get(one(1)).cloned(),
                ) {
                    (Some(Val::Pixels(mut ops)), None) => {
                        let c = self.konst(one(1), node)?;
                        let ch = self.input_chw[0];
                        let per = match c.f.len() {
                            1 => vec![c.f[0]; ch],
                            n if n == ch
                                && (c.dims[..] == [ch, 1, 1] || c.dims[..] == [1, ch, 1, 1]) =>
                            {
                                c.f.clone()
                            }
                            _ => return Err(format!("{}: not a per-channel constant", name())),
                        };
                        ops.push((op, per));
                        self.vals.insert(out, Val::Pixels(ops));
                        Ok(())
                    }
                    (Some(Val::Dq(a)), Some(Val::Dq(b))) if node.op_type == "Add" => {
                        self.vals.insert(out, Val::Sum(a, b, false));
                        Ok(())
                    }
                    _ => Err(format!(
                        "{}: not an input normalization or a residual",
                        name()
                    )),
                }
            }
            "Relu" => {
                let v = match self.val(one(0), node)? {
                    Val::Conv(p, _) => Val::Conv(p, true),
                    Val::Sum(a, b, _) => Val::Sum(a, b, true),
                    _ => return Err(format!("{}: not after a convolution or an Add", name())),
                };
                self.vals.insert(out, v);
                Ok(())
            }
            "Conv" => {
                let Val::Dq(x) = self.val(one(0), node)? else {
                    return Err(format!("{}: its input is not a dequantized map", name()));
                };
                let Some((wq, wd, ws, axis)) = self.deq.get(one(1)).cloned() else {
                    return Err(format!("{}: float weights (kept float)", name()));
                };
                let [cout, cin, kh, kw] = wd[..] else {
                    return Err(format!("{}: weights {wd:?}", name()));
                };
                let k = kh;
                let strides = attr_ints(node, "strides").unwrap_or(vec![1, 1]);
                let pads = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                let dil = attr_ints(node, "dilations").unwrap_or(vec![1, 1]);
                let group = attr_int(node, "group", 1);
                let auto = attr(node, "auto_pad")
                    .map(|a| String::from_utf8_lossy(&a.s).to_string())
                    .unwrap_or_default();
                if kh != kw
                    || group != 1
                    || dil.iter().any(|&d| d != 1)
                    || strides.len() != 2
                    || strides[0] != strides[1]
                    || strides[0] < 1
                    || pads.len() != 4
                    || pads[0] < 0
                    || pads.iter().any(|&p| p != pads[0])
                    || !(auto.is_empty() || auto == "NOTSET")
                {
                    return Err(format!(
                        "{}: not a square, symmetric, ungrouped convolution",
                        name()
                    ));
                }
                if cin != self.values[x].channels {
                    return Err(format!(
                        "{}: {cin} input channels for {}",
                        name(),
                        self.values[x].channels
                    ));
                }
                if wq.iter().any(|&v| !(-128..=127).contains(&v)) {
                    return Err(format!("{}: weights are not int8", name()));
                }
                let w_scale = match ws.len() {
                    1 => vec![ws[0]; cout],
                    n if n == cout && (axis[0] == 0 || axis[0] == -4) => ws,
                    _ => {
                        return Err(format!(
                            "{}: {} weight scales for {cout} channels",
                            name(),
                            ws.len()
                        ))
                    }
                };
                let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => match (self.deq.get(b.as_str()), self.consts.get(b.as_str())) {
                        (Some((bq, _, bs, _)), _)
                            if bq.len() == cout && (bs.len() == 1 || bs.len() == cout) =>
                        {
                            (0..cout)
                                .map(|c| bq[c] as f32 * if bs.len() == 1 { bs[0] } else { bs[c] })
                                .collect()
                        }
                        (None, Some(c)) if c.f.len() == cout => c.f.clone(),
                        _ => return Err(format!("{}: bias of another shape", name())),
                    },
                    None => vec![0.0; cout],
                };
                self.pending.push(PendingConv {
                    x,
                    w: wq.iter().map(|&v| v as i8).collect(),
                    w_scale,
                    bias,
                    dims: [cin, cout, k, strides[0] as usize, pads[0] as usize],
                });
                self.vals
                    .insert(out, Val::Conv(self.pending.len() - 1, false));
                Ok(())
            }
            "ReduceMean" | "GlobalAveragePool" => {
                let Val::Dq(x) = self.val(one(0), node)? else {
                    return Err(format!("{}: its input is not a dequantized map", name()));
                };
                if node.op_type == "ReduceMean" {
                    let axes = match attr_ints(node, "axes") {
                        Some(a) => a,
                        None => match node.input.get(1).filter(|a| !a.is_empty()) {
                            Some(a) => self.konst(a, node)?.i.clone(),
                            None => return Err(format!("{}: over every axis", name())),
                        },
                    };
                    let mut axes: Vec<i64> = axes
                        .iter()
                        .map(|&a| if a < 0 { a + 4 } else { a })
                        .collect();
                    axes.sort();
                    if axes != [2, 3] {
                        return Err(format!("{}: over axes {axes:?}, not H and W", name()));
                    }
                }
                self.vals.insert(out, Val::Pooled(x));
                Ok(())
            }
            "Flatten" | "Reshape" | "Identity" | "Squeeze" => {
                let v = self.val(one(0), node)?;
                if !matches!(v, Val::Pooled(_) | Val::PooledDq(..)) {
                    return Err(format!("{}: reshapes a map", name()));
                }
                self.vals.insert(out, v);
                Ok(())
            }
            "Gemm" => {
                let (x, pool) = match self.val(one(0), node)? {
                    Val::Pooled(x) => (x, None),
                    Val::PooledDq(x, s, z) => (x, Some((s, z))),
                    _ => return Err(format!("{}: not after the pooling", name())),
                };
                if attr_int(node, "transA", 0) != 0
                    || attr_float(node, "alpha", 1.0) != 1.0
                    || attr_float(node, "beta", 1.0) != 1.0
                {
                    return Err(format!("{}: transA, alpha or beta", name()));
                }
                let trans_b = attr_int(node, "transB", 0) != 0;
                let (wf, dims) = self.float_of(one(1), node)?;
                let [r, c] = dims[..] else {
                    return Err(format!("{}: weights {dims:?}", name()));
                };
                let (classes, cin) = if trans_b { (r, c) } else { (c, r) };
                if cin != self.values[x].channels {
                    return Err(format!(
                        "{}: {cin} inputs for {} channels",
                        name(),
                        self.values[x].channels
                    ));
                }
                let w: Vec<f32> = if trans_b {
                    wf
                } else {
                    (0..classes * cin)
                        .map(|i| wf[(i % cin) * classes + i / cin])
                        .collect()
                };
                let b = match node.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => {
                        let (bf, _) = self.float_of(b, node)?;
                        match bf.len() {
                            1 => vec![bf[0]; classes],
                            n if n == classes => bf,
                            _ => return Err(format!("{}: bias of {} values", name(), bf.len())),
                        }
                    }
                    None => vec![0.0; classes],
                };
                if self.head.is_some() {
                    return Err(format!("{}: a second classifier", name()));
                }
                self.head = Some(Head { x, pool, w, b });
                self.vals.insert(out, Val::Logits);
                Ok(())
            }
            _ => Err(format!("{} (no int8 form)", name())),
        }
    }

    /// A float initializer, or a dequantized one, as floats.
    fn float_of(
        &self,
        name: &str,
        node: &pb::NodeProto,
    ) -> Result<(Vec<f32>, Vec<usize>), Unsupported> {
        if let Some((q, dims, s, axis)) = self.deq.get(name) {
            let axis = if axis[0] < 0 {
                axis[0] + dims.len() as i64
            } else {
                axis[0]
            } as usize;
            let inner: usize = dims.get(axis + 1..).map_or(1, |d| d.iter().product());
            let n = dims.get(axis).copied().unwrap_or(1);
            let f = q
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    v as f32
                        * if s.len() == 1 {
                            s[0]
                        } else {
                            s[(i / inner) % n]
                        }
                })
                .collect();
            return Ok((f, dims.clone()));
        }
        let c = self.konst(name, node)?;
        if c.f.is_empty() {
            return Err(format!(
                "{} `{}`: `{name}` is not float",
                node.op_type, node.name
            ));
        }
        Ok((c.f.clone(), c.dims.clone()))
    }

    /// How many nodes (and graph outputs) read tensor `name`.
    fn readers(&self, name: &str) -> usize {
        let nodes = self
            .nodes
            .iter()
            .flat_map(|n| &n.input)
            .filter(|i| *i == name)
            .count();
        nodes + self.outputs.iter().filter(|o| **o == name).count()
    }

    /// Whether value `id` is read once: its tensor only by `DequantizeLinear` nodes whose outputs
    /// are read once in all.
    fn read_once(&self, id: usize) -> bool {
        let name = &self.names[id];
        let dqs: Vec<&pb::NodeProto> = (self.nodes.iter())
            .filter(|n| n.op_type == "DequantizeLinear" && n.input.first() == Some(name))
            .collect();
        dqs.len() == self.readers(name)
            && dqs
                .iter()
                .map(|n| self.readers(&n.output[0]))
                .sum::<usize>()
                == 1
    }

    fn new_value(
        &mut self,
        name: &str,
        map: Map,
        channels: usize,
        scale: f32,
        zero_point: u8,
    ) -> usize {
        self.names.push(name.to_string());
        self.values.push(QValue {
            map,
            channels,
            scale,
            zero_point,
        });
        self.values.len() - 1
    }

    /// The pending convolution `p`, quantized to `(s, z)`: a step, and its output value.
    fn conv(
        &mut self,
        p: usize,
        relu: bool,
        s: f32,
        z: u8,
        node: &pb::NodeProto,
    ) -> Result<usize, Unsupported> {
        let pc = &self.pending[p];
        let [cin, cout, k, stride, pad] = pc.dims;
        let xv = &self.values[pc.x];
        let conv = QConv::new(
            self.isa,
            &pc.w,
            cin,
            cout,
            k,
            stride,
            pad,
            [xv.map.h, xv.map.w],
        )
        .map_err(|e| format!("Conv before {} `{}`: {e}", node.op_type, node.name))?;
        let (sx, zx) = (xv.scale, xv.zero_point as f32);
        let mul: Vec<f32> = (0..cout).map(|c| sx * pc.w_scale[c] / s).collect();
        let add: Vec<f32> = (0..cout)
            .map(|c| pc.bias[c] / s - zx * conv.row_sums[c] as f32 * mul[c])
            .collect();
        let x = pc.x;
        let y = self.new_value(&output(node), conv.output, cout, s, z);
        self.writer.insert(y, self.steps.len());
        self.steps.push(QStep::Conv {
            x,
            y,
            conv,
            mul,
            add,
            relu,
            mid: None,
        });
        Ok(y)
    }

    /// `Q(DQ(a) + DQ(b))` folded into the convolution that writes `a` (or `b`), when this `Add`
    /// is its only reader.
    fn residual(
        &mut self,
        a: usize,
        b: usize,
        relu: bool,
        s: f32,
        z: u8,
        node: &pb::NodeProto,
    ) -> Result<usize, Unsupported> {
        if self.fused.contains(&a) || self.fused.contains(&b) {
            return Err(format!(
                "{} `{}`: a residual sum quantized twice",
                node.op_type, node.name
            ));
        }
        for (c, r) in [(a, b), (b, a)] {
            let Some(&step) = self.writer.get(&c) else {
                continue;
            };
            if !self.read_once(c) || self.values[c].map != self.values[r].map {
                continue;
            }
            let (cv, rv) = (&self.values[c], &self.values[r]);
            let mid = (cv.zero_point, cv.scale / s, r, rv.zero_point, rv.scale / s);
            let (map, channels) = (cv.map, cv.channels);
            if !matches!(
                &self.steps[step],
                QStep::Conv {
                    relu: false,
                    mid: None,
                    ..
                }
            ) {
                continue;
            }
            let out = self.new_value(&output(node), map, channels, s, z);
            // The step moves to the end: the residual (a shortcut convolution, say) may be
            // computed after it in the graph's order.
            let mut st = self.steps.remove(step);
            if let QStep::Conv {
                y,
                relu: r_,
                mid: m,
                ..
            } = &mut st
            {
                *y = out;
                *r_ = relu;
                *m = Some(mid);
            }
            self.steps.push(st);
            self.writer.remove(&c);
            self.fused.push(c);
            for i in self.writer.values_mut() {
                if *i > step {
                    *i -= 1;
                }
            }
            self.writer.insert(out, self.steps.len() - 1);
            return Ok(out);
        }
        Err(format!(
            "{} `{}`: a residual Add not fed by a convolution it alone reads",
            node.op_type, node.name
        ))
    }
}

impl QPlan {
    /// Compiles a QDQ graph for per-image input `chw`, or says why not.
    pub fn compile(proto: &pb::ModelProto, chw: [usize; 3]) -> Result<QPlan, Unsupported> {
        let g = proto.graph.as_ref().ok_or("no graph")?;
        let isa = int8::isa();
        let mut b = Builder {
            consts: HashMap::new(),
            deq: HashMap::new(),
            vals: HashMap::new(),
            values: Vec::new(),
            steps: Vec::new(),
            pending: Vec::new(),
            head: None,
            nodes: &g.node,
            outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
            names: Vec::new(),
            writer: HashMap::new(),
            input_chw: chw,
            isa,
            dtypes: (g.initializer.iter())
                .map(|t| (t.name.clone(), t.data_type))
                .collect(),
            fused: Vec::new(),
        };
        for t in &g.initializer {
            b.consts.insert(t.name.clone(), read_tensor(t)?);
        }
        let inputs: Vec<&pb::ValueInfoProto> = (g.input.iter())
            .filter(|i| !b.consts.contains_key(&i.name))
            .collect();
        let [inp] = inputs[..] else {
            return Err(format!("{} graph inputs", inputs.len()));
        };
        b.vals.insert(inp.name.clone(), Val::Pixels(Vec::new()));
        for node in &g.node {
            if node.output.len() != 1 {
                return Err(format!(
                    "{} `{}`: {} outputs",
                    node.op_type,
                    node.name,
                    node.output.len()
                ));
            }
            b.node(node)?;
        }
        let [out] = &g.output[..] else {
            return Err(format!("{} graph outputs", g.output.len()));
        };
        if !matches!(b.vals.get(&out.name), Some(Val::Logits)) {
            return Err("the output is not a Gemm after the pooling".into());
        }
        let head = b.head.take().ok_or("no classifier")?;
        if !matches!(b.steps.first(), Some(QStep::Input { .. })) {
            return Err("the input is not quantized first".into());
        }
        let classes = head.b.len();
        if classes == 0 {
            return Err("a classifier with no outputs".into());
        }
        // A pooled feature off by one step moves logit j by |w[j][c]| times the step.
        // A step of the map moves the mean by at most one map step; the pooling's own grid
        // (when there is one) rounds on top of that.
        let map_step = b.values[head.x].scale;
        let step = head.pool.map_or(map_step, |(s, _)| s.max(map_step));
        let worst = (0..classes)
            .map(|j| {
                head.w[j * (head.w.len() / classes)..][..head.w.len() / classes]
                    .iter()
                    .map(|v| v.abs())
                    .sum::<f32>()
            })
            .fold(0f32, f32::max);
        let tolerance = TOLERANCE_STEPS * step * worst;
        Ok(QPlan {
            values: b.values,
            steps: b.steps,
            head,
            chw,
            classes,
            isa,
            tolerance,
            scratch: Mutex::new(Vec::new()),
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The int8 body the convolutions run on.
    pub fn isa(&self) -> Int8Isa {
        self.isa
    }

    /// The largest difference from tract's logits the probe check accepts.
    pub fn tolerance(&self) -> f32 {
        self.tolerance
    }

    /// How many convolutions, and how many of them carry a residual add.
    pub fn convolutions(&self) -> (usize, usize) {
        let convs = self
            .steps
            .iter()
            .filter(|s| matches!(s, QStep::Conv { .. }));
        let fused = self
            .steps
            .iter()
            .filter(|s| matches!(s, QStep::Conv { mid: Some(_), .. }));
        (convs.count(), fused.count())
    }

    /// Logits of `n` images (`input`: NCHW float pixels as the graph takes them). One image at a
    /// time through every layer; with a `team`, each layer's rows are split over its threads.
    pub fn run(&self, n: usize, input: &[f32], team: Option<&Team>) -> Vec<f32> {
        let [c, h, w] = self.chw;
        assert_eq!(input.len(), n * c * h * w, "input of the wrong size");
        let mut maps = self
            .scratch
            .lock()
            .map(|mut s| s.pop())
            .unwrap_or(None)
            .unwrap_or_default();
        if maps.len() != self.values.len() {
            // Each map filled with its zero point: the borders are never written again.
            maps = (self.values.iter())
                .map(|v| vec![v.zero_point; v.map.len()])
                .collect();
        }
        let mut logits = vec![0f32; n * self.classes];
        for (img, out) in logits.chunks_exact_mut(self.classes).enumerate() {
            let pixels = &input[img * c * h * w..][..c * h * w];
            for s in &self.steps {
                self.step(s, pixels, &mut maps, team);
            }
            self.head(&maps[self.head.x], out);
        }
        if let Ok(mut s) = self.scratch.lock() {
            s.push(maps);
        }
        logits
    }

    fn step(&self, s: &QStep, pixels: &[f32], maps: &mut [Vec<u8>], team: Option<&Team>) {
        match s {
            QStep::Input { y, ops } => {
                let v = &self.values[*y];
                let [c, h, w] = self.chw;
                let (scale, z) = (v.scale, v.zero_point as f32);
                let m = v.map;
                let out = &mut maps[*y];
                let mut plane = vec![0f32; h * w];
                for ch in 0..c {
                    // Plane by plane, in the graph's order of operations (loops the compiler
                    // vectorizes), then QuantizeLinear: round(x / scale) + zero point, saturated.
                    plane.copy_from_slice(&pixels[ch * h * w..][..h * w]);
                    for (op, k) in ops {
                        let k = k[ch];
                        match op {
                            ChannelOp::Sub => plane.iter_mut().for_each(|p| *p -= k),
                            ChannelOp::Div => plane.iter_mut().for_each(|p| *p /= k),
                            ChannelOp::Mul => plane.iter_mut().for_each(|p| *p *= k),
                            ChannelOp::Add => plane.iter_mut().for_each(|p| *p += k),
                        }
                    }
                    plane.iter_mut().for_each(|p| {
                        *p = (round_even((*p / scale).clamp(-1024.0, 1024.0)) + z).clamp(0.0, 255.0)
                    });
                    for yy in 0..h {
                        let row = &plane[yy * w..][..w];
                        let at = m.at(yy, 0) + ch;
                        for (xx, &q) in row.iter().enumerate() {
                            out[at + xx * m.c] = q as u8;
                        }
                    }
                }
            }
            QStep::Conv {
                x,
                y,
                conv,
                mul,
                add,
                relu,
                mid,
            } => {
                // The output is taken out of `maps` while the inputs are read.
                let mut yb = std::mem::take(&mut maps[*y]);
                let q = Requant {
                    mul,
                    add,
                    zero_point: self.values[*y].zero_point,
                    relu: *relu,
                    mid: mid.map(|(zero_point, scale, r, rz, rs)| Mid {
                        zero_point,
                        scale,
                        residual: &maps[r],
                        residual_zero_point: rz,
                        residual_scale: rs,
                    }),
                };
                let (om, xb) = (conv.output, &maps[*x]);
                let rows_of = |r: std::ops::Range<usize>, dst: &mut [u8]| {
                    qconv_rows(conv, xb, dst, r, &q);
                };
                let body = &mut yb[om.row_len()..(om.h + 1) * om.row_len()];
                match team {
                    Some(t) if t.threads() > 1 && om.h > 1 => {
                        let parts = (t.threads() * 2).min(om.h);
                        let per = om.h.div_ceil(parts);
                        let chunks: Vec<Mutex<&mut [u8]>> = body
                            .chunks_mut(per * om.row_len())
                            .map(Mutex::new)
                            .collect();
                        t.for_each(chunks.len(), &|i| {
                            let r0 = i * per;
                            let r1 = (r0 + per).min(om.h);
                            if let Ok(mut dst) = chunks[i].lock() {
                                rows_of(r0..r1, &mut dst);
                            }
                        });
                    }
                    _ => rows_of(0..om.h, body),
                }
                maps[*y] = yb;
            }
        }
    }

    fn head(&self, x: &[u8], out: &mut [f32]) {
        let v = &self.values[self.head.x];
        let (m, c) = (v.map, v.channels);
        let hw = (m.h * m.w) as f32;
        let cin = self.head.w.len() / self.classes;
        let mut pooled = vec![0f32; c];
        for yy in 0..m.h {
            for xx in 0..m.w {
                let px = &x[m.at(yy, xx)..][..c];
                for (p, &q) in pooled.iter_mut().zip(px) {
                    *p += q as f32;
                }
            }
        }
        for p in pooled.iter_mut() {
            // The mean of the dequantized values, then the pooling's own QDQ when the graph has it.
            let mut f = (*p / hw - v.zero_point as f32) * v.scale;
            if let Some((s, z)) = self.head.pool {
                let q = ((f / s).round_ties_even() + z as f32).clamp(0.0, 255.0);
                f = (q - z as f32) * s;
            }
            *p = f;
        }
        for (j, o) in out.iter_mut().enumerate() {
            let row = &self.head.w[j * cin..][..cin];
            *o = self.head.b[j] + row.iter().zip(&pooled).map(|(a, b)| a * b).sum::<f32>();
        }
    }
}

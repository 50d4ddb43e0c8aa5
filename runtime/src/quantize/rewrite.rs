//! The graph side of quantization: BatchNorm folded into convolutions, the choice of what is
//! quantized, and the QDQ graph written from calibrated ranges.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

use super::FloatLayer;
use crate::native::{batch_norm_affine, fold_affine_into_conv, read_tensor};

/// Operations whose activation inputs are quantized without weights.
const ACTIVATION_ONLY: &[&str] = &[
    "Add",
    "GlobalAveragePool",
    "ReduceMean",
    "AveragePool",
    "MaxPool",
];

/// A quantized layer's weights: the initializer names and the output-channel axis.
struct Weights {
    weight: String,
    bias: Option<String>,
    axis: usize,
}

pub(super) struct Plan {
    /// The float model with BatchNorm folded: what is calibrated and then rewritten.
    model: pb::ModelProto,
    /// Indices (into the graph's nodes) of quantized nodes, with their weights for Conv/Gemm.
    quantized: HashMap<usize, Option<Weights>>,
    /// Activation tensors given a QuantizeLinear/DequantizeLinear pair, in graph order.
    acts: Vec<String>,
    float_layers: Vec<FloatLayer>,
    folded: usize,
}

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn float_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: [&str; 3],
    output: String,
    axis: Option<i64>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output],
        attribute: axis.map(|a| attr_int("axis", a)).into_iter().collect(),
        ..Default::default()
    }
}

/// How many times each tensor is read (node inputs and graph outputs).
fn readers(g: &pb::GraphProto) -> HashMap<String, usize> {
    let mut r = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *r.entry(i.clone()).or_insert(0) += 1;
        }
    }
    for o in &g.output {
        *r.entry(o.name.clone()).or_insert(0) += 1;
    }
    r
}

fn float_values(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    let k = read_tensor(t)?;
    if k.f.len() != k.dims.iter().product::<usize>() {
        return Err(format!("`{}` is not a float tensor", t.name));
    }
    Ok(k.f)
}

impl Plan {
    /// Folds BatchNorm, picks the quantized nodes and activations; refuses a graph that is
    /// already quantized or older than opset 13.
    pub(super) fn new(mut model: pb::ModelProto, keep_float: &[String]) -> Result<Plan, String> {
        let opset = (model.opset_import.iter())
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(0, |o| o.version);
        if opset < 13 {
            return Err(format!(
                "opset {opset}: quantization writes per-channel QDQ, which needs opset 13 or later (re-export the model at opset 13+)"
            ));
        }
        let g = model.graph.as_mut().ok_or("no graph")?;
        if let Some(n) = (g.node.iter())
            .find(|n| n.op_type.contains("Quantize") || n.op_type.starts_with("QLinear"))
        {
            return Err(format!(
                "already quantized ({} `{}`); quantize the float model",
                n.op_type, n.name
            ));
        }
        let folded = fold_batch_norms(g)?;
        let inits: HashMap<String, usize> = (g.initializer.iter().enumerate())
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let constants: HashSet<&str> = (g.node.iter())
            .filter(|n| n.op_type == "Constant")
            .flat_map(|n| n.output.iter().map(String::as_str))
            .collect();
        let is_const = |s: &str| inits.contains_key(s) || constants.contains(s);
        let reads = readers(g);
        // The layers the options name.
        let first_conv = g.node.iter().position(|n| n.op_type == "Conv");
        let classifier =
            (g.node.iter()).rposition(|n| n.op_type == "Gemm" || n.op_type == "MatMul");
        let mut keep: HashMap<usize, String> = HashMap::new();
        for k in keep_float {
            let hit = match k.as_str() {
                "first-conv" => first_conv,
                "classifier" => classifier,
                name => g.node.iter().position(|n| n.name == name),
            };
            let Some(i) = hit else {
                return Err(format!(
                    "--keep-float {k}: no such layer (give first-conv, classifier or a node name)"
                ));
            };
            keep.insert(i, format!("kept float on request ({k})"));
        }
        let mut quantized = HashMap::new();
        let mut float_layers = Vec::new();
        for (i, n) in g.node.iter().enumerate() {
            let op = n.op_type.as_str();
            let weighted = matches!(op, "Conv" | "Gemm" | "MatMul");
            if !weighted {
                let acts_only = ACTIVATION_ONLY.contains(&op)
                    && !n.input.is_empty()
                    && n.input.iter().all(|x| !x.is_empty() && !is_const(x))
                    && (op != "Add" || n.input.len() == 2);
                if acts_only {
                    quantized.insert(i, None);
                }
                continue;
            }
            let why = match keep.get(&i) {
                Some(r) => Err(r.clone()),
                None => weights_of(g, n, &inits, &reads),
            };
            match why {
                Ok(w) => {
                    quantized.insert(i, Some(w));
                }
                Err(reason) => float_layers.push(FloatLayer {
                    node: n.name.clone(),
                    op: op.into(),
                    reason,
                }),
            }
        }
        // Activation inputs of quantized nodes, in graph order.
        let mut seen = HashSet::new();
        let mut acts = Vec::new();
        let mut order: Vec<&usize> = quantized.keys().collect();
        order.sort();
        for &i in order {
            let n = &g.node[i];
            let inputs: &[String] = match quantized[&i] {
                Some(_) => &n.input[..1],
                None => &n.input,
            };
            for x in inputs {
                if !is_const(x) && seen.insert(x.clone()) {
                    acts.push(x.clone());
                }
            }
        }
        Ok(Plan {
            model,
            quantized,
            acts,
            float_layers,
            folded,
        })
    }

    pub(super) fn float_model(&self) -> &pb::ModelProto {
        &self.model
    }

    pub(super) fn activations(&self) -> &[String] {
        &self.acts
    }

    pub(super) fn float_layers(&self) -> &[FloatLayer] {
        &self.float_layers
    }

    pub(super) fn quantized_nodes(&self) -> usize {
        self.quantized.len()
    }

    pub(super) fn folded_batchnorms(&self) -> usize {
        self.folded
    }

    /// The QDQ model for calibrated `(min, max)` ranges of [`Plan::activations`], with the
    /// quantization record added to the metadata.
    pub(super) fn emit(
        &self,
        ranges: &[(f32, f32)],
        record: &str,
    ) -> Result<pb::ModelProto, String> {
        let mut model = self.model.clone();
        let g = model.graph.as_mut().expect("checked in new");
        let mut taken: HashSet<String> = (g.node.iter())
            .flat_map(|n| n.output.iter().cloned())
            .chain(g.initializer.iter().map(|t| t.name.clone()))
            .chain(g.input.iter().map(|i| i.name.clone()))
            .collect();
        let mut fresh = |want: String| -> Result<String, String> {
            if taken.insert(want.clone()) {
                Ok(want)
            } else {
                Err(format!("the name `{want}` is already used in the graph"))
            }
        };
        let mut new_inits: Vec<pb::TensorProto> = Vec::new();
        let mut weight_nodes: Vec<pb::NodeProto> = Vec::new();
        // Activations: scale and zero point, and the Q/DQ pair's output names.
        let mut act = HashMap::new();
        for (name, &(lo, hi)) in self.acts.iter().zip(ranges) {
            let (scale, zp) = uint8_params(lo, hi);
            let s = fresh(format!("{name}_scale"))?;
            let z = fresh(format!("{name}_zero_point"))?;
            let q = fresh(format!("{name}_quantized"))?;
            let dq = fresh(format!("{name}_dequantized"))?;
            new_inits.push(float_tensor(&s, &[], &[scale]));
            new_inits.push(pb::TensorProto {
                name: z.clone(),
                data_type: DataType::Uint8 as i32,
                raw_data: vec![zp],
                ..Default::default()
            });
            act.insert(name.clone(), (scale, s, z, q, dq));
        }
        // Weights and biases.
        let inits: HashMap<String, pb::TensorProto> = (g.initializer.iter())
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let mut dropped: HashSet<String> = HashSet::new();
        let mut renames: HashMap<(usize, usize), String> = HashMap::new();
        let mut order: Vec<&usize> = self.quantized.keys().collect();
        order.sort();
        for &i in order {
            let n = &g.node[i];
            let inputs: &[String] = match &self.quantized[&i] {
                Some(_) => &n.input[..1],
                None => &n.input,
            };
            for (j, x) in inputs.iter().enumerate() {
                if let Some((_, _, _, _, dq)) = act.get(x) {
                    renames.insert((i, j), dq.clone());
                }
            }
            let Some(w) = &self.quantized[&i] else {
                continue;
            };
            let wt = &inits[&w.weight];
            let values = float_values(wt)?;
            let dims: Vec<usize> = wt.dims.iter().map(|&d| d as usize).collect();
            let (wq, wscale) = int8_per_channel(&values, &dims, w.axis);
            let c = wscale.len() as i64;
            let (q, s, z, dq) = (
                fresh(format!("{}_quantized", w.weight))?,
                fresh(format!("{}_scale", w.weight))?,
                fresh(format!("{}_zero_point", w.weight))?,
                fresh(format!("{}_dequantized", w.weight))?,
            );
            new_inits.push(pb::TensorProto {
                name: q.clone(),
                dims: wt.dims.clone(),
                data_type: DataType::Int8 as i32,
                raw_data: wq.iter().map(|&v| v as u8).collect(),
                ..Default::default()
            });
            new_inits.push(float_tensor(&s, &[c], &wscale));
            new_inits.push(pb::TensorProto {
                name: z.clone(),
                dims: vec![c],
                data_type: DataType::Int8 as i32,
                raw_data: vec![0; c as usize],
                ..Default::default()
            });
            weight_nodes.push(node(
                "DequantizeLinear",
                format!("{}_DequantizeLinear", w.weight),
                [&q, &s, &z],
                dq.clone(),
                Some(w.axis as i64),
            ));
            renames.insert((i, 1), dq);
            dropped.insert(w.weight.clone());
            if let Some(b) = &w.bias {
                let x_scale = act.get(&n.input[0]).map(|a| a.0).ok_or_else(|| {
                    format!("{} `{}`: its input is not quantized", n.op_type, n.name)
                })?;
                let bv = float_values(&inits[b])?;
                if bv.len() != wscale.len() {
                    return Err(format!(
                        "{} `{}`: a bias of {} values for {} output channels",
                        n.op_type,
                        n.name,
                        bv.len(),
                        wscale.len()
                    ));
                }
                let bscale: Vec<f32> = wscale.iter().map(|&s| s * x_scale).collect();
                let bq: Vec<i32> = (bv.iter().zip(&bscale))
                    .map(|(&v, &s)| (v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                    .collect();
                let (q, s, z, dq) = (
                    fresh(format!("{b}_quantized"))?,
                    fresh(format!("{b}_scale"))?,
                    fresh(format!("{b}_zero_point"))?,
                    fresh(format!("{b}_dequantized"))?,
                );
                new_inits.push(pb::TensorProto {
                    name: q.clone(),
                    dims: vec![c],
                    data_type: DataType::Int32 as i32,
                    raw_data: bq.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ..Default::default()
                });
                new_inits.push(float_tensor(&s, &[c], &bscale));
                new_inits.push(pb::TensorProto {
                    name: z.clone(),
                    dims: vec![c],
                    data_type: DataType::Int32 as i32,
                    raw_data: vec![0; 4 * c as usize],
                    ..Default::default()
                });
                weight_nodes.push(node(
                    "DequantizeLinear",
                    format!("{b}_DequantizeLinear"),
                    [&q, &s, &z],
                    dq.clone(),
                    Some(0),
                ));
                renames.insert((i, 2), dq);
                dropped.insert(b.clone());
            }
        }
        // The new node list: weight DQs, Q/DQ of graph inputs, then each node followed by the
        // Q/DQ pairs of its outputs.
        let qdq = |t: &String| -> Vec<pb::NodeProto> {
            match act.get(t) {
                None => Vec::new(),
                Some((_, s, z, q, dq)) => vec![
                    node(
                        "QuantizeLinear",
                        format!("{t}_QuantizeLinear"),
                        [t, s, z],
                        q.clone(),
                        None,
                    ),
                    node(
                        "DequantizeLinear",
                        format!("{t}_DequantizeLinear"),
                        [q, s, z],
                        dq.clone(),
                        None,
                    ),
                ],
            }
        };
        let mut nodes = weight_nodes;
        for i in &g.input {
            nodes.extend(qdq(&i.name));
        }
        for (i, n) in g.node.iter().enumerate() {
            let mut n = n.clone();
            for (j, x) in n.input.iter_mut().enumerate() {
                if let Some(r) = renames.get(&(i, j)) {
                    *x = r.clone();
                }
            }
            let outs = n.output.clone();
            nodes.push(n);
            for o in &outs {
                nodes.extend(qdq(o));
            }
        }
        g.node = nodes;
        g.initializer.retain(|t| !dropped.contains(&t.name));
        g.initializer.extend(new_inits);
        g.input.retain(|i| !dropped.contains(&i.name));
        // Shapes and types of intermediate values are recomputed by every reader.
        g.value_info.clear();
        model.metadata_props.retain(|e| e.key != super::KEY);
        model.metadata_props.push(pb::StringStringEntryProto {
            key: super::KEY.into(),
            value: record.into(),
        });
        Ok(model)
    }
}

/// The weights of a Conv/Gemm/MatMul that can be quantized per output channel, or why not.
fn weights_of(
    g: &pb::GraphProto,
    n: &pb::NodeProto,
    inits: &HashMap<String, usize>,
    reads: &HashMap<String, usize>,
) -> Result<Weights, String> {
    let own = |name: &str, what: &str| -> Result<&pb::TensorProto, String> {
        let t = inits
            .get(name)
            .map(|&i| &g.initializer[i])
            .ok_or_else(|| format!("its {what} `{name}` is not a weight of the file"))?;
        if reads.get(name).copied().unwrap_or(0) != 1 {
            return Err(format!("its {what} `{name}` is shared with other nodes"));
        }
        if t.data_type != DataType::Float as i32 {
            return Err(format!("its {what} `{name}` is not float32"));
        }
        Ok(t)
    };
    let x = n
        .input
        .first()
        .filter(|x| !x.is_empty())
        .ok_or("no input")?;
    if inits.contains_key(x.as_str()) {
        return Err("its input is a constant".into());
    }
    let w = own(n.input.get(1).map_or("", String::as_str), "weight")?;
    let bias = n.input.get(2).filter(|b| !b.is_empty()).cloned();
    let axis = match n.op_type.as_str() {
        "Conv" => {
            if w.dims.len() < 3 {
                return Err(format!("a weight of dims {:?}", w.dims));
            }
            0
        }
        "Gemm" => {
            let f = |k: &str| attr(n, k).map_or(1.0, |a| a.f);
            let i = |k: &str| attr(n, k).map_or(0, |a| a.i);
            if w.dims.len() != 2 || i("transA") != 0 || f("alpha") != 1.0 || f("beta") != 1.0 {
                return Err("only Gemm without transA, alpha or beta, with 2-D weights".into());
            }
            if i("transB") != 0 {
                0
            } else {
                1
            }
        }
        _ => return Err("MatMul is not quantized (only Conv and Gemm)".into()),
    };
    if let Some(b) = &bias {
        let t = own(b, "bias")?;
        let out = w.dims[axis];
        if t.dims.len() != 1 || t.dims[0] != out {
            return Err(format!("a bias of dims {:?} for {out} outputs", t.dims));
        }
    }
    Ok(Weights {
        weight: w.name.clone(),
        bias,
        axis,
    })
}

/// Folds each BatchNormalization whose input is a Conv's output read by nothing else, with all
/// parameters in initializers, into that Conv (`native::fuse`'s folding). Returns the count.
fn fold_batch_norms(g: &mut pb::GraphProto) -> Result<usize, String> {
    let mut folded = 0;
    loop {
        let reads = readers(g);
        let inits: HashMap<String, usize> = (g.initializer.iter().enumerate())
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let producer: HashMap<&str, usize> = (g.node.iter().enumerate())
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        let mut found = None;
        for (b, n) in g.node.iter().enumerate() {
            if n.op_type != "BatchNormalization"
                || n.input.len() != 5
                || n.output.iter().skip(1).any(|o| !o.is_empty())
                || !n.input[1..].iter().all(|i| inits.contains_key(i))
            {
                continue;
            }
            let Some(&c) = producer.get(n.input[0].as_str()) else {
                continue;
            };
            let conv = &g.node[c];
            let owned =
                |name: &str| inits.contains_key(name) && reads.get(name).copied().unwrap_or(0) == 1;
            let ok = conv.op_type == "Conv"
                && conv.output.len() == 1
                && reads.get(&n.input[0]).copied().unwrap_or(0) == 1
                && conv.input.len() >= 2
                && owned(&conv.input[1])
                && conv.input.get(2).is_none_or(|b| b.is_empty() || owned(b));
            if ok {
                found = Some((c, b));
                break;
            }
        }
        let Some((c, b)) = found else {
            return Ok(folded);
        };
        let bn = g.node[b].clone();
        let get = |i: usize| float_values(&g.initializer[inits[&bn.input[i]]]);
        let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
        let eps = attr(&bn, "epsilon").map_or(1e-5, |a| a.f);
        let wi = inits[&g.node[c].input[1]];
        let mut w = float_values(&g.initializer[wi])?;
        let cout = g.initializer[wi].dims.first().copied().unwrap_or(0) as usize;
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != cout) || cout == 0 {
            return Err(format!(
                "BatchNormalization `{}`: parameters do not match the {cout} channels of its convolution",
                bn.name
            ));
        }
        let bias_name = g.node[c].input.get(2).filter(|b| !b.is_empty()).cloned();
        let mut bias = match &bias_name {
            Some(n) => float_values(&g.initializer[inits[n]])?,
            None => vec![0.0; cout],
        };
        if bias.len() != cout {
            return Err(format!(
                "Conv `{}`: a bias of {} values",
                g.node[c].name,
                bias.len()
            ));
        }
        let (scale, shift) = batch_norm_affine(&gamma, &beta, &mean, &var, eps);
        fold_affine_into_conv(&mut w, &mut bias, &scale, &shift);
        let wdims = g.initializer[wi].dims.clone();
        let wname = g.initializer[wi].name.clone();
        g.initializer[wi] = float_tensor(&wname, &wdims, &w);
        match bias_name {
            Some(n) => g.initializer[inits[&n]] = float_tensor(&n, &[cout as i64], &bias),
            None => {
                let mut name = format!("{}.bias", wname.trim_end_matches(".weight"));
                while inits.contains_key(&name) {
                    name.push('_');
                }
                g.initializer
                    .push(float_tensor(&name, &[cout as i64], &bias));
                let conv = &mut g.node[c];
                conv.input.resize(2, String::new());
                conv.input.push(name);
            }
        }
        g.node[c].output[0] = bn.output[0].clone();
        g.node.remove(b);
        // BatchNorm parameters nothing else reads.
        let reads = readers(g);
        g.initializer
            .retain(|t| !bn.input[1..].contains(&t.name) || reads.contains_key(&t.name));
        folded += 1;
    }
}

/// uint8 scale and zero point for values in `[lo, hi]` (widened to hold 0).
pub(super) fn uint8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if !(scale.is_finite() && scale > 0.0) {
        return (1.0, 0);
    }
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Symmetric int8 per output channel along `axis`: values in [-127, 127] and one scale per
/// channel (`max |w| / 127`; 1 for an all-zero channel).
pub(super) fn int8_per_channel(w: &[f32], dims: &[usize], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let c = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel = |k: usize| (k / inner) % c;
    let mut amax = vec![0.0f32; c];
    for (k, &v) in w.iter().enumerate() {
        let ch = channel(k);
        amax[ch] = amax[ch].max(v.abs());
    }
    let scale: Vec<f32> = amax
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let q = (w.iter().enumerate())
        .map(|(k, &v)| (v / scale[channel(k)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_params_hold_zero_exactly() {
        let (s, z) = uint8_params(0.0, 2.55);
        assert!((s - 0.01).abs() < 1e-6 && z == 0, "{s} {z}");
        // [-1, 1]: the ends dequantize within one step of the range's ends.
        let (s, z) = uint8_params(-1.0, 1.0);
        assert!((s - 2.0 / 255.0).abs() < 1e-7);
        let (lo, hi) = (-(z as f32) * s, (255.0 - z as f32) * s);
        assert!((lo + 1.0).abs() <= s && (hi - 1.0).abs() <= s, "{lo} {hi}");
        // One-signed ranges are widened to hold 0: it is the top, or the bottom.
        assert_eq!(uint8_params(-2.0, -1.0).1, 255);
        let (s, z) = uint8_params(1.0, 2.0);
        assert!((s - 2.0 / 255.0).abs() < 1e-7 && z == 0, "{s} {z}");
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 0));
    }

    #[test]
    fn int8_weights_use_one_scale_per_output_channel() {
        // [2, 3] with axis 0 (Conv, Gemm transB) and axis 1 (Gemm without transB).
        let w = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0];
        let (q, s) = int8_per_channel(&w, &[2, 3], 0);
        assert_eq!(q, [127, -64, 32, 0, 0, 0]);
        assert_eq!(s, [1.0 / 127.0, 1.0]);
        let (q, s) = int8_per_channel(&w, &[2, 3], 1);
        assert_eq!(s, [1.0 / 127.0, 0.5 / 127.0, 0.25 / 127.0]);
        assert_eq!(q, [127, -127, 127, 0, 0, 0]);
    }
}

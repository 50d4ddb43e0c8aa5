//! Folding at compile time: operations on constants become constants, so the shape arithmetic an
//! exporter writes into the graph needs no steps. PyTorch's exports build the option-A shortcut's
//! `Pad` amounts from `ConstantOfShape`, `Concat`, `Reshape`, `Slice` (negative steps),
//! `Transpose` and `Cast` of constants; with a dynamic batch axis, `Shape` of a computed value
//! feeds `Gather`/`Slice`, `Unsqueeze` and `Concat` into `ConstantOfShape`, whose zeros are then
//! concatenated to the value along the channels.
//!
//! The graph is compiled for a known per-image shape, so `Shape` of a computed value is a constant
//! except for its first entry, the batch size, which is marked ([`Const::batch`]). The operations
//! here only move entries (no arithmetic), so a marked entry stays exactly the batch size. Zeros
//! shaped `[batch, c, h, w]` are kept as a per-image shape ([`Builder::zeros`]), and `Concat` of a
//! computed value with such zeros along the channels becomes the zero-padding step `Pad`.
//! Anything else that depends on the batch size is left to tract, with the reason.

use tract_onnx::pb;

use super::compile::{attr, attr_int, attr_ints, input, output, read_tensor, Builder, Const};
use super::graph::Step;
use super::Unsupported;

/// Most values a folded constant may hold.
const MAX_CONST_VALUES: usize = crate::contract::MAX_RUN_VALUES;

impl Const {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn is_float(&self) -> bool {
        !self.f.is_empty()
    }

    /// The tensor of entries `idx` (flat, row-major) of this one, shaped `dims`.
    fn pick(&self, idx: &[usize], dims: Vec<usize>) -> Const {
        fn take<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
            if v.is_empty() {
                Vec::new()
            } else {
                idx.iter().map(|&i| v[i]).collect()
            }
        }
        Const {
            dims,
            f: take(&self.f, idx),
            i: take(&self.i, idx),
            batch: take(&self.batch, idx),
        }
    }

    fn reshaped(&self, dims: Vec<usize>) -> Const {
        Const {
            dims,
            ..self.clone()
        }
    }
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * dims[d + 1];
    }
    s
}

/// Every multi-index of `dims`, row-major.
fn each_index(dims: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let st = strides(dims);
    let n: usize = dims.iter().product();
    (0..n).map(move |k| (0..dims.len()).map(|d| k / st[d] % dims[d]).collect())
}

/// `a` as an axis of a `rank`-D tensor (negative counts from the end).
fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a.checked_add(r)? } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

fn too_big(node: &pb::NodeProto, dims: &[usize]) -> Result<(), Unsupported> {
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= MAX_CONST_VALUES => Ok(()),
        _ => Err(format!(
            "{} `{}`: a constant of {dims:?} values",
            node.op_type, node.name
        )),
    }
}

impl Builder {
    fn fold(&mut self, node: &pb::NodeProto, k: Const) -> Result<(), Unsupported> {
        self.consts.insert(output(node), k);
        Ok(())
    }

    /// The node's first input, which must be a constant here.
    fn data(&self, node: &pb::NodeProto) -> Result<Const, Unsupported> {
        let name = input(node, 0);
        self.consts.get(name).cloned().ok_or_else(|| {
            format!(
                "{} `{}` of `{name}`, which is not a constant (only constants are folded)",
                node.op_type, node.name
            )
        })
    }

    /// Integer axes from the attribute `axes` or else from input 1 (opset 13 on).
    fn axes(&self, node: &pb::NodeProto) -> Result<Option<Vec<i64>>, Unsupported> {
        if let Some(a) = attr_ints(node, "axes") {
            return Ok(Some(a));
        }
        match node.input.get(1).filter(|v| !v.is_empty()) {
            Some(v) => Ok(Some(self.konst(v, node)?.i.clone())),
            None => Ok(None),
        }
    }

    /// The dims of a value or constant: for a computed value, the batch size (marked) and its
    /// per-image shape.
    pub(super) fn shape(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let name = input(node, 0);
        let (dims, batch): (Vec<i64>, bool) = match self.consts.get(name) {
            Some(k) => (k.dims.iter().map(|&d| d as i64).collect(), false),
            None => {
                let s = match self.zeros.get(name) {
                    Some(s) => s.clone(),
                    None => self.shapes[self.value(name, node)?].clone(),
                };
                let mut d = vec![0];
                d.extend(s.iter().map(|&d| d as i64));
                (d, true)
            }
        };
        let r = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
        let start = clamp(attr_int(node, "start", 0));
        let end = clamp(attr_int(node, "end", r)).max(start);
        let k = Const {
            dims: vec![end - start],
            f: Vec::new(),
            i: dims[start..end].to_vec(),
            batch: if batch {
                (start..end).map(|j| j == 0).collect()
            } else {
                Vec::new()
            },
        };
        self.fold(node, k)
    }

    /// Entries of a constant along one axis.
    pub(super) fn gather(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let idx = self.konst(input(node, 1), node)?.clone();
        let rank = data.dims.len();
        let a = axis(attr_int(node, "axis", 0), rank)
            .ok_or_else(|| format!("Gather `{}`: axis of a {rank}-D constant", node.name))?;
        if idx.is_float() {
            return Err(format!("Gather `{}`: float indices", node.name));
        }
        let outer: usize = data.dims[..a].iter().product();
        let inner: usize = data.dims[a + 1..].iter().product();
        let d = data.dims[a] as i64;
        let js = idx
            .i
            .iter()
            .map(|&j| {
                let j = if j < 0 { j.saturating_add(d) } else { j };
                (0..d)
                    .contains(&j)
                    .then_some(j as usize)
                    .ok_or_else(|| format!("Gather `{}`: index out of range", node.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut dims = data.dims[..a].to_vec();
        dims.extend(&idx.dims);
        dims.extend(&data.dims[a + 1..]);
        too_big(node, &dims)?;
        let mut flat = Vec::new();
        for o in 0..outer {
            for &j in &js {
                flat.extend((0..inner).map(|r| (o * data.dims[a] + j) * inner + r));
            }
        }
        self.fold(node, data.pick(&flat, dims))
    }

    /// A constant with axes of 1 inserted.
    pub(super) fn unsqueeze(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let axes = self
            .axes(node)?
            .ok_or_else(|| format!("Unsqueeze `{}` without axes", node.name))?;
        let rank = data.dims.len() + axes.len();
        let mut at = axes
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("Unsqueeze `{}`: axes {axes:?}", node.name))?;
        at.sort_unstable();
        at.dedup();
        if at.len() != axes.len() {
            return Err(format!("Unsqueeze `{}`: axes {axes:?}", node.name));
        }
        let mut dims = data.dims.clone();
        for &a in &at {
            dims.insert(a, 1);
        }
        self.fold(node, data.reshaped(dims))
    }

    /// A constant with axes of 1 removed.
    pub(super) fn squeeze(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let rank = data.dims.len();
        let drop: Vec<usize> = match self.axes(node)? {
            None => (0..rank).filter(|&a| data.dims[a] == 1).collect(),
            Some(axes) => axes
                .iter()
                .map(|&a| axis(a, rank).filter(|&a| data.dims[a] == 1))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("Squeeze `{}`: axes {axes:?}", node.name))?,
        };
        let dims = (0..rank)
            .filter(|a| !drop.contains(a))
            .map(|a| data.dims[a])
            .collect();
        self.fold(node, data.reshaped(dims))
    }

    /// A constant reshaped (`0` keeps a dim unless `allowzero`, `-1` takes the rest).
    pub(super) fn fold_reshape(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let t = self.konst(input(node, 1), node)?.i.clone();
        let allow_zero = attr_int(node, "allowzero", 0) == 1;
        let mut dims = Vec::with_capacity(t.len());
        let mut infer = None;
        for (j, &v) in t.iter().enumerate() {
            match v {
                -1 if infer.is_none() => {
                    infer = Some(j);
                    dims.push(1);
                }
                0 if !allow_zero => dims.push(
                    *data
                        .dims
                        .get(j)
                        .ok_or_else(|| format!("Reshape `{}` to {t:?}", node.name))?,
                ),
                v if v >= 0 => dims.push(v as usize),
                _ => return Err(format!("Reshape `{}` to {t:?}", node.name)),
            }
        }
        let n = data.len();
        if let Some(j) = infer {
            let rest: usize = dims.iter().product();
            if rest == 0 || n % rest != 0 {
                return Err(format!("Reshape `{}` to {t:?}", node.name));
            }
            dims[j] = n / rest;
        }
        if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(n) {
            return Err(format!(
                "Reshape `{}` of {:?} to {t:?}",
                node.name, data.dims
            ));
        }
        self.fold(node, data.reshaped(dims))
    }

    /// A slice of a constant, with any non-zero steps.
    pub(super) fn fold_slice(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let ints = |i: usize| -> Result<Option<Vec<i64>>, Unsupported> {
            match node.input.get(i).filter(|v| !v.is_empty()) {
                Some(v) => Ok(Some(self.konst(v, node)?.i.clone())),
                None => Ok(None),
            }
        };
        let bad = || format!("Slice `{}`: inconsistent inputs", node.name);
        let starts = ints(1)?.ok_or_else(bad)?;
        let ends = ints(2)?.ok_or_else(bad)?;
        let axes = ints(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = ints(4)?.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(bad());
        }
        let rank = data.dims.len();
        let (mut first, mut step, mut dims) =
            (vec![0i64; rank], vec![1i64; rank], data.dims.clone());
        for j in 0..axes.len() {
            let a = axis(axes[j], rank).ok_or_else(bad)?;
            let (d, st) = (data.dims[a] as i64, steps[j]);
            if st == 0 {
                return Err(bad());
            }
            let wrap = |v: i64| i128::from(if v < 0 { v.saturating_add(d) } else { v });
            let (d, st) = (i128::from(d), i128::from(st));
            // ONNX: clamp to [0, d] going forward, to [-1, d - 1] going backward.
            let (b, count) = if st > 0 {
                let (b, e) = (wrap(starts[j]).clamp(0, d), wrap(ends[j]).clamp(0, d));
                (b, if e > b { (e - b + st - 1) / st } else { 0 })
            } else if d > 0 {
                let (b, e) = (
                    wrap(starts[j]).clamp(0, d - 1),
                    wrap(ends[j]).clamp(-1, d - 1),
                );
                (b, if b > e { (b - e - st - 1) / -st } else { 0 })
            } else {
                (0, 0)
            };
            // Within the axis: 0 <= b < d wherever count > 0, |st| then at most d.
            let st = if count > 0 { st } else { 1 };
            let (b, st) = (b as i64, st as i64);
            first[a] = b;
            step[a] = st;
            dims[a] = count as usize;
        }
        let st = strides(&data.dims);
        let flat: Vec<usize> = each_index(&dims)
            .map(|o| {
                (0..rank)
                    .map(|a| (first[a] + o[a] as i64 * step[a]) as usize * st[a])
                    .sum()
            })
            .collect();
        self.fold(node, data.pick(&flat, dims))
    }

    /// A constant's axes permuted.
    pub(super) fn transpose(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let data = self.data(node)?;
        let rank = data.dims.len();
        let perm = attr_ints(node, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut seen = vec![false; rank];
        let ok = perm.len() == rank
            && perm
                .iter()
                .all(|&p| axis(p, rank).is_some_and(|p| !std::mem::replace(&mut seen[p], true)));
        if !ok {
            return Err(format!("Transpose `{}`: perm {perm:?}", node.name));
        }
        let perm: Vec<usize> = perm.iter().map(|&p| axis(p, rank).unwrap()).collect();
        let dims: Vec<usize> = perm.iter().map(|&p| data.dims[p]).collect();
        let st = strides(&data.dims);
        let flat: Vec<usize> = each_index(&dims)
            .map(|o| (0..rank).map(|k| o[k] * st[perm[k]]).sum())
            .collect();
        self.fold(node, data.pick(&flat, dims))
    }

    /// A constant converted between float32 and integers.
    pub(super) fn cast(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        use pb::tensor_proto::DataType;
        let mut k = self.data(node)?;
        let to = attr_int(node, "to", 0);
        match DataType::try_from(to as i32) {
            Ok(DataType::Float) => {
                if k.batch.contains(&true) {
                    return Err(format!("Cast `{}`: the batch size as a float", node.name));
                }
                if !k.is_float() {
                    k.f = k.i.iter().map(|&v| v as f32).collect();
                    k.i = Vec::new();
                }
            }
            Ok(DataType::Int64 | DataType::Int32) => {
                if k.is_float() {
                    k.i = k.f.iter().map(|&v| v as i64).collect();
                    k.f = Vec::new();
                }
            }
            _ => return Err(format!("Cast `{}` to element type {to}", node.name)),
        }
        self.fold(node, k)
    }

    /// A constant filled with one value. When the shape starts with the batch size, zeros
    /// for every image of the batch (see [`Builder::zeros`]).
    pub(super) fn constant_of_shape(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let shape = self.shape_konst(input(node, 0), node)?.clone();
        let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
            Some(t) => read_tensor(t)?,
            None => Const {
                dims: vec![1],
                f: vec![0.0],
                i: Vec::new(),
                batch: Vec::new(),
            },
        };
        if value.f.len().max(value.i.len()) != 1 || shape.dims.len() != 1 {
            return Err(format!(
                "ConstantOfShape `{}`: value {:?} or shape {:?}",
                node.name, value.dims, shape.dims
            ));
        }
        let dims = shape
            .i
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("ConstantOfShape `{}` of {:?}", node.name, shape.i))?;
        let batch = |j: usize| shape.batch.get(j).copied().unwrap_or(false);
        if !shape.batch.contains(&true) {
            too_big(node, &dims)?;
            let n: usize = dims.iter().product();
            let k = Const {
                f: value.f.repeat(n),
                i: value.i.repeat(n),
                dims,
                batch: Vec::new(),
            };
            return self.fold(node, k);
        }
        if !batch(0) || (1..dims.len()).any(batch) || dims.len() < 2 || value.f != [0.0] {
            return Err(format!(
                "ConstantOfShape `{}`: only float zeros of [batch, ...] depend on the batch size",
                node.name
            ));
        }
        let per_image = dims[1..].to_vec();
        too_big(node, &per_image)?;
        self.zeros.insert(output(node), per_image);
        Ok(())
    }

    /// Constants joined along an axis; or a computed value joined along the channels with zeros
    /// for every image (the option-A shortcut), as the zero-padding step.
    pub(super) fn concat(&mut self, node: &pb::NodeProto) -> Result<(), Unsupported> {
        let ax = attr_int(node, "axis", i64::MAX);
        if node.input.iter().all(|v| self.consts.contains_key(v)) {
            let parts: Vec<Const> = node.input.iter().map(|v| self.consts[v].clone()).collect();
            return self.concat_consts(node, ax, parts);
        }
        // Per-image shapes, and which input is the computed value.
        let mut shapes = Vec::new();
        let mut value = None;
        for (j, name) in node.input.iter().enumerate() {
            if let Some(s) = self.zeros.get(name) {
                shapes.push(s.clone());
            } else if let Some(&x) = self.ids.get(name.as_str()) {
                if value.replace((j, x)).is_some() {
                    return Err(format!("Concat `{}` of several computed values", node.name));
                }
                shapes.push(self.shapes[x].clone());
            } else {
                return Err(format!(
                    "Concat `{}`: `{name}` is neither zeros for the batch nor a computed value",
                    node.name
                ));
            }
        }
        let s0 = shapes[0].clone();
        let ok = s0.len() == 3
            && axis(ax, 4) == Some(1)
            && shapes.iter().all(|s| s.len() == 3 && s[1..] == s0[1..]);
        if !ok {
            return Err(format!(
                "Concat `{}`: only along the channels of [c, h, w] images, not {shapes:?} at axis {ax}",
                node.name
            ));
        }
        let c: usize = shapes.iter().map(|s| s[0]).sum();
        let shape = vec![c, s0[1], s0[2]];
        match value {
            None => {
                too_big(node, &shape)?;
                self.zeros.insert(output(node), shape);
                Ok(())
            }
            Some((j, x)) => {
                let before: usize = shapes[..j].iter().map(|s| s[0]).sum();
                self.emit(node, shape, |y| Step::Pad {
                    x,
                    y,
                    begin: [before, 0, 0],
                })
            }
        }
    }

    fn concat_consts(
        &mut self,
        node: &pb::NodeProto,
        ax: i64,
        parts: Vec<Const>,
    ) -> Result<(), Unsupported> {
        let bad = || format!("Concat `{}` of constants", node.name);
        let first = parts.first().ok_or_else(bad)?;
        let rank = first.dims.len();
        let a = axis(ax, rank).ok_or_else(bad)?;
        let float = first.is_float();
        let marked = parts.iter().any(|p| p.batch.contains(&true));
        let same = parts.iter().all(|p| {
            p.dims.len() == rank
                && (p.is_float() == float || p.len() == 0)
                && (0..rank).all(|d| d == a || p.dims[d] == first.dims[d])
        });
        if !same {
            return Err(bad());
        }
        let outer: usize = first.dims[..a].iter().product();
        let mut k = Const {
            dims: first.dims.clone(),
            f: Vec::new(),
            i: Vec::new(),
            batch: Vec::new(),
        };
        k.dims[a] = parts.iter().map(|p| p.dims[a]).sum();
        too_big(node, &k.dims)?;
        for o in 0..outer {
            for p in &parts {
                let chunk = p.len() / outer.max(1);
                let r = o * chunk..(o + 1) * chunk;
                if float {
                    k.f.extend_from_slice(&p.f[r]);
                } else {
                    k.i.extend_from_slice(&p.i[r.clone()]);
                    if marked {
                        match p.batch.is_empty() {
                            true => k.batch.extend(std::iter::repeat_n(false, chunk)),
                            false => k.batch.extend_from_slice(&p.batch[r]),
                        }
                    }
                }
            }
        }
        self.fold(node, k)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ints(dims: &[usize], i: &[i64]) -> Const {
        Const {
            dims: dims.to_vec(),
            f: Vec::new(),
            i: i.to_vec(),
            batch: Vec::new(),
        }
    }

    fn builder(consts: &[(&str, Const)]) -> Builder {
        Builder {
            consts: consts
                .iter()
                .map(|(n, k)| (n.to_string(), k.clone()))
                .collect(),
            ids: HashMap::new(),
            zeros: HashMap::new(),
            shapes: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn node(op: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        }
    }

    fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            i,
            ..Default::default()
        }
    }

    fn attr_is(name: &str, ints: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            ints: ints.to_vec(),
            ..Default::default()
        }
    }

    /// Slices of `[0, 1, 2, 3, 4, 5]` agree with Python's `list[start:end:step]` (the ONNX rule).
    #[test]
    fn slices_of_constants_clamp_as_onnx_says() {
        let big = i64::MAX;
        let cases: &[(i64, i64, i64, &[i64])] = &[
            (-1, -big, -1, &[5, 4, 3, 2, 1, 0]),
            (4, 1, -2, &[4, 2]),
            (1, 100, 2, &[1, 3, 5]),
            (-2, big, 1, &[4, 5]),
            (3, 3, 1, &[]),
            (big, 0, -1, &[5, 4, 3, 2, 1]),
            (-100, 2, 1, &[0, 1]),
            (5, -big, i64::MIN, &[5]),
            (0, big, big, &[0]),
        ];
        for &(start, end, step, want) in cases {
            let mut b = builder(&[
                ("x", ints(&[6], &[0, 1, 2, 3, 4, 5])),
                ("s", ints(&[1], &[start])),
                ("e", ints(&[1], &[end])),
                ("a", ints(&[1], &[0])),
                ("t", ints(&[1], &[step])),
            ]);
            b.fold_slice(&node("Slice", &["x", "s", "e", "a", "t"], vec![]))
                .unwrap();
            let y = &b.consts["y"];
            assert_eq!(
                (&y.i[..], &y.dims[..]),
                (want, &[want.len()][..]),
                "{start}:{end}:{step}"
            );
        }
    }

    #[test]
    fn gather_transpose_squeeze_move_entries_and_the_batch_mark() {
        // [[b, 1, 2], [3, 4, 5]] with b the batch size.
        let mut x = ints(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        x.batch = vec![true, false, false, false, false, false];
        let mut b = builder(&[("x", x.clone()), ("j", ints(&[2], &[-1, 0]))]);
        b.gather(&node("Gather", &["x", "j"], vec![attr_i("axis", 1)]))
            .unwrap();
        let y = &b.consts["y"];
        assert_eq!((&y.dims[..], &y.i[..]), (&[2, 2][..], &[2, 0, 5, 3][..]));
        assert_eq!(y.batch, [false, true, false, false]);

        let mut b = builder(&[("x", x.clone())]);
        b.transpose(&node("Transpose", &["x"], vec![attr_is("perm", &[1, 0])]))
            .unwrap();
        let y = &b.consts["y"];
        assert_eq!(
            (&y.dims[..], &y.i[..]),
            (&[3, 2][..], &[0, 3, 1, 4, 2, 5][..])
        );
        assert!(y.batch[0]);

        let mut b = builder(&[("x", ints(&[1, 3, 1], &[7, 8, 9]))]);
        b.squeeze(&node("Squeeze", &["x"], vec![])).unwrap();
        assert_eq!(b.consts["y"].dims, [3]);
        // A batch-dependent constant is refused where a plain one is needed.
        let mut b = builder(&[("x", x), ("s", ints(&[1], &[0]))]);
        let err = b
            .fold_reshape(&node("Reshape", &["s", "x"], vec![]))
            .err()
            .unwrap();
        assert!(err.contains("depends on the batch size"), "{err}");
    }
}

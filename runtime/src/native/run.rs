//! Execution: the steps in order over per-call buffers, convolutions on `sc-kernels`.

use sc_kernels::conv::{self, Epilogue, Geom};

use super::graph::{Graph, Step};
use crate::team::Team;

/// The values a step reads: the graph input (the caller's slice) or computed ones.
pub(super) struct Values<'a> {
    input: (usize, &'a [f32]),
    bufs: &'a [Vec<f32>],
}

impl<'a> Values<'a> {
    /// Every value from `bufs` (the input too).
    pub(super) fn of(bufs: &'a [Vec<f32>]) -> Values<'a> {
        Values {
            input: (usize::MAX, &[]),
            bufs,
        }
    }
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

impl Graph {
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
        if let Some(q) = &self.int8 {
            return q.run(n, input, team);
        }
        // The last buffer tags the layout the others hold: values of one layout are never read
        // as the other's (the blocked one relies on the zero borders it left).
        let values = self.shapes.len();
        let blocked = self.use_blocked && self.blocked.is_ok();
        let tag = [if blocked { 1.0 } else { 0.0 }];
        if bufs.len() != values + 1 || bufs[values][..] != tag {
            bufs.clear();
            bufs.resize_with(values, Vec::new);
            bufs.push(tag.to_vec());
        }
        let bufs = &mut bufs[..values];
        match &self.blocked {
            Ok(plan) if blocked => plan.run(self, n, input, bufs, team),
            _ => self.run_flat(n, input, bufs, team),
        }
    }

    fn run_flat(
        &self,
        n: usize,
        input: &[f32],
        bufs: &mut [Vec<f32>],
        team: Option<&Team>,
    ) -> Vec<f32> {
        let size = |id: usize| n * self.shapes[id].iter().product::<usize>();
        assert_eq!(input.len(), size(self.input), "input of the wrong size");
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

    pub(super) fn step(
        &self,
        s: &Step,
        n: usize,
        bufs: &Values,
        y: &mut [f32],
        team: Option<&Team>,
    ) {
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

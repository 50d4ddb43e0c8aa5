//! The native graph in the channel-blocked layout (`sc_kernels::blocked`): every `[c, h, w]` map
//! is kept as blocks of 8 channels with a zero border of one pixel, from the input's conversion to
//! the global pooling, so convolutions read their padding in place and no layer copies its input.
//! Vectors (after pooling) stay as they are, and the steps that do not care about the layout
//! (`Relu`, `Add`, `Copy`, the dense layer) run as in the flat graph.
//!
//! A graph gets this plan when every map step has a blocked form: convolutions with padding of at
//! most one pixel, per-channel affine steps, zero padding of whole channel blocks (the option-A
//! shortcut's), slices that start on a channel block, and the mean over H and W.

use sc_kernels::blocked::{Conv, Layout, LANES};
use sc_kernels::conv::ForEach;

use super::graph::{Graph, Step};
use super::run::Values;
use crate::team::Team;

/// Border of every map: the padding of a 3x3 convolution.
const BORDER: usize = 1;

pub(crate) struct Plan {
    steps: Vec<Blocked>,
    /// Each value's layout: `Some` for maps, `None` for vectors (stored as in the flat graph).
    layouts: Vec<Option<Layout>>,
}

enum Blocked {
    Conv {
        x: usize,
        y: usize,
        conv: Conv,
        residual: Option<usize>,
        relu: bool,
    },
    /// `y = x · scale + shift` per channel (padded to whole blocks with zeros), on the map only.
    Affine {
        x: usize,
        y: usize,
        scale: Vec<f32>,
        shift: Vec<f32>,
        relu: bool,
    },
    /// Block `b` of `x` is block `b + blocks` of `y`; the others are zero.
    PadChannels { x: usize, y: usize, blocks: usize },
    /// `y[c][i][j] = x[start[0]/8 blocks + c][start[1] + i·step[1]][start[2] + j·step[2]]`.
    Slice {
        x: usize,
        y: usize,
        start: [usize; 3],
        step: [usize; 3],
    },
    /// The mean over H and W of each channel: a map to a vector, or to a 1 x 1 map.
    Mean { x: usize, y: usize },
    /// A map read out as a vector (NCHW order).
    Flatten { x: usize, y: usize },
    /// The flat graph's step of this index, which does not depend on the layout.
    Same(usize),
}

impl Plan {
    /// The blocked form of `g` (before its convolutions are packed for the flat layout), or why
    /// there is none.
    pub(super) fn compile(g: &Graph) -> Result<Plan, String> {
        let layouts: Vec<Option<Layout>> = g
            .shapes
            .iter()
            .map(|s| match *s.as_slice() {
                [c, h, w] => Some(Layout {
                    c,
                    h,
                    w,
                    border: BORDER,
                }),
                _ => None,
            })
            .collect();
        let map = |id: usize| layouts[id].ok_or_else(|| format!("value {id} is not a map"));
        map(g.input)?;
        if layouts[g.output].is_some() {
            return Err("the output is a map".into());
        }
        let mut steps = Vec::new();
        for (i, s) in g.steps.iter().enumerate() {
            steps.push(match s {
                Step::Conv {
                    x,
                    y,
                    dims,
                    weight,
                    bias,
                    residual,
                    relu,
                    ..
                } => {
                    let [cin, _, _, cout, k, stride, pad] = *dims;
                    let (xl, yl) = (map(*x)?, map(*y)?);
                    if pad > BORDER {
                        return Err(format!("a convolution padded by {pad}"));
                    }
                    if weight.is_empty() || xl.c != cin || yl.c != cout {
                        return Err("a convolution without its weights".into());
                    }
                    let bias = bias.iter().any(|&b| b != 0.0).then_some(&bias[..]);
                    Blocked::Conv {
                        x: *x,
                        y: *y,
                        conv: Conv::new(cin, cout, k, stride, pad, weight, bias),
                        residual: *residual,
                        relu: *relu,
                    }
                }
                Step::Affine {
                    x,
                    y,
                    scale,
                    shift,
                    relu,
                } if layouts[*x].is_some() => {
                    let blocks = map(*x)?.blocks() * LANES;
                    let pad = |v: &[f32]| {
                        let mut p = v.to_vec();
                        p.resize(blocks, 0.0);
                        p
                    };
                    Blocked::Affine {
                        x: *x,
                        y: *y,
                        scale: pad(scale),
                        shift: pad(shift),
                        relu: *relu,
                    }
                }
                Step::Pad { x, y, begin } => {
                    let (xl, yl) = (map(*x)?, map(*y)?);
                    if begin[1] != 0 || begin[2] != 0 || (xl.h, xl.w) != (yl.h, yl.w) {
                        return Err("a spatial Pad".into());
                    }
                    if begin[0] % LANES != 0 {
                        return Err(format!(
                            "channel padding by {} (not whole blocks)",
                            begin[0]
                        ));
                    }
                    Blocked::PadChannels {
                        x: *x,
                        y: *y,
                        blocks: begin[0] / LANES,
                    }
                }
                Step::Slice { x, y, start, step } => {
                    let (xl, yl) = (map(*x)?, map(*y)?);
                    let whole = yl.c % LANES == 0 || start[0] + yl.c == xl.c;
                    if start[0] % LANES != 0 || step[0] != 1 || !whole {
                        return Err("a Slice across channel blocks".into());
                    }
                    Blocked::Slice {
                        x: *x,
                        y: *y,
                        start: *start,
                        step: *step,
                    }
                }
                Step::Mean { x, y } => {
                    map(*x)?;
                    Blocked::Mean { x: *x, y: *y }
                }
                Step::Dense { x, .. } if layouts[*x].is_some() => {
                    return Err("a dense layer reading a map".into())
                }
                Step::Affine { .. } | Step::Dense { .. } => Blocked::Same(i),
                Step::Copy { x, y } if layouts[*x].is_some() && layouts[*y].is_none() => {
                    Blocked::Flatten { x: *x, y: *y }
                }
                Step::Relu { x, y } | Step::Copy { x, y } => {
                    if layouts[*x] != layouts[*y] {
                        return Err("an elementwise step that changes the layout".into());
                    }
                    Blocked::Same(i)
                }
                Step::Add { a, b, y, .. } => {
                    if layouts[*a] != layouts[*y] || layouts[*b] != layouts[*y] {
                        return Err("an Add of differently laid out values".into());
                    }
                    Blocked::Same(i)
                }
            });
        }
        Ok(Plan { steps, layouts })
    }

    fn output(&self, g: &Graph, s: &Blocked) -> usize {
        match s {
            Blocked::Conv { y, .. }
            | Blocked::Affine { y, .. }
            | Blocked::PadChannels { y, .. }
            | Blocked::Slice { y, .. }
            | Blocked::Mean { y, .. }
            | Blocked::Flatten { y, .. } => *y,
            Blocked::Same(i) => g.steps[*i].output(),
        }
    }

    /// Logits of `n` images (NCHW `input`), as [`Graph::run`]. `bufs` (one per value) must have
    /// been used with this plan only: its maps' borders and spare lanes are zero.
    pub(super) fn run(
        &self,
        g: &Graph,
        n: usize,
        input: &[f32],
        bufs: &mut [Vec<f32>],
        team: Option<&Team>,
    ) -> Vec<f32> {
        let size = |id: usize| {
            n * self.layouts[id].map_or_else(|| g.shapes[id].iter().product(), |l| l.len())
        };
        let il = self.layouts[g.input].expect("the input is a map");
        let chw = il.c * il.h * il.w;
        assert_eq!(input.len(), n * chw, "input of the wrong size");
        let x = &mut bufs[g.input];
        x.resize(size(g.input), 0.0);
        for (img, v) in input.chunks_exact(chw).enumerate() {
            il.fill_from(v, &mut x[img * il.len()..][..il.len()]);
        }
        for s in &self.steps {
            let yid = self.output(g, s);
            let mut y = std::mem::take(&mut bufs[yid]);
            y.resize(size(yid), 0.0);
            self.step(g, s, n, bufs, &mut y, team);
            bufs[yid] = y;
        }
        bufs[g.output].clone()
    }

    fn step(
        &self,
        g: &Graph,
        s: &Blocked,
        n: usize,
        bufs: &[Vec<f32>],
        y: &mut [f32],
        team: Option<&Team>,
    ) {
        let l = |id: usize| self.layouts[id].expect("a map");
        match s {
            Blocked::Conv {
                x,
                y: yid,
                conv,
                residual,
                relu,
            } => {
                let for_each = |k: usize, f: &(dyn Fn(usize) + Sync)| {
                    if let Some(t) = team {
                        t.for_each(k, f)
                    }
                };
                let within = team.map(|t| (t.threads(), &for_each as &ForEach));
                conv.forward(
                    n,
                    (&l(*x), &bufs[*x]),
                    (&l(*yid), y),
                    residual.map(|r| &bufs[r][..]),
                    *relu,
                    within,
                );
            }
            Blocked::Affine {
                x,
                scale,
                shift,
                relu,
                ..
            } => {
                let xl = l(*x);
                let src = &bufs[*x];
                for img in 0..n {
                    for b in 0..xl.blocks() {
                        let (a, t) = (&scale[b * LANES..][..LANES], &shift[b * LANES..][..LANES]);
                        for r in 0..xl.h {
                            let at = img * xl.len() + xl.at(b, r, 0);
                            let row = at..at + xl.w * LANES;
                            for (o, v) in y[row.clone()]
                                .chunks_exact_mut(LANES)
                                .zip(src[row].chunks_exact(LANES))
                            {
                                for k in 0..LANES {
                                    let u = v[k] * a[k] + t[k];
                                    o[k] = if *relu { u.max(0.0) } else { u };
                                }
                            }
                        }
                    }
                }
            }
            Blocked::PadChannels { x, y: yid, blocks } => {
                let (xl, yl) = (l(*x), l(*yid));
                for img in 0..n {
                    let src = &bufs[*x][img * xl.len()..][..xl.len()];
                    let dst = &mut y[img * yl.len() + blocks * yl.plane()..][..xl.len()];
                    dst.copy_from_slice(src);
                }
            }
            Blocked::Slice {
                x,
                y: yid,
                start,
                step,
            } => {
                let (xl, yl) = (l(*x), l(*yid));
                let b0 = start[0] / LANES;
                for img in 0..n {
                    let src = &bufs[*x][img * xl.len()..][..xl.len()];
                    let dst = &mut y[img * yl.len()..][..yl.len()];
                    for b in 0..yl.blocks() {
                        for r in 0..yl.h {
                            for q in 0..yl.w {
                                let from =
                                    xl.at(b0 + b, start[1] + r * step[1], start[2] + q * step[2]);
                                let to = yl.at(b, r, q);
                                dst[to..to + LANES].copy_from_slice(&src[from..from + LANES]);
                            }
                        }
                    }
                }
            }
            Blocked::Mean { x, y: yid } => {
                let xl = l(*x);
                let area = (xl.h * xl.w) as f64;
                // Per image: its values, and where channel `ch` goes in them.
                let (per, at): (usize, Box<dyn Fn(usize) -> usize>) = match self.layouts[*yid] {
                    Some(yl) => (
                        yl.len(),
                        Box::new(move |ch| yl.at(ch / LANES, 0, 0) + ch % LANES),
                    ),
                    None => (y.len() / n.max(1), Box::new(|ch| ch)),
                };
                for img in 0..n {
                    let src = &bufs[*x][img * xl.len()..][..xl.len()];
                    let dst = &mut y[img * per..][..per];
                    for ch in 0..xl.c {
                        let (b, k) = (ch / LANES, ch % LANES);
                        let mut sum = 0f64;
                        for r in 0..xl.h {
                            let row = xl.at(b, r, 0) + k;
                            sum += (0..xl.w).map(|q| src[row + q * LANES] as f64).sum::<f64>();
                        }
                        dst[at(ch)] = (sum / area) as f32;
                    }
                }
            }
            Blocked::Flatten { x, .. } => {
                let xl = l(*x);
                let chw = xl.c * xl.h * xl.w;
                for img in 0..n {
                    let src = &bufs[*x][img * xl.len()..][..xl.len()];
                    xl.copy_to(src, &mut y[img * chw..][..chw]);
                }
            }
            Blocked::Same(i) => {
                let values = Values::of(bufs);
                g.step(&g.steps[*i], n, &values, y, team);
            }
        }
    }
}

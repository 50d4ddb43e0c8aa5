//! The kernels as candle custom ops, each with its own backward, so autograd and the model code
//! see ordinary tensors:
//! - [`ConvOp`]: convolution (`ops::conv2d`);
//! - [`ConvBnOp`]: convolution + BatchNorm [+ residual] [+ ReLU] (`ops::conv_bn`);
//! - [`BlockOp`]: a whole basic residual block (`ops::basic_block`), so that its inner
//!   activations never become graph nodes (candle allocates, zero-fills and adds into a gradient
//!   buffer for every node);
//! - [`SubsampleOp`]: the option-A shortcut on its own.

use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage,
    Tensor,
};

use super::bn::{self, Norm};
use super::conv::{self, Epilogue, Geom, Packed, Precision};
use super::elementwise;
use super::par;
use super::scratch::{uninit_vec, SendPtr};

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("sc kernels: expected a contiguous tensor, got {:?}", l),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cpu) => f(slice(cpu, l)?),
        _ => bail!("sc kernels: expected a CPU tensor"),
    }
}

fn cpu_tensor(v: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// Plain convolution: `ops::conv2d` on the CPU.
pub struct ConvOp {
    pub geom: Geom,
    pub precision: Precision,
}

/// The weights packed at `precision` (checked when it was chosen: [`crate::ops::set_cpu_precision`]).
fn packed(g: &Geom, w: &[f32], precision: Precision) -> Packed {
    Packed::with_precision(g, w, precision).unwrap_or_else(|_| Packed::new(g, w))
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "sc-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut y = uninit_vec(g.n * g.cout * g.p());
        let w = packed(g, w, self.precision);
        conv::forward_packed(g, &w, x, &mut y, Epilogue::NONE, |_, _| {});
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = &self.geom;
        let grad = grad.contiguous()?;
        let img = g.cout * g.p();
        let want_x = x.track_op();
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(&grad, |dy| {
                    let mut dx = want_x.then(|| uninit_vec(xs.len()));
                    let mut dw = vec![0f32; ws.len()];
                    conv::backward_with(
                        self.precision,
                        g,
                        xs,
                        ws,
                        dx.as_deref_mut(),
                        &mut dw,
                        |n, buf| buf.copy_from_slice(&dy[n * img..][..img]),
                        |_, _| {},
                    );
                    Ok((dx, dw))
                })
            })
        })?;
        let dx = dx.map(|v| cpu_tensor(v, x.dims())).transpose()?;
        Ok((dx, Some(cpu_tensor(dw, w.dims())?)))
    }
}

/// One convolution + BatchNorm: shapes, epsilon, and the statistics to normalise with.
#[derive(Debug, Clone)]
pub struct ConvBnSpec {
    pub geom: Geom,
    pub eps: f64,
    /// Inference form: the running mean and variance; `None` in training (batch statistics).
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    /// The convolution products' precision.
    pub precision: Precision,
}

/// What a forward pass keeps of one convolution + BatchNorm.
pub struct ConvBnSaved {
    /// The convolution's output (BatchNorm's input).
    pub y: Vec<f32>,
    pub norm: Norm,
}

impl ConvBnSpec {
    /// Values of the weight.
    pub fn w_len(&self) -> usize {
        let g = &self.geom;
        g.cout * g.cin * g.k * g.k
    }

    /// Values of `[w.flatten(), gamma, beta]`.
    pub fn params_len(&self) -> usize {
        self.w_len() + 2 * self.geom.cout
    }

    fn out_len(&self) -> usize {
        self.geom.n * self.geom.cout * self.geom.p()
    }

    /// The convolution and the normalisation constants (batch statistics in training).
    fn forward(&self, x: &[f32], params: &[f32]) -> ConvBnSaved {
        let g = &self.geom;
        let (c, p) = (g.cout, g.p());
        let (w, gb) = params.split_at(self.w_len());
        let (gamma, beta) = gb.split_at(c);
        let train = self.running.is_none();
        let mut y = uninit_vec(self.out_len());
        let mut parts = vec![(0f64, 0f64); if train { g.n * c } else { 0 }];
        let pp = SendPtr(parts.as_mut_ptr());
        let w = packed(g, w, self.precision);
        conv::forward_packed(g, &w, x, &mut y, Epilogue::NONE, |n, yn| {
            if train {
                for ch in 0..c {
                    // SAFETY: image n's entries, written by this call only.
                    unsafe { *pp.get().add(n * c + ch) = bn::mean_m2(&yn[ch * p..][..p]) };
                }
            }
        });
        let running = self.running.as_ref().map(|(m, v)| (&m[..], &v[..]));
        let norm = Norm::new(
            train.then_some(&parts[..]),
            running,
            c,
            p,
            gamma,
            beta,
            self.eps,
        );
        ConvBnSaved { y, norm }
    }

    /// Backward through BatchNorm and the convolution. The gradient after BatchNorm is `dz`,
    /// zeroed where `mask <= 0` when a mask is given (the ReLU's output). Writes the parameter
    /// gradients `[dw, dgamma, dbeta]` to `dparams`, and `dx` when given (then `dx_hook`).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        params: &[f32],
        saved: &ConvBnSaved,
        (dz, sums): (&[f32], Option<Vec<(f64, f64)>>),
        mask: Option<&[f32]>,
        dx: Option<&mut [f32]>,
        dparams: &mut [f32],
        dx_hook: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let g = &self.geom;
        let (c, p) = (g.cout, g.p());
        let img = c * p;
        let m = (g.n * p) as f64;
        let (y, norm) = (&saved.y, &saved.norm);
        let relu = mask.is_some();
        let mask = mask.unwrap_or(dz);
        // The per-channel sums over the batch, unless the pass that wrote `dz` made them.
        let sums = sums
            .unwrap_or_else(|| bn::backward_sums(dz, mask, y, &norm.mean, g.n, c, p, relu, None));
        // Σ g·x̂ = invstd · Σ g·(y - mean).
        let sgx: Vec<f64> = (0..c).map(|ch| norm.invstd[ch] * sums[ch].1).collect();
        let train = self.running.is_none();
        // dy = scale·g + k1·y + k0 (training: minus the batch-statistics terms).
        let (k1, k0): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ch| {
                if !train {
                    return (0.0, 0.0);
                }
                let scale = norm.scale[ch] as f64;
                let k1 = -scale * norm.invstd[ch] * sgx[ch] / m;
                let k0 = -scale * sums[ch].0 / m - k1 * norm.mean[ch];
                (k1 as f32, k0 as f32)
            })
            .unzip();
        let (dw, dgb) = dparams.split_at_mut(self.w_len());
        conv::backward_with(
            self.precision,
            g,
            x,
            &params[..self.w_len()],
            dx,
            dw,
            |n, buf| {
                for ch in 0..c {
                    let o = n * img + ch * p;
                    bn::grad_input(
                        &dz[o..o + p],
                        &mask[o..o + p],
                        &y[o..o + p],
                        relu,
                        norm.scale[ch],
                        k1[ch],
                        k0[ch],
                        &mut buf[ch * p..][..p],
                    );
                }
            },
            dx_hook,
        );
        for ch in 0..c {
            dgb[ch] = sgx[ch] as f32;
            dgb[c + ch] = sums[ch].0 as f32;
        }
    }
}

/// Convolution, BatchNorm, optional residual add, optional ReLU, as one op over
/// `(x, params[, residual])` with `params = [w.flatten(), gamma, beta]`.
pub struct ConvBnOp {
    pub spec: ConvBnSpec,
    pub relu: bool,
    /// Filled by the forward pass; the caller reads the batch statistics from it.
    pub saved: Arc<Mutex<Option<ConvBnSaved>>>,
}

impl ConvBnOp {
    fn fwd(&self, x: &[f32], params: &[f32], res: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let s = &self.spec;
        let g = &s.geom;
        if params.len() != s.params_len() {
            bail!(
                "sc-conv-bn: {} parameters, expected {}",
                params.len(),
                s.params_len()
            );
        }
        if res.is_some_and(|r| r.len() != s.out_len()) {
            bail!("sc-conv-bn: residual of the wrong size");
        }
        let saved = s.forward(x, params);
        let mut z = uninit_vec(s.out_len());
        bn::normalize(&saved.y, res, &saved.norm, g.cout, g.p(), self.relu, &mut z);
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((CpuStorage::F32(z), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    /// Gradients of `x` (when tracked), of `params`, and of the residual (when given and tracked).
    fn bwd_impl(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: Option<&Tensor>,
        z: &Tensor,
        dz: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let guard = self.saved.lock().expect("saved lock");
        let Some(saved) = guard.as_ref() else {
            bail!("sc-conv-bn: backward before forward")
        };
        let dz = dz.contiguous()?;
        let want_x = x.track_op();
        let want_res = res.is_some_and(|r| r.track_op());
        let relu = self.relu;
        let (dx, dparams, dres) = with_f32(x, |xs| {
            with_f32(params, |ps| {
                with_f32(z, |zs| {
                    with_f32(&dz, |dzs| {
                        let mask = relu.then_some(zs);
                        // The residual's gradient is the one after the ReLU.
                        let dres = want_res.then(|| {
                            let mut d = uninit_vec(dzs.len());
                            par::chunks_mut(&mut d, 1 << 16, |i, dc| {
                                let o = i << 16;
                                match mask {
                                    Some(m) => {
                                        dc.fill(0.0);
                                        elementwise::add_masked(dc, &dzs[o..], &m[o..]);
                                    }
                                    None => dc.copy_from_slice(&dzs[o..o + dc.len()]),
                                }
                            });
                            d
                        });
                        let mut dx = want_x.then(|| uninit_vec(xs.len()));
                        let mut dp = vec![0f32; ps.len()];
                        self.spec.backward(
                            xs,
                            ps,
                            saved,
                            (dzs, None),
                            mask,
                            dx.as_deref_mut(),
                            &mut dp,
                            |_, _| {},
                        );
                        Ok((dx, dp, dres))
                    })
                })
            })
        })?;
        let dx = dx.map(|v| cpu_tensor(v, x.dims())).transpose()?;
        let dres = dres.map(|v| cpu_tensor(v, z.dims())).transpose()?;
        Ok((dx, cpu_tensor(dparams, params.dims())?, dres))
    }
}

impl CustomOp2 for ConvBnOp {
    fn name(&self) -> &'static str {
        "sc-conv-bn"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(slice(s1, l1)?, slice(s2, l2)?, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, _) = self.bwd_impl(x, params, None, res, grad)?;
        Ok((dx, Some(dp)))
    }
}

impl CustomOp3 for ConvBnOp {
    fn name(&self) -> &'static str {
        "sc-conv-bn-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(slice(s1, l1)?, slice(s2, l2)?, Some(slice(s3, l3)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        residual: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, dr) = self.bwd_impl(x, params, Some(residual), res, grad)?;
        Ok((dx, Some(dp), dr))
    }
}

/// The shortcut of a [`BlockOp`].
#[derive(Debug, Clone)]
pub enum BlockShortcut {
    Identity,
    /// Option A: every second pixel, zero channels appended.
    Subsample,
    /// Option B: a convolution + BatchNorm.
    Projection(ConvBnSpec),
}

/// What a [`BlockOp`] forward keeps.
pub struct BlockSaved {
    pub c1: ConvBnSaved,
    /// `relu(bn1(conv1(x)))`, the second convolution's input.
    pub z1: Vec<f32>,
    pub c2: ConvBnSaved,
    pub shortcut: Option<ConvBnSaved>,
}

/// A basic residual block, `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, as one op over
/// `(x, params)` with `params = [w1, gamma1, beta1, w2, gamma2, beta2 (, ws, gamma_s, beta_s)]`.
pub struct BlockOp {
    pub c1: ConvBnSpec,
    pub c2: ConvBnSpec,
    pub shortcut: BlockShortcut,
    pub saved: Arc<Mutex<Option<BlockSaved>>>,
}

impl BlockOp {
    /// Parameter values of each part, in order.
    pub fn params_lens(&self) -> [usize; 3] {
        let s = match &self.shortcut {
            BlockShortcut::Projection(s) => s.params_len(),
            _ => 0,
        };
        [self.c1.params_len(), self.c2.params_len(), s]
    }

    fn split<'a>(&self, ps: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let [a, b, _] = self.params_lens();
        let (p1, rest) = ps.split_at(a);
        let (p2, ps_) = rest.split_at(b);
        (p1, p2, ps_)
    }
}

/// `out[n][c][r][j] (+)= x[n][c][2r][2j]` for `c < x channels`, zero channels after.
fn subsample_into(x: &[f32], c: usize, h: usize, w: usize, oc: usize, out: &mut [f32], add: bool) {
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    par::chunks_mut(out, oc * h2 * w2, |i, on| {
        if !add {
            on[c * h2 * w2..].fill(0.0);
        }
        for ch in 0..c {
            let src = &x[(i * c + ch) * h * w..][..h * w];
            for r in 0..h2 {
                let dst = &mut on[(ch * h2 + r) * w2..][..w2];
                for (j, d) in dst.iter_mut().enumerate() {
                    if add {
                        *d += src[2 * r * w + 2 * j];
                    } else {
                        *d = src[2 * r * w + 2 * j];
                    }
                }
            }
        }
    });
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "sc-basic-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, ps) = (slice(s1, l1)?, slice(s2, l2)?);
        if ps.len() != self.params_lens().iter().sum::<usize>() {
            bail!(
                "sc-basic-block: {} parameters, expected {:?}",
                ps.len(),
                self.params_lens()
            );
        }
        let (p1, p2, psc) = self.split(ps);
        let (g1, g2) = (&self.c1.geom, &self.c2.geom);
        let c1 = self.c1.forward(x, p1);
        let mut z1 = uninit_vec(self.c1.out_len());
        bn::normalize(&c1.y, None, &c1.norm, g1.cout, g1.p(), true, &mut z1);
        let c2 = self.c2.forward(&z1, p2);
        let mut out = uninit_vec(self.c2.out_len());
        let (shortcut, s) = match &self.shortcut {
            BlockShortcut::Identity => (None, None),
            BlockShortcut::Subsample => {
                let mut s = uninit_vec(self.c2.out_len());
                subsample_into(x, g1.cin, g1.h, g1.w, g2.cout, &mut s, false);
                (None, Some(s))
            }
            BlockShortcut::Projection(spec) => {
                let sv = spec.forward(x, psc);
                let mut s = uninit_vec(spec.out_len());
                bn::normalize(&sv.y, None, &sv.norm, g2.cout, g2.p(), false, &mut s);
                (Some(sv), Some(s))
            }
        };
        let res = s.as_deref().unwrap_or(x);
        bn::normalize(&c2.y, Some(res), &c2.norm, g2.cout, g2.p(), true, &mut out);
        *self.saved.lock().expect("saved lock") = Some(BlockSaved {
            c1,
            z1,
            c2,
            shortcut,
        });
        Ok((
            CpuStorage::F32(out),
            Shape::from((g2.n, g2.cout, g2.ho, g2.wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("saved lock");
        let Some(sv) = guard.as_ref() else {
            bail!("sc-basic-block: backward before forward")
        };
        let grad = grad.contiguous()?;
        let want_x = x.track_op();
        let (g1, g2) = (&self.c1.geom, &self.c2.geom);
        let (dx, dp) = with_f32(x, |xs| {
            with_f32(params, |ps| {
                with_f32(out, |os| {
                    with_f32(&grad, |dout| {
                        let (p1, p2, psc) = self.split(ps);
                        let [l1, l2, _] = self.params_lens();
                        let mut dp = vec![0f32; ps.len()];
                        let (dp1, rest) = dp.split_at_mut(l1);
                        let (dp2, dpsc) = rest.split_at_mut(l2);
                        // Second convolution: its input gradient is the first one's output
                        // gradient. While each image of it is in cache, the first BatchNorm's
                        // backward sums over it (the pass backward_sums would make again).
                        let mut dz1 = uninit_vec(self.c1.out_len());
                        let (c1c, c1p) = (g1.cout, g1.p());
                        let mut parts = vec![(0f64, 0f64); g1.n * c1c];
                        let pp = SendPtr(parts.as_mut_ptr());
                        let (z1, y1, mean1) = (&sv.z1, &sv.c1.y, &sv.c1.norm.mean);
                        self.c2.backward(
                            &sv.z1,
                            p2,
                            &sv.c2,
                            (dout, None),
                            Some(os),
                            Some(&mut dz1),
                            dp2,
                            |n, dz1n| {
                                for ch in 0..c1c {
                                    let o = (n * c1c + ch) * c1p;
                                    let part = bn::grad_sums(
                                        &dz1n[ch * c1p..][..c1p],
                                        &z1[o..o + c1p],
                                        &y1[o..o + c1p],
                                        mean1[ch] as f32,
                                        true,
                                        None,
                                    );
                                    // SAFETY: image n's entries, written by this call only.
                                    unsafe { *pp.get().add(n * c1c + ch) = part };
                                }
                            },
                        );
                        // In image order, as backward_sums reduces them.
                        let sums1 = bn::sum_parts(&parts, c1c);
                        // Projection shortcut: its own input gradient, added to dx below.
                        let mut dxs = None;
                        if let (BlockShortcut::Projection(spec), Some(ssv)) =
                            (&self.shortcut, &sv.shortcut)
                        {
                            let mut d = want_x.then(|| uninit_vec(xs.len()));
                            spec.backward(
                                xs,
                                psc,
                                ssv,
                                (dout, None),
                                Some(os),
                                d.as_deref_mut(),
                                dpsc,
                                |_, _| {},
                            );
                            dxs = d;
                        }
                        let mut dx = want_x.then(|| uninit_vec(xs.len()));
                        let x_img = g1.cin * g1.hw();
                        let o_img = g2.cout * g2.p();
                        let (h2, w2) = (g1.h.div_ceil(2), g1.w.div_ceil(2));
                        self.c1.backward(
                            xs,
                            p1,
                            &sv.c1,
                            (&dz1, Some(sums1)),
                            Some(&sv.z1),
                            dx.as_deref_mut(),
                            dp1,
                            |n, dxn| match &self.shortcut {
                                BlockShortcut::Identity => {
                                    let o = n * o_img;
                                    elementwise::add_masked(
                                        dxn,
                                        &dout[o..o + o_img],
                                        &os[o..o + o_img],
                                    );
                                }
                                BlockShortcut::Subsample => {
                                    for ch in 0..g1.cin {
                                        let o = (n * g2.cout + ch) * h2 * w2;
                                        let dst = &mut dxn[ch * g1.hw()..][..g1.hw()];
                                        for r in 0..h2 {
                                            for j in 0..w2 {
                                                let k = o + r * w2 + j;
                                                if os[k] > 0.0 || os[k].is_nan() {
                                                    dst[2 * r * g1.w + 2 * j] += dout[k];
                                                }
                                            }
                                        }
                                    }
                                }
                                BlockShortcut::Projection(_) => {
                                    if let Some(d) = &dxs {
                                        for (a, b) in dxn.iter_mut().zip(&d[n * x_img..][..x_img]) {
                                            *a += b;
                                        }
                                    }
                                }
                            },
                        );
                        Ok((dx, dp))
                    })
                })
            })
        })?;
        let dx = dx.map(|v| cpu_tensor(v, x.dims())).transpose()?;
        Ok((dx, Some(cpu_tensor(dp, params.dims())?)))
    }
}

/// Option-A shortcut: every second pixel, zero channels appended up to `out_channels`.
pub struct SubsampleOp {
    pub out_channels: usize,
}

impl CustomOp1 for SubsampleOp {
    fn name(&self) -> &'static str {
        "sc-subsample-pad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = slice(s, l)?;
        let (h2, w2, oc) = (h.div_ceil(2), w.div_ceil(2), self.out_channels.max(c));
        let mut y = uninit_vec(n * oc * h2 * w2);
        subsample_into(x, c, h, w, oc, &mut y, false);
        Ok((CpuStorage::F32(y), Shape::from((n, oc, h2, w2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let (h2, w2, oc) = (h.div_ceil(2), w.div_ceil(2), self.out_channels.max(c));
        let grad = grad.contiguous()?;
        let dx = with_f32(&grad, |g| {
            let mut dx = vec![0f32; n * c * h * w];
            par::chunks_mut(&mut dx, c * h * w, |i, dn| {
                for ch in 0..c {
                    let src = &g[(i * oc + ch) * h2 * w2..][..h2 * w2];
                    let dst = &mut dn[ch * h * w..][..h * w];
                    for r in 0..h2 {
                        for j in 0..w2 {
                            dst[2 * r * w + 2 * j] = src[r * w2 + j];
                        }
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(cpu_tensor(dx, arg.dims())?))
    }
}

//! The hot operations of the networks, in one place so that faster kernels can replace candle's
//! stock ones without touching the model code.
//!
//! On the CPU with f32 tensors these run the kernels of [`crate::custom_ops`] (candle custom ops with
//! their own backward passes); anywhere else (CUDA, f64, shapes the kernels do not take) and when
//! `SC_STOCK_KERNELS=1` they are candle's stock ops. Both paths compute the same function.
//!
//! Mixed precision ([`set_autocast`]): convolutions and the classifier's matmul run in a 16-bit
//! type (bf16) on 16-bit copies of their inputs and weights, and their results are cast back to
//! f32 before BatchNorm, the residual adds and the loss; the weights (the master copy the
//! optimizer updates), BatchNorm statistics and gradients stay f32. The casts are graph nodes, so
//! the backward pass runs in the same precisions.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{BatchNorm, Linear};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
    static CPU_PRECISION: Cell<Precision> = const { Cell::new(Precision::F32) };
}

pub use sc_kernels::conv::Precision;

/// The precision of this thread's convolution products on the CPU kernels: f32 (the default), or
/// bf16 products summed in f32 where the CPU has AVX512_BF16 (an error naming what is missing
/// otherwise). BatchNorm, the classifier, the loss, gradients and weights stay f32.
pub fn set_cpu_precision(p: Precision) -> std::result::Result<(), String> {
    p.check()?;
    CPU_PRECISION.with(|c| c.set(p));
    Ok(())
}

/// This thread's CPU convolution precision ([`set_cpu_precision`]).
pub fn cpu_precision() -> Precision {
    CPU_PRECISION.with(|c| c.get())
}

/// Runs this thread's convolutions and matmuls in `dtype` (`Some(DType::BF16)`; f16 works the
/// same way but needs loss scaling, which the trainer does not do), or in each tensor's own
/// precision (`None`, the default). The CPU kernels are f32-only: with autocast on, the CPU uses
/// candle's stock ops (correct, slow: for checking the path, not for speed).
pub fn set_autocast(dtype: Option<DType>) {
    AUTOCAST.with(|a| a.set(dtype));
}

/// This thread's autocast type, if any.
pub fn autocast() -> Option<DType> {
    AUTOCAST.with(|a| a.get())
}

/// `t` in the autocast type (a graph node: gradients flow back in `t`'s own type).
fn cast_in(t: &Tensor, dt: DType) -> Result<Tensor> {
    if t.dtype() == dt {
        Ok(t.clone())
    } else {
        t.to_dtype(dt)
    }
}

/// `x · wᵀ + b` of a linear layer; under autocast the product runs in the autocast type.
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    match autocast() {
        Some(dt) if dt != x.dtype() => {
            let w = cast_in(l.weight(), dt)?;
            let y = cast_in(x, dt)?.matmul(&w.t()?)?.to_dtype(x.dtype())?;
            match l.bias() {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        }
        _ => candle_core::Module::forward(l, x),
    }
}

use crate::custom_ops::{self, bn::Norm, conv::Geom, op};

fn conv_geom(x_dims: &[usize], w: &Tensor, stride: usize, padding: usize) -> Option<Geom> {
    let &[n, cin, h, wd] = x_dims else {
        return None;
    };
    let (cout, cin_w, kh, kw) = w.dims4().ok()?;
    if cin != cin_w || kh != kw {
        return None;
    }
    Geom::new(n, cin, h, wd, cout, kh, stride, padding)
}

/// 2-D convolution without bias, NCHW input, OIHW weight, square stride and zero padding.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if custom_ops::applicable(&[x, w]) {
        if let Some(geom) = conv_geom(x.dims(), w, stride, padding) {
            return x.contiguous()?.apply_op2(
                &w.contiguous()?,
                op::ConvOp {
                    geom,
                    precision: cpu_precision(),
                },
            );
        }
    }
    match autocast() {
        Some(dt) if dt != x.dtype() => cast_in(x, dt)?
            .conv2d(&cast_in(w, dt)?, padding, stride, 1, 1)?
            .to_dtype(x.dtype()),
        _ => x.conv2d(w, padding, stride, 1, 1),
    }
}

/// A convolution (no bias) followed by BatchNorm, by reference.
#[derive(Clone, Copy)]
pub struct ConvBnParts<'a> {
    pub weight: &'a Tensor,
    pub bn: &'a BatchNorm,
    pub stride: usize,
    pub padding: usize,
}

/// The shortcut of a basic block.
#[derive(Clone, Copy)]
pub enum ShortcutParts<'a> {
    Identity,
    /// He et al.'s option A ([`subsample_pad_channels`]).
    Subsample {
        out_channels: usize,
    },
    /// Option B: a 1x1 convolution + BatchNorm.
    Projection(ConvBnParts<'a>),
}

/// `act(bn(conv2d(x, w)) [+ residual])`: convolution, BatchNorm (batch statistics and a
/// running-statistics update when `train`, running statistics otherwise), an optional residual
/// added after the normalisation, and an optional ReLU. Same semantics as candle-nn's
/// `BatchNorm::forward_t` (biased variance to normalise, unbiased in the running variance,
/// `running = (1 - m) · running + m · batch`).
#[allow(clippy::too_many_arguments)]
pub fn conv_bn(
    x: &Tensor,
    w: &Tensor,
    bn: &BatchNorm,
    stride: usize,
    padding: usize,
    train: bool,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let parts = ConvBnParts {
        weight: w,
        bn,
        stride,
        padding,
    };
    if let Some(z) = fused_conv_bn(x, &parts, train, residual, relu)? {
        return Ok(z);
    }
    let y = conv2d(x, w, stride, padding)?;
    let y = candle_core::ModuleT::forward_t(bn, &y, train)?;
    let y = match residual {
        Some(r) => (y + r)?,
        None => y,
    };
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The basic residual block, `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`; on the CPU
/// one fused op (its inner activations never become graph nodes).
pub fn basic_block(
    x: &Tensor,
    c1: &ConvBnParts,
    c2: &ConvBnParts,
    shortcut: &ShortcutParts,
    train: bool,
) -> Result<Tensor> {
    if let Some(out) = fused_block(x, c1, c2, shortcut, train)? {
        return Ok(out);
    }
    let y = conv_bn(
        x, c1.weight, c1.bn, c1.stride, c1.padding, train, None, true,
    )?;
    let s = match shortcut {
        ShortcutParts::Identity => x.clone(),
        ShortcutParts::Subsample { out_channels } => subsample_pad_channels(x, *out_channels)?,
        ShortcutParts::Projection(p) => {
            conv_bn(x, p.weight, p.bn, p.stride, p.padding, train, None, false)?
        }
    };
    conv_bn(
        &y,
        c2.weight,
        c2.bn,
        c2.stride,
        c2.padding,
        train,
        Some(&s),
        true,
    )
}

/// The kernel description of one convolution + BatchNorm on an input of `x_dims`, with the
/// tensors its parameters are packed from; `None` when the kernels do not apply.
fn spec_for<'a>(
    x_dims: &[usize],
    p: &ConvBnParts<'a>,
    train: bool,
) -> Result<Option<(op::ConvBnSpec, [&'a Tensor; 3])>> {
    let Some((gamma, beta)) = p.bn.weight_and_bias() else {
        return Ok(None);
    };
    let (rm, rv) = (p.bn.running_mean(), p.bn.running_var());
    if !custom_ops::applicable(&[p.weight, gamma, beta, rm, rv]) {
        return Ok(None);
    }
    let Some(geom) = conv_geom(x_dims, p.weight, p.stride, p.padding) else {
        return Ok(None);
    };
    let c = [geom.cout];
    if gamma.dims() != c || beta.dims() != c || rm.dims() != c || rv.dims() != c {
        return Ok(None);
    }
    let running = if train {
        None
    } else {
        Some((rm.to_vec1::<f32>()?, rv.to_vec1::<f32>()?))
    };
    let spec = op::ConvBnSpec {
        geom,
        eps: p.bn.eps(),
        running,
        precision: cpu_precision(),
    };
    Ok(Some((spec, [p.weight, gamma, beta])))
}

fn out_dims(g: &Geom) -> [usize; 4] {
    [g.n, g.cout, g.ho, g.wo]
}

/// Folds a training batch's statistics into the running ones, as candle-nn's BatchNorm does.
fn update_running(bn: &BatchNorm, norm: &Norm, count: usize) -> Result<()> {
    let (rm, rv) = (bn.running_mean(), bn.running_var());
    let m = bn.momentum();
    let (keep, take) = ((1.0 - m) as f32, m as f32);
    let var_weight = (m * count as f64 / (count as f64 - 1.0)) as f32;
    let new_mean: Vec<f32> = rm
        .to_vec1::<f32>()?
        .iter()
        .zip(&norm.mean)
        .map(|(&r, &b)| r * keep + b as f32 * take)
        .collect();
    let new_var: Vec<f32> = rv
        .to_vec1::<f32>()?
        .iter()
        .zip(&norm.batch_var)
        .map(|(&r, &b)| r * keep + b as f32 * var_weight)
        .collect();
    let c = new_mean.len();
    Var::from_tensor(rm)?.set(&Tensor::from_vec(new_mean, c, rm.device())?)?;
    Var::from_tensor(rv)?.set(&Tensor::from_vec(new_var, c, rv.device())?)?;
    Ok(())
}

fn packed_params(parts: &[[&Tensor; 3]]) -> Result<Tensor> {
    let mut flat = Vec::new();
    for [w, g, b] in parts {
        flat.push(w.flatten_all()?);
        flat.push((*g).clone());
        flat.push((*b).clone());
    }
    Tensor::cat(&flat, 0)
}

fn fused_conv_bn(
    x: &Tensor,
    p: &ConvBnParts,
    train: bool,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Option<Tensor>> {
    let mut inputs = vec![x];
    inputs.extend(residual);
    if !custom_ops::applicable(&inputs) {
        return Ok(None);
    }
    let Some((spec, tensors)) = spec_for(x.dims(), p, train)? else {
        return Ok(None);
    };
    if residual.is_some_and(|r| r.dims() != out_dims(&spec.geom)) {
        return Ok(None);
    }
    let params = packed_params(&[tensors])?;
    let geom = spec.geom;
    let saved = Arc::new(Mutex::new(None));
    let fused = op::ConvBnOp {
        spec,
        relu,
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    let z = match residual {
        None => x.apply_op2(&params, fused)?,
        Some(r) => x.apply_op3(&params, &r.contiguous()?, fused)?,
    };
    if train {
        let guard = saved.lock().expect("saved lock");
        update_running(
            p.bn,
            &guard.as_ref().expect("forward ran").norm,
            geom.n * geom.p(),
        )?;
    }
    Ok(Some(z))
}

fn fused_block(
    x: &Tensor,
    c1: &ConvBnParts,
    c2: &ConvBnParts,
    shortcut: &ShortcutParts,
    train: bool,
) -> Result<Option<Tensor>> {
    if !custom_ops::applicable(&[x]) {
        return Ok(None);
    }
    let Some((s1, t1)) = spec_for(x.dims(), c1, train)? else {
        return Ok(None);
    };
    let Some((s2, t2)) = spec_for(&out_dims(&s1.geom), c2, train)? else {
        return Ok(None);
    };
    let out = out_dims(&s2.geom);
    let mut tensors = vec![t1, t2];
    let sc = match shortcut {
        ShortcutParts::Identity => {
            if x.dims() != out {
                return Ok(None);
            }
            op::BlockShortcut::Identity
        }
        ShortcutParts::Subsample { out_channels } => {
            let (n, c, h, w) = x.dims4()?;
            if *out_channels < c || [n, *out_channels, h.div_ceil(2), w.div_ceil(2)] != out {
                return Ok(None);
            }
            op::BlockShortcut::Subsample
        }
        ShortcutParts::Projection(p) => {
            let Some((ss, ts)) = spec_for(x.dims(), p, train)? else {
                return Ok(None);
            };
            if out_dims(&ss.geom) != out {
                return Ok(None);
            }
            tensors.push(ts);
            op::BlockShortcut::Projection(ss)
        }
    };
    let params = packed_params(&tensors)?;
    let (g1, g2) = (s1.geom, s2.geom);
    let saved = Arc::new(Mutex::new(None));
    let block = op::BlockOp {
        c1: s1,
        c2: s2,
        shortcut: sc,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&params, block)?;
    if train {
        let guard = saved.lock().expect("saved lock");
        let sv = guard.as_ref().expect("forward ran");
        update_running(c1.bn, &sv.c1.norm, g1.n * g1.p())?;
        update_running(c2.bn, &sv.c2.norm, g2.n * g2.p())?;
        if let (ShortcutParts::Projection(p), Some(ssv)) = (shortcut, &sv.shortcut) {
            update_running(p.bn, &ssv.norm, g2.n * g2.p())?;
        }
    }
    Ok(Some(y))
}

/// He et al.'s option-A shortcut: every second pixel (rows and columns 0, 2, 4, …), then zero
/// channels appended up to `out_channels`. Equal to a 1x1 stride-2 convolution whose weight is the
/// identity on the first `C` output channels and zero elsewhere (which is how ONNX gets it).
pub fn subsample_pad_channels(x: &Tensor, out_channels: usize) -> Result<Tensor> {
    if custom_ops::applicable(&[x]) && x.rank() == 4 {
        return x.contiguous()?.apply_op1(op::SubsampleOp { out_channels });
    }
    let (n, c, h, w) = x.dims4()?;
    let mut x = x.clone();
    if h % 2 == 1 {
        x = x.pad_with_zeros(2, 0, 1)?;
    }
    if w % 2 == 1 {
        x = x.pad_with_zeros(3, 0, 1)?;
    }
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let x = x
        .reshape((n, c, h2, 2, w2, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, h2, w2))?;
    if out_channels > c {
        let zeros = Tensor::zeros((n, out_channels - c, h2, w2), x.dtype(), x.device())?;
        Tensor::cat(&[&x, &zeros], 1)
    } else {
        Ok(x)
    }
}

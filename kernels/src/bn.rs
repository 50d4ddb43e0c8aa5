//! BatchNorm (training and inference form) fused with the convolution before it and the ReLU
//! (and residual add) after it. Per-(image, channel) partial results use 16 f32 lanes over one
//! image row (see [`super::elementwise`]), combined in f64 in image order.

use super::par;
use super::scratch::SendPtr;

use super::elementwise::affine_act;
pub use super::elementwise::{grad_input, grad_sums, mean_m2};

/// Per-channel normalisation constants.
#[derive(Debug, Clone)]
pub struct Norm {
    /// Mean used to normalise (batch mean in training, running mean in inference).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    pub invstd: Vec<f64>,
    /// `gamma · invstd`.
    pub scale: Vec<f32>,
    /// `beta - mean · scale`.
    pub shift: Vec<f32>,
    /// Batch variance (biased), training only.
    pub batch_var: Vec<f64>,
}

impl Norm {
    /// From per-(image, channel) `(mean, m2)` partials over `p` values each (training), or from
    /// running statistics (inference).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partials: Option<&[(f64, f64)]>,
        running: Option<(&[f32], &[f32])>,
        c: usize,
        p: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
    ) -> Norm {
        let (mean, var): (Vec<f64>, Vec<f64>) = match (partials, running) {
            (Some(parts), _) => {
                let n = parts.len() / c;
                let m = (n * p) as f64;
                (0..c)
                    .map(|ch| {
                        let mean = (0..n).map(|i| parts[i * c + ch].0).sum::<f64>() / n as f64;
                        // Chan et al.: within-image sums of squares plus the between-image part.
                        let m2: f64 = (0..n)
                            .map(|i| {
                                let (mi, m2i) = parts[i * c + ch];
                                m2i + p as f64 * (mi - mean) * (mi - mean)
                            })
                            .sum();
                        (mean, m2 / m)
                    })
                    .unzip()
            }
            (None, Some((rm, rv))) => (
                rm.iter().map(|&v| v as f64).collect(),
                rv.iter().map(|&v| v as f64).collect(),
            ),
            (None, None) => unreachable!("Norm::new needs statistics"),
        };
        let invstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f32> = (0..c)
            .map(|ch| (gamma[ch] as f64 * invstd[ch]) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (beta[ch] as f64 - mean[ch] * gamma[ch] as f64 * invstd[ch]) as f32)
            .collect();
        Norm {
            mean,
            invstd,
            scale,
            shift,
            batch_var: if partials.is_some() { var } else { Vec::new() },
        }
    }
}

/// `z = act(y · scale + shift [+ res])` over `[n][c][p]`, parallel over images.
pub fn normalize(
    y: &[f32],
    res: Option<&[f32]>,
    norm: &Norm,
    c: usize,
    p: usize,
    relu: bool,
    z: &mut [f32],
) {
    let img = c * p;
    par::chunks_mut(z, img, |n, zn| {
        for ch in 0..c {
            let o = n * img + ch * p;
            let r = res.map(|r| &r[o..o + p]);
            affine_act(
                &y[o..o + p],
                r,
                norm.scale[ch],
                norm.shift[ch],
                relu,
                &mut zn[ch * p..][..p],
            );
        }
    });
}

/// Per-channel `(Σ g, Σ g·(y - mean))` over the batch (`g` the gradient after the ReLU mask),
/// reduced in image order; writes `g` to `g_out` when given (the residual's gradient).
#[allow(clippy::too_many_arguments)]
pub fn backward_sums(
    dz: &[f32],
    z: &[f32],
    y: &[f32],
    mean: &[f64],
    n: usize,
    c: usize,
    p: usize,
    relu: bool,
    g_out: Option<&mut [f32]>,
) -> Vec<(f64, f64)> {
    let img = c * p;
    let mut parts = vec![(0f64, 0f64); n * c];
    let g_ptr = g_out.map(|g| SendPtr(g.as_mut_ptr()));
    par::chunks_mut(&mut parts, c, |i, pn| {
        for (ch, slot) in pn.iter_mut().enumerate() {
            let o = i * img + ch * p;
            // SAFETY: image i, channel ch: a region written by this call only.
            let go = g_ptr.map(|g| unsafe { std::slice::from_raw_parts_mut(g.get().add(o), p) });
            *slot = grad_sums(
                &dz[o..o + p],
                &z[o..o + p],
                &y[o..o + p],
                mean[ch] as f32,
                relu,
                go,
            );
        }
    });
    sum_parts(&parts, c)
}

/// Per-channel totals of per-(image, channel) partials `parts[i · c + ch]`, summed in image order
/// (results do not depend on how the images were spread over threads).
pub fn sum_parts(parts: &[(f64, f64)], c: usize) -> Vec<(f64, f64)> {
    let n = parts.len() / c.max(1);
    (0..c)
        .map(|ch| {
            let (mut s, mut q) = (0f64, 0f64);
            for i in 0..n {
                s += parts[i * c + ch].0;
                q += parts[i * c + ch].1;
            }
            (s, q)
        })
        .collect()
}

//! The element-wise loops of BatchNorm, ReLU and the residual add, with an AVX-512 body (the crate
//! is compiled for baseline x86-64, where these loops would stay scalar) and a portable one.
//! Row sums use 16 f32 lanes over one (image, channel) row and are returned in f64.

use super::micro::{self, Isa};

/// `(Σ v, Σ (v - Σv/n)²)` of one row.
pub fn mean_m2(row: &[f32]) -> (f64, f64) {
    let n = row.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let sum = match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (checked by `isa`).
        Isa::Avx512 => unsafe { avx512::sum_dev(row, 0.0, false) },
        _ => portable::sum_dev(row, 0.0, false),
    };
    let mean = sum / n as f64;
    let mf = mean as f32;
    let m2 = match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 => unsafe { avx512::sum_dev(row, mf, true) },
        _ => portable::sum_dev(row, mf, true),
    };
    // The deviations were taken from the f32-rounded mean: correct for the rounding.
    let shift = mf as f64 - mean;
    (mean, (m2 - n as f64 * shift * shift).max(0.0))
}

/// `(Σ g, Σ g·(y - mean))` with `g = dz`, zeroed where `z <= 0` when `relu`; writes `g` to
/// `g_out` when given.
pub fn grad_sums(
    dz: &[f32],
    z: &[f32],
    y: &[f32],
    mean: f32,
    relu: bool,
    g_out: Option<&mut [f32]>,
) -> (f64, f64) {
    let n = dz.len();
    assert!(z.len() >= n && y.len() >= n && g_out.as_ref().is_none_or(|g| g.len() >= n));
    let go = g_out.map_or(std::ptr::null_mut(), |g| g.as_mut_ptr());
    match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present; lengths checked above.
        Isa::Avx512 => unsafe {
            match (relu, go.is_null()) {
                (true, true) => avx512::grad_sums::<true, false>(dz, z, y, mean, go),
                (true, false) => avx512::grad_sums::<true, true>(dz, z, y, mean, go),
                (false, true) => avx512::grad_sums::<false, false>(dz, z, y, mean, go),
                (false, false) => avx512::grad_sums::<false, true>(dz, z, y, mean, go),
            }
        },
        // SAFETY: lengths checked above.
        _ => unsafe { portable::grad_sums(dz, z, y, mean, relu, go) },
    }
}

/// `out = a·g + b1·y + b0` with `g` as in [`grad_sums`].
#[allow(clippy::too_many_arguments)]
pub fn grad_input(
    dz: &[f32],
    z: &[f32],
    y: &[f32],
    relu: bool,
    a: f32,
    b1: f32,
    b0: f32,
    out: &mut [f32],
) {
    let n = out.len();
    assert!(dz.len() >= n && z.len() >= n && y.len() >= n);
    match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present; lengths checked above.
        Isa::Avx512 => unsafe {
            if relu {
                avx512::grad_input::<true>(dz, z, y, a, b1, b0, out)
            } else {
                avx512::grad_input::<false>(dz, z, y, a, b1, b0, out)
            }
        },
        _ => {
            for i in 0..n {
                let g = if relu && z[i] <= 0.0 { 0.0 } else { dz[i] };
                out[i] = a * g + b1 * y[i] + b0;
            }
        }
    }
}

/// `z = act(y·a + b [+ r])`; the ReLU keeps NaN (a diverging run must stay visible).
pub fn affine_act(y: &[f32], r: Option<&[f32]>, a: f32, b: f32, relu: bool, z: &mut [f32]) {
    let n = z.len();
    assert!(y.len() >= n && r.is_none_or(|r| r.len() >= n));
    match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present; lengths checked above.
        Isa::Avx512 => unsafe {
            let rp = r.map_or(std::ptr::null(), |r| r.as_ptr());
            match (relu, r.is_some()) {
                (true, true) => avx512::affine_act::<true, true>(y, rp, a, b, z),
                (true, false) => avx512::affine_act::<true, false>(y, rp, a, b, z),
                (false, true) => avx512::affine_act::<false, true>(y, rp, a, b, z),
                (false, false) => avx512::affine_act::<false, false>(y, rp, a, b, z),
            }
        },
        _ => {
            for i in 0..n {
                let mut v = y[i] * a + b;
                if let Some(r) = r {
                    v += r[i];
                }
                z[i] = if relu && v < 0.0 { 0.0 } else { v };
            }
        }
    }
}

/// `dx += g` with `g = dz` zeroed where `z <= 0` (a residual path's gradient after the ReLU).
pub fn add_masked(dx: &mut [f32], dz: &[f32], z: &[f32]) {
    let n = dx.len();
    assert!(dz.len() >= n && z.len() >= n);
    match micro::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present; lengths checked above.
        Isa::Avx512 => unsafe { avx512::add_masked(dx, dz, z) },
        _ => {
            for i in 0..n {
                if z[i] > 0.0 || z[i].is_nan() {
                    dx[i] += dz[i];
                }
            }
        }
    }
}

mod portable {
    /// `Σ v` (`dev` false) or `Σ (v - c)²` (`dev` true).
    pub fn sum_dev(row: &[f32], c: f32, dev: bool) -> f64 {
        let mut acc = [0f32; 16];
        let body = row.len() / 16 * 16;
        for ch in row[..body].chunks_exact(16) {
            for l in 0..16 {
                let v = ch[l] - c;
                acc[l] += if dev { v * v } else { ch[l] };
            }
        }
        let mut s: f64 = acc.iter().map(|&v| v as f64).sum();
        for &v in &row[body..] {
            let d = (v - c) as f64;
            s += if dev { d * d } else { v as f64 };
        }
        s
    }

    pub unsafe fn grad_sums(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        mean: f32,
        relu: bool,
        go: *mut f32,
    ) -> (f64, f64) {
        let (mut s, mut q) = (0f64, 0f64);
        for i in 0..dz.len() {
            let g = if relu && z[i] <= 0.0 { 0.0 } else { dz[i] };
            if !go.is_null() {
                *go.add(i) = g;
            }
            s += g as f64;
            q += g as f64 * (y[i] - mean) as f64;
        }
        (s, q)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn hsum(v: __m512) -> f64 {
        let mut a = [0f32; 16];
        _mm512_storeu_ps(a.as_mut_ptr(), v);
        a.iter().map(|&x| x as f64).sum()
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_dev(row: &[f32], c: f32, dev: bool) -> f64 {
        let n = row.len();
        let p = row.as_ptr();
        let cv = _mm512_set1_ps(c);
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            let (v0, v1) = (_mm512_loadu_ps(p.add(i)), _mm512_loadu_ps(p.add(i + 16)));
            if dev {
                let (d0, d1) = (_mm512_sub_ps(v0, cv), _mm512_sub_ps(v1, cv));
                a0 = _mm512_fmadd_ps(d0, d0, a0);
                a1 = _mm512_fmadd_ps(d1, d1, a1);
            } else {
                a0 = _mm512_add_ps(a0, v0);
                a1 = _mm512_add_ps(a1, v1);
            }
            i += 32;
        }
        let mut s = hsum(_mm512_add_ps(a0, a1));
        for &v in &row[i..] {
            let d = (v - c) as f64;
            s += if dev { d * d } else { v as f64 };
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_sums<const RELU: bool, const STORE: bool>(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        mean: f32,
        go: *mut f32,
    ) -> (f64, f64) {
        let n = dz.len();
        let (dp, zp, yp) = (dz.as_ptr(), z.as_ptr(), y.as_ptr());
        let (zero, mv) = (_mm512_setzero_ps(), _mm512_set1_ps(mean));
        let (mut s, mut q) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let mut g = _mm512_loadu_ps(dp.add(i));
            if RELU {
                // Keep g where !(z <= 0) (NaN z keeps it, as the scalar form).
                let m = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_loadu_ps(zp.add(i)), zero);
                g = _mm512_maskz_mov_ps(m, g);
            }
            if STORE {
                _mm512_storeu_ps(go.add(i), g);
            }
            s = _mm512_add_ps(s, g);
            q = _mm512_fmadd_ps(g, _mm512_sub_ps(_mm512_loadu_ps(yp.add(i)), mv), q);
            i += 16;
        }
        let (mut ss, mut qq) = (hsum(s), hsum(q));
        for j in i..n {
            let g = if RELU && z[j] <= 0.0 { 0.0 } else { dz[j] };
            if STORE {
                *go.add(j) = g;
            }
            ss += g as f64;
            qq += g as f64 * (y[j] - mean) as f64;
        }
        (ss, qq)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_input<const RELU: bool>(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        a: f32,
        b1: f32,
        b0: f32,
        out: &mut [f32],
    ) {
        let n = out.len();
        let (dp, zp, yp, op) = (dz.as_ptr(), z.as_ptr(), y.as_ptr(), out.as_mut_ptr());
        let (zero, av, b1v, b0v) = (
            _mm512_setzero_ps(),
            _mm512_set1_ps(a),
            _mm512_set1_ps(b1),
            _mm512_set1_ps(b0),
        );
        let mut i = 0;
        while i + 16 <= n {
            let mut g = _mm512_loadu_ps(dp.add(i));
            if RELU {
                let m = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_loadu_ps(zp.add(i)), zero);
                g = _mm512_maskz_mov_ps(m, g);
            }
            let v = _mm512_fmadd_ps(b1v, _mm512_loadu_ps(yp.add(i)), b0v);
            _mm512_storeu_ps(op.add(i), _mm512_fmadd_ps(av, g, v));
            i += 16;
        }
        for j in i..n {
            let g = if RELU && z[j] <= 0.0 { 0.0 } else { dz[j] };
            out[j] = a * g + b1 * y[j] + b0;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_masked(dx: &mut [f32], dz: &[f32], z: &[f32]) {
        let n = dx.len();
        let (xp, dp, zp) = (dx.as_mut_ptr(), dz.as_ptr(), z.as_ptr());
        let zero = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let m = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_loadu_ps(zp.add(i)), zero);
            let v = _mm512_mask_add_ps(
                _mm512_loadu_ps(xp.add(i)),
                m,
                _mm512_loadu_ps(xp.add(i)),
                _mm512_loadu_ps(dp.add(i)),
            );
            _mm512_storeu_ps(xp.add(i), v);
            i += 16;
        }
        for j in i..n {
            if z[j] > 0.0 || z[j].is_nan() {
                dx[j] += dz[j];
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn affine_act<const RELU: bool, const RES: bool>(
        y: &[f32],
        r: *const f32,
        a: f32,
        b: f32,
        z: &mut [f32],
    ) {
        let n = z.len();
        let (yp, zp) = (y.as_ptr(), z.as_mut_ptr());
        let (zero, av, bv) = (_mm512_setzero_ps(), _mm512_set1_ps(a), _mm512_set1_ps(b));
        let mut i = 0;
        while i + 16 <= n {
            let mut v = _mm512_fmadd_ps(_mm512_loadu_ps(yp.add(i)), av, bv);
            if RES {
                v = _mm512_add_ps(v, _mm512_loadu_ps(r.add(i)));
            }
            if RELU {
                let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
                v = _mm512_mask_mov_ps(v, m, zero);
            }
            _mm512_storeu_ps(zp.add(i), v);
            i += 16;
        }
        for j in i..n {
            let mut v = y[j] * a + b;
            if RES {
                v += *r.add(j);
            }
            z[j] = if RELU && v < 0.0 { 0.0 } else { v };
        }
    }
}

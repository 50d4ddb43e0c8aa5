//! The element-wise loops of BatchNorm, ReLU and the residual add. Three bodies: AVX-512
//! (hand-written), and one portable body written on 16-lane arrays with no serial float
//! reduction, compiled twice: for AVX2 + FMA (chosen at run time) and for the target's baseline
//! (SSE2 on x86-64, NEON on aarch64). The crate is compiled for baseline x86-64, where these loops
//! would otherwise stay 128 bits wide. Row sums use 16 f32 lanes over one (image, channel) row and
//! are returned in f64.

use super::micro::{self, Isa};

/// Runs `$body` (an expression over the generic `portable` functions) compiled for the
/// instruction set in use: AVX-512 has its own hand-written bodies, so the macro takes them as the
/// first arm.
macro_rules! dispatch {
    ($avx512:expr, $body:expr) => {
        dispatch!($avx512, avx2::run(|| $body), $body)
    };
    // With a hand-written AVX2 body too (the backward loops: the compiled portable body ran them
    // at ~0.4x the hand-written AVX-512 speed inside a training step).
    ($avx512:expr, $avx2:expr, $body:expr) => {
        match micro::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F is present (`isa` never exceeds the detected set); the callers
            // checked the slice lengths.
            Isa::Avx512 => unsafe { $avx512 },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA are present, as above.
            #[allow(unused_unsafe)]
            Isa::Avx2 => unsafe { $avx2 },
            _ => $body,
        }
    };
}

/// `(Σ v, Σ (v - Σv/n)²)` of one row.
pub fn mean_m2(row: &[f32]) -> (f64, f64) {
    let n = row.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let sum = dispatch!(
        avx512::sum_dev(row, 0.0, false),
        portable::sum_dev::<false>(row, 0.0)
    );
    let mean = sum / n as f64;
    let mf = mean as f32;
    let m2 = dispatch!(
        avx512::sum_dev(row, mf, true),
        portable::sum_dev::<true>(row, mf)
    );
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
    macro_rules! body {
        ($f:ident) => {
            match (relu, go.is_null()) {
                (true, true) => $f::grad_sums::<true, false>(dz, z, y, mean, go),
                (true, false) => $f::grad_sums::<true, true>(dz, z, y, mean, go),
                (false, true) => $f::grad_sums::<false, false>(dz, z, y, mean, go),
                (false, false) => $f::grad_sums::<false, true>(dz, z, y, mean, go),
            }
        };
    }
    // SAFETY (portable): lengths checked above.
    dispatch!(body!(avx512), body!(avx2), unsafe { body!(portable) })
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
    macro_rules! body {
        ($f:ident) => {
            if relu {
                $f::grad_input::<true>(dz, z, y, a, b1, b0, out)
            } else {
                $f::grad_input::<false>(dz, z, y, a, b1, b0, out)
            }
        };
    }
    dispatch!(body!(avx512), body!(avx2), body!(portable))
}

/// `z = act(y·a + b [+ r])`; the ReLU keeps NaN (a diverging run must stay visible).
pub fn affine_act(y: &[f32], r: Option<&[f32]>, a: f32, b: f32, relu: bool, z: &mut [f32]) {
    let n = z.len();
    assert!(y.len() >= n && r.is_none_or(|r| r.len() >= n));
    let rp = r.map_or(std::ptr::null(), |r| r.as_ptr());
    macro_rules! body {
        ($f:ident) => {
            match (relu, r.is_some()) {
                (true, true) => $f::affine_act::<true, true>(y, rp, a, b, z),
                (true, false) => $f::affine_act::<true, false>(y, rp, a, b, z),
                (false, true) => $f::affine_act::<false, true>(y, rp, a, b, z),
                (false, false) => $f::affine_act::<false, false>(y, rp, a, b, z),
            }
        };
    }
    // SAFETY (portable): `rp` is null only when `RES` is false; lengths checked above.
    dispatch!(body!(avx512), unsafe { body!(portable) })
}

/// `dx += g` with `g = dz` zeroed where `z <= 0` (a residual path's gradient after the ReLU).
pub fn add_masked(dx: &mut [f32], dz: &[f32], z: &[f32]) {
    let n = dx.len();
    assert!(dz.len() >= n && z.len() >= n);
    dispatch!(
        avx512::add_masked(dx, dz, z),
        avx2::add_masked(dx, dz, z),
        portable::add_masked(dx, dz, z)
    )
}

/// The portable bodies compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Runs `f` (inlined) in a function compiled for AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f64 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().map(|&x| x as f64).sum()
    }

    /// `g` where `!(z <= 0)` (a NaN `z` keeps it, as the scalar form), else 0.
    #[inline(always)]
    unsafe fn gate(g: __m256, z: __m256) -> __m256 {
        _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(z, _mm256_setzero_ps()), g)
    }

    /// The AVX-512 body's loop on two 8-lane halves.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn grad_sums<const RELU: bool, const STORE: bool>(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        mean: f32,
        go: *mut f32,
    ) -> (f64, f64) {
        let n = dz.len();
        let (dp, zp, yp) = (dz.as_ptr(), z.as_ptr(), y.as_ptr());
        let mv = _mm256_set1_ps(mean);
        let mut acc = [_mm256_setzero_ps(); 4]; // s (two halves), q (two halves)
        let mut i = 0;
        while i + 16 <= n {
            for h in 0..2 {
                let k = i + 8 * h;
                let mut g = _mm256_loadu_ps(dp.add(k));
                if RELU {
                    g = gate(g, _mm256_loadu_ps(zp.add(k)));
                }
                if STORE {
                    _mm256_storeu_ps(go.add(k), g);
                }
                acc[h] = _mm256_add_ps(acc[h], g);
                let d = _mm256_sub_ps(_mm256_loadu_ps(yp.add(k)), mv);
                acc[2 + h] = _mm256_fmadd_ps(g, d, acc[2 + h]);
            }
            i += 16;
        }
        let mut ss = hsum(_mm256_add_ps(acc[0], acc[1]));
        let mut qq = hsum(_mm256_add_ps(acc[2], acc[3]));
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

    #[target_feature(enable = "avx2,fma")]
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
        let (av, b1v, b0v) = (_mm256_set1_ps(a), _mm256_set1_ps(b1), _mm256_set1_ps(b0));
        let mut i = 0;
        while i + 8 <= n {
            let mut g = _mm256_loadu_ps(dp.add(i));
            if RELU {
                g = gate(g, _mm256_loadu_ps(zp.add(i)));
            }
            let v = _mm256_fmadd_ps(b1v, _mm256_loadu_ps(yp.add(i)), b0v);
            _mm256_storeu_ps(op.add(i), _mm256_fmadd_ps(av, g, v));
            i += 8;
        }
        for j in i..n {
            let g = if RELU && z[j] <= 0.0 { 0.0 } else { dz[j] };
            out[j] = a * g + b1 * y[j] + b0;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_masked(dx: &mut [f32], dz: &[f32], z: &[f32]) {
        let n = dx.len();
        let (xp, dp, zp) = (dx.as_mut_ptr(), dz.as_ptr(), z.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let g = gate(_mm256_loadu_ps(dp.add(i)), _mm256_loadu_ps(zp.add(i)));
            _mm256_storeu_ps(xp.add(i), _mm256_add_ps(_mm256_loadu_ps(xp.add(i)), g));
            i += 8;
        }
        for j in i..n {
            if z[j] > 0.0 || z[j].is_nan() {
                dx[j] += dz[j];
            }
        }
    }
}

/// 16 f32 lanes at a time, no serial float reduction: vectorizes for any target.
mod portable {
    const L: usize = 16;

    #[inline(always)]
    fn lanes_to_f64(acc: &[f32; L]) -> f64 {
        acc.iter().map(|&v| v as f64).sum()
    }

    /// `Σ v` (`DEV` false) or `Σ (v - c)²` (`DEV` true).
    #[inline(always)]
    pub fn sum_dev<const DEV: bool>(row: &[f32], c: f32) -> f64 {
        let mut acc = [0f32; L];
        let chunks = row.chunks_exact(L);
        let tail = chunks.remainder();
        for ch in chunks {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += if DEV { (v - c) * (v - c) } else { v };
            }
        }
        let mut s = lanes_to_f64(&acc);
        for &v in tail {
            let d = (v - c) as f64;
            s += if DEV { d * d } else { v as f64 };
        }
        s
    }

    /// # Safety
    /// `go` is null when `STORE` is false, else writable for `dz.len()` values; `z` and `y` hold
    /// at least `dz.len()`.
    #[inline(always)]
    pub unsafe fn grad_sums<const RELU: bool, const STORE: bool>(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        mean: f32,
        go: *mut f32,
    ) -> (f64, f64) {
        let n = dz.len();
        let (z, y) = (&z[..n], &y[..n]);
        let gate = |dz: f32, z: f32| if RELU && z <= 0.0 { 0.0 } else { dz };
        let (mut s, mut q) = ([0f32; L], [0f32; L]);
        let body = n / L * L;
        for i in (0..body).step_by(L) {
            let (dc, zc, yc) = (&dz[i..i + L], &z[i..i + L], &y[i..i + L]);
            let mut g = [0f32; L];
            for l in 0..L {
                g[l] = gate(dc[l], zc[l]);
                s[l] += g[l];
                q[l] += g[l] * (yc[l] - mean);
            }
            if STORE {
                std::ptr::copy_nonoverlapping(g.as_ptr(), go.add(i), L);
            }
        }
        let (mut ss, mut qq) = (lanes_to_f64(&s), lanes_to_f64(&q));
        for j in body..n {
            let g = gate(dz[j], z[j]);
            if STORE {
                *go.add(j) = g;
            }
            ss += g as f64;
            qq += g as f64 * (y[j] - mean) as f64;
        }
        (ss, qq)
    }

    #[inline(always)]
    pub fn grad_input<const RELU: bool>(
        dz: &[f32],
        z: &[f32],
        y: &[f32],
        a: f32,
        b1: f32,
        b0: f32,
        out: &mut [f32],
    ) {
        let n = out.len();
        for (((o, &d), &zv), &yv) in out.iter_mut().zip(&dz[..n]).zip(&z[..n]).zip(&y[..n]) {
            let g = if RELU && zv <= 0.0 { 0.0 } else { d };
            *o = a * g + (b1 * yv + b0);
        }
    }

    /// # Safety
    /// `r` is null when `RES` is false, else readable for `z.len()` values; `y` holds at least
    /// `z.len()`.
    #[inline(always)]
    pub unsafe fn affine_act<const RELU: bool, const RES: bool>(
        y: &[f32],
        r: *const f32,
        a: f32,
        b: f32,
        z: &mut [f32],
    ) {
        let n = z.len();
        let res = if RES {
            std::slice::from_raw_parts(r, n)
        } else {
            &[][..]
        };
        for (i, (o, &yv)) in z.iter_mut().zip(&y[..n]).enumerate() {
            let mut v = yv * a + b;
            if RES {
                v += res[i];
            }
            *o = if RELU && v < 0.0 { 0.0 } else { v };
        }
    }

    #[inline(always)]
    pub fn add_masked(dx: &mut [f32], dz: &[f32], z: &[f32]) {
        let n = dx.len();
        for ((x, &d), &zv) in dx.iter_mut().zip(&dz[..n]).zip(&z[..n]) {
            // Keep where !(z <= 0): NaN keeps the gradient.
            *x += if zv <= 0.0 { 0.0 } else { d };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(747796405).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 22) as f32 - 2.0
            })
            .collect()
    }

    fn close(got: f64, want: f64, tag: &str) {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{tag}: got {got}, want {want}"
        );
    }

    /// Every body against plain f64 loops, on lengths with and without a tail; this is the only
    /// test of the crate that switches the process-wide instruction set.
    #[test]
    fn every_isa_matches_plain_loops() {
        let native = micro::isa();
        for isa in micro::available() {
            micro::force_isa(isa);
            for n in [0usize, 5, 16, 33, 1024 + 7] {
                let (dz, mut z, y) = (row(n, 1), row(n, 2), row(n, 3));
                if n > 3 {
                    z[3] = f32::NAN; // a NaN pre-activation keeps its gradient
                }
                // Exactly zero (and minus zero) is gated off, in the vector body and the tail.
                for k in [1usize, 2, 9, 12, n.saturating_sub(1)] {
                    if k < n {
                        z[k] = if k % 2 == 0 { 0.0 } else { -0.0 };
                    }
                }
                let tag = format!("{isa} n{n}");
                let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64;
                let m2: f64 = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
                let (gm, gm2) = mean_m2(&y);
                close(gm, if n == 0 { 0.0 } else { mean }, &format!("mean {tag}"));
                close(gm2, m2, &format!("m2 {tag}"));
                for relu in [false, true] {
                    let g: Vec<f32> = (0..n)
                        .map(|i| if relu && z[i] <= 0.0 { 0.0 } else { dz[i] })
                        .collect();
                    let mut g_out = vec![9f32; n];
                    let (s, q) = grad_sums(&dz, &z, &y, 0.25, relu, Some(&mut g_out));
                    assert_eq!(
                        g_out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "g {tag} relu {relu}"
                    );
                    let (s2, q2) = grad_sums(&dz, &z, &y, 0.25, relu, None);
                    let want_s: f64 = g.iter().map(|&v| v as f64).sum();
                    let want_q: f64 = (0..n).map(|i| g[i] as f64 * (y[i] - 0.25) as f64).sum();
                    for (got, want, what) in [
                        (s, want_s, "s"),
                        (q, want_q, "q"),
                        (s2, want_s, "s2"),
                        (q2, want_q, "q2"),
                    ] {
                        close(got, want, &format!("{what} {tag} relu {relu}"));
                    }
                    let mut out = vec![0f32; n];
                    grad_input(&dz, &z, &y, relu, 1.5, -0.5, 0.125, &mut out);
                    for i in 0..n {
                        let want = 1.5 * g[i] as f64 - 0.5 * y[i] as f64 + 0.125;
                        close(
                            out[i] as f64,
                            want,
                            &format!("grad_input {tag} relu {relu} at {i}"),
                        );
                    }
                    for res in [false, true] {
                        let mut out = vec![0f32; n];
                        affine_act(&y, res.then_some(&dz[..]), 0.5, -0.25, relu, &mut out);
                        for i in 0..n {
                            let mut v = y[i] as f64 * 0.5 - 0.25;
                            if res {
                                v += dz[i] as f64;
                            }
                            let want = if relu { v.max(0.0) } else { v };
                            close(
                                out[i] as f64,
                                want,
                                &format!("affine {tag} {relu} {res} at {i}"),
                            );
                        }
                    }
                }
                let mut dx = y.clone();
                add_masked(&mut dx, &dz, &z);
                for i in 0..n {
                    let keep = z[i] > 0.0 || z[i].is_nan();
                    let want = y[i] as f64 + if keep { dz[i] as f64 } else { 0.0 };
                    close(dx[i] as f64, want, &format!("add_masked {tag} at {i}"));
                }
            }
        }
        micro::force_isa(native);
    }
}

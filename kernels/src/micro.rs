//! The two register-blocked inner loops every convolution pass is made of.
//!
//! - [`f_tile`] ("pixel-vectorized"): `out[r][j] = Σ_s a[s][r] · b[offs[s] + j]` for 8 rows `r`
//!   and `16 · nv` consecutive columns `j`. Forward and input-gradient convolutions: rows are
//!   output channels, columns are output pixels, `s` runs over (input channel, tap) and `offs`
//!   turns each `s` into a shifted view of a padded image (or a row of an im2col buffer).
//! - [`dot_tile`]: a 4 x 4 block of dot products between rows of two channel-major buffers,
//!   summed over several images. Weight gradients: rows are the input's tap rows (shifted views
//!   of the padded planes, or im2col rows), columns the output gradient's channel rows.
//!
//! Each has an AVX-512 body (24 accumulators in registers) and a portable body used when the CPU
//! lacks AVX-512F (and by the tests, to check both).

use std::sync::atomic::{AtomicU8, Ordering};

/// Which instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Portable,
}

static ISA: AtomicU8 = AtomicU8::new(0); // 0: not yet detected, 1: AVX-512, 2: portable

/// The instruction set in use: AVX-512F when the CPU has it, else portable Rust.
pub fn isa() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Avx512,
        2 => Isa::Portable,
        _ => {
            let detected = detect();
            ISA.store(
                if detected == Isa::Avx512 { 1 } else { 2 },
                Ordering::Relaxed,
            );
            detected
        }
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
    }
    Isa::Portable
}

/// Forces an instruction set (tests use it to check the portable bodies on an AVX-512 machine).
/// Asking for AVX-512 on a CPU without it keeps the portable one.
pub fn force_isa(isa: Isa) {
    let v = match isa {
        Isa::Avx512 if detect() == Isa::Avx512 => 1,
        _ => 2,
    };
    ISA.store(v, Ordering::Relaxed);
}

/// Rows of an [`f_tile`].
pub const F_ROWS: usize = 8;
/// Largest number of 16-wide column vectors of an [`f_tile`].
pub const F_MAX_NV: usize = 3;
/// Lanes of one column vector.
pub const LANES: usize = 16;

/// `out[r·ostride + j] = Σ_{s < offs.len()} a[s·8 + r] · b[offs[s] + j]` for `r < 8`,
/// `j < 16·nv`, `nv` in 1..=3.
///
/// # Safety
/// `a` holds `8 · offs.len()` values; every `b.offset(offs[s])` is followed by `16·nv` readable
/// values; `out` has 8 rows of `16·nv` writable values at stride `ostride`.
#[inline]
pub unsafe fn f_tile(
    isa: Isa,
    nv: usize,
    a: *const f32,
    offs: &[isize],
    b: *const f32,
    out: *mut f32,
    ostride: usize,
) {
    debug_assert!((1..=F_MAX_NV).contains(&nv));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match nv {
            3 => avx512::f_tile::<3>(a, offs, b, out, ostride),
            2 => avx512::f_tile::<2>(a, offs, b, out, ostride),
            _ => avx512::f_tile::<1>(a, offs, b, out, ostride),
        },
        _ => match nv {
            3 => portable::f_tile::<3>(a, offs, b, out, ostride),
            2 => portable::f_tile::<2>(a, offs, b, out, ostride),
            _ => portable::f_tile::<1>(a, offs, b, out, ostride),
        },
    }
}

/// Rows and columns of a [`dot_tile`].
pub const DOT_R: usize = 4;
pub const DOT_C: usize = 4;

/// `out[r·ostride + c] += Σ_i Σ_{j < 16·nv} x[i][xoff[r] + j] · d[i][doff[c] + j]` for
/// `r < 4`, `c < 4`, over the image pairs `(x[i], d[i])`: a block of dot products (weight
/// gradients straight from channel-major buffers, no transposes).
///
/// # Safety
/// Every `x[i].offset(xoff[r])` and `d[i].offset(doff[c])` is followed by `16·nv` readable
/// values; `out` has 4 rows of 4 writable values at stride `ostride`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn dot_tile(
    isa: Isa,
    x: &[*const f32],
    xoff: &[isize; DOT_R],
    d: &[*const f32],
    doff: &[isize; DOT_C],
    nv: usize,
    out: *mut f32,
    ostride: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::dot_tile(x, xoff, d, doff, nv, out, ostride),
        _ => portable::dot_tile(x, xoff, d, doff, nv, out, ostride),
    }
}

/// `dst[i · c + ch] = src[ch · stride + i]` for `i < n`, `ch < c`: `n` consecutive pixels of `c`
/// channel planes (`stride` apart) into channels-last order.
///
/// # Safety
/// `src` is readable at every `ch · stride + i`, `dst` writable for `n · c` values.
#[inline]
pub unsafe fn to_channels_last(
    isa: Isa,
    src: *const f32,
    stride: usize,
    c: usize,
    n: usize,
    dst: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if c.is_multiple_of(LANES) && stride <= i32::MAX as usize / LANES => {
            avx512::to_channels_last(src, stride, c, n, dst)
        }
        _ => {
            for i in 0..n {
                for ch in 0..c {
                    *dst.add(i * c + ch) = *src.add(ch * stride + i);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 16 channel rows of up to 16 pixels (masked loads), transposed in registers, stored as up
    /// to 16 pixel rows of 16 channels.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn to_channels_last(
        src: *const f32,
        stride: usize,
        c: usize,
        n: usize,
        dst: *mut f32,
    ) {
        for c0 in (0..c).step_by(16) {
            let mut i0 = 0;
            while i0 < n {
                let cnt = (n - i0).min(16);
                let mask = ((1u32 << cnt) - 1) as __mmask16;
                let mut r = [_mm512_setzero_ps(); 16];
                for (ch, v) in r.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(mask, src.add((c0 + ch) * stride + i0));
                }
                let t = transpose16(&r);
                for (j, v) in t.iter().enumerate().take(cnt) {
                    _mm512_storeu_ps(dst.add((i0 + j) * c + c0), *v);
                }
                i0 += cnt;
            }
        }
    }

    /// `out[j][i] = m[i][j]` for a 16 x 16 block held in 16 registers: 32-bit and 64-bit
    /// interleaves within 128-bit lanes, then two rounds of lane shuffles.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(m: &[__m512; 16]) -> [__m512; 16] {
        // a[k] / b[k], lane l: rows 2k, 2k+1 of columns 4l, 4l+1 / 4l+2, 4l+3.
        let mut a = [_mm512_setzero_ps(); 8];
        let mut b = [_mm512_setzero_ps(); 8];
        for k in 0..8 {
            a[k] = _mm512_unpacklo_ps(m[2 * k], m[2 * k + 1]);
            b[k] = _mm512_unpackhi_ps(m[2 * k], m[2 * k + 1]);
        }
        // g[q][blk], lane l: rows 4·blk .. 4·blk+3 of column 4l + q.
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        let mut g = [[_mm512_setzero_ps(); 4]; 4];
        for blk in 0..4 {
            let (a0, a1) = (pd(a[2 * blk]), pd(a[2 * blk + 1]));
            let (b0, b1) = (pd(b[2 * blk]), pd(b[2 * blk + 1]));
            g[0][blk] = ps(_mm512_unpacklo_pd(a0, a1));
            g[1][blk] = ps(_mm512_unpackhi_pd(a0, a1));
            g[2][blk] = ps(_mm512_unpacklo_pd(b0, b1));
            g[3][blk] = ps(_mm512_unpackhi_pd(b0, b1));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for (q, gq) in g.iter().enumerate() {
            let h0 = _mm512_shuffle_f32x4::<0x44>(gq[0], gq[1]);
            let h1 = _mm512_shuffle_f32x4::<0xEE>(gq[0], gq[1]);
            let h2 = _mm512_shuffle_f32x4::<0x44>(gq[2], gq[3]);
            let h3 = _mm512_shuffle_f32x4::<0xEE>(gq[2], gq[3]);
            out[q] = _mm512_shuffle_f32x4::<0x88>(h0, h2);
            out[4 + q] = _mm512_shuffle_f32x4::<0xDD>(h0, h2);
            out[8 + q] = _mm512_shuffle_f32x4::<0x88>(h1, h3);
            out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(h1, h3);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn f_tile<const NV: usize>(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; 8];
        let mut ap = a;
        for &o in offs {
            let bp = b.offset(o);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(bp.add(16 * j));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                for j in 0..NV {
                    row[j] = _mm512_fmadd_ps(av, bv[j], row[j]);
                }
            }
            ap = ap.add(8);
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * ostride + 16 * j), *v);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_tile(
        x: &[*const f32],
        xoff: &[isize; super::DOT_R],
        d: &[*const f32],
        doff: &[isize; super::DOT_C],
        nv: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        const R: usize = super::DOT_R;
        const C: usize = super::DOT_C;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for (&xb, &db) in x.iter().zip(d) {
            let mut xr = [xb; R];
            for r in 0..R {
                xr[r] = xb.offset(xoff[r]);
            }
            let mut dr = [db; C];
            for c in 0..C {
                dr[c] = db.offset(doff[c]);
            }
            for v in 0..nv {
                let mut dv = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    dv[c] = _mm512_loadu_ps(dr[c].add(16 * v));
                }
                for r in 0..R {
                    let xv = _mm512_loadu_ps(xr[r].add(16 * v));
                    for c in 0..C {
                        acc[r][c] = _mm512_fmadd_ps(xv, dv[c], acc[r][c]);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                *out.add(r * ostride + c) += _mm512_reduce_add_ps(*v);
            }
        }
    }
}

mod portable {
    pub unsafe fn f_tile<const NV: usize>(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut acc = [[[0f32; 16]; NV]; 8];
        let mut ap = a;
        for &o in offs {
            let bp = b.offset(o);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = *ap.add(r);
                for (j, v) in row.iter_mut().enumerate() {
                    for (l, e) in v.iter_mut().enumerate() {
                        *e += av * *bp.add(16 * j + l);
                    }
                }
            }
            ap = ap.add(8);
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                std::ptr::copy_nonoverlapping(v.as_ptr(), out.add(r * ostride + 16 * j), 16);
            }
        }
    }

    pub unsafe fn dot_tile(
        x: &[*const f32],
        xoff: &[isize; super::DOT_R],
        d: &[*const f32],
        doff: &[isize; super::DOT_C],
        nv: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        for (r, &xo) in xoff.iter().enumerate() {
            for (c, &dof) in doff.iter().enumerate() {
                let mut s = 0f32;
                for (&xb, &db) in x.iter().zip(d) {
                    let (xr, dr) = (xb.offset(xo), db.offset(dof));
                    for j in 0..16 * nv {
                        s += *xr.add(j) * *dr.add(j);
                    }
                }
                *out.add(r * ostride + c) += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_channels_last_transposes_with_both_instruction_sets() {
        for isa in [Isa::Avx512, Isa::Portable] {
            if isa == Isa::Avx512 && detect() != Isa::Avx512 {
                continue;
            }
            for &(c, n, stride) in &[
                (16, 16, 16),
                (32, 37, 40),
                (16, 5, 9),
                (48, 8, 8),
                (3, 7, 7),
            ] {
                let src: Vec<f32> = (0..c * stride).map(|v| v as f32).collect();
                let mut dst = vec![-1f32; n * c + 3];
                // SAFETY: src holds c · stride values (n <= stride), dst n · c.
                unsafe { to_channels_last(isa, src.as_ptr(), stride, c, n, dst.as_mut_ptr()) };
                for i in 0..n {
                    for ch in 0..c {
                        assert_eq!(
                            dst[i * c + ch],
                            src[ch * stride + i],
                            "{isa:?} c{c} n{n} i{i} ch{ch}"
                        );
                    }
                }
                assert_eq!(&dst[n * c..], &[-1.0; 3], "{isa:?}: wrote past the end");
            }
        }
    }
}

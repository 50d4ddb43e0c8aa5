//! bf16 products with f32 accumulation, for training on CPUs with AVX512_BF16 (Zen 4 and 5,
//! Intel Cooper Lake, Sapphire Rapids and later): `vdpbf16ps` multiplies 32 bf16 pairs into 16
//! f32 lanes per instruction, at the f32 FMA's rate, so twice the f32 peak.
//!
//! An operand is a run of `u32`s, each a **pair** of bf16 values (the low half first) along the
//! reduction: `vdpbf16ps` adds `a.lo · b.lo + a.hi · b.hi` into each lane. [`f_tile`] is the bf16
//! form of [`crate::micro::f_tile`]: `out[r][j] = Σ_s a[s][r] · b[offs[s] + j]` with `s` running
//! over pairs, so a convolution pairs two input channels (or two taps, or two pixels) per step.
//!
//! There is no slow emulation: [`check`] says why the CPU cannot (no AVX512_BF16, or
//! `SC_KERNELS_ISA` capping it off), and callers refuse bf16 then. Conversion rounds to nearest
//! even, as `vcvtneps2bf16` does; NaN stays NaN.

use crate::micro::{self, Isa};

/// Rows of an [`f_tile`] (output channels), as the f32 tile.
pub const ROWS: usize = micro::F_ROWS;
/// Lanes of one column vector.
pub const LANES: usize = micro::LANES;
/// Largest number of 16-wide column vectors of an [`f_tile`].
pub const MAX_NV: usize = micro::F_MAX_NV;

/// Whether the CPU itself has AVX512_BF16 (with AVX-512F), whatever `SC_KERNELS_ISA` says.
pub fn cpu_has() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Ok` when the bf16 kernels run here; else why not, in words for an error message: the CPU
/// lacks AVX512_BF16, or `SC_KERNELS_ISA` caps the kernels below AVX-512.
pub fn check() -> Result<(), String> {
    check_for(micro::isa())
}

/// [`check`] for the kernels capped at `isa`.
pub fn check_for(isa: Isa) -> Result<(), String> {
    if !cpu_has() {
        return Err(
            "this CPU has no AVX512_BF16 (the vdpbf16ps instruction: Zen 4 and later, Intel \
             Cooper Lake, Sapphire Rapids and later); bf16 is not emulated, use f32"
                .into(),
        );
    }
    if isa < Isa::Avx512 {
        return Err(format!(
            "{}={isa} caps the kernels below avx512, which bf16 needs",
            micro::ISA_ENV,
        ));
    }
    Ok(())
}

/// The bf16 bits of `x`, rounded to nearest even (a NaN stays a quiet NaN).
#[inline(always)]
pub fn to_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for (exact).
#[inline(always)]
pub fn from_bits(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to bf16 precision (what the products see).
#[inline(always)]
pub fn round(x: f32) -> f32 {
    from_bits(to_bits(x))
}

/// `dst[j] = (bf16(lo[j]), bf16(hi[j]))`, the pair the products read. `hi` None: a zero high
/// half (an odd count padded out).
pub fn pack_pairs(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    let n = dst.len();
    let lo = &lo[..n];
    match hi {
        Some(hi) => {
            let hi = &hi[..n];
            for j in 0..n {
                dst[j] = to_bits(lo[j]) as u32 | (to_bits(hi[j]) as u32) << 16;
            }
        }
        None => {
            for j in 0..n {
                dst[j] = to_bits(lo[j]) as u32;
            }
        }
    }
}

/// `out[r·ostride + j] = Σ_{s < offs.len()} a[s·8 + r] ⋅ b[offs[s] + j]` for `r < 8`,
/// `j < 16·nv`, `nv` in 1..=3, where `⋅` is the dot product of two bf16 pairs, summed in f32.
///
/// # Safety
/// [`check`] returned `Ok`; `a` holds `8 · offs.len()` pairs; every `b.offset(offs[s])` is
/// followed by `16·nv` readable pairs; `out` has 8 rows of `16·nv` writable values at stride
/// `ostride`.
#[inline]
pub unsafe fn f_tile(
    nv: usize,
    a: *const u32,
    offs: &[isize],
    b: *const u32,
    out: *mut f32,
    ostride: usize,
) {
    debug_assert!((1..=MAX_NV).contains(&nv));
    #[cfg(target_arch = "x86_64")]
    match nv {
        3 => avx512::f_tile::<3>(a, offs, b, out, ostride),
        2 => avx512::f_tile::<2>(a, offs, b, out, ostride),
        _ => avx512::f_tile::<1>(a, offs, b, out, ostride),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("bf16 kernels are x86-64 only (check() refuses elsewhere)");
}

/// [`f_tile`] in plain Rust, each pair's two products summed in f32 one after the other: the
/// reference the tests hold the kernel to.
///
/// # Safety
/// As [`f_tile`], but runs on any CPU.
pub unsafe fn f_tile_reference(
    nv: usize,
    a: *const u32,
    offs: &[isize],
    b: *const u32,
    out: *mut f32,
    ostride: usize,
) {
    let half = |v: u32, hi: bool| from_bits(if hi { (v >> 16) as u16 } else { v as u16 });
    for r in 0..ROWS {
        for j in 0..LANES * nv {
            let mut acc = 0f32;
            for (s, &o) in offs.iter().enumerate() {
                let (x, y) = (*a.add(s * ROWS + r), *b.offset(o).add(j));
                acc += half(x, false) * half(y, false) + half(x, true) * half(y, true);
            }
            *out.add(r * ostride + j) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The f32 tile's shape with `vdpbf16ps` in place of `vfmadd`: 8 x NV accumulators, one
    /// broadcast pair per row and NV column loads per step.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn f_tile<const NV: usize>(
        a: *const u32,
        offs: &[isize],
        b: *const u32,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; 8];
        let mut ap = a;
        for &o in offs {
            let bp = b.offset(o);
            let mut bv = [_mm512_setzero_si512(); NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(bp.add(16 * j) as *const _);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                for j in 0..NV {
                    let bj: __m512bh = std::mem::transmute(bv[j]);
                    row[j] = _mm512_dpbf16_ps(row[j], av, bj);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_nan_and_infinities() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above halfway rounds up.
        assert_eq!(round(f32::from_bits(0x3f80_8001)), 1.0 + 1.0 / 128.0);
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        // A signalling NaN whose payload sits in the low half stays a NaN, not an infinity.
        assert!(round(f32::from_bits(0x7f80_0001)).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        // Every bf16 value converts back to itself.
        for b in (0..=u16::MAX).step_by(7) {
            let x = from_bits(b);
            if !x.is_nan() {
                assert_eq!(to_bits(x), b);
            }
        }
    }

    #[test]
    fn pairs_hold_the_low_value_first() {
        let mut d = [0u32; 2];
        pack_pairs(&[1.0, -2.0], Some(&[3.0, 0.5]), &mut d);
        assert_eq!(d, [0x4040_3f80, 0x3f00_c000]);
        pack_pairs(&[1.0, -2.0], None, &mut d);
        assert_eq!(d, [0x3f80, 0xc000]);
    }

    /// The kernel against the reference, on random pairs with offsets that overlap (as a
    /// convolution's taps do), every column width.
    #[test]
    fn the_tile_matches_the_reference() {
        if check().is_err() {
            eprintln!("skipped: {}", check().unwrap_err());
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let steps = 37;
        let vals: Vec<f32> = (0..2 * (steps * ROWS + 400)).map(|_| rnd()).collect();
        let mut a = vec![0u32; steps * ROWS];
        let mut b = vec![0u32; 400];
        pack_pairs(&vals[..a.len()], Some(&vals[a.len()..2 * a.len()]), &mut a);
        pack_pairs(
            &vals[2 * a.len()..][..400],
            Some(&vals[2 * a.len() + 400..]),
            &mut b,
        );
        let offs: Vec<isize> = (0..steps).map(|s| ((s * 7) % 300) as isize).collect();
        for nv in 1..=MAX_NV {
            let ostride = 16 * nv + 5;
            let mut got = vec![f32::NAN; ROWS * ostride];
            let mut want = got.clone();
            unsafe {
                f_tile(nv, a.as_ptr(), &offs, b.as_ptr(), got.as_mut_ptr(), ostride);
                f_tile_reference(
                    nv,
                    a.as_ptr(),
                    &offs,
                    b.as_ptr(),
                    want.as_mut_ptr(),
                    ostride,
                );
            }
            for r in 0..ROWS {
                for j in 0..16 * nv {
                    let (g, w) = (got[r * ostride + j], want[r * ostride + j]);
                    // 2·37 products of magnitude < 1, summed in another order.
                    assert!((g - w).abs() <= 1e-4, "nv {nv} row {r} col {j}: {g} vs {w}");
                }
                // The gap between rows is untouched.
                assert!(got[r * ostride + 16 * nv].is_nan());
            }
        }
    }

    #[test]
    fn a_cap_below_avx512_is_named() {
        if !cpu_has() {
            assert!(check().unwrap_err().contains("AVX512_BF16"));
            return;
        }
        assert!(check_for(Isa::Avx512).is_ok());
        for isa in [Isa::Avx2, Isa::Portable] {
            let e = check_for(isa).unwrap_err();
            assert!(e.contains(&format!("SC_KERNELS_ISA={isa}")), "{e}");
        }
    }
}

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
            "{}={isa} caps the kernels below avx512, which bf16 (AVX512_BF16) needs",
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
/// The CPU has AVX512_BF16 ([`cpu_has`]); `a` holds `8 · offs.len()` pairs; every `b.offset(offs[s])` is
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
    unreachable!("bf16 kernels are x86-64 only (cpu_has() is false elsewhere)");
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

/// How a pass's reduction steps `s` pair up for [`f_tile`]: `s` with `s + group` for `s` in the
/// first half of each block of `2·group` steps (two input channels at the same tap, two channels
/// of the output gradient, two pixels), every pair `d` values apart in the pass's f32 source
/// buffer. The f32 buffer is filled as for the f32 tile; [`Pairing::pack_b`] turns the parts the
/// tiles read into pairs.
#[derive(Debug, Clone)]
pub struct Pairing {
    group: usize,
    d: usize,
    /// Each pair's offset: its low step's.
    offs: Vec<isize>,
    /// The source's ranges `[start, end)` the tiles read, merged.
    ranges: Vec<(usize, usize)>,
}

impl Pairing {
    /// The pairing of `offs` (one offset per step into a source buffer; the tiles read `pt`
    /// values from each), or None when the steps do not pair so: a count that is not a multiple
    /// of `2·group`, or pairs at different distances.
    pub fn new(offs: &[isize], group: usize, pt: usize) -> Option<Pairing> {
        if group == 0 || offs.is_empty() || offs.len() % (2 * group) != 0 {
            return None;
        }
        let d = offs[group] - offs[0];
        if d <= 0 {
            return None;
        }
        let mut lows = Vec::with_capacity(offs.len() / 2);
        for block in offs.chunks_exact(2 * group) {
            let (lo, hi) = block.split_at(group);
            if lo.iter().zip(hi).any(|(a, b)| b - a != d || *a < 0) {
                return None;
            }
            lows.extend_from_slice(lo);
        }
        let mut spans: Vec<(usize, usize)> = lows
            .iter()
            .map(|&o| (o as usize, o as usize + pt))
            .collect();
        spans.sort_unstable();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for (a, b) in spans {
            match ranges.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => ranges.push((a, b)),
            }
        }
        Some(Pairing {
            group,
            d: d as usize,
            offs: lows,
            ranges,
        })
    }

    /// Pairs of steps.
    pub fn len(&self) -> usize {
        self.offs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offs.is_empty()
    }

    /// The A operand in pairs: `a` is `[row tile][s][8]` (f32), the result `[row tile][pair][8]`.
    pub fn pack_a(&self, a: &[f32], row_tiles: usize) -> Vec<u32> {
        let (s_len, g) = (2 * self.offs.len(), self.group);
        let mut out = Vec::with_capacity(row_tiles * self.offs.len() * ROWS);
        for rt in 0..row_tiles {
            let tile = &a[rt * s_len * ROWS..][..s_len * ROWS];
            for block in 0..s_len / (2 * g) {
                for j in 0..g {
                    let lo = &tile[(block * 2 * g + j) * ROWS..][..ROWS];
                    let hi = &tile[(block * 2 * g + g + j) * ROWS..][..ROWS];
                    for r in 0..ROWS {
                        out.push(to_bits(lo[r]) as u32 | (to_bits(hi[r]) as u32) << 16);
                    }
                }
            }
        }
        out
    }

    /// `b2[q] = (b[q], b[q + d])` wherever the tiles read; `b2` is as long as `b` (the rest of
    /// it is not read).
    pub fn pack_b(&self, b: &[f32], b2: &mut [u32]) {
        for &(start, end) in &self.ranges {
            pack_pairs(
                &b[start..end],
                Some(&b[start + self.d..end + self.d]),
                &mut b2[start..end],
            );
        }
    }

    /// `out[rt·8 + r][0..pt] = Σ_pairs a2[rt][pair][r] ⋅ b2[offs[pair] + ·]` for every row tile:
    /// the f32 pass's tiles in bf16 pairs.
    ///
    /// # Safety
    /// The CPU has AVX512_BF16 ([`cpu_has`]); `a2` came from [`Pairing::pack_a`] for `row_tiles` tiles, `b2`
    /// from [`Pairing::pack_b`] on a source in which every step's offset plus `pt` is in bounds,
    /// `out` holds `row_tiles · 8` rows of `pt`, and `pt` is a multiple of 16.
    pub unsafe fn run(&self, a2: &[u32], row_tiles: usize, b2: &[u32], pt: usize, out: &mut [f32]) {
        let n = self.offs.len();
        debug_assert!(a2.len() >= row_tiles * n * ROWS);
        debug_assert!(out.len() >= row_tiles * ROWS * pt);
        debug_assert!(self.offs.iter().all(|&o| o as usize + pt <= b2.len()));
        for rt in 0..row_tiles {
            let ap = a2[rt * n * ROWS..].as_ptr();
            let mut p0 = 0;
            while p0 < pt {
                let nv = ((pt - p0) / LANES).min(MAX_NV);
                f_tile(
                    nv,
                    ap,
                    &self.offs,
                    b2.as_ptr().add(p0),
                    out.as_mut_ptr().add(rt * ROWS * pt + p0),
                    pt,
                );
                p0 += nv * LANES;
            }
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
        if !cpu_has() {
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

    /// A pairing's tiles against the f32 sums over the same steps with their operands rounded to
    /// bf16: two channels of planes at a constant distance, overlapping taps.
    #[test]
    fn paired_steps_give_the_f32_sums_of_rounded_operands() {
        if !cpu_has() {
            return;
        }
        let (plane, pt, taps) = (100usize, 48usize, [0isize, 1, 2, 10, 11, 12]);
        let chans = 4;
        // Steps s = (channel, tap), offsets channel · plane + tap: pairs of channels.
        let offs: Vec<isize> = (0..chans)
            .flat_map(|c| taps.iter().map(move |t| (c * plane) as isize + t))
            .collect();
        assert!(Pairing::new(&offs[..offs.len() - 1], taps.len(), pt).is_none());
        let mut uneven = offs.clone();
        uneven[taps.len()] += 1;
        assert!(Pairing::new(&uneven, taps.len(), pt).is_none());
        let p = Pairing::new(&offs, taps.len(), pt).unwrap();
        assert_eq!(p.len(), offs.len() / 2);
        let b: Vec<f32> = (0..chans * plane + 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let a: Vec<f32> = (0..2 * offs.len() * ROWS)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let mut b2 = vec![0u32; b.len()];
        p.pack_b(&b, &mut b2);
        let a2 = p.pack_a(&a, 2);
        let mut out = vec![f32::NAN; 2 * ROWS * pt];
        unsafe { p.run(&a2, 2, &b2, pt, &mut out) };
        for rt in 0..2 {
            for r in 0..ROWS {
                for j in 0..pt {
                    let want: f32 = (0..offs.len())
                        .map(|s| {
                            round(a[(rt * offs.len() + s) * ROWS + r])
                                * round(b[offs[s] as usize + j])
                        })
                        .sum();
                    let got = out[(rt * ROWS + r) * pt + j];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "{rt} {r} {j}: {got} vs {want}"
                    );
                }
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

//! int8 inference arithmetic: uint8 activations times int8 weights summed in int32
//! ([`gemm_u8i8`]), then requantized to uint8 with bias, residual and ReLU in one pass
//! ([`requantize`]). A convolution is this product on im2col rows (one row per output pixel).
//!
//! Bodies, picked at run time ([`Int8Isa`]):
//! - **avx512-vnni**: `vpdpbusd` on 512-bit vectors (16 output channels, 4 products per lane);
//! - **avx-vnni**: the same instruction on 256-bit vectors (CPUs with AVX-VNNI but no AVX-512);
//! - **avx2**: no VNNI. `vpmaddubsw` would saturate (255 · 127 · 2 > 32767), so weights and
//!   activations are widened to 16 bits and multiplied with `vpmaddwd`, which is exact;
//! - **portable**: plain Rust.
//!
//! Every body gives exactly the scalar reference's integers (the tests check each one this CPU
//! has, the saturating case included). `SC_KERNELS_ISA` caps the choice as for the float kernels:
//! `avx2` selects the body without VNNI, `portable` the plain one.

use crate::micro::{self, Isa};

/// The int8 body in use, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Int8Isa {
    Portable,
    Avx2,
    AvxVnni,
    Avx512Vnni,
}

impl Int8Isa {
    pub fn name(self) -> &'static str {
        match self {
            Int8Isa::Portable => "portable",
            Int8Isa::Avx2 => "avx2",
            Int8Isa::AvxVnni => "avx-vnni",
            Int8Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether the body has a VNNI dot-product instruction.
    pub fn has_vnni(self) -> bool {
        matches!(self, Int8Isa::AvxVnni | Int8Isa::Avx512Vnni)
    }
}

impl std::fmt::Display for Int8Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The int8 bodies this CPU can run, narrowest first (what the tests loop over).
pub fn available() -> Vec<Int8Isa> {
    let mut v = vec![Int8Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        // Every body's epilogue uses FMA (`sc_kernels::qconv`).
        let fma = std::arch::is_x86_feature_detected!("fma");
        if fma && std::arch::is_x86_feature_detected!("avx2") {
            v.push(Int8Isa::Avx2);
        }
        if fma
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("avxvnni")
        {
            v.push(Int8Isa::AvxVnni);
        }
        if fma
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            v.push(Int8Isa::Avx512Vnni);
        }
    }
    v
}

/// The body in use: the widest this CPU has under the float kernels' cap ([`micro::isa`]):
/// `avx512` allows the VNNI bodies, `avx2` only the one without VNNI, `portable` plain Rust.
pub fn isa() -> Int8Isa {
    let cap = match micro::isa() {
        Isa::Avx512 => Int8Isa::Avx512Vnni,
        Isa::Avx2 => Int8Isa::Avx2,
        Isa::Portable => Int8Isa::Portable,
    };
    available()
        .into_iter()
        .filter(|&i| i <= cap)
        .max()
        .unwrap_or(Int8Isa::Portable)
}

/// Output channels per packed block.
pub const BLOCK: usize = 16;

/// int8 weights `[cout][k]` packed for [`gemm_u8i8`]: `k` padded to a multiple of 4 and `cout`
/// to a multiple of [`BLOCK`] (with zeros), laid out `[cout / 16][k / 4][16][4]`: one 64-byte
/// vector holds 4 consecutive products for 16 output channels.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    pub cout: usize,
    pub k: usize,
    /// `k` rounded up to a multiple of 4: the row length [`gemm_u8i8`] reads.
    pub kpad: usize,
    data: Vec<i8>,
    /// `sum_k w[co][k]`, for the activation zero point's correction.
    pub row_sums: Vec<i32>,
}

impl PackedI8 {
    pub fn new(w: &[i8], cout: usize, k: usize) -> PackedI8 {
        assert_eq!(w.len(), cout * k, "weights must be [cout][k]");
        let kpad = k.div_ceil(4) * 4;
        let blocks = cout.div_ceil(BLOCK);
        let mut data = vec![0i8; blocks * kpad * BLOCK];
        for co in 0..cout {
            let (b, c) = (co / BLOCK, co % BLOCK);
            for kk in 0..k {
                data[((b * kpad / 4 + kk / 4) * BLOCK + c) * 4 + kk % 4] = w[co * k + kk];
            }
        }
        let row_sums = (0..cout)
            .map(|co| w[co * k..(co + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        PackedI8 {
            cout,
            k,
            kpad,
            data,
            row_sums,
        }
    }

    /// The packed vector of block `b` at step `kb` (64 bytes).
    fn vec(&self, b: usize, kb: usize) -> &[i8] {
        let at = (b * self.kpad / 4 + kb) * BLOCK * 4;
        &self.data[at..at + BLOCK * 4]
    }
}

/// `out[r][co] = sum_k a[r][k] · w[co][k]` for `rows` rows of `a` (`rows × kpad` bytes, the
/// padding zero), exactly, with the body [`isa`] picks.
pub fn gemm_u8i8(a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
    gemm_u8i8_with(isa(), a, rows, w, out)
}

/// [`gemm_u8i8`] with a given body (one this CPU has, see [`available`]; else the portable one).
pub fn gemm_u8i8_with(isa: Int8Isa, a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
    assert!(
        a.len() >= rows * w.kpad,
        "a holds fewer than rows × kpad bytes"
    );
    assert!(
        out.len() >= rows * w.cout,
        "out holds fewer than rows × cout values"
    );
    let isa = if available().contains(&isa) {
        isa
    } else {
        Int8Isa::Portable
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked the CPU features; the bounds were asserted above.
        Int8Isa::Avx512Vnni => unsafe { x86::gemm_avx512vnni(a, rows, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Int8Isa::AvxVnni => unsafe { x86::gemm_avxvnni(a, rows, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Int8Isa::Avx2 => unsafe { x86::gemm_avx2(a, rows, w, out) },
        _ => gemm_portable(a, rows, w, out),
    }
}

fn gemm_portable(a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
    let mut acc = [0i32; BLOCK];
    for r in 0..rows {
        let row = &a[r * w.kpad..(r + 1) * w.kpad];
        for b in 0..w.cout.div_ceil(BLOCK) {
            acc.fill(0);
            for kb in 0..w.kpad / 4 {
                let v = w.vec(b, kb);
                let x = &row[kb * 4..kb * 4 + 4];
                for (c, s) in acc.iter_mut().enumerate() {
                    for j in 0..4 {
                        *s += x[j] as i32 * v[c * 4 + j] as i32;
                    }
                }
            }
            store(&acc, r, b, w.cout, out);
        }
    }
}

/// Writes one block's 16 sums to row `r` of `out`, the channels past `cout` left out.
fn store(acc: &[i32; BLOCK], r: usize, b: usize, cout: usize, out: &mut [i32]) {
    let co = b * BLOCK;
    let n = BLOCK.min(cout - co);
    out[r * cout + co..r * cout + co + n].copy_from_slice(&acc[..n]);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store, PackedI8, BLOCK};
    use std::arch::x86_64::*;

    /// Four activation bytes of row `r` at step `kb`, as one 32-bit value.
    #[inline(always)]
    unsafe fn quad(a: &[u8], kpad: usize, r: usize, kb: usize) -> i32 {
        i32::from_le_bytes(
            a[r * kpad + kb * 4..r * kpad + kb * 4 + 4]
                .try_into()
                .unwrap(),
        )
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm_avx512vnni(a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
        let steps = w.kpad / 4;
        let mut tmp = [0i32; BLOCK];
        for b in 0..w.cout.div_ceil(BLOCK) {
            let mut r = 0;
            // 4 rows share each weight vector.
            while r + 4 <= rows {
                let mut acc = [_mm512_setzero_si512(); 4];
                for kb in 0..steps {
                    let v = _mm512_loadu_si512(w.vec(b, kb).as_ptr() as *const _);
                    for (i, s) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_epi32(quad(a, w.kpad, r + i, kb));
                        *s = _mm512_dpbusd_epi32(*s, x, v);
                    }
                }
                for (i, s) in acc.iter().enumerate() {
                    _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, *s);
                    store(&tmp, r + i, b, w.cout, out);
                }
                r += 4;
            }
            for r in r..rows {
                let mut s = _mm512_setzero_si512();
                for kb in 0..steps {
                    let v = _mm512_loadu_si512(w.vec(b, kb).as_ptr() as *const _);
                    s = _mm512_dpbusd_epi32(s, _mm512_set1_epi32(quad(a, w.kpad, r, kb)), v);
                }
                _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, s);
                store(&tmp, r, b, w.cout, out);
            }
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn gemm_avxvnni(a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
        let steps = w.kpad / 4;
        let mut tmp = [0i32; BLOCK];
        for b in 0..w.cout.div_ceil(BLOCK) {
            for r in 0..rows {
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for kb in 0..steps {
                    let p = w.vec(b, kb).as_ptr();
                    let x = _mm256_set1_epi32(quad(a, w.kpad, r, kb));
                    lo = _mm256_dpbusd_avx_epi32(lo, x, _mm256_loadu_si256(p as *const _));
                    hi = _mm256_dpbusd_avx_epi32(hi, x, _mm256_loadu_si256(p.add(32) as *const _));
                }
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut _, lo);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut _, hi);
                store(&tmp, r, b, w.cout, out);
            }
        }
    }

    /// No VNNI: weights widened to 16 bits (4 channels × 4 products per vector), activations
    /// too, `vpmaddwd` sums pairs exactly; pairs are added at the end.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm_avx2(a: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
        let steps = w.kpad / 4;
        let mut tmp = [0i32; BLOCK];
        for b in 0..w.cout.div_ceil(BLOCK) {
            for r in 0..rows {
                let mut acc = [_mm256_setzero_si256(); 4];
                for kb in 0..steps {
                    let p = w.vec(b, kb).as_ptr();
                    let q = quad(a, w.kpad, r, kb) as u32;
                    // [a0, a1, a2, a3] as 16-bit values, repeated over the vector.
                    let x16 = (q & 0xff) as i64
                        | (((q >> 8) & 0xff) as i64) << 16
                        | (((q >> 16) & 0xff) as i64) << 32
                        | (((q >> 24) & 0xff) as i64) << 48;
                    let x = _mm256_set1_epi64x(x16);
                    for (i, s) in acc.iter_mut().enumerate() {
                        let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16 * i) as *const _));
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(x, v));
                    }
                }
                // Lanes hold pair sums (c, 0..1), (c, 2..3); add the pairs, restore order.
                for h in 0..2 {
                    let s = _mm256_hadd_epi32(acc[2 * h], acc[2 * h + 1]);
                    let s = _mm256_permute4x64_epi64(s, 0b11_01_10_00);
                    _mm256_storeu_si256(tmp.as_mut_ptr().add(8 * h) as *mut _, s);
                }
                store(&tmp, r, b, w.cout, out);
            }
        }
    }
}

/// How int32 sums become uint8 outputs: `y = round((acc[co] + bias[co]) · scale[co] +
/// residual) + zero_point`, ReLU (`y ≥ zero_point`) when asked, clamped to [0, 255].
/// `bias` holds the int32 bias minus `zero_point(x) · row_sums[co]`; `scale` is
/// `scale(x) · scale(w)[co] / scale(y)`.
pub struct Requant<'a> {
    pub bias: &'a [i32],
    pub scale: &'a [f32],
    pub zero_point: u8,
    pub relu: bool,
}

/// A uint8 tensor added before the ReLU: `(r - zero_point) · scale` in output steps
/// (`scale = scale(r) / scale(y)`).
pub struct Residual<'a> {
    pub values: &'a [u8],
    pub scale: f32,
    pub zero_point: u8,
}

/// Requantizes `rows × cout` sums into `out` (same layout), with an optional residual of the
/// same layout.
pub fn requantize(acc: &[i32], q: &Requant, residual: Option<&Residual>, out: &mut [u8]) {
    let cout = q.bias.len();
    assert!(q.scale.len() == cout && acc.len() == out.len() && acc.len() % cout.max(1) == 0);
    let lo = if q.relu { q.zero_point as f32 } else { 0.0 };
    for (i, (&s, y)) in acc.iter().zip(out.iter_mut()).enumerate() {
        let co = i % cout;
        let mut v = (s + q.bias[co]) as f32 * q.scale[co];
        if let Some(r) = residual {
            v += (r.values[i] as f32 - r.zero_point as f32) * r.scale;
        }
        *y = (v.round_ties_even() + q.zero_point as f32).clamp(lo, 255.0) as u8;
    }
}

/// A uint8 convolution of one `[cin, h, w]` image (NCHW) into `[cout, ho, wo]`: square kernel
/// `k`, `stride`, symmetric zero padding `pad` (padded with the input's zero point, the quantized
/// 0), weights `[cout][cin · k · k]` packed, requantized with `q` (and a `[cout, ho, wo]` residual).
/// `cols` and `acc` are scratch buffers, grown as needed. `isa` is the body ([`isa`] in use).
#[allow(clippy::too_many_arguments)]
pub fn conv_u8(
    isa: Int8Isa,
    x: &[u8],
    [cin, h, w]: [usize; 3],
    x_zero_point: u8,
    k: usize,
    stride: usize,
    pad: usize,
    weights: &PackedI8,
    q: &Requant,
    residual: Option<&Residual>,
    out: &mut [u8],
    cols: &mut Vec<u8>,
    acc: &mut Vec<i32>,
) {
    assert!(stride > 0 && k > 0 && x.len() == cin * h * w);
    assert_eq!(
        weights.k,
        cin * k * k,
        "weights are not [cout][cin · k · k]"
    );
    let ho = (h + 2 * pad).saturating_sub(k) / stride + 1;
    let wo = (w + 2 * pad).saturating_sub(k) / stride + 1;
    let (pixels, cout, kpad) = (ho * wo, weights.cout, weights.kpad);
    assert_eq!(out.len(), cout * pixels);
    cols.clear();
    cols.resize(pixels * kpad, 0);
    for oy in 0..ho {
        for ox in 0..wo {
            let row = &mut cols[(oy * wo + ox) * kpad..][..kpad];
            let mut j = 0;
            for c in 0..cin {
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        row[j] = if inside {
                            x[(c * h + iy as usize) * w + ix as usize]
                        } else {
                            x_zero_point
                        };
                        j += 1;
                    }
                }
            }
        }
    }
    acc.clear();
    acc.resize(pixels * cout, 0);
    gemm_u8i8_with(isa, cols, pixels, weights, acc);
    // [pixels][cout] → [cout][pixels], then requantize in the output's layout.
    let mut t = vec![0i32; pixels * cout];
    for p in 0..pixels {
        for co in 0..cout {
            t[co * pixels + p] = acc[p * cout + co];
        }
    }
    let lo = if q.relu { q.zero_point as f32 } else { 0.0 };
    for co in 0..cout {
        for p in 0..pixels {
            let i = co * pixels + p;
            let mut v = (t[i] + q.bias[co]) as f32 * q.scale[co];
            if let Some(r) = residual {
                v += (r.values[i] as f32 - r.zero_point as f32) * r.scale;
            }
            out[i] = (v.round_ties_even() + q.zero_point as f32).clamp(lo, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<u64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s >> 33
            })
            .collect()
    }

    fn reference(a: &[u8], rows: usize, kpad: usize, w: &[i8], cout: usize, k: usize) -> Vec<i32> {
        let mut out = vec![0; rows * cout];
        for r in 0..rows {
            for co in 0..cout {
                out[r * cout + co] = (0..k)
                    .map(|kk| a[r * kpad + kk] as i32 * w[co * k + kk] as i32)
                    .sum();
            }
        }
        out
    }

    fn check(
        rows: usize,
        cout: usize,
        k: usize,
        a_of: impl Fn(u64) -> u8,
        w_of: impl Fn(u64) -> i8,
    ) {
        let w: Vec<i8> = lcg(cout * k, 7).into_iter().map(&w_of).collect();
        let p = PackedI8::new(&w, cout, k);
        let mut a: Vec<u8> = lcg(rows * p.kpad, 9).into_iter().map(&a_of).collect();
        for r in 0..rows {
            a[r * p.kpad + k..(r + 1) * p.kpad].fill(0);
        }
        let want = reference(&a, rows, p.kpad, &w, cout, k);
        for isa in available() {
            let mut got = vec![i32::MIN; rows * cout];
            gemm_u8i8_with(isa, &a, rows, &p, &mut got);
            assert_eq!(got, want, "{isa}: rows {rows} cout {cout} k {k}");
        }
    }

    #[test]
    fn every_body_matches_the_scalar_reference() {
        for &(rows, cout, k) in &[
            (1, 1, 1),
            (5, 16, 27),
            (9, 20, 72),
            (4, 64, 144),
            (7, 10, 8),
        ] {
            check(rows, cout, k, |v| v as u8, |v| v as i8);
        }
    }

    /// 255 · 127 + 255 · 127 overflows `vpmaddubsw`'s 16-bit sums; the bodies must not saturate.
    #[test]
    fn extreme_values_do_not_saturate() {
        check(6, 32, 36, |_| 255, |_| 127);
        check(6, 32, 36, |_| 255, |_| -128);
        check(
            5,
            17,
            12,
            |v| if v % 2 == 0 { 255 } else { 0 },
            |v| if v % 3 == 0 { -128 } else { 127 },
        );
        let w = vec![127i8; 8];
        let p = PackedI8::new(&w, 1, 8);
        let mut out = [0];
        for isa in available() {
            gemm_u8i8_with(isa, &[255; 8], 1, &p, &mut out);
            assert_eq!(out[0], 8 * 255 * 127, "{isa}");
        }
    }

    #[test]
    fn requantize_rounds_adds_the_residual_and_clamps() {
        let q = Requant {
            bias: &[10, -10],
            scale: &[0.5, 0.25],
            zero_point: 3,
            relu: true,
        };
        let mut out = [0u8; 4];
        requantize(&[1, 30, -100, 4000], &q, None, &mut out);
        // (1+10)·0.5 = 5.5 → 6 (ties to even) + 3; (30-10)·0.25 = 5 + 3; ReLU → 3; 255.
        assert_eq!(out, [9, 8, 3, 255]);
        let r = Residual {
            values: &[10, 0, 0, 0],
            scale: 0.5,
            zero_point: 4,
        };
        requantize(&[1, 30, -100, 4000], &q, Some(&r), &mut out);
        assert_eq!(out, [11, 6, 3, 255]);
    }

    /// `conv_u8` against a direct float computation of the same quantized arithmetic.
    #[test]
    fn conv_u8_matches_a_direct_reference_on_every_body() {
        let (cin, h, w, cout, k, stride, pad) = (3, 7, 6, 20, 3, 2, 1);
        let x: Vec<u8> = lcg(cin * h * w, 3).into_iter().map(|v| v as u8).collect();
        let wt: Vec<i8> = lcg(cout * cin * k * k, 4)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let zx = 17u8;
        let p = PackedI8::new(&wt, cout, cin * k * k);
        let bias: Vec<i32> = (0..cout)
            .map(|co| 100 * co as i32 - zx as i32 * p.row_sums[co])
            .collect();
        let scale: Vec<f32> = (0..cout).map(|co| 0.001 + 0.0003 * co as f32).collect();
        let q = Requant {
            bias: &bias,
            scale: &scale,
            zero_point: 9,
            relu: true,
        };
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let res: Vec<u8> = lcg(cout * ho * wo, 5)
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let r = Residual {
            values: &res,
            scale: 0.7,
            zero_point: 100,
        };
        let mut want = vec![0u8; cout * ho * wo];
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0i64;
                    for c in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - 1,
                                    (ox * stride + kx) as isize - 1,
                                );
                                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                {
                                    zx as i64
                                } else {
                                    x[(c * h + iy as usize) * w + ix as usize] as i64
                                };
                                s += v * wt[((co * cin + c) * k + ky) * k + kx] as i64;
                            }
                        }
                    }
                    let i = (co * ho + oy) * wo + ox;
                    let v =
                        (s as i32 + bias[co]) as f32 * scale[co] + (res[i] as f32 - 100.0) * 0.7;
                    want[i] = (v.round_ties_even() + 9.0).clamp(9.0, 255.0) as u8;
                }
            }
        }
        let mut got = vec![0u8; want.len()];
        let (mut cols, mut acc) = (Vec::new(), Vec::new());
        for isa in available() {
            conv_u8(
                isa,
                &x,
                [cin, h, w],
                zx,
                k,
                stride,
                pad,
                &p,
                &q,
                Some(&r),
                &mut got,
                &mut cols,
                &mut acc,
            );
            assert_eq!(got, want, "{isa}");
        }
    }

    #[test]
    fn the_cap_selects_the_body() {
        let have = available();
        assert_eq!(have[0], Int8Isa::Portable);
        assert!(isa() <= *have.last().unwrap());
        if micro::isa() == Isa::Avx2 {
            assert_eq!(isa(), Int8Isa::Avx2);
        }
    }
}

//! Direct uint8 × int8 convolution for inference, on NHWC maps with a one-pixel border.
//!
//! A map of `h × w` pixels with `c` channels (`c` a multiple of 4) is stored as `(h + 2) × (w + 2)`
//! pixels of `c` bytes, the border holding the map's zero point: a 3×3 convolution with padding 1
//! reads its padding in place and no layer copies its input (no im2col). Each output pixel's sums
//! for 16 output channels are one vector; for every tap and every 4 input channels the kernel
//! broadcasts the pixel's 4 bytes and multiplies them by 16 × 4 packed weights
//! (`vpdpbusd` with AVX512-VNNI or AVX-VNNI; `vpmaddwd` on 16-bit values with AVX2, which is exact
//! where `vpmaddubsw` would saturate). Sums are requantized in the epilogue ([`Requant`]), with the
//! ReLU and the residual add of a QDQ graph (`DQ, DQ → Add → Relu → Q`) fused, and written as
//! uint8 straight into the next layer's map.
//!
//! Every body gives exactly the bytes of the portable one (same integer sums, the same fused
//! multiply-adds in the same order, ties rounded to even); the tests check each body this CPU
//! has against a scalar reference written from the definition.

use std::ops::Range;

use crate::int8::Int8Isa;

/// Output channels per vector of sums.
pub const BLOCK: usize = 16;

/// A map's geometry: `h × w` pixels of `c` channels stored with a one-pixel border,
/// `(h + 2) × (w + 2) × c` bytes per image. `c` is a multiple of 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Map {
    /// The map of `channels` real channels (stored rounded up to a multiple of 4).
    pub fn new(h: usize, w: usize, channels: usize) -> Map {
        Map {
            h,
            w,
            c: channels.div_ceil(4) * 4,
        }
    }

    /// Bytes per image.
    pub fn len(&self) -> usize {
        (self.h + 2) * (self.w + 2) * self.c
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per stored row (border included).
    pub fn row_len(&self) -> usize {
        (self.w + 2) * self.c
    }

    /// Offset of pixel `(y, x)` of the interior (the border is at -1 and `h`, `w`).
    pub fn at(&self, y: usize, x: usize) -> usize {
        ((y + 1) * (self.w + 2) + x + 1) * self.c
    }
}

/// A convolution's int8 weights, packed for the body it was made for.
pub struct QConv {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub input: Map,
    pub output: Map,
    /// Σ over `(ci, ky, kx)` of the weights, per output channel (a zero point's contribution).
    pub row_sums: Vec<i32>,
    isa: Int8Isa,
    /// `[cout / 16][k · k][c_in / 4][16][4]` bytes (VNNI and portable bodies).
    w8: Vec<i8>,
    /// `[cout / 16][k · k][c_in / 4][2][16][2]` 16-bit values (the AVX2 body).
    w16: Vec<i16>,
}

impl QConv {
    /// Packs `weights` (`[cout][cin][k][k]`, ONNX's order) for a convolution of `h × w` maps with
    /// square kernel `k`, `stride` and padding `pad` (0 or 1: the border is one pixel), for
    /// `isa`'s body.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Int8Isa,
        weights: &[i8],
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        [h, w]: [usize; 2],
    ) -> Result<QConv, String> {
        if weights.len() != cout * cin * k * k {
            return Err(format!(
                "{} weights for [{cout}, {cin}, {k}, {k}]",
                weights.len()
            ));
        }
        // A body this CPU lacks would run instructions it does not have: the portable one runs.
        let isa = if crate::int8::available().contains(&isa) {
            isa
        } else {
            Int8Isa::Portable
        };
        // Every sum must fit in 32 bits: 255 · 128 per product.
        if cin * k * k > (i32::MAX as usize) / (255 * 128) {
            return Err(format!("{cin} input channels x {k}x{k}: sums past 32 bits"));
        }
        if pad > 1 || k == 0 || stride == 0 || k > h + 2 * pad || k > w + 2 * pad {
            return Err(format!(
                "kernel {k}, stride {stride}, padding {pad} on {h}x{w} (padding of at most one pixel)"
            ));
        }
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let input = Map::new(h, w, cin);
        let output = Map::new(ho, wo, cout);
        let (taps, groups, blocks) = (k * k, input.c / 4, cout.div_ceil(BLOCK));
        let wt = |co: usize, ci: usize, tap: usize| -> i8 {
            if co < cout && ci < cin {
                weights[(co * cin + ci) * taps + tap]
            } else {
                0
            }
        };
        let row_sums = (0..cout)
            .map(|co| {
                weights[co * cin * taps..(co + 1) * cin * taps]
                    .iter()
                    .map(|&v| v as i32)
                    .sum()
            })
            .collect();
        let (mut w8, mut w16) = (Vec::new(), Vec::new());
        if isa == Int8Isa::Avx2 {
            w16.reserve(blocks * taps * groups * 64);
            for b in 0..blocks {
                for tap in 0..taps {
                    for g in 0..groups {
                        for pair in 0..2 {
                            for c in 0..BLOCK {
                                for j in 0..2 {
                                    w16.push(wt(b * BLOCK + c, g * 4 + pair * 2 + j, tap) as i16);
                                }
                            }
                        }
                    }
                }
            }
        } else {
            w8.reserve(blocks * taps * groups * 64);
            for b in 0..blocks {
                for tap in 0..taps {
                    for g in 0..groups {
                        for c in 0..BLOCK {
                            for j in 0..4 {
                                w8.push(wt(b * BLOCK + c, g * 4 + j, tap));
                            }
                        }
                    }
                }
            }
        }
        Ok(QConv {
            cin,
            cout,
            k,
            stride,
            pad,
            input,
            output,
            row_sums,
            isa,
            w8,
            w16,
        })
    }

    /// The body the weights were packed for.
    pub fn isa(&self) -> Int8Isa {
        self.isa
    }

    /// Multiply-adds per image.
    pub fn macs(&self) -> usize {
        self.output.h * self.output.w * self.cout * self.cin * self.k * self.k
    }
}

/// How the int32 sum `s` of output channel `co` becomes its byte:
/// `v = s · mul[co] + add[co]` (one fused multiply-add), then
/// - without `mid`: `y = clamp(round(v) + zero_point, lo, 255)`;
/// - with `mid` (a residual add, quantized as a QDQ graph does it):
///   `t = clamp(round(v) + mid.zero_point, 0, 255)`,
///   `u = (r − mid.residual_zero_point) · mid.residual_scale + (t − mid.zero_point) · mid.scale`
///   (the product of `t` first, then one fused multiply-add), `y = clamp(round(u) + zero_point, lo, 255)`;
///
/// where `lo` is `zero_point` with `relu`, else 0, and rounding is to nearest, ties to even.
pub struct Requant<'a> {
    pub mul: &'a [f32],
    pub add: &'a [f32],
    pub zero_point: u8,
    pub relu: bool,
    pub mid: Option<Mid<'a>>,
}

/// The residual of [`Requant`]: `residual` is one image in the output's map.
pub struct Mid<'a> {
    pub zero_point: u8,
    pub scale: f32,
    pub residual: &'a [u8],
    pub residual_zero_point: u8,
    pub residual_scale: f32,
}

/// Values are clamped to ±`LIMIT` before rounding, so that out-of-range values saturate (to 0 or
/// 255) the same way in every body instead of overflowing the conversion.
const LIMIT: f32 = 1.0e9;

/// The scalar requantization of one sum (the definition every body matches).
#[inline]
fn requant_one(s: i32, co: usize, q: &Requant, r: u8) -> u8 {
    let lo = if q.relu { q.zero_point as i32 } else { 0 };
    // NaN goes to -LIMIT, as the vector bodies' max(v, -LIMIT) takes it.
    let lim = |v: f32| {
        if v.is_nan() {
            -LIMIT
        } else {
            v.clamp(-LIMIT, LIMIT)
        }
    };
    let mut v = lim((s as f32).mul_add(q.mul[co], q.add[co]));
    if let Some(m) = &q.mid {
        let t = (v.round_ties_even() as i32 + m.zero_point as i32).clamp(0, 255);
        let tv = (t - m.zero_point as i32) as f32 * m.scale;
        v = lim(((r as i32 - m.residual_zero_point as i32) as f32).mul_add(m.residual_scale, tv));
    }
    (v.round_ties_even() as i32 + q.zero_point as i32).clamp(lo, 255) as u8
}

/// Computes output rows `rows` of one image: `x` is the image in `conv.input`'s map, `y_rows` the
/// stored rows `rows.start + 1 .. rows.end + 1` of the output map (rows `rows` with their left and
/// right border pixels: `rows.len() · conv.output.row_len()` bytes). Only interior pixels are
/// written; the borders keep what they hold (the output's zero point, set once).
pub fn qconv_rows(conv: &QConv, x: &[u8], y_rows: &mut [u8], rows: Range<usize>, q: &Requant) {
    let (inp, out) = (conv.input, conv.output);
    assert!(x.len() >= inp.len(), "input smaller than its map");
    assert!(rows.end <= out.h, "rows past the output");
    assert!(
        y_rows.len() >= rows.len() * out.row_len(),
        "output rows smaller than asked"
    );
    assert!(q.mul.len() >= conv.cout && q.add.len() >= conv.cout);
    if let Some(m) = &q.mid {
        assert!(
            m.residual.len() >= out.len(),
            "residual smaller than the output map"
        );
    }
    match conv.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `QConv::new` packed for this body only when asked to by the caller, who picked
        // it from `int8::available()`; bounds were checked above (every read lies in the maps).
        Int8Isa::Avx512Vnni => unsafe { x86::rows_avx512(conv, x, y_rows, rows, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Int8Isa::AvxVnni => unsafe { x86::rows_avxvnni(conv, x, y_rows, rows, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Int8Isa::Avx2 => unsafe { x86::rows_avx2(conv, x, y_rows, rows, q) },
        _ => rows_portable(conv, x, y_rows, rows, q),
    }
}

/// Input offset of output pixel `(oy, ox)`'s tap `(ky, kx)`, in the input map's storage.
#[inline(always)]
fn tap_at(conv: &QConv, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
    let m = conv.input;
    let iy = oy * conv.stride + ky + 1 - conv.pad;
    let ix = ox * conv.stride + kx + 1 - conv.pad;
    (iy * (m.w + 2) + ix) * m.c
}

/// Offset in `y_rows` of output pixel `(oy, ox)` when the rows start at `r0`.
#[inline(always)]
fn out_at(conv: &QConv, r0: usize, oy: usize, ox: usize) -> usize {
    let m = conv.output;
    ((oy - r0) * (m.w + 2) + ox + 1) * m.c
}

fn rows_portable(conv: &QConv, x: &[u8], y_rows: &mut [u8], rows: Range<usize>, q: &Requant) {
    let (taps, groups) = (conv.k * conv.k, conv.input.c / 4);
    let out = conv.output;
    for oy in rows.clone() {
        for ox in 0..out.w {
            for b in 0..conv.cout.div_ceil(BLOCK) {
                let mut acc = [0i32; BLOCK];
                for ky in 0..conv.k {
                    for kx in 0..conv.k {
                        let tap = ky * conv.k + kx;
                        let px = &x[tap_at(conv, oy, ox, ky, kx)..];
                        for g in 0..groups {
                            let wv = &conv.w8[((b * taps + tap) * groups + g) * 64..][..64];
                            for (c, s) in acc.iter_mut().enumerate() {
                                for j in 0..4 {
                                    *s += px[g * 4 + j] as i32 * wv[c * 4 + j] as i32;
                                }
                            }
                        }
                    }
                }
                finish(conv, &acc, b, oy, ox, rows.start, q, y_rows);
            }
        }
    }
}

/// The scalar epilogue of one pixel's block of sums (the portable body, and partial blocks).
#[allow(clippy::too_many_arguments)]
#[inline]
fn finish(
    conv: &QConv,
    acc: &[i32; BLOCK],
    b: usize,
    oy: usize,
    ox: usize,
    r0: usize,
    q: &Requant,
    y_rows: &mut [u8],
) {
    let co0 = b * BLOCK;
    let n = BLOCK.min(conv.cout - co0);
    let at = out_at(conv, r0, oy, ox) + co0;
    let rat = conv.output.at(oy, ox) + co0;
    for c in 0..n {
        let r = q.mid.as_ref().map_or(0, |m| m.residual[rat + c]);
        y_rows[at + c] = requant_one(acc[c], co0 + c, q, r);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{finish, out_at, tap_at, QConv, Requant, BLOCK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The 4 input bytes at `p` as one 32-bit value.
    #[inline(always)]
    unsafe fn quad(p: *const u8) -> i32 {
        (p as *const i32).read_unaligned()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) unsafe fn rows_avx512(
        conv: &QConv,
        x: &[u8],
        y_rows: &mut [u8],
        rows: Range<usize>,
        q: &Requant,
    ) {
        let blocks = conv.cout.div_ceil(BLOCK);
        let wo = conv.output.w;
        for oy in rows.clone() {
            let mut ox = 0;
            while ox < wo {
                let r = (wo - ox).min(8);
                let mut b = 0;
                while b < blocks {
                    let j = if blocks - b >= 2 { 2 } else { 1 };
                    match (r, j) {
                        (8, 2) => tile512::<8, 2>(conv, x, oy, ox, b, rows.start, q, y_rows),
                        (8, _) => tile512::<8, 1>(conv, x, oy, ox, b, rows.start, q, y_rows),
                        (_, 2) => {
                            for i in 0..r {
                                tile512::<1, 2>(conv, x, oy, ox + i, b, rows.start, q, y_rows)
                            }
                        }
                        _ => {
                            for i in 0..r {
                                tile512::<1, 1>(conv, x, oy, ox + i, b, rows.start, q, y_rows)
                            }
                        }
                    }
                    b += j;
                }
                ox += r;
            }
        }
    }

    /// `R` pixels of row `oy` from `ox`, output blocks `b .. b + J`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    unsafe fn tile512<const R: usize, const J: usize>(
        conv: &QConv,
        x: &[u8],
        oy: usize,
        ox: usize,
        b: usize,
        r0: usize,
        q: &Requant,
        y_rows: &mut [u8],
    ) {
        let (k, taps, groups) = (conv.k, conv.k * conv.k, conv.input.c / 4);
        let step = conv.stride * conv.input.c;
        let mut acc = [[_mm512_setzero_si512(); J]; R];
        let wp = conv.w8.as_ptr();
        for ky in 0..k {
            for kx in 0..k {
                let tap = ky * k + kx;
                let px = x.as_ptr().add(tap_at(conv, oy, ox, ky, kx));
                for g in 0..groups {
                    let mut wv = [_mm512_setzero_si512(); J];
                    for (jj, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(
                            wp.add((((b + jj) * taps + tap) * groups + g) * 64) as *const _,
                        );
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let xb = _mm512_set1_epi32(quad(px.add(r * step + g * 4)));
                        for (s, v) in row.iter_mut().zip(&wv) {
                            *s = _mm512_dpbusd_epi32(*s, xb, *v);
                        }
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (jj, s) in row.iter().enumerate() {
                epilogue512(conv, *s, b + jj, oy, ox + r, r0, q, y_rows);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    unsafe fn epilogue512(
        conv: &QConv,
        s: __m512i,
        b: usize,
        oy: usize,
        ox: usize,
        r0: usize,
        q: &Requant,
        y_rows: &mut [u8],
    ) {
        let co0 = b * BLOCK;
        if co0 + BLOCK > conv.cout {
            let mut a = [0i32; BLOCK];
            _mm512_storeu_si512(a.as_mut_ptr() as *mut _, s);
            return finish(conv, &a, b, oy, ox, r0, q, y_rows);
        }
        let mul = _mm512_loadu_ps(q.mul.as_ptr().add(co0));
        let add = _mm512_loadu_ps(q.add.as_ptr().add(co0));
        let (lim_lo, lim_hi) = (_mm512_set1_ps(-super::LIMIT), _mm512_set1_ps(super::LIMIT));
        let clamp = |v: __m512| _mm512_min_ps(_mm512_max_ps(v, lim_lo), lim_hi);
        let mut v = clamp(_mm512_fmadd_ps(_mm512_cvtepi32_ps(s), mul, add));
        if let Some(m) = &q.mid {
            let zm = _mm512_set1_epi32(m.zero_point as i32);
            let t = _mm512_add_epi32(_mm512_cvtps_epi32(v), zm);
            let t = _mm512_min_epi32(
                _mm512_max_epi32(t, _mm512_setzero_si512()),
                _mm512_set1_epi32(255),
            );
            let tv = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(t, zm)),
                _mm512_set1_ps(m.scale),
            );
            let rp = m.residual.as_ptr().add(conv.output.at(oy, ox) + co0);
            let r = _mm512_cvtepu8_epi32(_mm_loadu_si128(rp as *const _));
            let r = _mm512_sub_epi32(r, _mm512_set1_epi32(m.residual_zero_point as i32));
            v = clamp(_mm512_fmadd_ps(
                _mm512_cvtepi32_ps(r),
                _mm512_set1_ps(m.residual_scale),
                tv,
            ));
        }
        let lo = if q.relu { q.zero_point as i32 } else { 0 };
        let y = _mm512_add_epi32(
            _mm512_cvtps_epi32(v),
            _mm512_set1_epi32(q.zero_point as i32),
        );
        let y = _mm512_min_epi32(
            _mm512_max_epi32(y, _mm512_set1_epi32(lo)),
            _mm512_set1_epi32(255),
        );
        let bytes = _mm512_cvtepi32_epi8(y);
        let at = out_at(conv, r0, oy, ox) + co0;
        _mm_storeu_si128(y_rows.as_mut_ptr().add(at) as *mut _, bytes);
    }

    /// The 256-bit epilogue of one pixel's 16 sums (`lo`, `hi`: channels 0–7, 8–15).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn epilogue256(
        conv: &QConv,
        s: [__m256i; 2],
        b: usize,
        oy: usize,
        ox: usize,
        r0: usize,
        q: &Requant,
        y_rows: &mut [u8],
    ) {
        let co0 = b * BLOCK;
        if co0 + BLOCK > conv.cout {
            let mut a = [0i32; BLOCK];
            _mm256_storeu_si256(a.as_mut_ptr() as *mut _, s[0]);
            _mm256_storeu_si256(a.as_mut_ptr().add(8) as *mut _, s[1]);
            return finish(conv, &a, b, oy, ox, r0, q, y_rows);
        }
        let lo = _mm256_set1_epi32(if q.relu { q.zero_point as i32 } else { 0 });
        let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        let zp = _mm256_set1_epi32(q.zero_point as i32);
        let mut out = [_mm256_setzero_si256(); 2];
        for h in 0..2 {
            let co = co0 + 8 * h;
            let mul = _mm256_loadu_ps(q.mul.as_ptr().add(co));
            let add = _mm256_loadu_ps(q.add.as_ptr().add(co));
            let (lim_lo, lim_hi) = (_mm256_set1_ps(-super::LIMIT), _mm256_set1_ps(super::LIMIT));
            let clamp = |v: __m256| _mm256_min_ps(_mm256_max_ps(v, lim_lo), lim_hi);
            let mut v = clamp(_mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), mul, add));
            if let Some(m) = &q.mid {
                let zm = _mm256_set1_epi32(m.zero_point as i32);
                let t = _mm256_add_epi32(_mm256_cvtps_epi32(v), zm);
                let t = _mm256_min_epi32(_mm256_max_epi32(t, zero), top);
                let tv = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(t, zm)),
                    _mm256_set1_ps(m.scale),
                );
                let rp = m.residual.as_ptr().add(conv.output.at(oy, ox) + co);
                let r = _mm256_cvtepu8_epi32(_mm_loadl_epi64(rp as *const _));
                let r = _mm256_sub_epi32(r, _mm256_set1_epi32(m.residual_zero_point as i32));
                v = clamp(_mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(r),
                    _mm256_set1_ps(m.residual_scale),
                    tv,
                ));
            }
            let y = _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
            out[h] = _mm256_min_epi32(_mm256_max_epi32(y, lo), top);
        }
        // 16 values in [0, 255]: pack to 16-bit, then to bytes, and restore the lane order.
        let w16 = _mm256_packus_epi32(out[0], out[1]); // 0-3 8-11 | 4-7 12-15
        let w16 = _mm256_permute4x64_epi64(w16, 0b11_01_10_00); // 0-7 | 8-15
        let b8 = _mm_packus_epi16(
            _mm256_castsi256_si128(w16),
            _mm256_extracti128_si256(w16, 1),
        );
        let at = out_at(conv, r0, oy, ox) + co0;
        _mm_storeu_si128(y_rows.as_mut_ptr().add(at) as *mut _, b8);
    }

    #[target_feature(enable = "avx2,avxvnni,fma")]
    pub(super) unsafe fn rows_avxvnni(
        conv: &QConv,
        x: &[u8],
        y_rows: &mut [u8],
        rows: Range<usize>,
        q: &Requant,
    ) {
        let (k, taps, groups) = (conv.k, conv.k * conv.k, conv.input.c / 4);
        let step = conv.stride * conv.input.c;
        let wo = conv.output.w;
        let wp = conv.w8.as_ptr();
        const R: usize = 4;
        for oy in rows.clone() {
            for b in 0..conv.cout.div_ceil(BLOCK) {
                let mut ox = 0;
                while ox < wo {
                    let r = (wo - ox).min(R);
                    let mut acc = [[_mm256_setzero_si256(); 2]; R];
                    for ky in 0..k {
                        for kx in 0..k {
                            let tap = ky * k + kx;
                            let px = x.as_ptr().add(tap_at(conv, oy, ox, ky, kx));
                            for g in 0..groups {
                                let p = wp.add(((b * taps + tap) * groups + g) * 64);
                                let w0 = _mm256_loadu_si256(p as *const _);
                                let w1 = _mm256_loadu_si256(p.add(32) as *const _);
                                for (i, a) in acc.iter_mut().enumerate().take(r) {
                                    let xb = _mm256_set1_epi32(quad(px.add(i * step + g * 4)));
                                    a[0] = _mm256_dpbusd_avx_epi32(a[0], xb, w0);
                                    a[1] = _mm256_dpbusd_avx_epi32(a[1], xb, w1);
                                }
                            }
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(r) {
                        epilogue256(conv, *a, b, oy, ox + i, rows.start, q, y_rows);
                    }
                    ox += r;
                }
            }
        }
    }

    std::thread_local! {
        /// The AVX2 body's input rows widened to 16 bits (one buffer per thread, reused).
        static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// No VNNI: 16-bit weights, and the input rows the output rows read widened to 16 bits once
    /// per call, so that each pair of input channels is one 32-bit broadcast from memory and
    /// `vpmaddwd` multiplies exactly (where `vpmaddubsw` would saturate).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(
        conv: &QConv,
        x: &[u8],
        y_rows: &mut [u8],
        rows: Range<usize>,
        q: &Requant,
    ) {
        if rows.is_empty() {
            return;
        }
        let (s, k, pad) = (conv.stride, conv.k, conv.pad);
        let row_len = conv.input.row_len();
        // Stored input rows read by output rows `rows` (the border is stored row 0).
        let lo = rows.start * s + 1 - pad;
        let hi = (rows.end - 1) * s + k - pad; // inclusive
        let src = &x[lo * row_len..(hi + 1) * row_len];
        WIDE.with(|wide| {
            let mut wide = wide.borrow_mut();
            wide.clear();
            wide.reserve(src.len());
            let mut chunks = src.chunks_exact(16);
            for c in &mut chunks {
                let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(c.as_ptr() as *const _));
                let at = wide.len();
                wide.resize(at + 16, 0);
                _mm256_storeu_si256(wide.as_mut_ptr().add(at) as *mut _, v);
            }
            wide.extend(chunks.remainder().iter().map(|&b| b as i16));
            rows_avx2_wide(conv, &wide, lo * row_len, y_rows, rows, q);
        });
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2_wide(
        conv: &QConv,
        xw: &[i16],
        base: usize,
        y_rows: &mut [u8],
        rows: Range<usize>,
        q: &Requant,
    ) {
        let (k, taps, groups) = (conv.k, conv.k * conv.k, conv.input.c / 4);
        let step = conv.stride * conv.input.c;
        let wo = conv.output.w;
        let wp = conv.w16.as_ptr();
        const R: usize = 4;
        for oy in rows.clone() {
            for b in 0..conv.cout.div_ceil(BLOCK) {
                let mut ox = 0;
                while ox < wo {
                    let r = (wo - ox).min(R);
                    let mut acc = [[_mm256_setzero_si256(); 2]; R];
                    for ky in 0..k {
                        for kx in 0..k {
                            let tap = ky * k + kx;
                            let px = xw.as_ptr().add(tap_at(conv, oy, ox, ky, kx) - base);
                            for g in 0..groups {
                                // [pair][16 channels][2] 16-bit weights: 4 vectors.
                                let p = wp.add(((b * taps + tap) * groups + g) * 64);
                                let w = [
                                    _mm256_loadu_si256(p as *const _),
                                    _mm256_loadu_si256(p.add(16) as *const _),
                                    _mm256_loadu_si256(p.add(32) as *const _),
                                    _mm256_loadu_si256(p.add(48) as *const _),
                                ];
                                for (i, a) in acc.iter_mut().enumerate().take(r) {
                                    let at = px.add(i * step + g * 4) as *const i32;
                                    let x01 = _mm256_set1_epi32(at.read_unaligned());
                                    let x23 = _mm256_set1_epi32(at.add(1).read_unaligned());
                                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x01, w[0]));
                                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x01, w[1]));
                                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x23, w[2]));
                                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x23, w[3]));
                                }
                            }
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(r) {
                        epilogue256(conv, *a, b, oy, ox + i, rows.start, q, y_rows);
                    }
                    ox += r;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::available;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    /// A map filled with `zp` (border included) and random interior bytes (or all `fill`).
    fn map(m: Map, channels: usize, zp: u8, rng: &mut Lcg, fill: Option<u8>) -> Vec<u8> {
        let mut v = vec![zp; m.len()];
        for y in 0..m.h {
            for x in 0..m.w {
                for c in 0..m.c {
                    v[m.at(y, x) + c] = if c >= channels {
                        rng.next() as u8 // never read with a non-zero weight
                    } else {
                        fill.unwrap_or(rng.next() as u8)
                    };
                }
            }
        }
        v
    }

    /// The convolution from the definition: NCHW indices, padding read as the zero point.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        w: &[i8],
        [cin, cout, k, stride, pad]: [usize; 5],
        im: &Map,
        x: &[u8],
        zp_x: u8,
        om: &Map,
        q: &Requant,
    ) -> Vec<u8> {
        let mut y = vec![0u8; om.len()];
        for oy in 0..om.h {
            for ox in 0..om.w {
                for co in 0..cout {
                    let mut s = 0i32;
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < im.h
                                    && (ix as usize) < im.w;
                                let v = if inside {
                                    x[im.at(iy as usize, ix as usize) + ci]
                                } else {
                                    zp_x
                                };
                                s += v as i32 * w[((co * cin + ci) * k + ky) * k + kx] as i32;
                            }
                        }
                    }
                    let r = q.mid.as_ref().map_or(0, |m| m.residual[om.at(oy, ox) + co]);
                    y[om.at(oy, ox) + co] = requant_one(s, co, q, r);
                }
            }
        }
        y
    }

    fn check(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        hw: usize,
        mid: bool,
        extreme: bool,
    ) {
        let mut rng = Lcg(cin as u64 * 1000 + cout as u64 * 10 + k as u64 + stride as u64);
        let w: Vec<i8> = (0..cout * cin * k * k)
            .map(|_| if extreme { 127 } else { rng.next() as i8 })
            .collect();
        let zp_x = if extreme { 0 } else { 7 };
        let im = Map::new(hw, hw, cin);
        let x = map(im, cin, zp_x, &mut rng, extreme.then_some(255));
        let mul: Vec<f32> = (0..cout).map(|c| 1e-4 * (1.0 + c as f32 * 0.37)).collect();
        let add: Vec<f32> = (0..cout).map(|c| (c as f32 - 5.0) * 0.5).collect();
        let probe = QConv::new(Int8Isa::Portable, &w, cin, cout, k, stride, pad, [hw, hw]).unwrap();
        let om = probe.output;
        let res = map(om, cout, 3, &mut rng, None);
        let q = Requant {
            mul: &mul,
            add: &add,
            zero_point: 11,
            relu: true,
            mid: mid.then(|| Mid {
                zero_point: 130,
                scale: 0.8,
                residual: &res,
                residual_zero_point: 3,
                residual_scale: 0.3,
            }),
        };
        let want = reference(&w, [cin, cout, k, stride, pad], &im, &x, zp_x, &om, &q);
        for isa in available() {
            let c = QConv::new(isa, &w, cin, cout, k, stride, pad, [hw, hw]).unwrap();
            let mut y = vec![0u8; om.len()];
            // Two calls over row ranges, as threads split them.
            let split = om.h / 2;
            for rows in [0..split, split..om.h] {
                let at = (rows.start + 1) * om.row_len();
                let len = rows.len() * om.row_len();
                qconv_rows(&c, &x, &mut y[at..at + len], rows, &q);
            }
            for oy in 0..om.h {
                for ox in 0..om.w {
                    for co in 0..cout {
                        let i = om.at(oy, ox) + co;
                        assert_eq!(
                            y[i], want[i],
                            "{isa}: cin {cin} cout {cout} k {k} s {stride} p {pad} mid {mid} at ({oy},{ox},{co})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_body_matches_the_definition() {
        check(3, 16, 3, 1, 1, 9, false, false); // the first layer: 3 channels stored as 4
        check(16, 16, 3, 1, 1, 10, true, false); // a residual block's second convolution
        check(16, 32, 3, 2, 1, 11, false, false); // downsampling, odd size
        check(16, 32, 1, 2, 0, 10, false, false); // the option-A shortcut as a 1x1 convolution
        check(32, 64, 3, 1, 1, 8, true, false); // two blocks per tile
        check(8, 20, 3, 1, 1, 5, true, false); // a partial block of channels
        check(64, 48, 3, 1, 1, 3, false, false); // three blocks: a pair and a single
    }

    #[test]
    fn sums_that_would_saturate_16_bits_are_exact() {
        // 255 · 127 · 2 > 32767: `vpmaddubsw` would saturate; every body must not.
        check(16, 16, 3, 1, 1, 6, false, true);
    }

    #[test]
    fn out_of_range_values_saturate_alike_in_every_body() {
        // Sums scaled far past i32 (and a NaN scale): every body gives the definition's bytes.
        let (cin, cout, hw) = (16, 32, 4);
        let mut rng = Lcg(99);
        let w: Vec<i8> = (0..cout * cin * 9).map(|_| rng.next() as i8).collect();
        let im = Map::new(hw, hw, cin);
        let x = map(im, cin, 0, &mut rng, None);
        let mut mul: Vec<f32> = (0..cout)
            .map(|c| if c % 2 == 0 { 1e9 } else { -1e9 })
            .collect();
        mul[5] = f32::NAN;
        let add = vec![0f32; cout];
        for relu in [false, true] {
            let q = Requant {
                mul: &mul,
                add: &add,
                zero_point: 9,
                relu,
                mid: None,
            };
            let probe = QConv::new(Int8Isa::Portable, &w, cin, cout, 3, 1, 1, [hw, hw]).unwrap();
            let om = probe.output;
            let want = reference(&w, [cin, cout, 3, 1, 1], &im, &x, 0, &om, &q);
            assert!(want.iter().any(|&v| v == 255));
            for isa in available() {
                let c = QConv::new(isa, &w, cin, cout, 3, 1, 1, [hw, hw]).unwrap();
                let mut y = vec![0u8; om.len()];
                let len = om.h * om.row_len();
                qconv_rows(
                    &c,
                    &x,
                    &mut y[om.row_len()..om.row_len() + len],
                    0..om.h,
                    &q,
                );
                for oy in 0..om.h {
                    for ox in 0..om.w {
                        let i = om.at(oy, ox);
                        assert_eq!(y[i..i + cout], want[i..i + cout], "{isa} relu {relu}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(QConv::new(Int8Isa::Portable, &[0; 10], 1, 1, 3, 1, 1, [4, 4]).is_err());
        assert!(QConv::new(Int8Isa::Portable, &[0; 25], 1, 1, 5, 1, 2, [8, 8]).is_err());
        // Sums that could pass 32 bits.
        let big = 65_794;
        assert!(QConv::new(Int8Isa::Portable, &vec![0; big], big, 1, 1, 1, 0, [1, 1]).is_err());
    }
}

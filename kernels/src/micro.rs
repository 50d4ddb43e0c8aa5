//! The two register-blocked inner loops every convolution pass is made of, and the instruction
//! set they run on.
//!
//! - [`f_tile`] ("pixel-vectorized"): `out[r][j] = Σ_s a[s][r] · b[offs[s] + j]` for 8 rows `r`
//!   and `16 · nv` consecutive columns `j`. Forward and input-gradient convolutions: rows are
//!   output channels, columns are output pixels, `s` runs over (input channel, tap) and `offs`
//!   turns each `s` into a shifted view of a padded image (or a row of an im2col buffer).
//! - [`dot_tile`]: a 4 x 4 block of dot products between rows of two channel-major buffers,
//!   summed over several images. Weight gradients: rows are the input's tap rows (shifted views
//!   of the padded planes, or im2col rows), columns the output gradient's channel rows.
//!
//! Each has three bodies, chosen once at run time ([`isa`]):
//! - **AVX-512** (32 zmm registers): the 8 x 48 tile in one pass, 24 accumulators.
//! - **AVX2 + FMA** (16 ymm registers): the tile in register blocks of 4 rows x 24 columns in
//!   assembly for full 48-column tiles (12 accumulators, 3 column loads and 4 broadcasts per
//!   step), else 4 rows x 16 columns (8 accumulators), see [`avx2`].
//! - **portable**: plain Rust on fixed-size lane arrays with no serial float reduction, so that the
//!   compiler vectorizes it for whatever the target has (SSE2 on baseline x86-64, NEON on
//!   aarch64). [`portable_as_avx2`] compiles the same body for AVX2+FMA, to measure how far the
//!   compiler's vectorization is from the hand-written AVX2 body.
//!
//! `SC_KERNELS_ISA=avx512|avx2|portable` caps the instruction set (tests and benchmarks use it to
//! run the narrower bodies on a wider CPU).

use std::sync::atomic::{AtomicU8, Ordering};

/// Which instruction set the kernels use, widest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `SC_KERNELS_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Parses an `SC_KERNELS_ISA` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Isa> {
        Isa::ALL.get(c.checked_sub(1)? as usize).copied()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that caps the instruction set.
pub const ISA_ENV: &str = "SC_KERNELS_ISA";

static ISA: AtomicU8 = AtomicU8::new(0); // 0: not yet chosen, else Isa::code

/// The widest instruction set this CPU has: AVX-512F, else AVX2 with FMA, else portable Rust.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The instruction sets this CPU can run, narrowest first (what the tests loop over).
pub fn available() -> Vec<Isa> {
    let top = detected();
    Isa::ALL.into_iter().filter(|&i| i <= top).collect()
}

/// The cap `SC_KERNELS_ISA` asks for: `Ok(None)` when unset or empty, an error naming the
/// variable, its value and the accepted values when it is not one of them.
pub fn env_cap() -> Result<Option<Isa>, String> {
    match std::env::var(ISA_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "{ISA_ENV}={v:?} is not valid: expected avx512, avx2 or portable"
        )),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Isa::parse(&v).map(Some).ok_or_else(|| {
            format!("{ISA_ENV}={v:?} is not valid: expected avx512, avx2 or portable")
        }),
    }
}

/// The instruction set in use: the detected one, capped by `SC_KERNELS_ISA` (an invalid value
/// is reported once on stderr and ignored; programs call [`env_cap`] first to refuse it).
pub fn isa() -> Isa {
    if let Some(i) = Isa::from_code(ISA.load(Ordering::Relaxed)) {
        return i;
    }
    let cap = env_cap().unwrap_or_else(|e| {
        eprintln!("warning: {e}; using the widest instruction set this CPU has");
        None
    });
    let chosen = cap.map_or(detected(), |c| c.min(detected()));
    ISA.store(chosen.code(), Ordering::Relaxed);
    chosen
}

/// One line for logs: the instruction set in use and why (e.g. `avx2 (CPU: avx2; SC_KERNELS_ISA
/// unset)`).
pub fn describe() -> String {
    let cap = match env_cap() {
        Ok(Some(c)) => format!("{ISA_ENV}={c}"),
        Ok(None) => format!("{ISA_ENV} unset"),
        Err(_) => format!("{ISA_ENV} invalid, ignored"),
    };
    format!("{} (CPU: {}; {cap})", isa(), detected())
}

/// Forces an instruction set (tests use it to check the narrower bodies on a wider CPU). Asking
/// for one the CPU lacks gives the widest it has below that.
pub fn force_isa(isa: Isa) {
    ISA.store(isa.min(detected()).code(), Ordering::Relaxed);
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
/// values; `out` has 8 rows of `16·nv` writable values at stride `ostride`; `isa` is one the CPU
/// has (an element of [`available`]).
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
    debug_assert!(isa <= detected());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match nv {
            3 => avx512::f_tile::<3>(a, offs, b, out, ostride),
            2 => avx512::f_tile::<2>(a, offs, b, out, ostride),
            _ => avx512::f_tile::<1>(a, offs, b, out, ostride),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::f_tile(nv, a, offs, b, out, ostride),
        _ => match nv {
            3 => portable::f_tile::<3, NATIVE_FMA>(a, offs, b, out, ostride),
            2 => portable::f_tile::<2, NATIVE_FMA>(a, offs, b, out, ostride),
            _ => portable::f_tile::<1, NATIVE_FMA>(a, offs, b, out, ostride),
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
/// values; `out` has 4 rows of 4 writable values at stride `ostride`; `isa` is one the CPU has.
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
    debug_assert!(isa <= detected());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::dot_tile(x, xoff, d, doff, nv, out, ostride),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::dot_tile(x, xoff, d, doff, nv, out, ostride),
        _ => portable::dot_tile::<NATIVE_FMA>(x, xoff, d, doff, nv, out, ostride),
    }
}

/// `dst[i · c + ch] = src[ch · stride + i]` for `i < n`, `ch < c`: `n` consecutive pixels of `c`
/// channel planes (`stride` apart) into channels-last order.
///
/// # Safety
/// `src` is readable at every `ch · stride + i`, `dst` writable for `n · c` values; `isa` is one
/// the CPU has.
#[inline]
pub unsafe fn to_channels_last(
    isa: Isa,
    src: *const f32,
    stride: usize,
    c: usize,
    n: usize,
    dst: *mut f32,
) {
    debug_assert!(isa <= detected());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if c.is_multiple_of(LANES) && stride <= i32::MAX as usize / LANES => {
            avx512::to_channels_last(src, stride, c, n, dst)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if c.is_multiple_of(8) => avx2::to_channels_last(src, stride, c, n, dst),
        _ => portable::to_channels_last(src, stride, c, n, dst),
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

/// The AVX2 + FMA bodies. Zen 3 and Intel since Haswell issue two 256-bit FMAs per cycle with a
/// 4-5 cycle latency, so a block needs >= 8 independent accumulators, and the 16 ymm registers
/// must also hold the column loads and a broadcast. A full 48-column tile is computed as register
/// blocks of 4 rows x 3 vectors (12 accumulators, 3 column loads and 4 broadcasts per step: all 16
/// registers), written in assembly because LLVM spills that block (45 GFLOP/s against 4 x 2's 101
/// on Zen 3); narrower tiles as 4 rows x 2 vectors (8 accumulators).
/// `cargo bench -p sc-kernels --bench avx2_geometry` measures the candidates side by side;
/// docs/PERFORMANCE.md has the figures.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// `out[r][j] = Σ_s a[s·8 + r] · b[offs[s] + j]` for `r < R`, `j < 8·V`. Public for the
    /// geometry benchmark (`benches/avx2_geometry.rs`).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; for every tap `s`, `a[s·8..s·8 + R]` is readable and
    /// `b.offset(offs[s])` is followed by `8·V` readable values; `out` has `R` rows of `8·V`
    /// writable values at stride `ostride`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block<const R: usize, const V: usize>(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let mut ap = a;
        for &o in offs {
            let bp = b.offset(o);
            let mut bv = [_mm256_setzero_ps(); V];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(bp.add(8 * j));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                for j in 0..V {
                    row[j] = _mm256_fmadd_ps(av, bv[j], row[j]);
                }
            }
            ap = ap.add(super::F_ROWS);
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * ostride + 8 * j), *v);
            }
        }
    }

    /// `out[r][j] = Σ_s a[s·8 + r] · b[offs[s] + j]` for `r < 4`, `j < 24`, in assembly: its 12
    /// accumulators, 3 column vectors and one broadcast take all 16 ymm registers, which LLVM
    /// does not allocate without spilling (the same block in intrinsics ran at half the speed).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; for every tap `s < offs.len()`, `a` holds 4 readable values at
    /// `a[s·8..s·8 + 4]` and `b.offset(offs[s])` is followed by 24 readable values; `out` has 4
    /// rows of 24 writable values at stride `ostride` (in values).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block_4x24(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        std::arch::asm!(
            "vxorps ymm0, ymm0, ymm0",
            "vxorps ymm1, ymm1, ymm1",
            "vxorps ymm2, ymm2, ymm2",
            "vxorps ymm3, ymm3, ymm3",
            "vxorps ymm4, ymm4, ymm4",
            "vxorps ymm5, ymm5, ymm5",
            "vxorps ymm6, ymm6, ymm6",
            "vxorps ymm7, ymm7, ymm7",
            "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9",
            "vxorps ymm10, ymm10, ymm10",
            "vxorps ymm11, ymm11, ymm11",
            "test {n}, {n}",
            "jz 3f",
            // One tap per step: 3 column vectors at b + offs[s], then each of the 4 rows' weight
            // broadcast against them.
            "2:",
            "mov {t}, qword ptr [{o}]",
            "lea {t}, [{b} + 4*{t}]",
            "vmovups ymm12, ymmword ptr [{t}]",
            "vmovups ymm13, ymmword ptr [{t} + 32]",
            "vmovups ymm14, ymmword ptr [{t} + 64]",
            "vbroadcastss ymm15, dword ptr [{a}]",
            "vfmadd231ps ymm0, ymm15, ymm12",
            "vfmadd231ps ymm1, ymm15, ymm13",
            "vfmadd231ps ymm2, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{a} + 4]",
            "vfmadd231ps ymm3, ymm15, ymm12",
            "vfmadd231ps ymm4, ymm15, ymm13",
            "vfmadd231ps ymm5, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{a} + 8]",
            "vfmadd231ps ymm6, ymm15, ymm12",
            "vfmadd231ps ymm7, ymm15, ymm13",
            "vfmadd231ps ymm8, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{a} + 12]",
            "vfmadd231ps ymm9, ymm15, ymm12",
            "vfmadd231ps ymm10, ymm15, ymm13",
            "vfmadd231ps ymm11, ymm15, ymm14",
            "add {a}, 32", // F_ROWS floats of a per tap
            "add {o}, 8",
            "dec {n}",
            "jnz 2b",
            "3:",
            "vmovups ymmword ptr [{y}], ymm0",
            "vmovups ymmword ptr [{y} + 32], ymm1",
            "vmovups ymmword ptr [{y} + 64], ymm2",
            "lea {y}, [{y} + 4*{s}]",
            "vmovups ymmword ptr [{y}], ymm3",
            "vmovups ymmword ptr [{y} + 32], ymm4",
            "vmovups ymmword ptr [{y} + 64], ymm5",
            "lea {y}, [{y} + 4*{s}]",
            "vmovups ymmword ptr [{y}], ymm6",
            "vmovups ymmword ptr [{y} + 32], ymm7",
            "vmovups ymmword ptr [{y} + 64], ymm8",
            "lea {y}, [{y} + 4*{s}]",
            "vmovups ymmword ptr [{y}], ymm9",
            "vmovups ymmword ptr [{y} + 32], ymm10",
            "vmovups ymmword ptr [{y} + 64], ymm11",
            a = inout(reg) a => _,
            o = inout(reg) offs.as_ptr() => _,
            n = inout(reg) offs.len() => _,
            b = in(reg) b,
            y = inout(reg) out => _,
            s = in(reg) ostride,
            t = out(reg) _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }

    /// [`super::f_tile`]'s contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f_tile(
        nv: usize,
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        // Blocks of 4 rows x 24 columns for the full 48-column tile, else 4 x 16; see the module
        // doc for the geometries measured.
        if nv == 3 {
            for c0 in [0, 24] {
                for r0 in [0, 4] {
                    block_4x24(
                        a.add(r0),
                        offs,
                        b.add(c0),
                        out.add(r0 * ostride + c0),
                        ostride,
                    );
                }
            }
            return;
        }
        for c0 in (0..super::LANES * nv).step_by(16) {
            for r0 in [0, 4] {
                block::<4, 2>(
                    a.add(r0),
                    offs,
                    b.add(c0),
                    out.add(r0 * ostride + c0),
                    ostride,
                );
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// [`super::dot_tile`]'s contract: two passes of 4 rows x 2 columns (8 accumulators, 6 loads
    /// per 8 FMAs).
    #[target_feature(enable = "avx2,fma")]
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
        for c0 in (0..super::DOT_C).step_by(2) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (&xb, &db) in x.iter().zip(d) {
                let xr: [*const f32; R] = std::array::from_fn(|r| xb.offset(xoff[r]));
                let dr: [*const f32; 2] = std::array::from_fn(|c| db.offset(doff[c0 + c]));
                for v in 0..2 * nv {
                    let dv = [
                        _mm256_loadu_ps(dr[0].add(8 * v)),
                        _mm256_loadu_ps(dr[1].add(8 * v)),
                    ];
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(xr[r].add(8 * v));
                        acc[r][0] = _mm256_fmadd_ps(xv, dv[0], acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(xv, dv[1], acc[r][1]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    *out.add(r * ostride + c0 + c) += hsum(*v);
                }
            }
        }
    }

    /// `out[j][i] = m[i][j]` for an 8 x 8 block in 8 registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose8(m: &[__m256; 8]) -> [__m256; 8] {
        // t[2k] / t[2k+1], per 128-bit lane l: rows 2k, 2k+1 of columns 4l, 4l+1 / 4l+2, 4l+3.
        let mut t = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            t[2 * k] = _mm256_unpacklo_ps(m[2 * k], m[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(m[2 * k], m[2 * k + 1]);
        }
        // s[4h + q], lane l: rows 4h..4h+3 of column 4l + q.
        let mut s = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let (lo, hi) = (4 * h, 4 * h + 2);
            s[4 * h] = _mm256_shuffle_ps::<0x44>(t[lo], t[hi]);
            s[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t[lo], t[hi]);
            s[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t[lo + 1], t[hi + 1]);
            s[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t[lo + 1], t[hi + 1]);
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for q in 0..4 {
            out[q] = _mm256_permute2f128_ps::<0x20>(s[q], s[4 + q]);
            out[4 + q] = _mm256_permute2f128_ps::<0x31>(s[q], s[4 + q]);
        }
        out
    }

    /// [`super::to_channels_last`] for `c` a multiple of 8: 8 channel rows of 8 pixels
    /// transposed in registers, the last < 8 pixels copied one by one.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn to_channels_last(
        src: *const f32,
        stride: usize,
        c: usize,
        n: usize,
        dst: *mut f32,
    ) {
        for c0 in (0..c).step_by(8) {
            let mut i0 = 0;
            while i0 + 8 <= n {
                let r: [__m256; 8] =
                    std::array::from_fn(|ch| _mm256_loadu_ps(src.add((c0 + ch) * stride + i0)));
                for (j, v) in transpose8(&r).iter().enumerate() {
                    _mm256_storeu_ps(dst.add((i0 + j) * c + c0), *v);
                }
                i0 += 8;
            }
            for i in i0..n {
                for ch in 0..8 {
                    *dst.add(i * c + c0 + ch) = *src.add((c0 + ch) * stride + i);
                }
            }
        }
    }
}

/// The portable bodies compiled for AVX2 + FMA (with fused multiply-adds): not used by the
/// kernels, which have the hand-written [`avx2`] bodies, but measured beside them to check that
/// the portable code vectorizes (what an aarch64 build relies on).
#[cfg(target_arch = "x86_64")]
pub mod portable_as_avx2 {
    /// [`super::f_tile`]'s contract; the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f_tile(
        nv: usize,
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        match nv {
            3 => super::portable::f_tile::<3, true>(a, offs, b, out, ostride),
            2 => super::portable::f_tile::<2, true>(a, offs, b, out, ostride),
            _ => super::portable::f_tile::<1, true>(a, offs, b, out, ostride),
        }
    }

    /// [`super::dot_tile`]'s contract; the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_tile(
        x: &[*const f32],
        xoff: &[isize; super::DOT_R],
        d: &[*const f32],
        doff: &[isize; super::DOT_C],
        nv: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        super::portable::dot_tile::<true>(x, xoff, d, doff, nv, out, ostride)
    }
}

/// Whether the portable bodies fuse their multiply-adds: where the target has a fused
/// multiply-add instruction (always on aarch64), `mul_add` is one; elsewhere it would be a
/// library call.
const NATIVE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// Plain Rust on fixed-size lane arrays: blocks of 4 rows x 16 columns (64 accumulators: 16
/// NEON or 8 AVX registers), no serial float reduction, so the compiler vectorizes every loop.
mod portable {
    #[inline(always)]
    fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FUSED {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    /// `out[r][j] = Σ_s a[s·8 + r] · b[offs[s] + j]` for `r < 4`, `j < 16`.
    #[inline(always)]
    unsafe fn block<const FUSED: bool>(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut acc = [[0f32; 16]; 4];
        let mut ap = a;
        for &o in offs {
            let bv = std::ptr::read_unaligned(b.offset(o) as *const [f32; 16]);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = *ap.add(r);
                for (e, &bl) in row.iter_mut().zip(&bv) {
                    *e = mul_add::<FUSED>(av, bl, *e);
                }
            }
            ap = ap.add(super::F_ROWS);
        }
        for (r, row) in acc.iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(r * ostride), 16);
        }
    }

    #[inline(always)]
    pub unsafe fn f_tile<const NV: usize, const FUSED: bool>(
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        ostride: usize,
    ) {
        for j in 0..NV {
            for r0 in [0, 4] {
                block::<FUSED>(
                    a.add(r0),
                    offs,
                    b.add(16 * j),
                    out.add(r0 * ostride + 16 * j),
                    ostride,
                );
            }
        }
    }

    /// The 8 lanes summed as a tree (the same order on every target).
    #[inline(always)]
    fn lane_sum(v: &[f32; 8]) -> f32 {
        ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
    }

    #[inline(always)]
    pub unsafe fn dot_tile<const FUSED: bool>(
        x: &[*const f32],
        xoff: &[isize; super::DOT_R],
        d: &[*const f32],
        doff: &[isize; super::DOT_C],
        nv: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        const R: usize = super::DOT_R;
        for c0 in (0..super::DOT_C).step_by(2) {
            let mut acc = [[0f32; 8]; 2 * R];
            for (&xb, &db) in x.iter().zip(d) {
                let xr: [*const f32; R] = std::array::from_fn(|r| xb.offset(xoff[r]));
                let (d0, d1) = (db.offset(doff[c0]), db.offset(doff[c0 + 1]));
                for v in 0..2 * nv {
                    let dv0 = std::ptr::read_unaligned(d0.add(8 * v) as *const [f32; 8]);
                    let dv1 = std::ptr::read_unaligned(d1.add(8 * v) as *const [f32; 8]);
                    for (pair, xp) in acc.chunks_exact_mut(2).zip(&xr) {
                        let xv = std::ptr::read_unaligned(xp.add(8 * v) as *const [f32; 8]);
                        for (a, dv) in pair.iter_mut().zip([&dv0, &dv1]) {
                            for (e, (&xl, &dl)) in a.iter_mut().zip(xv.iter().zip(dv)) {
                                *e = mul_add::<FUSED>(xl, dl, *e);
                            }
                        }
                    }
                }
            }
            for r in 0..R {
                for c in 0..2 {
                    *out.add(r * ostride + c0 + c) += lane_sum(&acc[2 * r + c]);
                }
            }
        }
    }

    pub unsafe fn to_channels_last(
        src: *const f32,
        stride: usize,
        c: usize,
        n: usize,
        dst: *mut f32,
    ) {
        for i in 0..n {
            for ch in 0..c {
                *dst.add(i * c + ch) = *src.add(ch * stride + i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_channels_last_transposes_with_both_instruction_sets() {
        for isa in available() {
            for &(c, n, stride) in &[
                (16, 16, 16),
                (32, 37, 40),
                (16, 5, 9),
                (48, 8, 8),
                (3, 7, 7),
                (8, 13, 13),
                (24, 9, 20),
                (8, 3, 5),
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

    /// A deterministic spread of values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn close(got: f32, want: f64, tag: &str) {
        let tol = 1e-5 * want.abs().max(1.0);
        assert!(
            (got as f64 - want).abs() <= tol,
            "{tag}: got {got}, want {want}"
        );
    }

    #[test]
    fn f_tile_matches_plain_loops_on_every_isa() {
        let s_len = 37;
        let a = values(8 * s_len, 1);
        let b = values(4000, 2);
        let offs: Vec<isize> = (0..s_len).map(|s| ((s * 97) % 3900) as isize).collect();
        for isa in available() {
            for nv in 1..=F_MAX_NV {
                let ostride = 16 * nv + 5;
                let mut out = vec![f32::NAN; 8 * ostride];
                // SAFETY: every offset + 48 < b.len(); a holds 8 · s_len values; out 8 rows.
                unsafe {
                    f_tile(
                        isa,
                        nv,
                        a.as_ptr(),
                        &offs,
                        b.as_ptr(),
                        out.as_mut_ptr(),
                        ostride,
                    )
                };
                for r in 0..8 {
                    for j in 0..16 * nv {
                        let want: f64 = (0..s_len)
                            .map(|s| a[s * 8 + r] as f64 * b[offs[s] as usize + j] as f64)
                            .sum();
                        close(
                            out[r * ostride + j],
                            want,
                            &format!("{isa} nv{nv} r{r} j{j}"),
                        );
                    }
                    assert!(
                        out[r * ostride + 16 * nv..(r + 1) * ostride]
                            .iter()
                            .all(|v| v.is_nan()),
                        "{isa} nv{nv}: wrote past row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn f_tile_of_no_taps_is_zero_on_every_isa() {
        let (a, b) = ([1f32; 8], [1f32; 64]);
        for isa in available() {
            for nv in 1..=F_MAX_NV {
                let mut out = vec![f32::NAN; 8 * 48];
                // SAFETY: no taps: nothing of a or b is read; out has 8 rows of 48.
                unsafe { f_tile(isa, nv, a.as_ptr(), &[], b.as_ptr(), out.as_mut_ptr(), 48) };
                for r in 0..8 {
                    let row = &out[r * 48..][..48];
                    assert!(row[..16 * nv].iter().all(|&v| v == 0.0), "{isa} nv{nv}");
                    assert!(row[16 * nv..].iter().all(|v| v.is_nan()), "{isa} nv{nv}");
                }
            }
        }
    }

    #[test]
    fn dot_tile_matches_plain_loops_on_every_isa() {
        let xs = [values(700, 3), values(700, 4)];
        let ds = [values(600, 5), values(600, 6)];
        let xoff = [0isize, 1, 130, 333];
        let doff = [7isize, 64, 200, 401];
        for isa in available() {
            for nv in 1..=3 {
                let mut out: Vec<f32> = (0..4 * 6).map(|v| v as f32).collect();
                let x: Vec<*const f32> = xs.iter().map(|v| v.as_ptr()).collect();
                let d: Vec<*const f32> = ds.iter().map(|v| v.as_ptr()).collect();
                // SAFETY: every row offset + 48 stays inside its buffer; out holds 4 rows of 6.
                unsafe { dot_tile(isa, &x, &xoff, &d, &doff, nv, out.as_mut_ptr(), 6) };
                for r in 0..4 {
                    for c in 0..6 {
                        let mut want = (r * 6 + c) as f64;
                        if c < 4 {
                            for (xi, di) in xs.iter().zip(&ds) {
                                for j in 0..16 * nv {
                                    want += xi[xoff[r] as usize + j] as f64
                                        * di[doff[c] as usize + j] as f64;
                                }
                            }
                        }
                        close(out[r * 6 + c], want, &format!("{isa} nv{nv} r{r} c{c}"));
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn portable_body_compiled_for_avx2_agrees() {
        if detected() < Isa::Avx2 {
            return;
        }
        let s_len = 19;
        let a = values(8 * s_len, 7);
        let b = values(2000, 8);
        let offs: Vec<isize> = (0..s_len).map(|s| (s * 31) as isize).collect();
        for nv in 1..=F_MAX_NV {
            let (mut p, mut h) = (vec![0f32; 8 * 48], vec![0f32; 8 * 48]);
            // SAFETY: AVX2 and FMA are present (checked above); buffers as in the test above.
            unsafe {
                portable_as_avx2::f_tile(nv, a.as_ptr(), &offs, b.as_ptr(), p.as_mut_ptr(), 48);
                f_tile(
                    Isa::Avx2,
                    nv,
                    a.as_ptr(),
                    &offs,
                    b.as_ptr(),
                    h.as_mut_ptr(),
                    48,
                );
            }
            for (i, (x, y)) in p.iter().zip(&h).enumerate() {
                close(*x, *y as f64, &format!("nv{nv} at {i}"));
            }
        }
    }

    #[test]
    fn isa_names_parse_and_order() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
            assert_eq!(Isa::parse(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Isa::parse("sse9"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert_eq!(available().first(), Some(&Isa::Portable));
        assert_eq!(available().last(), Some(&detected()));
    }
}

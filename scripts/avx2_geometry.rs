//! The AVX2+FMA register-block geometries of the forward convolution tile (`sc_kernels::micro`'s
//! `f_tile`: 8 output channels x 16-48 pixel columns over the taps of a padded "flat" input),
//! side by side in one process, on ResNet-20's three stage shapes: 4 rows x 16 columns (what
//! sc-kernels uses: 8 accumulators), 4 x 24 (12), 6 + 2 rows x 16 (12 + 4) and 8 x 8 (8), against
//! the core's measured FMA peak. Standalone (no crates): `scripts/bench-avx2-geometry.sh`.
use std::arch::x86_64::*;
use std::time::Instant;

#[inline(always)]
unsafe fn block<const R: usize, const V: usize>(
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
        ap = ap.add(8);
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * ostride + 8 * j), *v);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn t42(nv: usize, a: *const f32, offs: &[isize], b: *const f32, out: *mut f32, os: usize) {
    for c0 in (0..16 * nv).step_by(16) {
        for r0 in [0, 4] {
            block::<4, 2>(a.add(r0), offs, b.add(c0), out.add(r0 * os + c0), os);
        }
    }
}
#[target_feature(enable = "avx2,fma")]
unsafe fn t43(nv: usize, a: *const f32, offs: &[isize], b: *const f32, out: *mut f32, os: usize) {
    match nv {
        3 => {
            for c0 in [0, 24] {
                for r0 in [0, 4] {
                    block::<4, 3>(a.add(r0), offs, b.add(c0), out.add(r0 * os + c0), os);
                }
            }
        }
        _ => t42(nv, a, offs, b, out, os),
    }
}
#[target_feature(enable = "avx2,fma")]
unsafe fn t62(nv: usize, a: *const f32, offs: &[isize], b: *const f32, out: *mut f32, os: usize) {
    for c0 in (0..16 * nv).step_by(16) {
        block::<6, 2>(a, offs, b.add(c0), out.add(c0), os);
        block::<2, 2>(a.add(6), offs, b.add(c0), out.add(6 * os + c0), os);
    }
}
#[target_feature(enable = "avx2,fma")]
unsafe fn t81(nv: usize, a: *const f32, offs: &[isize], b: *const f32, out: *mut f32, os: usize) {
    for c0 in (0..16 * nv).step_by(8) {
        block::<8, 1>(a, offs, b.add(c0), out.add(c0), os);
    }
}

/// The FMA peak of one core: 10 independent accumulators, no memory.
#[target_feature(enable = "avx2,fma")]
unsafe fn peak() -> f64 {
    let mut acc = [_mm256_set1_ps(0.0); 10];
    let (x, y) = (_mm256_set1_ps(0.999), _mm256_set1_ps(0.001));
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..20_000_000 {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        best = best.max(20e6 * 10.0 * 16.0 / t.elapsed().as_secs_f64() / 1e9);
    }
    let mut s = [0f32; 8];
    _mm256_storeu_ps(s.as_mut_ptr(), acc[3]);
    std::hint::black_box(s);
    best
}

/// 4 rows x 24 columns in hand-written assembly: the 12 accumulators, 3 column vectors and the
/// broadcast take all 16 ymm registers, which LLVM does not manage without spilling (see 4x24).
#[target_feature(enable = "avx2,fma")]
unsafe fn block_4x24_asm(
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
        "add {a}, 32",
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

#[target_feature(enable = "avx2,fma")]
unsafe fn t43asm(
    nv: usize,
    a: *const f32,
    offs: &[isize],
    b: *const f32,
    out: *mut f32,
    os: usize,
) {
    match nv {
        3 => {
            for c0 in [0, 24] {
                for r0 in [0, 4] {
                    block_4x24_asm(a.add(r0), offs, b.add(c0), out.add(r0 * os + c0), os);
                }
            }
        }
        _ => t42(nv, a, offs, b, out, os),
    }
}

type Geom = unsafe fn(usize, *const f32, &[isize], *const f32, *mut f32, usize);

/// One convolution layer's forward tiles (every 8-row tile over every column block); returns the
/// FLOPs done.
fn layer(
    f: Geom,
    a: &[f32],
    offs: &[isize],
    b: &[f32],
    pt: usize,
    cout: usize,
    out: &mut [f32],
) -> f64 {
    let mut flops = 0.0;
    for rt in 0..cout / 8 {
        let mut p0 = 0;
        while p0 + 16 <= pt {
            let nv = ((pt - p0) / 16).min(3);
            // SAFETY: every offset plus pt stays in b (padded planes plus slack), a holds each
            // tile's taps x 8 values, out its 8 rows of pt.
            unsafe {
                f(
                    nv,
                    a.as_ptr().add(rt * offs.len() * 8),
                    offs,
                    b.as_ptr().add(p0),
                    out.as_mut_ptr().add(rt * 8 * pt + p0),
                    pt,
                );
            }
            flops += 2.0 * 8.0 * (16 * nv) as f64 * offs.len() as f64;
            p0 += 16 * nv;
        }
    }
    flops
}

fn main() {
    let pk = unsafe { peak() };
    println!("AVX2 FMA peak, one core: {pk:.1} GFLOP/s");
    let aligned = std::env::var("ALIGNED").is_ok_and(|v| v == "1");
    if aligned {
        println!("ALIGNED=1: tap offsets rounded down to 32 bytes (not a real convolution)");
    }
    let geoms: [(&str, Geom); 5] = [
        ("4x16", t42),
        ("4x24", t43),
        ("4x24 asm", t43asm),
        ("6+2x16", t62),
        ("8x8", t81),
    ];
    // ResNet-20's stages: cin channels of a padded plane, 3x3 taps, 64 output channels.
    for &(cin, hw) in &[(16usize, 32usize), (32, 16), (64, 8)] {
        let wp = hw + 2;
        let plane = wp * (hw + 2) + 16;
        let b: Vec<f32> = (0..cin * plane + 64)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let offs: Vec<isize> = (0..cin)
            .flat_map(|c| {
                (0..3).flat_map(move |kh| (0..3).map(move |kw| (c * plane + kh * wp + kw) as isize))
            })
            // ALIGNED=1 rounds every tap's offset down to 8 floats (32 bytes): a wrong
            // convolution, but it shows what the unaligned column loads cost.
            .map(|o| if aligned { o / 8 * 8 } else { o })
            .collect();
        let cout = 64usize;
        let a: Vec<f32> = (0..offs.len() * cout)
            .map(|i| (i % 5) as f32 * 0.01)
            .collect();
        let pt = (hw * wp).div_ceil(16) * 16;
        let mut want = vec![0f32; cout * pt];
        layer(t42, &a, &offs, &b, pt, cout, &mut want);
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        let mut out = vec![0f32; cout * pt];
        // Every geometry computes the same rows as 4x16 (up to summation order).
        for (name, f) in geoms {
            layer(f, &a, &offs, &b, pt, cout, &mut out);
            let diff = want
                .iter()
                .zip(&out)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-4 * scale, "{name}: differs by {diff}");
        }
        // Rounds alternate the geometries (a shared machine drifts); the best round counts.
        let mut best = [0f64; 5];
        for _ in 0..7 {
            for (g, (_, f)) in geoms.iter().enumerate() {
                let t = Instant::now();
                let mut flops = 0.0;
                while t.elapsed().as_secs_f64() < 0.15 {
                    flops += layer(*f, &a, &offs, &b, pt, cout, &mut out);
                }
                best[g] = best[g].max(flops / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        for (g, (name, _)) in geoms.iter().enumerate() {
            println!(
                "cin {cin:>2} {hw:>2}x{hw:<2} {name:>8}: {:6.1} GFLOP/s ({:.0} % of peak)",
                best[g],
                100.0 * best[g] / pk
            );
        }
    }
}

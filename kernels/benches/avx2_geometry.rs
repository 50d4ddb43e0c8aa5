//! Which register block the AVX2+FMA forward convolution tile should use
//! (`sc_kernels::micro::f_tile`: 8 output channels x 16-48 pixel columns over the taps of a
//! padded "flat" input). The candidates run side by side in one process, pinned to one core
//! by the caller (`taskset -c 0`), on ResNet-20's three stage shapes, against the core's
//! measured FMA peak:
//! - 4 rows x 16 columns (8 accumulators; the crate's narrower tiles);
//! - 4 x 24 in intrinsics (12; LLVM spills it);
//! - 4 x 24 in assembly (12; the crate's full tiles);
//! - 6 + 2 rows x 16 (12 + 4);
//! - 8 x 8 (8).
//!
//! `taskset -c 0 cargo bench -p sc-kernels --bench avx2_geometry`; `ALIGNED=1` rounds the taps'
//! offsets down to 32 bytes (a wrong convolution) to show what the misaligned loads cost.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    use sc_kernels::micro::avx2::{block, block_4x24};

    #[target_feature(enable = "avx2,fma")]
    unsafe fn t42(
        nv: usize,
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        os: usize,
    ) {
        for c0 in (0..16 * nv).step_by(16) {
            for r0 in [0, 4] {
                block::<4, 2>(a.add(r0), offs, b.add(c0), out.add(r0 * os + c0), os);
            }
        }
    }
    /// 4 x 24 blocks for full tiles: the crate's assembly block (`ASM`) or the same in intrinsics.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn t43<const ASM: bool>(
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
                        let (a, b, y) = (a.add(r0), b.add(c0), out.add(r0 * os + c0));
                        if ASM {
                            block_4x24(a, offs, b, y, os);
                        } else {
                            block::<4, 3>(a, offs, b, y, os);
                        }
                    }
                }
            }
            _ => t42(nv, a, offs, b, out, os),
        }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn t62(
        nv: usize,
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        os: usize,
    ) {
        for c0 in (0..16 * nv).step_by(16) {
            block::<6, 2>(a, offs, b.add(c0), out.add(c0), os);
            block::<2, 2>(a.add(6), offs, b.add(c0), out.add(6 * os + c0), os);
        }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn t81(
        nv: usize,
        a: *const f32,
        offs: &[isize],
        b: *const f32,
        out: *mut f32,
        os: usize,
    ) {
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

    pub fn run() {
        let pk = unsafe { peak() };
        println!("AVX2 FMA peak, one core: {pk:.1} GFLOP/s");
        let aligned = std::env::var("ALIGNED").is_ok_and(|v| v == "1");
        if aligned {
            println!("ALIGNED=1: tap offsets rounded down to 32 bytes (not a real convolution)");
        }
        let geoms: [(&str, Geom); 5] = [
            ("4x16", t42),
            ("4x24", t43::<false>),
            ("4x24 asm", t43::<true>),
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
                    (0..3).flat_map(move |kh| {
                        (0..3).map(move |kw| (c * plane + kh * wp + kw) as isize)
                    })
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
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return x86::run();
    }
    println!("avx2_geometry: this CPU has no AVX2+FMA; nothing to measure");
}

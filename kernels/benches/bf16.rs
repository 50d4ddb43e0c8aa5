//! The bf16 tile (`sc_kernels::bf16::f_tile`, `vdpbf16ps`) against the f32 AVX-512 tile
//! (`sc_kernels::micro::f_tile`) on the forward convolution of ResNet-20's three stages (a flat
//! padded input, 3x3 taps; bf16 pairs two input channels per step), one core, each against its
//! measured peak: 16 independent `vfmadd231ps` (32 FLOP each) or `vdpbf16ps` (64 FLOP each)
//! chains with no memory. FLOPs count a multiply and an add per product in both.
//!
//! Then the whole convolution passes (`conv::forward_packed`, `conv::backward_with`: layouts,
//! pairing and tiles) at batch 32 on ResNet-20's layers, f32 against bf16, one thread.
//!
//! `taskset -c 1 cargo bench -p sc-kernels --bench bf16` (AVX512_BF16 CPUs).

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    use sc_kernels::conv::{self, Epilogue, Geom, Packed, Precision};
    use sc_kernels::{bf16, micro};

    /// The peak of one core in GFLOP/s: `vfmadd231ps` (`BF16` false) or `vdpbf16ps` chains.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn peak<const BF16: bool>() -> f64 {
        // Distinct starting values, and every accumulator kept: identical chains would be merged
        // into one, and unused ones dropped.
        let mut acc: [__m512; 16] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let (x, y) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
        let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let reps = 10_000_000;
        let mut best = 0f64;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                for a in acc.iter_mut() {
                    *a = if BF16 {
                        _mm512_dpbf16_ps(*a, xb, xb)
                    } else {
                        _mm512_fmadd_ps(*a, x, y)
                    };
                }
            }
            let flop = if BF16 { 64.0 } else { 32.0 };
            best = best.max(reps as f64 * 16.0 * flop / t.elapsed().as_secs_f64() / 1e9);
        }
        let mut s = [0f32; 16 * 16];
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(s[16 * i..].as_mut_ptr(), *a);
        }
        std::hint::black_box(s);
        best
    }

    /// Every 8-row tile of a layer over every column block: `f(nv, a, offs, b, out, stride)`.
    /// Returns the FLOPs done (2 per product).
    fn layer<T>(
        f: &dyn Fn(usize, *const T, &[isize], *const T, *mut f32, usize),
        a: &[T],
        offs: &[isize],
        b: &[T],
        pt: usize,
        cout: usize,
        products_per_step: f64,
        out: &mut [f32],
    ) -> f64 {
        let mut flops = 0.0;
        for rt in 0..cout / 8 {
            let mut p0 = 0;
            while p0 + 16 <= pt {
                let nv = ((pt - p0) / 16).min(3);
                f(
                    nv,
                    a[rt * offs.len() * 8..].as_ptr(),
                    offs,
                    b[p0..].as_ptr(),
                    out[rt * 8 * pt + p0..].as_mut_ptr(),
                    pt,
                );
                flops += 2.0 * products_per_step * 8.0 * (16 * nv) as f64 * offs.len() as f64;
                p0 += 16 * nv;
            }
        }
        flops
    }

    /// Seconds per call of `f`, best of rounds of at least 0.1 s.
    fn secs(f: &mut dyn FnMut()) -> f64 {
        f();
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let (t, mut runs) = (Instant::now(), 0);
            while runs < 2 || t.elapsed().as_secs_f64() < 0.1 {
                f();
                runs += 1;
            }
            best = best.min(t.elapsed().as_secs_f64() / runs as f64);
        }
        best
    }

    /// Forward and backward (input and weight gradients) of ResNet-20's layers, f32 and bf16.
    fn passes() {
        println!("\nconvolution passes, batch 32, GFLOP/s (f32 / bf16 / ratio)");
        let vals = |n: usize| {
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect::<Vec<f32>>()
        };
        for (name, cin, hw, cout, stride) in [
            ("16->16 32x32", 16, 32, 16, 1),
            ("16->32 s2", 16, 32, 32, 2),
            ("32->32 16x16", 32, 16, 32, 1),
            ("32->64 s2", 32, 16, 64, 2),
            ("64->64 8x8", 64, 8, 64, 1),
        ] {
            let g = Geom::new(32, cin, hw, hw, cout, 3, stride, 1).unwrap();
            let (x, w) = (vals(g.n * cin * hw * hw), vals(cout * cin * 9));
            let dy = vals(g.n * cout * g.p());
            let mut y = vec![0f32; dy.len()];
            let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
            let img = cout * g.p();
            let flop = 2.0 * g.macs() as f64;
            let mut rates = [[0f64; 2]; 2];
            for (k, prec) in [Precision::F32, Precision::Bf16].into_iter().enumerate() {
                let packed = Packed::with_precision(&g, &w, prec).unwrap();
                rates[0][k] =
                    flop / secs(&mut || {
                        conv::forward_packed(&g, &packed, &x, &mut y, Epilogue::NONE, |_, _| {})
                    }) / 1e9;
                rates[1][k] = 2.0 * flop
                    / secs(&mut || {
                        conv::backward_with(
                            prec,
                            &g,
                            &x,
                            &w,
                            Some(&mut dx),
                            &mut dw,
                            |n, b| b.copy_from_slice(&dy[n * img..][..img]),
                            |_, _| {},
                        )
                    })
                    / 1e9;
            }
            for (pass, r) in ["forward", "backward"].iter().zip(rates) {
                println!(
                    "{name:<13} {pass:<9} {:6.1} / {:6.1} / {:.2}x",
                    r[0],
                    r[1],
                    r[1] / r[0]
                );
            }
        }
    }

    pub fn run() {
        let (pf, pb) = unsafe { (peak::<false>(), peak::<true>()) };
        println!("one core: f32 FMA peak {pf:.1} GFLOP/s, bf16 vdpbf16ps peak {pb:.1} GFLOP/s");
        // ResNet-20's stages: cin = cout channels of a padded 3x3 "same" convolution.
        for &(c, hw) in &[(16usize, 32usize), (32, 16), (64, 8)] {
            let wp = hw + 1;
            let plane = wp * (hw + 2) + 16;
            let pt = (hw * wp).div_ceil(16) * 16;
            let x: Vec<f32> = (0..c * plane + 64)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let w: Vec<f32> = (0..c * c * 9)
                .map(|i| ((i * 5) % 11) as f32 * 0.01 - 0.05)
                .collect();
            // f32: s = (ci, kh, kw), a[s][r] = w[r][s].
            let offs32: Vec<isize> = (0..c)
                .flat_map(|ci| {
                    (0..3).flat_map(move |kh| {
                        (0..3).map(move |kw| (ci * plane + kh * wp + kw) as isize)
                    })
                })
                .collect();
            let a32: Vec<f32> = (0..c / 8)
                .flat_map(|rt| {
                    let w = &w;
                    (0..c * 9).flat_map(move |s| (0..8).map(move |r| w[(rt * 8 + r) * c * 9 + s]))
                })
                .collect();
            // bf16: s = (channel pair, kh, kw); planes of pairs (channel 2cp low, 2cp + 1 high).
            let mut x2 = vec![0u32; c / 2 * plane + 64];
            for cp in 0..c / 2 {
                bf16::pack_pairs(
                    &x[2 * cp * plane..][..plane],
                    Some(&x[(2 * cp + 1) * plane..][..plane]),
                    &mut x2[cp * plane..][..plane],
                );
            }
            let offs16: Vec<isize> = (0..c / 2)
                .flat_map(|cp| {
                    (0..3).flat_map(move |kh| {
                        (0..3).map(move |kw| (cp * plane + kh * wp + kw) as isize)
                    })
                })
                .collect();
            let mut a16 = Vec::with_capacity(c * c * 9 / 2);
            for rt in 0..c / 8 {
                for cp in 0..c / 2 {
                    for t in 0..9 {
                        for r in 0..8 {
                            let co = rt * 8 + r;
                            let lo = w[(co * c + 2 * cp) * 9 + t];
                            let hi = w[(co * c + 2 * cp + 1) * 9 + t];
                            a16.push(bf16::to_bits(lo) as u32 | (bf16::to_bits(hi) as u32) << 16);
                        }
                    }
                }
            }
            let f32_tile =
                |nv: usize, a: *const f32, o: &[isize], b: *const f32, y: *mut f32, s: usize| {
                    // SAFETY: offsets plus pt stay inside the planes (and their slack); a holds the
                    // tile's taps; y its 8 rows.
                    unsafe { micro::f_tile(micro::Isa::Avx512, nv, a, o, b, y, s) }
                };
            let bf16_tile =
                |nv: usize, a: *const u32, o: &[isize], b: *const u32, y: *mut f32, s: usize| {
                    // SAFETY: as above; bf16::check() passed in main.
                    unsafe { bf16::f_tile(nv, a, o, b, y, s) }
                };
            let mut want = vec![0f32; c * pt];
            let mut got = vec![0f32; c * pt];
            layer(&f32_tile, &a32, &offs32, &x, pt, c, 1.0, &mut want);
            layer(&bf16_tile, &a16, &offs16, &x2, pt, c, 2.0, &mut got);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = want
                .iter()
                .zip(&got)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            // Inputs rounded to 8 significant bits: a relative error of a few 2^-9.
            assert!(
                diff <= 0.02 * scale,
                "bf16 differs from f32 by {diff} (scale {scale})"
            );
            // Rounds alternate the two (a shared machine drifts); the best round counts.
            let mut best = [0f64; 2];
            for _ in 0..7 {
                for (k, b) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    let mut flops = 0.0;
                    while t.elapsed().as_secs_f64() < 0.15 {
                        flops += if k == 0 {
                            layer(&f32_tile, &a32, &offs32, &x, pt, c, 1.0, &mut want)
                        } else {
                            layer(&bf16_tile, &a16, &offs16, &x2, pt, c, 2.0, &mut got)
                        };
                    }
                    *b = b.max(flops / t.elapsed().as_secs_f64() / 1e9);
                }
            }
            println!(
                "{c:>2} -> {c:>2} at {hw:>2}x{hw:<2}: f32 {:6.1} GFLOP/s ({:3.0} % of its peak), bf16 {:6.1} GFLOP/s ({:3.0} %): {:.2}x",
                best[0],
                100.0 * best[0] / pf,
                best[1],
                100.0 * best[1] / pb,
                best[1] / best[0]
            );
        }
        passes();
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if sc_kernels::bf16::check().is_ok() {
        return x86::run();
    }
    println!(
        "bf16: nothing to measure here: {}",
        sc_kernels::bf16::check().unwrap_err()
    );
}

//! Per-kernel speed of `sc-kernels` under every instruction set this CPU has, in one run:
//! the two inner tiles on cache-resident data (one thread: the practical FMA peak of a core),
//! ResNet-20's convolutions (forward, and backward = input + weight gradient) and the BatchNorm
//! element-wise loops, at batch 128 on the rayon pool (`RAYON_NUM_THREADS`, default all cores).
//!
//! `cargo bench -p sc-kernels --bench kernels [-- --quick]`; `--json` prints one JSON object per
//! line. The portable tiles are also measured compiled for AVX2+FMA (`portable-as-avx2`): how
//! close the compiler's vectorization of the portable body comes to the hand-written one.

use sc_kernels::conv::{self, Geom};
use sc_kernels::micro::{self, Isa};
use sc_kernels::{bn, elementwise};
use std::time::Instant;

/// Seconds `f` takes per call, best of repeated timings over at least `min_s` in all.
fn time_it(min_s: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut best, mut runs) = (Instant::now(), f64::INFINITY, 0);
    while runs < 3 || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

type TileFn = unsafe fn(usize, *const f32, &[isize], *const f32, *mut f32, usize);

/// f_tile GFLOP/s on one thread, data in L1/L2 (`nv` 16-wide column vectors).
fn f_tile_gflops(f: TileFn, nv: usize, min_s: f64) -> f64 {
    let s_len = 288; // 32 channels x 9 taps
    let a = values(s_len * 8);
    let b = values(4096);
    let offs: Vec<isize> = (0..s_len).map(|s| ((s * 7) % 2000) as isize).collect();
    let mut out = vec![0f32; 8 * 48];
    let reps = 200;
    let t = time_it(min_s, || {
        for _ in 0..reps {
            // SAFETY: offsets + 48 < b.len(); a holds 8 · s_len values; out 8 rows of 48; the
            // caller passes a body this CPU runs.
            unsafe { f(nv, a.as_ptr(), &offs, b.as_ptr(), out.as_mut_ptr(), 48) };
        }
    });
    (2 * 8 * 16 * nv * s_len * reps) as f64 / t / 1e9
}

type DotFn =
    unsafe fn(&[*const f32], &[isize; 4], &[*const f32], &[isize; 4], usize, *mut f32, usize);

fn dot_tile_gflops(f: DotFn, min_s: f64) -> f64 {
    let (x, d) = (values(4096), values(4096));
    let xo = [0isize, 1, 2, 40];
    let dof = [112isize, 416, 720, 1024];
    let mut acc = [0f32; 16];
    let (nv, reps) = (64, 200);
    let t = time_it(min_s, || {
        for _ in 0..reps {
            // SAFETY: every row offset + 16 · nv < 4096; acc holds 4 x 4 values.
            unsafe {
                f(
                    &[x.as_ptr()],
                    &xo,
                    &[d.as_ptr()],
                    &dof,
                    nv,
                    acc.as_mut_ptr(),
                    4,
                )
            };
        }
    });
    (2 * 16 * 16 * nv * reps) as f64 / t / 1e9
}

/// ResNet-20's convolutions: (name, cin, side, cout, stride).
const LAYERS: [(&str, usize, usize, usize, usize); 6] = [
    ("stem 3->16 32x32", 3, 32, 16, 1),
    ("16->16 32x32", 16, 32, 16, 1),
    ("16->32 s2 32x32", 16, 32, 32, 2),
    ("32->32 16x16", 32, 16, 32, 1),
    ("32->64 s2 16x16", 32, 16, 64, 2),
    ("64->64 8x8", 64, 8, 64, 1),
];

struct ConvRow {
    layer: &'static str,
    fwd: f64,
    bwd: f64,
}

fn conv_rows(batch: usize, min_s: f64) -> Vec<ConvRow> {
    LAYERS
        .iter()
        .map(|&(layer, cin, side, cout, stride)| {
            let g = Geom::new(batch, cin, side, side, cout, 3, stride, 1).expect("valid shape");
            let x = values(batch * cin * side * side);
            let w = values(cout * cin * 9);
            let mut y = vec![0f32; batch * cout * g.p()];
            let dy = values(y.len());
            let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
            let flops = 2.0 * g.macs() as f64;
            let tf = time_it(min_s, || conv::forward(&g, &x, &w, &mut y, |_, _| {}));
            let tb = time_it(min_s, || {
                conv::backward(
                    &g,
                    &x,
                    &w,
                    Some(&mut dx),
                    &mut dw,
                    |n, d| d.copy_from_slice(&dy[n * cout * g.p()..][..cout * g.p()]),
                    |_, _| {},
                )
            });
            ConvRow {
                layer,
                fwd: flops / tf / 1e9,
                bwd: 2.0 * flops / tb / 1e9,
            }
        })
        .collect()
}

/// BatchNorm training forward (statistics + normalise + ReLU) and backward element-wise loops
/// over 128 x 16 x 32 x 32 values: GB/s of the rows read and written.
fn bn_gbps(min_s: f64) -> (f64, f64) {
    let (c, p, n) = (16, 1024, 128);
    let y = values(n * c * p);
    let mut z = vec![0f32; y.len()];
    let dz = values(y.len());
    let mut dy = vec![0f32; y.len()];
    let tf = time_it(min_s, || {
        for (row, out) in y.chunks_exact(p).zip(z.chunks_exact_mut(p)) {
            let (m, _) = elementwise::mean_m2(row);
            elementwise::affine_act(row, None, 1.5, -m as f32, true, out);
        }
    });
    let tb = time_it(min_s, || {
        for ((d, zr), (yr, o)) in dz
            .chunks_exact(p)
            .zip(z.chunks_exact(p))
            .zip(y.chunks_exact(p).zip(dy.chunks_exact_mut(p)))
        {
            let (s, q) = bn::grad_sums(d, zr, yr, 0.1, true, None);
            bn::grad_input(
                d,
                zr,
                yr,
                true,
                1.1,
                (q * 1e-6) as f32,
                (s * 1e-6) as f32,
                o,
            );
        }
    });
    let bytes = (y.len() * 4) as f64;
    // forward: read y twice (stats) + once (normalise), write z; backward: read dz, z, y twice,
    // write dy.
    (4.0 * bytes / tf / 1e9, 7.0 * bytes / tb / 1e9)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let min_s = if quick { 0.1 } else { 0.5 };
    let batch = if quick { 32 } else { 128 };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "# sc-kernels on {cpu}, CPU ISA {}, {} threads, batch {batch}",
        micro::detected(),
        sc_kernels::par::threads()
    );
    let mut bodies: Vec<(String, Option<Isa>)> = micro::available()
        .into_iter()
        .map(|i| (i.to_string(), Some(i)))
        .collect();
    #[cfg(target_arch = "x86_64")]
    if micro::detected() >= Isa::Avx2 {
        bodies.insert(1, ("portable-as-avx2".into(), None));
    }
    for (name, isa) in bodies {
        let (ft, dt): (TileFn, DotFn) = match isa {
            Some(i) => {
                micro::force_isa(i);
                (
                    |nv, a, o, b, out, s| unsafe {
                        micro::f_tile(micro::isa(), nv, a, o, b, out, s)
                    },
                    |x, xo, d, dof, nv, out, s| unsafe {
                        micro::dot_tile(micro::isa(), x, xo, d, dof, nv, out, s)
                    },
                )
            }
            #[cfg(target_arch = "x86_64")]
            None => (
                micro::portable_as_avx2::f_tile as TileFn,
                micro::portable_as_avx2::dot_tile as DotFn,
            ),
            #[cfg(not(target_arch = "x86_64"))]
            None => unreachable!("portable-as-avx2 is measured on x86-64 only"),
        };
        let f: Vec<f64> = (1..=3).map(|nv| f_tile_gflops(ft, nv, min_s)).collect();
        let d = dot_tile_gflops(dt, min_s);
        let (convs, bnf) = if isa.is_some() {
            (conv_rows(batch, min_s), Some(bn_gbps(min_s)))
        } else {
            (Vec::new(), None)
        };
        if json {
            let rows: Vec<String> = convs
                .iter()
                .map(|r| {
                    format!(
                        r#"{{"layer":"{}","fwd":{:.1},"bwd":{:.1}}}"#,
                        r.layer, r.fwd, r.bwd
                    )
                })
                .collect();
            println!(
                r#"{{"body":"{name}","f_tile_gflops":[{:.1},{:.1},{:.1}],"dot_tile_gflops":{d:.1},"convs":[{}],"bn_gbps":{}}}"#,
                f[0],
                f[1],
                f[2],
                rows.join(","),
                bnf.map_or("null".into(), |(a, b)| format!("[{a:.1},{b:.1}]"))
            );
            continue;
        }
        println!(
            "\n## {name}\nf_tile 1 thread, GFLOP/s (16/32/48 columns): {:.1} / {:.1} / {:.1}; dot_tile: {d:.1}",
            f[0], f[1], f[2]
        );
        if convs.is_empty() {
            continue;
        }
        let peak = f.iter().cloned().fold(0.0, f64::max) * sc_kernels::par::threads() as f64;
        println!(
            "{:<18} {:>15} {:>15}   (% of f_tile peak x threads = {peak:.0})",
            "conv", "fwd GFLOP/s", "bwd GFLOP/s"
        );
        for r in &convs {
            println!(
                "{:<18} {:>8.1} ({:>3.0}%) {:>8.1} ({:>3.0}%)",
                r.layer,
                r.fwd,
                100.0 * r.fwd / peak,
                r.bwd,
                100.0 * r.bwd / peak
            );
        }
        if let Some((a, b)) = bnf {
            println!("BatchNorm+ReLU element-wise, GB/s: forward {a:.1}, backward {b:.1}");
        }
    }
}

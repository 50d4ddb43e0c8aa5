//! The blocked (NCHWc) convolution against the flat one, layer by layer: ResNet-20's convolution
//! shapes at batch 1 (the stem, each stage's 3x3, the stride-2 entries), one thread, on each
//! instruction set the CPU has, GFLOP/s of each and their ratio. The flat layout's time includes
//! its copy into the padded layout; the blocked one reads its padding in place.
//!
//! `RAYON_NUM_THREADS=1 taskset -c 1 cargo bench -p sc-kernels --bench blocked`

use std::time::Instant;

use sc_kernels::blocked::{Conv, Layout};
use sc_kernels::conv::{self, Epilogue, Geom, Packed};
use sc_kernels::micro::{available, force_isa};

fn field(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn main() {
    // (cin, h = w, cout, stride), 3x3, padding 1.
    let shapes = [
        (3, 32, 16, 1),
        (16, 32, 16, 1),
        (16, 32, 32, 2),
        (32, 16, 32, 1),
        (32, 16, 64, 2),
        (64, 8, 64, 1),
    ];
    let mut seed = 1u64;
    for isa in available().into_iter().rev() {
        force_isa(isa);
        println!("{isa}:");
        for &(cin, h, cout, s) in &shapes {
            let (k, p) = (3, 1);
            let oh = (h + 2 * p - k) / s + 1;
            let x = field(cin * h * h, &mut seed);
            let w = field(cout * cin * k * k, &mut seed);
            let bias = field(cout, &mut seed);
            let g = Geom::new(1, cin, h, h, cout, k, s, p).unwrap();
            let packed = Packed::new(&g, &w);
            let mut y = vec![0.0; cout * oh * oh];
            let ep = Epilogue {
                bias: Some(&bias),
                residual: None,
                relu: true,
            };
            let conv = Conv::new(cin, cout, k, s, p, &w, Some(&bias));
            let xl = Layout {
                c: cin,
                h,
                w: h,
                border: 1,
            };
            let yl = Layout {
                c: cout,
                h: oh,
                w: oh,
                border: 1,
            };
            let mut xb = vec![0.0; xl.len()];
            xl.fill_from(&x, &mut xb);
            let mut yb = vec![0.0; yl.len()];
            let flops = 2.0 * (cout * cin * k * k * oh * oh) as f64;
            let reps = (100e6 / flops) as usize + 1;
            let (mut flat, mut blocked) = (f64::MAX, f64::MAX);
            // Alternating rounds, best of each: both see the same machine.
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..reps {
                    conv::forward_packed(&g, &packed, &x, &mut y, ep, |_, _| {});
                }
                flat = flat.min(t.elapsed().as_secs_f64() / reps as f64);
                let t = Instant::now();
                for _ in 0..reps {
                    conv.forward(1, (&xl, &xb), (&yl, &mut yb), None, true, None);
                }
                blocked = blocked.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "  {cin:>2} -> {cout:<2} {h:>2}x{h:<2} stride {s}: flat {:6.1} GFLOP/s, blocked {:6.1}, blocked/flat {:.2}",
                flops / flat / 1e9,
                flops / blocked / 1e9,
                flat / blocked
            );
        }
    }
}

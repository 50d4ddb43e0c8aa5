//! Full SGD training steps of ResNet-20/56 on synthetic data, with the loop pieces `fit` uses
//! (`Net`, `forward_t(x, true)`, cross-entropy, `backward`, `Sgd::step`), plus per-convolution
//! GFLOP/s of the CPU kernels against candle's stock ops and a large-matmul peak.
//!
//! ```text
//! cargo bench -p sc-trainer --bench train_step                # every configuration
//! cargo bench -p sc-trainer --bench train_step -- --json      # one JSON object per configuration
//! cargo bench -p sc-trainer --bench train_step -- --configs resnet20:128 --no-ops
//! SC_STOCK_KERNELS=1 cargo bench -p sc-trainer --bench train_step   # candle's stock ops
//! SC_BENCH_PRECISION=bf16 cargo bench -p sc-trainer --bench train_step   # bf16 convolution products (AVX512_BF16)
//! ```
//! Each configuration runs in a child process so that its peak RSS is its own.
//! `BENCH_SECONDS` (default 8): minimum measuring time per configuration, after one warm-up step.

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor, Var};
use sc_models::custom_ops::conv::{self, Geom};
use sc_models::ArchConfig;
use sc_trainer::optim::{Sgd, SgdConfig};
use sc_trainer::train::Net;

const DEFAULT_CONFIGS: &str = "resnet20:128,resnet20:512,resnet56:128,resnet56:512";

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0)
}

fn threads() -> usize {
    sc_models::custom_ops::threads()
}

/// One configuration: prints a JSON line.
fn child(model: &str, batch: usize) -> anyhow::Result<()> {
    // As the trainer's main does: freed memory is reused, not returned and faulted in again.
    sc_models::custom_ops::keep_freed_memory();
    let precision = match std::env::var("SC_BENCH_PRECISION").as_deref() {
        Ok("bf16") => sc_models::ops::Precision::Bf16,
        Ok("f32") | Ok("") | Err(_) => sc_models::ops::Precision::F32,
        Ok(other) => anyhow::bail!("SC_BENCH_PRECISION={other}: expected f32 or bf16"),
    };
    sc_models::ops::set_cpu_precision(precision)
        .map_err(|e| anyhow::anyhow!("SC_BENCH_PRECISION=bf16: {e}"))?;
    let dev = Device::Cpu;
    let depth = ArchConfig::depth_from_name(model).map_err(anyhow::Error::msg)?;
    let arch = ArchConfig::resnet(depth, 3, 32, 32, 10).map_err(anyhow::Error::msg)?;
    let net = Net::new(&arch, 0, &dev)?;
    let vars = net.vars();
    let cfg = SgdConfig {
        nesterov: true,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let mut sgd = Sgd::new(cfg, &vars, net.model.params())?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7 + 3) % 10).collect();
    let y = Tensor::from_vec(labels, batch, &dev)?;
    // Seconds in forward (with the loss), backward and the optimizer.
    let mut times = [0f64; 3];
    let mut step = |times: &mut [f64; 3]| -> anyhow::Result<()> {
        let t0 = Instant::now();
        let logits = net.model.forward_t(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let l = loss.to_scalar::<f32>()?;
        anyhow::ensure!(l.is_finite(), "loss {l}");
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        sgd.step(&grads, 0.05, None)?;
        let t3 = Instant::now();
        times[0] += (t1 - t0).as_secs_f64();
        times[1] += (t2 - t1).as_secs_f64();
        times[2] += (t3 - t2).as_secs_f64();
        Ok(())
    };
    step(&mut [0.0; 3])?; // warm-up
    let start = Instant::now();
    let mut steps = 0;
    while steps < 2 || start.elapsed().as_secs_f64() < seconds() {
        step(&mut times)?;
        steps += 1;
    }
    let dt = start.elapsed().as_secs_f64();
    let per = |t: f64| t / steps as f64 * 1e3;
    println!(
        "{}",
        serde_json::json!({
            "model": model,
            "batch": batch,
            "threads": threads(),
            "stock": sc_models::custom_ops::stock_forced(),
            "precision": format!("{precision:?}").to_lowercase(),
            "steps": steps,
            "images_per_second": (steps * batch) as f64 / dt,
            "step_ms": dt / steps as f64 * 1e3,
            "forward_ms": per(times[0]),
            "backward_ms": per(times[1]),
            "optimizer_ms": per(times[2]),
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

/// The fastest of repeated runs (at least 3, for at least `min_s` seconds): robust to a noisy
/// machine.
fn time_it(min_s: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let (mut n, mut best) = (0, f64::INFINITY);
    while n < 3 || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

/// Per-convolution GFLOP/s (ResNet-20 layers at batch 128) and the matmul peak.
fn ops_report(json: bool) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let t = time_it(1.0, || {
        a.matmul(&b).unwrap();
    });
    let gemm = 2.0 * (n * n * n) as f64 / t / 1e9;
    // candle's gemm runs AVX2 kernels; the AVX-512 tile on cache-resident data is this machine's
    // practical FMA peak (one thread, times the threads).
    let tiles = tiles_report();
    let peak = tiles["f_tile_gflops_1thread"].as_f64().unwrap_or(f64::NAN) * threads() as f64;
    if !json {
        println!(
            "\nmatmul 1024^3 (candle -> gemm, {} threads): {gemm:.1} GFLOP/s",
            threads()
        );
        println!(
            "FMA peak: f_tile on cached data x {} threads = {peak:.0} GFLOP/s; {tiles}",
            threads()
        );
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9}   (GFLOP/s; % of the FMA peak in brackets)",
            "conv (batch 128)", "fwd", "bwd d+w", "bwd w", "bwd d", "stock fwd", "stock bwd"
        );
    }
    let batch = 128;
    // (label, cin, hw, cout, stride)
    let layers = [
        ("stem 3->16 32x32", 3, 32, 16, 1),
        ("16->16 32x32", 16, 32, 16, 1),
        ("16->32 32x32 s2", 16, 32, 32, 2),
        ("32->32 16x16", 32, 16, 32, 1),
        ("32->64 16x16 s2", 32, 16, 64, 2),
        ("64->64 8x8", 64, 8, 64, 1),
    ];
    let mut rows = Vec::new();
    for (label, cin, hw, cout, stride) in layers {
        let g = Geom::new(batch, cin, hw, hw, cout, 3, stride, 1).expect("geometry");
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, g.n * cin * hw * hw, &dev)?.to_vec1()?;
        let w: Vec<f32> = Tensor::randn(0f32, 0.1, cout * cin * 9, &dev)?.to_vec1()?;
        let dyv: Vec<f32> = Tensor::randn(0f32, 1.0, g.n * cout * g.p(), &dev)?.to_vec1()?;
        let mut y = vec![0f32; g.n * cout * g.p()];
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; w.len()];
        let img = cout * g.p();
        let flop = 2.0 * g.macs() as f64 / 1e9;
        let t_f = time_it(0.3, || conv::forward(&g, &x, &w, &mut y, |_, _| {}));
        let t_dw = time_it(0.3, || {
            conv::backward(
                &g,
                &x,
                &w,
                None,
                &mut dw,
                |n, b| b.copy_from_slice(&dyv[n * img..][..img]),
                |_, _| {},
            )
        });
        let t_b = time_it(0.3, || {
            conv::backward(
                &g,
                &x,
                &w,
                Some(&mut dx),
                &mut dw,
                |n, b| b.copy_from_slice(&dyv[n * img..][..img]),
                |_, _| {},
            )
        });
        // Stock: candle's conv2d and its autograd backward (conv_transpose2d + weight conv).
        let xt = Var::from_tensor(&Tensor::from_vec(x.clone(), (g.n, cin, hw, hw), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::from_vec(w.clone(), (cout, cin, 3, 3), &dev)?)?;
        let r = Tensor::from_vec(dyv.clone(), (g.n, cout, g.ho, g.wo), &dev)?;
        let s_f = time_it(0.3, || {
            xt.as_tensor()
                .conv2d(wt.as_tensor(), 1, stride, 1, 1)
                .unwrap();
        });
        let s_fb = time_it(0.3, || {
            let y = xt
                .as_tensor()
                .conv2d(wt.as_tensor(), 1, stride, 1, 1)
                .unwrap();
            (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        });
        let s_b = (s_fb - s_f).max(1e-9);
        let gf = |t: f64, passes: f64| flop * passes / t;
        let pct = |v: f64| format!("{v:.0} ({:.0}%)", 100.0 * v / peak);
        if !json {
            println!(
                "{label:<28} {:>9} {:>9} {:>9} {:>9} | {:>9.0} {:>9.0}",
                pct(gf(t_f, 1.0)),
                pct(gf(t_b, 2.0)),
                pct(gf(t_dw, 1.0)),
                pct(gf((t_b - t_dw).max(1e-9), 1.0)),
                gf(s_f, 1.0),
                gf(s_b, 2.0)
            );
        }
        rows.push(serde_json::json!({
            "layer": label, "fwd": gf(t_f, 1.0), "bwd": gf(t_b, 2.0), "bwd_w": gf(t_dw, 1.0),
            "bwd_d": gf((t_b - t_dw).max(1e-9), 1.0), "stock_fwd": gf(s_f, 1.0), "stock_bwd": gf(s_b, 2.0),
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"matmul_gemm_gflops": gemm, "fma_peak_gflops": peak, "tiles": tiles,
                "threads": threads(), "convs": rows})
        );
    }
    Ok(())
}

/// Single-thread GFLOP/s of the two inner tiles on cache-resident data: the practical peak of
/// this core's vector unit (best of many runs).
fn tiles_report() -> serde_json::Value {
    use sc_models::custom_ops::micro;
    let isa = micro::isa();
    let s_len = 288;
    let a = vec![0.5f32; s_len * 8];
    let b = vec![0.25f32; 4096];
    let offs: Vec<isize> = (0..s_len).map(|s| ((s * 7) % 2000) as isize).collect();
    let mut out = vec![0f32; 8 * 48];
    let reps = 200;
    let t = time_it(0.3, || {
        for _ in 0..reps {
            // SAFETY: every offset + 48 < b.len(); a holds 8·s_len values; out 8 rows of 48.
            unsafe { micro::f_tile(isa, 3, a.as_ptr(), &offs, b.as_ptr(), out.as_mut_ptr(), 48) };
        }
    });
    let f_gflops = (2 * 8 * 48 * s_len * reps) as f64 / t / 1e9;
    let x = vec![0.5f32; 4096];
    let xo: [isize; micro::DOT_R] = std::array::from_fn(|r| [0, 1, 2, 40, 41, 42][r]);
    // Gradient rows 64-byte aligned, as the backward pass lays them out.
    let align = (16 - (b.as_ptr() as usize / 4) % 16) % 16;
    let dof: [isize; micro::DOT_C] = std::array::from_fn(|c| (align + 112 + 304 * c) as isize);
    let mut acc = vec![0f32; micro::DOT_R * micro::DOT_C];
    let nv = 64;
    let t = time_it(0.3, || {
        for _ in 0..reps {
            // SAFETY: every row offset + 16·nv < 4096; acc holds DOT_R x DOT_C values.
            unsafe {
                micro::dot_tile(
                    isa,
                    &[x.as_ptr()],
                    &xo,
                    &[b.as_ptr()],
                    &dof,
                    nv,
                    acc.as_mut_ptr(),
                    micro::DOT_C,
                )
            };
        }
    });
    let d_gflops = (2 * micro::DOT_R * micro::DOT_C * 16 * nv * reps) as f64 / t / 1e9;
    serde_json::json!({"isa": format!("{isa:?}"), "f_tile_gflops_1thread": f_gflops, "dot_tile_gflops_1thread": d_gflops})
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--tiles") {
        println!("{}", tiles_report());
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1], args[2].parse()?);
    }
    let json = args.iter().any(|a| a == "--json");
    let no_ops = args.iter().any(|a| a == "--no-ops");
    let configs = args
        .iter()
        .position(|a| a == "--configs")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| DEFAULT_CONFIGS.to_string());
    let exe = std::env::current_exe()?;
    if !json {
        println!(
            "sc-trainer train step, synthetic 3x32x32, {} threads, kernels: {}",
            threads(),
            if sc_models::custom_ops::stock_forced() {
                "candle stock (SC_STOCK_KERNELS)"
            } else {
                "sc-models CPU kernels"
            }
        );
        println!(
            "{:<10} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "model", "batch", "images/s", "step ms", "fwd ms", "bwd ms", "sgd ms", "peak MB"
        );
    }
    for cfg in configs.split(',') {
        let (model, batch) = cfg
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("config {cfg}: MODEL:BATCH"))?;
        let out = Command::new(&exe)
            .args(["--child", model, batch])
            .output()?;
        if !out.status.success() {
            anyhow::bail!("{cfg}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if json {
            println!("{line}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<10} {:>6} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0}",
                model,
                batch,
                f("images_per_second"),
                f("step_ms"),
                f("forward_ms"),
                f("backward_ms"),
                f("optimizer_ms"),
                f("peak_rss_mb")
            );
        }
    }
    if !no_ops {
        ops_report(json)?;
    }
    Ok(())
}

//! The training loop end to end on small generated data.

mod common;

use sc_trainer::run_dir::Outcome;
use sc_trainer::train::{fit, FitOptions};

fn quiet() -> FitOptions {
    FitOptions {
        progress: false,
        command: vec!["test".into()],
        ..FitOptions::default()
    }
}

fn metric_rows(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The loss/accuracy fields only (timings differ between runs).
fn learning_curve(dir: &std::path::Path) -> Vec<(u64, Option<f64>, Option<f64>, Option<f64>)> {
    metric_rows(dir)
        .iter()
        .map(|r| {
            (
                r["iter"].as_u64().unwrap(),
                r.get("loss").and_then(|v| v.as_f64()),
                r.get("val_loss").and_then(|v| v.as_f64()),
                r.get("lr").and_then(|v| v.as_f64()),
            )
        })
        .collect()
}

#[test]
fn tiny_fit_lowers_the_loss_and_writes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(&tmp.path().join("data").tap_mkdir(), 400, 12, 4, 1);
    let cfg = common::tiny_config(&data, 40);
    let run = tmp.path().join("run");
    let s = fit(cfg, &run, &quiet()).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert_eq!(s.iterations, 40);
    for f in [
        "config.json",
        "run.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "state.json",
        "summary.json",
        "model.onnx",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let rows = metric_rows(&run);
    let losses: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get("loss").and_then(|v| v.as_f64()))
        .collect();
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.6 * first, "loss did not fall: {first} -> {last}");
    // 4 classes: chance is 25%.
    assert!(
        s.final_val_acc.unwrap() > 0.6,
        "val acc {:?}",
        s.final_val_acc
    );
}

#[test]
fn same_seed_same_metrics_and_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(&tmp.path().join("data").tap_mkdir(), 300, 12, 4, 2);
    let cfg = common::tiny_config(&data, 20);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    fit(cfg.clone(), &a, &quiet()).unwrap();
    fit(cfg.clone(), &b, &quiet()).unwrap();
    assert_eq!(
        learning_curve(&a),
        learning_curve(&b),
        "same seed, different metrics"
    );

    // Stop at 7 (checkpoints every 5 and at the stop), then resume twice.
    let mut opts = quiet();
    opts.stop_after = Some(7);
    let s = fit(cfg.clone(), &c, &opts).unwrap();
    assert_eq!((s.outcome, s.iterations), (Outcome::Interrupted, 7));
    opts.resume = true;
    opts.stop_after = Some(13);
    let cfg_c = sc_trainer::run_dir::read_config(&c).unwrap();
    assert_eq!(fit(cfg_c.clone(), &c, &opts).unwrap().iterations, 13);
    opts.stop_after = None;
    let s = fit(cfg_c, &c, &opts).unwrap();
    assert_eq!((s.outcome, s.iterations), (Outcome::Finished, 20));
    assert_eq!(
        learning_curve(&a),
        learning_curve(&c),
        "resumed run differs"
    );
    // Every validation carries the training seconds so far, evaluations left out: rising across
    // the resumed run's three sessions, never past its total (which counts the evaluations).
    let train_s: Vec<f64> = metric_rows(&c)
        .iter()
        .filter(|r| r.get("val_acc").is_some())
        .map(|r| r["train_s"].as_f64().unwrap())
        .collect();
    assert_eq!(train_s.len(), 4, "{train_s:?}");
    assert!(
        train_s[0] > 0.0 && train_s.windows(2).all(|w| w[0] < w[1]),
        "{train_s:?}"
    );
    assert!(
        train_s[3] < s.train_seconds,
        "{train_s:?} vs {}",
        s.train_seconds
    );
    let wa =
        candle_core::safetensors::load(a.join("checkpoint.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let wc =
        candle_core::safetensors::load(c.join("checkpoint.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(wa.len(), wc.len());
    for (k, t) in &wa {
        let d = (t - &wc[k])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k} differs after resume");
    }

    // A run directory restored with its checkpoint only (no metrics.jsonl, as the budget
    // experiment commits it): the run resumes and ends as the uninterrupted one.
    let d = tmp.path().join("d");
    let mut opts = quiet();
    opts.stop_after = Some(7);
    fit(cfg.clone(), &d, &opts).unwrap();
    std::fs::remove_file(d.join("metrics.jsonl")).unwrap();
    std::fs::remove_file(d.join("checkpoint.prev.safetensors")).ok();
    opts.resume = true;
    opts.stop_after = None;
    let s = fit(cfg, &d, &opts).unwrap();
    assert_eq!((s.outcome, s.iterations), (Outcome::Finished, 20));
    let (full, restored) = (learning_curve(&a), learning_curve(&d));
    assert!(
        !restored.is_empty() && full.ends_with(&restored),
        "{restored:?} vs {full:?}"
    );
}

#[test]
fn refuses_to_overwrite_and_falls_back_to_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(&tmp.path().join("data").tap_mkdir(), 200, 12, 4, 3);
    let cfg = common::tiny_config(&data, 10);
    let run = tmp.path().join("run");
    let mut opts = quiet();
    opts.stop_after = Some(6);
    fit(cfg.clone(), &run, &opts).unwrap();
    let e = fit(cfg.clone(), &run, &quiet()).unwrap_err().to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    // Damage the latest checkpoint: the previous one (iteration 5) is used, with a warning.
    std::fs::write(run.join("checkpoint.safetensors"), b"garbage").unwrap();
    let l = sc_trainer::checkpoint::load(&run, &candle_core::Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(l.state.iteration, 5);
    opts.resume = true;
    opts.stop_after = None;
    let s = fit(cfg, &run, &opts).unwrap();
    assert_eq!(s.iterations, 10);
}

#[test]
fn divergence_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(&tmp.path().join("data").tap_mkdir(), 200, 12, 4, 4);
    let mut cfg = common::tiny_config(&data, 30);
    cfg.schedule =
        sc_trainer::schedule::Schedule::Constant(sc_trainer::schedule::Constant { lr: 1e6 });
    let run = tmp.path().join("run");
    let e = fit(cfg, &run, &quiet()).unwrap_err().to_string();
    assert!(
        e.contains("diverged at iteration") && e.contains("learning rate"),
        "{e}"
    );
    assert!(e.contains("lr-find"), "{e}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["outcome"], "diverged");
}

#[test]
fn cifar_binary_data_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_cifar(&tmp.path().join("c").tap_mkdir(), 20);
    let mut cfg = common::tiny_config(&data, 3);
    cfg.data.val_size = 20;
    cfg.batch_size = 8;
    let s = fit(cfg, &tmp.path().join("run"), &quiet()).unwrap();
    assert_eq!(s.iterations, 3);
    let info = sc_trainer::run_dir::read_run_info(&tmp.path().join("run")).unwrap();
    assert_eq!(
        (info.arch.in_channels, info.arch.height, info.train_images),
        (3, 32, 80)
    );
    assert_eq!(info.class_names[0], "airplane");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// `precision = "bf16"` on a CPU with AVX512_BF16: the convolutions' products run in bf16 (the
/// run differs from the f32 one from its first step), it still learns, and the run's config and
/// its model's recipe say bf16. On other CPUs the refusal is checked in tests/cli.rs.
#[test]
fn bf16_on_the_cpu_trains_and_is_recorded() {
    if let Err(e) = sc_kernels::bf16::check() {
        eprintln!("skipped: {e}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(&tmp.path().join("data").tap_mkdir(), 400, 12, 4, 1);
    let cfg = common::tiny_config(&data, 40);
    let mut bf = cfg.clone();
    bf.precision = sc_trainer::config::Precision::Bf16;
    let (a, b) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    fit(cfg, &a, &quiet()).unwrap();
    let s = fit(bf, &b, &quiet()).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let (la, lb) = (learning_curve(&a), learning_curve(&b));
    assert_ne!(
        la[0].1, lb[0].1,
        "the first loss is the f32 one: bf16 was not used"
    );
    assert!(s.final_val_acc.unwrap() > 0.6, "{:?}", s.final_val_acc);
    let config = std::fs::read_to_string(b.join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
    let model = std::fs::read(b.join("model.onnx")).unwrap();
    let text = String::from_utf8_lossy(&model);
    assert!(
        text.contains("\"precision\":\"bf16\""),
        "the model's recipe lacks the precision"
    );
}

//! The short-budget recipe's pieces (issue 35): label smoothing, zero-init of each residual
//! branch's last BatchNorm scale, and training on every image (`val_size = 0`).

mod common;

use candle_core::{Device, Tensor};
use sc_trainer::config::TrainConfig;
use sc_trainer::run_dir::Outcome;
use sc_trainer::train::{fit, smoothed_cross_entropy, FitOptions, Net};

fn quiet() -> FitOptions {
    FitOptions {
        progress: false,
        command: vec!["test".into()],
        ..FitOptions::default()
    }
}

#[test]
fn label_smoothing_is_pytorch_s_and_zero_is_the_plain_cross_entropy() {
    let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.1, 0.2, 3.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let plain = candle_nn::loss::cross_entropy(&logits, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let at = |eps: f64| {
        smoothed_cross_entropy(&logits, &labels, eps)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!((at(0.0) - plain).abs() < 1e-6, "{} vs {plain}", at(0.0));
    // By hand: targets (1 - eps) one-hot + eps / 3, loss -sum t log softmax, batch mean.
    let rows: [([f32; 3], usize); 2] = [([2.0, 0.5, -1.0], 0), ([0.1, 0.2, 3.0], 1)];
    let eps = 0.1f32;
    let mut want = 0.0;
    for (z, y) in rows {
        let lse = z.iter().map(|v| v.exp()).sum::<f32>().ln();
        for (k, zk) in z.iter().enumerate() {
            let t = eps / 3.0 + if k == y { 1.0 - eps } else { 0.0 };
            want -= t * (zk - lse);
        }
    }
    want /= 2.0;
    assert!((at(0.1) - want).abs() < 1e-5, "{} vs {want}", at(0.1));
    assert!(at(0.1) > plain, "smoothing costs confident right answers");
}

#[test]
fn zero_init_residual_zeroes_every_branch_s_last_scale_only() {
    let arch = sc_models::ArchConfig::resnet(20, 3, 32, 32, 10).unwrap();
    let net = Net::new(&arch, 0, &Device::Cpu).unwrap();
    net.zero_residual_gammas().unwrap();
    let (mut zeroed, mut ones) = (0, 0);
    for (name, t) in net.tensors() {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if name.ends_with("bn2.weight") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
            zeroed += 1;
        } else if name.ends_with("bn1.weight") {
            assert!(v.iter().all(|&x| x == 1.0), "{name}");
            ones += 1;
        }
    }
    // ResNet-20: 9 blocks, each with bn1 and bn2, and the stem's bn1.
    assert_eq!((zeroed, ones), (9, 10));
}

#[test]
fn the_pieces_train_on_every_image_and_are_recorded_only_when_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(tmp.path(), 120, 8, 3, 5);
    let mut cfg = common::tiny_config(&data, 6);
    // Off: the serialized config has none of the new fields (older run names stay).
    let json = serde_json::to_string(&cfg).unwrap();
    for key in ["label_smoothing", "zero_init_residual"] {
        assert!(!json.contains(key), "{key}: {json}");
    }
    cfg.label_smoothing = 0.1;
    cfg.model.zero_init_residual = true;
    cfg.data.val_size = 0;
    let dir = tmp.path().join("run");
    let s = fit(cfg.clone(), &dir, &quiet()).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert_eq!(s.final_val_acc, None, "no validation split");
    assert!(dir.join("model.onnx").exists());
    let saved: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved.label_smoothing, 0.1);
    assert!(saved.model.zero_init_residual);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["train_images"], 120, "every image trains");
    assert_eq!(info["val_images"], 0);
    // Out of range: refused before any work.
    for bad in [1.0, -0.1, f64::NAN] {
        let mut c = cfg.clone();
        c.label_smoothing = bad;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("label_smoothing"), "{e}");
    }
}

fn averaged(dir: &std::path::Path, iterations: usize) -> TrainConfig {
    let mut cfg = common::tiny_config(dir, iterations);
    cfg.ema = Some(sc_trainer::ema::EmaConfig {
        decay: 0.8,
        every: 2,
        start: 0.3,
    });
    cfg
}

fn checkpoint_tensors(
    dir: &std::path::Path,
) -> (
    std::collections::HashMap<String, Vec<f32>>,
    std::collections::HashMap<String, Vec<f32>>,
) {
    let l = sc_trainer::checkpoint::load(dir, &Device::Cpu)
        .unwrap()
        .unwrap();
    let flat = |m: &std::collections::HashMap<String, Tensor>| {
        m.iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect()
    };
    (flat(&l.weights), flat(&l.average))
}

#[test]
fn weight_averaging_is_what_validates_and_ships_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::make_idx(tmp.path(), 120, 8, 3, 6);
    let cfg = averaged(&data, 12);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains(r#""ema":{"decay":0.8,"every":2,"start":0.3}"#),
        "{json}"
    );

    let straight = tmp.path().join("straight");
    fit(cfg.clone(), &straight, &quiet()).unwrap();
    let (weights, average) = checkpoint_tensors(&straight);
    assert_eq!(weights.len(), average.len(), "every variable is averaged");
    assert!(
        weights.iter().any(|(k, w)| average[k] != *w),
        "the average differs from the last weights"
    );
    // The export is the average: `sc-trainer export` of the checkpoint writes fit's file again.
    let again = tmp.path().join("again.onnx");
    sc_trainer::export::export_run(&straight, Some(again.clone())).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(straight.join("model.onnx")).unwrap()
    );

    // Stopped after 5 iterations (mid-averaging) and resumed: the same weights and average.
    let split = tmp.path().join("split");
    let stop = FitOptions {
        stop_after: Some(5),
        ..quiet()
    };
    let s = fit(cfg.clone(), &split, &stop).unwrap();
    assert_eq!(s.outcome, Outcome::Interrupted);
    let resume = FitOptions {
        resume: true,
        ..quiet()
    };
    fit(cfg, &split, &resume).unwrap();
    assert_eq!(checkpoint_tensors(&split), (weights, average));
}

//! Train tiny -> export -> evaluate with the runtime -> compare with the trainer's own evaluation.

use std::path::Path;

use candle_core::Device;
use sc_runtime::data::{write, Dataset, Split};
use sc_runtime::Classifier;
use sc_trainer::run_dir::read_run_info;
use sc_trainer::train::{fit, FitOptions, Net};

mod common;

/// CIFAR-10 records whose class is a colour (with noise), so a tiny net learns them quickly.
fn cifar_dir(dir: &Path) {
    let record = common::cifar_record;
    for b in 1..=5 {
        let recs: Vec<_> = (0..60).map(|i| record(i + 60 * b)).collect();
        write::cifar10(&dir.join(format!("data_batch_{b}.bin")), &recs).unwrap();
    }
    let test: Vec<_> = (0..50).map(|i| record(i + 7)).collect();
    write::cifar10(&dir.join("test_batch.bin"), &test).unwrap();
}

/// ResNet-8, batches of 25, 50 validation images.
fn tiny_config(data: &Path, iterations: usize) -> sc_trainer::config::TrainConfig {
    let mut cfg = sc_trainer::config::TrainConfig::default();
    cfg.model.name = "resnet8".into();
    cfg.data.path = data.to_path_buf();
    cfg.data.val_size = 50;
    cfg.batch_size = 25;
    cfg.iterations = Some(iterations);
    cfg.epochs = None;
    cfg
}

#[test]
fn runtime_accuracy_equals_the_trainers_on_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    std::fs::create_dir(&data).unwrap();
    cifar_dir(&data);
    let mut cfg = tiny_config(&data, 60);
    cfg.eval_every = 20;
    cfg.schedule = sc_trainer::schedule::Schedule::paper_one_cycle(0.05, 0.4);
    let run = tmp.path().join("run");
    let opts = FitOptions {
        progress: false,
        ..FitOptions::default()
    };
    let summary = fit(cfg, &run, &opts).unwrap();

    // The trainer's evaluation of its final weights on the test batch.
    let info = read_run_info(&run).unwrap();
    let net = Net::new(&info.arch, 0, &Device::Cpu).unwrap();
    let ckpt = sc_trainer::checkpoint::load(&run, &Device::Cpu)
        .unwrap()
        .unwrap();
    sc_trainer::checkpoint::restore(&net.vars(), &ckpt.weights, &ckpt.file).unwrap();
    let test = Dataset::open(&data, Split::Test).unwrap();
    let x = sc_trainer::data::normalize_all(&test, &info.normalization);
    let y: Vec<u32> = test.labels.iter().map(|&l| l as u32).collect();
    let (_, trainer_acc) = net.evaluate(&x, &y, (3, 32, 32), 17).unwrap();

    // The runtime's, from the exported file alone.
    // The native executor (forced: the load-time timing may pick either on a loaded machine).
    let clf = Classifier::load(run.join("model.onnx"))
        .unwrap()
        .with_native()
        .unwrap();
    assert_eq!(clf.classes()[0], "airplane");
    assert!(clf.executor().starts_with("native"), "{}", clf.executor());
    let eval = clf.evaluate(&test).unwrap();
    assert_eq!(eval.images, 50);
    assert_eq!(
        eval.accuracy, trainer_acc,
        "runtime {} vs trainer {}",
        eval.accuracy, trainer_acc
    );
    // tract's executor on the same file gives the same answers.
    let tract = Classifier::load(run.join("model.onnx"))
        .unwrap()
        .with_tract();
    assert_eq!(tract.evaluate(&test).unwrap().accuracy, eval.accuracy);
    // And the export's recorded validation accuracy is the trainer's last one.
    assert!(clf.metadata().is_some(), "our export carries sc.* metadata");
    let onnx = std::fs::read(run.join("model.onnx")).unwrap();
    let text = String::from_utf8_lossy(&onnx);
    assert!(text.contains(&format!("{:.6}", summary.final_val_acc.unwrap())));
    // The run's validation images, written by `sc-trainer data holdout`, give the runtime the
    // validation accuracy the trainer recorded (the figure a model card quotes).
    let val = tmp.path().join("val.bin");
    let h = sc_trainer::data::write_holdout(&run, None, &val).unwrap();
    assert_eq!((h.images, h.classes), (50, 10));
    let v = clf
        .evaluate(&Dataset::open(&val, Split::Test).unwrap())
        .unwrap();
    assert_eq!(v.images, 50);
    assert!(
        (v.accuracy - summary.final_val_acc.unwrap()).abs() < 1e-9,
        "runtime {} on the holdout vs the trainer's validation {:?}",
        v.accuracy,
        summary.final_val_acc
    );
    // Above chance: the pipeline learns, so the comparison is not between two constant answers.
    assert!(
        eval.accuracy > 0.3,
        "accuracy {} (val {:?})",
        eval.accuracy,
        summary.final_val_acc
    );
}

#[test]
fn export_command_rewrites_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    std::fs::create_dir(&data).unwrap();
    cifar_dir(&data);
    let cfg = tiny_config(&data, 4);
    let run = tmp.path().join("run");
    fit(
        cfg,
        &run,
        &FitOptions {
            progress: false,
            ..FitOptions::default()
        },
    )
    .unwrap();
    let out = sc_trainer::export::export_run(&run, Some(tmp.path().join("again.onnx"))).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(run.join("model.onnx")).unwrap()
    );
}

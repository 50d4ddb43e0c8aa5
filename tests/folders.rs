//! Folders of the user's own images, end to end: CIFAR-format records written out as PNG/JPEG
//! class folders -> the same images as the binary batches -> fit -> export (with
//! `sc.preprocess`) -> `eval` on the folder with per-class accuracy -> `predict` on a larger photo
//! fitted exactly as the trainer fitted the folder.

use std::path::Path;

use image::{DynamicImage, RgbImage};
use sc_runtime::data::{write, Dataset, Split};
use sc_runtime::Classifier;
use sc_trainer::train::{fit, FitOptions};

mod common;
use common::cifar_record as record;

use sc_runtime::data::CIFAR10_CLASSES as CLASSES;

fn to_rgb(px: &[u8]) -> RgbImage {
    sc_runtime::data_images::from_planar(px, 32, 32)
}

/// Writes records as `dir/<class>/<name>.<ext>`.
fn write_folder(dir: &Path, recs: &[(u8, Vec<u8>)], ext: &str) {
    for (i, (c, px)) in recs.iter().enumerate() {
        let p = dir.join(CLASSES[*c as usize]).join(format!("{i:05}.{ext}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        to_rgb(px).save(&p).unwrap();
    }
}

#[test]
fn a_png_folder_holds_exactly_the_binary_batches_images() {
    let tmp = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..300).map(record).collect();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in 1..=5 {
        write::cifar10(
            &bin.join(format!("data_batch_{b}.bin")),
            &recs[(b - 1) * 60..b * 60],
        )
        .unwrap();
    }
    write::cifar10(&bin.join("test_batch.bin"), &recs[..10]).unwrap();
    let folder = tmp.path().join("folder");
    write_folder(&folder, &recs, "png");
    let a = Dataset::open(&bin, Split::Train).unwrap();
    let b = Dataset::open(&folder, Split::Train).unwrap();
    assert_eq!(b.class_names, CLASSES);
    // The same (label, pixels) pairs, in another order (class folders, then file names).
    let pairs = |d: &Dataset| {
        let mut v: Vec<(u8, Vec<u8>)> = (0..d.len())
            .map(|i| (d.labels[i], d.image(i).to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(pairs(&a), pairs(&b));
}

#[test]
fn train_on_a_folder_then_eval_and_predict_with_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    // train/ as JPEG, val/ and test/ as PNG: both decoders, and a split layout.
    write_folder(
        &data.join("train"),
        &(0..400).map(record).collect::<Vec<_>>(),
        "jpg",
    );
    write_folder(
        &data.join("val"),
        &(1000..1060).map(record).collect::<Vec<_>>(),
        "png",
    );
    write_folder(
        &data.join("test"),
        &(2000..2050).map(record).collect::<Vec<_>>(),
        "png",
    );
    let mut cfg = sc_trainer::config::TrainConfig::default();
    cfg.model.name = "resnet8".into();
    cfg.data.path = data.clone();
    cfg.batch_size = 25;
    cfg.iterations = Some(60);
    cfg.epochs = None;
    cfg.eval_every = 30;
    cfg.test_eval = true;
    cfg.schedule = sc_trainer::schedule::Schedule::paper_one_cycle(0.05, 0.4);
    let run = tmp.path().join("run");
    let summary = fit(
        cfg,
        &run,
        &FitOptions {
            progress: false,
            ..FitOptions::default()
        },
    )
    .unwrap();
    let info = sc_trainer::run_dir::read_run_info(&run).unwrap();
    // Validated on val/ (not a hold-out of train/), every training image used.
    assert_eq!((info.train_images, info.val_images), (400, 60));
    assert_eq!(info.class_names, CLASSES);
    assert!(summary.test_acc.is_some());
    assert!(
        data.join(".sc-cache").is_dir(),
        "decoded once into the cache"
    );

    let clf = Classifier::load(run.join("model.onnx")).unwrap();
    let meta = clf.metadata().unwrap();
    assert_eq!(
        meta.preprocess.as_ref().map(|p| p.resize),
        Some(sc_runtime::metadata::Resize::ShorterSideCenterCrop)
    );
    // The runtime evaluates the test/ folder: the trainer's own test accuracy, per class too.
    let test = clf.open_test_set(&data, false).unwrap();
    let eval = clf.evaluate(&test).unwrap();
    assert_eq!(eval.images, 50);
    assert!(
        (eval.accuracy - summary.test_acc.unwrap()).abs() < 1e-9,
        "runtime {} vs trainer {:?}",
        eval.accuracy,
        summary.test_acc
    );
    assert_eq!(eval.per_class.len(), 10);
    assert_eq!(eval.per_class.iter().map(|c| c.total).sum::<u64>(), 50);
    assert!(
        eval.accuracy > 0.3,
        "the pipeline learns: {}",
        eval.accuracy
    );

    // predict on a 96x64 photo: the shorter side to 32, the centre square, as the folder was.
    let (_, px) = record(2003);
    let small = to_rgb(&px);
    let big = image::imageops::resize(&small, 48, 32, image::imageops::FilterType::Nearest);
    let big = image::imageops::resize(&big, 96, 64, image::imageops::FilterType::Nearest);
    let photo = DynamicImage::ImageRgb8(big);
    let fitted = sc_runtime::data_images::fit_square(&photo, 32).unwrap();
    let direct = clf.logits(&[DynamicImage::ImageRgb8(fitted)]).unwrap();
    let via_predict = clf.logits(&[photo]).unwrap();
    assert_eq!(
        direct, via_predict,
        "predict fits a photo as the trainer fitted the folder"
    );

    // A folder whose class is not the model's: a clear error naming it.
    let other = tmp.path().join("other");
    write_folder(&other, &(0..20).map(record).collect::<Vec<_>>(), "png");
    std::fs::rename(other.join("cat"), other.join("tiger")).unwrap();
    let e = clf.open_test_set(&other, false).unwrap_err().to_string();
    assert!(
        e.contains("tiger") && e.contains("not one of the model's classes"),
        "{e}"
    );
}

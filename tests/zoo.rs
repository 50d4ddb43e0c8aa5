//! The shipped models (`zoo/`): each file is the one its index describes, loads in the runtime
//! with the metadata its card quotes, and gives the same answers in both executors.

use std::path::Path;

use sc_runtime::Classifier;
use sha2::{Digest, Sha256};

fn zoo() -> (std::path::PathBuf, Vec<serde_json::Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zoo");
    let index = dir.join("zoo.json");
    let text = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("{}: {e} (the zoo is committed)", index.display()));
    let models: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!models.is_empty(), "{}: no models", index.display());
    (dir, models)
}

/// Checks that the file index entry `m` names is in `dir` with the entry's size and SHA-256, and
/// that `card` lists it; returns its name.
fn is_indexed_file<'a>(dir: &Path, m: &'a serde_json::Value, card: &str) -> &'a str {
    let file = m["file"].as_str().unwrap();
    let bytes = std::fs::read(dir.join(file)).unwrap();
    assert_eq!(bytes.len() as u64, m["bytes"].as_u64().unwrap(), "{file}");
    assert_eq!(
        format!("{:x}", Sha256::digest(&bytes)),
        m["sha256"].as_str().unwrap(),
        "{file}: not the file the index describes"
    );
    assert!(card.contains(file), "the card does not list {file}");
    file
}

/// A few deterministic pictures: smooth colour fields with a little texture.
fn pictures() -> Vec<image::DynamicImage> {
    (0..4u32)
        .map(|k| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 32, |x, y| {
                let v = |a: u32, b: u32| ((a * x + b * y + 37 * k) % 256) as u8;
                image::Rgb([v(3, 5), v(7, 2), v(1 + k, 9)])
            }))
        })
        .collect()
}

#[test]
fn every_zoo_model_is_the_file_its_index_and_card_describe() {
    let (dir, models) = zoo();
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for m in &models {
        let file = is_indexed_file(&dir, m, &card);
        let val = m["val_acc"].as_f64().unwrap();
        assert!(
            card.contains(&format!("{:.2} %", 100.0 * val)),
            "the card does not quote {file}'s {val}"
        );

        let clf = Classifier::load(dir.join(file)).unwrap();
        assert_eq!(clf.classes().len(), 10, "{file}");
        assert_eq!(
            clf.classes()[3],
            "cat",
            "{file}: CIFAR-10's classes in order"
        );
        let meta = clf.metadata().expect("our export carries sc.* metadata");
        let recorded = meta
            .val_accuracy
            .expect("the export records its validation accuracy");
        assert!(
            (recorded - val).abs() < 1e-6,
            "{file}: the file says {recorded}, the index {val}"
        );
    }
}

#[test]
fn zoo_models_answer_the_same_in_both_executors() {
    let (dir, models) = zoo();
    let images = pictures();
    for m in &models {
        let file = m["file"].as_str().unwrap();
        let native = Classifier::load(dir.join(file))
            .unwrap()
            .with_native()
            .unwrap_or_else(|e| panic!("{file}: the native executor refused it: {e}"));
        let tract = Classifier::load(dir.join(file)).unwrap().with_tract();
        let (a, b) = (
            native.logits(&images).unwrap(),
            tract.logits(&images).unwrap(),
        );
        assert_eq!((a.len(), b.len()), (images.len(), images.len()), "{file}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = y.iter().fold(1f32, |s, v| s.max(v.abs()));
            for (p, q) in x.iter().zip(y) {
                assert!(
                    (p - q).abs() <= 1e-3 * scale,
                    "{file}, image {i}: native {x:?} vs tract {y:?}"
                );
            }
        }
    }
}

/// The int8 files (`zoo/int8.json`, `zoo/INT8.md`, written by `scripts/zoo-int8.sh`): each is the
/// file its index describes, made from a float model of the zoo, quoted in its card, and runs on
/// the native int8 executor with tract's answers.
#[test]
fn zoo_int8_files_are_indexed_and_run_natively_with_tracts_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zoo");
    let index: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("int8.json")).unwrap()).unwrap();
    let card = std::fs::read_to_string(dir.join("INT8.md")).unwrap();
    let (_, float_models) = zoo();
    assert_eq!(
        index.len(),
        float_models.len(),
        "one int8 file per float model"
    );
    let images = pictures();
    for m in &index {
        let file = is_indexed_file(&dir, m, &card);
        let from = m["from"].as_str().unwrap();
        assert!(
            float_models.iter().any(|f| f["file"] == from),
            "{file}: from {from}?"
        );
        let acc = m["val_acc_int8"].as_f64().unwrap();
        assert!(
            card.contains(&format!("**{:.2} %**", 100.0 * acc)),
            "the card does not quote {file}'s {acc}"
        );
        let native = Classifier::load(dir.join(file))
            .unwrap()
            .with_native()
            .unwrap_or_else(|e| panic!("{file}: the native int8 executor refused it: {e}"));
        assert!(native.executor().contains("int8"), "{}", native.executor());
        let tract = Classifier::load(dir.join(file)).unwrap().with_tract();
        let (a, b) = (
            native.logits(&images).unwrap(),
            tract.logits(&images).unwrap(),
        );
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = y.iter().fold(1f32, |s, v| s.max(v.abs()));
            let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                d <= 0.05 * scale,
                "{file}, image {i}: native {x:?} vs tract {y:?}"
            );
            assert_eq!(argmax(x), argmax(y), "{file}, image {i}");
        }
    }
}

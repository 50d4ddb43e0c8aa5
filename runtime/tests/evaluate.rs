//! evaluate on CIFAR binary and IDX files made here: accuracy, per-class accuracy, confusion
//! matrix; the same answers from any number of threads sharing one classifier.

mod common;

use std::sync::Arc;

use common::{solid_cifar, Tiny};
use image::{DynamicImage, ImageBuffer, Rgb};
use sc_runtime::data::write;
use sc_runtime::{Classifier, Dataset, Split};

const RGB: [&str; 3] = ["red", "green", "blue"];

/// 10 records: 4 red (label 0), 2 green (1), 1 blue wrongly labelled green (1), 3 blue (2).
fn cifar_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for _ in 0..4 {
        records.push((0, solid_cifar([200, 10, 10])));
    }
    for _ in 0..2 {
        records.push((1, solid_cifar([10, 200, 10])));
    }
    records.push((1, solid_cifar([10, 10, 200])));
    for _ in 0..3 {
        records.push((2, solid_cifar([10, 10, 200])));
    }
    write::cifar10(&dir.path().join("test_batch.bin"), &records).unwrap();
    dir
}

#[test]
fn cifar_accuracy_per_class_and_confusion() {
    let dir = cifar_dir();
    let data = Dataset::open(dir.path(), Split::Test).unwrap();
    let t = Tiny::ours(3, 32, &RGB);
    for (threads, chunk) in [(1, 1), (2, 1), (3, 4)] {
        let c = Classifier::from_bytes(&t.bytes(), "tiny.onnx")
            .unwrap()
            .with_threads(threads)
            .with_chunk(chunk);
        let e = c.evaluate(&data).unwrap();
        assert_eq!((e.images, e.correct), (10, 9));
        assert!((e.accuracy - 0.9).abs() < 1e-12);
        assert_eq!(
            e.confusion,
            vec![vec![4, 0, 0], vec![0, 2, 1], vec![0, 0, 3]]
        );
        let per: Vec<(u64, u64)> = e.per_class.iter().map(|p| (p.correct, p.total)).collect();
        assert_eq!(per, [(4, 4), (2, 3), (3, 3)]);
        assert_eq!(e.per_class[1].class, "green");
        assert!((e.per_class[1].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!(e.images_per_second > 0.0);
        assert_eq!((e.threads, e.chunk), (threads, chunk));
    }
}

#[test]
fn idx_gray_model() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = (
        dir.path().join("t10k-images-idx3-ubyte.gz"),
        dir.path().join("t10k-labels-idx1-ubyte.gz"),
    );
    // bright, dark, bright, dark(but labelled bright)
    let levels = [250u8, 5, 200, 20];
    let images: Vec<u8> = levels.iter().flat_map(|&v| vec![v; 28 * 28]).collect();
    write::idx(&ip, &lp, 28, 28, &images, &[0, 1, 0, 0]).unwrap();
    let mut t = Tiny::ours(1, 28, &["bright", "dark"]);
    t.weight = vec![10.0, -10.0];
    t.bias = vec![-5.0, 5.0];
    let c = Classifier::from_bytes(&t.bytes(), "gray.onnx").unwrap();
    let data = Dataset::open(dir.path(), Split::Test).unwrap();
    let e = c.evaluate(&data).unwrap();
    assert_eq!(e.confusion, vec![vec![2, 1], vec![0, 1]]);
    assert_eq!(e.correct, 3);
}

#[test]
fn dataset_that_does_not_fit_the_model_is_an_error() {
    let dir = cifar_dir();
    let data = Dataset::open(dir.path(), Split::Test).unwrap();
    let c = Classifier::from_bytes(&Tiny::ours(1, 28, &["a", "b"]).bytes(), "gray.onnx").unwrap();
    let e = c.evaluate(&data).unwrap_err().to_string();
    assert!(e.contains("3x32x32") && e.contains("gray.onnx"), "{e}");
    // labels beyond the model's classes
    let c = Classifier::from_bytes(&Tiny::ours(3, 32, &["a", "b"]).bytes(), "two.onnx").unwrap();
    let e = c.evaluate(&data).unwrap_err().to_string();
    assert!(e.contains("label 2") && e.contains(&data.source), "{e}");
}

#[test]
fn eight_threads_sharing_one_classifier_get_the_serial_results() {
    let dir = cifar_dir();
    let data = Arc::new(Dataset::open(dir.path(), Split::Test).unwrap());
    let t = Tiny::ours(3, 32, &RGB);
    let c = Arc::new(
        Classifier::from_bytes(&t.bytes(), "tiny.onnx")
            .unwrap()
            .with_threads(2),
    );
    let images: Arc<Vec<DynamicImage>> = Arc::new(
        (0..24u32)
            .map(|i| {
                let px = [(i * 10) as u8, (255 - i * 10) as u8, (i * 3) as u8];
                DynamicImage::ImageRgb8(ImageBuffer::from_pixel(8 + i, 20, Rgb(px)))
            })
            .collect(),
    );
    let serial_logits: Vec<Vec<f32>> = images
        .iter()
        .map(|im| c.logits(std::slice::from_ref(im)).unwrap().remove(0))
        .collect();
    let serial_eval = c.evaluate(&data).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let (c, images, data) = (c.clone(), images.clone(), data.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for round in 0..5 {
                    // a different mix per thread: single images and batches
                    if (k + round) % 2 == 0 {
                        out.push(c.logits(&images).unwrap());
                    } else {
                        out.push(
                            (images.iter())
                                .map(|im| c.logits(std::slice::from_ref(im)).unwrap().remove(0))
                                .collect(),
                        );
                    }
                }
                (out, c.evaluate(&data).unwrap())
            })
        })
        .collect();
    for h in handles {
        let (rounds, eval) = h.join().unwrap();
        for logits in rounds {
            assert_eq!(logits, serial_logits, "bit-identical to the serial run");
        }
        assert_eq!(eval.confusion, serial_eval.confusion);
    }
}

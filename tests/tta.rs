//! Flip test-time augmentation (`sc-runtime --tta flip`, `Classifier::with_tta`): each image's
//! logits are the mean of the image's and its left-right mirror's, in both executors, for single
//! images, batches and whole evaluations.

use candle_core::Device;
use sc_models::onnx::{resnet_to_onnx, to_bytes, ExportOptions};
use sc_models::{ArchConfig, Normalization};
use sc_runtime::{Classifier, Tta};
use sc_trainer::train::Net;

const CLASSES: usize = 10;

/// A ResNet-8 with random weights: not symmetric, so an image and its mirror differ.
fn model() -> Vec<u8> {
    let arch = ArchConfig::resnet(8, 3, 16, 16, CLASSES).unwrap();
    let net = Net::new(&arch, 3, &Device::Cpu).unwrap();
    let opts = ExportOptions {
        normalization: Normalization {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        },
        class_names: (0..CLASSES).map(|i| format!("c{i}")).collect(),
        extra_metadata: vec![],
    };
    to_bytes(&resnet_to_onnx(&arch, &net.tensors(), &opts).unwrap())
}

/// `n` images of 3 x 16 x 16 values in [0, 1], each different and asymmetric.
fn images(n: usize) -> Vec<f32> {
    (0..n * 3 * 16 * 16)
        .map(|i| ((i * 7919 + i / 13) % 251) as f32 / 250.0)
        .collect()
}

fn mirrored(x: &[f32]) -> Vec<f32> {
    let mut m = x.to_vec();
    m.chunks_exact_mut(16).for_each(<[f32]>::reverse);
    m
}

#[test]
fn flip_averages_each_image_with_its_mirror() {
    let bytes = model();
    let x = images(5);
    for native in [false, true] {
        let load = || {
            let c = Classifier::from_bytes(&bytes, "r8.onnx").unwrap();
            if native {
                c.with_native().unwrap()
            } else {
                c.with_tract()
            }
        };
        let plain = load();
        let flip = load().with_tta(Tta::Flip);
        assert_eq!((plain.tta(), flip.tta()), (Tta::None, Tta::Flip));
        let a = plain.logits_for_input(&x).unwrap();
        let b = plain.logits_for_input(&mirrored(&x)).unwrap();
        let got = flip.logits_for_input(&x).unwrap();
        assert_eq!(got.len(), 5);
        let mut differs = false;
        for ((g, a), b) in got.iter().zip(&a).zip(&b) {
            for k in 0..CLASSES {
                let want = 0.5 * (a[k] + b[k]);
                assert!(
                    (g[k] - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "native {native}: {} vs {want}",
                    g[k]
                );
                differs |= (a[k] - b[k]).abs() > 1e-3;
            }
        }
        assert!(differs, "the test images must not be mirror-symmetric");
    }
}

#[test]
fn evaluation_with_flip_counts_each_image_once_with_its_own_mirror() {
    let bytes = model();
    let pixels: Vec<u8> = images(6)
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let x: Vec<f32> = pixels.iter().map(|&b| b as f32 / 255.0).collect();
    let flip = Classifier::from_bytes(&bytes, "r8.onnx")
        .unwrap()
        .with_tta(Tta::Flip);
    // Labels: what flip predicts for each image (a near-tie may go either way: not counted).
    let mut labels = Vec::new();
    let mut clear = 0;
    for l in flip.logits_for_input(&x).unwrap() {
        let mut order: Vec<usize> = (0..CLASSES).collect();
        order.sort_by(|&i, &j| l[j].total_cmp(&l[i]));
        clear += usize::from(l[order[0]] - l[order[1]] > 1e-3);
        labels.push(order[0] as u8);
    }
    let data = sc_runtime::Dataset {
        images: pixels,
        labels,
        channels: 3,
        height: 16,
        width: 16,
        class_names: (0..CLASSES).map(|i| format!("c{i}")).collect(),
        source: "made here".into(),
    };
    let e = flip.evaluate(&data).unwrap();
    assert_eq!((e.images, e.tta), (6, Tta::Flip));
    assert!(
        e.correct as usize >= clear && clear >= 4,
        "{} correct, {clear} clear",
        e.correct
    );
}

//! classify / classify_batch / logits on tiny hand-computable models: preprocessing (colour,
//! 16-bit, palette, alpha, resizing, 1x1), softmax and top-k, our metadata vs foreign models.

mod common;

use common::{png, Tiny, D};
use image::{DynamicImage, ImageBuffer, Luma, Rgb, Rgba};
use sc_runtime::{decode_image, softmax, Classifier, Preprocessing};

const RGB: [&str; 3] = ["red", "green", "blue"];

fn ours() -> (Tiny, Classifier) {
    let t = Tiny::ours(3, 32, &RGB);
    let c = Classifier::from_bytes(&t.bytes(), "tiny.onnx").unwrap();
    (t, c)
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb(rgb)))
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn classifier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Classifier>();
}

#[test]
fn logits_are_hand_computed_and_normalization_is_not_applied_twice() {
    let (t, c) = ours();
    // Pixels scaled to [0, 1] only: the graph would hold the normalization (sc.normalization says
    // mean 0.5 / std 0.25, which the runtime must ignore).
    let logits = c.logits(&[solid(32, 32, [255, 0, 0])]).unwrap();
    assert_close(&logits[0], &t.logits(&[1.0, 0.0, 0.0]), 1e-5);
    let logits = c.logits(&[solid(32, 32, [51, 102, 204])]).unwrap();
    assert_close(&logits[0], &t.logits(&[0.2, 0.4, 0.8]), 1e-4);
    assert_eq!(c.input().mean, [0.0; 3]);
    assert_eq!(c.metadata().unwrap().parameters, Some(42));
    assert_eq!(c.classes(), RGB);
}

#[test]
fn softmax_and_top_k() {
    let (_, c) = ours();
    let preds = c.classify(&solid(32, 32, [0, 0, 255]), 2).unwrap();
    let p = softmax(&[0.0, 0.0, 10.0]);
    assert_eq!(preds.len(), 2);
    assert_eq!((preds[0].index, preds[0].class.as_str()), (2, "blue"));
    assert!((preds[0].probability - p[2]).abs() < 1e-6);
    // ties keep class order
    assert_eq!((preds[1].index, preds[1].class.as_str()), (0, "red"));
    let all = c.classify(&solid(32, 32, [0, 0, 255]), 10).unwrap();
    assert_eq!(all.len(), 3);
    let sum: f32 = all.iter().map(|p| p.probability).sum();
    assert!((sum - 1.0).abs() < 1e-6);
    let s = softmax(&[1000.0, 0.0, -1000.0]);
    assert!(s[0] > 0.999 && s.iter().all(|x| x.is_finite()));
}

#[test]
fn colour_conversions_and_bit_depths() {
    let (t, c) = ours();
    let cases: Vec<(DynamicImage, [f32; 3])> = vec![
        // gray into an RGB model: every channel gets the gray value
        (
            DynamicImage::ImageLuma8(ImageBuffer::from_pixel(32, 32, Luma([255]))),
            [1.0; 3],
        ),
        // alpha is dropped, not composited
        (
            DynamicImage::ImageRgba8(ImageBuffer::from_pixel(32, 32, Rgba([0, 255, 0, 0]))),
            [0.0, 1.0, 0.0],
        ),
        // 16 bits per sample scale to the same [0, 1]
        (
            DynamicImage::ImageRgb16(ImageBuffer::from_pixel(32, 32, Rgb([0, 0, 65535]))),
            [0.0, 0.0, 1.0],
        ),
    ];
    for (img, means) in cases {
        let l = c.logits(&[img]).unwrap();
        assert_close(&l[0], &t.logits(&means), 1e-4);
    }
}

#[test]
fn palette_png_and_resizing() {
    let (t, c) = ours();
    // 64x64 palette PNG: left half index 0 (red), right half index 1 (blue).
    let pixels: Vec<u8> = (0..64 * 64).map(|i| u8::from(i % 64 >= 32)).collect();
    let bytes = png(64, 64, Some(&[[255, 0, 0], [0, 0, 255]]), &pixels);
    let img = decode_image(&bytes, "palette.png").unwrap();
    let l = c.logits(&[img]).unwrap();
    assert_close(&l[0], &t.logits(&[0.5, 0.0, 0.5]), 1e-2);
    // other sizes, 1x1 included, resize to the model's 32x32
    for (w, h) in [(1, 1), (7, 3), (100, 40), (32, 33)] {
        let l = c.logits(&[solid(w, h, [0, 255, 0])]).unwrap();
        assert_close(&l[0], &t.logits(&[0.0, 1.0, 0.0]), 1e-4);
    }
}

#[test]
fn gray_model_converts_colour_to_luma() {
    let mut t = Tiny::ours(1, 8, &["bright", "dark"]);
    t.weight = vec![10.0, -10.0];
    t.bias = vec![-5.0, 5.0];
    let c = Classifier::from_bytes(&t.bytes(), "gray.onnx").unwrap();
    let white = solid(20, 20, [255, 255, 255]);
    let black = solid(3, 3, [0, 0, 0]);
    let r = c.classify_batch(&[white, black], 1).unwrap();
    assert_eq!(r[0][0].class, "bright");
    assert_eq!(r[1][0].class, "dark");
    assert_close(
        &c.logits(&[solid(8, 8, [255; 3])]).unwrap()[0],
        &[5.0, -5.0],
        1e-4,
    );
}

#[test]
fn batch_equals_single_whatever_threads_and_chunk() {
    let (_, c) = ours();
    let images: Vec<DynamicImage> = (0..11u8)
        .map(|i| solid(16 + i as u32, 32, [i * 20, 255 - i * 20, i * 7]))
        .collect();
    let single: Vec<Vec<f32>> = images
        .iter()
        .map(|im| c.logits(std::slice::from_ref(im)).unwrap().remove(0))
        .collect();
    for (threads, chunk) in [(1, 1), (3, 1), (2, 4), (4, 3), (1, 16)] {
        let c = Classifier::from_bytes(&Tiny::ours(3, 32, &RGB).bytes(), "t.onnx")
            .unwrap()
            .with_threads(threads)
            .with_chunk(chunk);
        let batch = c.logits(&images).unwrap();
        for (a, b) in batch.iter().zip(&single) {
            assert_close(a, b, 1e-5);
        }
    }
    assert!(c.classify_batch(&[], 3).unwrap().is_empty());
}

#[test]
fn foreign_model_with_caller_preprocessing() {
    let t = Tiny::foreign(3, 32, 3);
    let names: Vec<String> = RGB.iter().map(|s| s.to_string()).collect();
    let pre = Preprocessing::new(vec![0.5; 3], vec![0.25; 3], names.clone());
    let c = Classifier::from_bytes_with(&t.bytes(), "foreign.onnx", pre.clone()).unwrap();
    let l = c.logits(&[solid(32, 32, [255, 0, 0])]).unwrap();
    // (1 - 0.5) / 0.25 = 2 and (0 - 0.5) / 0.25 = -2
    assert_close(&l[0], &t.logits(&[2.0, -2.0, -2.0]), 1e-4);
    assert_eq!(c.input().name, "input");

    // pixel range 0..255 (no std scaling)
    let pre255 = Preprocessing {
        pixel_range: [0.0, 255.0],
        ..Preprocessing::new(vec![0.0; 3], vec![1.0; 3], names.clone())
    };
    let c = Classifier::from_bytes_with(&t.bytes(), "foreign.onnx", pre255).unwrap();
    let l = c.logits(&[solid(32, 32, [0, 10, 0])]).unwrap();
    assert_close(&l[0], &t.logits(&[0.0, 10.0, 0.0]), 1e-3);

    // symbolic spatial size: the caller must give it, then it is used
    let mut sym = t.clone();
    sym.input_dims = vec![D::P("batch"), D::N(3), D::P("h"), D::P("w")];
    let e = Classifier::from_bytes_with(&sym.bytes(), "sym.onnx", pre.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sym.onnx") && e.contains("input size"), "{e}");
    let sized = Preprocessing {
        input_size: Some((10, 12)),
        ..pre.clone()
    };
    let c = Classifier::from_bytes_with(&sym.bytes(), "sym.onnx", sized).unwrap();
    assert_eq!((c.input().height, c.input().width), (10, 12));
    assert_eq!(
        c.classify(&solid(5, 5, [0, 0, 255]), 1).unwrap()[0].class,
        "blue"
    );
}

#[test]
fn fixed_batch_graph_pads_the_last_chunk() {
    let mut t = Tiny::ours(3, 32, &RGB);
    t.input_dims[0] = D::N(4);
    let c = Classifier::from_bytes(&t.bytes(), "fixed4.onnx").unwrap();
    assert_eq!(c.chunk(), 4);
    let images: Vec<_> = (0..6).map(|i| solid(32, 32, [0, 0, 40 * i])).collect();
    let l = c.logits(&images).unwrap();
    assert_eq!(l.len(), 6);
    for (i, li) in l.iter().enumerate() {
        assert_close(li, &t.logits(&[0.0, 0.0, 40.0 * i as f32 / 255.0]), 1e-4);
    }
}

#[test]
fn raw_loading_for_benchmarks() {
    let t = Tiny::foreign(3, 32, 5);
    let dir = tempfile::tempdir().unwrap();
    let p = t.write(dir.path(), "foreign.onnx");
    let c = Classifier::load_raw(&p).unwrap();
    assert_eq!(c.classes(), ["0", "1", "2", "3", "4"]);
    let input = vec![0.5f32; 2 * 3 * 32 * 32];
    let l = c.logits_for_input(&input).unwrap();
    assert_close(&l[1], &t.logits(&[0.5; 3]), 1e-5);
    let r = sc_runtime::bench::run(
        &c,
        &sc_runtime::bench::BenchOptions {
            batch_sizes: vec![1, 3],
            min_seconds: 0.0,
            min_requests: 2,
            warmup_requests: 1,
        },
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert!(r[1].images_per_second > 0.0 && r[1].latency_ms_p99 >= r[1].latency_ms_p50);
}

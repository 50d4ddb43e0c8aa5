//! What each fuzz target does with its input, in plain Rust (no libFuzzer): the targets in
//! `fuzz_targets/` call these, and `runtime/tests/fuzz_corpus.rs` replays the committed corpus
//! (`corpus-seed/`, `regressions/`) through the same functions on stable Rust in CI.
//!
//! Each function must return normally for any input: bad input is an `Err` from the library, never
//! a panic, an abort or an unbounded allocation. Where a call succeeds, the result is checked for
//! the invariants callers rely on (sizes agree), so a wrong `Ok` is caught too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use image::{DynamicImage, ImageBuffer, Rgb};
use sc_runtime::data::{read_cifar_bytes, read_idx_bytes, CifarFormat, Dataset};
use sc_runtime::metadata::ModelMetadata;
use sc_runtime::{decode_image, Classifier, ModelInfo};

/// What a fuzz target does with one input.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the replay test.
pub const TARGETS: [(&str, Target); 5] = [
    ("cifar", cifar),
    ("idx", idx),
    ("image", image),
    ("model", model),
    ("metadata", metadata),
];

fn check_dataset(d: &Dataset) {
    assert_eq!(d.images.len(), d.len() * d.image_len(), "{}", d.source);
    assert!(d.labels.iter().all(|&l| (l as usize) < d.num_classes()));
}

/// The input as CIFAR-10 records, then as CIFAR-100 records.
pub fn cifar(data: &[u8]) {
    for format in [CifarFormat::Cifar10, CifarFormat::Cifar100] {
        if let Ok(d) = read_cifar_bytes(data, format, None, Path::new("fuzz.bin")) {
            check_dataset(&d);
            assert_eq!((d.channels, d.height, d.width), (3, 32, 32));
        }
    }
}

/// Two bytes (little-endian) give the length of the images file; the rest is the labels file.
/// Either may be gzip.
pub fn idx(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (head, rest) = data.split_at(2);
    let split = (u16::from_le_bytes([head[0], head[1]]) as usize).min(rest.len());
    let (images, labels) = rest.split_at(split);
    let ip = Path::new("fuzz-images-idx3-ubyte");
    let lp = Path::new("fuzz-labels-idx1-ubyte");
    if let Ok(d) = read_idx_bytes(images, labels, ip, lp) {
        check_dataset(&d);
        assert_eq!(d.channels, 1);
    }
}

/// An RGB 8x8 and a gray 5x7 classifier (committed seed models), loaded once.
fn classifiers() -> &'static [Classifier; 2] {
    static C: OnceLock<[Classifier; 2]> = OnceLock::new();
    C.get_or_init(|| {
        let load = |bytes: &[u8], name| {
            Classifier::from_bytes(bytes, name)
                .expect("seed model loads")
                .with_threads(1)
        };
        [
            load(
                include_bytes!("../corpus-seed/model/tiny-rgb-8x8.onnx"),
                "rgb",
            ),
            load(
                include_bytes!("../corpus-seed/model/tiny-gray-5x7.onnx"),
                "gray",
            ),
        ]
    })
}

/// Decodes an image file and, when it decodes, preprocesses it for a colour and a gray model and
/// runs them on the result (resizing a large image is the slow part: done once per model).
pub fn image(data: &[u8]) {
    let Ok(img) = decode_image(data, "fuzz-image") else {
        return;
    };
    for c in classifiers() {
        // An image the decoder accepts but preprocessing refuses (0 pixels) is an error.
        let Ok(input) = c.preprocess(&img) else {
            continue;
        };
        let i = c.input();
        assert_eq!(input.len(), i.channels * i.height * i.width);
        assert!(input.iter().all(|v| v.is_finite()));
        let logits = c
            .logits_for_input(&input)
            .expect("a preprocessed image runs");
        assert_eq!((logits.len(), logits[0].len()), (1, c.classes().len()));
    }
}

/// Reads the input as an ONNX model: its description, then a classifier (ours, and as a foreign
/// model with a 3-channel preprocessing); a classifier that loads must classify an image.
pub fn model(data: &[u8]) {
    let info = ModelInfo::from_bytes(data, "fuzz.onnx");
    let ours = Classifier::from_bytes(data, "fuzz.onnx");
    assert!(
        info.is_ok() || ours.is_err(),
        "loads but has no description"
    );
    let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let pre = sc_runtime::Preprocessing::new(vec![0.5; 3], vec![0.25; 3], names);
    let foreign = Classifier::from_bytes_with(data, "fuzz.onnx", pre);
    let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 3, Rgb([10, 200, 30])));
    for c in [ours, foreign].into_iter().flatten() {
        let c = c.with_threads(1);
        // An Err is fine here (e.g. the graph fails at run time); a panic is not.
        if let Ok(p) = c.probabilities(&img) {
            assert_eq!(p.len(), c.classes().len());
        }
    }
}

/// Lines of `key<TAB>value` (`\n` in a value written as `\\n`) as a model's `metadata_props`.
pub fn metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let props: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.replace("\\n", "\n")))
        .collect();
    if let Ok(Some(m)) = ModelMetadata::from_props(Path::new("fuzz.onnx"), &props) {
        assert!(!m.classes.is_empty());
        assert!(matches!(m.input.channels, 1 | 3));
        assert!(m.input.height > 0 && m.input.width > 0);
    }
}

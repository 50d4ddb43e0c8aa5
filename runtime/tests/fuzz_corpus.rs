//! The bounded fuzz pass CI runs on stable Rust: every committed fuzz input (`fuzz/corpus-seed/` and
//! the crash inputs found by `scripts/fuzz.sh`, kept in `fuzz/regressions/`) goes through the same
//! functions the libFuzzer targets call (`fuzz/src/lib.rs`), and none may panic.
//!
//! `cargo test --release -p sc-runtime --test fuzz_corpus -- --ignored write_seed_corpus`
//! regenerates the seed corpus from the test helpers.

mod common;

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::{our_metadata, png, Tiny, D};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

#[test]
fn committed_fuzz_inputs_never_panic() {
    let root = fuzz_dir();
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, target) in targets::TARGETS {
        let seeds = files(&root.join("corpus-seed").join(name));
        assert!(!seeds.is_empty(), "no seed inputs for the `{name}` target");
        for file in seeds
            .into_iter()
            .chain(files(&root.join("regressions").join(name)))
        {
            let bytes = std::fs::read(&file).unwrap();
            count += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| target(&bytes))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {}: {msg}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(count >= 20, "only {count} inputs replayed");
}

/// Small, truncated and bit-flipped versions of every seed: a cheap, deterministic mutation pass.
#[test]
fn mutated_seeds_never_panic() {
    let root = fuzz_dir();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut failures = Vec::new();
    for (name, target) in targets::TARGETS {
        for file in files(&root.join("corpus-seed").join(name)) {
            let bytes = std::fs::read(&file).unwrap();
            let mut variants = vec![Vec::new(), bytes[..bytes.len() / 2].to_vec()];
            for _ in 0..8 {
                let mut v = bytes.clone();
                for _ in 0..1 + next() % 4 {
                    if !v.is_empty() {
                        let i = (next() % v.len() as u64) as usize;
                        v[i] ^= 1 << (next() % 8);
                    }
                }
                variants.push(v);
            }
            for v in variants {
                if catch_unwind(AssertUnwindSafe(|| target(&v))).is_err() {
                    let out = std::env::temp_dir().join(format!(
                        "fuzz-mutant-{name}-{}",
                        file.file_name().unwrap().to_string_lossy()
                    ));
                    std::fs::write(&out, &v).unwrap();
                    failures.push(format!(
                        "{name}: mutant of {} saved as {}",
                        file.display(),
                        out.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn idx_input(images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut v = (images.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(images);
    v.extend_from_slice(labels);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes `fuzz/corpus-seed/<target>/*` (one small valid input per path through each reader) and
/// the crafted inputs of `fuzz/regressions/`; the crash inputs the fuzzer found are copied there
/// by hand from `fuzz/artifacts/`.
#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seed_corpus() {
    let root = fuzz_dir().join("corpus-seed");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    // CIFAR-10 and CIFAR-100 records.
    let px: Vec<u8> = (0..3072).map(|i| (i % 251) as u8).collect();
    put("cifar", "c10-one-record.bin", &[&[3u8][..], &px].concat());
    put(
        "cifar",
        "c100-one-record.bin",
        &[&[1u8, 42][..], &px].concat(),
    );

    // IDX: 3 images of 4x4, raw and gzip.
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = (dir.path().join("i"), dir.path().join("l"));
    let imgs: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
    sc_runtime::data::write::idx(&ip, &lp, 4, 4, &imgs, &[0, 7, 9]).unwrap();
    let (i, l) = (std::fs::read(&ip).unwrap(), std::fs::read(&lp).unwrap());
    put("idx", "raw-3x4x4", &idx_input(&i, &l));
    put("idx", "gz-3x4x4", &idx_input(&gzip(&i), &gzip(&l)));

    // Images in every format and colour type the decoder takes.
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(6, 5, |x, y| {
        Rgb([(x * 40) as u8, (y * 50) as u8, 128])
    }));
    put("image", "rgb-6x5.png", &encode(&rgb, ImageFormat::Png));
    put(
        "image",
        "rgb-8x8.jpg",
        &encode(
            &rgb.resize_exact(8, 8, image::imageops::FilterType::Nearest),
            ImageFormat::Jpeg,
        ),
    );
    put("image", "rgb-6x5.bmp", &encode(&rgb, ImageFormat::Bmp));
    put(
        "image",
        "rgb-6x5.gif",
        &encode(&rgb.to_rgba8().into(), ImageFormat::Gif),
    );
    put("image", "rgb-6x5.tiff", &encode(&rgb, ImageFormat::Tiff));
    put(
        "image",
        "rgb-6x5.webp",
        &encode(&rgb.to_rgba8().into(), ImageFormat::WebP),
    );
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(2, 2, Rgba([0, 255, 0, 0])));
    put("image", "rgba-2x2.png", &encode(&rgba, ImageFormat::Png));
    let gray16 =
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(3, 3, |x, _| Luma([x as u16 * 30000])));
    put(
        "image",
        "gray16-3x3.png",
        &encode(&gray16, ImageFormat::Png),
    );
    let gray_alpha = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(1, 1, LumaA([200, 100])));
    put(
        "image",
        "graya-1x1.png",
        &encode(&gray_alpha, ImageFormat::Png),
    );
    let pal: Vec<u8> = (0..16).map(|i| (i % 2) as u8).collect();
    put(
        "image",
        "palette-4x4.png",
        &png(4, 4, Some(&[[255, 0, 0], [0, 0, 255]]), &pal),
    );

    // Models: ours (colour and gray, non-square), foreign, symbolic spatial size, fixed batch.
    put(
        "model",
        "tiny-rgb-8x8.onnx",
        &Tiny::ours(3, 8, &["red", "green", "blue"]).bytes(),
    );
    let mut gray = Tiny::ours(1, 5, &["bright", "dark"]);
    gray.weight = vec![10.0, -10.0];
    gray.input_dims[3] = D::N(7);
    gray.set_meta(
        "sc.input",
        r#"{"layout":"NCHW","channels":1,"height":5,"width":7,"pixel_range":[0.0,1.0],"name":"image"}"#,
    );
    put("model", "tiny-gray-5x7.onnx", &gray.bytes());
    put(
        "model",
        "foreign-rgb-8x8.onnx",
        &Tiny::foreign(3, 8, 3).bytes(),
    );
    let mut sym = Tiny::ours(3, 6, &["a", "b", "c"]);
    sym.input_dims = vec![D::P("batch"), D::N(3), D::P("h"), D::P("w")];
    put("model", "symbolic-hw.onnx", &sym.bytes());
    let mut fixed = Tiny::ours(3, 4, &["a", "b"]);
    fixed.input_dims[0] = D::N(2);
    put("model", "fixed-batch-2.onnx", &fixed.bytes());

    // A crafted regression input (the fuzzer did not reach it): metadata declaring a 200000x200000
    // input over symbolic H and W, which used to abort on the first image.
    let mut huge = sym.clone();
    huge.set_meta(
        "sc.input",
        r#"{"layout":"NCHW","channels":3,"height":200000,"width":200000,"pixel_range":[0.0,1.0],"name":"image"}"#,
    );
    let dir = fuzz_dir().join("regressions/model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("huge-input-size-in-metadata.onnx"), huge.bytes()).unwrap();

    // Metadata as `key<TAB>value` lines.
    let lines = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}\t{}\n", v.replace('\n', "\\n")))
            .collect::<String>()
    };
    put(
        "metadata",
        "ours-rgb.txt",
        lines(&our_metadata(3, 32, &["a", "b", "c"])).as_bytes(),
    );
    put(
        "metadata",
        "ours-gray.txt",
        lines(&our_metadata(1, 28, &["0", "1"])).as_bytes(),
    );
    put(
        "metadata",
        "foreign.txt",
        b"producer\tpytorch\nother\tvalue\n",
    );
}

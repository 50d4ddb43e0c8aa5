//! Bad input is a clear error naming the file and the problem, never a panic.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{png, Tiny, D};
use sc_runtime::{load_image, Classifier, Dataset, Preprocessing, RuntimeError, Split};

fn load_err(path: &Path) -> String {
    match Classifier::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(e: &str, needles: &[&str]) {
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
}

#[test]
fn unreadable_or_non_onnx_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_has(&load_err(&d.join("missing.onnx")), &["missing.onnx"]);
    assert_has(&load_err(d), &["directory"]);
    std::fs::write(d.join("empty.onnx"), b"").unwrap();
    assert_has(
        &load_err(&d.join("empty.onnx")),
        &["empty.onnx", "empty file"],
    );
    std::fs::write(d.join("text.onnx"), b"this is not a model\n").unwrap();
    assert_has(
        &load_err(&d.join("text.onnx")),
        &["text.onnx", "not a usable ONNX model"],
    );
    let bytes = Tiny::ours(3, 32, &["a", "b", "c"]).bytes();
    for cut in [bytes.len() / 2, bytes.len() - 3, 7] {
        std::fs::write(d.join("cut.onnx"), &bytes[..cut]).unwrap();
        assert_has(&load_err(&d.join("cut.onnx")), &["cut.onnx"]);
    }
}

#[test]
fn graphs_that_are_not_image_classifiers() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tiny::ours(3, 32, &["a", "b", "c"]);
    t.input_dims = vec![D::P("batch"), D::N(3 * 32 * 32)];
    let e = load_err(&t.write(dir.path(), "flat.onnx"));
    assert_has(&e, &["flat.onnx", "[batch, 3072]", "expected [N, C, H, W]"]);

    let mut t = Tiny::ours(3, 32, &["a", "b", "c"]);
    t.extra_input = true;
    assert_has(
        &load_err(&t.write(dir.path(), "two.onnx")),
        &["two.onnx", "2 inputs", "`mask`"],
    );
}

#[test]
fn metadata_that_contradicts_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let base = Tiny::ours(3, 32, &["a", "b", "c"]);
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "sc.input",
            r#"{"layout":"NCHW","channels":1,"height":32,"width":32,"pixel_range":[0.0,1.0],"name":"image"}"#,
            vec!["sc.input", "channels = 1", "has 3"],
        ),
        (
            "sc.input",
            r#"{"layout":"NCHW","channels":3,"height":28,"width":32,"pixel_range":[0.0,1.0],"name":"image"}"#,
            vec!["sc.input", "height = 28"],
        ),
        (
            "sc.input",
            r#"{"layout":"NCHW","channels":3,"height":32,"width":32,"pixel_range":[0.0,1.0],"name":"x"}"#,
            vec!["sc.input", "`x`"],
        ),
        (
            "sc.classes",
            r#"["a","b","c","d","e"]"#,
            vec!["sc.classes", "5 class names", "3 logits"],
        ),
        ("sc.classes", "not json", vec!["sc.classes", "invalid JSON"]),
    ];
    for (i, (key, value, needles)) in cases.into_iter().enumerate() {
        let mut t = base.clone();
        t.set_meta(key, value);
        if value.contains(r#""channels":1"#) {
            t.set_meta("sc.normalization", r#"{"mean":[0.5],"std":[0.25]}"#);
        }
        let name = format!("meta{i}.onnx");
        let e = load_err(&t.write(dir.path(), &name));
        assert_has(&e, &needles);
        assert_has(&e, &[&name]);
    }
}

#[test]
fn preprocessing_missing_or_inconsistent() {
    let names = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
    let foreign = Tiny::foreign(3, 32, 3).bytes();
    let ours = Tiny::ours(3, 32, &["a", "b", "c"]).bytes();
    let err = |r: Result<Classifier, RuntimeError>| r.err().expect("must fail").to_string();
    let e = err(Classifier::from_bytes(&foreign, "f.onnx"));
    assert_has(&e, &["f.onnx", "no sc.* metadata"]);
    let pre = Preprocessing::new(vec![0.5; 3], vec![0.2; 3], names(3));
    let e = err(Classifier::from_bytes_with(&ours, "o.onnx", pre.clone()));
    assert_has(&e, &["o.onnx", "carries its own preprocessing"]);
    let bad: Vec<(Preprocessing, &str)> = vec![
        (
            Preprocessing::new(vec![0.5], vec![0.2], names(3)),
            "1 channel(s)",
        ),
        (
            Preprocessing::new(vec![0.5; 3], vec![0.2; 2], names(3)),
            "3 means and 2 stds",
        ),
        (
            Preprocessing::new(vec![0.5; 3], vec![0.0; 3], names(3)),
            "std 0",
        ),
        (
            Preprocessing::new(vec![0.5; 3], vec![0.2; 3], names(4)),
            "4 class names",
        ),
        (
            Preprocessing::new(vec![0.5; 3], vec![0.2; 3], vec![]),
            "no class names",
        ),
        (
            Preprocessing {
                input_size: Some((28, 28)),
                ..pre.clone()
            },
            "28x28",
        ),
        (
            Preprocessing {
                pixel_range: [1.0, 0.0],
                ..pre.clone()
            },
            "pixel range",
        ),
    ];
    for (p, needle) in bad {
        let e = err(Classifier::from_bytes_with(&foreign, "f.onnx", p));
        assert_has(&e, &["f.onnx", needle]);
    }
}

#[test]
fn images_that_do_not_decode_or_are_too_big() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = load_image(&d.join("none.png")).unwrap_err().to_string();
    assert_has(&e, &["none.png"]);
    std::fs::write(d.join("junk.png"), b"definitely not an image").unwrap();
    assert_has(
        &load_image(&d.join("junk.png")).unwrap_err().to_string(),
        &["junk.png"],
    );
    // a real PNG signature with a corrupt body
    let mut broken = png(4, 4, None, &[7; 48]);
    broken.truncate(40);
    std::fs::write(d.join("broken.png"), &broken).unwrap();
    assert_has(
        &load_image(&d.join("broken.png")).unwrap_err().to_string(),
        &["broken.png"],
    );
    // a header claiming 20000x20000 with one row of data: refused before allocating ~1.2 GB
    let huge = png(20_000, 20_000, None, &vec![0; 20_000 * 3]);
    std::fs::write(d.join("huge.png"), &huge).unwrap();
    let t = Instant::now();
    let e = load_image(&d.join("huge.png")).unwrap_err().to_string();
    assert_has(&e, &["huge.png"]);
    assert!(t.elapsed().as_secs_f64() < 2.0, "took {:?}", t.elapsed());
    assert_has(&load_image(d).unwrap_err().to_string(), &["directory"]);
}

#[test]
fn invalid_raw_input_length() {
    let c = Classifier::from_bytes(&Tiny::ours(3, 4, &["a", "b", "c"]).bytes(), "t.onnx").unwrap();
    let e = c.logits_for_input(&[0.0; 47]).unwrap_err().to_string();
    assert_has(&e, &["47 input values"]);
}

/// Tests run as root here, where permission bits do not stop reads, so an unreadable file is a
/// symlink to `/proc/self/mem`, whose first page fails to read with EIO (Linux). `None` where
/// that does not hold.
fn unreadable(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let p = dir.join(name);
    std::os::unix::fs::symlink("/proc/self/mem", &p).ok()?;
    std::fs::read(&p).is_err().then_some(p)
}

/// The error and every cause, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

#[test]
fn unreadable_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(model) = unreadable(d, "model.onnx") else {
        eprintln!("skipped: /proc/self/mem reads do not fail here");
        return;
    };
    assert_has(&load_err(&model), &["model.onnx", "Input/output error"]);
    assert_has(
        &sc_runtime::ModelInfo::read(&model).unwrap_err().to_string(),
        &["model.onnx"],
    );
    let img = unreadable(d, "photo.png").unwrap();
    assert_has(
        &load_image(&img).unwrap_err().to_string(),
        &["photo.png", "Input/output error"],
    );
    let cifar = unreadable(d, "test_batch.bin").unwrap();
    assert_has(
        &Dataset::open(&cifar, Split::Test).unwrap_err().to_string(),
        &["test_batch.bin", "Input/output error"],
    );
    let idx = unreadable(d, "t10k-images-idx3-ubyte").unwrap();
    assert_has(
        &Dataset::open(&idx, Split::Test).unwrap_err().to_string(),
        &["t10k-images-idx3-ubyte", "Input/output error"],
    );
}

#[test]
fn operator_tract_does_not_support() {
    let mut p = Tiny::ours(3, 8, &["a", "b", "c"]).proto();
    p.graph.as_mut().unwrap().node[1].op_type = "NoSuchOp".into();
    let bytes = prost::Message::encode_to_vec(&p);
    let e = Classifier::from_bytes(&bytes, "unsupported.onnx")
        .err()
        .expect("must fail");
    assert_has(&chain(&e), &["unsupported.onnx", "NoSuchOp"]);
}

#[test]
fn empty_directory_and_malformed_data_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let open = |p: &Path| Dataset::open(p, Split::Train).unwrap_err().to_string();
    // an empty image file
    std::fs::write(d.join("empty.png"), b"").unwrap();
    assert_has(
        &load_image(&d.join("empty.png")).unwrap_err().to_string(),
        &["empty.png", "empty file"],
    );
    // an empty IDX file, and a directory where the IDX images file should be
    let ip = d.join("train-images-idx3-ubyte");
    std::fs::write(&ip, b"").unwrap();
    assert_has(&open(&ip), &["train-images-idx3-ubyte", "too short"]);
    std::fs::remove_file(&ip).unwrap();
    std::fs::create_dir(&ip).unwrap();
    assert_has(&open(d), &["train-images-idx3-ubyte", "is a directory"]);
    std::fs::remove_dir(&ip).unwrap();
    // IDX: payload shorter than the header says; trailing bytes; labels file missing
    let lp = d.join("train-labels-idx1-ubyte");
    sc_runtime::data::write::idx(&ip, &lp, 2, 2, &[0; 8], &[1, 2]).unwrap();
    let good = std::fs::read(&ip).unwrap();
    std::fs::write(&ip, &good[..good.len() - 3]).unwrap();
    assert_has(&open(&ip), &["train-images-idx3-ubyte", "truncated"]);
    std::fs::write(&ip, [&good[..], b"xx"].concat()).unwrap();
    assert_has(&open(&ip), &["train-images-idx3-ubyte", "trailing bytes"]);
    std::fs::write(&ip, &good).unwrap();
    std::fs::remove_file(&lp).unwrap();
    assert_has(&open(&ip), &["train-labels-idx1-ubyte"]);
    // IDX label beyond the 10 classes
    sc_runtime::data::write::idx(&ip, &lp, 2, 2, &[0; 8], &[1, 10]).unwrap();
    assert_has(&open(&ip), &["train-labels-idx1-ubyte", "out of range"]);

    // CIFAR: a directory where a batch file should be; CIFAR-100 fine label >= 100
    let c10 = d.join("c10");
    std::fs::create_dir_all(c10.join("data_batch_1.bin")).unwrap();
    assert_has(&open(&c10), &["data_batch_1.bin", "is a directory"]);
    let mut rec = vec![0u8; 3074];
    rec[1] = 100;
    std::fs::write(d.join("train.bin"), &rec).unwrap();
    assert_has(
        &open(&d.join("train.bin")),
        &["train.bin", "label 100 is out of range for 100 classes"],
    );
}

/// Regression (found by `scripts/fuzz.sh`, target `model`): a graph output that no node, weight or
/// input produces made tract's ONNX parser panic ("no entry found for key").
#[test]
fn graph_output_not_produced_by_any_node() {
    let mut p = Tiny::ours(3, 8, &["a", "b", "c"]).proto();
    p.graph.as_mut().unwrap().node[2].output[0] = "otligs".into();
    let bytes = prost::Message::encode_to_vec(&p);
    let e = Classifier::from_bytes(&bytes, "wiring.onnx")
        .err()
        .expect("must fail")
        .to_string();
    assert_has(
        &e,
        &["wiring.onnx", "graph output `logits`", "not produced"],
    );
}

/// Regression (found by `scripts/fuzz.sh`, target `model`): a `ReduceMean` axis beyond the input's
/// rank panicked inside tract's shape inference ("Illegal combination of values for rank and
/// axis"); tract's panics now come back as errors naming the file.
#[test]
fn reduce_axis_beyond_rank_is_an_error_not_a_panic() {
    let mut p = Tiny::ours(3, 8, &["a", "b", "c"]).proto();
    p.graph.as_mut().unwrap().node[1].attribute[0].ints = vec![2, 6];
    let bytes = prost::Message::encode_to_vec(&p);
    let e = Classifier::from_bytes(&bytes, "axis.onnx")
        .err()
        .expect("must fail");
    assert_has(&chain(&e), &["axis.onnx", "cannot build an inference plan"]);
    // The committed crash input itself.
    let crash = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/model/reduce-axis-beyond-rank.onnx"),
    )
    .unwrap();
    let e = Classifier::from_bytes(&crash, "crash.onnx")
        .err()
        .expect("must fail");
    assert_has(&chain(&e), &["crash.onnx"]);
}

/// Regression (found by review while fuzzing; the fuzzer did not reach it in the time given): a
/// model whose metadata declared a 200000x200000 input over a graph with symbolic H and W loaded,
/// then aborted the process ("memory allocation of 480000000000 bytes failed") on the first image.
#[test]
fn huge_input_size_in_metadata_aborted_on_the_first_image() {
    let mut t = Tiny::ours(3, 6, &["a", "b", "c"]);
    t.input_dims = vec![D::P("batch"), D::N(3), D::P("h"), D::P("w")];
    t.set_meta(
        "sc.input",
        r#"{"layout":"NCHW","channels":3,"height":200000,"width":200000,"pixel_range":[0.0,1.0],"name":"image"}"#,
    );
    let e = Classifier::from_bytes(&t.bytes(), "huge-input.onnx")
        .err()
        .expect("must fail")
        .to_string();
    assert_has(&e, &["huge-input.onnx", "sc.input", "200000x200000"]);
    // The same size given by the caller of a foreign model, and a graph that fixes it.
    let mut f = Tiny::foreign(3, 6, 3);
    f.input_dims = vec![D::P("batch"), D::N(3), D::P("h"), D::P("w")];
    let pre = Preprocessing {
        input_size: Some((5000, 10)),
        ..Preprocessing::new(
            vec![0.5; 3],
            vec![0.2; 3],
            vec!["0".into(), "1".into(), "2".into()],
        )
    };
    let e = Classifier::from_bytes_with(&f.bytes(), "f.onnx", pre)
        .err()
        .expect("must fail")
        .to_string();
    assert_has(&e, &["f.onnx", "5000x10", "pixels per side"]);
    let mut g = Tiny::foreign(3, 6, 3);
    g.input_dims = vec![D::N(100_000), D::N(3), D::N(1000), D::N(1000)];
    let dir = tempfile::tempdir().unwrap();
    let e = Classifier::load_raw(g.write(dir.path(), "batch.onnx"))
        .err()
        .expect("must fail")
        .to_string();
    assert_has(&e, &["batch.onnx", "fixes the batch at 100000"]);
}

/// Regression (found by `scripts/fuzz.sh`, target `model`): the weight count multiplied the
/// initializers' dims unchecked, which panics ("attempt to multiply with overflow") where
/// overflow checks are on and wraps to a wrong count where they are off. It saturates now.
#[test]
fn weight_count_overflow() {
    let mut p = Tiny::ours(3, 8, &["a", "b", "c"]).proto();
    p.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 40, 3];
    let bytes = prost::Message::encode_to_vec(&p);
    let info = sc_runtime::ModelInfo::from_bytes(&bytes, "dims.onnx").unwrap();
    assert_eq!(info.weights, u64::MAX);
    assert!(Classifier::from_bytes(&bytes, "dims.onnx").is_err());
}

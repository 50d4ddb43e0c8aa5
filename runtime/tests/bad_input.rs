//! Bad input is a clear error naming the file and the problem, never a panic.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{png, Tiny, D};
use sc_runtime::{load_image, Classifier, Preprocessing, RuntimeError};

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

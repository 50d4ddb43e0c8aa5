//! The runtime must never depend on candle: apps embedding it stay small and build fast.

#[test]
fn dependency_tree_has_no_candle() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "sc-runtime",
            "--prefix",
            "none",
            "-e",
            "all",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("runs cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tract-onnx"), "unexpected tree:\n{stdout}");
    let candle: Vec<&str> = stdout.lines().filter(|l| l.contains("candle")).collect();
    assert!(
        candle.is_empty(),
        "sc-runtime depends on candle: {candle:?}"
    );
}

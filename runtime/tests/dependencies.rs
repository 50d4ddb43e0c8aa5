//! The crate boundaries, read from `cargo tree` (which compiles nothing):
//! - the runtime never depends on candle: apps embedding it stay small and build fast;
//! - the trainer does not depend on the deployment runtime (tract), not even in its tests;
//! - `sc-data`, the contract both sides share, depends on neither framework.

/// `cargo tree` of one workspace package over the given edge kinds, one crate per line.
fn tree(package: &str, edges: &str) -> String {
    tree_with(package, edges, &[])
}

/// [`tree`] with extra `cargo tree` flags (features).
fn tree_with(package: &str, edges: &str, flags: &[&str]) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", package, "--prefix", "none"])
        .args(["-e", edges])
        .args(flags)
        .args(["--manifest-path", manifest])
        .output()
        .expect("runs cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `tree` naming any of `crates`.
fn naming<'a>(tree: &'a str, crates: &[&str]) -> Vec<&'a str> {
    tree.lines()
        .filter(|l| crates.iter().any(|c| l.contains(c)))
        .collect()
}

#[test]
fn dependency_tree_has_no_candle() {
    let tree = tree("sc-runtime", "all");
    assert!(tree.contains("tract-onnx"), "unexpected tree:\n{tree}");
    assert!(tree.contains("sc-data"), "unexpected tree:\n{tree}");
    let candle = naming(&tree, &["candle"]);
    assert!(
        candle.is_empty(),
        "sc-runtime depends on candle: {candle:?}"
    );
}

#[test]
fn trainer_does_not_depend_on_the_runtime() {
    // Dev-dependencies included: the cross-crate tests (train, export, run) live in the root package.
    let tree = tree("sc-trainer", "all");
    assert!(
        tree.contains("candle-core") && tree.contains("sc-data"),
        "unexpected tree:\n{tree}"
    );
    let runtime = naming(&tree, &["tract", "sc-runtime"]);
    assert!(
        runtime.is_empty(),
        "sc-trainer depends on the deployment runtime: {runtime:?}"
    );
}

#[test]
fn shared_contract_crate_has_no_framework() {
    for package in ["sc-data", "sc-kernels"] {
        let tree = tree(package, "all");
        assert!(tree.contains(package), "unexpected tree:\n{tree}");
        let frameworks = naming(&tree, &["candle", "tract"]);
        assert!(
            frameworks.is_empty(),
            "{package} depends on a framework: {frameworks:?}"
        );
    }
}

/// The lines of `tree` that are exactly one of `names` (any version).
fn crates(tree: &str, names: &[&str]) -> Vec<String> {
    tree.lines()
        .filter(|l| names.iter().any(|n| l.starts_with(&format!("{n} "))))
        .map(String::from)
        .collect()
}

/// The server (feature `serve`, on for the binary) is the only user of the async stack: an app
/// embedding `Classifier` with `default-features = false` gets no tokio, axum or hyper.
#[test]
fn library_without_default_features_has_no_async_stack() {
    let stack = ["tokio", "axum", "hyper", "hyper-util"];
    let with = tree("sc-runtime", "normal");
    assert!(
        !crates(&with, &stack).is_empty(),
        "the default build should have the server's crates:\n{with}"
    );
    let without = tree_with("sc-runtime", "normal", &["--no-default-features"]);
    assert!(
        without.contains("tract-onnx"),
        "unexpected tree:\n{without}"
    );
    let found = crates(&without, &stack);
    assert!(
        found.is_empty(),
        "sc-runtime without `serve` pulls in {found:?}"
    );
}

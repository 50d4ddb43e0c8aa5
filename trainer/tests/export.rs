//! `sc-trainer export` on run directories with and without weights.

mod common;

use std::process::Command;

#[test]
fn export_of_a_run_without_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 100, 12, 4, 0);
    let run = tmp.path().join("run");
    let cfg = common::tiny_config(&data, 2);
    let opts = sc_trainer::train::FitOptions {
        progress: false,
        ..Default::default()
    };
    sc_trainer::train::fit(cfg, &run, &opts).unwrap();
    let bin = env!("CARGO_BIN_EXE_sc-trainer");
    let out = tmp.path().join("m.onnx");
    let ok = Command::new(bin)
        .arg("export")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(std::fs::metadata(&out).unwrap().len() > 10_000);
    for f in ["checkpoint.safetensors", "checkpoint.prev.safetensors"] {
        let _ = std::fs::remove_file(run.join(f));
    }
    let bad = Command::new(bin).arg("export").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "a clean error exit: {err}");
    assert!(
        err.contains("holds no weights") && err.contains("run"),
        "{err}"
    );
    assert!(!err.contains("panicked at"), "{err}");
}

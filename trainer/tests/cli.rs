//! Bad input to the `sc-trainer` binary: a non-zero exit, a message naming the file or option and
//! the problem, and never a panic.

mod common;

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sc-trainer"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked at"), "panic: {err}");
    (out.status.code().unwrap_or(-1), err)
}

/// A clean error: exit code 1 (not a signal, not a panic's 101), every needle on stderr.
fn expect_error(args: &[&str], needles: &[&str]) {
    expect_exit(args, 1, needles)
}

/// A usage error caught by the argument parser (clap): exit code 2, every needle on stderr.
fn expect_usage_error(args: &[&str], needles: &[&str]) {
    expect_exit(args, 2, needles)
}

fn expect_exit(args: &[&str], want: i32, needles: &[&str]) {
    let (code, err) = run(args);
    assert_eq!(code, want, "exit code for {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
}

#[test]
fn missing_and_broken_data() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let runs = runs.to_str().unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            "/no/such/dir",
            "--runs",
            runs,
            "--iterations",
            "2",
        ],
        &["/no/such/dir"],
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            empty.to_str().unwrap(),
            "--runs",
            runs,
            "--iterations",
            "2",
        ],
        &["no data set found"],
    );
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("data_batch_1.bin"), vec![0u8; 3073 * 2 + 100]).unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            bad.to_str().unwrap(),
            "--runs",
            runs,
            "--iterations",
            "2",
        ],
        &["data_batch_1.bin", "not a multiple"],
    );
    let mut rec = vec![0u8; 3073];
    rec[0] = 12;
    std::fs::write(bad.join("data_batch_1.bin"), &rec).unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            bad.to_str().unwrap(),
            "--runs",
            runs,
            "--iterations",
            "2",
        ],
        &["label 12 is out of range"],
    );
    expect_error(&["fit", "--runs", runs, "--iterations", "2"], &["--data"]);
}

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [base, extra].concat()
}

#[test]
fn invalid_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 100, 12, 4, 0);
    let d = data.to_str().unwrap();
    let runs = tmp.path().join("runs");
    let r = runs.to_str().unwrap();
    let base = ["fit", "--data", d, "--runs", r, "--val-size", "20"];
    expect_error(
        &with(
            &base,
            &["--iterations", "5", "--min-lr", "3", "--max-lr", "0.1"],
        ),
        &["below min_lr"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--batch-size", "500"]),
        &["batch_size 500", "larger than the training split"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--batch-size", "0"]),
        &["batch_size"],
    );
    expect_error(&with(&base, &["--iterations", "0"]), &["iterations"]);
    // A warm-up needs both flags, and must end before the first LR step.
    expect_usage_error(
        &with(
            &base,
            &[
                "--iterations",
                "20",
                "--schedule",
                "piecewise",
                "--warmup-iterations",
                "4",
            ],
        ),
        &["--warmup-lr"],
    );
    expect_error(
        &with(
            &base,
            &[
                "--iterations",
                "20",
                "--schedule",
                "piecewise",
                "--warmup-iterations",
                "12",
                "--warmup-lr",
                "0.01",
            ],
        ),
        &["warm-up", "past the first milestone"],
    );
    expect_error(
        &with(
            &base,
            &[
                "--iterations",
                "5",
                "--schedule",
                "clr",
                "--step-size",
                "50",
            ],
        ),
        &["longer than the run"],
    );
    expect_error(
        &with(
            &base,
            &[
                "--iterations",
                "5",
                "--schedule",
                "piecewise",
                "--milestones",
                "3,80",
            ],
        ),
        &["beyond the run"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--model", "resnet21"]),
        &["6n + 2"],
    );
    expect_error(
        &[
            "fit",
            "--data",
            d,
            "--runs",
            r,
            "--iterations",
            "5",
            "--val-size",
            "100",
        ],
        &["leaves no training images"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--device", "cuda"]),
        &["without CUDA support"],
    );
    // bf16 on the CPU needs AVX512_BF16: refused, naming it, on a CPU without it or with the
    // kernels capped below AVX-512.
    let out = Command::new(env!("CARGO_BIN_EXE_sc-trainer"))
        .args(with(&base, &["--iterations", "5", "--precision", "bf16"]))
        .env("SC_KERNELS_ISA", "avx2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("precision bf16") && err.contains("AVX512_BF16"),
        "{err}"
    );
    expect_usage_error(
        &with(&base, &["--iterations", "5", "--precision", "fp8"]),
        &["unknown precision", "f32 or bf16"],
    );
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "batch_size = 8\niterations = 3\nbogus_key = 1\n[model]\nname='resnet8'\n[data]\npath='x'\n[schedule]\nkind='constant'\nlr=0.1\n").unwrap();
    expect_error(
        &["fit", "--config", cfg.to_str().unwrap(), "--runs", r],
        &["c.toml", "bogus_key"],
    );
    expect_error(&["fit", "--config", "/no/such.toml"], &["/no/such.toml"]);
}

#[test]
fn export_needs_a_run_with_weights() {
    let tmp = tempfile::tempdir().unwrap();
    expect_error(&["export", tmp.path().to_str().unwrap()], &["config.json"]);
}

#[test]
fn unwritable_output_is_detected_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 100, 12, 4, 0);
    // A file where the runs directory should be.
    let blocker = tmp.path().join("runs");
    std::fs::write(&blocker, b"x").unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--runs",
            blocker.to_str().unwrap(),
            "--iterations",
            "2",
            "--val-size",
            "20",
        ],
        &["cannot create the output directory"],
    );
    let _ = Path::new("");
}

#[test]
fn bad_files_and_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 100, 12, 4, 0);
    let d = data.to_str().unwrap();
    let runs = t.join("runs");
    let r = runs.to_str().unwrap();
    let base = ["fit", "--data", d, "--runs", r, "--val-size", "20"];

    // Config files: a directory, an empty file, negative and zero sizes, an unreadable file.
    let cfg_dir = t.join("cfg.toml");
    std::fs::create_dir(&cfg_dir).unwrap();
    expect_error(
        &["fit", "--config", cfg_dir.to_str().unwrap()],
        &["cfg.toml"],
    );
    let empty = t.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    expect_error(
        &["fit", "--config", empty.to_str().unwrap()],
        &["empty.toml", "missing field"],
    );
    let body = |extra: &str| {
        format!(
            "batch_size = 8\niterations = 3\n{extra}\n[model]\nname='resnet8'\n[data]\npath='{d}'\nval_size = 20\n[schedule]\nkind='constant'\nlr=0.1\n"
        )
    };
    for (i, (extra, needle)) in [
        ("seed = -1", "seed"),
        ("eval_batch_size = 0", "eval_batch_size must be at least 1"),
        ("checkpoint_every = -3", "checkpoint_every"),
    ]
    .into_iter()
    .enumerate()
    {
        let p = t.join(format!("c{i}.toml"));
        std::fs::write(&p, body(extra)).unwrap();
        expect_error(
            &["fit", "--config", p.to_str().unwrap(), "--runs", r],
            &[needle],
        );
    }
    let neg = t.join("neg.toml");
    std::fs::write(&neg, body("").replace("batch_size = 8", "batch_size = -8")).unwrap();
    expect_error(
        &["fit", "--config", neg.to_str().unwrap(), "--runs", r],
        &["neg.toml", "batch_size"],
    );
    // As root, permission bits do not stop reads: an unreadable file is a symlink to
    // /proc/self/mem, whose first page fails to read with EIO.
    let mem = t.join("mem.toml");
    std::os::unix::fs::symlink("/proc/self/mem", &mem).unwrap();
    if std::fs::read(&mem).is_err() {
        expect_error(
            &["fit", "--config", mem.to_str().unwrap()],
            &["mem.toml", "Input/output error"],
        );
    }

    // Negative and zero sizes on the command line.
    expect_usage_error(
        &with(&base, &["--iterations", "5", "--batch-size=-4"]),
        &["--batch-size"],
    );
    expect_usage_error(&with(&base, &["--iterations=-5"]), &["--iterations"]);
    expect_error(
        &with(&base, &["--epochs", "0"]),
        &["epochs must be a positive number"],
    );
    expect_error(
        &with(&base, &["--epochs=-2"]),
        &["epochs must be a positive number"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--train-size", "0"]),
        &["train_size"],
    );
    expect_error(
        &with(&base, &["--iterations", "5", "--train-size", "1000"]),
        &["train_size 1000"],
    );

    // --resume of a directory that does not exist, or is not a run.
    let missing = t.join("no-run");
    expect_error(
        &["fit", "--resume", missing.to_str().unwrap()],
        &["no-run", "config.json"],
    );
    expect_error(&["fit", "--resume", d], &["config.json"]);
    expect_error(&["export", missing.to_str().unwrap()], &["no-run"]);

    // Data that is a regular file of no known format, and an empty CIFAR batch.
    let junk = t.join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            junk.to_str().unwrap(),
            "--runs",
            r,
            "--iterations",
            "2",
        ],
        &["junk.bin", "not a multiple"],
    );
    let c = t.join("c");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("data_batch_1.bin"), b"").unwrap();
    expect_error(
        &[
            "fit",
            "--data",
            c.to_str().unwrap(),
            "--runs",
            r,
            "--iterations",
            "2",
        ],
        &["data_batch_1.bin", "empty"],
    );
}

#[test]
fn config_file_errors_name_the_file_and_clr_defaults_its_step_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 100, 12, 4, 0);
    let cfg = tmp.path().join("zero.toml");
    std::fs::write(
        &cfg,
        format!(
            "batch_size = 0\niterations = 3\n[model]\nname='resnet8'\n[data]\npath='{}'\nval_size=20\n[schedule]\nkind='constant'\nlr=0.1\n",
            data.display()
        ),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    expect_error(
        &[
            "fit",
            "--config",
            cfg.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
        ],
        &["zero.toml", "batch_size"],
    );
    // --schedule clr without --step-size: a quarter of the run, not an error.
    let (code, err) = run(&[
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
        "--model",
        "resnet8",
        "--val-size",
        "20",
        "--batch-size",
        "16",
        "--iterations",
        "4",
        "--schedule",
        "clr",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// `data holdout` writes exactly the images the run validated on, in a format the runtime reads,
/// and refuses what it cannot write with a message naming the run or file.
#[test]
fn holdout_writes_the_run_s_validation_images() {
    use sc_data::dataset::{Dataset, Split};
    let tmp = tempfile::tempdir().unwrap();
    for (kind, out_name) in [("cifar", "val.bin"), ("idx", "val-images-idx3-ubyte")] {
        let data = tmp.path().join(kind);
        std::fs::create_dir(&data).unwrap();
        let mut cfg = if kind == "cifar" {
            common::tiny_config(&common::make_cifar(&data, 12), 1)
        } else {
            common::tiny_config(&common::make_idx(&data, 90, 12, 4, 3), 1)
        };
        cfg.data.val_size = 17;
        cfg.data.split_seed = 5;
        let dir = tmp.path().join(format!("run-{kind}"));
        std::fs::create_dir(&dir).unwrap();
        // The run's config names a path elsewhere; --data says where the set is here.
        let mut moved = cfg.clone();
        moved.data.path = "/data/on/another/machine".into();
        sc_trainer::io::write_json(&dir.join("config.json"), &moved).unwrap();
        let out = tmp.path().join(out_name);
        let (code, err) = run(&[
            "data",
            "holdout",
            dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{kind}: {err}");
        let want = cfg.data.load().unwrap().val;
        let got = Dataset::open(&out, Split::Test).unwrap();
        assert_eq!(got.labels, want.labels, "{kind}");
        assert_eq!(got.images, want.images, "{kind}");
        assert_eq!(got.len(), 17);
        // Without --data, the run's own path (gone here) is named.
        expect_error(
            &[
                "data",
                "holdout",
                dir.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &["/data/on/another/machine"],
        );
    }
    // `data holdout` of the run on `kind` data, to `out`, fails naming what is in `needles`.
    let holdout_error = |kind: &str, out: &std::path::Path, needles: &[&str]| {
        expect_error(
            &[
                "data",
                "holdout",
                tmp.path().join(format!("run-{kind}")).to_str().unwrap(),
                "--data",
                tmp.path().join(kind).to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            needles,
        )
    };
    // An IDX set needs an IDX images name for its pair.
    holdout_error(
        "idx",
        &tmp.path().join("val.bin"),
        &["val.bin", "images-idx3"],
    );
    // The pair is written whole or not at all: when the images file cannot be written (here a
    // directory has its name), no labels file is left behind to pass for a data set.
    let busy = tmp.path().join("busy-images-idx3-ubyte");
    std::fs::create_dir(&busy).unwrap();
    holdout_error("idx", &busy, &["busy-images-idx3-ubyte"]);
    assert!(!tmp.path().join("busy-labels-idx1-ubyte").exists());
    // A CIFAR-10 file under a name the readers would take for CIFAR-100.
    holdout_error(
        "cifar",
        &tmp.path().join("val-100.bin"),
        &["val-100.bin", "CIFAR-100"],
    );
    // Not a run directory.
    expect_error(
        &[
            "data",
            "holdout",
            tmp.path().join("idx").to_str().unwrap(),
            "--out",
            "x.bin",
        ],
        &["config.json"],
    );
}

/// `SC_KERNELS_ISA`'s values, narrowest first.
const ISAS: [&str; 3] = ["portable", "avx2", "avx512"];

/// The index in [`ISAS`] of the widest instruction set this CPU runs, from its feature flags (not
/// from sc-kernels): avx512 needs AVX-512F, avx2 needs AVX2 and FMA.
fn cpu_isa() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return 2;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return 1;
        }
    }
    0
}

/// `fit` on the CPU trains with the instruction set asked for, capped to the CPU's:
/// min(requested, CPU), and says so.
#[test]
fn fit_uses_the_requested_instruction_set_capped_to_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 60, 8, 4, 0);
    let cpu = cpu_isa();
    for (rank, requested) in ISAS.into_iter().enumerate() {
        let out = Command::new(env!("CARGO_BIN_EXE_sc-trainer"))
            .args(["fit", "--data"])
            .arg(&data)
            .arg("--runs")
            .arg(tmp.path().join("runs"))
            .args([
                "--name",
                requested,
                "--model",
                "resnet8",
                "--val-size",
                "20",
            ])
            .args(["--batch-size", "8", "--iterations", "1", "--quiet"])
            .env("SC_KERNELS_ISA", requested)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{requested}: {err}");
        let line = format!(
            "CPU kernels: {} (CPU: {}; SC_KERNELS_ISA={requested})",
            ISAS[rank.min(cpu)],
            ISAS[cpu]
        );
        assert!(err.contains(&line), "expected `{line}` in:\n{err}");
    }
}

/// The recipe and claims presets set their own seeds: `--seeds` is refused there, not ignored,
/// and a linear warm-up needs a warm-up to shape.
#[test]
fn options_that_would_do_nothing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 60, 12, 4, 3);
    let d = data.to_str().unwrap();
    for exp in ["claims", "recipe"] {
        expect_error(
            &[
                "reproduce",
                exp,
                "--scale",
                "tiny",
                "--data",
                d,
                "--seeds",
                "3",
                "--dry-run",
            ],
            &["--seeds 3 does nothing for", exp, "presets/"],
        );
    }
    expect_usage_error(
        &[
            "fit",
            "--data",
            d,
            "--schedule",
            "piecewise",
            "--warmup-shape",
            "linear",
        ],
        &["--warmup-iterations"],
    );
}

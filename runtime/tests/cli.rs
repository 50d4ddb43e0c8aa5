//! The `sc-runtime` binary: each command on files made here, and bad input as a non-zero exit with
//! the file named on stderr and no panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{png, solid_cifar, Tiny};
use sc_runtime::data::write;

const RGB: [&str; 3] = ["red", "green", "blue"];

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sc-runtime"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("runs the binary")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A clean error: exit code 1 (not a signal, not a panic's 101), every needle on stderr.
fn fails(out: &Output, needles: &[&str]) {
    exits_with(out, 1, needles)
}

/// A usage error caught by the argument parser (clap): exit code 2, every needle on stderr.
fn usage_error(out: &Output, needles: &[&str]) {
    exits_with(out, 2, needles)
}

fn exits_with(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded; stderr: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{:?}; stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked at"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in stderr: {stderr}");
    }
}

fn setup(dir: &Path) {
    Tiny::ours(3, 32, &RGB).write(dir, "model.onnx");
    Tiny::foreign(3, 32, 3).write(dir, "foreign.onnx");
    let records = vec![
        (0, solid_cifar([200, 0, 0])),
        (1, solid_cifar([0, 200, 0])),
        (2, solid_cifar([0, 0, 200])),
        (1, solid_cifar([0, 0, 200])),
    ];
    std::fs::create_dir(dir.join("cifar")).unwrap();
    write::cifar10(&dir.join("cifar/test_batch.bin"), &records).unwrap();
    std::fs::write(
        dir.join("blue.png"),
        png(5, 5, None, &[0, 0, 255].repeat(25)),
    )
    .unwrap();
}

#[test]
fn eval_predict_bench_info() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let (model, cifar) = (d.join("model.onnx"), d.join("cifar"));

    let text = ok(&run(&[&"eval", &model, &cifar, &"--threads", &"2"]));
    assert!(text.contains("accuracy  75.00% (3 / 4)"), "{text}");
    assert!(
        text.contains("confusion matrix") && text.contains("green"),
        "{text}"
    );

    let json = ok(&run(&[
        &"eval",
        &model,
        &cifar.join("test_batch.bin"),
        &"--json",
        &"--limit",
        &"2",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["images"], 2);
    assert_eq!(v["accuracy"], 1.0);
    assert_eq!(v["confusion"][1][1], 1);

    // The official archive as downloaded, and the directory holding it, read without unpacking.
    let batch = std::fs::read(cifar.join("test_batch.bin")).unwrap();
    let archive = d.join("fetched/cifar-10-binary.tar.gz");
    std::fs::create_dir(d.join("fetched")).unwrap();
    sc_data::archive::write_tar_gz(&archive, &[("cifar-10-batches-bin/test_batch.bin", &batch)])
        .unwrap();
    for data in [archive.clone(), d.join("fetched")] {
        let text = ok(&run(&[&"eval", &model, &data, &"--threads", &"2"]));
        assert!(text.contains("accuracy  75.00% (3 / 4)"), "{text}");
    }
    let gz = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &gz[..gz.len() / 2]).unwrap();
    fails(
        &run(&[&"eval", &model, &archive]),
        &["cifar-10-binary.tar.gz", "corrupt or truncated archive"],
    );

    let text = ok(&run(&[
        &"predict",
        &model,
        &d.join("blue.png"),
        &"--top-k",
        &"2",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].contains("blue (2)"), "{text}");

    let json = ok(&run(&[
        &"bench",
        &model,
        &"--batch",
        &"1,3",
        &"--seconds",
        &"0",
        &"--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["batch"], 3);

    // a foreign model: bench needs no flags, predict and eval need the preprocessing
    ok(&run(&[
        &"bench",
        &d.join("foreign.onnx"),
        &"--batch",
        &"2",
        &"--seconds",
        &"0",
    ]));
    let pre = [
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--classes",
        "r,g,b",
    ];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"predict"];
    let (fm, blue) = (d.join("foreign.onnx"), d.join("blue.png"));
    args.push(&fm);
    args.push(&blue);
    args.extend(pre.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    let text = ok(&run(&args));
    assert!(text.lines().nth(1).unwrap().contains(" b (2)"), "{text}");

    let text = ok(&run(&[&"info", &model]));
    assert!(
        text.contains("sc.classes") && text.contains("image float32 [batch, 3, 32, 32]"),
        "{text}"
    );
    assert!(text.contains("Conv 1") && text.contains("Gemm 1"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&run(&[&"info", &model, &"--json"]))).unwrap();
    assert_eq!(v["op_counts"]["ReduceMean"], 1);
}

#[test]
fn bad_input_exits_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let (model, cifar) = (d.join("model.onnx"), d.join("cifar"));
    std::fs::write(d.join("empty.onnx"), b"").unwrap();
    std::fs::write(d.join("text.onnx"), b"hello\n").unwrap();
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(d.join("cut.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(d.join("junk.png"), b"not an image").unwrap();
    std::fs::write(
        d.join("huge.png"),
        png(20_000, 20_000, None, &vec![9; 60_000]),
    )
    .unwrap();
    std::fs::write(d.join("short.bin"), vec![0u8; 3073 * 2 - 10]).unwrap();

    fails(&run(&[&"info", &d.join("missing.onnx")]), &["missing.onnx"]);
    fails(
        &run(&[&"eval", &d.join("missing.onnx"), &cifar]),
        &["missing.onnx"],
    );
    fails(&run(&[&"eval", &d, &cifar]), &["directory"]);
    fails(
        &run(&[&"eval", &d.join("empty.onnx"), &cifar]),
        &["empty.onnx", "empty file"],
    );
    fails(
        &run(&[&"predict", &d.join("text.onnx"), &d.join("blue.png")]),
        &["text.onnx"],
    );
    fails(
        &run(&[&"bench", &d.join("cut.onnx"), &"--seconds", &"0"]),
        &["cut.onnx"],
    );
    fails(
        &run(&[&"predict", &model, &d.join("junk.png")]),
        &["junk.png"],
    );
    fails(
        &run(&[&"predict", &model, &d.join("huge.png")]),
        &["huge.png"],
    );
    fails(
        &run(&[&"predict", &model, &d.join("nope.png")]),
        &["nope.png"],
    );
    fails(
        &run(&[&"eval", &model, &d.join("short.bin")]),
        &["short.bin", "not a multiple"],
    );
    fails(&run(&[&"eval", &model, &d.join("no-data")]), &["no-data"]);
    fails(&run(&[&"eval", &model, &d]), &["no data set found"]);
    // a foreign model without its preprocessing, and half a description
    fails(
        &run(&[&"eval", &d.join("foreign.onnx"), &cifar]),
        &["foreign.onnx", "--mean"],
    );
    fails(
        &run(&[&"eval", &d.join("foreign.onnx"), &cifar, &"--mean", &"0.5"]),
        &["--std"],
    );
    fails(
        &run(&[&"eval", &model, &cifar, &"--threads", &"0"]),
        &["--threads"],
    );
    fails(
        &run(&[&"predict", &model, &d.join("blue.png"), &"--top-k", &"0"]),
        &["--top-k"],
    );
    fails(&run(&[&"bench", &model, &"--batch", &"0"]), &["--batch"]);
    // What the argument parser refuses is its usage error (exit 2), naming the flag.
    usage_error(&run(&[&"bench", &model, &"--batch=-1"]), &["--batch"]);
    usage_error(
        &run(&[&"info", &model, &"--no-such-flag"]),
        &["--no-such-flag"],
    );
}

#[test]
fn bad_data_and_models_exit_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let model = d.join("model.onnx");
    let eval = |data: &Path, needles: &[&str]| fails(&run(&[&"eval", &model, &data]), needles);
    // IDX: wrong magic, mismatched counts, corrupt gzip, empty file
    let (ip, lp) = (
        d.join("t10k-images-idx3-ubyte"),
        d.join("t10k-labels-idx1-ubyte"),
    );
    write::idx(&ip, &lp, 2, 2, &[0; 12], &[1, 2, 3]).unwrap();
    let mut bytes = std::fs::read(&ip).unwrap();
    bytes[3] = 0x09;
    std::fs::write(&ip, &bytes).unwrap();
    eval(&ip, &["t10k-images-idx3-ubyte", "wrong IDX magic"]);
    write::idx(&ip, &d.join("other-labels"), 2, 2, &[0; 8], &[1, 2]).unwrap();
    eval(&ip, &["t10k-labels-idx1-ubyte", "holds 3 labels"]);
    let gz = d.join("t10k-images-idx3-ubyte.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 9, 9, 9, 9, 9, 9, 9, 9]).unwrap();
    eval(&gz, &["t10k-images-idx3-ubyte.gz"]);
    std::fs::write(&ip, b"").unwrap();
    eval(&ip, &["t10k-images-idx3-ubyte", "too short"]);
    // CIFAR: label beyond the classes; a directory where the batch file should be
    let mut rec = solid_cifar([1, 2, 3]);
    rec.insert(0, 10);
    std::fs::write(d.join("labels.bin"), &rec).unwrap();
    eval(
        &d.join("labels.bin"),
        &["labels.bin", "label 10 is out of range"],
    );
    let c = d.join("c10");
    std::fs::create_dir_all(c.join("test_batch.bin")).unwrap();
    eval(&c, &["test_batch.bin", "is a directory"]);
    // Unreadable files (as root, permission bits do not apply: a symlink to /proc/self/mem,
    // whose first page fails to read with EIO).
    let mem = d.join("mem.onnx");
    std::os::unix::fs::symlink("/proc/self/mem", &mem).unwrap();
    if std::fs::read(&mem).is_err() {
        fails(&run(&[&"info", &mem]), &["mem.onnx", "Input/output error"]);
        let data = d.join("test_batch_mem.bin");
        std::os::unix::fs::symlink("/proc/self/mem", &data).unwrap();
        eval(&data, &["test_batch_mem.bin", "Input/output error"]);
        let img = d.join("mem.png");
        std::os::unix::fs::symlink("/proc/self/mem", &img).unwrap();
        fails(
            &run(&[&"predict", &model, &img]),
            &["mem.png", "Input/output error"],
        );
    }
    // An empty image, an operator tract does not support.
    std::fs::write(d.join("empty.png"), b"").unwrap();
    fails(
        &run(&[&"predict", &model, &d.join("empty.png")]),
        &["empty.png", "empty file"],
    );
    let mut p = Tiny::ours(3, 32, &RGB).proto();
    p.graph.as_mut().unwrap().node[1].op_type = "NoSuchOp".into();
    std::fs::write(d.join("op.onnx"), prost::Message::encode_to_vec(&p)).unwrap();
    fails(
        &run(&[&"predict", &d.join("op.onnx"), &d.join("blue.png")]),
        &["op.onnx", "NoSuchOp"],
    );
    // A graph that makes tract panic (a ReduceMean axis beyond the rank): an error, no panic text.
    let mut p = Tiny::ours(3, 32, &RGB).proto();
    p.graph.as_mut().unwrap().node[1].attribute[0].ints = vec![2, 6];
    std::fs::write(d.join("axis.onnx"), prost::Message::encode_to_vec(&p)).unwrap();
    fails(
        &run(&[&"eval", &d.join("axis.onnx"), &d.join("cifar")]),
        &["axis.onnx", "cannot build an inference plan"],
    );
}

#[test]
fn executor_and_instruction_set_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let model = d.join("model.onnx");
    let with_env = |key: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_sc-runtime"))
            .args(
                [&"info" as &dyn AsRef<std::ffi::OsStr>, &model]
                    .iter()
                    .map(|a| a.as_ref()),
            )
            .env(key, value)
            .output()
            .expect("runs the binary")
    };
    fails(
        &with_env("SC_RUNTIME_ENGINE", "fast"),
        &["SC_RUNTIME_ENGINE", "fast"],
    );
    fails(
        &with_env("SC_KERNELS_ISA", "avx9"),
        &["SC_KERNELS_ISA", "avx9"],
    );
    let tract = ok(&with_env("SC_RUNTIME_ENGINE", "tract"));
    assert!(
        tract.contains("executor    tract (SC_RUNTIME_ENGINE=tract)"),
        "{tract}"
    );
    // Every instruction set is accepted, capped to what the CPU has: the kernels use
    // min(requested, CPU), read here from the CPU flags, not from sc-kernels.
    let cpu = cpu_isa();
    let info = |requested: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sc-runtime"));
        cmd.arg("info")
            .arg(&model)
            .env("SC_RUNTIME_ENGINE", "native");
        match requested {
            Some(isa) => cmd.env("SC_KERNELS_ISA", isa),
            None => cmd.env_remove("SC_KERNELS_ISA"),
        };
        ok(&cmd.output().expect("runs the binary"))
    };
    for (rank, requested) in ISAS.into_iter().enumerate() {
        let used = ISAS[rank.min(cpu)];
        let out = info(Some(requested));
        let kernels = format!(
            "kernels     {used} (CPU: {}; SC_KERNELS_ISA={requested})",
            ISAS[cpu]
        );
        assert!(out.contains(&kernels), "expected `{kernels}` in:\n{out}");
        let executor = format!("sc-kernels {used} convolutions");
        assert!(out.contains(&executor), "expected `{executor}` in:\n{out}");
    }
    // Unset: the widest the CPU has.
    let out = info(None);
    let kernels = format!(
        "kernels     {0} (CPU: {0}; SC_KERNELS_ISA unset)",
        ISAS[cpu]
    );
    assert!(out.contains(&kernels), "expected `{kernels}` in:\n{out}");
}

/// `SC_KERNELS_ISA`'s values, narrowest first.
const ISAS: [&str; 3] = ["portable", "avx2", "avx512"];

/// The index in [`ISAS`] of the widest instruction set this CPU runs, from its feature flags:
/// avx512 needs AVX-512F, avx2 needs AVX2 and FMA.
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

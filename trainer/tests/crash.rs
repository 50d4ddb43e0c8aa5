//! Crash safety of `sc-trainer fit`: nothing is lost when the process is killed, interrupted, or
//! cannot write.
//!
//! - SIGKILL at seeded moments during training, each followed by `fit --resume`, ends with exactly
//!   the weights and metrics of an uninterrupted run.
//! - Ctrl-C (SIGINT) writes a checkpoint at the iteration it stopped at and exits non-zero naming
//!   `--resume`; resuming finishes the run.
//! - An output directory that cannot be created is reported before any training. Tests run as
//!   root here, where permission bits do not stop writes, so "unwritable" is made with a regular
//!   file where a parent directory should be, and with `/sys` (where even root cannot create
//!   directories).
//! - A checkpoint write that fails (the temporary file is a symlink to `/dev/full`, i.e. a full disk;
//!   or a directory) leaves the latest and the previous checkpoints as they were.

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use sc_trainer::checkpoint::{self, TrainState, CHECKPOINT, PREVIOUS};

const ITERATIONS: usize = 40;

fn sc_trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sc-trainer"));
    // The same thread count in every session, whatever the machine.
    c.env("RAYON_NUM_THREADS", "2");
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// `fit` of a fresh run `runs/name`: ResNet-8 on 12x12 IDX data, checkpoints every 3 iterations.
fn fit_args(data: &Path, runs: &Path, name: &str, iterations: usize) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let mut v: Vec<String> = ["fit", "--data"].map(s).to_vec();
    v.push(data.display().to_string());
    v.push(s("--runs"));
    v.push(runs.display().to_string());
    for (k, val) in [
        ("--name", name.to_string()),
        ("--model", s("resnet8")),
        ("--batch-size", s("16")),
        ("--iterations", iterations.to_string()),
        ("--checkpoint-every", s("3")),
        ("--eval-every", s("5")),
        ("--val-size", s("40")),
        ("--pad", s("1")),
        ("--min-lr", s("0.02")),
        ("--max-lr", s("0.2")),
        ("--seed", s("11")),
    ] {
        v.push(s(k));
        v.push(val);
    }
    v.push(s("--quiet"));
    v
}

fn resume_args(dir: &Path) -> Vec<String> {
    vec![
        "fit".into(),
        "--resume".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ]
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked at"), "panic: {err}");
    out
}

fn run_ok(args: &[String]) {
    let out = finish(sc_trainer().args(args).spawn().unwrap());
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The iteration of the checkpoint the run directory reports (`state.json`, written after each).
fn checkpointed(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TrainState>(&t).ok())
        .map_or(0, |s| s.iteration)
}

/// Waits until the run has checkpointed iteration `at` or later, then `delay` more; `None` if the
/// process ended first.
fn wait_for(child: &mut Child, dir: &Path, at: usize, delay: Duration) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpointed(dir) < at {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(delay);
    Some(checkpointed(dir))
}

/// Every tensor of a checkpoint (weights, BatchNorm statistics, momentum buffers) as raw bytes.
fn tensors(file: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `metrics.jsonl` records without their timing fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            // Timings differ between runs.
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("images_per_s");
            v.as_object_mut().unwrap().remove("train_s");
            v
        })
        .collect()
}

fn idx_data(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::make_idx(&data, 360, 12, 4, 5)
}

#[test]
fn sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = idx_data(tmp.path());
    let runs = tmp.path().join("runs");
    run_ok(&fit_args(&data, &runs, "reference", ITERATIONS));
    let reference = runs.join("reference");
    let dir = runs.join("killed");

    // Seeded kill moments: a checkpoint this session must reach (so that the kill lands in
    // training, past startup), then a delay of 0-39 ms. An iteration takes a few ms here and a
    // checkpoint (three fsyncs) tens of ms, so the kills fall in steps, validations and
    // checkpoint writes alike.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut kills = Vec::new();
    let mut args = fit_args(&data, &runs, "killed", ITERATIONS);
    let mut start = 0;
    while kills.len() < 4 {
        let at = (start + 1 + next(8) as usize).min(ITERATIONS - 15);
        let delay = Duration::from_millis(next(40));
        let mut child = sc_trainer().args(&args).spawn().unwrap();
        let seen = wait_for(&mut child, &dir, at, delay);
        child.kill().unwrap(); // SIGKILL
        let out = finish(child);
        let seen = seen.unwrap_or_else(|| {
            panic!(
                "the run ended before the kill at iteration {at}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(out.status.signal(), Some(9), "not killed: {out:?}");
        let after = checkpointed(&dir);
        assert!(after < ITERATIONS, "killed after the run was complete");
        kills.push((seen, delay, after));
        start = after;
        args = resume_args(&dir);
    }
    // A temporary file as a process killed mid-write leaves it: resuming removes it.
    std::fs::write(dir.join(".checkpoint.safetensors.tmp-999999999"), b"half").unwrap();
    run_ok(&resume_args(&dir));
    eprintln!("kills (checkpoint seen, delay, checkpoint after): {kills:?}");
    assert_eq!(kills.len(), 4, "four SIGKILLs, each resumed: {kills:?}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (s["outcome"].as_str(), s["iterations"].as_u64()),
        (Some("finished"), Some(ITERATIONS as u64))
    );
    let (a, b) = (
        tensors(&reference.join(CHECKPOINT)),
        tensors(&dir.join(CHECKPOINT)),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "tensor {} differs after kills {kills:?}", x.0);
    }
    let (ma, mb) = (metrics(&reference), metrics(&dir));
    assert_eq!(ma.len(), mb.len(), "metric records after kills {kills:?}");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x, y, "metrics differ after kills {kills:?}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn ctrl_c_checkpoints_and_stops_then_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = idx_data(tmp.path());
    let runs = tmp.path().join("runs");
    let dir = runs.join("int");
    let total = 60;
    let mut child = sc_trainer()
        .args(fit_args(&data, &runs, "int", total))
        .spawn()
        .unwrap();
    wait_for(&mut child, &dir, 3, Duration::from_millis(5)).expect("run ended before SIGINT");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = finish(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a clean error exit, not a signal: {err}"
    );
    assert!(
        err.contains("interrupted after iteration") && err.contains("--resume"),
        "{err}"
    );
    let stopped: usize = err
        .split("interrupted after iteration ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("iteration in the message");
    assert!((3..total).contains(&stopped), "{err}");
    let loaded = checkpoint::load(&dir, &Device::Cpu).unwrap().unwrap();
    assert_eq!(loaded.state.iteration, stopped, "checkpoint at the stop");
    let last = metrics(&dir)
        .iter()
        .filter_map(|r| r["iter"].as_u64())
        .max();
    assert_eq!(last, Some(stopped as u64));

    run_ok(&resume_args(&dir));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (s["outcome"].as_str(), s["iterations"].as_u64()),
        (Some("finished"), Some(total as u64))
    );
}

fn fit_fails(args: &[String], needles: &[&str]) -> String {
    let t = Instant::now();
    let out = finish(sc_trainer().args(args).spawn().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    err
}

#[test]
fn unwritable_output_directory_is_reported_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = idx_data(tmp.path());
    // A regular file where a parent directory of the run should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let runs = file.join("runs");
    let err = fit_fails(
        &fit_args(&data, &runs, "r", ITERATIONS),
        &["cannot create the output directory", "file/runs/r"],
    );
    assert!(!err.contains("parameters"), "training started: {err}");
    // A file system where even root cannot create a directory.
    if Path::new("/sys/kernel").is_dir() {
        let runs = Path::new("/sys/sc-trainer-test-runs");
        fit_fails(
            &fit_args(&data, runs, "r", ITERATIONS),
            &[
                "cannot create the output directory",
                "/sys/sc-trainer-test-runs",
            ],
        );
    }
    // A run directory that is a file.
    let runs = tmp.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(runs.join("r"), b"x").unwrap();
    fit_fails(
        &fit_args(&data, &runs, "r", ITERATIONS),
        &["cannot create the output directory", "runs/r"],
    );
}

fn save(dir: &Path, w: &Var, iteration: usize) -> anyhow::Result<()> {
    let vars = HashMap::from([("w".to_string(), w.clone())]);
    let velocity = vec![("w".to_string(), w.as_tensor().affine(0.5, 0.0)?)];
    let state = TrainState {
        iteration,
        ..TrainState::default()
    };
    checkpoint::save(dir, &vars, velocity, &state)
}

fn weights_at(file: &Path) -> (usize, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let state: TrainState =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["sc.state"]).unwrap();
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    (state.iteration, t["w"].to_vec1::<f32>().unwrap())
}

/// Regression: the checkpoint used to be renamed to `checkpoint.prev.safetensors` before the new
/// one was written, so a failed write left no latest checkpoint (and lost the older previous one).
#[test]
fn failed_checkpoint_write_keeps_latest_and_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Var::from_tensor(&Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    save(dir, &w, 3).unwrap();
    w.set(&Tensor::new(&[4f32, 5.0, 6.0], &Device::Cpu).unwrap())
        .unwrap();
    save(dir, &w, 6).unwrap();
    w.set(&Tensor::new(&[7f32, 8.0, 9.0], &Device::Cpu).unwrap())
        .unwrap();
    let tmp_file = dir.join(format!(".{CHECKPOINT}.tmp-{}", std::process::id()));
    let check = || {
        assert_eq!(weights_at(&dir.join(CHECKPOINT)), (6, vec![4.0, 5.0, 6.0]));
        assert_eq!(weights_at(&dir.join(PREVIOUS)), (3, vec![1.0, 2.0, 3.0]));
        let l = checkpoint::load(dir, &Device::Cpu).unwrap().unwrap();
        assert_eq!(l.state.iteration, 6);
    };

    // A full disk: the temporary file is /dev/full, where every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", &tmp_file).unwrap();
    let e = format!("{:#}", save(dir, &w, 9).unwrap_err());
    assert!(
        e.contains("cannot write") && e.contains(CHECKPOINT) && e.contains("No space left"),
        "{e}"
    );
    assert!(!tmp_file.exists(), "the failed temporary file is removed");
    check();

    // The temporary file cannot even be created.
    std::fs::create_dir(&tmp_file).unwrap();
    let e = format!("{:#}", save(dir, &w, 9).unwrap_err());
    assert!(e.contains("cannot write") && e.contains(CHECKPOINT), "{e}");
    check();

    // Once writing works again, the next checkpoint rotates as usual.
    std::fs::remove_dir(&tmp_file).unwrap();
    save(dir, &w, 9).unwrap();
    assert_eq!(weights_at(&dir.join(CHECKPOINT)), (9, vec![7.0, 8.0, 9.0]));
    assert_eq!(weights_at(&dir.join(PREVIOUS)), (6, vec![4.0, 5.0, 6.0]));
}

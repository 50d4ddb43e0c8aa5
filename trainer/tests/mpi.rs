//! Data-parallel `fit` under `mpirun -np 2` (feature `mpi`; needs Open MPI's `mpirun`):
//! ranks stay bit-identical, equal the single-process ghost-batch reference step by step, resume
//! exactly, refuse another world size, and a killed rank ends the job quickly with its rank named.
//!
//! `cargo test --release -p sc-trainer --features mpi --test mpi`
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use sc_trainer::config::TrainConfig;

/// The MPI jobs of these tests share two cores: one at a time.
static ONE_JOB: Mutex<()> = Mutex::new(());

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sc-trainer")
}

/// `mpirun -np 2` with what a container (root, no ptrace between processes) needs.
fn mpirun(args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-np",
        "2",
        "--oversubscribe",
        "--bind-to",
        "none",
        "--mca",
        "btl",
        "self,vader",
        "--mca",
        "btl_vader_single_copy_mechanism",
        "none",
        "-x",
        "RAYON_NUM_THREADS=1",
        bin(),
    ])
    .args(args)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("RAYON_NUM_THREADS", "1");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(mut c: Command) -> String {
    let o = c.output().expect("start the command");
    let t = text(&o);
    assert!(o.status.success(), "{c:?} failed:\n{t}");
    assert!(!t.contains("panicked at"), "panic:\n{t}");
    t
}

/// 100 CIFAR-format images (80 train, 20 validation), ResNet-8, global batch 16.
fn setup(tmp: &Path) -> (PathBuf, TrainConfig) {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::make_cifar(&data, 20);
    let mut cfg = common::tiny_config(&data, 4);
    cfg.data.val_size = 20;
    cfg.eval_every = 2;
    cfg.checkpoint_every = 1;
    (data, cfg)
}

fn write_config(tmp: &Path, name: &str, cfg: &TrainConfig) -> String {
    let p = tmp.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    p.display().to_string()
}

fn fit_args<'a>(config: &'a str, runs: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "fit", "--config", config, "--runs", runs, "--name", name, "--quiet",
    ]
}

fn checkpoint(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The largest difference between two checkpoints' tensors (same names required).
fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f32, String) {
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect::<std::collections::BTreeSet<_>>()
    );
    let mut worst = (0f32, String::new());
    for (k, ta) in a {
        for (x, y) in flat(ta).iter().zip(flat(&b[k])) {
            let d = (x - y).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, k.clone());
            }
        }
    }
    worst
}

fn checksums(log: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split("MPI rank ").nth(1)?;
            let rank = rest.split(' ').next()?.parse().ok()?;
            let sum = l.split("checksum ").nth(1)?.split(' ').next()?.to_string();
            Some((rank, sum))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ranks_stay_identical_and_match_the_ghost_batch_reference_step_by_step() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (_, cfg) = setup(tmp.path());
    let runs = tmp.path().join("runs");
    let runs_s = runs.display().to_string();
    let config = write_config(tmp.path(), "cfg", &cfg);
    let mut ghost_cfg = cfg.clone();
    ghost_cfg.ghost_batches = 2;
    let ghost_config = write_config(tmp.path(), "ghost", &ghost_cfg);

    for k in 1..=4usize {
        let stop = k.to_string();
        let name = format!("mpi{k}");
        let mut args = fit_args(&config, &runs_s, &name);
        if k < 4 {
            args.extend(["--stop-after", &stop]);
        }
        let log = ok({
            let mut c = mpirun(&args);
            c.env("RUST_BACKTRACE", "0");
            c
        });
        // Both ranks report the same fingerprint of weights, statistics and momentum.
        let sums = checksums(&log);
        assert_eq!(sums.len(), 2, "one checksum line per rank:\n{log}");
        assert_eq!(sums[0].1, sums[1].1, "ranks differ after {k} steps:\n{log}");
        assert!(log.contains("data-parallel: 2 ranks x 8 images"), "{log}");

        // The single-process reference: two ghost batches of 8.
        let gname = format!("ghost{k}");
        let mut gargs = fit_args(&ghost_config, &runs_s, &gname);
        if k < 4 {
            gargs.extend(["--stop-after", &stop]);
        }
        ok({
            let mut c = Command::new(bin());
            c.args(&gargs).env("RAYON_NUM_THREADS", "1");
            c
        });
        let (d, at) = max_diff(
            &checkpoint(&runs.join(&name)),
            &checkpoint(&runs.join(&gname)),
        );
        assert!(
            d <= 2e-5,
            "after {k} steps the 2-rank run and the ghost-batch run differ by {d} in {at}"
        );
        // And the reference is needed: one BatchNorm batch of 16 trains other weights.
        if k == 4 {
            let pname = "plain4";
            ok({
                let mut c = Command::new(bin());
                c.args(fit_args(&config, &runs_s, pname))
                    .env("RAYON_NUM_THREADS", "1");
                c
            });
            let (d, _) = max_diff(
                &checkpoint(&runs.join(&name)),
                &checkpoint(&runs.join(pname)),
            );
            assert!(
                d > 1e-3,
                "a plain batch-16 run is as close ({d}): the check is blind"
            );
        }
    }
    // The config records the world size and how BatchNorm was treated.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("mpi4/config.json")).unwrap()).unwrap();
    assert_eq!(saved["parallel"]["world_size"], 2);
    assert!(saved["parallel"]["batchnorm"]
        .as_str()
        .unwrap()
        .contains("averaged across ranks"));
}

#[test]
fn a_two_rank_checkpoint_resumes_exactly_and_only_under_two_ranks() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (_, cfg) = setup(tmp.path());
    let runs = tmp.path().join("runs");
    let runs_s = runs.display().to_string();
    let config = write_config(tmp.path(), "cfg", &cfg);

    ok(mpirun(&fit_args(&config, &runs_s, "whole")));
    let mut args = fit_args(&config, &runs_s, "parts");
    args.extend(["--stop-after", "2"]);
    ok(mpirun(&args));

    // Another world size is refused, saying what was saved.
    let parts = runs.join("parts");
    let o = Command::new(bin())
        .args(["fit", "--resume", parts.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        !o.status.success(),
        "a single process resumed a 2-rank run:\n{t}"
    );
    assert!(
        t.contains("saved by 2 MPI ranks") && t.contains("mpirun -np 2"),
        "unclear refusal:\n{t}"
    );

    ok(mpirun(&[
        "fit",
        "--resume",
        parts.to_str().unwrap(),
        "--quiet",
    ]));
    let (a, b) = (checkpoint(&runs.join("whole")), checkpoint(&parts));
    for (k, t) in &a {
        assert_eq!(flat(t), flat(&b[k]), "{k} differs after resuming");
    }
    let m = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let rows = |s: String| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                // Timings differ between runs.
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("images_per_s");
                v.as_object_mut().unwrap().remove("train_s");
                v
            })
            .collect()
    };
    assert_eq!(rows(m(&runs.join("whole"))), rows(m(&parts)));
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds_naming_it_and_the_run_resumes() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut cfg) = setup(tmp.path());
    cfg.iterations = Some(100_000);
    cfg.eval_every = 1000;
    let runs = tmp.path().join("runs");
    let runs_s = runs.display().to_string();
    let config = write_config(tmp.path(), "cfg", &cfg);
    let mut child = mpirun(&fit_args(&config, &runs_s, "long"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Rank 1 names its pid; wait for a few checkpoints, then kill it.
    let mut log = String::new();
    let mut pid = None;
    let start = Instant::now();
    let ckpt = runs.join("long/state.json");
    while pid.is_none() || !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no pid / checkpoint:\n{log}"
        );
        while let Ok(l) = rx.try_recv() {
            if let Some(rest) = l.strip_prefix("MPI rank 1 of 2") {
                pid = rest
                    .split("pid ")
                    .nth(1)
                    .and_then(|s| s.split(' ').next())
                    .and_then(|s| s.parse::<u32>().ok());
            }
            log.push_str(&l);
            log.push('\n');
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    let pid = pid.unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the job still runs 30 s after rank 1 was killed:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    reader.join().unwrap();
    while let Ok(l) = rx.try_recv() {
        log.push_str(&l);
        log.push('\n');
    }
    assert!(
        !status.success(),
        "the job succeeded after a rank died:\n{log}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the job took {took:?} to end after rank 1 died:\n{log}"
    );
    assert!(
        log.contains("rank 1") && (log.contains("signal 9") || log.contains("Killed")),
        "the rank that died is not named:\n{log}"
    );

    eprintln!("the job ended {took:?} after rank 1 was killed:\n{log}");
    // The last checkpoint is whole and resumes (two more iterations, then a clean stop).
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    let at = state["iteration"].as_u64().unwrap() as usize;
    let dir = runs.join("long");
    let stop = (at + 2).to_string();
    ok(mpirun(&[
        "fit",
        "--resume",
        dir.to_str().unwrap(),
        "--quiet",
        "--stop-after",
        &stop,
    ]));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    assert!(state["iteration"].as_u64().unwrap() as usize >= at + 2);
}

#[test]
fn a_batch_that_does_not_divide_among_the_ranks_is_refused() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut cfg) = setup(tmp.path());
    cfg.batch_size = 15;
    let runs = tmp.path().join("runs");
    let config = write_config(tmp.path(), "cfg", &cfg);
    let o = mpirun(&fit_args(&config, runs.to_str().unwrap(), "odd"))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("batch_size 15 does not divide among 2 ranks"),
        "{t}"
    );
}

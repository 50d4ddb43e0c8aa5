//! `reproduce --shard I/N` on one shared runs directory: two workers started together train every
//! run of the grid exactly once, and the report `--report` writes from their runs is the report
//! of a serial `reproduce`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn reproduce(data: &Path, root: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sc-trainer"));
    c.args([
        "reproduce",
        "sc-vs-pc",
        "--scale",
        "tiny",
        "--seeds",
        "2",
        "--quiet",
    ])
    .arg("--data")
    .arg(data)
    .arg("--runs")
    .arg(root.join("runs"))
    .arg("--out")
    .arg(root.join("report"))
    .args(extra)
    .env("RAYON_NUM_THREADS", "1")
    .env_remove("SLURM_ARRAY_TASK_ID")
    .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout)
}

fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "failed:\n{t}");
    assert!(!t.contains("panicked at"), "{t}");
    t
}

/// The report with the runs directory's path taken out (the two trees differ only there).
fn report(root: &Path) -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(root.join("report").join(f))
            .unwrap()
            .replace(&root.display().to_string(), "ROOT")
    };
    (read("report.json"), read("report.md"))
}

#[test]
fn two_shards_train_each_run_once_and_their_report_is_the_serial_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 240, 12, 4, 9);
    let (serial, cluster) = (tmp.path().join("serial"), tmp.path().join("cluster"));

    // Nothing finished yet: --report says so.
    let o = reproduce(&data, &cluster, &["--report"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no run of this experiment is finished yet"),
        "{}",
        text(&o)
    );

    let workers: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|s| reproduce(&data, &cluster, &["--shard", s]).spawn_output())
        .collect();
    let logs: Vec<String> = workers.into_iter().map(|w| ok(w.join().unwrap())).collect();
    // Four runs (two settings x two seeds): each started by exactly one worker, none resumed.
    let started: Vec<String> = logs
        .iter()
        .flat_map(|l| {
            l.lines()
                .filter(|x| x.contains(" starting: "))
                .map(String::from)
        })
        .collect();
    assert_eq!(started.len(), 4, "{logs:#?}");
    let mut dirs: Vec<&str> = started
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 4, "a run was trained twice: {logs:#?}");
    assert!(logs.iter().all(|l| !l.contains("resuming")), "{logs:#?}");
    assert!(
        logs[0].contains("shard 0/2: 2 of the 4 runs"),
        "{}",
        logs[0]
    );

    // The report from the shards' runs equals the serial run's.
    ok(reproduce(&data, &cluster, &["--report"]).output().unwrap());
    ok(reproduce(&data, &serial, &[]).output().unwrap());
    let (a, b) = (report(&cluster), report(&serial));
    assert_eq!(a.0, b.0, "report.json differs");
    assert_eq!(a.1, b.1, "report.md differs");
}

/// A child whose output is collected on a thread, so that several run at once.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

//! `reproduce --shard I/N` on one shared runs directory: two workers started together train every
//! run of the grid exactly once, and the report `--report` writes from their runs is the report
//! of a serial `reproduce`.

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn reproduce(data: &Path, root: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sc-trainer"));
    c.args(["reproduce", "sc-vs-pc", "--scale", "tiny", "--quiet"])
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
    let o = reproduce(&data, &cluster, &["--seeds", "2", "--report"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no run of this experiment is finished yet"),
        "{}",
        text(&o)
    );

    let workers: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|s| reproduce(&data, &cluster, &["--seeds", "2", "--shard", s]).spawn_output())
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
    ok(reproduce(&data, &cluster, &["--seeds", "2", "--report"])
        .output()
        .unwrap());
    ok(reproduce(&data, &serial, &["--seeds", "2"])
        .output()
        .unwrap());
    let (a, b) = (report(&cluster), report(&serial));
    assert_eq!(a.0, b.0, "report.json differs");
    assert_eq!(a.1, b.1, "report.md differs");
}

#[test]
fn a_run_held_by_a_live_worker_is_skipped_and_a_killed_workers_run_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 240, 12, 4, 9);
    let root = tmp.path().join("grid");
    // Long enough runs (x100) that the first worker is still in its first run when killed.
    let args = ["--seeds", "1", "--budget", "100"];
    let mut a = reproduce(&data, &root, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_err = BufReader::new(a.stderr.take().unwrap());
    let mut line = String::new();
    let run = loop {
        line.clear();
        assert!(
            a_err.read_line(&mut line).unwrap() > 0,
            "worker A ended early"
        );
        if line.contains(" starting: ") {
            break line.trim().rsplit(' ').next().unwrap().to_string();
        }
    };
    // A second worker skips A's run, naming A; then A dies (kill -9) while B trains the other.
    let mut b = reproduce(&data, &root, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b_err = BufReader::new(b.stderr.take().unwrap());
    let mut b_log = String::new();
    loop {
        line.clear();
        assert!(
            b_err.read_line(&mut line).unwrap() > 0,
            "B ended early:\n{b_log}"
        );
        b_log.push_str(&line);
        if line.contains("skipped: ") {
            break;
        }
    }
    assert!(
        line.contains(&format!("pid {} since", a.id())) && line.contains(&format!("{run}.lock")),
        "B did not leave A's run to A:\n{b_log}"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut b_err, &mut rest).unwrap();
    b_log.push_str(&rest);
    assert!(b.wait().unwrap().success(), "{b_log}");
    assert!(
        b_log.contains("1 of 2 runs are not finished yet"),
        "{b_log}"
    );
    // A's lock went with it: the next worker takes its run over.
    let c = ok(reproduce(&data, &root, &args).output().unwrap());
    assert!(
        c.lines()
            .any(|l| (l.contains(" starting: ") || l.contains(" resuming: ")) && l.ends_with(&run)),
        "C did not take over {run}:\n{c}"
    );
    assert!(root.join("report/report.md").exists(), "{c}");
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

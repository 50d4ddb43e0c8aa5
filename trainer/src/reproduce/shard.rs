//! Grids across a cluster: `reproduce EXPERIMENT --shard I/N` trains only its share of the
//! experiment's runs, the cluster's job array picks the share (Slurm's `SLURM_ARRAY_TASK_ID`,
//! Kubernetes Indexed Jobs' `JOB_COMPLETION_INDEX`), every run is claimed with a lock on the
//! shared file system so that no run is trained twice, and `--report` writes the report from the
//! finished runs.
//!
//! The share: the planned runs in the preset's (fixed) order, run `k` belonging to shard `k mod N`,
//! so every machine computes the same shards. The lock: `RUN_DIR.lock` beside the run directory,
//! held with `flock` while the run trains (the kernel, or the NFS lock manager, releases it when
//! the worker dies, so a crashed worker's run is taken over by the next worker that reaches it and
//! resumed from its checkpoint); the file names the holder (host, pid, time) for people.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::PlannedRun;

/// The `reproduce` flags for clusters.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Train only shard I of N of the runs (0-based; run k belongs to shard k mod N) [default:
    /// from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX, else all runs].
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The number of shards when the index comes from JOB_COMPLETION_INDEX (Kubernetes Indexed
    /// Jobs: the Job's `completions`) [default: SC_SHARD_COUNT].
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Train nothing: write the report from the runs that are finished (naming those that are
    /// not).
    #[arg(long, conflicts_with = "shard")]
    pub report: bool,
}

/// Which runs this worker trains, and whether it writes the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// Every run, then the report (one machine).
    All,
    /// Shard `index` of `count`; the report only if every run of the grid is finished.
    Shard { index: usize, count: usize },
    /// No training: the report from the finished runs.
    ReportOnly,
}

impl ClusterArgs {
    /// The share from the flags, else from the job array's environment (saying which it used).
    pub fn share(&self) -> anyhow::Result<Share> {
        self.share_from(&|k| std::env::var(k).ok())
    }

    fn share_from(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Share> {
        if self.report {
            return Ok(Share::ReportOnly);
        }
        if let Some(s) = &self.shard {
            let (index, count) = parse_shard(s)?;
            if let Some(c) = self.shard_count.filter(|&c| c != count) {
                bail!("--shard {s} and --shard-count {c} disagree on the number of shards");
            }
            return Ok(Share::Shard { index, count });
        }
        let num = |name: &str| -> anyhow::Result<Option<usize>> {
            env(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        anyhow::anyhow!("{name}={v:?} is not a non-negative whole number")
                    })
                })
                .transpose()
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let Some(count) = num("SLURM_ARRAY_TASK_COUNT")? else {
                bail!("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: give --shard I/N");
            };
            // `--array=1-8` numbers tasks from 1: shards count from the array's first index.
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).with_context(|| {
                format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
            })?;
            let share = checked(index, count, "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN")?;
            eprintln!(
                "shard {index}/{count} from Slurm (SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_COUNT={count})"
            );
            return Ok(share);
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let (count, from) = match self.shard_count {
                Some(c) => (c, "--shard-count"),
                None => match num("SC_SHARD_COUNT")? {
                    Some(c) => (c, "SC_SHARD_COUNT"),
                    None => bail!(
                        "JOB_COMPLETION_INDEX={index} is set but not the number of shards: give \
                         --shard-count N or SC_SHARD_COUNT (the Job's completions)"
                    ),
                },
            };
            let share = checked(index, count, "JOB_COMPLETION_INDEX")?;
            eprintln!(
                "shard {index}/{count} from Kubernetes (JOB_COMPLETION_INDEX={index}, {from}={count})"
            );
            return Ok(share);
        }
        if let Some(c) = self.shard_count {
            bail!(
                "--shard-count {c} without a shard index: give --shard I/{c}, or run as a \
                 Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
            );
        }
        Ok(Share::All)
    }
}

fn checked(index: usize, count: usize, what: &str) -> anyhow::Result<Share> {
    if count == 0 {
        bail!("the number of shards must be at least 1");
    }
    if index >= count {
        bail!("shard index {index} ({what}) is not below the number of shards {count}");
    }
    Ok(Share::Shard { index, count })
}

/// `I/N` with `0 <= I < N`.
pub fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    let Some((index, count)) = parsed else {
        bail!("--shard takes I/N (shard I of N, counted from 0), e.g. 0/4; got {s:?}");
    };
    match checked(index, count, "--shard")? {
        Share::Shard { index, count } => Ok((index, count)),
        _ => unreachable!("checked returns a shard"),
    }
}

impl Share {
    /// The runs this worker trains, in plan order.
    pub fn select<'a>(&self, runs: &'a [PlannedRun]) -> Vec<&'a PlannedRun> {
        match self {
            Share::All => runs.iter().collect(),
            Share::Shard { .. } => runs
                .iter()
                .enumerate()
                .filter(|(k, _)| self.owns(*k))
                .map(|(_, r)| r)
                .collect(),
            Share::ReportOnly => Vec::new(),
        }
    }

    /// Whether unit `k` of a plan (a run, or a cell of `claims`) is this worker's.
    pub fn owns(&self, k: usize) -> bool {
        match self {
            Share::All => true,
            Share::Shard { index, count } => k % count == *index,
            Share::ReportOnly => false,
        }
    }

    pub fn describe(&self, runs: usize) -> String {
        self.describe_units(runs, "runs")
    }

    /// This worker's share of `n` units (`runs`, or `cells` for an experiment sharded by cell).
    pub fn describe_units(&self, n: usize, units: &str) -> String {
        match self {
            Share::All => format!("all {n} {units}"),
            Share::Shard { index, count } => format!(
                "shard {index}/{count}: {} of the {n} {units}",
                (0..n).filter(|&k| self.owns(k)).count()
            ),
            Share::ReportOnly => format!("no {units} (--report)"),
        }
    }
}

/// A claimed run: the lock is held until this is dropped.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

/// Whether a run has its result (a diverged run is a result too).
fn finished(r: &PlannedRun) -> bool {
    crate::run_dir::ended(&r.dir)
}

/// Trains this worker's share of `runs` with `train`, each run claimed first (a run another live
/// worker holds is skipped), and returns the runs the report covers — the whole grid once every
/// run is finished, the finished ones for `--report`, or `None` (no report yet, saying why) —
/// with a lock on the report directory `out`, held while the caller writes the report (two
/// workers finishing together would otherwise write its plots at once).
pub fn train_share(
    runs: &[PlannedRun],
    share: &Share,
    out: &Path,
    mut train: impl FnMut(&PlannedRun) -> anyhow::Result<()>,
) -> anyhow::Result<Option<(Vec<PlannedRun>, File)>> {
    eprintln!("this worker: {}", share.describe(runs.len()));
    for r in share.select(runs) {
        if finished(r) {
            eprintln!("[{}] done already: {}", r.label, r.dir.display());
            continue;
        }
        match claim(&r.dir)? {
            Ok(_claim) => train(r)?,
            Err(holder) => eprintln!(
                "[{}] skipped: {holder} is training it ({})",
                r.label,
                lock_path(&r.dir).display()
            ),
        }
    }
    let (done, todo): (Vec<&PlannedRun>, Vec<&PlannedRun>) = runs.iter().partition(|r| finished(r));
    if todo.is_empty() {
        return Ok(Some((runs.to_vec(), report_lock(out)?)));
    }
    let list = todo
        .iter()
        .map(|r| format!("{} seed {} ({})", r.label, r.seed, r.dir.display()))
        .collect::<Vec<_>>()
        .join("; ");
    if *share == Share::ReportOnly {
        if done.is_empty() {
            bail!("no run of this experiment is finished yet, so there is no report to write (unfinished: {list})");
        }
        eprintln!(
            "report from {} of {} runs; not finished yet: {list}",
            done.len(),
            runs.len()
        );
        return Ok(Some((
            done.into_iter().cloned().collect(),
            report_lock(out)?,
        )));
    }
    eprintln!(
        "{} of {} runs are not finished yet (other shards or workers): {list}. The report is \
         written by the worker that finishes the last run, or now from the finished runs with \
         `reproduce EXPERIMENT --report`",
        todo.len(),
        runs.len()
    );
    Ok(None)
}

/// Waits for, and holds, the lock of a report directory (`OUT/.report.lock`).
pub(super) fn report_lock(out: &Path) -> anyhow::Result<File> {
    let path = out.join(".report.lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// The lock file of a run directory.
pub fn lock_path(run_dir: &Path) -> PathBuf {
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    run_dir.with_file_name(format!("{name}.lock"))
}

/// Claims a run for this worker, or says who holds it (`Err` of the holder's description when
/// another live worker trains it).
pub fn claim(run_dir: &Path) -> anyhow::Result<Result<Claim, String>> {
    let path = lock_path(run_dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Ok(Err(if holder.is_empty() {
                "another worker".to_string()
            } else {
                holder.to_string()
            }));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot lock {} (the runs directory's file system must support flock, as \
                     local disks, NFSv4 and Lustre mounted with -o flock do)",
                    path.display()
                )
            })
        }
    }
    let me = format!(
        "host {} pid {} since {} (unix time)",
        hostname(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    file.set_len(0)
        .and_then(|_| file.write_all(me.as_bytes()))
        .and_then(|_| file.flush())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Ok(Claim { _file: file }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(shard: Option<&str>, count: Option<usize>) -> ClusterArgs {
        ClusterArgs {
            shard: shard.map(String::from),
            shard_count: count,
            report: false,
        }
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_share_comes_from_the_flag_then_slurm_then_kubernetes() {
        let none = env_of(&[]);
        assert_eq!(
            args(Some("1/3"), None).share_from(&none).unwrap(),
            Share::Shard { index: 1, count: 3 }
        );
        assert_eq!(args(None, None).share_from(&none).unwrap(), Share::All);
        let slurm = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            args(None, None).share_from(&slurm).unwrap(),
            Share::Shard { index: 3, count: 8 }
        );
        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "2"), ("SC_SHARD_COUNT", "5")]);
        assert_eq!(
            args(None, None).share_from(&k8s).unwrap(),
            Share::Shard { index: 2, count: 5 }
        );
        assert_eq!(
            args(None, Some(3)).share_from(&k8s).unwrap(),
            Share::Shard { index: 2, count: 3 }
        );
        // The flag wins over the environment.
        assert_eq!(
            args(Some("0/2"), None).share_from(&slurm).unwrap(),
            Share::Shard { index: 0, count: 2 }
        );
    }

    #[test]
    fn bad_shards_are_refused_with_the_reason() {
        let none = env_of(&[]);
        for (s, needle) in [
            ("3/3", "not below"),
            ("1/0", "at least 1"),
            ("a/2", "I/N"),
            ("2", "I/N"),
        ] {
            let e = args(Some(s), None)
                .share_from(&none)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
        let e = args(Some("0/2"), Some(3)).share_from(&none).unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "2")]);
        let e = args(None, None).share_from(&k8s).unwrap_err();
        assert!(e.to_string().contains("--shard-count"), "{e}");
        let slurm = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]);
        let e = args(None, None).share_from(&slurm).unwrap_err();
        assert!(e.to_string().contains("SLURM_ARRAY_TASK_ID"), "{e}");
    }

    #[test]
    fn a_claimed_run_is_refused_to_a_second_claim_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runs/abc");
        let first = claim(&dir).unwrap().expect("free");
        let held = claim(&dir).unwrap().expect_err("held");
        assert!(
            held.contains(&format!("pid {}", std::process::id())),
            "{held}"
        );
        drop(first);
        // A released (or crashed) holder's run is taken over.
        claim(&dir).unwrap().expect("free again");
    }

    #[test]
    fn shards_partition_the_runs_in_plan_order() {
        let runs: Vec<PlannedRun> = (0..8)
            .map(|k| PlannedRun {
                label: format!("run{k}"),
                role: super::super::Role::Sc,
                group: String::new(),
                paper: 0.0,
                seed: 0,
                config: crate::config::TrainConfig::default(),
                dir: PathBuf::from(format!("runs/{k}")),
            })
            .collect();
        let labels = |share: Share| -> Vec<String> {
            share
                .select(&runs)
                .iter()
                .map(|r| r.label.clone())
                .collect()
        };
        let mut all: Vec<String> = (0..3)
            .flat_map(|i| labels(Share::Shard { index: i, count: 3 }))
            .collect();
        assert_eq!(
            labels(Share::Shard { index: 1, count: 3 }),
            ["run1", "run4", "run7"]
        );
        all.sort();
        assert_eq!(all, labels(Share::All));
        assert!(labels(Share::ReportOnly).is_empty());
        assert_eq!(
            Share::Shard { index: 2, count: 3 }.describe(8),
            "shard 2/3: 2 of the 8 runs"
        );
    }
}

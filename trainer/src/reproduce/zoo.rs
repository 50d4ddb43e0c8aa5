//! `reproduce budget --zoo DIR`: the experiment's models a user can deploy without training. The
//! best one-cycle run at the headline's one-cycle budget or less, and PC-LR at the headline's
//! PC-LR budget (its counterpart: the epochs it is compared at), are copied as ONNX files with a
//! model card (`README.md`) and `zoo.json`. Rewritten after every run, so the zoo always holds the
//! best run finished so far; each model is written as soon as it is known (the other may still be
//! training), so that a run directory restored from a commit, which keeps no model file, still
//! has its model in the zoo.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::budget::{BudgetScale, Point};
use super::preset::Role;
use crate::config::TrainConfig;
use crate::io::{write_atomic, write_json};
use crate::run_dir::{read_config, read_run_info, read_summary, Outcome};

/// One finished run offered for the zoo.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub schedule: String,
    pub epochs: f64,
    pub seed: u64,
    pub dir: PathBuf,
    /// Its model file (see [`model_source`]).
    pub model: PathBuf,
    pub val_acc: f64,
}

/// A model in the zoo, as `zoo.json` records it.
#[derive(Debug, Clone, Serialize)]
pub struct ZooModel {
    pub file: String,
    pub arch: String,
    pub schedule: String,
    pub schedule_text: String,
    pub epochs: f64,
    pub iterations: usize,
    pub batch_size: usize,
    pub weight_decay: f64,
    /// The training augmentation, in words.
    pub augment: String,
    pub train_images: usize,
    pub val_images: usize,
    /// The training data by identity: a known set's name and the SHA-256 of its training split
    /// (never a path of the machine it was made on).
    pub data: String,
    pub seed: u64,
    /// Final validation accuracy (fraction) on the held-out split of the training set.
    pub val_acc: f64,
    /// The same budget over every finished seed, percent text (mean ± std (n)).
    pub val_acc_over_seeds: String,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub machines: Vec<String>,
    pub run: String,
    pub sha256: String,
    pub bytes: usize,
}

/// Where a run's model file is: its own `model.onnx`, else the zoo's copy of it (a run directory
/// restored from a commit keeps only what the experiment needs to go on, and the zoo holds the
/// model), checked against the zoo's checksum.
fn model_source(dir: &Path, zoo: Option<&Path>) -> Option<PathBuf> {
    let own = dir.join("model.onnx");
    if own.is_file() {
        return Some(own);
    }
    let zoo = zoo?;
    let index: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(zoo.join(INDEX)).ok()?).ok()?;
    let entry = index
        .iter()
        .find(|m| m["run"].as_str() == Some(dir.display().to_string().as_str()))?;
    let file = entry["file"].as_str()?;
    if file.contains(['/', '\\']) {
        return None;
    }
    let bytes = std::fs::read(zoo.join(file)).ok()?;
    (entry["sha256"].as_str()? == format!("{:x}", Sha256::digest(&bytes))).then(|| zoo.join(file))
}

/// The finished runs of the points, with their accuracy.
fn candidates(
    points: &[Point],
    zoo: Option<&Path>,
    keep: impl Fn(&Point) -> bool,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for p in points.iter().filter(|p| keep(p)) {
        for d in &p.runs {
            let dir = PathBuf::from(d);
            let Some(s) = read_summary(&dir) else {
                continue;
            };
            let (Outcome::Finished, Some(acc)) = (s.outcome, s.final_val_acc) else {
                continue;
            };
            let Ok(cfg) = read_config(&dir) else {
                continue;
            };
            // A run that finished without its export (a crash in between) cannot ship.
            let Some(model) = model_source(&dir, zoo) else {
                continue;
            };
            out.push(Candidate {
                model,
                schedule: p.schedule.clone(),
                epochs: p.epochs,
                seed: cfg.seed,
                dir,
                val_acc: acc,
            });
        }
    }
    out
}

/// The zoo's pair: the best finished one-cycle run at `headline.sc_epochs` or less that has its
/// model file, and the PC-LR run at `headline.pc_epochs` with the same seed (else its best).
/// `Err` says what is still missing.
pub fn pick(
    scale: &BudgetScale,
    points: &[Point],
    zoo: Option<&Path>,
) -> Result<(Candidate, Candidate), String> {
    let (sc, pc) = picks(scale, points, zoo);
    Ok((sc?, pc?))
}

/// The zoo's two models as far as they are known ([`pick`]); each `Err` says what it waits for.
/// PC-LR's model is its run with the one-cycle model's seed, else its best.
pub fn picks(
    scale: &BudgetScale,
    points: &[Point],
    zoo: Option<&Path>,
) -> (Result<Candidate, String>, Result<Candidate, String>) {
    let h = &scale.headline;
    let sc = candidates(points, zoo, |p| {
        p.role == Role::Sc && p.epochs <= h.sc_epochs
    });
    let best = sc
        .into_iter()
        // Ties: fewer epochs, then the headline's schedule, then the lower seed.
        .max_by(|a, b| {
            a.val_acc
                .total_cmp(&b.val_acc)
                .then(b.epochs.total_cmp(&a.epochs))
                .then((a.schedule == h.sc).cmp(&(b.schedule == h.sc)))
                .then(b.seed.cmp(&a.seed))
        })
        .ok_or_else(|| {
            format!(
                "no one-cycle run of the grid at {} epochs or less has finished yet",
                h.sc_epochs
            )
        });
    let pc = candidates(points, zoo, |p| {
        p.schedule == h.pc && p.epochs == h.pc_epochs
    });
    let seed = best.as_ref().ok().map(|b| b.seed);
    let counterpart = match pc.iter().find(|c| Some(c.seed) == seed) {
        Some(c) => Ok(c.clone()),
        None => pc
            .into_iter()
            .max_by(|a, b| a.val_acc.total_cmp(&b.val_acc).then(b.seed.cmp(&a.seed)))
            .ok_or_else(|| format!("{} at {} epochs has not finished", h.pc, h.pc_epochs)),
    };
    (best, counterpart)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn model(c: &Candidate, points: &[Point], zoo: &Path, data: &str) -> anyhow::Result<ZooModel> {
    let cfg: TrainConfig = read_config(&c.dir)?;
    let info = read_run_info(&c.dir)?;
    let summary =
        read_summary(&c.dir).with_context(|| format!("{}: no summary.json", c.dir.display()))?;
    let src = &c.model;
    let bytes = std::fs::read(src).with_context(|| {
        format!(
            "cannot read {} (export it with `sc-trainer export {}`)",
            src.display(),
            c.dir.display()
        )
    })?;
    // The epochs it really trained (--budget stretches the preset's).
    let epochs = cfg.epochs.unwrap_or(c.epochs);
    let file = format!(
        "{}-{}-{}ep.onnx",
        info.arch.name(),
        slug(&c.schedule),
        (epochs * 10.0).round() / 10.0
    );
    write_atomic(&zoo.join(&file), &bytes)?;
    let over_seeds = points
        .iter()
        .find(|p| p.schedule == c.schedule && p.epochs == c.epochs)
        .and_then(|p| p.val_acc.as_ref())
        .map_or_else(|| "—".into(), |s| s.text());
    let d = &cfg.data;
    let augment = match (d.crop, d.flip) {
        (true, true) => format!("pad-{} random crops and flips", d.pad),
        (true, false) => format!("pad-{} random crops", d.pad),
        (false, true) => "flips".to_string(),
        (false, false) => "no augmentation".to_string(),
    };
    Ok(ZooModel {
        file,
        arch: info.arch.name(),
        schedule: c.schedule.clone(),
        schedule_text: cfg.schedule.describe(),
        epochs,
        iterations: summary.iterations,
        batch_size: cfg.batch_size,
        weight_decay: cfg.optimizer.weight_decay,
        augment,
        train_images: info.train_images,
        val_images: info.val_images,
        data: data.to_string(),
        seed: c.seed,
        val_acc: c.val_acc,
        val_acc_over_seeds: over_seeds,
        train_seconds: summary.train_seconds,
        images_per_second: summary.images_per_second,
        machines: info.machines,
        run: c.dir.display().to_string(),
        sha256: format!("{:x}", Sha256::digest(&bytes)),
        bytes: bytes.len(),
    })
}

/// The card of a zoo directory; one this command did not write is never overwritten.
const CARD: &str = "README.md";
const INDEX: &str = "zoo.json";

/// Writes the zoo's models as each becomes known (a run directory restored from a commit keeps
/// no model file, so a model is kept in the zoo as soon as it is picked); returns what it wrote
/// and what it still waits for, or only why it waits when neither model exists. Nothing is ever
/// deleted: a model the previous zoo listed and this one does not stays in `dir`, unlisted.
pub fn write(
    dir: &Path,
    scale_name: &str,
    scale: &BudgetScale,
    plan: &super::ReproducePlan,
    points: &[Point],
) -> anyhow::Result<Result<(Vec<ZooModel>, Vec<String>), String>> {
    let (sc, pc) = picks(scale, points, Some(dir));
    let waiting: Vec<String> = [&sc, &pc]
        .iter()
        .filter_map(|p| p.as_ref().err().cloned())
        .collect();
    if sc.is_err() && pc.is_err() {
        return Ok(Err(waiting.join("; ")));
    }
    check_dir(dir, &plan.runs_root, plan.zoo_force)?;
    crate::io::remove_stale_temps(dir);
    let before = listed(dir);
    let mut models = Vec::new();
    for c in [sc.ok(), pc.ok()].into_iter().flatten() {
        models.push(model(&c, points, dir, &plan.data_key.key)?);
    }
    // The index last: its checksums describe files already in place.
    let card = card(dir, scale_name, scale, plan, &models, &waiting);
    write_atomic(&dir.join(CARD), card.as_bytes())?;
    write_json(&dir.join(INDEX), &models)?;
    for (old, _) in before {
        if !models.iter().any(|m| m.file == old) && dir.join(&old).exists() {
            eprintln!(
                "zoo {}: {old} is no longer listed in {INDEX}; it is left in place",
                dir.display()
            );
        }
    }
    Ok(Ok((models, waiting)))
}

/// The `(file, run directory)` pairs a zoo's index lists (none when it has no readable index).
fn listed(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(INDEX))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .map(|v| {
            v.iter()
                .filter_map(|m| {
                    Some((
                        m["file"].as_str()?.to_string(),
                        m["run"].as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `path` without `.` components (`./runs/x` and `runs/x` name the same runs).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
}

/// The zoo directory can be written; its README.md, if any, is a card this command wrote; and
/// its models were made from `runs_root`'s runs, unless `force`: a zoo of another experiment's
/// runs is not replaced by accident (a run directory left out of a command would otherwise start
/// a new grid and replace the shipped models with its first results).
pub fn check_dir(dir: &Path, runs_root: &Path, force: bool) -> anyhow::Result<()> {
    crate::io::ensure_writable_dir(dir)?;
    if dir.join(CARD).exists() && !dir.join(INDEX).exists() {
        anyhow::bail!(
            "{} has a {CARD} but no {INDEX}: it is not a zoo this command wrote, and its {CARD} \
             would be replaced; give --zoo an empty or new directory",
            dir.display()
        );
    }
    if force {
        return Ok(());
    }
    let foreign: Vec<String> = listed(dir)
        .into_iter()
        .filter(|(_, run)| !lexical(Path::new(run)).starts_with(lexical(runs_root)))
        .map(|(file, run)| format!("{file} (from {run})"))
        .collect();
    if !foreign.is_empty() {
        anyhow::bail!(
            "{} holds models made from another runs directory than {}: {}. Give that experiment's \
             --runs to go on with it, another --zoo directory, or --force to replace them",
            dir.display(),
            runs_root.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// "1 epoch", "30 epochs".
fn epochs_text(e: f64) -> String {
    if e == 1.0 {
        "1 epoch".into()
    } else {
        format!("{e} epochs")
    }
}

fn hours(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

fn card(
    dir: &Path,
    scale_name: &str,
    scale: &BudgetScale,
    plan: &super::ReproducePlan,
    m: &[ZooModel],
    waiting: &[String],
) -> String {
    let h = &scale.headline;
    let arch = m.first().map_or("the model", |x| x.arch.as_str());
    // A known set by its short name (the data home's copy); other data as the command named it.
    let data = match plan.data_key.key.split_once('@') {
        Some((name, _)) if name != "data" => name.to_string(),
        _ => plan.data.display().to_string(),
    };
    let mut again = format!(
        "sc-trainer reproduce budget --scale {scale_name} --data {data} --zoo {}",
        dir.display()
    );
    if plan.budget != 1.0 {
        again += &format!(" --budget {}", plan.budget);
    }
    if plan.seeds != 1 {
        again += &format!(" --seeds {}", plan.seeds);
    }
    if plan.device != "cpu" {
        again += &format!(" --device {}", plan.device);
    }
    let runs = plan.runs_root.display().to_string();
    if runs != "runs/reproduce" {
        again += &format!(" --runs {runs}");
    }
    let mut s = format!(
        "# Model zoo: super-converged {arch}\n\n\
         Written by `{again}` from its runs (docs/REPRODUCTION.md, \"Accuracy against \
         budget\"); do not edit by hand. Budget: {}\n\n\
         - **The first model** is the best finished one-cycle run at {} or less, over \
         every budget, seed and one-cycle form. It is picked by validation accuracy, so its \
         figure is a best-of-several; compare the schedules by the all-seeds column.\n\
         - **The second** is {} at {}, the budget the experiment compares one cycle's {} with \
         (the same seed where it has one, else its best).\n\n\
         | file | schedule | epochs | validation accuracy | same budget, all seeds | training time | machine |\n\
         |---|---|---:|---:|---:|---:|---|\n",
        scale.budget,
        epochs_text(h.sc_epochs),
        h.pc,
        epochs_text(h.pc_epochs),
        epochs_text(h.sc_epochs)
    );
    for x in m {
        s += &format!(
            "| `{}` | {} | {} | **{:.2} %** (seed {}) | {} | {} ({:.0} images/s) | {} |\n",
            x.file,
            x.schedule,
            x.epochs,
            100.0 * x.val_acc,
            x.seed,
            x.val_acc_over_seeds,
            hours(x.train_seconds),
            x.images_per_second,
            if x.machines.is_empty() {
                "not recorded".to_string()
            } else {
                x.machines.join("; ")
            }
        );
    }
    for w in waiting {
        s += &format!("\n**Still to come:** {w}. The experiment writes it here when it has.\n");
    }
    let (train, val) = m.first().map_or((0, 0), |x| (x.train_images, x.val_images));
    s += &format!(
        "\nValidation accuracy is on the {val} images held out of the training set ({train} \
         trained on); the validation split chose the max LR, the weight decay and these models, \
         nothing else. The official test set is not part of this experiment: evaluate on it with \
         the commands below. Training time is wall-clock, including any time the process was \
         paused.\n\n## Recipes\n\n"
    );
    for x in m {
        s += &format!(
            "- **`{}`**: {}; {} iterations of {} images ({} of {}), SGD with momentum, \
             weight decay {}, {}, seed {}. Run directory: `{}`. SHA-256 `{}` ({} bytes).\n",
            x.file,
            x.schedule_text,
            x.iterations,
            x.batch_size,
            epochs_text(x.epochs),
            x.data,
            x.weight_decay,
            x.augment,
            x.seed,
            x.run,
            x.sha256,
            x.bytes
        );
    }
    let f = dir
        .join(m.first().map_or("MODEL", |x| x.file.as_str()))
        .display()
        .to_string();
    let run = m.first().map_or("RUN_DIR", |x| x.run.as_str());
    s += &format!(
        "\nEach file carries its recipe, classes, normalization and validation accuracy as ONNX \
         metadata (`sc-runtime info FILE` prints them).\n\n## Use them\n\n\
         From the repository's root, with the binaries built (`cargo build --release -p \
         sc-trainer -p sc-runtime`; both are in `target/release/`):\n\n```\n\
         sc-trainer data fetch cifar10          # the official archive, test set included, into the data home\n\
         sc-runtime eval {f} cifar-test         # accuracy on the 10,000 test images\n\
         sc-runtime predict {f} photo.jpg       # top classes of one picture\n\
         sc-runtime serve {f} --port 8080       # an HTTP service\n\
         # The validation figure above, from the file alone: the run's held-out images, then eval\n\
         sc-trainer data holdout {run} --data {data} --out val.bin\n\
         sc-runtime eval {f} val.bin\n```\n\n\
         ## Train them again\n\n```\n{again}\n```\n\n\
         The command resumes: finished runs are kept, unfinished ones continue from their \
         checkpoints (in `{runs}/`). A run's directory is named by its recipe and the data's \
         content (`{}`), not by where the data lies, so any copy of the same data goes on from \
         these runs.\n",
        m.first().map_or(plan.data_key.key.as_str(), |x| x.data.as_str())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::run_dir::Summary;

    /// A finished run directory with this seed and accuracy (and a model file unless `onnx` is
    /// false).
    fn run(root: &Path, name: &str, seed: u64, acc: f64, onnx: bool) -> String {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = TrainConfig {
            seed,
            ..TrainConfig::default()
        };
        write_json(&dir.join("config.json"), &cfg).unwrap();
        let summary = Summary {
            outcome: Outcome::Finished,
            iterations: 10,
            final_val_acc: Some(acc),
            final_val_acc_flip: None,
            final_val_loss: Some(1.0),
            best_val_acc: Some(acc),
            test_acc: None,
            train_seconds: 1.0,
            images_per_second: 1.0,
            parameters: 1,
            message: None,
        };
        write_json(&dir.join("summary.json"), &summary).unwrap();
        if onnx {
            std::fs::write(dir.join("model.onnx"), b"onnx").unwrap();
        }
        dir.display().to_string()
    }

    fn point(schedule: &str, role: Role, epochs: f64, runs: Vec<String>) -> Point {
        Point {
            schedule: schedule.into(),
            role,
            epochs,
            max_lr: None,
            weight_decay: 5e-4,
            val_acc: None,
            accuracies: vec![],
            seeds_planned: runs.len(),
            diverged: 0,
            train_seconds: None,
            runs,
        }
    }

    #[test]
    fn the_pick_is_the_best_shippable_one_cycle_run_within_the_budget_and_pc_lr_of_its_seed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        // tiny: the headline is 1cycle at 1 epoch against pc-lr at 2.
        let scale = super::super::budget::load().unwrap().scale["tiny"].clone();
        let mut points = vec![
            point(
                "1cycle",
                Role::Sc,
                1.0,
                vec![
                    run(r, "a0", 0, 0.5, true),
                    run(r, "a1", 1, 0.6, true),
                    // The best, but it has no model file to ship.
                    run(r, "a2", 2, 0.95, false),
                ],
            ),
            // Ties with a1: the headline's schedule wins.
            point(
                "one-cycle (paper)",
                Role::Sc,
                1.0,
                vec![run(r, "b1", 1, 0.6, true)],
            ),
            // Better, but beyond the headline's budget.
            point("1cycle", Role::Sc, 2.0, vec![run(r, "c0", 0, 0.9, true)]),
        ];
        let waiting = pick(&scale, &points, None).unwrap_err();
        assert!(waiting.contains("pc-lr at 2 epochs"), "{waiting}");
        // The one-cycle model is known already.
        let (sc, pc) = picks(&scale, &points, None);
        assert_eq!(sc.unwrap().seed, 1);
        assert!(pc.unwrap_err().contains("pc-lr at 2 epochs"));
        points.push(point(
            "pc-lr",
            Role::Pc,
            2.0,
            vec![run(r, "p0", 0, 0.7, true), run(r, "p1", 1, 0.65, true)],
        ));
        let (sc, pc) = pick(&scale, &points, None).unwrap();
        assert_eq!(
            (sc.schedule.as_str(), sc.seed, sc.val_acc),
            ("1cycle", 1, 0.6)
        );
        assert_eq!(
            (pc.seed, pc.val_acc),
            (1, 0.65),
            "the same seed, not the best"
        );
        // Without that seed, PC-LR's best.
        points.last_mut().unwrap().runs.remove(1);
        let (_, pc) = pick(&scale, &points, None).unwrap();
        assert_eq!(pc.seed, 0);
        // A run restored without its model file counts when the zoo holds its model, unaltered.
        let zoo = r.join("zoo");
        std::fs::create_dir(&zoo).unwrap();
        std::fs::write(zoo.join("a2.onnx"), b"model of a2").unwrap();
        let index = |sha: String| {
            let a2 = r.join("a2").display().to_string();
            serde_json::json!([{"file": "a2.onnx", "run": a2, "sha256": sha}]).to_string()
        };
        let good = format!("{:x}", Sha256::digest(b"model of a2"));
        std::fs::write(zoo.join(INDEX), index(good)).unwrap();
        let (sc, _) = pick(&scale, &points, Some(&zoo)).unwrap();
        assert_eq!((sc.seed, sc.model.clone()), (2, zoo.join("a2.onnx")));
        std::fs::write(zoo.join(INDEX), index("00".repeat(32))).unwrap();
        let (sc, _) = pick(&scale, &points, Some(&zoo)).unwrap();
        assert_eq!(
            sc.seed, 1,
            "a zoo file that is not the one recorded does not count"
        );
    }

    #[test]
    fn a_directory_with_someone_else_s_readme_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = Path::new("runs");
        check_dir(tmp.path(), runs, false).unwrap();
        std::fs::write(tmp.path().join("README.md"), "mine").unwrap();
        let e = check_dir(tmp.path(), runs, false).unwrap_err().to_string();
        assert!(e.contains("not a zoo this command wrote"), "{e}");
        let e = check_dir(tmp.path(), runs, true).unwrap_err().to_string();
        assert!(e.contains("not a zoo this command wrote"), "--force: {e}");
        std::fs::write(tmp.path().join("zoo.json"), "[]").unwrap();
        check_dir(tmp.path(), runs, false).unwrap();
    }

    #[test]
    fn a_zoo_made_from_another_runs_directory_is_refused_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let index = serde_json::json!([
            {"file": "resnet20-1cycle-30ep.onnx", "run": "experiments/budget-cpu/runs/resnet20-a"},
            {"file": "resnet20-pc-lr-60ep.onnx", "run": "experiments/budget-cpu/runs/resnet20-b"}
        ]);
        std::fs::write(tmp.path().join(INDEX), index.to_string()).unwrap();
        // The README's old command: no --runs, so the default runs directory.
        let e = check_dir(tmp.path(), Path::new("runs/reproduce"), false)
            .unwrap_err()
            .to_string();
        for part in [
            "resnet20-1cycle-30ep.onnx (from experiments/budget-cpu/runs/resnet20-a)",
            "--runs",
            "--force",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        check_dir(tmp.path(), Path::new("experiments/budget-cpu/runs"), false).unwrap();
        check_dir(
            tmp.path(),
            Path::new("./experiments/budget-cpu/runs"),
            false,
        )
        .unwrap();
        check_dir(tmp.path(), Path::new("runs/reproduce"), true).unwrap();
    }

    #[test]
    fn slugs_name_files() {
        assert_eq!(slug("one-cycle (paper)"), "one-cycle-paper");
        assert_eq!(slug("1cycle"), "1cycle");
        assert_eq!(slug("pc-lr"), "pc-lr");
    }
}

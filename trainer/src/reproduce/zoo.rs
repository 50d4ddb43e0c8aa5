//! `reproduce budget --zoo DIR`: the experiment's models a user can deploy without training. The
//! best one-cycle run at the headline's one-cycle budget or less, and PC-LR at the headline's
//! PC-LR budget (its counterpart: the epochs it is compared at), are copied as ONNX files with a
//! model card (`README.md`) and `zoo.json`. Rewritten after every run, so the zoo always holds the
//! best run finished so far; nothing is written until both models exist.

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
    pub val_acc: f64,
}

/// A model in the zoo, as `zoo.json` records it.
#[derive(Debug, Clone, Serialize)]
pub struct ZooModel {
    pub file: String,
    pub schedule: String,
    pub schedule_text: String,
    pub epochs: f64,
    pub iterations: usize,
    pub batch_size: usize,
    pub weight_decay: f64,
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

/// The finished runs of the points, with their accuracy.
fn candidates(points: &[Point], keep: impl Fn(&Point) -> bool) -> Vec<Candidate> {
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
            out.push(Candidate {
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

/// The zoo's pair: the best finished one-cycle run at `headline.sc_epochs` or less (ties: fewer
/// epochs), and the PC-LR run at `headline.pc_epochs` with the same seed (else its best). `Err`
/// says what is still missing.
pub fn pick(scale: &BudgetScale, points: &[Point]) -> Result<(Candidate, Candidate), String> {
    let h = &scale.headline;
    let sc = candidates(points, |p| p.role == Role::Sc && p.epochs <= h.sc_epochs);
    let best = sc
        .into_iter()
        .max_by(|a, b| {
            a.val_acc
                .total_cmp(&b.val_acc)
                .then(b.epochs.total_cmp(&a.epochs))
        })
        .ok_or_else(|| {
            format!(
                "no one-cycle run at {} epochs or less has finished",
                h.sc_epochs
            )
        })?;
    let pc = candidates(points, |p| p.schedule == h.pc && p.epochs == h.pc_epochs);
    let counterpart = match pc.iter().find(|c| c.seed == best.seed) {
        Some(c) => c.clone(),
        None => pc
            .into_iter()
            .max_by(|a, b| a.val_acc.total_cmp(&b.val_acc))
            .ok_or_else(|| format!("{} at {} epochs has not finished", h.pc, h.pc_epochs))?,
    };
    Ok((best, counterpart))
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

fn model(c: &Candidate, points: &[Point], zoo: &Path) -> anyhow::Result<ZooModel> {
    let cfg: TrainConfig = read_config(&c.dir)?;
    let info = read_run_info(&c.dir)?;
    let summary =
        read_summary(&c.dir).with_context(|| format!("{}: no summary.json", c.dir.display()))?;
    let src = c.dir.join("model.onnx");
    let bytes = std::fs::read(&src).with_context(|| {
        format!(
            "cannot read {} (export it with `sc-trainer export {}`)",
            src.display(),
            c.dir.display()
        )
    })?;
    let file = format!(
        "{}-{}-{}ep.onnx",
        info.arch.name(),
        slug(&c.schedule),
        c.epochs
    );
    write_atomic(&zoo.join(&file), &bytes)?;
    let over_seeds = points
        .iter()
        .find(|p| p.schedule == c.schedule && p.epochs == c.epochs)
        .and_then(|p| p.val_acc.as_ref())
        .map_or_else(|| "—".into(), |s| s.text());
    Ok(ZooModel {
        file,
        schedule: c.schedule.clone(),
        schedule_text: cfg.schedule.describe(),
        epochs: c.epochs,
        iterations: summary.iterations,
        batch_size: cfg.batch_size,
        weight_decay: cfg.optimizer.weight_decay,
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

/// Writes the zoo when both models exist; returns what it wrote, or why it waits.
pub fn write(
    dir: &Path,
    scale_name: &str,
    scale: &BudgetScale,
    points: &[Point],
) -> anyhow::Result<Result<Vec<ZooModel>, String>> {
    let (sc, pc) = match pick(scale, points) {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    crate::io::ensure_writable_dir(dir)?;
    let models = vec![model(&sc, points, dir)?, model(&pc, points, dir)?];
    write_json(&dir.join("zoo.json"), &models)?;
    let card = card(scale_name, scale, &models);
    write_atomic(&dir.join("README.md"), card.as_bytes())?;
    Ok(Ok(models))
}

fn hours(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

fn card(scale_name: &str, scale: &BudgetScale, m: &[ZooModel]) -> String {
    let h = &scale.headline;
    let mut s = format!(
        "# Model zoo: super-converged ResNet-20 for CIFAR-10\n\n\
         Written by `sc-trainer reproduce budget --scale {scale_name} --data DATA --zoo DIR` \
         from its runs (docs/REPRODUCTION.md, \"Accuracy against budget\"); do not edit by hand. \
         The first model is the best one-cycle run at {} epochs or less; the second is {} at {} \
         epochs, what the experiment compares it with. Budget: {}\n\n\
         | file | schedule | epochs | validation accuracy | same budget, all seeds | training time | machine |\n\
         |---|---|---:|---:|---:|---:|---|\n",
        h.sc_epochs, h.pc, h.pc_epochs, scale.budget
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
    s += "\nValidation accuracy is on the 5,000 images held out of CIFAR-10's training set (the \
          split `fit` makes with `val_size = 5000`), never trained on and never used to pick \
          anything but the max LR and weight decay. The official test set is not part of this \
          experiment: evaluate on it with the commands below. Training time is wall-clock, \
          including any time the process was paused.\n\n## Recipes\n\n";
    for x in m {
        s += &format!(
            "- **`{}`**: {}; {} iterations of {} images ({} epochs), SGD with momentum, weight \
             decay {}, pad-4 random crops and flips, seed {}. Run directory: `{}`. SHA-256 `{}` \
             ({} bytes).\n",
            x.file,
            x.schedule_text,
            x.iterations,
            x.batch_size,
            x.epochs,
            x.weight_decay,
            x.seed,
            x.run,
            x.sha256,
            x.bytes
        );
    }
    s += &format!(
        "\nEach file carries its recipe, classes, normalization and validation accuracy as ONNX \
         metadata (`sc-runtime info FILE` prints them).\n\n## Use them\n\n```\n\
         sc-trainer data fetch cifar10                     # the official archive, test set included\n\
         sc-runtime eval {f} cifar-test                     # accuracy on the 10,000 test images\n\
         sc-runtime predict {f} photo.jpg                   # top classes of one picture\n\
         sc-runtime serve {f} --port 8080                   # an HTTP service\n```\n\n\
         ## Train them again\n\n```\nsc-trainer data fetch cifar10\n\
         sc-trainer reproduce budget --scale {scale_name} --data data/cifar10 --zoo DIR\n```\n\n\
         The command resumes: finished runs are kept, unfinished ones continue from their \
         checkpoints.\n",
        f = m.first().map_or("MODEL", |x| x.file.as_str()),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_name_files() {
        assert_eq!(slug("one-cycle (paper)"), "one-cycle-paper");
        assert_eq!(slug("1cycle"), "1cycle");
        assert_eq!(slug("pc-lr"), "pc-lr");
    }
}

//! `sc-trainer reproduce EXPERIMENT`: the paper's claims as commands. Runs the preset's runs
//! (resuming unfinished ones, skipping finished ones), then writes `report.md`, `report.json` and
//! plots that put our numbers beside the paper's, with a verdict per claim.

pub mod budget;
pub mod claims;
pub mod preset;
pub mod recipe;
mod report;
pub mod search;
pub mod shard;
pub mod zoo;

use std::path::PathBuf;

use anyhow::Context;

pub use preset::{expand, load, stretch, DataKey, PlannedRun, Role, PRESETS};
pub use report::{build_report, Report};

use crate::run_dir::{read_summary, Outcome};
use crate::train::{fit, FitOptions};

/// What to reproduce and where.
#[derive(Debug, Clone)]
pub struct ReproducePlan {
    pub experiment: String,
    pub scale: String,
    pub data: PathBuf,
    /// What the runs' names say of the data ([`DataKey::of`] reads it once).
    pub data_key: DataKey,
    pub seeds: u64,
    /// Every run's iterations, milestones and evaluation interval times this (1: the preset's).
    pub budget: f64,
    pub device: String,
    /// Where the runs live (shared by all experiments so that identical runs are done once).
    pub runs_root: PathBuf,
    /// Where the report goes.
    pub out: PathBuf,
    pub progress: bool,
    /// Only list the runs.
    pub dry_run: bool,
    /// `budget` only: where to put the deployable models and their card ([`zoo`]).
    pub zoo: Option<PathBuf>,
    /// `budget` only: write the zoo even where it was made from another runs directory.
    pub zoo_force: bool,
}

/// Every experiment `reproduce` knows: the presets, then `budget`, `recipe` and `claims` (each
/// with its own format, stages and report).
pub fn experiments() -> Vec<&'static str> {
    PRESETS
        .iter()
        .map(|p| p.0)
        .chain(["budget", "recipe", "claims"])
        .collect()
}

/// Checks that an experiment exists (and its preset parses).
pub fn check_experiment(experiment: &str) -> anyhow::Result<()> {
    if experiment == "budget" {
        budget::load().map(|_| ())
    } else if experiment == "recipe" {
        recipe::load().map(|_| ())
    } else if experiment == "claims" {
        claims::load().map(|_| ())
    } else {
        load(experiment).map(|_| ())
    }
}

/// Does one planned run (or nothing, when it already finished). Diverged runs are results too.
fn do_run(r: &PlannedRun, progress: bool) -> anyhow::Result<()> {
    if let Some(s) = read_summary(&r.dir) {
        if matches!(s.outcome, Outcome::Finished | Outcome::Diverged) {
            eprintln!("[{}] done already: {}", r.label, r.dir.display());
            return Ok(());
        }
    }
    let resume = r.dir.join(crate::checkpoint::CHECKPOINT).exists()
        || r.dir.join(crate::checkpoint::PREVIOUS).exists();
    eprintln!(
        "[{}] seed {} {}: {}",
        r.label,
        r.seed,
        if resume { "resuming" } else { "starting" },
        r.dir.display()
    );
    let opts = FitOptions {
        resume,
        progress,
        divergence_is_end: r.role == Role::Range,
        val_limit: (r.role == Role::Range).then_some(1000),
        export: r.role != Role::Range,
        ..FitOptions::default()
    };
    match fit(r.config.clone(), &r.dir, &opts) {
        Ok(_) => Ok(()),
        // A diverged run is an outcome to report, not a reason to stop the experiment.
        Err(e) if read_summary(&r.dir).is_some_and(|s| s.outcome == Outcome::Diverged) => {
            eprintln!("[{}] {e:#}", r.label);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("run {} ({})", r.label, r.dir.display())),
    }
}

/// Runs the experiment and writes the report; returns it.
pub fn reproduce(plan: &ReproducePlan) -> anyhow::Result<Option<Report>> {
    reproduce_share(plan, &shard::Share::All)
}

/// [`reproduce`] for one worker of a cluster: trains only `share`'s runs (each claimed with a
/// lock) and writes the report once every run is finished (`--report`: from the finished ones).
pub fn reproduce_share(
    plan: &ReproducePlan,
    share: &shard::Share,
) -> anyhow::Result<Option<Report>> {
    if plan.experiment == "budget" && *share != shard::Share::All {
        anyhow::bail!(
            "the budget experiment tunes its weight decay and learning rate before its grid, so \
             its runs depend on each other: run it on one machine, without --shard or --report"
        );
    }
    if plan.experiment == "recipe" && *share != shard::Share::All {
        anyhow::bail!(
            "the recipe experiment chooses its stack, max LR and weight decay from its earlier \
             runs, so its runs depend on each other: run it on one machine, without --shard or \
             --report"
        );
    }
    if plan.experiment == "budget" {
        return budget::reproduce(plan);
    }
    if plan.experiment == "claims" {
        if plan.zoo.is_some() {
            anyhow::bail!("--zoo is for the budget experiment, not for claims");
        }
        return claims::reproduce(plan, share);
    }
    if plan.experiment == "recipe" {
        if plan.zoo.is_some() {
            anyhow::bail!("--zoo is for the budget experiment, not for recipe");
        }
        return recipe::reproduce(plan);
    }
    if plan.zoo.is_some() {
        anyhow::bail!(
            "--zoo is for the budget experiment (its best one-cycle model and PC-LR counterpart), \
             not for {}",
            plan.experiment
        );
    }
    let preset = load(&plan.experiment)?;
    let (mut scale, mut runs) = expand(
        &preset,
        &plan.scale,
        (&plan.data, &plan.data_key),
        plan.seeds,
        &plan.device,
        &plan.runs_root,
    )?;
    if plan.budget != 1.0 {
        for r in &mut runs {
            stretch(&mut r.config, plan.budget)
                .with_context(|| format!("preset {} / {}", plan.experiment, r.label))?;
            r.dir = preset::run_dir(&plan.runs_root, &r.config, &plan.data_key);
        }
        scale.budget = format!(
            "{} -- stretched {}x by --budget (iterations, milestones, evaluation interval)",
            scale.budget, plan.budget
        );
    }
    eprintln!(
        "{} ({} scale): {} runs. Budget: {}",
        preset.title,
        plan.scale,
        runs.len(),
        scale.budget
    );
    if plan.dry_run {
        for r in &runs {
            let done = read_summary(&r.dir).is_some_and(|s| s.outcome != Outcome::Interrupted);
            println!(
                "{:<28} seed {}  {:>6} it  {}  {}",
                r.label,
                r.seed,
                r.config.iterations.unwrap_or(0),
                if done { "done   " } else { "to do  " },
                r.dir.display()
            );
        }
        return Ok(None);
    }
    crate::io::ensure_writable_dir(&plan.out)?;
    let Some((runs, _report_lock)) =
        shard::train_share(&runs, share, &plan.out, |r| do_run(r, plan.progress))?
    else {
        return Ok(None);
    };
    let report = build_report(&preset, &plan.scale, &scale.budget, &runs, &plan.out)?;
    Ok(Some(report))
}

//! `sc-trainer reproduce recipe`: the short-budget recipe, piece by piece (issue 35).
//!
//! Every choice is made on the validation split, from finished runs:
//!
//! 1. **Pieces:** the baseline (the budget experiment's 1cycle at 30 epochs, whose max LR and
//!    weight decay were chosen there) and each piece alone over it, `seeds` seeds each. Flip
//!    test-time augmentation is not trained: every run's summary carries its flip-TTA accuracy
//!    (`final_val_acc_flip`), so the TTA row reads the baseline's runs.
//! 2. **Stack:** the pieces whose mean gain over the baseline is positive, together. Its max LR
//!    is searched over `max_lrs` (the cycle keeps its shape), then its weight decay over
//!    `weight_decays` with the chosen LR, one seed each; the first candidate of each is the
//!    base's, so the stack's own seed-0 run is in both searches.
//! 3. **Final:** the stack with the chosen LR and weight decay, `stack_seeds` seeds at the base's
//!    epochs and `seeds` seeds at each of `short_epochs`.
//! 4. **Report:** one row per piece (accuracy with and without, the gain and its standard
//!    error), the searches, the final rows with and without flip TTA, and the target.
//!
//! Runs are ordinary run directories named by their config (the baseline is the budget
//! experiment's run when the runs directory holds it), trained one at a time and resumed where
//! they stopped: run the same command again in a later session and it goes on.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::preset::{layered, merge, run_dir, scale_of, set_max_lr, stretch, PlannedRun, Role};
use super::report::Stat;
use super::ReproducePlan;
use crate::config::TrainConfig;
use crate::run_dir::{ended, read_summary, Outcome};

/// The preset, compiled in.
pub const PRESET: &str = include_str!("../../presets/recipe.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipePreset {
    pub experiment: String,
    pub title: String,
    pub scale: BTreeMap<String, RecipeScale>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeScale {
    /// The experiment's cost, in words.
    pub budget: String,
    /// The baseline: every setting, its length (`epochs`) included.
    pub base: toml::Table,
    /// Seeds of the baseline, of each piece and of each short final run.
    pub seeds: u64,
    /// Seeds of the final stack at the base's length.
    pub stack_seeds: u64,
    /// The stack's max-LR candidates (the first: the base's).
    pub max_lrs: Vec<f64>,
    /// The stack's weight-decay candidates (the first: the base's).
    pub weight_decays: Vec<f64>,
    /// Shorter budgets of the final stack, in epochs.
    #[serde(default)]
    pub short_epochs: Vec<f64>,
    /// The accuracy to reach, percent, and what it is.
    pub target: f64,
    pub target_source: String,
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    pub label: String,
    /// The gain reported elsewhere (goes into the report).
    pub literature: String,
    /// Settings over the base.
    pub set: toml::Table,
}

pub fn load() -> anyhow::Result<RecipePreset> {
    let p: RecipePreset = toml::from_str(PRESET).context("preset recipe.toml is invalid")?;
    for (name, s) in &p.scale {
        if s.pieces.is_empty() || s.max_lrs.is_empty() || s.weight_decays.is_empty() {
            bail!("preset recipe.toml / {name}: pieces, max_lrs and weight_decays must be listed");
        }
        if s.seeds == 0 || s.stack_seeds == 0 {
            bail!("preset recipe.toml / {name}: seeds and stack_seeds must be at least 1");
        }
    }
    Ok(p)
}

/// Where a run stands in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The baseline or one piece alone.
    Piece,
    /// The stack's max-LR search.
    MaxLr,
    /// The stack's weight-decay search.
    WeightDecay,
    /// The final stack.
    Final,
}

/// One run of the experiment.
#[derive(Debug, Clone)]
pub struct RecipeRun {
    pub stage: Stage,
    /// The baseline's or a piece's label, or "stack".
    pub what: String,
    pub epochs: f64,
    pub max_lr: f64,
    pub weight_decay: f64,
    pub run: PlannedRun,
}

/// The label of the baseline's rows.
pub const BASELINE: &str = "baseline";

/// The config of the base with `sets` over it, at `epochs`, `max_lr` and `wd` where given.
fn config(
    scale: &RecipeScale,
    sets: &[&toml::Table],
    (epochs, max_lr, wd): (Option<f64>, Option<f64>, Option<f64>),
    seed: u64,
    plan: &ReproducePlan,
) -> anyhow::Result<TrainConfig> {
    let mut set = toml::Table::new();
    for s in sets {
        merge(&mut set, s);
    }
    let mut fixed = toml::Table::new();
    if let Some(e) = epochs {
        fixed.insert("epochs".into(), toml::Value::Float(e));
    }
    if let Some(wd) = wd {
        let mut opt = toml::Table::new();
        opt.insert("weight_decay".into(), toml::Value::Float(wd));
        fixed.insert("optimizer".into(), toml::Value::Table(opt));
    }
    let mut c = layered(&scale.base, &set, fixed, seed, &plan.device, &plan.data)
        .context("preset recipe: invalid config")?;
    if let Some(m) = max_lr {
        set_max_lr(&mut c, m).context("preset recipe: the base's max LR")?;
    }
    if plan.budget != 1.0 {
        stretch(&mut c, plan.budget)?;
    }
    c.validate().context("preset recipe")?;
    Ok(c)
}

/// The base's length, max LR and weight decay.
fn base_settings(scale: &RecipeScale, plan: &ReproducePlan) -> anyhow::Result<(f64, f64, f64)> {
    let c = config(scale, &[], (None, None, None), 0, plan)?;
    let crate::schedule::Schedule::OneCycle(oc) = &c.schedule else {
        bail!("preset recipe: the base must be a one-cycle schedule");
    };
    let epochs = c
        .epochs
        .context("preset recipe: the base gives its length in epochs")?;
    Ok((epochs, oc.max_lr, c.optimizer.weight_decay))
}

#[allow(clippy::too_many_arguments)]
fn planned(
    stage: Stage,
    what: &str,
    scale: &RecipeScale,
    sets: &[&toml::Table],
    (epochs, max_lr, wd): (f64, f64, f64),
    seed: u64,
    plan: &ReproducePlan,
) -> anyhow::Result<RecipeRun> {
    let c = config(
        scale,
        sets,
        (Some(epochs), Some(max_lr), Some(wd)),
        seed,
        plan,
    )
    .with_context(|| format!("{what} at {epochs} epochs, max LR {max_lr}, wd {wd}"))?;
    Ok(RecipeRun {
        stage,
        what: what.to_string(),
        epochs,
        max_lr,
        weight_decay: wd,
        run: PlannedRun {
            label: format!("{what} {epochs} ep"),
            role: Role::Sc,
            group: what.to_string(),
            paper: 0.0,
            seed,
            dir: run_dir(&plan.runs_root, &c, &plan.data_key),
            config: c,
        },
    })
}

/// A finished run's final validation accuracy and its flip-TTA accuracy (fractions).
pub fn accuracy(dir: &Path) -> Option<(f64, Option<f64>)> {
    let s = read_summary(dir)?;
    match (s.outcome, s.final_val_acc) {
        (Outcome::Finished, Some(a)) => Some((a, s.final_val_acc_flip)),
        _ => None,
    }
}

/// The best candidate by final validation accuracy ([`super::search::best`]); None until all
/// ended.
fn choose(runs: &[&RecipeRun], value: impl Fn(&RecipeRun) -> f64) -> Option<f64> {
    if runs.is_empty() || !runs.iter().all(|r| ended(&r.run.dir)) {
        return None;
    }
    super::search::best(
        runs.iter()
            .map(|r| (value(r), accuracy(&r.run.dir).map(|a| a.0))),
    )
}

/// Mean gain of each piece over the baseline (fractions); None until all of stage 1 ended.
pub fn gains(scale: &RecipeScale, runs: &[RecipeRun]) -> Option<Vec<(String, f64)>> {
    let stage1: Vec<&RecipeRun> = runs.iter().filter(|r| r.stage == Stage::Piece).collect();
    if !stage1.iter().all(|r| ended(&r.run.dir)) {
        return None;
    }
    let mean = |what: &str| {
        let v: Vec<f64> = stage1
            .iter()
            .filter(|r| r.what == what)
            .filter_map(|r| accuracy(&r.run.dir).map(|a| a.0))
            .collect();
        Stat::of(&v).map(|s| s.mean)
    };
    let base = mean(BASELINE)?;
    Some(
        scale
            .pieces
            .iter()
            .map(|p| {
                (
                    p.label.clone(),
                    mean(&p.label).map_or(f64::NEG_INFINITY, |m| m - base),
                )
            })
            .collect(),
    )
}

/// Every run the experiment can name now: stage 1 always, each later stage once the one before
/// it has ended (its choices are made from it).
pub fn plan_runs(scale: &RecipeScale, plan: &ReproducePlan) -> anyhow::Result<Vec<RecipeRun>> {
    let (epochs, lr0, wd0) = base_settings(scale, plan)?;
    let mut runs = Vec::new();
    for seed in 0..scale.seeds {
        runs.push(planned(
            Stage::Piece,
            BASELINE,
            scale,
            &[],
            (epochs, lr0, wd0),
            seed,
            plan,
        )?);
        for p in &scale.pieces {
            runs.push(planned(
                Stage::Piece,
                &p.label,
                scale,
                &[&p.set],
                (epochs, lr0, wd0),
                seed,
                plan,
            )?);
        }
    }
    let Some(gains) = gains(scale, &runs) else {
        return Ok(runs);
    };
    let stack: Vec<&toml::Table> = scale
        .pieces
        .iter()
        .zip(&gains)
        .filter(|(_, (_, g))| *g > 0.0)
        .map(|(p, _)| &p.set)
        .collect();
    for &lr in &scale.max_lrs {
        runs.push(planned(
            Stage::MaxLr,
            "stack",
            scale,
            &stack,
            (epochs, lr, scale.weight_decays[0]),
            0,
            plan,
        )?);
    }
    let lr_runs: Vec<&RecipeRun> = runs.iter().filter(|r| r.stage == Stage::MaxLr).collect();
    let Some(lr) = choose(&lr_runs, |r| r.max_lr) else {
        return Ok(runs);
    };
    for &wd in &scale.weight_decays {
        runs.push(planned(
            Stage::WeightDecay,
            "stack",
            scale,
            &stack,
            (epochs, lr, wd),
            0,
            plan,
        )?);
    }
    let wd_runs: Vec<&RecipeRun> = runs
        .iter()
        .filter(|r| r.stage == Stage::WeightDecay)
        .collect();
    let Some(wd) = choose(&wd_runs, |r| r.weight_decay) else {
        return Ok(runs);
    };
    for seed in 0..scale.stack_seeds {
        runs.push(planned(
            Stage::Final,
            "stack",
            scale,
            &stack,
            (epochs, lr, wd),
            seed,
            plan,
        )?);
    }
    for &e in &scale.short_epochs {
        for seed in 0..scale.seeds {
            runs.push(planned(
                Stage::Final,
                "stack",
                scale,
                &stack,
                (e, lr, wd),
                seed,
                plan,
            )?);
        }
    }
    Ok(runs)
}

/// The next run to train: one already started first (finish what a session began), else the
/// first not ended, in plan order.
fn next_run(runs: &[RecipeRun]) -> Option<&RecipeRun> {
    let started = |r: &&RecipeRun| {
        !ended(&r.run.dir) && r.run.dir.join(crate::checkpoint::CHECKPOINT).exists()
    };
    runs.iter()
        .find(started)
        .or_else(|| runs.iter().find(|r| !ended(&r.run.dir)))
}

/// Runs the experiment (one run at a time, the plan made again after each) and writes the
/// report after every run, so that a session that stops early leaves one.
pub fn reproduce(plan: &ReproducePlan) -> anyhow::Result<Option<super::report::Report>> {
    let preset = load()?;
    let scale = scale_of("recipe", &preset.scale, &plan.scale)?;
    eprintln!(
        "{} ({} scale). Budget: {}",
        preset.title, plan.scale, scale.budget
    );
    if plan.dry_run {
        let runs = plan_runs(scale, plan)?;
        for r in &runs {
            let state = match accuracy(&r.run.dir) {
                Some((a, _)) => format!("{:.2} %", 100.0 * a),
                None if ended(&r.run.dir) => "diverged".into(),
                None => "to do".into(),
            };
            println!(
                "{:<12} {:<28} {:>4} ep  max lr {:<6} wd {:<7} seed {}  {:<9} {}",
                serde_json::to_value(r.stage)?.as_str().unwrap_or(""),
                r.what,
                r.epochs,
                r.max_lr,
                r.weight_decay,
                r.run.seed,
                state,
                r.run.dir.display()
            );
        }
        if !runs.iter().any(|r| r.stage == Stage::Final) {
            println!("(the later stages are listed once the runs they are chosen from have ended)");
        }
        return Ok(None);
    }
    crate::io::ensure_writable_dir(&plan.out)?;
    loop {
        let runs = plan_runs(scale, plan)?;
        write_report(&preset, scale, plan, &runs)?;
        let Some(r) = next_run(&runs) else {
            eprintln!(
                "recipe: every run has ended; report in {}",
                plan.out.display()
            );
            return Ok(None);
        };
        super::do_run(&r.run, plan.progress)?;
        if !ended(&r.run.dir) {
            bail!("run {} ended without a summary", r.run.dir.display());
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub stage: Stage,
    pub what: String,
    pub epochs: f64,
    pub max_lr: f64,
    pub weight_decay: f64,
    /// Final validation accuracy over the finished seeds.
    pub val: Option<Stat>,
    /// The same with flip TTA (runs that measured it).
    pub val_flip: Option<Stat>,
    /// Gain over the baseline (pieces), mean difference and its standard error.
    pub gain: Option<(f64, f64)>,
    pub literature: Option<String>,
    pub runs: Vec<String>,
    pub unfinished: usize,
}

fn stat_of(runs: &[&RecipeRun], flip: bool) -> Option<Stat> {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| accuracy(&r.run.dir))
        .filter_map(|(a, f)| if flip { f } else { Some(a) })
        .collect();
    Stat::of(&v)
}

/// Mean difference of `b` over `a` and its standard error (0 where a side has one value).
fn difference(a: &Stat, b: &Stat) -> (f64, f64) {
    let se = (a.std.powi(2) / a.n as f64 + b.std.powi(2) / b.n as f64).sqrt();
    (b.mean - a.mean, se)
}

/// The report's rows: each distinct (stage, what, epochs, LR, wd), in plan order.
pub fn rows(scale: &RecipeScale, runs: &[RecipeRun]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let key = |r: &RecipeRun| (r.stage, r.what.clone(), r.epochs, r.max_lr, r.weight_decay);
    let mut seen = Vec::new();
    for r in runs {
        let k = key(r);
        if seen.contains(&k) {
            continue;
        }
        seen.push(k.clone());
        let same: Vec<&RecipeRun> = runs.iter().filter(|x| key(x) == k).collect();
        rows.push(Row {
            stage: r.stage,
            what: r.what.clone(),
            epochs: r.epochs,
            max_lr: r.max_lr,
            weight_decay: r.weight_decay,
            val: stat_of(&same, false),
            val_flip: stat_of(&same, true),
            gain: None,
            literature: scale
                .pieces
                .iter()
                .find(|p| p.label == r.what)
                .map(|p| p.literature.clone()),
            runs: same
                .iter()
                .map(|x| x.run.dir.display().to_string())
                .collect(),
            unfinished: same.iter().filter(|x| !ended(&x.run.dir)).count(),
        });
    }
    let base = rows
        .iter()
        .find(|r| r.stage == Stage::Piece && r.what == BASELINE)
        .and_then(|r| r.val.clone());
    for row in rows
        .iter_mut()
        .filter(|r| r.stage == Stage::Piece && r.what != BASELINE)
    {
        if let (Some(b), Some(v)) = (&base, &row.val) {
            row.gain = Some(difference(b, v));
        }
    }
    rows
}

fn pct(s: &Option<Stat>) -> String {
    s.as_ref().map_or("–".into(), |s| s.text())
}

fn markdown(title: &str, scale: &RecipeScale, plan: &ReproducePlan, rows: &[Row]) -> String {
    let mut md = format!("# {title}\n\nScale `{}`. {}\n\n", plan.scale, scale.budget);
    md += "All accuracies are on the validation split (5,000 images held out of the training \
           set), final weights (the average where a run averages). Flip TTA: the logits of each \
           image and its mirror, summed. Gain: mean over seeds against the baseline's mean, ± \
           its standard error.\n\n";
    md += "## Pieces, each alone over the baseline\n\n";
    md += "| piece | validation | with flip TTA | gain | literature | runs left |\n|---|---|---|---|---|---|\n";
    for r in rows.iter().filter(|r| r.stage == Stage::Piece) {
        let gain = r.gain.map_or("–".into(), |(g, se)| {
            format!("{:+.2} ± {:.2}", 100.0 * g, 100.0 * se)
        });
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.what,
            pct(&r.val),
            pct(&r.val_flip),
            gain,
            r.literature.as_deref().unwrap_or(""),
            r.unfinished
        );
    }
    if let Some(b) = rows
        .iter()
        .find(|r| r.stage == Stage::Piece && r.what == BASELINE)
    {
        if let (Some(v), Some(f)) = (&b.val, &b.val_flip) {
            let (g, se) = difference(v, f);
            md += &format!(
                "\nFlip TTA on the baseline's runs: {:+.2} ± {:.2} points (literature: +0.5 for \
                 Myrtle's ResNet-9 at 24 epochs).\n",
                100.0 * g,
                100.0 * se
            );
        }
    }
    for (stage, heading) in [
        (Stage::MaxLr, "The stack's max LR (seed 0)"),
        (
            Stage::WeightDecay,
            "The stack's weight decay (seed 0, the chosen max LR)",
        ),
        (Stage::Final, "The final stack"),
    ] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.stage == stage).collect();
        if of.is_empty() {
            continue;
        }
        md += &format!("\n## {heading}\n\n| epochs | max LR | weight decay | validation | with flip TTA | runs left |\n|---|---|---|---|---|---|\n");
        for r in of {
            md += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.epochs,
                r.max_lr,
                r.weight_decay,
                pct(&r.val),
                pct(&r.val_flip),
                r.unfinished
            );
        }
    }
    let best = rows
        .iter()
        .filter(|r| r.stage == Stage::Final)
        .filter_map(|r| {
            let v = r.val.as_ref()?.mean;
            let f = r.val_flip.as_ref().map_or(v, |f| f.mean);
            Some((r.epochs, v.max(f)))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    md += &format!(
        "\n## Target\n\n{:.2} % ({}), on validation for the 45k model.\n",
        scale.target, scale.target_source
    );
    match best {
        Some((e, a)) => {
            md += &format!(
                "Best final stack: {:.2} % at {e} epochs (with flip TTA where it is higher): {}.\n",
                100.0 * a,
                if 100.0 * a >= scale.target {
                    "**met**".to_string()
                } else {
                    format!("missed by {:.2} points", scale.target - 100.0 * a)
                }
            );
        }
        None => md += "Not measured yet: the final stack has not finished.\n",
    }
    md
}

fn write_report(
    preset: &RecipePreset,
    scale: &RecipeScale,
    plan: &ReproducePlan,
    runs: &[RecipeRun],
) -> anyhow::Result<()> {
    let rows = rows(scale, runs);
    let md = markdown(&preset.title, scale, plan, &rows);
    crate::io::write_atomic(&plan.out.join("report.md"), md.as_bytes())?;
    crate::io::write_json(&plan.out.join("report.json"), &rows)?;
    Ok(())
}

//! `sc-trainer reproduce claims`: one cycle against a proper step schedule by batch size,
//! training-set size and depth, at a fair budget (issue 36).
//!
//! A *cell* is one arm (one cycle, or the step schedule) at one batch and training-set size, or
//! one arm at depth. Every ResNet-20 cell chooses its own settings on the validation split, from
//! finished runs, one stage after the other:
//!
//! 1. **LR:** the arm's candidates (given at `lr_batch`, scaled linearly with the batch), seed 0,
//!    the first weight decay; a bracketed search ([`search::past_edge`]) steps x2 past an edge
//!    while the best sits on it.
//! 2. **Weight decay:** each candidate at the chosen LR, seed 0 (the first is stage 1's run).
//! 3. **Seeds:** the chosen config's other seeds.
//!
//! A depth cell trains the deeper model with its arm's choices from the first cell (the first
//! batch, every training image), `depth.seeds` seeds. Cells are independent of each other, so
//! `--shard I/N` gives cell `k` to shard `k mod N` (each run is still claimed with a lock, and a
//! worker that finds a run held by another goes on to its next cell). The report (after every
//! run) puts the one-cycle − step gap of each cell with its standard error, the interactions the
//! claims are about, the paper's numbers, and a plot of accuracy against training-set size.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::preset::{layered, run_dir, scale_of, set_max_lr, stretch, PlannedRun, Role};
use super::report::Stat;
use super::search;
use super::shard::Share;
use super::ReproducePlan;
use crate::config::TrainConfig;
use crate::run_dir::{ended, read_summary, Outcome};
use crate::schedule::{Schedule, WarmupShape};

/// The preset, compiled in.
pub const PRESET: &str = include_str!("../../presets/claims.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsPreset {
    pub experiment: String,
    pub title: String,
    pub paper: Paper,
    pub scale: BTreeMap<String, ClaimsScale>,
}

/// The paper's numbers the report sets beside ours (percent, test set).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Paper {
    pub batch_note: String,
    /// (total batch, one cycle).
    pub batch: Vec<(u32, f64)>,
    pub train_size_note: String,
    /// (training images, PC-LR, one cycle).
    pub train_size: Vec<(u32, f64, f64)>,
    pub depth_note: String,
    /// (model, PC-LR, one cycle).
    pub depth: Vec<(String, f64, f64)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsScale {
    /// The experiment's cost, in words.
    pub budget: String,
    /// Every setting but the batch, the weight decay and the schedule: the model, the length.
    pub base: toml::Table,
    pub batches: Vec<usize>,
    pub train_sizes: Vec<usize>,
    /// The training split with nothing left out: this size leaves `train_size` unset.
    pub all_images: usize,
    /// The batch the arms' LR candidates are given at.
    pub lr_batch: usize,
    pub weight_decays: Vec<f64>,
    /// Seeds of each ResNet-20 cell's chosen config.
    pub seeds: u64,
    pub depth: Depth,
    pub arms: Vec<Arm>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Depth {
    pub model: String,
    pub seeds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub label: String,
    pub role: Role,
    /// LR candidates at `lr_batch` (one cycle: the max LR; step: the LR after any warm-up).
    pub lrs: Vec<f64>,
    pub note: String,
    /// Step schedules above `lr_batch`: a linear warm-up over this many epochs, from the LR
    /// scaled back to `lr_batch`.
    #[serde(default)]
    pub warmup_epochs: f64,
    pub set: toml::Table,
}

pub fn load() -> anyhow::Result<ClaimsPreset> {
    let p: ClaimsPreset = toml::from_str(PRESET).context("preset claims.toml is invalid")?;
    for (name, s) in &p.scale {
        let what = |m: &str| anyhow::anyhow!("preset claims.toml / {name}: {m}");
        if s.batches.is_empty() || s.train_sizes.is_empty() || s.weight_decays.is_empty() {
            return Err(what(
                "batches, train_sizes and weight_decays must be listed",
            ));
        }
        if s.train_sizes.iter().any(|&n| n == 0 || n > s.all_images) {
            return Err(what("every train size is between 1 and all_images"));
        }
        if s.seeds == 0 || s.lr_batch == 0 {
            return Err(what("seeds and lr_batch must be at least 1"));
        }
        if s.arms.len() != 2 || s.arms.iter().any(|a| a.lrs.is_empty()) {
            return Err(what(
                "two arms (one cycle and a step schedule), each with its lrs",
            ));
        }
        if s.arms[0].role != Role::Sc || s.arms[1].role != Role::Pc {
            return Err(what(
                "the first arm is one cycle (sc), the second the step schedule (pc)",
            ));
        }
    }
    Ok(p)
}

/// One arm at one setting: the unit of choice and of sharding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Index into the scale's arms.
    pub arm: usize,
    pub label: String,
    pub model: String,
    pub batch: usize,
    pub images: usize,
    /// A depth cell (settings from the first cell of its arm).
    pub depth: bool,
}

/// Every cell, in the order a single machine trains them: the first batch on every image (the
/// depth cells need its choices), then the cheapest first (fewest images, then the smaller
/// batch), each setting's two arms together; the depth cells last.
pub fn cells(scale: &ClaimsScale) -> anyhow::Result<Vec<Cell>> {
    let model = scale
        .base
        .get("model")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .context("preset claims: the base names its model")?
        .to_string();
    let first = (scale.batches[0], scale.all_images);
    let mut settings: Vec<(usize, usize)> = scale
        .batches
        .iter()
        .flat_map(|&b| scale.train_sizes.iter().map(move |&n| (b, n)))
        .collect();
    settings.sort_by_key(|&(b, n)| ((b, n) != first, n, b));
    let mut out = Vec::new();
    for (batch, images) in settings {
        for (arm, a) in scale.arms.iter().enumerate() {
            out.push(Cell {
                arm,
                label: a.label.clone(),
                model: model.clone(),
                batch,
                images,
                depth: false,
            });
        }
    }
    for (arm, a) in scale.arms.iter().enumerate() {
        out.push(Cell {
            arm,
            label: a.label.clone(),
            model: scale.depth.model.clone(),
            batch: first.0,
            images: first.1,
            depth: true,
        });
    }
    Ok(out)
}

/// Where a run stands in its cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Lr,
    WeightDecay,
    Seeds,
    Depth,
}

/// One run of the experiment.
#[derive(Debug, Clone)]
pub struct ClaimsRun {
    /// Index into [`cells`].
    pub cell: usize,
    pub stage: Stage,
    pub lr: f64,
    pub weight_decay: f64,
    pub run: PlannedRun,
}

/// The config of a cell at an LR, weight decay and seed.
fn config(
    scale: &ClaimsScale,
    cell: &Cell,
    (lr, wd): (f64, f64),
    seed: u64,
    plan: &ReproducePlan,
) -> anyhow::Result<TrainConfig> {
    let arm = &scale.arms[cell.arm];
    let mut fixed = toml::Table::new();
    fixed.insert("batch_size".into(), toml::Value::Integer(cell.batch as i64));
    let mut opt = toml::Table::new();
    opt.insert("weight_decay".into(), toml::Value::Float(wd));
    fixed.insert("optimizer".into(), toml::Value::Table(opt));
    let mut model = toml::Table::new();
    model.insert("name".into(), toml::Value::String(cell.model.clone()));
    fixed.insert("model".into(), toml::Value::Table(model));
    let mut c = layered(&scale.base, &arm.set, fixed, seed, &plan.device, &plan.data)
        .with_context(|| format!("preset claims / {}: invalid config", arm.label))?;
    if cell.images != scale.all_images {
        c.data.train_size = Some(cell.images);
    }
    match &mut c.schedule {
        Schedule::OneCycle(_) => set_max_lr(&mut c, lr)?,
        Schedule::Piecewise(p) => {
            p.lr = lr;
            if cell.batch > scale.lr_batch && arm.warmup_epochs > 0.0 {
                let per_epoch = cell.images / cell.batch;
                p.warmup_iterations =
                    ((arm.warmup_epochs * per_epoch as f64).round() as usize).max(1);
                p.warmup_lr = Some(lr * scale.lr_batch as f64 / cell.batch as f64);
                p.warmup_shape = WarmupShape::Linear;
            }
        }
        _ => bail!(
            "preset claims / {}: one-cycle or piecewise schedules only",
            arm.label
        ),
    }
    if plan.budget != 1.0 {
        stretch(&mut c, plan.budget)?;
    }
    c.validate()
        .with_context(|| format!("preset claims / {} at batch {}", arm.label, cell.batch))?;
    Ok(c)
}

fn planned(
    scale: &ClaimsScale,
    (k, cell): (usize, &Cell),
    stage: Stage,
    (lr, wd): (f64, f64),
    seed: u64,
    plan: &ReproducePlan,
) -> anyhow::Result<ClaimsRun> {
    let c = config(scale, cell, (lr, wd), seed, plan)?;
    Ok(ClaimsRun {
        cell: k,
        stage,
        lr,
        weight_decay: wd,
        run: PlannedRun {
            label: format!(
                "{} {} b{} {} img",
                cell.label, cell.model, cell.batch, cell.images
            ),
            role: scale.arms[cell.arm].role,
            group: format!("b{} {} img", cell.batch, cell.images),
            paper: 0.0,
            seed,
            dir: run_dir(&plan.runs_root, &c, &plan.data_key),
            config: c,
        },
    })
}

/// A finished run's final validation accuracy (fraction).
pub use crate::run_dir::final_val_acc as accuracy;

/// A stage's choice once every run of it has ended.
fn chosen(runs: &[ClaimsRun], value: impl Fn(&ClaimsRun) -> f64) -> Option<f64> {
    if runs.is_empty() || !runs.iter().all(|r| ended(&r.run.dir)) {
        return None;
    }
    search::best(runs.iter().map(|r| (value(r), accuracy(&r.run.dir))))
}

/// A cell's chosen (LR, weight decay).
type Choice = (f64, f64);

/// A ResNet-20 cell's runs as far as they can be named now, and its choice of (LR, weight
/// decay) once made.
fn cell_runs(
    scale: &ClaimsScale,
    (k, cell): (usize, &Cell),
    plan: &ReproducePlan,
) -> anyhow::Result<(Vec<ClaimsRun>, Option<Choice>)> {
    let wd0 = scale.weight_decays[0];
    let factor = cell.batch as f64 / scale.lr_batch as f64;
    let mut lrs: Vec<f64> = scale.arms[cell.arm]
        .lrs
        .iter()
        .map(|l| l * factor)
        .collect();
    let mut runs: Vec<ClaimsRun> = Vec::new();
    for step in 0..=search::MAX_STEPS {
        for &lr in &lrs[runs.len()..] {
            runs.push(planned(scale, (k, cell), Stage::Lr, (lr, wd0), 0, plan)?);
        }
        if step == search::MAX_STEPS || !runs.iter().all(|r| ended(&r.run.dir)) {
            break;
        }
        let tried: Vec<(f64, Option<f64>)> =
            runs.iter().map(|r| (r.lr, accuracy(&r.run.dir))).collect();
        match search::past_edge(&tried) {
            Some(lr) => lrs.push(lr),
            None => break,
        }
    }
    let Some(lr) = chosen(&runs, |r| r.lr) else {
        return Ok((runs, None));
    };
    let mut wd_runs = Vec::new();
    for &wd in &scale.weight_decays {
        wd_runs.push(planned(
            scale,
            (k, cell),
            Stage::WeightDecay,
            (lr, wd),
            0,
            plan,
        )?);
    }
    let wd = chosen(&wd_runs, |r| r.weight_decay);
    runs.extend(wd_runs);
    let Some(wd) = wd else {
        return Ok((runs, None));
    };
    for seed in 1..scale.seeds {
        runs.push(planned(
            scale,
            (k, cell),
            Stage::Seeds,
            (lr, wd),
            seed,
            plan,
        )?);
    }
    Ok((runs, Some((lr, wd))))
}

/// Every run the experiment can name now, cell by cell; the same run directory is listed once
/// (the first weight-decay run is the LR search's chosen run).
pub fn plan_runs(scale: &ClaimsScale, plan: &ReproducePlan) -> anyhow::Result<Vec<ClaimsRun>> {
    Ok(plan_with_choices(scale, plan)?.0)
}

/// [`plan_runs`], with each cell's choice once made (a depth cell's: its first cell's, once its
/// runs are listed).
fn plan_with_choices(
    scale: &ClaimsScale,
    plan: &ReproducePlan,
) -> anyhow::Result<(Vec<ClaimsRun>, Vec<Option<Choice>>)> {
    let cells = cells(scale)?;
    let mut runs: Vec<ClaimsRun> = Vec::new();
    let mut choice: Vec<Option<Choice>> = vec![None; cells.len()];
    for (k, cell) in cells.iter().enumerate().filter(|(_, c)| !c.depth) {
        let (r, ch) = cell_runs(scale, (k, cell), plan)?;
        choice[k] = ch;
        runs.extend(r);
    }
    for (k, cell) in cells.iter().enumerate().filter(|(_, c)| c.depth) {
        // The arm's choice at its first cell (same arm, first batch, every image).
        let first = cells
            .iter()
            .position(|c| {
                !c.depth && c.arm == cell.arm && c.batch == cell.batch && c.images == cell.images
            })
            .context("preset claims: no first cell for the depth cells")?;
        let Some(lw) = choice[first] else { continue };
        choice[k] = Some(lw);
        for seed in 0..scale.depth.seeds {
            runs.push(planned(scale, (k, cell), Stage::Depth, lw, seed, plan)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    runs.retain(|r| seen.insert(r.run.dir.clone()));
    Ok((runs, choice))
}

/// Whether cell `k` is complete: its choice is made (every run it names is listed) and every
/// one of its runs has ended.
fn cell_complete(k: usize, (runs, choices): (&[ClaimsRun], &[Option<Choice>])) -> bool {
    choices[k].is_some()
        && runs
            .iter()
            .filter(|r| r.cell == k)
            .all(|r| ended(&r.run.dir))
}

fn status(dir: &Path) -> String {
    match read_summary(dir).map(|s| (s.outcome, s.final_val_acc)) {
        Some((Outcome::Finished, Some(a))) => format!("{:.2} %", 100.0 * a),
        Some((Outcome::Diverged, _)) => "diverged".into(),
        _ if dir.join(crate::checkpoint::CHECKPOINT).exists() => "started".into(),
        _ => "to do".into(),
    }
}

/// Runs this worker's cells as far as they go (each run claimed with a lock; a run another
/// worker holds sends this one to its next cell), writing the report after every run.
pub fn reproduce(
    plan: &ReproducePlan,
    share: &Share,
) -> anyhow::Result<Option<super::report::Report>> {
    let preset = load()?;
    let scale = scale_of("claims", &preset.scale, &plan.scale)?;
    let cells = cells(scale)?;
    eprintln!(
        "{} ({} scale). Budget: {}",
        preset.title, plan.scale, scale.budget
    );
    if plan.dry_run {
        let runs = plan_runs(scale, plan)?;
        for r in &runs {
            let c = &cells[r.cell];
            println!(
                "cell {:<2} {:<7} {:<8} b{:<5} {:>6} img  {:<12} lr {:<7} wd {:<7} seed {}  {:<9} {}",
                r.cell,
                c.label,
                c.model,
                c.batch,
                c.images,
                serde_json::to_value(r.stage)?.as_str().unwrap_or(""),
                r.lr,
                r.weight_decay,
                r.run.seed,
                status(&r.run.dir),
                r.run.dir.display()
            );
        }
        for (k, c) in cells.iter().enumerate() {
            if !runs.iter().any(|r| r.cell == k) {
                println!(
                    "cell {k:<2} {:<7} {:<8} b{:<5} {:>6} img  (listed once its arm's first cell has chosen)",
                    c.label, c.model, c.batch, c.images
                );
            }
        }
        return Ok(None);
    }
    crate::io::ensure_writable_dir(&plan.out)?;
    let mine: Vec<usize> = (0..cells.len()).filter(|&k| share.owns(k)).collect();
    if *share != Share::All {
        eprintln!(
            "this worker: {}",
            share.describe_units(cells.len(), "cells")
        );
    }
    // Runs held by another worker: not tried again by this one.
    let mut held: Vec<std::path::PathBuf> = Vec::new();
    loop {
        let (runs, choices) = plan_with_choices(scale, plan)?;
        write_report(&preset, scale, plan, &cells, (&runs, &choices))?;
        let next = next_run(&runs, &mine, &held);
        let Some(r) = next else { break };
        match super::shard::claim(&r.run.dir)? {
            Ok(_claim) => {
                super::do_run(&r.run, plan.progress)?;
                if !ended(&r.run.dir) {
                    bail!("run {} ended without a summary", r.run.dir.display());
                }
            }
            Err(holder) => {
                eprintln!(
                    "[{}] skipped: {holder} is training it ({})",
                    r.run.label,
                    super::shard::lock_path(&r.run.dir).display()
                );
                held.push(r.run.dir.clone());
            }
        }
    }
    let (runs, choices) = plan_with_choices(scale, plan)?;
    let open: Vec<String> = (0..cells.len())
        .filter(|&k| !cell_complete(k, (&runs, &choices)))
        .map(|k| {
            let c = &cells[k];
            format!("{} {} b{} {} img", c.label, c.model, c.batch, c.images)
        })
        .collect();
    if open.is_empty() {
        eprintln!(
            "claims: every cell is complete; report in {}",
            plan.out.display()
        );
    } else {
        eprintln!(
            "claims: this worker has nothing left to train; cells still open (other workers, or \
             runs they hold): {}. Report so far in {}",
            open.join("; "),
            plan.out.display()
        );
    }
    Ok(None)
}

/// The next run for this worker: one of its cells' runs already started (finish what a session
/// began), else the first not ended in cell order; never one another worker holds.
fn next_run<'a>(
    runs: &'a [ClaimsRun],
    mine: &[usize],
    held: &[std::path::PathBuf],
) -> Option<&'a ClaimsRun> {
    let open =
        |r: &&ClaimsRun| mine.contains(&r.cell) && !ended(&r.run.dir) && !held.contains(&r.run.dir);
    let started = |r: &&ClaimsRun| r.run.dir.join(crate::checkpoint::CHECKPOINT).exists();
    runs.iter()
        .filter(open)
        .find(started)
        .or_else(|| runs.iter().find(open))
}

/// A difference of means with its standard error and the fewest seeds behind it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Diff {
    pub mean: f64,
    pub se: f64,
    pub min_seeds: usize,
}

impl Diff {
    /// `b − a`.
    pub fn of(a: &Stat, b: &Stat) -> Diff {
        Diff {
            mean: b.mean - a.mean,
            se: (a.std.powi(2) / a.n as f64 + b.std.powi(2) / b.n as f64).sqrt(),
            min_seeds: a.n.min(b.n),
        }
    }

    /// `self − other`, independent.
    pub fn minus(&self, other: &Diff) -> Diff {
        Diff {
            mean: self.mean - other.mean,
            se: (self.se.powi(2) + other.se.powi(2)).sqrt(),
            min_seeds: self.min_seeds.min(other.min_seeds),
        }
    }

    /// "positive" / "negative" beyond two standard errors, else "inconclusive"; one seed on a
    /// side has no standard error: "one seed".
    pub fn verdict(&self) -> &'static str {
        if self.min_seeds < 2 {
            "one seed"
        } else if self.mean > 2.0 * self.se {
            "positive"
        } else if self.mean < -2.0 * self.se {
            "negative"
        } else {
            "inconclusive"
        }
    }

    pub fn text(&self) -> String {
        if self.min_seeds < 2 {
            format!("{:+.2} (1 seed)", 100.0 * self.mean)
        } else {
            format!("{:+.2} ± {:.2}", 100.0 * self.mean, 100.0 * self.se)
        }
    }
}

/// One cell in the report.
#[derive(Debug, Clone, Serialize)]
pub struct CellRow {
    pub cell: Cell,
    /// The chosen LR and weight decay (None: not chosen yet).
    pub chosen: Option<Choice>,
    /// The LR search and weight-decay runs of seed 0: (stage, LR, wd, accuracy).
    pub tried: Vec<(Stage, f64, f64, Option<f64>)>,
    /// Final validation accuracy of the chosen config over its finished seeds.
    pub val: Option<Stat>,
    pub accuracies: Vec<f64>,
    pub runs_left: usize,
}

/// One setting's gap: one cycle − step.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub model: String,
    pub batch: usize,
    pub images: usize,
    pub gap: Option<Diff>,
}

/// What the report says of one question.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub question: String,
    pub diff: Option<Diff>,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimsReport {
    pub title: String,
    pub scale: String,
    pub budget: String,
    pub cells: Vec<CellRow>,
    pub gaps: Vec<Gap>,
    pub findings: Vec<Finding>,
    pub paper: Paper,
    pub notes: Vec<(String, String)>,
    pub plots: Vec<String>,
}

fn cell_rows(cells: &[Cell], (runs, choices): (&[ClaimsRun], &[Option<Choice>])) -> Vec<CellRow> {
    cells
        .iter()
        .enumerate()
        .map(|(k, cell)| {
            let mine: Vec<&ClaimsRun> = runs.iter().filter(|r| r.cell == k).collect();
            let chosen = choices[k];
            let tried = mine
                .iter()
                .filter(|r| matches!(r.stage, Stage::Lr | Stage::WeightDecay))
                .map(|r| (r.stage, r.lr, r.weight_decay, accuracy(&r.run.dir)))
                .collect();
            let of_choice: Vec<&&ClaimsRun> = mine
                .iter()
                .filter(|r| chosen.is_some_and(|(l, w)| r.lr == l && r.weight_decay == w))
                .collect();
            let accuracies: Vec<f64> = of_choice
                .iter()
                .filter_map(|r| accuracy(&r.run.dir))
                .collect();
            CellRow {
                cell: cell.clone(),
                chosen,
                tried,
                val: Stat::of(&accuracies),
                accuracies,
                runs_left: mine.iter().filter(|r| !ended(&r.run.dir)).count(),
            }
        })
        .collect()
}

fn gap_of(rows: &[CellRow], model: &str, batch: usize, images: usize) -> Option<Diff> {
    let find = |arm: usize| {
        rows.iter()
            .find(|r| {
                r.cell.arm == arm
                    && r.cell.model == model
                    && r.cell.batch == batch
                    && r.cell.images == images
            })
            .and_then(|r| r.val.clone())
    };
    Some(Diff::of(&find(1)?, &find(0)?))
}

fn finding(question: String, diff: Option<Diff>, words: [&str; 3]) -> Finding {
    let verdict = match diff.map(|d| d.verdict()) {
        None => "not measured yet".to_string(),
        Some("positive") => words[0].to_string(),
        Some("negative") => words[1].to_string(),
        Some("one seed") => format!("{} (one seed: no standard error)", words[2]),
        Some(_) => words[2].to_string(),
    };
    Finding {
        question,
        diff,
        verdict,
    }
}

fn findings(scale: &ClaimsScale, cells: &[Cell], rows: &[CellRow]) -> Vec<Finding> {
    let model = &cells[0].model;
    let (b0, n0) = (scale.batches[0], scale.all_images);
    let mut out = Vec::new();
    for &n in &scale.train_sizes {
        for &b in scale.batches.iter().skip(1) {
            out.push(finding(
                format!("large batch, {n} images: does the gap grow from batch {b0} to {b}?"),
                gap_of(rows, model, b, n)
                    .zip(gap_of(rows, model, b0, n))
                    .map(|(hi, lo)| hi.minus(&lo)),
                ["grows", "shrinks", "inconclusive"],
            ));
            let one = |batch: usize| {
                rows.iter()
                    .find(|r| {
                        r.cell.arm == 0
                            && !r.cell.depth
                            && r.cell.batch == batch
                            && r.cell.images == n
                    })
                    .and_then(|r| r.val.clone())
            };
            out.push(finding(
                format!("large batch, {n} images: does one cycle itself gain from batch {b0} to {b} (same epochs)?"),
                one(b).zip(one(b0)).map(|(hi, lo)| Diff::of(&lo, &hi)),
                ["gains", "loses", "inconclusive"],
            ));
        }
    }
    for &b in &scale.batches {
        for &n in scale.train_sizes.iter().filter(|&&n| n < n0) {
            out.push(finding(
                format!("claim 3 at batch {b}: does the gap grow from {n0} to {n} images?"),
                gap_of(rows, model, b, n)
                    .zip(gap_of(rows, model, b, n0))
                    .map(|(small, all)| small.minus(&all)),
                ["grows", "shrinks", "inconclusive"],
            ));
        }
    }
    for m in [model.as_str(), scale.depth.model.as_str()] {
        out.push(finding(
            format!("claim 4, {m} at batch {b0} on {n0} images: is one cycle ahead of the step schedule?"),
            gap_of(rows, m, b0, n0),
            ["one cycle ahead", "the step schedule ahead", "inconclusive"],
        ));
    }
    out
}

fn build(
    preset: &ClaimsPreset,
    scale: &ClaimsScale,
    plan: &ReproducePlan,
    cells: &[Cell],
    planned: (&[ClaimsRun], &[Option<Choice>]),
) -> ClaimsReport {
    let rows = cell_rows(cells, planned);
    let mut gaps = Vec::new();
    for c in cells.iter().filter(|c| c.arm == 0) {
        gaps.push(Gap {
            model: c.model.clone(),
            batch: c.batch,
            images: c.images,
            gap: gap_of(&rows, &c.model, c.batch, c.images),
        });
    }
    ClaimsReport {
        title: preset.title.clone(),
        scale: plan.scale.clone(),
        budget: scale.budget.clone(),
        findings: findings(scale, cells, &rows),
        cells: rows,
        gaps,
        paper: preset.paper.clone(),
        notes: scale
            .arms
            .iter()
            .map(|a| (a.label.clone(), a.note.clone()))
            .collect(),
        plots: Vec::new(),
    }
}

fn pct(s: &Option<Stat>) -> String {
    s.as_ref().map_or("–".into(), |s| s.text())
}

fn markdown(r: &ClaimsReport) -> String {
    let mut md = format!("# {}\n\nScale `{}`. {}\n\n", r.title, r.scale, r.budget);
    md += "All accuracies are final validation accuracy on the images held out of the training \
           set (the same images for every cell and training-set size), mean ± standard deviation \
           over seeds. Gaps are one cycle − step, ± the \
           standard error of the difference; a verdict needs the difference beyond two standard \
           errors. Each cell's settings were chosen on its seed 0, which is also one of its seeds \
           (the same for both arms, so the gap is not favoured).\n\n";
    for (label, note) in &r.notes {
        md += &format!("- **{label}:** {note}\n");
    }
    md += "\n## Findings\n\n| question | difference (points) | verdict |\n|---|---|---|\n";
    for f in &r.findings {
        md += &format!(
            "| {} | {} | {} |\n",
            f.question,
            f.diff.map_or("–".into(), |d| d.text()),
            f.verdict
        );
    }
    md += "\n## One cycle − step, by setting\n\n| model | batch | training images | one cycle | step | gap |\n|---|---|---|---|---|---|\n";
    for g in &r.gaps {
        let val = |arm: usize| {
            r.cells
                .iter()
                .find(|c| {
                    c.cell.arm == arm
                        && c.cell.model == g.model
                        && c.cell.batch == g.batch
                        && c.cell.images == g.images
                })
                .map_or("–".into(), |c| pct(&c.val))
        };
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            g.model,
            g.batch,
            g.images,
            val(0),
            val(1),
            g.gap.map_or("–".into(), |d| d.text())
        );
    }
    md += "\n## Cells: the choices and the searches (seed 0)\n\n| arm | model | batch | images | chosen LR | chosen wd | tried (LR, wd: accuracy) | runs left |\n|---|---|---|---|---|---|---|---|\n";
    for c in &r.cells {
        let tried = c
            .tried
            .iter()
            .map(|(_, l, w, a)| {
                format!(
                    "{l}, {w}: {}",
                    a.map_or("–".into(), |a| format!("{:.2}", 100.0 * a))
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let (lr, wd) = c.chosen.map_or(("–".into(), "–".into()), |(l, w)| {
            (l.to_string(), w.to_string())
        });
        md += &format!(
            "| {} | {} | {} | {} | {lr} | {wd} | {} | {} |\n",
            c.cell.label,
            c.cell.model,
            c.cell.batch,
            c.cell.images,
            if c.cell.depth {
                "(the first cell's)".into()
            } else {
                tried
            },
            c.runs_left
        );
    }
    let p = &r.paper;
    md += &format!(
        "\n## The paper's numbers (test set)\n\nBatch ({}):\n\n| batch | one cycle |\n|---|---|\n",
        p.batch_note
    );
    for (b, a) in &p.batch {
        md += &format!("| {b} | {a} |\n");
    }
    md += &format!(
        "\nTraining-set size ({}):\n\n| images | PC-LR | one cycle | gap |\n|---|---|---|---|\n",
        p.train_size_note
    );
    for (n, pc, sc) in &p.train_size {
        md += &format!("| {n} | {pc} | {sc} | {:+.1} |\n", sc - pc);
    }
    md += &format!(
        "\nDepth ({}):\n\n| model | PC-LR | one cycle | gap |\n|---|---|---|---|\n",
        p.depth_note
    );
    for (m, pc, sc) in &p.depth {
        md += &format!("| {m} | {pc} | {sc} | {:+.1} |\n", sc - pc);
    }
    if !r.plots.is_empty() {
        md += "\n## Plots\n\n";
        for f in &r.plots {
            md += &format!("![{f}]({f})\n");
        }
    }
    md
}

fn write_report(
    preset: &ClaimsPreset,
    scale: &ClaimsScale,
    plan: &ReproducePlan,
    cells: &[Cell],
    planned: (&[ClaimsRun], &[Option<Choice>]),
) -> anyhow::Result<ClaimsReport> {
    let _lock = super::shard::report_lock(&plan.out)?;
    let mut report = build(preset, scale, plan, cells, planned);
    // Accuracy against training-set size: a line per arm and batch (ResNet-20 cells).
    let mut series: Vec<crate::plot::MeanSeries> = Vec::new();
    for &b in &scale.batches {
        for (arm, a) in scale.arms.iter().enumerate() {
            let pts: Vec<crate::plot::MeanPoint> = report
                .cells
                .iter()
                .filter(|c| !c.cell.depth && c.cell.arm == arm && c.cell.batch == b)
                .filter_map(|c| {
                    c.val.as_ref().map(|v| crate::plot::MeanPoint {
                        x: c.cell.images as f64,
                        mean: v.mean,
                        std: v.std,
                        seeds: c.accuracies.clone(),
                    })
                })
                .collect();
            series.push((format!("{} batch {b}", a.label), pts));
        }
    }
    series
        .iter_mut()
        .for_each(|s| s.1.sort_by(|a, b| a.x.total_cmp(&b.x)));
    if series.iter().any(|s| !s.1.is_empty()) {
        let file = "accuracy-vs-train-size.png";
        match crate::plot::means_plot(
            &plan.out.join(file),
            &format!("{} ({} scale)", preset.title, plan.scale),
            "training images",
            &series,
            None,
        ) {
            Ok(()) => report.plots.push(file.to_string()),
            Err(e) => eprintln!("warning: could not draw {file}: {e:#}"),
        }
    }
    crate::io::write_json(&plan.out.join("report.json"), &report)?;
    crate::io::write_atomic(&plan.out.join("report.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(v: &[f64]) -> Stat {
        Stat::of(v).unwrap()
    }

    #[test]
    fn a_difference_of_gaps_carries_both_errors_and_needs_two_seeds() {
        // Gaps of +1.0 and +0.2 points, each from 3 seeds a side with a spread of 0.1.
        let (a, b) = (stat(&[0.899, 0.900, 0.901]), stat(&[0.909, 0.910, 0.911]));
        let big = Diff::of(&a, &b);
        assert!((big.mean - 0.01).abs() < 1e-12 && big.min_seeds == 3);
        let small = Diff::of(&a, &stat(&[0.901, 0.902, 0.903]));
        let d = big.minus(&small);
        assert!((d.mean - 0.008).abs() < 1e-12);
        assert!((d.se - (big.se.powi(2) + small.se.powi(2)).sqrt()).abs() < 1e-15);
        assert_eq!(d.verdict(), "positive");
        assert_eq!(small.minus(&big).verdict(), "negative");
        assert_eq!(big.minus(&big).verdict(), "inconclusive");
        let one = Diff::of(&stat(&[0.9]), &stat(&[0.95]));
        assert_eq!((one.verdict(), one.se), ("one seed", 0.0));
        assert!(one.text().contains("1 seed"));
    }

    #[test]
    fn the_first_cell_is_the_first_batch_on_every_image_and_depth_comes_last() {
        let p = load().unwrap();
        for (name, s) in &p.scale {
            let c = cells(s).unwrap();
            assert_eq!(
                c.len(),
                s.batches.len() * s.train_sizes.len() * 2 + 2,
                "{name}"
            );
            assert_eq!(
                (c[0].batch, c[0].images, c[0].arm),
                (s.batches[0], s.all_images, 0)
            );
            assert_eq!(
                (c[1].batch, c[1].images, c[1].arm),
                (s.batches[0], s.all_images, 1)
            );
            // Each setting's two arms side by side (with two shards, one shard per arm).
            assert!(c.iter().enumerate().all(|(k, x)| x.arm == k % 2), "{name}");
            assert!(c[c.len() - 2..]
                .iter()
                .all(|x| x.depth && x.model == s.depth.model));
            // After the first setting, the cheapest first.
            let rest: Vec<usize> = c[2..c.len() - 2].iter().map(|x| x.images).collect();
            assert!(rest.windows(2).all(|w| w[0] <= w[1]), "{name}: {rest:?}");
        }
    }
}

//! Learning-rate and momentum schedules: pure functions of the iteration.
//!
//! Every schedule is a list of knots `(iteration, lr, momentum)` joined by linear or cosine pieces
//! (fast.ai's phases; cifar10-fast's piecewise-linear interpolation), or a step function. The only
//! schedule state a checkpoint needs is the iteration.
//!
//! One struct per schedule ([`OneCycle`], [`Clr`], [`Piecewise`], [`Constant`], [`Range`]), each
//! with its `at`, `validate` and `describe`; the [`Schedule`] enum is how a config file names one
//! (`kind = "one-cycle"`, …) and only dispatches. A run's schedule is checked in one place,
//! [`Schedule::for_run`], once the run length is known.

use serde::{Deserialize, Serialize};

/// How the LR moves between two knots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Anneal {
    /// Straight line (the paper's triangle).
    #[default]
    Linear,
    /// Half cosine (PyTorch OneCycleLR's and fast.ai's default).
    Cos,
}

/// Cyclical momentum, mirrored against the LR: `max` where the LR is lowest, `min` at the LR peak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CyclicMomentum {
    /// Momentum at the low-LR ends (1cycle: 0.95).
    pub max: f64,
    /// Momentum at the LR peak (1cycle: 0.85).
    pub min: f64,
}

impl CyclicMomentum {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.min) || !(0.0..1.0).contains(&self.max) {
            return Err(format!(
                "cyclic momentum must lie in [0, 1), got {}..{}",
                self.min, self.max
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "cyclic momentum: min {} is above max {}",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

/// The LR range of the default schedule, one cycle (and of clr when chosen on the command line):
/// sized for ResNet-20 at the default batch of 128 (the paper's 0.1–3.0 is for batch 1000).
pub const DEFAULT_MIN_LR: f64 = 0.08;
/// See [`DEFAULT_MIN_LR`].
pub const DEFAULT_MAX_LR: f64 = 0.8;

/// The learning rate and, when the schedule sets it, the momentum at one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lr: f64,
    /// `None`: the optimizer's constant momentum ([`crate::optim::Sgd::momentum`]).
    pub momentum: Option<f64>,
}

/// A schedule, as it appears in a config file (`kind = "one-cycle"`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    OneCycle(OneCycle),
    Clr(Clr),
    Piecewise(Piecewise),
    Constant(Constant),
    Range(Range),
}

impl Default for Schedule {
    /// The paper's one cycle over [`DEFAULT_MIN_LR`]..[`DEFAULT_MAX_LR`].
    fn default() -> Self {
        Schedule::OneCycle(OneCycle::default())
    }
}

impl Schedule {
    /// The paper's super-convergence cycle: linear `min_lr` → `max_lr` → `min_lr` over the run.
    pub fn paper_one_cycle(min_lr: f64, max_lr: f64) -> Schedule {
        Schedule::OneCycle(OneCycle::paper(min_lr, max_lr))
    }

    /// The schedule for a run of `total` iterations: what depends on the length and was left
    /// unset is filled in (the clr step size: a quarter of the run; the piecewise milestones: 50%
    /// and 75%), then the whole is validated. The one place a run's schedule is checked.
    pub fn for_run(&self, total: usize) -> Result<Schedule, String> {
        let mut s = self.clone();
        match &mut s {
            Schedule::Clr(c) if c.step_size == 0 => c.step_size = (total / 4).max(1),
            Schedule::Piecewise(p) if p.milestones.is_empty() => {
                p.milestones = vec![total / 2, total * 3 / 4];
                p.milestones.retain(|&m| m > 0);
                p.milestones.dedup();
            }
            _ => {}
        }
        s.validate(total)?;
        Ok(s)
    }

    /// The LR and momentum at `iteration` (0-based) of a run of `total` iterations.
    pub fn at(&self, iteration: usize, total: usize) -> Point {
        match self {
            Schedule::OneCycle(s) => s.at(iteration, total),
            Schedule::Clr(s) => s.at(iteration, total),
            Schedule::Piecewise(s) => s.at(iteration, total),
            Schedule::Constant(s) => s.at(iteration, total),
            Schedule::Range(s) => s.at(iteration, total),
        }
    }

    /// Checks the schedule against a run of `total` iterations; the message says what is wrong.
    pub fn validate(&self, total: usize) -> Result<(), String> {
        match self {
            Schedule::OneCycle(s) => s.validate(total),
            Schedule::Clr(s) => s.validate(total),
            Schedule::Piecewise(s) => s.validate(total),
            Schedule::Constant(s) => s.validate(total),
            Schedule::Range(s) => s.validate(total),
        }
    }

    /// A one-line description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Schedule::OneCycle(s) => s.describe(),
            Schedule::Clr(s) => s.describe(),
            Schedule::Piecewise(s) => s.describe(),
            Schedule::Constant(s) => s.describe(),
            Schedule::Range(s) => s.describe(),
        }
    }
}

/// A finite, non-negative LR (or factor), or a message naming it.
fn non_negative(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("{name} must be a finite number >= 0, got {v}"))
    }
}

/// `min_lr` and `max_lr` valid and in order.
fn lr_range(min_lr: f64, max_lr: f64) -> Result<(), String> {
    non_negative("min_lr", min_lr)?;
    non_negative("max_lr", max_lr)?;
    if max_lr < min_lr {
        return Err(format!("max_lr {max_lr} is below min_lr {min_lr}"));
    }
    Ok(())
}

fn interp(anneal: Anneal, start: f64, end: f64, pct: f64) -> f64 {
    let pct = pct.clamp(0.0, 1.0);
    match anneal {
        Anneal::Linear => start + (end - start) * pct,
        // PyTorch's _annealing_cos.
        Anneal::Cos => end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0),
    }
}

/// Piecewise interpolation through knots `(step, value)`, steps increasing.
fn through(knots: &[(f64, f64)], anneal: Anneal, step: f64) -> f64 {
    for w in knots.windows(2) {
        let ((s0, v0), (s1, v1)) = (w[0], w[1]);
        if step <= s1 {
            let pct = if s1 > s0 {
                (step - s0) / (s1 - s0)
            } else {
                1.0
            };
            return interp(anneal, v0, v1, pct);
        }
    }
    knots.last().map(|k| k.1).unwrap_or(0.0)
}

/// One cycle: `min_lr` → `max_lr` at `pct_start`, back down, then optionally annihilated.
///
/// - The ICLR paper: linear, `pct_start` 0.5, `cycle_end` 1.0, `final_lr` = `min_lr`
///   (0.1 → 3.0 → 0.1 over 10k iterations), constant momentum.
/// - Smith's later 1cycle: the same triangle ending at `cycle_end` 0.9, then down to `final_lr`
///   (a small fraction of `min_lr`) over the rest; cyclical momentum 0.95 → 0.85 → 0.95.
/// - PyTorch `OneCycleLR` / fast.ai `fit_one_cycle`: `cycle_end` absent (two phases:
///   `max_lr` straight down to `final_lr`), cosine, `min_lr` = max/div_factor,
///   `final_lr` = min_lr/final_div_factor, `pct_start` 0.25–0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycle {
    /// LR at iteration 0.
    pub min_lr: f64,
    /// LR at the peak.
    pub max_lr: f64,
    /// LR at the last iteration (default: `min_lr`).
    #[serde(default)]
    pub final_lr: Option<f64>,
    /// Fraction of the run at which the LR peaks (default 0.5).
    #[serde(default = "one_cycle_defaults::pct_start")]
    pub pct_start: f64,
    /// Fraction of the run at which the LR is back at `min_lr`, before annihilation towards
    /// `final_lr`; absent from a file: no return to `min_lr` (PyTorch's two phases).
    #[serde(default)]
    pub cycle_end: Option<f64>,
    #[serde(default = "one_cycle_defaults::anneal")]
    pub anneal: Anneal,
    /// Cyclical momentum; absent: the optimizer's constant momentum.
    #[serde(default)]
    pub momentum: Option<CyclicMomentum>,
}

impl Default for OneCycle {
    /// The paper's cycle over [`DEFAULT_MIN_LR`]..[`DEFAULT_MAX_LR`].
    fn default() -> Self {
        OneCycle::paper(DEFAULT_MIN_LR, DEFAULT_MAX_LR)
    }
}

field_defaults!(one_cycle_defaults for OneCycle { pct_start: f64, anneal: Anneal });

impl OneCycle {
    /// The paper's super-convergence cycle: linear `min_lr` → `max_lr` → `min_lr` over the run,
    /// peak at the middle, constant momentum.
    pub fn paper(min_lr: f64, max_lr: f64) -> OneCycle {
        OneCycle {
            min_lr,
            max_lr,
            final_lr: None,
            pct_start: 0.5,
            cycle_end: Some(1.0),
            anneal: Anneal::Linear,
            momentum: None,
        }
    }

    pub fn at(&self, iteration: usize, total: usize) -> Point {
        let it = iteration as f64;
        let last = total.saturating_sub(1).max(1) as f64;
        let (min_lr, max_lr) = (self.min_lr, self.max_lr);
        let final_lr = self.final_lr.unwrap_or(min_lr);
        // PyTorch OneCycleLR puts the peak at step pct_start * total - 1 and the end at total - 1.
        let peak = (self.pct_start * total as f64 - 1.0).max(0.0);
        let mut lr_knots = vec![(0.0, min_lr), (peak, max_lr)];
        let mut m_knots = self.momentum.map(|m| vec![(0.0, m.max), (peak, m.min)]);
        match self.cycle_end {
            Some(c) if c < 1.0 => {
                let back = (c * total as f64 - 1.0).max(peak);
                lr_knots.extend([(back, min_lr), (last, final_lr)]);
                if let (Some(k), Some(m)) = (m_knots.as_mut(), self.momentum) {
                    k.extend([(back, m.max), (last, m.max)]);
                }
            }
            // Back to min at the end (a distinct final_lr is reached at the last step), or
            // PyTorch's two phases straight down to final_lr.
            Some(_) | None => {
                lr_knots.push((last, final_lr));
                if let (Some(k), Some(m)) = (m_knots.as_mut(), self.momentum) {
                    k.push((last, m.max));
                }
            }
        }
        Point {
            lr: through(&lr_knots, self.anneal, it),
            momentum: m_knots.map(|k| through(&k, self.anneal, it)),
        }
    }

    pub fn validate(&self, _total: usize) -> Result<(), String> {
        lr_range(self.min_lr, self.max_lr)?;
        if let Some(f) = self.final_lr {
            non_negative("final_lr", f)?;
        }
        let pct_start = self.pct_start;
        if !(pct_start > 0.0 && pct_start < 1.0) {
            return Err(format!("pct_start must be in (0, 1), got {pct_start}"));
        }
        if let Some(c) = self.cycle_end {
            if !(c > pct_start && c <= 1.0) {
                return Err(format!(
                    "cycle_end must be in (pct_start, 1] = ({pct_start}, 1], got {c}"
                ));
            }
        }
        self.momentum
            .as_ref()
            .map_or(Ok(()), CyclicMomentum::validate)
    }

    pub fn describe(&self) -> String {
        let OneCycle { min_lr, max_lr, .. } = self;
        let mut s = format!(
            "one-cycle {min_lr}→{max_lr}→{} ({:?}, peak at {:.0}%",
            self.final_lr.unwrap_or(*min_lr),
            self.anneal,
            self.pct_start * 100.0
        );
        if let Some(c) = self.cycle_end {
            if c < 1.0 {
                s += &format!(", back to {min_lr} at {:.0}% then annihilated", c * 100.0);
            }
        }
        if let Some(m) = self.momentum {
            s += &format!(", momentum {}↔{}", m.max, m.min);
        }
        s + ")"
    }
}

/// Triangular cyclical LR (Smith 2017): `min_lr` ↔ `max_lr`, each half cycle `step_size` long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clr {
    pub min_lr: f64,
    pub max_lr: f64,
    /// Iterations per half cycle (0: a quarter of the run, filled in by [`Schedule::for_run`]).
    pub step_size: usize,
    #[serde(default)]
    pub momentum: Option<CyclicMomentum>,
}

impl Default for Clr {
    /// [`DEFAULT_MIN_LR`] ↔ [`DEFAULT_MAX_LR`], step size from the run length.
    fn default() -> Self {
        Clr {
            min_lr: DEFAULT_MIN_LR,
            max_lr: DEFAULT_MAX_LR,
            step_size: 0,
            momentum: None,
        }
    }
}

impl Clr {
    pub fn at(&self, iteration: usize, _total: usize) -> Point {
        let it = iteration as f64;
        let s = self.step_size.max(1) as f64;
        let cycle = (1.0 + it / (2.0 * s)).floor();
        let x = (it / s - 2.0 * cycle + 1.0).abs();
        let f = (1.0 - x).max(0.0);
        Point {
            lr: self.min_lr + (self.max_lr - self.min_lr) * f,
            momentum: self.momentum.map(|m| m.max - (m.max - m.min) * f),
        }
    }

    pub fn validate(&self, total: usize) -> Result<(), String> {
        lr_range(self.min_lr, self.max_lr)?;
        let step_size = self.step_size;
        if step_size == 0 {
            return Err("step_size must be at least 1".into());
        }
        if step_size > total {
            return Err(format!(
                "step_size {step_size} is longer than the run ({total} iterations)"
            ));
        }
        self.momentum
            .as_ref()
            .map_or(Ok(()), CyclicMomentum::validate)
    }

    pub fn describe(&self) -> String {
        let Clr {
            min_lr,
            max_lr,
            step_size,
            ..
        } = self;
        format!("clr {min_lr}↔{max_lr}, step size {step_size}")
    }
}

/// Piecewise constant (multistep): `lr`, multiplied by `gamma` at each milestone.
/// The paper's baseline: 0.35, ×0.1 at 50k and 70k of 80k. He et al.'s (2016) CIFAR recipe:
/// 0.1, ×0.1 at 50% and 75%, and for ResNet-110 a warm-up at 0.01 for the first ~400 iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piecewise {
    pub lr: f64,
    /// Iterations at which the LR is multiplied by `gamma`, increasing (empty: 50% and 75% of
    /// the run, filled in by [`Schedule::for_run`]).
    pub milestones: Vec<usize>,
    #[serde(default = "piecewise_defaults::gamma")]
    pub gamma: f64,
    /// Iterations at `warmup_lr` before `lr` starts (0: none). Left out of a serialized config
    /// when 0, so configs and run names from before the option stay the same.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_iterations: usize,
    /// The LR of the warm-up (He et al.: 0.01 for ResNet-110), or where a linear one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_lr: Option<f64>,
    /// `constant`: `warmup_lr` throughout (He et al.); `linear`: from `warmup_lr` up to `lr`
    /// (Goyal et al. 2017's gradual warm-up for large batches). Left out of a serialized config
    /// when constant.
    #[serde(default, skip_serializing_if = "WarmupShape::is_constant")]
    pub warmup_shape: WarmupShape,
}

/// How a piecewise schedule's warm-up moves ([`Piecewise::warmup_shape`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WarmupShape {
    #[default]
    Constant,
    Linear,
}

impl WarmupShape {
    pub fn is_constant(&self) -> bool {
        *self == WarmupShape::Constant
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for Piecewise {
    /// 0.1, ×0.1 at 50% and 75% of the run.
    fn default() -> Self {
        Piecewise {
            lr: 0.1,
            milestones: vec![],
            gamma: 0.1,
            warmup_iterations: 0,
            warmup_lr: None,
            warmup_shape: WarmupShape::Constant,
        }
    }
}

field_defaults!(piecewise_defaults for Piecewise { gamma: f64 });

impl Piecewise {
    pub fn at(&self, iteration: usize, _total: usize) -> Point {
        if iteration < self.warmup_iterations {
            let from = self.warmup_lr.unwrap_or(self.lr);
            let lr = match self.warmup_shape {
                WarmupShape::Constant => from,
                WarmupShape::Linear => {
                    from + (self.lr - from) * iteration as f64 / self.warmup_iterations as f64
                }
            };
            return Point { lr, momentum: None };
        }
        let k = self.milestones.iter().filter(|&&m| iteration >= m).count();
        Point {
            lr: self.lr * self.gamma.powi(k as i32),
            momentum: None,
        }
    }

    pub fn validate(&self, total: usize) -> Result<(), String> {
        non_negative("lr", self.lr)?;
        non_negative("gamma", self.gamma)?;
        match (self.warmup_iterations, self.warmup_lr) {
            (0, Some(_)) => {
                return Err("warmup_lr is set but warmup_iterations is 0".into());
            }
            (n, None) if n > 0 => {
                return Err(format!(
                    "warmup_iterations is {n} but no warmup_lr is given"
                ));
            }
            (_, Some(w)) => non_negative("warmup_lr", w)?,
            _ => {}
        }
        let milestones = &self.milestones;
        if let Some(&first) = milestones.first() {
            if self.warmup_iterations > first {
                return Err(format!(
                    "the warm-up ({} iterations) runs past the first milestone ({first})",
                    self.warmup_iterations
                ));
            }
        }
        if milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("milestones must increase: {milestones:?}"));
        }
        if let Some(m) = milestones.iter().find(|&&m| m >= total) {
            return Err(format!(
                "milestone {m} is beyond the run ({total} iterations)"
            ));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let Piecewise {
            lr,
            milestones,
            gamma,
            warmup_iterations,
            warmup_lr,
            warmup_shape,
        } = self;
        let warmup = match (warmup_lr, warmup_shape) {
            (Some(w), WarmupShape::Constant) if *warmup_iterations > 0 => {
                format!(" after {warmup_iterations} warm-up iterations at {w}")
            }
            (Some(w), WarmupShape::Linear) if *warmup_iterations > 0 => {
                format!(" after a linear warm-up from {w} over {warmup_iterations} iterations")
            }
            _ => String::new(),
        };
        format!("piecewise {lr}, ×{gamma} at {milestones:?}{warmup}")
    }
}

/// A constant LR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constant {
    pub lr: f64,
}

impl Default for Constant {
    fn default() -> Self {
        Constant { lr: 0.1 }
    }
}

impl Constant {
    pub fn at(&self, _iteration: usize, _total: usize) -> Point {
        Point {
            lr: self.lr,
            momentum: None,
        }
    }

    pub fn validate(&self, _total: usize) -> Result<(), String> {
        non_negative("lr", self.lr)
    }

    pub fn describe(&self) -> String {
        format!("constant {}", self.lr)
    }
}

/// The LR range test's ramp: `start_lr` → `end_lr` over the run, linear or exponential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub start_lr: f64,
    pub end_lr: f64,
    #[serde(default)]
    pub exponential: bool,
}

impl Range {
    pub fn at(&self, iteration: usize, total: usize) -> Point {
        let last = total.saturating_sub(1).max(1) as f64;
        let pct = (iteration as f64 / last).clamp(0.0, 1.0);
        let (start_lr, end_lr) = (self.start_lr, self.end_lr);
        let lr = if self.exponential {
            start_lr * (end_lr / start_lr).powf(pct)
        } else {
            start_lr + (end_lr - start_lr) * pct
        };
        Point { lr, momentum: None }
    }

    pub fn validate(&self, _total: usize) -> Result<(), String> {
        let (start_lr, end_lr) = (self.start_lr, self.end_lr);
        non_negative("start_lr", start_lr)?;
        non_negative("end_lr", end_lr)?;
        if end_lr <= start_lr {
            return Err(format!("end_lr {end_lr} must be above start_lr {start_lr}"));
        }
        if self.exponential && start_lr <= 0.0 {
            return Err("an exponential range needs start_lr > 0".into());
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!(
            "{} range {}→{}",
            if self.exponential {
                "exponential"
            } else {
                "linear"
            },
            self.start_lr,
            self.end_lr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + b.abs())
    }

    /// PyTorch's OneCycleLR (three_phase=False), written out from its documented formulas.
    fn pytorch_one_cycle(
        step: usize,
        total: usize,
        max_lr: f64,
        pct: f64,
        div: f64,
        fdiv: f64,
        cos: bool,
    ) -> (f64, f64) {
        let initial = max_lr / div;
        let min = initial / fdiv;
        let (m_max, m_base) = (0.95, 0.85);
        let p1_end = pct * total as f64 - 1.0;
        let p2_end = total as f64 - 1.0;
        let ann = |s: f64, e: f64, p: f64| {
            if cos {
                e + (s - e) / 2.0 * ((std::f64::consts::PI * p).cos() + 1.0)
            } else {
                (e - s) * p + s
            }
        };
        let st = step as f64;
        if st <= p1_end {
            let p = st / p1_end;
            (ann(initial, max_lr, p), ann(m_max, m_base, p))
        } else {
            let p = (st - p1_end) / (p2_end - p1_end);
            (ann(max_lr, min, p), ann(m_base, m_max, p))
        }
    }

    #[test]
    fn one_cycle_matches_pytorch_formulas() {
        for &(total, pct, cos) in &[(1000, 0.3, true), (3510, 0.25, true), (200, 0.5, false)] {
            let max_lr = 0.8;
            let s = Schedule::OneCycle(OneCycle {
                min_lr: max_lr / 25.0,
                max_lr,
                final_lr: Some(max_lr / 25.0 / 1e4),
                pct_start: pct,
                cycle_end: None,
                anneal: if cos { Anneal::Cos } else { Anneal::Linear },
                momentum: Some(CyclicMomentum {
                    max: 0.95,
                    min: 0.85,
                }),
            });
            for step in [
                0,
                1,
                7,
                total / 4,
                total / 3,
                total / 2,
                total - 2,
                total - 1,
            ] {
                let (lr, m) = pytorch_one_cycle(step, total, max_lr, pct, 25.0, 1e4, cos);
                let p = s.at(step, total);
                assert!(close(p.lr, lr), "step {step}/{total}: {} vs {lr}", p.lr);
                assert!(close(p.momentum.unwrap(), m), "step {step}: momentum");
            }
        }
    }

    #[test]
    fn paper_triangle() {
        let s = Schedule::paper_one_cycle(0.1, 3.0);
        s.validate(10_000).unwrap();
        assert!(close(s.at(0, 10_000).lr, 0.1));
        assert!(close(s.at(4_999, 10_000).lr, 3.0));
        assert!(close(s.at(9_999, 10_000).lr, 0.1));
        // Linear and symmetric.
        let a = s.at(2_000, 10_000).lr;
        let b = s.at(7_998, 10_000).lr;
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        assert_eq!(s.at(100, 10_000).momentum, None);
    }

    #[test]
    fn one_cycle_with_annihilation() {
        let s = Schedule::OneCycle(OneCycle {
            min_lr: 0.1,
            max_lr: 1.0,
            final_lr: Some(0.001),
            pct_start: 0.45,
            cycle_end: Some(0.9),
            anneal: Anneal::Linear,
            momentum: Some(CyclicMomentum {
                max: 0.95,
                min: 0.85,
            }),
        });
        s.validate(1000).unwrap();
        assert!(close(s.at(449, 1000).lr, 1.0));
        assert!(close(s.at(449, 1000).momentum.unwrap(), 0.85));
        assert!(close(s.at(899, 1000).lr, 0.1));
        assert!(close(s.at(950, 1000).momentum.unwrap(), 0.95));
        assert!(close(s.at(999, 1000).lr, 0.001));
        assert!(s.at(950, 1000).lr < 0.1 && s.at(950, 1000).lr > 0.001);
    }

    #[test]
    fn clr_piecewise_constant_range() {
        let s = Schedule::Clr(Clr {
            min_lr: 0.1,
            max_lr: 1.0,
            step_size: 100,
            momentum: None,
        });
        assert!(close(s.at(0, 1000).lr, 0.1));
        assert!(close(s.at(100, 1000).lr, 1.0));
        assert!(close(s.at(200, 1000).lr, 0.1));
        assert!(close(s.at(250, 1000).lr, 0.55));
        let p = Schedule::Piecewise(Piecewise {
            lr: 0.35,
            milestones: vec![50_000, 70_000],
            gamma: 0.1,
            ..Piecewise::default()
        });
        p.validate(80_000).unwrap();
        assert!(close(p.at(49_999, 80_000).lr, 0.35));
        assert!(close(p.at(50_000, 80_000).lr, 0.035));
        assert!(close(p.at(79_999, 80_000).lr, 0.0035));
        assert!(close(
            Schedule::Constant(Constant { lr: 0.2 }).at(5, 10).lr,
            0.2
        ));
        let r = Schedule::Range(Range {
            start_lr: 1e-4,
            end_lr: 10.0,
            exponential: true,
        });
        assert!(close(r.at(0, 101).lr, 1e-4));
        assert!(close(r.at(50, 101).lr, 1e-4 * 1e5f64.sqrt()));
        assert!(close(r.at(100, 101).lr, 10.0));
    }

    #[test]
    fn piecewise_warm_up_holds_its_lr_then_gives_way_to_the_steps() {
        // He et al.'s ResNet-110: 0.01 for ~400 iterations, then 0.1, x0.1 at 50% and 75%.
        let p = Schedule::Piecewise(Piecewise {
            warmup_iterations: 400,
            warmup_lr: Some(0.01),
            ..Piecewise::default()
        })
        .for_run(4000)
        .unwrap();
        assert!(close(p.at(0, 4000).lr, 0.01));
        assert!(close(p.at(399, 4000).lr, 0.01));
        assert!(close(p.at(400, 4000).lr, 0.1));
        assert!(close(p.at(2000, 4000).lr, 0.01));
        assert!(close(p.at(3999, 4000).lr, 0.001));
        assert!(
            p.describe().contains("400 warm-up iterations at 0.01"),
            "{}",
            p.describe()
        );
        // No warm-up: the serialized form is what it was before the option existed.
        let json = serde_json::to_string(&Schedule::Piecewise(Piecewise::default())).unwrap();
        assert!(!json.contains("warmup"), "{json}");
        let back: Schedule =
            toml::from_str("kind = \"piecewise\"\nlr = 0.1\nmilestones = []\nwarmup_iterations = 400\nwarmup_lr = 0.01").unwrap();
        assert_eq!(
            back,
            Schedule::Piecewise(Piecewise {
                warmup_iterations: 400,
                warmup_lr: Some(0.01),
                ..Piecewise::default()
            })
        );
    }

    #[test]
    fn a_linear_warm_up_climbs_from_its_start_to_the_lr() {
        // Goyal et al.: batch 1024 starts at the batch-128 LR (0.1) and climbs to 0.8.
        let p = Schedule::Piecewise(Piecewise {
            lr: 0.8,
            warmup_iterations: 200,
            warmup_lr: Some(0.1),
            warmup_shape: WarmupShape::Linear,
            ..Piecewise::default()
        })
        .for_run(1200)
        .unwrap();
        assert!(close(p.at(0, 1200).lr, 0.1));
        assert!(close(p.at(100, 1200).lr, 0.45));
        assert!(close(p.at(199, 1200).lr, 0.1 + 0.7 * 199.0 / 200.0));
        assert!(close(p.at(200, 1200).lr, 0.8));
        assert!(close(p.at(600, 1200).lr, 0.08));
        assert!(
            p.describe().contains("linear warm-up from 0.1 over 200"),
            "{}",
            p.describe()
        );
        let back: Schedule = toml::from_str(
            "kind = \"piecewise\"\nlr = 0.8\nmilestones = []\nwarmup_iterations = 200\nwarmup_lr = 0.1\nwarmup_shape = \"linear\"",
        )
        .unwrap();
        let Schedule::Piecewise(b) = back else {
            panic!("{back:?}")
        };
        assert_eq!(b.warmup_shape, WarmupShape::Linear);
        assert!(toml::from_str::<Schedule>(
            "kind = \"piecewise\"\nlr = 0.8\nmilestones = []\nwarmup_shape = \"cosine\""
        )
        .is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let s = Schedule::paper_one_cycle(3.0, 0.1);
        assert!(s.validate(100).unwrap_err().contains("below min_lr"));
        let c = Schedule::Clr(Clr {
            min_lr: 0.1,
            max_lr: 1.0,
            step_size: 500,
            momentum: None,
        });
        assert!(c.validate(100).unwrap_err().contains("longer than the run"));
        let p = Schedule::Piecewise(Piecewise {
            lr: 0.1,
            milestones: vec![50, 200],
            gamma: 0.1,
            ..Piecewise::default()
        });
        assert!(p.validate(100).unwrap_err().contains("beyond the run"));
        let warm = |n: usize, lr: Option<f64>| {
            Schedule::Piecewise(Piecewise {
                milestones: vec![50, 75],
                warmup_iterations: n,
                warmup_lr: lr,
                ..Piecewise::default()
            })
            .validate(100)
        };
        assert!(warm(10, None).unwrap_err().contains("no warmup_lr"));
        assert!(warm(0, Some(0.01))
            .unwrap_err()
            .contains("warmup_iterations is 0"));
        assert!(warm(60, Some(0.01))
            .unwrap_err()
            .contains("past the first milestone"));
        assert!(warm(10, Some(-1.0)).unwrap_err().contains("warmup_lr"));
        let toml_err = toml::from_str::<Schedule>("kind = \"constant\"\nlr = 0.1\nbogus = 1")
            .unwrap_err()
            .to_string();
        assert!(toml_err.contains("bogus"), "{toml_err}");
    }

    #[test]
    fn for_run_fills_length_defaults_then_validates() {
        let clr = Schedule::Clr(Clr::default()).for_run(1000).unwrap();
        assert_eq!(
            clr,
            Schedule::Clr(Clr {
                step_size: 250,
                ..Clr::default()
            })
        );
        let pc = Schedule::Piecewise(Piecewise::default())
            .for_run(80)
            .unwrap();
        assert_eq!(
            pc,
            Schedule::Piecewise(Piecewise {
                milestones: vec![40, 60],
                ..Piecewise::default()
            })
        );
        // Given values stay; the check runs on the filled-in schedule.
        let given = Schedule::Clr(Clr {
            step_size: 7,
            ..Clr::default()
        });
        assert_eq!(given.for_run(1000).unwrap(), given);
        assert!(given
            .for_run(5)
            .unwrap_err()
            .contains("longer than the run"));
        assert!(Schedule::paper_one_cycle(3.0, 0.1)
            .for_run(10)
            .unwrap_err()
            .contains("below min_lr"));
    }
}

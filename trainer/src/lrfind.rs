//! The LR range test (`sc-trainer lr-find`): one short run with the LR rising from ~0 to a maximum,
//! recording the training loss and the accuracy on a validation subset, then suggestions for the
//! one-cycle bounds, each with the rule that produced it and why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::schedule::{Range, Schedule};
use crate::train::{fit, FitOptions};

/// One point of the curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub iter: usize,
    pub lr: f64,
    pub loss: f64,
    pub smoothed_loss: f64,
}

/// A validation measurement during the test.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccPoint {
    pub iter: usize,
    pub lr: f64,
    pub val_acc: f64,
}

/// A suggested value with the rule that produced it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Suggestion {
    pub rule: String,
    pub lr: f64,
    pub why: String,
}

/// Everything the test found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFindReport {
    pub curve: Vec<CurvePoint>,
    pub accuracy: Vec<AccPoint>,
    /// The paper's rule: `max_lr` where validation accuracy peaks or just before it falls apart.
    pub paper_max_lr: Option<Suggestion>,
    /// `paper_max_lr / 4` (the paper: a third to a quarter of the maximum).
    pub paper_min_lr: Option<Suggestion>,
    pub steepest: Option<Suggestion>,
    pub valley: Option<Suggestion>,
    pub min_loss_over_10: Option<Suggestion>,
    /// Why the run ended (diverged early, or reached the end of the range).
    pub ended: String,
}

/// Bias-corrected exponential moving average (beta 0.98, as fast.ai and pytorch-lr-finder).
pub fn smooth(losses: &[f64], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            avg = beta * avg + (1.0 - beta) * l;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// The suggestions for a curve; `chance` is the accuracy of guessing (1 / classes).
pub fn suggest(curve: &[CurvePoint], acc: &[AccPoint], chance: f64) -> LrFindReport {
    let mut r = LrFindReport {
        curve: curve.to_vec(),
        accuracy: acc.to_vec(),
        paper_max_lr: None,
        paper_min_lr: None,
        steepest: None,
        valley: None,
        min_loss_over_10: None,
        ended: String::new(),
    };
    // The paper: the max LR is where accuracy peaks, or the last LR before it falls apart —
    // "falls apart" meaning it drops below the peak by more than 10% of (peak - chance).
    let finite: Vec<&AccPoint> = acc.iter().filter(|a| a.val_acc.is_finite()).collect();
    if let Some(peak_i) = (0..finite.len()).max_by(|&a, &b| {
        finite[a]
            .val_acc
            .total_cmp(&finite[b].val_acc)
            .then(b.cmp(&a))
    }) {
        let peak = finite[peak_i];
        if peak.val_acc > chance {
            let floor = peak.val_acc - 0.1 * (peak.val_acc - chance);
            let mut last = peak_i;
            while last + 1 < finite.len() && finite[last + 1].val_acc >= floor {
                last += 1;
            }
            let chosen = finite[last];
            let why = if last == peak_i {
                format!(
                    "validation accuracy peaks at {:.1}% at LR {:.4} and falls below {:.1}% right after",
                    peak.val_acc * 100.0,
                    peak.lr,
                    floor * 100.0
                )
            } else {
                format!(
                    "validation accuracy peaks at {:.1}% (LR {:.4}) and stays within 10% of (peak - chance) = above {:.1}% up to LR {:.4}{}",
                    peak.val_acc * 100.0,
                    peak.lr,
                    floor * 100.0,
                    chosen.lr,
                    if last + 1 == finite.len() { ", the end of the range" } else { "" }
                )
            };
            r.paper_max_lr = Some(Suggestion {
                rule: "paper: accuracy peak / before accuracy falls apart".into(),
                lr: chosen.lr,
                why,
            });
            r.paper_min_lr = Some(Suggestion {
                rule: "paper: max_lr / 4 (a third to a quarter of max)".into(),
                lr: chosen.lr / 4.0,
                why: format!(
                    "a quarter of the suggested max {:.4}; max/3 = {:.4}",
                    chosen.lr,
                    chosen.lr / 3.0
                ),
            });
        }
    }
    // Loss-based rules, on the smoothed loss, ignoring the first and last few points.
    let n = curve.len();
    if n >= 10 {
        let skip_start = (n / 20).max(1);
        let body = &curve[skip_start..n - 1];
        let logs: Vec<f64> = body.iter().map(|p| p.lr.max(1e-12).ln()).collect();
        // Steepest descent before the loss minimum (after it, the loss may fall again from a spike).
        let argmin = (0..body.len())
            .min_by(|&a, &b| body[a].smoothed_loss.total_cmp(&body[b].smoothed_loss))
            .unwrap_or(0);
        let mut best: Option<(f64, usize)> = None;
        for i in 1..=argmin {
            let dx = logs[i] - logs[i - 1];
            if dx <= 0.0 {
                continue;
            }
            let g = (body[i].smoothed_loss - body[i - 1].smoothed_loss) / dx;
            if g.is_finite() && best.is_none_or(|(b, _)| g < b) {
                best = Some((g, i));
            }
        }
        if let Some((g, i)) = best {
            r.steepest = Some(Suggestion {
                rule: "steepest descent of the smoothed loss (fast.ai 'steep')".into(),
                lr: body[i].lr,
                why: format!("the smoothed loss falls fastest there: {g:.3} per e-fold of LR"),
            });
        }
        // fast.ai's 'valley': the longest decreasing stretch of the smoothed loss, 2/3 of the way down.
        let l: Vec<f64> = body.iter().map(|p| p.smoothed_loss).collect();
        let m = l.len();
        let mut len = vec![1usize; m];
        let mut prev = vec![usize::MAX; m];
        for i in 1..m {
            for j in 0..i {
                if l[i] < l[j] && len[j] + 1 > len[i] {
                    len[i] = len[j] + 1;
                    prev[i] = j;
                }
            }
        }
        if let Some(end) = (0..m).max_by_key(|&i| (len[i], std::cmp::Reverse(i))) {
            let mut start = end;
            while prev[start] != usize::MAX {
                start = prev[start];
            }
            let idx = start + (end - start) * 2 / 3;
            r.valley = Some(Suggestion {
                rule:
                    "valley: 2/3 down the longest descent of the smoothed loss (fast.ai 'valley')"
                        .into(),
                lr: body[idx].lr,
                why: format!(
                    "the loss descends from LR {:.4} to {:.4}; two thirds of the way is {:.4}",
                    body[start].lr, body[end].lr, body[idx].lr
                ),
            });
        }
        if let Some(min) = body
            .iter()
            .min_by(|a, b| a.smoothed_loss.total_cmp(&b.smoothed_loss))
        {
            r.min_loss_over_10 = Some(Suggestion {
                rule: "minimum smoothed loss / 10".into(),
                lr: min.lr / 10.0,
                why: format!(
                    "the smoothed loss is lowest ({:.3}) at LR {:.4}",
                    min.smoothed_loss, min.lr
                ),
            });
        }
    }
    r
}

/// Reads a run's metrics into the loss curve and the accuracy points.
pub fn read_curve(run_dir: &Path) -> anyhow::Result<(Vec<CurvePoint>, Vec<AccPoint>)> {
    let (mut iters, mut lrs, mut losses, mut acc) = (vec![], vec![], vec![], vec![]);
    for row in crate::run_dir::read_metrics(run_dir)? {
        let lr = row.lr.unwrap_or(f64::NAN);
        if let Some(a) = row.val_acc {
            acc.push(AccPoint {
                iter: row.iter,
                lr,
                val_acc: a,
            });
        } else if let Some(l) = row.loss {
            if !row.is_divergence() {
                iters.push(row.iter);
                lrs.push(lr);
                losses.push(l);
            }
        }
    }
    let sm = smooth(&losses, 0.98);
    let curve = (0..losses.len())
        .map(|i| CurvePoint {
            iter: iters[i],
            lr: lrs[i],
            loss: losses[i],
            smoothed_loss: sm[i],
        })
        .collect();
    Ok((curve, acc))
}

/// Settings of one LR range test.
#[derive(Debug, Clone)]
pub struct LrFindPlan {
    pub config: TrainConfig,
    pub start_lr: f64,
    pub end_lr: f64,
    pub exponential: bool,
    pub val_subset: usize,
    /// Stop when the smoothed loss exceeds this multiple of its minimum (None: only on NaN).
    pub stop_factor: Option<f64>,
    pub out_dir: PathBuf,
    pub progress: bool,
}

/// Runs the test and writes `lr_find.csv`, `lr_find.json` and `lr_find.png` into the run directory.
pub fn run(plan: &LrFindPlan) -> anyhow::Result<LrFindReport> {
    let mut cfg = plan.config.clone();
    cfg.schedule = Schedule::Range(Range {
        start_lr: plan.start_lr,
        end_lr: plan.end_lr,
        exponential: plan.exponential,
    });
    let opts = FitOptions {
        progress: plan.progress,
        divergence_is_end: true,
        val_limit: Some(plan.val_subset),
        export: false,
        divergence_factor: plan.stop_factor,
        ..FitOptions::default()
    };
    let summary = fit(cfg, &plan.out_dir, &opts)?;
    let info = crate::run_dir::read_run_info(&plan.out_dir)?;
    let (curve, acc) = read_curve(&plan.out_dir)?;
    let mut report = suggest(&curve, &acc, 1.0 / info.arch.num_classes as f64);
    report.ended = match &summary.message {
        Some(m) => format!("ended early: {m}"),
        None => format!("reached the end of the range at LR {}", plan.end_lr),
    };
    write_outputs(&plan.out_dir, &report, plan.exponential)?;
    Ok(report)
}

fn write_outputs(dir: &Path, r: &LrFindReport, log_x: bool) -> anyhow::Result<()> {
    let mut csv = String::from("iter,lr,loss,smoothed_loss,val_acc\n");
    for p in &r.curve {
        let a = r
            .accuracy
            .iter()
            .find(|a| a.iter == p.iter)
            .map(|a| a.val_acc.to_string())
            .unwrap_or_default();
        csv += &format!("{},{},{},{},{}\n", p.iter, p.lr, p.loss, p.smoothed_loss, a);
    }
    crate::io::write_atomic(&dir.join("lr_find.csv"), csv.as_bytes())?;
    crate::io::write_json(&dir.join("lr_find.json"), r)?;
    let png = dir.join("lr_find.png");
    if let Err(e) = crate::plot::lr_find_plot(&png, r, log_x) {
        eprintln!("warning: could not draw {}: {e:#}", png.display());
    }
    Ok(())
}

/// The suggestions as text for the terminal.
pub fn describe(r: &LrFindReport) -> String {
    let mut s = format!("LR range test: {}\n", r.ended);
    for sug in [
        &r.paper_max_lr,
        &r.paper_min_lr,
        &r.steepest,
        &r.valley,
        &r.min_loss_over_10,
    ]
    .into_iter()
    .flatten()
    {
        s += &format!(
            "  {:<8.4}  {}\n            because {}\n",
            sug.lr, sug.rule, sug.why
        );
    }
    if r.paper_max_lr.is_none() {
        s += "  no accuracy-based suggestion: validation accuracy never rose above chance\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(lrs: &[f64], loss: impl Fn(f64) -> f64) -> Vec<CurvePoint> {
        let l: Vec<f64> = lrs.iter().map(|&x| loss(x)).collect();
        let s = smooth(&l, 0.0);
        lrs.iter()
            .enumerate()
            .map(|(i, &lr)| CurvePoint {
                iter: i + 1,
                lr,
                loss: l[i],
                smoothed_loss: s[i],
            })
            .collect()
    }

    #[test]
    fn paper_rule_finds_where_accuracy_falls_apart() {
        // Accuracy rises to 0.8 at LR 1, stays high until 2.5, collapses at 3.
        let pts = [
            (0.5, 0.5),
            (1.0, 0.8),
            (1.5, 0.79),
            (2.0, 0.78),
            (2.5, 0.76),
            (3.0, 0.3),
        ];
        let acc: Vec<AccPoint> = pts
            .iter()
            .enumerate()
            .map(|(i, &(lr, a))| AccPoint {
                iter: i,
                lr,
                val_acc: a,
            })
            .collect();
        let r = suggest(&[], &acc, 0.1);
        let max = r.paper_max_lr.unwrap();
        assert_eq!(max.lr, 2.5, "{}", max.why);
        assert!((r.paper_min_lr.unwrap().lr - 0.625).abs() < 1e-12);
        // Peak at the end of the range: the last LR is chosen.
        let acc2: Vec<AccPoint> = (0..5)
            .map(|i| AccPoint {
                iter: i,
                lr: i as f64,
                val_acc: 0.2 + 0.1 * i as f64,
            })
            .collect();
        assert_eq!(suggest(&[], &acc2, 0.1).paper_max_lr.unwrap().lr, 4.0);
        // Never above chance: no suggestion rather than a wrong one.
        let flat: Vec<AccPoint> = (0..5)
            .map(|i| AccPoint {
                iter: i,
                lr: i as f64,
                val_acc: 0.1,
            })
            .collect();
        assert!(suggest(&[], &flat, 0.1).paper_max_lr.is_none());
    }

    #[test]
    fn loss_rules_on_a_synthetic_valley() {
        // Exponential LRs 1e-4..10; loss flat, then falls (steepest near 1e-2), minimum at 0.3, then explodes.
        let lrs: Vec<f64> = (0..200)
            .map(|i| 1e-4 * 10f64.powf(5.0 * i as f64 / 199.0))
            .collect();
        let c = curve(&lrs, |lr| {
            let x = lr.log10();
            2.3 - 1.5 / (1.0 + (-(x + 2.0) * 4.0).exp())
                + if lr > 0.3 { (lr - 0.3) * 5.0 } else { 0.0 }
        });
        let r = suggest(&c, &[], 0.1);
        let steep = r.steepest.unwrap().lr;
        assert!((0.005..0.02).contains(&steep), "steepest {steep}");
        let m = r.min_loss_over_10.unwrap().lr;
        assert!((0.02..0.04).contains(&m), "min/10 {m}");
        let v = r.valley.unwrap().lr;
        assert!(v > 1e-3 && v < 0.3, "valley {v}");
    }

    #[test]
    fn smoothing_is_bias_corrected() {
        let s = smooth(&[2.0, 2.0, 2.0], 0.98);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12));
    }
}

//! What a run directory (`runs/NAME/`) holds, and how to read it back: the file names, the run
//! facts ([`RunInfo`]), the metrics rows ([`MetricsRow`]), the ending ([`Summary`], [`Outcome`])
//! and the resolved config. The loop (`train.rs`) writes them; `export`, `lr-find`, `reproduce`
//! and `--resume` read them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use sc_models::{ArchConfig, Normalization};

use crate::config::TrainConfig;
use crate::io::write_atomic;

/// The fully resolved config, written before the first step.
pub const CONFIG: &str = "config.json";
/// The run facts ([`RunInfo`]), written before the first step.
pub const RUN_INFO: &str = "run.json";
/// One JSON object per line ([`MetricsRow`]): training steps, validations, a divergence, the
/// test accuracy.
pub const METRICS: &str = "metrics.jsonl";
/// How the run ended ([`Summary`]).
pub const SUMMARY: &str = "summary.json";

/// Facts about a run that the export and the reports need, written to [`RUN_INFO`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub command: Vec<String>,
    pub version: String,
    pub arch: ArchConfig,
    pub parameters: usize,
    pub normalization: Normalization,
    pub class_names: Vec<String>,
    pub data_source: String,
    pub train_images: usize,
    pub val_images: usize,
    pub iterations: usize,
    /// How the training images were fitted to the input (image folders), for `sc.preprocess`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<sc_data::Preprocess>,
    /// The machines it trained on ([`crate::device::machine`]), one per distinct machine over
    /// its resumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Finished,
    /// Loss or weights became NaN/Inf.
    Diverged,
    /// Stopped by Ctrl-C / SIGTERM after writing a checkpoint.
    Interrupted,
}

/// What a run ended with, written to [`SUMMARY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub outcome: Outcome,
    pub iterations: usize,
    pub final_val_acc: Option<f64>,
    /// The final weights' validation accuracy with horizontal-flip test-time augmentation
    /// (absent in summaries written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_val_acc_flip: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub best_val_acc: Option<f64>,
    pub test_acc: Option<f64>,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub parameters: usize,
    pub message: Option<String>,
}

/// One line of [`METRICS`]. Every kind of row is this one type with the fields it has; the others
/// are absent from the line (not `null`):
///
/// - a training step ([`MetricsRow::step`]): `iter`, `lr`, `momentum`, `loss`, `train_acc`,
///   `images_per_s`;
/// - a validation ([`MetricsRow::validation`]): `iter`, `lr`, `val_loss`, `val_acc`;
/// - a divergence ([`MetricsRow::divergence`]): `iter`, `lr`, `loss`, `diverged: true`;
/// - the test accuracy ([`MetricsRow::test`]): `iter`, `test_acc`.
///
/// `iter` counts the iterations done. A loss that is not finite is written as `null` and reads back
/// as absent. The fields are declared in alphabetical order, the order the lines have always had
/// on disk (a `serde_json::Map` is sorted by key); keep it so when adding one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<bool>,
    /// Throughput of this step alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    pub iter: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_acc: Option<f64>,
    /// Validations: the training seconds so far, evaluations left out (all sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

impl MetricsRow {
    /// A training step.
    pub fn step(
        iter: usize,
        lr: f64,
        momentum: f64,
        loss: f64,
        train_acc: f64,
        images_per_s: f64,
    ) -> MetricsRow {
        MetricsRow {
            iter,
            lr: Some(lr),
            momentum: Some(momentum),
            loss: Some(loss),
            train_acc: Some(train_acc),
            images_per_s: Some(images_per_s),
            ..MetricsRow::default()
        }
    }

    /// A validation.
    pub fn validation(iter: usize, lr: f64, val_loss: f64, val_acc: f64) -> MetricsRow {
        MetricsRow {
            iter,
            lr: Some(lr),
            val_loss: Some(val_loss),
            val_acc: Some(val_acc),
            ..MetricsRow::default()
        }
    }

    /// [`MetricsRow::validation`] with the training seconds so far (evaluations left out).
    pub fn timed_validation(
        iter: usize,
        lr: f64,
        (val_loss, val_acc): (f64, f64),
        train_s: f64,
    ) -> MetricsRow {
        MetricsRow {
            train_s: Some(train_s),
            ..MetricsRow::validation(iter, lr, val_loss, val_acc)
        }
    }

    /// The step at which training diverged (the loss may be NaN/Inf).
    pub fn divergence(iter: usize, lr: f64, loss: f64) -> MetricsRow {
        MetricsRow {
            iter,
            lr: Some(lr),
            loss: Some(loss),
            diverged: Some(true),
            ..MetricsRow::default()
        }
    }

    /// The test accuracy at the end of a run.
    pub fn test(iter: usize, test_acc: f64) -> MetricsRow {
        MetricsRow {
            iter,
            test_acc: Some(test_acc),
            ..MetricsRow::default()
        }
    }

    /// Whether this row records a divergence (any `diverged` value counts).
    pub fn is_divergence(&self) -> bool {
        self.diverged.is_some()
    }
}

/// Appends one row to an open [`METRICS`] file, as one line.
pub fn append_metrics(out: &mut impl Write, row: &MetricsRow) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Every row of a [`METRICS`] file, each with its line as written (for rewriting the file
/// verbatim). A line that is not a row (a torn last line from a crash) is an `Err` in its place.
pub fn parse_metrics(text: &str) -> impl Iterator<Item = (&str, serde_json::Result<MetricsRow>)> {
    text.lines().map(|line| (line, serde_json::from_str(line)))
}

/// Reads a run directory's [`METRICS`]; a line that is not a row is an error naming the file.
pub fn read_metrics(dir: &Path) -> anyhow::Result<Vec<MetricsRow>> {
    let p = dir.join(METRICS);
    let text = read_metrics_text(&p)?;
    parse_metrics(&text)
        .map(|(_, row)| row.with_context(|| format!("{}: bad line", p.display())))
        .collect()
}

/// Reads a run directory's [`METRICS`], skipping lines that are not rows (a torn last line from a
/// crash, or one cut short by a run killed mid-write).
pub fn read_metrics_lossy(dir: &Path) -> anyhow::Result<Vec<MetricsRow>> {
    let text = read_metrics_text(&dir.join(METRICS))?;
    Ok(parse_metrics(&text)
        .filter_map(|(_, row)| row.ok())
        .collect())
}

/// Keeps only the rows of a run directory's [`METRICS`] up to `iteration` (the checkpoint a
/// resumed run starts from), each line as it was; lines that are not rows (a torn last line from a
/// crash) go.
pub fn truncate_metrics(dir: &Path, iteration: usize) -> anyhow::Result<()> {
    let path = dir.join(METRICS);
    if !path.exists() {
        return Ok(());
    }
    let text = read_metrics_text(&path)?;
    let mut kept = String::new();
    for (line, row) in parse_metrics(&text) {
        if row.is_ok_and(|r| r.iter <= iteration) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(&path, kept.as_bytes())
}

fn read_metrics_text(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Reads a run directory's [`RUN_INFO`].
pub fn read_run_info(dir: &Path) -> anyhow::Result<RunInfo> {
    let p = dir.join(RUN_INFO);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read {} (is {} a run directory?)",
            p.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid run description", p.display()))
}

/// Reads a run directory's [`CONFIG`].
pub fn read_config(dir: &Path) -> anyhow::Result<TrainConfig> {
    let p = dir.join(CONFIG);
    TrainConfig::from_file(&p)
}

/// `runs/NAME` for a name, or a fresh name from the model and schedule.
pub fn run_dir_for(runs: &Path, name: Option<&str>, cfg: &TrainConfig) -> PathBuf {
    match name {
        Some(n) => runs.join(n),
        None => {
            let kind = serde_json::to_value(&cfg.schedule)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(String::from))
                .unwrap_or_else(|| "run".into());
            let base = format!("{}-{}-s{}", cfg.model.name, kind, cfg.seed);
            let mut k = 0;
            loop {
                let cand = if k == 0 {
                    base.clone()
                } else {
                    format!("{base}-{k}")
                };
                if !runs.join(&cand).exists() {
                    return runs.join(cand);
                }
                k += 1;
            }
        }
    }
}

/// A run directory's [`SUMMARY`], when it has a readable one (a run that never ended has none).
pub fn read_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join(SUMMARY)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a run has its result: finished, or diverged (a result too, with no accuracy).
pub fn ended(dir: &Path) -> bool {
    read_summary(dir).is_some_and(|s| matches!(s.outcome, Outcome::Finished | Outcome::Diverged))
}

/// A finished run's final validation accuracy (None: unfinished, diverged, or not validated).
pub fn final_val_acc(dir: &Path) -> Option<f64> {
    let s = read_summary(dir)?;
    (s.outcome == Outcome::Finished)
        .then_some(s.final_val_acc)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(row: &MetricsRow) -> String {
        let mut out = Vec::new();
        append_metrics(&mut out, row).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The lines are what `metrics.jsonl` has always held: same keys, same order, no `null`s for
    /// absent fields.
    #[test]
    fn metrics_rows_keep_their_shape_on_disk() {
        assert_eq!(
            line(&MetricsRow::step(3, 0.092, 0.9, 1.6, 0.3125, 1523.5)),
            "{\"images_per_s\":1523.5,\"iter\":3,\"loss\":1.6,\"lr\":0.092,\"momentum\":0.9,\"train_acc\":0.3125}\n"
        );
        assert_eq!(
            line(&MetricsRow::validation(5, 0.164, 1.52, 0.55)),
            "{\"iter\":5,\"lr\":0.164,\"val_acc\":0.55,\"val_loss\":1.52}\n"
        );
        assert_eq!(
            line(&MetricsRow::timed_validation(5, 0.164, (1.52, 0.55), 12.5)),
            "{\"iter\":5,\"lr\":0.164,\"train_s\":12.5,\"val_acc\":0.55,\"val_loss\":1.52}\n"
        );
        assert_eq!(
            line(&MetricsRow::divergence(4, 6e8, f64::NAN)),
            "{\"diverged\":true,\"iter\":4,\"loss\":null,\"lr\":600000000.0}\n"
        );
        assert_eq!(
            line(&MetricsRow::test(12, 0.5)),
            "{\"iter\":12,\"test_acc\":0.5}\n"
        );
    }

    /// Lines written before the type existed read back as the rows they were.
    #[test]
    fn old_metrics_lines_read_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(METRICS),
            concat!(
                "{\"images_per_s\":922.9,\"iter\":1,\"loss\":2.16,\"lr\":0.02,\"momentum\":0.9,\"train_acc\":0.375}\n",
                "{\"iter\":5,\"lr\":0.164,\"val_acc\":0.55,\"val_loss\":1.52}\n",
                "{\"diverged\":true,\"iter\":6,\"loss\":null,\"lr\":600400000.0}\n",
                "{\"iter\":6,\"test_acc\":0.5}\n",
                "{\"iter\":7,\"lo",
            ),
        )
        .unwrap();
        let e = read_metrics(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("bad line"), "{e:#}");
        let rows = read_metrics_lossy(dir.path()).unwrap();
        assert_eq!(
            rows,
            vec![
                MetricsRow::step(1, 0.02, 0.9, 2.16, 0.375, 922.9),
                MetricsRow::validation(5, 0.164, 1.52, 0.55),
                MetricsRow {
                    loss: None,
                    ..MetricsRow::divergence(6, 600400000.0, 0.0)
                },
                MetricsRow::test(6, 0.5),
            ]
        );
        assert!(rows[2].is_divergence() && !rows[0].is_divergence());
    }
}

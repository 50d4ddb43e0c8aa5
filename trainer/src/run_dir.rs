//! What a run directory (`runs/NAME/`) holds, and how to read it back: the file names, the run
//! facts ([`RunInfo`]), the ending ([`Summary`], [`Outcome`]) and the resolved config. The loop
//! (`train.rs`) writes them; `export`, `lr-find`, `reproduce` and `--resume` read them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use sc_models::{ArchConfig, Normalization};

use crate::config::TrainConfig;

/// The fully resolved config, written before the first step.
pub const CONFIG: &str = "config.json";
/// The run facts ([`RunInfo`]), written before the first step.
pub const RUN_INFO: &str = "run.json";
/// One JSON object per line: training steps and validations.
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
    pub final_val_loss: Option<f64>,
    pub best_val_acc: Option<f64>,
    pub test_acc: Option<f64>,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub parameters: usize,
    pub message: Option<String>,
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

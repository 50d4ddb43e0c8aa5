//! `sc-trainer export`: a run's weights as a self-describing ONNX file (see docs/DESIGN.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde_json::json;

use sc_data::metadata::{format_val_accuracy, keys};
use sc_models::onnx::{resnet_to_onnx, to_bytes, ExportOptions};

use crate::config::TrainConfig;
use crate::io::write_atomic;
use crate::run_dir::{read_config, read_run_info, RunInfo};

/// Writes the ONNX model of trained weights to `out`, atomically.
pub fn write_onnx(
    cfg: &TrainConfig,
    info: &RunInfo,
    weights: &HashMap<String, Tensor>,
    val_acc: Option<f64>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut extra = vec![
        (
            keys::RECIPE.to_string(),
            json!({
                "schedule": cfg.schedule,
                "schedule_text": cfg.schedule.describe(),
                "iterations": cfg.iterations,
                "batch_size": cfg.batch_size,
                "seed": cfg.seed,
                "optimizer": cfg.optimizer,
                "precision": cfg.precision,
                "train_images": info.train_images,
                "data": info.data_source,
            })
            .to_string(),
        ),
        (
            keys::PRODUCER.to_string(),
            format!("sc-trainer {}", crate::VERSION),
        ),
    ];
    if let Some(a) = val_acc {
        extra.push((keys::VAL_ACCURACY.to_string(), format_val_accuracy(a)));
    }
    if let Some(p) = &info.preprocess {
        extra.push((keys::PREPROCESS.to_string(), serde_json::to_string(p)?));
    }
    let opts = ExportOptions {
        normalization: info.normalization.clone(),
        class_names: info.class_names.clone(),
        extra_metadata: extra,
    };
    let model = resnet_to_onnx(&info.arch, weights, &opts)
        .with_context(|| format!("cannot export {}", out.display()))?;
    write_atomic(out, &to_bytes(&model))
}

/// Exports a run directory's latest checkpoint; returns the file written.
pub fn export_run(run_dir: &Path, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let cfg = read_config(run_dir)?;
    let info = read_run_info(run_dir)?;
    let loaded = crate::checkpoint::load(run_dir, &Device::Cpu)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no weights (no {}): train it first with `sc-trainer fit`",
            run_dir.display(),
            crate::checkpoint::CHECKPOINT
        )
    })?;
    let out = out.unwrap_or_else(|| run_dir.join("model.onnx"));
    // A run that averages its weights ships the average (what it validated), once it exists.
    let weights = if loaded.average.is_empty() {
        &loaded.weights
    } else {
        &loaded.average
    };
    write_onnx(&cfg, &info, weights, loaded.state.last_val_acc, &out)?;
    Ok(out)
}

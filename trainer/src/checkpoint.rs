//! Checkpoints: weights, BatchNorm statistics, momentum buffers and the loop state in one
//! safetensors file, written atomically. The previous checkpoint is kept beside it and used when the
//! latest one cannot be read.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::io::{write_atomic_keeping, write_json};

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const PREVIOUS: &str = "checkpoint.prev.safetensors";
pub const STATE: &str = "state.json";
const OPTIM_PREFIX: &str = "optim.velocity.";
const AVERAGE_PREFIX: &str = "ema.";
const STATE_KEY: &str = "sc.state";

/// The loop's state at a checkpoint (the batch order and augmentation follow from the seed and
/// the iteration, so no RNG state is needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Iterations completed.
    pub iteration: usize,
    pub last_val_acc: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub best_val_acc: Option<f64>,
    /// Seconds spent training before this checkpoint (all sessions).
    pub elapsed_s: f64,
    /// Of those, the seconds spent evaluating on the validation split (absent in checkpoints
    /// from before it was kept: 0).
    #[serde(default)]
    pub eval_s: f64,
}

/// Saves a checkpoint in `dir`.
pub fn save(
    dir: &Path,
    vars: &HashMap<String, Var>,
    optimizer: Vec<(String, Tensor)>,
    state: &TrainState,
) -> anyhow::Result<()> {
    save_with_average(dir, vars, optimizer, Vec::new(), state)
}

/// [`save`], with the weight average ([`crate::ema`]) when the run keeps one.
pub fn save_with_average(
    dir: &Path,
    vars: &HashMap<String, Var>,
    optimizer: Vec<(String, Tensor)>,
    average: Vec<(String, Tensor)>,
    state: &TrainState,
) -> anyhow::Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect();
    tensors.extend(
        optimizer
            .into_iter()
            .map(|(k, t)| (format!("{OPTIM_PREFIX}{k}"), t)),
    );
    tensors.extend(
        average
            .into_iter()
            .map(|(k, t)| (format!("{AVERAGE_PREFIX}{k}"), t)),
    );
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .context("cannot serialize the checkpoint")?;
    // The new file is complete and synced before the current one becomes the previous one: a
    // failed write (disk full) leaves both checkpoints as they were.
    write_atomic_keeping(&dir.join(CHECKPOINT), &dir.join(PREVIOUS), &bytes)?;
    write_json(&dir.join(STATE), state)
}

/// A checkpoint read back.
pub struct Loaded {
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// The weight average ([`crate::ema`]); empty when the run keeps none (yet).
    pub average: HashMap<String, Tensor>,
    pub state: TrainState,
    /// The file it came from.
    pub file: String,
}

fn read_one(path: &Path, device: &Device) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a readable checkpoint: {e}", path.display()))?;
    let state: TrainState = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .with_context(|| format!("{}: invalid loop state", path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no loop state (not an sc-trainer checkpoint)",
                path.display()
            )
        })?;
    let all = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| anyhow::anyhow!("{}: cannot read tensors: {e}", path.display()))?;
    let mut weights = HashMap::new();
    let mut optimizer = HashMap::new();
    let mut average = HashMap::new();
    for (k, t) in all {
        if let Some(name) = k.strip_prefix(OPTIM_PREFIX) {
            optimizer.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix(AVERAGE_PREFIX) {
            average.insert(name.to_string(), t);
        } else {
            weights.insert(k, t);
        }
    }
    Ok(Loaded {
        weights,
        optimizer,
        average,
        state,
        file: path.display().to_string(),
    })
}

/// Reads the latest good checkpoint of `dir`, falling back to the previous one (with a warning on
/// stderr) when the latest is missing or damaged. `Ok(None)`: the directory holds no checkpoint.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Option<Loaded>> {
    let latest = dir.join(CHECKPOINT);
    let previous = dir.join(PREVIOUS);
    if !latest.exists() && !previous.exists() {
        return Ok(None);
    }
    let first_err = match read_one(&latest, device) {
        Ok(l) => return Ok(Some(l)),
        Err(e) => e,
    };
    if previous.exists() {
        match read_one(&previous, device) {
            Ok(l) => {
                eprintln!(
                    "warning: {first_err:#}; resuming from the previous checkpoint {} (iteration {})",
                    previous.display(),
                    l.state.iteration
                );
                return Ok(Some(l));
            }
            Err(e2) => bail!(
                "no usable checkpoint in {}: {first_err:#}; {e2:#}",
                dir.display()
            ),
        }
    }
    Err(first_err)
}

/// Sets every variable from a checkpoint's weights; names and shapes must match.
pub fn restore(
    vars: &HashMap<String, Var>,
    weights: &HashMap<String, Tensor>,
    file: &str,
) -> anyhow::Result<()> {
    for (name, var) in vars {
        let t = weights.get(name).ok_or_else(|| {
            anyhow::anyhow!("{file}: no tensor '{name}' (checkpoint of another model?)")
        })?;
        if t.dims() != var.dims() {
            bail!(
                "{file}: tensor '{name}' has shape {:?}, the model needs {:?}",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

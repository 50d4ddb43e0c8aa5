//! The training configuration: one serde struct (TOML or JSON on disk), nested like the parts it
//! configures, validated into a plan before any tensor is allocated. Command-line flags override it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use sc_models::{ArchConfig, Shortcut};

use crate::data::DataConfig;
use crate::optim::SgdConfig;
use crate::schedule::Schedule;

/// Which network to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `resnet20`, `resnet32`, `resnet44`, `resnet56`, `resnet110` (or any resnet{6n+2}).
    pub name: String,
    #[serde(default = "default_shortcut")]
    pub shortcut: Shortcut,
    /// BatchNorm momentum, PyTorch convention (= 1 - Caffe's moving_average_fraction;
    /// the paper's CLR runs: 0.05, its PC runs: 0.001).
    #[serde(default = "default_bn_momentum")]
    pub bn_momentum: f64,
}

fn default_shortcut() -> Shortcut {
    Shortcut::A
}
fn default_bn_momentum() -> f64 {
    0.1
}

/// Everything a run needs; written to `runs/NAME/config.json` (fully resolved) before the first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub schedule: Schedule,
    #[serde(default)]
    pub optimizer: SgdConfig,
    /// Training length in iterations (one iteration = one batch). Give this or `epochs`.
    #[serde(default)]
    pub iterations: Option<usize>,
    /// Training length in epochs of the training split (converted to iterations).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Images per iteration (paper: 1000).
    pub batch_size: usize,
    /// Seed of the weights, the batch order and the augmentation.
    #[serde(default)]
    pub seed: u64,
    /// Validate every this many iterations (0: once per epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every this many iterations (0: at every validation).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Images per forward pass when evaluating.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Evaluate on the data set's test split once at the end (never used for any choice).
    #[serde(default)]
    pub test_eval: bool,
    /// Arithmetic of convolutions and matmuls: `f32`, or `bf16` (mixed precision on a CUDA
    /// device: bf16 products on f32 master weights, f32 BatchNorm, loss and gradients). Left out
    /// of the serialized config when `f32`, so configs (and reproduce's run names) from before
    /// the option stay the same.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The arithmetic of convolutions and matmuls ([`sc_models::ops::set_autocast`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The autocast type of this precision (`None`: everything in f32).
    pub fn autocast(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?}: use f32 or bf16")),
        }
    }
}

fn default_eval_batch() -> usize {
    500
}
fn default_device() -> String {
    "cpu".into()
}

impl TrainConfig {
    /// Reads a TOML (or, by extension, JSON) config file; unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid config", path.display()))
        } else {
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
        }
    }

    /// The architecture for a data set of the given shape.
    pub fn arch(
        &self,
        channels: usize,
        h: usize,
        w: usize,
        classes: usize,
    ) -> anyhow::Result<ArchConfig> {
        let depth = ArchConfig::depth_from_name(&self.model.name).map_err(anyhow::Error::msg)?;
        let mut a =
            ArchConfig::resnet(depth, channels, h, w, classes).map_err(anyhow::Error::msg)?;
        a.shortcut = self.model.shortcut;
        a.bn_momentum = self.model.bn_momentum;
        a.validate().map_err(anyhow::Error::msg)?;
        Ok(a)
    }

    /// Checks everything that can be checked without the data; `iterations` must be resolved.
    pub fn validate(&self) -> anyhow::Result<()> {
        ArchConfig::depth_from_name(&self.model.name).map_err(anyhow::Error::msg)?;
        if !(0.0..=1.0).contains(&self.model.bn_momentum) {
            bail!(
                "model.bn_momentum must be in [0, 1], got {}",
                self.model.bn_momentum
            );
        }
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if self.eval_batch_size == 0 {
            bail!("eval_batch_size must be at least 1");
        }
        match (self.iterations, self.epochs) {
            (Some(_), Some(_)) => bail!("give iterations or epochs, not both"),
            (None, None) => bail!("give the training length: iterations or epochs"),
            (Some(0), _) => bail!("iterations must be at least 1"),
            (_, Some(e)) if !(e > 0.0 && e.is_finite()) => {
                bail!("epochs must be a positive number, got {e}")
            }
            _ => {}
        }
        if self.data.crop && self.data.pad == 0 {
            bail!("data.crop needs data.pad >= 1 (pixels of padding)");
        }
        self.optimizer.validate().map_err(anyhow::Error::msg)?;
        if let Some(total) = self.iterations {
            // Length-dependent defaults (clr step size, piecewise milestones) count as given.
            let mut schedule = self.schedule.clone();
            schedule.fill_length_defaults(total);
            schedule
                .validate(total)
                .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        }
        let device = crate::device::parse(&self.device)?;
        if self.precision == Precision::Bf16 && device == crate::device::DeviceSpec::Cpu {
            bail!(
                "precision bf16 needs a CUDA device (--device cuda): candle's CPU matmul has no \
                 bf16, and the CPU kernels are f32 (and as fast); train in f32 on the CPU"
            );
        }
        Ok(())
    }

    /// Converts `epochs` into `iterations` for a training split of `n_train` images.
    pub fn resolve_length(&mut self, n_train: usize) -> anyhow::Result<usize> {
        if self.batch_size > n_train {
            bail!(
                "batch_size {} is larger than the training split ({} images)",
                self.batch_size,
                n_train
            );
        }
        let per_epoch = n_train / self.batch_size;
        let total = match (self.iterations, self.epochs) {
            (Some(i), _) => i,
            (None, Some(e)) => ((e * per_epoch as f64).round() as usize).max(1),
            (None, None) => bail!("give the training length: iterations or epochs"),
        };
        self.iterations = Some(total);
        self.epochs = None;
        self.schedule.fill_length_defaults(total);
        self.schedule
            .validate(total)
            .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        Ok(total)
    }
}

/// Where runs go unless told otherwise.
pub fn default_runs_dir() -> PathBuf {
    PathBuf::from("runs")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAPER: &str = r#"
batch_size = 1000
iterations = 10000
[model]
name = "resnet56"
bn_momentum = 0.05
[data]
path = "data/cifar-10-batches-bin"
crop = false
[schedule]
kind = "one-cycle"
min_lr = 0.1
max_lr = 3.0
cycle_end = 1.0
[optimizer]
momentum = 0.9
weight_decay = 1e-4
"#;

    #[test]
    fn parses_and_validates() {
        let c: TrainConfig = toml::from_str(PAPER).unwrap();
        c.validate().unwrap();
        assert_eq!(c.data.val_size, 5000);
        assert_eq!(c.arch(3, 32, 32, 10).unwrap().depth, 56);
    }

    #[test]
    fn rejects_bad_configs() {
        let unknown = PAPER.replace("[optimizer]", "[optimizer]\nlearning_rate = 3");
        let e = toml::from_str::<TrainConfig>(&unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let mut c: TrainConfig = toml::from_str(PAPER).unwrap();
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        let mut c: TrainConfig = toml::from_str(PAPER).unwrap();
        c.schedule = Schedule::paper_one_cycle(3.0, 0.1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("below min_lr"));
        let mut c: TrainConfig = toml::from_str(PAPER).unwrap();
        assert!(c
            .resolve_length(500)
            .unwrap_err()
            .to_string()
            .contains("larger than the training split"));
        c.iterations = None;
        c.epochs = Some(2.0);
        assert_eq!(c.resolve_length(45_000).unwrap(), 90);
    }
}

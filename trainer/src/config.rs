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
    #[serde(default = "model_defaults::shortcut")]
    pub shortcut: Shortcut,
    /// BatchNorm momentum, PyTorch convention (= 1 - Caffe's moving_average_fraction;
    /// the paper's CLR runs: 0.05, its PC runs: 0.001).
    #[serde(default = "model_defaults::bn_momentum")]
    pub bn_momentum: f64,
    /// Start each residual branch's last BatchNorm scale (gamma) at 0, so that every block begins
    /// as its shortcut (Goyal et al. 2017; He et al. 2019, "Bag of Tricks"). Left out of the
    /// serialized config when off, so older configs and run names stay the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_init_residual: bool,
}

impl Default for ModelConfig {
    /// ResNet-20 with the paper's option-A shortcut and PyTorch's BatchNorm momentum 0.1.
    fn default() -> Self {
        ModelConfig {
            name: "resnet20".into(),
            shortcut: Shortcut::A,
            bn_momentum: 0.1,
            zero_init_residual: false,
        }
    }
}

field_defaults!(model_defaults for ModelConfig { shortcut: Shortcut, bn_momentum: f64 });

/// Everything a run needs; written to `runs/NAME/config.json` (fully resolved) before the first step.
///
/// A file must give `model`, `data`, `schedule`, `batch_size` and its length (`iterations` or
/// `epochs`); every other field it leaves out takes its value from [`TrainConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub schedule: Schedule,
    #[serde(default = "train_defaults::optimizer")]
    pub optimizer: SgdConfig,
    /// Training length in iterations (one iteration = one batch). Give this or `epochs`; a file
    /// that leaves both out is an error (the default 10 epochs is the command line's).
    #[serde(default)]
    pub iterations: Option<usize>,
    /// Training length in epochs of the training split (converted to iterations).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Images per iteration (paper: 1000).
    pub batch_size: usize,
    /// Seed of the weights, the batch order and the augmentation.
    #[serde(default = "train_defaults::seed")]
    pub seed: u64,
    /// Validate every this many iterations (0: once per epoch).
    #[serde(default = "train_defaults::eval_every")]
    pub eval_every: usize,
    /// Checkpoint every this many iterations (0: at every validation).
    #[serde(default = "train_defaults::checkpoint_every")]
    pub checkpoint_every: usize,
    /// Images per forward pass when evaluating.
    #[serde(default = "train_defaults::eval_batch_size")]
    pub eval_batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "train_defaults::device")]
    pub device: String,
    /// Evaluate on the data set's test split once at the end (never used for any choice).
    #[serde(default = "train_defaults::test_eval")]
    pub test_eval: bool,
    /// Arithmetic of convolutions and matmuls: `f32`, or `bf16` (mixed precision: bf16 products
    /// on f32 master weights, f32 BatchNorm, loss and gradients; on a CUDA device, or in the CPU
    /// convolution kernels where the CPU has AVX512_BF16). Left out
    /// of the serialized config when `f32`, so configs (and reproduce's run names) from before
    /// the option stay the same.
    #[serde(
        default = "train_defaults::precision",
        skip_serializing_if = "Precision::is_f32"
    )]
    pub precision: Precision,
    /// Label smoothing epsilon in [0, 1): the loss's target is `1 - eps` on the label and
    /// `eps / classes` spread over every class (PyTorch's `label_smoothing`). Validation loss stays
    /// the plain cross-entropy. Left out of the serialized config when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Weight averaging ([`crate::ema::EmaConfig`]): validation, the test split and the export
    /// use the average once it exists. Left out of the serialized config when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<crate::ema::EmaConfig>,
    /// Ghost batches: BatchNorm normalizes each of this many equal slices of a batch separately
    /// (running statistics: the slices' mean), as `mpirun -np N` does with one slice per rank.
    /// `N` in a single process is that run's exact reference. Left out of the serialized config
    /// when 1.
    #[serde(
        default = "train_defaults::ghost_batches",
        skip_serializing_if = "is_one"
    )]
    pub ghost_batches: usize,
    /// Data parallelism, recorded by `fit` for a run of more than one process (never read from
    /// a config file a new run starts from: it is a fact of the run). Absent in single-process
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<crate::parallel::ParallelRecord>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for TrainConfig {
    /// What a bare `sc-trainer fit --data DIR` trains: ResNet-20, the default one cycle, batch 128
    /// for 10 epochs on the CPU, validated once per epoch.
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig::default(),
            data: DataConfig::default(),
            schedule: Schedule::default(),
            optimizer: SgdConfig::default(),
            iterations: None,
            epochs: Some(10.0),
            batch_size: 128,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            eval_batch_size: 500,
            device: "cpu".into(),
            test_eval: false,
            precision: Precision::F32,
            label_smoothing: 0.0,
            ema: None,
            ghost_batches: 1,
            parallel: None,
        }
    }
}

field_defaults!(train_defaults for TrainConfig {
    optimizer: SgdConfig,
    seed: u64,
    eval_every: usize,
    checkpoint_every: usize,
    eval_batch_size: usize,
    device: String,
    test_eval: bool,
    precision: Precision,
    ghost_batches: usize,
});

/// The arithmetic of convolutions and matmuls: on CUDA, bf16 autocast of convolutions and
/// matmuls ([`sc_models::ops::set_autocast`]); on the CPU, bf16 products in the convolution
/// kernels where the CPU has AVX512_BF16 ([`sc_models::ops::set_cpu_precision`]).
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

    /// The name the config and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The autocast type of this precision on CUDA (`None`: everything in f32).
    pub fn autocast(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
        }
    }

    /// The CPU kernels' precision of this one.
    pub fn kernels(self) -> sc_models::ops::Precision {
        match self {
            Precision::F32 => sc_models::ops::Precision::F32,
            Precision::Bf16 => sc_models::ops::Precision::Bf16,
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
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if let Some(e) = &self.ema {
            e.validate()?;
        }
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if self.ghost_batches == 0 {
            bail!("ghost_batches must be at least 1");
        }
        if !self.batch_size.is_multiple_of(self.ghost_batches) {
            bail!(
                "batch_size {} does not divide into {} ghost batches: choose a multiple of {1}",
                self.batch_size,
                self.ghost_batches
            );
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
            self.schedule
                .for_run(total)
                .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        }
        crate::device::parse(&self.device)?;
        Ok(())
    }

    /// Converts `epochs` into `iterations` for a training split of `n_train` images, and resolves
    /// the schedule for that length ([`Schedule::for_run`]: length defaults filled in, validated).
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
        self.schedule = self
            .schedule
            .for_run(total)
            .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        self.iterations = Some(total);
        self.epochs = None;
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

    #[test]
    fn fields_a_file_leaves_out_take_the_one_default() {
        // Only what a file must give, set to the defaults' values: the rest must come out equal.
        let minimal = r#"
batch_size = 128
epochs = 10.0
[model]
name = "resnet20"
[data]
path = ""
[schedule]
kind = "one-cycle"
min_lr = 0.08
max_lr = 0.8
cycle_end = 1.0
"#;
        let c: TrainConfig = toml::from_str(minimal).unwrap();
        assert_eq!(c, TrainConfig::default());
        // The length is never defaulted from a file.
        let no_length = minimal.replace("epochs = 10.0", "");
        let c: TrainConfig = toml::from_str(&no_length).unwrap();
        assert_eq!((c.iterations, c.epochs), (None, None));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("training length"));
    }

    /// A run's `config.json` as the trainer wrote it before the schedules became one struct each
    /// (`runs/NAME/config.json`, pretty-printed): it must still load, and write back the same.
    const OLD_CONFIG_JSON: &str = r#"{
  "model": {
    "name": "resnet20",
    "shortcut": "a",
    "bn_momentum": 0.1
  },
  "data": {
    "path": "data/cifar-10-batches-bin",
    "train_size": null,
    "val_size": 5000,
    "split_seed": 0,
    "crop": true,
    "pad": 4,
    "flip": true
  },
  "schedule": {
    "kind": "one-cycle",
    "min_lr": 0.08,
    "max_lr": 0.8,
    "final_lr": 0.0008,
    "pct_start": 0.45,
    "cycle_end": 0.9,
    "anneal": "cos",
    "momentum": {
      "max": 0.95,
      "min": 0.85
    }
  },
  "optimizer": {
    "momentum": 0.9,
    "nesterov": false,
    "weight_decay": 0.0001,
    "decay_bn_and_bias": true,
    "style": "pytorch"
  },
  "iterations": 3520,
  "epochs": null,
  "batch_size": 128,
  "seed": 0,
  "eval_every": 0,
  "checkpoint_every": 0,
  "eval_batch_size": 500,
  "device": "cpu",
  "test_eval": false
}"#;

    #[test]
    fn old_format_configs_still_load() {
        use crate::schedule::{Anneal, Clr, Constant, CyclicMomentum, OneCycle, Piecewise, Range};
        let c: TrainConfig = serde_json::from_str(OLD_CONFIG_JSON).unwrap();
        assert_eq!(
            c.schedule,
            Schedule::OneCycle(OneCycle {
                min_lr: 0.08,
                max_lr: 0.8,
                final_lr: Some(0.0008),
                pct_start: 0.45,
                cycle_end: Some(0.9),
                anneal: Anneal::Cos,
                momentum: Some(CyclicMomentum {
                    max: 0.95,
                    min: 0.85
                }),
            })
        );
        assert_eq!(c.iterations, Some(3520));
        c.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::from_str::<serde_json::Value>(OLD_CONFIG_JSON).unwrap()
        );

        // Every other kind, in TOML as the presets and users write them, optional keys left out.
        let with = |schedule: &str| {
            PAPER.replace(
                "[schedule]\nkind = \"one-cycle\"\nmin_lr = 0.1\nmax_lr = 3.0\ncycle_end = 1.0\n",
                &format!("[schedule]\n{schedule}\n"),
            )
        };
        let cases = [
            (
                "kind = \"one-cycle\"\nmin_lr = 0.1\nmax_lr = 3.0",
                Schedule::OneCycle(OneCycle {
                    cycle_end: None,
                    ..OneCycle::paper(0.1, 3.0)
                }),
            ),
            (
                "kind = \"clr\"\nmin_lr = 0.1\nmax_lr = 3.0\nstep_size = 5000",
                Schedule::Clr(Clr {
                    min_lr: 0.1,
                    max_lr: 3.0,
                    step_size: 5000,
                    momentum: None,
                }),
            ),
            (
                "kind = \"piecewise\"\nlr = 0.35\nmilestones = [5000, 7000]",
                Schedule::Piecewise(Piecewise {
                    lr: 0.35,
                    milestones: vec![5000, 7000],
                    gamma: 0.1,
                    ..Piecewise::default()
                }),
            ),
            (
                "kind = \"constant\"\nlr = 0.2",
                Schedule::Constant(Constant { lr: 0.2 }),
            ),
            (
                "kind = \"range\"\nstart_lr = 0.001\nend_lr = 3.0",
                Schedule::Range(Range {
                    start_lr: 0.001,
                    end_lr: 3.0,
                    exponential: false,
                }),
            ),
        ];
        for (text, expected) in cases {
            let toml_text = with(text);
            assert!(toml_text.contains(text), "the PAPER config changed");
            let c: TrainConfig = toml::from_str(&toml_text).unwrap();
            assert_eq!(c.schedule, expected, "{text}");
            c.validate().unwrap();
        }
        let bogus = with("kind = \"constant\"\nlr = 0.2\nbogus = 1");
        let e = toml::from_str::<TrainConfig>(&bogus)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}

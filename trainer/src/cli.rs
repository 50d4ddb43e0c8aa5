//! Command-line flags, turned into a validated [`TrainConfig`] before any work starts.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use sc_models::Shortcut;

use crate::config::TrainConfig;
use crate::optim::MomentumStyle;
use crate::schedule::{
    Anneal, Clr, Constant, CyclicMomentum, OneCycle, Piecewise, Range, Schedule, DEFAULT_MAX_LR,
    DEFAULT_MIN_LR,
};

#[derive(Parser, Debug)]
#[command(
    name = "sc-trainer",
    version,
    about = "Train CIFAR ResNets with super-convergence (one-cycle) learning rates, test the paper's claims, export to ONNX"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model; writes runs/NAME/ (config, metrics, checkpoints, summary, model.onnx).
    Fit(FitArgs),
    /// The LR range test: one short run with the LR rising over a range; suggests one-cycle bounds.
    LrFind(LrFindArgs),
    /// Test one of the paper's claims: sc-vs-pc (1, 2), train-size (3), depth (4), step-size (5),
    /// lr-range, budget (accuracy against epochs per schedule: claims 1 and 2 at every budget),
    /// or all; or recipe (the short-budget recipe, piece by piece); writes report.md /
    /// report.json / plots.
    Reproduce(ReproduceArgs),
    /// Forward + backward of the same weights and batch on the CPU and on --device; prints the
    /// largest relative differences (for checking a GPU build).
    DeviceCheck {
        /// cuda, cuda:N (or cpu, which must agree exactly).
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Network.
        #[arg(long, default_value = "resnet20")]
        model: String,
        /// Images in the batch.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Largest accepted difference, relative to each tensor's largest magnitude.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
    },
    /// Data sets: `data fetch cifar10` downloads and verifies the official archive into the data
    /// home; `data dir` says where that is.
    #[command(subcommand)]
    Data(DataCommand),
    /// Export a run's weights to ONNX (input `image` [N,C,H,W] in [0,1], output `logits`).
    Export {
        /// The run directory (runs/NAME).
        run_dir: PathBuf,
        /// Output file [default: RUN_DIR/model.onnx].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download a data set's official files over HTTPS, check their published MD5s, and leave a
    /// directory `fit --data` and `sc-runtime eval` read (a .part download is resumed).
    Fetch {
        /// cifar10, cifar100, mnist or fashion-mnist.
        #[arg(value_enum)]
        set: crate::fetch::Known,
        /// Directory for the files [default: the data home's SET folder, e.g.
        /// ~/.local/share/super-convergence/cifar10; $SC_DATA_DIR moves the data home].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL of a mirror holding the same files (the file names are appended)
        /// [default: $SC_DATA_MIRROR, else the canonical address].
        #[arg(long)]
        url: Option<String>,
        /// Give up when the server sends nothing for this many seconds (the partial download is
        /// kept for the next run).
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        timeout: f64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Print the data home (where `fetch` puts data sets and short names like `cifar10` and
    /// `cifar-test` are looked up; $SC_DATA_DIR moves it) and which sets are there.
    Dir,
    /// Write the images a run held out for validation as a data file `sc-runtime eval` reads
    /// (CIFAR binary records for 3x32x32 data, else an IDX pair), so that the exported model's
    /// validation accuracy can be checked outside the trainer.
    Holdout {
        /// The run directory (its config.json says which images were held out).
        run_dir: PathBuf,
        /// The training data, where it is on this machine [default: the run's own path].
        #[arg(long)]
        data: Option<PathBuf>,
        /// The file to write: CIFAR records (e.g. val.bin), or for other shapes an IDX images
        /// file (e.g. val-images-idx3-ubyte) with its labels beside it.
        #[arg(long)]
        out: PathBuf,
    },
}

impl DataCommand {
    /// The validated download plan (`fetch` only).
    pub fn to_plan(&self) -> anyhow::Result<crate::fetch::FetchPlan> {
        let DataCommand::Fetch {
            set,
            dir,
            url,
            timeout,
            quiet,
        } = self
        else {
            bail!("not a download: {self:?}");
        };
        if !(timeout.is_finite() && *timeout > 0.0 && *timeout < 1e6) {
            bail!("--timeout {timeout}: give a number of seconds above 0");
        }
        let mut plan = crate::fetch::FetchPlan::known(
            *set,
            dir.clone(),
            url.clone(),
            std::time::Duration::from_secs_f64(*timeout),
        )?;
        plan.progress = !quiet;
        Ok(plan)
    }
}

#[derive(Args, Debug, Clone)]
pub struct LrFindArgs {
    /// A config to start from (model, data, optimizer); its schedule is replaced by the range.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Iterations of the test (the paper: 20000 at batch 1000; a few hundred suffice on a CPU).
    #[arg(long, default_value_t = 400)]
    pub iterations: usize,
    /// First LR of the range [default: 0.001 linear, 1e-5 exponential].
    #[arg(long)]
    pub start_lr: Option<f64>,
    /// Last LR of the range (the paper: 3.0) [default: 3.0 linear, 10 exponential].
    #[arg(long)]
    pub end_lr: Option<f64>,
    /// linear (the paper's test, read by validation accuracy) or exponential (fast.ai /
    /// pytorch-lr-finder, read by the smoothed loss, stops early on divergence).
    #[arg(long, value_enum, default_value_t = RangeMode::Linear)]
    pub mode: RangeMode,
    /// Validation images used for each accuracy point.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub val_subset: usize,
    /// Accuracy points: validate every N iterations [default: iterations / 25].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Stop when the smoothed loss exceeds this multiple of its minimum [default: 4 exponential, off linear].
    #[arg(long)]
    pub stop_factor: Option<f64>,
    #[arg(help = with_default("SGD momentum", TrainConfig::default().optimizer.momentum))]
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(help = with_default("Weight decay", TrainConfig::default().optimizer.weight_decay))]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(help = with_default("Random-crop padding in pixels", TrainConfig::default().data.pad))]
    #[arg(long)]
    pub pad: Option<usize>,
    /// Run name [default: lr-find-MODEL-MODE-sSEED].
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of runs [default: runs].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReproduceArgs {
    /// sc-vs-pc, train-size, depth, step-size, lr-range, budget, or all (the paper's claims); or
    /// recipe (the short-budget recipe piece by piece, not part of all).
    pub experiment: String,
    /// Training data: `cifar10` (the data home's, after `sc-trainer data fetch cifar10`),
    /// CIFAR-10's official cifar-10-binary.tar.gz, or the cifar-10-batches-bin it unpacks to. Runs
    /// are named by the data's content, not by where it lies.
    #[arg(long)]
    pub data: PathBuf,
    /// paper (the paper's settings, for a GPU), cpu (shrunk for a 2-core machine; budgets in the
    /// report), or tiny (a smoke test).
    #[arg(long, default_value = "cpu")]
    pub scale: String,
    /// Seeds per setting (more where differences are small).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Multiply every run's iterations, LR milestones and evaluation interval by this factor
    /// (e.g. 4.4 turns the cpu scale's 800-iteration one cycle into 10 epochs).
    #[arg(long, default_value_t = 1.0)]
    pub budget: f64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Directory of the runs, shared by all experiments [default: runs/reproduce].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Report directory [default: reports/EXPERIMENT-SCALE, with -xBUDGET when --budget is not 1].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// List the runs and whether they are done, without training.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// budget only: copy the best one-cycle model (at the headline's budget or less) and its
    /// PC-LR counterpart to DIR as ONNX, with a model card (README.md) and zoo.json; rewritten
    /// after every run. A zoo made from another runs directory is refused (see --force); no file
    /// is ever deleted.
    #[arg(long, value_name = "DIR")]
    pub zoo: Option<PathBuf>,
    /// With --zoo: write the zoo even though it was made from another runs directory (its models
    /// of the same names are replaced).
    #[arg(long, requires = "zoo")]
    pub force: bool,
    #[command(flatten)]
    pub cluster: crate::reproduce::shard::ClusterArgs,
}

impl ReproduceArgs {
    pub fn plans(&self) -> anyhow::Result<Vec<crate::reproduce::ReproducePlan>> {
        let names: Vec<String> = if self.experiment == "all" {
            // The paper's claims; the recipe experiment is ours, asked for by name. `claims` is
            // there at the scales it has (cpu and tiny: a fair budget for a CPU).
            let claims_here = crate::reproduce::claims::load()?
                .scale
                .contains_key(&self.scale);
            crate::reproduce::experiments()
                .into_iter()
                .filter(|e| *e != "recipe" && (*e != "claims" || claims_here))
                .map(String::from)
                .collect()
        } else {
            crate::reproduce::check_experiment(&self.experiment)?;
            if matches!(self.experiment.as_str(), "recipe" | "claims") && self.seeds != 1 {
                anyhow::bail!(
                    "--seeds {} does nothing for {}: its preset sets the seeds of each stage \
                     (trainer/presets/{}.toml)",
                    self.seeds,
                    self.experiment,
                    self.experiment
                );
            }
            vec![self.experiment.clone()]
        };
        crate::device::parse(&self.device)?;
        let data_key = crate::reproduce::DataKey::of(&self.data)?;
        Ok(names
            .into_iter()
            .map(|e| crate::reproduce::ReproducePlan {
                out: self
                    .out
                    .clone()
                    .map(|o| {
                        if self.experiment == "all" {
                            o.join(&e)
                        } else {
                            o
                        }
                    })
                    .unwrap_or_else(|| {
                        let stretched = if self.budget == 1.0 {
                            String::new()
                        } else {
                            format!("-x{}", self.budget)
                        };
                        PathBuf::from("reports").join(format!("{e}-{}{stretched}", self.scale))
                    }),
                experiment: e.clone(),
                scale: self.scale.clone(),
                data: self.data.clone(),
                data_key: data_key.clone(),
                seeds: self.seeds,
                budget: self.budget,
                device: self.device.clone(),
                runs_root: self
                    .runs
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("runs/reproduce")),
                progress: !self.quiet,
                dry_run: self.dry_run,
                // `all` gives the zoo to budget only; one other experiment refuses it.
                zoo: (e == "budget" || self.experiment != "all")
                    .then(|| self.zoo.clone())
                    .flatten(),
                zoo_force: self.force,
            })
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RangeMode {
    Linear,
    Exponential,
}

impl LrFindArgs {
    pub fn to_plan(&self) -> anyhow::Result<crate::lrfind::LrFindPlan> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        self.common.apply(&mut c);
        if c.data.path.as_os_str().is_empty() {
            bail!("no training data: give --data DIR");
        }
        let exp = self.mode == RangeMode::Exponential;
        let start = self.start_lr.unwrap_or(if exp { 1e-5 } else { 1e-3 });
        let end = self.end_lr.unwrap_or(if exp { 10.0 } else { 3.0 });
        c.iterations = Some(self.iterations);
        c.epochs = None;
        c.eval_every = self.eval_every.unwrap_or((self.iterations / 25).max(1));
        c.checkpoint_every = self.iterations;
        c.schedule = Schedule::Range(Range {
            start_lr: start,
            end_lr: end,
            exponential: exp,
        });
        if let Some(m) = self.momentum {
            c.optimizer.momentum = m;
        }
        if let Some(w) = self.weight_decay {
            c.optimizer.weight_decay = w;
        }
        if let Some(p) = self.pad {
            c.data.pad = p;
        }
        c.validate()?;
        let runs = self
            .runs
            .clone()
            .unwrap_or_else(crate::config::default_runs_dir);
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "lr-find-{}-{}-s{}",
                c.model.name,
                if exp { "exp" } else { "linear" },
                c.seed
            )
        });
        Ok(crate::lrfind::LrFindPlan {
            config: c,
            start_lr: start,
            end_lr: end,
            exponential: exp,
            val_subset: self.val_subset,
            stop_factor: self.stop_factor.or(if exp { Some(4.0) } else { None }),
            out_dir: runs.join(name),
            progress: !self.quiet,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    /// One cycle (the paper: linear min→max→min; see --final-lr, --cycle-end, --anneal).
    OneCycle,
    /// Triangular cyclical LR with --step-size.
    Clr,
    /// Piecewise constant: --lr, ×--gamma at each of --milestones.
    Piecewise,
    /// Constant --lr.
    Constant,
}

impl ScheduleKind {
    /// The kind of a config's schedule (`None` for a range, which only lr-find runs).
    fn of(schedule: &Schedule) -> Option<ScheduleKind> {
        match schedule {
            Schedule::OneCycle(_) => Some(ScheduleKind::OneCycle),
            Schedule::Clr(_) => Some(ScheduleKind::Clr),
            Schedule::Piecewise(_) => Some(ScheduleKind::Piecewise),
            Schedule::Constant(_) => Some(ScheduleKind::Constant),
            Schedule::Range(_) => None,
        }
    }

    /// A schedule of this kind with its defaults.
    fn default_schedule(self) -> Schedule {
        match self {
            ScheduleKind::OneCycle => Schedule::OneCycle(OneCycle::default()),
            ScheduleKind::Clr => Schedule::Clr(Clr::default()),
            ScheduleKind::Piecewise => Schedule::Piecewise(Piecewise::default()),
            ScheduleKind::Constant => Schedule::Constant(Constant::default()),
        }
    }
}

/// Flags shared by `fit`, `lr-find` and `reproduce`: model, data, batch, seed.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    #[arg(help = with_default("Network: resnet20, resnet32, resnet44, resnet56 (the paper), resnet110", TrainConfig::default().model.name))]
    #[arg(long)]
    pub model: Option<String>,
    /// Training data: a short name for a set `sc-trainer data fetch` put in the data home
    /// (cifar10, cifar100, mnist, fashion-mnist), an official archive as downloaded
    /// (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), the directory it unpacks to or one
    /// holding it, a directory of
    /// (Fashion-)MNIST IDX files, .gz or not (e.g. /usr/share/datasets/fashion-mnist), or a folder
    /// of images: DIR/<class>/* or DIR/train/<class>/* with DIR/val/<class>/* (JPEG, PNG, WebP,
    /// BMP; decoded once into DIR/.sc-cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image folders: the side every image is fitted to (shorter side resized, centre square cut
    /// out; training adds random crops and flips) [default: 32].
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<u32>,
    /// Image folders: go on without files that are not images or do not decode (they are listed).
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Train on a seeded, class-balanced subset of N images (the paper: 10000…40000) [default: all].
    #[arg(long, value_name = "N")]
    pub train_size: Option<usize>,
    #[arg(help = with_default("Images held out of the training set for validation", TrainConfig::default().data.val_size))]
    #[arg(long, value_name = "N")]
    pub val_size: Option<usize>,
    /// Which images are held out: random (seeded) or last (the last N in file order, e.g. the end
    /// of CIFAR-10's data_batch_5) [default: random].
    #[arg(long, value_name = "random|last")]
    pub val_split: Option<crate::data::ValSplit>,
    #[arg(help = with_default("Images per iteration (the paper: 1000)", TrainConfig::default().batch_size))]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    #[arg(help = with_default("Seed for weights, batch order and augmentation", TrainConfig::default().seed))]
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(help = with_default("Device: cpu, cuda or cuda:N", TrainConfig::default().device))]
    #[arg(long)]
    pub device: Option<String>,
    #[arg(help = with_default(
        "Convolution/matmul arithmetic: f32, or bf16 (mixed precision: bf16 products on f32 \
         master weights, f32 BatchNorm and loss; on CUDA, or on CPUs with AVX512_BF16, where it \
         pays only if that CPU's vdpbf16ps keeps up with its FMAs: `cargo bench -p sc-kernels \
         --bench bf16` says)",
        lower(TrainConfig::default().precision),
    ))]
    #[arg(long, value_name = "f32|bf16")]
    pub precision: Option<crate::config::Precision>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct FitArgs {
    /// A TOML or JSON config with every option (flags given here override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (other flags are ignored).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run name: the run goes to RUNS/NAME [default: MODEL-SCHEDULE-sSEED].
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of runs [default: runs].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,

    /// Learning-rate schedule [default: one-cycle].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    #[arg(help = with_default("one-cycle/clr: lowest LR, at the start (the paper: 0.1)", DEFAULT_MIN_LR))]
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(help = with_default("one-cycle/clr: the peak LR (the paper: 3.0 at batch 1000)", DEFAULT_MAX_LR))]
    #[arg(long)]
    pub max_lr: Option<f64>,
    /// one-cycle: LR at the last iteration (1cycle annihilation, e.g. min/1000) [default: --min-lr].
    #[arg(long)]
    pub final_lr: Option<f64>,
    #[arg(help = with_default(
        "one-cycle: fraction of the run where the LR peaks",
        OneCycle::default().pct_start,
    ))]
    #[arg(long)]
    pub pct_start: Option<f64>,
    #[arg(help = with_default(
        "one-cycle: fraction of the run where the LR is back at --min-lr before annihilation \
         (1.0: the paper's triangle; e.g. 0.9 for 1cycle)",
        OneCycle::default().cycle_end.unwrap_or(1.0),
    ))]
    #[arg(long)]
    pub cycle_end: Option<f64>,
    #[arg(help = with_default(
        "one-cycle: shape between knots",
        lower(OneCycle::default().anneal),
    ))]
    #[arg(long, value_enum)]
    pub anneal: Option<Anneal>,
    /// Cyclical momentum MAX,MIN (1cycle: 0.95,0.85) [default: off, constant --momentum].
    #[arg(long, value_name = "MAX,MIN")]
    pub cyclic_momentum: Option<String>,
    #[arg(help = with_default(
        "piecewise/constant: the LR (the paper's PC-LR: 0.35)",
        Piecewise::default().lr,
    ))]
    #[arg(long)]
    pub lr: Option<f64>,
    /// piecewise: iterations where the LR is multiplied by --gamma, comma-separated
    /// (the paper: 50000,70000) [default: 50% and 75% of the run].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    #[arg(help = with_default(
        "piecewise: LR factor at each milestone",
        Piecewise::default().gamma,
    ))]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// piecewise: iterations at --warmup-lr before --lr starts (He et al.'s ResNet-110: ~400)
    /// [default: none].
    #[arg(long, value_name = "N", requires = "warmup_lr")]
    pub warmup_iterations: Option<usize>,
    /// piecewise: the warm-up LR (He et al.: 0.01), or where a linear warm-up starts.
    #[arg(long, requires = "warmup_iterations")]
    pub warmup_lr: Option<f64>,
    /// piecewise: `constant` holds --warmup-lr; `linear` climbs from it to --lr (Goyal et al.'s
    /// large-batch warm-up) [default: constant].
    #[arg(long, value_enum, requires = "warmup_iterations")]
    pub warmup_shape: Option<crate::schedule::WarmupShape>,
    /// clr: iterations per half cycle [default: a quarter of the run].
    #[arg(long)]
    pub step_size: Option<usize>,

    /// Training length in iterations (the paper: 10000 one-cycle, 80000 PC-LR).
    #[arg(long, conflicts_with = "epochs")]
    pub iterations: Option<usize>,
    #[arg(help = with_default("Training length in epochs of the training split, when no --iterations", TrainConfig::default().epochs.unwrap_or_default()))]
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(help = with_default("SGD momentum (the paper: 0.9)", TrainConfig::default().optimizer.momentum))]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    #[arg(help = with_default("L2 weight decay (the paper: 1e-4)", TrainConfig::default().optimizer.weight_decay))]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Do not decay BatchNorm parameters and biases.
    #[arg(long)]
    pub no_decay_bn: bool,
    /// Label smoothing epsilon in [0, 1): the target is 1 - EPS on the label and EPS / classes on
    /// every class [default: 0, none].
    #[arg(long, value_name = "EPS")]
    pub label_smoothing: Option<f64>,
    /// Start each residual branch's last BatchNorm scale at 0 (every block begins as its
    /// shortcut; "Bag of Tricks").
    #[arg(long)]
    pub zero_init_residual: bool,
    /// Average the weights (and BatchNorm statistics): an exponential moving average with this
    /// decay in (0, 1), e.g. 0.99; validation, --test and the export use the average [default:
    /// no averaging].
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// With --ema: iterations between updates of the average.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "ema")]
    pub ema_every: usize,
    /// With --ema: where averaging starts, as a fraction of the run in [0, 1).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, requires = "ema")]
    pub ema_start: f64,
    #[arg(help = with_default(
        "Momentum formulation: pytorch (v = m·v + g; w -= lr·v) or caffe (v = m·v + lr·g; w -= v)",
        lower(TrainConfig::default().optimizer.style),
    ))]
    #[arg(long, value_enum)]
    pub momentum_style: Option<MomentumStyle>,
    #[arg(help = with_default("BatchNorm momentum, PyTorch convention (the paper's CLR runs: 0.05)", TrainConfig::default().model.bn_momentum))]
    #[arg(long)]
    pub bn_momentum: Option<f64>,
    #[arg(help = with_default("Down-sampling shortcut: a (zero-padding, the paper's) or b (1x1 projection)", lower(TrainConfig::default().model.shortcut)))]
    #[arg(long, value_parser = parse_shortcut)]
    pub shortcut: Option<Shortcut>,
    /// No random crop.
    #[arg(long)]
    pub no_crop: bool,
    #[arg(help = with_default("Random-crop padding in pixels", TrainConfig::default().data.pad))]
    #[arg(long)]
    pub pad: Option<usize>,
    /// No random horizontal flip.
    #[arg(long)]
    pub no_flip: bool,
    /// Validate every N iterations [default: once per epoch].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Checkpoint every N iterations [default: at every validation].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Evaluate on the data set's test split once, at the end (never used to choose anything).
    #[arg(long)]
    pub test: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Checkpoint and stop once N iterations are done (resume later with --resume).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// BatchNorm over N equal slices of each batch separately (ghost batches): in one process,
    /// the exact reference for `mpirun -np N` [default: 1].
    #[arg(long, value_name = "N")]
    pub ghost_batches: Option<usize>,
}

/// A flag's help with its default, read from the one `Default` of the config (so the help and the
/// behaviour cannot drift apart).
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

/// An enum's name as its flag spells it (`Shortcut::A` → `a`, `Precision::F32` → `f32`).
fn lower(value: impl std::fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

fn parse_shortcut(s: &str) -> Result<Shortcut, String> {
    match s.to_ascii_lowercase().as_str() {
        "a" => Ok(Shortcut::A),
        "b" => Ok(Shortcut::B),
        _ => Err(format!("shortcut must be a or b, got '{s}'")),
    }
}

fn parse_cyclic(s: &str) -> anyhow::Result<CyclicMomentum> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != 2 {
        bail!("--cyclic-momentum takes MAX,MIN (e.g. 0.95,0.85), got '{s}'");
    }
    let max = parts[0].trim().parse()?;
    let min = parts[1].trim().parse()?;
    Ok(CyclicMomentum { max, min })
}

impl CommonArgs {
    /// Applies these flags over a config.
    pub fn apply(&self, c: &mut TrainConfig) {
        if let Some(m) = &self.model {
            c.model.name = m.clone();
        }
        if let Some(d) = &self.data {
            c.data.path = d.clone();
        }
        if self.train_size.is_some() {
            c.data.train_size = self.train_size;
        }
        if let Some(v) = self.val_size {
            c.data.val_size = v;
        }
        if let Some(v) = self.val_split {
            c.data.val_split = v;
        }
        if self.image_size.is_some() {
            c.data.image_size = self.image_size;
        }
        if self.skip_bad_images {
            c.data.skip_bad_images = true;
        }
        if let Some(b) = self.batch_size {
            c.batch_size = b;
        }
        if let Some(s) = self.seed {
            c.seed = s;
        }
        if let Some(d) = &self.device {
            c.device = d.clone();
        }
        if let Some(p) = self.precision {
            c.precision = p;
        }
    }
}

impl FitArgs {
    /// The resolved config: file (or defaults), then flags. Lengths in epochs stay unresolved
    /// until the data is read.
    pub fn to_config(&self) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        self.common.apply(&mut c);
        if c.data.path.as_os_str().is_empty() {
            bail!("no training data: give --data PATH (cifar-10-binary.tar.gz, a CIFAR-10 binary directory or a Fashion-MNIST IDX directory)");
        }
        if let Some(i) = self.iterations {
            c.iterations = Some(i);
            c.epochs = None;
        }
        if let Some(e) = self.epochs {
            c.epochs = Some(e);
            c.iterations = None;
        }
        self.apply_schedule(&mut c)?;
        let o = &mut c.optimizer;
        if let Some(m) = self.momentum {
            o.momentum = m;
        }
        if self.nesterov {
            o.nesterov = true;
        }
        if let Some(w) = self.weight_decay {
            o.weight_decay = w;
        }
        if self.no_decay_bn {
            o.decay_bn_and_bias = false;
        }
        if let Some(s) = self.momentum_style {
            o.style = s;
        }
        if let Some(e) = self.label_smoothing {
            c.label_smoothing = e;
        }
        if self.zero_init_residual {
            c.model.zero_init_residual = true;
        }
        if let Some(decay) = self.ema {
            c.ema = Some(crate::ema::EmaConfig {
                decay,
                every: self.ema_every,
                start: self.ema_start,
            });
        }
        if let Some(b) = self.bn_momentum {
            c.model.bn_momentum = b;
        }
        if let Some(s) = self.shortcut {
            c.model.shortcut = s;
        }
        if self.no_crop {
            c.data.crop = false;
        }
        if let Some(p) = self.pad {
            c.data.pad = p;
        }
        if self.no_flip {
            c.data.flip = false;
        }
        if let Some(e) = self.eval_every {
            c.eval_every = e;
        }
        if let Some(e) = self.checkpoint_every {
            c.checkpoint_every = e;
        }
        if self.test {
            c.test_eval = true;
        }
        if let Some(g) = self.ghost_batches {
            c.ghost_batches = g;
        }
        if let Some(p) = &self.config {
            c.validate().with_context(|| {
                format!("{}: invalid config (after command-line flags)", p.display())
            })?;
        }
        Ok(c)
    }

    /// Lays the schedule flags over the config's schedule.
    fn apply_schedule(&self, c: &mut TrainConfig) -> anyhow::Result<()> {
        let momentum = self
            .cyclic_momentum
            .as_deref()
            .map(parse_cyclic)
            .transpose()?;
        // The config's schedule when it is of the chosen kind (or none is chosen), else the
        // chosen kind's defaults.
        let base = match self.schedule {
            Some(k) if Some(k) != ScheduleKind::of(&c.schedule) => k.default_schedule(),
            _ => c.schedule.clone(),
        };
        c.schedule = match base {
            Schedule::OneCycle(mut s) => {
                set(&mut s.min_lr, self.min_lr);
                set(&mut s.max_lr, self.max_lr);
                s.final_lr = self.final_lr.or(s.final_lr);
                set(&mut s.pct_start, self.pct_start);
                s.cycle_end = self.cycle_end.or(s.cycle_end);
                set(&mut s.anneal, self.anneal);
                s.momentum = momentum.or(s.momentum);
                Schedule::OneCycle(s)
            }
            Schedule::Clr(mut s) => {
                set(&mut s.min_lr, self.min_lr);
                set(&mut s.max_lr, self.max_lr);
                set(&mut s.step_size, self.step_size);
                s.momentum = momentum.or(s.momentum);
                Schedule::Clr(s)
            }
            Schedule::Piecewise(mut s) => {
                set(&mut s.lr, self.lr);
                set(&mut s.milestones, self.milestones.clone());
                set(&mut s.gamma, self.gamma);
                set(&mut s.warmup_iterations, self.warmup_iterations);
                s.warmup_lr = self.warmup_lr.or(s.warmup_lr);
                set(&mut s.warmup_shape, self.warmup_shape);
                Schedule::Piecewise(s)
            }
            Schedule::Constant(mut s) => {
                set(&mut s.lr, self.lr);
                Schedule::Constant(s)
            }
            Schedule::Range(_) => bail!("a range schedule is for lr-find, not fit"),
        };
        Ok(())
    }
}

/// A flag, when given, over a config value.
fn set<T>(value: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *value = v;
    }
}

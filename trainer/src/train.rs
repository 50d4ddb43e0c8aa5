//! The one training loop, for `fit`, `lr-find` and every experiment of `reproduce`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use sc_models::{ArchConfig, Normalization, ResNet};

use crate::checkpoint::{self, TrainState};
use crate::collective::Collective;
use crate::config::{Precision, TrainConfig};
use crate::data::{normalize_all, BatchMaker, Loader};
use crate::io::{write_atomic, write_json};
use crate::optim::Sgd;
use crate::parallel::{AllRanks, DataParallel, ParallelRecord};
use crate::run_dir::{self, append_metrics, read_run_info, MetricsRow, Outcome, RunInfo, Summary};

/// Loop options that differ between commands.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// Draw a progress bar on a terminal (lines at each validation otherwise).
    pub progress: bool,
    /// Divergence ends the run normally (the LR range test) instead of as an error.
    pub divergence_is_end: bool,
    /// Validate on at most this many validation images.
    pub val_limit: Option<usize>,
    /// Write `model.onnx` at the end.
    pub export: bool,
    /// The command line, for `run.json`.
    pub command: Vec<String>,
    /// Stop (after checkpointing) once this many iterations are done, as if interrupted:
    /// for bounded sessions and for testing resumption.
    pub stop_after: Option<usize>,
    /// End the run (as diverged) when the smoothed training loss exceeds this multiple of its
    /// minimum — the LR range test's early stop (fast.ai uses 4).
    pub divergence_factor: Option<f64>,
    /// The processes training this run together ([`crate::collective`]): the single process, or
    /// one MPI rank of `mpirun -np N`.
    pub collective: Arc<dyn Collective>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            resume: false,
            progress: true,
            divergence_is_end: false,
            val_limit: None,
            export: true,
            command: std::env::args().collect(),
            stop_after: None,
            divergence_factor: None,
            collective: crate::collective::single(),
        }
    }
}

/// Set by Ctrl-C / SIGTERM; the loop checkpoints and stops.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // Fails only if a handler is already installed (e.g. tests calling fit twice): then keep it.
        let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
        flag
    })
    .clone()
}

/// The model and its variables.
pub struct Net {
    pub model: ResNet,
    pub varmap: VarMap,
    pub device: Device,
}

impl Net {
    pub fn new(arch: &ArchConfig, seed: u64, device: &Device) -> anyhow::Result<Net> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = ResNet::new(vb, arch)?;
        sc_models::init::initialize(&varmap, model.params(), seed)?;
        Ok(Net {
            model,
            varmap,
            device: device.clone(),
        })
    }

    /// Sets the scale (gamma) of every residual branch's last BatchNorm to 0
    /// (`zero_init_residual`): each block then starts as its shortcut.
    pub fn zero_residual_gammas(&self) -> anyhow::Result<()> {
        let mut n = 0;
        for (name, var) in self.vars() {
            if name.contains(".bn2.") && name.ends_with(".weight") {
                var.set(&var.as_tensor().zeros_like()?)?;
                n += 1;
            }
        }
        if n == 0 {
            bail!("zero_init_residual: the model has no residual branch's last BatchNorm (bn2)");
        }
        Ok(())
    }

    pub fn vars(&self) -> HashMap<String, Var> {
        self.varmap.data().lock().expect("varmap").clone()
    }

    /// Every variable as a plain tensor, by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    /// Mean cross-entropy and accuracy over pre-normalized images.
    pub fn evaluate(
        &self,
        images: &[f32],
        labels: &[u32],
        shape: (usize, usize, usize),
        batch: usize,
    ) -> anyhow::Result<(f64, f64)> {
        let n = labels.len();
        if n == 0 {
            return Ok((f64::NAN, f64::NAN));
        }
        let (loss_sum, correct) = self.evaluate_sums(images, labels, shape, batch)?;
        Ok((loss_sum / n as f64, correct as f64 / n as f64))
    }

    /// Summed cross-entropy and the number of correct predictions over pre-normalized images.
    pub fn evaluate_sums(
        &self,
        images: &[f32],
        labels: &[u32],
        shape: (usize, usize, usize),
        batch: usize,
    ) -> anyhow::Result<(f64, usize)> {
        let (c, h, w) = shape;
        let per = c * h * w;
        let n = labels.len();
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for start in (0..n).step_by(batch) {
            let b = batch.min(n - start);
            let x = Tensor::from_slice(
                &images[start * per..(start + b) * per],
                (b, c, h, w),
                &self.device,
            )?;
            let y = Tensor::from_slice(&labels[start..start + b], b, &self.device)?;
            let logits = self.model.forward_t(&x, false)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?;
            loss_sum += loss as f64 * b as f64;
            correct += count_correct(&logits, &y)?;
        }
        Ok((loss_sum, correct))
    }

    /// The logits of pre-normalized images (`[n, c, h, w]`, flat) plus those of their
    /// horizontal mirrors.
    pub fn flip_logits(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
    ) -> anyhow::Result<Tensor> {
        let b = x.len() / (c * h * w);
        let mirror: Vec<f32> = x
            .chunks_exact(w)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        let xt = Tensor::from_slice(x, (b, c, h, w), &self.device)?;
        let xm = Tensor::from_slice(&mirror, (b, c, h, w), &self.device)?;
        Ok((self.model.forward_t(&xt, false)? + self.model.forward_t(&xm, false)?)?)
    }

    /// Accuracy with horizontal-flip test-time augmentation over pre-normalized images: each
    /// image's logits and its mirror's, summed, then the top class (what `sc-runtime --tta flip`
    /// does at deployment).
    pub fn flip_accuracy(
        &self,
        images: &[f32],
        labels: &[u32],
        shape: (usize, usize, usize),
        batch: usize,
    ) -> anyhow::Result<f64> {
        let per = shape.0 * shape.1 * shape.2;
        let n = labels.len();
        if n == 0 || batch == 0 {
            return Ok(f64::NAN);
        }
        let mut correct = 0usize;
        for start in (0..n).step_by(batch) {
            let b = batch.min(n - start);
            let logits = self.flip_logits(&images[start * per..(start + b) * per], shape)?;
            let y = Tensor::from_slice(&labels[start..start + b], b, &self.device)?;
            correct += count_correct(&logits, &y)?;
        }
        Ok(correct as f64 / n as f64)
    }
}

/// Runs `f` with the weight average in the variables when there is one, then puts the weights
/// back.
fn with_average<T>(
    average: Option<&crate::ema::Averager>,
    vars: &HashMap<String, Var>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match average.filter(|a| a.active()) {
        None => f(),
        Some(a) => {
            let kept = a.swap_in(vars)?;
            let out = f();
            crate::ema::Averager::put(vars, &kept)?;
            out
        }
    }
}

/// The training loss: mean cross-entropy against targets of `1 - eps` on the label and `eps / K`
/// on every one of the K classes (label smoothing; `eps = 0` is the plain cross-entropy).
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    // The uniform part: the mean over the batch of -(1/K) sum_k log p_k.
    let uniform = log_p.mean_all()?.neg()?;
    (nll * (1.0 - eps))? + (uniform * eps)?
}

fn count_correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
    let pred = logits.argmax(1)?;
    pred.eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()
        .map(|v| v as usize)
}

/// This thread's precision for a scope: the autocast type (CUDA) and the CPU kernels'
/// precision, reset when dropped (also on errors).
struct Autocast(Option<candle_core::DType>, sc_models::ops::Precision);

impl Autocast {
    /// `precision` on `device`: bf16 on the CPU needs AVX512_BF16 (an error saying so).
    fn set(precision: Precision, device: &candle_core::Device) -> anyhow::Result<Autocast> {
        let before = Autocast(sc_models::ops::autocast(), sc_models::ops::cpu_precision());
        if device.is_cpu() {
            sc_models::ops::set_cpu_precision(precision.kernels())
                .map_err(|e| anyhow::anyhow!("precision {}: {e}", precision.name()))?;
        } else {
            sc_models::ops::set_autocast(precision.autocast());
        }
        Ok(before)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        sc_models::ops::set_autocast(self.0);
        // The earlier precision was accepted when it was set.
        let _ = sc_models::ops::set_cpu_precision(self.1);
    }
}

/// What `run.json`'s machines say for the part of a resumed run that did not record its machine.
const EARLIER_MACHINE: &str = "earlier segments: not recorded";

/// Trains per `cfg` in `run_dir` (created if needed). Returns the summary; divergence is an error
/// unless `opts.divergence_is_end`.
pub fn fit(mut cfg: TrainConfig, run_dir: &Path, opts: &FitOptions) -> anyhow::Result<Summary> {
    cfg.validate()?;
    // Data parallelism: every rank runs this function; rank 0 alone writes files.
    let coll = opts.collective.clone();
    let (world, writer) = (coll.size(), coll.rank() == 0);
    crate::parallel::check_split(cfg.batch_size, world, cfg.ghost_batches)?;
    if opts.resume {
        crate::parallel::check_resume_world(run_dir, &cfg, world)?;
    }
    cfg.parallel = (world > 1).then(|| ParallelRecord {
        world_size: world,
        batch_per_rank: cfg.batch_size / world,
        batchnorm: crate::parallel::batchnorm_note(cfg.batch_size / world / cfg.ghost_batches),
    });
    if writer {
        crate::io::ensure_writable_dir(run_dir)?;
        crate::io::remove_stale_temps(run_dir);
    }
    let device = crate::device::open(&cfg.device)?;
    // Convolutions and matmuls of this thread (training and validation) in cfg.precision.
    let _autocast = Autocast::set(cfg.precision, &device)?;
    refuse_to_overwrite(run_dir, opts.resume)?;

    // The data, the model it needs, and the run facts, on disk before the first step.
    let splits = cfg.data.load()?;
    // The length is resolved and the schedule checked for it here; the rest was checked above.
    let total = cfg.resolve_length(splits.train.len())?;
    let train = splits.train.clone();
    let arch = cfg.arch(
        train.channels,
        train.height,
        train.width,
        train.num_classes(),
    )?;
    let mut val = splits.val;
    if let Some(k) = opts.val_limit {
        val.truncate(k);
    }
    let mut machines = match opts.resume {
        // A run started before machines were recorded trained partly somewhere unknown.
        true => match read_run_info(run_dir) {
            Ok(i) if !i.machines.is_empty() => i.machines,
            _ => vec![EARLIER_MACHINE.to_string()],
        },
        false => Vec::new(),
    };
    let here = crate::device::machine(&cfg.device);
    if !machines.contains(&here) {
        machines.push(here);
    }
    let info = RunInfo {
        machines,
        command: opts.command.clone(),
        version: crate::VERSION.to_string(),
        parameters: arch.parameter_count(),
        arch: arch.clone(),
        normalization: splits.normalization.clone(),
        class_names: train.class_names.clone(),
        data_source: train.source.clone(),
        train_images: train.len(),
        val_images: val.len(),
        iterations: total,
        preprocess: cfg.data.is_image_folder().then_some(sc_data::Preprocess {
            resize: sc_data::Resize::ShorterSideCenterCrop,
        }),
    };
    if writer {
        write_json(&run_dir.join(run_dir::CONFIG), &cfg)?;
        write_json(&run_dir.join(run_dir::RUN_INFO), &info)?;
    }

    // The model and optimizer, from the checkpoint when resuming; the metrics cut back to it.
    let net = Net::new(&arch, cfg.seed, &device)?;
    if cfg.model.zero_init_residual {
        net.zero_residual_gammas()?;
    }
    let vars = net.vars();
    let mut sgd = Sgd::new(cfg.optimizer.clone(), &vars, net.model.params())?;
    let mut state = TrainState::default();
    let mut average = crate::ema::Averager::new(cfg.ema.as_ref(), total);
    if opts.resume {
        state = resume_from_checkpoint(run_dir, &device, &vars, &mut sgd, average.as_mut())?;
    }
    let mut metrics = MetricsFile::open(run_dir, opts.resume.then_some(state.iteration), writer)?;
    let mut par = DataParallel::new(
        coll.clone(),
        cfg.ghost_batches,
        cfg.batch_size,
        &vars,
        net.model.params(),
        sgd.vars(),
    )?;

    // The batches, and when to validate and checkpoint.
    let maker = BatchMaker {
        train: train.clone(),
        norm: splits.normalization.clone(),
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        crop: cfg.data.crop,
        pad: cfg.data.pad,
        flip: cfg.data.flip,
        // A rank makes only its slice of each batch.
        part: (par.rank(), par.size()),
    };
    let per_epoch = maker.batches_per_epoch();
    let cadence = Cadence::new(&cfg, per_epoch, total);
    let shape = (train.channels, train.height, train.width);
    let val_x = normalize_all(&val, &splits.normalization);
    let val_y: Vec<u32> = val.labels.iter().map(|&l| l as u32).collect();

    if world > 1 {
        // Every rank says who it is (the pid is what a stuck or dead rank is found by).
        eprintln!(
            "{}: pid {} on {}",
            coll.describe(),
            std::process::id(),
            crate::device::machine(&cfg.device)
        );
    }
    if device.is_cpu() && writer {
        eprintln!("CPU kernels: {}", sc_kernels::micro::describe());
    }
    if let Some(p) = cfg.parallel.as_ref().filter(|_| writer) {
        eprintln!(
            "data-parallel: {} ranks x {} images (global batch {}); BatchNorm {}; gradients \
             averaged with one allreduce per step; weights compared across ranks every {} \
             iterations and at every checkpoint",
            p.world_size,
            p.batch_per_rank,
            cfg.batch_size,
            p.batchnorm,
            crate::parallel::CHECK_EVERY
        );
    }
    if cfg.ghost_batches > 1 && writer {
        eprintln!(
            "ghost batches: BatchNorm normalizes {} slices of {} images separately per step \
             (running statistics: their mean)",
            cfg.ghost_batches,
            cfg.batch_size / world / cfg.ghost_batches
        );
    }
    if writer {
        eprintln!(
        "{}: {} parameters ({:.2}M), {} train / {} val images {}x{}x{}, {} iterations of {} ({:.1} epochs), {}{}",
        arch.name(),
        arch.parameter_count(),
        arch.parameter_count() as f64 / 1e6,
        train.len(),
        val.len(),
        shape.0,
        shape.1,
        shape.2,
        total,
        cfg.batch_size,
        total as f64 / per_epoch as f64,
        cfg.schedule.describe(),
        match (cfg.precision.is_f32(), device.is_cpu()) {
            (true, _) => "",
            (false, true) => ", bf16 convolution products (AVX512_BF16)",
            (false, false) => ", bf16 mixed precision",
        }
    );
    }

    let interrupted = interrupt_flag();
    let log = Log::new(opts.progress && writer, total, state.iteration);
    let mut loader = Loader::spawn(maker, state.iteration, total);
    let clock = Clock::start(state.elapsed_s);
    let start_iter = state.iteration;
    let mut throughput = Throughput::default();
    let mut guard = DivergenceGuard::new(opts, start_iter);
    let mut outcome = Outcome::Finished;
    let mut message = None;
    let mut signalled = false;
    // The ranks start from the same weights (the seed, or the checkpoint they all read).
    par.check_in_sync(state.iteration, &vars, &sgd.state())?;

    while state.iteration < total {
        // One step: forward, the divergence guard, backward, the update.
        let it = state.iteration;
        let batch = loader
            .next()
            .context("the batch loader stopped unexpectedly")?;
        debug_assert_eq!(batch.iteration, it);
        let t0 = Instant::now();
        let point = cfg.schedule.at(it, total);
        // This rank's slice of the batch (all of it in a single process), BatchNorm per slice.
        let (images, labels) = (batch.images, batch.labels);
        let b_local = labels.len();
        let y = Tensor::from_vec(labels, b_local, &device)?;
        let logits = par.forward_train(&net, images, shape, &device)?;
        let loss_t = smoothed_cross_entropy(&logits, &y, cfg.label_smoothing)?;
        let local_loss = loss_t.to_scalar::<f32>()? as f64;
        let local_correct = count_correct(&logits, &y)?;
        let mut grads = loss_t.backward()?;
        // One allreduce (nothing in a single process): gradients and running statistics
        // averaged, loss and accuracy totalled, and whether any rank was asked to stop.
        let totals = par.reduce_step(
            &mut grads,
            local_loss,
            local_correct,
            b_local,
            interrupted.load(Ordering::SeqCst),
        )?;
        let (loss, b) = (totals.loss, totals.images);
        if let Some(m) = guard.check_loss(it, point.lr, loss) {
            metrics.append(&MetricsRow::divergence(it + 1, point.lr, loss))?;
            (outcome, message) = (Outcome::Diverged, Some(m));
            break;
        }
        let correct = totals.correct;
        sgd.step(&grads, point.lr, point.momentum)?;
        if let Some(a) = average.as_mut() {
            a.step(it + 1, &vars)?;
        }
        let inst = throughput.record(b, t0.elapsed(), it == start_iter);
        state.iteration = it + 1;
        let done = state.iteration;
        metrics.append(&MetricsRow::step(
            done,
            point.lr,
            sgd.momentum(point.momentum),
            loss,
            correct as f64 / b as f64,
            inst,
        ))?;

        // Validation, when due.
        if cadence.validates(done) && !val_y.is_empty() {
            let te = Instant::now();
            let (vl, va) = with_average(average.as_ref(), &vars, || {
                par.evaluate(&net, &val_x, &val_y, shape, cfg.eval_batch_size)
            })?;
            state.eval_s += te.elapsed().as_secs_f64();
            record_validation(&mut state, vl, va);
            let train_s = clock.elapsed_s() - state.eval_s;
            metrics.append(&MetricsRow::timed_validation(
                done,
                point.lr,
                (vl, va),
                train_s,
            ))?;
            if let Some(m) = guard.check_val_loss(done, point.lr, vl) {
                (outcome, message) = (Outcome::Diverged, Some(m));
                break;
            }
            log.validation(done, total, point.lr, loss, vl, va, throughput.ips);
        }
        log.step(done, point.lr, loss, throughput.ips, state.last_val_acc);

        // A checkpoint, when due or when stopping.
        signalled = totals.stop;
        let stop = signalled || opts.stop_after.is_some_and(|s| done >= s && done < total);
        if cadence.checkpoints(done) || stop {
            par.check_in_sync(done, &vars, &sgd.state())?;
            state.elapsed_s = clock.elapsed_s();
            metrics.flush()?;
            if writer {
                let avg = average.as_ref().map(|a| a.tensors()).unwrap_or_default();
                checkpoint::save_with_average(run_dir, &vars, sgd.state(), avg, &state)?;
            }
        } else if done.is_multiple_of(crate::parallel::CHECK_EVERY) {
            par.check_in_sync(done, &vars, &sgd.state())?;
        }
        if stop {
            outcome = Outcome::Interrupted;
            message = Some(format!(
                "{} after iteration {done}; a checkpoint was written: resume with `{}sc-trainer fit --resume {}`",
                if signalled { "interrupted" } else { "stopped" },
                if world > 1 { format!("mpirun -np {world} ") } else { String::new() },
                run_dir.display()
            ));
            break;
        }
    }
    drop(loader);
    log.finish();
    if let Some(r) = par.comm_report(clock.session_start.elapsed().as_secs_f64()) {
        if writer {
            eprintln!("{r}");
        }
    }
    if world > 1 {
        // Each rank's own fingerprint of its state (the loop compared them at each checkpoint).
        eprintln!(
            "{}: checksum {:016x} of the weights, running statistics and momentum after iteration {}",
            coll.describe(),
            crate::parallel::checksum(&vars, &sgd.state())?,
            state.iteration
        );
    }
    metrics.flush()?;
    state.elapsed_s = clock.elapsed_s();

    // The ending: the test split, the summary, the export; with the weight average, if any.
    if let Some(a) = average.as_ref().filter(|a| a.active()) {
        a.swap_in(&vars)?;
    }
    let mut test_acc = None;
    if outcome == Outcome::Finished && cfg.test_eval {
        let acc = test_accuracy(&cfg, &splits.normalization, &net, &par, shape)?;
        test_acc = Some(acc);
        metrics.append(&MetricsRow::test(state.iteration, acc))?;
        metrics.flush()?;
    }
    // The flip-TTA accuracy of the final weights (the recipe experiment's TTA row), on the
    // process that writes the summary.
    let mut final_val_acc_flip = None;
    if outcome == Outcome::Finished && writer && !val_y.is_empty() {
        final_val_acc_flip = Some(net.flip_accuracy(&val_x, &val_y, shape, cfg.eval_batch_size)?);
    }
    let summary = Summary {
        outcome,
        iterations: state.iteration,
        final_val_acc: state.last_val_acc,
        final_val_acc_flip,
        final_val_loss: state.last_val_loss,
        best_val_acc: state.best_val_acc,
        test_acc,
        train_seconds: state.elapsed_s,
        images_per_second: throughput.ips,
        parameters: arch.parameter_count(),
        message: message.clone(),
    };
    if writer {
        write_json(&run_dir.join(run_dir::SUMMARY), &summary)?;
    }
    if outcome == Outcome::Finished && opts.export && writer {
        let out = run_dir.join("model.onnx");
        crate::export::write_onnx(&cfg, &info, &net.tensors(), state.last_val_acc, &out)?;
    }
    // Both endings are decided from reduced values, so every rank ends with the same error.
    if outcome == Outcome::Diverged && !opts.divergence_is_end {
        return Err(AllRanks(message.unwrap_or_default()).into());
    }
    if outcome == Outcome::Interrupted && signalled {
        return Err(AllRanks(message.unwrap_or_default()).into());
    }
    if let Some(m) = &message {
        eprintln!("{m}");
    }
    Ok(summary)
}

/// A run directory with a checkpoint is only continued, never overwritten.
fn refuse_to_overwrite(run_dir: &Path, resume: bool) -> anyhow::Result<()> {
    let has_ckpt = run_dir.join(checkpoint::CHECKPOINT).exists()
        || run_dir.join(checkpoint::PREVIOUS).exists();
    if has_ckpt && !resume {
        bail!(
            "{} already holds a run: resume it with --resume {0}, or choose another --name",
            run_dir.display()
        );
    }
    Ok(())
}

/// Loads the weights and the optimizer state of the run directory's checkpoint and returns the
/// loop state it holds (iteration 0 when there is none yet).
fn resume_from_checkpoint(
    run_dir: &Path,
    device: &Device,
    vars: &HashMap<String, Var>,
    sgd: &mut Sgd,
    average: Option<&mut crate::ema::Averager>,
) -> anyhow::Result<TrainState> {
    match checkpoint::load(run_dir, device)? {
        Some(l) => {
            checkpoint::restore(vars, &l.weights, &l.file)?;
            sgd.load_state(&l.optimizer)?;
            if let Some(a) = average {
                a.restore(&l.average);
            }
            Ok(l.state)
        }
        None => {
            eprintln!(
                "note: {} holds no checkpoint yet; starting from iteration 0",
                run_dir.display()
            );
            Ok(TrainState::default())
        }
    }
}

/// The run directory's [`run_dir::METRICS`], open for appending rows.
/// Only rank 0 of a data-parallel run has one (`None` elsewhere: appends are dropped).
struct MetricsFile(Option<std::io::BufWriter<std::fs::File>>);

impl MetricsFile {
    /// Empties the file for a fresh run, or keeps the rows up to `resume_from` (the checkpoint's
    /// iteration) for a resumed one. A resumed run without the file (a run directory restored
    /// with its checkpoint only) starts a new one at the checkpoint.
    fn open(
        run_dir: &Path,
        resume_from: Option<usize>,
        writer: bool,
    ) -> anyhow::Result<MetricsFile> {
        if !writer {
            return Ok(MetricsFile(None));
        }
        let path = run_dir.join(run_dir::METRICS);
        match resume_from {
            Some(iteration) => run_dir::truncate_metrics(run_dir, iteration)?,
            None => write_atomic(&path, b"")?,
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsFile(Some(std::io::BufWriter::new(file))))
    }

    fn append(&mut self, row: &MetricsRow) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(f) => append_metrics(f, row),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(f) => Ok(f.flush()?),
            None => Ok(()),
        }
    }
}

/// When the loop validates and checkpoints: every `eval_every` iterations (0: once per epoch) and
/// every `checkpoint_every` (0: at each validation), and always after the last iteration.
struct Cadence {
    eval_every: usize,
    ckpt_every: usize,
    total: usize,
}

impl Cadence {
    fn new(cfg: &TrainConfig, per_epoch: usize, total: usize) -> Cadence {
        let eval_every = if cfg.eval_every == 0 {
            per_epoch
        } else {
            cfg.eval_every
        };
        let ckpt_every = if cfg.checkpoint_every == 0 {
            eval_every
        } else {
            cfg.checkpoint_every
        };
        Cadence {
            eval_every,
            ckpt_every,
            total,
        }
    }

    /// Whether to validate after `done` iterations.
    fn validates(&self, done: usize) -> bool {
        done == self.total || (self.eval_every > 0 && done.is_multiple_of(self.eval_every))
    }

    /// Whether to checkpoint after `done` iterations.
    fn checkpoints(&self, done: usize) -> bool {
        done == self.total || done.is_multiple_of(self.ckpt_every)
    }
}

/// Ends the run when the loss is NaN/Inf, when the validation loss is (unless divergence is a
/// normal end), and, with a divergence factor (the LR range test), when the smoothed training loss
/// exceeds that multiple of its minimum. Each check returns the message the run ends with.
struct DivergenceGuard {
    factor: Option<f64>,
    divergence_is_end: bool,
    start_iter: usize,
    /// Exponential moving average of the loss (not bias-corrected) and the minimum of the
    /// corrected one.
    ema: f64,
    ema_min: f64,
}

impl DivergenceGuard {
    fn new(opts: &FitOptions, start_iter: usize) -> DivergenceGuard {
        DivergenceGuard {
            factor: opts.divergence_factor,
            divergence_is_end: opts.divergence_is_end,
            start_iter,
            ema: 0.0,
            ema_min: f64::INFINITY,
        }
    }

    /// The training loss of iteration `it` (0-based) at learning rate `lr`.
    fn check_loss(&mut self, it: usize, lr: f64, loss: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!(
                "training diverged at iteration {} (learning rate {lr:.4}): the loss is {loss}. \
                 Lower the maximum learning rate (run `sc-trainer lr-find` to see where it falls apart){}",
                it + 1,
                if it > 0 { "; the last good checkpoint is kept" } else { "" }
            ));
        }
        let factor = self.factor?;
        // Bias-corrected exponential moving average of the loss (beta 0.98, as fast.ai).
        self.ema = 0.98 * self.ema + 0.02 * loss;
        let smoothed = self.ema / (1.0 - 0.98f64.powi((it - self.start_iter + 1) as i32));
        self.ema_min = self.ema_min.min(smoothed);
        if it > self.start_iter + 10 && smoothed > factor * self.ema_min {
            return Some(format!(
                "the smoothed loss {smoothed:.3} exceeded {factor} x its minimum {:.3} at iteration {} (learning rate {lr:.4})",
                self.ema_min,
                it + 1,
            ));
        }
        None
    }

    /// The validation loss after `done` iterations at learning rate `lr`.
    fn check_val_loss(&self, done: usize, lr: f64, val_loss: f64) -> Option<String> {
        (!val_loss.is_finite() && !self.divergence_is_end).then(|| {
            format!(
                "training diverged at iteration {done} (learning rate {lr:.4}): the validation loss is {val_loss}. \
                 Lower the maximum learning rate (see `sc-trainer lr-find`)"
            )
        })
    }
}

/// Training throughput: the last step's images per second, and a moving average of it.
#[derive(Default)]
struct Throughput {
    ips: f64,
}

impl Throughput {
    /// Records a step of `images` that took `dt` (`first`: the session's first step, which starts
    /// the average) and returns the step's own rate.
    fn record(&mut self, images: usize, dt: std::time::Duration, first: bool) -> f64 {
        let inst = images as f64 / dt.as_secs_f64().max(1e-9);
        self.ips = if first {
            inst
        } else {
            0.9 * self.ips + 0.1 * inst
        };
        inst
    }
}

/// Training time over all sessions of a run.
struct Clock {
    session_start: Instant,
    before: f64,
}

impl Clock {
    /// `before`: seconds spent in earlier sessions (from the checkpoint).
    fn start(before: f64) -> Clock {
        Clock {
            session_start: Instant::now(),
            before,
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.before + self.session_start.elapsed().as_secs_f64()
    }
}

fn record_validation(state: &mut TrainState, val_loss: f64, val_acc: f64) {
    state.last_val_loss = Some(val_loss);
    state.last_val_acc = Some(val_acc);
    if state.best_val_acc.is_none_or(|b| val_acc > b) {
        state.best_val_acc = Some(val_acc);
    }
}

/// Accuracy on the data set's test split.
fn test_accuracy(
    cfg: &TrainConfig,
    norm: &Normalization,
    net: &Net,
    par: &DataParallel,
    shape: (usize, usize, usize),
) -> anyhow::Result<f64> {
    let test = cfg
        .data
        .load_test()
        .context("test_eval: cannot read the test split")?;
    let tx = normalize_all(&test, norm);
    let ty: Vec<u32> = test.labels.iter().map(|&l| l as u32).collect();
    let (_, acc) = par.evaluate(net, &tx, &ty, shape, cfg.eval_batch_size)?;
    Ok(acc)
}

/// What the loop tells the user: a progress bar on a terminal, or a line at each validation.
struct Log {
    progress: bool,
    bar: indicatif::ProgressBar,
}

impl Log {
    fn new(progress: bool, total: usize, pos: usize) -> Log {
        Log {
            progress,
            bar: progress_bar(progress, total, pos),
        }
    }

    /// A line after a validation: above the bar, or on stderr without one (unless quiet).
    #[allow(clippy::too_many_arguments)]
    fn validation(
        &self,
        done: usize,
        total: usize,
        lr: f64,
        loss: f64,
        val_loss: f64,
        val_acc: f64,
        ips: f64,
    ) {
        let line = format!(
            "iter {done}/{total}  lr {lr:.4}  loss {loss:.4}  val_loss {val_loss:.4}  val_acc {:.2}%  {ips:.0} img/s",
            val_acc * 100.0
        );
        if self.bar.is_hidden() {
            if self.progress {
                eprintln!("{line}");
            }
        } else {
            self.bar.println(line);
        }
    }

    /// The bar after each step.
    fn step(&self, done: usize, lr: f64, loss: f64, ips: f64, last_val_acc: Option<f64>) {
        self.bar.set_position(done as u64);
        self.bar.set_message(format!(
            "lr {lr:.4} loss {loss:.3} val {} {ips:.0} img/s",
            last_val_acc
                .map(|a| format!("{:.1}%", a * 100.0))
                .unwrap_or_else(|| "-".into())
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn progress_bar(enabled: bool, total: usize, pos: usize) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_position(pos as u64);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn images(n: usize, (c, h, w): (usize, usize, usize), seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * c * h * w)
            .map(|_| rng.gen_range(-2.0..2.0))
            .collect()
    }

    fn mirrored(x: &[f32], w: usize) -> Vec<f32> {
        x.chunks_exact(w)
            .flat_map(|r| r.iter().rev().copied())
            .collect()
    }

    /// Flip TTA sums an image's logits and its horizontal mirror's: the same accuracy on the
    /// mirrored images, and on images that are their own mirror, the plain accuracy.
    #[test]
    fn flip_accuracy_is_mirror_symmetric_and_plain_on_symmetric_images() {
        let shape = (3, 8, 8);
        let arch = ArchConfig::resnet(8, 3, 8, 8, 10).unwrap();
        let net = Net::new(&arch, 3, &Device::Cpu).unwrap();
        let n = 40;
        let x = images(n, shape, 1);
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        let logits = |x: &[f32]| {
            let t = Tensor::from_slice(x, (n, 3, 8, 8), &Device::Cpu).unwrap();
            net.model.forward_t(&t, false).unwrap()
        };
        // Labels the plain model gets right for half the images, so accuracies differ from 0.
        let pred: Vec<u32> = logits(&x).argmax(1).unwrap().to_vec1().unwrap();
        let labels: Vec<u32> = labels
            .iter()
            .zip(&pred)
            .enumerate()
            .map(|(i, (&l, &p))| if i % 2 == 0 { p } else { l })
            .collect();
        // The mirror is the horizontal one: the sum equals the model's logits on the image plus
        // those on an independently mirrored copy (a random net is not mirror-invariant).
        let sum = (logits(&x) + logits(&mirrored(&x, 8))).unwrap();
        let got = net.flip_logits(&x, shape).unwrap();
        let diff: f32 = (sum - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "flip logits differ by {diff}");
        let a = net.flip_accuracy(&x, &labels, shape, 16).unwrap();
        let b = net
            .flip_accuracy(&mirrored(&x, 8), &labels, shape, 7)
            .unwrap();
        assert_eq!(a, b);
        // Symmetric images: each row is its own mirror.
        let sym: Vec<f32> = x
            .chunks_exact(8)
            .flat_map(|r| {
                let half = &r[..4];
                half.iter()
                    .chain(half.iter().rev())
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let (_, plain) = net.evaluate(&sym, &labels, shape, 16).unwrap();
        let flip = net.flip_accuracy(&sym, &labels, shape, 16).unwrap();
        assert_eq!(flip, plain);
        assert!(plain > 0.0, "the labels should not all be wrong");
    }
}

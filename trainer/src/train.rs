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

use sc_models::{ArchConfig, ResNet};

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data::{normalize_all, BatchMaker, Loader};
use crate::io::{write_atomic, write_json};
use crate::optim::Sgd;
use crate::run_dir::{self, append_metrics, MetricsRow, Outcome, RunInfo, Summary};

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
        let (c, h, w) = shape;
        let per = c * h * w;
        let n = labels.len();
        if n == 0 {
            return Ok((f64::NAN, f64::NAN));
        }
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
        Ok((loss_sum / n as f64, correct as f64 / n as f64))
    }
}

fn count_correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
    let pred = logits.argmax(1)?;
    pred.eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()
        .map(|v| v as usize)
}

fn is_eval_point(done: usize, total: usize, every: usize) -> bool {
    done == total || (every > 0 && done % every == 0)
}

/// This thread's autocast type for a scope (reset when dropped, also on errors).
struct Autocast(Option<candle_core::DType>);

impl Autocast {
    fn set(dtype: Option<candle_core::DType>) -> Autocast {
        let before = sc_models::ops::autocast();
        sc_models::ops::set_autocast(dtype);
        Autocast(before)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        sc_models::ops::set_autocast(self.0);
    }
}

/// Trains per `cfg` in `run_dir` (created if needed). Returns the summary; divergence is an error
/// unless `opts.divergence_is_end`.
pub fn fit(mut cfg: TrainConfig, run_dir: &Path, opts: &FitOptions) -> anyhow::Result<Summary> {
    cfg.validate()?;
    crate::io::ensure_writable_dir(run_dir)?;
    crate::io::remove_stale_temps(run_dir);
    let device = crate::device::open(&cfg.device)?;
    // Convolutions and matmuls of this thread (training and validation) in cfg.precision.
    let _autocast = Autocast::set(cfg.precision.autocast());
    let has_ckpt = run_dir.join(checkpoint::CHECKPOINT).exists()
        || run_dir.join(checkpoint::PREVIOUS).exists();
    if has_ckpt && !opts.resume {
        bail!(
            "{} already holds a run: resume it with --resume {0}, or choose another --name",
            run_dir.display()
        );
    }
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
    let info = RunInfo {
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
    // The resolved config and the run facts go to disk before the first step.
    write_json(&run_dir.join(run_dir::CONFIG), &cfg)?;
    write_json(&run_dir.join(run_dir::RUN_INFO), &info)?;

    let net = Net::new(&arch, cfg.seed, &device)?;
    let vars = net.vars();
    let mut sgd = Sgd::new(cfg.optimizer.clone(), &vars, net.model.params())?;
    let mut state = TrainState::default();
    if opts.resume {
        match checkpoint::load(run_dir, &device)? {
            Some(l) => {
                checkpoint::restore(&vars, &l.weights, &l.file)?;
                sgd.load_state(&l.optimizer)?;
                state = l.state;
            }
            None => eprintln!(
                "note: {} holds no checkpoint yet; starting from iteration 0",
                run_dir.display()
            ),
        }
    }
    let metrics_path = run_dir.join(run_dir::METRICS);
    if opts.resume {
        run_dir::truncate_metrics(run_dir, state.iteration)?;
    } else {
        write_atomic(&metrics_path, b"")?;
    }
    let mut metrics = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot open {}", metrics_path.display()))?,
    );

    let maker = BatchMaker {
        train: train.clone(),
        norm: splits.normalization.clone(),
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        crop: cfg.data.crop,
        pad: cfg.data.pad,
        flip: cfg.data.flip,
    };
    let per_epoch = maker.batches_per_epoch();
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
    let shape = (train.channels, train.height, train.width);
    let val_x = normalize_all(&val, &splits.normalization);
    let val_y: Vec<u32> = val.labels.iter().map(|&l| l as u32).collect();

    if device.is_cpu() {
        eprintln!("CPU kernels: {}", sc_kernels::micro::describe());
    }
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
        if cfg.precision.is_f32() {
            ""
        } else {
            ", bf16 mixed precision"
        }
    );

    let interrupted = interrupt_flag();
    let bar = progress_bar(opts.progress, total, state.iteration);
    let mut loader = Loader::spawn(maker, state.iteration, total);
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut ips = 0f64;
    let mut outcome = Outcome::Finished;
    let mut message = None;
    let start_iter = state.iteration;
    let (mut ema, mut ema_min) = (0f64, f64::INFINITY);

    while state.iteration < total {
        let it = state.iteration;
        let batch = loader
            .next()
            .context("the batch loader stopped unexpectedly")?;
        debug_assert_eq!(batch.iteration, it);
        let t0 = Instant::now();
        let point = cfg.schedule.at(it, total);
        let b = batch.labels.len();
        let x = Tensor::from_vec(batch.images, (b, shape.0, shape.1, shape.2), &device)?;
        let y = Tensor::from_vec(batch.labels, b, &device)?;
        let logits = net.model.forward_t(&x, true)?;
        let loss_t = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss = loss_t.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            outcome = Outcome::Diverged;
            let m = format!(
                "training diverged at iteration {} (learning rate {:.4}): the loss is {loss}. \
                 Lower the maximum learning rate (run `sc-trainer lr-find` to see where it falls apart){}",
                it + 1,
                point.lr,
                if state.iteration > 0 { "; the last good checkpoint is kept" } else { "" }
            );
            append_metrics(
                &mut metrics,
                &MetricsRow::divergence(it + 1, point.lr, loss),
            )?;
            message = Some(m);
            break;
        }
        if let Some(factor) = opts.divergence_factor {
            // Bias-corrected exponential moving average of the loss (beta 0.98, as fast.ai).
            ema = 0.98 * ema + 0.02 * loss;
            let smoothed = ema / (1.0 - 0.98f64.powi((it - start_iter + 1) as i32));
            ema_min = ema_min.min(smoothed);
            if it > start_iter + 10 && smoothed > factor * ema_min {
                outcome = Outcome::Diverged;
                message = Some(format!(
                    "the smoothed loss {smoothed:.3} exceeded {factor} x its minimum {ema_min:.3} at iteration {} (learning rate {:.4})",
                    it + 1,
                    point.lr
                ));
                append_metrics(
                    &mut metrics,
                    &MetricsRow::divergence(it + 1, point.lr, loss),
                )?;
                break;
            }
        }
        let correct = count_correct(&logits, &y)?;
        let grads = loss_t.backward()?;
        sgd.step(&grads, point.lr, point.momentum)?;
        let dt = t0.elapsed().as_secs_f64();
        let inst = b as f64 / dt.max(1e-9);
        ips = if it == start_iter {
            inst
        } else {
            0.9 * ips + 0.1 * inst
        };
        state.iteration = it + 1;
        let done = state.iteration;
        append_metrics(
            &mut metrics,
            &MetricsRow::step(
                done,
                point.lr,
                sgd.momentum(point.momentum),
                loss,
                correct as f64 / b as f64,
                inst,
            ),
        )?;
        if is_eval_point(done, total, eval_every) && !val_y.is_empty() {
            let (vl, va) = net.evaluate(&val_x, &val_y, shape, cfg.eval_batch_size)?;
            state.last_val_loss = Some(vl);
            state.last_val_acc = Some(va);
            if state.best_val_acc.is_none_or(|b| va > b) {
                state.best_val_acc = Some(va);
            }
            append_metrics(
                &mut metrics,
                &MetricsRow::validation(done, point.lr, vl, va),
            )?;
            if !vl.is_finite() && !opts.divergence_is_end {
                outcome = Outcome::Diverged;
                message = Some(format!(
                    "training diverged at iteration {done} (learning rate {:.4}): the validation loss is {vl}. \
                     Lower the maximum learning rate (see `sc-trainer lr-find`)",
                    point.lr
                ));
                break;
            }
            let line = format!(
                "iter {done}/{total}  lr {:.4}  loss {loss:.4}  val_loss {vl:.4}  val_acc {:.2}%  {ips:.0} img/s",
                point.lr,
                va * 100.0
            );
            if bar.is_hidden() {
                if opts.progress {
                    eprintln!("{line}");
                }
            } else {
                bar.println(line);
            }
        }
        bar.set_position(done as u64);
        bar.set_message(format!(
            "lr {:.4} loss {loss:.3} val {} {ips:.0} img/s",
            point.lr,
            state
                .last_val_acc
                .map(|a| format!("{:.1}%", a * 100.0))
                .unwrap_or_else(|| "-".into())
        ));
        let signalled = interrupted.load(Ordering::SeqCst);
        let stop = signalled || opts.stop_after.is_some_and(|s| done >= s && done < total);
        if done == total || done % ckpt_every == 0 || stop {
            state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
            metrics.flush()?;
            checkpoint::save(run_dir, &vars, sgd.state(), &state)?;
        }
        if stop {
            outcome = Outcome::Interrupted;
            message = Some(format!(
                "{} after iteration {done}; a checkpoint was written: resume with `sc-trainer fit --resume {}`",
                if signalled { "interrupted" } else { "stopped" },
                run_dir.display()
            ));
            break;
        }
    }
    drop(loader);
    bar.finish_and_clear();
    metrics.flush()?;
    state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();

    let mut test_acc = None;
    if outcome == Outcome::Finished && cfg.test_eval {
        let test = cfg
            .data
            .load_test()
            .context("test_eval: cannot read the test split")?;
        let tx = normalize_all(&test, &splits.normalization);
        let ty: Vec<u32> = test.labels.iter().map(|&l| l as u32).collect();
        let (_, acc) = net.evaluate(&tx, &ty, shape, cfg.eval_batch_size)?;
        test_acc = Some(acc);
        append_metrics(&mut metrics, &MetricsRow::test(state.iteration, acc))?;
        metrics.flush()?;
    }
    let summary = Summary {
        outcome,
        iterations: state.iteration,
        final_val_acc: state.last_val_acc,
        final_val_loss: state.last_val_loss,
        best_val_acc: state.best_val_acc,
        test_acc,
        train_seconds: state.elapsed_s,
        images_per_second: ips,
        parameters: arch.parameter_count(),
        message: message.clone(),
    };
    write_json(&run_dir.join(run_dir::SUMMARY), &summary)?;
    if outcome == Outcome::Finished && opts.export {
        let out = run_dir.join("model.onnx");
        crate::export::write_onnx(&cfg, &info, &net.tensors(), state.last_val_acc, &out)?;
    }
    if outcome == Outcome::Diverged && !opts.divergence_is_end {
        bail!(message.unwrap_or_default());
    }
    if outcome == Outcome::Interrupted && interrupted.load(Ordering::SeqCst) {
        bail!(message.unwrap_or_default());
    }
    if let Some(m) = &message {
        eprintln!("{m}");
    }
    Ok(summary)
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

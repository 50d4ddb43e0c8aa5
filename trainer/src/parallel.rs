//! Data parallelism for the training loop, over a [`Collective`]: each rank's slice of a batch,
//! BatchNorm per slice (ranks, or ghost batches in one process), one allreduce per step, the
//! weight checksum that catches ranks drifting apart, and validation split across ranks.
//!
//! A step's one allreduce carries, in one flat f32 buffer: every trained parameter's gradient (in
//! the optimizer's order), every BatchNorm running statistic, and the rank's loss sum, correct
//! count, image count and stop flag. Gradients and running statistics are averaged; since the
//! running statistics' update is linear in the batch statistics, averaging them every step is
//! the same as averaging them before each validation, checkpoint and export, and keeps every rank
//! bit-identical (so a checkpoint resumes exactly).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{backprop::GradStore, DType, Device, ModuleT, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::train::Net;

/// What `config.json` records about a data-parallel run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelRecord {
    /// Processes (MPI ranks) that trained the run.
    pub world_size: usize,
    /// Images per rank per step (`batch_size / world_size`).
    pub batch_per_rank: usize,
    /// How BatchNorm behaved.
    pub batchnorm: String,
}

/// An error every rank of the job raises alike (decided from reduced or shared values): the job
/// can end normally, rank 0 reporting it, instead of aborting. Any other error on one rank aborts
/// the job, since the others may be waiting for it in a collective.
#[derive(Debug, Clone)]
pub struct AllRanks(pub String);

impl std::fmt::Display for AllRanks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AllRanks {}

/// Whether `e` is an [`AllRanks`] error (anywhere in its chain).
pub fn is_all_ranks(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<AllRanks>())
}

macro_rules! bail_all {
    ($($arg:tt)*) => {
        return Err(AllRanks(format!($($arg)*)).into())
    };
}

/// The sentence the log and `config.json` give for BatchNorm in a data-parallel run.
pub fn batchnorm_note(per_slice: usize) -> String {
    format!(
        "per rank ({per_slice} images); running statistics averaged across ranks in every step's \
         allreduce, so at every validation, checkpoint and export"
    )
}

/// Refuses a global batch that does not split into `world` ranks of `ghost` equal slices.
pub fn check_split(batch_size: usize, world: usize, ghost: usize) -> anyhow::Result<()> {
    if !batch_size.is_multiple_of(world) {
        bail_all!(
            "batch_size {batch_size} does not divide among {world} ranks: use a multiple of \
             {world} (--batch-size is the global batch; each rank takes batch_size / {world} \
             images)"
        );
    }
    if ghost == 0 || !(batch_size / world).is_multiple_of(ghost) {
        bail_all!(
            "batch_size {batch_size} over {world} rank(s) gives {} images per rank, which do not \
             divide into {ghost} ghost batches",
            batch_size / world
        );
    }
    Ok(())
}

/// Refuses to resume a run under another number of processes than it was trained with (its
/// BatchNorm batches, and so its trajectory, would change). `cfg` is the run's saved config.
pub fn check_resume_world(
    run_dir: &std::path::Path,
    cfg: &crate::config::TrainConfig,
    world: usize,
) -> anyhow::Result<()> {
    let saved = cfg.parallel.as_ref().map_or(1, |p| p.world_size);
    if saved == world {
        return Ok(());
    }
    let how = if saved == 1 {
        "a single process".to_string()
    } else {
        format!(
            "{saved} MPI ranks ({} images each of the global batch {})",
            cfg.batch_size / saved,
            cfg.batch_size
        )
    };
    let cmd = if saved == 1 {
        format!("sc-trainer fit --resume {}", run_dir.display())
    } else {
        format!(
            "mpirun -np {saved} sc-trainer fit --resume {}",
            run_dir.display()
        )
    };
    bail_all!(
        "{}: this run was saved by {how}, and this is {world} process(es); resuming under \
         another number would change its BatchNorm batches. Resume it with `{cmd}`",
        run_dir.display()
    )
}

/// Checks the weights every this many iterations (and at every checkpoint).
pub const CHECK_EVERY: usize = 100;

/// A step's totals over all ranks.
#[derive(Debug, Clone, Copy)]
pub struct StepTotals {
    /// Mean training loss over the global batch.
    pub loss: f64,
    /// Correct predictions in the global batch.
    pub correct: usize,
    /// Images in the global batch.
    pub images: usize,
    /// Some rank was asked to stop (Ctrl-C / SIGTERM): every rank stops after this step.
    pub stop: bool,
}

/// The loop's view of the job: which slice of each batch is ours and how a step is reduced.
pub struct DataParallel {
    coll: Arc<dyn Collective>,
    ghost: usize,
    /// The trained variables, in the optimizer's order.
    trained: Vec<Var>,
    /// BatchNorm running means and variances, by name order.
    running: Vec<Var>,
    buf: Vec<f32>,
    /// Time in the steps' reductions (packing, the allreduce, unpacking) and their number.
    comm: std::time::Duration,
    reduced: usize,
}

impl DataParallel {
    /// `batch_size` is the global batch; it must divide into `size × ghost` equal slices.
    pub fn new(
        coll: Arc<dyn Collective>,
        ghost: usize,
        batch_size: usize,
        vars: &HashMap<String, Var>,
        kinds: &[(String, sc_models::resnet::ParamKind)],
        trained: Vec<Var>,
    ) -> anyhow::Result<DataParallel> {
        check_split(batch_size, coll.size(), ghost)?;
        let mut running = Vec::new();
        for (name, kind) in kinds {
            if !kind.is_trainable() {
                running.push(
                    vars.get(name)
                        .with_context(|| format!("no variable {name}"))?
                        .clone(),
                );
            }
        }
        Ok(DataParallel {
            coll,
            ghost,
            trained,
            running,
            buf: Vec::new(),
            comm: std::time::Duration::ZERO,
            reduced: 0,
        })
    }

    pub fn rank(&self) -> usize {
        self.coll.rank()
    }

    pub fn size(&self) -> usize {
        self.coll.size()
    }

    /// Whether this rank writes files (rank 0).
    pub fn writes(&self) -> bool {
        self.coll.rank() == 0
    }

    /// The training forward pass over this rank's images: one pass, or with ghost batches one
    /// per slice, each starting from the same running statistics, which end as the slices' mean.
    pub fn forward_train(
        &self,
        net: &Net,
        images: Vec<f32>,
        shape: (usize, usize, usize),
        device: &Device,
    ) -> anyhow::Result<Tensor> {
        let (c, h, w) = shape;
        let per = c * h * w;
        let b = images.len() / per;
        if self.ghost == 1 {
            let x = Tensor::from_vec(images, (b, c, h, w), device)?;
            return Ok(net.model.forward_t(&x, true)?);
        }
        let g = self.ghost;
        let bs = b / g;
        let saved: Vec<Tensor> = self
            .running
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        let mut sums: Vec<Vec<f32>> = saved.iter().map(|t| vec![0f32; t.elem_count()]).collect();
        let mut parts = Vec::with_capacity(g);
        for k in 0..g {
            if k > 0 {
                for (v, s) in self.running.iter().zip(&saved) {
                    v.set(s)?;
                }
            }
            let x = Tensor::from_slice(
                &images[k * bs * per..(k + 1) * bs * per],
                (bs, c, h, w),
                device,
            )?;
            parts.push(net.model.forward_t(&x, true)?);
            for (sum, v) in sums.iter_mut().zip(&self.running) {
                let now = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                sum.iter_mut().zip(now).for_each(|(s, x)| *s += x);
            }
        }
        for (v, sum) in self.running.iter().zip(sums) {
            let mean: Vec<f32> = sum.into_iter().map(|s| s / g as f32).collect();
            v.set(&Tensor::from_vec(mean, v.shape(), device)?)?;
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Reduces a step over the ranks with one allreduce: averages the gradients in `grads` and
    /// the running statistics, and totals the loss, the correct count and the stop flag. In a
    /// single process it only packages the step's numbers.
    pub fn reduce_step(
        &mut self,
        grads: &mut GradStore,
        loss: f64,
        correct: usize,
        images: usize,
        stop: bool,
    ) -> anyhow::Result<StepTotals> {
        let n = self.coll.size();
        if n == 1 {
            return Ok(StepTotals {
                loss,
                correct,
                images,
                stop,
            });
        }
        let t0 = std::time::Instant::now();
        self.buf.clear();
        let mut sizes = Vec::with_capacity(self.trained.len());
        for v in &self.trained {
            let count = v.elem_count();
            match grads.get(v.as_tensor()) {
                Some(g) => self
                    .buf
                    .extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                // Every rank runs the same graph, so a parameter without a gradient has none on
                // any rank: send zeros and put nothing back.
                None => self.buf.extend(std::iter::repeat_n(0f32, count)),
            }
            sizes.push(count);
        }
        let grad_len = self.buf.len();
        for v in &self.running {
            self.buf
                .extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        let stats_len = self.buf.len();
        self.buf.extend([
            (loss * images as f64) as f32,
            correct as f32,
            images as f32,
            stop as u8 as f32,
        ]);
        self.coll.allreduce_sum(&mut self.buf)?;
        let inv = 1.0 / n as f32;
        let mut off = 0;
        for (v, count) in self.trained.iter().zip(sizes) {
            if grads.get(v.as_tensor()).is_some() {
                let mean: Vec<f32> = self.buf[off..off + count].iter().map(|g| g * inv).collect();
                let t = Tensor::from_vec(mean, v.shape(), v.device())?;
                grads.insert(v.as_tensor(), t);
            }
            off += count;
        }
        debug_assert_eq!(off, grad_len);
        for v in &self.running {
            let count = v.elem_count();
            let mean: Vec<f32> = self.buf[off..off + count].iter().map(|s| s * inv).collect();
            v.set(&Tensor::from_vec(mean, v.shape(), v.device())?)?;
            off += count;
        }
        debug_assert_eq!(off, stats_len);
        let t = &self.buf[stats_len..];
        let total = t[2].round() as usize;
        self.comm += t0.elapsed();
        self.reduced += 1;
        Ok(StepTotals {
            loss: t[0] as f64 / total.max(1) as f64,
            correct: t[1].round() as usize,
            images: total,
            stop: t[3] > 0.0,
        })
    }

    /// The steps' reductions in this session: floats per allreduce, mean milliseconds per step,
    /// and their share of `session_s` seconds (`None` in a single process).
    pub fn comm_report(&self, session_s: f64) -> Option<String> {
        (self.reduced > 0).then(|| {
            let s = self.comm.as_secs_f64();
            format!(
                "allreduce of {} floats ({:.2} MB) per step: {:.2} ms mean over {} steps, {:.1} % \
                 of this session's {:.1} s (packing and unpacking included)",
                self.buf.len(),
                self.buf.len() as f64 * 4.0 / 1e6,
                s * 1e3 / self.reduced as f64,
                self.reduced,
                100.0 * s / session_s.max(1e-9),
                session_s
            )
        })
    }

    /// Fails, on every rank, when some rank's weights, running statistics or momentum buffers
    /// are no longer bit-identical to rank 0's after `done` iterations. A broadcast of rank 0's
    /// checksum and an allreduce of one flag per rank; nothing in a single process.
    pub fn check_in_sync(
        &self,
        done: usize,
        vars: &HashMap<String, Var>,
        optimizer: &[(String, Tensor)],
    ) -> anyhow::Result<()> {
        let n = self.coll.size();
        if n == 1 {
            return Ok(());
        }
        let mine = checksum(vars, optimizer)?;
        let mut bytes = mine.to_le_bytes();
        self.coll.broadcast(&mut bytes, 0)?;
        let root = u64::from_le_bytes(bytes);
        let mut flags = vec![0f32; n];
        flags[self.coll.rank()] = (mine != root) as u8 as f32;
        self.coll.allreduce_sum(&mut flags)?;
        let drifted: Vec<String> = flags
            .iter()
            .enumerate()
            .filter(|(_, f)| **f > 0.0)
            .map(|(r, _)| r.to_string())
            .collect();
        if !drifted.is_empty() {
            bail_all!(
                "ranks drifted apart at iteration {done}: rank(s) {} no longer hold rank 0's \
                 weights, running statistics and momentum (rank 0's checksum {root:016x}); the \
                 last checkpoint before iteration {done} is kept",
                drifted.join(", ")
            );
        }
        Ok(())
    }

    /// Mean loss and accuracy over `labels`, each rank evaluating its contiguous share.
    pub fn evaluate(
        &self,
        net: &Net,
        images: &[f32],
        labels: &[u32],
        shape: (usize, usize, usize),
        batch: usize,
    ) -> anyhow::Result<(f64, f64)> {
        let n = self.coll.size();
        if n == 1 {
            return net.evaluate(images, labels, shape, batch);
        }
        let per = shape.0 * shape.1 * shape.2;
        let (r, total) = (self.coll.rank(), labels.len());
        let (lo, hi) = (total * r / n, total * (r + 1) / n);
        let (loss_sum, correct) =
            net.evaluate_sums(&images[lo * per..hi * per], &labels[lo..hi], shape, batch)?;
        let mut buf = [loss_sum as f32, correct as f32];
        self.coll.allreduce_sum(&mut buf)?;
        if total == 0 {
            return Ok((f64::NAN, f64::NAN));
        }
        Ok((
            buf[0] as f64 / total as f64,
            buf[1].round() as f64 / total as f64,
        ))
    }
}

/// A 64-bit FNV-1a-style checksum of every variable and optimizer buffer, in name order.
pub fn checksum(
    vars: &HashMap<String, Var>,
    optimizer: &[(String, Tensor)],
) -> anyhow::Result<u64> {
    let mut all: Vec<(&String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (k, v.as_detached_tensor()))
        .chain(optimizer.iter().map(|(k, t)| (k, t.clone())))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, t) in all {
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        for x in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

//! Running many images over worker threads that share one engine.
//!
//! Images are cut into chunks of `chunk` images (the fixed batch size whose plan runs fastest);
//! `threads` scoped workers take chunks from a shared counter, each with its own tract state, so one
//! loaded model serves every thread. A chunk shorter than `chunk` (the tail) runs image by image on
//! the batch-1 plan, unless the graph forces a batch size, in which case it is padded with zeros.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::engine::{Engine, Session};
use crate::error::{Result, RuntimeError};

/// One worker's results: (first image index, logits) per chunk.
type Part = Vec<(usize, Vec<f32>)>;

/// How to spread work: worker threads and images per tract run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parallelism {
    pub threads: usize,
    pub chunk: usize,
}

/// Computes the logits of `n` images (`n * classes` values, in order). `fill(i, out)` writes image
/// `i`'s input values into `out`; it runs on the worker threads. `progress(done)` is called after
/// each chunk with the number of images finished so far.
pub(crate) fn run<F>(
    engine: &Engine,
    par: Parallelism,
    image_len: usize,
    n: usize,
    fill: F,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<f32>>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
{
    let chunk = engine.fixed_batch().unwrap_or(par.chunk.max(1));
    let chunks = n.div_ceil(chunk);
    let threads = par.threads.clamp(1, chunks.max(1));
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let classes = engine.classes();

    // One worker for a request that the threads cannot share image by image: the native
    // executor splits each convolution over a pool of `par.threads` instead.
    let team =
        (threads == 1 && par.threads > 1 && engine.is_native()).then(|| engine.team(par.threads));
    let worker = || -> Result<Part> {
        let mut session = Session::new(engine).with_team(team.clone());
        let mut input = vec![0f32; chunk * image_len];
        let mut results = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let ci = next.fetch_add(1, Ordering::Relaxed);
            if ci >= chunks {
                break;
            }
            let (start, end) = (ci * chunk, ((ci + 1) * chunk).min(n));
            let outcome = run_chunk(
                &mut session,
                engine,
                &fill,
                &mut input,
                image_len,
                start,
                end,
            );
            match outcome {
                Ok(mut logits) => {
                    logits.truncate((end - start) * classes);
                    results.push((start, logits));
                    progress(done.fetch_add(end - start, Ordering::Relaxed) + end - start);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(results)
    };

    let parts: Vec<Result<Part>> = if threads == 1 {
        vec![worker()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(RuntimeError::InvalidArgument(
                            "an inference worker thread panicked".into(),
                        ))
                    })
                })
                .collect()
        })
    };
    let mut out = vec![0f32; n * classes];
    for part in parts {
        for (start, logits) in part? {
            out[start * classes..start * classes + logits.len()].copy_from_slice(&logits);
        }
    }
    Ok(out)
}

fn run_chunk<F>(
    session: &mut Session,
    engine: &Engine,
    fill: &F,
    input: &mut [f32],
    image_len: usize,
    start: usize,
    end: usize,
) -> Result<Vec<f32>>
where
    F: Fn(usize, &mut [f32]) -> Result<()>,
{
    let len = end - start;
    for (k, i) in (start..end).enumerate() {
        fill(i, &mut input[k * image_len..(k + 1) * image_len])?;
    }
    let full = input.len() / image_len;
    if len == full {
        return session.run(full, input);
    }
    if engine.fixed_batch().is_some() {
        // The graph only runs whole batches: pad with zeros, the extra logits are dropped.
        input[len * image_len..].fill(0.0);
        return session.run(full, input);
    }
    let mut logits = Vec::with_capacity(len * engine.classes());
    for k in 0..len {
        logits.extend(session.run(1, &input[k * image_len..(k + 1) * image_len])?);
    }
    Ok(logits)
}

//! Dynamic batching: one worker thread per model takes queued requests, gathers up to
//! `max_batch` images or until `max_delay` has passed since the first, runs them as one call of
//! [`Classifier::logits_for_input`] (spread over the classifier's threads) and splits the logits
//! back. The queue is bounded: a full one is refused at once (the caller answers 503). A panic
//! inside the model fails that batch's requests (500) and the worker goes on; should the worker
//! stop anyway, requests and the model's readiness say so (503).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::ModelMetrics;
use crate::Classifier;

/// Logits of one request (`n * classes` values), or why the run failed.
pub type Reply = Result<Vec<f32>, String>;

struct Job {
    n: usize,
    input: Vec<f32>,
    reply: oneshot::Sender<Reply>,
}

/// The queue in front of one model's worker. Dropping it lets the worker finish what is queued
/// and stop.
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<ModelMetrics>,
    /// False once the worker thread has ended (set as it unwinds too).
    alive: Arc<AtomicBool>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: try again later.
    Full,
    /// The model's worker has stopped.
    Stopped,
}

/// Clears `alive` when the worker ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Logits of a batch of images, one row per image.
type Infer<'a> = dyn Fn(&[f32]) -> Result<Vec<Vec<f32>>, String> + Send + 'a;

impl Batcher {
    /// Starts the worker thread for `clf`.
    pub fn start(
        clf: Arc<Classifier>,
        max_batch: usize,
        max_delay: Duration,
        queue: usize,
        metrics: Arc<ModelMetrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let infer = move |x: &[f32]| clf.logits_for_input(x).map_err(|e| e.to_string());
        Batcher::spawn(Box::new(infer), max_batch, max_delay, queue, metrics)
    }

    /// The worker over any inference function (tests give one that fails or panics).
    fn spawn(
        infer: Box<Infer<'static>>,
        max_batch: usize,
        max_delay: Duration,
        queue: usize,
        metrics: Arc<ModelMetrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let m = metrics.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let worker = std::thread::Builder::new()
            .name("sc-batcher".into())
            .spawn(move || {
                let _guard = guard;
                work(&*infer, rx, max_batch.max(1), max_delay, &m)
            })?;
        Ok((Batcher { tx, metrics, alive }, worker))
    }

    /// Whether the worker is still taking requests.
    pub fn running(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues `n` images (`input` holds `n * C * H * W` values).
    pub fn submit(&self, n: usize, input: Vec<f32>) -> Result<oneshot::Receiver<Reply>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let refused = match self.tx.try_send(Job { n, input, reply }) {
            Ok(()) => return Ok(rx),
            Err(TrySendError::Full(_)) => Refused::Full,
            Err(TrySendError::Disconnected(_)) => Refused::Stopped,
        };
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        Err(refused)
    }
}

fn work(
    infer: &Infer<'_>,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_delay: Duration,
    metrics: &ModelMetrics,
) {
    let take = |job: Job| {
        metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        job
    };
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => take(job),
                Err(_) => return, // every sender is gone and the queue is empty
            },
        };
        let deadline = Instant::now() + max_delay;
        let mut images = first.n;
        let mut jobs = vec![first];
        while images < max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = match rx.recv_timeout(wait) {
                Ok(job) => take(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            if images + next.n > max_batch {
                held = Some(next);
                break;
            }
            images += next.n;
            jobs.push(next);
        }
        // A request that timed out meanwhile is not run.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        run(infer, jobs, metrics);
    }
}

fn run(infer: &Infer<'_>, jobs: Vec<Job>, metrics: &ModelMetrics) {
    let images: usize = jobs.iter().map(|j| j.n).sum();
    metrics.batch_size.observe(images as f64);
    let batch = || {
        if jobs.len() == 1 {
            infer(&jobs[0].input)
        } else {
            let mut all = Vec::with_capacity(jobs.iter().map(|j| j.input.len()).sum());
            for j in &jobs {
                all.extend_from_slice(&j.input);
            }
            infer(&all)
        }
    };
    // A panic in the model fails this batch, not the worker.
    let outcome = catch_unwind(AssertUnwindSafe(batch)).unwrap_or_else(|p| {
        let why = (p.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(format!(
            "internal error: the model failed on this batch ({why})"
        ))
    });
    match outcome {
        Ok(logits) => {
            let mut rows = logits.into_iter();
            for j in jobs {
                let mine: Vec<f32> = rows.by_ref().take(j.n).flatten().collect();
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(msg) => {
            for j in jobs {
                let _ = j.reply.send(Err(msg.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(infer: Box<Infer<'static>>) -> (Batcher, JoinHandle<()>) {
        let metrics = Arc::new(ModelMetrics::default());
        Batcher::spawn(infer, 4, Duration::from_millis(1), 4, metrics).unwrap()
    }

    fn answer(b: &Batcher, x: f32) -> Reply {
        let rx = b.submit(1, vec![x]).unwrap();
        rx.blocking_recv().unwrap()
    }

    #[test]
    fn a_panicking_model_fails_its_batch_and_the_worker_goes_on() {
        let (b, worker) = start(Box::new(|x: &[f32]| {
            if x.contains(&13.0) {
                panic!("unlucky input");
            }
            Ok(x.iter().map(|&v| vec![v * 2.0]).collect())
        }));
        assert_eq!(answer(&b, 1.0), Ok(vec![2.0]));
        let e = answer(&b, 13.0).unwrap_err();
        assert!(
            e.contains("internal error") && e.contains("unlucky input"),
            "{e}"
        );
        assert!(b.running());
        assert_eq!(answer(&b, 2.0), Ok(vec![4.0]));
        drop(b);
        worker.join().unwrap();
    }

    #[test]
    fn a_stopped_worker_is_reported_not_taken_for_a_full_queue() {
        let (b, worker) = start(Box::new(|x: &[f32]| Ok(vec![x.to_vec()])));
        // The worker ends as it would after an unexpected exit: its receiver is gone.
        let (tx, rx) = mpsc::sync_channel(1);
        drop(rx);
        let stopped = Batcher {
            tx,
            metrics: b.metrics.clone(),
            alive: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(stopped.submit(1, vec![0.0]).unwrap_err(), Refused::Stopped);
        assert!(!stopped.running());
        assert!(b.running());
        drop(b);
        worker.join().unwrap();
    }

    #[test]
    fn the_liveness_flag_drops_when_the_worker_ends() {
        let (b, worker) = start(Box::new(|x: &[f32]| Ok(vec![x.to_vec()])));
        let alive = b.alive.clone();
        drop(b);
        worker.join().unwrap();
        assert!(!alive.load(Ordering::Acquire));
    }
}

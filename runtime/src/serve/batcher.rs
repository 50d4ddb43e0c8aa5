//! Dynamic batching: one worker thread per model takes queued requests, gathers up to
//! `max_batch` images or until `max_delay` has passed since the first, runs them as one call of
//! [`Classifier::logits_for_input`] (spread over the classifier's threads) and splits the logits
//! back. The queue is bounded: a full one is refused at once (the caller answers 503).

use std::sync::atomic::Ordering;
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
}

/// The queue is full.
#[derive(Debug)]
pub struct Full;

impl Batcher {
    /// Starts the worker thread for `clf`.
    pub fn start(
        clf: Arc<Classifier>,
        max_batch: usize,
        max_delay: Duration,
        queue: usize,
        metrics: Arc<ModelMetrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let m = metrics.clone();
        let worker = std::thread::Builder::new()
            .name("sc-batcher".into())
            .spawn(move || work(&clf, rx, max_batch.max(1), max_delay, &m))?;
        Ok((Batcher { tx, metrics }, worker))
    }

    /// Queues `n` images (`input` holds `n * C * H * W` values).
    pub fn submit(&self, n: usize, input: Vec<f32>) -> Result<oneshot::Receiver<Reply>, Full> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job { n, input, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(Full)
            }
        }
    }
}

fn work(
    clf: &Classifier,
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
        run(clf, jobs, metrics);
    }
}

fn run(clf: &Classifier, jobs: Vec<Job>, metrics: &ModelMetrics) {
    let images: usize = jobs.iter().map(|j| j.n).sum();
    metrics.batch_size.observe(images as f64);
    let outcome = if jobs.len() == 1 {
        clf.logits_for_input(&jobs[0].input)
    } else {
        let mut all = Vec::with_capacity(jobs.iter().map(|j| j.input.len()).sum());
        for j in &jobs {
            all.extend_from_slice(&j.input);
        }
        clf.logits_for_input(&all)
    };
    match outcome {
        Ok(logits) => {
            let mut rows = logits.into_iter();
            for j in jobs {
                let mine: Vec<f32> = rows.by_ref().take(j.n).flatten().collect();
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(msg.clone()));
            }
        }
    }
}

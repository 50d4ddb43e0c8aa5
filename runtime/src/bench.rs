//! Throughput and latency of a classifier per request batch size (the `bench` command).
//!
//! A request of `batch` images is what one `Classifier::logits_for_input` call gets: the runtime
//! splits it over its worker threads in chunks. Requests run one after another, as an app calling
//! the library from one thread would; latency is per request.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::classifier::Classifier;
use crate::error::{Result, RuntimeError};
use crate::noise::unit_noise;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Images per request; one result per entry.
    pub batch_sizes: Vec<usize>,
    /// Measure each batch size for at least this long, in seconds (default 3).
    pub min_seconds: f64,
    /// ...and for at least this many requests (default 10).
    pub min_requests: usize,
    /// Unmeasured requests first, so plans are built and caches warm (default 3).
    pub warmup_requests: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch_sizes: vec![1, 64],
            min_seconds: 3.0,
            min_requests: 10,
            warmup_requests: 3,
        }
    }
}

/// Measurements for one batch size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// Images per request.
    pub batch: usize,
    pub threads: usize,
    /// Images per tract run.
    pub chunk: usize,
    /// Measured requests.
    pub requests: usize,
    pub images_per_second: f64,
    /// Request latency percentiles and mean, in milliseconds.
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_mean: f64,
    /// Which executor ran it ([`Classifier::executor`]).
    pub executor: String,
}

/// Runs the benchmark on synthetic input (deterministic pseudo-random pixels).
pub fn run(clf: &Classifier, opts: &BenchOptions) -> Result<Vec<BenchResult>> {
    if opts.batch_sizes.is_empty() || opts.batch_sizes.contains(&0) {
        return Err(RuntimeError::InvalidArgument(format!(
            "batch sizes must be positive, got {:?}",
            opts.batch_sizes
        )));
    }
    let i = clf.input();
    let len = i.channels * i.height * i.width;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut results = Vec::new();
    for &batch in &opts.batch_sizes {
        let input = unit_noise(&mut seed, batch * len);
        for _ in 0..opts.warmup_requests {
            clf.logits_for_input(&input)?;
        }
        let mut latencies = Vec::new();
        let started = Instant::now();
        while latencies.len() < opts.min_requests.max(1)
            || started.elapsed() < Duration::from_secs_f64(opts.min_seconds)
        {
            let t = Instant::now();
            clf.logits_for_input(&input)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        results.push(BenchResult {
            batch,
            threads: clf.threads(),
            chunk: clf.chunk(),
            requests: latencies.len(),
            images_per_second: (latencies.len() * batch) as f64 / total,
            latency_ms_p50: percentile(&latencies, 0.50),
            latency_ms_p99: percentile(&latencies, 0.99),
            latency_ms_mean: latencies.iter().sum::<f64>() / latencies.len() as f64,
            executor: clf.executor().to_string(),
        });
    }
    Ok(results)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

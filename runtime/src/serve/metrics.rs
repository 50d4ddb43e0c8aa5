//! Counters and histograms for `GET /metrics`, written in the Prometheus text format by hand (a
//! few atomics; no metrics crate).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds.
pub struct Histogram {
    bounds: Vec<f64>,
    /// One count per bound (not cumulative; summed when written), then `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observations in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// Per model: batch sizes run and requests waiting.
pub struct ModelMetrics {
    pub batch_size: Histogram,
    pub queue_depth: AtomicUsize,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            batch_size: Histogram::new(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            queue_depth: AtomicUsize::new(0),
        }
    }
}

/// The whole server's metrics.
pub struct Metrics {
    /// Requests by (endpoint, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Histogram,
    /// By model name.
    pub models: BTreeMap<String, std::sync::Arc<ModelMetrics>>,
}

impl Metrics {
    pub fn new(models: BTreeMap<String, std::sync::Arc<ModelMetrics>>) -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            models,
        }
    }

    /// One finished request.
    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint, status)).or_default() += 1;
        }
        self.latency.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP sc_requests_total HTTP requests answered, by endpoint and status code.\n",
        );
        out.push_str("# TYPE sc_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "sc_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP sc_request_duration_seconds Time from request to response.\n");
        out.push_str("# TYPE sc_request_duration_seconds histogram\n");
        self.latency
            .write(&mut out, "sc_request_duration_seconds", "");
        out.push_str("# HELP sc_batch_size Images per model run.\n");
        out.push_str("# TYPE sc_batch_size histogram\n");
        for (name, m) in &self.models {
            let labels = format!("model=\"{}\"", escape(name));
            m.batch_size.write(&mut out, "sc_batch_size", &labels);
        }
        out.push_str("# HELP sc_queue_depth Requests waiting for a model run.\n");
        out.push_str("# TYPE sc_queue_depth gauge\n");
        for (name, m) in &self.models {
            let depth = m.queue_depth.load(Ordering::Relaxed);
            let _ = writeln!(out, "sc_queue_depth{{model=\"{}\"}} {depth}", escape(name));
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [1.0, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.write(&mut s, "x", "m=\"a\"");
        assert!(s.contains("x_bucket{m=\"a\",le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{m=\"a\",le=\"4\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{m=\"a\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum{m=\"a\"} 14\n"), "{s}");
    }
}

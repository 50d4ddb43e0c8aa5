//! `sc-runtime serve`: flags checked into a plan, models loaded, then the server until a signal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sc_runtime::serve::{self, ServeOptions};
use sc_runtime::Classifier;

use super::args::ServeArgs;

pub fn run(a: ServeArgs) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if a.max_batch == 0 || a.max_queue == 0 {
        bail!("--max-batch and --max-queue must be at least 1");
    }
    if !(a.max_delay_ms.is_finite() && (0.0..=10_000.0).contains(&a.max_delay_ms)) {
        bail!(
            "--max-delay-ms must be between 0 and 10000, got {}",
            a.max_delay_ms
        );
    }
    if !(a.max_body_mb.is_finite() && a.max_body_mb > 0.0 && a.max_body_mb <= 4096.0) {
        bail!(
            "--max-body-mb must be above 0 and at most 4096, got {}",
            a.max_body_mb
        );
    }
    if a.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    let named = a
        .models
        .iter()
        .map(|spec| model_name(spec))
        .collect::<Result<Vec<_>>>()?;
    for (i, (name, _)) in named.iter().enumerate() {
        if named[..i].iter().any(|(n, _)| n == name) {
            bail!("two models are named '{name}': name them with NAME=PATH");
        }
    }
    let opts = ServeOptions {
        max_batch: a.max_batch,
        max_delay: Duration::from_secs_f64(a.max_delay_ms / 1e3),
        max_queue: a.max_queue,
        max_body: (a.max_body_mb * 1024.0 * 1024.0) as usize,
        timeout: Duration::from_millis(a.timeout_ms),
        log_requests: a.log_requests,
    };
    let threads = a.threads.unwrap_or_else(sc_runtime::default_threads);
    let mut models = Vec::new();
    for (name, path) in named {
        let clf = Classifier::load(&path)
            .with_context(|| {
                format!("loading model '{name}' (serve takes models with sc.* metadata)")
            })?
            .with_threads(threads)
            .with_tta(a.tta);
        models.push((name, clf));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
        println!("listening on http://{local} (models: {})", names.join(", "));
        use std::io::Write;
        std::io::stdout().flush()?;
        serve::serve(listener, models, opts, serve::shutdown_signal())
            .await
            .context("serving")?;
        eprintln!("shut down");
        Ok::<(), anyhow::Error>(())
    })
}

/// `NAME=PATH` or `PATH` (named by its file stem). Names go into URLs: letters, digits, `.`,
/// `_` and `-` only.
fn model_name(spec: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let path = PathBuf::from(spec);
            let stem = Path::new(spec)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            (stem, path)
        }
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || !name.chars().all(ok) {
        bail!("model name {name:?} (from {spec:?}): use letters, digits, '.', '_' and '-', or NAME=PATH");
    }
    Ok((name, path))
}

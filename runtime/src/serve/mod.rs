//! `sc-runtime serve`: loaded classifiers behind the Open Inference Protocol (KServe v2) over
//! HTTP/1.1, with dynamic batching per model (feature `serve`, on by default; an app that only
//! embeds [`Classifier`] builds with `default-features = false` and gets no tokio).
//!
//! Endpoints: `GET /v2/health/live`, `/v2/health/ready`, `/v2`, `/v2/models/{name}`,
//! `/v2/models/{name}/ready`, `POST /v2/models/{name}/infer` (JSON or binary FP32 tensors),
//! `POST /v2/models/{name}/classify` (extension: image bytes in, top-k out) and `GET /metrics`.

mod batcher;
mod metrics;
mod protocol;
mod routes;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::Classifier;
use batcher::Batcher;
use metrics::{Metrics, ModelMetrics};
use protocol::Signature;
use routes::{AppState, Served};

/// How the server batches, bounds and times requests.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most images in one model run, and in one request.
    pub max_batch: usize,
    /// Longest wait for more requests after the first of a batch arrives.
    pub max_delay: Duration,
    /// Requests waiting per model before new ones get 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
    /// Per-request limit from arrival to answer: 408 while reading the body, 503 waiting for the
    /// model. Also the limit for reading request headers (the connection is closed).
    pub timeout: Duration,
    /// One line per request on stderr.
    pub log_requests: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_batch: 64,
            max_delay: Duration::from_millis(1),
            max_queue: 256,
            max_body: 32 << 20,
            timeout: Duration::from_secs(30),
            log_requests: false,
        }
    }
}

/// Serves `models` (by name) on `listener` until `shutdown` completes, then stops accepting,
/// lets every accepted request finish (bounded by the request timeout and a second) and returns.
pub async fn serve(
    listener: TcpListener,
    models: Vec<(String, Classifier)>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut served = BTreeMap::new();
    let mut model_metrics = BTreeMap::new();
    let mut workers = Vec::new();
    for (name, clf) in models {
        let input = clf.input();
        let sig = Signature {
            input: input.name.clone(),
            chw: [input.channels, input.height, input.width],
            output: (clf.info().outputs.first())
                .map_or_else(|| "logits".to_string(), |o| o.name.clone()),
            classes: clf.classes().len(),
            max_batch: opts.max_batch.max(1),
        };
        let m = Arc::new(ModelMetrics::default());
        let clf = Arc::new(clf);
        let (batcher, worker) = Batcher::start(
            clf.clone(),
            opts.max_batch,
            opts.max_delay,
            opts.max_queue,
            m.clone(),
        )?;
        workers.push(worker);
        model_metrics.insert(name.clone(), m);
        served.insert(name, Served { clf, sig, batcher });
    }
    let state = Arc::new(AppState {
        models: served,
        metrics: Arc::new(Metrics::new(model_metrics)),
        max_body: opts.max_body,
        timeout: opts.timeout,
        log_requests: opts.log_requests,
    });
    let app = routes::router(state.clone());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        eprintln!("warning: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(opts.timeout);
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = opts.timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("warning: connections still open {grace:?} after shutdown began; closing them");
    }
    drop(app);
    // The last reference to the queues goes: each worker finishes what is queued and stops.
    if Arc::try_unwrap(state).is_ok() {
        tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await
        .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Resolves when the process gets SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! The HTTP endpoints: health, server and model metadata, `infer` (the protocol's) and `classify`
//! (our extension: image bytes in, top-k classes out), `/metrics`, and errors as `{"error": ...}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::time::{timeout_at, Instant as Deadline};

use super::batcher::{Batcher, Refused};
use super::metrics::Metrics;
use super::protocol::{self, Signature};
use crate::{softmax, Classifier};

/// One served model.
pub struct Served {
    pub clf: Arc<Classifier>,
    pub sig: Signature,
    pub batcher: Batcher,
}

/// Everything the handlers share.
pub struct AppState {
    pub models: BTreeMap<String, Served>,
    pub metrics: Arc<Metrics>,
    pub max_body: usize,
    pub timeout: std::time::Duration,
    pub log_requests: bool,
}

type S = Arc<AppState>;

/// An error answer: a status and the protocol's `{"error": "..."}` body.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, json_body(&json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn json_body(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub fn router(state: S) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/classify", post(classify))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request; one log line each when asked (`--log-requests`).
async fn observe(State(s): State<S>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let endpoint = match path.rsplit('/').next() {
        Some("infer") => "infer",
        Some("classify") => "classify",
        Some("metrics") => "metrics",
        _ if path.starts_with("/v2/health") => "health",
        _ => "metadata",
    };
    let resp = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    s.metrics.request(endpoint, resp.status().as_u16(), seconds);
    if s.log_requests {
        eprintln!(
            "debug: {method} {path} {} {:.3} ms",
            resp.status().as_u16(),
            seconds * 1e3
        );
    }
    resp
}

fn model<'a>(s: &'a AppState, name: &str) -> Result<&'a Served, ApiError> {
    s.models
        .get(name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown model '{name}'")))
}

async fn ready(State(s): State<S>) -> StatusCode {
    if s.models.is_empty() || s.models.values().any(|m| !m.batcher.running()) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn server_metadata() -> Response {
    json_body(&json!({
        "name": "sc-runtime",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classify"],
    }))
}

async fn model_metadata(
    State(s): State<S>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = model(&s, &name)?;
    let [c, h, w] = m.sig.chw;
    Ok(json_body(&json!({
        "name": name,
        "versions": ["1"],
        "platform": "onnx",
        "inputs": [{"name": m.sig.input, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": m.sig.output, "datatype": "FP32", "shape": [-1, m.sig.classes]}],
        "parameters": {"max_batch_size": m.sig.max_batch, "classes": m.clf.classes()},
    })))
}

async fn model_ready(State(s): State<S>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let m = model(&s, &name)?;
    Ok(if m.batcher.running() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

async fn metrics(State(s): State<S>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Reads the body by the deadline: 413 past `limit` bytes (by Content-Length before reading, or
/// while reading), 408 when the client is too slow.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: Deadline,
) -> Result<Vec<u8>, ApiError> {
    let too_big = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the {limit}-byte limit (--max-body-mb)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let read = async {
        let mut body = body;
        let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_big());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    timeout_at(deadline, read).await.map_err(|_| {
        ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "timed out reading the request body".into(),
        )
    })?
}

/// Queues `n` images for `m` and waits for their logits by the deadline.
async fn run_model(
    m: &Served,
    n: usize,
    input: Vec<f32>,
    deadline: Deadline,
) -> Result<Vec<f32>, ApiError> {
    let rx = m.batcher.submit(n, input).map_err(|r| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            match r {
                Refused::Full => "the model's queue is full, try again later".into(),
                Refused::Stopped => "the model's worker has stopped: restart the server".into(),
            },
        )
    })?;
    match timeout_at(deadline, rx).await {
        Ok(Ok(Ok(logits))) => Ok(logits),
        Ok(Ok(Err(e))) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        )),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "timed out waiting for the model".into(),
        )),
    }
}

/// Runs CPU work (parsing, decoding) off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })
}

async fn infer(
    State(s): State<S>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let deadline = Deadline::now() + s.timeout;
    let m = model(&s, &name)?;
    let (parts, body) = req.into_parts();
    let header_len = match parts.headers.get("inference-header-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("Inference-Header-Content-Length is not a number"))?,
        ),
    };
    let body = read_body(body, &parts.headers, s.max_body, deadline).await?;
    let sig = m.sig.clone();
    let checked = blocking(move || protocol::parse_infer(&body, header_len, &sig))
        .await?
        .map_err(bad)?;
    let logits = run_model(m, checked.n, checked.input, deadline).await?;
    let (body, header_len) = protocol::infer_response(
        &name,
        &m.sig,
        checked.id,
        checked.n,
        logits,
        checked.binary_output,
    );
    let mut resp = Response::new(Body::from(body));
    let headers = resp.headers_mut();
    match header_len {
        Some(len) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert("inference-header-content-length", HeaderValue::from(len));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(resp)
}

/// `?top_k=K` (default 3, as `sc-runtime predict`).
fn top_k(query: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let mut k = 3;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("top_k", v)) => {
                k =
                    v.parse::<usize>().ok().filter(|&k| k >= 1).ok_or_else(|| {
                        bad(format!("top_k must be a positive integer, got {v:?}"))
                    })?;
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {pair:?} (only top_k)"
                )))
            }
        }
    }
    Ok(k.min(classes))
}

async fn classify(
    State(s): State<S>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let deadline = Deadline::now() + s.timeout;
    let m = model(&s, &name)?;
    let k = top_k(query.as_deref(), m.sig.classes)?;
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, s.max_body, deadline).await?;
    let clf = m.clf.clone();
    let input = blocking(move || {
        let img = crate::decode_image(&body, "request body")?;
        clf.preprocess(&img)
    })
    .await?
    .map_err(|e| bad(e.to_string()))?;
    let logits = run_model(m, 1, input, deadline).await?;
    let predictions = m.clf.top_k(&softmax(&logits), k);
    Ok(json_body(&json!({
        "model_name": name,
        "predictions": predictions,
    })))
}

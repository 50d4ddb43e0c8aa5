//! `sc-runtime serve` as a process on an ephemeral loopback port, driven by a small HTTP/1.1
//! client over `TcpStream`: the protocol's endpoints, logits equal to `Classifier`'s own, a 4xx for
//! each bad request with the server still live after it (a chunked body over the limit included),
//! batching, a full queue's 503, and graceful shutdown.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{int, ints, model, node, our_metadata, png, tensor, value_info, Tiny, D};
use prost::Message;
use sc_runtime::Classifier;
use serde_json::{json, Value};
use tract_onnx::pb;

const RGB: [&str; 3] = ["red", "green", "blue"];
const SIZE: usize = 8;

/// A running server; killed when dropped (if still running).
struct Server {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with(dir, &Tiny::ours(3, SIZE, &RGB).bytes(), args)
    }

    /// The server on the ONNX model `onnx` (written as `model.onnx`, served as `model`).
    fn start_with(dir: &Path, onnx: &[u8], args: &[&str]) -> Server {
        let model = dir.join("model.onnx");
        std::fs::write(&model, onnx).unwrap();
        Server::start_models(dir, args, &[model.display().to_string()])
    }

    /// The server on `models` (`PATH` or `NAME=PATH` each).
    fn start_models(dir: &Path, args: &[&str], models: &[String]) -> Server {
        let stderr = dir.join(format!("stderr-{}.txt", args.join("_").replace('/', "")));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sc-runtime"))
            .args(["serve", "--port", "0", "--threads", "2"])
            .args(args)
            .args(models)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starts sc-runtime serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}: {}", read(&stderr)))
            .to_string();
        Server {
            child,
            addr,
            stderr,
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(&self.addr, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn post_json(&self, path: &str, body: &Value) -> Resp {
        let body = body.to_string();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    fn assert_live(&self, after: &str) {
        let r = self.get("/v2/health/live");
        assert_eq!(
            r.status,
            200,
            "not live after {after}: {}",
            read(&self.stderr)
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), the whole response read.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    response(&mut s)
}

fn response(s: &mut TcpStream) -> Resp {
    // Until the server closes; a reset after the response (the server closing on unread
    // bytes) ends the read too.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let split = (raw.windows(4).position(|w| w == b"\r\n\r\n"))
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Resp {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// `n` images of deterministic, distinct values.
fn images(n: usize, seed: usize) -> Vec<f32> {
    (0..n * 3 * SIZE * SIZE)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

fn infer_body(n: usize, data: &[f32]) -> Value {
    json!({
        "id": "r1",
        "inputs": [{"name": "image", "shape": [n, 3, SIZE, SIZE], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "logits"}],
    })
}

fn logits_of(resp: &Value) -> Vec<f32> {
    resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

#[test]
fn endpoints_and_logits_equal_the_classifiers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let clf = Classifier::load(dir.path().join("model.onnx")).unwrap();
    for p in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/model/ready",
    ] {
        assert_eq!(srv.get(p).status, 200, "{p}");
    }
    assert_eq!(srv.get("/v2").json()["name"], "sc-runtime");
    let meta = srv.get("/v2/models/model").json();
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]})
    );
    assert_eq!(
        meta["outputs"][0],
        json!({"name": "logits", "datatype": "FP32", "shape": [-1, 3]})
    );

    // JSON tensors.
    let data = images(3, 1);
    let r = srv.post_json("/v2/models/model/infer", &infer_body(3, &data));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["id"], "r1");
    assert_eq!(v["outputs"][0]["shape"], json!([3, 3]));
    let want: Vec<f32> = clf.logits_for_input(&data).unwrap().concat();
    close(&logits_of(&v), &want);

    // The binary-data extension, in and out.
    let header = json!({
        "inputs": [{"name": "image", "shape": [3, 3, SIZE, SIZE], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    let len = header.len().to_string();
    let r = srv.request(
        "POST",
        "/v2/models/model/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let hlen: usize = (r.head.lines())
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("inference-header-content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("binary response header");
    let got: Vec<f32> = r.body[hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, want, "binary logits are the exact bytes");

    // The classify extension: the same top-k as the library on the same image bytes.
    let bytes = png(5, 4, None, &[250, 10, 40].repeat(20));
    let r = srv.request("POST", "/v2/models/model/classify?top_k=2", &[], &bytes);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let img = sc_runtime::decode_image(&bytes, "x").unwrap();
    let want = clf.classify(&img, 2).unwrap();
    let got = r.json()["predictions"].clone();
    assert_eq!(got.as_array().unwrap().len(), 2);
    for (g, w) in got.as_array().unwrap().iter().zip(&want) {
        assert_eq!(g["class"], w.class.as_str());
        assert!((g["probability"].as_f64().unwrap() as f32 - w.probability).abs() < 1e-6);
    }
    assert_eq!(want[0].class, "red");

    let metrics = String::from_utf8(srv.get("/metrics").body).unwrap();
    for needle in [
        "sc_requests_total{endpoint=\"infer\",code=\"200\"} 2",
        "sc_request_duration_seconds_count",
        "sc_batch_size_bucket{model=\"model\",le=\"4\"}",
        "sc_queue_depth{model=\"model\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[test]
fn every_bad_request_is_a_4xx_and_the_server_stays_live() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        &[
            "--max-batch",
            "4",
            "--max-body-mb",
            "1",
            "--timeout-ms",
            "1000",
        ],
    );
    let infer = "/v2/models/model/infer";
    let one = images(1, 2);
    let mut wrong_type = infer_body(1, &one);
    wrong_type["inputs"][0]["datatype"] = "INT32".into();
    let mut wrong_shape = infer_body(1, &one);
    wrong_shape["inputs"][0]["shape"] = json!([1, 3, SIZE, SIZE + 1]);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            infer,
            b"{\"inputs\": [".to_vec(),
            400,
            "malformed",
        ),
        (
            "wrong datatype",
            infer,
            wrong_type.to_string().into(),
            400,
            "datatype INT32",
        ),
        (
            "wrong shape",
            infer,
            wrong_shape.to_string().into(),
            400,
            "shape",
        ),
        (
            "N too large",
            infer,
            infer_body(5, &images(5, 3)).to_string().into(),
            400,
            "batch size 5",
        ),
        (
            "unknown model",
            "/v2/models/nope/infer",
            infer_body(1, &one).to_string().into(),
            404,
            "unknown model",
        ),
        (
            "non-image body",
            "/v2/models/model/classify",
            b"hello, not an image".to_vec(),
            400,
            "not a recognised image",
        ),
        (
            "truncated image",
            "/v2/models/model/classify",
            {
                let p = png(8, 8, None, &[7; 192]);
                p[..p.len() / 2].to_vec()
            },
            400,
            "request body",
        ),
        (
            "huge declared image size",
            "/v2/models/model/classify",
            png(20_000, 20_000, None, &[]),
            400,
            "request body",
        ),
    ];
    for (what, path, body, status, needle) in cases {
        let r = srv.request("POST", path, &[], &body);
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.error().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            r.error()
        );
        srv.assert_live(what);
    }
    assert_eq!(srv.get("/v2/models/nope").status, 404);

    // A body over the limit: refused by its Content-Length, before it is sent.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let r = response(&mut s);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("limit"), "{}", r.error());
    srv.assert_live("a body over the limit");

    // A body over the limit with no Content-Length (chunked): refused while it is read, with
    // 413 rather than a hang or a 500. The client keeps sending until the server stops reading.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {infer} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 << 10];
        // 40 chunks of 64 KiB: 2.5 MiB against the 1 MiB limit.
        for _ in 0..40 {
            let sent = write!(w, "{:x}\r\n", chunk.len())
                .and_then(|()| w.write_all(&chunk))
                .and_then(|()| w.write_all(b"\r\n"));
            if sent.is_err() {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let r = response(&mut s);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("limit"), "{}", r.error());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a chunked body over the limit took {:?}",
        start.elapsed()
    );
    drop(s);
    sender.join().unwrap();
    srv.assert_live("a chunked body over the limit");

    // A slow-loris body: a byte every 100 ms gets 408 at the 1 s request timeout.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let start = Instant::now();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            if w.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let r = response(&mut s);
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    trickle.join().unwrap();
    srv.assert_live("a slow-loris body");

    // A slow-loris head: headers never finished; the connection is closed at the timeout.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {infer} HTTP/1.1\r\nHost: x\r\n").unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "head timeout took {:?}",
        start.elapsed()
    );
    srv.assert_live("a slow-loris head");

    let metrics = String::from_utf8(srv.get("/metrics").body).unwrap();
    assert!(metrics.contains("code=\"400\""), "{metrics}");
    let stderr = read(&srv.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn concurrent_requests_are_batched_with_their_own_results() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--max-delay-ms", "300", "--max-batch", "16"]);
    let clf = Classifier::load(dir.path().join("model.onnx")).unwrap();
    let clients = 8;
    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || {
                    let data = images(1 + i % 2, 10 + i);
                    let r = srv.post_json("/v2/models/model/infer", &infer_body(1 + i % 2, &data));
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    (data, logits_of(&r.json()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (data, got) in &results {
        close(got, &clf.logits_for_input(data).unwrap().concat());
    }
    let metrics = String::from_utf8(srv.get("/metrics").body).unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in\n{metrics}"))
    };
    let runs = value("sc_batch_size_count{model=\"model\"}");
    let images = value("sc_batch_size_sum{model=\"model\"}");
    assert_eq!(images, 12.0, "{metrics}");
    assert!(
        runs < clients as f64,
        "{clients} requests ran as {runs} batches:\n{metrics}"
    );
    assert!(
        value("sc_batch_size_bucket{model=\"model\",le=\"1\"}") < runs,
        "{metrics}"
    );
}

#[test]
fn a_full_queue_answers_503_and_the_server_carries_on() {
    // The smallest queue and batch the CLI allows, and a model slow enough (a 1x1 convolution
    // from 256 channels to 256 over 32x32 pixels: ~67 M multiply-adds a run, against a 12 KiB
    // request) that the worker is still busy with one request when the next ones come: a burst
    // of requests, each written whole before the next, arrives much faster than the worker takes
    // them, so all but the one running and the one queued are refused. Bursts are repeated (a
    // few at most) only in case a loaded machine spread one out.
    const C: usize = 3;
    const S: usize = 32;
    const W: i64 = 256;
    let graph = pb::GraphProto {
        name: "wide".into(),
        node: vec![
            node(
                "Conv",
                &["image", "w1", "b1"],
                "x1",
                vec![ints("kernel_shape", &[1, 1])],
            ),
            node("Relu", &["x1"], "x2", vec![]),
            node(
                "Conv",
                &["x2", "w2", "b2"],
                "x3",
                vec![ints("kernel_shape", &[1, 1])],
            ),
            node(
                "ReduceMean",
                &["x3"],
                "x4",
                vec![ints("axes", &[2, 3]), int("keepdims", 0)],
            ),
            node("Gemm", &["x4", "fc.w", "fc.b"], "logits", vec![]),
        ],
        initializer: vec![
            tensor("w1", &[W, C as i64, 1, 1], &vec![0.01; W as usize * C]),
            tensor("b1", &[W], &vec![0.0; W as usize]),
            tensor("w2", &[W, W, 1, 1], &vec![0.001; (W * W) as usize]),
            tensor("b2", &[W], &vec![0.0; W as usize]),
            tensor("fc.w", &[W, 3], &vec![0.1; W as usize * 3]),
            tensor("fc.b", &[3], &[0.0, 1.0, 2.0]),
        ],
        input: vec![value_info(
            "image",
            &[D::P("batch"), D::N(3), D::N(S as i64), D::N(S as i64)],
        )],
        output: vec![value_info("logits", &[D::P("batch"), D::N(3)])],
        ..Default::default()
    };
    let onnx = model(graph, &our_metadata(C, S, &RGB)).encode_to_vec();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with(
        dir.path(),
        &onnx,
        &[
            "--max-batch",
            "1",
            "--max-queue",
            "1",
            "--max-body-mb",
            "4",
            "--timeout-ms",
            "60000",
        ],
    );
    let data: Vec<f32> = (0..C * S * S).map(|i| (i % 97) as f32 / 97.0).collect();
    let header = json!({
        "inputs": [{"name": "image", "shape": [1, C, S, S], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    let head = format!(
        "POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\nInference-Header-Content-Length: {}\r\n\r\n",
        body.len(),
        header.len()
    );
    let burst = 12;
    let mut refused = 0;
    let mut answered = 0;
    for round in 0..4 {
        let mut conns: Vec<TcpStream> = (0..burst)
            .map(|_| {
                let s = TcpStream::connect(&srv.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                s
            })
            .collect();
        for s in &mut conns {
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        }
        for s in &mut conns {
            let r = response(s);
            match r.status {
                200 => {
                    assert_eq!(r.json()["outputs"][0]["shape"], json!([1, 3]));
                    answered += 1;
                }
                503 => {
                    assert!(
                        r.error().contains("queue is full"),
                        "503 for another reason: {:?}",
                        r.error()
                    );
                    refused += 1;
                }
                other => panic!(
                    "round {round}: {other} is neither 200 nor 503: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        eprintln!("round {round}: {answered} answered, {refused} refused so far");
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "no 503 in {answered} answers");
    assert!(answered > 0, "every request refused");

    // The server carries on: the next request (the queue is empty again) runs.
    srv.assert_live("a full queue");
    let r = srv.request(
        "POST",
        "/v2/models/model/infer",
        &[("Inference-Header-Content-Length", &header.len().to_string())],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let metrics = String::from_utf8(srv.get("/metrics").body).unwrap();
    for needle in [
        format!("sc_requests_total{{endpoint=\"infer\",code=\"503\"}} {refused}"),
        "sc_queue_depth{model=\"model\"} 0".to_string(),
    ] {
        assert!(metrics.contains(&needle), "{needle} not in\n{metrics}");
    }
    let stderr = read(&srv.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigterm_finishes_accepted_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), &["--max-delay-ms", "700", "--max-batch", "64"]);
    let addr = srv.addr.clone();
    let pending: Vec<_> = (0..4)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let data = images(1, 20 + i);
                let body = infer_body(1, &data).to_string();
                request(
                    &addr,
                    "POST",
                    "/v2/models/model/infer",
                    &[],
                    body.as_bytes(),
                )
                .status
            })
        })
        .collect();
    // The requests are queued (the batch waits 700 ms for more) when the signal comes.
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for p in pending {
        assert_eq!(p.join().unwrap(), 200, "{}", read(&srv.stderr));
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", read(&srv.stderr));
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting after shutdown"
    );
}

/// `sc-runtime serve ARGS` that must fail before serving: its exit code and stderr (killed, and
/// the test failed, if it is still running after 20 s).
fn serve_fails(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sc-runtime"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts sc-runtime serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve {args:?} is still running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked at"), "{args:?}: {err}");
    (out.status.code(), err)
}

/// Bad flags: a value out of range is exit 1 naming the flag; what the argument parser refuses
/// (not a number, an unknown flag) is its usage error, exit 2, naming the flag; a port already
/// taken is exit 1 naming the address. Never a signal or a panic.
#[test]
fn flag_errors_name_the_flag_and_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = Tiny::ours(3, SIZE, &RGB).write(dir.path(), "model.onnx");
    let m = model.to_str().unwrap();
    for (flag, value) in [
        ("--max-batch", "0"),
        ("--max-queue", "0"),
        ("--threads", "0"),
        ("--max-body-mb", "0"),
        ("--timeout-ms", "0"),
        ("--max-delay-ms", "20000"),
    ] {
        let (code, err) = serve_fails(&["--port", "0", flag, value, m]);
        assert_eq!(code, Some(1), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    for (args, flag) in [
        (["--port", "70000", m], "--port"),
        (["--port", "http", m], "--port"),
        (["--max-batch", "lots", m], "--max-batch"),
        (["--max-batch=-3", "--threads=2", m], "--max-batch"),
        (["--no-such-flag", "1", m], "--no-such-flag"),
    ] {
        let (code, err) = serve_fails(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = serve_fails(&["--port", &port, m]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// Two models under one name (given twice, or two files with the same stem) are refused, naming
/// the name; a model file that is not there is refused naming the file.
#[test]
fn duplicate_names_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("x")).unwrap();
    std::fs::create_dir(d.join("y")).unwrap();
    let a = Tiny::ours(3, SIZE, &RGB).write(&d.join("x"), "model.onnx");
    let b = Tiny::ours(3, SIZE, &RGB).write(&d.join("y"), "model.onnx");
    let (a, b) = (a.display().to_string(), b.display().to_string());
    for models in [[format!("m={a}"), format!("m={b}")], [a.clone(), b.clone()]] {
        let name = models[0].split('=').next().unwrap();
        let name = if name == a { "model" } else { name };
        let (code, err) = serve_fails(&["--port", "0", &models[0], &models[1]]);
        assert_eq!(code, Some(1), "{models:?}: {err}");
        assert!(
            err.contains(&format!("two models are named '{name}'")),
            "{models:?}: {err}"
        );
    }
    let missing = d.join("gone.onnx").display().to_string();
    for spec in [missing.clone(), format!("other={missing}")] {
        let (code, err) = serve_fails(&["--port", "0", &a, &spec]);
        assert_eq!(code, Some(1), "{spec}: {err}");
        assert!(err.contains(&missing), "{spec}: {err}");
    }
}

/// Two different models served at once: each request is answered by the model its URL names,
/// with that model's own logits (as a local `Classifier` computes them), while requests to both
/// are in flight together.
#[test]
fn two_models_each_answer_their_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = Tiny::ours(3, SIZE, &RGB);
    let mut second = Tiny::ours(3, SIZE, &["cyan", "magenta", "yellow"]);
    second.weight = vec![-2.0, 1.5, 0.5, 3.0, -1.0, 0.25, 0.75, 2.5, -3.5];
    second.bias = vec![0.5, -1.0, 2.0];
    let pa = first.write(d, "first.onnx");
    let pb = second.write(d, "second.onnx");
    let local = |p: &Path| Classifier::load(p).unwrap();
    let (ca, cb) = (local(&pa), local(&pb));
    let data = images(2, 5);
    let (wa, wb) = (
        ca.logits_for_input(&data).unwrap().concat(),
        cb.logits_for_input(&data).unwrap().concat(),
    );
    assert!(
        wa.iter().zip(&wb).all(|(x, y)| (x - y).abs() > 1e-3),
        "the two models must differ: {wa:?} vs {wb:?}"
    );
    let srv = Server::start_models(
        d,
        &["--max-delay-ms", "50"],
        &[
            pa.display().to_string(),
            format!("renamed={}", pb.display()),
        ],
    );
    assert_eq!(srv.get("/v2/models/first").json()["name"], "first");
    assert_eq!(srv.get("/v2/models/renamed").json()["name"], "renamed");
    assert_eq!(srv.get("/v2/models/second").status, 404);
    let srv = &srv;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (name, want) = if i % 2 == 0 {
                    ("first", &wa)
                } else {
                    ("renamed", &wb)
                };
                let data = &data;
                s.spawn(move || {
                    let r =
                        srv.post_json(&format!("/v2/models/{name}/infer"), &infer_body(2, data));
                    assert_eq!(
                        r.status,
                        200,
                        "{name}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    let v = r.json();
                    assert_eq!(v["model_name"], name);
                    close(&logits_of(&v), want);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    srv.assert_live("requests to two models");
}

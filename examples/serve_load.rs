//! Load test for `sc-runtime serve` (scripts/bench-serve.sh runs it), and the same images through
//! `Classifier::classify_batch` in-process, for the server's overhead as a ratio.
//!
//! Run: cargo run --release --example serve_load -- http ADDR MODEL_NAME CLIENTS SECONDS
//!      cargo run --release --example serve_load -- inproc MODEL.onnx THREADS SECONDS
//! Each HTTP client keeps one connection and POSTs one PNG image at a time to
//! /v2/models/MODEL_NAME/classify until SECONDS have passed. Prints one JSON line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A 32x32 RGB image as PNG bytes (the client's payload; the in-process run decodes the same).
fn png_image() -> Vec<u8> {
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes a PNG");
    out.into_inner()
}

/// One request on a kept-alive connection; the status code.
fn post(conn: &mut BufReader<TcpStream>, path: &str, body: &[u8]) -> Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes())?;
    conn.get_mut().write_all(body)?;
    let (mut line, mut len) = (String::new(), 0usize);
    conn.read_line(&mut line)?;
    let status = line.split(' ').nth(1).context("no status")?.parse()?;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    conn.read_exact(&mut vec![0; len])?;
    Ok(status)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let png = png_image();
    let (mut lat, images, secs, errors) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["http", addr, model, clients, seconds] => {
            let (clients, seconds): (usize, f64) = (clients.parse()?, seconds.parse()?);
            let path = format!("/v2/models/{model}/classify");
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(seconds);
            let per_client: Vec<Result<(Vec<f64>, usize)>> = std::thread::scope(|s| {
                let run = || -> Result<(Vec<f64>, usize)> {
                    let mut conn = BufReader::new(TcpStream::connect(addr)?);
                    conn.get_ref().set_nodelay(true)?;
                    let (mut lat, mut errors) = (Vec::new(), 0);
                    while Instant::now() < end {
                        let t = Instant::now();
                        match post(&mut conn, &path, &png) {
                            Ok(200) => lat.push(t.elapsed().as_secs_f64()),
                            _ => {
                                errors += 1;
                                conn = BufReader::new(TcpStream::connect(addr)?);
                            }
                        }
                    }
                    Ok((lat, errors))
                };
                let hs: Vec<_> = (0..clients).map(|_| s.spawn(run)).collect();
                hs.into_iter().map(|h| h.join().expect("client thread")).collect()
            });
            let (mut lat, mut errors) = (Vec::new(), 0);
            for r in per_client {
                let (l, e) = r?;
                lat.extend(l);
                errors += e;
            }
            let n = lat.len();
            (lat, n, start.elapsed().as_secs_f64(), errors)
        }
        ["inproc", model, threads, seconds] => {
            let clf = sc_runtime::Classifier::load(model)?.with_threads(threads.parse()?);
            let img = sc_runtime::decode_image(&png, "png")?;
            let batch = vec![img.clone(); 64];
            let seconds: f64 = seconds.parse()?;
            // Batch-1 latency (one image per call), then throughput in batches of 64.
            let (mut lat, start) = (Vec::new(), Instant::now());
            while start.elapsed().as_secs_f64() < seconds / 2.0 {
                let t = Instant::now();
                clf.classify(&img, 3)?;
                lat.push(t.elapsed().as_secs_f64());
            }
            let (mut images, start) = (0, Instant::now());
            while start.elapsed().as_secs_f64() < seconds / 2.0 {
                images += clf.classify_batch(&batch, 3)?.len();
            }
            (lat, images, start.elapsed().as_secs_f64(), 0)
        }
        _ => bail!("usage: serve_load http ADDR MODEL_NAME CLIENTS SECONDS | inproc MODEL.onnx THREADS SECONDS"),
    };
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"images_per_s\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"errors\": {errors}}}",
        images as f64 / secs,
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.99) * 1e3
    );
    Ok(())
}

//! `data fetch` against a loopback HTTP server started here, serving tiny archives made here:
//! a good download, a truncated one then resumed, a checksum mismatch, a 404 and a stalled server.
//! Nothing leaves the machine.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sc_data::dataset::{Dataset, Split};
use sc_trainer::fetch::{fetch, md5_of, FetchPlan, Remote};

/// What the server does with the next request.
#[derive(Clone, Copy)]
enum Reply {
    /// 200 with the body (206 with the rest when the request has a Range).
    Serve,
    /// Announce the whole length, send this many bytes, close.
    Truncate(usize),
    NotFound,
    /// Send the headers and this many bytes, then nothing for 10 s.
    Stall(usize),
}

struct Server {
    base: String,
    /// The Range header of each request seen ("" when none).
    ranges: Arc<Mutex<Vec<String>>>,
}

/// Serves `body` under any path, replying to the n-th request with `replies[n]` (the last one
/// repeating).
fn serve(body: Vec<u8>, replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let reply = replies[n.min(replies.len() - 1)];
            let range = handle(stream, &body, reply);
            seen.lock().unwrap().push(range);
        }
    });
    Server { base, ranges }
}

fn handle(mut stream: TcpStream, body: &[u8], reply: Reply) -> String {
    let mut range = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').to_string();
        }
    }
    let head = |status: &str, len: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n{extra}Connection: close\r\n\r\n")
    };
    let _ = match reply {
        Reply::Serve => match range.parse::<usize>() {
            Ok(from) if from < body.len() => {
                let extra = format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                stream
                    .write_all(head("206 Partial Content", body.len() - from, &extra).as_bytes())
                    .and_then(|_| stream.write_all(&body[from..]))
            }
            _ => stream
                .write_all(head("200 OK", body.len(), "").as_bytes())
                .and_then(|_| stream.write_all(body)),
        },
        Reply::Truncate(n) => stream
            .write_all(head("200 OK", body.len(), "").as_bytes())
            .and_then(|_| stream.write_all(&body[..n])),
        Reply::NotFound => stream.write_all(head("404 Not Found", 0, "").as_bytes()),
        Reply::Stall(n) => {
            let r = stream
                .write_all(head("200 OK", body.len(), "").as_bytes())
                .and_then(|_| stream.write_all(&body[..n]))
                .and_then(|_| stream.flush());
            std::thread::sleep(Duration::from_secs(10));
            r
        }
    };
    range
}

/// A tiny CIFAR-10 archive in the official layout (3 test images, 1 per training batch).
fn archive(dir: &Path) -> Vec<u8> {
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| (i * 7 + label as usize) as u8));
        r
    };
    let test: Vec<u8> = [record(1), record(2), record(3)].concat();
    let batch = record(4);
    let mut members: Vec<(String, &[u8])> = (1..=5)
        .map(|b| {
            (
                format!("cifar-10-batches-bin/data_batch_{b}.bin"),
                &batch[..],
            )
        })
        .collect();
    members.push(("cifar-10-batches-bin/test_batch.bin".into(), &test));
    let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let path = dir.join("made.tar.gz");
    sc_data::archive::write_tar_gz(&path, &refs).unwrap();
    std::fs::read(path).unwrap()
}

fn plan(server: &Server, dir: &Path, md5: String) -> FetchPlan {
    FetchPlan {
        base_url: server.base.clone(),
        files: vec![Remote {
            file: "cifar-10-binary.tar.gz".into(),
            md5,
        }],
        dir: dir.to_path_buf(),
        read_timeout: Duration::from_millis(500),
        progress: false,
    }
}

fn md5(tmp: &Path, bytes: &[u8]) -> String {
    let p = tmp.join("for-md5");
    std::fs::write(&p, bytes).unwrap();
    md5_of(&p).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn good_download_is_verified_and_readable_then_not_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(tmp.path());
    let server = serve(body.clone(), vec![Reply::Serve]);
    let dir = tmp.path().join("cifar10");
    let p = plan(&server, &dir, md5(tmp.path(), &body));
    let got = fetch(&p).unwrap();
    assert_eq!(got, vec![dir.join("cifar-10-binary.tar.gz")]);
    assert_eq!(names(&dir), ["cifar-10-binary.tar.gz"]);
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    let test = Dataset::open(&dir, Split::Test).unwrap();
    assert_eq!(test.labels, [1, 2, 3]);
    assert_eq!(Dataset::open(&dir, Split::Train).unwrap().len(), 5);
    fetch(&p).unwrap();
    assert_eq!(
        server.ranges.lock().unwrap().len(),
        1,
        "a verified file is not fetched again"
    );
}

#[test]
fn truncated_download_is_kept_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(tmp.path());
    let half = body.len() / 2;
    let server = serve(body.clone(), vec![Reply::Truncate(half), Reply::Serve]);
    let dir = tmp.path().join("d");
    let p = plan(&server, &dir, md5(tmp.path(), &body));
    let e = format!("{:#}", fetch(&p).unwrap_err());
    assert!(e.contains("resume"), "{e}");
    assert_eq!(names(&dir), ["cifar-10-binary.tar.gz.part"]);
    assert_eq!(
        std::fs::read(dir.join("cifar-10-binary.tar.gz.part")).unwrap(),
        body[..half]
    );
    fetch(&p).unwrap();
    assert_eq!(
        *server.ranges.lock().unwrap(),
        ["".to_string(), half.to_string()]
    );
    assert_eq!(names(&dir), ["cifar-10-binary.tar.gz"]);
    assert_eq!(
        std::fs::read(dir.join("cifar-10-binary.tar.gz")).unwrap(),
        body
    );
}

#[test]
fn checksum_mismatch_is_refused_and_nothing_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(tmp.path());
    let server = serve(body, vec![Reply::Serve]);
    let dir = tmp.path().join("d");
    let e = format!(
        "{:#}",
        fetch(&plan(&server, &dir, "0".repeat(32))).unwrap_err()
    );
    assert!(
        e.contains("checksum mismatch") && e.contains("cifar-10-binary.tar.gz"),
        "{e}"
    );
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
}

#[test]
fn not_found_is_an_error_naming_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(Vec::new(), vec![Reply::NotFound]);
    let dir = tmp.path().join("d");
    let e = format!(
        "{:#}",
        fetch(&plan(&server, &dir, "0".repeat(32))).unwrap_err()
    );
    assert!(e.contains("404") && e.contains(&server.base), "{e}");
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
}

#[test]
fn stalled_server_times_out_and_keeps_what_came() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(tmp.path());
    let server = serve(body.clone(), vec![Reply::Stall(100)]);
    let dir = tmp.path().join("d");
    let start = Instant::now();
    let e = format!(
        "{:#}",
        fetch(&plan(&server, &dir, md5(tmp.path(), &body))).unwrap_err()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        e.contains("stopped after 100 bytes") && e.contains("resume"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.join("cifar-10-binary.tar.gz.part")).unwrap(),
        body[..100]
    );
}

#[test]
fn command_line_refuses_a_mirror_serving_other_bytes() {
    // The tiny archive is not the published one: the official MD5 refuses it.
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(archive(tmp.path()), vec![Reply::Serve]);
    let dir = tmp.path().join("d");
    for by_env in [false, true] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sc-trainer"));
        cmd.args([
            "data",
            "fetch",
            "cifar10",
            "--quiet",
            "--timeout",
            "2",
            "--dir",
        ])
        .arg(&dir);
        if by_env {
            cmd.env("SC_DATA_MIRROR", &server.base);
        } else {
            cmd.env_remove("SC_DATA_MIRROR")
                .args(["--url", &server.base]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "a clean error exit: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("checksum mismatch") && err.contains("c32a1d4ab5d03f1284b67883e8d87530"),
            "{err}"
        );
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }
    assert_eq!(server.ranges.lock().unwrap().len(), 2);
}

/// The hash every download is checked with, against published MD5 answers (RFC 1321's test
/// suite and the usual pangram), on files written here: the other tests take their expected MD5
/// from the same function, so only this one would notice it being wrong.
#[test]
fn md5_of_gives_the_known_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty", vec![], "d41d8cd98f00b204e9800998ecf8427e"),
        ("abc", b"abc".to_vec(), "900150983cd24fb0d6963f7d28e17f72"),
        (
            "fox",
            b"The quick brown fox jumps over the lazy dog".to_vec(),
            "9e107d9d372bb6826bd81d3542a419d6",
        ),
        // Longer than any read buffer: the hash runs over the whole file.
        (
            "million-a",
            vec![b'a'; 1_000_000],
            "7707d6ae4e027c70eea2a935c2296f21",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(md5_of(&p).unwrap(), want, "{name}");
    }
}

/// A file already under its final name whose content is not the published one (a corrupt or
/// foreign file) is refused with its path and both MD5s, never reported as verified; it is left
/// as it was for the user to look at, and nothing is downloaded over it.
#[test]
fn a_corrupt_file_already_there_is_refused_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(tmp.path());
    let want = md5(tmp.path(), &body);
    let server = serve(body.clone(), vec![Reply::Serve]);
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    // The same length, one byte flipped.
    let mut corrupt = body.clone();
    corrupt[body.len() / 2] ^= 0x55;
    let path = dir.join("cifar-10-binary.tar.gz");
    std::fs::write(&path, &corrupt).unwrap();
    let got = md5(tmp.path(), &corrupt);
    let e = format!(
        "{:#}",
        fetch(&plan(&server, &dir, want.clone())).unwrap_err()
    );
    assert!(
        e.contains(&path.display().to_string()) && e.contains(&got) && e.contains(&want),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), corrupt);
    assert_eq!(names(&dir), ["cifar-10-binary.tar.gz"]);
    assert!(server.ranges.lock().unwrap().is_empty(), "nothing fetched");
    // Removed, as the message says, the next run downloads and verifies it.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        fetch(&plan(&server, &dir, want)).unwrap(),
        vec![path.clone()]
    );
    assert_eq!(std::fs::read(&path).unwrap(), body);
}

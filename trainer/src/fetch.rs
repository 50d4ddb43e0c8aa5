//! `sc-trainer data fetch`: the official archives, downloaded from their canonical addresses (or a
//! mirror), checked against their published MD5s and left where `fit` and `eval` read them.
//!
//! Each file goes to `NAME.part` first; a `.part` left by an interrupted run is resumed with an
//! HTTP `Range` request. Only a file whose checksum matches is renamed to `NAME`: a mismatching
//! one is deleted, a short one (the connection broke or stalled) is kept for the next run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use md5::{Digest, Md5};

/// The environment variable that replaces every data set's base URL (a mirror, for offline sites).
pub const MIRROR_ENV: &str = "SC_DATA_MIRROR";

/// One file of a data set and its published MD5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub file: String,
    pub md5: String,
}

/// The data sets `data fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Known {
    Cifar10,
    Cifar100,
    Mnist,
    FashionMnist,
}

impl Known {
    /// The canonical base URL (the files' names are appended).
    pub fn base_url(self) -> &'static str {
        match self {
            // The publisher's page: https://www.cs.toronto.edu/~kriz/cifar.html
            Known::Cifar10 | Known::Cifar100 => "https://www.cs.toronto.edu/~kriz/",
            // yann.lecun.com no longer serves the files; torchvision's maintained mirror does.
            Known::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist/",
            // Zalando's own bucket (https://github.com/zalandoresearch/fashion-mnist#get-the-data).
            Known::FashionMnist => "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        }
    }

    /// The files and their MD5s, as published: CIFAR's on the page above; MNIST's and
    /// Fashion-MNIST's as torchvision lists them (torchvision/datasets/mnist.py, `MNIST.resources`
    /// and `FashionMNIST.resources`; Fashion-MNIST's also in Zalando's README).
    pub fn files(self) -> Vec<Remote> {
        let list: &[(&str, &str)] = match self {
            Known::Cifar10 => &[("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")],
            Known::Cifar100 => &[(
                "cifar-100-binary.tar.gz",
                "03b5dce01913d631647c71ecec9e9cb8",
            )],
            Known::Mnist => &[
                (
                    "train-images-idx3-ubyte.gz",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ],
            Known::FashionMnist => &[
                (
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ],
        };
        list.iter()
            .map(|(file, md5)| Remote {
                file: file.to_string(),
                md5: md5.to_string(),
            })
            .collect()
    }

    /// The folder name in the data home (`cifar10`, `fashion-mnist`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Known::Cifar10 => "cifar10",
            Known::Cifar100 => "cifar100",
            Known::Mnist => "mnist",
            Known::FashionMnist => "fashion-mnist",
        }
    }

    /// Where the files go by default: `$SC_DATA_DIR/cifar10`, ... (the data home,
    /// [`sc_data::named::data_root`]).
    pub fn default_dir(self) -> anyhow::Result<PathBuf> {
        Ok(sc_data::named::default_dir(self.name())?)
    }
}

/// A validated download: what to fetch, from where, to where.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    pub base_url: String,
    pub files: Vec<Remote>,
    pub dir: PathBuf,
    /// A read that waits longer than this fails (the `.part` stays for the next run).
    pub read_timeout: Duration,
    pub progress: bool,
}

impl FetchPlan {
    /// The plan for a known data set; `url` (else [`MIRROR_ENV`], else the canonical address)
    /// is the base URL.
    pub fn known(
        set: Known,
        dir: Option<PathBuf>,
        url: Option<String>,
        read_timeout: Duration,
    ) -> anyhow::Result<FetchPlan> {
        let base = url
            .or_else(|| std::env::var(MIRROR_ENV).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| set.base_url().to_string());
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            bail!("base URL {base:?} must start with https:// or http://");
        }
        if read_timeout.is_zero() {
            bail!("--timeout must be more than 0 seconds");
        }
        Ok(FetchPlan {
            base_url: base,
            files: set.files(),
            dir: match dir {
                Some(d) => d,
                None => set.default_dir()?,
            },
            read_timeout,
            progress: true,
        })
    }

    fn url(&self, file: &str) -> String {
        if self.base_url.ends_with('/') {
            format!("{}{file}", self.base_url)
        } else {
            format!("{}/{file}", self.base_url)
        }
    }
}

/// Downloads every file of the plan that is not already there and verified; returns their paths.
pub fn fetch(plan: &FetchPlan) -> anyhow::Result<Vec<PathBuf>> {
    let created = !plan.dir.exists();
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("creating {}", plan.dir.display()))?;
    let got = fetch_into(plan);
    // A directory this call made and left empty (the server could not be reached) would look
    // like a fetched set to short names: it goes. One holding a `.part` stays, to resume.
    if got.is_err() && created {
        let _ = std::fs::remove_dir(&plan.dir);
    }
    got
}

fn fetch_into(plan: &FetchPlan) -> anyhow::Result<Vec<PathBuf>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(plan.read_timeout)
        .timeout_read(plan.read_timeout)
        .build();
    let mut out = Vec::new();
    for remote in &plan.files {
        let path = plan.dir.join(&remote.file);
        if path.exists() {
            let got = md5_of(&path)?;
            if got != remote.md5 {
                bail!(
                    "{}: already there but its MD5 is {got}, not the published {}; remove it to download it again",
                    path.display(),
                    remote.md5
                );
            }
        } else {
            download(&agent, plan, remote, &path)?;
        }
        out.push(path);
    }
    Ok(out)
}

fn download(
    agent: &ureq::Agent,
    plan: &FetchPlan,
    remote: &Remote,
    path: &Path,
) -> anyhow::Result<()> {
    let url = plan.url(&remote.file);
    let part = path.with_file_name(format!("{}.part", remote.file));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(&url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let (response, append) = match request.call() {
        Ok(r) if r.status() == 206 && have > 0 => (Some(r), true),
        Ok(r) => (Some(r), false),
        // The .part already holds the whole file: go on to check it.
        Err(ureq::Error::Status(416, _)) if have > 0 => (None, true),
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: HTTP {code} {}", r.status_text())
        }
        // ureq names the URL in its message.
        Err(e) => bail!("{e}"),
    };
    if let Some(response) = response {
        let length: Option<u64> = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        let start = if append { have } else { 0 };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .with_context(|| format!("opening {}", part.display()))?;
        let bar = progress_bar(
            plan.progress,
            &remote.file,
            length.map(|l| start + l),
            start,
        );
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    bar.abandon();
                    file.flush().ok();
                    bail!(
                        "{url}: the download stopped after {} bytes ({e}); {} is kept: run the same command again to resume",
                        start + got,
                        part.display()
                    );
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("writing {}", part.display()))?;
            got += n as u64;
            bar.inc(n as u64);
        }
        file.sync_all()
            .with_context(|| format!("writing {}", part.display()))?;
        bar.finish_and_clear();
        if let Some(l) = length {
            if got < l {
                bail!(
                    "{url}: the server sent {got} of {l} bytes; {} is kept: run the same command again to resume",
                    part.display()
                );
            }
        }
    }
    let got = md5_of(&part)?;
    if got != remote.md5 {
        std::fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
        bail!(
            "{url}: checksum mismatch: MD5 {got}, expected {}; the download was deleted (a wrong or \
             corrupt file, or a mirror serving something else)",
            remote.md5
        );
    }
    std::fs::rename(&part, path)
        .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
    Ok(())
}

fn progress_bar(show: bool, name: &str, total: Option<u64>, start: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(name.to_string());
    bar.set_position(start);
    bar
}

/// The lowercase hex MD5 of a file.
pub fn md5_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

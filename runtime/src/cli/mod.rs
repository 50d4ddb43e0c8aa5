//! The `sc-runtime` command: arguments are checked and turned into a plan before any model is
//! loaded, then each command is a few library calls and a report.

mod args;
mod report;
#[cfg(feature = "serve")]
mod serve;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use args::Cli;
use args::{Command, PreArgs, RunArgs};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sc_runtime::bench::{self, BenchOptions};
use sc_runtime::{Classifier, ModelInfo, Preprocessing};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { model, json } => {
            let info = ModelInfo::read(&model)?;
            // Which executor would run it and why (a load: tract's plan, the native graph's
            // check and timing), and the kernels' instruction set.
            let executor = match Classifier::load_raw(&model) {
                Ok(clf) => clf.executor().to_string(),
                Err(e) => format!("(cannot run: {e})"),
            };
            report::info(&info, &executor, json)
        }
        Command::Eval {
            model,
            data,
            limit,
            json,
            skip_bad_images,
            run,
            pre,
        } => {
            let pre = preprocessing(&pre)?;
            check_run(&run)?;
            let clf = load(&model, pre, &run, false)?;
            let mut dataset = clf
                .open_test_set(&data, skip_bad_images)
                .with_context(|| format!("reading the test set {}", data.display()))?;
            if let Some(n) = limit {
                if n == 0 {
                    bail!("--limit must be at least 1");
                }
                dataset.truncate(n);
            }
            let bar = progress_bar(dataset.len(), json);
            let eval = clf
                .evaluate_with_progress(&dataset, &|done| bar.set_position(done as u64))
                .with_context(|| format!("evaluating {} on {}", model.display(), data.display()))?;
            bar.finish_and_clear();
            report::eval(&clf, &eval, json)
        }
        Command::Predict {
            model,
            images,
            top_k,
            json,
            run,
            pre,
        } => {
            if top_k == 0 {
                bail!("--top-k must be at least 1");
            }
            let pre = preprocessing(&pre)?;
            check_run(&run)?;
            let clf = load(&model, pre, &run, false)?;
            let decoded = images
                .iter()
                .map(|p| sc_runtime::load_image(p).context("reading an image"))
                .collect::<Result<Vec<_>>>()?;
            let results = clf
                .classify_batch(&decoded, top_k)
                .with_context(|| format!("classifying with {}", model.display()))?;
            report::predict(&images, &results, json)
        }
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
        Command::Quantize {
            model,
            data,
            out,
            images,
            calibration,
            percentile,
            keep_float,
            json,
            pre,
        } => {
            use sc_runtime::quantize::{self, Calibration, QuantizeOptions};
            let calibration = match calibration.as_str() {
                "minmax" => Calibration::MinMax,
                "percentile" => Calibration::Percentile(percentile),
                other => bail!("--calibration {other:?}: expected minmax or percentile"),
            };
            let out = out.unwrap_or_else(|| quantize::default_out(&model));
            let same = match (std::fs::canonicalize(&model), std::fs::canonicalize(&out)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if same {
                bail!(
                    "--out {} is the model itself; write the int8 model elsewhere",
                    out.display()
                );
            }
            let pre = preprocessing(&pre)?;
            let opts = QuantizeOptions {
                images,
                calibration,
                keep_float,
            };
            let q = quantize::quantize_file(&model, pre, &data, &opts)
                .with_context(|| format!("quantizing {}", model.display()))?;
            std::fs::write(&out, &q.bytes).with_context(|| format!("writing {}", out.display()))?;
            let float_bytes = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
            report::quantize(&out, float_bytes, &q, json)
        }
        Command::Bench {
            model,
            batch,
            seconds,
            json,
            run,
            pre,
        } => {
            if batch.is_empty() || batch.contains(&0) {
                bail!("--batch needs positive batch sizes, got {batch:?}");
            }
            if !(seconds.is_finite() && seconds >= 0.0) {
                bail!("--seconds must be a non-negative number, got {seconds}");
            }
            let pre = preprocessing(&pre)?;
            check_run(&run)?;
            let clf = load(&model, pre, &run, true)?;
            let opts = BenchOptions {
                batch_sizes: batch,
                min_seconds: seconds,
                ..Default::default()
            };
            let results = bench::run(&clf, &opts)
                .with_context(|| format!("benchmarking {}", model.display()))?;
            report::bench(&clf, &results, json)
        }
    }
}

fn check_run(run: &RunArgs) -> Result<()> {
    if run.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if run.chunk == Some(0) {
        bail!("--chunk must be at least 1");
    }
    Ok(())
}

/// Loads the model the way the flags say: ours, foreign with preprocessing, or (bench) raw.
fn load(model: &Path, pre: Option<Preprocessing>, run: &RunArgs, raw: bool) -> Result<Classifier> {
    let clf = match pre {
        Some(p) => Classifier::load_with(model, p).context("loading the model"),
        None if raw => Classifier::load_raw(model).context("loading the model"),
        None => Classifier::load(model)
            .context("loading the model (a foreign model needs --mean, --std and --classes)"),
    }?;
    let clf = clf
        .with_threads(run.threads.unwrap_or_else(sc_runtime::default_threads))
        .with_tta(run.tta);
    Ok(match run.chunk {
        Some(c) => clf.with_chunk(c),
        None => clf,
    })
}

/// The foreign-model flags as a `Preprocessing`; `None` when none is given.
fn preprocessing(a: &PreArgs) -> Result<Option<Preprocessing>> {
    let any = a.mean.is_some() || a.std.is_some() || a.classes.is_some();
    if !any {
        if a.input_size.is_some() || a.pixel_range.is_some() {
            bail!("--input-size and --pixel-range describe a foreign model: give --mean, --std and --classes too");
        }
        return Ok(None);
    }
    let (Some(mean), Some(std), Some(classes)) = (&a.mean, &a.std, &a.classes) else {
        bail!("a foreign model needs all of --mean, --std and --classes (got only some of them)");
    };
    let mut p = Preprocessing::new(mean.clone(), std.clone(), class_names(classes)?);
    if let Some(s) = &a.input_size {
        p.input_size = Some(parse_size(s)?);
    }
    if let Some(r) = &a.pixel_range {
        let [lo, hi] = r[..] else {
            bail!("--pixel-range takes two numbers LO,HI, got {}", r.len());
        };
        p.pixel_range = [lo, hi];
    }
    Ok(Some(p))
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(h, w)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)));
    match parsed {
        Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => bail!("--input-size {s:?}: expected HxW in pixels, e.g. 32x32"),
    }
}

fn class_names(spec: &str) -> Result<Vec<String>> {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let names = match spec.trim() {
        "cifar10" => owned(&sc_runtime::data::CIFAR10_CLASSES),
        "fashion-mnist" => owned(&sc_runtime::data::FASHION_MNIST_CLASSES),
        "mnist" => (0..10).map(|i| i.to_string()).collect(),
        s if s.starts_with('@') => {
            let path = PathBuf::from(&s[1..]);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading class names from {}", path.display()))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        }
        s => match s.parse::<usize>() {
            Ok(n) => (0..n).map(|i| i.to_string()).collect(),
            Err(_) => s.split(',').map(|c| c.trim().to_string()).collect(),
        },
    };
    if names.is_empty() || names.iter().any(String::is_empty) {
        bail!("--classes {spec:?}: no class names, or an empty one");
    }
    Ok(names)
}

/// A progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
fn progress_bar(len: usize, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

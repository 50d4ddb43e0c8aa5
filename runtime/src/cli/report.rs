//! What the commands print: aligned text for people, one JSON document with `--json`.

use std::path::PathBuf;

use anyhow::Result;
use sc_runtime::bench::BenchResult;
use sc_runtime::{Classifier, Evaluation, ModelInfo, Prediction, TensorInfo};
use serde::Serialize;

/// Confusion matrices with more classes than this are left to `--json`.
const MAX_PRINTED_CLASSES: usize = 20;

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn info(info: &ModelInfo, executor: &str, json: bool) -> Result<()> {
    let kernels = sc_kernels::micro::describe();
    if json {
        let mut value = serde_json::to_value(info)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("executor".into(), executor.into());
            map.insert("kernels".into(), kernels.into());
        }
        return print_json(&value);
    }
    let tensor = |t: &TensorInfo| {
        let shape = t.shape.as_ref().map_or("(no shape)".to_string(), |s| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", dims.join(", "))
        });
        format!("{} {} {}", t.name, t.element_type, shape)
    };
    println!("file        {}", info.path.display());
    println!("producer    {}", info.producer);
    println!("ir / opset  {} / {}", info.ir_version, info.opset);
    for i in &info.inputs {
        println!("input       {}", tensor(i));
    }
    for o in &info.outputs {
        println!("output      {}", tensor(o));
    }
    println!(
        "weights     {} tensors, {} values",
        info.initializers, info.weights
    );
    let ops: Vec<String> = info
        .op_counts
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!("ops         {}", ops.join(", "));
    if info.metadata.is_empty() {
        println!("metadata    (none: a foreign model needs --mean, --std and --classes)");
    }
    for (k, v) in &info.metadata {
        println!("metadata    {k} = {v}");
    }
    match sc_runtime::quantize::Record::of(info) {
        Ok(Some(r)) => println!("int8        {}", int8_summary(&r)),
        Ok(None) => {}
        Err(e) => println!("int8        (unreadable record: {e})"),
    }
    println!("executor    {executor}");
    println!("kernels     {kernels}");
    Ok(())
}

pub fn eval(clf: &Classifier, e: &Evaluation, json: bool) -> Result<()> {
    if json {
        return print_json(e);
    }
    println!("model     {}", clf.path().display());
    println!("executor  {}", clf.executor());
    if e.tta == sc_runtime::Tta::Flip {
        println!("tta       flip (each image and its mirror, logits averaged)");
    }
    println!("data      {} ({} images)", e.dataset, e.images);
    println!(
        "accuracy  {:.2}% ({} / {})",
        100.0 * e.accuracy,
        e.correct,
        e.images
    );
    println!(
        "speed     {:.0} images/s ({:.2} s, {} threads, {} images per run)",
        e.images_per_second, e.seconds, e.threads, e.chunk
    );
    let width = e
        .per_class
        .iter()
        .map(|c| c.class.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("\nper class:");
    for c in &e.per_class {
        println!(
            "  {:<width$}  {:>6.2}%  ({} / {})",
            c.class,
            100.0 * c.accuracy,
            c.correct,
            c.total
        );
    }
    let k = e.confusion.len();
    if k > MAX_PRINTED_CLASSES {
        println!("\nconfusion matrix: {k} classes, see --json");
        return Ok(());
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted class, in class order):");
    let cell = e
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(3);
    for (row, c) in e.confusion.iter().zip(&e.per_class) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>cell$}")).collect();
        println!("  {:<width$}  {}", c.class, cells.join(" "));
    }
    Ok(())
}

pub fn predict(paths: &[PathBuf], results: &[Vec<Prediction>], json: bool) -> Result<()> {
    if json {
        #[derive(Serialize)]
        struct Item<'a> {
            image: &'a PathBuf,
            predictions: &'a [Prediction],
        }
        let items: Vec<Item> = (paths.iter().zip(results))
            .map(|(image, p)| Item {
                image,
                predictions: p,
            })
            .collect();
        return print_json(&items);
    }
    for (path, preds) in paths.iter().zip(results) {
        println!("{}", path.display());
        for p in preds {
            println!(
                "  {:>6.2}%  {} ({})",
                100.0 * p.probability,
                p.class,
                p.index
            );
        }
    }
    Ok(())
}

pub fn bench(clf: &Classifier, results: &[BenchResult], json: bool) -> Result<()> {
    if json {
        return print_json(&results);
    }
    let i = clf.input();
    println!(
        "model {} (input {}x{}x{}), {} threads, {} images per run",
        clf.path().display(),
        i.channels,
        i.height,
        i.width,
        clf.threads(),
        clf.chunk()
    );
    println!("executor {}", clf.executor());
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>9}",
        "batch", "images/s", "p50 ms", "p99 ms", "requests"
    );
    for r in results {
        println!(
            "{:>6} {:>12.1} {:>10.3} {:>10.3} {:>9}",
            r.batch, r.images_per_second, r.latency_ms_p50, r.latency_ms_p99, r.requests
        );
    }
    Ok(())
}

/// One line on an int8 model: format, calibration, and the layers that stayed float.
fn int8_summary(r: &sc_runtime::quantize::Record) -> String {
    let method = match r.percentile {
        Some(p) => format!("{} {p}", r.method),
        None => r.method.clone(),
    };
    let float = if r.float_layers.is_empty() {
        "every Conv/Gemm is int8".to_string()
    } else {
        let l: Vec<String> = (r.float_layers.iter())
            .map(|f| format!("{} {} ({})", f.op, f.node, f.reason))
            .collect();
        format!("float layers: {}", l.join("; "))
    };
    format!(
        "{} ({method} on {} training images of {}); {} nodes quantized, {} BatchNorms folded; {float}",
        r.format.to_uppercase(),
        r.images,
        r.data,
        r.quantized_nodes,
        r.folded_batchnorms
    )
}

pub fn quantize(
    out: &std::path::Path,
    float_bytes: u64,
    q: &sc_runtime::quantize::Quantized,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({
            "out": out,
            "float_bytes": float_bytes,
            "int8_bytes": q.bytes.len(),
            "quantization": q.record,
            "agreement": q.agreement,
            "compared_images": q.compared,
            "max_logit_diff": q.max_logit_diff,
        }));
    }
    println!("wrote       {}", out.display());
    println!(
        "size        {:.2} MB (float {:.2} MB, {:.2}x smaller)",
        q.bytes.len() as f64 / 1e6,
        float_bytes as f64 / 1e6,
        float_bytes as f64 / q.bytes.len().max(1) as f64
    );
    println!("int8        {}", int8_summary(&q.record));
    println!(
        "agreement   {:.2}% top-1 with the float model on {} calibration images (tract), largest logit difference {:.3}",
        100.0 * q.agreement,
        q.compared,
        q.max_logit_diff
    );
    Ok(())
}

//! Embedding sc-runtime in an app: load a model once, share it between threads, classify images.
//!
//! Run: cargo run --release --example classify -- model.onnx cat.png dog.jpg
//! A foreign model (no sc.* metadata) needs its preprocessing, e.g. for a CIFAR-10 ResNet:
//!   cargo run --release --example classify -- resnet.onnx --cifar10 cat.png

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sc_runtime::{data::CIFAR10_CLASSES, Classifier, Preprocessing};

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cifar10 = args
        .iter()
        .position(|a| a == "--cifar10")
        .map(|i| args.remove(i));
    let Some((model, images)) = args.split_first() else {
        bail!("usage: classify MODEL.onnx [--cifar10] IMAGE...");
    };

    // Load and optimize once. Our models carry their classes and preprocessing in the file.
    let classifier = match cifar10 {
        None => Classifier::load(model),
        Some(_) => Classifier::load_with(
            model,
            Preprocessing::new(
                vec![0.4914, 0.4822, 0.4465],
                vec![0.2470, 0.2435, 0.2616],
                CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
            ),
        ),
    }
    .with_context(|| format!("loading {model}"))?;
    let classifier = Arc::new(classifier);

    // One thread per image, all sharing the same loaded model (Classifier is Send + Sync).
    let handles: Vec<_> = images
        .iter()
        .cloned()
        .map(|path| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || -> Result<String> {
                let image = sc_runtime::load_image(path.as_ref())?;
                let top = classifier.classify(&image, 3)?;
                let shown: Vec<String> = top
                    .iter()
                    .map(|p| format!("{} {:.1}%", p.class, 100.0 * p.probability))
                    .collect();
                Ok(format!("{path}: {}", shown.join(", ")))
            })
        })
        .collect();
    for h in handles {
        println!("{}", h.join().expect("classifier thread")?);
    }
    Ok(())
}

//! Shared test harness: small data sets in the real formats, and tiny configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sc_data::dataset::write;
use sc_trainer::config::TrainConfig;
use sc_trainer::schedule::Schedule;

/// A learnable IDX data set (1 x size x size): class k is a bright horizontal bar at row band k
/// (plus noise), so a tiny ResNet separates the classes within tens of iterations.
pub fn make_idx(dir: &Path, n: usize, size: usize, classes: u8, seed: u64) -> PathBuf {
    let mut images = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    for i in 0..n {
        let c = (i % classes as usize) as u8;
        labels.push(c);
        let band = size / classes as usize;
        for y in 0..size {
            for _x in 0..size {
                let on = y / band.max(1) == c as usize;
                let base: u32 = if on { 200 } else { 30 };
                images.push((base + rnd() % 50) as u8);
            }
        }
    }
    write::idx(
        &dir.join("train-images-idx3-ubyte.gz"),
        &dir.join("train-labels-idx1-ubyte.gz"),
        size,
        size,
        &images,
        &labels,
    )
    .unwrap();
    dir.to_path_buf()
}

/// A CIFAR-10 directory with `per_file` records in each of the five training batches.
pub fn make_cifar(dir: &Path, per_file: usize) -> PathBuf {
    for b in 1..=5 {
        let recs: Vec<(u8, Vec<u8>)> = (0..per_file)
            .map(|i| {
                let c = ((i + b) % 10) as u8;
                let px = (0..3072)
                    .map(|p| ((p / 1024) as u8 * 40).wrapping_add(c * 20) ^ (i as u8))
                    .collect();
                (c, px)
            })
            .collect();
        write::cifar10(&dir.join(format!("data_batch_{b}.bin")), &recs).unwrap();
    }
    dir.to_path_buf()
}

/// A small, fast config: ResNet-8 (n = 1), constant-ish one cycle.
pub fn tiny_config(data: &Path, iterations: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.name = "resnet8".into();
    c.data.path = data.to_path_buf();
    c.data.val_size = 40;
    c.data.pad = 1;
    c.batch_size = 16;
    c.iterations = Some(iterations);
    c.epochs = None;
    c.eval_every = 5;
    c.schedule = Schedule::paper_one_cycle(0.02, 0.2);
    c
}

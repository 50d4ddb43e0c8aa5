//! Image folders, two recipes for the folder benchmark (scripts/bench-folder.sh) and for users who
//! want to see the format:
//!
//! - `write CIFAR_DIR OUT [--size S] [--quality Q] [--split train|test]`: writes a CIFAR-10
//!   binary split as `OUT/<class>/<index>.jpg` (JPEG quality Q, default 95; images resized to
//!   S x S first when S is not 32, e.g. 96 to exercise the downsampling stem).
//! - `decode DIR [--size S]`: decodes a folder into its cache from scratch (the cache is removed
//!   first) with every core, then reads it back from the cache; prints both times.
//!
//! ```text
//! cargo run --release --example image_folder -- write cifar10-train /tmp/cifar-jpeg   # after sc-trainer data fetch cifar10
//! cargo run --release --example image_folder -- decode /tmp/cifar-jpeg
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sc_runtime::data::{Dataset, Split};
use sc_runtime::folder::{open_folder, FolderOptions, Part, CACHE_FOLDER};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn write(cifar: &Path, out: &Path, size: u32, quality: u8, split: Split) -> Result<()> {
    let ds = Dataset::open(cifar, split)?;
    if (ds.channels, ds.height, ds.width) != (3, 32, 32) {
        bail!("{}: expected 3x32x32 CIFAR images", cifar.display());
    }
    let started = Instant::now();
    for i in 0..ds.len() {
        let px = ds.image(i);
        let img = sc_runtime::data_images::from_planar(px, 32, 32);
        let img = if size == 32 {
            img
        } else {
            image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle)
        };
        let class = &ds.class_names[ds.labels[i] as usize];
        let path = out.join(class).join(format!("{i:05}.jpg"));
        std::fs::create_dir_all(path.parent().unwrap())?;
        let file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| path.display().to_string())?,
        );
        image::codecs::jpeg::JpegEncoder::new_with_quality(file, quality)
            .encode_image(&img)
            .with_context(|| path.display().to_string())?;
    }
    println!(
        "wrote {} JPEG images ({size}x{size}, quality {quality}) of {} classes to {} in {:.1} s",
        ds.len(),
        ds.num_classes(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn decode(dir: &Path, size: u32) -> Result<()> {
    let cache = dir.join(CACHE_FOLDER);
    if cache.exists() {
        std::fs::remove_dir_all(&cache)?;
    }
    let opts = FolderOptions {
        image_size: size,
        ..FolderOptions::default()
    };
    let (ds, cold) = open_folder(dir, Part::Train, &opts, &|_, _| {})?;
    let (again, warm) = open_folder(dir, Part::Train, &opts, &|_, _| {})?;
    assert!(warm.from_cache && again.len() == ds.len());
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    println!(
        "decode_seconds={:.2} cache_read_seconds={:.3} images={} size={size} threads={threads} cache={}",
        cold.seconds,
        warm.seconds,
        ds.len(),
        cold.cache.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: u32 = flag(&args, "--size").map_or(Ok(32), |s| s.parse())?;
    match args.first().map(String::as_str) {
        Some("write") if args.len() >= 3 => {
            let quality: u8 = flag(&args, "--quality").map_or(Ok(95), |s| s.parse())?;
            let split = match flag(&args, "--split").as_deref() {
                None | Some("train") => Split::Train,
                Some("test") => Split::Test,
                Some(s) => bail!("--split {s}: expected train or test"),
            };
            write(
                Path::new(&args[1]),
                &PathBuf::from(&args[2]),
                size,
                quality,
                split,
            )
        }
        Some("decode") if args.len() >= 2 => decode(Path::new(&args[1]), size),
        _ => bail!(
            "usage: image_folder write CIFAR_DIR OUT [--size S] [--quality Q] [--split train|test] | decode DIR [--size S]"
        ),
    }
}

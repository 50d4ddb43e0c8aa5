//! The training data pipeline: validation split, class-balanced subsets, normalization statistics,
//! augmentation, and batches prepared on a background thread.
//!
//! Every batch is a pure function of `(seed, iteration)`: the epoch's order comes from a generator
//! seeded by `(seed, epoch)` and each image's crop and flip from one seeded by `(seed, iteration)`.
//! A resumed run therefore sees exactly the batches an uninterrupted one would, with no RNG state
//! to save.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use sc_data::dataset::{Dataset, Split};
use sc_data::folder;
use sc_models::Normalization;

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A CIFAR-10/100 binary directory or file, or a directory of (Fashion-)MNIST IDX files.
    pub path: PathBuf,
    /// Train on a seeded, class-balanced subset of this many images (the paper's 10k…40k runs);
    /// absent: everything not held out for validation.
    #[serde(default = "data_defaults::train_size")]
    pub train_size: Option<usize>,
    /// Images held out of the training set for validation (default 5000).
    #[serde(default = "data_defaults::val_size")]
    pub val_size: usize,
    /// Seed of the validation split, kept apart from the training seed so that runs with different
    /// seeds are validated on the same images.
    #[serde(default = "data_defaults::split_seed")]
    pub split_seed: u64,
    /// Which images are held out: `random` (drawn with `split_seed`) or `last` (the last
    /// `val_size` images in file order: for CIFAR-10 with 5000, the end of `data_batch_5`, the
    /// split many PyTorch CIFAR scripts use). Left out of a serialized config when `random`.
    #[serde(
        default = "data_defaults::val_split",
        skip_serializing_if = "ValSplit::is_random"
    )]
    pub val_split: ValSplit,
    /// Random crop after zero padding by `pad` pixels.
    #[serde(default = "data_defaults::crop")]
    pub crop: bool,
    /// Padding of the random crop, in pixels (4 for CIFAR, 2 for 28x28).
    #[serde(default = "data_defaults::pad")]
    pub pad: usize,
    /// Random horizontal flip.
    #[serde(default = "data_defaults::flip")]
    pub flip: bool,
    /// Image folders only: the side every image is fitted to (shorter side resized, centre
    /// square cut out; default 32). Left out of a serialized config when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Image folders only: go on without files that are not images or do not decode (they are
    /// listed). Left out of a serialized config when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_bad_images: bool,
}

impl Default for DataConfig {
    /// No path yet (a file must give one; the command line's `--data` sets it); every image not
    /// held out trains; 5000 random validation images; CIFAR's augmentation (pad 4, crop, flip).
    fn default() -> Self {
        DataConfig {
            path: PathBuf::new(),
            train_size: None,
            val_size: 5000,
            split_seed: 0,
            val_split: ValSplit::Random,
            crop: true,
            pad: 4,
            flip: true,
            image_size: None,
            skip_bad_images: false,
        }
    }
}

field_defaults!(data_defaults for DataConfig {
    train_size: Option<usize>,
    val_size: usize,
    split_seed: u64,
    val_split: ValSplit,
    crop: bool,
    pad: usize,
    flip: bool,
});
// image_size and skip_bad_images default to None / false (plain serde defaults).

/// How the validation images are chosen ([`DataConfig::val_split`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValSplit {
    #[default]
    Random,
    Last,
}

impl ValSplit {
    pub fn is_random(&self) -> bool {
        *self == ValSplit::Random
    }
}

impl std::str::FromStr for ValSplit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(ValSplit::Random),
            "last" => Ok(ValSplit::Last),
            _ => Err(format!(
                "unknown validation split {s:?}: use random or last"
            )),
        }
    }
}

fn mix(a: u64, b: u64, c: u64) -> u64 {
    // SplitMix64 over the three words: distinct streams for distinct (seed, tag, index).
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The prepared splits.
pub struct Splits {
    pub train: Arc<Dataset>,
    pub val: Dataset,
    pub normalization: Normalization,
}

impl DataConfig {
    /// Reads the training set and splits it; the message names the file on failure. An image
    /// folder with a `val/` folder is validated on it; otherwise `val_size` images are held out.
    pub fn load(&self) -> anyhow::Result<Splits> {
        if folder::is_image_folder(&self.path) {
            return self.load_folder();
        }
        self.refuse_folder_options()?;
        let all = Dataset::open(&self.path, Split::Train)?;
        self.split(all)
    }

    /// True when the data is a folder of images (which exports `sc.preprocess`).
    pub fn is_image_folder(&self) -> bool {
        folder::is_image_folder(&self.path)
    }

    /// The test split, for `test_eval`: a folder's `test/` (never its training or validation
    /// images), else the data set's own test split.
    pub fn load_test(&self) -> anyhow::Result<Dataset> {
        if folder::is_image_folder(&self.path) {
            let layout = folder::layout(&self.path)?;
            if layout.test.is_none() {
                anyhow::bail!(
                    "{}: no test/ folder to evaluate on (test_eval needs DIR/test/<class>/...)",
                    self.path.display()
                );
            }
            return self.open_folder(folder::Part::Test);
        }
        Ok(Dataset::open(&self.path, Split::Test)?)
    }

    fn refuse_folder_options(&self) -> anyhow::Result<()> {
        if self.image_size.is_some() || self.skip_bad_images {
            anyhow::bail!(
                "{}: --image-size and --skip-bad-images are for folders of images (DIR/<class>/*), and this is not one",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Reads one part of an image folder, decoding it once into the cache (with a progress bar
    /// on a terminal) and saying what it skipped.
    pub fn open_folder(&self, part: folder::Part) -> anyhow::Result<Dataset> {
        let opts = folder::FolderOptions {
            image_size: self.image_size.unwrap_or(32),
            skip_bad_images: self.skip_bad_images,
            ..folder::FolderOptions::default()
        };
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "decoding {pos}/{len} images [{bar:30}] {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let (ds, load) = folder::open_folder(&self.path, part, &opts, &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        if let Some(note) = &load.cache_note {
            eprintln!("note: {note}");
        }
        if !load.skipped.is_empty() {
            eprintln!(
                "skipped {} files that are not images or do not decode (--skip-bad-images):",
                load.skipped.len()
            );
            for (p, why) in load.skipped.iter().take(20) {
                eprintln!("  {}: {why}", p.display());
            }
            if load.skipped.len() > 20 {
                eprintln!("  ... and {} more", load.skipped.len() - 20);
            }
        }
        eprintln!(
            "{}: {} images of {} classes, {}x{}, {} in {:.1} s ({})",
            ds.source,
            ds.len(),
            ds.num_classes(),
            ds.width,
            ds.height,
            if load.from_cache {
                "read from the cache"
            } else {
                "decoded"
            },
            load.seconds,
            load.cache.display()
        );
        Ok(ds)
    }

    fn load_folder(&self) -> anyhow::Result<Splits> {
        let all = self.open_folder(folder::Part::Train)?;
        if folder::layout(&self.path)?.val.is_none() {
            return self.split(all);
        }
        let val = self.open_folder(folder::Part::Val)?;
        let train = match self.train_size {
            None => all,
            Some(0) => anyhow::bail!("train_size must be at least 1"),
            Some(k) if k > all.len() => anyhow::bail!(
                "{}: train_size {k} is more than its {} training images",
                all.source,
                all.len()
            ),
            Some(k) => {
                let mut pool: Vec<usize> = (0..all.len()).collect();
                pool.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.split_seed, 1, 0)));
                all.subset(&balanced_subset(&all, &pool, k))
            }
        };
        let normalization = channel_stats(&train);
        Ok(Splits {
            train: Arc::new(train),
            val,
            normalization,
        })
    }

    pub fn split(&self, all: Dataset) -> anyhow::Result<Splits> {
        let n = all.len();
        if self.val_size >= n {
            anyhow::bail!(
                "{}: val_size {} leaves no training images ({} in the set)",
                all.source,
                self.val_size,
                n
            );
        }
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.split_seed, 1, 0));
        let (val_idx, pool) = match self.val_split {
            ValSplit::Random => {
                order.shuffle(&mut rng);
                order.split_at(self.val_size)
            }
            ValSplit::Last => {
                // The pool stays shuffled (train_size subsets draw from it in its order).
                order[..n - self.val_size].shuffle(&mut rng);
                let (pool, val) = order.split_at(n - self.val_size);
                (val, pool)
            }
        };
        let train_idx = match self.train_size {
            None => pool.to_vec(),
            Some(k) if k > pool.len() => anyhow::bail!(
                "{}: train_size {k} is more than the {} images left after holding out {} for validation",
                all.source,
                pool.len(),
                self.val_size
            ),
            Some(0) => anyhow::bail!("train_size must be at least 1"),
            Some(k) => balanced_subset(&all, pool, k),
        };
        let mut val_idx = val_idx.to_vec();
        val_idx.sort_unstable();
        let train = all.subset(&train_idx);
        let val = all.subset(&val_idx);
        let normalization = channel_stats(&train);
        Ok(Splits {
            train: Arc::new(train),
            val,
            normalization,
        })
    }
}

/// What [`write_holdout`] wrote.
#[derive(Debug, Clone)]
pub struct Holdout {
    pub images: usize,
    pub classes: usize,
    pub files: Vec<std::path::PathBuf>,
}

/// Writes the images the run in `run_dir` held out for validation, in a format `sc-runtime eval`
/// reads: CIFAR-10 binary records for CIFAR-10 (`out`, e.g. `val.bin`), an IDX pair for
/// one-channel data (`out` names the images file, `...-images-idx3-ubyte`; the labels go beside
/// it). `data` replaces the run's data path (the same set on another machine). Each file is
/// written atomically.
pub fn write_holdout(
    run_dir: &std::path::Path,
    data: Option<&std::path::Path>,
    out: &std::path::Path,
) -> anyhow::Result<Holdout> {
    let mut cfg = crate::run_dir::read_config(run_dir)?;
    if let Some(d) = data {
        cfg.data.path = d.to_path_buf();
    }
    if cfg.data.is_image_folder() {
        anyhow::bail!(
            "{}: the run trained on a folder of images ({}); evaluate its validation images there \
             (sc-runtime eval reads DIR/val/ directly)",
            run_dir.display(),
            cfg.data.path.display()
        );
    }
    let val = cfg
        .data
        .load()
        .with_context(|| format!("{}: its training data", run_dir.display()))?
        .val;
    let (c, h, w) = (val.channels, val.height, val.width);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let files = if (c, h, w) == (3, 32, 32)
        && val
            .class_names
            .iter()
            .eq(sc_data::dataset::CIFAR10_CLASSES.iter())
    {
        // The readers guess a single file's format from its name: keep it a CIFAR-10 one.
        let lower = name.to_lowercase();
        if lower == "train.bin"
            || lower == "test.bin"
            || lower.contains("100")
            || lower.contains("idx")
            || sc_data::archive::is_archive(out)
        {
            anyhow::bail!(
                "{}: readers would take a file of this name for CIFAR-100, IDX or an archive; \
                 give the CIFAR-10 records another name, e.g. val.bin",
                out.display()
            );
        }
        let bytes = sc_data::dataset::write::cifar10_bytes(&val.images, &val.labels);
        crate::io::write_atomic(out, &bytes)?;
        vec![out.to_path_buf()]
    } else if c == 1 {
        if !name.contains("images-idx3") {
            anyhow::bail!(
                "{}: one-channel data is written as an IDX pair; name the images file \
                 ...-images-idx3-ubyte (its labels go beside it as ...-labels-idx1-ubyte)",
                out.display()
            );
        }
        let labels = out.with_file_name(name.replace("images-idx3", "labels-idx1"));
        let (img, lab) = sc_data::dataset::write::idx_bytes(h, w, &val.images, &val.labels);
        // A pair or nothing: labels without their images would pass for a data set.
        let had_labels = labels.exists();
        crate::io::write_atomic(&labels, &lab)?;
        if let Err(e) = crate::io::write_atomic(out, &img) {
            if !had_labels {
                let _ = std::fs::remove_file(&labels);
            }
            return Err(e);
        }
        vec![out.to_path_buf(), labels]
    } else {
        anyhow::bail!(
            "{}: its data ({}, {c}x{h}x{w}, {} classes) has no file format here that keeps its \
             classes; CIFAR-10 and one-channel (IDX) sets are written",
            run_dir.display(),
            cfg.data.path.display(),
            val.num_classes()
        );
    };
    Ok(Holdout {
        images: val.len(),
        classes: val.num_classes(),
        files,
    })
}

/// `k` images from `pool` (already shuffled), as evenly over the classes as the pool allows.
fn balanced_subset(all: &Dataset, pool: &[usize], k: usize) -> Vec<usize> {
    let classes = all.num_classes();
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &i in pool {
        by_class[all.labels[i] as usize].push(i);
    }
    // Round-robin over the classes in the pool's shuffled order.
    let mut out = Vec::with_capacity(k);
    let mut depth = 0;
    while out.len() < k {
        for c in by_class.iter() {
            if out.len() < k {
                if let Some(&i) = c.get(depth) {
                    out.push(i);
                }
            }
        }
        depth += 1;
    }
    out.sort_unstable();
    out
}

/// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
pub fn channel_stats(d: &Dataset) -> Normalization {
    let plane = d.height * d.width;
    let mut sum = vec![0f64; d.channels];
    let mut sq = vec![0f64; d.channels];
    for i in 0..d.len() {
        for (c, px) in d.image(i).chunks_exact(plane).enumerate() {
            for &p in px {
                let v = p as f64 / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
    }
    let count = (d.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / count - m * m).max(0.0).sqrt().max(1e-3)) as f32)
        .collect();
    Normalization {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        std,
    }
}

/// Normalized float images `[n, C, H, W]` of a whole data set (validation, evaluation).
pub fn normalize_all(d: &Dataset, norm: &Normalization) -> Vec<f32> {
    let plane = d.height * d.width;
    let mut out = Vec::with_capacity(d.images.len());
    for i in 0..d.len() {
        for (c, px) in d.image(i).chunks_exact(plane).enumerate() {
            let (m, s) = (norm.mean[c], norm.std[c]);
            out.extend(px.iter().map(|&p| (p as f32 / 255.0 - m) / s));
        }
    }
    out
}

/// One training batch: normalized images and labels.
pub struct Batch {
    pub iteration: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
}

/// Makes the training batches (deterministically from the seed and iteration).
#[derive(Clone)]
pub struct BatchMaker {
    pub train: Arc<Dataset>,
    pub norm: Normalization,
    pub batch_size: usize,
    pub seed: u64,
    pub crop: bool,
    pub pad: usize,
    pub flip: bool,
    /// `(rank, ranks)`: make only images `rank·b/ranks .. (rank+1)·b/ranks` of each batch of `b`
    /// (a data-parallel rank's slice), with exactly the augmentation the whole batch gives them.
    /// `(0, 1)`: the whole batch.
    pub part: (usize, usize),
}

impl BatchMaker {
    pub fn batches_per_epoch(&self) -> usize {
        (self.train.len() / self.batch_size).max(1)
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            self.seed,
            2,
            epoch as u64,
        )));
        order
    }

    fn make(&self, iteration: usize, order: &[usize]) -> Batch {
        let d = &*self.train;
        let (c, h, w) = (d.channels, d.height, d.width);
        let b = iteration % self.batches_per_epoch();
        let idx = &order[b * self.batch_size..(b + 1) * self.batch_size];
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, 3, iteration as u64));
        let (rank, ranks) = self.part;
        let mine = rank * idx.len() / ranks..(rank + 1) * idx.len() / ranks;
        let mut images = vec![0f32; mine.len() * c * h * w];
        let mut labels = Vec::with_capacity(mine.len());
        for (k, &i) in idx.iter().enumerate() {
            let p = self.pad as isize;
            let (dy, dx) = if self.crop && p > 0 {
                (rng.gen_range(-p..=p), rng.gen_range(-p..=p))
            } else {
                (0, 0)
            };
            let flip = self.flip && rng.gen_bool(0.5);
            // Images before this rank's slice only advance the generator.
            if !mine.contains(&k) {
                continue;
            }
            labels.push(d.labels[i] as u32);
            let k = k - mine.start;
            let src = d.image(i);
            let dst = &mut images[k * c * h * w..(k + 1) * c * h * w];
            for ch in 0..c {
                let (m, s) = (self.norm.mean[ch], self.norm.std[ch]);
                let zero = (0.0 - m) / s; // padding is black, as torchvision pads before normalizing
                for y in 0..h {
                    let sy = y as isize + dy;
                    for x in 0..w {
                        let xx = if flip { w - 1 - x } else { x };
                        let sx = xx as isize + dx;
                        dst[ch * h * w + y * w + x] =
                            if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                zero
                            } else {
                                let p = src[ch * h * w + sy as usize * w + sx as usize];
                                (p as f32 / 255.0 - m) / s
                            };
                    }
                }
            }
        }
        Batch {
            iteration,
            images,
            labels,
        }
    }

    /// The batch of `iteration` (computes the epoch's order; use [`Loader`] in loops).
    pub fn batch(&self, iteration: usize) -> Batch {
        let order = self.epoch_order(iteration / self.batches_per_epoch());
        self.make(iteration, &order)
    }
}

/// Batches `start..end`, prepared ahead on a background thread.
pub struct Loader {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn spawn(maker: BatchMaker, start: usize, end: usize) -> Loader {
        let (tx, rx) = sync_channel(3);
        let handle = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || {
                let mut cached: Option<(usize, Vec<usize>)> = None;
                for it in start..end {
                    let epoch = it / maker.batches_per_epoch();
                    if cached.as_ref().map(|c| c.0) != Some(epoch) {
                        cached = Some((epoch, maker.epoch_order(epoch)));
                    }
                    let order = &cached.as_ref().expect("cached").1;
                    if tx.send(maker.make(it, order)).is_err() {
                        return; // the trainer stopped early
                    }
                }
            })
            .expect("spawn loader thread");
        Loader {
            rx,
            handle: Some(handle),
        }
    }

    pub fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the receiver makes the thread's next send fail and return.
        let (_tx, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        Dataset {
            images: (0..n * 3 * 8 * 8).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
            channels: 3,
            height: 8,
            width: 8,
            class_names: (0..10).map(|i| i.to_string()).collect(),
            source: "toy".into(),
        }
    }

    fn cfg() -> DataConfig {
        DataConfig {
            path: "toy".into(),
            train_size: Some(40),
            val_size: 20,
            split_seed: 0,
            val_split: ValSplit::Random,
            crop: true,
            pad: 2,
            flip: true,
            ..DataConfig::default()
        }
    }

    #[test]
    fn split_is_disjoint_balanced_and_seeded() {
        let s = cfg().split(toy(200)).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (40, 20));
        let mut counts = [0; 10];
        for &l in &s.train.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [4; 10]);
        let again = cfg().split(toy(200)).unwrap();
        assert_eq!(again.val.images, s.val.images);
        let e = DataConfig {
            val_size: 200,
            ..cfg()
        }
        .split(toy(200))
        .err()
        .unwrap();
        assert!(e.to_string().contains("leaves no training images"));
        let e = DataConfig {
            train_size: Some(500),
            ..cfg()
        }
        .split(toy(200))
        .err()
        .unwrap();
        assert!(e.to_string().contains("train_size 500"));
    }

    /// The default (random) split: no validation image is also a training image, with or without
    /// a training subset, and with `train_size` unset the two parts are the whole set.
    #[test]
    fn random_split_is_disjoint() {
        let all = toy(200);
        let per = 3 * 8 * 8;
        assert_eq!(DataConfig::default().val_split, ValSplit::Random);
        for (seed, train_size) in [(0, Some(40)), (0, None), (7, Some(180)), (7, None)] {
            let s = DataConfig {
                split_seed: seed,
                train_size,
                ..cfg()
            }
            .split(all.clone())
            .unwrap();
            assert_eq!(s.val.len(), 20);
            assert_eq!(s.train.len(), train_size.unwrap_or(180));
            // Toy images are all distinct: compare whole images.
            let held: std::collections::HashSet<&[u8]> = s.val.images.chunks(per).collect();
            assert_eq!(held.len(), 20, "validation images repeat");
            let train: std::collections::HashSet<&[u8]> = s.train.images.chunks(per).collect();
            assert_eq!(train.len(), s.train.len(), "training images repeat");
            let shared = train.intersection(&held).count();
            assert_eq!(
                shared, 0,
                "seed {seed}, train_size {train_size:?}: {shared} validation images in training"
            );
            if train_size.is_none() {
                let whole: std::collections::HashSet<&[u8]> = all.images.chunks(per).collect();
                let union: std::collections::HashSet<&[u8]> = train.union(&held).copied().collect();
                assert_eq!(union, whole);
            }
        }
    }

    #[test]
    fn last_split_holds_out_the_end_of_the_file() {
        let all = toy(200);
        let c = DataConfig {
            val_split: ValSplit::Last,
            train_size: None,
            ..cfg()
        };
        let s = c.split(all.clone()).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (180, 20));
        let per = 3 * 8 * 8;
        assert_eq!(s.val.images, all.images[180 * per..]);
        assert_eq!(s.val.labels, all.labels[180..]);
        // No held-out image in training: compare whole images (toy images are all distinct).
        let held: std::collections::HashSet<&[u8]> = s.val.images.chunks(per).collect();
        assert!(s.train.images.chunks(per).all(|im| !held.contains(im)));
        // A random split differs, and the default is not serialized (run names stay the same).
        assert_ne!(cfg().split(all).unwrap().val.images, s.val.images);
        assert!(!serde_json::to_string(&cfg()).unwrap().contains("val_split"));
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains(r#""val_split":"last""#));
    }

    #[test]
    fn batches_are_a_function_of_the_iteration() {
        let s = cfg().split(toy(200)).unwrap();
        let maker = BatchMaker {
            train: s.train.clone(),
            norm: s.normalization.clone(),
            batch_size: 16,
            seed: 7,
            crop: true,
            pad: 2,
            flip: true,
            part: (0, 1),
        };
        let mut loader = Loader::spawn(maker.clone(), 3, 9);
        for it in 3..9 {
            let b = loader.next().unwrap();
            let direct = maker.batch(it);
            assert_eq!(b.iteration, it);
            assert_eq!(b.images, direct.images);
            assert_eq!(b.labels, direct.labels);
            // Ranks' slices, made alone, are the whole batch's pieces, augmentation included.
            let (mut images, mut labels) = (Vec::new(), Vec::new());
            for rank in 0..4 {
                let slice = BatchMaker {
                    part: (rank, 4),
                    ..maker.clone()
                }
                .batch(it);
                assert_eq!(slice.labels.len(), 4);
                images.extend(slice.images);
                labels.extend(slice.labels);
            }
            assert_eq!((images, labels), (direct.images, direct.labels));
        }
        assert!(loader.next().is_none());
        assert_ne!(maker.batch(0).images, maker.batch(1).images);
    }

    #[test]
    fn normalization_statistics() {
        let mut d = toy(2);
        d.images = [vec![0u8; 3 * 64], vec![255u8; 3 * 64]].concat();
        let n = channel_stats(&d);
        assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
        let x = normalize_all(&d, &n);
        assert!((x[0] + 1.0).abs() < 1e-6 && (x[x.len() - 1] - 1.0).abs() < 1e-6);
    }
}

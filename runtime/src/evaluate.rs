//! Accuracy of a classifier on a labelled data set: overall, per class, confusion matrix, speed.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::classifier::Classifier;
use crate::data::Dataset;
use crate::error::{Result, RuntimeError};

/// Accuracy on one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    /// Test images of this class.
    pub total: u64,
    /// Of those, predicted correctly.
    pub correct: u64,
    /// `correct / total` (0 when the class has no image).
    pub accuracy: f64,
}

/// The result of [`Classifier::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Where the data came from.
    pub dataset: String,
    pub images: u64,
    pub correct: u64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
    /// Wall time of preprocessing + inference, in seconds.
    pub seconds: f64,
    pub images_per_second: f64,
    pub threads: usize,
    /// Images per tract run.
    pub chunk: usize,
    /// Test-time augmentation (`flip`: each image and its mirror, logits averaged).
    pub tta: crate::Tta,
}

impl Classifier {
    /// Reads a labelled test set for this model: anything [`Dataset::open`] reads (its test
    /// split; short names like `cifar-test` included), or a folder of images (`test/`, else
    /// `val/`, else every class folder) fitted to the model's input as the trainer fitted them,
    /// its labels matched to the model's classes by name.
    pub fn open_test_set(&self, path: &std::path::Path, skip_bad_images: bool) -> Result<Dataset> {
        use sc_data::folder;
        if !folder::is_image_folder(path) {
            return Ok(Dataset::open(path, crate::data::Split::Test)?);
        }
        let i = self.input();
        let bad = |problem: String| RuntimeError::DatasetMismatch {
            path: path.to_path_buf(),
            problem,
        };
        if i.height != i.width {
            return Err(bad(format!(
                "an image folder is fitted to a square, but the model takes {}x{} images",
                i.height, i.width
            )));
        }
        let opts = folder::FolderOptions {
            image_size: i.height as u32,
            skip_bad_images,
            ..folder::FolderOptions::default()
        };
        let (mut ds, _) = folder::open_folder(path, folder::Part::Test, &opts, &|_, _| {})?;
        // Folder labels are indices into its sorted class names; the model's may differ.
        let to_model: Vec<u8> = ds
            .class_names
            .iter()
            .map(|c| {
                self.classes()
                    .iter()
                    .position(|m| m == c)
                    .map(|p| p as u8)
                    .ok_or_else(|| {
                        bad(format!(
                            "class folder '{c}' is not one of the model's classes ({})",
                            self.classes().join(", ")
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        for l in ds.labels.iter_mut() {
            *l = to_model[*l as usize];
        }
        ds.class_names = self.classes().to_vec();
        if i.channels == 1 {
            // Gray models: the cache holds RGB; convert with the same call `predict` makes.
            let (w, h) = (i.width as u32, i.height as u32);
            let mut gray = Vec::with_capacity(ds.len() * i.height * i.width);
            for k in 0..ds.len() {
                let rgb = sc_data::images::from_planar(ds.image(k), w, h);
                gray.extend_from_slice(image::DynamicImage::ImageRgb8(rgb).to_luma8().as_raw());
            }
            ds.images = gray;
            ds.channels = 1;
        }
        Ok(ds)
    }

    /// Evaluates on the whole data set.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        self.evaluate_with_progress(data, &|_| {})
    }

    /// Evaluates, calling `progress(images_done)` as chunks finish (from worker threads).
    pub fn evaluate_with_progress(
        &self,
        data: &Dataset,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Evaluation> {
        self.check_dataset(data)?;
        let t = &self.transform;
        let started = Instant::now();
        let logits = self.run(
            data.len(),
            |i, out| {
                t.planar_bytes(data.image(i), out);
                Ok(())
            },
            progress,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let k = self.classes().len();
        let predicted = logits.chunks_exact(k).map(argmax);
        let mut confusion = vec![vec![0u64; k]; k];
        for (&label, p) in data.labels.iter().zip(predicted) {
            confusion[label as usize][p] += 1;
        }
        Ok(summarize(self, data, confusion, seconds))
    }

    pub(crate) fn check_dataset(&self, data: &Dataset) -> Result<()> {
        let i = self.input();
        let bad = |problem: String| RuntimeError::DatasetMismatch {
            path: PathBuf::from(&data.source),
            problem,
        };
        if (data.channels, data.height, data.width) != (i.channels, i.height, i.width) {
            return Err(bad(format!(
                "images are {}x{}x{} (CxHxW) but the model {} takes {}x{}x{}",
                data.channels,
                data.height,
                data.width,
                self.path().display(),
                i.channels,
                i.height,
                i.width
            )));
        }
        let k = self.classes().len();
        if let Some(l) = data.labels.iter().find(|&&l| l as usize >= k) {
            return Err(bad(format!(
                "label {l} is out of range for the model's {k} classes ({})",
                self.path().display()
            )));
        }
        if data.is_empty() {
            return Err(bad("no images to evaluate".into()));
        }
        Ok(())
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.total_cmp(&v[best]).is_gt() {
            best = i;
        }
    }
    best
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn summarize(c: &Classifier, data: &Dataset, confusion: Vec<Vec<u64>>, seconds: f64) -> Evaluation {
    let per_class: Vec<ClassAccuracy> = (c.classes().iter().enumerate())
        .map(|(i, name)| {
            let total: u64 = confusion[i].iter().sum();
            let correct = confusion[i][i];
            ClassAccuracy {
                class: name.clone(),
                total,
                correct,
                accuracy: ratio(correct, total),
            }
        })
        .collect();
    let images = data.len() as u64;
    let correct = per_class.iter().map(|p| p.correct).sum();
    Evaluation {
        dataset: data.source.clone(),
        images,
        correct,
        accuracy: ratio(correct, images),
        per_class,
        confusion,
        seconds,
        images_per_second: if seconds > 0.0 {
            images as f64 / seconds
        } else {
            0.0
        },
        threads: c.threads(),
        chunk: c.chunk(),
        tta: c.tta(),
    }
}

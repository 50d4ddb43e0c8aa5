//! [`Classifier`]: a loaded ONNX image classifier that apps embed. Load once, share between threads.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde::Serialize;

use crate::contract::Describe;
use crate::engine::Engine;
use crate::error::{Result, RuntimeError};
use crate::metadata::ModelMetadata;
use crate::model_file::{self, ModelInfo};
use crate::preprocess::{InputDescription, Preprocessing, Transform};
use crate::runner::{self, Parallelism};

/// Images per tract run when many images are classified: batch 1 on a fixed shape is tract's
/// fastest path per image (see docs/PERFORMANCE.md).
pub const DEFAULT_CHUNK: usize = 1;

/// How the native executor lays out a graph's feature maps (see `sc_kernels::blocked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeLayout {
    /// NCHW, convolutions vectorized over pixels.
    Flat,
    /// Blocks of 8 channels with a zero border (NCHWc), convolutions vectorized over channels.
    Blocked,
}

/// Test-time augmentation: what each image is run as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The image as it is.
    #[default]
    None,
    /// The image and its left-right mirror, logits averaged (twice the work).
    Flip,
}

impl std::str::FromStr for Tta {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Tta, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Tta::None),
            "flip" => Ok(Tta::Flip),
            _ => Err(format!(
                "unknown test-time augmentation {s:?}: use none or flip"
            )),
        }
    }
}

/// One class and its softmax probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Index into the model's classes (the logit index).
    pub index: usize,
    pub class: String,
    pub probability: f32,
}

/// A loaded image classifier. `Send + Sync`: one instance serves many threads.
pub struct Classifier {
    info: ModelInfo,
    metadata: Option<ModelMetadata>,
    classes: Vec<String>,
    pub(crate) transform: Transform,
    pub(crate) engine: Engine,
    par: Parallelism,
    tta: Tta,
}

impl Classifier {
    /// Loads one of our models (with `sc.*` metadata) from an ONNX file.
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier> {
        Self::load_file(path.as_ref(), Describe::Ours)
    }

    /// Loads a foreign model (no `sc.*` metadata) with the caller's preprocessing.
    pub fn load_with(path: impl AsRef<Path>, pre: Preprocessing) -> Result<Classifier> {
        Self::load_file(path.as_ref(), Describe::Given(pre))
    }

    /// Loads any model with one float `[N, C, H, W]` input, for speed measurements and raw logits:
    /// our metadata when present, else the graph's fixed C, H, W, pixels in [0, 1] with no
    /// normalization and classes named by index. To classify images with a foreign model, give its
    /// preprocessing with [`Classifier::load_with`] instead.
    pub fn load_raw(path: impl AsRef<Path>) -> Result<Classifier> {
        Self::load_file(path.as_ref(), Describe::Raw)
    }

    /// Loads one of our models from ONNX bytes held in memory (`name` labels errors).
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Classifier> {
        Self::build(Path::new(name), bytes, None, Describe::Ours)
    }

    /// Loads a foreign model from memory with the caller's preprocessing.
    pub fn from_bytes_with(bytes: &[u8], name: &str, pre: Preprocessing) -> Result<Classifier> {
        Self::build(Path::new(name), bytes, None, Describe::Given(pre))
    }

    fn load_file(path: &Path, describe: Describe) -> Result<Classifier> {
        let bytes = model_file::read_bytes(path)?;
        let dir = path.parent().and_then(Path::to_str);
        Self::build(path, &bytes, dir, describe)
    }

    fn build(
        path: &Path,
        bytes: &[u8],
        dir: Option<&str>,
        describe: Describe,
    ) -> Result<Classifier> {
        let proto = model_file::decode(path, bytes)?;
        let info = ModelInfo::from_proto(path, &proto);
        let metadata = ModelMetadata::from_props(path, &info.metadata)?;
        let mut resolved = crate::contract::resolve(&info, metadata.as_ref(), &describe)?;
        let i = &resolved.input;
        let chw = [i.channels, i.height, i.width];
        let engine = Engine::new(path, &proto, dir, chw, resolved.fixed_batch)?;
        if resolved.classes.is_empty() {
            resolved.classes = (0..engine.classes()).map(|i| i.to_string()).collect();
        }
        if engine.classes() != resolved.classes.len() {
            let problem = format!(
                "{} class names for a graph output of {} logits",
                resolved.classes.len(),
                engine.classes()
            );
            return Err(match metadata {
                Some(_) => RuntimeError::Metadata {
                    path: path.to_path_buf(),
                    key: crate::metadata::keys::CLASSES.into(),
                    problem,
                },
                None => RuntimeError::Preprocessing {
                    path: path.to_path_buf(),
                    problem,
                },
            });
        }
        Ok(Classifier {
            info,
            metadata,
            classes: resolved.classes,
            transform: Transform::new(resolved.input),
            engine,
            par: Parallelism {
                threads: default_threads(),
                chunk: DEFAULT_CHUNK,
            },
            tta: Tta::None,
        })
    }

    /// Which executor runs the model and why: `native ...` (the `sc-kernels` convolutions, used
    /// when its logits agree with tract's on probe inputs and it ran faster than tract's plan in a
    /// short timing at load) or `tract (...)` with the reason. `SC_RUNTIME_ENGINE=tract|native`
    /// in the environment at load time forces one (native still only after the check).
    pub fn executor(&self) -> &str {
        self.engine.note()
    }

    /// Runs this model on tract's own executor even where the native one applies (for
    /// comparisons; results agree within float rounding).
    pub fn with_tract(mut self) -> Self {
        self.engine.use_tract();
        self
    }

    /// Runs this model on the native executor even where tract's plan timed faster at load (for
    /// comparisons). An error, with the reason, when the graph did not compile for it or did not
    /// agree with tract.
    pub fn with_native(mut self) -> Result<Self> {
        self.engine
            .use_native()
            .map_err(|why| RuntimeError::InvalidArgument(format!("no native executor: {why}")))?;
        Ok(self)
    }

    /// Runs the native executor's graph in this layout (default: the faster of the two, timed at
    /// load; `SC_RUNTIME_LAYOUT` sets it for a process). An error, with the reason, when the
    /// native executor does not run this model, or the graph has no blocked form.
    pub fn with_layout(mut self, layout: NativeLayout) -> Result<Self> {
        self.engine
            .use_layout(layout == NativeLayout::Blocked)
            .map_err(|why| RuntimeError::InvalidArgument(format!("no {layout:?} layout: {why}")))?;
        Ok(self)
    }

    /// Worker threads for batches and evaluation (default: the machine's available cores).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.par.threads = threads.max(1);
        self
    }

    /// Images per tract run (a fixed-shape plan is built per size used; default [`DEFAULT_CHUNK`]).
    /// Ignored when the graph itself fixes the batch size.
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.par.chunk = chunk.max(1);
        self
    }

    /// Test-time augmentation for every result of this classifier (default [`Tta::None`]):
    /// with [`Tta::Flip`] each image runs as itself and mirrored, and the logits are averaged.
    pub fn with_tta(mut self, tta: Tta) -> Self {
        self.tta = tta;
        self
    }

    pub fn tta(&self) -> Tta {
        self.tta
    }

    pub fn threads(&self) -> usize {
        self.par.threads
    }
    pub fn chunk(&self) -> usize {
        self.engine.fixed_batch().unwrap_or(self.par.chunk)
    }

    /// Class names in logit order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// The input the model takes and what the runtime does to pixels to make it.
    pub fn input(&self) -> &InputDescription {
        &self.transform.desc
    }
    /// Our `sc.*` metadata; `None` for a foreign model.
    pub fn metadata(&self) -> Option<&ModelMetadata> {
        self.metadata.as_ref()
    }
    /// Inputs, outputs, all metadata and op counts of the file.
    /// The per-image input shape `[C, H, W]` the graph takes.
    pub(crate) fn input_chw(&self) -> [usize; 3] {
        let i = self.input();
        [i.channels, i.height, i.width]
    }

    /// `Some(n)` when the graph's batch dimension is the fixed number `n`.
    pub(crate) fn fixed_batch(&self) -> Option<usize> {
        self.engine.fixed_batch()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    /// The model's file (or the name given to `from_bytes`).
    pub fn path(&self) -> &Path {
        &self.info.path
    }

    /// The `top_k` most probable classes of one image, most probable first.
    pub fn classify(&self, image: &DynamicImage, top_k: usize) -> Result<Vec<Prediction>> {
        Ok(self.top_k(&self.probabilities(image)?, top_k))
    }

    /// Softmax probabilities of every class for one image.
    pub fn probabilities(&self, image: &DynamicImage) -> Result<Vec<f32>> {
        let logits = self.logits(std::slice::from_ref(image))?;
        Ok(softmax(&logits[0]))
    }

    /// `classify` for many images, run over the worker threads.
    pub fn classify_batch(
        &self,
        images: &[DynamicImage],
        top_k: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        let logits = self.logits(images)?;
        Ok(logits
            .iter()
            .map(|l| self.top_k(&softmax(l), top_k))
            .collect())
    }

    /// Raw logits for each image.
    pub fn logits(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        let fill = |i: usize, out: &mut [f32]| {
            self.transform
                .image(&images[i], out)
                .map_err(|problem| RuntimeError::Image {
                    path: PathBuf::from(format!("image #{i}")),
                    problem,
                })
        };
        let flat = self.run(images.len(), fill, &|_| {})?;
        Ok(self.split(flat))
    }

    /// One image as the graph takes it: `C * H * W` values after colour conversion, resizing and
    /// scaling (what [`Classifier::logits`] feeds the model; see [`Classifier::input`]).
    pub fn preprocess(&self, image: &DynamicImage) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.transform.image_len()];
        self.transform
            .image(image, &mut out)
            .map_err(|problem| RuntimeError::Image {
                path: PathBuf::from("image"),
                problem,
            })?;
        Ok(out)
    }

    /// Logits for input that is already preprocessed: `n` images of `C * H * W` values each,
    /// exactly what the graph takes.
    pub fn logits_for_input(&self, input: &[f32]) -> Result<Vec<Vec<f32>>> {
        let len = self.transform.image_len();
        if !input.len().is_multiple_of(len) {
            return Err(RuntimeError::InvalidArgument(format!(
                "{} input values are not a whole number of {len}-value images",
                input.len()
            )));
        }
        let fill = |i: usize, out: &mut [f32]| {
            out.copy_from_slice(&input[i * len..(i + 1) * len]);
            Ok(())
        };
        let flat = self.run(input.len() / len, fill, &|_| {})?;
        Ok(self.split(flat))
    }

    /// The logits of `n` images (`n * classes` values), each filled by `fill(i, out)` as the graph
    /// takes it, with this classifier's test-time augmentation; `progress` counts images.
    pub(crate) fn run<F>(
        &self,
        n: usize,
        fill: F,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<f32>>
    where
        F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
    {
        let len = self.transform.image_len();
        match self.tta {
            Tta::None => runner::run(&self.engine, self.par, len, n, fill, progress),
            Tta::Flip => {
                // Runs 2n images, each image next to its mirror (j = 2i and 2i + 1).
                // The input is C x H x W: each of its C * H rows is reversed.
                let w = self.input().width;
                let mirrored = |j: usize, out: &mut [f32]| {
                    fill(j / 2, out)?;
                    if j % 2 == 1 {
                        out.chunks_exact_mut(w).for_each(<[f32]>::reverse);
                    }
                    Ok(())
                };
                let both = runner::run(&self.engine, self.par, len, 2 * n, mirrored, &|done| {
                    progress(done / 2)
                })?;
                let k = self.classes.len();
                Ok(both
                    .chunks_exact(2 * k)
                    .flat_map(|pair| (0..k).map(move |c| 0.5 * (pair[c] + pair[k + c])))
                    .collect())
            }
        }
    }

    fn split(&self, flat: Vec<f32>) -> Vec<Vec<f32>> {
        flat.chunks_exact(self.classes.len())
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// The `k` most probable classes of a probability vector, most probable first (ties: lower index).
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                index: i,
                class: self.classes[i].clone(),
                probability: probabilities[i],
            })
            .collect()
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The machine's available cores (1 when unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

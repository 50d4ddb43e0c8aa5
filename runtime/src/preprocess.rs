//! Turning pixels into model input: colour conversion, resizing, scaling to the pixel range and
//! (for foreign models only) the caller's mean/std normalization.

use std::io::{Read, Seek};
use std::path::Path;

use image::{imageops::FilterType, DynamicImage, ImageReader};

use crate::error::{Result, RuntimeError};

pub use sc_data::images::{MAX_IMAGE_ALLOC, MAX_IMAGE_SIDE};

/// How a caller describes the input of a foreign model (one without our `sc.*` metadata).
///
/// Pixels are scaled from bytes to `pixel_range`, then `(x - mean[c]) / std[c]` per channel.
/// The number of channels is `mean.len()` (1 = gray, 3 = RGB).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Per-channel mean, in `pixel_range` units (e.g. `[0.4914, 0.4822, 0.4465]` for CIFAR-10).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, in `pixel_range` units.
    pub std: Vec<f32>,
    /// Class names in logit order; their count must equal the model's output size.
    pub classes: Vec<String>,
    /// Input `(height, width)` in pixels; `None` takes it from the graph's fixed input shape.
    pub input_size: Option<(usize, usize)>,
    /// The values a 0 byte and a 255 byte map to before normalization (default `[0.0, 1.0]`).
    pub pixel_range: [f32; 2],
}

impl Preprocessing {
    /// Mean, std and class names; input size from the graph, pixel range `[0, 1]`.
    pub fn new(mean: Vec<f32>, std: Vec<f32>, classes: Vec<String>) -> Self {
        Preprocessing {
            mean,
            std,
            classes,
            input_size: None,
            pixel_range: [0.0, 1.0],
        }
    }
}

/// The input a loaded classifier expects, and what the runtime does to pixels to make it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputDescription {
    /// Name of the graph input.
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// What a 0 and a 255 byte map to.
    pub pixel_range: [f32; 2],
    /// Mean/std the runtime applies (all 0 / 1 for our models, whose graph normalizes itself).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// How an image of another size is fitted (`sc.preprocess`; stretch when absent).
    pub resize: sc_data::Resize,
}

/// Per-channel affine map byte -> input value, resolved once at load.
#[derive(Debug, Clone)]
pub(crate) struct Transform {
    pub desc: InputDescription,
    scale: Vec<f32>,
    offset: Vec<f32>,
}

impl Transform {
    pub fn new(desc: InputDescription) -> Self {
        let [lo, hi] = desc.pixel_range;
        let scale = desc.std.iter().map(|s| (hi - lo) / 255.0 / s).collect();
        let offset = (desc.mean.iter().zip(&desc.std))
            .map(|(m, s)| (lo - m) / s)
            .collect();
        Transform {
            desc,
            scale,
            offset,
        }
    }

    /// Elements of one input image.
    pub fn image_len(&self) -> usize {
        self.desc.channels * self.desc.height * self.desc.width
    }

    /// Scales planar bytes `[C, H, W]` into `out`.
    pub fn planar_bytes(&self, bytes: &[u8], out: &mut [f32]) {
        let plane = self.desc.height * self.desc.width;
        for c in 0..self.desc.channels {
            let (s, o) = (self.scale[c], self.offset[c]);
            let src = &bytes[c * plane..(c + 1) * plane];
            for (d, &b) in out[c * plane..(c + 1) * plane].iter_mut().zip(src) {
                *d = b as f32 * s + o;
            }
        }
    }

    /// Converts colour (gray for 1 channel, RGB for 3; alpha is dropped), fits the image to the
    /// input size and scales into `out`. Fitting: stretched (bilinear, aspect ratio not kept), or,
    /// for models trained on image folders (`sc.preprocess`), the shorter side resized and the
    /// centre square cut out exactly as the trainer did ([`sc_data::images::fit_square`]).
    /// Errors are plain problem texts.
    pub fn image(&self, img: &DynamicImage, out: &mut [f32]) -> Result<(), String> {
        let (w, h) = (self.desc.width as u32, self.desc.height as u32);
        if img.width() == 0 || img.height() == 0 {
            return Err(format!(
                "empty image ({}x{} pixels)",
                img.width(),
                img.height()
            ));
        }
        let resized;
        let img = if (img.width(), img.height()) == (w, h) {
            img
        } else if self.desc.resize == sc_data::Resize::ShorterSideCenterCrop && w == h {
            resized = DynamicImage::ImageRgb8(sc_data::images::fit_square(img, w)?);
            &resized
        } else {
            resized = img.resize_exact(w, h, FilterType::Triangle);
            &resized
        };
        let plane = (w * h) as usize;
        if self.desc.channels == 1 {
            let gray = img.to_luma8();
            let (s, o) = (self.scale[0], self.offset[0]);
            for (d, &b) in out[..plane].iter_mut().zip(gray.as_raw()) {
                *d = b as f32 * s + o;
            }
        } else {
            let rgb = img.to_rgb8();
            for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = px[c] as f32 * self.scale[c] + self.offset[c];
                }
            }
        }
        Ok(())
    }
}

/// Reads and decodes an image file, refusing sizes above [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_ALLOC`]
/// before allocating pixels. The format is guessed from the content, not the extension.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bad = |problem: String| RuntimeError::Image {
        path: path.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if meta.is_dir() {
        return Err(bad("is a directory, expected an image file".into()));
    }
    let io = |e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Read a byte rather than trust the size: files in /proc report 0 bytes.
    if file.read(&mut [0u8]).map_err(io)? == 0 {
        return Err(bad("empty file, expected an image".into()));
    }
    file.rewind().map_err(io)?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format); // as `ImageReader::open` does; the content decides below
    }
    let reader = reader.with_guessed_format().map_err(io)?;
    decode_limited(reader).map_err(bad)
}

/// Decodes an image held in memory, with the same limits as [`load_image`]; `name` labels errors.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(RuntimeError::Image {
            path: name.into(),
            problem: "empty file, expected an image".into(),
        });
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| RuntimeError::Image {
            path: name.into(),
            problem: e.to_string(),
        })?;
    decode_limited(reader).map_err(|problem| RuntimeError::Image {
        path: name.into(),
        problem,
    })
}

/// sc-data's decoder (size limits, panics caught) with the runtime's panic hook kept quiet.
fn decode_limited<R: std::io::BufRead + std::io::Seek>(
    reader: ImageReader<R>,
) -> Result<DynamicImage, String> {
    crate::guard::catching("the image decoder", || {
        sc_data::images::decode_reader(reader)
    })?
}

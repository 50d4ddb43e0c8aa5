//! Decoding image files and fitting them to a model's square input: one implementation for the
//! trainer's folder cache and the runtime's `predict`/`eval`, so that a photo is prepared exactly
//! as the training images were.
//!
//! Fitting ([`fit_square`]): the shorter side is resized to the target (triangle filter, aspect
//! ratio kept), then the centre square is cut out. Training adds its usual random crop (after
//! padding) and flip on top of that fixed square; evaluation and prediction use it as it is.

use image::{imageops::FilterType, DynamicImage, ImageReader, Limits, RgbImage};

/// Largest width or height of an image file we decode (a 20000x20000 header is refused before any
/// pixel buffer is allocated).
pub const MAX_IMAGE_SIDE: u32 = 12_000;
/// Largest total allocation the decoder may make for one image, in bytes.
pub const MAX_IMAGE_ALLOC: u64 = 512 * 1024 * 1024;

/// File extensions a folder data set's images may have (case-insensitive). Other files in a
/// class folder are reported as non-images.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif"];

/// Decodes an image held in memory, with the size limits above; the error is a plain problem
/// text (the caller names the file). A decoder panic on a hostile file becomes an error.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("empty file, expected an image".into());
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    decode_reader(reader)
}

/// Decodes from a reader whose format is already guessed (or set), with the size limits above.
pub fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    mut reader: ImageReader<R>,
) -> Result<DynamicImage, String> {
    if reader.format().is_none() {
        return Err("not a recognised image format (PNG, JPEG, BMP, GIF, TIFF, WebP)".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())) {
        Ok(r) => r.map_err(|e| format!("cannot decode image: {e}")),
        Err(_) => Err("the image decoder failed on this file (a decoder bug)".into()),
    }
}

/// The image's shorter side resized to `size` (triangle filter, aspect ratio kept), then the
/// centre `size` x `size` square, in RGB.
pub fn fit_square(img: &DynamicImage, size: u32) -> Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(format!("empty image ({w}x{h} pixels)"));
    }
    if size == 0 {
        return Err("the target size is 0 pixels".into());
    }
    let rgb = img.to_rgb8();
    let short = w.min(h) as u64;
    // Rounded, and never below the target on either side.
    let scaled =
        |side: u32| ((side as u64 * size as u64 + short / 2) / short).max(size as u64) as u32;
    let (nw, nh) = (scaled(w), scaled(h));
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw, nh, FilterType::Triangle)
    };
    let (x, y) = ((nw - size) / 2, (nh - size) / 2);
    Ok(image::imageops::crop_imm(&resized, x, y, size, size).to_image())
}

/// Writes an RGB image as planar bytes `[3, H, W]` into `out` (`3 * H * W` long).
pub fn to_planar(rgb: &RgbImage, out: &mut [u8]) {
    let plane = (rgb.width() * rgb.height()) as usize;
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
}

/// Planar bytes `[3, H, W]` as an RGB image (the inverse of [`to_planar`]).
pub fn from_planar(px: &[u8], width: u32, height: u32) -> RgbImage {
    let plane = (width * height) as usize;
    RgbImage::from_fn(width, height, |x, y| {
        let k = (y * width + x) as usize;
        image::Rgb([px[k], px[plane + k], px[2 * plane + k]])
    })
}

/// Whether a file name has one of the [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_square_keeps_the_aspect_and_cuts_the_centre() {
        // 64x32: left half red, right half blue, a green column in the middle.
        let mut img = RgbImage::new(64, 32);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if (30..34).contains(&x) {
                image::Rgb([0, 255, 0])
            } else if x < 32 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            };
        }
        let out = fit_square(&DynamicImage::ImageRgb8(img), 16).unwrap();
        assert_eq!(out.dimensions(), (16, 16));
        // Shorter side 32 -> 16: the 64-wide image becomes 32 wide, the centre 16 columns are
        // kept: red on the left edge, blue on the right, green in the middle.
        assert!(out.get_pixel(0, 8)[0] > 200);
        assert!(out.get_pixel(15, 8)[2] > 200);
        assert!(out.get_pixel(8, 8)[1] > 100 || out.get_pixel(7, 8)[1] > 100);
        // Already the right size: unchanged.
        let same = RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(
            fit_square(&DynamicImage::ImageRgb8(same.clone()), 8).unwrap(),
            same
        );
        // Tall images too; tiny ones are enlarged.
        let tall = DynamicImage::ImageRgb8(RgbImage::new(3, 50));
        assert_eq!(fit_square(&tall, 10).unwrap().dimensions(), (10, 10));
        assert!(fit_square(&DynamicImage::ImageRgb8(RgbImage::new(0, 5)), 4).is_err());
    }

    #[test]
    fn decode_refuses_what_is_not_an_image() {
        assert!(decode(b"").unwrap_err().contains("empty"));
        assert!(decode(b"hello, world")
            .unwrap_err()
            .contains("not a recognised"));
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(4, 3))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode(&png).unwrap().width(), 4);
        assert!(decode(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn planar_layout() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([x as u8, 10 + x as u8, 20 + x as u8])
        });
        let mut out = [0u8; 6];
        to_planar(&img, &mut out);
        assert_eq!(out, [0, 1, 10, 11, 20, 21]);
        assert_eq!(from_planar(&out, 2, 1), img);
    }
}

//! Decoding images and turning them into normalised model inputs. Shared by `embed`,
//! training data loading and `verify --images`.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::RgbImage;

use crate::config::Preprocess;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read image: {msg}")]
    Decode { path: PathBuf, msg: String },
}

/// Decodes any supported format (PNG, JPEG, WebP, BMP); grayscale and alpha become RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ImageError::Decode {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?
        .decode()
        .map_err(|e| ImageError::Decode {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    Ok(img.to_rgb8())
}

/// Evaluation transform: resize so the shorter side is `resize_shorter`, centre-crop to
/// `size x size`.
pub fn eval_transform(img: &RgbImage, resize_shorter: usize, size: usize) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1) as f64;
    let target = resize_shorter.max(size) as f64;
    let nw = ((w as f64 * target / short).round() as u32).max(size as u32);
    let nh = ((h as f64 * target / short).round() as u32).max(size as u32);
    let resized = image::imageops::resize(img, nw, nh, FilterType::CatmullRom);
    let x = (nw - size as u32) / 2;
    let y = (nh - size as u32) / 2;
    image::imageops::crop_imm(&resized, x, y, size as u32, size as u32).to_image()
}

/// Appends `[3, H, W]` planes of an RGB image's 0..255 values to `out` (what an
/// image-input package takes; its program normalises them).
pub fn planes_into(img: &RgbImage, out: &mut Vec<f32>) {
    planar_into(img, out, |_, v| f32::from(v));
}

/// Appends `[3, H, W]` normalised planes of an RGB image to `out`.
pub fn normalise_into(img: &RgbImage, pre: &Preprocess, out: &mut Vec<f32>) {
    planar_into(img, out, |c, v| {
        (f32::from(v) / 255.0 - pre.mean[c]) / pre.std[c]
    });
}

/// Appends `[3, H, W]` planes of `img` to `out`, channel `c`'s value `v` as `map(c, v)`.
/// Generic over `map` so each caller gets its own loop with the map inlined.
fn planar_into(img: &RgbImage, out: &mut Vec<f32>, map: impl Fn(usize, u8) -> f32) {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let start = out.len();
    out.resize(start + 3 * n, 0.0);
    let planes = &mut out[start..];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            planes[c * n + i] = map(c, px[c]);
        }
    }
}

/// Crops the `w x h` box at `(x, y)` and resizes it to `size x size` with a bilinear
/// filter (widened when shrinking, so downscaling averages instead of aliasing). Used by
/// the training transform's random resized crop. The box must lie inside the image.
pub fn crop_resize(img: &RgbImage, x: u32, y: u32, w: u32, h: u32, size: usize) -> RgbImage {
    // A view, not a copy: the resampler reads the box straight from the source.
    let view = image::imageops::crop_imm(img, x, y, w, h);
    image::imageops::resize(&*view, size as u32, size as u32, FilterType::Triangle)
}

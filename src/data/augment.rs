//! Training augmentation: torchvision's `RandomResizedCrop` and `RandomHorizontalFlip`,
//! each switchable, driven by our seeded [`Rng`] so a sample's augmentation is a pure
//! function of its seed.

use image::RgbImage;

use crate::imaging;
use crate::rng::Rng;

/// Range of the crop's area as a fraction of the image's (torchvision's default).
pub const CROP_SCALE: (f64, f64) = (0.08, 1.0);
/// Range of the crop's width / height (torchvision's default).
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Random boxes tried before falling back to a centre crop (torchvision's count).
const CROP_ATTEMPTS: usize = 10;

/// Which training augmentations run. With both off the training transform is the
/// evaluation transform (resize the shorter side, centre crop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Random resized crop, scale (0.08, 1), ratio (3/4, 4/3), instead of the
    /// resize + centre crop.
    pub random_resized_crop: bool,
    /// Horizontal flip with probability 0.5.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation: the evaluation transform.
    pub const NONE: Augment = Augment {
        random_resized_crop: false,
        hflip: false,
    };
    /// The usual training augmentation: random resized crop and flip.
    pub const TRAIN: Augment = Augment {
        random_resized_crop: true,
        hflip: true,
    };

    pub fn is_none(&self) -> bool {
        !self.random_resized_crop && !self.hflip
    }
}

/// A crop box in pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// Draws a random resized crop box for a `width x height` image the way torchvision's
/// `RandomResizedCrop.get_params` does: up to 10 tries of a random area fraction and a
/// log-uniform aspect ratio; if none fits, the largest centred box whose aspect ratio is
/// inside the allowed range.
pub fn random_resized_crop_box(width: u32, height: u32, rng: &mut Rng) -> CropBox {
    let (wf, hf) = (f64::from(width), f64::from(height));
    let area = wf * hf;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..CROP_ATTEMPTS {
        let target = area * (CROP_SCALE.0 + (CROP_SCALE.1 - CROP_SCALE.0) * rng.uniform());
        let aspect = (log_lo + (log_hi - log_lo) * rng.uniform()).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let (w, h) = (w as u32, h as u32);
            let y = rng.below((height - h + 1) as usize) as u32;
            let x = rng.below((width - w + 1) as usize) as u32;
            return CropBox { x, y, w, h };
        }
    }
    // Fallback: centre crop, clamping the aspect ratio into CROP_RATIO.
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < CROP_RATIO.0 {
        (width, ((wf / CROP_RATIO.0).round() as u32).min(height))
    } else if in_ratio > CROP_RATIO.1 {
        (((hf * CROP_RATIO.1).round() as u32).min(width), height)
    } else {
        (width, height)
    };
    CropBox {
        x: (width - w) / 2,
        y: (height - h) / 2,
        w,
        h,
    }
}

/// The training transform of one decoded image: a random resized crop to `size x size`
/// (or, with that off, resize the shorter side to `resize_shorter` and centre-crop), then
/// a horizontal flip with probability 0.5 when enabled. All randomness comes from `rng`,
/// drawn in a fixed order (crop, then flip).
pub fn train_transform(
    img: &RgbImage,
    aug: Augment,
    resize_shorter: usize,
    size: usize,
    rng: &mut Rng,
) -> RgbImage {
    let mut out = if aug.random_resized_crop {
        let b = random_resized_crop_box(img.width(), img.height(), rng);
        imaging::crop_resize(img, b.x, b.y, b.w, b.h, size)
    } else {
        imaging::eval_transform(img, resize_shorter, size)
    };
    if aug.hflip && rng.uniform() < 0.5 {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_boxes_stay_inside_and_respect_ranges() {
        let mut rng = Rng::new(7);
        for (w, h) in [(224, 224), (500, 375), (32, 32), (1, 1), (3, 100), (100, 3)] {
            for _ in 0..200 {
                let b = random_resized_crop_box(w, h, &mut rng);
                assert!(b.w > 0 && b.h > 0, "{w}x{h}: empty box {b:?}");
                assert!(b.x + b.w <= w && b.y + b.h <= h, "{w}x{h}: {b:?} outside");
            }
        }
    }

    #[test]
    fn fallback_is_centred_with_clamped_ratio() {
        // A 1000x10 strip: no random box of >= 8% area fits a 4/3 ratio, so every draw
        // falls back to the centred 13x10 box.
        let mut rng = Rng::new(1);
        let b = random_resized_crop_box(1000, 10, &mut rng);
        assert_eq!(
            b,
            CropBox {
                x: (1000 - 13) / 2,
                y: 0,
                w: 13,
                h: 10
            }
        );
    }
}

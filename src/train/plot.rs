//! The training-curve PNG: three stacked panels (training loss with validation loss,
//! validation accuracy, learning rate), drawn with the `image` crate. No text: the
//! summary beside it holds the numbers; panel colours are fixed (loss blue, validation
//! orange, accuracy green, learning rate purple).

use std::path::Path;

use image::{Rgb, RgbImage};

const W: u32 = 720;
const PANEL_H: u32 = 180;
const PAD: u32 = 16;

pub struct Series<'a> {
    pub points: &'a [(f64, f64)],
    pub colour: [u8; 3],
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, c);
            }
        }
    }
}

fn panel(img: &mut RgbImage, top: u32, series: &[Series<'_>], x_max: f64) {
    let (left, right) = (PAD as f64, (W - PAD) as f64);
    let (y_top, y_bot) = ((top + PAD) as f64, (top + PANEL_H - PAD) as f64);
    let grey = Rgb([200, 200, 200]);
    line(img, (left, y_bot), (right, y_bot), grey);
    line(img, (left, y_top), (left, y_bot), grey);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return;
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let map = |(x, y): (f64, f64)| {
        (
            left + (right - left) * x / x_max.max(1.0),
            y_bot - (y_bot - y_top) * (y - lo) / span,
        )
    };
    for s in series {
        let c = Rgb(s.colour);
        for w in s.points.windows(2) {
            line(img, map(w[0]), map(w[1]), c);
        }
        if s.points.len() == 1 {
            let p = map(s.points[0]);
            line(img, (p.0 - 2.0, p.1), (p.0 + 2.0, p.1), c);
        }
    }
}

/// Writes the curves; x is the optimizer step.
pub fn write(
    path: &Path,
    train_loss: &[(f64, f64)],
    val_loss: &[(f64, f64)],
    val_acc: &[(f64, f64)],
    lr: &[(f64, f64)],
) -> image::ImageResult<()> {
    let mut img = RgbImage::from_pixel(W, 3 * PANEL_H, Rgb([255, 255, 255]));
    let x_max = train_loss.iter().chain(lr).map(|p| p.0).fold(1.0, f64::max);
    panel(
        &mut img,
        0,
        &[
            Series {
                points: train_loss,
                colour: [31, 119, 180],
            },
            Series {
                points: val_loss,
                colour: [255, 127, 14],
            },
        ],
        x_max,
    );
    panel(
        &mut img,
        PANEL_H,
        &[Series {
            points: val_acc,
            colour: [44, 160, 44],
        }],
        x_max,
    );
    panel(
        &mut img,
        2 * PANEL_H,
        &[Series {
            points: lr,
            colour: [148, 103, 189],
        }],
        x_max,
    );
    let tmp = crate::fsutil::temp_sibling(path);
    img.save_with_format(&tmp, image::ImageFormat::Png)?;
    std::fs::rename(&tmp, path).map_err(image::ImageError::IoError)
}

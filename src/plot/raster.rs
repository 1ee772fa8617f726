//! A scene as pixels: anti-aliased lines and dots, rectangles (exact on whole-pixel
//! edges, so a bar's height can be measured from the image), text from the embedded
//! font.

use image::{Rgb, RgbImage};

use super::font;
use super::scene::{Anchor, Colour, Item, Scene, WHITE};

fn blend(img: &mut RgbImage, x: i64, y: i64, c: Colour, a: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) || a <= 0.0 {
        return;
    }
    let a = a.min(1.0);
    let p = img.get_pixel_mut(x as u32, y as u32);
    for (old, new) in p.0.iter_mut().zip(c) {
        *old = (f32::from(*old) * (1.0 - a) + f32::from(new) * a).round() as u8;
    }
}

fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

fn rect(img: &mut RgbImage, x: f32, y: f32, w: f32, h: f32, c: Colour) {
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (x1, y1) = ((x + w).ceil() as i64, (y + h).ceil() as i64);
    for py in y0..y1 {
        let cy = overlap(py as f32, py as f32 + 1.0, y, y + h);
        for px in x0..x1 {
            let cx = overlap(px as f32, px as f32 + 1.0, x, x + w);
            blend(img, px, py, c, cx * cy);
        }
    }
}

/// Distance from `p` to the segment `a`-`b`.
fn distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
}

/// The pieces of a polyline a dashed stroke draws: `on` pixels drawn, `off` skipped.
fn dashes(points: &[(f32, f32)], on: f32, off: f32) -> Vec<[(f32, f32); 2]> {
    let mut out = Vec::new();
    let mut phase = 0.0; // distance into the current on+off period
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let mut t = 0.0;
        while t < len {
            let period_left = on + off - phase;
            let step = period_left.min(len - t);
            if phase < on {
                let end = (on - phase).min(step);
                let at = |d: f32| (a.0 + (b.0 - a.0) * d / len, a.1 + (b.1 - a.1) * d / len);
                out.push([at(t), at(t + end)]);
            }
            t += step;
            phase = (phase + step) % (on + off);
        }
    }
    out
}

/// One stroke: coverage is the best over its segments, so joints are not drawn twice.
fn stroke(img: &mut RgbImage, segments: &[[(f32, f32); 2]], c: Colour, width: f32) {
    if segments.is_empty() {
        return;
    }
    let half = width / 2.0;
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for [a, b] in segments {
        x0 = x0.min(a.0.min(b.0));
        y0 = y0.min(a.1.min(b.1));
        x1 = x1.max(a.0.max(b.0));
        y1 = y1.max(a.1.max(b.1));
    }
    let clamp_x = |v: f32| (v.max(0.0) as i64).min(i64::from(img.width()));
    let clamp_y = |v: f32| (v.max(0.0) as i64).min(i64::from(img.height()));
    let (bx0, by0) = (clamp_x(x0 - half - 1.0), clamp_y(y0 - half - 1.0));
    let (bx1, by1) = (clamp_x(x1 + half + 2.0), clamp_y(y1 + half + 2.0));
    let w = (bx1 - bx0).max(0) as usize;
    let mut cover = vec![0f32; w * (by1 - by0).max(0) as usize];
    for [a, b] in segments {
        let sx0 = clamp_x(a.0.min(b.0) - half - 1.0);
        let sx1 = clamp_x(a.0.max(b.0) + half + 2.0);
        let sy0 = clamp_y(a.1.min(b.1) - half - 1.0);
        let sy1 = clamp_y(a.1.max(b.1) + half + 2.0);
        for py in sy0..sy1 {
            for px in sx0..sx1 {
                let d = distance((px as f32 + 0.5, py as f32 + 0.5), *a, *b);
                let cov = (half + 0.5 - d).clamp(0.0, 1.0);
                let i = (py - by0) as usize * w + (px - bx0) as usize;
                cover[i] = cover[i].max(cov);
            }
        }
    }
    for (i, cov) in cover.iter().enumerate() {
        if *cov > 0.0 {
            blend(img, bx0 + (i % w) as i64, by0 + (i / w) as i64, c, *cov);
        }
    }
}

fn dot(img: &mut RgbImage, x: f32, y: f32, r: f32, c: Colour) {
    let (x0, x1) = ((x - r - 1.0).floor() as i64, (x + r + 1.0).ceil() as i64);
    let (y0, y1) = ((y - r - 1.0).floor() as i64, (y + r + 1.0).ceil() as i64);
    for py in y0..y1 {
        for px in x0..x1 {
            let d = ((px as f32 + 0.5 - x).powi(2) + (py as f32 + 0.5 - y).powi(2)).sqrt();
            blend(img, px, py, c, (r + 0.5 - d).clamp(0.0, 1.0));
        }
    }
}

pub fn render(scene: &Scene) -> RgbImage {
    let mut img = RgbImage::from_pixel(scene.width, scene.height, Rgb(WHITE));
    for item in &scene.items {
        match item {
            Item::Rect { x, y, w, h, fill } => rect(&mut img, *x, *y, *w, *h, *fill),
            Item::Line {
                points,
                colour,
                width,
                dashed,
            } => {
                let segments = if *dashed {
                    dashes(points, 4.0 * width, 3.0 * width)
                } else if points.len() == 1 {
                    vec![[points[0], points[0]]]
                } else {
                    points.windows(2).map(|w| [w[0], w[1]]).collect()
                };
                stroke(&mut img, &segments, *colour, *width);
            }
            Item::Dot { x, y, r, colour } => dot(&mut img, *x, *y, *r, *colour),
            Item::Text { x, y, text, style } => {
                let width = font::text_width(text, style.size, style.bold);
                let shift = match style.anchor {
                    Anchor::Start => 0.0,
                    Anchor::Middle => -width / 2.0,
                    Anchor::End => -width,
                };
                let c = style.colour;
                if style.vertical {
                    // Set on a baseline through the origin, then turned a quarter to the left
                    // about (x, y): along the text is up the image.
                    font::rasterise(text, style.size, style.bold, shift, 0.0, |gx, gy, a| {
                        blend(&mut img, *x as i64 + gy, *y as i64 - gx, c, a)
                    });
                } else {
                    font::rasterise(text, style.size, style.bold, x + shift, *y, |gx, gy, a| {
                        blend(&mut img, gx, gy, c, a)
                    });
                }
            }
        }
    }
    img
}

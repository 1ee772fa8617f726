//! Pictures a person reads on their own: a small vector [`Scene`] (rectangles, lines,
//! dots, text), written as SVG and as PNG. The PNG's text comes from DejaVu Sans,
//! embedded by a registry crate and rasterised in Rust, so no system font is needed.

pub mod axes;
mod font;
mod raster;
pub mod scene;
mod svg;
mod ticks;

use std::path::Path;

pub use font::text_width;
pub use scene::{Anchor, Colour, Item, Scene, TextStyle};
pub use ticks::{label as tick_label, nice as nice_ticks};

/// The scene as PNG pixels.
pub fn to_image(scene: &Scene) -> image::RgbImage {
    raster::render(scene)
}

/// The scene as SVG text.
pub fn to_svg(scene: &Scene) -> String {
    svg::render(scene)
}

/// Writes `png` and its SVG twin `svg`, each through a temporary sibling and a rename.
pub fn save(scene: &Scene, png: &Path, svg: &Path) -> std::io::Result<()> {
    let tmp = crate::fsutil::temp_sibling(png);
    to_image(scene)
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    std::fs::rename(&tmp, png)?;
    crate::fsutil::write_file_atomically(svg, to_svg(scene).as_bytes())
}

/// "1 234 567" style is not ours; keep numbers short: 12.3, 0.0123, 1.23e-5.
pub fn short_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        return match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        };
    }
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

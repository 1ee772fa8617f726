//! The one typeface of our pictures, DejaVu Sans (regular and bold), embedded by the
//! `dejavu` crate so no system font is assumed; glyph outlines by `ab_glyph`. Sizes are
//! em sizes in pixels, as SVG's `font-size` means them, so both renderings agree.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};

/// The family the SVG asks for: ours first, then faces of about the same width.
pub const SVG_FAMILY: &str = "DejaVu Sans, Verdana, Geneva, sans-serif";

fn face(bold: bool) -> &'static FontRef<'static> {
    static REGULAR: OnceLock<FontRef<'static>> = OnceLock::new();
    static BOLD: OnceLock<FontRef<'static>> = OnceLock::new();
    let (cell, bytes) = if bold {
        (&BOLD, dejavu::sans::bold())
    } else {
        (&REGULAR, dejavu::sans::regular())
    };
    // The bytes are compiled in and known-good: failing here is a build defect.
    cell.get_or_init(|| FontRef::try_from_slice(bytes).expect("embedded DejaVu Sans parses"))
}

fn scale(font: &FontRef<'static>, size: f32) -> PxScale {
    let em = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(size * font.height_unscaled() / em)
}

/// Pen positions of each glyph of `text` from 0, and the total advance.
fn layout(text: &str, size: f32, bold: bool) -> (Vec<(GlyphId, f32)>, f32) {
    let font = face(bold);
    let scaled = font.as_scaled(scale(font, size));
    let mut x = 0.0;
    let mut out = Vec::with_capacity(text.len());
    let mut prev: Option<GlyphId> = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            x += scaled.kern(p, id);
        }
        out.push((id, x));
        x += scaled.h_advance(id);
        prev = Some(id);
    }
    (out, x)
}

/// Width in pixels of `text` set at `size`.
pub fn text_width(text: &str, size: f32, bold: bool) -> f32 {
    layout(text, size, bold).1
}

/// Coverage (0..1) of `text` on a horizontal baseline at (`x`, `y`): calls
/// `put(px, py, coverage)` for every touched pixel.
pub fn rasterise(
    text: &str,
    size: f32,
    bold: bool,
    x: f32,
    y: f32,
    mut put: impl FnMut(i64, i64, f32),
) {
    let font = face(bold);
    let s = scale(font, size);
    let (glyphs, _) = layout(text, size, bold);
    for (id, dx) in glyphs {
        let glyph = id.with_scale_and_position(s, point(x + dx, y));
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, c| {
                put(b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64, c);
            });
        }
    }
}

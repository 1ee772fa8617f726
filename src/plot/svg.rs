//! A scene as SVG text: the same items as the PNG, with real text (selectable,
//! searchable, no font file needed to read it).

use std::fmt::Write;

use super::font::SVG_FAMILY;
use super::scene::{Anchor, Colour, Item, Scene};

fn hex(c: Colour) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Two decimals are finer than a pixel; fewer keep the file small.
fn n(v: f32) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn render(scene: &Scene) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{SVG_FAMILY}">"#,
        w = scene.width,
        h = scene.height
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for item in &scene.items {
        match item {
            Item::Rect { x, y, w, h, fill } => {
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
                    n(*x),
                    n(*y),
                    n(*w),
                    n(*h),
                    hex(*fill)
                );
            }
            Item::Line {
                points,
                colour,
                width,
                dashed,
            } => {
                let pts: Vec<String> = points
                    .iter()
                    .map(|(x, y)| format!("{},{}", n(*x), n(*y)))
                    .collect();
                let dash = if *dashed {
                    format!(
                        r#" stroke-dasharray="{} {}""#,
                        n(4.0 * width),
                        n(3.0 * width)
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round"{dash}/>"#,
                    pts.join(" "),
                    hex(*colour),
                    n(*width)
                );
            }
            Item::Dot { x, y, r, colour } => {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{}" cy="{}" r="{}" fill="{}"/>"#,
                    n(*x),
                    n(*y),
                    n(*r),
                    hex(*colour)
                );
            }
            Item::Text { x, y, text, style } => {
                let anchor = match style.anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let weight = if style.bold {
                    r#" font-weight="bold""#
                } else {
                    ""
                };
                let rotate = if style.vertical {
                    format!(r#" transform="rotate(-90 {} {})""#, n(*x), n(*y))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="{}" fill="{}" text-anchor="{anchor}"{weight}{rotate}>{}</text>"#,
                    n(*x),
                    n(*y),
                    n(style.size),
                    hex(style.colour),
                    escape(text)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

//! Axes, gridlines, legends and line panels on a [`Scene`]: the parts every chart of
//! ours shares.

use super::font::text_width;
use super::scene::{Anchor, Colour, Scene, TextStyle, AXIS, GRID, MUTED, WHITE};
use super::ticks;

pub const TITLE_SIZE: f32 = 15.0;
pub const PANEL_TITLE_SIZE: f32 = 13.0;
pub const LABEL_SIZE: f32 = 12.0;
pub const TICK_SIZE: f32 = 11.0;

/// A plot box in pixels and the data range it shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plot {
    pub left: f32,
    pub top: f32,
    pub right: f32,
    pub bottom: f32,
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Plot {
    pub fn px(&self, x: f64) -> f32 {
        let t = (x - self.x.0) / (self.x.1 - self.x.0).max(f64::MIN_POSITIVE);
        self.left + (self.right - self.left) * t as f32
    }
    pub fn py(&self, y: f64) -> f32 {
        let t = (y - self.y.0) / (self.y.1 - self.y.0).max(f64::MIN_POSITIVE);
        self.bottom - (self.bottom - self.top) * t as f32
    }
}

/// Gridlines and labels at `ticks` up the left side, the axis line, and `label` turned
/// to read upwards.
pub fn y_axis(scene: &mut Scene, p: &Plot, ticks: &[f64], step: f64, label: &str) {
    let tick = TextStyle::new(TICK_SIZE).colour(MUTED).anchor(Anchor::End);
    let mut widest = 0f32;
    for &v in ticks {
        let y = p.py(v).round();
        if v != p.y.0 {
            scene.rect(p.left, y, p.right - p.left, 1.0, GRID);
        }
        let text = ticks::label(v, step);
        widest = widest.max(text_width(&text, TICK_SIZE, false));
        scene.text(p.left - 6.0, y + 4.0, text, tick);
    }
    scene.rect(p.left - 1.0, p.top, 1.0, p.bottom - p.top + 1.0, AXIS);
    scene.text(
        p.left - 12.0 - widest,
        (p.top + p.bottom) / 2.0,
        label,
        TextStyle::new(LABEL_SIZE).anchor(Anchor::Middle).vertical(),
    );
}

/// The bottom axis line alone (bar charts name their groups themselves).
pub fn x_axis_line(scene: &mut Scene, p: &Plot) {
    scene.rect(p.left - 1.0, p.bottom, p.right - p.left + 1.0, 1.0, AXIS);
}

/// Ticks and labels along the bottom, the axis line, and `label` under them.
pub fn x_axis(scene: &mut Scene, p: &Plot, ticks: &[f64], step: f64, label: &str) {
    let tick = TextStyle::new(TICK_SIZE)
        .colour(MUTED)
        .anchor(Anchor::Middle);
    for &v in ticks {
        let x = p.px(v).round();
        scene.rect(x, p.bottom, 1.0, 4.0, AXIS);
        scene.text(x, p.bottom + 16.0, ticks::label(v, step), tick);
    }
    scene.rect(p.left - 1.0, p.bottom, p.right - p.left + 1.0, 1.0, AXIS);
    scene.text(
        (p.left + p.right) / 2.0,
        p.bottom + 32.0,
        label,
        TextStyle::new(LABEL_SIZE).anchor(Anchor::Middle),
    );
}

/// How a legend entry's swatch looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swatch {
    Line,
    Dashed,
    Box,
    Dot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegendEntry {
    pub label: String,
    pub colour: Colour,
    pub swatch: Swatch,
}

impl LegendEntry {
    pub fn new(label: impl Into<String>, colour: Colour, swatch: Swatch) -> Self {
        LegendEntry {
            label: label.into(),
            colour,
            swatch,
        }
    }
}

/// A one-row legend ending at `right`, centred on `y`; returns its left edge.
pub fn legend(scene: &mut Scene, right: f32, y: f32, entries: &[LegendEntry]) -> f32 {
    const SWATCH: f32 = 18.0;
    const GAP: f32 = 14.0;
    let widths: Vec<f32> = entries
        .iter()
        .map(|e| SWATCH + 5.0 + text_width(&e.label, TICK_SIZE, false))
        .collect();
    let total = widths.iter().sum::<f32>() + GAP * entries.len().saturating_sub(1) as f32;
    let mut x = right - total;
    let left = x;
    for (e, w) in entries.iter().zip(&widths) {
        match e.swatch {
            Swatch::Line => scene.line(vec![(x, y), (x + SWATCH, y)], e.colour, 2.0),
            Swatch::Dashed => scene.dashed(vec![(x, y), (x + SWATCH, y)], e.colour, 1.5),
            Swatch::Box => scene.rect(x + 3.0, y - 6.0, SWATCH - 6.0, 12.0, e.colour),
            Swatch::Dot => scene.dot(x + SWATCH / 2.0, y, 4.0, e.colour),
        }
        scene.text(
            x + SWATCH + 5.0,
            y + 4.0,
            &e.label,
            TextStyle::new(TICK_SIZE),
        );
        x += w + GAP;
    }
    left
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub colour: Colour,
    /// A dot at every point (sparse series such as per-epoch evaluation).
    pub dots: bool,
}

/// A vertical dashed line across the panel at `x` (the best checkpoint), with a label.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub colour: Colour,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// Start the y axis at 0 (losses, rates) instead of at the data's minimum.
    pub y_from_zero: bool,
    /// Fixed y range (top-1 in percent: 0..100).
    pub y_range: Option<(f64, f64)>,
    /// Shown in the plot box when no series has a point.
    pub empty_note: String,
}

/// Room a line panel leaves around its plot box: (left, top, right, bottom).
pub const MARGINS: (f32, f32, f32, f32) = (70.0, 30.0, 18.0, 44.0);

/// Draws `panel` into the area `(x, y, w, h)` with a shared x range; returns the plot box.
pub fn line_panel(
    scene: &mut Scene,
    (x, y, w, h): (f32, f32, f32, f32),
    panel: &LinePanel,
    x_range: (f64, f64),
) -> Plot {
    let (ml, mt, mr, mb) = MARGINS;
    scene.text(
        x + ml,
        y + 18.0,
        &panel.title,
        TextStyle::new(PANEL_TITLE_SIZE).bold(),
    );
    let entries: Vec<LegendEntry> = panel
        .series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| LegendEntry::new(&s.name, s.colour, Swatch::Line))
        .chain(
            panel
                .markers
                .iter()
                .map(|m| LegendEntry::new(&m.label, m.colour, Swatch::Dashed)),
        )
        .collect();
    legend(scene, x + w - mr, y + 14.0, &entries);

    let values: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = match panel.y_range {
        Some(r) => r,
        None if values.is_empty() => (0.0, 1.0),
        None => {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (if panel.y_from_zero { lo.min(0.0) } else { lo }, hi)
        }
    };
    let (yt, ys) = ticks::nice(lo, hi, 5);
    let (xt, xs) = ticks::nice(x_range.0, x_range.1, 8);
    let plot = Plot {
        left: x + ml,
        top: y + mt + 6.0,
        right: x + w - mr,
        bottom: y + h - mb,
        x: (xt[0], *xt.last().unwrap_or(&x_range.1)),
        y: (yt[0], *yt.last().unwrap_or(&hi)),
    };
    y_axis(scene, &plot, &yt, ys, &panel.y_label);
    x_axis(scene, &plot, &xt, xs, &panel.x_label);
    for m in &panel.markers {
        let mx = plot.px(m.x);
        scene.dashed(vec![(mx, plot.top), (mx, plot.bottom)], m.colour, 1.5);
    }
    for s in &panel.series {
        let pts: Vec<(f32, f32)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| (plot.px(p.0), plot.py(p.1)))
            .collect();
        if pts.len() > 1 {
            scene.line(pts.clone(), s.colour, 2.0);
        }
        if s.dots || pts.len() == 1 {
            for (px, py) in pts {
                scene.dot(px, py, 3.5, s.colour);
                scene.dot(px, py, 1.5, WHITE);
            }
        }
    }
    if values.is_empty() {
        scene.text(
            (plot.left + plot.right) / 2.0,
            (plot.top + plot.bottom) / 2.0,
            &panel.empty_note,
            TextStyle::new(LABEL_SIZE)
                .colour(MUTED)
                .anchor(Anchor::Middle),
        );
    }
    plot
}

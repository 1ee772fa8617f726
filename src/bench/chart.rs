//! The picture of a bench report, `NAME.bench.png` and `NAME.bench.svg`: two bar panels
//! (latency: median bar with a whisker to p90; throughput: single predictions and the
//! largest batch) with one group of bars per compute unit, named under it, its values
//! written over the bars, and a title saying which model, machine and day. A unit that
//! failed keeps its place with the word "failed" and the reason in a footnote, so a
//! report with missing data still reads.

use std::fmt;
use std::path::{Path, PathBuf};

use super::report::{BenchReport, ComputeUnits};
use super::BenchError;
use crate::plot::axes::{legend, x_axis_line, y_axis, LegendEntry, Plot, Swatch, TITLE_SIZE};
use crate::plot::scene::{MUTED, TEXT};
use crate::plot::{nice_ticks, short_number, text_width, Anchor, Scene, TextStyle};

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 520;
const HEADER: u32 = 62;
const PANEL_WIDTH: u32 = WIDTH / 2;
const MARGIN_LEFT: u32 = 78;
const MARGIN_RIGHT: u32 = 24;
const PANEL_TOP: u32 = HEADER + 52;
const FOOTER: u32 = 62;
/// Room on each side of a unit's group of bars.
const GROUP_GAP: u32 = 14;

const WHISKER: [u8; 3] = [30, 30, 30];
const FAILED: [u8; 3] = [190, 30, 30];

/// The colour of a compute unit's bars (colour-blind-friendly, distinct in grey too).
pub fn unit_colour(units: ComputeUnits) -> [u8; 3] {
    match units {
        ComputeUnits::Cpu => [31, 119, 180],  // blue
        ComputeUnits::Gpu => [44, 160, 44],   // green
        ComputeUnits::Ane => [255, 127, 14],  // orange
        ComputeUnits::All => [148, 103, 189], // purple
    }
}

/// A unit as an app developer knows it (Core ML's `MLComputeUnits`).
pub fn unit_label(units: ComputeUnits) -> &'static str {
    match units {
        ComputeUnits::Cpu => "CPU only",
        ComputeUnits::Gpu => "CPU + GPU",
        ComputeUnits::Ane => "CPU + Neural Engine",
        ComputeUnits::All => "all units",
    }
}

/// Halfway to white: the batch bar beside a unit's single-prediction bar.
fn lighter(c: [u8; 3]) -> [u8; 3] {
    c.map(|v| v + (255 - v) / 2)
}

/// What a bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// p50 latency in ms (whisker to p90).
    LatencyP50,
    /// Sequential single predictions per second.
    Throughput,
    /// Images per second through `predictions(fromBatch:)` at this batch size.
    BatchThroughput(u32),
}

/// One panel's plot area (pixels, y grows downwards) and scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartPanel {
    pub title: &'static str,
    pub unit: &'static str,
    pub left: u32,
    pub right: u32,
    pub top: u32,
    /// The y of value 0; bars stand on the row above it.
    pub baseline: u32,
    /// The value at `top`.
    pub axis_max: f64,
    pub grid_step: f64,
}

impl ChartPanel {
    /// Height in pixels of a bar of `value`.
    pub fn bar_height(&self, value: f64) -> u32 {
        let plot = f64::from(self.baseline - self.top);
        ((value / self.axis_max).clamp(0.0, 1.0) * plot).round() as u32
    }

    fn plot(&self) -> Plot {
        Plot {
            left: self.left as f32,
            top: self.top as f32,
            right: self.right as f32,
            bottom: self.baseline as f32,
            x: (0.0, 1.0),
            y: (0.0, self.axis_max),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChartBar {
    pub panel: usize,
    pub units: ComputeUnits,
    pub series: Series,
    pub value: f64,
    /// p90 for latency bars.
    pub whisker: Option<f64>,
    /// Columns `x0..x1` (exclusive).
    pub x0: u32,
    pub x1: u32,
    /// Height in pixels above the baseline.
    pub height: u32,
    pub colour: [u8; 3],
}

/// The chart that was written, with its layout so callers (and tests) can find bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub path: PathBuf,
    pub svg_path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub panels: Vec<ChartPanel>,
    pub bars: Vec<ChartBar>,
    /// Units without bars because they failed.
    pub failed: Vec<ComputeUnits>,
}

fn panel(index: u32, title: &'static str, unit: &'static str, max: f64) -> ChartPanel {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let (ticks, step) = nice_ticks(0.0, max, 5);
    ChartPanel {
        title,
        unit,
        left: index * PANEL_WIDTH + MARGIN_LEFT,
        right: (index + 1) * PANEL_WIDTH - MARGIN_RIGHT,
        top: PANEL_TOP,
        baseline: HEIGHT - FOOTER - 40,
        axis_max: *ticks.last().unwrap_or(&max),
        grid_step: step,
    }
}

/// The bar values of the report, per panel: (units, series, value, whisker).
type Entry = (ComputeUnits, Series, f64, Option<f64>);

fn entries(report: &BenchReport) -> (Vec<Entry>, Vec<Entry>) {
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    for u in report.units.iter().filter(|u| u.error.is_none()) {
        if let Some(l) = u.latency {
            latency.push((
                u.compute_units,
                Series::LatencyP50,
                l.p50_ms,
                Some(l.p90_ms),
            ));
        }
        if let Some(t) = u.throughput_images_per_s {
            throughput.push((u.compute_units, Series::Throughput, t, None));
        }
        if let Some((size, ips)) = u.best_batch() {
            throughput.push((u.compute_units, Series::BatchThroughput(size), ips, None));
        }
    }
    (latency, throughput)
}

/// The columns of each unit's group: `units.len()` equal slots across the panel.
fn group(p: &ChartPanel, g: usize, groups: usize) -> (u32, u32) {
    let width = (p.right - p.left) / groups.max(1) as u32;
    let x0 = p.left + g as u32 * width;
    (x0, x0 + width)
}

/// Lays out a panel's bars: one group per unit in report order, bars side by side.
fn layout(
    p: &ChartPanel,
    index: usize,
    entries: &[Entry],
    units: &[ComputeUnits],
) -> Vec<ChartBar> {
    let mut bars = Vec::new();
    for (g, u) in units.iter().enumerate() {
        let mine: Vec<&Entry> = entries.iter().filter(|e| e.0 == *u).collect();
        if mine.is_empty() {
            continue;
        }
        let (gx0, gx1) = group(p, g, units.len());
        let inner = (gx1 - gx0)
            .saturating_sub(2 * GROUP_GAP)
            .clamp(mine.len() as u32, 90 * mine.len() as u32);
        let bar_width = inner / mine.len() as u32;
        let start = (gx0 + gx1) / 2 - bar_width * mine.len() as u32 / 2;
        for (i, e) in mine.iter().enumerate() {
            let x0 = start + i as u32 * bar_width;
            let base = unit_colour(e.0);
            bars.push(ChartBar {
                panel: index,
                units: e.0,
                series: e.1,
                value: e.2,
                whisker: e.3,
                x0,
                x1: x0 + bar_width,
                height: p.bar_height(e.2),
                colour: if matches!(e.1, Series::BatchThroughput(_)) {
                    lighter(base)
                } else {
                    base
                },
            });
        }
    }
    bars
}

fn draw_panel(s: &mut Scene, p: &ChartPanel, y_label: &str, legend_entries: &[LegendEntry]) {
    s.text(
        p.left as f32,
        (PANEL_TOP - 30) as f32,
        p.title,
        TextStyle::new(13.0).bold(),
    );
    legend(s, p.right as f32, (PANEL_TOP - 12) as f32, legend_entries);
    let (ticks, _) = nice_ticks(0.0, p.axis_max, 5);
    y_axis(s, &p.plot(), &ticks, p.grid_step, y_label);
    x_axis_line(s, &p.plot());
}

fn draw_bar(s: &mut Scene, p: &ChartPanel, b: &ChartBar) {
    let top = (p.baseline - b.height) as f32;
    s.rect(
        b.x0 as f32,
        top,
        (b.x1 - b.x0) as f32,
        b.height as f32,
        b.colour,
    );
    let mut label_y = top - 5.0;
    if let Some(w) = b.whisker {
        // p50 -> p90: a 2-pixel line up the middle with a cap half the bar wide.
        let mid = ((b.x0 + b.x1) / 2) as f32;
        let wtop = (p.baseline - p.bar_height(w)) as f32;
        if wtop < top {
            s.rect(mid - 1.0, wtop, 2.0, top - wtop, WHISKER);
        }
        let quarter = ((b.x1 - b.x0) / 4) as f32;
        s.rect(mid - quarter, wtop, 2.0 * quarter, 2.0, WHISKER);
        label_y = label_y.min(wtop - 5.0);
    }
    let text = match b.series {
        Series::LatencyP50 => format!("{} ms", short_number(b.value)),
        _ => short_number(b.value),
    };
    s.text(
        ((b.x0 + b.x1) / 2) as f32,
        label_y,
        text,
        TextStyle::new(11.0).anchor(Anchor::Middle),
    );
    if let Series::BatchThroughput(n) = b.series {
        s.text(
            ((b.x0 + b.x1) / 2) as f32,
            label_y - 13.0,
            format!("batch {n}"),
            TextStyle::new(10.0).colour(MUTED).anchor(Anchor::Middle),
        );
    }
}

/// The unit names under each group, and "failed" where a unit has no bars.
fn draw_groups(s: &mut Scene, p: &ChartPanel, report: &BenchReport) {
    let units: Vec<ComputeUnits> = report.units.iter().map(|u| u.compute_units).collect();
    for (g, u) in report.units.iter().enumerate() {
        let (x0, x1) = group(p, g, units.len());
        let mid = ((x0 + x1) / 2) as f32;
        s.text(
            mid,
            (p.baseline + 18) as f32,
            unit_label(u.compute_units),
            TextStyle::new(11.0).colour(TEXT).anchor(Anchor::Middle),
        );
        if u.error.is_some() {
            s.text(
                mid,
                (p.baseline - 12) as f32,
                "failed",
                TextStyle::new(12.0)
                    .bold()
                    .colour(FAILED)
                    .anchor(Anchor::Middle),
            );
        }
    }
}

/// Cuts `text` to fit `width` pixels at `size`, ending in "...".
fn fit(text: &str, size: f32, width: f32) -> String {
    if text_width(text, size, false) <= width {
        return text.to_string();
    }
    let mut out: String = text.to_string();
    while !out.is_empty() && text_width(&format!("{out}..."), size, false) > width {
        out.pop();
    }
    format!("{}...", out.trim_end())
}

fn header(s: &mut Scene, report: &BenchReport) {
    let name = Path::new(&report.model.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| report.model.path.clone());
    s.text(
        20.0,
        26.0,
        format!("Core ML benchmark: {name}"),
        TextStyle::new(TITLE_SIZE).bold(),
    );
    let m = &report.machine;
    let input = report
        .model
        .inputs
        .first()
        .map(|i| {
            let shape = i
                .shape
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                })
                .unwrap_or_default();
            format!("input {} {shape}", i.name)
        })
        .unwrap_or_default();
    let precision = report
        .model
        .metadata
        .get("precision")
        .map(|p| format!(", {p}"))
        .unwrap_or_default();
    let line = format!(
        "{} ({}), macOS {}, {}; {}{precision}",
        m.chip,
        m.hardware_model.as_deref().unwrap_or("Mac"),
        m.os_version.trim_start_matches("Version "),
        report.created_at.replace('T', " ").replace('Z', " UTC"),
        input,
    );
    s.text(
        20.0,
        46.0,
        fit(&line, 12.0, WIDTH as f32 - 40.0),
        TextStyle::new(12.0).colour(MUTED),
    );
}

fn footer(s: &mut Scene, report: &BenchReport) {
    let mut y = (HEIGHT - FOOTER + 8) as f32;
    s.text(
        20.0,
        y,
        format!(
            "{} timed predictions per unit after {} warm-up. Latency: lower is better; throughput: higher is better.",
            report.settings.iterations, report.settings.warmup
        ),
        TextStyle::new(11.0).colour(MUTED),
    );
    y += 16.0;
    for u in &report.units {
        if let Some(e) = &u.error {
            let line = format!("{} failed: {e}", unit_label(u.compute_units));
            s.text(
                20.0,
                y,
                fit(&line, 11.0, WIDTH as f32 - 40.0),
                TextStyle::new(11.0).colour(FAILED),
            );
            y += 15.0;
        }
    }
}

/// The report's chart as a scene, with its layout.
pub fn chart_scene(report: &BenchReport) -> (Scene, Vec<ChartPanel>, Vec<ChartBar>) {
    let (latency, throughput) = entries(report);
    let latency_max = latency
        .iter()
        .map(|e| e.3.unwrap_or(e.2).max(e.2))
        .fold(0.0, f64::max);
    let throughput_max = throughput.iter().map(|e| e.2).fold(0.0, f64::max);
    // Headroom over the tallest bar for its value (and batch) label.
    let panels = vec![
        panel(0, "Latency per prediction", "ms", latency_max * 1.12),
        panel(1, "Throughput", "images/s", throughput_max * 1.18),
    ];
    let units: Vec<ComputeUnits> = report.units.iter().map(|u| u.compute_units).collect();
    let mut bars = layout(&panels[0], 0, &latency, &units);
    bars.extend(layout(&panels[1], 1, &throughput, &units));

    let mut s = Scene::new(WIDTH, HEIGHT);
    header(&mut s, report);
    let grey = [150, 150, 150];
    draw_panel(
        &mut s,
        &panels[0],
        "latency (ms)",
        &[
            LegendEntry::new("median (p50)", grey, Swatch::Box),
            LegendEntry::new("whisker to p90", WHISKER, Swatch::Line),
        ],
    );
    let batch = throughput
        .iter()
        .find_map(|e| match e.1 {
            Series::BatchThroughput(_) => Some(()),
            _ => None,
        })
        .is_some();
    let mut right = vec![LegendEntry::new("one image at a time", grey, Swatch::Box)];
    if batch {
        right.push(LegendEntry::new(
            "largest batch (lighter)",
            lighter(grey),
            Swatch::Box,
        ));
    }
    draw_panel(&mut s, &panels[1], "throughput (images/s)", &right);
    for p in &panels {
        draw_groups(&mut s, p, report);
    }
    for b in &bars {
        draw_bar(&mut s, &panels[b.panel], b);
    }
    footer(&mut s, report);
    (s, panels, bars)
}

/// Draws the report's chart into `png_path` and its SVG twin beside it, and returns
/// the layout.
pub fn render_chart(report: &BenchReport, png_path: &Path) -> Result<Chart, BenchError> {
    let (scene, panels, bars) = chart_scene(report);
    let svg_path = png_path.with_extension("svg");
    crate::plot::save(&scene, png_path, &svg_path).map_err(|e| BenchError::Chart {
        path: png_path.to_path_buf(),
        source: image::ImageError::IoError(e),
    })?;
    Ok(Chart {
        path: png_path.to_path_buf(),
        svg_path,
        width: WIDTH,
        height: HEIGHT,
        panels,
        bars,
        failed: report
            .units
            .iter()
            .filter(|u| u.error.is_some())
            .map(|u| u.compute_units)
            .collect(),
    })
}

impl fmt::Display for Chart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chart: {} and {} ({}x{})",
            self.path.display(),
            self.svg_path.display(),
            self.width,
            self.height
        )?;
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|u| u.name()).collect();
            writeln!(f, "  no bars (failed): {}", names.join(", "))?;
        }
        Ok(())
    }
}

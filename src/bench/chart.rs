//! A bar chart of a report, drawn pixel by pixel with the `image` crate. There is no
//! font to draw with, so the chart carries no text: each compute unit has a fixed
//! colour and [`Chart`]'s `Display` is the legend (colours, scales, gridline steps)
//! to print next to the PNG.
//!
//! Layout: two panels side by side. Left, latency: one bar per unit up to p50, with a
//! dark whisker from p50 to p90. Right, throughput: per unit a solid bar for single
//! predictions and a lighter one for its largest batch. Each panel has its own scale
//! from 0 (at the baseline) to a round number above its largest value, with light
//! grey gridlines at round steps.

use std::fmt;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::report::{BenchReport, ComputeUnits};
use super::BenchError;

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 420;
const PANEL_WIDTH: u32 = WIDTH / 2;
const MARGIN_LEFT: u32 = 40;
const MARGIN_RIGHT: u32 = 20;
const MARGIN_TOP: u32 = 30;
const MARGIN_BOTTOM: u32 = 40;
/// Width of one unit's group of bars, and the gap around it.
const GROUP_GAP: u32 = 16;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const WHISKER: Rgb<u8> = Rgb([30, 30, 30]);

/// The colour of a compute unit's bars (colour-blind-friendly, distinct in grey too).
pub fn unit_colour(units: ComputeUnits) -> [u8; 3] {
    match units {
        ComputeUnits::Cpu => [31, 119, 180],  // blue
        ComputeUnits::Gpu => [44, 160, 44],   // green
        ComputeUnits::Ane => [255, 127, 14],  // orange
        ComputeUnits::All => [148, 103, 189], // purple
    }
}

fn colour_name(units: ComputeUnits) -> &'static str {
    match units {
        ComputeUnits::Cpu => "blue",
        ComputeUnits::Gpu => "green",
        ComputeUnits::Ane => "orange",
        ComputeUnits::All => "purple",
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
    pub width: u32,
    pub height: u32,
    pub panels: Vec<ChartPanel>,
    pub bars: Vec<ChartBar>,
    /// Units without bars because they failed.
    pub failed: Vec<ComputeUnits>,
}

/// A round number (1, 2 or 5 times a power of ten) near `max / 5`, so about five
/// gridlines fit, and the axis top: the first multiple of it at or above `max`.
fn nice_scale(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let top = (max / step).ceil().max(1.0) * step;
    (top, step)
}

fn fill(img: &mut RgbImage, x0: u32, x1: u32, y0: u32, y1: u32, c: Rgb<u8>) {
    for y in y0.min(img.height())..y1.min(img.height()) {
        for x in x0.min(img.width())..x1.min(img.width()) {
            img.put_pixel(x, y, c);
        }
    }
}

fn panel(index: u32, title: &'static str, unit: &'static str, max: f64) -> ChartPanel {
    let (axis_max, grid_step) = nice_scale(max);
    ChartPanel {
        title,
        unit,
        left: index * PANEL_WIDTH + MARGIN_LEFT,
        right: (index + 1) * PANEL_WIDTH - MARGIN_RIGHT,
        top: MARGIN_TOP,
        baseline: HEIGHT - MARGIN_BOTTOM,
        axis_max,
        grid_step,
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

/// Lays out a panel's bars: one group per unit in report order, bars side by side.
fn layout(
    p: &ChartPanel,
    index: usize,
    entries: &[Entry],
    units: &[ComputeUnits],
) -> Vec<ChartBar> {
    let groups = units.len().max(1) as u32;
    let group_width = (p.right - p.left) / groups;
    let mut bars = Vec::new();
    for (g, u) in units.iter().enumerate() {
        let mine: Vec<&Entry> = entries.iter().filter(|e| e.0 == *u).collect();
        if mine.is_empty() {
            continue;
        }
        let inner = group_width
            .saturating_sub(2 * GROUP_GAP)
            .max(mine.len() as u32);
        let bar_width = inner / mine.len() as u32;
        let group_x = p.left + g as u32 * group_width + GROUP_GAP;
        for (i, e) in mine.iter().enumerate() {
            let x0 = group_x + i as u32 * bar_width;
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

fn draw_panel_frame(img: &mut RgbImage, p: &ChartPanel) {
    let mut k = 1.0;
    // Gridlines at every step up to the axis top (the top one included).
    while k * p.grid_step <= p.axis_max * (1.0 + 1e-9) {
        let y = p.baseline - p.bar_height(k * p.grid_step);
        fill(img, p.left, p.right, y, y + 1, GRID);
        k += 1.0;
    }
    fill(img, p.left - 1, p.left, p.top, p.baseline + 1, AXIS);
    fill(img, p.left - 1, p.right, p.baseline, p.baseline + 2, AXIS);
}

fn draw_bar(img: &mut RgbImage, p: &ChartPanel, b: &ChartBar) {
    let c = Rgb(b.colour);
    fill(img, b.x0, b.x1, p.baseline - b.height, p.baseline, c);
    if let Some(w) = b.whisker {
        // p50 -> p90: a 2-pixel line up the middle with a cap half the bar wide.
        let mid = (b.x0 + b.x1) / 2;
        let top = p.baseline - p.bar_height(w);
        let bottom = p.baseline - b.height;
        if top < bottom {
            fill(img, mid - 1, mid + 1, top, bottom, WHISKER);
        }
        let quarter = (b.x1 - b.x0) / 4;
        fill(img, mid - quarter, mid + quarter, top, top + 2, WHISKER);
    }
}

/// Draws the report's chart into `png_path` and returns its layout; the `Display` of
/// the result is the legend to print beside it.
pub fn render_chart(report: &BenchReport, png_path: &Path) -> Result<Chart, BenchError> {
    let (latency, throughput) = entries(report);
    let latency_max = latency
        .iter()
        .map(|e| e.3.unwrap_or(e.2).max(e.2))
        .fold(0.0, f64::max);
    let throughput_max = throughput.iter().map(|e| e.2).fold(0.0, f64::max);
    let panels = vec![
        panel(0, "latency", "ms", latency_max),
        panel(1, "throughput", "images/s", throughput_max),
    ];
    let units: Vec<ComputeUnits> = report.units.iter().map(|u| u.compute_units).collect();
    let mut bars = layout(&panels[0], 0, &latency, &units);
    bars.extend(layout(&panels[1], 1, &throughput, &units));

    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    for p in &panels {
        draw_panel_frame(&mut img, p);
    }
    for b in &bars {
        draw_bar(&mut img, &panels[b.panel], b);
    }
    img.save(png_path).map_err(|source| BenchError::Chart {
        path: png_path.to_path_buf(),
        source,
    })?;
    Ok(Chart {
        path: png_path.to_path_buf(),
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

/// Trims a float for the legend: 12.5, 0.02, 1000.
fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl fmt::Display for Chart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chart: {} ({}x{})",
            self.path.display(),
            self.width,
            self.height
        )?;
        let mut seen = Vec::new();
        for b in &self.bars {
            if !seen.contains(&b.units) {
                seen.push(b.units);
            }
        }
        let colours: Vec<String> = seen
            .iter()
            .map(|u| format!("{u} = {}", colour_name(*u)))
            .collect();
        writeln!(f, "  colours: {}", colours.join(", "))?;
        for (i, p) in self.panels.iter().enumerate() {
            let side = if i == 0 { "left" } else { "right" };
            let what = if i == 0 {
                "bar = p50, dark whisker up to p90"
            } else {
                "solid = single predictions, light = largest batch"
            };
            writeln!(
                f,
                "  {side}: {} in {} ({what}); axis 0 to {} {}, gridlines every {} {}",
                p.title,
                p.unit,
                short(p.axis_max),
                p.unit,
                short(p.grid_step),
                p.unit
            )?;
            for b in self.bars.iter().filter(|b| b.panel == i) {
                let label = match b.series {
                    Series::LatencyP50 => "p50".to_string(),
                    Series::Throughput => "single".to_string(),
                    Series::BatchThroughput(n) => format!("batch {n}"),
                };
                write!(f, "    {:<4} {label:<9} {:>10.2}", b.units.name(), b.value)?;
                if let Some(w) = b.whisker {
                    write!(f, " (p90 {w:.2})")?;
                }
                writeln!(f)?;
            }
        }
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|u| u.name()).collect();
            writeln!(f, "  no bars (failed): {}", names.join(", "))?;
        }
        Ok(())
    }
}

//! The training curves, `curves.png` and `curves.svg`: training and validation loss,
//! validation top-1 and the learning rate against the optimizer step, the best
//! checkpoint marked in each, under a title that says which run this is.

use std::path::{Path, PathBuf};

use crate::plot::axes::{line_panel, LinePanel, Marker, Series, TITLE_SIZE};
use crate::plot::{Scene, TextStyle};

pub const WIDTH: u32 = 900;
const HEADER: u32 = 58;
const PANEL: u32 = 210;
pub const HEIGHT: u32 = HEADER + 3 * PANEL;

pub const TRAIN_LOSS: [u8; 3] = [31, 119, 180];
pub const VAL_LOSS: [u8; 3] = [255, 127, 14];
pub const VAL_TOP1: [u8; 3] = [44, 160, 44];
pub const LR: [u8; 3] = [148, 103, 189];
pub const BEST: [u8; 3] = [214, 39, 40];

/// What the title says.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvesInfo {
    /// "Training curves: quickstart (LoRA r8 on preset:vit-micro8)".
    pub title: String,
    /// Data, steps, the best checkpoint, when.
    pub subtitle: String,
    /// The step of the best checkpoint and what made it best ("val top-1 91.7%").
    pub best: Option<(usize, String)>,
}

/// The series of `metrics.jsonl` records: (step, value) of `key` where present.
pub fn series(history: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
        .collect()
}

pub fn scene(info: &CurvesInfo, history: &[serde_json::Value]) -> Scene {
    let mut s = Scene::new(WIDTH, HEIGHT);
    s.text(20.0, 24.0, &info.title, TextStyle::new(TITLE_SIZE).bold());
    s.text(
        20.0,
        44.0,
        &info.subtitle,
        TextStyle::new(12.0).colour(crate::plot::scene::MUTED),
    );
    let train_loss = series(history, "loss");
    let val_loss = series(history, "val_loss");
    let top1: Vec<(f64, f64)> = series(history, "val_top1")
        .into_iter()
        .map(|(x, y)| (x, 100.0 * y))
        .collect();
    let lr = series(history, "lr");
    let x_max = train_loss
        .iter()
        .chain(&lr)
        .chain(&val_loss)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let markers: Vec<Marker> = info
        .best
        .iter()
        .map(|(step, why)| Marker {
            x: *step as f64,
            label: format!("best checkpoint (step {step}, {why})"),
            colour: BEST,
        })
        .collect();
    let panels = [
        LinePanel {
            title: "Loss".into(),
            x_label: "optimizer step".into(),
            y_label: "cross-entropy".into(),
            series: vec![
                Series {
                    name: "training loss".into(),
                    points: train_loss,
                    colour: TRAIN_LOSS,
                    dots: false,
                },
                Series {
                    name: "validation loss".into(),
                    points: val_loss,
                    colour: VAL_LOSS,
                    dots: true,
                },
            ],
            markers: markers.clone(),
            y_from_zero: true,
            y_range: None,
            empty_note: "no steps recorded".into(),
        },
        LinePanel {
            title: "Validation top-1".into(),
            x_label: "optimizer step".into(),
            y_label: "top-1 (%)".into(),
            series: vec![Series {
                name: "validation top-1".into(),
                points: top1,
                colour: VAL_TOP1,
                dots: true,
            }],
            markers: markers.clone(),
            y_from_zero: true,
            y_range: Some((0.0, 100.0)),
            empty_note: "no validation split, so no accuracy".into(),
        },
        LinePanel {
            title: "Learning rate".into(),
            x_label: "optimizer step".into(),
            y_label: "learning rate".into(),
            series: vec![Series {
                name: "learning rate".into(),
                points: lr,
                colour: LR,
                dots: false,
            }],
            markers: Vec::new(),
            y_from_zero: true,
            y_range: None,
            empty_note: "no steps recorded".into(),
        },
    ];
    for (i, p) in panels.iter().enumerate() {
        let top = (HEADER + i as u32 * PANEL) as f32;
        line_panel(
            &mut s,
            (0.0, top, WIDTH as f32, PANEL as f32),
            p,
            (0.0, x_max),
        );
    }
    s
}

/// Writes `curves.png` and `curves.svg` into `run`; returns their paths.
pub fn write(
    run: &Path,
    info: &CurvesInfo,
    history: &[serde_json::Value],
) -> std::io::Result<(PathBuf, PathBuf)> {
    let (png, svg) = (run.join("curves.png"), run.join("curves.svg"));
    crate::plot::save(&scene(info, history), &png, &svg)?;
    Ok((png, svg))
}

//! The pictures a person opens later, read back from the files: the SVG's words (title,
//! axis labels, legend entries, bar values) and the PNG's size and ink.
//! `PICTURES_OUT=DIR` keeps copies to look at.

#![cfg(feature = "mlx")]

use std::path::Path;

use mlx_coreml_pipeline::bench;
use mlx_coreml_pipeline::train::curves::{self, CurvesInfo};

/// The texts of an SVG file's `<text>` elements, unescaped.
fn svg_texts(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let body = &t[t.find('>').expect("text tag") + 1..t.find("</text>").expect("close")];
            body.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
        })
        .collect()
}

fn has(texts: &[String], want: &str) -> bool {
    texts.iter().any(|t| t.contains(want))
}

/// Share of pixels that are not white, and of dark ones (text, axes).
fn ink(path: &Path) -> (u32, u32, f64, f64) {
    let img = image::open(path).expect("png").to_rgb8();
    let n = f64::from(img.width() * img.height());
    let coloured = img.pixels().filter(|p| p.0 != [255, 255, 255]).count() as f64;
    let dark = img
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 120))
        .count() as f64;
    (img.width(), img.height(), coloured / n, dark / n)
}

/// Dark pixels in a horizontal band of the PNG: text drawn there.
fn dark_in_band(path: &Path, y0: u32, y1: u32) -> usize {
    let img = image::open(path).expect("png").to_rgb8();
    (y0..y1)
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 120))
        .count()
}

fn keep(files: &[&Path]) {
    if let Some(out) = std::env::var_os("PICTURES_OUT") {
        for f in files {
            std::fs::copy(f, Path::new(&out).join(f.file_name().unwrap())).expect("copy");
        }
    }
}

fn history(with_validation: bool) -> Vec<serde_json::Value> {
    let mut h = Vec::new();
    for step in 1..=120u32 {
        let s = f64::from(step);
        let lr = if step <= 10 {
            3e-3 * s / 10.0
        } else {
            3e-3 * 0.5 * (1.0 + (std::f64::consts::PI * (s - 10.0) / 110.0).cos())
        };
        h.push(serde_json::json!({"step": step, "loss": 2.3 * (-s / 40.0).exp() + 0.1, "lr": lr}));
        if with_validation && step % 20 == 0 {
            h.push(serde_json::json!({
                "step": step,
                "val_loss": 2.2 * (-s / 50.0).exp() + 0.2,
                "val_top1": 1.0 - 0.9 * (-s / 30.0).exp(),
            }));
        }
    }
    h
}

#[test]
fn training_curves_carry_their_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = CurvesInfo {
        title: "Training curves: quickstart (LoRA r8)".into(),
        subtitle: "preset:vit-micro8 on quickstart-data: 120 steps".into(),
        best: Some((100, "val top-1 96.9%".into())),
    };
    let (png, svg) = curves::write(dir.path(), &info, &history(true)).expect("write");
    keep(&[&png, &svg]);
    let texts = svg_texts(&svg);
    for want in [
        "Training curves: quickstart (LoRA r8)",
        "preset:vit-micro8 on quickstart-data",
        "Loss",
        "Validation top-1",
        "Learning rate",
        "optimizer step",
        "cross-entropy",
        "top-1 (%)",
        "training loss",
        "validation loss",
        "best checkpoint (step 100, val top-1 96.9%)",
    ] {
        assert!(has(&texts, want), "no {want:?} in {texts:?}");
    }
    // Tick values: steps on x, percent on the accuracy axis, the peak rate in 3e-3 style.
    for tick in ["0", "20", "120", "100", "2.5", "0.003"] {
        assert!(texts.iter().any(|t| t == tick), "tick {tick}: {texts:?}");
    }
    assert!(
        texts.iter().any(|t| t == "0.003" || t == "3e-3"),
        "{texts:?}"
    );

    let (w, h, coloured, dark) = ink(&png);
    assert_eq!((w, h), (curves::WIDTH, curves::HEIGHT));
    assert!(coloured > 0.02 && coloured < 0.5, "coloured {coloured}");
    assert!(dark > 0.003, "dark {dark}");
    // The title row has text in the PNG too, not only in the SVG.
    assert!(dark_in_band(&png, 8, 30) > 200);
}

#[test]
fn training_curves_without_validation_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = CurvesInfo {
        title: "Training curves: no-val (full fine-tuning)".into(),
        subtitle: "no validation split".into(),
        best: None,
    };
    let (png, svg) = curves::write(dir.path(), &info, &history(false)).expect("write");
    let (png2, svg2) = (
        dir.path().join("no-val-curves.png"),
        dir.path().join("no-val-curves.svg"),
    );
    std::fs::copy(&png, &png2).expect("copy");
    std::fs::copy(&svg, &svg2).expect("copy");
    keep(&[&png2, &svg2]);
    let texts = svg_texts(&svg);
    assert!(
        has(&texts, "no validation split, so no accuracy"),
        "{texts:?}"
    );
    assert!(!has(&texts, "best checkpoint"));
    // Series without points have no legend entry.
    assert!(has(&texts, "training loss") && !has(&texts, "validation loss"));
    let (_, _, coloured, _) = ink(&png);
    assert!(coloured > 0.01);
}

fn sample(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bench")
        .join(name)
}

/// Renders a sample report; returns the SVG's texts and the chart.
fn bench_chart(name: &str, stem: &str) -> (Vec<String>, bench::Chart, tempfile::TempDir) {
    let r = bench::read_report(&sample(name)).expect("report");
    let dir = tempfile::tempdir().expect("tempdir");
    let chart =
        bench::render_chart(&r, &dir.path().join(format!("{stem}.bench.png"))).expect("chart");
    keep(&[&chart.path, &chart.svg_path]);
    (svg_texts(&chart.svg_path), chart, dir)
}

#[test]
fn bench_chart_names_units_and_values() {
    let (texts, chart, _dir) = bench_chart("report-full.json", "full");
    for want in [
        "Core ML benchmark:",
        "Latency per prediction",
        "Throughput",
        "latency (ms)",
        "throughput (images/s)",
        "median (p50)",
        "whisker to p90",
        "one image at a time",
        "largest batch",
        "CPU only",
        "CPU + GPU",
        "CPU + Neural Engine",
        "all units",
        "batch 8",
    ] {
        assert!(has(&texts, want), "no {want:?} in {texts:?}");
    }
    // Every bar's value is written over it: the ANE median from the report, in ms.
    let ane = chart
        .bars
        .iter()
        .find(|b| b.units == bench::ComputeUnits::Ane && b.series == bench::Series::LatencyP50)
        .expect("ane latency");
    assert!(has(&texts, &format!("{:.2} ms", ane.value)), "{texts:?}");
    assert_eq!(
        texts.iter().filter(|t| t.ends_with(" ms")).count(),
        4,
        "{texts:?}"
    );
    let (w, h, coloured, dark) = ink(&chart.path);
    assert_eq!((w, h), (chart.width, chart.height));
    assert!(coloured > 0.03 && dark > 0.002, "{coloured} {dark}");
    assert!(dark_in_band(&chart.path, 8, 32) > 200, "title pixels");
}

#[test]
fn bench_chart_with_a_failed_unit_still_reads() {
    let (texts, chart, _dir) = bench_chart("report-failed-unit.json", "failed");
    assert_eq!(chart.failed, vec![bench::ComputeUnits::Ane]);
    assert!(has(&texts, "CPU + Neural Engine"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "failed"), "{texts:?}");
    assert!(
        has(
            &texts,
            "CPU + Neural Engine failed: loading with cpuAndNeuralEngine failed"
        ),
        "{texts:?}"
    );
    let (_, _, coloured, _) = ink(&chart.path);
    assert!(coloured > 0.02);
}

#[test]
fn bench_chart_of_a_cpu_only_report() {
    let (texts, chart, _dir) = bench_chart("report-minimal.json", "cpu-only");
    assert!(
        has(&texts, "CPU only") && !has(&texts, "CPU + GPU"),
        "{texts:?}"
    );
    // No batch sizes were measured: no batch bar, no batch legend entry.
    assert!(!has(&texts, "largest batch"), "{texts:?}");
    assert!(chart
        .bars
        .iter()
        .all(|b| b.units == bench::ComputeUnits::Cpu));
    assert_eq!(chart.bars.len(), 2, "{:?}", chart.bars);
    assert!(dark_in_band(&chart.path, 8, 32) > 200);
}

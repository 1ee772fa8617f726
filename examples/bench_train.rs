//! Training-step benchmark: our step (the trainer's own `train::step::compute`) against a
//! minimal Python MLX loop on the same shapes and random inputs.
//!
//! `bash scripts/setup-bench.sh` once (Python MLX 0.32.2 in .mlx/bench-venv, OpenBLAS),
//! then `cargo run --release --example bench_train [-- --quick] [-- --repeats N]`.
//!
//! Each configuration runs in a child process so its peak RSS is its own. Our step uses
//! every core through the trainer's lanes (`BENCH_CPU_THREADS=1` for one stream).

mod common;

use std::process::Command;

use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::convert::preset;
use mlx_coreml_pipeline::model;
use mlx_coreml_pipeline::rng::Rng;
use mlx_coreml_pipeline::train::{self, LoraConfig};
use mlx_rs::Array;

struct Case {
    preset: &'static str,
    batch: usize,
    mode: &'static str,
    checkpoint: bool,
}

struct Loaded {
    config: mlx_coreml_pipeline::config::ModelConfig,
}

fn bench_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-train")
}

/// Runs one configuration in this process and prints `ms img/s rss`.
fn child(preset_name: &str, batch: usize, mode: &str, checkpoint: bool, steps: usize) {
    if let Ok(limit) = std::env::var("BENCH_MLX_CACHE_LIMIT") {
        mlx_rs::memory::set_cache_limit(limit.parse().expect("bytes")).expect("cache limit");
    }
    // Written by the parent, so generating it does not count in this process's peak RSS;
    // the file is unmapped once the model holds the weights.
    let dir = bench_dir().join(preset_name);
    let ck = Checkpoint::load(&dir).expect("load");
    let mut vit = model::from_checkpoint(&ck).expect("model");
    let ck = Loaded {
        config: ck.config.clone(),
    };
    let d = ck.config.hidden_size;
    let classes = 10;
    let mut rng = Rng::new(1);
    let w: Vec<f32> = (0..classes * d).map(|_| rng.normal() * 0.02).collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[classes as i32, d as i32]));
    vit.head.bias.value = Some(Array::from_slice(&vec![0f32; classes], &[classes as i32]));
    let cfg = train::TrainConfig {
        mode: if mode == "full" {
            train::Mode::Full
        } else {
            train::Mode::Lora
        },
        ..Default::default()
    };
    if cfg.mode == train::Mode::Lora {
        train::lora::attach(&mut vit, &LoraConfig::default(), 0).expect("lora");
    }
    train::set_trainable(&mut vit, &cfg, true);
    vit.grad_checkpoint = checkpoint;
    let s = ck.config.image_size;
    let x: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.normal()).collect();
    let x = Array::from_slice(&x, &[batch as i32, 3, s as i32, s as i32]);
    let labels: Vec<i32> = (0..batch).map(|i| (i % classes) as i32).collect();
    let y = Array::from_slice(&labels, &[batch as i32]);
    let _ = mlx_rs::memory::reset_peak_memory();
    let ms = common::mean_step_ms(&mut vit, &x, &y, 2, steps, 1e-3).expect("step");
    println!(
        "{ms} {} {} {}",
        batch as f64 * 1000.0 / ms,
        common::peak_rss_bytes(),
        mlx_rs::memory::peak_memory().unwrap_or(0)
    );
}

fn run_child(args: &[String]) -> Option<Vec<f64>> {
    let exe = std::env::current_exe().ok()?;
    let o = Command::new(exe).arg("--child").args(args).output().ok()?;
    if !o.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect(),
    )
}

fn python_mlx(c: &Case, steps: usize) -> Option<Vec<f64>> {
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".mlx/bench-venv/bin/python");
    if !py.exists() {
        return None;
    }
    let p = preset::find(c.preset)?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_train_mlx.py");
    let o = Command::new(py)
        .arg(script)
        .args([
            "--hidden",
            &p.hidden.to_string(),
            "--depth",
            &p.layers.to_string(),
            "--heads",
            &p.heads.to_string(),
        ])
        .args([
            "--batch",
            &c.batch.to_string(),
            "--size",
            &p.image.to_string(),
            "--patch",
            &p.patch.to_string(),
        ])
        .args(["--mode", c.mode, "--steps", &steps.to_string()])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    Some(vec![
        v["ms_per_step"].as_f64()?,
        v["images_per_second"].as_f64()?,
        v["peak_rss_bytes"].as_f64()?,
    ])
}

/// The run with the median step time; peak memory is the largest of all runs.
fn median_run(runs: &[Vec<f64>]) -> Option<Vec<f64>> {
    let mut sorted: Vec<&Vec<f64>> = runs.iter().filter(|r| r.len() >= 3).collect();
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut m = (*sorted.get(sorted.len().checked_sub(1)? / 2)?).clone();
    for (i, v) in m.iter_mut().enumerate().skip(2) {
        *v = runs
            .iter()
            .filter_map(|r| r.get(i))
            .fold(0.0, |a, &b| a.max(b));
    }
    Some(m)
}

/// `min-max` of the step times.
fn range(runs: &[Vec<f64>]) -> String {
    let t = runs.iter().filter_map(|r| r.first());
    let (lo, hi) = t.fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    format!("{lo:.0}-{hi:.0}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let steps = args[6].parse().expect("steps");
        child(
            &args[2],
            args[3].parse().expect("batch"),
            &args[4],
            args[5] == "1",
            steps,
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<&String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let steps = if quick { 2 } else { 5 };
    // This machine's speed drifts by 10-20% between runs, so each configuration runs ours
    // and Python's alternately `repeats` times and the medians are compared.
    let repeats: usize = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let mut cases = vec![
        Case {
            preset: "vit-ti16",
            batch: 8,
            mode: "lora",
            checkpoint: false,
        },
        Case {
            preset: "vit-ti16",
            batch: 8,
            mode: "lora",
            checkpoint: true,
        },
    ];
    if !quick {
        cases.extend([
            Case {
                preset: "vit-b16",
                batch: 8,
                mode: "lora",
                checkpoint: false,
            },
            Case {
                preset: "vit-b16",
                batch: 8,
                mode: "lora",
                checkpoint: true,
            },
        ]);
    }
    if let Some(o) = only {
        cases.retain(|c| format!("{}{}", c.preset, if c.checkpoint { "-ckpt" } else { "" }) == *o);
    }
    println!("| model | batch | mode | grad ckpt | ours ms/step (median, range) | ours img/s | ours peak RSS | ours MLX peak | Python MLX ms/step (median, range) | Python MLX peak RSS | speed ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &cases {
        let dir = bench_dir().join(c.preset);
        if !dir.join("model.safetensors").exists() {
            preset::write_random(c.preset, 0, &dir, true).expect("preset");
        }
        let a: Vec<String> = vec![
            c.preset.into(),
            c.batch.to_string(),
            c.mode.into(),
            (c.checkpoint as u8).to_string(),
            steps.to_string(),
        ];
        let mut ours_runs: Vec<Vec<f64>> = Vec::new();
        let mut py_runs: Vec<Vec<f64>> = Vec::new();
        for _ in 0..repeats {
            ours_runs.extend(run_child(&a));
            if !c.checkpoint {
                py_runs.extend(python_mlx(c, steps));
            }
        }
        let Some(ours) = median_run(&ours_runs) else {
            println!(
                "| {} | {} | {} | {} | failed |",
                c.preset, c.batch, c.mode, c.checkpoint
            );
            continue;
        };
        let py = median_run(&py_runs);
        let (py_ms, py_rss, ratio) = match &py {
            Some(p) => (
                format!("{:.0} ({})", p[0], range(&py_runs)),
                format!("{:.2} GB", p[2] / 1e9),
                format!("{:.2}x", p[0] / ours[0]),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} ({}) | {:.2} | {:.2} GB | {:.2} GB | {} | {} | {} |",
            c.preset,
            c.batch,
            c.mode,
            c.checkpoint,
            ours[0],
            range(&ours_runs),
            ours[1],
            ours[2] / 1e9,
            ours.get(3).copied().unwrap_or(0.0) / 1e9,
            py_ms,
            py_rss,
            ratio
        );
    }
}

//! Export benchmark: a randomly initialised ViT-B/16 (224 px, hidden 768, 12 layers,
//! 12 heads, MLP 3072, 1000 classes: 86.6M parameters) exported to an fp16 package.
//! Prints wall time and peak RSS of the export.
//!
//!     cargo run --release --no-default-features --example bench_export [-- RUNS]
//!
//! The checkpoint is made in this process; each export runs in a child process so that
//! its peak RSS (VmHWM) is the export's alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use mlx_coreml_pipeline::checkpoint;
use mlx_coreml_pipeline::convert::preset;
use mlx_coreml_pipeline::coreml::{export, ExportOptions, Precision};

fn child(ck: &Path, out: &Path) {
    let opts = ExportOptions {
        precision: Precision::Fp16,
        force: true,
        ..Default::default()
    };
    let t = Instant::now();
    let report = export(ck, out, &opts).unwrap_or_else(|e| {
        eprintln!("export failed: {e}");
        std::process::exit(1)
    });
    let wall = t.elapsed().as_secs_f64();
    let hwm = common::peak_rss_bytes() / 1024;
    println!("{report}");
    println!(
        "RESULT wall_s={wall:.4} vmhwm_kib={hwm} package_bytes={}",
        report.package_bytes
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--child" {
        child(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let tmp = std::env::temp_dir().join(format!("bench-export-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    // ViT-B/16 with a 1000-class head, timm-style random init.
    let mut cfg = preset::find("vit-b16").expect("preset").config();
    cfg.num_classes = 1000;
    let params = cfg.num_parameters();
    let t = Instant::now();
    let tensors = preset::random_tensors(&cfg, 1);
    let ck: PathBuf = tmp.join("vit_b16");
    checkpoint::write(&ck, &cfg, &tensors, true).expect("write checkpoint");
    drop(tensors);
    println!(
        "checkpoint: {params} parameters ({:.1} MB fp32), written in {:.1} s",
        params as f64 * 4.0 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().expect("own path");
    let out = tmp.join("vit_b16.mlpackage");
    let mut results = Vec::new();
    for i in 0..runs {
        let o = Command::new(&exe)
            .args(["--child".as_ref(), ck.as_os_str(), out.as_os_str()])
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            eprintln!("{text}{}", String::from_utf8_lossy(&o.stderr));
            std::process::exit(1);
        }
        if i == 0 {
            for l in text.lines().filter(|l| !l.starts_with("RESULT")) {
                println!("{l}");
            }
        }
        let line = text
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .expect("result line");
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        results.push((field("wall_s"), field("vmhwm_kib") * 1024.0));
        println!(
            "run {}: {:.3} s, peak RSS {:.1} MB",
            i + 1,
            field("wall_s"),
            field("vmhwm_kib") * 1024.0 / 1e6
        );
    }
    let fp32 = params as f64 * 4.0;
    let best = results.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let rss = results.iter().map(|r| r.1).fold(0.0, f64::max);
    println!(
        "export fp16: best {best:.3} s over {runs} runs (target < 1 s); peak RSS {:.1} MB = {:.2}x the fp32 weights (target < 1.5x)",
        rss / 1e6,
        rss / fp32
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

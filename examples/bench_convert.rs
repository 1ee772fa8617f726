//! Benchmark: convert a randomly initialised ViT-B/16 (86M parameters, float32) written
//! in timm's layout, and report wall time and peak resident memory of the conversion.
//!
//! `cargo run --release --example bench_convert [-- --repeat N]`
//!
//! The checkpoint is generated once into target/bench-convert/; the conversion then runs
//! in a child process so its peak RSS (VmHWM) is the conversion's alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use common::peak_rss_bytes;
use mlx_coreml_pipeline::checkpoint::{write_safetensors, TensorOut};
use mlx_coreml_pipeline::convert::{self, preset};

/// Our tensor names -> timm's, with timm's leading singleton axes.
fn timm_name(ours: &str, shape: &[usize]) -> (String, Vec<usize>) {
    match ours {
        "patch_embed.weight" => ("patch_embed.proj.weight".into(), shape.to_vec()),
        "patch_embed.bias" => ("patch_embed.proj.bias".into(), shape.to_vec()),
        "cls_token" => ("cls_token".into(), [&[1, 1][..], shape].concat()),
        "pos_embed" => ("pos_embed".into(), [&[1][..], shape].concat()),
        other => (other.to_string(), shape.to_vec()),
    }
}

fn make_source(dir: &Path) {
    if dir.join("model.safetensors").exists() {
        return;
    }
    std::fs::create_dir_all(dir).expect("bench dir");
    let config = preset::find("vit-b16").expect("preset").config();
    let tensors: Vec<TensorOut<'static>> = preset::random_tensors(&config, 1)
        .into_iter()
        .map(|t| {
            let (name, shape) = timm_name(&t.name, &t.shape);
            TensorOut {
                name,
                shape,
                data: t.data,
            }
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).expect("write source");
    let cfg = serde_json::json!({
        "architecture": "vit_base_patch16_224",
        "num_classes": 0,
        "model_args": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (src, out) = (&args[2], PathBuf::from(&args[3]));
        let t = Instant::now();
        let opts = convert::ConvertOptions {
            force: true,
            ..Default::default()
        };
        let r = convert::convert(src, &out, &opts).expect("convert");
        println!(
            "{} {} {}",
            t.elapsed().as_secs_f64(),
            peak_rss_bytes(),
            r.parameters
        );
        return;
    }
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-convert");
    let src = root.join("vit-b16-timm");
    make_source(&src);
    let size = std::fs::metadata(src.join("model.safetensors"))
        .expect("source")
        .len();
    println!(
        "source: {} ({:.1} MB, fp32 ViT-B/16 in timm layout)",
        src.display(),
        size as f64 / 1e6
    );
    let exe = std::env::current_exe().expect("exe");
    for i in 0..repeat {
        let out = root.join("converted");
        let o = Command::new(&exe)
            .args([
                "--child",
                src.to_str().expect("utf-8"),
                out.to_str().expect("utf-8"),
            ])
            .output()
            .expect("child");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = String::from_utf8_lossy(&o.stdout);
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        println!(
            "run {}: {:.3} s wall, peak RSS {:.1} MB = {:.2}x the checkpoint, {:.1}M parameters (targets: < 2 s, < 1.5x)",
            i + 1,
            f[0],
            f[1] / 1e6,
            f[1] / size as f64,
            f[2] / 1e6
        );
    }
}

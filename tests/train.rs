//! Training end to end on real and synthetic images: accuracy, what changes, adapter
//! round trip, kill + resume, non-finite loss, bad images and labels.
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::train::{self, adapters, BadImagePolicy, Mode, TrainConfig};

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

fn micro_model(dir: &Path) -> PathBuf {
    let out = dir.join("base");
    mlx_coreml_pipeline::convert::convert("preset:vit-micro8", &out, &Default::default()).unwrap();
    out
}

/// Three classes of 32x32 images a small model separates quickly: red, green and blue
/// squares at varying positions on noise.
fn synthetic_folder(root: &Path, per_class: usize) {
    for split in ["train", "val"] {
        for (c, name) in ["red", "green", "blue"].iter().enumerate() {
            let dir = root.join(split).join(name);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let off = (i * 7 % 16) as u32;
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let inside = (off..off + 14).contains(&x) && (off..off + 14).contains(&y);
                    let n = ((x * 31 + y * 17 + i as u32 * 13) % 64) as u8;
                    let mut p = [n, n, n];
                    if inside {
                        p[c] = 230;
                    }
                    image::Rgb(p)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

fn quick_config(data: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        epochs: 2,
        batch_size: 8,
        lr: 3e-3,
        workers: 2,
        augment: false,
        ..Default::default()
    }
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    read_tensors(path)
}

#[test]
fn lora_on_digits_learns_and_changes_only_adapters_and_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("digits");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_digits_dataset.py");
    let st = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .status()
        .expect("python3");
    assert!(
        st.success(),
        "make_digits_dataset.py failed (needs `pip install scikit-learn`)"
    );
    let base = micro_model(tmp.path());
    let run = tmp.path().join("run");
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 32,
        lr: 3e-3,
        ..quick_config(&data)
    };
    let r = train::train(&base, &run, &cfg, false, false, true).unwrap();
    let e = r.final_eval.expect("validation ran");
    // 10 classes: chance is 10%.
    assert!(
        e.top1 > 0.5,
        "val top-1 {} is not well above chance",
        e.top1
    );
    assert!(e.top5.is_some());
    assert_eq!(e.confusion.len(), 10);

    // Only LoRA matrices and the new head were trained.
    let trained = read(&run.join("checkpoint/trainable.safetensors"));
    assert!(
        trained
            .keys()
            .all(|k| k.ends_with(".lora_a") || k.ends_with(".lora_b") || k.starts_with("head.")),
        "{:?}",
        trained.keys()
    );
    assert_eq!(
        trained.keys().filter(|k| k.ends_with(".lora_a")).count(),
        16
    );
    // Every base tensor is bit-identical: the base file is untouched and the adapters
    // file holds nothing else.
    let ck = Checkpoint::load(&base).unwrap();
    let acfg = adapters::read_config(&run.join("adapters")).unwrap();
    assert_eq!(acfg.base_model_hash, ck.content_hash());
    let adapter_tensors = read(&run.join("adapters/adapters.safetensors"));
    assert_eq!(
        adapter_tensors.keys().collect::<Vec<_>>(),
        trained.keys().collect::<Vec<_>>()
    );
    for name in ck.config.tensor_shapes().into_iter().map(|(n, _)| n) {
        assert!(
            !adapter_tensors.contains_key(&name) || name.starts_with("head."),
            "base tensor {name} in adapters"
        );
    }
    // The outputs the run promises.
    for f in [
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "summary.md",
        "best/adapters.safetensors",
        "run.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let png = image::open(run.join("curves.png")).unwrap();
    assert!(png.width() > 100);
}

fn adapters_bytes(run: &Path) -> Vec<u8> {
    fs::read(run.join("adapters/adapters.safetensors")).unwrap()
}

#[test]
fn killed_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 16);
    let base = micro_model(tmp.path());
    let args = |run: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--save-every",
            "1",
            "--seed",
            "5",
            "--lora-dropout",
            "0.1",
            // Batches split over two lanes whatever the machine's core count.
            "--cpu-threads",
            "2",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Uninterrupted reference run.
    let full = tmp.path().join("full");
    assert!(pipeline().args(args(&full)).status().unwrap().success());
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(full.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["lanes"], 2, "{summary}");

    // Same run, killed with SIGKILL once it has saved a few steps, then resumed.
    let killed = tmp.path().join("killed");
    let mut child = pipeline().args(args(&killed)).spawn().unwrap();
    let state = killed.join("checkpoint/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let step = fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if step >= 4 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    assert!(!killed.join("adapters").exists());
    let o = pipeline()
        .args(["train", "--resume", killed.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        adapters_bytes(&killed),
        adapters_bytes(&full),
        "resumed run must end with the same weights"
    );
    // metrics.jsonl has each step once.
    let steps: Vec<u64> = fs::read_to_string(killed.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let mut dedup = steps.clone();
    dedup.dedup();
    assert_eq!(steps, dedup);
    assert_eq!(steps.len(), 18);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 16);
    let base = micro_model(tmp.path());
    let run = tmp.path().join("run");
    let cfg = TrainConfig {
        mode: Mode::Full,
        lr: 1e30,
        clip_norm: 0.0,
        weight_decay: 0.0,
        save_every: 1,
        schedule: train::Schedule::Constant,
        ..quick_config(&data)
    };
    let err = train::train(&base, &run, &cfg, false, false, true).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not finite") && msg.contains("step "), "{msg}");
    let train::TrainError::NonFinite {
        step, last_good, ..
    } = err
    else {
        panic!("{msg}")
    };
    assert!(step >= 2, "the first step's loss is finite; step {step}");
    assert_eq!(last_good, step - 1);
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, last_good);
    let params = read(&run.join("checkpoint/trainable.safetensors"));
    assert!(
        params
            .values()
            .all(|t| t.data.iter().all(|v| v.is_finite())),
        "kept checkpoint must be finite"
    );
}

#[test]
fn bad_images_fail_or_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 8);
    fs::write(data.join("train/red/broken.png"), b"definitely not a png").unwrap();
    let base = micro_model(tmp.path());
    let err = train::train(
        &base,
        &tmp.path().join("a"),
        &quick_config(&data),
        false,
        false,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("broken.png"), "{err}");
    let cfg = TrainConfig {
        bad_images: BadImagePolicy::Skip,
        epochs: 1,
        ..quick_config(&data)
    };
    let r = train::train(&base, &tmp.path().join("b"), &cfg, false, false, true).unwrap();
    assert_eq!(r.skipped_images, 1);
    let summary = fs::read_to_string(tmp.path().join("b/summary.md")).unwrap();
    assert!(summary.contains("| skipped images | 1 |"), "{summary}");
}

#[test]
fn label_outside_the_class_list_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 4);
    let csv = tmp.path().join("train.csv");
    let val = tmp.path().join("val.csv");
    fs::write(
        &csv,
        "image_path,label\ndata/train/red/0.png,red\ndata/train/blue/0.png,blue\n",
    )
    .unwrap();
    fs::write(&val, "image_path,label\ndata/val/green/0.png,green\n").unwrap();
    let base = micro_model(tmp.path());
    let cfg = TrainConfig {
        val_data: Some(val.clone()),
        ..quick_config(&csv)
    };
    let err = train::train(&base, &tmp.path().join("run"), &cfg, false, false, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("val.csv") && err.contains("green"), "{err}");
}

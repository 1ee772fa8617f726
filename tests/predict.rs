//! `pipeline predict` against independent numbers: the softmax of `pipeline embed`'s
//! logits (the MLX forward), and the reference outputs `verify --reference-out` wrote for
//! the same images; plus the errors a user meets.
#![cfg(feature = "mlx")]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

fn images() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart-data/val");
    ["0", "3", "7"]
        .iter()
        .map(|c| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.remove(0)
        })
        .collect()
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|v| (*v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn predict_json(args: &[&OsStr]) -> serde_json::Value {
    let out = common::run_ok(pipeline().arg("predict").args(args).arg("--json"));
    serde_json::from_str(&out).expect("predict --json")
}

/// class name -> probability for every class of each image.
fn all_classes(v: &serde_json::Value) -> Vec<std::collections::BTreeMap<String, f64>> {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["class"].as_str().unwrap().to_string(),
                        c["probability"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn predict_matches_the_mlx_forward_and_verify() {
    let (tmp, model) = common::converted("hf-vit-classifier");
    let imgs = images();
    let names = ["adipose", "background", "debris", "lymphocytes", "tumor"];

    // The MLX forward through `embed`: logits, softmaxed here.
    let emb = tmp.path().join("emb.safetensors");
    common::run_ok(
        pipeline()
            .args(["embed", "--model"])
            .arg(&model)
            .args(&imgs)
            .arg("--out")
            .arg(&emb),
    );
    let t = common::read_tensors(&emb);
    let logits = &t["logits"];
    let k = names.len();

    let mut args: Vec<&OsStr> = vec![OsStr::new("--model"), model.as_os_str()];
    args.extend(imgs.iter().map(|p| p.as_os_str()));
    args.extend([OsStr::new("-k"), OsStr::new("5")]);
    let by_model = predict_json(&args);
    assert_eq!(by_model["runtime"], "mlx");
    let model_probs = all_classes(&by_model);
    for (i, row) in logits.data.chunks(k).enumerate() {
        let want = softmax(row);
        for (c, name) in names.iter().enumerate() {
            let got = model_probs[i][*name];
            assert!((got - want[c]).abs() < 1e-6, "{name}: {got} vs {}", want[c]);
        }
        // Most likely first.
        let top: Vec<f64> = by_model["predictions"][i]["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["probability"].as_f64().unwrap())
            .collect();
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "{top:?}");
    }

    // The package through the interpreter against verify's reference for the same images.
    let pkg = tmp.path().join("m.mlpackage");
    common::run_ok(
        pipeline()
            .arg("export")
            .arg(&model)
            .arg("--out")
            .arg(&pkg)
            .args([
                "--precision",
                "fp32",
                "--input",
                "image",
                "--output",
                "classifier",
            ]),
    );
    let reference = tmp.path().join("reference.json");
    common::run_ok(
        pipeline()
            .arg("verify")
            .arg(&pkg)
            .arg("--model")
            .arg(&model)
            .arg("--images")
            .args(&imgs)
            .arg("--reference-out")
            .arg(&reference),
    );
    let r = mlx_coreml_pipeline::bench::ReferenceFile::read(&reference).expect("reference");
    let probs = &r.outputs["classLabel_probs"];
    let labels = r.class_labels.clone().expect("labels");
    let mut args: Vec<&OsStr> = vec![pkg.as_os_str()];
    args.extend(imgs.iter().map(|p| p.as_os_str()));
    let by_pkg = predict_json(&args);
    assert_eq!(by_pkg["runtime"], "interpreter");
    let pkg_probs = all_classes(&by_pkg);
    for (i, row) in probs.data.chunks(labels.len()).enumerate() {
        for (c, name) in labels.iter().enumerate() {
            let got = pkg_probs[i][name];
            assert!(
                (got - f64::from(row[c])).abs() < 1e-4,
                "image {i} {name}: package {got} vs verify's {}",
                row[c]
            );
            assert!((got - model_probs[i][name]).abs() < 1e-4);
        }
    }

    // The table names each image and its classes.
    let table = common::run_ok(
        pipeline()
            .arg("predict")
            .arg(&pkg)
            .arg(&imgs[0])
            .args(["-k", "2"]),
    );
    assert!(table.contains("interpreter, 5 classes"), "{table}");
    assert!(
        table.contains(imgs[0].to_str().unwrap()) && table.contains("  1. "),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains('%')).count(),
        2,
        "{table}"
    );
}

fn fails(args: &[&OsStr]) -> String {
    let o = pipeline().arg("predict").args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn predict_errors_name_the_problem() {
    let (tmp, backbone) = common::converted("hf-vit-backbone");
    let img = images().remove(0);
    let err = fails(&[OsStr::new("--model"), backbone.as_os_str(), img.as_os_str()]);
    assert!(err.contains("no classification head"), "{err}");

    let (_t2, classifier) = common::converted("hf-vit-classifier");
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let err = fails(&[
        OsStr::new("--model"),
        classifier.as_os_str(),
        broken.as_os_str(),
    ]);
    assert!(
        err.contains("broken.png") && err.contains("cannot read image"),
        "{err}"
    );

    // A features package scores no classes.
    let pkg = tmp.path().join("features.mlpackage");
    common::run_ok(
        pipeline()
            .arg("export")
            .arg(&backbone)
            .arg("--out")
            .arg(&pkg)
            .args(["--output", "features"]),
    );
    let err = fails(&[pkg.as_os_str(), img.as_os_str()]);
    assert!(err.contains("no classifier or logits output"), "{err}");

    let err = fails(&[img.as_os_str()]);
    assert!(err.contains("--model DIR"), "{err}");

    // Core ML itself is for macOS; elsewhere it says so before reading any image.
    if !cfg!(target_os = "macos") {
        let missing = tmp.path().join("missing.png");
        let err = fails(&[
            pkg.as_os_str(),
            missing.as_os_str(),
            OsStr::new("--runtime"),
            OsStr::new("coreml"),
        ]);
        assert!(err.contains("macOS"), "{err}");
    }
}

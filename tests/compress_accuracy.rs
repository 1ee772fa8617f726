//! Compressed packages on real labelled images: a small ViT trained on scikit-learn's
//! digits, exported fp16 and with each compression method, judged by `pipeline verify
//! --data` on the validation split: top-1 lost against the fp16 package, and the weight
//! bytes against fp16's.
#![cfg(feature = "mlx")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

fn weight_bytes(pkg: &Path) -> u64 {
    std::fs::metadata(pkg.join("Data/com.apple.CoreML/weights/weight.bin"))
        .unwrap()
        .len()
}

/// Verifies `pkg` on the digits' validation split; returns (package top-1, model top-1,
/// pass, rule).
fn verify_on(pkg: &Path, model: &Path, data: &Path) -> (f64, f64, bool, String) {
    let json = pkg.with_extension("verify.json");
    let o = pipeline()
        .arg("verify")
        .arg(pkg)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n{}",
                json.display(),
                String::from_utf8_lossy(&o.stderr)
            )
        }))
        .unwrap();
    let a = &r["accuracy"];
    (
        a["package_top1"].as_f64().unwrap(),
        a["reference_top1"].as_f64().unwrap(),
        o.status.success() && r["pass"].as_bool().unwrap(),
        r["rule"].as_str().unwrap().to_string(),
    )
}

fn trained_digits_model(tmp: &Path) -> (PathBuf, PathBuf) {
    let data = tmp.join("digits");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_digits_dataset.py");
    let st = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success(), "make_digits_dataset.py (needs scikit-learn)");
    let base = tmp.join("base");
    common::run_ok(
        pipeline()
            .args(["convert", "preset:vit-micro8", "--out"])
            .arg(&base),
    );
    // Full fine-tuning: every weight learned (a LoRA on a random base keeps its function
    // in small deltas that any weight noise swamps, unlike a real pretrained model).
    let run = tmp.join("run");
    common::run_ok(
        pipeline()
            .args(["train", "--model"])
            .arg(&base)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args([
                "--mode",
                "full",
                "--epochs",
                "8",
                "--batch-size",
                "32",
                "--lr",
                "1e-3",
            ])
            .args(["--warmup-steps", "20", "--no-augment", "--quiet"]),
    );
    (run.join("model"), data)
}

#[test]
fn compressed_packages_keep_top1_on_digits_at_a_fraction_of_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = trained_digits_model(tmp.path());
    let fp16 = tmp.path().join("fp16.mlpackage");
    common::run_ok(pipeline().arg("export").arg(&model).arg("--out").arg(&fp16));
    let (fp16_top1, model_top1, pass, rule) = verify_on(&fp16, &model, &data);
    assert!(pass, "the fp16 package fails verify");
    assert_eq!(rule, "thresholds");
    assert!(
        model_top1 > 0.7,
        "the digits model is too weak to judge by ({model_top1})"
    );
    let mut report = vec![format!("fp16: top-1 {:.2}%", fp16_top1 * 100.0)];
    // (method, most top-1 points it may lose against fp16, most bytes against fp16)
    for (method, max_drop, max_bytes) in [
        ("int8", 0.5, 0.55),
        ("palette6", 0.5, 0.42),
        ("palette4", 2.0, 0.30),
    ] {
        let pkg = tmp.path().join(format!("{method}.mlpackage"));
        common::run_ok(
            pipeline()
                .arg("export")
                .arg(&model)
                .arg("--out")
                .arg(&pkg)
                .args(["--compress", method]),
        );
        let (top1, _, pass, rule) = verify_on(&pkg, &model, &data);
        assert_eq!(rule, "top1_drop", "{method}");
        let drop = (fp16_top1 - top1) * 100.0;
        let bytes = weight_bytes(&pkg) as f64 / weight_bytes(&fp16) as f64;
        report.push(format!(
            "{method}: top-1 {:.2}% ({drop:+.2} points lost), weight bytes {bytes:.3}x fp16",
            top1 * 100.0
        ));
        println!("{}", report.last().unwrap());
        assert!(pass, "{method}: verify fails");
        assert!(
            drop <= max_drop,
            "{method} loses {drop} points of top-1 (at most {max_drop})"
        );
        assert!(
            bytes <= max_bytes,
            "{method}: {bytes:.3}x the fp16 bytes (at most {max_bytes})"
        );
    }
    println!("{}", report.join("\n"));
}

//! Adapters -> merge -> export -> verify, through the library and the CLI.
#![cfg(feature = "mlx")]

mod common;

use std::process::Command;

use common::*;
use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model;
use mlx_coreml_pipeline::train::adapters;
use mlx_rs::Array;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

#[test]
fn merge_matches_the_adapter_forward() {
    for name in ["timm-vit-reg-swiglu", "hf-vit-backbone"] {
        let tmp = tempfile::tempdir().unwrap();
        let (base, ad) = base_and_adapters(tmp.path(), name);
        let out = tmp.path().join("merged");
        let r = mlx_coreml_pipeline::merge::merge(&base, &ad, &out, false).unwrap();
        assert!(r.max_abs_diff < 1e-5, "{name}: {}", r.max_abs_diff);
        assert_eq!(r.replaced.len(), 3);

        // Independently: base + adapters (unmerged) vs the merged checkpoint on the
        // fixture's reference pixels.
        let ck = Checkpoint::load(&base).unwrap();
        let mut with = model::from_checkpoint(&ck).unwrap();
        adapters::apply(&ad, &mut with, &ck.content_hash()).unwrap();
        let merged = model::from_checkpoint(&Checkpoint::load(&out).unwrap()).unwrap();
        assert_eq!(merged.config.class_names.as_ref().unwrap().len(), 4);
        let px = &reference(name)["pixel_values"];
        let shape: Vec<i32> = px.shape.iter().map(|d| *d as i32).collect();
        let x = Array::from_slice(&px.data, &shape);
        let a = model::to_host(&with.forward(&x).unwrap().logits.unwrap()).unwrap();
        let b = model::to_host(&merged.forward(&x).unwrap().logits.unwrap()).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "{name}: merged logits differ by {d}");
        // The PEFT layout was written for this timm / transformers base.
        assert!(ad.join("peft/adapter_model.safetensors").exists());
    }
}

/// The classic-name folder names modules that a checkpoint transformers itself wrote has
/// (the fixture's keys are transformers 4's runtime names); `tests/peft_interop.rs` loads
/// both folders with the real libraries.
#[test]
fn peft_transformers4_keys_name_the_modules_of_a_transformers_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, ad) = base_and_adapters(tmp.path(), "hf-vit-classifier");
    let written: Vec<String> =
        read_tensors(&fixture("hf-vit-classifier").join("model.safetensors"))
            .into_keys()
            .collect();
    let keys: Vec<String> = read_tensors(&ad.join("peft-transformers4/adapter_model.safetensors"))
        .into_keys()
        .collect();
    let mut lora = 0;
    for key in &keys {
        let rest = key.strip_prefix("base_model.model.").expect("PEFT prefix");
        let module = rest
            .strip_suffix(".lora_A.weight")
            .or_else(|| rest.strip_suffix(".lora_B.weight"));
        let want = match module {
            Some(m) => {
                lora += 1;
                format!("{m}.weight")
            }
            None => rest.to_string(),
        };
        assert!(
            written.contains(&want),
            "`{key}`: transformers wrote no `{want}`"
        );
    }
    assert_eq!(lora, 2 * 12, "{keys:?}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ad.join("peft/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["modules_to_save"],
        serde_json::json!(["classifier", "vit.layernorm"])
    );
}

#[test]
fn merge_refuses_adapters_of_another_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, ad) = base_and_adapters(tmp.path(), "hf-dinov2");
    let (_t, other) = converted("hf-dinov2-registers");
    let out = tmp.path().join("merged");
    let o = pipeline()
        .args(["merge", "--base"])
        .arg(&other)
        .arg("--adapters")
        .arg(&ad)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("trained on base model") && err.contains("adapter_config.json"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn cli_export_then_verify_against_mlx_and_catch_a_wrong_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, ad) = base_and_adapters(tmp.path(), "timm-vit-classifier");
    let merged = tmp.path().join("merged");
    let o = pipeline()
        .args(["merge", "--base"])
        .arg(&base)
        .arg("--adapters")
        .arg(&ad)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (precision, input) in [("fp16", "image"), ("fp32", "array")] {
        let pkg = tmp.path().join(format!("m-{precision}.mlpackage"));
        let o = pipeline()
            .arg("export")
            .arg(&merged)
            .arg("--out")
            .arg(&pkg)
            .args([
                "--precision",
                precision,
                "--input",
                input,
                "--author",
                "tests",
                "--meta",
                "dataset=none",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = run_ok(
            pipeline()
                .arg("verify")
                .arg(&pkg)
                .arg("--model")
                .arg(&merged),
        );
        assert!(text.contains("PASS"), "{text}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(pkg.with_extension("verify.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(report["pass"], true);
        // Against the base (other head, no adapters) the same package must fail.
        let o = pipeline()
            .arg("verify")
            .arg(&pkg)
            .arg("--model")
            .arg(&base)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "verify accepted a package against the wrong model"
        );
    }
    // An existing package is only replaced with --force.
    let pkg = tmp.path().join("m-fp16.mlpackage");
    let o = pipeline()
        .arg("export")
        .arg(&merged)
        .arg("--out")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert!(pkg.join("Manifest.json").exists());
}

//! Convert every fixture, run the MLX forward on its reference inputs and compare with
//! the outputs transformers / timm computed (float32, 1e-4 max abs).
#![cfg(feature = "mlx")]

mod common;

use common::*;
use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model;
use mlx_rs::Array;

const ATOL: f32 = 1e-4;

fn to_array(t: &Tensor) -> Array {
    let shape: Vec<i32> = t.shape.iter().map(|d| *d as i32).collect();
    Array::from_slice(&t.data, &shape)
}

fn check(name: &str) {
    let (_tmp, dir) = converted(name);
    let ck = Checkpoint::load(&dir).expect("load converted");
    let vit = model::from_checkpoint(&ck).expect("build model");
    let reference = reference(name);

    let out = vit
        .forward(&to_array(&reference["pixel_values"]))
        .expect("forward");
    let tokens = &reference["last_hidden_state"];
    assert_eq!(
        out.tokens
            .shape()
            .iter()
            .map(|d| *d as usize)
            .collect::<Vec<_>>(),
        tokens.shape
    );
    let d = max_abs_diff(&model::to_host(&out.tokens).unwrap(), &tokens.data);
    println!("{name}: last_hidden_state max abs diff {d:e}");
    assert!(d < ATOL, "{name}: last_hidden_state max abs diff {d}");
    let pooled = &reference["pooled"];
    assert_eq!(out.pooled.shape()[1] as usize, pooled.shape[1], "{name}");
    let d = max_abs_diff(&model::to_host(&out.pooled).unwrap(), &pooled.data);
    println!("{name}: pooled max abs diff {d:e}");
    assert!(d < ATOL, "{name}: pooled max abs diff {d}");
    match (reference.get("logits"), &out.logits) {
        (Some(want), Some(got)) => {
            let d = max_abs_diff(&model::to_host(got).unwrap(), &want.data);
            println!("{name}: logits max abs diff {d:e}");
            assert!(d < ATOL, "{name}: logits max abs diff {d}");
        }
        (None, None) => {}
        (want, got) => panic!(
            "{name}: logits expected {} got {}",
            want.is_some(),
            got.is_some()
        ),
    }
    if let Some(pix) = reference.get("pixel_values_interp") {
        let out = vit.forward(&to_array(pix)).expect("forward interp");
        let want = &reference["last_hidden_state_interp"];
        let d = max_abs_diff(&model::to_host(&out.tokens).unwrap(), &want.data);
        assert!(
            d < ATOL,
            "{name}: last_hidden_state_interp max abs diff {d}"
        );
    }
}

#[test]
fn hf_vit_classifier() {
    check("hf-vit-classifier");
}
#[test]
fn hf_vit_backbone() {
    check("hf-vit-backbone");
}
#[test]
fn hf_dinov2() {
    check("hf-dinov2");
}
#[test]
fn hf_dinov2_registers() {
    check("hf-dinov2-registers");
}
/// `Dinov2ForImageClassification`: the head reads concat(cls, mean of patches), 2D wide.
#[test]
fn hf_dinov2_classifier() {
    check("hf-dinov2-classifier");
}
/// The registers variant: registers are left out of the patch mean.
#[test]
fn hf_dinov2_registers_classifier() {
    check("hf-dinov2-registers-classifier");
}
#[test]
fn timm_vit_classifier() {
    check("timm-vit-classifier");
}
#[test]
fn timm_vit_reg_swiglu() {
    check("timm-vit-reg-swiglu");
}

#[test]
fn convert_with_image_size_bakes_the_resampled_grid() {
    // Resampling at conversion must equal the runtime interpolation the libraries do.
    for name in ["hf-dinov2", "hf-dinov2-registers", "timm-vit-reg-swiglu"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        let opts = mlx_coreml_pipeline::convert::ConvertOptions {
            image_size: Some(42),
            ..Default::default()
        };
        mlx_coreml_pipeline::convert::convert(fixture(name).to_str().unwrap(), &out, &opts)
            .unwrap();
        let ck = Checkpoint::load(&out).unwrap();
        assert_eq!(ck.config.image_size, 42);
        let vit = model::from_checkpoint(&ck).unwrap();
        let r = reference(name);
        let o = vit.forward(&to_array(&r["pixel_values_interp"])).unwrap();
        let d = max_abs_diff(
            &model::to_host(&o.tokens).unwrap(),
            &r["last_hidden_state_interp"].data,
        );
        assert!(d < ATOL, "{name}: {d}");
    }
}

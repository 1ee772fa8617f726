//! Shared test helpers: the committed fixtures and their reference tensors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FIXTURES: [&str; 6] = [
    "hf-vit-classifier",
    "hf-vit-backbone",
    "hf-dinov2",
    "hf-dinov2-registers",
    "timm-vit-classifier",
    "timm-vit-reg-swiglu",
];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor read from a safetensors file: shape and float32 values.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = mlx_coreml_pipeline::checkpoint::le_f32(view.data());
            (
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn reference(name: &str) -> BTreeMap<String, Tensor> {
    read_tensors(&fixture(name).join("reference.safetensors"))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Converts a fixture into a fresh temporary folder and returns (tempdir, checkpoint dir).
pub fn converted(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("model");
    mlx_coreml_pipeline::convert::convert(
        fixture(name).to_str().expect("utf-8 path"),
        &out,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("convert {name}: {e}"));
    (tmp, out)
}

/// 0..255 RGB planes `[N, 3, H, W]` that `pre` normalises back onto `pixels` (computed
/// here, independently of the library's own conversion).
pub fn raw_planes(
    pixels: &[f32],
    shape: &[usize],
    pre: &mlx_coreml_pipeline::config::Preprocess,
) -> Vec<f32> {
    let plane = shape[2] * shape[3];
    pixels
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / plane) % 3;
            (v * pre.std[c] + pre.mean[c]) * 255.0
        })
        .collect()
}

/// A random classification head with `classes` outputs (weights N(0, scale²), zero bias).
#[cfg(feature = "mlx")]
pub fn random_head(
    vit: &mut mlx_coreml_pipeline::model::Vit,
    rng: &mut mlx_coreml_pipeline::rng::Rng,
    classes: usize,
    scale: f32,
) {
    use mlx_rs::Array;
    let d = vit.config.hidden_size;
    let w: Vec<f32> = (0..classes * d).map(|_| rng.normal() * scale).collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[classes as i32, d as i32]));
    vit.head.bias.value = Some(Array::from_slice(&vec![0.0f32; classes], &[classes as i32]));
}

/// Non-zero LoRA B matrices (N(0, scale²)): attached adapters start at B = 0, which would
/// leave them out of the forward pass and their A matrices without gradient.
#[cfg(feature = "mlx")]
pub fn random_lora_b(
    vit: &mut mlx_coreml_pipeline::model::Vit,
    rng: &mut mlx_coreml_pipeline::rng::Rng,
    scale: f32,
) {
    use mlx_rs::Array;
    for (_, l) in vit.block_linears_mut() {
        let b = l.lora_b.value.clone().unwrap();
        let v: Vec<f32> = (0..b.size()).map(|_| rng.normal() * scale).collect();
        l.lora_b.value = Some(Array::from_slice(&v, b.shape()));
    }
}

/// Runs a command that must succeed and returns its standard output; a failure shows
/// both streams.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

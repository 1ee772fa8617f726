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

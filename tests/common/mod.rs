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
        "{cmd:?} failed ({}):\n{stdout}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// A base (the fixture converted into `dir/base`) and adapters as training leaves them
/// (`dir/adapters`): LoRA on every linear layer with non-zero B, a new 4-class head and
/// trained norms, saved with their PEFT folders.
#[cfg(feature = "mlx")]
pub fn base_and_adapters(dir: &Path, fixture_name: &str) -> (PathBuf, PathBuf) {
    let (_t, conv) = converted(fixture_name);
    let base = dir.join("base");
    std::fs::rename(&conv, &base).unwrap();
    let ck = mlx_coreml_pipeline::checkpoint::Checkpoint::load(&base).unwrap();
    let mut vit = mlx_coreml_pipeline::model::from_checkpoint(&ck).unwrap();
    use mlx_coreml_pipeline::train::{self, adapters};
    use mlx_rs::Array;
    let cfg = train::LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: "all".into(),
    };
    let layers = train::lora::attach(&mut vit, &cfg, 1).unwrap();
    let mut rng = mlx_coreml_pipeline::rng::Rng::new(11);
    random_lora_b(&mut vit, &mut rng, 0.05);
    let d = ck.config.hidden_size;
    let w: Vec<f32> = (0..4 * d).map(|_| rng.normal() * 0.2).collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[4, d as i32]));
    vit.head.bias.value = Some(Array::from_slice(&[0.1f32, 0.0, -0.1, 0.2], &[4]));
    let nw: Vec<f32> = (0..d).map(|_| 1.0 + rng.normal() * 0.05).collect();
    vit.norm.weight.value = Array::from_slice(&nw, &[d as i32]);
    let acfg = adapters::AdapterConfig {
        format: adapters::FORMAT.into(),
        lora: cfg,
        layers,
        base_model_hash: ck.content_hash(),
        base_model_source: ck.config.provenance.source.clone(),
        classes: ["w", "x", "y", "z"].iter().map(|s| s.to_string()).collect(),
        mean: ck.config.preprocess.mean,
        std: ck.config.preprocess.std,
        replaced: vec![
            "head.weight".into(),
            "head.bias".into(),
            "norm.weight".into(),
        ],
    };
    let ad = dir.join("adapters");
    adapters::save(&ad, &vit, &acfg, &ck.config).unwrap();
    (base, ad)
}

/// Whether python3 has coremltools (with its optimize package). Without it a test skips
/// `what` (saying so), unless `COREML_CHECK_REQUIRED=1`, where that is a failure.
pub fn coremltools_available(what: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import coremltools.optimize.coreml"])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("COREML_CHECK_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "coremltools is required (COREML_CHECK_REQUIRED=1) but not installed"
        );
        eprintln!("coremltools not installed: skipped {what}");
    }
    ok
}

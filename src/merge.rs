//! `pipeline merge`: fold adapters into the base (W + scale * B A per layer, trained head
//! and norms copied in) and write a plain checkpoint. Reports how far the merged forward
//! is from the adapter forward on a probe batch.

use std::path::{Path, PathBuf};

use mlx_rs::Array;

use crate::checkpoint::{self, Checkpoint, CheckpointError, TensorOut};
use crate::model::{self, ModelError};
use crate::rng::Rng;
use crate::train::adapters::{self, AdapterError};
use crate::train::peft;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub out: PathBuf,
    pub layers_merged: usize,
    pub replaced: Vec<String>,
    /// Max |adapter forward - merged forward| over the probe batch (pooled and logits).
    pub max_abs_diff: f32,
    pub probe_batch: usize,
    pub adapters_hash: String,
    /// Which adapter format was read (ours, or PEFT with the naming that matched).
    pub adapters_format: String,
}

fn max_diff(a: &Array, b: &Array) -> Result<f32, MergeError> {
    let (x, y) = (model::to_host(a)?, model::to_host(b)?);
    Ok(x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max))
}

pub fn merge(
    base: &Path,
    adapters_dir: &Path,
    out: &Path,
    force: bool,
) -> Result<MergeReport, MergeError> {
    let ck = Checkpoint::load(base)?;
    let mut vit = model::from_checkpoint(&ck)?;
    let applied = apply_any(adapters_dir, &mut vit, &ck.content_hash())?;

    // Probe: a seeded batch of normalised-pixel noise at the native size.
    let c = &vit.config;
    let n = 4;
    let mut rng = Rng::new(17);
    let x: Vec<f32> = (0..n * c.in_channels * c.image_size * c.image_size)
        .map(|_| rng.normal())
        .collect();
    let s = c.image_size as i32;
    let x = Array::from_slice(&x, &[n as i32, c.in_channels as i32, s, s]);
    let before = vit.forward(&x)?;
    vit.merge_lora()?;
    let after = vit.forward(&x)?;
    let mut diff = max_diff(&before.pooled, &after.pooled)?;
    if let (Some(a), Some(b)) = (&before.logits, &after.logits) {
        diff = diff.max(max_diff(a, b)?);
    }

    let params: std::collections::BTreeMap<String, Array> =
        vit.named_parameters().into_iter().collect();
    let mut config = vit.config.clone();
    if !applied.classes.is_empty() {
        config.num_classes = applied.classes.len();
        config.class_names = Some(applied.classes.clone());
    }
    let mut tensors = Vec::new();
    for (name, shape) in config.tensor_shapes() {
        tensors.push(TensorOut::owned(
            name.clone(),
            shape,
            model::to_host(&params[&name])?,
        ));
    }
    checkpoint::write(out, &config, &tensors, force)?;
    let adapters_hash = checkpoint::hex(&{
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&applied.weights).unwrap_or_default())
    });
    Ok(MergeReport {
        out: out.to_path_buf(),
        layers_merged: applied.layers.len(),
        replaced: applied.replaced,
        max_abs_diff: diff,
        probe_batch: n,
        adapters_hash,
        adapters_format: applied.format,
    })
}

/// What an adapter folder put onto the model, whichever format it was in.
struct Applied {
    format: String,
    layers: Vec<String>,
    replaced: Vec<String>,
    /// Class names of the head after merging (empty: no head).
    classes: Vec<String>,
    weights: PathBuf,
}

/// Our adapters (checked against the base's content hash) or a PEFT LoRA folder from
/// PyTorch (checked against the base's names and shapes).
fn apply_any(dir: &Path, vit: &mut model::Vit, base_hash: &str) -> Result<Applied, MergeError> {
    let config = dir.join(adapters::CONFIG_FILE);
    if !config.exists() {
        return Err(AdapterError::Invalid {
            path: config,
            msg: "missing, so this is neither our adapters folder (RUN/adapters, RUN/best) nor a PEFT folder (adapter_config.json + adapter_model.safetensors)".into(),
        }
        .into());
    }
    if peft::import::is_peft(dir) {
        let imp = peft::import::apply(dir, vit)?;
        return Ok(Applied {
            format: format!(
                "PEFT LoRA ({} names, r {}, alpha {}{})",
                imp.naming,
                imp.settings.r,
                imp.settings.alpha,
                if imp.settings.rslora { ", rsLoRA" } else { "" }
            ),
            layers: imp.layers,
            replaced: imp.replaced,
            classes: if vit.head.is_present() {
                imp.classes
            } else {
                Vec::new()
            },
            weights: imp.weights,
        });
    }
    let cfg = adapters::apply(dir, vit, base_hash)?;
    Ok(Applied {
        format: adapters::FORMAT.to_string(),
        layers: cfg.layers,
        replaced: cfg.replaced,
        classes: cfg.classes,
        weights: dir.join(adapters::WEIGHTS_FILE),
    })
}

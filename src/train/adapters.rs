//! Adapter files: everything a LoRA run trained (LoRA matrices, a new head, trained
//! norms) with the facts needed to put it back onto the right base model. Also written in
//! PEFT's layout for PyTorch users when the base came from transformers or timm.

use std::fs;
use std::path::{Path, PathBuf};

use mlx_rs::{module::Param, Array};
use serde::{Deserialize, Serialize};

use super::lora::LoraConfig;
use crate::checkpoint::{self, TensorOut};
use crate::config::ModelConfig;
use crate::model::Vit;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapters.safetensors";
pub const FORMAT: &str = "mlx-coreml-pipeline/lora";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub format: String,
    pub lora: LoraConfig,
    /// Layers that carry an adapter (`blocks.0.attn.qkv`, ...).
    pub layers: Vec<String>,
    /// SHA-256 of the base checkpoint's weights file.
    pub base_model_hash: String,
    pub base_model_source: String,
    /// Class names of the trained head (in logit order).
    pub classes: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Every tensor in the adapter file besides LoRA matrices (head, norms).
    pub replaced: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: these adapters were trained on base model {want} ({source_name}), but the base given has weights hash {got}; pass the base they were made for")]
    WrongBase {
        path: PathBuf,
        want: String,
        source_name: String,
        got: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

fn host(a: &Array) -> Result<(Vec<usize>, Vec<f32>), AdapterError> {
    let data = crate::model::to_host(a)?;
    Ok((a.shape().iter().map(|d| *d as usize).collect(), data))
}

/// The tensors an adapter file holds for this model: LoRA matrices plus `replaced`.
pub fn collect(vit: &Vit, replaced: &[String]) -> Result<Vec<TensorOut<'static>>, AdapterError> {
    let mut out = Vec::new();
    for (name, a) in vit.named_parameters() {
        let keep =
            name.ends_with(".lora_a") || name.ends_with(".lora_b") || replaced.contains(&name);
        if keep {
            let (shape, data) = host(&a)?;
            out.push(TensorOut::owned(name, shape, data));
        }
    }
    Ok(out)
}

/// Writes `dir/adapter_config.json` + `dir/adapters.safetensors`, and PEFT folders
/// (`dir/peft*/`) when the base came from transformers or timm.
pub fn save(
    dir: &Path,
    vit: &Vit,
    cfg: &AdapterConfig,
    base: &ModelConfig,
) -> Result<(), AdapterError> {
    let tensors = collect(vit, &cfg.replaced)?;
    crate::fsutil::write_dir_atomically(dir, true, |tmp| {
        fs::write(
            tmp.join(CONFIG_FILE),
            serde_json::to_string_pretty(cfg).expect("json") + "\n",
        )?;
        checkpoint::write_safetensors(&tmp.join(WEIGHTS_FILE), &tensors, None)?;
        super::peft::export::write_all(tmp, cfg, &tensors, base)?;
        Ok(())
    })
    .map_err(|source| AdapterError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

pub fn read_config(dir: &Path) -> Result<AdapterConfig, AdapterError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(|source| AdapterError::Io {
        path: path.clone(),
        source,
    })?;
    let cfg: AdapterConfig = serde_json::from_str(&text).map_err(|e| AdapterError::Invalid {
        path: path.clone(),
        msg: format!("not an adapter config: {e}"),
    })?;
    if cfg.format != FORMAT {
        return Err(AdapterError::Invalid {
            path,
            msg: format!("format `{}`, expected `{FORMAT}`", cfg.format),
        });
    }
    Ok(cfg)
}

/// Puts adapters onto a base model loaded from the checkpoint with hash `base_hash`:
/// attaches the LoRA matrices and replaces head and norms. Refuses another base.
pub fn apply(dir: &Path, vit: &mut Vit, base_hash: &str) -> Result<AdapterConfig, AdapterError> {
    let cfg = read_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if cfg.base_model_hash != base_hash {
        return Err(AdapterError::WrongBase {
            path: dir.join(CONFIG_FILE),
            want: cfg.base_model_hash.clone(),
            source_name: cfg.base_model_source.clone(),
            got: base_hash.to_string(),
        });
    }
    let mmap = checkpoint::map_file(&path)?;
    let st = checkpoint::parse_safetensors(&path, &mmap)?;
    let invalid = |msg: String| AdapterError::Invalid {
        path: path.clone(),
        msg,
    };
    let tensor = |name: &str| -> Result<Array, AdapterError> {
        let v = st
            .tensor(name)
            .map_err(|_| invalid(format!("missing tensor `{name}`")))?;
        let shape: Vec<i32> = v.shape().iter().map(|d| *d as i32).collect();
        Ok(Array::from_slice(
            &checkpoint::widen(v.dtype(), v.data()),
            &shape,
        ))
    };
    let mut used = 0usize;
    for (name, layer) in vit.block_linears_mut() {
        if !cfg.layers.contains(&name) {
            continue;
        }
        let (out, inp) = layer.dims().expect("present");
        let a = tensor(&format!("{name}.lora_a"))?;
        let b = tensor(&format!("{name}.lora_b"))?;
        let r = cfg.lora.rank as i32;
        if a.shape() != [r, inp] || b.shape() != [out, r] {
            return Err(invalid(format!(
                "`{name}` adapters have shapes {:?} and {:?}, the base layer is [{out}, {inp}] with rank {r}",
                a.shape(),
                b.shape()
            )));
        }
        layer.lora_a = Param::new(Some(a));
        layer.lora_b = Param::new(Some(b));
        layer.lora_scale = cfg.lora.scale();
        layer.lora_dropout = cfg.lora.dropout;
        used += 2;
    }
    if used != 2 * cfg.layers.len() {
        return Err(invalid(
            "adapters name layers this base does not have".into(),
        ));
    }
    for name in &cfg.replaced {
        let t = tensor(name)?;
        replace_param(vit, name, t).map_err(invalid)?;
    }
    if cfg.replaced.iter().any(|n| n == "head.weight") {
        vit.config.num_classes = cfg.classes.len();
        vit.config.class_names = Some(cfg.classes.clone());
    }
    let extra = st.len() - used - cfg.replaced.len();
    if extra != 0 {
        return Err(invalid(format!(
            "{extra} tensors not described by adapter_config.json"
        )));
    }
    Ok(cfg)
}

/// Replaces one named parameter (head or norm) of the model, checking the shape unless
/// it is the head (a new head may have another class count).
pub fn replace_param(vit: &mut Vit, name: &str, value: Array) -> Result<(), String> {
    use mlx_rs::module::ModuleParameters;
    if name.starts_with("head.") {
        let slot = if name == "head.weight" {
            &mut vit.head.weight
        } else {
            &mut vit.head.bias
        };
        slot.value = Some(value);
        return Ok(());
    }
    let mut params = vit.parameters_mut().flatten();
    let slot = params
        .get_mut(name)
        .ok_or_else(|| format!("the base model has no parameter `{name}`"))?;
    if slot.shape() != value.shape() {
        return Err(format!(
            "`{name}` has shape {:?}, the base has {:?}",
            value.shape(),
            slot.shape()
        ));
    }
    **slot = value;
    Ok(())
}

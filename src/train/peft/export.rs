//! Our adapters in PEFT's layout, one folder per PyTorch model class a user loads them
//! onto: `adapter_model.safetensors` with `base_model.model.<runtime module>.lora_A.weight`
//! / `lora_B.weight`, trained heads and norms as `modules_to_save`, PEFT's
//! `adapter_config.json`, and a README with the Python lines that load it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::checkpoint::{self, TensorData, TensorOut};
use crate::config::{ModelConfig, SourceFamily};
use crate::convert::torch_names::{self, Flavour, RuntimeNames, Wrapper};

use super::super::adapters::AdapterConfig;
use super::readme;

/// Versions the folders were checked with by `tests/peft_interop.rs`.
pub const CHECKED_TF5: &str = "torch 2.15.0, transformers 5.24.0, peft 0.21.2";
pub const CHECKED_TF4: &str = "torch 2.15.0, transformers 4.57.6, peft 0.17.1";
pub const CHECKED_TIMM: &str = "torch 2.15.0, timm 1.0.31, peft 0.21.2";

/// One folder to write: its name under `adapters/` and the model class it targets.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub folder: &'static str,
    pub flavour: Flavour,
    pub wrapper: Wrapper,
}

/// The folders for a base: `peft/` loads onto the class the base is (transformers 5 or
/// timm names); a backbone whose run trained a head also gets `peft-classifier/`, for the
/// library's classifier over the same backbone; `-transformers4` twins use the classic
/// names.
pub fn layouts(base: &ModelConfig, trained_head: bool) -> Vec<Layout> {
    let timm = base.provenance.family == SourceFamily::Timm;
    if timm {
        return vec![Layout {
            folder: "peft",
            flavour: Flavour::Timm,
            wrapper: Wrapper::Backbone,
        }];
    }
    if base.provenance.family == SourceFamily::Preset {
        return Vec::new();
    }
    let base_is_classifier = !base.provenance.key_prefix.is_empty();
    let mut out = Vec::new();
    for (suffix, flavour) in [
        ("", Flavour::Transformers5),
        ("-transformers4", Flavour::Transformers4),
    ] {
        let (main, extra): (&str, Option<&str>) = match suffix {
            "" => ("peft", Some("peft-classifier")),
            _ => ("peft-transformers4", Some("peft-transformers4-classifier")),
        };
        if base_is_classifier {
            out.push(Layout {
                folder: main,
                flavour,
                wrapper: Wrapper::Classifier,
            });
        } else {
            out.push(Layout {
                folder: main,
                flavour,
                wrapper: Wrapper::Backbone,
            });
            if trained_head {
                if let Some(f) = extra {
                    out.push(Layout {
                        folder: f,
                        flavour,
                        wrapper: Wrapper::Classifier,
                    });
                }
            }
        }
    }
    out
}

fn values(t: &TensorOut<'_>) -> Vec<f32> {
    match &t.data {
        TensorData::Owned(v) => v.clone(),
        TensorData::Mapped { dtype, bytes } => checkpoint::widen(*dtype, bytes),
    }
}

/// The head as the PyTorch classifier expects it. DINOv2's classifiers read the class
/// token concatenated with the patch mean (width 2D): a head trained on the class token
/// alone is the same function with zeros over the mean half.
fn head_for(names: &RuntimeNames, base: &ModelConfig, t: &TensorOut<'_>) -> (Vec<usize>, Vec<f32>) {
    let v = values(t);
    let d = base.hidden_size;
    let dinov2 = matches!(
        base.provenance.family,
        SourceFamily::HfDinov2 | SourceFamily::HfDinov2Registers
    );
    let pad = dinov2
        && names.flavour != Flavour::Timm
        && names.wrapper == Wrapper::Classifier
        && t.name == "head.weight"
        && t.shape.len() == 2
        && t.shape[1] == d;
    if !pad {
        return (t.shape.clone(), v);
    }
    let k = t.shape[0];
    let mut out = vec![0f32; k * 2 * d];
    for r in 0..k {
        out[r * 2 * d..r * 2 * d + d].copy_from_slice(&v[r * d..(r + 1) * d]);
    }
    (vec![k, 2 * d], out)
}

/// What one folder holds, before it is written.
struct Folder {
    tensors: Vec<TensorOut<'static>>,
    targets: Vec<String>,
    to_save: Vec<String>,
}

fn fill(
    names: &RuntimeNames,
    base: &ModelConfig,
    tensors: &[TensorOut<'_>],
) -> Result<Folder, String> {
    let by_name: BTreeMap<&str, &TensorOut<'_>> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut f = Folder {
        tensors: Vec::new(),
        targets: Vec::new(),
        to_save: Vec::new(),
    };
    for (layer, parts) in &names.linears {
        let (Some(a), Some(b)) = (
            by_name.get(format!("{layer}.lora_a").as_str()),
            by_name.get(format!("{layer}.lora_b").as_str()),
        ) else {
            continue;
        };
        let (av, bv) = (values(a), values(b));
        let r = a.shape[0];
        for p in parts {
            let (lo, hi) = p.rows.unwrap_or((0, b.shape[0]));
            let key = format!("base_model.model.{}", p.module);
            f.tensors.push(TensorOut::owned(
                format!("{key}.lora_A.weight"),
                a.shape.clone(),
                av.clone(),
            ));
            f.tensors.push(TensorOut::owned(
                format!("{key}.lora_B.weight"),
                vec![hi - lo, r],
                bv[lo * r..hi * r].to_vec(),
            ));
            f.targets.push(p.module.clone());
        }
    }
    for t in tensors {
        if t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b") {
            continue;
        }
        let is_head = t.name.starts_with("head.");
        if is_head && names.head.is_none() {
            // The backbone class has no head: it goes to the classifier folder.
            continue;
        }
        let theirs = names
            .params
            .get(&t.name)
            .ok_or_else(|| format!("no PyTorch name for trained tensor `{}`", t.name))?;
        let module = match theirs.rsplit_once('.') {
            Some((m, _)) => m.to_string(),
            None => theirs.clone(),
        };
        let (shape, data) = if is_head {
            head_for(names, base, t)
        } else {
            (t.shape.clone(), values(t))
        };
        f.tensors.push(TensorOut::owned(
            format!("base_model.model.{theirs}"),
            shape,
            data,
        ));
        if !f.to_save.contains(&module) {
            f.to_save.push(module);
        }
    }
    Ok(f)
}

/// Writes every PEFT folder for `base` under `dir` (the adapters folder being built).
pub fn write_all(
    dir: &Path,
    cfg: &AdapterConfig,
    tensors: &[TensorOut<'_>],
    base: &ModelConfig,
) -> std::io::Result<()> {
    let trained_head = cfg.replaced.iter().any(|n| n == "head.weight");
    for layout in layouts(base, trained_head) {
        let Some(names) = torch_names::runtime_names(base, layout.flavour, layout.wrapper) else {
            continue;
        };
        let folder = fill(&names, base, tensors).map_err(std::io::Error::other)?;
        let out = dir.join(layout.folder);
        fs::create_dir_all(&out)?;
        write_folder(&out, cfg, base, &layout, &folder)?;
    }
    Ok(())
}

fn write_folder(
    out: &Path,
    cfg: &AdapterConfig,
    base: &ModelConfig,
    layout: &Layout,
    folder: &Folder,
) -> std::io::Result<()> {
    let mut targets = folder.targets.clone();
    targets.sort();
    targets.dedup();
    // An exact list of full module names: PEFT matches a string against every module
    // name with re.fullmatch, so nothing else (a ViT pooler, the head) is adapted.
    let regex = format!(
        "^({})$",
        targets
            .iter()
            .map(|t| t.replace('.', "\\."))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    checkpoint::write_safetensors(
        &out.join("adapter_model.safetensors"),
        &folder.tensors,
        Some(meta),
    )?;
    let peft = serde_json::json!({
        "peft_type": "LORA",
        "base_model_name_or_path": cfg.base_model_source,
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": regex,
        "modules_to_save": if folder.to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(folder.to_save) },
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "task_type": null,
    });
    fs::write(
        out.join("adapter_config.json"),
        serde_json::to_string_pretty(&peft).expect("json") + "\n",
    )?;
    fs::write(out.join("README.md"), readme::text(cfg, base, layout))
}

//! PEFT LoRA adapters trained in PyTorch, put onto our model of the same base so that
//! `merge` can fold them: transformers 4 or 5 names, or timm names, found by matching
//! every key against the runtime names of the base (`convert::torch_names`). Anything
//! that is not a plain LoRA on the linear layers is refused, naming the key or setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_rs::{module::Param, Array};
use serde_json::Value;

use crate::checkpoint;
use crate::config::{ModelConfig, Pooling, SourceFamily};
use crate::convert::torch_names::{self, Flavour, RuntimeNames, Wrapper};
use crate::model::Vit;

use super::super::adapters::{replace_param, AdapterError};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// True when `dir/adapter_config.json` is PEFT's (it names a `peft_type`).
pub fn is_peft(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("peft_type").is_some())
}

/// The settings of a PEFT LoRA config we can fold.
#[derive(Debug, Clone)]
pub struct PeftSettings {
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    pub base_model: Option<String>,
}

impl PeftSettings {
    /// PEFT's scale: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

/// What was put onto the model.
#[derive(Debug, Clone)]
pub struct Imported {
    pub settings: PeftSettings,
    /// The naming that matched (`transformers 5 classifier`, ...).
    pub naming: String,
    pub layers: Vec<String>,
    pub replaced: Vec<String>,
    pub classes: Vec<String>,
    pub weights: PathBuf,
}

fn invalid(path: &Path, msg: impl Into<String>) -> AdapterError {
    AdapterError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads and checks `adapter_config.json`: only what folds into plain weights passes.
pub fn read_settings(dir: &Path) -> Result<PeftSettings, AdapterError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| AdapterError::Io {
        path: path.clone(),
        source,
    })?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| invalid(&path, format!("not valid JSON: {e}")))?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(invalid(
            &path,
            format!("peft_type `{peft_type}` cannot be merged (only LORA)"),
        ));
    }
    let truthy = |k: &str| get(k).is_some_and(|x| x.as_bool() == Some(true));
    if truthy("use_dora") {
        return Err(invalid(&path, "use_dora is true: DoRA's magnitude vectors do not fold into a plain LoRA merge here; merge it in PEFT (merge_and_unload) and convert the result"));
    }
    if let Some(b) = get("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(invalid(
            &path,
            format!(
                "bias `{b}`: adapters that train biases are not supported (bias must be \"none\")"
            ),
        ));
    }
    for k in ["lora_bias", "fan_in_fan_out", "use_qalora"] {
        if truthy(k) {
            return Err(invalid(
                &path,
                format!("`{k}` is true, which cannot be folded here"),
            ));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(invalid(&path, format!("`{k}` (per-module ranks or alphas) is not supported: one r and lora_alpha for every layer")));
        }
    }
    for k in [
        "target_parameters",
        "trainable_token_indices",
        "layer_replication",
    ] {
        if get(k).is_some_and(|x| x.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(invalid(
                &path,
                format!("`{k}` is set: only LoRA on linear modules can be merged"),
            ));
        }
    }
    let r = get("r")
        .and_then(Value::as_u64)
        .filter(|r| *r > 0)
        .ok_or_else(|| invalid(&path, "`r` must be a positive integer"))? as usize;
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid(&path, "`lora_alpha` must be a number"))? as f32;
    Ok(PeftSettings {
        r,
        alpha,
        rslora: truthy("use_rslora"),
        base_model: get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// One way of naming the base, turned around: runtime name -> ours.
struct Reverse {
    label: String,
    /// runtime module -> (our layer, rows within it)
    modules: BTreeMap<String, (String, Option<(usize, usize)>)>,
    /// runtime parameter -> our parameter
    params: BTreeMap<String, String>,
}

fn reverse(names: RuntimeNames) -> Reverse {
    let wrapper = match names.wrapper {
        Wrapper::Backbone => "backbone",
        Wrapper::Classifier => "classifier",
    };
    let label = match names.flavour {
        Flavour::Timm => "timm".to_string(),
        f => format!("{} {wrapper}", f.name()),
    };
    let mut modules = BTreeMap::new();
    for (layer, parts) in names.linears {
        for p in parts {
            modules.insert(p.module, (layer.clone(), p.rows));
        }
    }
    Reverse {
        label,
        modules,
        params: names.params.into_iter().map(|(o, t)| (t, o)).collect(),
    }
}

/// A key of the adapter file, with PEFT's prefixes and adapter names taken off.
enum Key {
    LoraA(String),
    LoraB(String),
    Saved(String),
    Unfoldable(&'static str),
}

fn classify(key: &str) -> Key {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (marker, what) in [
        (".lora_magnitude_vector", "a DoRA magnitude vector"),
        (".lora_embedding_A", "LoRA on an embedding"),
        (".lora_embedding_B", "LoRA on an embedding"),
        (".lora_bias", "a LoRA bias"),
    ] {
        if k.contains(marker) {
            return Key::Unfoldable(what);
        }
    }
    for (marker, ab) in [(".lora_A.", true), (".lora_B.", false)] {
        if let Some((module, _)) = k.split_once(marker) {
            return if ab {
                Key::LoraA(module.to_string())
            } else {
                Key::LoraB(module.to_string())
            };
        }
    }
    // modules_to_save copies, as saved (`classifier.weight`) or live
    // (`classifier.modules_to_save.default.weight`).
    let saved = match k.split_once(".modules_to_save.") {
        Some((module, rest)) => match rest.split_once('.') {
            Some((_, param)) => format!("{module}.{param}"),
            None => k.to_string(),
        },
        None => k.to_string(),
    };
    Key::Saved(saved)
}

/// How many keys a naming explains; the first one it cannot.
fn score(rev: &Reverse, keys: &[String]) -> (usize, Option<String>) {
    let mut hits = 0;
    let mut first_miss = None;
    for key in keys {
        let ok = match classify(key) {
            Key::LoraA(m) | Key::LoraB(m) => rev.modules.contains_key(&m),
            Key::Saved(p) => rev.params.contains_key(&p),
            Key::Unfoldable(_) => true,
        };
        if ok {
            hits += 1;
        } else if first_miss.is_none() {
            first_miss = Some(key.clone());
        }
    }
    (hits, first_miss)
}

fn candidates(config: &ModelConfig) -> Vec<Reverse> {
    let mut out = Vec::new();
    for f in torch_names::flavours(config) {
        for w in [Wrapper::Backbone, Wrapper::Classifier] {
            if let Some(n) = torch_names::runtime_names(config, *f, w) {
                out.push(reverse(n));
            }
        }
    }
    out
}

/// Puts a PEFT adapter folder onto `vit` (LoRA matrices on the matching layers, saved
/// modules in place of ours). Refuses what cannot be folded, naming it.
pub fn apply(dir: &Path, vit: &mut Vit) -> Result<Imported, AdapterError> {
    let settings = read_settings(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.exists() {
        let bin = dir.join("adapter_model.bin");
        if bin.exists() {
            return Err(invalid(&bin, "a pickled PyTorch adapter; pickles are not read (they can run code). Re-save it as safetensors in Python: `PeftModel.from_pretrained(base, DIR).save_pretrained(DIR, safe_serialization=True)`"));
        }
        return Err(invalid(
            &path,
            "missing: a PEFT folder holds adapter_config.json and adapter_model.safetensors",
        ));
    }
    let mmap = checkpoint::map_file(&path)?;
    let st = checkpoint::parse_safetensors(&path, &mmap)?;
    let mut keys: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    keys.sort();
    let config = vit.config.clone();
    let cands = candidates(&config);
    if cands.is_empty() {
        return Err(invalid(&path, format!("the base was not converted from transformers or timm ({}), so no PyTorch names exist for it", config.provenance.source)));
    }
    let (best, (_, miss)) = cands
        .iter()
        .map(|c| (c, score(c, &keys)))
        .max_by_key(|(_, (hits, _))| *hits)
        .expect("non-empty");
    if let Some(key) = miss {
        if let Key::LoraA(m) | Key::LoraB(m) = classify(&key) {
            if best.params.contains_key(&format!("{m}.weight")) {
                return Err(invalid(&path, format!(
                    "`{key}` is LoRA on `{m}`, a module of the base ({} names) but not one of its linear layers (a convolution, embedding or norm): only LoRA on the attention and MLP linears can be merged; leave `{m}` out of target_modules",
                    best.label
                )));
            }
        }
        // timm's backbone and classifier share one naming: each label once.
        let mut tried: Vec<&str> = cands.iter().map(|c| c.label.as_str()).collect();
        tried.dedup();
        return Err(invalid(&path, format!(
            "`{key}` names no linear layer or parameter of the base {} (tried {} names): an adapter for another model, or a target outside the linear layers",
            config.provenance.source,
            tried.join(", ")
        )));
    }
    let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), AdapterError> {
        let v = st
            .tensor(name)
            .map_err(|e| invalid(&path, format!("`{name}`: {e}")))?;
        if !checkpoint::is_float(v.dtype()) {
            return Err(invalid(
                &path,
                format!("`{name}` has dtype {:?}, expected a float type", v.dtype()),
            ));
        }
        Ok((v.shape().to_vec(), checkpoint::widen(v.dtype(), v.data())))
    };
    let mut loras: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
    let mut saved: Vec<(String, String)> = Vec::new();
    for key in &keys {
        match classify(key) {
            Key::Unfoldable(what) => {
                return Err(invalid(
                    &path,
                    format!("`{key}` is {what}, which cannot be folded into the linear layers"),
                ))
            }
            Key::LoraA(m) => {
                let (layer, rows) = best.modules[&m].clone();
                let b_key = key.replace(".lora_A.", ".lora_B.");
                if !keys.contains(&b_key) {
                    return Err(invalid(&path, format!("`{key}` has no matching `{b_key}`")));
                }
                loras.entry(layer).or_default().push(Piece {
                    a_key: key.clone(),
                    b_key,
                    rows,
                });
            }
            Key::LoraB(_) => {}
            Key::Saved(p) => saved.push((key.clone(), best.params[&p].clone())),
        }
    }
    let mut layers = Vec::new();
    for (name, layer) in vit.block_linears_mut() {
        let Some(pieces) = loras.remove(&name) else {
            continue;
        };
        let (out, inp) = layer.dims().expect("present");
        let (a, b) = stack(
            &pieces,
            settings.r,
            out as usize,
            inp as usize,
            &tensor,
            &path,
        )?;
        layer.lora_a = Param::new(Some(a));
        layer.lora_b = Param::new(Some(b));
        layer.lora_scale = settings.scale();
        layer.lora_dropout = 0.0;
        layers.push(name);
    }
    if let Some((layer, _)) = loras.into_iter().next() {
        return Err(invalid(&path, format!("the base has no layer `{layer}`")));
    }
    let (replaced, classes) = put_saved(vit, &saved, &tensor, &path)?;
    Ok(Imported {
        settings,
        naming: best.label.clone(),
        layers,
        replaced,
        classes,
        weights: path.clone(),
    })
}

/// One LoRA pair and the rows of our layer it covers.
struct Piece {
    a_key: String,
    b_key: String,
    rows: Option<(usize, usize)>,
}

type Fetch<'a> = dyn Fn(&str) -> Result<(Vec<usize>, Vec<f32>), AdapterError> + 'a;

/// Our layer's A `[R, in]` and B `[out, R]` from its pieces: one piece as is, or
/// (transformers 5's split SwiGLU input) the pieces' A stacked and their B placed block
/// by block on their rows, so B A equals each piece's B A on its rows.
fn stack(
    pieces: &[Piece],
    r: usize,
    out: usize,
    inp: usize,
    tensor: &Fetch<'_>,
    path: &Path,
) -> Result<(Array, Array), AdapterError> {
    let total = r * pieces.len();
    let mut a_all = Vec::with_capacity(total * inp);
    let mut b_all = vec![0f32; out * total];
    for (i, p) in pieces.iter().enumerate() {
        let (sa, a) = tensor(&p.a_key)?;
        let (sb, b) = tensor(&p.b_key)?;
        let (lo, hi) = p.rows.unwrap_or((0, out));
        if sa != [r, inp] || sb != [hi - lo, r] {
            return Err(invalid(path, format!(
                "`{}` is {sa:?} and `{}` is {sb:?}, but r = {r} on a base layer of [{}, {inp}]: an adapter for another base (or another rank)",
                p.a_key, p.b_key, hi - lo
            )));
        }
        a_all.extend_from_slice(&a);
        for row in 0..hi - lo {
            let dst = (lo + row) * total + i * r;
            b_all[dst..dst + r].copy_from_slice(&b[row * r..(row + 1) * r]);
        }
    }
    Ok((
        Array::from_slice(&a_all, &[total as i32, inp as i32]),
        Array::from_slice(&b_all, &[out as i32, total as i32]),
    ))
}

/// `modules_to_save` tensors in place of ours: heads (any class count) and norms.
fn put_saved(
    vit: &mut Vit,
    saved: &[(String, String)],
    tensor: &Fetch<'_>,
    path: &Path,
) -> Result<(Vec<String>, Vec<String>), AdapterError> {
    let mut replaced = Vec::new();
    let base_classes = vit.config.class_names.clone();
    let mut classes = base_classes.clone().unwrap_or_default();
    for (key, ours) in saved {
        let (shape, data) = tensor(key)?;
        if ours == "head.weight" {
            let width = shape.get(1).copied().unwrap_or(0);
            check_head_width(vit, width)
                .map_err(|m| invalid(path, format!("`{key}` is {shape:?}: {m}")))?;
            let k = shape[0];
            if base_classes.as_ref().is_none_or(|n| n.len() != k) {
                // PEFT does not carry label names: transformers' own default names.
                classes = (0..k).map(|i| format!("LABEL_{i}")).collect();
            }
        }
        let dims: Vec<i32> = shape.iter().map(|d| *d as i32).collect();
        replace_param(vit, ours, Array::from_slice(&data, &dims))
            .map_err(|m| invalid(path, format!("`{key}`: {m}")))?;
        replaced.push(ours.clone());
    }
    if replaced.iter().any(|n| n == "head.weight") != replaced.iter().any(|n| n == "head.bias") {
        return Err(invalid(
            path,
            "the head's weight and bias must both be saved (modules_to_save)",
        ));
    }
    if replaced.iter().any(|n| n == "head.weight") {
        vit.config.num_classes = classes.len();
        vit.config.class_names = Some(classes.clone());
    }
    Ok((replaced, classes))
}

/// The head must read what our pooling gives. A DINOv2 backbone's PyTorch classifier
/// (`Dinov2ForImageClassification`) reads the class token and the patch mean: its head
/// switches the merged model to that pooling.
fn check_head_width(vit: &mut Vit, width: usize) -> Result<(), String> {
    let c = &mut vit.config;
    if width == c.pooled_dim() {
        return Ok(());
    }
    let dinov2 = matches!(
        c.provenance.family,
        SourceFamily::HfDinov2 | SourceFamily::HfDinov2Registers
    );
    if dinov2 && c.pooling == Pooling::Cls && width == 2 * c.hidden_size {
        c.pooling = Pooling::ClsMean;
        return Ok(());
    }
    Err(format!(
        "a head over {width} features, but the base pools {}",
        c.pooled_dim()
    ))
}

//! Which layers get LoRA adapters, and attaching them (A random, B zero).

use mlx_rs::{module::Param, Array};
use serde::{Deserialize, Serialize};

use crate::model::Vit;
use crate::rng::Rng;

/// Layer kinds as they appear in our checkpoint names.
pub const ATTENTION: [&str; 5] = ["attn.qkv", "attn.q", "attn.k", "attn.v", "attn.proj"];
pub const MLP: [&str; 2] = ["mlp.fc1", "mlp.fc2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// `all`, `attention`, `mlp`, or a comma-separated list of layer kinds
    /// (`attn.qkv,mlp.fc1`).
    pub targets: String,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: "all".into(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// The layer kinds selected, validated.
    pub fn kinds(&self) -> Result<Vec<&'static str>, String> {
        let all: Vec<&'static str> = ATTENTION.iter().chain(MLP.iter()).copied().collect();
        match self.targets.as_str() {
            "all" => Ok(all),
            "attention" => Ok(ATTENTION.to_vec()),
            "mlp" => Ok(MLP.to_vec()),
            list => list
                .split(',')
                .map(str::trim)
                .map(|t| {
                    all.iter().find(|k| **k == t).copied().ok_or_else(|| {
                        format!(
                            "unknown LoRA target `{t}` (all, attention, mlp, or a list of {})",
                            all.join(", ")
                        )
                    })
                })
                .collect(),
        }
    }
}

/// Layer kind of a block linear name: `blocks.3.attn.qkv` -> `attn.qkv`.
pub fn kind_of(name: &str) -> &str {
    name.splitn(3, '.').nth(2).unwrap_or(name)
}

/// Attaches adapters to the selected layers; returns their names. A is drawn from
/// U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform with a = sqrt(5), as PEFT does), B is zero,
/// so the adapted model starts equal to the base.
pub fn attach(vit: &mut Vit, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>, String> {
    if cfg.rank == 0 {
        return Err("LoRA rank must be at least 1".into());
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(format!("LoRA dropout {} must be in [0, 1)", cfg.dropout));
    }
    let kinds = cfg.kinds()?;
    let mut rng = Rng::new(seed ^ 0x10AA);
    let mut names = Vec::new();
    let r = cfg.rank as i32;
    for (name, layer) in vit.block_linears_mut() {
        if !kinds.contains(&kind_of(&name)) {
            continue;
        }
        let (out, inp) = layer.dims().expect("present layer");
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..(r * inp))
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        layer.lora_a = Param::new(Some(Array::from_slice(&a, &[r, inp])));
        layer.lora_b = Param::new(Some(Array::from_slice(
            &vec![0f32; (out * r) as usize],
            &[out, r],
        )));
        layer.lora_scale = cfg.scale();
        layer.lora_dropout = cfg.dropout;
        names.push(name);
    }
    if names.is_empty() {
        return Err(format!(
            "LoRA targets `{}` match no layer of this model",
            cfg.targets
        ));
    }
    Ok(names)
}

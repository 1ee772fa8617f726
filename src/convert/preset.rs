//! Named architectures with random initialisation, so a user can start from a size
//! without any file (`pipeline convert preset:vit-b16`).

use std::path::Path;

use crate::checkpoint::{self, TensorOut};
use crate::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};
use crate::rng::Rng;

use super::{ConvertError, ConvertReport};

pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub image: usize,
    pub patch: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: MlpKind,
    pub mlp_hidden: usize,
    pub registers: usize,
}

const fn vit(
    name: &'static str,
    about: &'static str,
    image: usize,
    patch: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
) -> Preset {
    Preset {
        name,
        about,
        image,
        patch,
        hidden,
        layers,
        heads,
        mlp: MlpKind::Gelu,
        mlp_hidden: 4 * hidden,
        registers: 0,
    }
}

pub const PRESETS: &[Preset] = &[
    vit(
        "vit-micro8",
        "32px, 4 layers of width 64: tests and the quickstart",
        32,
        8,
        64,
        4,
        4,
    ),
    vit("vit-ti16", "ViT-Tiny/16, 5.7M", 224, 16, 192, 12, 3),
    vit("vit-s16", "ViT-Small/16, 22M", 224, 16, 384, 12, 6),
    vit("vit-b16", "ViT-Base/16, 86M", 224, 16, 768, 12, 12),
    vit("vit-l16", "ViT-Large/16, 304M", 224, 16, 1024, 24, 16),
    vit("vit-h16", "ViT-Huge/16, 632M", 224, 16, 1280, 32, 16),
    vit("vit-ti14", "ViT-Tiny/14", 224, 14, 192, 12, 3),
    vit(
        "vit-s14",
        "ViT-Small/14 (DINOv2-S size)",
        224,
        14,
        384,
        12,
        6,
    ),
    vit(
        "vit-b14",
        "ViT-Base/14 (DINOv2-B size)",
        224,
        14,
        768,
        12,
        12,
    ),
    vit(
        "vit-l14",
        "ViT-Large/14 (DINOv2-L size)",
        224,
        14,
        1024,
        24,
        16,
    ),
    vit("vit-h14", "ViT-Huge/14", 224, 14, 1280, 32, 16),
    Preset {
        name: "vit-h14-reg4-swiglu",
        about: "ViT-H/14, packed SwiGLU, 4 registers (Virchow2 style)",
        image: 224,
        patch: 14,
        hidden: 1280,
        layers: 32,
        heads: 16,
        mlp: MlpKind::SwigluPacked,
        mlp_hidden: 3416,
        registers: 4,
    },
    Preset {
        name: "vit-g14-reg8-swiglu",
        about: "ViT-g/14, packed SwiGLU, 8 registers (UNI2-h style)",
        image: 224,
        patch: 14,
        hidden: 1536,
        layers: 24,
        heads: 24,
        mlp: MlpKind::SwigluPacked,
        mlp_hidden: 4096,
        registers: 8,
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

impl Preset {
    pub fn config(&self) -> ModelConfig {
        let swiglu = self.mlp == MlpKind::SwigluPacked;
        ModelConfig {
            format_version: FORMAT_VERSION,
            image_size: self.image,
            patch_size: self.patch,
            in_channels: 3,
            hidden_size: self.hidden,
            num_layers: self.layers,
            num_heads: self.heads,
            mlp: self.mlp,
            mlp_hidden: self.mlp_hidden,
            qkv: QkvLayout::Fused,
            qkv_bias: true,
            layer_scale: swiglu,
            num_register_tokens: self.registers,
            pos_embed_prefix: if self.registers > 0 { 0 } else { 1 },
            pos_interpolation: PosInterpolation::BicubicAntialias,
            norm_eps: 1e-6,
            pooling: Pooling::Cls,
            num_classes: 0,
            class_names: None,
            preprocess: Preprocess {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
                resize_shorter: self.image * 8 / 7,
            },
            provenance: Provenance {
                family: SourceFamily::Preset,
                source: format!("preset:{}", self.name),
                key_prefix: String::new(),
            },
        }
    }
}

/// Random weights for a config, initialised as timm does: truncated-normal(0.02) for
/// weights, tokens and positions, zero biases, unit norms, layer scale 1e-5.
pub fn random_tensors(config: &ModelConfig, seed: u64) -> Vec<TensorOut<'static>> {
    let mut rng = Rng::new(seed);
    config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name == "norm.weight"
            {
                vec![1.0; n]
            } else if name.ends_with(".ls1") || name.ends_with(".ls2") {
                vec![1e-5; n]
            } else {
                (0..n).map(|_| rng.trunc_normal() * 0.02).collect()
            };
            TensorOut::owned(name, shape, data)
        })
        .collect()
}

pub fn write_random(
    name: &str,
    seed: u64,
    out: &Path,
    force: bool,
) -> Result<ConvertReport, ConvertError> {
    let preset = find(name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        ConvertError::Source(format!(
            "unknown preset `{name}`; presets: {}",
            names.join(", ")
        ))
    })?;
    let config = preset.config();
    let tensors = random_tensors(&config, seed);
    checkpoint::write(out, &config, &tensors, force)?;
    Ok(ConvertReport {
        family: "preset (random init)".into(),
        source: format!("preset:{name}"),
        out: out.to_path_buf(),
        tensors: tensors.len(),
        parameters: config.num_parameters(),
        dropped: Vec::new(),
        seconds: 0.0,
    })
}

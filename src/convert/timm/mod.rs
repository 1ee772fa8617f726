//! timm `VisionTransformer` checkpoints as `save_for_hf` writes them (and the Hub serves
//! them: UNI2-h, Virchow2, DeiT, AugReg ViTs). timm's `config.json` does not record
//! everything (the MLP class, the activation), so the rest is read from tensor shapes;
//! what it does state must agree with them.

use std::ops::RangeInclusive;
use std::path::Path;

use crate::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};

use super::family::{Family, Index, Json};
use super::{ConvertError, Plan, SourceFiles, TensorMap};

mod checks;

use checks::check_config;

/// timm's head counts by model size, for configs whose `model_args` omit `num_heads`.
fn default_heads(arch: &str) -> Option<usize> {
    let size = arch.split('_').nth(1)?;
    Some(match size {
        "tiny" => 3,
        "small" => 6,
        "base" => 12,
        "large" | "huge" | "giant" | "gigantic" => 16,
        _ => return None,
    })
}

pub fn plan(files: &SourceFiles, cfg: Json<'_>, index: &Index) -> Result<Plan, ConvertError> {
    let arch = cfg.opt_str("architecture")?.unwrap_or("vit");
    let args = cfg.child("model_args");
    let pcfg = cfg.child("pretrained_cfg");

    // Architecture from shapes; config only where shapes cannot tell. Where both speak,
    // check_config makes them agree.
    let shapes = Shapes::read(index, &files.weights[0].path)?;
    let heads = match args
        .map(|a| a.opt_usize("num_heads"))
        .transpose()?
        .flatten()
    {
        Some(h) => h,
        None => default_heads(arch).ok_or_else(|| {
            cfg.err(format!(
                "cannot tell the number of attention heads of `{arch}`: add model_args.num_heads"
            ))
        })?,
    };
    let image = image_size(cfg, args, pcfg)?;
    check_config(cfg, index, &shapes, image)?;
    if !index.contains_key("cls_token") {
        return Err(cfg.err("models without a class token (class_token=False) are not supported"));
    }
    // Packed SwiGLU is only visible in shapes: fc1 produces gate and value halves.
    let (mlp, mlp_hidden) = if shapes.fc1[0] == 2 * shapes.fc2[1] {
        (MlpKind::SwigluPacked, shapes.fc2[1])
    } else {
        (MlpKind::Gelu, shapes.fc1[0])
    };
    // A zero-wide patch kernel is validate()'s to report, not a division panic here.
    let grid = image.checked_div(shapes.patch_size()).unwrap_or(0);
    let pos_prefix = match args
        .map(|a| a.opt_bool("no_embed_class"))
        .transpose()?
        .flatten()
    {
        Some(true) => 0,
        Some(false) => 1 + shapes.registers,
        // Not recorded: infer from the row count.
        None => shapes.pos_rows().saturating_sub(grid * grid),
    };
    let num_classes = shapes.num_classes(index);

    let config = ModelConfig {
        format_version: FORMAT_VERSION,
        image_size: image,
        patch_size: shapes.patch_size(),
        in_channels: shapes.in_channels(),
        hidden_size: shapes.hidden(),
        num_layers: shapes.layers,
        num_heads: heads,
        mlp,
        mlp_hidden,
        qkv: QkvLayout::Fused,
        qkv_bias: index.contains_key("blocks.0.attn.qkv.bias"),
        layer_scale: index.contains_key("blocks.0.ls1.gamma"),
        num_register_tokens: shapes.registers,
        pos_embed_prefix: pos_prefix,
        // timm's resample_abs_pos_embed uses antialiased bicubic.
        pos_interpolation: PosInterpolation::BicubicAntialias,
        // timm.layers.LayerNorm default; timm's config.json does not record it.
        norm_eps: 1e-6,
        pooling: pooling(cfg, args, index)?,
        num_classes,
        class_names: class_names(cfg, num_classes),
        preprocess: preprocess(pcfg, image)?,
        provenance: Provenance {
            family: SourceFamily::Timm,
            source: files.label.clone(),
            key_prefix: String::new(),
        },
    };

    Ok(Plan {
        family: Family::Timm,
        map: tensor_map(config.num_layers),
        config,
        inference_unused: Vec::new(),
    })
}

fn pooling(cfg: Json<'_>, args: Option<Json<'_>>, index: &Index) -> Result<Pooling, ConvertError> {
    let global_pool = cfg
        .opt_str("global_pool")?
        .or(args
            .map(|a| a.opt_str("global_pool"))
            .transpose()?
            .flatten())
        .unwrap_or("token");
    match global_pool {
        "token" | "" => Ok(Pooling::Cls),
        "avg" if !index.contains_key("fc_norm.weight") => Ok(Pooling::Mean),
        other => Err(cfg.err(format!(
            "global_pool `{other}` with fc_norm is not supported (token pooling, or avg without fc_norm)"
        ))),
    }
}

/// `label_names` when it names every class; otherwise the classes stay unnamed.
fn class_names(cfg: Json<'_>, num_classes: usize) -> Option<Vec<String>> {
    if num_classes == 0 {
        return None;
    }
    cfg.get("label_names")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .filter(|n| n.len() == num_classes)
}

fn preprocess(pcfg: Option<Json<'_>>, image: usize) -> Result<Preprocess, ConvertError> {
    let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3], ConvertError> {
        Ok(match pcfg {
            Some(p) => p.opt_triple(k)?.unwrap_or(d),
            None => d,
        })
    };
    let crop_pct = match pcfg {
        Some(p) => p.opt_f64("crop_pct")?.unwrap_or(0.875),
        None => 0.875,
    };
    Ok(Preprocess {
        mean: triple("mean", [0.485, 0.456, 0.406])?,
        std: triple("std", [0.229, 0.224, 0.225])?,
        resize_shorter: ((image as f64) / crop_pct).floor() as usize,
    })
}

/// What the tensors say about the architecture.
struct Shapes {
    /// `patch_embed.proj.weight`: [embed dim, channels, patch, patch].
    patch: Vec<usize>,
    /// Blocks counted up to the first missing `blocks.N.norm1.weight`.
    layers: usize,
    fc1: Vec<usize>,
    fc2: Vec<usize>,
    registers: usize,
    pos: Vec<usize>,
}

impl Shapes {
    fn read(index: &Index, weights: &Path) -> Result<Self, ConvertError> {
        let shape = |name: &str, rank: RangeInclusive<usize>| -> Result<Vec<usize>, ConvertError> {
            let s = index.get(name).ok_or_else(|| ConvertError::Missing {
                path: weights.to_path_buf(),
                names: vec![name.to_string()],
            })?;
            // Checked here because the readers below index into these shapes.
            if rank.contains(&s.len()) {
                return Ok(s.clone());
            }
            Err(ConvertError::Shape {
                path: weights.to_path_buf(),
                name: name.to_string(),
                got: s.clone(),
                want: vec![0; *rank.end()],
            })
        };
        let patch = shape("patch_embed.proj.weight", 4..=4)?;
        if patch[2] != patch[3] {
            return Err(ConvertError::Shape {
                path: weights.to_path_buf(),
                name: "patch_embed.proj.weight".into(),
                got: patch,
                want: vec![0, 3, 0, 0],
            });
        }
        Ok(Shapes {
            patch,
            layers: (0..)
                .take_while(|i| index.contains_key(&format!("blocks.{i}.norm1.weight")))
                .count(),
            fc1: shape("blocks.0.mlp.fc1.weight", 2..=2)?,
            fc2: shape("blocks.0.mlp.fc2.weight", 2..=2)?,
            registers: index
                .get("reg_token")
                .and_then(|s| s.iter().rev().nth(1).copied())
                .unwrap_or(0),
            // [1, rows, dim] as timm stores it; [rows, dim] reads the same.
            pos: shape("pos_embed", 2..=3)?,
        })
    }

    fn hidden(&self) -> usize {
        self.patch[0]
    }

    fn in_channels(&self) -> usize {
        self.patch[1]
    }

    fn patch_size(&self) -> usize {
        self.patch[2]
    }

    fn pos_rows(&self) -> usize {
        self.pos[self.pos.len() - 2]
    }

    /// `head.weight` rows; timm's `num_classes=0` leaves no head at all.
    fn num_classes(&self, index: &Index) -> usize {
        match index.get("head.weight") {
            Some(s) if s.len() == 2 => s[0],
            _ => 0,
        }
    }
}

/// Our tensor names -> timm's.
pub(crate) fn tensor_map(layers: usize) -> Vec<TensorMap> {
    let mut map = Vec::new();
    let mut add = |ours: String, theirs: String| map.push(TensorMap { ours, theirs });
    for (ours, theirs) in [
        ("patch_embed.weight", "patch_embed.proj.weight"),
        ("patch_embed.bias", "patch_embed.proj.bias"),
        ("cls_token", "cls_token"),
        ("reg_tokens", "reg_token"),
        ("pos_embed", "pos_embed"),
        ("norm.weight", "norm.weight"),
        ("norm.bias", "norm.bias"),
        ("head.weight", "head.weight"),
        ("head.bias", "head.bias"),
    ] {
        add(ours.into(), theirs.into());
    }
    for i in 0..layers {
        for (ours, theirs) in [
            ("norm1.weight", "norm1.weight"),
            ("norm1.bias", "norm1.bias"),
            ("attn.qkv.weight", "attn.qkv.weight"),
            ("attn.qkv.bias", "attn.qkv.bias"),
            ("attn.proj.weight", "attn.proj.weight"),
            ("attn.proj.bias", "attn.proj.bias"),
            ("ls1", "ls1.gamma"),
            ("norm2.weight", "norm2.weight"),
            ("norm2.bias", "norm2.bias"),
            ("mlp.fc1.weight", "mlp.fc1.weight"),
            ("mlp.fc1.bias", "mlp.fc1.bias"),
            ("mlp.fc2.weight", "mlp.fc2.weight"),
            ("mlp.fc2.bias", "mlp.fc2.bias"),
            ("ls2", "ls2.gamma"),
        ] {
            add(format!("blocks.{i}.{ours}"), format!("blocks.{i}.{theirs}"));
        }
    }
    map
}

fn image_size(
    cfg: Json<'_>,
    args: Option<Json<'_>>,
    pcfg: Option<Json<'_>>,
) -> Result<usize, ConvertError> {
    let square = |v: &serde_json::Value| -> Option<usize> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
            serde_json::Value::Array(a) => {
                let dims: Vec<usize> = a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|n| n as usize))
                    .collect();
                // [H, W] or [C, H, W] (pretrained_cfg.input_size)
                match dims.as_slice() {
                    [h, w] | [_, h, w] if h == w => Some(*h),
                    _ => None,
                }
            }
            _ => None,
        }
    };
    if let Some(v) = args.and_then(|a| a.get("img_size")) {
        return square(v)
            .ok_or_else(|| cfg.err(format!("model_args.img_size {v} must be a square size")));
    }
    if let Some(v) = pcfg.and_then(|p| p.get("input_size")) {
        return square(v)
            .ok_or_else(|| cfg.err(format!("pretrained_cfg.input_size {v} must be square")));
    }
    cfg.get("architecture")
        .and_then(|a| a.as_str())
        .and_then(|a| a.rsplit('_').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| cfg.err("cannot tell the input size: add model_args.img_size"))
}

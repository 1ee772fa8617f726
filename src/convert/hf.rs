//! transformers layouts: `ViTModel` / `ViTForImageClassification` (google/vit-*,
//! owkin/phikon), `Dinov2Model`, `Dinov2WithRegistersModel` and their
//! `...ForImageClassification` task models. Key names are the ones
//! `save_pretrained` writes and the Hub serves.

use crate::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};

use super::family::{read_json, Family, Index, Json};
use super::{ConvertError, Plan, SourceFiles, TensorMap};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One block-level tensor or module: our name, the classic name (files, and
/// transformers 4 at run time, under `encoder.layer.{i}.`) and transformers 5's run-time
/// name (under `layers.{i}.` for ViT, `encoder.layer.{i}.` for DINOv2; None where
/// transformers 5 splits it: DINOv2's packed SwiGLU input becomes `gate_proj` + `up_proj`).
pub(crate) struct BlockName {
    pub ours: &'static str,
    pub classic: &'static str,
    pub tf5: Option<&'static str>,
}

/// The block table of a transformers family.
pub(crate) fn block_table(family: Family, swiglu: bool) -> Vec<BlockName> {
    let row = |ours, classic, tf5| BlockName { ours, classic, tf5 };
    let mut t = vec![
        row(
            "attn.q",
            "attention.attention.query",
            Some("attention.q_proj"),
        ),
        row(
            "attn.k",
            "attention.attention.key",
            Some("attention.k_proj"),
        ),
        row(
            "attn.v",
            "attention.attention.value",
            Some("attention.v_proj"),
        ),
        row(
            "attn.proj",
            "attention.output.dense",
            Some("attention.o_proj"),
        ),
    ];
    match family {
        Family::HfVit => t.extend([
            row("norm1", "layernorm_before", Some("layernorm_before")),
            row("norm2", "layernorm_after", Some("layernorm_after")),
            row("mlp.fc1", "intermediate.dense", Some("mlp.fc1")),
            row("mlp.fc2", "output.dense", Some("mlp.fc2")),
        ]),
        _ => {
            t.extend([
                row("norm1", "norm1", Some("norm1")),
                row("norm2", "norm2", Some("norm2")),
                row("ls1", "layer_scale1.lambda1", Some("layer_scale1.lambda1")),
                row("ls2", "layer_scale2.lambda1", Some("layer_scale2.lambda1")),
            ]);
            if swiglu {
                t.extend([
                    row("mlp.fc1", "mlp.weights_in", None),
                    row("mlp.fc2", "mlp.weights_out", Some("mlp.down_proj")),
                ]);
            } else {
                t.extend([
                    row("mlp.fc1", "mlp.fc1", Some("mlp.fc1")),
                    row("mlp.fc2", "mlp.fc2", Some("mlp.fc2")),
                ]);
            }
        }
    }
    t
}

pub fn plan(
    files: &SourceFiles,
    cfg: Json<'_>,
    index: &Index,
    family: Family,
) -> Result<Plan, ConvertError> {
    // The backbone sits under a prefix in task models (`vit.` in ViTForImageClassification).
    let prefix = ["", "vit.", "dinov2.", "dinov2_with_registers."]
        .into_iter()
        .find(|p| index.contains_key(&format!("{p}embeddings.cls_token")))
        .ok_or_else(|| ConvertError::Missing {
            path: files.weights[0].path.clone(),
            names: vec!["embeddings.cls_token".into()],
        })?;

    let hidden = cfg.usize("hidden_size")?;
    let layers = cfg.usize("num_hidden_layers")?;
    let heads = cfg.usize("num_attention_heads")?;
    let patch = cfg.usize("patch_size")?;
    let image = cfg.usize("image_size")?;
    let channels = cfg.opt_usize("num_channels")?.unwrap_or(3);
    let eps = cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-12) as f32;
    let qkv_bias = cfg.opt_bool("qkv_bias")?.unwrap_or(true);
    let act = cfg.opt_str("hidden_act")?.unwrap_or("gelu");
    let swiglu = cfg.opt_bool("use_swiglu_ffn")?.unwrap_or(false);
    if !swiglu && act != "gelu" {
        return Err(cfg.err(format!(
            "hidden_act `{act}` is not supported (only exact `gelu`, or use_swiglu_ffn)"
        )));
    }
    let registers = match family {
        Family::HfDinov2Registers => cfg.usize("num_register_tokens")?,
        _ => 0,
    };
    let (mlp, mlp_hidden) = if swiglu {
        // transformers rounds the SwiGLU width; read it from the weights instead.
        let fc2 = index
            .get(&format!("{prefix}encoder.layer.0.mlp.weights_out.weight"))
            .ok_or_else(|| cfg.err("use_swiglu_ffn is set but mlp.weights_out is missing"))?;
        (MlpKind::SwigluPacked, fc2[1])
    } else {
        let inter = match family {
            Family::HfVit => cfg.usize("intermediate_size")?,
            _ => {
                let ratio = cfg.opt_f64("mlp_ratio")?.unwrap_or(4.0);
                (hidden as f64 * ratio) as usize
            }
        };
        (MlpKind::Gelu, inter)
    };

    let (pooling, num_classes) = head(files, index, prefix, hidden)?;
    let class_names = if num_classes > 0 {
        id2label(cfg, num_classes)?
    } else {
        None
    };
    let (mean, std, resize) = preprocess(files, family, image)?;

    let config = ModelConfig {
        format_version: FORMAT_VERSION,
        image_size: image,
        patch_size: patch,
        in_channels: channels,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        mlp,
        mlp_hidden,
        qkv: QkvLayout::Separate,
        qkv_bias,
        layer_scale: family != Family::HfVit,
        num_register_tokens: registers,
        // Registers are inserted after the position add, so only the class row exists.
        pos_embed_prefix: 1,
        pos_interpolation: match family {
            Family::HfDinov2Registers => PosInterpolation::BicubicAntialias,
            _ => PosInterpolation::Bicubic,
        },
        norm_eps: eps,
        pooling,
        num_classes,
        class_names,
        preprocess: Preprocess {
            mean,
            std,
            resize_shorter: resize,
        },
        provenance: Provenance {
            family: match family {
                Family::HfVit => SourceFamily::HfVit,
                Family::HfDinov2 => SourceFamily::HfDinov2,
                _ => SourceFamily::HfDinov2Registers,
            },
            source: files.label.clone(),
            key_prefix: prefix.to_string(),
        },
    };

    let map = tensor_map(family, prefix, layers, registers, swiglu);
    let e = format!("{prefix}embeddings.");
    Ok(Plan {
        family,
        config,
        map,
        // DINOv2's mask token replaces masked patches in self-supervised training only.
        inference_unused: vec![format!("{e}mask_token")],
    })
}

/// Pooling and class count from the classifier, if any. `ViTForImageClassification`
/// reads the class token (`[K, D]`); `Dinov2ForImageClassification` and its registers
/// variant read concat(class token, mean of the patches) (`[K, 2D]`).
fn head(
    files: &SourceFiles,
    index: &Index,
    prefix: &str,
    hidden: usize,
) -> Result<(Pooling, usize), ConvertError> {
    let Some(shape) = index.get("classifier.weight") else {
        return Ok((Pooling::Cls, 0));
    };
    // The backbone's prefix names the task model, as its class name does in
    // `architectures` (which is optional, so not relied on).
    let (pooling, width) = if matches!(prefix, "dinov2." | "dinov2_with_registers.") {
        (Pooling::ClsMean, 2 * hidden)
    } else {
        (Pooling::Cls, hidden)
    };
    match shape.as_slice() {
        [k, w] if *w == width => Ok((pooling, *k)),
        _ => Err(ConvertError::Shape {
            path: files.weights[0].path.clone(),
            name: "classifier.weight".into(),
            got: shape.clone(),
            want: vec![shape.first().copied().unwrap_or(0), width],
        }),
    }
}

/// Our tensor names -> this family's names.
pub(crate) fn tensor_map(
    family: Family,
    prefix: &str,
    layers: usize,
    registers: usize,
    swiglu: bool,
) -> Vec<TensorMap> {
    let mut map = Vec::new();
    let mut add = |ours: String, theirs: String| map.push(TensorMap { ours, theirs });
    let e = format!("{prefix}embeddings.");
    add(
        "patch_embed.weight".into(),
        format!("{e}patch_embeddings.projection.weight"),
    );
    add(
        "patch_embed.bias".into(),
        format!("{e}patch_embeddings.projection.bias"),
    );
    add("cls_token".into(), format!("{e}cls_token"));
    add("pos_embed".into(), format!("{e}position_embeddings"));
    if registers > 0 {
        add("reg_tokens".into(), format!("{e}register_tokens"));
    }
    for i in 0..layers {
        for BlockName {
            ours,
            classic: theirs,
            ..
        } in block_table(family, swiglu)
        {
            let ours_full = format!("blocks.{i}.{ours}");
            let theirs_full = format!("{prefix}encoder.layer.{i}.{theirs}");
            if ours.starts_with("ls") {
                add(ours_full, theirs_full);
            } else {
                add(
                    format!("{ours_full}.weight"),
                    format!("{theirs_full}.weight"),
                );
                add(format!("{ours_full}.bias"), format!("{theirs_full}.bias"));
            }
        }
    }
    add("norm.weight".into(), format!("{prefix}layernorm.weight"));
    add("norm.bias".into(), format!("{prefix}layernorm.bias"));
    add("head.weight".into(), "classifier.weight".into());
    add("head.bias".into(), "classifier.bias".into());
    map
}

fn id2label(cfg: Json<'_>, n: usize) -> Result<Option<Vec<String>>, ConvertError> {
    let Some(map) = cfg.get("id2label").and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let mut names = vec![None; n];
    for (k, v) in map {
        let i: usize = k
            .parse()
            .map_err(|_| cfg.err(format!("id2label key `{k}` is not an integer")))?;
        if i < n {
            names[i] = v.as_str().map(str::to_string);
        }
    }
    Ok(names.into_iter().collect())
}

fn preprocess(
    files: &SourceFiles,
    family: Family,
    image: usize,
) -> Result<([f32; 3], [f32; 3], usize), ConvertError> {
    let (mut mean, mut std) = match family {
        Family::HfVit => ([0.5; 3], [0.5; 3]),
        _ => (IMAGENET_MEAN, IMAGENET_STD),
    };
    let mut resize = image;
    if let Some(path) = &files.preprocessor {
        let value = read_json(path)?;
        let p = Json {
            path,
            value: &value,
        };
        mean = p.opt_triple("image_mean")?.unwrap_or(mean);
        std = p.opt_triple("image_std")?.unwrap_or(std);
        if let Some(size) = p.child("size") {
            resize = match size.opt_usize("shortest_edge")? {
                Some(s) => s,
                None => size.opt_usize("height")?.unwrap_or(image),
            };
        }
    }
    Ok((mean, std, resize))
}

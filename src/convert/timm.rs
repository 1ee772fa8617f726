//! timm `VisionTransformer` checkpoints as `save_for_hf` writes them (and the Hub serves
//! them: UNI2-h, Virchow2, DeiT, AugReg ViTs). timm's `config.json` does not record
//! everything (the MLP class, the activation), so the rest is read from tensor shapes;
//! what it does state must agree with them.

use std::ops::RangeInclusive;
use std::path::Path;

use serde_json::Value;

use crate::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};

use super::family::{Family, Index, Json};
use super::{ConvertError, Plan, SourceFiles, TensorMap};

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

// config.json against the tensors. timm builds the model from these values before it
// loads the weights, so a value the tensors contradict means a broken or hand-edited
// export; reading the shapes alone would hide that. Only keys the config states are
// checked, each where timm's loader would take it from.

/// The value at a dotted config path (`model_args.embed_dim`); None when absent or null.
fn stated<'a>(cfg: Json<'a>, key: &str) -> Option<&'a Value> {
    key.split('.')
        .try_fold(cfg.value, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// "KEY is VALUE but EVIDENCE (IMPLIED)": the config's side and the tensors' side.
fn disagree(
    cfg: Json<'_>,
    key: &str,
    value: &Value,
    evidence: impl std::fmt::Display,
    implied: impl std::fmt::Display,
) -> ConvertError {
    cfg.err(format!("{key} is {value} but {evidence} ({implied})"))
}

/// `NAME is [SHAPE]`, or that the weights have no such tensor.
fn tensor(index: &Index, name: &str) -> String {
    match index.get(name) {
        Some(s) => format!("{name} is {s:?}"),
        None => format!("the weights have no {name}"),
    }
}

fn check_config(
    cfg: Json<'_>,
    index: &Index,
    s: &Shapes,
    image: usize,
) -> Result<(), ConvertError> {
    check_counts(cfg, index, s)?;
    check_flags(cfg, index)?;
    check_patch_size(cfg, s)?;
    check_input_size_channels(cfg, s)?;
    check_heads(cfg, s)?;
    check_mlp_ratio(cfg, s)?;
    check_positions(cfg, s, image)
}

/// Integer knobs the tensors pin exactly: (key, value the tensors imply, which tensor
/// says so, what that value means).
fn check_counts(cfg: Json<'_>, index: &Index, s: &Shapes) -> Result<(), ConvertError> {
    let patch = tensor(index, "patch_embed.proj.weight");
    let d = s.hidden();
    let n = s.layers;
    let blocks = format!(
        "the weights hold blocks.0 to blocks.{}, no blocks.{n}.norm1.weight",
        n.saturating_sub(1)
    );
    let regs = s.registers;
    let classes = s.num_classes(index);
    let head = tensor(index, "head.weight");
    let class_meaning = match classes {
        0 => "no head: num_classes 0".to_string(),
        c => format!("{c} classes"),
    };
    let mut knobs = vec![
        (
            "model_args.embed_dim",
            d,
            patch.clone(),
            format!("embed dim {d}"),
        ),
        // timm's VisionTransformer reports its embed dim as num_features.
        ("num_features", d, patch.clone(), format!("embed dim {d}")),
        ("model_args.depth", n, blocks, format!("depth {n}")),
        (
            "model_args.in_chans",
            s.in_channels(),
            patch,
            format!("{} input channels", s.in_channels()),
        ),
        (
            "model_args.reg_tokens",
            regs,
            tensor(index, "reg_token"),
            format!("{regs} register tokens"),
        ),
        ("num_classes", classes, head.clone(), class_meaning.clone()),
        (
            "model_args.num_classes",
            classes,
            head.clone(),
            class_meaning.clone(),
        ),
    ];
    // timm's loader replaces pretrained_cfg.num_classes with the top-level value, and
    // model_args override both; older exports kept the pretrained source's class count
    // there. So it speaks for the head only when neither of the others is stated.
    if stated(cfg, "num_classes").is_none() && stated(cfg, "model_args.num_classes").is_none() {
        knobs.push(("pretrained_cfg.num_classes", classes, head, class_meaning));
    }
    for (key, implied, evidence, meaning) in knobs {
        let Some(v) = stated(cfg, key) else { continue };
        let n = v
            .as_u64()
            .ok_or_else(|| cfg.err(format!("{key} must be a non-negative integer, got {v}")))?;
        if n != implied as u64 {
            return Err(disagree(cfg, key, v, evidence, meaning));
        }
    }
    Ok(())
}

/// Switches whose only trace in the weights is whether a tensor exists.
const FLAGS: [(&str, &str, &str); 5] = [
    ("model_args.class_token", "cls_token", "class token"),
    ("model_args.qkv_bias", "blocks.0.attn.qkv.bias", "qkv bias"),
    (
        "model_args.init_values",
        "blocks.0.ls1.gamma",
        "layer scale",
    ),
    ("model_args.pre_norm", "norm_pre.weight", "pre-norm"),
    (
        "model_args.qk_norm",
        "blocks.0.attn.q_norm.weight",
        "qk norm",
    ),
];

fn check_flags(cfg: Json<'_>, index: &Index) -> Result<(), ConvertError> {
    for (key, name, what) in FLAGS {
        let Some((v, on)) = flag(cfg, key)? else {
            continue;
        };
        let present = index.contains_key(name);
        if on != present {
            let implied = match present {
                true => format!("{what} present"),
                false => format!("no {what}"),
            };
            return Err(disagree(cfg, key, v, tensor(index, name), implied));
        }
    }
    Ok(())
}

/// A switch as config.json states it. timm turns layer scale on with a non-zero
/// `init_values`; an explicit null there is its default, off.
fn flag<'a>(cfg: Json<'a>, key: &str) -> Result<Option<(&'a Value, bool)>, ConvertError> {
    let raw = key.split('.').try_fold(cfg.value, |v, k| v.get(k));
    let layer_scale = key.ends_with(".init_values");
    match raw {
        None => Ok(None),
        Some(v @ Value::Bool(b)) if !layer_scale => Ok(Some((v, *b))),
        Some(v @ Value::Null) if layer_scale => Ok(Some((v, false))),
        Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) if layer_scale => Ok(Some((v, n.as_f64() != Some(0.0)))),
        Some(v) if layer_scale => Err(cfg.err(format!("{key} must be a number or null, got {v}"))),
        Some(v) => Err(cfg.err(format!("{key} must be true or false, got {v}"))),
    }
}

fn check_patch_size(cfg: Json<'_>, s: &Shapes) -> Result<(), ConvertError> {
    let key = "model_args.patch_size";
    let Some(v) = stated(cfg, key) else {
        return Ok(());
    };
    // A number, or [h, w].
    let dims: Option<Vec<u64>> = match v {
        Value::Array(a) => a.iter().map(Value::as_u64).collect(),
        _ => v.as_u64().map(|p| vec![p, p]),
    };
    let dims = dims
        .filter(|d| d.len() == 2)
        .ok_or_else(|| cfg.err(format!("{key} must be a number or [h, w], got {v}")))?;
    let kernel = [s.patch[2] as u64, s.patch[3] as u64];
    if dims != kernel {
        let evidence = format!("patch_embed.proj.weight is {:?}", s.patch);
        return Err(disagree(
            cfg,
            key,
            v,
            evidence,
            format!("patch size {}", s.patch_size()),
        ));
    }
    Ok(())
}

/// timm builds with `pretrained_cfg.input_size[0]` channels when `model_args.in_chans`
/// is absent (check_counts covers that key).
fn check_input_size_channels(cfg: Json<'_>, s: &Shapes) -> Result<(), ConvertError> {
    let key = "pretrained_cfg.input_size";
    if stated(cfg, "model_args.in_chans").is_some() {
        return Ok(());
    }
    let Some(v) = stated(cfg, key) else {
        return Ok(());
    };
    // Malformed sizes are image_size's to report.
    let Some(c) = v
        .as_array()
        .filter(|a| a.len() == 3)
        .and_then(|a| a[0].as_u64())
    else {
        return Ok(());
    };
    if c != s.in_channels() as u64 {
        let evidence = format!("patch_embed.proj.weight is {:?}", s.patch);
        let implied = format!("{} input channels", s.in_channels());
        return Err(disagree(cfg, key, v, evidence, implied));
    }
    Ok(())
}

/// The tensors do not record the head count, but it must split the embed dim.
fn check_heads(cfg: Json<'_>, s: &Shapes) -> Result<(), ConvertError> {
    let key = "model_args.num_heads";
    let Some(v) = stated(cfg, key) else {
        return Ok(());
    };
    let heads = v.as_u64().unwrap_or(0) as usize;
    let d = s.hidden();
    if heads == 0 || d % heads != 0 {
        let evidence = format!("patch_embed.proj.weight is {:?}", s.patch);
        let implied = format!("embed dim {d} does not split into {v} heads");
        return Err(disagree(cfg, key, v, evidence, implied));
    }
    Ok(())
}

/// timm sizes the MLP as int(embed_dim * mlp_ratio). That is fc1's width for GELU MLPs
/// and for packed SwiGLU alike: GluMlp's fc1 yields both halves, fc2 reads one.
fn check_mlp_ratio(cfg: Json<'_>, s: &Shapes) -> Result<(), ConvertError> {
    let key = "model_args.mlp_ratio";
    let Some(v) = stated(cfg, key) else {
        return Ok(());
    };
    let ratio = v
        .as_f64()
        .ok_or_else(|| cfg.err(format!("{key} must be a number, got {v}")))?;
    let d = s.hidden();
    // Python's int() truncates as `as` does, and both multiply in f64.
    let want = (d as f64 * ratio) as usize;
    let got = s.fc1[0];
    if want != got {
        let evidence = format!("blocks.0.mlp.fc1.weight is {:?}", s.fc1);
        let ratio = got as f64 / d as f64;
        let implied = format!("int({d} * {v}) = {want}, the weights have {got}: mlp_ratio {ratio}");
        return Err(disagree(cfg, key, v, evidence, implied));
    }
    Ok(())
}

/// pos_embed has a row per patch of the stated image size, plus the class and register
/// tokens' rows unless `no_embed_class` keeps those out.
fn check_positions(cfg: Json<'_>, s: &Shapes, image: usize) -> Result<(), ConvertError> {
    let (patch, rows) = (s.patch_size(), s.pos_rows());
    let embedded = 1 + s.registers;
    let no_embed_key = "model_args.no_embed_class";
    let no_embed = stated(cfg, no_embed_key);
    let prefix_of = |no_embed: bool| if no_embed { 0 } else { embedded };
    // Stated first, when stated.
    let prefixes = match no_embed.and_then(Value::as_bool) {
        Some(true) => [0, embedded],
        _ => [embedded, 0],
    };
    let grid = image.checked_div(patch).filter(|g| g * patch == image);
    let fits = |p: usize| grid.is_some_and(|g| g * g + p == rows);
    let evidence = format!("pos_embed is {:?}", s.pos);
    let size_key = ["model_args.img_size", "pretrained_cfg.input_size"]
        .into_iter()
        .find_map(|k| stated(cfg, k).map(|v| (k, v)));
    if let Some((key, v)) = size_key.filter(|_| !prefixes.iter().any(|p| fits(*p))) {
        let implied = prefixes
            .iter()
            .find_map(|&p| {
                let n = rows.checked_sub(p).filter(|n| *n > 0)?;
                let g = n.isqrt();
                (g * g == n).then(|| {
                    let size = g * patch;
                    format!("{g}x{g} patches of {patch} px + {p} prefix rows: image size {size}")
                })
            })
            .unwrap_or_else(|| format!("{rows} rows fit no square grid of {patch}-px patches"));
        return Err(disagree(cfg, key, v, evidence, implied));
    }
    let Some(v) = no_embed else {
        return Ok(());
    };
    let b = v
        .as_bool()
        .ok_or_else(|| cfg.err(format!("{no_embed_key} must be true or false, got {v}")))?;
    // Judged on the image size in use; when neither fits, the size is wrong (reported
    // above when stated, as a pos_embed shape error otherwise).
    if !fits(prefix_of(b)) && fits(prefix_of(!b)) {
        let implied = format!(
            "{rows} rows = {} patches + {} prefix rows: no_embed_class {}",
            rows - prefix_of(!b),
            prefix_of(!b),
            !b
        );
        return Err(disagree(cfg, no_embed_key, v, evidence, implied));
    }
    Ok(())
}

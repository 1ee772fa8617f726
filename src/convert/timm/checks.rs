//! config.json against the tensors. timm builds the model from these values before it
//! loads the weights, so a value the tensors contradict means a broken or hand-edited
//! export; reading the shapes alone would hide that. Only keys the config states are
//! checked, each where timm's loader would take it from.

use serde_json::Value;

use super::Shapes;
use crate::convert::family::{Index, Json};
use crate::convert::ConvertError;

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

pub(super) fn check_config(
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

//! The names PyTorch gives our layers at run time, per library and version: what PEFT
//! adapters must name (PEFT matches `target_modules` and its tensor keys against the
//! modules of the live model, not against the checkpoint's keys).
//!
//! - transformers 4.x: the classic names, the same as `save_pretrained` writes
//!   (`encoder.layer.N.attention.attention.query`).
//! - transformers 5.x: renamed at load time (`layers.N.attention.q_proj` for ViT,
//!   `encoder.layer.N.attention.q_proj` for DINOv2; DINOv2's packed SwiGLU `weights_in`
//!   becomes `gate_proj` + `up_proj`), while files keep the classic keys.
//! - timm: module names equal the checkpoint keys.
//!
//! Both directions (our export, PEFT import) read this one table.

use std::collections::BTreeMap;

use crate::config::{MlpKind, ModelConfig, QkvLayout, SourceFamily};

use super::family::Family;

/// Which PyTorch library (and major version) names the modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Transformers5,
    Transformers4,
    Timm,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Transformers5 => "transformers 5",
            Flavour::Transformers4 => "transformers 4",
            Flavour::Timm => "timm",
        }
    }
}

/// The PyTorch model class the names belong to: the backbone (`AutoModel`, a timm model)
/// or a classifier wrapping it (`AutoModelForImageClassification`: `vit.` / `dinov2.`
/// / `dinov2_with_registers.` in front of the backbone, head `classifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    Backbone,
    Classifier,
}

/// One PyTorch `nn.Linear` that holds rows `rows` of one of our linear layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub module: String,
    /// Row range of our `[out, in]` weight; the whole weight when None.
    pub rows: Option<(usize, usize)>,
}

/// Our names -> the runtime names of one PyTorch model.
#[derive(Debug, Clone)]
pub struct RuntimeNames {
    pub flavour: Flavour,
    pub wrapper: Wrapper,
    /// Our block linear layer (`blocks.3.attn.q`) -> the runtime linear(s) holding it.
    pub linears: BTreeMap<String, Vec<Part>>,
    /// Our parameter (`norm.weight`, `head.bias`) -> the runtime parameter, for tensors
    /// that map one to one.
    pub params: BTreeMap<String, String>,
    /// The head module (`classifier`, `head`), when the model class has one.
    pub head: Option<String>,
}

/// Our block linear layers of a model, in order (`blocks.0.attn.q`, ...).
pub fn block_linears(config: &ModelConfig) -> Vec<String> {
    let kinds: &[&str] = match config.qkv {
        QkvLayout::Fused => &["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
        QkvLayout::Separate => &[
            "attn.q",
            "attn.k",
            "attn.v",
            "attn.proj",
            "mlp.fc1",
            "mlp.fc2",
        ],
    };
    (0..config.num_layers)
        .flat_map(|i| kinds.iter().map(move |k| format!("blocks.{i}.{k}")))
        .collect()
}

fn hf_family(f: &SourceFamily) -> Option<Family> {
    match f {
        SourceFamily::HfVit => Some(Family::HfVit),
        SourceFamily::HfDinov2 => Some(Family::HfDinov2),
        SourceFamily::HfDinov2Registers => Some(Family::HfDinov2Registers),
        _ => None,
    }
}

/// The flavours a model converted from `family` can be named in, preferred first.
pub fn flavours(config: &ModelConfig) -> &'static [Flavour] {
    match config.provenance.family {
        SourceFamily::Timm => &[Flavour::Timm],
        SourceFamily::Preset => &[],
        _ => &[Flavour::Transformers5, Flavour::Transformers4],
    }
}

/// The backbone prefix of a transformers classifier class.
fn classifier_prefix(family: Family) -> &'static str {
    match family {
        Family::HfVit => "vit.",
        Family::HfDinov2 => "dinov2.",
        _ => "dinov2_with_registers.",
    }
}

/// Every one-to-one pair (ours, theirs) of a transformers model in `flavour`.
fn hf_params(
    config: &ModelConfig,
    family: Family,
    flavour: Flavour,
    prefix: &str,
) -> Vec<(String, String)> {
    let swiglu = config.mlp == MlpKind::SwigluPacked;
    let classic = super::hf::tensor_map(
        family,
        prefix,
        config.num_layers,
        config.num_register_tokens,
        swiglu,
    );
    let mut out: Vec<(String, String)> = Vec::new();
    for m in classic {
        if flavour == Flavour::Transformers4 || !m.ours.starts_with("blocks.") {
            out.push((m.ours, m.theirs));
        }
    }
    if flavour == Flavour::Transformers5 {
        let block = match family {
            Family::HfVit => "layers",
            _ => "encoder.layer",
        };
        for i in 0..config.num_layers {
            for row in super::hf::block_table(family, swiglu) {
                // Split in transformers 5: see `runtime_names`.
                let Some(theirs) = row.tf5 else { continue };
                let ours = row.ours;
                let (o, t) = (
                    format!("blocks.{i}.{ours}"),
                    format!("{prefix}{block}.{i}.{theirs}"),
                );
                if ours.starts_with("ls") {
                    out.push((o, t));
                } else {
                    for p in ["weight", "bias"] {
                        out.push((format!("{o}.{p}"), format!("{t}.{p}")));
                    }
                }
            }
        }
    }
    out
}

/// Our names -> the runtime names of a model converted from a transformers or timm
/// checkpoint, named as `flavour` names it inside `wrapper`. None for presets and for a
/// flavour of another library.
pub fn runtime_names(
    config: &ModelConfig,
    flavour: Flavour,
    wrapper: Wrapper,
) -> Option<RuntimeNames> {
    let pairs: Vec<(String, String)> = match (flavour, &config.provenance.family) {
        (Flavour::Timm, SourceFamily::Timm) => super::timm::tensor_map(config.num_layers)
            .into_iter()
            .map(|m| (m.ours, m.theirs))
            .collect(),
        (Flavour::Timm, _) | (_, SourceFamily::Timm) | (_, SourceFamily::Preset) => return None,
        (_, f) => {
            let family = hf_family(f)?;
            let prefix = match wrapper {
                Wrapper::Backbone => "",
                Wrapper::Classifier => classifier_prefix(family),
            };
            hf_params(config, family, flavour, prefix)
        }
    };
    let wanted: std::collections::BTreeSet<String> =
        config.tensor_shapes().into_iter().map(|(n, _)| n).collect();
    let mut params: BTreeMap<String, String> = pairs
        .into_iter()
        .filter(|(ours, _)| wanted.contains(ours) || ours.starts_with("head."))
        .collect();
    let head = match (flavour, wrapper) {
        (Flavour::Timm, _) => Some("head".to_string()),
        (_, Wrapper::Classifier) => Some("classifier".to_string()),
        (_, Wrapper::Backbone) => None,
    };
    if head.is_none() {
        params.retain(|ours, _| !ours.starts_with("head."));
    }
    let mut linears = BTreeMap::new();
    for layer in block_linears(config) {
        let parts = match params.get(&format!("{layer}.weight")) {
            Some(t) => vec![Part {
                module: t.trim_end_matches(".weight").to_string(),
                rows: None,
            }],
            None if layer.ends_with("mlp.fc1") && config.mlp == MlpKind::SwigluPacked => {
                // transformers 5 splits DINOv2's packed SwiGLU input: gate first, as in
                // our packed layout.
                let fc2 = params.get(&format!("{}fc2.weight", layer.trim_end_matches("fc1")))?;
                let mlp = fc2.trim_end_matches("down_proj.weight");
                let h = config.mlp_hidden;
                vec![
                    Part {
                        module: format!("{mlp}gate_proj"),
                        rows: Some((0, h)),
                    },
                    Part {
                        module: format!("{mlp}up_proj"),
                        rows: Some((h, 2 * h)),
                    },
                ]
            }
            None => return None,
        };
        linears.insert(layer, parts);
    }
    Some(RuntimeNames {
        flavour,
        wrapper,
        linears,
        params,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf_config(family: SourceFamily, mlp: MlpKind) -> ModelConfig {
        let mut c = crate::convert::preset::find("vit-ti16")
            .expect("preset")
            .config();
        c.num_layers = 2;
        c.qkv = QkvLayout::Separate;
        c.layer_scale = family != SourceFamily::HfVit;
        c.mlp = mlp;
        c.provenance.family = family;
        c
    }

    #[test]
    fn transformers5_vit_names_have_no_encoder_prefix() {
        let c = hf_config(SourceFamily::HfVit, MlpKind::Gelu);
        let n = runtime_names(&c, Flavour::Transformers5, Wrapper::Classifier).unwrap();
        assert_eq!(
            n.linears["blocks.1.attn.q"][0].module,
            "vit.layers.1.attention.q_proj"
        );
        assert_eq!(
            n.linears["blocks.0.mlp.fc2"][0].module,
            "vit.layers.0.mlp.fc2"
        );
        assert_eq!(
            n.params["blocks.0.norm1.weight"],
            "vit.layers.0.layernorm_before.weight"
        );
        assert_eq!(n.params["norm.bias"], "vit.layernorm.bias");
        assert_eq!(n.head.as_deref(), Some("classifier"));
        let b = runtime_names(&c, Flavour::Transformers4, Wrapper::Backbone).unwrap();
        assert_eq!(
            b.linears["blocks.1.attn.proj"][0].module,
            "encoder.layer.1.attention.output.dense"
        );
        assert!(b.head.is_none() && !b.params.contains_key("head.weight"));
    }

    #[test]
    fn transformers5_dinov2_swiglu_splits_fc1() {
        let c = hf_config(SourceFamily::HfDinov2, MlpKind::SwigluPacked);
        let n = runtime_names(&c, Flavour::Transformers5, Wrapper::Backbone).unwrap();
        let h = c.mlp_hidden;
        assert_eq!(
            n.linears["blocks.0.mlp.fc1"],
            vec![
                Part {
                    module: "encoder.layer.0.mlp.gate_proj".into(),
                    rows: Some((0, h))
                },
                Part {
                    module: "encoder.layer.0.mlp.up_proj".into(),
                    rows: Some((h, 2 * h))
                },
            ]
        );
        assert_eq!(
            n.linears["blocks.0.mlp.fc2"][0].module,
            "encoder.layer.0.mlp.down_proj"
        );
    }
}

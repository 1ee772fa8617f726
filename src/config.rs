//! The project's model description: every architecture knob of a ViT, read by the MLX
//! model, the Core ML emitter and the interpreter alike. Nothing here knows about other
//! libraries' names; `convert` maps them onto this.

use serde::{Deserialize, Serialize};

/// Version of the on-disk checkpoint layout (`model.json` + `model.safetensors`).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `fc2(gelu_exact(fc1(x)))`.
    Gelu,
    /// `fc2(silu(h[..H]) * h[H..])` with `h = fc1(x)`: fc1 has `2 * mlp_hidden` outputs and
    /// the first half is the gate (timm `SwiGLUPacked`).
    SwigluPacked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkvLayout {
    /// One `attn.qkv` linear with `3 * hidden` outputs, rows `[q; k; v]`.
    Fused,
    /// Three linears `attn.q`, `attn.k`, `attn.v`.
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The class token after the final norm.
    Cls,
    /// Mean of the patch tokens (prefix tokens excluded) after the final norm.
    Mean,
    /// The class token concatenated with the mean of the patch tokens (prefix tokens
    /// excluded), both after the final norm: width 2 x hidden (transformers
    /// `Dinov2ForImageClassification` / `Dinov2WithRegistersForImageClassification`).
    ClsMean,
}

/// Resampling kernel used when the position grid is resized to another input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosInterpolation {
    /// PyTorch `bicubic`, `antialias=False` (Keys a = -0.75, edge-clamped taps).
    Bicubic,
    /// PyTorch `bicubic`, `antialias=True` (a = -0.5, support widened when shrinking,
    /// out-of-range taps dropped and weights renormalised).
    BicubicAntialias,
}

/// Where a converted model came from, so later stages can name things the way the
/// source library does (PEFT adapters, model cards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFamily {
    HfVit,
    HfDinov2,
    HfDinov2Registers,
    Timm,
    Preset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub family: SourceFamily,
    /// Hub repo id or local path the weights were read from.
    pub source: String,
    /// Prefix the source used for the backbone (`"vit."` for HF classifiers), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Per-channel mean and std applied to 0..1 RGB pixels.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Evaluation transform: resize the shorter side to this, then centre-crop to the
    /// model's image size.
    pub resize_shorter: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub format_version: u32,
    /// Native input size (square); other sizes interpolate the position grid.
    pub image_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub mlp: MlpKind,
    /// Hidden width of the MLP (for packed SwiGLU: the width after gating).
    pub mlp_hidden: usize,
    pub qkv: QkvLayout,
    pub qkv_bias: bool,
    pub layer_scale: bool,
    pub num_register_tokens: usize,
    /// How many leading tokens (in sequence order: class, then registers) have a row in
    /// `pos_embed` before the patch rows: 0 (timm `no_embed_class`), 1 (class token:
    /// HF ViT, DINOv2 where registers are inserted after the position add) or
    /// `1 + num_register_tokens` (timm with registers and `no_embed_class=False`).
    pub pos_embed_prefix: usize,
    pub pos_interpolation: PosInterpolation,
    pub norm_eps: f32,
    pub pooling: Pooling,
    /// 0 for a backbone without a classification head.
    pub num_classes: usize,
    /// Names of the classes, in logit order, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    pub preprocess: Preprocess,
    pub provenance: Provenance,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid model config: {0}")]
    Invalid(String),
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Prefix tokens (class + registers) in front of the patches.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Sequence length at the native size.
    pub fn num_tokens(&self) -> usize {
        self.num_prefix_tokens() + self.num_patches()
    }

    /// Width of the pooled vector, which is the head's input width.
    pub fn pooled_dim(&self) -> usize {
        match self.pooling {
            Pooling::Cls | Pooling::Mean => self.hidden_size,
            Pooling::ClsMean => 2 * self.hidden_size,
        }
    }

    /// Output width of fc1.
    pub fn fc1_out(&self) -> usize {
        match self.mlp {
            MlpKind::Gelu => self.mlp_hidden,
            MlpKind::SwigluPacked => 2 * self.mlp_hidden,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.image_size < self.patch_size {
            // Mean pooling (and ClsMean) divides by the patch count.
            return bad(format!(
                "image_size {} is smaller than patch_size {}: no patches",
                self.image_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return bad(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_layers == 0 || self.mlp_hidden == 0 || self.in_channels == 0 {
            return bad("num_layers, mlp_hidden and in_channels must be positive".into());
        }
        let allowed = [0, 1, 1 + self.num_register_tokens];
        if !allowed.contains(&self.pos_embed_prefix) {
            return bad(format!(
                "pos_embed_prefix {} must be 0, 1 or 1 + num_register_tokens",
                self.pos_embed_prefix
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps {} must be positive", self.norm_eps));
        }
        if let Some(names) = &self.class_names {
            if names.len() != self.num_classes {
                return bad(format!(
                    "{} class names for {} classes",
                    names.len(),
                    self.num_classes
                ));
            }
        }
        if self.preprocess.std.iter().any(|s| *s <= 0.0) {
            return bad("preprocess.std must be positive".into());
        }
        Ok(())
    }

    /// Class names, or `class_0..` when the source did not name them.
    pub fn class_labels(&self) -> Vec<String> {
        match &self.class_names {
            Some(n) => n.clone(),
            None => (0..self.num_classes)
                .map(|i| format!("class_{i}"))
                .collect(),
        }
    }

    /// Every tensor of the model with its shape, in a fixed order. The checkpoint holds
    /// exactly these.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.hidden_size;
        let p = self.patch_size;
        let mut t: Vec<(String, Vec<usize>)> = vec![
            ("patch_embed.weight".into(), vec![d, self.in_channels, p, p]),
            ("patch_embed.bias".into(), vec![d]),
            ("cls_token".into(), vec![d]),
        ];
        if self.num_register_tokens > 0 {
            t.push(("reg_tokens".into(), vec![self.num_register_tokens, d]));
        }
        t.push((
            "pos_embed".into(),
            vec![self.pos_embed_prefix + self.num_patches(), d],
        ));
        let vec = |t: &mut Vec<(String, Vec<usize>)>, name: String| t.push((name, vec![d]));
        let linear = |t: &mut Vec<(String, Vec<usize>)>, name: String, out, inp, bias| {
            t.push((format!("{name}.weight"), vec![out, inp]));
            if bias {
                t.push((format!("{name}.bias"), vec![out]));
            }
        };
        for i in 0..self.num_layers {
            let b = format!("blocks.{i}");
            vec(&mut t, format!("{b}.norm1.weight"));
            vec(&mut t, format!("{b}.norm1.bias"));
            match self.qkv {
                QkvLayout::Fused => {
                    linear(&mut t, format!("{b}.attn.qkv"), 3 * d, d, self.qkv_bias)
                }
                QkvLayout::Separate => {
                    for n in ["q", "k", "v"] {
                        linear(&mut t, format!("{b}.attn.{n}"), d, d, self.qkv_bias);
                    }
                }
            }
            linear(&mut t, format!("{b}.attn.proj"), d, d, true);
            if self.layer_scale {
                vec(&mut t, format!("{b}.ls1"));
            }
            vec(&mut t, format!("{b}.norm2.weight"));
            vec(&mut t, format!("{b}.norm2.bias"));
            linear(&mut t, format!("{b}.mlp.fc1"), self.fc1_out(), d, true);
            linear(&mut t, format!("{b}.mlp.fc2"), d, self.mlp_hidden, true);
            if self.layer_scale {
                vec(&mut t, format!("{b}.ls2"));
            }
        }
        t.push(("norm.weight".into(), vec![d]));
        t.push(("norm.bias".into(), vec![d]));
        if self.num_classes > 0 {
            t.push((
                "head.weight".into(),
                vec![self.num_classes, self.pooled_dim()],
            ));
            t.push(("head.bias".into(), vec![self.num_classes]));
        }
        t
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_on_disk() {
        // Existing model.json files say "cls" / "mean"; the new variant is "cls_mean".
        for (p, name) in [
            (Pooling::Cls, "\"cls\""),
            (Pooling::Mean, "\"mean\""),
            (Pooling::ClsMean, "\"cls_mean\""),
        ] {
            assert_eq!(serde_json::to_string(&p).unwrap(), name);
            assert_eq!(serde_json::from_str::<Pooling>(name).unwrap(), p);
        }
    }

    #[test]
    fn cls_mean_head_reads_twice_the_width() {
        let mut c = crate::convert::preset::find("vit-micro8")
            .expect("preset")
            .config();
        c.num_classes = 3;
        c.class_names = None;
        for (pooling, width) in [
            (Pooling::Cls, c.hidden_size),
            (Pooling::Mean, c.hidden_size),
            (Pooling::ClsMean, 2 * c.hidden_size),
        ] {
            c.pooling = pooling;
            assert_eq!(c.pooled_dim(), width);
            let shapes: std::collections::BTreeMap<_, _> = c.tensor_shapes().into_iter().collect();
            assert_eq!(shapes["head.weight"], vec![3, width]);
            assert_eq!(shapes["head.bias"], vec![3]);
        }
    }
}

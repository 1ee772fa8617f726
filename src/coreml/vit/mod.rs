//! Emits a ViT as a MIL program from a [`Checkpoint`]: everything [`ModelConfig`] can
//! express (registers, every `pos_embed_prefix` layout, fused or separate q/k/v with or
//! without bias, GELU or packed SwiGLU, layer scale, cls, mean or cls+mean pooling, any head).
//! Weights stream from the memory-mapped checkpoint into the blob sink one tensor at a
//! time.

use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, Pooling, QkvLayout};
use crate::coreml::compress::{CompressError, Pipeline};
mod ane;
mod block;
mod standard;

use crate::coreml::mil::{ConvPad, DType, FloatSource, MilError, ProgramBuilder, TensorTy, Var};

/// What the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// An RGB image of the model's size with 0..255 pixels; mean/std preprocessing is
    /// part of the program.
    #[default]
    Image,
    /// A float multiArray `[1, 3, H, W]`, already normalised.
    Array,
}

/// What the model returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// `classLabel` (string) and `classLabel_probs` (class -> probability).
    Classifier,
    /// `logits` `[1, num_classes]`.
    Logits,
    /// `embedding` `[1, pooled_dim]` (the pooled vector after the final norm: D wide,
    /// 2D for cls+mean pooling) and `tokens` `[1, T, D]` (the whole sequence after the
    /// final norm).
    Features,
}

/// Names of the features the emitted program exposes.
pub mod names {
    pub const IMAGE: &str = "image";
    pub const PIXEL_VALUES: &str = "pixel_values";
    pub const LABEL: &str = "classLabel";
    pub const PROBS: &str = "classLabel_probs";
    pub const LOGITS: &str = "logits";
    pub const EMBEDDING: &str = "embedding";
    pub const TOKENS: &str = "tokens";
}

#[derive(Debug, Clone)]
pub struct VitOptions {
    /// Storage type inside the program: fp16 or fp32.
    pub precision: DType,
    /// Element type of multiArray inputs and outputs.
    pub io_dtype: DType,
    pub input: InputKind,
    pub output: OutputKind,
    /// One `scaled_dot_product_attention` op per block instead of matmul + softmax
    /// (standard layout only).
    pub fused_attention: bool,
    pub layout: Layout,
    /// The multiArray input takes other batch sizes too (see `mil::batch`): constants
    /// are never concatenated with batched values.
    pub flexible_batch: bool,
}

/// How activations are laid out inside the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[1, T, D]` tokens, `linear` projections, heads by reshape and transpose: what a
    /// PyTorch trace gives.
    #[default]
    Standard,
    /// Apple's Neural Engine recipe: `[1, C, 1, T]` activations, every projection a 1x1
    /// `conv`, attention split per head, LayerNorm over channels, nothing above rank 4.
    Ane,
}

/// How a feature of the emitted program is typed in the model description.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Image {
        width: usize,
        height: usize,
    },
    Array {
        shape: Vec<usize>,
        dtype: DType,
    },
    /// The predicted class name.
    Label,
    /// Class name -> probability.
    Probabilities,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub description: String,
    pub kind: FeatureKind,
}

/// The emitted program's interface.
#[derive(Debug, Clone, PartialEq)]
pub struct VitIo {
    pub inputs: Vec<Feature>,
    pub outputs: Vec<Feature>,
    /// Set for classifiers: (label output, probabilities output).
    pub classifier: Option<(String, String)>,
    /// Batch sizes a multiArray input takes (empty: batch 1 only, as declared).
    pub batch_sizes: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Mil(#[from] MilError),
    #[error("checkpoint tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// The weights compression may apply to (linear layers and the patch-embedding conv),
/// in the order [`emit_vit`] writes them, for a model with `output`.
pub fn compressible_weights(cfg: &ModelConfig, output: OutputKind) -> Vec<String> {
    let mut v = vec!["patch_embed.weight".to_string()];
    for i in 0..cfg.num_layers {
        let pre = format!("blocks.{i}");
        match cfg.qkv {
            QkvLayout::Fused => v.push(format!("{pre}.attn.qkv.weight")),
            QkvLayout::Separate => {
                for n in ["q", "k", "v"] {
                    v.push(format!("{pre}.attn.{n}.weight"));
                }
            }
        }
        for n in ["attn.proj", "mlp.fc1", "mlp.fc2"] {
            v.push(format!("{pre}.{n}.weight"));
        }
    }
    if output != OutputKind::Features {
        v.push("head.weight".into());
    }
    v
}

/// Emits the whole model into `b`. Returns the program's interface; its outputs are
/// already named as in [`names`].
pub fn emit_vit(
    b: &mut ProgramBuilder<'_>,
    ck: &Checkpoint,
    opts: &VitOptions,
) -> Result<VitIo, EmitError> {
    emit_vit_compressed(b, ck, opts, None)
}

/// [`emit_vit`], the weights that `compress` has selected written compressed (as
/// `constexpr_*` ops, see `mil::constexpr`).
pub fn emit_vit_compressed(
    b: &mut ProgramBuilder<'_>,
    ck: &Checkpoint,
    opts: &VitOptions,
    compress: Option<&Pipeline<'_>>,
) -> Result<VitIo, EmitError> {
    let st = ck.tensors();
    let mut e = Emitter {
        b,
        st: &st,
        cfg: &ck.config,
        dt: opts.precision,
        compress,
    };
    e.emit(opts)
}

/// The name of an output's last op: the output itself, or `NAME_internal` when a cast
/// to the I/O type follows under the output's name.
fn edge(name: &str, cast: bool) -> String {
    if cast {
        format!("{name}_internal")
    } else {
        name.to_string()
    }
}

/// What a layout's body leaves for the outputs.
struct Body {
    /// `[1, T, D]` after the final norm (named as the `tokens` output when features are
    /// asked for; otherwise possibly unused).
    tokens: Var,
    /// `[1, pooled_dim]` (named as the `embedding` output for features).
    pooled: Var,
    /// The Neural Engine layout's `[1, pooled_dim, 1, 1]`, which its head convolves.
    pooled4: Option<Var>,
}

struct Emitter<'a, 'b, 's> {
    b: &'a mut ProgramBuilder<'b>,
    st: &'a SafeTensors<'s>,
    cfg: &'a ModelConfig,
    dt: DType,
    compress: Option<&'a Pipeline<'a>>,
}

impl<'s> Emitter<'_, '_, 's> {
    /// Little-endian f32 bytes and shape of a checkpoint tensor.
    fn raw(&self, name: &str) -> Result<(&'s [u8], Vec<usize>), EmitError> {
        let view = self.st.tensor(name).map_err(|e| EmitError::Tensor {
            name: name.into(),
            msg: e.to_string(),
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(EmitError::Tensor {
                name: name.into(),
                msg: format!("is {:?}, expected F32", view.dtype()),
            });
        }
        Ok((view.data(), view.shape().to_vec()))
    }

    /// A checkpoint tensor as a program constant, optionally viewed with another shape.
    /// The one place weights are written: those the compression pipeline selected (large
    /// linear and patch-embedding weights) go out compressed.
    fn weight(&mut self, name: &str, shape: Option<&[usize]>) -> Result<Var, EmitError> {
        let cname = crate::coreml::mil::types::ident(name);
        if shape.is_none() {
            if let Some(t) = self.compress.and_then(|p| p.take(name)) {
                return Ok(self.b.const_compressed(&cname, &t?)?);
            }
        }
        let (bytes, own) = self.raw(name)?;
        let shape = shape.map(<[usize]>::to_vec).unwrap_or(own);
        Ok(self
            .b
            .const_float(&cname, self.dt, &shape, FloatSource::LeBytes(bytes))?)
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, EmitError> {
        Ok(crate::checkpoint::le_f32(self.raw(name)?.0))
    }

    fn constant(&mut self, name: &str, shape: &[usize], v: &[f32]) -> Result<Var, EmitError> {
        Ok(self
            .b
            .const_float(name, self.dt, shape, FloatSource::Values(v))?)
    }

    /// `{prefix}.weight` and `{prefix}.bias`, the bias zero when the layer has none.
    fn linear_params(
        &mut self,
        prefix: &str,
        out: usize,
        bias: bool,
    ) -> Result<(Var, Var), EmitError> {
        let w = self.weight(&format!("{prefix}.weight"), None)?;
        let b = if bias {
            self.weight(&format!("{prefix}.bias"), None)?
        } else {
            // Core ML's own default for a missing linear bias, written explicitly.
            let name = crate::coreml::mil::types::ident(&format!("{prefix}.bias"));
            self.constant(&name, &[out], &vec![0.0; out])?
        };
        Ok((w, b))
    }

    fn linear(&mut self, prefix: &str, x: &Var, out: usize, bias: bool) -> Result<Var, EmitError> {
        let (w, b) = self.linear_params(prefix, out, bias)?;
        Ok(self
            .b
            .linear(&crate::coreml::mil::types::ident(prefix), x, &w, &b)?)
    }

    fn layer_norm(&mut self, prefix: &str, x: &Var) -> Result<Var, EmitError> {
        let g = self.weight(&format!("{prefix}.weight"), None)?;
        let bt = self.weight(&format!("{prefix}.bias"), None)?;
        let name = crate::coreml::mil::types::ident(prefix);
        Ok(self
            .b
            .layer_norm(&name, x, &[-1], &g, &bt, self.cfg.norm_eps)?)
    }

    /// Casts to `to` under `name` when the types differ, else returns `x`.
    fn cast_to(&mut self, name: &str, x: &Var, to: DType) -> Result<Var, EmitError> {
        if x.dtype() == to {
            Ok(x.clone())
        } else {
            Ok(self.b.cast(name, x, to)?)
        }
    }

    fn emit(&mut self, opts: &VitOptions) -> Result<VitIo, EmitError> {
        let cfg = self.cfg;
        let s = cfg.image_size;
        let c = cfg.in_channels;
        let mut io = VitIo {
            inputs: Vec::new(),
            outputs: Vec::new(),
            classifier: None,
            batch_sizes: Vec::new(),
        };

        // Input and preprocessing.
        let x = match opts.input {
            InputKind::Image => {
                if c != 3 {
                    return Err(EmitError::Unsupported(format!(
                        "image input needs a 3-channel model, this one has {c} channels"
                    )));
                }
                let img = self
                    .b
                    .input(names::IMAGE, TensorTy::new(DType::F32, [1, 3, s, s]))?;
                io.inputs.push(Feature {
                    name: names::IMAGE.into(),
                    description: format!("RGB image, {s}x{s}, pixel values 0..255"),
                    kind: FeatureKind::Image {
                        width: s,
                        height: s,
                    },
                });
                // (p / 255 - mean) / std == p * (1 / (255 std)) + (-mean / std); done in
                // fp32 before any cast to fp16 so 0..255 values keep their precision.
                let pp = &cfg.preprocess;
                let scale: Vec<f32> = (0..3).map(|i| 1.0 / (255.0 * pp.std[i])).collect();
                let bias: Vec<f32> = (0..3).map(|i| -pp.mean[i] / pp.std[i]).collect();
                let sc = self.b.const_float(
                    "preprocess_scale",
                    DType::F32,
                    &[1, 3, 1, 1],
                    FloatSource::Values(&scale),
                )?;
                let bi = self.b.const_float(
                    "preprocess_bias",
                    DType::F32,
                    &[1, 3, 1, 1],
                    FloatSource::Values(&bias),
                )?;
                let m = self.b.mul("preprocess_mul", &img, &sc)?;
                let a = self.b.add("preprocess_add", &m, &bi)?;
                self.cast_to("input_cast", &a, self.dt)?
            }
            InputKind::Array => {
                let inp = self.b.input(
                    names::PIXEL_VALUES,
                    TensorTy::new(opts.io_dtype, [1, c, s, s]),
                )?;
                io.inputs.push(Feature {
                    name: names::PIXEL_VALUES.into(),
                    description: format!("normalised pixels, [1, {c}, {s}, {s}] (NCHW)"),
                    kind: FeatureKind::Array {
                        shape: vec![1, c, s, s],
                        dtype: opts.io_dtype,
                    },
                });
                self.cast_to("input_cast", &inp, self.dt)?
            }
        };

        let features = opts.output == OutputKind::Features;
        let cast_out = opts.io_dtype != self.dt;
        let body = match opts.layout {
            Layout::Standard => self.standard_body(&x, opts, features, cast_out)?,
            Layout::Ane => self.ane_body(&x, opts, features, cast_out)?,
        };
        let (normed, pooled) = (body.tokens, body.pooled);
        let (d, t) = (cfg.hidden_size, cfg.num_tokens());

        match opts.output {
            OutputKind::Features => {
                self.cast_to(names::EMBEDDING, &pooled, opts.io_dtype)?;
                self.cast_to(names::TOKENS, &normed, opts.io_dtype)?;
                let pd = cfg.pooled_dim();
                io.outputs.push(Feature {
                    name: names::EMBEDDING.into(),
                    description: format!(
                        "pooled embedding [1, {pd}] ({} after the final norm)",
                        match cfg.pooling {
                            Pooling::Cls => "class token",
                            Pooling::Mean => "mean of the patch tokens",
                            Pooling::ClsMean =>
                                "class token (first half) concatenated with the mean of the patch tokens (second half)",
                        }
                    ),
                    kind: FeatureKind::Array {
                        shape: vec![1, pd],
                        dtype: opts.io_dtype,
                    },
                });
                io.outputs.push(Feature {
                    name: names::TOKENS.into(),
                    description: format!("token sequence [1, {t}, {d}] after the final norm: class, {} registers, {} patches (row-major)", cfg.num_register_tokens, cfg.num_patches()),
                    kind: FeatureKind::Array { shape: vec![1, t, d], dtype: opts.io_dtype },
                });
            }
            OutputKind::Logits | OutputKind::Classifier => {
                let nc = cfg.num_classes;
                if nc == 0 {
                    return Err(EmitError::Unsupported(
                        "this model has no classification head (num_classes = 0): export it with `features` output".into(),
                    ));
                }
                if opts.output == OutputKind::Logits {
                    let logits = self.head(
                        &edge(names::LOGITS, cast_out),
                        &pooled,
                        body.pooled4.as_ref(),
                    )?;
                    self.cast_to(names::LOGITS, &logits, opts.io_dtype)?;
                    io.outputs.push(Feature {
                        name: names::LOGITS.into(),
                        description: format!("class scores before softmax, [1, {nc}]"),
                        kind: FeatureKind::Array {
                            shape: vec![1, nc],
                            dtype: opts.io_dtype,
                        },
                    });
                } else {
                    let logits = self.head("logits", &pooled, body.pooled4.as_ref())?;
                    let probs = self.b.softmax("probabilities", &logits, -1)?;
                    // classify takes fp32.
                    let probs = self.cast_to("probabilities_fp32", &probs, DType::F32)?;
                    self.b
                        .classify(names::LABEL, names::PROBS, &probs, &cfg.class_labels())?;
                    io.outputs.push(Feature {
                        name: names::LABEL.into(),
                        description: "most likely class".into(),
                        kind: FeatureKind::Label,
                    });
                    io.outputs.push(Feature {
                        name: names::PROBS.into(),
                        description: "probability of each class".into(),
                        kind: FeatureKind::Probabilities,
                    });
                    io.classifier = Some((names::LABEL.into(), names::PROBS.into()));
                }
            }
        };
        Ok(io)
    }

    /// The head's logits `[1, K]` named `name`: a `linear` on the pooled vector, or in
    /// the Neural Engine layout a 1x1 `conv` on `[1, pd, 1, 1]` and a reshape.
    fn head(&mut self, name: &str, pooled: &Var, pooled4: Option<&Var>) -> Result<Var, EmitError> {
        let nc = self.cfg.num_classes;
        match pooled4 {
            None => {
                let (w, b) = self.linear_params("head", nc, true)?;
                Ok(self.b.linear(name, pooled, &w, &b)?)
            }
            Some(p4) => {
                let y = self.conv1x1("head", "head", p4, nc, true)?;
                Ok(self.b.reshape(name, &y, &[1, nc])?)
            }
        }
    }

    /// The patch-embedding convolution: `[1, C, H, W]` -> `[1, D, g, g]`.
    fn patch_conv(&mut self, x: &Var) -> Result<Var, EmitError> {
        let ps = self.cfg.patch_size;
        let w = self.weight("patch_embed.weight", None)?;
        let bias = self.weight("patch_embed.bias", None)?;
        Ok(self.b.conv2d(
            "patch_embed",
            x,
            &w,
            &bias,
            [ps, ps],
            ConvPad::Valid,
            [1, 1],
            1,
        )?)
    }

    /// The class and register tokens `[1 + r, D]` with their position rows (if any)
    /// added, in f32, once: they do not depend on the input.
    fn prefix_token_values(&self) -> Result<Vec<f32>, EmitError> {
        let cfg = self.cfg;
        let pos = self.values("pos_embed")?;
        let mut lead = self.values("cls_token")?;
        if cfg.num_register_tokens > 0 {
            lead.extend(self.values("reg_tokens")?);
        }
        for (v, p) in lead
            .iter_mut()
            .zip(&pos[..cfg.pos_embed_prefix * cfg.hidden_size])
        {
            *v += p;
        }
        Ok(lead)
    }

    /// `constant` (batch 1) added onto zeros of `like`'s batch: the first
    /// `constant.shape[axis]` entries of `like` along `axis`, times 0. How a constant joins
    /// batched values in a concat when the batch is flexible.
    fn batched_like(
        &mut self,
        name: &str,
        like: &Var,
        constant: &Var,
        axis: usize,
    ) -> Result<Var, EmitError> {
        let want = constant.shape()[axis];
        if like.shape()[axis] < want {
            return Err(EmitError::Unsupported(format!(
                "a flexible batch needs at least {want} patches, this model has {}",
                like.shape()[axis]
            )));
        }
        let shape = like.shape().to_vec();
        let mut end = shape.clone();
        end[axis] = want;
        let begin = vec![0; shape.len()];
        let part = self.b.slice_by_index(
            &format!("{name}_like"),
            like,
            &begin,
            &end,
            &vec![false; shape.len()],
        )?;
        let zero = self.constant(&format!("{name}_zero"), &[], &[0.0])?;
        let zeros = self.b.mul(&format!("{name}_zeros"), &part, &zero)?;
        Ok(self.b.add(&format!("{name}_batched"), &zeros, constant)?)
    }
}

//! Shared code of the Core ML tests: small random checkpoints and an independent plain
//! float32 ViT forward (no MIL anywhere) to check the emitted programs against.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use mlx_coreml_pipeline::checkpoint::{self, TensorOut};
use mlx_coreml_pipeline::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};

/// SplitMix64 with Box-Muller normals: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// The model variants the tests cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Fused qkv with bias, GELU, a 5-class head, cls pooling.
    FusedGeluHead,
    /// Separate q/k/v without bias, no head.
    SeparateNoHead,
    /// 4 registers without position (prefix 1), layer scale, 3-class head.
    RegistersPrefix1LayerScale,
    /// 3 registers, patches-only positions (prefix 0), packed SwiGLU, no head.
    RegistersPrefix0Swiglu,
    /// Mean pooling, registers with positions (prefix 1 + R), 4-class head.
    MeanPooling,
    /// Class token + patch mean (head width 2D), DINOv2-style registers without
    /// position (prefix 1), layer scale, 3-class head.
    ClsMeanPooling,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::FusedGeluHead,
        Variant::SeparateNoHead,
        Variant::RegistersPrefix1LayerScale,
        Variant::RegistersPrefix0Swiglu,
        Variant::MeanPooling,
        Variant::ClsMeanPooling,
    ];
}

pub fn config(v: Variant) -> ModelConfig {
    let mut c = ModelConfig {
        format_version: FORMAT_VERSION,
        image_size: 16,
        patch_size: 4,
        in_channels: 3,
        hidden_size: 24,
        num_layers: 2,
        num_heads: 3,
        mlp: MlpKind::Gelu,
        mlp_hidden: 48,
        qkv: QkvLayout::Fused,
        qkv_bias: true,
        layer_scale: false,
        num_register_tokens: 0,
        pos_embed_prefix: 1,
        pos_interpolation: PosInterpolation::Bicubic,
        norm_eps: 1e-6,
        pooling: Pooling::Cls,
        num_classes: 5,
        class_names: Some(
            ["cat", "dog", "bird", "fish", "frog"]
                .map(String::from)
                .to_vec(),
        ),
        preprocess: Preprocess {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            resize_shorter: 18,
        },
        provenance: Provenance {
            family: SourceFamily::Preset,
            source: "test/random".into(),
            key_prefix: String::new(),
        },
    };
    match v {
        Variant::FusedGeluHead => {}
        Variant::SeparateNoHead => {
            c.qkv = QkvLayout::Separate;
            c.qkv_bias = false;
            c.num_classes = 0;
            c.class_names = None;
            c.norm_eps = 1e-12;
        }
        Variant::RegistersPrefix1LayerScale => {
            c.qkv = QkvLayout::Separate;
            c.num_register_tokens = 4;
            c.pos_embed_prefix = 1;
            c.layer_scale = true;
            c.num_classes = 3;
            c.class_names = None;
        }
        Variant::RegistersPrefix0Swiglu => {
            c.num_register_tokens = 3;
            c.pos_embed_prefix = 0;
            c.mlp = MlpKind::SwigluPacked;
            c.mlp_hidden = 32;
            c.layer_scale = true;
            c.num_classes = 0;
            c.class_names = None;
        }
        Variant::MeanPooling => {
            c.num_register_tokens = 2;
            c.pos_embed_prefix = 3;
            c.pooling = Pooling::Mean;
            c.num_classes = 4;
            c.class_names = None;
            c.image_size = 12;
            c.patch_size = 3;
        }
        Variant::ClsMeanPooling => {
            c.qkv = QkvLayout::Separate;
            c.num_register_tokens = 2;
            c.pos_embed_prefix = 1;
            c.layer_scale = true;
            c.pooling = Pooling::ClsMean;
            c.num_classes = 3;
            c.class_names = Some(["tumor", "stroma", "normal"].map(String::from).to_vec());
        }
    }
    c.validate().expect("test config is valid");
    c
}

/// Random weights of a sensible scale (activations O(1)).
pub fn random_tensors(cfg: &ModelConfig, seed: u64) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let mut out = HashMap::new();
    for (name, shape) in cfg.tensor_shapes() {
        let n: usize = shape.iter().product();
        let v = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name == "norm.weight"
        {
            (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect()
        } else if name.ends_with(".ls1") || name.ends_with(".ls2") {
            (0..n).map(|_| 0.1 + 0.9 * rng.uniform()).collect()
        } else if name.ends_with(".bias") {
            rng.normals(n, 0.1)
        } else if name.ends_with(".weight") {
            let fan_in: usize = shape[1..].iter().product();
            rng.normals(n, 1.0 / (fan_in as f32).sqrt())
        } else {
            // cls_token, reg_tokens, pos_embed
            rng.normals(n, 0.5)
        };
        out.insert(name, (shape, v));
    }
    out
}

pub fn write_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    t: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) {
    let tensors: Vec<TensorOut<'static>> = cfg
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let data = t[&name].1.clone();
            TensorOut::owned(name, shape, data)
        })
        .collect();
    checkpoint::write(dir, cfg, &tensors, true).expect("write checkpoint");
}

/// Outputs of the reference forward for one image.
#[derive(Debug, Clone)]
pub struct RefOut {
    /// `[T, D]` after the final norm.
    pub tokens: Vec<f32>,
    /// `[pooled_dim]`.
    pub pooled: Vec<f32>,
    /// `[num_classes]`, empty without a head.
    pub logits: Vec<f32>,
}

fn linear(x: &[f32], rows: usize, w: &[f32], b: Option<&[f32]>, out: usize) -> Vec<f32> {
    let inp = x.len() / rows;
    let mut y = vec![0f32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut acc = b.map(|b| b[o]).unwrap_or(0.0);
            for i in 0..inp {
                acc += x[r * inp + i] * w[o * inp + i];
            }
            y[r * out + o] = acc;
        }
    }
    y
}

fn layer_norm(x: &[f32], d: usize, g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (row, out) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            out[i] = (row[i] - mean) * inv * g[i] + b[i];
        }
    }
    y
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The model on one normalised `[C, H, W]` image, written directly from the config's
/// documented semantics.
pub fn reference_forward(
    cfg: &ModelConfig,
    t: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    pixels: &[f32],
) -> RefOut {
    let w = |n: &str| -> &[f32] { &t[n].1 };
    let (d, p, c, s) = (
        cfg.hidden_size,
        cfg.patch_size,
        cfg.in_channels,
        cfg.image_size,
    );
    let g = cfg.grid();
    let n = cfg.num_patches();
    let r = cfg.num_register_tokens;
    // Patch embedding: a stride-p convolution, patches in row-major order.
    let pw = w("patch_embed.weight");
    let pb = w("patch_embed.bias");
    let mut patches = vec![0f32; n * d];
    for gy in 0..g {
        for gx in 0..g {
            for o in 0..d {
                let mut acc = pb[o];
                for ci in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            acc += pw[((o * c + ci) * p + ky) * p + kx]
                                * pixels[(ci * s + gy * p + ky) * s + gx * p + kx];
                        }
                    }
                }
                patches[(gy * g + gx) * d + o] = acc;
            }
        }
    }
    let pos = w("pos_embed");
    let prefix = cfg.pos_embed_prefix;
    let mut cls = w("cls_token").to_vec();
    let mut regs = if r > 0 {
        w("reg_tokens").to_vec()
    } else {
        vec![]
    };
    // Position rows in sequence order: class, then registers, then patches.
    if prefix >= 1 {
        for i in 0..d {
            cls[i] += pos[i];
        }
    }
    if prefix == 1 + r && r > 0 {
        for j in 0..r * d {
            regs[j] += pos[d + j];
        }
    }
    for j in 0..n * d {
        patches[j] += pos[prefix * d + j];
    }
    let mut x: Vec<f32> = cls.into_iter().chain(regs).chain(patches).collect();
    let tt = 1 + r + n;
    let (h, hd) = (cfg.num_heads, cfg.head_dim());
    let bias = |name: String| -> Option<&[f32]> { t.get(&name).map(|v| v.1.as_slice()) };
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}");
        let hn = layer_norm(
            &x,
            d,
            w(&format!("{b}.norm1.weight")),
            w(&format!("{b}.norm1.bias")),
            cfg.norm_eps,
        );
        let (q, k, v) = match cfg.qkv {
            QkvLayout::Fused => {
                let qkv = linear(
                    &hn,
                    tt,
                    w(&format!("{b}.attn.qkv.weight")),
                    bias(format!("{b}.attn.qkv.bias")),
                    3 * d,
                );
                let mut q = vec![0f32; tt * d];
                let mut k = vec![0f32; tt * d];
                let mut v = vec![0f32; tt * d];
                for row in 0..tt {
                    q[row * d..(row + 1) * d].copy_from_slice(&qkv[row * 3 * d..row * 3 * d + d]);
                    k[row * d..(row + 1) * d]
                        .copy_from_slice(&qkv[row * 3 * d + d..row * 3 * d + 2 * d]);
                    v[row * d..(row + 1) * d]
                        .copy_from_slice(&qkv[row * 3 * d + 2 * d..row * 3 * d + 3 * d]);
                }
                (q, k, v)
            }
            QkvLayout::Separate => (
                linear(
                    &hn,
                    tt,
                    w(&format!("{b}.attn.q.weight")),
                    bias(format!("{b}.attn.q.bias")),
                    d,
                ),
                linear(
                    &hn,
                    tt,
                    w(&format!("{b}.attn.k.weight")),
                    bias(format!("{b}.attn.k.bias")),
                    d,
                ),
                linear(
                    &hn,
                    tt,
                    w(&format!("{b}.attn.v.weight")),
                    bias(format!("{b}.attn.v.bias")),
                    d,
                ),
            ),
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let mut ctx = vec![0f32; tt * d];
        for head in 0..h {
            for qi in 0..tt {
                let mut scores = vec![0f32; tt];
                for ki in 0..tt {
                    let mut acc = 0f32;
                    for e in 0..hd {
                        acc += q[qi * d + head * hd + e] * k[ki * d + head * hd + e];
                    }
                    scores[ki] = acc * scale;
                }
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = scores
                    .iter_mut()
                    .map(|s| {
                        *s = (*s - m).exp();
                        *s
                    })
                    .sum();
                for ki in 0..tt {
                    let pr = scores[ki] / sum;
                    for e in 0..hd {
                        ctx[qi * d + head * hd + e] += pr * v[ki * d + head * hd + e];
                    }
                }
            }
        }
        let mut o = linear(
            &ctx,
            tt,
            w(&format!("{b}.attn.proj.weight")),
            Some(w(&format!("{b}.attn.proj.bias"))),
            d,
        );
        if cfg.layer_scale {
            let ls = w(&format!("{b}.ls1"));
            for (j, val) in o.iter_mut().enumerate() {
                *val *= ls[j % d];
            }
        }
        for j in 0..x.len() {
            x[j] += o[j];
        }
        let hn = layer_norm(
            &x,
            d,
            w(&format!("{b}.norm2.weight")),
            w(&format!("{b}.norm2.bias")),
            cfg.norm_eps,
        );
        let f1 = linear(
            &hn,
            tt,
            w(&format!("{b}.mlp.fc1.weight")),
            Some(w(&format!("{b}.mlp.fc1.bias"))),
            cfg.fc1_out(),
        );
        let act: Vec<f32> = match cfg.mlp {
            MlpKind::Gelu => f1.iter().map(|&v| gelu(v)).collect(),
            MlpKind::SwigluPacked => {
                let hm = cfg.mlp_hidden;
                let mut a = vec![0f32; tt * hm];
                for row in 0..tt {
                    for j in 0..hm {
                        a[row * hm + j] = silu(f1[row * 2 * hm + j]) * f1[row * 2 * hm + hm + j];
                    }
                }
                a
            }
        };
        let mut f2 = linear(
            &act,
            tt,
            w(&format!("{b}.mlp.fc2.weight")),
            Some(w(&format!("{b}.mlp.fc2.bias"))),
            d,
        );
        if cfg.layer_scale {
            let ls = w(&format!("{b}.ls2"));
            for (j, val) in f2.iter_mut().enumerate() {
                *val *= ls[j % d];
            }
        }
        for j in 0..x.len() {
            x[j] += f2[j];
        }
    }
    let tokens = layer_norm(&x, d, w("norm.weight"), w("norm.bias"), cfg.norm_eps);
    let cls = tokens[..d].to_vec();
    // Patches only: the class token and registers stay out of the mean.
    let mean: Vec<f32> = (0..d)
        .map(|j| (1 + r..tt).map(|row| tokens[row * d + j]).sum::<f32>() / n as f32)
        .collect();
    let pooled: Vec<f32> = match cfg.pooling {
        Pooling::Cls => cls,
        Pooling::Mean => mean,
        Pooling::ClsMean => cls.into_iter().chain(mean).collect(),
    };
    let logits = if cfg.num_classes > 0 {
        linear(
            &pooled,
            1,
            w("head.weight"),
            Some(w("head.bias")),
            cfg.num_classes,
        )
    } else {
        vec![]
    };
    RefOut {
        tokens,
        pooled,
        logits,
    }
}

/// Normalised pixels from 0..255 RGB values, as the image input's preprocessing does.
pub fn normalise(cfg: &ModelConfig, rgb: &[f32]) -> Vec<f32> {
    let hw = cfg.image_size * cfg.image_size;
    rgb.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / hw;
            (v / 255.0 - cfg.preprocess.mean[ch]) / cfg.preprocess.std[ch]
        })
        .collect()
}

pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

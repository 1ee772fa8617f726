//! `pipeline inspect`: what a checkpoint holds.

use std::fmt;
use std::path::Path;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::ModelConfig;

#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    pub config: ModelConfig,
    pub parameters: usize,
    pub parameters_by_part: Vec<(String, usize)>,
    pub tokens: usize,
    pub content_hash: String,
    pub tensors: Vec<(String, Vec<usize>)>,
}

pub fn inspect(dir: &Path) -> Result<Inspection, CheckpointError> {
    let ck = Checkpoint::load(dir)?;
    let c = &ck.config;
    let shapes = c.tensor_shapes();
    let mut parts: Vec<(String, usize)> = Vec::new();
    for (name, shape) in &shapes {
        let part = if name.starts_with("blocks.") {
            "blocks"
        } else if name.starts_with("head.") {
            "head"
        } else if name.starts_with("norm.") {
            "final norm"
        } else {
            "embeddings"
        };
        let n: usize = shape.iter().product();
        match parts.iter_mut().find(|(p, _)| p == part) {
            Some(e) => e.1 += n,
            None => parts.push((part.to_string(), n)),
        }
    }
    Ok(Inspection {
        config: c.clone(),
        parameters: c.num_parameters(),
        parameters_by_part: parts,
        tokens: c.num_tokens(),
        content_hash: ck.content_hash(),
        tensors: shapes,
    })
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

impl Inspection {
    pub fn display(&self, with_tensors: bool) -> impl fmt::Display + '_ {
        struct D<'a>(&'a Inspection, bool);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let (i, c) = (self.0, &self.0.config);
                writeln!(
                    f,
                    "source        {} ({:?})",
                    c.provenance.source, c.provenance.family
                )?;
                writeln!(
                    f,
                    "input         {0}x{0}x{1}, patch {2}, grid {3}x{3}",
                    c.image_size,
                    c.in_channels,
                    c.patch_size,
                    c.grid()
                )?;
                writeln!(
                    f,
                    "width         {} ({} heads of {})",
                    c.hidden_size,
                    c.num_heads,
                    c.head_dim()
                )?;
                writeln!(
                    f,
                    "depth         {} blocks, MLP {:?} {} wide",
                    c.num_layers, c.mlp, c.mlp_hidden
                )?;
                writeln!(f, "attention     {:?} q/k/v, bias {}", c.qkv, c.qkv_bias)?;
                writeln!(
                    f,
                    "tokens        {} (class + {} registers + {} patches)",
                    i.tokens,
                    c.num_register_tokens,
                    c.num_patches()
                )?;
                writeln!(
                    f,
                    "positions     {} prefix rows; other sizes by {:?}",
                    c.pos_embed_prefix, c.pos_interpolation
                )?;
                writeln!(f, "layer scale   {}", c.layer_scale)?;
                writeln!(f, "norm eps      {:e}", c.norm_eps)?;
                writeln!(f, "pooling       {:?}, {} wide", c.pooling, c.pooled_dim())?;
                let head = if c.num_classes == 0 {
                    "none (backbone)".to_string()
                } else {
                    format!("{} classes: {}", c.num_classes, c.class_labels().join(", "))
                };
                writeln!(f, "head          {head}")?;
                writeln!(
                    f,
                    "preprocess    mean {:?} std {:?}, resize {}",
                    c.preprocess.mean, c.preprocess.std, c.preprocess.resize_shorter
                )?;
                writeln!(
                    f,
                    "parameters    {} ({})",
                    human(i.parameters),
                    i.parameters
                )?;
                for (p, n) in &i.parameters_by_part {
                    writeln!(f, "  {p:<12}{}", human(*n))?;
                }
                writeln!(f, "weights hash  {}", i.content_hash)?;
                if self.1 {
                    writeln!(f, "tensors ({}):", i.tensors.len())?;
                    for (n, s) in &i.tensors {
                        writeln!(f, "  {n:<40} {s:?}")?;
                    }
                }
                Ok(())
            }
        }
        D(self, with_tensors)
    }
}

use mlx_rs::module::ModuleParameters;
use mlx_rs::{
    error::Exception, macros::ModuleParameters, module::Param, ops, ops::indexing::IndexOp, Array,
};

use super::{block::Norm, Block, Embeddings, Linear};
use crate::config::{ModelConfig, Pooling};

#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Vit {
    #[param]
    pub patch_embed: Linear,
    #[param]
    pub cls_token: Param<Array>,
    #[param]
    pub reg_tokens: Param<Option<Array>>,
    #[param]
    pub pos_embed: Param<Array>,
    #[param]
    pub blocks: Vec<Block>,
    #[param]
    pub norm: Norm,
    #[param]
    pub head: Linear,
    pub config: ModelConfig,
    /// Recompute block activations in the backward pass (less memory, more compute).
    pub grad_checkpoint: bool,
    /// Dtype of the forward pass's arithmetic. Other than float32, every parameter is cast
    /// to it at use (the stored ones stay as they are: float32 masters while training)
    /// and so are the pixels; outputs come out in it.
    pub compute_dtype: mlx_rs::Dtype,
    /// The step's LoRA dropout seed (each layer derives its own from it).
    pub dropout_seed: Option<u64>,
}

/// Everything a forward pass produces.
pub struct VitOutput {
    /// `[B, T, D]` after the final norm.
    pub tokens: Array,
    /// `[B, pooled_dim]`: class token, mean of patch tokens, or both concatenated.
    pub pooled: Array,
    /// `[B, K]` when the model has a head.
    pub logits: Option<Array>,
}

impl Vit {
    pub fn embeddings(&self) -> Embeddings<'_> {
        let c = &self.config;
        Embeddings {
            patch_embed: &self.patch_embed,
            cls_token: &self.cls_token.value,
            reg_tokens: self.reg_tokens.value.as_ref(),
            pos_embed: &self.pos_embed.value,
            patch: c.patch_size as i32,
            native_grid: c.grid() as i32,
            pos_prefix: c.pos_embed_prefix as i32,
            interpolation: c.pos_interpolation,
        }
    }

    pub fn forward(&self, pixels: &Array) -> Result<VitOutput, Exception> {
        let dt = self.compute_dtype;
        if pixels.dtype() != dt
            || self
                .parameters()
                .flatten()
                .values()
                .any(|p| p.dtype() != dt)
        {
            // Casts are graph ops, so gradients flow back to the stored parameters in
            // their own dtype; parameters already in `dt` pass through untouched.
            let mut cast = self.clone();
            for (_, p) in cast.parameters_mut().flatten() {
                *p = p.as_dtype(dt)?;
            }
            return cast.forward_cast(&pixels.as_dtype(dt)?);
        }
        self.forward_cast(pixels)
    }

    /// Casts every parameter not being trained to the compute dtype, once, so steps do
    /// not redo it (and frozen weights take half the memory in bf16).
    pub fn cast_frozen(&mut self) -> Result<(), Exception> {
        let dt = self.compute_dtype;
        let trainable: std::collections::HashSet<String> = self
            .trainable_parameters()
            .flatten()
            .keys()
            .map(|k| k.to_string())
            .collect();
        for (name, p) in self.parameters_mut().flatten() {
            if !trainable.contains(&*name) {
                *p = p.as_dtype(dt)?;
            }
        }
        Ok(())
    }

    /// The forward pass once parameters and pixels are in the compute dtype.
    fn forward_cast(&self, pixels: &Array) -> Result<VitOutput, Exception> {
        let mut x = self.embeddings().forward(pixels)?;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            // The last block's backward pass starts right after its forward one: recomputing
            // it would only repeat work, and its activations are alive at that point anyway.
            x = if self.grad_checkpoint && i < last {
                block.forward_checkpointed(&x)?
            } else {
                block.forward(&x)?
            };
        }
        let tokens = self.norm.forward(&x, self.config.norm_eps)?;
        let pooled = self.pool(&tokens)?;
        let logits = if self.head.is_present() {
            Some(self.head.forward(&pooled)?)
        } else {
            None
        };
        Ok(VitOutput {
            tokens,
            pooled,
            logits,
        })
    }
}

impl Vit {
    /// `[B, T, D]` normed tokens -> `[B, pooled_dim]`, as [`Pooling`] documents.
    fn pool(&self, tokens: &Array) -> Result<Array, Exception> {
        let cls = || tokens.index((.., 0, ..));
        let patch_mean = || -> Result<Array, Exception> {
            let prefix = self.config.num_prefix_tokens() as i32;
            let parts = ops::split_at_indices(tokens, &[prefix], 1)?;
            parts[1].mean_axis(1, None)
        };
        match self.config.pooling {
            Pooling::Cls => Ok(cls()),
            Pooling::Mean => patch_mean(),
            Pooling::ClsMean => ops::concatenate(&[cls(), patch_mean()?], -1),
        }
    }

    /// Every linear layer of the blocks with its checkpoint name (`blocks.3.attn.qkv`).
    /// Absent layers (q/k/v of a fused model) are skipped.
    pub fn block_linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let a = &mut b.attn;
            for (n, l) in [
                ("attn.qkv", &mut a.qkv),
                ("attn.q", &mut a.q),
                ("attn.k", &mut a.k),
                ("attn.v", &mut a.v),
                ("attn.proj", &mut a.proj),
                ("mlp.fc1", &mut b.mlp.fc1),
                ("mlp.fc2", &mut b.mlp.fc2),
            ] {
                if l.is_present() {
                    out.push((format!("blocks.{i}.{n}"), l));
                }
            }
        }
        out
    }

    /// Sets (or clears) the per-step dropout seeds of every LoRA layer.
    pub fn set_dropout_seed(&mut self, seed: Option<u64>) {
        self.dropout_seed = seed;
        for (i, (_, l)) in self.block_linears_mut().into_iter().enumerate() {
            l.dropout_seed = seed.map(|s| s.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64));
        }
    }

    /// The seed last given to [`Vit::set_dropout_seed`].
    pub fn dropout_seed(&self) -> Option<u64> {
        self.dropout_seed
    }

    /// Folds every LoRA adapter into its layer.
    pub fn merge_lora(&mut self) -> Result<(), Exception> {
        for (_, l) in self.block_linears_mut() {
            l.merge_lora()?;
        }
        Ok(())
    }

    /// All parameters by checkpoint name, as host float32 tensors (for saving).
    pub fn named_parameters(&self) -> Vec<(String, Array)> {
        use mlx_rs::module::ModuleParameters;
        let mut v: Vec<(String, Array)> = self
            .parameters()
            .flatten()
            .into_iter()
            .map(|(k, a)| (k.to_string(), a.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

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
}

/// Everything a forward pass produces.
pub struct VitOutput {
    /// `[B, T, D]` after the final norm.
    pub tokens: Array,
    /// `[B, D]`: class token or mean of patch tokens.
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
        let mut x = self.embeddings().forward(pixels)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let tokens = self.norm.forward(&x, self.config.norm_eps)?;
        let pooled = match self.config.pooling {
            Pooling::Cls => tokens.index((.., 0, ..)),
            Pooling::Mean => {
                let prefix = self.config.num_prefix_tokens() as i32;
                let parts = ops::split_at_indices(&tokens, &[prefix], 1)?;
                parts[1].mean_axis(1, None)?
            }
        };
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

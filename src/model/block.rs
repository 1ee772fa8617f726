use mlx_rs::{error::Exception, macros::ModuleParameters, module::Param, Array};

use super::{layer_norm, Attention, Mlp};

#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Norm {
    #[param]
    pub weight: Param<Array>,
    #[param]
    pub bias: Param<Array>,
}

impl Norm {
    pub fn forward(&self, x: &Array, eps: f32) -> Result<Array, Exception> {
        layer_norm(x, &self.weight.value, &self.bias.value, eps)
    }
}

/// Pre-norm transformer block with optional layer scale.
#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Block {
    #[param]
    pub norm1: Norm,
    #[param]
    pub attn: Attention,
    #[param]
    pub ls1: Param<Option<Array>>,
    #[param]
    pub norm2: Norm,
    #[param]
    pub mlp: Mlp,
    #[param]
    pub ls2: Param<Option<Array>>,
    pub eps: f32,
}

fn scaled(x: Array, gamma: &Option<Array>) -> Result<Array, Exception> {
    match gamma {
        Some(g) => x.multiply(g),
        None => Ok(x),
    }
}

impl Block {
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let a = self.attn.forward(&self.norm1.forward(x, self.eps)?)?;
        let x = x.add(&scaled(a, &self.ls1.value)?)?;
        let m = self.mlp.forward(&self.norm2.forward(&x, self.eps)?)?;
        x.add(&scaled(m, &self.ls2.value)?)
    }
}

use mlx_rs::module::Parameter;
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
        // MLX's CPU layer norm keeps bf16 statistics (8% off on a small test model), so
        // there the statistics are taken in float32; its GPU kernels accumulate in f32.
        if x.dtype() != mlx_rs::Dtype::Float32 && super::gelu::on_cpu() {
            let f = |a: &Array| a.as_dtype(mlx_rs::Dtype::Float32);
            return layer_norm(&f(x)?, &f(&self.weight.value)?, &f(&self.bias.value)?, eps)?
                .as_dtype(x.dtype());
        }
        // Trained on a GPU, the scale and shift are applied apart from the normalisation
        // so that their gradients are matrix products (see `param_grads`); frozen (LoRA),
        // the fused kernel does it all.
        if self.weight.is_frozen() == Some(false)
            && !super::gelu::on_cpu()
            && super::param_grads::enabled()
        {
            let xhat = mlx_rs::fast::layer_norm(x, None, None, eps)?;
            return super::param_grads::affine(&xhat, &self.weight.value, &self.bias.value);
        }
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
    /// The same function as [`Block::forward`], run as a checkpointed MLX closure so its
    /// activations are recomputed in the backward pass. The block's trainable parameters
    /// are inputs of the closure, so their gradients are kept.
    pub fn forward_checkpointed(&self, x: &Array) -> Result<Array, Exception> {
        use mlx_rs::module::ModuleParameters;
        let mut trainable: Vec<(std::rc::Rc<str>, Array)> = self
            .trainable_parameters()
            .flatten()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<std::rc::Rc<str>> = trainable.iter().map(|(k, _)| k.clone()).collect();
        let template = self.clone();
        let f = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            let mut b = template.clone();
            {
                let mut params = b.parameters_mut().flatten();
                for (name, value) in names.iter().zip(&args[1..]) {
                    if let Some(slot) = params.get_mut(name) {
                        **slot = value.clone();
                    }
                }
            }
            Ok(vec![b.forward(&args[0])?])
        };
        let mut inputs = vec![x.clone()];
        inputs.extend(trainable.into_iter().map(|(_, v)| v));
        let mut out = super::remat::checkpointed(f, &inputs)?;
        Ok(out.remove(0))
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let a = self.attn.forward(&self.norm1.forward(x, self.eps)?)?;
        let x = x.add(&scaled(a, &self.ls1.value)?)?;
        let m = self.mlp.forward(&self.norm2.forward(&x, self.eps)?)?;
        x.add(&scaled(m, &self.ls2.value)?)
    }
}

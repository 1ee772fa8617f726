//! The ViT in MLX. One implementation covers every architecture the config describes;
//! parameter names equal the checkpoint's tensor names, so loading and saving are plain
//! name lookups.

mod attention;
mod block;
mod embed;
mod ffi;
pub mod gelu;
mod linear;
mod load;
mod mlp;
pub mod param_grads;
mod remat;
mod vit;

pub use attention::Attention;
pub use block::Block;
pub use embed::Embeddings;
pub use ffi::{set_lane, Closure};
pub use linear::Linear;
pub use load::{from_checkpoint, ModelError};
pub use mlp::Mlp;
pub use vit::{Vit, VitOutput};

use mlx_rs::{error::Exception, Array};

/// `fast::layer_norm` over the last axis.
pub(crate) fn layer_norm(x: &Array, w: &Array, b: &Array, eps: f32) -> Result<Array, Exception> {
    mlx_rs::fast::layer_norm(x, w, b, eps)
}

/// Evaluates an array and copies it to the host as float32 values in row-major order.
pub fn to_host(a: &Array) -> Result<Vec<f32>, Exception> {
    let a = a.contiguous()?.as_dtype(mlx_rs::Dtype::Float32)?;
    a.eval()?;
    Ok(a.try_as_slice::<f32>()
        .map_err(|e| Exception::custom(format!("{e:?}")))?
        .to_vec())
}

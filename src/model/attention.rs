use mlx_rs::{error::Exception, macros::ModuleParameters, Array};

use super::Linear;

/// Multi-head self-attention with fused (`qkv`) or separate (`q`, `k`, `v`) projections;
/// exactly one of the two is present.
#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Attention {
    #[param]
    pub qkv: Linear,
    #[param]
    pub q: Linear,
    #[param]
    pub k: Linear,
    #[param]
    pub v: Linear,
    #[param]
    pub proj: Linear,
    pub num_heads: i32,
}

impl Attention {
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let shape = x.shape();
        let (b, t, d) = (shape[0], shape[1], shape[2]);
        let h = self.num_heads;
        let (q, k, v) = if self.qkv.is_present() {
            // [B, T, 3D] -> [B, T, 3, H, hd]; rows of the fused weight are q, k, v.
            let qkv = self.qkv.forward(x)?.reshape(&[b, t, 3, h, d / h])?;
            let qkv = qkv.transpose_axes(&[2, 0, 3, 1, 4])?;
            let parts = mlx_rs::ops::split_equal(&qkv, 3, 0)?;
            let sq = |a: &Array| a.squeeze_axes(&[0]);
            (sq(&parts[0])?, sq(&parts[1])?, sq(&parts[2])?)
        } else {
            let heads = |a: Array| -> Result<Array, Exception> {
                a.reshape(&[b, t, h, d / h])?.transpose_axes(&[0, 2, 1, 3])
            };
            (
                heads(self.q.forward(x)?)?,
                heads(self.k.forward(x)?)?,
                heads(self.v.forward(x)?)?,
            )
        };
        let scale = 1.0 / ((d / h) as f32).sqrt();
        let o = mlx_rs::fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None)?;
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, d])?;
        self.proj.forward(&o)
    }
}

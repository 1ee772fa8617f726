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
        let o = attend(&q, &k, &v, fused_backward_padding(&q))?;
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, d])?;
        self.proj.forward(&o)
    }
}

/// Query rows to add so that MLX's CUDA build differentiates attention with cuDNN's fused
/// kernel: it does so only for bf16/f16, head sizes up to 128 in multiples of 8, and a
/// query length that is a multiple of 128; a ViT's 197 tokens otherwise take the unfused
/// fallback, which was 3x slower than PyTorch's attention backward on an H200. Keys and
/// values keep their length, so no mask is needed: the extra (zero) queries only produce
/// rows that are dropped, and their zero cotangents add nothing to the key and value
/// gradients.
fn fused_backward_padding(q: &Array) -> i32 {
    use mlx_rs::Dtype;
    let s = q.shape();
    let (t, hd) = (s[2], s[3]);
    let eligible = matches!(q.dtype(), Dtype::Bfloat16 | Dtype::Float16)
        && hd % 8 == 0
        && hd <= 128
        && t % 128 != 0
        && !super::gelu::on_cpu();
    if eligible {
        (t + 127) / 128 * 128 - t
    } else {
        0
    }
}

/// Softmax attention of `q` over `k`, `v` (`[B, H, T, hd]`), with `pad` zero query rows
/// appended for the computation and removed from the result.
pub(crate) fn attend(q: &Array, k: &Array, v: &Array, pad: i32) -> Result<Array, Exception> {
    use mlx_rs::ops::indexing::IndexOp;
    let s = q.shape();
    let scale = 1.0 / (s[3] as f32).sqrt();
    if pad == 0 {
        return mlx_rs::fast::scaled_dot_product_attention(q, k, v, scale, None, None);
    }
    let zeros = mlx_rs::ops::zeros_dtype(&[s[0], s[1], pad, s[3]], q.dtype())?;
    let padded = mlx_rs::ops::concatenate(&[q, &zeros], 2)?;
    let o = mlx_rs::fast::scaled_dot_product_attention(&padded, k, v, scale, None, None)?;
    Ok(o.index((.., .., ..s[2], ..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::Array;

    fn random(seed: u64, shape: &[i32]) -> Array {
        let key = mlx_rs::random::key(seed).unwrap();
        mlx_rs::random::normal::<f32>(shape, None, None, &key).unwrap()
    }

    /// The padded computation (the GPU's route to the fused backward) gives the same
    /// attention and the same gradients for q, k and v as the plain one.
    #[test]
    fn padded_queries_change_neither_output_nor_gradients() {
        let (q, k, v) = (
            random(1, &[2, 3, 5, 8]),
            random(2, &[2, 3, 5, 8]),
            random(3, &[2, 3, 5, 8]),
        );
        let w = random(4, &[2, 3, 5, 8]);
        let run = |pad: i32| {
            let f = |args: &[Array]| -> Result<Vec<Array>, mlx_rs::error::Exception> {
                Ok(vec![attend(&args[0], &args[1], &args[2], pad)?
                    .multiply(&w)?
                    .sum(None)?])
            };
            let mut vg = mlx_rs::transforms::value_and_grad_with_argnums(f, &[0, 1, 2][..]);
            let (value, grads) = vg(&[q.clone(), k.clone(), v.clone()]).unwrap();
            let mut out = vec![value[0].item_exact::<f32>()];
            for g in grads {
                out.extend(crate::model::to_host(&g).unwrap());
            }
            out
        };
        let plain = run(0);
        let padded = run(11);
        assert_eq!(plain.len(), 1 + 3 * 240);
        let diff = plain
            .iter()
            .zip(&padded)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "max difference {diff}");
        assert!(plain[1..].iter().any(|g| g.abs() > 1e-3));
    }
}

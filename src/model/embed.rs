use mlx_rs::{error::Exception, ops, Array};

use crate::config::PosInterpolation;
use crate::posembed;

/// Patch embedding, class and register tokens, and position embedding. The parameters
/// live at the top of [`super::Vit`] (their checkpoint names have no prefix); this view
/// borrows them.
pub struct Embeddings<'a> {
    /// `[D, C, p, p]` convolution weight applied with stride p, as a matmul over patches.
    pub patch_embed: &'a super::Linear,
    pub cls_token: &'a Array,
    pub reg_tokens: Option<&'a Array>,
    pub pos_embed: &'a Array,
    pub patch: i32,
    pub native_grid: i32,
    pub pos_prefix: i32,
    pub interpolation: PosInterpolation,
}

impl Embeddings<'_> {
    /// NCHW pixels -> `[B, T, D]` tokens in the order `[cls, registers, patches]`.
    pub fn forward(&self, pixels: &Array) -> Result<Array, Exception> {
        let s = pixels.shape();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let p = self.patch;
        if h % p != 0 || w % p != 0 {
            return Err(Exception::custom(format!(
                "input {h}x{w} is not a multiple of the patch size {p}"
            )));
        }
        let (gh, gw) = (h / p, w / p);
        let weight = self
            .patch_embed
            .weight
            .value
            .as_ref()
            .ok_or_else(|| Exception::custom("patch embedding has no weight"))?;
        let d = weight.shape()[0];
        // [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p] -> [B, N, C*p*p]: a stride-p conv.
        let patches = pixels
            .reshape(&[b, c, gh, p, gw, p])?
            .transpose_axes(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[b, gh * gw, c * p * p])?;
        let w2 = weight.reshape(&[d, c * p * p])?;
        let mut x = ops::matmul(&patches, w2.t())?;
        if let Some(bias) = self.patch_embed.bias.value.as_ref() {
            x = x.add(bias)?;
        }

        let pos = self.position_rows(gh, gw, d)?;
        let prefix = self.pos_prefix;
        let (pos_prefix, pos_patches) = if prefix > 0 {
            let parts = ops::split_at_indices(&pos, &[prefix], 0)?;
            (Some(parts[0].clone()), parts[1].clone())
        } else {
            (None, pos)
        };
        x = x.add(&pos_patches)?;

        let cls = self.cls_token.reshape(&[1, 1, d])?;
        let cls = ops::broadcast_to(&cls, &[b, 1, d])?;
        let regs = match self.reg_tokens {
            Some(r) => {
                let n = r.shape()[0];
                Some(ops::broadcast_to(r.reshape(&[1, n, d])?, &[b, n, d])?)
            }
            None => None,
        };
        // Position rows cover the first `prefix` tokens of [cls, registers].
        let mut front: Vec<Array> = vec![cls];
        if let Some(r) = regs {
            front.push(r);
        }
        let mut front = ops::concatenate(&front, 1)?;
        if let Some(pp) = pos_prefix {
            let covered = ops::split_at_indices(&front, &[prefix], 1)?;
            let head = covered[0].add(&pp)?;
            front = if front.shape()[1] > prefix {
                ops::concatenate(&[head, covered[1].clone()], 1)?
            } else {
                head
            };
        }
        ops::concatenate(&[front, x], 1)
    }

    /// Patch position rows `[gh*gw, D]` (plus the prefix rows in front) for a grid,
    /// resampled from the native grid when it differs. The resampling is two small
    /// matrices applied in MLX, so gradients reach `pos_embed`.
    fn position_rows(&self, gh: i32, gw: i32, d: i32) -> Result<Array, Exception> {
        let g = self.native_grid;
        let pos = self.pos_embed;
        if gh == g && gw == g {
            return Ok(pos.clone());
        }
        let prefix = self.pos_prefix;
        let parts = ops::split_at_indices(pos, &[prefix], 0)?;
        let grid = parts[1].reshape(&[g, g * d])?;
        let mh = posembed::resize_matrix(g as usize, gh as usize, self.interpolation);
        let mw = posembed::resize_matrix(g as usize, gw as usize, self.interpolation);
        let mh = Array::from_slice(&mh, &[gh, g]).as_dtype(pos.dtype())?;
        let mw = Array::from_slice(&mw, &[gw, g]).as_dtype(pos.dtype())?;
        // rows: [gh, g*d] -> [gh, g, d] -> [gh, d, g] @ mw^T -> [gh, d, gw] -> [gh, gw, d]
        let rows = ops::matmul(&mh, &grid)?.reshape(&[gh, g, d])?;
        let cols = ops::matmul(rows.transpose_axes(&[0, 2, 1])?, mw.t())?;
        let resized = cols.transpose_axes(&[0, 2, 1])?.reshape(&[gh * gw, d])?;
        if prefix > 0 {
            ops::concatenate(&[parts[0].clone(), resized], 0)
        } else {
            Ok(resized)
        }
    }
}

//! Gradients of biases and LayerNorm scales as matrix products, for GPUs.
//!
//! A bias's gradient is the column sum of the output's cotangent over every token of the
//! batch (`[B*T, N] -> [N]`), and so are a LayerNorm's two gradients. MLX 0.32's CUDA
//! column reduction gives such a tall, narrow sum one thread block per 32 columns (24
//! blocks for a 768-wide ViT-B tensor on a 132-multiprocessor H200): about 135 us per
//! sum at batch 64, growing with the batch, 102 sums a step in full fine-tuning, 13.6 ms
//! of a 34 ms ViT-B/16 step (Nsight Compute, bf16). As a product with a row of ones the
//! same sum is one cuBLAS GEMV-shaped GEMM that reads the cotangent once at memory speed.
//!
//! [`linear`] is `x W^T + b` with its own derivative (the weight's gradient is also
//! written in the weight's `[out, in]` layout directly, not as a transpose of `[in, out]`
//! that a later copy makes contiguous); [`affine`] is a LayerNorm's `x̂ w + b` apart from
//! the normalisation, whose own derivative stays MLX's fused kernel. MLX evaluates lazily,
//! so the gradients nobody asks for (of frozen weights, of the pixels) are never computed.

use std::cell::RefCell;

use mlx_rs::{error::Exception, ops, Array};

use super::ffi::{apply_cached, ClosureSlot};
use super::Closure;

/// Whether the GPU paths use these functions: yes unless `PIPELINE_PARAM_GRADS=0` (for
/// A/B measurements against MLX's own derivatives).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("PIPELINE_PARAM_GRADS").as_deref() != Ok("0"))
}

/// `Σ_rows a` over every axis but the last, as `ones[1, M] @ a[M, N]` (f32 accumulation
/// in cuBLAS for bf16 inputs), in `a`'s dtype.
pub fn column_sum(a: &Array) -> Result<Array, Exception> {
    let s = a.shape();
    let n = *s
        .last()
        .ok_or_else(|| Exception::custom("column sum of a scalar"))?;
    let m = (a.size() as i32) / n.max(1);
    let ones = ops::ones_dtype(&[1, m], a.dtype())?;
    ops::matmul(&ones, a.reshape(&[m, n])?)?.reshape(&[n])
}

/// `[x, w, b] -> [x W^T + b]` and its derivative.
fn build_linear() -> Result<Closure, Exception> {
    let fun = Closure::new(|a: &[Array]| Ok(vec![ops::addmm(&a[2], &a[0], a[1].t(), None, None)?]));
    Closure::with_vjp(fun, |primals, cotangents, _outputs| {
        let (x, w) = (&primals[0], &primals[1]);
        let dy = &cotangents[0];
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let m = (dy.size() as i32) / n.max(1);
        let dx = ops::matmul(dy, w)?;
        let dw = ops::matmul(dy.reshape(&[m, n])?.t(), x.reshape(&[m, k])?)?;
        Ok(vec![dx, dw, column_sum(dy)?])
    })
}

/// `[x̂, w, b] -> [x̂ w + b]` (scale and shift over the last axis) and its derivative.
fn build_affine() -> Result<Closure, Exception> {
    let fun = Closure::new(|a: &[Array]| Ok(vec![a[0].multiply(&a[1])?.add(&a[2])?]));
    Closure::with_vjp(fun, |primals, cotangents, _outputs| {
        let (xhat, w) = (&primals[0], &primals[1]);
        let dy = &cotangents[0];
        Ok(vec![
            dy.multiply(w)?,
            column_sum(&dy.multiply(xhat)?)?,
            column_sum(dy)?,
        ])
    })
}

thread_local! {
    /// Built once per thread; the closures capture nothing, so one serves every layer.
    static LINEAR: ClosureSlot = const { RefCell::new(Vec::new()) };
    static AFFINE: ClosureSlot = const { RefCell::new(Vec::new()) };
}

/// `x W^T + b` (`W` `[out, in]`) whose bias gradient is a [`column_sum`].
pub fn linear(x: &Array, w: &Array, b: &Array) -> Result<Array, Exception> {
    apply_cached(&LINEAR, build_linear, &[x.clone(), w.clone(), b.clone()])
}

/// `x̂ w + b` whose `w` and `b` gradients are [`column_sum`]s.
pub fn affine(xhat: &Array, w: &Array, b: &Array) -> Result<Array, Exception> {
    apply_cached(&AFFINE, build_affine, &[xhat.clone(), w.clone(), b.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(seed: u64, shape: &[i32]) -> Array {
        let key = mlx_rs::random::key(seed).unwrap();
        mlx_rs::random::normal::<f32>(shape, None, None, &key).unwrap()
    }

    /// Value and gradients of `sum(f(inputs) * probe)` for every input.
    fn grads(
        f: impl Fn(&[Array]) -> Result<Array, Exception> + 'static,
        inputs: &[Array],
        probe: &Array,
    ) -> Vec<Vec<f32>> {
        let probe = probe.clone();
        let n = inputs.len() as i32;
        let loss = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![f(a)?.multiply(&probe)?.sum(None)?])
        };
        let argnums: Vec<i32> = (0..n).collect();
        let mut vg = mlx_rs::transforms::value_and_grad_with_argnums(loss, &argnums[..]);
        let (value, g) = vg(inputs).unwrap();
        let mut out = vec![vec![value[0].item_exact::<f32>()]];
        out.extend(g.iter().map(|g| crate::model::to_host(g).unwrap()));
        out
    }

    fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        let mut worst = 0.0f32;
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len());
            let scale = y.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (p, q) in x.iter().zip(y) {
                worst = worst.max((p - q).abs() / scale);
            }
        }
        worst
    }

    #[test]
    fn column_sum_is_the_sum_over_every_leading_axis() {
        let a = random(1, &[3, 5, 7]);
        let ours = crate::model::to_host(&column_sum(&a).unwrap()).unwrap();
        let reference = crate::model::to_host(&a.sum_axes(&[0, 1], None).unwrap()).unwrap();
        assert_eq!(ours.len(), 7);
        for (p, q) in ours.iter().zip(&reference) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }

    /// Against MLX's own differentiation of `addmm`, on 3-D activations (tokens) and 2-D
    /// ones (a head on pooled features).
    #[test]
    fn linear_has_the_gradients_of_addmm() {
        for x_shape in [&[2, 5, 6][..], &[4, 6][..]] {
            let x = random(2, x_shape);
            let (w, b) = (random(3, &[4, 6]), random(4, &[4]));
            let mut out_shape = x_shape.to_vec();
            *out_shape.last_mut().unwrap() = 4;
            let probe = random(5, &out_shape);
            let inputs = [x, w, b];
            let ours = grads(|a| linear(&a[0], &a[1], &a[2]), &inputs, &probe);
            let plain = grads(
                |a| ops::addmm(&a[2], &a[0], a[1].t(), None, None),
                &inputs,
                &probe,
            );
            let d = max_rel_diff(&ours, &plain);
            assert!(d < 1e-5, "{x_shape:?}: relative difference {d}");
            assert!(
                ours[3].iter().any(|g| g.abs() > 1e-2),
                "bias gradient is zero"
            );
        }
    }

    /// A LayerNorm split into MLX's normalisation and our affine part has the value and
    /// gradients (input, scale, shift) of MLX's fused LayerNorm.
    #[test]
    fn split_layer_norm_matches_the_fused_one() {
        let x = random(6, &[2, 5, 8]);
        let (w, b) = (random(7, &[8]), random(8, &[8]));
        let probe = random(9, &[2, 5, 8]);
        let inputs = [x, w, b];
        let split = grads(
            |a| {
                affine(
                    &mlx_rs::fast::layer_norm(&a[0], None, None, 1e-6)?,
                    &a[1],
                    &a[2],
                )
            },
            &inputs,
            &probe,
        );
        let fused = grads(
            |a| mlx_rs::fast::layer_norm(&a[0], &a[1], &a[2], 1e-6),
            &inputs,
            &probe,
        );
        let d = max_rel_diff(&split, &fused);
        assert!(d < 1e-5, "relative difference {d}");
    }
}

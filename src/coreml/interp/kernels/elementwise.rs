//! Elementwise kernels: broadcasting binary arithmetic and unary maps (the activations).

use super::{broadcast_strides, par_items, profile, step, KResult};
use crate::coreml::interp::tensor::Tensor;
use crate::coreml::mil::types::broadcast;

/// Elementwise binary op with numpy broadcasting.
pub fn binary(x: &Tensor, y: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> KResult<Tensor> {
    let _p = profile::span("binary");
    let out = broadcast(&x.shape, &y.shape)
        .ok_or_else(|| format!("{:?} and {:?} do not broadcast", x.shape, y.shape))?;
    let n: usize = out.iter().product();
    let mut data = vec![0f32; n];
    if x.shape == y.shape {
        // Memory-bound: threads only for large tensors (runs of 64, a quarter each).
        par_items(&mut data, 64, 16, |first, o| {
            let at = first * 64;
            let xs = &x.data[at..at + o.len()];
            let ys = &y.data[at..at + o.len()];
            for ((o, a), b) in o.iter_mut().zip(xs).zip(ys) {
                *o = f(*a, *b);
            }
        });
        return Ok(Tensor { shape: out, data });
    }
    if n == 0 {
        return Ok(Tensor { shape: out, data });
    }
    let r = out.len();
    let (sx, sy) = (
        broadcast_strides(&x.shape, r),
        broadcast_strides(&y.shape, r),
    );
    // Rows along the last axis, each with its own operand strides (0 or 1 there).
    let inner = out.last().copied().unwrap_or(1);
    let (ix, iy) = (
        sx.last().copied().unwrap_or(0),
        sy.last().copied().unwrap_or(0),
    );
    let outer = &out[..r.saturating_sub(1)];
    let (ox, oy) = (&sx[..outer.len()], &sy[..outer.len()]);
    par_items(&mut data, inner, inner.div_ceil(2), |first, part| {
        // Offsets of row `first` in x and y.
        let mut idx = vec![0usize; outer.len()];
        let mut rem = first;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut offs = [
            (0..outer.len()).map(|d| idx[d] * ox[d]).sum::<usize>(),
            (0..outer.len()).map(|d| idx[d] * oy[d]).sum::<usize>(),
        ];
        for row in part.chunks_mut(inner) {
            let [mut a, mut b] = offs;
            for o in row {
                *o = f(x.data[a], y.data[b]);
                a += ix;
                b += iy;
            }
            step(&mut idx, outer, [ox, oy], &mut offs);
        }
    });
    Ok(Tensor { shape: out, data })
}

pub fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let _p = profile::span("map");
    let mut data = vec![0f32; x.numel()];
    // Costly functions (erf, tanh, exp): worth threads from a few thousand elements.
    par_items(&mut data, 1, 16, |first, o| {
        for (o, v) in o.iter_mut().zip(&x.data[first..]) {
            *o = f(*v);
        }
    });
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

pub fn gelu_exact(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

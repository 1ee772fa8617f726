//! Kernels that reduce along axes: mean, softmax, layer normalisation.

use super::{axis, par_items, profile, KResult};
use crate::coreml::interp::tensor::{strides, Tensor};

pub fn reduce_mean(x: &Tensor, axes: &[i64], keep_dims: bool) -> KResult<Tensor> {
    let r = x.rank();
    let mut red = vec![false; r];
    for &a in axes {
        red[axis(a, r)?] = true;
    }
    let kept: Vec<usize> = (0..r)
        .map(|i| if red[i] { 1 } else { x.shape[i] })
        .collect();
    let ks = strides(&kept);
    let count: usize = (0..r).filter(|&i| red[i]).map(|i| x.shape[i]).product();
    let mut sums = vec![0f32; kept.iter().product()];
    let mut idx = vec![0usize; r];
    for &v in &x.data {
        let off: usize = (0..r)
            .map(|d| if red[d] { 0 } else { idx[d] * ks[d] })
            .sum();
        sums[off] += v;
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < x.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let data = sums.into_iter().map(|s| s / count as f32).collect();
    let shape = if keep_dims {
        kept
    } else {
        (0..r).filter(|&i| !red[i]).map(|i| x.shape[i]).collect()
    };
    Ok(Tensor { shape, data })
}

pub fn softmax(x: &Tensor, ax: i64) -> KResult<Tensor> {
    let _p = profile::span("softmax");
    let a = axis(ax, x.rank())?;
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut out = x.data.clone();
    if out.is_empty() {
        return Ok(Tensor {
            shape: x.shape.clone(),
            data: out,
        });
    }
    // Each `[n, inner]` block on its own; within it the same operations in the same
    // order as ever (max, exp and running sum, division).
    par_items(&mut out, n * inner, n * inner * 8, |_, part| {
        for block in part.chunks_mut(n * inner) {
            if inner == 1 {
                let m = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for v in block.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                for v in block.iter_mut() {
                    *v /= s;
                }
                continue;
            }
            for i in 0..inner {
                let at = |k: usize| k * inner + i;
                let m = (0..n)
                    .map(|k| block[at(k)])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for k in 0..n {
                    let e = (block[at(k)] - m).exp();
                    block[at(k)] = e;
                    s += e;
                }
                for k in 0..n {
                    block[at(k)] /= s;
                }
            }
        }
    });
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

/// Normalises over the trailing axes `axes` (which must be the last ones).
pub fn layer_norm(
    x: &Tensor,
    axes: &[i64],
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> KResult<Tensor> {
    let _p = profile::span("layer_norm");
    let r = x.rank();
    let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<KResult<_>>()?;
    ax.sort_unstable();
    if ax.len() == 1 && ax[0] != r - 1 {
        return layer_norm_strided(x, ax[0], gamma, beta, eps);
    }
    if ax.is_empty() || ax.iter().enumerate().any(|(i, &a)| a != r - ax.len() + i) {
        return Err(format!(
            "axes {axes:?} are not the trailing axes of rank {r}"
        ));
    }
    let d: usize = x.shape[r - ax.len()..].iter().product();
    for p in [gamma, beta].into_iter().flatten() {
        if p.numel() != d {
            return Err(format!("gamma/beta {:?} for normalised size {d}", p.shape));
        }
    }
    let mut out = vec![0f32; x.numel()];
    if out.is_empty() {
        return Ok(Tensor {
            shape: x.shape.clone(),
            data: out,
        });
    }
    par_items(&mut out, d, d * 4, |first, part| {
        let rows = x.data[first * d..].chunks(d);
        for (row, o) in rows.zip(part.chunks_mut(d)) {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..d {
                let g = gamma.map_or(1.0, |g| g.data[i]);
                let b = beta.map_or(0.0, |b| b.data[i]);
                o[i] = (row[i] - mean) * inv * g + b;
            }
        }
    });
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

/// LayerNorm over one inner axis (the Neural Engine layout's channel axis of
/// `[B, C, 1, S]`): each position of the axes after it is normalised over `C` values
/// `inner` apart. Statistics in f64 over few channels cost nothing and match the
/// trailing-axis kernel's f32 results to rounding.
fn layer_norm_strided(
    x: &Tensor,
    a: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> KResult<Tensor> {
    let c = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let outer: usize = x.shape[..a].iter().product();
    for p in [gamma, beta].into_iter().flatten() {
        if p.numel() != c {
            return Err(format!("gamma/beta {:?} for normalised size {c}", p.shape));
        }
    }
    let mut out = vec![0f32; x.numel()];
    for o in 0..outer {
        let base = o * c * inner;
        for j in 0..inner {
            let at = |i: usize| base + i * inner + j;
            let mean = (0..c).map(|i| f64::from(x.data[at(i)])).sum::<f64>() / c as f64;
            let var = (0..c)
                .map(|i| (f64::from(x.data[at(i)]) - mean).powi(2))
                .sum::<f64>()
                / c as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for i in 0..c {
                let g = gamma.map_or(1.0, |g| g.data[i]);
                let b = beta.map_or(0.0, |b| b.data[i]);
                out[at(i)] = ((f64::from(x.data[at(i)]) - mean) * inv) as f32 * g + b;
            }
        }
    }
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

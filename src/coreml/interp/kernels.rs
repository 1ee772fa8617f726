//! Float32 kernels for the MIL ops we emit. Each checks what it relies on and returns
//! a message on bad operands; the caller adds the op's name.

use super::tensor::{strides, Tensor};
use crate::coreml::mil::types::{broadcast, norm_axis};

pub type KResult<T> = Result<T, String>;

fn axis(a: i64, rank: usize) -> KResult<usize> {
    norm_axis(a, rank).ok_or_else(|| format!("axis {a} out of range for rank {rank}"))
}

/// Elementwise binary op with numpy broadcasting.
pub fn binary(x: &Tensor, y: &Tensor, f: impl Fn(f32, f32) -> f32) -> KResult<Tensor> {
    let out = broadcast(&x.shape, &y.shape)
        .ok_or_else(|| format!("{:?} and {:?} do not broadcast", x.shape, y.shape))?;
    if x.shape == y.shape {
        let data = x.data.iter().zip(&y.data).map(|(a, b)| f(*a, *b)).collect();
        return Ok(Tensor { shape: out, data });
    }
    let r = out.len();
    // Strides of each operand inside the output index space (0 where broadcast).
    let bstrides = |s: &[usize]| -> Vec<usize> {
        let own = strides(s);
        (0..r)
            .map(|i| {
                let k = i as isize - (r - s.len()) as isize;
                if k < 0 || s[k as usize] == 1 {
                    0
                } else {
                    own[k as usize]
                }
            })
            .collect()
    };
    let (sx, sy) = (bstrides(&x.shape), bstrides(&y.shape));
    let n: usize = out.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    let (mut ox, mut oy) = (0usize, 0usize);
    for _ in 0..n {
        data.push(f(x.data[ox], y.data[oy]));
        // Odometer increment, keeping both operand offsets in step.
        for d in (0..r).rev() {
            idx[d] += 1;
            ox += sx[d];
            oy += sy[d];
            if idx[d] < out[d] {
                break;
            }
            ox -= sx[d] * out[d];
            oy -= sy[d] * out[d];
            idx[d] = 0;
        }
    }
    Ok(Tensor { shape: out, data })
}

pub fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|v| f(*v)).collect(),
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

pub fn transpose(x: &Tensor, perm: &[usize]) -> KResult<Tensor> {
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!("{perm:?} is not a permutation of rank {r}"));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides(&x.shape);
    let src: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let n = x.numel();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for _ in 0..n {
        data.push(x.data[off]);
        for d in (0..r).rev() {
            idx[d] += 1;
            off += src[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= src[d] * shape[d];
            idx[d] = 0;
        }
    }
    Ok(Tensor { shape, data })
}

pub fn reshape(x: &Tensor, shape: &[i64]) -> KResult<Tensor> {
    // -1 infers one dimension, 0 copies the input's.
    let mut out: Vec<usize> = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(*x.shape.get(i).ok_or("0 in shape beyond the input's rank")?),
            s if s > 0 => out.push(s as usize),
            _ => return Err(format!("bad shape {shape:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || x.numel() % known != 0 {
            return Err(format!("{:?} cannot be reshaped to {shape:?}", x.shape));
        }
        out[i] = x.numel() / known;
    }
    if out.iter().product::<usize>() != x.numel() {
        return Err(format!("{:?} cannot be reshaped to {shape:?}", x.shape));
    }
    Ok(Tensor {
        shape: out,
        data: x.data.clone(),
    })
}

pub fn concat(values: &[&Tensor], ax: i64) -> KResult<Tensor> {
    let first = values.first().ok_or("no values")?;
    let a = axis(ax, first.rank())?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for v in values {
        if v.rank() != first.rank() || (0..v.rank()).any(|i| i != a && v.shape[i] != first.shape[i])
        {
            return Err(format!("{:?} does not match {:?}", v.shape, first.shape));
        }
        shape[a] += v.shape[a];
    }
    let outer: usize = first.shape[..a].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for v in values {
            let chunk: usize = v.shape[a..].iter().product();
            data.extend_from_slice(&v.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Ok(Tensor { shape, data })
}

pub fn split(x: &Tensor, sizes: &[usize], ax: i64) -> KResult<Vec<Tensor>> {
    let a = axis(ax, x.rank())?;
    if sizes.iter().sum::<usize>() != x.shape[a] {
        return Err(format!("sizes {sizes:?} do not add up to {}", x.shape[a]));
    }
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let row = x.shape[a] * inner;
    let mut outs = Vec::new();
    let mut start = 0;
    for &s in sizes {
        let mut shape = x.shape.clone();
        shape[a] = s;
        let mut data = Vec::with_capacity(outer * s * inner);
        for o in 0..outer {
            data.extend_from_slice(&x.data[o * row + start * inner..o * row + (start + s) * inner]);
        }
        outs.push(Tensor { shape, data });
        start += s;
    }
    Ok(outs)
}

/// `slice_by_index` with MIL's semantics: negative bounds count from the end, masked
/// bounds take the full range, squeezed axes (size 1) are removed.
#[allow(clippy::too_many_arguments)]
pub fn slice_by_index(
    x: &Tensor,
    begin: &[i64],
    end: &[i64],
    stride: &[i64],
    begin_mask: &[bool],
    end_mask: &[bool],
    squeeze: &[bool],
) -> KResult<Tensor> {
    let r = x.rank();
    if [
        begin.len(),
        end.len(),
        stride.len(),
        begin_mask.len(),
        end_mask.len(),
        squeeze.len(),
    ]
    .iter()
    .any(|&l| l != r)
    {
        return Err(format!("slice parameters do not match rank {r}"));
    }
    let mut ranges = Vec::with_capacity(r);
    for i in 0..r {
        let n = x.shape[i] as i64;
        if stride[i] <= 0 {
            return Err("only positive strides are supported".into());
        }
        let fix = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let b = if begin_mask[i] { 0 } else { fix(begin[i]) };
        let e = if end_mask[i] { n } else { fix(end[i]) };
        let idx: Vec<usize> = (b..e.max(b))
            .step_by(stride[i] as usize)
            .map(|v| v as usize)
            .collect();
        if squeeze[i] && idx.len() != 1 {
            return Err(format!("squeezed axis {i} has {} elements", idx.len()));
        }
        ranges.push(idx);
    }
    let xs = strides(&x.shape);
    let full: Vec<usize> = ranges.iter().map(|v| v.len()).collect();
    let n: usize = full.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let off: usize = (0..r).map(|d| ranges[d][idx[d]] * xs[d]).sum();
        data.push(x.data[off]);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < full[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let shape = (0..r).filter(|&i| !squeeze[i]).map(|i| full[i]).collect();
    Ok(Tensor { shape, data })
}

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
    let a = axis(ax, x.rank())?;
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let outer: usize = x.shape[..a].iter().product();
    let mut out = x.data.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let m = (0..n).map(|k| out[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0f32;
            for k in 0..n {
                let e = (out[at(k)] - m).exp();
                out[at(k)] = e;
                s += e;
            }
            for k in 0..n {
                out[at(k)] /= s;
            }
        }
    }
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
    let r = x.rank();
    let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<KResult<_>>()?;
    ax.sort_unstable();
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
    for (row, o) in x.data.chunks(d).zip(out.chunks_mut(d)) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            let g = gamma.map_or(1.0, |g| g.data[i]);
            let b = beta.map_or(0.0, |b| b.data[i]);
            o[i] = (row[i] - mean) * inv * g + b;
        }
    }
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> KResult<Tensor> {
    if w.rank() != 2 || x.rank() == 0 || x.shape[x.rank() - 1] != w.shape[1] {
        return Err(format!("x {:?} with weight {:?}", x.shape, w.shape));
    }
    let (out, inp) = (w.shape[0], w.shape[1]);
    if let Some(b) = b {
        if b.shape != [out] {
            return Err(format!("bias {:?} for {out} outputs", b.shape));
        }
    }
    let rows = x.numel() / inp;
    let mut data = vec![0f32; rows * out];
    for r in 0..rows {
        let xr = &x.data[r * inp..(r + 1) * inp];
        for o in 0..out {
            let wr = &w.data[o * inp..(o + 1) * inp];
            let acc: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            data[r * out + o] = acc + b.map_or(0.0, |b| b.data[o]);
        }
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank checked") = out;
    Ok(Tensor { shape, data })
}

pub fn matmul(x: &Tensor, y: &Tensor, tx: bool, ty: bool) -> KResult<Tensor> {
    if x.rank() < 2 || y.rank() < 2 {
        return Err("matmul operands need rank 2 or more".into());
    }
    let x = if tx { swap_last(x)? } else { x.clone() };
    let y = if ty { swap_last(y)? } else { y.clone() };
    let (xr, yr) = (x.rank(), y.rank());
    let (m, k) = (x.shape[xr - 2], x.shape[xr - 1]);
    let (k2, n) = (y.shape[yr - 2], y.shape[yr - 1]);
    if k != k2 {
        return Err(format!("{:?} @ {:?}", x.shape, y.shape));
    }
    let batch = broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2]).ok_or_else(|| {
        format!(
            "batch axes of {:?} and {:?} do not broadcast",
            x.shape, y.shape
        )
    })?;
    let nb: usize = batch.iter().product();
    // Offsets of each batch item in x and y under broadcasting.
    let offsets = |s: &[usize], mat: usize| -> Vec<usize> {
        let idx_t = Tensor {
            shape: s.to_vec(),
            data: (0..s.iter().product::<usize>()).map(|i| i as f32).collect(),
        };
        let target = Tensor::zeros(batch.clone());
        binary(&target, &idx_t, |_, b| b)
            .map(|t| t.data.iter().map(|&v| v as usize * mat).collect())
            .unwrap_or_default()
    };
    let xo = offsets(&x.shape[..xr - 2], m * k);
    let yo = offsets(&y.shape[..yr - 2], k * n);
    let mut data = vec![0f32; nb * m * n];
    for bi in 0..nb {
        let xm = &x.data[xo[bi]..xo[bi] + m * k];
        let ym = &y.data[yo[bi]..yo[bi] + k * n];
        let om = &mut data[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            for kk in 0..k {
                let a = xm[i * k + kk];
                let yrow = &ym[kk * n..(kk + 1) * n];
                for (o, b) in om[i * n..(i + 1) * n].iter_mut().zip(yrow) {
                    *o += a * b;
                }
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Tensor { shape, data })
}

fn swap_last(x: &Tensor) -> KResult<Tensor> {
    let r = x.rank();
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    transpose(x, &perm)
}

/// 2-D convolution, NCHW, with explicit padding `[top, bottom, left, right]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> KResult<Tensor> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err("conv needs rank-4 input and weight".into());
    }
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, ci, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    if groups == 0
        || ci * groups != c
        || o % groups != 0
        || strides.contains(&0)
        || dil.contains(&0)
    {
        return Err(format!(
            "input {:?}, weight {:?}, groups {groups}",
            x.shape, w.shape
        ));
    }
    let eh = h + pad[0] + pad[1];
    let ew = wd + pad[2] + pad[3];
    let (kh_e, kw_e) = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1);
    if eh < kh_e || ew < kw_e {
        return Err("kernel larger than the padded input".into());
    }
    let oh = (eh - kh_e) / strides[0] + 1;
    let ow = (ew - kw_e) / strides[1] + 1;
    let opg = o / groups;
    let mut data = vec![0f32; n * o * oh * ow];
    for bn in 0..n {
        for oc in 0..o {
            let g = oc / opg;
            let bias = b.map_or(0.0, |b| b.data[oc]);
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = 0f32;
                    for icg in 0..ci {
                        let ic = g * ci + icg;
                        for ky in 0..kh {
                            let iy = (y * strides[0] + ky * dil[0]) as isize - pad[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (xo * strides[1] + kx * dil[1]) as isize - pad[2] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += x.data[((bn * c + ic) * h + iy as usize) * wd + ix as usize]
                                    * w.data[((oc * ci + icg) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    data[((bn * o + oc) * oh + y) * ow + xo] = acc + bias;
                }
            }
        }
    }
    Ok(Tensor {
        shape: vec![n, o, oh, ow],
        data,
    })
}

/// `softmax(q @ k^T / sqrt(E) + mask) @ v` over the last two axes.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> KResult<Tensor> {
    let e = *q.shape.last().ok_or("rank-0 query")?;
    let scores = matmul(q, k, false, true)?;
    let scaled = map(&scores, |s| s / (e as f32).sqrt());
    let masked = match mask {
        Some(m) => binary(&scaled, m, |a, b| a + b)?,
        None => scaled,
    };
    let p = softmax(&masked, -1)?;
    matmul(&p, v, false, false)
}

//! Kernels that move elements without arithmetic: transpose, reshape, concat, split,
//! slicing.

use super::{axis, par_items, profile, step, KResult};
use crate::coreml::interp::tensor::{strides, Tensor};

pub fn transpose(x: &Tensor, perm: &[usize]) -> KResult<Tensor> {
    let _p = profile::span("transpose");
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
    // Output axes with their source strides, size-1 axes dropped and axes that stay
    // adjacent in the source merged, so the last one is as long as it can be.
    let mut dims: Vec<(usize, usize)> = Vec::with_capacity(r);
    for &p in perm {
        let (n, st) = (x.shape[p], xs[p]);
        if n == 1 {
            continue;
        }
        match dims.last_mut() {
            Some((pn, ps)) if *ps == st * n => {
                *pn *= n;
                *ps = st;
            }
            _ => dims.push((n, st)),
        }
    }
    let n = x.numel();
    let mut data = vec![0f32; n];
    let (inner, istride) = dims.pop().unwrap_or((1, 1));
    if n == 0 {
        return Ok(Tensor { shape, data });
    }
    let outer: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let ost: Vec<usize> = dims.iter().map(|d| d.1).collect();
    // A copy: memory-bound, threads only for large tensors.
    par_items(&mut data, inner, inner.div_ceil(4), |first, part| {
        let mut idx = vec![0usize; outer.len()];
        let mut rem = first;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut off = [(0..outer.len()).map(|d| idx[d] * ost[d]).sum::<usize>()];
        for row in part.chunks_mut(inner) {
            if istride == 1 {
                row.copy_from_slice(&x.data[off[0]..off[0] + inner]);
            } else {
                for (i, o) in row.iter_mut().enumerate() {
                    *o = x.data[off[0] + i * istride];
                }
            }
            step(&mut idx, &outer, [&ost], &mut off);
        }
    });
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

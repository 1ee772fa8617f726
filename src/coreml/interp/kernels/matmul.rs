//! Matrix products: `linear`, batched `matmul` and scaled dot-product attention.

use super::gemm::{gemm, gemm_on, Mat};
use super::{binary, broadcast_strides, map, par_items, profile, softmax, step, threads, KResult};
use crate::coreml::interp::tensor::Tensor;
use crate::coreml::mil::types::broadcast;

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> KResult<Tensor> {
    let _p = profile::span("linear");
    if w.rank() != 2 || x.rank() == 0 || x.shape[x.rank() - 1] != w.shape[1] {
        return Err(format!("x {:?} with weight {:?}", x.shape, w.shape));
    }
    let (out, inp) = (w.shape[0], w.shape[1]);
    if let Some(b) = b {
        if b.shape != [out] {
            return Err(format!("bias {:?} for {out} outputs", b.shape));
        }
    }
    let rows = x.numel().checked_div(inp).unwrap_or(0);
    let mut data = vec![0f32; rows * out];
    // x [rows, inp] @ w^T [inp, out]: w read through its strides, no copy.
    gemm(
        rows,
        inp,
        out,
        Mat::rows(&x.data, 0, inp),
        Mat::cols(&w.data, 0, inp),
        &mut data,
        out,
    );
    if let (Some(b), true) = (b, out > 0) {
        for row in data.chunks_mut(out) {
            for (o, b) in row.iter_mut().zip(&b.data) {
                *o += b;
            }
        }
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank checked") = out;
    Ok(Tensor { shape, data })
}

/// Offset of each item of the broadcast batch `batch` in an operand whose batch axes
/// are `s`, its items `mat` elements apart.
fn batch_offsets(batch: &[usize], s: &[usize], mat: usize) -> Vec<usize> {
    let st = broadcast_strides(s, batch.len());
    let n: usize = batch.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; batch.len()];
    let mut off = [0usize];
    for _ in 0..n {
        out.push(off[0] * mat);
        step(&mut idx, batch, [&st], &mut off);
    }
    out
}

pub fn matmul(x: &Tensor, y: &Tensor, tx: bool, ty: bool) -> KResult<Tensor> {
    let _p = profile::span("matmul");
    if x.rank() < 2 || y.rank() < 2 {
        return Err("matmul operands need rank 2 or more".into());
    }
    let (xr, yr) = (x.rank(), y.rank());
    let (xa, xb) = (x.shape[xr - 2], x.shape[xr - 1]);
    let (ya, yb) = (y.shape[yr - 2], y.shape[yr - 1]);
    // Transposes are strides: element (i, j) of a transposed operand is stored at (j, i).
    let ((m, k), xm) = if tx {
        ((xb, xa), Mat::cols(&x.data, 0, xb))
    } else {
        ((xa, xb), Mat::rows(&x.data, 0, xb))
    };
    let ((k2, n), ym) = if ty {
        ((yb, ya), Mat::cols(&y.data, 0, yb))
    } else {
        ((ya, yb), Mat::rows(&y.data, 0, yb))
    };
    let logical = |s: &[usize], t: bool| {
        let mut s = s.to_vec();
        if t {
            let r = s.len();
            s.swap(r - 2, r - 1);
        }
        s
    };
    if k != k2 {
        return Err(format!(
            "{:?} @ {:?}",
            logical(&x.shape, tx),
            logical(&y.shape, ty)
        ));
    }
    let batch = broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2]).ok_or_else(|| {
        format!(
            "batch axes of {:?} and {:?} do not broadcast",
            x.shape, y.shape
        )
    })?;
    let nb: usize = batch.iter().product();
    let xo = batch_offsets(&batch, &x.shape[..xr - 2], m * k);
    let yo = batch_offsets(&batch, &y.shape[..yr - 2], k * n);
    let mut data = vec![0f32; nb * m * n];
    if m * n > 0 {
        if nb >= threads() {
            // Attention's per-head products: whole heads per core.
            par_items(&mut data, m * n, m * n * k, |first, part| {
                for (i, om) in part.chunks_mut(m * n).enumerate() {
                    let a = Mat {
                        off: xo[first + i],
                        ..xm
                    };
                    let b = Mat {
                        off: yo[first + i],
                        ..ym
                    };
                    gemm_on(1, m, k, n, a, b, om, n);
                }
            });
        } else {
            for (bi, om) in data.chunks_mut(m * n).enumerate() {
                let a = Mat { off: xo[bi], ..xm };
                let b = Mat { off: yo[bi], ..ym };
                gemm(m, k, n, a, b, om, n);
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Tensor { shape, data })
}

/// `softmax(q @ k^T / sqrt(E) + mask) @ v` over the last two axes.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> KResult<Tensor> {
    let _p = profile::span("sdpa");
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

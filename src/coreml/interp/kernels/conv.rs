//! 2-D convolution as im2col and one GEMM per example and group.

use super::gemm::{gemm, Mat};
use super::{par_items, profile, KResult};
use crate::coreml::interp::tensor::Tensor;

/// 2-D convolution, NCHW, with explicit padding `[top, bottom, left, right]`: per
/// example and group, the input patches laid out as columns (im2col), then one GEMM.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> KResult<Tensor> {
    let _p = profile::span("conv");
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
        || kh == 0
        || kw == 0
    {
        return Err(format!(
            "input {:?}, weight {:?}, groups {groups}",
            x.shape, w.shape
        ));
    }
    if let Some(b) = b {
        if b.numel() != o {
            return Err(format!("bias {:?} for {o} output channels", b.shape));
        }
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
    let (kk, np) = (ci * kh * kw, oh * ow);
    // A 1x1 kernel with stride 1 and no padding reads the input as it is.
    let direct = kh == 1 && kw == 1 && strides == [1, 1] && pad == [0; 4];
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0f32; kk * np]
    };
    let mut data = vec![0f32; n * o * np];
    for bn in 0..n {
        for g in 0..groups {
            let plane0 = (bn * c + g * ci) * h * wd;
            let src = if direct {
                Mat::rows(&x.data, plane0, np)
            } else {
                im2col(
                    &x.data[plane0..plane0 + ci * h * wd],
                    [h, wd, kh, kw, oh, ow],
                    strides,
                    pad,
                    dil,
                    &mut cols,
                );
                Mat::rows(&cols, 0, np)
            };
            let out0 = (bn * o + g * opg) * np;
            gemm(
                opg,
                kk,
                np,
                Mat::rows(&w.data, g * opg * kk, kk),
                src,
                &mut data[out0..out0 + opg * np],
                np,
            );
        }
    }
    if let Some(b) = b {
        for (i, plane) in data.chunks_mut(np.max(1)).enumerate() {
            let v = b.data[i % o];
            for p in plane {
                *p += v;
            }
        }
    }
    Ok(Tensor {
        shape: vec![n, o, oh, ow],
        data,
    })
}

/// Patches of `x` (`[C, h, w]`) as columns: `cols[(c, ky, kx), (y, x)]` is the input
/// under kernel tap `(ky, kx)` of output position `(y, x)`, 0 in the padding.
fn im2col(
    x: &[f32],
    [h, wd, kh, kw, oh, ow]: [usize; 6],
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    cols: &mut [f32],
) {
    let np = oh * ow;
    par_items(cols, np, np, |first, part| {
        for (r, row) in part.chunks_mut(np).enumerate() {
            let r = first + r;
            let (ic, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let plane = &x[ic * h * wd..(ic + 1) * h * wd];
            for (y, orow) in row.chunks_mut(ow).enumerate() {
                let iy = (y * strides[0] + ky * dil[0]).wrapping_sub(pad[0]);
                if iy >= h {
                    orow.fill(0.0);
                    continue;
                }
                let line = &plane[iy * wd..(iy + 1) * wd];
                for (xo, v) in orow.iter_mut().enumerate() {
                    let ix = (xo * strides[1] + kx * dil[1]).wrapping_sub(pad[2]);
                    *v = if ix < wd { line[ix] } else { 0.0 };
                }
            }
        }
    });
}

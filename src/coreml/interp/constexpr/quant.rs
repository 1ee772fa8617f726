//! Linearly quantized weights: `scale * (q - offset)`, per block (iOS18) or per index
//! along one axis (iOS16).

use super::arr::{block_sizes, for_each_index, norm_axis, strides, Arr, Data, R};

/// iOS18 `constexpr_blockwise_shift_scale`: `scale * (data - offset)` per block, the
/// block size on axis `d` being `data.shape[d] / scale.shape[d]`.
pub(super) fn blockwise_shift_scale(data: &Arr, scale: &Arr, offset: Option<&Arr>) -> R<Arr> {
    let dst = scale.elem;
    if !dst.is_float() {
        return Err(format!("scale must be fp16 or fp32, got {dst}"));
    }
    let r = data.shape.len();
    if scale.shape.len() != r {
        return Err(format!(
            "scale {:?} and data {:?} differ in rank",
            scale.shape, data.shape
        ));
    }
    if let Some(o) = offset {
        if o.shape != scale.shape {
            return Err(format!(
                "offset {:?} is not shaped like scale {:?}",
                o.shape, scale.shape
            ));
        }
    }
    let blocks = block_sizes(&data.shape, &scale.shape, r, ["scale", "data"])?;
    let sstride = strides(&scale.shape);
    let (q, s) = (data.f32s(), scale.f32s());
    let off = offset.map(Arr::f32s);
    // Integer data and offsets subtract exactly; a float offset is rounded first.
    let round_diff = offset.is_some_and(|o| o.elem.is_float()) || data.elem.is_float();
    let mut out = vec![0f32; q.len()];
    for_each_index(&data.shape, |flat, i| {
        let kk: usize = (0..r).map(|d| i[d] / blocks[d] * sstride[d]).sum();
        let mut v = q[flat];
        if let Some(off) = &off {
            v -= off[kk];
            if round_diff {
                v = dst.round(v);
            }
        }
        out[flat] = dst.round(s[kk] * v);
    });
    Ok(Arr {
        elem: dst,
        shape: data.shape.clone(),
        data: Data::F(out),
    })
}

/// iOS16 `constexpr_affine_dequantize`: `scale * (q - zero_point)`, parameters scalar
/// or per index along `axis`.
pub(super) fn affine_dequantize(q: &Arr, zp: &Arr, scale: &Arr, axis: i64) -> R<Arr> {
    if !scale.elem.is_float() {
        return Err(format!("scale must be fp16 or fp32, got {}", scale.elem));
    }
    let ax = norm_axis(axis, q.shape.len())?;
    let len = q.shape[ax];
    let inner: usize = q.shape[ax + 1..].iter().product();
    let at = |p: &Arr, what: &str| -> R<Vec<f32>> {
        match p.numel() {
            1 => Ok(p.f32s()),
            n if n == len => Ok(p.f32s()),
            n => Err(format!("{what} has {n} values for axis length {len}")),
        }
    };
    let (z, s) = (at(zp, "zero_point")?, at(scale, "scale")?);
    let pick = |v: &[f32], i: usize| {
        if v.len() == 1 {
            v[0]
        } else {
            v[(i / inner) % len]
        }
    };
    let out = q
        .f32s()
        .iter()
        .enumerate()
        .map(|(i, &x)| scale.elem.round((x - pick(&z, i)) * pick(&s, i)))
        .collect();
    Ok(Arr {
        elem: scale.elem,
        shape: q.shape.clone(),
        data: Data::F(out),
    })
}

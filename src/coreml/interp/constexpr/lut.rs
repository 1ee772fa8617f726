//! Palettized weights: indices into per-block lookup tables (scalar or vector entries).

use super::arr::{block_sizes, for_each_index, norm_axis, strides, Arr, Data, R};
use super::elem::Elem;

/// iOS18 `constexpr_lut_to_dense`: `indices` uintN, `lut` `[blocks..., 2^N, vector]`.
pub(super) fn lut_to_dense(indices: &Arr, lut: &Arr, vector_axis: Option<i64>) -> R<Arr> {
    let Elem::Int {
        bits,
        signed: false,
    } = indices.elem
    else {
        return Err(format!("indices must be unsigned, got {}", indices.elem));
    };
    let k = indices.shape.len();
    if lut.shape.len() != k + 2 {
        return Err(format!(
            "lut {:?} must have rank {} for indices {:?}",
            lut.shape,
            k + 2,
            indices.shape
        ));
    }
    let (palettes, vs) = (lut.shape[k], lut.shape[k + 1]);
    if palettes != 1usize << bits {
        return Err(format!("{palettes} lut entries for {bits}-bit indices"));
    }
    let blocks = block_sizes(&indices.shape, &lut.shape, k, ["lut", "indices"])?;
    let va = if vs > 1 {
        norm_axis(vector_axis.ok_or("vector palettes need `vector_axis`")?, k)?
    } else {
        0
    };
    let mut out_shape = indices.shape.clone();
    if vs > 1 {
        out_shape[va] *= vs;
    }
    let lstride = strides(&lut.shape[..k]);
    let ostride = strides(&out_shape);
    let idx = indices.ints()?;
    let n_out: usize = out_shape.iter().product();
    // Each index picks `vs` values from its block's palette; they go `vs` apart along
    // the vector axis.
    /// Calls its argument with (output position, palette position) for every output.
    type Visit<'a> = &'a dyn Fn(&mut dyn FnMut(usize, usize));
    fn gather<T: Copy + Default>(src: &[T], n_out: usize, each: Visit<'_>) -> Vec<T> {
        let mut out = vec![T::default(); n_out];
        each(&mut |o, l| out[o] = src[l]);
        out
    }
    let each = |put: &mut dyn FnMut(usize, usize)| {
        for_each_index(&indices.shape, |flat, i| {
            let block: usize = (0..k).map(|d| i[d] / blocks[d] * lstride[d]).sum();
            let base = (block * palettes + idx[flat] as usize) * vs;
            let o: usize = (0..k)
                .map(|d| if d == va { i[d] * vs } else { i[d] } * ostride[d])
                .sum();
            for v in 0..vs {
                put(o + v * ostride[va], base + v);
            }
        })
    };
    let data = match &lut.data {
        Data::F(v) => Data::F(gather(v, n_out, &each)),
        Data::I(v) => Data::I(gather(v, n_out, &each)),
    };
    Ok(Arr {
        elem: lut.elem,
        shape: out_shape,
        data,
    })
}

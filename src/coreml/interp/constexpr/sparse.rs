//! Sparse weights: values placed by a bit mask, and picked back out by one.

use super::arr::{Arr, Data, R};

/// `nonzero` placed where `mask` is set, zeros elsewhere.
pub(super) fn scatter(nonzero: &Arr, mask: &[i64], shape: Vec<usize>) -> R<Arr> {
    let ones = mask.iter().filter(|&&m| m != 0).count();
    if ones != nonzero.numel() {
        return Err(format!(
            "mask has {ones} set bits for {} nonzero values",
            nonzero.numel()
        ));
    }
    fn fill<T: Copy + Default>(src: &[T], mask: &[i64]) -> Vec<T> {
        let mut it = src.iter();
        mask.iter()
            .map(|&m| {
                if m != 0 {
                    *it.next().expect("counted")
                } else {
                    T::default()
                }
            })
            .collect()
    }
    let data = match &nonzero.data {
        Data::F(v) => Data::F(fill(v, mask)),
        Data::I(v) => Data::I(fill(v, mask)),
    };
    Ok(Arr {
        elem: nonzero.elem,
        shape,
        data,
    })
}

/// The values of `dense` where `mask` is set, as a 1-D tensor.
pub(super) fn masked(dense: &Arr, mask: &[i64]) -> Arr {
    fn pick<T: Copy>(src: &[T], mask: &[i64]) -> Vec<T> {
        src.iter()
            .zip(mask)
            .filter(|(_, &m)| m != 0)
            .map(|(v, _)| *v)
            .collect()
    }
    let data = match &dense.data {
        Data::F(v) => Data::F(pick(v, mask)),
        Data::I(v) => Data::I(pick(v, mask)),
    };
    let n = mask.iter().filter(|&&m| m != 0).count();
    Arr {
        elem: dense.elem,
        shape: vec![n],
        data,
    }
}

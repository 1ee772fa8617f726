//! The decoder's values: tensors of any element type, with the index helpers the
//! decompressions share.

use super::elem::Elem;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

/// A decoded value of any element type.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Arr {
    pub(super) elem: Elem,
    pub(super) shape: Vec<usize>,
    pub(super) data: Data,
}

pub(super) type R<T> = Result<T, String>;

impl Arr {
    pub(super) fn numel(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    pub(super) fn ints(&self) -> R<&[i64]> {
        match &self.data {
            Data::I(v) => Ok(v),
            Data::F(_) => Err(format!("expected an integer tensor, got {}", self.elem)),
        }
    }

    pub(super) fn int(&self) -> R<i64> {
        match self.ints()? {
            [v] => Ok(*v),
            _ => Err(format!("expected a scalar, got shape {:?}", self.shape)),
        }
    }

    pub(super) fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub(super) fn usizes(&self) -> R<Vec<usize>> {
        self.ints()?
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| format!("negative size {v}")))
            .collect()
    }

    /// The values' bytes, for uint8/int8 tensors that hold packed bits (iOS16).
    pub(super) fn packed_bytes(&self) -> R<Vec<u8>> {
        match self.elem {
            Elem::Int { bits: 8, .. } => Ok(self.ints()?.iter().map(|&v| v as u8).collect()),
            e => Err(format!("packed bits must be uint8, got {e}")),
        }
    }
}

pub(super) use crate::coreml::mil::types::strides;

/// The block size on each of the first `k` axes of `whole` when `parts[d]` blocks split
/// axis `d`: every count must divide its axis; `what` and `of` name the two tensors (parts'
/// and whole's) in the error.
pub(super) fn block_sizes(
    whole: &[usize],
    parts: &[usize],
    k: usize,
    names: [&str; 2],
) -> R<Vec<usize>> {
    let [what, of] = names;
    let mut blocks = Vec::with_capacity(k);
    for d in 0..k {
        if parts[d] == 0 || whole[d] % parts[d] != 0 {
            return Err(format!("{what} {parts:?} does not divide {of} {whole:?}"));
        }
        blocks.push(whole[d] / parts[d]);
    }
    Ok(blocks)
}

/// [`crate::coreml::mil::types::norm_axis`] with this module's error.
pub(super) fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    crate::coreml::mil::types::norm_axis(axis, rank)
        .ok_or_else(|| format!("axis {axis} out of range for rank {rank}"))
}

/// Calls `f(flat index in `shape`, multi-index)` for every element, in order.
pub(super) fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

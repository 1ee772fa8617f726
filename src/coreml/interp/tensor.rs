//! Plain float32 tensors: what the interpreter computes with and what callers pass in
//! and get back.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor, or `None` when the data does not fill the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Item `i` along the first axis, keeping a leading axis of 1 (`[N, ...]` ->
    /// `[1, ...]`): splits a batch into single-example inputs.
    pub fn batch_item(&self, i: usize) -> Option<Tensor> {
        let n = *self.shape.first()?;
        if i >= n {
            return None;
        }
        let per = self.numel() / n;
        let mut shape = self.shape.clone();
        shape[0] = 1;
        Some(Tensor {
            shape,
            data: self.data[i * per..(i + 1) * per].to_vec(),
        })
    }

    /// Items `start..end` along axis 0.
    pub fn batch_range(&self, start: usize, end: usize) -> Option<Tensor> {
        let n = *self.shape.first()?;
        if start >= end || end > n {
            return None;
        }
        let per = self.numel() / n;
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Some(Tensor {
            shape,
            data: self.data[start * per..end * per].to_vec(),
        })
    }
}

pub use crate::coreml::mil::types::strides;

/// Values converted a block at a time: half's slice conversions use F16C / NEON where
/// the CPU has them (chosen once per block), where a value at a time pays for the
/// detection and a one-lane conversion on each.
const F16_BLOCK: usize = 1024;

/// Rounds each value to the nearest fp16 (ties to even) and back, as fp16 storage
/// would: the same results as `f16::from_f32(v).to_f32()` value by value.
pub fn round_to_f16(data: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [half::f16::ZERO; F16_BLOCK];
    for chunk in data.chunks_mut(F16_BLOCK) {
        let b = &mut buf[..chunk.len()];
        b.convert_from_f32_slice(chunk);
        b.convert_to_f32_slice(chunk);
    }
}

/// Little-endian fp16 bytes (an odd last byte is ignored) as f32 values.
pub fn f16_le_to_f32(bytes: &[u8]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let n = bytes.len() / 2;
    let mut out = vec![0f32; n];
    let mut buf = [half::f16::ZERO; F16_BLOCK];
    for (src, dst) in bytes[..2 * n]
        .chunks(2 * F16_BLOCK)
        .zip(out.chunks_mut(F16_BLOCK))
    {
        let b = &mut buf[..dst.len()];
        for (h, c) in b.iter_mut().zip(src.chunks_exact(2)) {
            *h = half::f16::from_le_bytes([c[0], c[1]]);
        }
        b.convert_to_f32_slice(dst);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn block_conversions_match_value_by_value() {
        let mut vals: Vec<f32> = (0..5000)
            .map(|i| ((i as f32) * 0.7311).sin() * 10f32.powi(i % 11 - 5))
            .collect();
        vals.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e-8,
            -1e9,
            f32::INFINITY,
            1.0 + 1.0 / 2048.0,
        ]);
        let want: Vec<f32> = vals.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        let mut got = vals.clone();
        round_to_f16(&mut got);
        assert_eq!(got, want);

        let mut bytes: Vec<u8> = want
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(f16_le_to_f32(&bytes), want);
        bytes.push(7);
        assert_eq!(f16_le_to_f32(&bytes), want);
    }
}

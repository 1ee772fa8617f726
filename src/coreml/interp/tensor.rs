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
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

//! The training loss.

use mlx_rs::{error::Exception, Array};

/// Mean softmax cross-entropy of `[B, K]` logits against integer labels, in float32
/// whatever the logits' dtype (the log-sum-exp is the numerically sensitive part).
pub fn cross_entropy(logits: &Array, labels: &Array) -> Result<Array, Exception> {
    let logits = logits.as_dtype(mlx_rs::Dtype::Float32)?;
    let lse = logits.logsumexp_axis(-1, None)?;
    let idx = labels.reshape(&[-1, 1])?;
    let picked = logits.take_along_axis(&idx, -1)?.squeeze_axes(&[-1])?;
    lse.subtract(&picked)?.mean(None)
}

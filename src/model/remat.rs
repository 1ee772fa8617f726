//! Gradient checkpointing (rematerialisation) through MLX's `checkpoint` transform, which
//! mlx-rs does not wrap. A block runs as a checkpointed closure: its activations are
//! dropped after the forward pass and recomputed in the backward pass.
//!
//! MLX differentiates a checkpointed function only with respect to its inputs; arrays the
//! closure captures are constants to it. So every trainable parameter of the block is
//! passed in as an input (and the frozen ones captured), otherwise their gradients would
//! silently be zero.

use mlx_rs::{error::Exception, Array};

use super::ffi::Closure;

/// Applies `f` to `inputs` as a checkpointed MLX function. `f` must read every array it
/// needs gradients for from `inputs`; it may be called again during the backward pass.
pub fn checkpointed(
    f: impl FnMut(&[Array]) -> Result<Vec<Array>, Exception> + 'static,
    inputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    Closure::new(f).checkpointed()?.apply(inputs)
}

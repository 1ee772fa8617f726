//! Weight compression for export (`pipeline export --compress METHOD`): symmetric
//! linear quantization (per-channel int8, per-block int4) and k-means palettes (8, 6, 4
//! or 2 bits, per tensor or per group of output channels).
//!
//! What is compressed: the weights of the linear layers and of the patch-embedding conv
//! with more than [`CompressOptions::min_elements`] elements (coremltools' rule,
//! default 2048); biases, norms, tokens and position embeddings stay as they are.
//! Compression runs on the float32 checkpoint values, tensor by tensor on worker
//! threads ([`Pipeline`]), while the program builder takes the results in its own
//! (fixed) order, so the weight file is still written as one stream and is the same
//! whatever the number of threads.
//!
//! How a [`CompressedTensor`] is written (the `constexpr_*` ops) is the MIL builder's
//! part (`mil::constexpr`); [`CompressedTensor::decode`] is the dense tensor those ops
//! stand for, bit for bit.

pub mod linear;
pub mod pack;
pub mod palette;

mod options;
mod pipeline;
mod select;
mod tensor;

pub use options::{CompressOptions, Method, DEFAULT_BLOCK_SIZE, DEFAULT_MIN_ELEMENTS};
pub use pipeline::{CompressStats, Pipeline};
pub use select::{select, Candidate, Selection};
pub use tensor::{compress, CompressedTensor, Encoding};

/// Why a weight, or a whole export's settings, cannot be compressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compression settings: {0}")]
    Settings(String),
    #[error("cannot compress `{name}`: element {index} is {value} (weights must be finite)")]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("nothing to compress: no linear or patch-embedding weight qualifies (more than {threshold} elements, --compress-min-elements{extra}); the largest are {largest}")]
    Nothing {
        threshold: usize,
        extra: String,
        largest: String,
    },
    #[error("cannot compress `{name}`: {msg}")]
    Shape { name: String, msg: String },
}

/// Deterministic weights in [-1, 1) for the submodules' tests.
#[cfg(test)]
fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

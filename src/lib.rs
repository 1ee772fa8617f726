//! mlx-coreml-pipeline: Vision Transformers from pretrained weights to benchmarked Core ML
//! models. One module per stage; [`checkpoint::Checkpoint`] is what passes between them.

pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod coreml;
pub mod fsutil;
#[cfg(feature = "mlx")]
pub mod model;
pub mod posembed;
pub mod rng;

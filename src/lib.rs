//! mlx-coreml-pipeline: Vision Transformers from pretrained weights to benchmarked Core ML
//! models. One module per stage; [`checkpoint::Checkpoint`] is what passes between them.

pub mod checkpoint;
pub mod config;
pub mod fsutil;
pub mod coreml;

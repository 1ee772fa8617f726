//! mlx-coreml-pipeline: Vision Transformers from pretrained weights to benchmarked Core ML
//! models. One module per stage; [`checkpoint::Checkpoint`] is what passes between them.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod convert;
pub mod coreml;
pub mod coreml_runtime;
pub mod data;
#[cfg(feature = "mlx")]
pub mod distributed;
#[cfg(feature = "mlx")]
pub mod embed;
pub mod fsutil;
pub mod imaging;
pub mod inspect;
pub mod launch;
#[cfg(feature = "mlx")]
pub mod merge;
#[cfg(feature = "mlx")]
pub mod model;
pub mod plot;
pub mod posembed;
pub mod predict;
pub mod progress;
pub mod rng;
#[cfg(feature = "mlx")]
pub mod run;
#[cfg(feature = "mlx")]
pub mod train;
pub mod verify;

//! PEFT's LoRA layout, both ways: our adapters written for PyTorch users (`export`, with a
//! README per folder) and adapters trained in PyTorch read for `merge` (`import`). Module
//! names come from `convert::torch_names`.

pub mod export;
pub mod import;
mod readme;

//! The Core ML side: our protobuf schema, a MIL program builder, the weight blob writer,
//! the `.mlpackage` writer, the ViT emitter and an interpreter of the MIL we emit.
//! Depends on the checkpoint and its config only, never on MLX.

pub mod ane_report;
pub mod blob;
pub mod compress;
pub mod export;
mod metadata;
pub mod mil;
pub mod package;
pub mod proto;
pub mod target;
pub mod vit;

pub use export::{export, ExportError, ExportMetadata, ExportOptions, ExportReport};
pub use target::{Precision, Target};
pub use vit::{InputKind, OutputKind};
pub mod interp;
pub mod verify;

pub use interp::{run_package, Output, Tensor};
pub use verify::{verify_against, VerifyReport};

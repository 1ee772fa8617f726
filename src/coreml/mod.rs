//! The Core ML side: our protobuf schema, a MIL program builder, the weight blob writer,
//! the `.mlpackage` writer, the ViT emitter and an interpreter of the MIL we emit.
//! Depends on the checkpoint and its config only, never on MLX.

pub mod proto;

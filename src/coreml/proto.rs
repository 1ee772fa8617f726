//! Rust types of our Core ML protobuf schema (`proto/*.proto`), generated at build time.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/coreml_proto.rs"));

pub use core_ml::specification as spec;
pub use core_ml::specification::mil_spec as mil;

//! A small builder for MIL programs (the body of a Core ML ML Program).

pub mod batch;
pub mod builder;
pub mod constexpr;
pub mod ops;
pub mod types;
pub mod value;

pub use builder::{BuiltProgram, FloatSource, MilError, ProgramBuilder};
pub use ops::{BinaryOp, ConvPad, GeluMode};
pub use types::{DType, TensorTy, Var};

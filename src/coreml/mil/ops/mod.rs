//! Typed constructors for the MIL operations we emit. Each checks its operands'
//! shapes and element types, infers the output type, and writes every optional
//! parameter explicitly as a const operand (Core ML's validator is not available off
//! a Mac, so nothing is left to defaults).
//!
//! `shape` holds the operations that move or retype data (reshape, transpose, concat,
//! split, slices, casts), `layers` those that compute (convolution, norms, products,
//! activations, reductions, attention, the classifier's output).

mod layers;
mod shape;

use super::builder::MilError;
use super::types::{norm_axis, DType, Var};

fn shape_err(op: &str, kind: &'static str, msg: String) -> MilError {
    MilError::Shape {
        op: op.into(),
        kind,
        msg,
    }
}

fn type_err(op: &str, kind: &'static str, msg: String) -> MilError {
    MilError::Type {
        op: op.into(),
        kind,
        msg,
    }
}

/// All operands float and of one dtype (iOS15 type domains tie them together).
fn same_float(op: &str, kind: &'static str, vars: &[&Var]) -> Result<DType, MilError> {
    let d = vars[0].dtype();
    if !d.is_float() || d == DType::F64 {
        return Err(type_err(
            op,
            kind,
            format!("`{}` is {d}, expected fp16 or fp32", vars[0].name),
        ));
    }
    for v in &vars[1..] {
        if v.dtype() != d {
            return Err(type_err(
                op,
                kind,
                format!("`{}` is {}, `{}` is {d}", v.name, v.dtype(), vars[0].name),
            ));
        }
    }
    Ok(d)
}

fn axis(op: &str, kind: &'static str, a: i64, rank: usize) -> Result<usize, MilError> {
    norm_axis(a, rank)
        .ok_or_else(|| shape_err(op, kind, format!("axis {a} out of range for rank {rank}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    RealDiv,
}

impl BinaryOp {
    pub fn kind(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::RealDiv => "real_div",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluMode {
    Exact,
    Tanh,
}

/// Padding of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPad {
    Valid,
    /// Explicit `[top, bottom, left, right]`.
    Custom([usize; 4]),
}

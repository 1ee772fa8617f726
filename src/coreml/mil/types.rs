//! Value types of the MIL we emit: element types and static tensor shapes.

use std::fmt;

use crate::coreml::proto::mil as pb;

/// Element type of a MIL value (the subset we emit or read). The narrow integer types
/// (`I8`, `U8`, `I4`, `U1`..`U6`, `U32`) appear only in the data of compressed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    Str,
    F16,
    F32,
    F64,
    I32,
    I64,
    I8,
    U8,
    I4,
    U1,
    U2,
    U3,
    U4,
    U6,
    U32,
}

impl DType {
    /// MIL's `DataType` number (some of them, such as UINT4 = 35, are missing from the
    /// enum of our schema, so the number is what goes into `TensorType.dataType`).
    pub fn code(self) -> i32 {
        match self {
            DType::Bool => 1,
            DType::Str => 2,
            DType::F16 => 10,
            DType::F32 => 11,
            DType::F64 => 12,
            DType::I8 => 21,
            DType::I32 => 23,
            DType::I64 => 24,
            DType::I4 => 25,
            DType::U8 => 31,
            DType::U32 => 33,
            DType::U4 => 35,
            DType::U2 => 36,
            DType::U1 => 37,
            DType::U6 => 38,
            DType::U3 => 39,
        }
    }

    pub fn from_proto(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::Bool,
            2 => DType::Str,
            10 => DType::F16,
            11 => DType::F32,
            12 => DType::F64,
            21 => DType::I8,
            23 => DType::I32,
            24 => DType::I64,
            25 => DType::I4,
            31 => DType::U8,
            33 => DType::U32,
            35 => DType::U4,
            36 => DType::U2,
            37 => DType::U1,
            38 => DType::U6,
            39 => DType::U3,
            _ => return None,
        })
    }

    /// Bits per element of numeric types (`None` for bool and string).
    pub fn bits(self) -> Option<u32> {
        Some(match self {
            DType::U1 => 1,
            DType::U2 => 2,
            DType::U3 => 3,
            DType::I4 | DType::U4 => 4,
            DType::U6 => 6,
            DType::I8 | DType::U8 => 8,
            DType::F16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 => 64,
            DType::Bool | DType::Str => return None,
        })
    }

    /// The unsigned index type of `bits` bits (1, 2, 3, 4, 6 or 8).
    pub fn uint(bits: u32) -> Option<DType> {
        Some(match bits {
            1 => DType::U1,
            2 => DType::U2,
            3 => DType::U3,
            4 => DType::U4,
            6 => DType::U6,
            8 => DType::U8,
            _ => return None,
        })
    }

    /// Types stored in fewer than 8 bits, bit-packed.
    pub fn is_sub_byte(self) -> bool {
        self.bits().is_some_and(|b| b < 8)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32 | DType::F64)
    }

    /// The name `cast` takes for this type.
    pub fn cast_name(self) -> Option<&'static str> {
        Some(match self {
            DType::F16 => "fp16",
            DType::F32 => "fp32",
            DType::I32 => "int32",
            DType::Bool => "bool",
            _ => return None,
        })
    }

    pub fn from_cast_name(s: &str) -> Option<DType> {
        Some(match s {
            "fp16" => DType::F16,
            "fp32" => DType::F32,
            "int32" => DType::I32,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::Bool => "bool",
            DType::Str => "string",
            DType::F16 => "fp16",
            DType::F32 => "fp32",
            DType::F64 => "fp64",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I4 => "int4",
            DType::U1 => "uint1",
            DType::U2 => "uint2",
            DType::U3 => "uint3",
            DType::U4 => "uint4",
            DType::U6 => "uint6",
            DType::U32 => "uint32",
        })
    }
}

/// A tensor type with a fully known shape (rank 0 = scalar).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorTy {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorTy {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorTy {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn scalar(dtype: DType) -> Self {
        TensorTy {
            dtype,
            shape: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn to_proto(&self) -> pb::ValueType {
        pb::ValueType {
            r#type: Some(pb::value_type::Type::TensorType(pb::TensorType {
                data_type: self.dtype.code(),
                rank: self.shape.len() as i64,
                dimensions: self
                    .shape
                    .iter()
                    .map(|&d| pb::Dimension {
                        dimension: Some(pb::dimension::Dimension::Constant(
                            pb::dimension::ConstantDimension { size: d as u64 },
                        )),
                    })
                    .collect(),
                attributes: Default::default(),
            })),
        }
    }
}

impl fmt::Display for TensorTy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// A named value defined in the program being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub ty: TensorTy,
}

impl Var {
    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn rank(&self) -> usize {
        self.ty.shape.len()
    }
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Normalises a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Turns an arbitrary name into a MIL identifier (`[A-Za-z_][A-Za-z0-9_@]*`).
pub fn ident(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

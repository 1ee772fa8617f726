//! Building protobuf `Value`s the way Core ML expects them: scalars are rank-0
//! tensors, fp16 immediates are raw little-endian bytes, fp32 go in `floats`, int32 in
//! `ints`, bools in `bools`, strings in `strings`.

use crate::coreml::proto::mil as pb;

use super::types::{DType, TensorTy};

fn tensor_value(ty: &TensorTy, v: pb::tensor_value::Value) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(ty.to_proto()),
        value: Some(pb::value::Value::ImmediateValue(
            pb::value::ImmediateValue {
                value: Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue {
                    value: Some(v),
                })),
            },
        )),
    }
}

use pb::tensor_value::{
    RepeatedBools, RepeatedBytes, RepeatedFloats, RepeatedInts, RepeatedStrings, Value as TV,
};

pub fn f32s(shape: &[usize], values: Vec<f32>) -> pb::Value {
    tensor_value(
        &TensorTy::new(DType::F32, shape),
        TV::Floats(RepeatedFloats { values }),
    )
}

/// fp16 values given as their little-endian bytes.
pub fn f16_bytes(shape: &[usize], bytes: Vec<u8>) -> pb::Value {
    tensor_value(
        &TensorTy::new(DType::F16, shape),
        TV::Bytes(RepeatedBytes { values: bytes }),
    )
}

pub fn i32s(shape: &[usize], values: Vec<i32>) -> pb::Value {
    tensor_value(
        &TensorTy::new(DType::I32, shape),
        TV::Ints(RepeatedInts { values }),
    )
}

pub fn bools(shape: &[usize], values: Vec<bool>) -> pb::Value {
    tensor_value(
        &TensorTy::new(DType::Bool, shape),
        TV::Bools(RepeatedBools { values }),
    )
}

pub fn string(s: &str) -> pb::Value {
    tensor_value(
        &TensorTy::scalar(DType::Str),
        TV::Strings(RepeatedStrings {
            values: vec![s.to_string()],
        }),
    )
}

pub fn blob(ty: &TensorTy, offset: u64) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(ty.to_proto()),
        value: Some(pb::value::Value::BlobFileValue(pb::value::BlobFileValue {
            file_name: crate::coreml::blob::WEIGHT_FILE_REF.into(),
            offset,
        })),
    }
}

/// A list of string scalars (the `classes` literal of `classify`).
pub fn string_list(items: &[String]) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(list_type(&TensorTy::scalar(DType::Str), items.len())),
        value: Some(pb::value::Value::ImmediateValue(
            pb::value::ImmediateValue {
                value: Some(pb::value::immediate_value::Value::List(pb::ListValue {
                    values: items.iter().map(|s| string(s)).collect(),
                })),
            },
        )),
    }
}

pub fn list_type(elem: &TensorTy, len: usize) -> pb::ValueType {
    pb::ValueType {
        r#type: Some(pb::value_type::Type::ListType(Box::new(pb::ListType {
            r#type: Some(Box::new(elem.to_proto())),
            length: Some(pb::Dimension {
                dimension: Some(pb::dimension::Dimension::Constant(
                    pb::dimension::ConstantDimension { size: len as u64 },
                )),
            }),
        }))),
    }
}

pub fn dict_type(key: DType, value: DType) -> pb::ValueType {
    pb::ValueType {
        r#type: Some(pb::value_type::Type::DictionaryType(Box::new(
            pb::DictionaryType {
                key_type: Some(Box::new(TensorTy::scalar(key).to_proto())),
                value_type: Some(Box::new(TensorTy::scalar(value).to_proto())),
            },
        ))),
    }
}

/// A tensor of any type whose immediate form is raw little-endian bytes (fp16, the
/// 8-bit and sub-byte integer types, uint32), already bit-packed when sub-byte.
pub fn raw_bytes(ty: &TensorTy, bytes: Vec<u8>) -> pb::Value {
    tensor_value(ty, TV::Bytes(RepeatedBytes { values: bytes }))
}

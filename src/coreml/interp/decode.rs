//! Literal values of the program (immediates and `weight.bin` blobs) and the tensor
//! types it declares, as the interpreter's values.

use super::{tensor, InterpError, Tensor, Val, ANY};
use crate::coreml::blob::{BlobDType, BlobReader};
use crate::coreml::mil::{DType, TensorTy};
use crate::coreml::proto::mil as pb;

/// An operation's name for messages: its `name` attribute, else its first output's.
pub(super) fn op_name(op: &pb::Operation) -> String {
    match op.attributes.get("name").map(|v| decode_value(v, None)) {
        Some(Ok(Val::Str(s))) => s,
        _ => op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default(),
    }
}

pub(super) fn tensor_ty(vt: Option<&pb::ValueType>) -> Result<TensorTy, InterpError> {
    let Some(pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(t)),
    }) = vt
    else {
        return Err(InterpError::Program("expected a tensor type".into()));
    };
    let dtype = DType::from_proto(t.data_type)
        .ok_or_else(|| InterpError::Program(format!("unsupported data type {}", t.data_type)))?;
    if t.rank != t.dimensions.len() as i64 {
        return Err(InterpError::Program(
            "tensor rank does not match its dimensions".into(),
        ));
    }
    let shape = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => Ok(c.size as usize),
            // A flexible batch (see `mil::batch`): any size, written 0 here.
            Some(pb::dimension::Dimension::Unknown(u)) if !u.variadic => Ok(ANY),
            _ => Err(InterpError::Program(
                "variadic dimensions are not supported".into(),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorTy { dtype, shape })
}

pub(super) fn decode_value(
    v: &pb::Value,
    blobs: Option<&BlobReader<'_>>,
) -> Result<Val, InterpError> {
    use pb::tensor_value::Value as TV;
    use pb::value::immediate_value::Value as IV;
    let bad = |m: &str| InterpError::Program(m.to_string());
    // A list of string scalars: `classify`'s classes.
    if let Some(pb::ValueType {
        r#type: Some(pb::value_type::Type::ListType(_)),
    }) = &v.r#type
    {
        let Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(IV::List(l)),
        })) = &v.value
        else {
            return Err(bad("list value without list data"));
        };
        let items = l
            .values
            .iter()
            .map(|x| match decode_value(x, blobs)? {
                Val::Str(s) => Ok(s),
                _ => Err(bad("only lists of strings are supported")),
            })
            .collect::<Result<_, _>>()?;
        return Ok(Val::StrList(items));
    }
    let ty = tensor_ty(v.r#type.as_ref())?;
    let n = ty.numel();
    let float = |data: Vec<f32>| -> Result<Val, InterpError> {
        if data.len() != n {
            return Err(bad("value does not fill its declared shape"));
        }
        Ok(Val::Float {
            dtype: ty.dtype,
            t: Tensor {
                shape: ty.shape.clone(),
                data,
            },
        })
    };
    match &v.value {
        Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(IV::Tensor(pb::TensorValue { value: Some(tv) })),
        })) => match (ty.dtype, tv) {
            (DType::F32, TV::Floats(f)) => float(f.values.clone()),
            (DType::F16, TV::Bytes(b)) => float(f16_from_le(&b.values)),
            (DType::I32, TV::Ints(i)) if i.values.len() == n => Ok(Val::Int {
                shape: ty.shape,
                v: i.values.iter().map(|&x| x as i64).collect(),
            }),
            (DType::I64, TV::LongInts(i)) if i.values.len() == n => Ok(Val::Int {
                shape: ty.shape,
                v: i.values.clone(),
            }),
            (DType::Bool, TV::Bools(b)) if b.values.len() == n => Ok(Val::Bool {
                shape: ty.shape,
                v: b.values.clone(),
            }),
            (DType::Str, TV::Strings(s)) if s.values.len() == 1 && n == 1 => {
                Ok(Val::Str(s.values[0].clone()))
            }
            (d, _) => Err(InterpError::Program(format!(
                "immediate value of type {d} in the wrong field or size"
            ))),
        },
        Some(pb::value::Value::BlobFileValue(bf)) => {
            let blobs =
                blobs.ok_or_else(|| bad("blob value but the package has no weight file"))?;
            if bf.file_name != crate::coreml::blob::WEIGHT_FILE_REF {
                return Err(InterpError::Program(format!(
                    "blob file {} is not ours",
                    bf.file_name
                )));
            }
            let (bd, size) = match ty.dtype {
                DType::F16 => (BlobDType::F16, 2),
                DType::F32 => (BlobDType::F32, 4),
                d => return Err(InterpError::Program(format!("blob of type {d}"))),
            };
            let bytes = blobs.read(bf.offset, bd, (n * size) as u64)?;
            match bd {
                BlobDType::F16 => float(f16_from_le(bytes)),
                _ => float(crate::checkpoint::le_f32(bytes)),
            }
        }
        _ => Err(bad("value without data")),
    }
}

pub(super) fn f16_from_le(b: &[u8]) -> Vec<f32> {
    tensor::f16_le_to_f32(b)
}

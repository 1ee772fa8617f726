//! A literal of a constexpr op (immediate, or a blob in `weight.bin`) read into an
//! [`Arr`], sub-byte integers unpacked.

use super::arr::{Arr, Data, R};
use super::elem::{unpack_bits, Elem};
use crate::coreml::blob::{BlobDType, BlobReader, WEIGHT_FILE_REF};
use crate::coreml::interp::decode::f16_from_le;
use crate::coreml::proto::mil as pb;

pub(super) fn value_ty(vt: Option<&pb::ValueType>) -> R<(Elem, Vec<usize>)> {
    let Some(pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(t)),
    }) = vt
    else {
        return Err("expected a tensor type".into());
    };
    let elem = Elem::from_mil(t.data_type).ok_or_else(|| format!("data type {}", t.data_type))?;
    if t.rank != t.dimensions.len() as i64 {
        return Err("tensor rank does not match its dimensions".into());
    }
    let shape = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => Ok(c.size as usize),
            _ => Err("only constant dimensions are supported".to_string()),
        })
        .collect::<R<_>>()?;
    Ok((elem, shape))
}

pub(super) fn decode_value(v: &pb::Value, blobs: Option<&BlobReader<'_>>) -> R<Arr> {
    use pb::tensor_value::Value as TV;
    use pb::value::immediate_value::Value as IV;
    let (elem, shape) = value_ty(v.r#type.as_ref())?;
    let n: usize = shape.iter().product();
    let arr = |data: Data| -> R<Arr> {
        let a = Arr {
            elem,
            shape: shape.clone(),
            data,
        };
        if a.numel() != n {
            return Err(format!("{} values for shape {shape:?}", a.numel()));
        }
        Ok(a)
    };
    let ints = |bytes: &[u8]| -> R<Data> {
        let Elem::Int { bits, signed } = elem else {
            unreachable!("called for integer types")
        };
        let need = (n * bits as usize).div_ceil(8);
        if bytes.len() != need {
            return Err(format!(
                "{} bytes for {n} {elem} values, which need {need}",
                bytes.len()
            ));
        }
        unpack_bits(bytes, bits, n, signed)
            .map(Data::I)
            .ok_or_else(|| format!("cannot unpack {elem}"))
    };
    match &v.value {
        Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(IV::Tensor(pb::TensorValue { value: Some(tv) })),
        })) => match (elem, tv) {
            (Elem::F16, TV::Bytes(b)) => arr(Data::F(f16_from_le(&b.values))),
            (Elem::F32, TV::Floats(f)) => arr(Data::F(f.values.clone())),
            (Elem::Int { .. }, TV::Bytes(b)) => arr(ints(&b.values)?),
            (Elem::Int { .. }, TV::Ints(i)) => {
                arr(Data::I(i.values.iter().map(|&x| x as i64).collect()))
            }
            (Elem::Int { .. }, TV::LongInts(i)) => arr(Data::I(i.values.clone())),
            _ => Err(format!("immediate {elem} value in the wrong field")),
        },
        Some(pb::value::Value::BlobFileValue(bf)) => {
            let blobs = blobs.ok_or("blob value but the package has no weight file")?;
            if bf.file_name != WEIGHT_FILE_REF {
                return Err(format!("blob file {} is not ours", bf.file_name));
            }
            let want = elem
                .blob_code()
                .and_then(BlobDType::from_code)
                .ok_or_else(|| format!("{elem} cannot be stored in a blob"))?;
            // Checks the record's type, size (bit-packed) and padding bits.
            let data = blobs
                .read_elems(bf.offset, want, n)
                .map_err(|e| e.to_string())?;
            match elem {
                Elem::F16 => arr(Data::F(f16_from_le(data))),
                Elem::F32 => arr(Data::F(crate::checkpoint::le_f32(data))),
                Elem::Int { .. } => arr(ints(data)?),
            }
        }
        _ => Err("value without data".into()),
    }
}

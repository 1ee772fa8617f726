//! Compressed weights as `constexpr_*` ops, which Core ML decompresses at load time
//! into an ordinary constant of the weight's shape.
//!
//! Up to iOS17 every parameter is an attribute of the op (beside `name`); from iOS18
//! they are inputs bound to values. Parameter data of 10 or more elements goes to the
//! weight file (sub-byte data bit-packed, with its padding bits recorded), smaller
//! data inline, as coremltools writes it. The op's output carries the weight's name.
//!
//! | encoding | iOS16 / iOS17 | iOS18 |
//! |---|---|---|
//! | int8 per channel | `constexpr_affine_dequantize(quantized_data int8 [shape], zero_point int8 [Cout] = 0, scale [Cout], axis = 0)` | `constexpr_blockwise_shift_scale(data int8 [shape], scale [Cout, 1, ...])` |
//! | int4 per block | (iOS18 only) | `constexpr_blockwise_shift_scale(data int4 [shape], scale [Cout, Cin / block, 1, ...])` |
//! | palette | `constexpr_lut_to_dense(indices uint8 [ceil(n bits / 8)] packed, lut [2^n], shape uint32 [rank])` | `constexpr_lut_to_dense(indices uintN [shape], lut [groups, 1, ..., 2^n, 1])` |
//!
//! Scales and palettes have the weight's type (fp16, or fp32 in fp32 programs). The
//! iOS18 palette op has no `vector_axis` (optional for scalar palettes; coremltools
//! leaves it out too).

use std::collections::BTreeMap;

use half::f16;

use crate::coreml::blob::BlobDType;
use crate::coreml::compress::{pack, CompressedTensor, Encoding};
use crate::coreml::proto::mil as pb;
use crate::coreml::target::Target;

use super::builder::{MilError, ProgramBuilder, INLINE_LIMIT};
use super::types::{DType, TensorTy, Var};
use super::value;

impl ProgramBuilder<'_> {
    /// Parameter data: inline below [`INLINE_LIMIT`] elements, else in the weight file.
    /// `raw` is the stored form (little-endian, bit-packed for sub-byte types).
    fn constexpr_data(&mut self, ty: &TensorTy, raw: Vec<u8>) -> Result<pb::Value, MilError> {
        let n = ty.numel();
        if n < INLINE_LIMIT {
            return Ok(match ty.dtype {
                DType::F32 => value::f32s(&ty.shape, crate::checkpoint::le_f32(&raw)),
                _ => value::raw_bytes(ty, raw),
            });
        }
        let bd = BlobDType::of(ty.dtype).ok_or_else(|| MilError::Type {
            op: String::new(),
            kind: "constexpr",
            msg: format!("{} data cannot go to the weight file", ty.dtype),
        })?;
        let offset = self.sink_mut().put_elems(bd, n, &raw)?;
        Ok(value::blob(ty, offset))
    }

    fn float_data(
        &mut self,
        dtype: DType,
        shape: &[usize],
        v: &[f32],
    ) -> Result<pb::Value, MilError> {
        let raw: Vec<u8> = match dtype {
            DType::F16 => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        self.constexpr_data(&TensorTy::new(dtype, shape), raw)
    }

    /// Appends a constexpr op: parameters as attributes (up to iOS17) or inputs (iOS18).
    fn push_constexpr(
        &mut self,
        kind: &'static str,
        name: &str,
        out: TensorTy,
        params: Vec<(&str, pb::Value)>,
    ) -> Result<Var, MilError> {
        self.define_name(name)?;
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), value::string(name));
        let mut inputs = BTreeMap::new();
        let as_inputs = self.target >= Target::Ios18;
        for (p, v) in params {
            if as_inputs {
                inputs.insert(
                    p.to_string(),
                    pb::Argument {
                        arguments: vec![pb::argument::Binding {
                            binding: Some(pb::argument::binding::Binding::Value(v)),
                        }],
                    },
                );
            } else {
                attributes.insert(p.to_string(), v);
            }
        }
        self.push_raw_op(
            pb::Operation {
                r#type: kind.into(),
                inputs,
                outputs: vec![pb::NamedValueType {
                    name: name.into(),
                    r#type: Some(out.to_proto()),
                }],
                blocks: Vec::new(),
                attributes,
            },
            kind,
        );
        Ok(Var {
            name: name.into(),
            ty: out,
        })
    }

    fn needs(&self, kind: &'static str, needs: Target) -> Result<(), MilError> {
        if self.target < needs {
            return Err(MilError::Target {
                kind,
                needs,
                target: self.target,
            });
        }
        Ok(())
    }

    /// A compressed weight named `name`: the encoding of the program's target (see the
    /// module documentation). Its value is `t.decode()`, of type `t.dtype`.
    pub fn const_compressed(&mut self, name: &str, t: &CompressedTensor) -> Result<Var, MilError> {
        let out = TensorTy::new(t.dtype, t.shape.clone());
        let n = out.numel();
        let rank = t.shape.len();
        let shape_err = |msg: String| MilError::Shape {
            op: name.into(),
            kind: "constexpr",
            msg,
        };
        if !matches!(t.dtype, DType::F16 | DType::F32) {
            return Err(MilError::Type {
                op: name.into(),
                kind: "constexpr",
                msg: format!("decompresses to {}, not fp16 or fp32", t.dtype),
            });
        }
        match &t.encoding {
            Encoding::Linear {
                bits,
                data,
                scale,
                scale_shape,
            } => {
                if data.len() != n
                    || scale_shape.len() != rank
                    || scale.len() != scale_shape.iter().product::<usize>()
                    || t.shape
                        .iter()
                        .zip(scale_shape)
                        .any(|(d, s)| *s == 0 || d % s != 0)
                {
                    return Err(shape_err(format!(
                        "{} values, scale {scale_shape:?} ({} values) for shape {:?}",
                        data.len(),
                        scale.len(),
                        t.shape
                    )));
                }
                let per_channel = scale_shape[1..].iter().all(|&s| s == 1);
                if self.target < Target::Ios18 && *bits == 8 && per_channel {
                    let kind = "constexpr_affine_dequantize";
                    self.needs(kind, Target::Ios16)?;
                    let cout = t.shape[0];
                    let q = self.constexpr_data(
                        &TensorTy::new(DType::I8, t.shape.clone()),
                        data.iter().map(|&v| v as u8).collect(),
                    )?;
                    let zp =
                        self.constexpr_data(&TensorTy::new(DType::I8, [cout]), vec![0; cout])?;
                    let sc = self.float_data(t.dtype, &[cout], scale)?;
                    return self.push_constexpr(
                        kind,
                        name,
                        out,
                        vec![
                            ("quantized_data", q),
                            ("zero_point", zp),
                            ("scale", sc),
                            ("axis", value::i32s(&[], vec![0])),
                        ],
                    );
                }
                let kind = "constexpr_blockwise_shift_scale";
                self.needs(kind, Target::Ios18)?;
                let (dt, raw) = match bits {
                    8 => (DType::I8, data.iter().map(|&v| v as u8).collect()),
                    4 => (DType::I4, pack::pack_i4(data)),
                    b => return Err(shape_err(format!("{b}-bit linear data"))),
                };
                let d = self.constexpr_data(&TensorTy::new(dt, t.shape.clone()), raw)?;
                let sc = self.float_data(t.dtype, scale_shape, scale)?;
                self.push_constexpr(kind, name, out, vec![("data", d), ("scale", sc)])
            }
            Encoding::Palette {
                nbits,
                indices,
                lut,
                groups,
            } => {
                let k = 1usize << nbits;
                let idx_ty =
                    DType::uint(*nbits).ok_or_else(|| shape_err(format!("{nbits}-bit indices")))?;
                if indices.len() != n
                    || *groups == 0
                    || t.shape[0] % groups != 0
                    || lut.len() != groups * k
                {
                    return Err(shape_err(format!(
                        "{} indices, {} palette entries in {groups} groups for shape {:?}",
                        indices.len(),
                        lut.len(),
                        t.shape
                    )));
                }
                let kind = "constexpr_lut_to_dense";
                let packed = pack::pack(indices, *nbits);
                if self.target < Target::Ios18 {
                    self.needs(kind, Target::Ios16)?;
                    if *groups != 1 {
                        return Err(MilError::Target {
                            kind: "constexpr_lut_to_dense with per-grouped-channel palettes",
                            needs: Target::Ios18,
                            target: self.target,
                        });
                    }
                    if *nbits == 3 {
                        return Err(MilError::Target {
                            kind: "constexpr_lut_to_dense with 3-bit indices",
                            needs: Target::Ios18,
                            target: self.target,
                        });
                    }
                    let m = packed.len();
                    let ix = self.constexpr_data(&TensorTy::new(DType::U8, [m]), packed)?;
                    let lt = self.float_data(t.dtype, &[k], lut)?;
                    let dims: Vec<u32> = t
                        .shape
                        .iter()
                        .map(|&d| u32::try_from(d).map_err(|_| shape_err(format!("dimension {d}"))))
                        .collect::<Result<_, _>>()?;
                    let sh = self.constexpr_data(
                        &TensorTy::new(DType::U32, [rank]),
                        dims.iter().flat_map(|d| d.to_le_bytes()).collect(),
                    )?;
                    return self.push_constexpr(
                        kind,
                        name,
                        out,
                        vec![("indices", ix), ("lut", lt), ("shape", sh)],
                    );
                }
                let ix = self.constexpr_data(&TensorTy::new(idx_ty, t.shape.clone()), packed)?;
                // [groups, 1, ..., 2^n, 1]: rank + 2 axes.
                let mut lut_shape = vec![1; rank + 2];
                lut_shape[0] = *groups;
                lut_shape[rank] = k;
                let lt = self.float_data(t.dtype, &lut_shape, lut)?;
                self.push_constexpr(kind, name, out, vec![("indices", ix), ("lut", lt)])
            }
        }
    }
}

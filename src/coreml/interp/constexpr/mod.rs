//! Compressed weights: the `constexpr_*` ops, decoded once when a package is opened,
//! so that the rest of the program sees their outputs as it sees consts.
//!
//! Both encodings coremltools writes are read: up to iOS17 an op's parameters are its
//! attributes (`constexpr_affine_dequantize`, `constexpr_lut_to_dense` with packed
//! uint8 indices and a `shape`, `constexpr_sparse_to_dense` with a packed uint8 mask);
//! from iOS18 they are inputs, literal values or the outputs of other constexpr ops
//! (`constexpr_blockwise_shift_scale`, `constexpr_lut_to_dense` with uintN indices,
//! `constexpr_sparse_to_dense` with a uint1 mask, and the sparse-form
//! `constexpr_lut_to_sparse` / `constexpr_sparse_blockwise_shift_scale`). Values are
//! immediate (sub-byte values bit-packed, least significant bit first) or in
//! `weight.bin` under the blob format's own type codes.
//!
//! The arithmetic follows coremltools' decompression: `scale * (q - zero_point)`
//! computed exactly and rounded once to the scale's type, except that a float
//! `offset` is subtracted, rounded, then scaled and rounded again.
//!
//! Here: the decoder, which reads each op's parameters and calls the decompression of
//! its kind; one submodule per kind of compression.

mod arr;
mod elem;
mod lut;
mod quant;
mod sparse;
#[cfg(test)]
mod tests;
mod value;

use std::collections::HashMap;

use super::{InterpError, Tensor, Val};
use crate::coreml::blob::BlobReader;
use crate::coreml::mil::DType;
use crate::coreml::proto::mil as pb;
use arr::{for_each_index, norm_axis, strides, Arr, Data, R};
pub(crate) use elem::{unpack_bits, Elem};
use lut::lut_to_dense;
use quant::{affine_dequantize, blockwise_shift_scale};
use sparse::{masked, scatter};
use value::{decode_value, value_ty};

/// Whether the interpreter decodes `op` at load instead of running it.
pub(super) fn is_constexpr(op: &pb::Operation) -> bool {
    op.r#type.starts_with("constexpr_")
}

/// Decodes every constexpr op of a block in order.
struct Decoder<'a> {
    blobs: Option<BlobReader<'a>>,
    /// `const` ops' values by output name, decoded only when a constexpr op names one.
    consts: HashMap<&'a str, &'a pb::Value>,
    vals: HashMap<String, Arr>,
}

impl<'a> Decoder<'a> {
    /// A parameter: an input (iOS18: a literal or another op's output) or an attribute
    /// (up to iOS17).
    fn param(&self, op: &pb::Operation, name: &str) -> R<Option<Arr>> {
        use pb::argument::binding::Binding;
        if let Some(arg) = op.inputs.get(name) {
            let [b] = arg.arguments.as_slice() else {
                return Err(format!("`{name}` takes one value"));
            };
            return match &b.binding {
                Some(Binding::Name(n)) => match (self.vals.get(n), self.consts.get(n.as_str())) {
                    (Some(a), _) => Ok(Some(a.clone())),
                    (None, Some(v)) => decode_value(v, self.blobs.as_ref()).map(Some),
                    (None, None) => Err(format!("`{n}` is not a constant")),
                },
                Some(Binding::Value(v)) => decode_value(v, self.blobs.as_ref()).map(Some),
                None => Err(format!("empty binding for `{name}`")),
            };
        }
        match op.attributes.get(name) {
            Some(v) => decode_value(v, self.blobs.as_ref())
                .map(Some)
                .map_err(|e| format!("`{name}`: {e}")),
            None => Ok(None),
        }
    }

    fn req(&self, op: &pb::Operation, name: &str) -> R<Arr> {
        self.param(op, name)?
            .ok_or_else(|| format!("missing parameter `{name}`"))
    }

    fn run(&self, op: &pb::Operation) -> R<Vec<Arr>> {
        let p = |name| self.req(op, name);
        let ios16 = self.param(op, "shape")?;
        Ok(match op.r#type.as_str() {
            "constexpr_affine_dequantize" => vec![affine_dequantize(
                &p("quantized_data")?,
                &p("zero_point")?,
                &p("scale")?,
                p("axis")?.int()?,
            )?],
            "constexpr_blockwise_shift_scale" => {
                let off = self.param(op, "offset")?;
                vec![blockwise_shift_scale(
                    &p("data")?,
                    &p("scale")?,
                    off.as_ref(),
                )?]
            }
            "constexpr_lut_to_dense" => vec![match ios16 {
                Some(shape) => self.lut_to_dense_ios16(op, shape)?,
                None => {
                    let va = self
                        .param(op, "vector_axis")?
                        .map(|a| a.int())
                        .transpose()?;
                    lut_to_dense(&p("indices")?, &p("lut")?, va)?
                }
            }],
            "constexpr_sparse_to_dense" => {
                let nz = p("nonzero_data")?;
                let mask = p("mask")?;
                let (bits, shape) = match ios16 {
                    Some(shape) => {
                        let shape = shape.usizes()?;
                        let n: usize = shape.iter().product();
                        let bytes = mask.packed_bytes()?;
                        if bytes.len() != n.div_ceil(8) {
                            return Err(format!("{} mask bytes for {n} values", bytes.len()));
                        }
                        (unpack_bits(&bytes, 1, n, false).ok_or("bad mask")?, shape)
                    }
                    None => (mask.ints()?.to_vec(), mask.shape.clone()),
                };
                vec![scatter(&nz, &bits, shape)?]
            }
            "constexpr_sparse_blockwise_shift_scale" => {
                let mask = p("data_mask")?;
                let dense = scatter(&p("nonzero_data")?, mask.ints()?, mask.shape.clone())?;
                let off = self.param(op, "offset")?;
                let out = blockwise_shift_scale(&dense, &p("scale")?, off.as_ref())?;
                let nz = masked(&out, mask.ints()?);
                vec![mask, nz]
            }
            "constexpr_lut_to_sparse" => self.lut_to_sparse(op)?,
            other => return Err(format!("`{other}` is not a constexpr op this reader knows")),
        })
    }

    /// iOS16 `constexpr_lut_to_dense`: one 1-D palette, packed uint8 indices and the
    /// output `shape`, read as the iOS18 form with a single block.
    fn lut_to_dense_ios16(&self, op: &pb::Operation, shape: Arr) -> R<Arr> {
        let p = |name| self.req(op, name);
        let shape = shape.usizes()?;
        let lut = p("lut")?;
        if lut.shape.len() != 1 {
            return Err(format!("lut {:?} is not 1-D", lut.shape));
        }
        let bits = lut.numel().trailing_zeros();
        if lut.numel() != 1 << bits || !(1..=8).contains(&bits) {
            return Err(format!("{} lut entries", lut.numel()));
        }
        let bytes = p("indices")?.packed_bytes()?;
        let n: usize = shape.iter().product();
        if bytes.len() != (n * bits as usize).div_ceil(8) {
            return Err(format!(
                "{} index bytes for {n} {bits}-bit indices",
                bytes.len()
            ));
        }
        let idx = unpack_bits(&bytes, bits, n, false).ok_or("bad indices")?;
        let indices = Arr {
            elem: Elem::Int {
                bits,
                signed: false,
            },
            shape: shape.clone(),
            data: Data::I(idx),
        };
        let mut lut = lut;
        lut.shape = vec![1; shape.len()];
        lut.shape.extend([1 << bits, 1]);
        lut_to_dense(&indices, &lut, None)
    }

    /// iOS18 `constexpr_lut_to_sparse`: decoded as dense, then split back into the mask
    /// and the values it selects.
    fn lut_to_sparse(&self, op: &pb::Operation) -> R<Vec<Arr>> {
        let p = |name| self.req(op, name);
        let mask = p("indices_mask")?;
        let idx = scatter(
            &p("indices_nonzero_data")?,
            mask.ints()?,
            mask.shape.clone(),
        )?;
        let va = self
            .param(op, "vector_axis")?
            .map(|a| a.int())
            .transpose()?;
        let dense = lut_to_dense(&idx, &p("lut")?, va)?;
        // The mask, each entry repeated along the vector axis.
        let mut out_mask = Vec::with_capacity(dense.numel());
        let (m, vs) = (mask.ints()?, dense.numel() / mask.numel().max(1));
        let va = match va {
            Some(a) if vs > 1 => norm_axis(a, mask.shape.len())?,
            _ => 0,
        };
        let mstride = strides(&mask.shape);
        for_each_index(&dense.shape, |_, o| {
            let k: usize = (0..o.len())
                .map(|d| if d == va { o[d] / vs } else { o[d] } * mstride[d])
                .sum();
            out_mask.push(m[k]);
        });
        let nz = masked(&dense, &out_mask);
        let mask = Arr {
            elem: mask.elem,
            shape: dense.shape.clone(),
            data: Data::I(out_mask),
        };
        Ok(vec![mask, nz])
    }
}

/// Decodes every `constexpr_*` op of `block` (in program order, so chains resolve)
/// into the values the program's other ops see, by output name.
pub(super) fn decode(
    block: &pb::Block,
    weights: &[u8],
) -> Result<HashMap<String, Val>, InterpError> {
    if !block.operations.iter().any(is_constexpr) {
        return Ok(HashMap::new());
    }
    let mut dec = Decoder {
        blobs: if weights.is_empty() {
            None
        } else {
            Some(BlobReader::new(weights)?)
        },
        consts: HashMap::new(),
        vals: HashMap::new(),
    };
    for op in &block.operations {
        if op.r#type == "const" {
            if let (Some(o), Some(v)) = (op.outputs.first(), op.attributes.get("val")) {
                dec.consts.insert(o.name.as_str(), v);
            }
            continue;
        }
        if !is_constexpr(op) {
            continue;
        }
        let err = |msg: String| InterpError::Op {
            op: super::decode::op_name(op),
            kind: op.r#type.clone(),
            msg,
        };
        let outs = dec.run(op).map_err(err)?;
        if outs.len() != op.outputs.len() {
            return Err(err(format!(
                "{} results for {} declared outputs",
                outs.len(),
                op.outputs.len()
            )));
        }
        for (mut a, nv) in outs.into_iter().zip(&op.outputs) {
            let (elem, shape) = value_ty(nv.r#type.as_ref()).map_err(err)?;
            if elem != a.elem || shape != a.shape {
                return Err(err(format!(
                    "output `{}` is declared {elem}{shape:?}, decoded {}{:?}",
                    nv.name, a.elem, a.shape
                )));
            }
            if let (Elem::F16, Data::F(v)) = (elem, &mut a.data) {
                v.iter_mut().for_each(|x| *x = Elem::F16.round(*x));
            }
            dec.vals.insert(nv.name.clone(), a);
        }
    }
    Ok(dec
        .vals
        .into_iter()
        .map(|(name, a)| {
            let v = match (a.elem, a.data) {
                (e, Data::F(data)) => Val::Float {
                    dtype: if e == Elem::F16 {
                        DType::F16
                    } else {
                        DType::F32
                    },
                    t: Tensor {
                        shape: a.shape,
                        data,
                    },
                },
                (_, Data::I(v)) => Val::Int { shape: a.shape, v },
            };
            (name, v)
        })
        .collect())
}

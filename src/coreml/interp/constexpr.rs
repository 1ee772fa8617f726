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

use std::collections::HashMap;

use half::f16;

use super::decode::f16_from_le;
use super::{InterpError, Tensor, Val};
use crate::coreml::blob::{BlobDType, BlobReader, WEIGHT_FILE_REF};
use crate::coreml::mil::DType;
use crate::coreml::proto::mil as pb;

/// Whether the interpreter decodes `op` at load instead of running it.
pub(super) fn is_constexpr(op: &pb::Operation) -> bool {
    op.r#type.starts_with("constexpr_")
}

/// Element types of compressed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F16,
    F32,
    /// An integer of `bits` bits, two's complement when `signed`.
    Int {
        bits: u32,
        signed: bool,
    },
}

impl Elem {
    /// From a MIL `DataType` number.
    pub(crate) fn from_mil(code: i32) -> Option<Elem> {
        let int = |bits, signed| Elem::Int { bits, signed };
        Some(match code {
            10 => Elem::F16,
            11 => Elem::F32,
            21 => int(8, true),
            22 => int(16, true),
            23 => int(32, true),
            24 => int(64, true),
            25 => int(4, true),
            31 => int(8, false),
            32 => int(16, false),
            33 => int(32, false),
            35 => int(4, false),
            36 => int(2, false),
            37 => int(1, false),
            38 => int(6, false),
            39 => int(3, false),
            _ => return None,
        })
    }

    /// The blob format's code for this type (not MIL's `DataType` number).
    pub(crate) fn blob_code(self) -> Option<u32> {
        Some(match self {
            Elem::F16 => 1,
            Elem::F32 => 2,
            Elem::Int { bits, signed } => match (bits, signed) {
                (8, false) => 3,
                (8, true) => 4,
                (16, true) => 6,
                (16, false) => 7,
                (4, true) => 8,
                (1, false) => 9,
                (2, false) => 10,
                (4, false) => 11,
                (3, false) => 12,
                (6, false) => 13,
                (32, true) => 14,
                (32, false) => 15,
                _ => return None,
            },
        })
    }

    fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::F32)
    }

    /// Rounds a computed value to this (float) type's storage.
    fn round(self, v: f32) -> f32 {
        match self {
            Elem::F16 => f16::from_f32(v).to_f32(),
            _ => v,
        }
    }
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Elem::F16 => f.write_str("fp16"),
            Elem::F32 => f.write_str("fp32"),
            Elem::Int { bits, signed } => {
                write!(f, "{}int{bits}", if *signed { "" } else { "u" })
            }
        }
    }
}

/// `n` values of `nbits` bits (1..=32) packed least significant bit first: element `i`
/// starts at bit `nbits * i` of the little-endian byte stream, so 3- and 6-bit values
/// cross bytes. `None` when `bytes` is shorter than `ceil(n * nbits / 8)`.
pub(crate) fn unpack_bits(bytes: &[u8], nbits: u32, n: usize, signed: bool) -> Option<Vec<i64>> {
    if !(1..=32).contains(&nbits) || bytes.len() < (n * nbits as usize).div_ceil(8) {
        return None;
    }
    let sign_extend = |v: u64| -> i64 {
        if signed && (v >> (nbits - 1)) & 1 == 1 {
            v as i64 - (1i64 << nbits)
        } else {
            v as i64
        }
    };
    if nbits == 8 {
        return Some(bytes[..n].iter().map(|&b| sign_extend(b as u64)).collect());
    }
    let mask = (1u64 << nbits) - 1;
    let nb = nbits as usize;
    Some(
        (0..n)
            .map(|i| {
                let bit = i * nb;
                let (first, shift) = (bit / 8, bit % 8);
                let last = (bit + nb).div_ceil(8);
                let acc = bytes[first..last]
                    .iter()
                    .rev()
                    .fold(0u64, |a, &b| (a << 8) | b as u64);
                sign_extend((acc >> shift) & mask)
            })
            .collect(),
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

/// A decoded value of any element type.
#[derive(Debug, Clone, PartialEq)]
struct Arr {
    elem: Elem,
    shape: Vec<usize>,
    data: Data,
}

type R<T> = Result<T, String>;

impl Arr {
    fn numel(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    fn ints(&self) -> R<&[i64]> {
        match &self.data {
            Data::I(v) => Ok(v),
            Data::F(_) => Err(format!("expected an integer tensor, got {}", self.elem)),
        }
    }

    fn int(&self) -> R<i64> {
        match self.ints()? {
            [v] => Ok(*v),
            _ => Err(format!("expected a scalar, got shape {:?}", self.shape)),
        }
    }

    fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    fn usizes(&self) -> R<Vec<usize>> {
        self.ints()?
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| format!("negative size {v}")))
            .collect()
    }

    /// The values' bytes, for uint8/int8 tensors that hold packed bits (iOS16).
    fn packed_bytes(&self) -> R<Vec<u8>> {
        match self.elem {
            Elem::Int { bits: 8, .. } => Ok(self.ints()?.iter().map(|&v| v as u8).collect()),
            e => Err(format!("packed bits must be uint8, got {e}")),
        }
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format!("axis {axis} out of range for rank {rank}"))
}

/// `nonzero` placed where `mask` is set, zeros elsewhere.
fn scatter(nonzero: &Arr, mask: &[i64], shape: Vec<usize>) -> R<Arr> {
    let ones = mask.iter().filter(|&&m| m != 0).count();
    if ones != nonzero.numel() {
        return Err(format!(
            "mask has {ones} set bits for {} nonzero values",
            nonzero.numel()
        ));
    }
    fn fill<T: Copy + Default>(src: &[T], mask: &[i64]) -> Vec<T> {
        let mut it = src.iter();
        mask.iter()
            .map(|&m| {
                if m != 0 {
                    *it.next().expect("counted")
                } else {
                    T::default()
                }
            })
            .collect()
    }
    let data = match &nonzero.data {
        Data::F(v) => Data::F(fill(v, mask)),
        Data::I(v) => Data::I(fill(v, mask)),
    };
    Ok(Arr {
        elem: nonzero.elem,
        shape,
        data,
    })
}

/// The values of `dense` where `mask` is set, as a 1-D tensor.
fn masked(dense: &Arr, mask: &[i64]) -> Arr {
    fn pick<T: Copy>(src: &[T], mask: &[i64]) -> Vec<T> {
        src.iter()
            .zip(mask)
            .filter(|(_, &m)| m != 0)
            .map(|(v, _)| *v)
            .collect()
    }
    let data = match &dense.data {
        Data::F(v) => Data::F(pick(v, mask)),
        Data::I(v) => Data::I(pick(v, mask)),
    };
    let n = mask.iter().filter(|&&m| m != 0).count();
    Arr {
        elem: dense.elem,
        shape: vec![n],
        data,
    }
}

/// Calls `f(flat index in `shape`, multi-index)` for every element, in order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// iOS18 `constexpr_lut_to_dense`: `indices` uintN, `lut` `[blocks..., 2^N, vector]`.
fn lut_to_dense(indices: &Arr, lut: &Arr, vector_axis: Option<i64>) -> R<Arr> {
    let Elem::Int {
        bits,
        signed: false,
    } = indices.elem
    else {
        return Err(format!("indices must be unsigned, got {}", indices.elem));
    };
    let k = indices.shape.len();
    if lut.shape.len() != k + 2 {
        return Err(format!(
            "lut {:?} must have rank {} for indices {:?}",
            lut.shape,
            k + 2,
            indices.shape
        ));
    }
    let (palettes, vs) = (lut.shape[k], lut.shape[k + 1]);
    if palettes != 1usize << bits {
        return Err(format!("{palettes} lut entries for {bits}-bit indices"));
    }
    let mut blocks = Vec::with_capacity(k);
    for d in 0..k {
        if lut.shape[d] == 0 || indices.shape[d] % lut.shape[d] != 0 {
            return Err(format!(
                "lut {:?} does not divide indices {:?}",
                lut.shape, indices.shape
            ));
        }
        blocks.push(indices.shape[d] / lut.shape[d]);
    }
    let va = if vs > 1 {
        norm_axis(vector_axis.ok_or("vector palettes need `vector_axis`")?, k)?
    } else {
        0
    };
    let mut out_shape = indices.shape.clone();
    if vs > 1 {
        out_shape[va] *= vs;
    }
    let lstride = strides(&lut.shape[..k]);
    let ostride = strides(&out_shape);
    let idx = indices.ints()?;
    let n_out: usize = out_shape.iter().product();
    // Each index picks `vs` values from its block's palette; they go `vs` apart along
    // the vector axis.
    /// Calls its argument with (output position, palette position) for every output.
    type Visit<'a> = &'a dyn Fn(&mut dyn FnMut(usize, usize));
    fn gather<T: Copy + Default>(src: &[T], n_out: usize, each: Visit<'_>) -> Vec<T> {
        let mut out = vec![T::default(); n_out];
        each(&mut |o, l| out[o] = src[l]);
        out
    }
    let each = |put: &mut dyn FnMut(usize, usize)| {
        for_each_index(&indices.shape, |flat, i| {
            let block: usize = (0..k).map(|d| i[d] / blocks[d] * lstride[d]).sum();
            let base = (block * palettes + idx[flat] as usize) * vs;
            let o: usize = (0..k)
                .map(|d| if d == va { i[d] * vs } else { i[d] } * ostride[d])
                .sum();
            for v in 0..vs {
                put(o + v * ostride[va], base + v);
            }
        })
    };
    let data = match &lut.data {
        Data::F(v) => Data::F(gather(v, n_out, &each)),
        Data::I(v) => Data::I(gather(v, n_out, &each)),
    };
    Ok(Arr {
        elem: lut.elem,
        shape: out_shape,
        data,
    })
}

/// iOS18 `constexpr_blockwise_shift_scale`: `scale * (data - offset)` per block, the
/// block size on axis `d` being `data.shape[d] / scale.shape[d]`.
fn blockwise_shift_scale(data: &Arr, scale: &Arr, offset: Option<&Arr>) -> R<Arr> {
    let dst = scale.elem;
    if !dst.is_float() {
        return Err(format!("scale must be fp16 or fp32, got {dst}"));
    }
    let r = data.shape.len();
    if scale.shape.len() != r {
        return Err(format!(
            "scale {:?} and data {:?} differ in rank",
            scale.shape, data.shape
        ));
    }
    if let Some(o) = offset {
        if o.shape != scale.shape {
            return Err(format!(
                "offset {:?} is not shaped like scale {:?}",
                o.shape, scale.shape
            ));
        }
    }
    let mut blocks = Vec::with_capacity(r);
    for d in 0..r {
        if scale.shape[d] == 0 || data.shape[d] % scale.shape[d] != 0 {
            return Err(format!(
                "scale {:?} does not divide data {:?}",
                scale.shape, data.shape
            ));
        }
        blocks.push(data.shape[d] / scale.shape[d]);
    }
    let sstride = strides(&scale.shape);
    let (q, s) = (data.f32s(), scale.f32s());
    let off = offset.map(Arr::f32s);
    // Integer data and offsets subtract exactly; a float offset is rounded first.
    let round_diff = offset.is_some_and(|o| o.elem.is_float()) || data.elem.is_float();
    let mut out = vec![0f32; q.len()];
    for_each_index(&data.shape, |flat, i| {
        let kk: usize = (0..r).map(|d| i[d] / blocks[d] * sstride[d]).sum();
        let mut v = q[flat];
        if let Some(off) = &off {
            v -= off[kk];
            if round_diff {
                v = dst.round(v);
            }
        }
        out[flat] = dst.round(s[kk] * v);
    });
    Ok(Arr {
        elem: dst,
        shape: data.shape.clone(),
        data: Data::F(out),
    })
}

/// iOS16 `constexpr_affine_dequantize`: `scale * (q - zero_point)`, parameters scalar
/// or per index along `axis`.
fn affine_dequantize(q: &Arr, zp: &Arr, scale: &Arr, axis: i64) -> R<Arr> {
    if !scale.elem.is_float() {
        return Err(format!("scale must be fp16 or fp32, got {}", scale.elem));
    }
    let ax = norm_axis(axis, q.shape.len())?;
    let len = q.shape[ax];
    let inner: usize = q.shape[ax + 1..].iter().product();
    let at = |p: &Arr, what: &str| -> R<Vec<f32>> {
        match p.numel() {
            1 => Ok(p.f32s()),
            n if n == len => Ok(p.f32s()),
            n => Err(format!("{what} has {n} values for axis length {len}")),
        }
    };
    let (z, s) = (at(zp, "zero_point")?, at(scale, "scale")?);
    let pick = |v: &[f32], i: usize| {
        if v.len() == 1 {
            v[0]
        } else {
            v[(i / inner) % len]
        }
    };
    let out = q
        .f32s()
        .iter()
        .enumerate()
        .map(|(i, &x)| scale.elem.round((x - pick(&z, i)) * pick(&s, i)))
        .collect();
    Ok(Arr {
        elem: scale.elem,
        shape: q.shape.clone(),
        data: Data::F(out),
    })
}

fn value_ty(vt: Option<&pb::ValueType>) -> R<(Elem, Vec<usize>)> {
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

fn decode_value(v: &pb::Value, blobs: Option<&BlobReader<'_>>) -> R<Arr> {
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
                Some(shape) => {
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
                    lut_to_dense(&indices, &lut, None)?
                }
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
            "constexpr_lut_to_sparse" => {
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
                vec![mask, nz]
            }
            other => return Err(format!("`{other}` is not a constexpr op this reader knows")),
        })
    }
}

fn op_name(op: &pb::Operation) -> String {
    match op
        .attributes
        .get("name")
        .map(|v| super::decode::decode_value(v, None))
    {
        Some(Ok(Val::Str(s))) => s,
        _ => op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default(),
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
            op: op_name(op),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent packer: sets bit `nbits * i + b` for every set bit `b` of `v[i]`.
    fn pack(v: &[i64], nbits: u32) -> Vec<u8> {
        let nb = nbits as usize;
        let mut out = vec![0u8; (v.len() * nb).div_ceil(8)];
        for (i, &x) in v.iter().enumerate() {
            for b in 0..nb {
                if (x >> b) & 1 == 1 {
                    let bit = i * nb + b;
                    out[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        out
    }

    #[test]
    fn unpacks_lsb_first() {
        // 2-bit: [1, 2, 3, 0] -> 0b00_11_10_01.
        assert_eq!(
            unpack_bits(&[0b0011_1001], 2, 4, false).unwrap(),
            [1, 2, 3, 0]
        );
        // 1-bit.
        assert_eq!(
            unpack_bits(&[0b1000_0101, 0b1], 1, 9, false).unwrap(),
            [1, 0, 1, 0, 0, 0, 0, 1, 1]
        );
        // 4-bit: element 0 in the low nibble.
        assert_eq!(
            unpack_bits(&[0x21, 0x43], 4, 4, false).unwrap(),
            [1, 2, 3, 4]
        );
        // int4, two's complement: 0xF = -1, 0x8 = -8, 0x7 = 7.
        assert_eq!(unpack_bits(&[0x8F, 0x07], 4, 3, true).unwrap(), [-1, -8, 7]);
        // 3-bit values cross bytes: 5, 6, 7 -> bits 101 110 111 (LSB first) =
        // byte 0 = 0b11_110_101, byte 1 = 0b0000000_1.
        assert_eq!(
            unpack_bits(&[0b1111_0101, 0b0000_0001], 3, 3, false).unwrap(),
            [5, 6, 7]
        );
        // 6-bit: 63, 1, 42.
        assert_eq!(
            unpack_bits(&pack(&[63, 1, 42], 6), 6, 3, false).unwrap(),
            [63, 1, 42]
        );
        // uint32 as bytes is little-endian.
        assert_eq!(
            unpack_bits(&[1, 2, 0, 0, 0xff, 0xff, 0xff, 0xff], 32, 2, false).unwrap(),
            [0x201, 0xffff_ffff]
        );
        // int8.
        assert_eq!(
            unpack_bits(&[0x80, 0x7f, 0xff], 8, 3, true).unwrap(),
            [-128, 127, -1]
        );
        // Too short.
        assert!(unpack_bits(&[0], 3, 3, false).is_none());
    }

    #[test]
    fn round_trips_every_width() {
        for nbits in [1u32, 2, 3, 4, 6, 8, 16, 32] {
            for n in [1usize, 5, 7, 8, 13, 64] {
                let v: Vec<i64> = (0..n as i64)
                    .map(|i| (i * 2_654_435_761) & ((1i64 << nbits) - 1))
                    .collect();
                assert_eq!(unpack_bits(&pack(&v, nbits), nbits, n, false).unwrap(), v);
                // Signed: the same bits read as two's complement.
                let s: Vec<i64> = v
                    .iter()
                    .map(|&x| {
                        if x >> (nbits - 1) == 1 {
                            x - (1 << nbits)
                        } else {
                            x
                        }
                    })
                    .collect();
                assert_eq!(unpack_bits(&pack(&v, nbits), nbits, n, true).unwrap(), s);
            }
        }
    }

    fn ints(elem: Elem, shape: &[usize], v: &[i64]) -> Arr {
        Arr {
            elem,
            shape: shape.to_vec(),
            data: Data::I(v.to_vec()),
        }
    }

    fn floats(shape: &[usize], v: &[f32]) -> Arr {
        Arr {
            elem: Elem::F32,
            shape: shape.to_vec(),
            data: Data::F(v.to_vec()),
        }
    }

    const U2: Elem = Elem::Int {
        bits: 2,
        signed: false,
    };

    #[test]
    fn grouped_lut() {
        // coremltools' docstring, case 1: two 2-bit palettes over the first axis.
        let idx = ints(U2, &[6, 2], &[2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3]);
        let lut = floats(&[2, 1, 4, 1], &[1., 5., 9., 13., 2., 10., 18., 26.]);
        let out = lut_to_dense(&idx, &lut, None).unwrap();
        assert_eq!(out.shape, [6, 2]);
        assert_eq!(
            out.data,
            Data::F(vec![9., 13., 13., 1., 5., 1., 26., 2., 18., 10., 2., 26.])
        );
    }

    #[test]
    fn vector_lut() {
        // Case 2: 1-bit indices [2, 2, 2], vectors of 3 (a = 1, 2, 3; b = 4, 5, 6).
        let u1 = Elem::Int {
            bits: 1,
            signed: false,
        };
        let idx = ints(u1, &[2, 2, 2], &[0, 0, 1, 0, 1, 1, 0, 0]);
        let lut = floats(&[1, 1, 1, 2, 3], &[1., 2., 3., 4., 5., 6.]);
        let out = lut_to_dense(&idx, &lut, Some(1)).unwrap();
        assert_eq!(out.shape, [2, 6, 2]);
        #[rustfmt::skip]
        let want = [1., 1., 2., 2., 3., 3., 4., 1., 5., 2., 6., 3.,
                    4., 4., 5., 5., 6., 6., 1., 1., 2., 2., 3., 3.];
        assert_eq!(out.data, Data::F(want.to_vec()));
        let out = lut_to_dense(&idx, &lut, Some(-1)).unwrap();
        assert_eq!(out.shape, [2, 2, 6]);
        #[rustfmt::skip]
        let want = [1., 2., 3., 1., 2., 3., 4., 5., 6., 1., 2., 3.,
                    4., 5., 6., 4., 5., 6., 1., 2., 3., 1., 2., 3.];
        assert_eq!(out.data, Data::F(want.to_vec()));
    }

    #[test]
    fn blockwise_and_sparse() {
        let i8e = Elem::Int {
            bits: 8,
            signed: true,
        };
        // Blocks of 2 along the last axis, per row on the first.
        let data = ints(i8e, &[2, 4], &[1, 2, 3, 4, -1, -2, -3, -4]);
        let scale = floats(&[2, 2], &[1., 10., 100., 1000.]);
        let off = ints(i8e, &[2, 2], &[0, 1, 0, -1]);
        let out = blockwise_shift_scale(&data, &scale, Some(&off)).unwrap();
        assert_eq!(
            out.data,
            Data::F(vec![1., 2., 20., 30., -100., -200., -2000., -3000.])
        );
        // The sparse-form op agrees with dense decoding restricted to the mask.
        let mask = [1, 0, 1, 1, 0, 0, 1, 0];
        let nz = masked(&data, &mask);
        assert_eq!(nz.data, Data::I(vec![1, 3, 4, -3]));
        let dense = scatter(&nz, &mask, vec![2, 4]).unwrap();
        assert_eq!(dense.data, Data::I(vec![1, 0, 3, 4, 0, 0, -3, 0]));
        assert!(scatter(&nz, &[1, 0], vec![2]).is_err());
    }

    fn ty(code: i32, shape: &[usize]) -> Option<pb::ValueType> {
        Some(pb::ValueType {
            r#type: Some(pb::value_type::Type::TensorType(pb::TensorType {
                data_type: code,
                rank: shape.len() as i64,
                dimensions: shape
                    .iter()
                    .map(|&n| pb::Dimension {
                        dimension: Some(pb::dimension::Dimension::Constant(
                            pb::dimension::ConstantDimension { size: n as u64 },
                        )),
                    })
                    .collect(),
                attributes: Default::default(),
            })),
        })
    }

    fn immediate_bytes(code: i32, shape: &[usize], bytes: Vec<u8>) -> pb::Value {
        use pb::value::immediate_value::Value as IV;
        pb::Value {
            r#type: ty(code, shape),
            value: Some(pb::value::Value::ImmediateValue(
                pb::value::ImmediateValue {
                    value: Some(IV::Tensor(pb::TensorValue {
                        value: Some(pb::tensor_value::Value::Bytes(
                            pb::tensor_value::RepeatedBytes { values: bytes },
                        )),
                    })),
                },
            )),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_packed_values() {
        // Immediate int4 [2, 2] = [-1, 2, -8, 7]: bit-packed in `bytes`.
        let v = immediate_bytes(25, &[2, 2], vec![0x2F, 0x78]);
        let a = decode_value(&v, None).unwrap();
        assert_eq!(a.shape, [2, 2]);
        assert_eq!(a.data, Data::I(vec![-1, 2, -8, 7]));
        // A byte too many or too few is refused.
        assert!(decode_value(&immediate_bytes(25, &[2, 2], vec![0x2F]), None).is_err());
        assert!(decode_value(&immediate_bytes(35, &[3], vec![1, 2, 3]), None).is_err());
        // uint32 immediates are little-endian bytes too.
        let v = immediate_bytes(33, &[2], vec![32, 0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(decode_value(&v, None).unwrap().data, Data::I(vec![32, 257]));

        // A weight file, written by hand: five uint3 values (15 bits: 2 bytes, 1 bit
        // of padding) in a UInt3 (12) blob whose record is at 64.
        let vals = [1i64, 2, 3, 4, 7];
        let mut file = vec![0u8; 128];
        file[0] = 1;
        file[4] = 2;
        file[64..68].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        file[68..72].copy_from_slice(&12u32.to_le_bytes());
        file[72..80].copy_from_slice(&2u64.to_le_bytes());
        file[80..88].copy_from_slice(&128u64.to_le_bytes());
        file[88..96].copy_from_slice(&1u64.to_le_bytes());
        file.extend(pack(&vals, 3));
        let blob = |code: i32, n: usize| pb::Value {
            r#type: ty(code, &[n]),
            value: Some(pb::value::Value::BlobFileValue(pb::value::BlobFileValue {
                file_name: WEIGHT_FILE_REF.into(),
                offset: 64,
            })),
            ..Default::default()
        };
        let r = BlobReader::new(&file).unwrap();
        assert_eq!(
            decode_value(&blob(39, 5), Some(&r)).unwrap().data,
            Data::I(vals.to_vec())
        );
        // Declared as uint4 (another blob type) or as four values (other padding).
        assert!(decode_value(&blob(35, 4), Some(&r)).is_err());
        assert!(decode_value(&blob(39, 4), Some(&r)).is_err());
        file[88] = 0;
        let r = BlobReader::new(&file).unwrap();
        assert!(decode_value(&blob(39, 5), Some(&r)).is_err());
    }

    #[test]
    fn affine_per_axis() {
        let u8e = Elem::Int {
            bits: 8,
            signed: false,
        };
        let q = ints(u8e, &[2, 3], &[0, 1, 2, 10, 11, 12]);
        let zp = ints(u8e, &[2], &[1, 10]);
        let s = floats(&[2], &[0.5, 2.0]);
        let out = affine_dequantize(&q, &zp, &s, 0).unwrap();
        assert_eq!(out.data, Data::F(vec![-0.5, 0., 0.5, 0., 2., 4.]));
        let zp1 = ints(u8e, &[], &[1]);
        let s3 = floats(&[3], &[1., 2., 3.]);
        let out = affine_dequantize(&q, &zp1, &s3, 1).unwrap();
        assert_eq!(out.data, Data::F(vec![-1., 0., 3., 9., 20., 33.]));
    }
}

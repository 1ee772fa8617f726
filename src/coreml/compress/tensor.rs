//! One weight in compressed form: compressing it by the chosen method, and the dense
//! values and stored size of the result.

use super::select::{shape_misfit, Candidate};
use super::{linear, palette, CompressError, CompressOptions, Method};
use crate::coreml::mil::types::strides;
use crate::coreml::mil::DType;
use crate::coreml::target::Target;

/// How a compressed tensor's values are encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// `data * scale`, symmetric (zero point 0): `bits` 8 or 4; `scale_shape` has the
    /// tensor's rank, each axis dividing the tensor's (the block sizes).
    Linear {
        bits: u32,
        data: Vec<i8>,
        scale: Vec<f32>,
        scale_shape: Vec<usize>,
    },
    /// `lut[g][index]`: `groups` palettes of `2^nbits` entries along axis 0 (1 = one per
    /// tensor), `lut` concatenated in group order.
    Palette {
        nbits: u32,
        indices: Vec<u8>,
        lut: Vec<f32>,
        groups: usize,
    },
}

/// A weight in compressed form: the dense tensor is `decode()`, of type `dtype` (fp16
/// or fp32; scales and palettes are stored in it).
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub encoding: Encoding,
}

impl CompressedTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The dense values the constexpr ops decode to (rounded to `dtype`, as f32).
    pub fn decode(&self) -> Vec<f32> {
        match &self.encoding {
            Encoding::Linear {
                data,
                scale,
                scale_shape,
                ..
            } => {
                let wstrides = strides(&self.shape);
                let sstrides = strides(scale_shape);
                let block: Vec<usize> = self
                    .shape
                    .iter()
                    .zip(scale_shape)
                    .map(|(d, s)| d / s)
                    .collect();
                linear::decode(
                    data,
                    |i| {
                        let mut rest = i;
                        let mut si = 0;
                        for a in 0..self.shape.len() {
                            let idx = rest / wstrides[a];
                            rest %= wstrides[a];
                            si += (idx / block[a]) * sstrides[a];
                        }
                        scale[si]
                    },
                    self.dtype,
                )
            }
            Encoding::Palette {
                nbits,
                indices,
                lut,
                groups,
            } => {
                let k = 1usize << nbits;
                let per_group = self.numel() / groups;
                indices
                    .iter()
                    .enumerate()
                    .map(|(i, &ix)| lut[(i / per_group) * k + ix as usize])
                    .collect()
            }
        }
    }

    /// Bytes of the values stored for this tensor in the given target's encoding:
    /// packed data or indices, scales or palettes (and iOS16's zero points).
    pub fn stored_bytes(&self, target: Target) -> u64 {
        let esize = if self.dtype == DType::F16 { 2 } else { 4 };
        let n = self.numel();
        (match &self.encoding {
            Encoding::Linear { bits, scale, .. } => {
                let data = (n * *bits as usize).div_ceil(8);
                let zp = if target < Target::Ios18 {
                    scale.len()
                } else {
                    0
                };
                data + scale.len() * esize + zp
            }
            Encoding::Palette { nbits, lut, .. } => {
                (n * *nbits as usize).div_ceil(8) + lut.len() * esize
            }
        }) as u64
    }
}

/// Compresses one weight (float32 `values` of `shape`, row-major; axis 0 = output
/// channels, axis 1 = input channels) into `dtype` (fp16 or fp32) scales or palettes.
pub fn compress(
    name: &str,
    shape: &[usize],
    values: &[f32],
    opts: &CompressOptions,
    dtype: DType,
) -> Result<CompressedTensor, CompressError> {
    let shape_err = |msg: String| CompressError::Shape {
        name: name.into(),
        msg,
    };
    let n: usize = shape.iter().product();
    if values.len() != n || shape.len() < 2 || n == 0 {
        return Err(shape_err(format!(
            "{} values for shape {shape:?} (rank 2 or more, not empty)",
            values.len()
        )));
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(CompressError::NonFinite {
            name: name.into(),
            index,
            value,
        });
    }
    let c = Candidate {
        name: name.into(),
        shape: shape.to_vec(),
    };
    if let Some(why) = shape_misfit(&c, opts) {
        return Err(shape_err(why));
    }
    Ok(CompressedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
        encoding: encode(shape, values, opts, dtype),
    })
}

/// `values` encoded by `opts.method`, once [`compress`] has checked that they are finite
/// and that `shape` fits the method.
fn encode(shape: &[usize], values: &[f32], opts: &CompressOptions, dtype: DType) -> Encoding {
    let n = values.len();
    let rows = shape[0];
    match opts.method {
        Method::Int8 => {
            let (data, scale) = linear::int8_per_channel(values, rows, dtype);
            let mut scale_shape = vec![1; shape.len()];
            scale_shape[0] = rows;
            Encoding::Linear {
                bits: 8,
                data,
                scale,
                scale_shape,
            }
        }
        Method::Int4 => {
            let cin = shape[1];
            let inner: usize = shape[2..].iter().product();
            let b = opts.block();
            let (data, scale) = linear::int4_per_block(values, rows, cin, inner, b, dtype);
            let mut scale_shape = vec![1; shape.len()];
            scale_shape[0] = rows;
            scale_shape[1] = cin / b;
            Encoding::Linear {
                bits: 4,
                data,
                scale,
                scale_shape,
            }
        }
        Method::Palette(nbits) => {
            let g = opts.group_size.unwrap_or(rows);
            let groups = rows / g;
            let per = n / groups;
            let mut indices = Vec::with_capacity(n);
            let mut lut = Vec::with_capacity(groups << nbits);
            for chunk in values.chunks_exact(per) {
                let p = palette::palettize(chunk, nbits, dtype);
                indices.extend(p.indices);
                lut.extend(p.lut);
            }
            Encoding::Palette {
                nbits,
                indices,
                lut,
                groups,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coreml::compress::values;

    #[test]
    fn decode_matches_encoding() {
        let shape = [8usize, 64];
        let v = values(512);
        let mut o = CompressOptions::new(Method::Int4);
        o.min_elements = 0;
        let t = compress("w", &shape, &v, &o, DType::F16).unwrap();
        let d = t.decode();
        let Encoding::Linear { data, scale, .. } = &t.encoding else {
            panic!()
        };
        for i in 0..512 {
            let s = scale[(i / 64) * 2 + (i % 64) / 32];
            assert_eq!(d[i], half::f16::from_f32(f32::from(data[i]) * s).to_f32());
        }
        o.method = Method::Palette(2);
        o.block_size = None;
        o.group_size = Some(4);
        let t = compress("w", &shape, &v, &o, DType::F32).unwrap();
        let Encoding::Palette {
            lut,
            indices,
            groups,
            ..
        } = &t.encoding
        else {
            panic!()
        };
        assert_eq!((*groups, lut.len()), (2, 8));
        let d = t.decode();
        assert_eq!(d[300], lut[4 + indices[300] as usize]);
        assert_eq!(t.stored_bytes(Target::Ios18), 128 + 32);
    }

    #[test]
    fn non_finite_is_named() {
        let mut v = values(64);
        v[9] = f32::NAN;
        let o = CompressOptions::new(Method::Int8);
        let e = compress("blocks.1.attn.qkv.weight", &[8, 8], &v, &o, DType::F16).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("blocks.1.attn.qkv.weight") && msg.contains("element 9"),
            "{msg}"
        );
    }
}

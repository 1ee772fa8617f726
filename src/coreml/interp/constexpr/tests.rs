//! The decompressions against coremltools' documented examples and an independent
//! bit packer.

use super::arr::{Arr, Data};
use super::elem::{unpack_bits, Elem};
use super::lut::lut_to_dense;
use super::quant::{affine_dequantize, blockwise_shift_scale};
use super::sparse::{masked, scatter};
use super::value::decode_value;
use crate::coreml::blob::{BlobReader, WEIGHT_FILE_REF};
use crate::coreml::proto::mil as pb;

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

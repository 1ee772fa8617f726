//! Element types of compressed weights (floats and integers of 1 to 64 bits) and the
//! unpacking of sub-byte integers.

use half::f16;

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

    pub(super) fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::F32)
    }

    /// Rounds a computed value to this (float) type's storage.
    pub(super) fn round(self, v: f32) -> f32 {
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

//! Sub-byte packing as Core ML stores it: element `i` occupies bits `nbits * i ..
//! nbits * (i + 1)` of the byte stream, least significant bit first (so 3- and 6-bit
//! values cross byte boundaries and element 0 of 4-bit data is the low nibble). Unused
//! trailing bits are zero.

/// Packs `values` (each below `2^nbits`, `nbits` in 1..=8) into `ceil(n * nbits / 8)`
/// bytes.
pub fn pack(values: &[u8], nbits: u32) -> Vec<u8> {
    assert!((1..=8).contains(&nbits), "nbits {nbits}");
    if nbits == 8 {
        return values.to_vec();
    }
    let mut out = vec![0u8; (values.len() * nbits as usize).div_ceil(8)];
    let mask = (1u16 << nbits) - 1;
    let mut bit = 0usize;
    for &v in values {
        debug_assert!(u16::from(v) <= mask, "{v} does not fit {nbits} bits");
        let w = (u16::from(v) & mask) << (bit % 8);
        let byte = bit / 8;
        out[byte] |= w as u8;
        if w > 0xff {
            out[byte + 1] |= (w >> 8) as u8;
        }
        bit += nbits as usize;
    }
    out
}

/// The first `n` `nbits`-bit values of `bytes`.
pub fn unpack(bytes: &[u8], nbits: u32, n: usize) -> Vec<u8> {
    assert!((1..=8).contains(&nbits), "nbits {nbits}");
    assert!(
        bytes.len() * 8 >= n * nbits as usize,
        "{} bytes hold fewer than {n} {nbits}-bit values",
        bytes.len()
    );
    if nbits == 8 {
        return bytes[..n].to_vec();
    }
    let mask = (1u16 << nbits) - 1;
    (0..n)
        .map(|i| {
            let bit = i * nbits as usize;
            let (byte, shift) = (bit / 8, bit % 8);
            let lo = u16::from(bytes[byte]);
            let hi = bytes.get(byte + 1).map_or(0, |&b| u16::from(b));
            (((lo | (hi << 8)) >> shift) & mask) as u8
        })
        .collect()
}

/// Packs int4 values (-8..=7) as two's complement nibbles, element 0 in the low nibble.
pub fn pack_i4(values: &[i8]) -> Vec<u8> {
    let nibbles: Vec<u8> = values
        .iter()
        .map(|&v| {
            debug_assert!((-8..=7).contains(&v), "{v} is not int4");
            (v as u8) & 0x0f
        })
        .collect();
    pack(&nibbles, 4)
}

/// The first `n` int4 values of `bytes`.
pub fn unpack_i4(bytes: &[u8], n: usize) -> Vec<i8> {
    unpack(bytes, 4, n)
        .into_iter()
        .map(|u| ((u << 4) as i8) >> 4)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_width() {
        for nbits in [1u32, 2, 3, 4, 6, 8] {
            for n in [0usize, 1, 2, 3, 5, 7, 8, 9, 31, 64, 101] {
                let max = (1u32 << nbits) - 1;
                let v: Vec<u8> = (0..n)
                    .map(|i| ((i as u32).wrapping_mul(2654435761) >> 7) as u8 & max as u8)
                    .collect();
                let p = pack(&v, nbits);
                assert_eq!(p.len(), (n * nbits as usize).div_ceil(8));
                assert_eq!(unpack(&p, nbits, n), v, "{nbits} bits, {n} values");
            }
        }
    }

    #[test]
    fn layout_is_lsb_first() {
        // The example of coremltools' constexpr_lut_to_dense documentation: 2 bits,
        // indices [0, 3, 2, 1, 3] -> 0b01_10_11_00, 0b000000_11.
        assert_eq!(pack(&[0, 3, 2, 1, 3], 2), vec![0b0110_1100, 0b0000_0011]);
        // 6-bit values cross bytes: 1, 2, 63 -> 0x81, 0xf0, 0x03 (what coremltools writes).
        assert_eq!(pack(&[1, 2, 63], 6), vec![0x81, 0xf0, 0x03]);
        assert_eq!(pack(&[1, 2, 3, 15, 7], 4), vec![0x21, 0xf3, 0x07]);
    }

    #[test]
    fn int4_two_complement() {
        let v: Vec<i8> = (-8..=7).chain([-1, 0, 7]).collect();
        let p = pack_i4(&v);
        assert_eq!(unpack_i4(&p, v.len()), v);
        assert_eq!(pack_i4(&[-8, 7, -1]), vec![0x78, 0x0f]);
    }
}

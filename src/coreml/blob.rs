//! MIL blob storage, version 2 (`weights/weight.bin`): a 64-byte header, then per blob
//! a 64-byte metadata record followed by its data, every record 64-byte aligned.
//!
//! The writer streams: each blob goes to the output as soon as it is handed over, so a
//! model is never held in memory as a whole. Identical blobs (same dtype and content)
//! are stored once; the hash that finds them also feeds a digest of all weights, which
//! the package uses for its content-derived identifiers.

use std::collections::HashMap;
use std::io::{self, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

pub const HEADER_SIZE: u64 = 64;
pub const RECORD_SIZE: u64 = 64;
pub const ALIGN: u64 = 64;
pub const SENTINEL: u32 = 0xDEAD_BEEF;
pub const VERSION: u32 = 2;
/// How a program refers to the weight file of its own package.
pub const WEIGHT_FILE_REF: &str = "@model_path/weights/weight.bin";

/// Element type codes of the blob format (not the same numbers as MIL's `DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BlobDType {
    F16 = 1,
    F32 = 2,
    U8 = 3,
    I8 = 4,
    Bf16 = 5,
    I16 = 6,
    U16 = 7,
    I4 = 8,
    U1 = 9,
    U2 = 10,
    U4 = 11,
    U3 = 12,
    U6 = 13,
    I32 = 14,
    U32 = 15,
}

impl BlobDType {
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => BlobDType::F16,
            2 => BlobDType::F32,
            3 => BlobDType::U8,
            4 => BlobDType::I8,
            5 => BlobDType::Bf16,
            6 => BlobDType::I16,
            7 => BlobDType::U16,
            8 => BlobDType::I4,
            9 => BlobDType::U1,
            10 => BlobDType::U2,
            11 => BlobDType::U4,
            12 => BlobDType::U3,
            13 => BlobDType::U6,
            14 => BlobDType::I32,
            15 => BlobDType::U32,
            _ => return None,
        })
    }

    /// The blob type holding MIL values of `dtype`, if blobs can hold them.
    pub fn of(dtype: crate::coreml::mil::DType) -> Option<Self> {
        use crate::coreml::mil::DType as D;
        Some(match dtype {
            D::F16 => BlobDType::F16,
            D::F32 => BlobDType::F32,
            D::U8 => BlobDType::U8,
            D::I8 => BlobDType::I8,
            D::I4 => BlobDType::I4,
            D::U1 => BlobDType::U1,
            D::U2 => BlobDType::U2,
            D::U3 => BlobDType::U3,
            D::U4 => BlobDType::U4,
            D::U6 => BlobDType::U6,
            D::I32 => BlobDType::I32,
            D::U32 => BlobDType::U32,
            _ => return None,
        })
    }

    /// Bits per element.
    pub fn bits(self) -> u32 {
        match self {
            BlobDType::U1 => 1,
            BlobDType::U2 => 2,
            BlobDType::U3 => 3,
            BlobDType::I4 | BlobDType::U4 => 4,
            BlobDType::U6 => 6,
            BlobDType::U8 | BlobDType::I8 => 8,
            BlobDType::F16 | BlobDType::Bf16 | BlobDType::I16 | BlobDType::U16 => 16,
            BlobDType::F32 | BlobDType::I32 | BlobDType::U32 => 32,
        }
    }

    /// Bytes per element of whole-byte types (sub-byte types: use [`BlobDType::byte_len`]).
    pub fn elem_size(self) -> usize {
        self.bits().div_ceil(8) as usize
    }

    /// Size of `n` elements, bit-packed for sub-byte types: ceil(n * bits / 8).
    pub fn byte_len(self, n: usize) -> usize {
        (n * self.bits() as usize).div_ceil(8)
    }

    /// Unused bits at the end of `n` packed elements (the record's
    /// `padding_size_in_bits`): 0 for whole-byte types, else 0..8.
    pub fn padding_bits(self, n: usize) -> u64 {
        let used = (n * self.bits() as usize) % 8;
        if used == 0 {
            0
        } else {
            (8 - used) as u64
        }
    }
}

/// Somewhere blobs can be stored: returns the offset of the blob's metadata record,
/// which is what a program's `BlobFileValue.offset` holds.
pub trait BlobSink {
    /// Stores `data` with the given count of unused trailing bits (sub-byte types).
    fn put_padded(&mut self, dtype: BlobDType, data: &[u8], padding_bits: u64) -> io::Result<u64>;

    /// Stores whole-byte data.
    fn put(&mut self, dtype: BlobDType, data: &[u8]) -> io::Result<u64> {
        self.put_padded(dtype, data, 0)
    }

    /// Stores `n` elements of `dtype`, bit-packed when sub-byte (`data` must be
    /// [`BlobDType::byte_len`] bytes).
    fn put_elems(&mut self, dtype: BlobDType, n: usize, data: &[u8]) -> io::Result<u64> {
        if data.len() != dtype.byte_len(n) {
            return Err(io::Error::other(format!(
                "{n} elements of {dtype:?} take {} bytes, got {}",
                dtype.byte_len(n),
                data.len()
            )));
        }
        self.put_padded(dtype, data, dtype.padding_bits(n))
    }
}

/// Counts of what a writer stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobStats {
    /// Blobs physically stored.
    pub stored: usize,
    /// Blobs handed over that were identical to one already stored.
    pub deduplicated: usize,
    /// Size of the file.
    pub bytes: u64,
    /// SHA-256 over the stored blobs' digests, in order: identifies the weights.
    pub digest: [u8; 32],
}

pub struct BlobWriter<W: Write + Seek> {
    out: W,
    /// End of the data written so far.
    pos: u64,
    seen: HashMap<(BlobDType, u64, [u8; 32]), u64>,
    stats: BlobStats,
    all: Sha256,
}

const ZEROS: [u8; 64] = [0; 64];

impl<W: Write + Seek> BlobWriter<W> {
    /// Starts a blob file at the current start of `out` (its header's count is patched
    /// in by [`BlobWriter::finish`]).
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&header(0))?;
        Ok(BlobWriter {
            out,
            pos: HEADER_SIZE,
            seen: HashMap::new(),
            stats: BlobStats::default(),
            all: Sha256::new(),
        })
    }

    /// Writes the final blob count into the header and returns the output.
    pub fn finish(mut self) -> io::Result<(W, BlobStats)> {
        let count = u32::try_from(self.stats.stored)
            .map_err(|_| io::Error::other("more than 2^32 blobs"))?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header(count))?;
        self.out.seek(SeekFrom::Start(self.pos))?;
        self.out.flush()?;
        self.stats.bytes = self.pos;
        self.stats.digest = self.all.finalize().into();
        Ok((self.out, self.stats))
    }
}

fn header(count: u32) -> [u8; HEADER_SIZE as usize] {
    let mut h = [0u8; HEADER_SIZE as usize];
    h[0..4].copy_from_slice(&count.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h
}

impl<W: Write + Seek> BlobSink for BlobWriter<W> {
    fn put_padded(&mut self, dtype: BlobDType, data: &[u8], padding_bits: u64) -> io::Result<u64> {
        if padding_bits >= 8 {
            return Err(io::Error::other(format!(
                "padding of {padding_bits} bits (must be below 8)"
            )));
        }
        let hash: [u8; 32] = Sha256::digest(data).into();
        if let Some(&offset) = self.seen.get(&(dtype, padding_bits, hash)) {
            self.stats.deduplicated += 1;
            return Ok(offset);
        }
        // Zero-fill up to the next aligned offset: the gap after the previous blob.
        let record = self.pos.next_multiple_of(ALIGN);
        self.out.write_all(&ZEROS[..(record - self.pos) as usize])?;
        let data_offset = record + RECORD_SIZE;
        let mut rec = [0u8; RECORD_SIZE as usize];
        rec[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        rec[4..8].copy_from_slice(&(dtype as u32).to_le_bytes());
        rec[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        rec[16..24].copy_from_slice(&data_offset.to_le_bytes());
        // Bytes 24..32: unused bits at the end of sub-byte data.
        rec[24..32].copy_from_slice(&padding_bits.to_le_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(data)?;
        self.pos = data_offset + data.len() as u64;
        self.seen.insert((dtype, padding_bits, hash), record);
        self.stats.stored += 1;
        self.all.update((dtype as u32).to_le_bytes());
        if padding_bits != 0 {
            self.all.update(padding_bits.to_le_bytes());
        }
        self.all.update(hash);
        Ok(record)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("weight file too short for its header ({0} bytes)")]
    Truncated(usize),
    #[error("weight file version {0} is not 2")]
    Version(u32),
    #[error("no blob record at offset {0}: sentinel is {1:#x}, not 0xdeadbeef")]
    Sentinel(u64, u32),
    #[error("blob at offset {offset} is {got:?}, declared {want:?}")]
    DType {
        offset: u64,
        got: Option<BlobDType>,
        want: BlobDType,
    },
    #[error("blob at offset {offset} holds {got} bytes, its declared type needs {want}")]
    Size { offset: u64, got: u64, want: u64 },
    #[error("blob at offset {offset} declares {got} padding bits, its element count needs {want}")]
    Padding { offset: u64, got: u64, want: u64 },
    #[error("blob at offset {0} points outside the file")]
    OutOfRange(u64),
}

/// Reads blobs out of a whole weight file held in memory (or mapped).
pub struct BlobReader<'a> {
    bytes: &'a [u8],
}

impl<'a> BlobReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, BlobError> {
        if bytes.len() < HEADER_SIZE as usize {
            return Err(BlobError::Truncated(bytes.len()));
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(BlobError::Version(version));
        }
        Ok(BlobReader { bytes })
    }

    pub fn count(&self) -> u32 {
        u32::from_le_bytes(self.bytes[0..4].try_into().expect("4 bytes"))
    }

    /// The data of the blob whose record is at `offset`, checked against the dtype and
    /// byte size the program declares for it.
    pub fn read(
        &self,
        offset: u64,
        want: BlobDType,
        want_bytes: u64,
    ) -> Result<&'a [u8], BlobError> {
        let rec = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..o.checked_add(RECORD_SIZE as usize)?))
            .ok_or(BlobError::OutOfRange(offset))?;
        let u32_at = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != SENTINEL {
            return Err(BlobError::Sentinel(offset, u32_at(0)));
        }
        let got = BlobDType::from_code(u32_at(4));
        if got != Some(want) {
            return Err(BlobError::DType { offset, got, want });
        }
        let size = u64_at(8);
        if size != want_bytes {
            return Err(BlobError::Size {
                offset,
                got: size,
                want: want_bytes,
            });
        }
        let start = u64_at(16);
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(start.saturating_add(size)).ok())
            .and_then(|(s, e)| self.bytes.get(s..e))
            .ok_or(BlobError::OutOfRange(offset))
    }
}

impl<'a> BlobReader<'a> {
    /// The data of `n` elements of `want` (bit-packed when sub-byte) at `offset`,
    /// checking the declared size and padding bits.
    pub fn read_elems(
        &self,
        offset: u64,
        want: BlobDType,
        n: usize,
    ) -> Result<&'a [u8], BlobError> {
        let data = self.read(offset, want, want.byte_len(n) as u64)?;
        let pad = self.padding_bits(offset)?;
        if pad != want.padding_bits(n) {
            return Err(BlobError::Padding {
                offset,
                got: pad,
                want: want.padding_bits(n),
            });
        }
        Ok(data)
    }

    /// The `padding_size_in_bits` field of the record at `offset`.
    pub fn padding_bits(&self, offset: u64) -> Result<u64, BlobError> {
        let rec = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..o.checked_add(RECORD_SIZE as usize)?))
            .ok_or(BlobError::OutOfRange(offset))?;
        Ok(u64::from_le_bytes(rec[24..32].try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn layout_and_dedupe() {
        let mut w = BlobWriter::new(Cursor::new(Vec::new())).unwrap();
        let a = w.put(BlobDType::F32, &[1u8; 40]).unwrap();
        let b = w.put(BlobDType::F16, &[2u8; 10]).unwrap();
        let c = w.put(BlobDType::F32, &[1u8; 40]).unwrap();
        // Same bytes, other dtype: a separate blob.
        let d = w.put(BlobDType::F16, &[1u8; 40]).unwrap();
        let (out, stats) = w.finish().unwrap();
        let bytes = out.into_inner();
        assert_eq!((a, b, c, d), (64, 192, 64, 320));
        assert_eq!(stats.stored, 3);
        assert_eq!(stats.deduplicated, 1);
        // No padding after the last blob.
        assert_eq!(bytes.len(), 320 + 64 + 40);
        let r = BlobReader::new(&bytes).unwrap();
        assert_eq!(r.count(), 3);
        assert_eq!(r.read(192, BlobDType::F16, 10).unwrap(), &[2u8; 10]);
        assert!(matches!(
            r.read(192, BlobDType::F32, 10),
            Err(BlobError::DType { .. })
        ));
        assert!(matches!(
            r.read(100, BlobDType::F16, 10),
            Err(BlobError::Sentinel(..))
        ));
    }

    #[test]
    fn sub_byte_records() {
        assert_eq!(BlobDType::U4.byte_len(5), 3);
        assert_eq!(BlobDType::U4.padding_bits(5), 4);
        assert_eq!(BlobDType::U6.byte_len(3), 3);
        assert_eq!(BlobDType::U6.padding_bits(3), 6);
        assert_eq!(BlobDType::U2.padding_bits(4), 0);
        assert_eq!(BlobDType::I8.padding_bits(3), 0);
        let mut w = BlobWriter::new(Cursor::new(Vec::new())).unwrap();
        let a = w.put_elems(BlobDType::U4, 5, &[0x21, 0xf3, 0x07]).unwrap();
        // Same bytes, other element count (other padding): stored again.
        let b = w.put_elems(BlobDType::U4, 6, &[0x21, 0xf3, 0x07]).unwrap();
        assert!(w.put_elems(BlobDType::U4, 7, &[0x21, 0xf3]).is_err());
        let (out, stats) = w.finish().unwrap();
        assert_eq!(stats.stored, 2);
        let bytes = out.into_inner();
        // The layout coremltools' own writer produces for these values.
        assert_eq!(
            &bytes[a as usize..a as usize + 32],
            &[
                0xef, 0xbe, 0xad, 0xde, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0,
                0, 0, 4, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let r = BlobReader::new(&bytes).unwrap();
        assert_eq!(
            r.read_elems(a, BlobDType::U4, 5).unwrap(),
            &[0x21, 0xf3, 0x07]
        );
        assert_eq!(
            r.read_elems(b, BlobDType::U4, 6).unwrap(),
            &[0x21, 0xf3, 0x07]
        );
        assert!(matches!(
            r.read_elems(a, BlobDType::U4, 6),
            Err(BlobError::Padding { .. })
        ));
    }
}

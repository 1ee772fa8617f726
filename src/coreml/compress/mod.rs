//! Weight compression for export (`pipeline export --compress METHOD`): symmetric
//! linear quantization (per-channel int8, per-block int4) and k-means palettes (8, 6, 4
//! or 2 bits, per tensor or per group of output channels).
//!
//! What is compressed: the weights of the linear layers and of the patch-embedding conv
//! with more than [`CompressOptions::min_elements`] elements (coremltools' rule,
//! default 2048); biases, norms, tokens and position embeddings stay as they are.
//! Compression runs on the float32 checkpoint values, tensor by tensor on worker
//! threads ([`Pipeline`]), while the program builder takes the results in its own
//! (fixed) order, so the weight file is still written as one stream and is the same
//! whatever the number of threads.
//!
//! How a [`CompressedTensor`] is written (the `constexpr_*` ops) is the MIL builder's
//! part (`mil::constexpr`); [`CompressedTensor::decode`] is the dense tensor those ops
//! stand for, bit for bit.

pub mod linear;
pub mod pack;
pub mod palette;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Condvar, Mutex};

use serde::Serialize;

use crate::coreml::mil::DType;
use crate::coreml::target::Target;

/// Weights with at most this many elements stay uncompressed (coremltools' default).
pub const DEFAULT_MIN_ELEMENTS: usize = 2048;
/// Default int4 block: 32 input channels.
pub const DEFAULT_BLOCK_SIZE: usize = 32;

/// A compression method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Per-output-channel symmetric int8.
    Int8,
    /// Per-block symmetric int4 along the input axis (iOS18).
    Int4,
    /// k-means palette of `2^n` entries, n in {8, 6, 4, 2}.
    Palette(u32),
}

impl Method {
    /// Every method's name, as the CLI takes them.
    pub const NAMES: [&'static str; 6] = [
        "int8", "int4", "palette8", "palette6", "palette4", "palette2",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Int8 => "int8",
            Method::Int4 => "int4",
            Method::Palette(8) => "palette8",
            Method::Palette(6) => "palette6",
            Method::Palette(4) => "palette4",
            Method::Palette(2) => "palette2",
            Method::Palette(_) => "palette",
        }
    }

    pub fn is_palette(self) -> bool {
        matches!(self, Method::Palette(_))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = crate::coreml::target::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "int8" => Method::Int8,
            "int4" => Method::Int4,
            "palette8" => Method::Palette(8),
            "palette6" => Method::Palette(6),
            "palette4" => Method::Palette(4),
            "palette2" => Method::Palette(2),
            _ => {
                return Err(crate::coreml::target::ParseError {
                    what: "compression method",
                    got: s.into(),
                    expected: "int8, int4, palette8, palette6, palette4, palette2",
                })
            }
        })
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What `--compress` and its settings ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressOptions {
    pub method: Method,
    /// Palettes only: one palette per group of this many output channels (iOS18)
    /// instead of one per tensor.
    pub group_size: Option<usize>,
    /// int4 only: input channels per scale (default [`DEFAULT_BLOCK_SIZE`]).
    pub block_size: Option<usize>,
    /// Weights with more elements than this are compressed.
    pub min_elements: usize,
    /// Worker threads (0: every available core).
    pub threads: usize,
}

impl CompressOptions {
    pub fn new(method: Method) -> Self {
        CompressOptions {
            method,
            group_size: None,
            block_size: None,
            min_elements: DEFAULT_MIN_ELEMENTS,
            threads: 0,
        }
    }

    pub fn block(&self) -> usize {
        self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)
    }

    /// Rejects settings that do not apply to the method.
    pub fn validate(&self) -> Result<(), CompressError> {
        let bad = |m: String| Err(CompressError::Settings(m));
        if let Method::Palette(n) = self.method {
            if ![2, 4, 6, 8].contains(&n) {
                return bad(format!("{n}-bit palettes are not supported (8, 6, 4 or 2)"));
            }
        }
        if self.block_size.is_some() && self.method != Method::Int4 {
            return bad(format!(
                "--block-size applies to int4 only, not {}",
                self.method
            ));
        }
        if self.block_size == Some(0) {
            return bad("--block-size must be at least 1".into());
        }
        match self.group_size {
            Some(_) if !self.method.is_palette() => bad(format!(
                "--group-size applies to palettes (palette8/6/4/2) only, not {}",
                self.method
            )),
            Some(0) => bad("--group-size must be at least 1".into()),
            _ => Ok(()),
        }
    }

    /// The lowest deployment target that can hold these compressed weights, and why.
    pub fn min_target(&self) -> (Target, String) {
        match (self.method, self.group_size) {
            (Method::Int4, _) => (
                Target::Ios18,
                "`--compress int4` (per-block int4 weights, constexpr_blockwise_shift_scale)"
                    .into(),
            ),
            (m, Some(g)) => (
                Target::Ios18,
                format!("`--compress {m} --group-size {g}` (per-grouped-channel palettes)"),
            ),
            (m, None) => (
                Target::Ios16,
                format!("`--compress {m}` (constexpr weight decompression)"),
            ),
        }
    }

    /// The settings in words (for the metadata and the report).
    pub fn describe(&self) -> String {
        let sel = format!("weights with more than {} elements", self.min_elements);
        match self.method {
            Method::Int8 => format!("per-output-channel symmetric int8 (scale max|w|/127); {sel}"),
            Method::Int4 => format!(
                "per-block symmetric int4 (scale max|w|/7), blocks of {} input channels; {sel}",
                self.block()
            ),
            Method::Palette(n) => format!(
                "{}-entry k-means palettes, {}; {sel}",
                1u32 << n,
                match self.group_size {
                    None => "one per tensor".to_string(),
                    Some(g) => format!("one per group of {g} output channels"),
                }
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compression settings: {0}")]
    Settings(String),
    #[error("cannot compress `{name}`: element {index} is {value} (weights must be finite)")]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("nothing to compress: no linear or patch-embedding weight qualifies (more than {threshold} elements, --compress-min-elements{extra}); the largest are {largest}")]
    Nothing {
        threshold: usize,
        extra: String,
        largest: String,
    },
    #[error("cannot compress `{name}`: {msg}")]
    Shape { name: String, msg: String },
}

/// A weight that may be compressed: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Candidate {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Why a candidate's shape does not fit the method (`None`: it fits).
fn shape_misfit(c: &Candidate, opts: &CompressOptions) -> Option<String> {
    if c.shape.len() < 2 {
        return Some("rank below 2".into());
    }
    match (opts.method, opts.group_size) {
        (Method::Int4, _) if c.shape[1] % opts.block() != 0 => Some(format!(
            "its input axis ({}) is not a multiple of the block size {}",
            c.shape[1],
            opts.block()
        )),
        (Method::Palette(_), Some(g)) if c.shape[0] % g != 0 => Some(format!(
            "its output channels ({}) are not a multiple of the group size {g}",
            c.shape[0]
        )),
        _ => None,
    }
}

/// Which candidates get compressed.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// In the order given.
    pub chosen: Vec<Candidate>,
    /// Large enough, but the shape does not fit the method (kept uncompressed): name and
    /// reason.
    pub skipped: Vec<(String, String)>,
}

/// Applies the selection rule; an error when nothing qualifies, naming the largest
/// candidates and the threshold.
pub fn select(cands: &[Candidate], opts: &CompressOptions) -> Result<Selection, CompressError> {
    let mut sel = Selection::default();
    for c in cands {
        if c.numel() <= opts.min_elements {
            continue;
        }
        match shape_misfit(c, opts) {
            None => sel.chosen.push(c.clone()),
            Some(why) => sel.skipped.push((c.name.clone(), why)),
        }
    }
    if sel.chosen.is_empty() {
        let mut by_size: Vec<&Candidate> = cands.iter().collect();
        by_size.sort_by(|a, b| b.numel().cmp(&a.numel()).then(a.name.cmp(&b.name)));
        let largest = by_size
            .iter()
            .take(5)
            .map(|c| {
                let why = if c.numel() <= opts.min_elements {
                    String::new()
                } else {
                    shape_misfit(c, opts)
                        .map(|w| format!(", skipped: {w}"))
                        .unwrap_or_default()
                };
                format!("{} {:?} ({} elements{why})", c.name, c.shape, c.numel())
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CompressError::Nothing {
            threshold: opts.min_elements,
            extra: match (opts.method, opts.group_size) {
                (Method::Int4, _) => format!(", input axis a multiple of {}", opts.block()),
                (_, Some(g)) => format!(", output channels a multiple of {g}"),
                _ => String::new(),
            },
            largest: if largest.is_empty() {
                "none (the model has no such weights)".into()
            } else {
                largest
            },
        });
    }
    Ok(sel)
}

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
                let strides = strides_of(&self.shape);
                let sstrides = strides_of(scale_shape);
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
                            let idx = rest / strides[a];
                            rest %= strides[a];
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

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
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
    let rows = shape[0];
    let encoding = match opts.method {
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
    };
    Ok(CompressedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
        encoding,
    })
}

/// What compression did to an export.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CompressStats {
    pub method: Method,
    pub settings: String,
    pub tensors: usize,
    /// Large enough but kept uncompressed (shape does not fit the method).
    pub skipped: Vec<String>,
    /// The compressed tensors' size as fp16.
    pub bytes_fp16: u64,
    /// Their size compressed (data, scales, palettes).
    pub bytes: u64,
}

type Slot = Option<Result<CompressedTensor, CompressError>>;

struct State {
    slots: Vec<Slot>,
    taken: Vec<bool>,
    /// Next index a worker starts.
    next: usize,
    /// Lowest index not yet taken.
    low: usize,
    done: bool,
    stats: CompressStats,
}

/// Compresses the selected weights on worker threads, at most a window of tensors ahead
/// of the one the program builder takes next (so memory stays bounded), and hands them
/// over by name.
pub struct Pipeline<'a> {
    items: Vec<(Candidate, &'a [u8])>,
    index: HashMap<String, usize>,
    opts: CompressOptions,
    dtype: DType,
    target: Target,
    window: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl<'a> Pipeline<'a> {
    /// `items`: the weights to compress, in the order they will be taken, with their
    /// little-endian float32 data.
    pub fn new(
        items: Vec<(Candidate, &'a [u8])>,
        opts: &CompressOptions,
        dtype: DType,
        target: Target,
        skipped: Vec<String>,
    ) -> Self {
        let n = items.len();
        let index = items
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (c.name.clone(), i))
            .collect();
        Pipeline {
            items,
            index,
            opts: opts.clone(),
            dtype,
            target,
            window: 2 * threads(opts.threads),
            state: Mutex::new(State {
                slots: (0..n).map(|_| None).collect(),
                taken: vec![false; n],
                next: 0,
                low: 0,
                done: false,
                stats: CompressStats {
                    method: opts.method,
                    settings: opts.describe(),
                    tensors: 0,
                    skipped,
                    bytes_fp16: 0,
                    bytes: 0,
                },
            }),
            cv: Condvar::new(),
        }
    }

    fn compute(&self, i: usize) -> Result<CompressedTensor, CompressError> {
        let (c, bytes) = &self.items[i];
        let values = crate::checkpoint::le_f32(bytes);
        compress(&c.name, &c.shape, &values, &self.opts, self.dtype)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self) {
        loop {
            let i = {
                let mut st = self.lock();
                loop {
                    if st.done || st.next >= self.items.len() {
                        return;
                    }
                    if st.taken[st.next] {
                        st.next += 1;
                        continue;
                    }
                    if st.next < st.low + self.window {
                        break;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.next += 1;
                st.next - 1
            };
            let r = self.compute(i);
            let mut st = self.lock();
            if !st.taken[i] {
                st.slots[i] = Some(r);
            }
            self.cv.notify_all();
        }
    }

    /// The compressed form of `name`, or `None` when it is not one of the selected
    /// weights (it then stays uncompressed).
    pub fn take(&self, name: &str) -> Option<Result<CompressedTensor, CompressError>> {
        let &i = self.index.get(name)?;
        let mut st = self.lock();
        let r = loop {
            if let Some(r) = st.slots[i].take() {
                break r;
            }
            // Not started and out of the workers' reach (taken out of order, or twice):
            // computed here.
            if st.taken[i] || (i >= st.next && i >= st.low + self.window) {
                st.taken[i] = true;
                drop(st);
                let r = self.compute(i);
                st = self.lock();
                break r;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        st.taken[i] = true;
        while st.low < st.taken.len() && st.taken[st.low] {
            st.low += 1;
        }
        if let Ok(t) = &r {
            st.stats.tensors += 1;
            st.stats.bytes_fp16 += 2 * t.numel() as u64;
            st.stats.bytes += t.stored_bytes(self.target);
        }
        self.cv.notify_all();
        Some(r)
    }

    /// Stops the workers.
    fn finish(&self) {
        self.lock().done = true;
        self.cv.notify_all();
    }

    pub fn stats(&self) -> CompressStats {
        self.lock().stats.clone()
    }

    /// Runs `f` with the workers compressing in the background; returns its result and
    /// the statistics of what `f` took.
    pub fn run<R>(&self, f: impl FnOnce(&Self) -> R) -> (R, CompressStats) {
        struct Stop<'p, 'a>(&'p Pipeline<'a>);
        impl Drop for Stop<'_, '_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        let workers = threads(self.opts.threads).min(self.items.len()).max(1);
        let r = std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| self.work());
            }
            let _stop = Stop(self);
            f(self)
        });
        (r, self.stats())
    }
}

fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Vec<Candidate> {
        vec![
            Candidate {
                name: "patch_embed.weight".into(),
                shape: vec![48, 3, 8, 8],
            },
            Candidate {
                name: "blocks.0.mlp.fc1.weight".into(),
                shape: vec![192, 48],
            },
            Candidate {
                name: "blocks.0.mlp.fc2.weight".into(),
                shape: vec![48, 192],
            },
            Candidate {
                name: "head.weight".into(),
                shape: vec![5, 48],
            },
        ]
    }

    #[test]
    fn selection_rule() {
        let mut o = CompressOptions::new(Method::Int8);
        let s = select(&cands(), &o).unwrap();
        // 9216 elements each; the head's 240 are below the threshold.
        assert_eq!(s.chosen.len(), 3);
        o.min_elements = 0;
        assert_eq!(select(&cands(), &o).unwrap().chosen.len(), 4);
        o.method = Method::Int4;
        let s = select(&cands(), &o).unwrap();
        assert_eq!(
            s.chosen.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["blocks.0.mlp.fc2.weight"]
        );
        assert_eq!(s.skipped.len(), 3);
        o.min_elements = 100_000;
        let e = select(&cands(), &o).unwrap_err().to_string();
        assert!(
            e.contains("100000") && e.contains("patch_embed.weight [48, 3, 8, 8] (9216 elements)"),
            "{e}"
        );
    }

    #[test]
    fn settings_and_targets() {
        let mut o = CompressOptions::new(Method::Int8);
        assert_eq!(o.min_target().0, Target::Ios16);
        o.group_size = Some(16);
        assert!(o.validate().is_err());
        o.method = Method::Palette(4);
        o.validate().unwrap();
        assert_eq!(o.min_target().0, Target::Ios18);
        o.block_size = Some(32);
        assert!(o.validate().is_err());
        assert_eq!(
            CompressOptions::new(Method::Int4).min_target().0,
            Target::Ios18
        );
        assert!("palette3"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("palette6"));
        for m in Method::NAMES {
            assert_eq!(m.parse::<Method>().unwrap().name(), m);
        }
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

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

    #[test]
    fn pipeline_order_and_threads_do_not_matter() {
        let data: Vec<Vec<u8>> = (0..9)
            .map(|k| {
                values(256 + 64 * k)
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            })
            .collect();
        fn items(d: &[Vec<u8>]) -> Vec<(Candidate, &[u8])> {
            d.iter()
                .enumerate()
                .map(|(k, b)| {
                    (
                        Candidate {
                            name: format!("w{k}"),
                            shape: vec![4 + k, 64],
                        },
                        b.as_slice(),
                    )
                })
                .collect()
        }
        let mut o = CompressOptions::new(Method::Palette(4));
        o.min_elements = 0;
        let mut results = Vec::new();
        for threads in [1usize, 3, 8] {
            o.threads = threads;
            let p = Pipeline::new(items(&data), &o, DType::F16, Target::Ios16, Vec::new());
            // Taken out of order, one twice, one unknown.
            let (got, stats) = p.run(|p| {
                let mut v: Vec<CompressedTensor> = [8usize, 0, 1, 2, 3, 4, 5, 6, 7, 3]
                    .iter()
                    .map(|k| p.take(&format!("w{k}")).unwrap().unwrap())
                    .collect();
                assert!(p.take("other").is_none());
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            });
            assert_eq!(stats.tensors, 10);
            results.push(got);
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
    }
}

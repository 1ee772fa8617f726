//! What `--compress` asks for: the methods, their settings and the checks on them, and
//! the deployment target each needs.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::CompressError;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

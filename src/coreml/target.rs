//! Deployment targets and numeric precision: which Core ML specification version and
//! MIL opset a package is written for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Minimum OS a package runs on. Each maps to one specification version and opset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "iOS15")]
    Ios15,
    #[serde(rename = "iOS16")]
    Ios16,
    #[serde(rename = "iOS17")]
    Ios17,
    #[serde(rename = "iOS18")]
    Ios18,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Ios15, Target::Ios16, Target::Ios17, Target::Ios18];

    /// `Model.specificationVersion` of a package for this target.
    pub fn spec_version(self) -> i32 {
        match self {
            Target::Ios15 => 6,
            Target::Ios16 => 7,
            Target::Ios17 => 8,
            Target::Ios18 => 9,
        }
    }

    /// Name of the MIL opset the `main` function is written in.
    pub fn opset(self) -> &'static str {
        match self {
            Target::Ios15 => "CoreML5",
            Target::Ios16 => "CoreML6",
            Target::Ios17 => "CoreML7",
            Target::Ios18 => "CoreML8",
        }
    }

    /// The matching macOS release, for messages.
    pub fn macos(self) -> &'static str {
        match self {
            Target::Ios15 => "macOS12",
            Target::Ios16 => "macOS13",
            Target::Ios17 => "macOS14",
            Target::Ios18 => "macOS15",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Target::Ios15 => "iOS15",
            Target::Ios16 => "iOS16",
            Target::Ios17 => "iOS17",
            Target::Ios18 => "iOS18",
        };
        f.write_str(s)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {what} `{got}` (expected one of: {expected})")]
pub struct ParseError {
    pub what: &'static str,
    pub got: String,
    pub expected: &'static str,
}

impl FromStr for Target {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ios15" | "macos12" => Ok(Target::Ios15),
            "ios16" | "macos13" => Ok(Target::Ios16),
            "ios17" | "macos14" => Ok(Target::Ios17),
            "ios18" | "macos15" => Ok(Target::Ios18),
            _ => Err(ParseError {
                what: "deployment target",
                got: s.into(),
                expected: "iOS15, iOS16, iOS17, iOS18",
            }),
        }
    }
}

/// Storage precision of weights and activations inside the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp16,
    Fp32,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        })
    }
}

impl FromStr for Precision {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp16" | "float16" | "f16" => Ok(Precision::Fp16),
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            _ => Err(ParseError {
                what: "precision",
                got: s.into(),
                expected: "fp16, fp32",
            }),
        }
    }
}

//! The `coreml-bench --reference` file: inputs and the outputs expected for them, as
//! named float arrays (`$defs/reference_file` in `schema/bench-report.schema.json`).
//!
//! Names are the package's feature names and the leading axis is the example:
//! `image` (0..255 RGB planes `[N, 3, H, W]`) or `pixel_values` (normalised), and
//! `logits`, `embedding`, `tokens` or `classLabel_probs` (with `class_labels`).
//! `pipeline verify` already holds all of this: its inputs (raw planes for image
//! packages, normalised pixels otherwise) and reference outputs, which map
//! `pooled -> embedding`, `last_hidden_state -> tokens`, `logits -> logits` (or their
//! softmax as `classLabel_probs` for classifier packages). Writing one there is a
//! [`ReferenceFile::write`] call.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;

pub const REFERENCE_FORMAT: &str = "coreml-bench-reference";
pub const REFERENCE_VERSION: u32 = 1;

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceFile {
    pub format: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub inputs: BTreeMap<String, ReferenceTensor>,
    pub outputs: BTreeMap<String, ReferenceTensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_labels: Option<Vec<String>>,
}

impl ReferenceFile {
    /// An empty file of the current format; add tensors to `inputs` and `outputs`.
    pub fn new(source: impl Into<String>) -> Self {
        ReferenceFile {
            format: REFERENCE_FORMAT.into(),
            version: REFERENCE_VERSION,
            source: Some(source.into()),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            class_labels: None,
        }
    }

    /// What the schema cannot say: sizes match shapes, one example count throughout.
    pub fn check(&self) -> Result<(), String> {
        if self.format != REFERENCE_FORMAT || self.version != REFERENCE_VERSION {
            return Err(format!(
                "format `{}` version {}; expected `{REFERENCE_FORMAT}` version {REFERENCE_VERSION}",
                self.format, self.version
            ));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("needs at least one input and one output".into());
        }
        let mut examples = None;
        for (name, t) in self.inputs.iter().chain(&self.outputs) {
            let n: usize = t.shape.iter().product();
            if t.shape.is_empty() || t.shape.contains(&0) || n != t.data.len() {
                return Err(format!(
                    "`{name}`: shape {:?} does not hold {} values",
                    t.shape,
                    t.data.len()
                ));
            }
            match examples {
                Some(e) if e != t.shape[0] => {
                    return Err(format!(
                        "`{name}` has {} examples, the others {e}",
                        t.shape[0]
                    ))
                }
                _ => examples = Some(t.shape[0]),
            }
        }
        if let (Some(labels), Some(p)) = (&self.class_labels, self.outputs.get("classLabel_probs"))
        {
            let cols: usize = p.shape[1..].iter().product();
            if labels.len() != cols {
                return Err(format!(
                    "class_labels has {} names but classLabel_probs has {cols} columns",
                    labels.len()
                ));
            }
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ReferenceFile =
            serde_json::from_str(&text).map_err(|source| BenchError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        file.check().map_err(|msg| BenchError::Invalid {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(file)
    }

    /// Checks and writes the file (atomically: coreml-bench never sees half of one).
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let invalid = |msg| BenchError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        self.check().map_err(invalid)?;
        let text = serde_json::to_string(self).map_err(|e| invalid(e.to_string()))?;
        crate::fsutil::write_file_atomically(path, text.as_bytes()).map_err(|source| {
            BenchError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

//! Which library wrote a checkpoint, decided from its `config.json`.

use serde_json::Value;

use super::{ConvertError, Plan, SourceFiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    HfVit,
    HfDinov2,
    HfDinov2Registers,
    Timm,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::HfVit => "transformers ViT",
            Family::HfDinov2 => "transformers DINOv2",
            Family::HfDinov2Registers => "transformers DINOv2 with registers",
            Family::Timm => "timm VisionTransformer",
        }
    }
}

pub fn read_json(path: &std::path::Path) -> Result<Value, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ConvertError::BadConfig {
        path: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })
}

pub fn detect(files: &SourceFiles, config: &Value) -> Result<Family, ConvertError> {
    let unknown = |msg: String| ConvertError::UnknownArchitecture {
        path: files.config.clone(),
        msg,
    };
    if let Some(model_type) = config.get("model_type").and_then(Value::as_str) {
        return match model_type {
            "vit" => Ok(Family::HfVit),
            "dinov2" => Ok(Family::HfDinov2),
            "dinov2_with_registers" => Ok(Family::HfDinov2Registers),
            other => Err(unknown(format!(
                "transformers model_type `{other}` (supported: vit, dinov2, dinov2_with_registers)"
            ))),
        };
    }
    if let Some(arch) = config.get("architecture").and_then(Value::as_str) {
        let name = arch.rsplit(['/', ':']).next().unwrap_or(arch);
        if name.starts_with("vit_") || name.starts_with("deit_") {
            return Ok(Family::Timm);
        }
        return Err(unknown(format!(
            "timm architecture `{arch}` (supported: VisionTransformer models, vit_* / deit_*)"
        )));
    }
    Err(unknown(
        "config.json has neither `model_type` (transformers) nor `architecture` (timm)".into(),
    ))
}

/// Source tensor names with their shapes.
pub type Index = std::collections::BTreeMap<String, Vec<usize>>;

pub fn plan(files: &SourceFiles) -> Result<Plan, ConvertError> {
    let config = read_json(&files.config)?;
    let family = detect(files, &config)?;
    let index: Index = super::SourceTensors::open(files)?
        .index()
        .into_iter()
        .map(|(k, (_, shape))| (k, shape))
        .collect();
    let cfg = Json {
        path: &files.config,
        value: &config,
    };
    match family {
        Family::HfVit | Family::HfDinov2 | Family::HfDinov2Registers => {
            super::hf::plan(files, cfg, &index, family)
        }
        Family::Timm => super::timm::plan(files, cfg, &index),
    }
}

/// A config file with typed, error-reporting field access.
#[derive(Clone, Copy)]
pub struct Json<'a> {
    pub path: &'a std::path::Path,
    pub value: &'a Value,
}

impl<'a> Json<'a> {
    pub fn err(&self, msg: impl Into<String>) -> ConvertError {
        ConvertError::BadConfig {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn child(&self, key: &str) -> Option<Json<'a>> {
        self.get(key).map(|value| Json {
            path: self.path,
            value,
        })
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, ConvertError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing `{key}`")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a string, got {v}"))),
        }
    }

    /// A 3-vector of numbers (mean / std).
    pub fn opt_triple(&self, key: &str) -> Result<Option<[f32; 3]>, ConvertError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let nums: Option<Vec<f32>> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or(None);
        match nums {
            Some(n) if n.len() == 3 => Ok(Some([n[0], n[1], n[2]])),
            // A single number means the same for all channels.
            _ => match v.as_f64() {
                Some(f) => Ok(Some([f as f32; 3])),
                None => Err(self.err(format!("`{key}` must be 3 numbers, got {v}"))),
            },
        }
    }
}

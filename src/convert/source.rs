//! Finding a checkpoint's files: a local folder, or a Hugging Face repo id fetched through
//! the hub cache.

use std::path::{Path, PathBuf};

use super::ConvertError;

#[derive(Debug, Clone)]
pub struct WeightShard {
    pub path: PathBuf,
}

/// The files of one source checkpoint.
#[derive(Debug, Clone)]
pub struct SourceFiles {
    /// What the user named (folder or repo id), recorded as provenance.
    pub label: String,
    pub config: PathBuf,
    /// `preprocessor_config.json` of transformers models, when present.
    pub preprocessor: Option<PathBuf>,
    pub weights: Vec<WeightShard>,
}

pub const CONFIG: &str = "config.json";
pub const PREPROCESSOR: &str = "preprocessor_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

pub fn resolve(source: &str, revision: Option<&str>) -> Result<SourceFiles, ConvertError> {
    let path = Path::new(source);
    if path.is_dir() {
        return local(path, source);
    }
    if path.exists() {
        return Err(ConvertError::Source(format!(
            "{source}: expected a folder holding config.json and model.safetensors (or this tool's model.json and model.safetensors)"
        )));
    }
    if looks_like_repo_id(source) {
        return super::hub::fetch(source, revision);
    }
    Err(ConvertError::Source(format!(
        "{source}: no such folder, and not a Hugging Face repo id (owner/name) or preset:NAME"
    )))
}

fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

fn local(dir: &Path, label: &str) -> Result<SourceFiles, ConvertError> {
    let config = dir.join(CONFIG);
    if !config.is_file() {
        return Err(ConvertError::Source(format!(
            "{}: missing config.json (needed to know the architecture), and no model.json (this tool's own checkpoint)",
            dir.display()
        )));
    }
    let preprocessor = Some(dir.join(PREPROCESSOR)).filter(|p| p.is_file());
    let weights = weight_files(dir, |name| Ok(dir.join(name)))?;
    Ok(SourceFiles {
        label: label.to_string(),
        config,
        preprocessor,
        weights,
    })
}

/// The weight files named by a folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. `get` turns a file name into a local path (for the
/// hub, downloading it).
pub fn weight_files(
    dir: &Path,
    mut get: impl FnMut(&str) -> Result<PathBuf, ConvertError>,
) -> Result<Vec<WeightShard>, ConvertError> {
    let single = dir.join(WEIGHTS);
    if single.is_file() {
        return Ok(vec![WeightShard { path: single }]);
    }
    let index_path = dir.join(WEIGHTS_INDEX);
    if index_path.is_file() {
        return shards_from_index(&index_path, get);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(ConvertError::Source(format!(
            "{}: only pytorch_model.bin found; convert reads safetensors (pickle files can run code). Re-save with `save_pretrained(..., safe_serialization=True)`",
            dir.display()
        )));
    }
    // Hub sources: nothing local yet, ask for the file.
    match get(WEIGHTS) {
        Ok(p) if p.is_file() => Ok(vec![WeightShard { path: p }]),
        _ => Err(ConvertError::Source(format!(
            "{}: missing model.safetensors (or model.safetensors.index.json)",
            dir.display()
        ))),
    }
}

pub fn shards_from_index(
    index_path: &Path,
    mut get: impl FnMut(&str) -> Result<PathBuf, ConvertError>,
) -> Result<Vec<WeightShard>, ConvertError> {
    let text = std::fs::read_to_string(index_path).map_err(|source| ConvertError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let bad = |msg: String| ConvertError::BadConfig {
        path: index_path.to_path_buf(),
        msg,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    files
        .iter()
        .map(|f| get(f).map(|path| WeightShard { path }))
        .collect()
}

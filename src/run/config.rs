//! The run config: its sections, `--set` overrides and paths resolved against the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunError;
use crate::train::TrainConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub convert: ConvertSection,
    /// Optional when `[merge] adapters` is given (training is then skipped).
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub merge: MergeSection,
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub verify: VerifySection,
    #[serde(default)]
    pub bench: BenchSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run folder, relative to the config file.
    pub out: PathBuf,
    /// Also train the `[train]` recipe from this source (a preset: random init; or a
    /// folder or hub id) into `baseline/`, and show its validation top-1 beside this run's.
    #[serde(default)]
    pub baseline: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertSection {
    /// Folder (relative to the config file), Hugging Face repo id, or preset:NAME.
    pub source: String,
    #[serde(default)]
    pub revision: Option<String>,
    /// Working input size (resamples the position grid once); default: the source's.
    #[serde(default)]
    pub image_size: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSection {
    /// Adapters to fold into the converted base instead of training (relative to the
    /// config file): our adapters folder or a PEFT LoRA folder from PyTorch.
    pub adapters: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// fp16 (default) or fp32.
    pub precision: Option<String>,
    /// iOS15 .. iOS18; default: the lowest that supports the options.
    pub target: Option<String>,
    /// image (default) or array.
    pub input: Option<String>,
    /// classifier (default with a head), logits, features.
    pub output: Option<String>,
    pub author: Option<String>,
    pub license: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Weight compression: int8, int4, palette8, palette6, palette4, palette2 (see
    /// `pipeline export --help`). The run then also writes an uncompressed
    /// `model-fp16.mlpackage` and verifies both on the validation split.
    pub compress: Option<String>,
    /// Palettes: one per group of this many output channels (iOS18).
    pub group_size: Option<usize>,
    /// int4: input channels per scale (default 32).
    pub block_size: Option<usize>,
    /// Only weights with more elements are compressed (default 2048).
    pub compress_min_elements: Option<usize>,
    /// standard (default) or ane (the Neural Engine layout; see `pipeline export --help`).
    pub layout: Option<String>,
    /// Batch sizes a multiArray input accepts, e.g. [1, 8, 16] (needs input = "array").
    pub batch: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// Images to compare on (relative to the config file); default: the validation images
    /// (up to 32) or a probe batch.
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchSection {
    pub skip: bool,
    pub compute_units: Option<String>,
    pub iterations: Option<usize>,
}

/// Reads a config; `--set section.key=value` overrides are applied to the TOML before
/// typing it, so they are checked like the file itself.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<RunConfig, RunError> {
    let cfg_err = |msg: String| RunError::Config {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| cfg_err(e.to_string()))?;
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| cfg_err(format!("--set `{o}` is not section.key=value")))?;
        let (section, field) = key
            .split_once('.')
            .ok_or_else(|| cfg_err(format!("--set `{key}` must name section.key")))?;
        // A value is TOML (numbers, booleans, arrays, quoted strings); a bare word is a string.
        let parsed: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| cfg_err(format!("`{section}` is not a section")))?;
        insert_dotted(table, field, parsed);
    }
    // Typed through the text so errors carry line numbers for the file's own keys.
    let merged = if overrides.is_empty() {
        text
    } else {
        toml::to_string(&doc).expect("toml")
    };
    let mut cfg: RunConfig = toml::from_str(&merged).map_err(|e| cfg_err(e.to_string()))?;
    resolve_paths(&mut cfg, path.parent().unwrap_or(Path::new(".")));
    check_inputs(&cfg).map_err(cfg_err)?;
    Ok(cfg)
}

/// Paths in the config are relative to the config file.
fn resolve_paths(cfg: &mut RunConfig, base: &Path) {
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalise(&base.join(p))
        }
    };
    cfg.run.out = rel(&cfg.run.out);
    // No `[train] data` stays empty (allowed with `[merge] adapters`), not the config's folder.
    if !cfg.train.data.as_os_str().is_empty() {
        cfg.train.data = rel(&cfg.train.data);
    }
    cfg.train.val_data = cfg.train.val_data.as_deref().map(rel);
    cfg.merge.adapters = cfg.merge.adapters.as_deref().map(rel);
    cfg.verify.images = cfg.verify.images.iter().map(|p| rel(p)).collect();
    let source = |s: &mut String| {
        let local = base.join(&*s);
        if !s.starts_with("preset:") && local.exists() {
            *s = local.to_string_lossy().into_owned();
        }
    };
    source(&mut cfg.convert.source);
    if let Some(b) = cfg.run.baseline.as_mut() {
        source(b);
    }
}

/// What the stages read must be there before any of them runs.
fn check_inputs(cfg: &RunConfig) -> Result<(), String> {
    if let Some(a) = &cfg.merge.adapters {
        if !a.exists() {
            return Err(format!("merge.adapters: {} does not exist", a.display()));
        }
        if !a.join(crate::train::adapters::CONFIG_FILE).is_file() {
            return Err(format!(
                "merge.adapters: {} has no {} (neither our adapters folder nor a PEFT LoRA \
                 folder)",
                a.display(),
                crate::train::adapters::CONFIG_FILE
            ));
        }
    }
    if cfg.train.data.as_os_str().is_empty() {
        if cfg.merge.adapters.is_none() {
            return Err(
                "train.data: missing (the images to train on), or give [merge] \
                        adapters = \"PATH\" to fold existing adapters instead of training"
                    .into(),
            );
        }
    } else if !cfg.train.data.exists() {
        return Err(format!(
            "train.data: {} does not exist",
            cfg.train.data.display()
        ));
    }
    Ok(())
}

/// `examples/../runs` -> `runs`, lexically (the folder need not exist yet).
fn normalise(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let sub = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let Some(t) = sub.as_table_mut() {
                insert_dotted(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_lexically() {
        assert_eq!(
            normalise(Path::new("examples/../runs/q")),
            Path::new("runs/q")
        );
        assert_eq!(normalise(Path::new("./a/./b")), Path::new("a/b"));
        assert_eq!(normalise(Path::new("../x")), Path::new("../x"));
        assert_eq!(normalise(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn dotted_overrides_make_nested_tables() {
        let mut t = toml::Table::new();
        insert_dotted(&mut t, "lora.rank", toml::Value::Integer(4));
        assert_eq!(t["lora"]["rank"].as_integer(), Some(4));
    }
}

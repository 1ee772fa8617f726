//! `pipeline convert`: a Hugging Face (`transformers` ViT, DINOv2, DINOv2 with registers)
//! or timm checkpoint into the project's checkpoint. Each family is a config reader plus
//! a table from our tensor names to the source's; the pass over the tensors is shared,
//! streams from memory-mapped files and fails on any unused or missing tensor. A folder
//! that already holds our own checkpoint (`model.json`) is validated and copied.

mod family;
mod hf;
pub mod hub;
mod ours;
pub mod preset;
mod source;
mod timm;
pub mod torch_names;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use safetensors::SafeTensors;

use crate::checkpoint::{self, CheckpointError, TensorData, TensorOut};
use crate::config::ModelConfig;

pub use family::Family;
pub use source::{SourceFiles, WeightShard};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    BadConfig { path: PathBuf, msg: String },
    #[error("{path}: unknown architecture: {msg}")]
    UnknownArchitecture { path: PathBuf, msg: String },
    #[error("{path}: tensors the model does not use (conversion would silently drop them): {}", names.join(", "))]
    Unused { path: PathBuf, names: Vec<String> },
    #[error("{path}: missing tensors: {}", names.join(", "))]
    Missing { path: PathBuf, names: Vec<String> },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected a float type")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Replace an existing output folder.
    pub force: bool,
    /// Hub revision (branch, tag or commit) when SOURCE is a repo id.
    pub revision: Option<String>,
    /// Working input size: the position grid is resampled to it once, at conversion
    /// (DINOv2 checkpoints carry a 518-pixel grid but are used at 224).
    pub image_size: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub family: String,
    pub source: String,
    pub out: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// Source tensors deliberately not carried over because inference never reads them.
    pub dropped: Vec<String>,
    pub seconds: f64,
}

/// How one of our tensors is filled from the source: the source tensor's name. Shapes
/// must agree up to leading size-1 axes (`cls_token` is `[1, 1, D]` in PyTorch).
#[derive(Debug, Clone)]
pub struct TensorMap {
    pub ours: String,
    pub theirs: String,
}

/// What a family reader produces from a source's config files.
pub struct Plan {
    pub family: Family,
    pub config: ModelConfig,
    pub map: Vec<TensorMap>,
    /// Source tensors that exist for training only (DINOv2's `mask_token`) and are
    /// dropped on purpose. Anything else left over is an error.
    pub inference_unused: Vec<String>,
}

/// For a model converted from transformers or timm: our tensor names -> the source
/// library's names (as its `state_dict` has them). None for presets.
pub fn source_names(config: &ModelConfig) -> Option<BTreeMap<String, String>> {
    use crate::config::{MlpKind, SourceFamily};
    let p = &config.provenance;
    let map = match p.family {
        SourceFamily::Timm => timm::tensor_map(config.num_layers),
        SourceFamily::Preset => return None,
        ref f => {
            let family = match f {
                SourceFamily::HfVit => Family::HfVit,
                SourceFamily::HfDinov2 => Family::HfDinov2,
                _ => Family::HfDinov2Registers,
            };
            let swiglu = config.mlp == MlpKind::SwigluPacked;
            hf::tensor_map(
                family,
                &p.key_prefix,
                config.num_layers,
                config.num_register_tokens,
                swiglu,
            )
        }
    };
    Some(map.into_iter().map(|m| (m.ours, m.theirs)).collect())
}

/// Converts SOURCE (a local folder, a Hugging Face repo id or `preset:NAME`) into a
/// checkpoint folder at `out`. A folder with `model.json` is one of our own checkpoints
/// (written by convert or train): validated and copied.
pub fn convert(
    source: &str,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let started = Instant::now();
    if let Some(name) = source.strip_prefix("preset:") {
        let report = preset::write_random(name, 0, out, opts.force)?;
        return Ok(ConvertReport {
            seconds: started.elapsed().as_secs_f64(),
            ..report
        });
    }
    if ours::is_ours(Path::new(source)) {
        let report = ours::copy(Path::new(source), source, out, opts.force, opts.image_size)?;
        return Ok(ConvertReport {
            seconds: started.elapsed().as_secs_f64(),
            ..report
        });
    }
    let files = source::resolve(source, opts.revision.as_deref())?;
    let plan = family::plan(&files)?;
    let report = write_plan(&files, &plan, out, opts.force, opts.image_size)?;
    Ok(ConvertReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// Reads the source's tensor index (names, shapes, dtypes) without touching the data.
pub struct SourceTensors {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl SourceTensors {
    pub fn open(files: &SourceFiles) -> Result<Self, ConvertError> {
        let mut maps = Vec::new();
        for shard in &files.weights {
            let mmap = checkpoint::map_file(&shard.path)?;
            // Parse once here so a truncated file fails before any output exists.
            checkpoint::parse_safetensors(&shard.path, &mmap)?;
            maps.push((shard.path.clone(), mmap));
        }
        Ok(SourceTensors { maps })
    }

    /// name -> (shard index, shape).
    pub fn index(&self) -> BTreeMap<String, (usize, Vec<usize>)> {
        let mut out = BTreeMap::new();
        for (i, (_, mmap)) in self.maps.iter().enumerate() {
            let st = SafeTensors::deserialize(mmap).expect("parsed in open");
            for (name, view) in st.tensors() {
                out.insert(name, (i, view.shape().to_vec()));
            }
        }
        out
    }

    fn path(&self, shard: usize) -> &Path {
        &self.maps[shard].0
    }
}

fn squeeze_leading(shape: &[usize]) -> &[usize] {
    let first = shape.iter().position(|d| *d != 1).unwrap_or(shape.len());
    &shape[first..]
}

/// Resamples the patch rows of `pos_embed` to the grid of `size` and updates the config.
fn resample_positions(
    config: &mut ModelConfig,
    tensors: &mut [TensorOut<'_>],
    size: usize,
) -> Result<(), String> {
    if size == 0 || size % config.patch_size != 0 {
        return Err(format!(
            "--image-size {size} is not a multiple of the patch size {}",
            config.patch_size
        ));
    }
    let pos = tensors
        .iter_mut()
        .find(|t| t.name == "pos_embed")
        .ok_or("no pos_embed")?;
    let values = match &pos.data {
        TensorData::Mapped { dtype, bytes } => checkpoint::widen(*dtype, bytes),
        TensorData::Owned(v) => v.clone(),
    };
    let g = size / config.patch_size;
    let d = config.hidden_size;
    let resized = crate::posembed::for_input(
        &values,
        config.pos_embed_prefix,
        config.grid(),
        (g, g),
        d,
        config.pos_interpolation,
    );
    pos.shape = vec![config.pos_embed_prefix + g * g, d];
    pos.data = TensorData::Owned(resized);
    config.preprocess.resize_shorter = config.preprocess.resize_shorter * size / config.image_size;
    config.image_size = size;
    Ok(())
}

/// The one pass over the tensors: check every name and shape first, then write.
pub fn write_plan(
    files: &SourceFiles,
    plan: &Plan,
    out: &Path,
    force: bool,
    image_size: Option<usize>,
) -> Result<ConvertReport, ConvertError> {
    plan.config
        .validate()
        .map_err(|e| ConvertError::BadConfig {
            path: files.config.clone(),
            msg: e.to_string(),
        })?;
    let src = SourceTensors::open(files)?;
    let index = src.index();
    let first_weights = files.weights[0].path.clone();

    let wanted: BTreeMap<String, Vec<usize>> = plan.config.tensor_shapes().into_iter().collect();
    let by_ours: BTreeMap<&str, &str> = plan
        .map
        .iter()
        .map(|m| (m.ours.as_str(), m.theirs.as_str()))
        .collect();

    let missing: Vec<String> = wanted
        .keys()
        .filter_map(|ours| match by_ours.get(ours.as_str()) {
            Some(theirs) if index.contains_key(*theirs) => None,
            Some(theirs) => Some((*theirs).to_string()),
            None => Some(format!("(no source for `{ours}`)")),
        })
        .collect();
    if !missing.is_empty() {
        return Err(ConvertError::Missing {
            path: first_weights,
            names: missing,
        });
    }
    let used: std::collections::BTreeSet<&str> = by_ours
        .iter()
        .filter(|(ours, _)| wanted.contains_key(**ours))
        .map(|(_, theirs)| *theirs)
        .collect();
    let unused: Vec<String> = index
        .keys()
        .filter(|k| !used.contains(k.as_str()) && !plan.inference_unused.contains(k))
        .cloned()
        .collect();
    if !unused.is_empty() {
        return Err(ConvertError::Unused {
            path: first_weights,
            names: unused,
        });
    }

    let parsed: Vec<SafeTensors<'_>> = src
        .maps
        .iter()
        .map(|(_, m)| SafeTensors::deserialize(m).expect("parsed in open"))
        .collect();
    let mut tensors = Vec::with_capacity(wanted.len());
    for (ours, shape) in plan.config.tensor_shapes() {
        let theirs = by_ours[ours.as_str()];
        let (shard, their_shape) = &index[theirs];
        let path = src.path(*shard).to_path_buf();
        if squeeze_leading(their_shape) != squeeze_leading(&shape) {
            return Err(ConvertError::Shape {
                path,
                name: theirs.to_string(),
                got: their_shape.clone(),
                want: shape,
            });
        }
        let view = parsed[*shard].tensor(theirs).expect("indexed");
        if !checkpoint::is_float(view.dtype()) {
            return Err(ConvertError::Dtype {
                path,
                name: theirs.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        tensors.push(TensorOut {
            name: ours,
            shape,
            data: TensorData::Mapped {
                dtype: view.dtype(),
                bytes: view.data(),
            },
        });
    }
    let mut config = plan.config.clone();
    if let Some(size) = image_size.filter(|s| *s != config.image_size) {
        resample_positions(&mut config, &mut tensors, size).map_err(|msg| {
            ConvertError::BadConfig {
                path: files.config.clone(),
                msg,
            }
        })?;
    }
    checkpoint::write(out, &config, &tensors, force)?;
    let mut dropped: Vec<String> = plan
        .inference_unused
        .iter()
        .filter(|n| index.contains_key(*n))
        .cloned()
        .collect();
    dropped.sort();
    Ok(ConvertReport {
        family: plan.family.name().to_string(),
        source: plan.config.provenance.source.clone(),
        out: out.to_path_buf(),
        tensors: tensors.len(),
        parameters: plan.config.num_parameters(),
        dropped,
        seconds: 0.0,
    })
}

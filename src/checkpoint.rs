//! The project's checkpoint: a folder with `model.json` (a [`ModelConfig`]) and
//! `model.safetensors` (float32 tensors named as in [`ModelConfig::tensor_shapes`]).
//! Every stage reads and writes this; it is the one type passed between them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::fsutil;

pub const CONFIG_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: not a readable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: missing tensors: {}", names.join(", "))]
    Missing { path: PathBuf, names: Vec<String> },
    #[error("{path}: unexpected tensors: {}", names.join(", "))]
    Unexpected { path: PathBuf, names: Vec<String> },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` is {dtype:?}, expected F32")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A loaded checkpoint: its config and its memory-mapped, validated weights.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    mmap: Mmap,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .finish()
    }
}

pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let config: ModelConfig = serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    config.validate().map_err(|e| CheckpointError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    Ok(config)
}

/// Opens a safetensors file read-only through a memory map.
pub fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only; a file changed under us by another process shows up
    // as wrong values, never as unsoundness in safe code reading bytes.
    unsafe { Mmap::map(&file) }.map_err(io_err(path))
}

pub fn parse_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<SafeTensors<'a>, CheckpointError> {
    SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl Checkpoint {
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let config = read_config(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let mmap = map_file(&path)?;
        let ck = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            mmap,
        };
        ck.check()?;
        Ok(ck)
    }

    fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Drops this process's resident pages of `bytes` (a slice of [`Checkpoint::tensors`])
    /// once they have been copied elsewhere. The file stays in the page cache; its pages
    /// just stop counting in our RSS, so building a model from a checkpoint peaks near 1x
    /// the weights instead of 2x (both the map and the copy resident).
    pub fn release(&self, bytes: &[u8]) {
        let start = self.mmap.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        if at < start || at + bytes.len() > start + self.mmap.len() {
            return;
        }
        #[cfg(unix)]
        // SAFETY: a read-only, file-backed map: dropped pages read back from the file, so
        // nothing observable changes. Failure only means the pages stay resident.
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                at - start,
                bytes.len(),
            )
        };
    }

    pub fn tensors(&self) -> SafeTensors<'_> {
        // Validated in `load`.
        SafeTensors::deserialize(&self.mmap).expect("checkpoint validated at load")
    }

    fn check(&self) -> Result<(), CheckpointError> {
        let path = self.weights_path();
        let st = parse_safetensors(&path, &self.mmap)?;
        let want: BTreeMap<String, Vec<usize>> = self.config.tensor_shapes().into_iter().collect();
        let have: BTreeMap<String, _> = st.tensors().into_iter().collect();
        let missing: Vec<String> = want
            .keys()
            .filter(|k| !have.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(CheckpointError::Missing {
                path,
                names: missing,
            });
        }
        let extra: Vec<String> = have
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(CheckpointError::Unexpected { path, names: extra });
        }
        for (name, shape) in &want {
            let view = &have[name];
            if view.shape() != shape.as_slice() {
                return Err(CheckpointError::Shape {
                    path,
                    name: name.clone(),
                    got: view.shape().to_vec(),
                    want: shape.clone(),
                });
            }
            if view.dtype() != Dtype::F32 {
                return Err(CheckpointError::Dtype {
                    path,
                    name: name.clone(),
                    dtype: view.dtype(),
                });
            }
        }
        Ok(())
    }

    /// A tensor as float32 values (copied out of the map: safetensors data need not be
    /// 4-byte aligned).
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.tensors();
        let view = st.tensor(name).expect("checkpoint validated at load");
        le_f32(view.data())
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.tensors()
            .tensor(name)
            .map(|v| v.shape().to_vec())
            .expect("checkpoint validated at load")
    }

    /// SHA-256 of the weights file: identifies the base model for adapters and caches.
    pub fn content_hash(&self) -> String {
        hex(&Sha256::digest(&self.mmap[..]))
    }
}

pub fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a tensor's data comes from when a checkpoint is written: borrowed bytes of a
/// memory-mapped source (converted to float32 one tensor at a time while writing, so
/// conversion never holds a second copy of the model) or values computed in memory.
pub enum TensorData<'a> {
    Mapped { dtype: Dtype, bytes: &'a [u8] },
    Owned(Vec<f32>),
}

pub struct TensorOut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData<'a>,
}

impl TensorOut<'_> {
    pub fn owned(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> TensorOut<'static> {
        TensorOut {
            name: name.into(),
            shape,
            data: TensorData::Owned(data),
        }
    }
}

/// Dtypes a source tensor may have; all are widened to float32.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

impl safetensors::View for &TensorOut<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.data {
            TensorData::Mapped {
                dtype: Dtype::F32,
                bytes,
            } => std::borrow::Cow::Borrowed(bytes),
            TensorData::Mapped { dtype, bytes } => f32_bytes(&widen(*dtype, bytes)).into(),
            TensorData::Owned(v) => f32_bytes(v).into(),
        }
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Float values of any supported source dtype, widened to float32.
pub fn widen(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => le_f32(bytes),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => panic!("widen called with non-float dtype {other:?}"),
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes a checkpoint folder atomically: everything goes into a temporary sibling,
/// which is renamed into place only when complete. An existing folder is replaced only
/// with `force`.
pub fn write(
    out: &Path,
    config: &ModelConfig,
    tensors: &[TensorOut<'_>],
    force: bool,
) -> Result<(), CheckpointError> {
    fsutil::write_dir_atomically(out, force, |tmp| {
        let text = serde_json::to_string_pretty(config).expect("config serialises");
        fs::write(tmp.join(CONFIG_FILE), text + "\n")?;
        write_safetensors(&tmp.join(WEIGHTS_FILE), tensors, None)
    })
    .map_err(io_err(out))
}

/// Writes tensors (as float32) to a safetensors file in the given order, one tensor in
/// memory at a time.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorOut<'_>],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> std::io::Result<()> {
    let views = tensors.iter().map(|t| (t.name.clone(), t));
    safetensors::serialize_to_file(views, metadata, path).map_err(std::io::Error::other)
}

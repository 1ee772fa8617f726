//! The resumable state of a run: trainable tensors, optimizer moments, counters and the
//! best-so-far bookkeeping. Written as one folder replaced atomically, so a kill at any
//! moment leaves either the previous or the new checkpoint, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::checkpoint::{self, TensorOut};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch and batch index the next step starts at.
    pub epoch: usize,
    pub batch: usize,
    /// Best value of the chosen metric and the step it was seen at.
    pub best: Option<(f64, usize)>,
    pub evals_since_best: usize,
    pub skipped_images: usize,
}

const STATE: &str = "state.json";
const PARAMS: &str = "trainable.safetensors";
const OPTIM: &str = "optimizer.safetensors";

fn to_out(
    prefix: &str,
    map: &BTreeMap<String, Array>,
) -> Result<Vec<TensorOut<'static>>, TrainError> {
    map.iter()
        .map(|(k, a)| {
            let data = crate::model::to_host(a)?;
            let shape = a.shape().iter().map(|d| *d as usize).collect();
            Ok(TensorOut::owned(format!("{prefix}{k}"), shape, data))
        })
        .collect()
}

pub fn save(
    dir: &Path,
    params: &BTreeMap<String, Array>,
    m: &BTreeMap<String, Array>,
    v: &BTreeMap<String, Array>,
    counters: &Counters,
) -> Result<(), TrainError> {
    let params = to_out("", params)?;
    let mut moments = to_out("m.", m)?;
    moments.extend(to_out("v.", v)?);
    crate::fsutil::write_dir_atomically(dir, true, |tmp| {
        checkpoint::write_safetensors(&tmp.join(PARAMS), &params, None)?;
        checkpoint::write_safetensors(&tmp.join(OPTIM), &moments, None)?;
        fs::write(
            tmp.join(STATE),
            serde_json::to_string_pretty(counters).expect("json"),
        )
    })
    .map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

pub struct Loaded {
    pub params: BTreeMap<String, Array>,
    pub m: BTreeMap<String, Array>,
    pub v: BTreeMap<String, Array>,
    pub counters: Counters,
}

fn read_map(path: &Path) -> Result<BTreeMap<String, Array>, TrainError> {
    let mmap = checkpoint::map_file(path)?;
    let st = checkpoint::parse_safetensors(path, &mmap)?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape: Vec<i32> = view.shape().iter().map(|d| *d as i32).collect();
            (
                name,
                Array::from_slice(&checkpoint::widen(view.dtype(), view.data()), &shape),
            )
        })
        .collect())
}

pub fn load(dir: &Path) -> Result<Loaded, TrainError> {
    let state_path = dir.join(STATE);
    let text = fs::read_to_string(&state_path).map_err(|source| TrainError::Io {
        path: state_path.clone(),
        source,
    })?;
    let counters: Counters = serde_json::from_str(&text)
        .map_err(|e| TrainError::Settings(format!("{}: {e}", state_path.display())))?;
    let params = read_map(&dir.join(PARAMS))?;
    let moments = read_map(&dir.join(OPTIM))?;
    let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
    for (k, a) in moments {
        if let Some(name) = k.strip_prefix("m.") {
            m.insert(name.to_string(), a);
        } else if let Some(name) = k.strip_prefix("v.") {
            v.insert(name.to_string(), a);
        }
    }
    Ok(Loaded {
        params,
        m,
        v,
        counters,
    })
}

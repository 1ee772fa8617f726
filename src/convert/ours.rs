//! Our own checkpoint as a source: a folder with `model.json` and `model.safetensors`,
//! as `convert` and `train` write them (a pretrained base committed to a repository, a
//! run's `model/` or `best/`). It is validated with the checkpoint loader and copied
//! byte for byte, so its content hash (which adapters are tied to) is kept; with
//! `--image-size` the position grid is resampled and the weights are written anew.

use std::fs;
use std::path::Path;

use crate::checkpoint::{self, Checkpoint, TensorData, TensorOut};
use crate::fsutil;

use super::{ConvertError, ConvertReport};

/// Whether `dir` is meant as one of our checkpoints (it has `model.json`).
pub fn is_ours(dir: &Path) -> bool {
    dir.is_dir() && dir.join(checkpoint::CONFIG_FILE).is_file()
}

pub fn copy(
    dir: &Path,
    label: &str,
    out: &Path,
    force: bool,
    image_size: Option<usize>,
) -> Result<ConvertReport, ConvertError> {
    let ck = Checkpoint::load(dir).map_err(|e| {
        ConvertError::Source(format!(
            "{}: has {} but is not a valid checkpoint of this tool (model.json + \
             model.safetensors as convert and train write them): {e}",
            dir.display(),
            checkpoint::CONFIG_FILE
        ))
    })?;
    let config = &ck.config;
    let tensors = config.tensor_shapes().len();
    let io = |source| ConvertError::Io {
        path: out.to_path_buf(),
        source,
    };
    match image_size.filter(|s| *s != config.image_size) {
        None => fsutil::write_dir_atomically(out, force, |tmp| {
            for name in [checkpoint::CONFIG_FILE, checkpoint::WEIGHTS_FILE] {
                fs::copy(dir.join(name), tmp.join(name))?;
            }
            Ok(())
        })
        .map_err(io)?,
        Some(size) => {
            let st = ck.tensors();
            let mut outs: Vec<TensorOut<'_>> = config
                .tensor_shapes()
                .into_iter()
                .map(|(name, shape)| {
                    let view = st.tensor(&name).expect("checkpoint validated at load");
                    TensorOut {
                        name,
                        shape,
                        data: TensorData::Mapped {
                            dtype: view.dtype(),
                            bytes: view.data(),
                        },
                    }
                })
                .collect();
            let mut resized = config.clone();
            super::resample_positions(&mut resized, &mut outs, size).map_err(|msg| {
                ConvertError::BadConfig {
                    path: dir.join(checkpoint::CONFIG_FILE),
                    msg,
                }
            })?;
            checkpoint::write(out, &resized, &outs, force)?;
        }
    }
    Ok(ConvertReport {
        family: "ours (checkpoint folder)".into(),
        source: label.to_string(),
        out: out.to_path_buf(),
        tensors,
        parameters: config.num_parameters(),
        dropped: Vec::new(),
        seconds: 0.0,
    })
}

//! `pipeline embed`: run a checkpoint on images or on raw NCHW tensors and save the
//! token features, pooled embedding and logits. How users pull embeddings out of
//! backbones (Phikon, UNI, DINOv2), and how tests compare with reference outputs.

use std::path::{Path, PathBuf};

use mlx_rs::Array;

use crate::checkpoint::{self, Checkpoint, CheckpointError, TensorOut};
use crate::imaging::{self, ImageError};
use crate::model::{self, ModelError};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {msg}")]
    Pixels { path: PathBuf, msg: String },
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing to embed: give --pixels FILE or image paths")]
    NoInput,
}

pub enum EmbedInput {
    /// Pre-normalised `[N, 3, H, W]` float tensor (`pixel_values`, or the file's only tensor).
    Pixels(PathBuf),
    Images(Vec<PathBuf>),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbedReport {
    pub count: usize,
    pub out: PathBuf,
    pub tokens_shape: Vec<usize>,
    pub pooled_shape: Vec<usize>,
    pub logits_shape: Option<Vec<usize>>,
}

/// Reads `[N, C, H, W]` pixels from a safetensors file.
pub fn read_pixels(path: &Path) -> Result<(Vec<usize>, Vec<f32>), EmbedError> {
    let bad = |msg: String| EmbedError::Pixels {
        path: path.to_path_buf(),
        msg,
    };
    let mmap = checkpoint::map_file(path)?;
    let st = checkpoint::parse_safetensors(path, &mmap)?;
    let names = st.names();
    let name = if names.contains(&"pixel_values") {
        "pixel_values".to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        return Err(bad(format!(
            "holds {} tensors and none is named `pixel_values`",
            names.len()
        )));
    };
    let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
    if view.shape().len() != 4 {
        return Err(bad(format!(
            "`{name}` has shape {:?}, expected [N, C, H, W]",
            view.shape()
        )));
    }
    if !checkpoint::is_float(view.dtype()) {
        return Err(bad(format!(
            "`{name}` is {:?}, expected a float type",
            view.dtype()
        )));
    }
    Ok((
        view.shape().to_vec(),
        checkpoint::widen(view.dtype(), view.data()),
    ))
}

pub fn embed(
    model_dir: &Path,
    input: &EmbedInput,
    out: &Path,
    batch: usize,
) -> Result<EmbedReport, EmbedError> {
    let ck = Checkpoint::load(model_dir)?;
    let vit = model::from_checkpoint(&ck)?;
    let cfg = &ck.config;
    let (shape, pixels, files) = match input {
        EmbedInput::Pixels(path) => {
            let (shape, data) = read_pixels(path)?;
            if shape[1] != cfg.in_channels {
                return Err(EmbedError::Pixels {
                    path: path.clone(),
                    msg: format!("{} channels, the model takes {}", shape[1], cfg.in_channels),
                });
            }
            (shape, data, None)
        }
        EmbedInput::Images(paths) => {
            if paths.is_empty() {
                return Err(EmbedError::NoInput);
            }
            let s = cfg.image_size;
            let mut data = Vec::with_capacity(paths.len() * 3 * s * s);
            for p in paths {
                let img = imaging::load_rgb(p)?;
                let img = imaging::eval_transform(&img, cfg.preprocess.resize_shorter, s);
                imaging::normalise_into(&img, &cfg.preprocess, &mut data);
            }
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            (vec![paths.len(), 3, s, s], data, Some(names))
        }
    };
    let n = shape[0];
    let per = shape[1..].iter().product::<usize>();
    let batch = batch.max(1);
    let dims: Vec<i32> = shape[1..].iter().map(|d| *d as i32).collect();
    let (mut tokens, mut pooled, mut logits) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tshape, mut pshape, mut lshape) = (Vec::new(), Vec::new(), None);
    let bar = Progress::new(n as u64, "embedding");
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let mut bshape = vec![(end - start) as i32];
        bshape.extend(&dims);
        let x = Array::from_slice(&pixels[start * per..end * per], &bshape);
        let o = vit.forward(&x)?;
        tokens.extend(model::to_host(&o.tokens)?);
        pooled.extend(model::to_host(&o.pooled)?);
        tshape = o.tokens.shape().iter().map(|d| *d as usize).collect();
        pshape = o.pooled.shape().iter().map(|d| *d as usize).collect();
        if let Some(l) = &o.logits {
            logits.extend(model::to_host(l)?);
            lshape = Some(l.shape().iter().map(|d| *d as usize).collect::<Vec<_>>());
        }
        bar.inc((end - start) as u64);
    }
    bar.finish();
    tshape[0] = n;
    pshape[0] = n;
    let mut outs = vec![
        TensorOut::owned("last_hidden_state", tshape.clone(), tokens),
        TensorOut::owned("pooled", pshape.clone(), pooled),
    ];
    if let Some(s) = lshape.as_mut() {
        s[0] = n;
        outs.push(TensorOut::owned("logits", s.clone(), logits));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("model".to_string(), cfg.provenance.source.clone());
    if let Some(f) = files {
        meta.insert(
            "files".to_string(),
            serde_json::to_string(&f).expect("json"),
        );
    }
    let tmp = crate::fsutil::temp_sibling(out);
    checkpoint::write_safetensors(&tmp, &outs, Some(meta))
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            EmbedError::Io {
                path: out.to_path_buf(),
                source,
            }
        })?;
    Ok(EmbedReport {
        count: n,
        out: out.to_path_buf(),
        tokens_shape: tshape,
        pooled_shape: pshape,
        logits_shape: lshape,
    })
}

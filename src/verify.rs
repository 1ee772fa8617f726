//! `pipeline verify`: run an exported package through our MIL interpreter and compare it
//! with the model it came from: the live MLX forward of a checkpoint (`--model`) or saved
//! reference outputs (`--reference`, e.g. from `pipeline embed`), on given images, the
//! reference file's pixels, or a seeded probe batch. With `reference_out` it also writes
//! what it compared against as a `coreml-bench --reference` file ([`ReferenceFile`]).

use std::path::{Path, PathBuf};

use crate::bench::{BenchError, ReferenceFile, ReferenceTensor};
use crate::checkpoint::{self, CheckpointError};
use crate::config::ModelConfig;
use crate::coreml::interp::Package;
use crate::coreml::vit::names;
use crate::coreml::{self, Precision, Tensor, VerifyReport};
use crate::imaging;
use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum VerifyStageError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Interp(#[from] coreml::interp::InterpError),
    #[error(transparent)]
    Verify(#[from] coreml::verify::VerifyError),
    #[error(transparent)]
    Image(#[from] imaging::ImageError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[cfg(feature = "mlx")]
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[cfg(feature = "mlx")]
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[cfg(feature = "mlx")]
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// The `--reference-out` file could not be built or written (the message names it).
    #[error("writing the coreml-bench reference file: {source}")]
    ReferenceOut { path: PathBuf, source: BenchError },
    #[error(transparent)]
    CoreMl(#[from] crate::coreml_runtime::CoreMlError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Checkpoint the package was exported from: MLX computes the reference outputs.
    pub model: Option<PathBuf>,
    /// Safetensors with `pixel_values` and reference outputs (`last_hidden_state`,
    /// `pooled`, `logits`).
    pub reference: Option<PathBuf>,
    pub images: Vec<PathBuf>,
    /// Size of the random probe batch when neither images nor a reference are given.
    pub probe: usize,
    pub seed: u64,
    /// Also write the inputs and reference outputs compared against here, as a
    /// `coreml-bench --reference` JSON file under the package's feature names.
    pub reference_out: Option<PathBuf>,
    /// A labelled data set (image folder with class subfolders, or the train stage's
    /// CSV / JSON lists; its validation split when it has one): top-1 of the package and
    /// of the model on the same images.
    pub data: Option<PathBuf>,
    /// At most this many images of `data` (0: all).
    pub limit: usize,
    /// How a compressed package is judged.
    pub compressed: coreml::verify::CompressedRules,
    /// Run the package on this many inputs at a time (a batch size it accepts; 0 or 1:
    /// one at a time).
    pub batch: usize,
}

/// Reference-file tensors by name.
fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>, VerifyStageError> {
    let mmap = checkpoint::map_file(path)?;
    let st = checkpoint::parse_safetensors(path, &mmap)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if checkpoint::is_float(view.dtype()) {
            let t = Tensor::new(
                view.shape().to_vec(),
                checkpoint::widen(view.dtype(), view.data()),
            )
            .ok_or_else(|| {
                VerifyStageError::Usage(format!("{}: `{name}`: bad shape", path.display()))
            })?;
            out.push((name, t));
        }
    }
    Ok(out)
}

/// Inputs as both raw 0..255 planes (image-input packages) and normalised pixels.
struct Inputs {
    raw: Option<Tensor>,
    normalised: Tensor,
}

fn from_normalised(x: Tensor, cfg: Option<&ModelConfig>) -> Inputs {
    let raw = cfg.map(|c| {
        let plane = x.shape[2] * x.shape[3];
        let data = x
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = (i / plane) % 3;
                (v * c.preprocess.std[ch] + c.preprocess.mean[ch]) * 255.0
            })
            .collect();
        Tensor::new(x.shape.clone(), data).expect("same shape")
    });
    Inputs { raw, normalised: x }
}

fn from_raw(raw: Vec<f32>, shape: Vec<usize>, cfg: &ModelConfig) -> Inputs {
    let plane = shape[2] * shape[3];
    let norm = raw
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = (i / plane) % 3;
            (v / 255.0 - cfg.preprocess.mean[ch]) / cfg.preprocess.std[ch]
        })
        .collect();
    Inputs {
        raw: Some(Tensor::new(shape.clone(), raw).expect("shape")),
        normalised: Tensor::new(shape, norm).expect("shape"),
    }
}

pub fn package_precision(pkg: &Package) -> Precision {
    let meta = pkg
        .model
        .description
        .as_ref()
        .and_then(|d| d.metadata.as_ref());
    match meta
        .and_then(|m| m.user_defined.get(coreml::export::PRECISION_KEY))
        .map(String::as_str)
    {
        Some("fp32") => Precision::Fp32,
        _ => Precision::Fp16,
    }
}

/// Metadata key under which an export records its weight compression.
pub const COMPRESSION_KEY: &str = "compression";

/// The package's weight compression, from its metadata (None: plain fp16/fp32 weights).
pub fn package_compression(pkg: &Package) -> Option<String> {
    pkg.model
        .description
        .as_ref()
        .and_then(|d| d.metadata.as_ref())
        .and_then(|m| m.user_defined.get(COMPRESSION_KEY))
        .filter(|v| !v.is_empty() && v.as_str() != "none")
        .cloned()
}

/// Images (with labels when they come from a data set) in the package's input size.
fn image_inputs(
    paths: &[PathBuf],
    c: &ModelConfig,
    size: usize,
) -> Result<Inputs, VerifyStageError> {
    let mut raw = Vec::new();
    for p in paths {
        let img =
            imaging::eval_transform(&imaging::load_rgb(p)?, c.preprocess.resize_shorter, size);
        imaging::planes_into(&img, &mut raw);
    }
    Ok(from_raw(raw, vec![paths.len(), 3, size, size], c))
}

/// The labelled images of `data` (its validation split when it has one), labels in the
/// model's class order.
fn labelled(
    data: &Path,
    c: &ModelConfig,
    limit: usize,
) -> Result<(Vec<PathBuf>, Vec<usize>), VerifyStageError> {
    let classes = c.class_names.clone().ok_or_else(|| {
        VerifyStageError::Usage(format!(
            "--data needs class names in the model ({} has none): labels are matched to them by name",
            c.provenance.source
        ))
    })?;
    let src = crate::data::DataSource::detect(data)?;
    let (all, val) = crate::data::load_split(&src, None, Some(classes))?;
    let set = val.unwrap_or(all);
    let mut samples = set.samples;
    if limit > 0 && samples.len() > limit {
        samples.truncate(limit);
    }
    if samples.is_empty() {
        return Err(VerifyStageError::Usage(format!(
            "{}: no images",
            data.display()
        )));
    }
    Ok(samples.into_iter().map(|s| (s.path, s.label)).unzip())
}

/// The inputs to compare on: a data set's images, given images, the reference file's
/// pixels, or a seeded probe batch; with labels for the first.
fn gather_inputs(
    opts: &VerifyOptions,
    cfg: Option<&ModelConfig>,
    reference: Option<&[(String, Tensor)]>,
    image_input: bool,
    size: usize,
) -> Result<(Inputs, Option<Vec<usize>>), VerifyStageError> {
    let need_cfg = |what: &str| {
        VerifyStageError::Usage(format!(
            "{what} needs --model (for the checkpoint's preprocessing)"
        ))
    };
    if let Some(data) = &opts.data {
        let c = cfg.ok_or_else(|| need_cfg("--data"))?;
        let (paths, labels) = labelled(data, c, opts.limit)?;
        return Ok((image_inputs(&paths, c, size)?, Some(labels)));
    }
    if !opts.images.is_empty() {
        let c = cfg.ok_or_else(|| need_cfg("--images"))?;
        return Ok((image_inputs(&opts.images, c, size)?, None));
    }
    if let Some(r) = reference {
        let x = r
            .iter()
            .find(|(n, _)| n == "pixel_values")
            .map(|(_, t)| t.clone())
            .ok_or_else(|| {
                VerifyStageError::Usage("the reference file has no `pixel_values`".into())
            })?;
        if image_input && cfg.is_none() {
            return Err(need_cfg("an image-input package with --reference"));
        }
        return Ok((from_normalised(x, cfg), None));
    }
    let c = cfg.ok_or_else(|| {
        VerifyStageError::Usage("give --model (compare with MLX) or --reference FILE".into())
    })?;
    let n = opts.probe.max(1);
    let mut rng = Rng::new(opts.seed);
    let raw: Vec<f32> = (0..n * 3 * size * size)
        .map(|_| (rng.uniform() * 255.0).round() as f32)
        .collect();
    Ok((from_raw(raw, vec![n, 3, size, size], c), None))
}

/// Top-1 of the package's class scores and of the reference logits against labels.
pub(crate) fn accuracy(
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    reference: &[(String, Tensor)],
    labels: &[usize],
) -> Result<coreml::verify::AccuracyCheck, VerifyStageError> {
    let logits = reference
        .iter()
        .find(|(n, _)| n == "logits")
        .map(|(_, t)| t)
        .ok_or_else(|| {
            VerifyStageError::Usage("--data needs a model with a classification head".into())
        })?;
    let classes = *logits.shape.last().unwrap_or(&1);
    let scores = got
        .get(names::LOGITS)
        .or_else(|| got.get(names::PROBS))
        .ok_or_else(|| {
            VerifyStageError::Usage(
                "--data needs a package with class scores (logits or classifier output)".into(),
            )
        })?;
    let ours = coreml::verify::predictions(scores, classes);
    let theirs = coreml::verify::predictions(&logits.data, classes);
    let n = labels.len().max(1) as f64;
    let hits = |p: &[usize]| p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / n;
    Ok(coreml::verify::AccuracyCheck {
        examples: labels.len(),
        package_top1: hits(&ours),
        reference_top1: hits(&theirs),
        agreement: ours.iter().zip(&theirs).filter(|(a, b)| a == b).count() as f64 / n,
    })
}

/// What every runtime's check starts from: the package, the inputs it is fed (under its
/// input name) and the reference outputs (under the reference names), with labels when
/// they come from a data set.
pub(crate) struct Prepared {
    pub pkg: Package,
    pub precision: Precision,
    pub inputs: Vec<(String, Tensor)>,
    pub outputs: Vec<(String, Tensor)>,
    pub labels: Option<Vec<usize>>,
}

pub(crate) fn prepare(pkg_path: &Path, opts: &VerifyOptions) -> Result<Prepared, VerifyStageError> {
    let pkg = Package::open(pkg_path)?;
    let precision = package_precision(&pkg);
    let package_inputs = pkg.inputs()?;
    let (input_name, input_ty) = package_inputs
        .first()
        .cloned()
        .ok_or_else(|| VerifyStageError::Usage("the package has no input".into()))?;
    let image_input = input_name == "image";
    let size = *input_ty.shape.last().unwrap_or(&0);
    let cfg = match &opts.model {
        Some(dir) => Some(checkpoint::read_config(dir)?),
        None => None,
    };
    let reference = opts.reference.as_deref().map(read_all).transpose()?;
    let (inputs, labels) =
        gather_inputs(opts, cfg.as_ref(), reference.as_deref(), image_input, size)?;
    let outputs = reference_outputs(&pkg, reference.as_deref(), opts, &inputs)?;
    let x = if image_input {
        inputs.raw.ok_or_else(|| {
            VerifyStageError::Usage(
                "an image-input package needs --model (for the checkpoint's preprocessing)".into(),
            )
        })?
    } else {
        inputs.normalised
    };
    Ok(Prepared {
        pkg,
        precision,
        inputs: vec![(input_name, x)],
        outputs,
        labels,
    })
}

/// Our interpreter on the prepared inputs, judged against the reference; with the
/// outputs it gave (examples concatenated), which other runtimes are compared with.
pub(crate) fn check_interpreter(
    pkg_path: &Path,
    p: &Prepared,
    opts: &VerifyOptions,
) -> Result<(VerifyReport, std::collections::BTreeMap<String, Vec<f32>>), VerifyStageError> {
    let run = coreml::verify::run_examples_batched(pkg_path, &p.inputs, opts.batch)?;
    let th = coreml::verify::Thresholds::for_precision(p.precision);
    let checks = coreml::verify::compare(&run.outputs, &p.outputs, &th)?;
    let mut report = VerifyReport {
        package: pkg_path.to_path_buf(),
        precision: p.precision,
        examples: run.examples,
        thresholds: th,
        rule: coreml::verify::Rule::Thresholds,
        compression: None,
        accuracy: None,
        pass: checks.iter().all(|c| c.pass),
        outputs: checks,
        neural_engine: coreml::ane_report::of_model(&p.pkg.model),
    };
    if let Some(labels) = &p.labels {
        report.accuracy = Some(accuracy(&run.outputs, &p.outputs, labels)?);
    }
    if let Some(c) = package_compression(&p.pkg) {
        report.judge_compressed(c, &opts.compressed);
    }
    Ok((report, run.outputs))
}

pub fn verify(pkg_path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyStageError> {
    let p = prepare(pkg_path, opts)?;
    let (report, _) = check_interpreter(pkg_path, &p, opts)?;
    if let Some(path) = &opts.reference_out {
        write_reference_out(&p.pkg, path, opts, &p.inputs, &p.outputs)?;
    }
    Ok(report)
}

/// The reference outputs the package has counterparts of: from the reference file or
/// the MLX forward of `--model`.
fn reference_outputs(
    pkg: &Package,
    reference: Option<&[(String, Tensor)]>,
    opts: &VerifyOptions,
    inputs: &Inputs,
) -> Result<Vec<(String, Tensor)>, VerifyStageError> {
    let outputs: Vec<(String, Tensor)> = match (reference, &opts.model) {
        (Some(r), _) if opts.data.is_none() && opts.images.is_empty() => r
            .iter()
            .filter(|(n, _)| n != "pixel_values" && !n.ends_with("_interp"))
            .cloned()
            .collect(),
        (_, Some(model)) => mlx_reference(model, &inputs.normalised)?,
        _ => return Err(VerifyStageError::Usage(
            "images or --data need --model: the reference file's outputs belong to its own pixels"
                .into(),
        )),
    };
    let names = pkg.output_names()?;
    let has = |n: &str| names.iter().any(|o| o == n);
    let outputs: Vec<(String, Tensor)> = outputs
        .into_iter()
        .filter(|(n, _)| match n.as_str() {
            "logits" => has("logits") || has("classLabel_probs"),
            "pooled" => has("embedding"),
            "last_hidden_state" => has("tokens"),
            _ => false,
        })
        .collect();
    if outputs.is_empty() {
        return Err(VerifyStageError::Usage(format!(
            "no reference output matches the package's outputs {names:?}"
        )));
    }
    Ok(outputs)
}

pub(crate) fn write_reference_out(
    pkg: &Package,
    path: &Path,
    opts: &VerifyOptions,
    inputs: &[(String, Tensor)],
    outputs: &[(String, Tensor)],
) -> Result<(), VerifyStageError> {
    let names = pkg.output_names()?;
    let source = match (&opts.reference, &opts.model) {
        (Some(r), _) => format!("pipeline verify: reference outputs of {}", r.display()),
        (None, Some(m)) => format!("pipeline verify: MLX forward of {}", m.display()),
        (None, None) => "pipeline verify".to_string(),
    };
    let out_err = |source| VerifyStageError::ReferenceOut {
        path: path.to_path_buf(),
        source,
    };
    let file = reference_file(pkg, source, inputs, outputs, &names).map_err(|msg| {
        out_err(BenchError::Invalid {
            path: path.to_path_buf(),
            msg,
        })
    })?;
    file.write(path).map_err(out_err)
}

/// The `coreml-bench --reference` file for a comparison: the package's inputs as given
/// (`image` 0..255 planes or normalised `pixel_values`) and the reference outputs under
/// the package's output names: `pooled -> embedding`, `last_hidden_state -> tokens`,
/// `logits -> logits`, or for a classifier their softmax as `classLabel_probs` with the
/// package's class labels. Only outputs the package has are written.
fn reference_file(
    pkg: &Package,
    source: String,
    inputs: &[(String, Tensor)],
    outputs: &[(String, Tensor)],
    package_outputs: &[String],
) -> Result<ReferenceFile, String> {
    let has = |n: &str| package_outputs.iter().any(|o| o == n);
    let tensor = |t: &Tensor, data: Vec<f32>| ReferenceTensor {
        shape: t.shape.clone(),
        data,
    };
    // coreml-bench feeds `image` as 8-bit pixels (rounded, clamped to 0..255): say so
    // when ours are not (normalised reference pixels mapped back need not be).
    let not_8bit = inputs.iter().any(|(name, t)| {
        name == names::IMAGE
            && t.data
                .iter()
                .any(|v| !(0.0..=255.0).contains(v) || (v - v.round()).abs() > 1e-3)
    });
    let source = if not_8bit {
        format!(
            "{source}; note: `image` holds values that are not 8-bit pixels (fractional or \
             outside 0..255); coreml-bench rounds and clamps them, so its outputs may differ"
        )
    } else {
        source
    };
    let mut file = ReferenceFile::new(source);
    for (name, t) in inputs {
        file.inputs.insert(name.clone(), tensor(t, t.data.clone()));
    }
    for (name, t) in outputs {
        let (out, data) = match name.as_str() {
            "pooled" if has(names::EMBEDDING) => (names::EMBEDDING, t.data.clone()),
            "last_hidden_state" if has(names::TOKENS) => (names::TOKENS, t.data.clone()),
            "logits" if has(names::LOGITS) => (names::LOGITS, t.data.clone()),
            "logits" if has(names::PROBS) => {
                let classes = *t.shape.last().unwrap_or(&1);
                let labels = pkg
                    .class_labels()
                    .map_err(|e| e.to_string())?
                    .ok_or("the package has classLabel_probs but no `classify` op")?;
                file.class_labels = Some(labels);
                (
                    names::PROBS,
                    coreml::verify::softmax_rows(&t.data, classes.max(1)),
                )
            }
            _ => continue,
        };
        file.outputs.insert(out.to_string(), tensor(t, data));
    }
    // `write` checks the file (sizes, one example count, labels per column).
    Ok(file)
}

#[cfg(feature = "mlx")]
fn mlx_reference(model: &Path, x: &Tensor) -> Result<Vec<(String, Tensor)>, VerifyStageError> {
    let ck = checkpoint::Checkpoint::load(model)?;
    let vit = crate::model::from_checkpoint(&ck)?;
    let shape: Vec<i32> = x.shape.iter().map(|d| *d as i32).collect();
    let out = vit.forward(&mlx_rs::Array::from_slice(&x.data, &shape))?;
    let t = |a: &mlx_rs::Array| -> Result<Tensor, VerifyStageError> {
        let data = crate::model::to_host(a)?;
        Ok(Tensor::new(a.shape().iter().map(|d| *d as usize).collect(), data).expect("shape"))
    };
    let mut v = vec![
        ("last_hidden_state".to_string(), t(&out.tokens)?),
        ("pooled".to_string(), t(&out.pooled)?),
    ];
    if let Some(l) = &out.logits {
        v.push(("logits".to_string(), t(l)?));
    }
    Ok(v)
}

#[cfg(not(feature = "mlx"))]
fn mlx_reference(_model: &Path, _x: &Tensor) -> Result<Vec<(String, Tensor)>, VerifyStageError> {
    Err(VerifyStageError::Usage(
        "this build has no MLX (built without the `mlx` feature): pass --reference FILE with saved outputs".into(),
    ))
}

/// Writes the report as JSON next to wherever the caller wants it.
pub fn write_json(report: &VerifyReport, path: &Path) -> Result<(), VerifyStageError> {
    let text = serde_json::to_string_pretty(report).expect("json");
    crate::fsutil::write_file_atomically(path, text.as_bytes()).map_err(|source| {
        VerifyStageError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

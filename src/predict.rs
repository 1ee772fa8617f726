//! `pipeline predict`: class names and probabilities for images, from a checkpoint
//! (the MLX forward) or from an exported package (our interpreter of its program; on a
//! Mac, Core ML itself once the runtime path exists). The same images prepared the same
//! way as `verify` prepares them, so the numbers of the two agree.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::CheckpointError;
use crate::config::Preprocess;
use crate::coreml::interp::{InterpError, Output, Package, Tensor};
use crate::imaging::{self, ImageError};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error(
        "{model}: the model has no classification head (a backbone): predict needs a classifier. \
         Train one with `pipeline train` (a head for the data's classes is added), or use \
         `pipeline embed` for features"
    )]
    NoHead { model: PathBuf },
    #[error(
        "{package}: no classifier or logits output (it has {outputs}): export with \
         `--output classifier` or `--output logits`"
    )]
    NoScores { package: PathBuf, outputs: String },
    #[error("{package}: {msg}")]
    Package { package: PathBuf, msg: String },
    #[error("nothing to predict: give one or more image paths")]
    NoImages,
    #[cfg(feature = "mlx")]
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[cfg(feature = "mlx")]
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    CoreMl(#[from] crate::coreml_runtime::CoreMlError),
}

/// Where a package runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackageRuntime {
    /// Our interpreter of the package's program (any platform).
    #[default]
    Interpreter,
    /// Core ML itself with this compute-unit setting (macOS, `coreml` feature).
    CoreMl(crate::bench::ComputeUnits),
}

/// What predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictor {
    /// A checkpoint folder with a head, run by MLX.
    Model(PathBuf),
    /// An `.mlpackage` with a classifier or logits output.
    Package(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub probability: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    /// The `k` most likely classes, most likely first.
    pub top: Vec<ClassScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictReport {
    pub source: PathBuf,
    /// `mlx` or `interpreter`.
    pub runtime: String,
    pub classes: usize,
    pub predictions: Vec<Prediction>,
}

/// The `k` largest of `probs` with their class names.
fn top_k(probs: &[f64], names: &[String], k: usize) -> Vec<ClassScore> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k.max(1))
        .map(|i| ClassScore {
            class: names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            probability: probs[i],
        })
        .collect()
}

/// Softmax in f64 (the logits of a package or the MLX forward).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|v| f64::from(v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn names_or_numbers(names: Option<Vec<String>>, k: usize) -> Vec<String> {
    names
        .filter(|n| n.len() == k)
        .unwrap_or_else(|| (0..k).map(|i| format!("class {i}")).collect())
}

/// Predicts the classes of `images`.
pub fn predict(
    predictor: &Predictor,
    images: &[PathBuf],
    k: usize,
) -> Result<PredictReport, PredictError> {
    predict_on(predictor, images, k, PackageRuntime::Interpreter)
}

/// [`predict`], a package run where `runtime` says.
pub fn predict_on(
    predictor: &Predictor,
    images: &[PathBuf],
    k: usize,
    runtime: PackageRuntime,
) -> Result<PredictReport, PredictError> {
    if images.is_empty() {
        return Err(PredictError::NoImages);
    }
    match (predictor, runtime) {
        (Predictor::Model(dir), _) => with_model(dir, images, k),
        (Predictor::Package(pkg), PackageRuntime::Interpreter) => with_package(pkg, images, k),
        (Predictor::Package(pkg), PackageRuntime::CoreMl(units)) => {
            // Before any image is read: off macOS this says so at once.
            crate::coreml_runtime::check_supported()?;
            with_core_ml(pkg, images, k, units)
        }
    }
}

#[cfg(feature = "mlx")]
fn with_model(dir: &Path, images: &[PathBuf], k: usize) -> Result<PredictReport, PredictError> {
    let ck = crate::checkpoint::Checkpoint::load(dir)?;
    let cfg = &ck.config;
    if cfg.num_classes == 0 {
        return Err(PredictError::NoHead {
            model: dir.to_path_buf(),
        });
    }
    let vit = crate::model::from_checkpoint(&ck)?;
    let names = names_or_numbers(cfg.class_names.clone(), cfg.num_classes);
    let s = cfg.image_size;
    let mut predictions = Vec::with_capacity(images.len());
    // A few images at a time: the forward is batched, memory stays small.
    for chunk in images.chunks(16) {
        let mut data = Vec::with_capacity(chunk.len() * 3 * s * s);
        for p in chunk {
            let img =
                imaging::eval_transform(&imaging::load_rgb(p)?, cfg.preprocess.resize_shorter, s);
            imaging::normalise_into(&img, &cfg.preprocess, &mut data);
        }
        let x = mlx_rs::Array::from_slice(&data, &[chunk.len() as i32, 3, s as i32, s as i32]);
        let out = vit.forward(&x)?;
        let logits = out.logits.as_ref().ok_or_else(|| PredictError::NoHead {
            model: dir.to_path_buf(),
        })?;
        let host = crate::model::to_host(logits)?;
        for (p, row) in chunk.iter().zip(host.chunks(cfg.num_classes)) {
            predictions.push(Prediction {
                image: p.clone(),
                top: top_k(&softmax(row), &names, k),
            });
        }
    }
    Ok(PredictReport {
        source: dir.to_path_buf(),
        runtime: "mlx".into(),
        classes: cfg.num_classes,
        predictions,
    })
}

#[cfg(not(feature = "mlx"))]
fn with_model(_dir: &Path, _images: &[PathBuf], _k: usize) -> Result<PredictReport, PredictError> {
    Err(PredictError::Unsupported(
        "this build has no MLX (built without the `mlx` feature): predict with an exported package instead".into(),
    ))
}

/// The evaluation preprocessing a package records in its metadata.
fn package_preprocess(pkg: &Package) -> Option<Preprocess> {
    let meta = pkg.model.description.as_ref()?.metadata.as_ref()?;
    serde_json::from_str(
        meta.user_defined
            .get(crate::coreml::export::PREPROCESS_KEY)?,
    )
    .ok()
}

/// How the package scores classes: its `classify` probabilities, or a logits tensor.
enum Scores {
    Probabilities(String),
    Logits(String),
}

fn scores_output(pkg: &Package, path: &Path) -> Result<Scores, PredictError> {
    let outputs = pkg.output_names()?;
    if pkg.class_labels()?.is_some() {
        if let Some(o) = outputs.iter().find(|o| o.ends_with("_probs")) {
            return Ok(Scores::Probabilities(o.clone()));
        }
    }
    if let Some(o) = outputs.iter().find(|o| *o == "logits") {
        return Ok(Scores::Logits(o.clone()));
    }
    Err(PredictError::NoScores {
        package: path.to_path_buf(),
        outputs: outputs
            .iter()
            .map(|o| format!("`{o}`"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// One image as the package's input: 0..255 planes for an image input, normalised
/// pixels for a multiArray.
fn package_input(
    path: &Path,
    pre: &Preprocess,
    size: usize,
    image_input: bool,
) -> Result<Tensor, PredictError> {
    let img = imaging::eval_transform(&imaging::load_rgb(path)?, pre.resize_shorter, size);
    let mut data = Vec::with_capacity(3 * size * size);
    if image_input {
        imaging::planes_into(&img, &mut data);
    } else {
        imaging::normalise_into(&img, pre, &mut data);
    }
    Ok(Tensor::new(vec![1, 3, size, size], data).expect("shape matches the data"))
}

/// A package opened for predictions: how it scores classes, its input and how images
/// are prepared for it.
struct Opened {
    pkg: Package,
    scores: Scores,
    input: String,
    size: usize,
    image_input: bool,
    pre: Preprocess,
}

fn bad_package(path: &Path) -> impl Fn(String) -> PredictError + '_ {
    move |msg| PredictError::Package {
        package: path.to_path_buf(),
        msg,
    }
}

fn open_package(path: &Path) -> Result<Opened, PredictError> {
    let pkg = Package::open(path)?;
    let bad = bad_package(path);
    let scores = scores_output(&pkg, path)?;
    let (input, ty) = pkg
        .inputs()?
        .first()
        .cloned()
        .ok_or_else(|| bad("the package has no input".into()))?;
    if ty.shape.len() != 4 || ty.shape[1] != 3 {
        return Err(bad(format!(
            "input `{input}` is {:?}, not an image of [1, 3, H, W]",
            ty.shape
        )));
    }
    let pre = package_preprocess(&pkg).ok_or_else(|| {
        bad(format!(
            "no `{}` in its metadata (exported by an older version): export it again",
            crate::coreml::export::PREPROCESS_KEY
        ))
    })?;
    Ok(Opened {
        size: ty.shape[3],
        image_input: input == "image",
        pkg,
        scores,
        input,
        pre,
    })
}

fn with_package(path: &Path, images: &[PathBuf], k: usize) -> Result<PredictReport, PredictError> {
    let Opened {
        pkg,
        scores,
        input,
        size,
        image_input,
        pre,
    } = open_package(path)?;
    let bad = bad_package(path);
    let labels = pkg.class_labels()?;
    let mut predictions = Vec::with_capacity(images.len());
    let mut classes = 0;
    for p in images {
        let x = package_input(p, &pre, size, image_input)?;
        let mut out = pkg.run(&[(input.as_str(), x)])?;
        let (probs, names) = match &scores {
            Scores::Probabilities(name) => match out.remove(name) {
                Some(Output::Probabilities(v)) => {
                    let names = v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
                    (v.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), names)
                }
                _ => return Err(bad(format!("output `{name}` is not class probabilities"))),
            },
            Scores::Logits(name) => match out.remove(name) {
                Some(Output::Tensor(t)) => {
                    let n = t.data.len();
                    (softmax(&t.data), names_or_numbers(labels.clone(), n))
                }
                _ => return Err(bad(format!("output `{name}` is not a tensor"))),
            },
        };
        classes = probs.len();
        predictions.push(Prediction {
            image: p.clone(),
            top: top_k(&probs, &names, k),
        });
    }
    Ok(PredictReport {
        source: path.to_path_buf(),
        runtime: "interpreter".into(),
        classes,
        predictions,
    })
}

/// The images through Core ML on `units`, prepared as for the interpreter and stacked.
fn with_core_ml(
    path: &Path,
    images: &[PathBuf],
    k: usize,
    units: crate::bench::ComputeUnits,
) -> Result<PredictReport, PredictError> {
    let o = open_package(path)?;
    let bad = bad_package(path);
    let mut data = Vec::new();
    for p in images {
        data.extend(package_input(p, &o.pre, o.size, o.image_input)?.data);
    }
    let x = Tensor::new(vec![images.len(), 3, o.size, o.size], data).expect("stacked images");
    let runs = crate::coreml_runtime::run_units(path, &[(o.input.clone(), x)], &[units])?;
    let (pkg, scores) = (o.pkg, o.scores);
    let run = runs
        .into_iter()
        .next()
        .ok_or_else(|| bad("no run".into()))?;
    if let Some(e) = run.error {
        return Err(bad(format!("Core ML ({units}): {e}")));
    }
    let labels = pkg.class_labels()?;
    let (name, logits) = match &scores {
        Scores::Probabilities(n) => (n, false),
        Scores::Logits(n) => (n, true),
    };
    let values = run
        .outputs
        .get(name)
        .ok_or_else(|| bad(format!("Core ML gave no `{name}`")))?;
    let classes = values.len() / images.len().max(1);
    let names = names_or_numbers(labels, classes);
    let predictions = images
        .iter()
        .zip(values.chunks(classes.max(1)))
        .map(|(p, row)| Prediction {
            image: p.clone(),
            top: top_k(
                &if logits {
                    softmax(row)
                } else {
                    row.iter().map(|v| f64::from(*v)).collect()
                },
                &names,
                k,
            ),
        })
        .collect();
    Ok(PredictReport {
        source: path.to_path_buf(),
        runtime: format!("core ml ({units})"),
        classes,
        predictions,
    })
}

/// Whether `path` is a package (by its name or its `Manifest.json`).
pub fn is_package(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "mlpackage") || path.join("Manifest.json").is_file()
}

impl std::fmt::Display for PredictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} ({}, {} classes)",
            self.source.display(),
            self.runtime,
            self.classes
        )?;
        let width = self
            .predictions
            .iter()
            .flat_map(|p| p.top.iter().map(|c| c.class.chars().count()))
            .max()
            .unwrap_or(5)
            .max(5);
        for p in &self.predictions {
            writeln!(f, "{}", p.image.display())?;
            for (i, c) in p.top.iter().enumerate() {
                writeln!(
                    f,
                    "  {}. {:<width$}  {:>6.2}%",
                    i + 1,
                    c.class,
                    100.0 * c.probability
                )?;
            }
        }
        Ok(())
    }
}

//! The stages of a run, one function each. Each takes what the stages before it left (small
//! records: folders and input hashes), runs or skips through the [`StageCache`], and
//! returns its own record for the stages after it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cache::{hash_parts, hash_path, json, StageCache};
use super::{stage_err, RunConfig, RunError};
use crate::coreml::{self, InputKind, OutputKind, Precision, Target};
use crate::train::Mode;

/// The converted base model.
pub(super) struct Converted {
    pub model_dir: PathBuf,
    pub hash: String,
}

/// What training left: LoRA adapters or a fully fine-tuned model; or, with `[merge]
/// adapters`, the adapters given there (`given`; training skipped).
pub(super) struct Trained {
    pub dir: PathBuf,
    pub adapters_dir: PathBuf,
    pub hash: String,
    pub mode: Mode,
    pub given: bool,
}

impl Trained {
    /// The folder training produces in its mode.
    fn output(&self) -> PathBuf {
        match self.mode {
            Mode::Lora => self.adapters_dir.clone(),
            Mode::Full => self.dir.join("model"),
        }
    }
}

/// The model to export: base with adapters folded in, or the fine-tuned model.
pub(super) struct Merged {
    pub dir: PathBuf,
    pub hash: String,
}

pub(super) struct Exported {
    pub package: PathBuf,
    /// The uncompressed twin written beside a compressed package, to compare with.
    pub fp16: Option<PathBuf>,
    pub hash: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn convert(cfg: &RunConfig, cache: &mut StageCache) -> Result<Converted, RunError> {
    let model_dir = cfg.run.out.join("model");
    let source_hash = if Path::new(&cfg.convert.source).exists() {
        hash_path(Path::new(&cfg.convert.source))
    } else {
        cfg.convert.source.clone()
    };
    let hash = hash_parts(&[b"convert", &json(&cfg.convert), source_hash.as_bytes()]);
    cache.stage(
        "convert",
        &hash,
        model_dir.join("model.safetensors").exists(),
        || {
            let r = crate::convert::convert(
                &cfg.convert.source,
                &model_dir,
                &crate::convert::ConvertOptions {
                    force: true,
                    revision: cfg.convert.revision.clone(),
                    image_size: cfg.convert.image_size,
                },
            )
            .map_err(|e| stage_err("convert")(e.to_string()))?;
            Ok(format!(
                "{} tensors, {:.2}M parameters ({})",
                r.tensors,
                r.parameters as f64 / 1e6,
                r.family
            ))
        },
    )?;
    Ok(Converted { model_dir, hash })
}

pub(super) fn train(
    cfg: &RunConfig,
    converted: &Converted,
    cache: &mut StageCache,
) -> Result<Trained, RunError> {
    let dir = cfg.run.out.join("train");
    if let Some(given) = &cfg.merge.adapters {
        cache.skip("train", "adapters given in [merge]");
        return Ok(Trained {
            dir,
            adapters_dir: given.clone(),
            hash: hash_parts(&[
                b"given adapters",
                converted.hash.as_bytes(),
                adapters_hash(given).as_bytes(),
            ]),
            mode: Mode::Lora,
            given: true,
        });
    }
    let hash = hash_parts(&[
        b"train",
        converted.hash.as_bytes(),
        &json(&cfg.train),
        hash_path(&cfg.train.data).as_bytes(),
    ]);
    let trained = Trained {
        adapters_dir: dir.join("adapters"),
        dir,
        hash,
        mode: cfg.train.mode,
        given: false,
    };
    let quiet = cache.quiet;
    cache.stage("train", &trained.hash, trained.output().exists(), || {
        let resumable = prepare_train_dir(&trained.dir, &trained.hash)?;
        if cfg.train.ranks > 1 {
            return super::ranks::train(
                &converted.model_dir,
                &trained.dir,
                &cfg.train,
                resumable,
                quiet,
            );
        }
        let r = crate::train::train(
            &converted.model_dir,
            &trained.dir,
            &cfg.train,
            resumable,
            false,
            quiet,
        )
        .map_err(|e| stage_err("train")(e.to_string()))?;
        Ok(format!(
            "{} steps, {:.2} img/s{}",
            r.steps,
            r.images_per_second,
            r.final_eval
                .map(|e| format!(", val top-1 {:.2}%", 100.0 * e.top1))
                .unwrap_or_default()
        ))
    })?;
    Ok(trained)
}

/// Content hash of an adapters folder (ours or PEFT): its config and weights files.
fn adapters_hash(dir: &Path) -> String {
    let files = [
        crate::train::adapters::CONFIG_FILE,
        crate::train::adapters::WEIGHTS_FILE,
        crate::train::peft::import::WEIGHTS_FILE,
    ];
    let mut parts = Vec::new();
    for f in files {
        let digest = std::fs::read(dir.join(f))
            .map(|b| crate::checkpoint::hex(&Sha256::digest(&b)))
            .unwrap_or_default();
        parts.push(format!("{f}:{digest}"));
    }
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    hash_parts(&parts)
}

/// The weights file of an adapters folder, ours or PEFT, if either is there.
fn adapters_weights(dir: &Path) -> Option<PathBuf> {
    [
        crate::train::adapters::WEIGHTS_FILE,
        crate::train::peft::import::WEIGHTS_FILE,
    ]
    .iter()
    .map(|f| dir.join(f))
    .find(|p| p.is_file())
}

/// Resume an interrupted run of the same settings (returns true); otherwise start over in
/// an empty folder that records the settings' hash.
fn prepare_train_dir(dir: &Path, hash: &str) -> Result<bool, RunError> {
    let resumable = dir.join("checkpoint/state.json").exists()
        && std::fs::read_to_string(dir.join("run-input-hash"))
            .ok()
            .as_deref()
            == Some(hash);
    if !resumable {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        std::fs::write(dir.join("run-input-hash"), hash).map_err(io_err(dir))?;
    }
    Ok(resumable)
}

pub(super) fn merge(
    cfg: &RunConfig,
    converted: &Converted,
    trained: &Trained,
    cache: &mut StageCache,
) -> Result<Merged, RunError> {
    let dir = cfg.run.out.join("merged");
    let hash = hash_parts(&[b"merge", trained.hash.as_bytes()]);
    cache.stage(
        "merge",
        &hash,
        dir.join("model.safetensors").exists(),
        || match trained.mode {
            Mode::Lora => {
                let r =
                    crate::merge::merge(&converted.model_dir, &trained.adapters_dir, &dir, true)
                        .map_err(|e| stage_err("merge")(e.to_string()))?;
                Ok(format!(
                    "{} layers merged ({}), max |adapter - merged| {:.2e}",
                    r.layers_merged, r.adapters_format, r.max_abs_diff
                ))
            }
            Mode::Full => {
                let _ = std::fs::remove_dir_all(&dir);
                copy_dir(&trained.output(), &dir).map_err(io_err(&dir))?;
                Ok("full fine-tuning: trained model copied".into())
            }
        },
    )?;
    Ok(Merged { dir, hash })
}

pub(super) fn export(
    cfg: &RunConfig,
    trained: &Trained,
    merged: &Merged,
    cache: &mut StageCache,
) -> Result<Exported, RunError> {
    let package = cfg.run.out.join("model.mlpackage");
    let fp16 = cfg
        .export
        .compress
        .is_some()
        .then(|| cfg.run.out.join("model-fp16.mlpackage"));
    let hash = hash_parts(&[b"export", merged.hash.as_bytes(), &json(&cfg.export)]);
    let exist = package.join("Manifest.json").exists()
        && fp16
            .as_ref()
            .is_none_or(|p| p.join("Manifest.json").exists());
    cache.stage("export", &hash, exist, || {
        let opts = export_options(cfg, trained).map_err(stage_err("export"))?;
        let r = coreml::export(&merged.dir, &package, &opts)
            .map_err(|e| stage_err("export")(e.to_string()))?;
        let mut line = format!(
            "{} {} {} ops, {:.1} MB",
            r.target,
            r.precision,
            r.ops_total,
            r.package_bytes as f64 / 1e6
        );
        if let (Some(path), Some(c)) = (&fp16, &r.compression) {
            // The same package uncompressed, at the same target, for the comparison.
            let plain = coreml::ExportOptions {
                compress: None,
                target: Some(r.target),
                ..opts.clone()
            };
            let f = coreml::export(&merged.dir, path, &plain)
                .map_err(|e| stage_err("export")(e.to_string()))?;
            line = format!(
                "{line} ({}: {} weights {:.1} -> {:.1} MB; uncompressed twin model-fp16.mlpackage {:.1} MB)",
                c.method,
                c.tensors,
                c.bytes_fp16 as f64 / 1e6,
                c.bytes as f64 / 1e6,
                f.package_bytes as f64 / 1e6
            );
        }
        Ok(line)
    })?;
    Ok(Exported {
        package,
        fp16,
        hash,
    })
}

/// Compares the package with the merged model; also leaves what it compared against as
/// `reference.json`, the file `coreml-bench --reference` reads, so a Mac can check Core ML
/// on the same inputs.
pub(super) fn verify(
    cfg: &RunConfig,
    merged: &Merged,
    exported: &Exported,
    cache: &mut StageCache,
) -> Result<(), RunError> {
    let out = &cfg.run.out;
    let verify_json = out.join("verify.json");
    let reference_json = out.join("reference.json");
    let images = if cfg.verify.images.is_empty() {
        validation_images(&cfg.train.data, 32)
    } else {
        cfg.verify.images.clone()
    };
    // A compressed package is judged by top-1 on the labelled validation split.
    let data = (exported.fp16.is_some() && !cfg.train.data.as_os_str().is_empty())
        .then(|| cfg.train.data.clone());
    let hash = hash_parts(&[
        b"verify",
        exported.hash.as_bytes(),
        &json(&images),
        &json(&data),
    ]);
    let outputs_exist = verify_json.exists() && reference_json.exists();
    cache.stage("verify", &hash, outputs_exist, || {
        let opts = crate::verify::VerifyOptions {
            model: Some(merged.dir.clone()),
            images: if data.is_some() {
                Vec::new()
            } else {
                images.clone()
            },
            data: data.clone(),
            limit: VERIFY_DATA_LIMIT,
            probe: 4,
            reference_out: Some(reference_json.clone()),
            ..Default::default()
        };
        let r = crate::verify::verify(&exported.package, &opts)
            .map_err(|e| stage_err("verify")(e.to_string()))?;
        let twin = match &exported.fp16 {
            Some(p) => Some(
                crate::verify::verify(
                    p,
                    &crate::verify::VerifyOptions {
                        reference_out: None,
                        ..opts.clone()
                    },
                )
                .map_err(|e| stage_err("verify")(e.to_string()))?,
            ),
            None => None,
        };
        crate::verify::write_json(&r, &verify_json)
            .map_err(|e| stage_err("verify")(e.to_string()))?;
        let worst = r
            .outputs
            .iter()
            .map(|o| o.relative_error)
            .fold(0.0, f64::max);
        if !r.pass {
            return Err(stage_err("verify")(format!(
                "the package does not match the model:\n{r}"
            )));
        }
        let mut line = format!(
            "pass on {} inputs ({}), worst relative error {:.2e}",
            r.examples,
            r.rule.describe(),
            worst
        );
        if let Some(a) = &r.accuracy {
            let _ = write!(
                line,
                "; top-1 {:.2}% (model {:.2}%)",
                a.package_top1 * 100.0,
                a.reference_top1 * 100.0
            );
        }
        if let (Some(t), Some(p)) = (&twin, &exported.fp16) {
            let size = |pkg: &Path| {
                std::fs::metadata(pkg.join("Data/com.apple.CoreML/weights/weight.bin"))
                    .map(|m| m.len() as f64 / 1e6)
                    .unwrap_or(0.0)
            };
            let _ = write!(
                line,
                "; weights {:.2} MB vs {:.2} MB uncompressed{}",
                size(&exported.package),
                size(p),
                t.accuracy
                    .as_ref()
                    .map(|a| format!(" (top-1 {:.2}%)", a.package_top1 * 100.0))
                    .unwrap_or_default()
            );
        }
        Ok(line)
    })
}

/// Validation images a compressed package is judged on, at most.
const VERIFY_DATA_LIMIT: usize = 512;

/// Core ML runs only on macOS: the bench stage points at `pipeline bench` instead.
pub(super) fn bench(cfg: &RunConfig, cache: &mut StageCache) {
    if cfg.bench.skip || !cfg!(target_os = "macos") {
        let why = if cfg.bench.skip {
            "skipped by config"
        } else {
            "skipped: Core ML needs macOS (run `pipeline bench` on a Mac, with \
             `--reference reference.json` to check its outputs)"
        };
        cache.say(&format!("[bench] {why}"));
        cache.push("bench", "skipped", why.into());
    } else {
        cache.push(
            "bench",
            "skipped",
            "run `pipeline bench` on the package, with `--reference reference.json` \
             to check its outputs"
                .into(),
        );
    }
}

fn export_options(cfg: &RunConfig, trained: &Trained) -> Result<coreml::ExportOptions, String> {
    let e = &cfg.export;
    let precision: Precision = e
        .precision
        .as_deref()
        .unwrap_or("fp16")
        .parse()
        .map_err(|m| format!("export.precision: {m}"))?;
    let target: Option<Target> = e
        .target
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|m| format!("export.target: {m}"))?;
    let input = match e.input.as_deref().unwrap_or("image") {
        "image" => InputKind::Image,
        "array" => InputKind::Array,
        o => return Err(format!("export.input `{o}`: image or array")),
    };
    let output = match e.output.as_deref() {
        None => None,
        Some("classifier") => Some(OutputKind::Classifier),
        Some("logits") => Some(OutputKind::Logits),
        Some("features") => Some(OutputKind::Features),
        Some(o) => {
            return Err(format!(
                "export.output `{o}`: classifier, logits or features"
            ))
        }
    };
    // Given adapters were not trained here: no accuracy or dataset of ours to record.
    let summary: Option<serde_json::Value> = (!trained.given)
        .then(|| std::fs::read_to_string(trained.dir.join("summary.json")).ok())
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok());
    let val_accuracy = summary
        .as_ref()
        .and_then(|s| s["final_eval"]["top1"].as_f64());
    let adapters_hash = adapters_weights(&trained.adapters_dir)
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| crate::checkpoint::hex(&Sha256::digest(&b)));
    let compress = match e.compress.as_deref() {
        None => None,
        Some(m) => {
            let method: coreml::compress::Method =
                m.parse().map_err(|e| format!("export.compress: {e}"))?;
            let mut c = coreml::compress::CompressOptions::new(method);
            c.group_size = e.group_size;
            c.block_size = e.block_size;
            if let Some(n) = e.compress_min_elements {
                c.min_elements = n;
            }
            Some(c)
        }
    };
    let layout = match e.layout.as_deref() {
        None | Some("standard") => coreml::vit::Layout::Standard,
        Some("ane") => coreml::vit::Layout::Ane,
        Some(o) => return Err(format!("export.layout: `{o}` (standard or ane)")),
    };
    Ok(coreml::ExportOptions {
        layout,
        batch_sizes: e.batch.clone().unwrap_or_default(),
        precision,
        target,
        input,
        output,
        compress,
        metadata: coreml::ExportMetadata {
            author: e.author.clone(),
            license: e.license.clone(),
            description: e.description.clone(),
            version: e.version.clone(),
            adapters_hash,
            dataset: (!trained.given).then(|| cfg.train.data.display().to_string()),
            val_accuracy,
            user_defined: e.metadata.clone(),
            ..Default::default()
        },
        force: true,
        ..Default::default()
    })
}

/// Up to `n` validation images (folder layout DATA/val/CLASS/*), in a fixed order.
fn validation_images(data: &Path, n: usize) -> Vec<PathBuf> {
    if data.as_os_str().is_empty() {
        return Vec::new(); // no [train] data (given adapters): a probe batch
    }
    let val = data.join("val");
    let mut found = Vec::new();
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&val)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    classes.sort();
    let per_class = (n / classes.len().max(1)).max(1);
    for c in classes {
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(&c)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        imgs.sort();
        found.extend(imgs.into_iter().take(per_class));
    }
    found.truncate(n);
    found
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

//! `pipeline run CONFIG.toml`: every stage in order, in one run folder. A stage is skipped
//! when its inputs (its settings and the content of what it reads) are unchanged since it
//! last completed; an interrupted training resumes from its checkpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::coreml::{self, InputKind, OutputKind, Precision, Target};
use crate::train::TrainConfig;

pub const STAGES: [&str; 6] = ["convert", "train", "merge", "export", "verify", "bench"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub convert: ConvertSection,
    pub train: TrainConfig,
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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stage {stage}: {msg}")]
    Stage { stage: &'static str, msg: String },
}

fn stage_err(stage: &'static str) -> impl Fn(String) -> RunError {
    move |msg| RunError::Stage { stage, msg }
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
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalise(&base.join(p))
        }
    };
    cfg.run.out = rel(&cfg.run.out);
    cfg.train.data = rel(&cfg.train.data);
    cfg.train.val_data = cfg.train.val_data.as_deref().map(rel);
    cfg.verify.images = cfg.verify.images.iter().map(|p| rel(p)).collect();
    let local = base.join(&cfg.convert.source);
    if !cfg.convert.source.starts_with("preset:") && local.exists() {
        cfg.convert.source = local.to_string_lossy().into_owned();
    }
    if !cfg.train.data.exists() {
        return Err(cfg_err(format!(
            "train.data: {} does not exist",
            cfg.train.data.display()
        )));
    }
    Ok(cfg)
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

/// What each stage recorded when it completed: the hash of its inputs and its key number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    stages: BTreeMap<String, StageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageRecord {
    input_hash: String,
    summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub status: String,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run: PathBuf,
    pub stages: Vec<StageResult>,
    pub package: PathBuf,
}

fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    crate::checkpoint::hex(&h.finalize())
}

/// Content hash of a file or folder tree (names and bytes).
fn hash_path(path: &Path) -> String {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else {
            files.push(p);
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.strip_prefix(path)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        if let Ok(bytes) = std::fs::read(&f) {
            h.update(crate::checkpoint::hex(&Sha256::digest(&bytes)).as_bytes());
        }
    }
    crate::checkpoint::hex(&h.finalize())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

pub fn run(
    config_path: &Path,
    overrides: &[String],
    from: Option<&str>,
    quiet: bool,
) -> Result<RunReport, RunError> {
    let cfg = load_config(config_path, overrides)?;
    if let Some(f) = from {
        if !STAGES.contains(&f) {
            return Err(RunError::Config {
                path: config_path.to_path_buf(),
                msg: format!("--from `{f}`: stages are {}", STAGES.join(", ")),
            });
        }
    }
    let out = cfg.run.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| RunError::Io {
        path: out.clone(),
        source,
    })?;
    let ledger_path = out.join("stages.json");
    let mut ledger: Ledger = std::fs::read_to_string(&ledger_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut forced = false;
    let mut results = Vec::new();
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };

    // Each stage: decide from the input hash, run or skip, record.
    let mut step = |name: &'static str,
                    input_hash: String,
                    outputs_exist: bool,
                    ledger: &mut Ledger,
                    results: &mut Vec<StageResult>,
                    work: &mut dyn FnMut() -> Result<String, RunError>|
     -> Result<(), RunError> {
        if from == Some(name) {
            forced = true;
        }
        let fresh = !forced
            && outputs_exist
            && ledger
                .stages
                .get(name)
                .is_some_and(|r| r.input_hash == input_hash);
        if fresh {
            let summary = ledger.stages[name].summary.clone();
            say(&format!("[{name}] unchanged, skipped ({summary})"));
            results.push(StageResult {
                stage: name.into(),
                status: "skipped (unchanged)".into(),
                summary,
            });
            return Ok(());
        }
        say(&format!("[{name}] running"));
        let summary = work()?;
        say(&format!("[{name}] {summary}"));
        ledger.stages.insert(
            name.into(),
            StageRecord {
                input_hash,
                summary: summary.clone(),
            },
        );
        crate::fsutil::write_file_atomically(&ledger_path, &json(ledger)).map_err(|source| {
            RunError::Io {
                path: ledger_path.clone(),
                source,
            }
        })?;
        results.push(StageResult {
            stage: name.into(),
            status: "done".into(),
            summary,
        });
        Ok(())
    };

    // convert
    let model_dir = out.join("model");
    let source_hash = if Path::new(&cfg.convert.source).exists() {
        hash_path(Path::new(&cfg.convert.source))
    } else {
        cfg.convert.source.clone()
    };
    let h_convert = hash_parts(&[b"convert", &json(&cfg.convert), source_hash.as_bytes()]);
    step(
        "convert",
        h_convert.clone(),
        model_dir.join("model.safetensors").exists(),
        &mut ledger,
        &mut results,
        &mut || {
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

    // train
    let train_dir = out.join("train");
    let h_train = hash_parts(&[
        b"train",
        h_convert.as_bytes(),
        &json(&cfg.train),
        hash_path(&cfg.train.data).as_bytes(),
    ]);
    let adapters_dir = train_dir.join("adapters");
    let trained = match cfg.train.mode {
        crate::train::Mode::Lora => adapters_dir.clone(),
        crate::train::Mode::Full => train_dir.join("model"),
    };
    step(
        "train",
        h_train.clone(),
        trained.exists(),
        &mut ledger,
        &mut results,
        &mut || {
            // Resume an interrupted run of the same settings; otherwise start over.
            let resumable = train_dir.join("checkpoint/state.json").exists()
                && std::fs::read_to_string(train_dir.join("run-input-hash"))
                    .ok()
                    .as_deref()
                    == Some(h_train.as_str());
            if !resumable {
                let _ = std::fs::remove_dir_all(&train_dir);
                std::fs::create_dir_all(&train_dir).map_err(|source| RunError::Io {
                    path: train_dir.clone(),
                    source,
                })?;
                std::fs::write(train_dir.join("run-input-hash"), &h_train).map_err(|source| {
                    RunError::Io {
                        path: train_dir.clone(),
                        source,
                    }
                })?;
            }
            let r =
                crate::train::train(&model_dir, &train_dir, &cfg.train, resumable, false, quiet)
                    .map_err(|e| stage_err("train")(e.to_string()))?;
            Ok(format!(
                "{} steps, {:.2} img/s{}",
                r.steps,
                r.images_per_second,
                r.final_eval
                    .map(|e| format!(", val top-1 {:.2}%", 100.0 * e.top1))
                    .unwrap_or_default()
            ))
        },
    )?;

    // merge
    let merged = out.join("merged");
    let h_merge = hash_parts(&[b"merge", h_train.as_bytes()]);
    step(
        "merge",
        h_merge.clone(),
        merged.join("model.safetensors").exists(),
        &mut ledger,
        &mut results,
        &mut || match cfg.train.mode {
            crate::train::Mode::Lora => {
                let r = crate::merge::merge(&model_dir, &adapters_dir, &merged, true)
                    .map_err(|e| stage_err("merge")(e.to_string()))?;
                Ok(format!(
                    "{} layers merged, max |adapter - merged| {:.2e}",
                    r.layers_merged, r.max_abs_diff
                ))
            }
            crate::train::Mode::Full => {
                let _ = std::fs::remove_dir_all(&merged);
                copy_dir(&trained, &merged).map_err(|source| RunError::Io {
                    path: merged.clone(),
                    source,
                })?;
                Ok("full fine-tuning: trained model copied".into())
            }
        },
    )?;

    // export
    let package = out.join("model.mlpackage");
    let h_export = hash_parts(&[b"export", h_merge.as_bytes(), &json(&cfg.export)]);
    step(
        "export",
        h_export.clone(),
        package.join("Manifest.json").exists(),
        &mut ledger,
        &mut results,
        &mut || {
            let opts = export_options(&cfg, &train_dir).map_err(stage_err("export"))?;
            let r = coreml::export(&merged, &package, &opts)
                .map_err(|e| stage_err("export")(e.to_string()))?;
            Ok(format!(
                "{} {} {} ops, {:.1} MB",
                r.target,
                r.precision,
                r.ops_total,
                r.package_bytes as f64 / 1e6
            ))
        },
    )?;

    // verify; also leaves what it compared against as `reference.json`, the file
    // `coreml-bench --reference` reads, so a Mac can check Core ML on the same inputs.
    let verify_json = out.join("verify.json");
    let reference_json = out.join("reference.json");
    let images = if cfg.verify.images.is_empty() {
        validation_images(&cfg.train.data, 32)
    } else {
        cfg.verify.images.clone()
    };
    let h_verify = hash_parts(&[b"verify", h_export.as_bytes(), &json(&images)]);
    step(
        "verify",
        h_verify,
        verify_json.exists() && reference_json.exists(),
        &mut ledger,
        &mut results,
        &mut || {
            let opts = crate::verify::VerifyOptions {
                model: Some(merged.clone()),
                images: images.clone(),
                probe: 4,
                reference_out: Some(reference_json.clone()),
                ..Default::default()
            };
            let r = crate::verify::verify(&package, &opts)
                .map_err(|e| stage_err("verify")(e.to_string()))?;
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
            Ok(format!(
                "pass on {} inputs, worst relative error {:.2e}",
                r.examples, worst
            ))
        },
    )?;

    // bench
    if cfg.bench.skip || !cfg!(target_os = "macos") {
        let why = if cfg.bench.skip {
            "skipped by config"
        } else {
            "skipped: Core ML needs macOS (run `pipeline bench` on a Mac, with \
             `--reference reference.json` to check its outputs)"
        };
        say(&format!("[bench] {why}"));
        results.push(StageResult {
            stage: "bench".into(),
            status: "skipped".into(),
            summary: why.into(),
        });
    } else {
        results.push(StageResult {
            stage: "bench".into(),
            status: "skipped".into(),
            summary: "run `pipeline bench` on the package, with `--reference reference.json` \
                      to check its outputs"
                .into(),
        });
    }

    let report = RunReport {
        run: out.clone(),
        stages: results,
        package: package.clone(),
    };
    write_summary(&out, &report)?;
    Ok(report)
}

fn export_options(cfg: &RunConfig, train_dir: &Path) -> Result<coreml::ExportOptions, String> {
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
    let summary: Option<serde_json::Value> =
        std::fs::read_to_string(train_dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let val_accuracy = summary
        .as_ref()
        .and_then(|s| s["final_eval"]["top1"].as_f64());
    let adapters_hash = std::fs::read(train_dir.join("adapters/adapters.safetensors"))
        .ok()
        .map(|b| crate::checkpoint::hex(&Sha256::digest(&b)));
    Ok(coreml::ExportOptions {
        precision,
        target,
        input,
        output,
        metadata: coreml::ExportMetadata {
            author: e.author.clone(),
            license: e.license.clone(),
            description: e.description.clone(),
            version: e.version.clone(),
            adapters_hash,
            dataset: Some(cfg.train.data.display().to_string()),
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

fn write_summary(out: &Path, r: &RunReport) -> Result<(), RunError> {
    let io = |path: PathBuf| move |source| RunError::Io { path, source };
    let p = out.join("summary.json");
    crate::fsutil::write_file_atomically(&p, &serde_json::to_vec_pretty(r).expect("json"))
        .map_err(io(p.clone()))?;
    let mut md = String::from("# Run summary\n\n| stage | status | result |\n|---|---|---|\n");
    for s in &r.stages {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            s.stage,
            s.status,
            s.summary.replace('\n', " ")
        );
    }
    let _ = writeln!(
        md,
        "\nPackage: `{}`. Training curves: `train/curves.png`; verification: `verify.json`; \
         reference for `coreml-bench --reference`: `reference.json`.",
        r.package.display()
    );
    let p = out.join("summary.md");
    crate::fsutil::write_file_atomically(&p, md.as_bytes()).map_err(io(p.clone()))
}

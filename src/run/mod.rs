//! `pipeline run CONFIG.toml`: every stage in order, in one run folder. A stage is skipped
//! when its inputs (its settings and the content of what it reads) are unchanged since it
//! last completed; an interrupted training resumes from its checkpoint.
//!
//! `config`: the run config and its overrides; `cache`: the ledger that decides which
//! stages to skip; `stages`: one function per stage; `summary`: what the run reports.

use std::path::{Path, PathBuf};

mod baseline;
mod cache;
mod config;
mod ranks;
mod stages;
mod summary;

pub use config::{
    load_config, BenchSection, ConvertSection, ExportSection, RunConfig, RunSection, VerifySection,
};
pub use summary::{RunReport, StageResult};

use cache::StageCache;

pub const STAGES: [&str; 6] = ["convert", "train", "merge", "export", "verify", "bench"];

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

pub fn run(
    config_path: &Path,
    overrides: &[String],
    from: Option<&str>,
    quiet: bool,
) -> Result<RunReport, RunError> {
    let cfg = set_up(config_path, overrides, from)?;
    let mut cache = StageCache::open(&cfg.run.out, from, quiet);
    let converted = stages::convert(&cfg, &mut cache)?;
    let trained = stages::train(&cfg, &converted, &mut cache)?;
    baseline::baseline(&cfg, &mut cache)?;
    let merged = stages::merge(&cfg, &converted, &trained, &mut cache)?;
    let exported = stages::export(&cfg, &trained, &merged, &mut cache)?;
    stages::verify(&cfg, &merged, &exported, &mut cache)?;
    stages::bench(&cfg, &mut cache);
    finish(&cfg.run.out, cache.results, exported.package)
}

/// Reads the config (with its overrides), checks `--from`, and makes the run folder.
fn set_up(
    config_path: &Path,
    overrides: &[String],
    from: Option<&str>,
) -> Result<RunConfig, RunError> {
    let cfg = load_config(config_path, overrides)?;
    if let Some(f) = from {
        if !STAGES.contains(&f) {
            return Err(RunError::Config {
                path: config_path.to_path_buf(),
                msg: format!("--from `{f}`: stages are {}", STAGES.join(", ")),
            });
        }
    }
    std::fs::create_dir_all(&cfg.run.out).map_err(|source| RunError::Io {
        path: cfg.run.out.clone(),
        source,
    })?;
    Ok(cfg)
}

/// The report, also written as `summary.json` and `summary.md` in the run folder.
fn finish(out: &Path, stages: Vec<StageResult>, package: PathBuf) -> Result<RunReport, RunError> {
    let report = RunReport {
        run: out.to_path_buf(),
        stages,
        package,
    };
    summary::write_summary(out, &report)?;
    Ok(report)
}

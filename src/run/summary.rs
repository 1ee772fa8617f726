//! What a run reports: one line per stage, as `summary.json` and `summary.md` in the run
//! folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::RunError;

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

pub(super) fn write_summary(out: &Path, r: &RunReport) -> Result<(), RunError> {
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
    // Training skipped (adapters given in [merge]): no curves of this run to point at.
    let trained = r
        .stages
        .iter()
        .any(|s| s.stage == "train" && s.status != "skipped");
    let curves = if trained {
        "Training curves: `train/curves.png`; verification"
    } else {
        "Verification"
    };
    let _ = writeln!(
        md,
        "\nPackage: `{}`. {curves}: `verify.json`; reference for \
         `coreml-bench --reference`: `reference.json`.",
        r.package.display()
    );
    let p = out.join("summary.md");
    crate::fsutil::write_file_atomically(&p, md.as_bytes()).map_err(io(p.clone()))
}

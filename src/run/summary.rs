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
            s.summary.replace('\n', " ").replace('|', "\\|")
        );
    }
    key_numbers(&mut md, out);
    pictures(&mut md, out);
    let _ = writeln!(
        md,
        "\nPackage: `{}`. Verification: `verify.json`; reference for \
         `coreml-bench --reference`: `reference.json`.",
        r.package.display()
    );
    let p = out.join("summary.md");
    crate::fsutil::write_file_atomically(&p, md.as_bytes()).map_err(io(p.clone()))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn percent(v: &serde_json::Value) -> Option<String> {
    v.as_f64().map(|x| format!("{:.1}%", 100.0 * x))
}

/// The numbers a reader looks for first, read back from what the stages wrote (so a
/// skipped, unchanged stage still reports them).
fn key_numbers(md: &mut String, out: &Path) {
    let mut rows: Vec<(String, String)> = Vec::new();
    let train = read_json(&out.join("train/summary.json"));
    if let Some(t) = train
        .as_ref()
        .and_then(|t| percent(&t["final_eval"]["top1"]))
    {
        rows.push(("validation top-1 (MLX, this run)".into(), t));
    }
    let baseline = read_json(&out.join(super::baseline::DIR).join("train/summary.json"));
    if let Some(b) = baseline
        .as_ref()
        .and_then(|b| percent(&b["final_eval"]["top1"]))
    {
        let source = read_json(&out.join(super::baseline::DIR).join("model/model.json"))
            .and_then(|m| m["provenance"]["source"].as_str().map(str::to_string))
            .unwrap_or_else(|| "the baseline".into());
        rows.push((format!("validation top-1, same recipe from {source}"), b));
    }
    if let Some(v) = read_json(&out.join("verify.json")) {
        let a = &v["accuracy"];
        if let (Some(p), Some(m)) = (percent(&a["package_top1"]), percent(&a["reference_top1"])) {
            let n = a["examples"].as_u64().unwrap_or(0);
            rows.push((
                format!("package top-1 on {n} validation images (model: {m})"),
                p,
            ));
        }
        if let Some(agree) = v["outputs"]
            .as_array()
            .and_then(|o| o.iter().find_map(|c| c["top1_agreement"].as_f64()))
        {
            let n = v["examples"].as_u64().unwrap_or(0);
            rows.push((
                format!("package and MLX agree on top-1 ({n} images)"),
                format!("{:.1}%", 100.0 * agree),
            ));
        }
        if let Some(worst) = v["outputs"].as_array().and_then(|o| {
            o.iter()
                .filter_map(|c| c["max_abs_error"].as_f64())
                .reduce(f64::max)
        }) {
            let pass = if v["pass"].as_bool() == Some(true) {
                "pass"
            } else {
                "FAIL"
            };
            rows.push((
                "package vs MLX, largest abs difference".into(),
                format!("{worst:.2e} ({pass})"),
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    md.push_str("\n## Key numbers\n\n| | |\n|---|---|\n");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
}

/// The pictures of the run, shown inline with links to both formats.
fn pictures(md: &mut String, out: &Path) {
    let mut shown = Vec::new();
    if out.join("train/curves.png").exists() {
        shown.push((
            "Training curves (loss, validation top-1, learning rate; best checkpoint marked)",
            "train/curves".to_string(),
        ));
    }
    let benches = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bench.png"));
    let mut benches: Vec<String> = benches.collect();
    benches.sort();
    for b in benches {
        shown.push((
            "Core ML benchmark (latency and throughput per compute unit)",
            b.trim_end_matches(".png").to_string(),
        ));
    }
    if shown.is_empty() {
        return;
    }
    md.push_str("\n## Pictures\n");
    for (what, stem) in shown {
        let _ = writeln!(
            md,
            "\n{what}: [`{stem}.png`]({stem}.png), [`{stem}.svg`]({stem}.svg)\n\n![{what}]({stem}.png)"
        );
    }
}

//! The train stage on several data-parallel ranks (`[train] ranks = N`): `pipeline
//! launch` on this host, then the stage's line from the summary rank 0 wrote.

use std::path::Path;

use super::{stage_err, RunError};
use crate::train::TrainConfig;

pub(super) fn train(
    base: &Path,
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    quiet: bool,
) -> Result<String, RunError> {
    crate::launch::train_on_ranks(base, dir, cfg, resume, quiet)
        .map_err(|e| stage_err("train")(e.to_string()))?;
    let path = dir.join("summary.json");
    let summary: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| stage_err("train")(format!("{}: missing after training", path.display())))?;
    let top1 = summary["final_eval"]["top1"]
        .as_f64()
        .map(|t| format!(", val top-1 {:.2}%", 100.0 * t))
        .unwrap_or_default();
    Ok(format!(
        "{} steps on {} ranks, {:.2} img/s{top1}",
        summary["steps"],
        cfg.ranks,
        summary["images_per_second"].as_f64().unwrap_or(0.0)
    ))
}

//! `[run] baseline`: the same `[train]` recipe from another starting point (a preset:
//! random init), trained into `baseline/` so the summary can say what the pretrained
//! weights bought. Only its validation numbers are kept; nothing is merged or exported.

use std::path::Path;

use super::cache::{hash_parts, hash_path, json, StageCache};
use super::{stage_err, RunConfig, RunError};

pub(super) const DIR: &str = "baseline";

pub(super) fn baseline(cfg: &RunConfig, cache: &mut StageCache) -> Result<(), RunError> {
    let Some(source) = &cfg.run.baseline else {
        return Ok(());
    };
    if cfg.merge.adapters.is_some() {
        cache.skip(
            "baseline",
            "adapters given in [merge]: nothing trained to compare with",
        );
        return Ok(());
    }
    let dir = cfg.run.out.join(DIR);
    let source_hash = if Path::new(source).exists() {
        hash_path(Path::new(source))
    } else {
        source.clone()
    };
    let hash = hash_parts(&[
        b"baseline",
        source_hash.as_bytes(),
        &json(&cfg.train),
        hash_path(&cfg.train.data).as_bytes(),
    ]);
    let summary = dir.join("train").join("summary.json");
    let quiet = cache.quiet;
    cache.stage("baseline", &hash, summary.exists(), || {
        let err = stage_err("baseline");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        crate::convert::convert(
            source,
            &dir.join("model"),
            &crate::convert::ConvertOptions {
                force: true,
                revision: None,
                image_size: cfg.convert.image_size,
            },
        )
        .map_err(|e| err(format!("{source}: {e}")))?;
        let r = crate::train::train(
            &dir.join("model"),
            &dir.join("train"),
            &cfg.train,
            false,
            true,
            quiet,
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(format!(
            "same recipe from {source}: {} steps{}",
            r.steps,
            r.final_eval
                .map(|e| format!(", val top-1 {:.2}%", 100.0 * e.top1))
                .unwrap_or_default()
        ))
    })
}

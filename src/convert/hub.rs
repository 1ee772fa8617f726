//! Hugging Face Hub sources through `hf-hub`: its cache (`HF_HOME`, shared with Python's
//! `huggingface_hub`), `HF_TOKEN` for gated models and `HF_HUB_OFFLINE=1`.

use super::source::SourceFiles;
use super::ConvertError;

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

#[cfg(feature = "hub")]
pub fn fetch(repo_id: &str, revision: Option<&str>) -> Result<SourceFiles, ConvertError> {
    use super::source::{CONFIG, PREPROCESSOR, WEIGHTS, WEIGHTS_INDEX};
    use hf_hub::{Cache, Repo, RepoType};
    use std::path::PathBuf;

    let revision = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.clone());
    let cache = Cache::from_env();
    let cached = cache.repo(repo.clone());

    type Getter<'a> = Box<dyn Fn(&str) -> Result<PathBuf, ConvertError> + 'a>;
    let get: Getter<'_> = if offline() {
        let cache_dir = cache.path().clone();
        Box::new(move |file: &str| {
            cached.get(file).ok_or_else(|| {
                ConvertError::Source(format!(
                    "{repo_id}: `{file}` (revision {revision}) is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; run once with network access or unset HF_HUB_OFFLINE",
                    cache_dir.display()
                ))
            })
        })
    } else {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_token(token)
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| {
                ConvertError::Source(format!("{repo_id}: cannot reach the Hugging Face Hub: {e}"))
            })?;
        let remote = api.repo(repo);
        Box::new(move |file: &str| {
            if let Some(p) = cached.get(file) {
                return Ok(p);
            }
            remote.get(file).map_err(|e| {
                ConvertError::Source(format!(
                    "{repo_id}: could not download `{file}`: {e} (gated models need HF_TOKEN; set HF_HUB_OFFLINE=1 to use the cache only)"
                ))
            })
        })
    };

    let config = get(CONFIG)?;
    let preprocessor = get(PREPROCESSOR).ok();
    let weights = match get(WEIGHTS) {
        Ok(path) => vec![super::WeightShard { path }],
        Err(first) => match get(WEIGHTS_INDEX) {
            Ok(index) => super::source::shards_from_index(&index, |f| get(f))?,
            Err(_) => return Err(first),
        },
    };
    Ok(SourceFiles {
        label: repo_id.to_string(),
        config,
        preprocessor,
        weights,
    })
}

#[cfg(not(feature = "hub"))]
pub fn fetch(repo_id: &str, _revision: Option<&str>) -> Result<SourceFiles, ConvertError> {
    let _ = offline();
    Err(ConvertError::Source(format!(
        "{repo_id}: this build has no Hugging Face Hub support (built without the `hub` feature); download the repo and pass its folder"
    )))
}

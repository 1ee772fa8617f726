//! Stage caching: the ledger of what each stage recorded when it completed (`stages.json`
//! in the run folder), content hashes of stage inputs, and the run-or-skip decision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{RunError, StageResult};

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

/// The ledger of one run folder, the results so far, and whether `--from` has been reached
/// (from there on every stage runs).
pub(super) struct StageCache<'a> {
    ledger_path: PathBuf,
    ledger: Ledger,
    from: Option<&'a str>,
    forced: bool,
    pub quiet: bool,
    pub results: Vec<StageResult>,
}

impl<'a> StageCache<'a> {
    /// Reads `out/stages.json` (an unreadable ledger is an empty one).
    pub fn open(out: &Path, from: Option<&'a str>, quiet: bool) -> Self {
        let ledger_path = out.join("stages.json");
        let ledger = std::fs::read_to_string(&ledger_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        StageCache {
            ledger_path,
            ledger,
            from,
            forced: false,
            quiet,
            results: Vec::new(),
        }
    }

    pub fn say(&self, m: &str) {
        if !self.quiet {
            eprintln!("{m}");
        }
    }

    /// One stage: skipped when its outputs exist and its input hash matches the ledger's
    /// (and `--from` has not been reached); otherwise `work` runs and its summary is recorded.
    pub fn stage(
        &mut self,
        name: &'static str,
        input_hash: &str,
        outputs_exist: bool,
        work: impl FnOnce() -> Result<String, RunError>,
    ) -> Result<(), RunError> {
        if self.from == Some(name) {
            self.forced = true;
        }
        let recorded = self
            .ledger
            .stages
            .get(name)
            .filter(|r| !self.forced && outputs_exist && r.input_hash == input_hash);
        if let Some(r) = recorded {
            let summary = r.summary.clone();
            self.say(&format!("[{name}] unchanged, skipped ({summary})"));
            self.push(name, "skipped (unchanged)", summary);
            return Ok(());
        }
        self.say(&format!("[{name}] running"));
        let summary = work()?;
        self.say(&format!("[{name}] {summary}"));
        self.ledger.stages.insert(
            name.into(),
            StageRecord {
                input_hash: input_hash.to_string(),
                summary: summary.clone(),
            },
        );
        crate::fsutil::write_file_atomically(&self.ledger_path, &json(&self.ledger)).map_err(
            |source| RunError::Io {
                path: self.ledger_path.clone(),
                source,
            },
        )?;
        self.push(name, "done", summary);
        Ok(())
    }

    /// A stage that does not apply to this run (reported as skipped, with why). `--from`
    /// naming it still makes every stage after it run.
    pub fn skip(&mut self, name: &'static str, why: &str) {
        if self.from == Some(name) {
            self.forced = true;
        }
        self.say(&format!("[{name}] skipped: {why}"));
        self.push(name, "skipped", why.into());
    }

    pub fn push(&mut self, stage: &str, status: &str, summary: String) {
        self.results.push(StageResult {
            stage: stage.into(),
            status: status.into(),
            summary,
        });
    }
}

pub(super) fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    crate::checkpoint::hex(&h.finalize())
}

/// Content hash of a file or folder tree (names and bytes).
pub(super) fn hash_path(path: &Path) -> String {
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

pub(super) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(cache: &mut StageCache, name: &'static str, hash: &str, exist: bool) -> bool {
        let mut did = false;
        cache
            .stage(name, hash, exist, || {
                did = true;
                Ok(format!("{name} {hash}"))
            })
            .unwrap();
        did
    }

    #[test]
    fn stages_rerun_on_new_inputs_missing_outputs_or_from() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = StageCache::open(tmp.path(), None, true);
        assert!(ran(&mut c, "convert", "a", true) && ran(&mut c, "train", "b", true));
        // The ledger persists across runs.
        let mut c = StageCache::open(tmp.path(), None, true);
        assert!(!ran(&mut c, "convert", "a", true));
        assert!(ran(&mut c, "train", "c", true), "changed input");
        assert_eq!(c.results[0].status, "skipped (unchanged)");
        assert_eq!(c.results[0].summary, "convert a");
        let mut c = StageCache::open(tmp.path(), None, true);
        assert!(ran(&mut c, "convert", "a", false), "outputs missing");
        // --from: that stage and every one after it run.
        let mut c = StageCache::open(tmp.path(), Some("convert"), true);
        assert!(ran(&mut c, "convert", "a", true) && ran(&mut c, "train", "c", true));
        // --from a stage that does not apply: the ones after it still run.
        let mut c = StageCache::open(tmp.path(), Some("train"), true);
        assert!(!ran(&mut c, "convert", "a", true));
        c.skip("train", "adapters given");
        assert!(ran(&mut c, "merge", "m", true));
        assert_eq!(c.results[1].status, "skipped");
    }

    #[test]
    fn hashes_separate_their_parts() {
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
    }
}

//! Writing outputs so that nothing is half-written: build in a temporary sibling, then
//! rename into place.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A temporary sibling of `target` in the same folder (so the final rename is atomic).
pub fn temp_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    match parent {
        Some(p) => p.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Creates a folder at `target` by filling a temporary folder with `fill` and renaming
/// it into place. On any error the temporary folder is removed and `target` is left as
/// it was. An existing `target` is an error unless `force`, in which case it is replaced
/// only after the new folder is complete.
pub fn write_dir_atomically(
    target: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    if target.exists() && !force {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "already exists (pass --force to replace it)",
        ));
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let tmp = temp_sibling(target);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    let result = fill(&tmp).and_then(|()| {
        if target.exists() {
            let old = temp_sibling(&target.with_extension("old"));
            fs::rename(target, &old)?;
            fs::rename(&tmp, target)?;
            let _ = fs::remove_dir_all(&old);
            Ok(())
        } else {
            fs::rename(&tmp, target)
        }
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes a file atomically (temporary sibling, then rename).
pub fn write_file_atomically(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_sibling(target);
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, target))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

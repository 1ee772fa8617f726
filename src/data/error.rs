//! One error type for everything the data module can report. Every variant names the
//! file (and where useful the line or entry) so a user can fix their data without a
//! debugger.

use std::path::PathBuf;

use crate::imaging::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}: not a folder, .csv, .json or .jsonl file")]
    UnknownSource(PathBuf),

    #[error("class folder {0} has no images (.png, .jpg, .jpeg, .webp, .bmp)")]
    EmptyClass(PathBuf),

    #[error("{0}: no class folders")]
    NoClasses(PathBuf),

    #[error("{0}: the split has no samples")]
    EmptySplit(PathBuf),

    #[error("{path}: name is not valid UTF-8")]
    NonUtf8Name { path: PathBuf },

    #[error("{file}: {location}: {msg}")]
    Parse {
        file: PathBuf,
        location: String,
        msg: String,
    },

    #[error("{file}: {location}: label {label:?} is not one of the {num_classes} classes")]
    UnknownLabel {
        file: PathBuf,
        location: String,
        label: String,
        num_classes: usize,
    },

    #[error("class folder {folder} is not one of the {num_classes} classes")]
    UnknownClassFolder { folder: PathBuf, num_classes: usize },

    #[error("invalid class list: {0}")]
    InvalidClasses(String),

    #[error("invalid loader options: {0}")]
    InvalidOptions(String),

    #[error("batch {start_batch} is past the end of the epoch ({num_batches} batches)")]
    StartBeyondEpoch {
        start_batch: usize,
        num_batches: usize,
    },

    #[error(transparent)]
    Image(#[from] ImageError),

    #[error("cannot start a data loader thread: {0}")]
    Spawn(#[source] std::io::Error),

    #[error("a data loader worker stopped unexpectedly (it panicked)")]
    WorkerFailed,
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

//! Training and validation data: datasets read from an image folder, a CSV file or a
//! JSON / JSONL manifest, the train and eval transforms, and a threaded loader that
//! yields normalised NCHW batches in a reproducible order.
//!
//! Reproducibility rests on two rules: the order of an epoch is a permutation seeded by
//! `(seed, epoch)`, and the augmentation of a sample is seeded by `(seed, epoch, sample
//! index)`. Neither depends on which worker thread handles a sample, so the same seed
//! gives the same batches bit for bit, and an epoch can be resumed at any batch.

mod augment;
mod dataset;
mod error;
mod loader;

pub use augment::{
    random_resized_crop_box, train_transform, Augment, CropBox, CROP_RATIO, CROP_SCALE,
};
pub use dataset::{load_split, DataSource, Dataset, Sample, IMAGE_EXTENSIONS};
pub use error::DataError;
pub use loader::{BadImages, Batch, EpochIter, Loader, LoaderOptions, LoaderStats};

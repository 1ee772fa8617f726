//! The batch loader: decodes, augments and normalises images on worker threads and hands
//! batches to the training loop in order, through bounded queues.
//!
//! Batch `b` of an epoch always holds the samples at positions `b * batch_size ..` of the
//! epoch's permutation, and each sample's augmentation is seeded by (seed, epoch, sample
//! index). Workers only decide *when* a batch is built, never *what* it contains, so the
//! output does not depend on the number of workers or on thread scheduling, and starting
//! at batch `k` gives exactly what an uninterrupted epoch gives from `k` on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::augment::{train_transform, Augment};
use super::{DataError, Dataset};
use crate::config::{ModelConfig, Preprocess};
use crate::imaging;
use crate::rng::Rng;

/// What to do with an image that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadImages {
    /// Stop: the epoch yields an error naming the file.
    #[default]
    Fail,
    /// Drop the sample from its batch (the batch gets smaller) and record its path in
    /// [`Batch::skipped`] and [`LoaderStats::skipped`].
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Side of the square model input.
    pub image_size: usize,
    /// Per-channel normalisation applied to 0..1 RGB values.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Evaluation transform (and training without random resized crop): resize the
    /// shorter side to this, then centre-crop to `image_size`.
    pub resize_shorter: usize,
    pub augment: Augment,
    /// Visit the samples in a seeded random order each epoch; otherwise in dataset order.
    pub shuffle: bool,
    /// Leave out the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    pub seed: u64,
    /// Decoding threads; 0 decodes on the calling thread inside `next()`.
    pub workers: usize,
    /// Finished batches that may wait in the queues ahead of the consumer (in addition
    /// to the one each worker is building).
    pub prefetch: usize,
    pub bad_images: BadImages,
    /// `(rank, ranks)`: this process builds only its share of each batch, the `rank`-th
    /// of `ranks` consecutive slices (data-parallel training: the batch is the global
    /// one). Consecutive rather than strided: a rank's share is then exactly a part the
    /// single process would compute on one of its lanes, so the sums agree to the bit
    /// where the parts line up. `(0, 1)`: whole batches.
    pub shard: (usize, usize),
}

impl Default for LoaderOptions {
    /// ImageNet statistics at 224x224, no augmentation, no shuffling, 2 workers.
    fn default() -> Self {
        LoaderOptions {
            batch_size: 32,
            image_size: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            resize_shorter: 256,
            augment: Augment::NONE,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 4,
            bad_images: BadImages::Fail,
            shard: (0, 1),
        }
    }
}

impl LoaderOptions {
    /// Training options for a checkpoint: its image size and preprocessing, random
    /// resized crop and flip, shuffled, last partial batch dropped.
    pub fn train(cfg: &ModelConfig, batch_size: usize, seed: u64) -> Self {
        LoaderOptions {
            augment: Augment::TRAIN,
            shuffle: true,
            drop_last: true,
            seed,
            ..Self::eval(cfg, batch_size)
        }
    }

    /// Evaluation options for a checkpoint: resize + centre crop, dataset order, every
    /// sample.
    pub fn eval(cfg: &ModelConfig, batch_size: usize) -> Self {
        LoaderOptions {
            batch_size,
            image_size: cfg.image_size,
            mean: cfg.preprocess.mean,
            std: cfg.preprocess.std,
            resize_shorter: cfg.preprocess.resize_shorter,
            ..Self::default()
        }
    }

    fn preprocess(&self) -> Preprocess {
        Preprocess {
            mean: self.mean,
            std: self.std,
            resize_shorter: self.resize_shorter,
        }
    }

    fn validate(&self, num_samples: usize) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::InvalidOptions(m));
        if self.batch_size == 0 {
            return bad("batch_size must be positive".into());
        }
        if self.image_size == 0 {
            return bad("image_size must be positive".into());
        }
        if self.image_size > u32::MAX as usize || self.resize_shorter > u32::MAX as usize {
            return bad("image_size and resize_shorter must fit in 32 bits".into());
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return bad(format!("std {:?} must be positive", self.std));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} must be finite", self.mean));
        }
        if self.shard.1 == 0 || self.shard.0 >= self.shard.1 {
            return bad(format!(
                "shard {:?} is not (rank, ranks) with rank < ranks",
                self.shard
            ));
        }
        if num_samples == 0 {
            return bad("the dataset has no samples".into());
        }
        if self.drop_last && num_samples < self.batch_size {
            return bad(format!(
                "drop_last with {num_samples} samples and batch_size {} leaves no batches",
                self.batch_size
            ));
        }
        Ok(())
    }
}

/// One batch of normalised images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Position of the batch in its epoch (0-based). Resume a run at `index + 1`.
    pub index: usize,
    /// `[len, 3, image_size, image_size]`, row-major.
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    /// Index into [`Dataset::samples`] of each image.
    pub indices: Vec<usize>,
    /// Images of this batch left out under [`BadImages::Skip`].
    pub skipped: Vec<PathBuf>,
    pub image_size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// NCHW shape of [`Batch::pixels`].
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 3, self.image_size, self.image_size]
    }
}

/// Counters over the batches delivered to the consumer since the loader was created or
/// the stats were last taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderStats {
    /// Time the consumer spent inside `next()` waiting for a batch. Divided by the
    /// wall time of the training steps, the fraction of time the model starved for data.
    pub wait_seconds: f64,
    pub batches: u64,
    pub images: u64,
    /// Images left out under [`BadImages::Skip`], in delivery order.
    pub skipped: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Loader {
    dataset: Arc<Dataset>,
    opts: LoaderOptions,
    stats: Arc<Mutex<LoaderStats>>,
}

/// Stream tags for [`derive_seed`], so the permutation and the augmentation never share
/// a random stream.
const STREAM_ORDER: u64 = 1;
const STREAM_AUGMENT: u64 = 2;

/// Hashes the parts into one seed, each step a SplitMix64 output, so nearby inputs
/// (epoch 1 vs 2, sample 7 vs 8) give unrelated streams.
fn derive_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &p| Rng::new(h ^ p).next_u64())
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, opts: LoaderOptions) -> Result<Loader, DataError> {
        opts.validate(dataset.len())?;
        // Datasets can be built by hand (the fields are public); catch a bad label here
        // rather than as a wrong class id deep inside training.
        if let Some(s) = dataset
            .samples
            .iter()
            .find(|s| s.label >= dataset.classes.len())
        {
            return Err(DataError::InvalidOptions(format!(
                "{}: label {} but the dataset has {} classes",
                s.path.display(),
                s.label,
                dataset.classes.len()
            )));
        }
        if u32::try_from(dataset.classes.len()).is_err() {
            return Err(DataError::InvalidOptions("more than 2^32 classes".into()));
        }
        Ok(Loader {
            dataset,
            opts,
            stats: Arc::default(),
        })
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }

    /// Batches in one epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.opts.drop_last {
            n / self.opts.batch_size
        } else {
            n.div_ceil(self.opts.batch_size)
        }
    }

    /// The order in which an epoch visits the samples (indices into the dataset).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.opts.shuffle {
            Rng::new(derive_seed(&[self.opts.seed, STREAM_ORDER, epoch])).shuffle(&mut order);
        }
        order
    }

    /// The batches of `epoch` from batch `start_batch` on. Starting at
    /// [`Loader::num_batches`] gives an empty epoch; past it, one error.
    ///
    /// The iterator ends after the first error. Dropping it early stops the workers.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> EpochIter {
        let num_batches = self.num_batches();
        let job = Arc::new(EpochJob {
            dataset: Arc::clone(&self.dataset),
            pre: self.opts.preprocess(),
            opts: self.opts.clone(),
            order: self.epoch_order(epoch),
            epoch,
            stop: AtomicBool::new(false),
        });
        let mut it = EpochIter {
            job,
            first_batch: start_batch,
            next_batch: start_batch,
            end_batch: num_batches,
            receivers: Vec::new(),
            handles: Vec::new(),
            stats: Arc::clone(&self.stats),
            pending_error: None,
            done: false,
        };
        if start_batch > num_batches {
            it.pending_error = Some(DataError::StartBeyondEpoch {
                start_batch,
                num_batches,
            });
        } else if self.opts.workers > 0 && start_batch < num_batches {
            if let Err(e) = it.spawn_workers() {
                it.pending_error = Some(e);
            }
        }
        it
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LoaderStats {
        lock(&self.stats).clone()
    }

    /// The counters, reset to zero: for per-interval reports.
    pub fn take_stats(&self) -> LoaderStats {
        std::mem::take(&mut *lock(&self.stats))
    }

    /// Seconds the consumer has spent waiting for batches.
    pub fn wait_seconds(&self) -> f64 {
        lock(&self.stats).wait_seconds
    }
}

/// A poisoned lock only means a consumer panicked while adding numbers; the counters
/// are still usable, so recover rather than propagate the panic.
fn lock(stats: &Mutex<LoaderStats>) -> std::sync::MutexGuard<'_, LoaderStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a worker needs for one epoch, shared read-only.
struct EpochJob {
    dataset: Arc<Dataset>,
    opts: LoaderOptions,
    pre: Preprocess,
    order: Vec<usize>,
    epoch: u64,
    /// Set when the consumer goes away or fails, so workers stop between images rather
    /// than finishing a whole batch nobody will read.
    stop: AtomicBool,
}

type BatchResult = Result<Batch, DataError>;

impl EpochJob {
    /// Builds batch `b`; `None` when stopped part-way.
    fn build(&self, b: usize) -> Option<BatchResult> {
        let bs = self.opts.batch_size;
        let size = self.opts.image_size;
        let whole = &self.order[b * bs..((b + 1) * bs).min(self.order.len())];
        let (rank, ranks) = self.opts.shard;
        let share = |r: usize| r * whole.len() / ranks;
        let positions = &whole[share(rank)..share(rank + 1)];
        let mut batch = Batch {
            index: b,
            pixels: Vec::with_capacity(positions.len() * 3 * size * size),
            labels: Vec::with_capacity(positions.len()),
            indices: Vec::with_capacity(positions.len()),
            skipped: Vec::new(),
            image_size: size,
        };
        for &idx in positions {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let sample = &self.dataset.samples[idx];
            let img = match imaging::load_rgb(&sample.path) {
                Ok(img) => img,
                Err(e) => match self.opts.bad_images {
                    BadImages::Fail => return Some(Err(e.into())),
                    BadImages::Skip => {
                        batch.skipped.push(sample.path.clone());
                        continue;
                    }
                },
            };
            let img = if self.opts.augment.is_none() {
                imaging::eval_transform(&img, self.opts.resize_shorter, size)
            } else {
                let seed = derive_seed(&[self.opts.seed, STREAM_AUGMENT, self.epoch, idx as u64]);
                train_transform(
                    &img,
                    self.opts.augment,
                    self.opts.resize_shorter,
                    size,
                    &mut Rng::new(seed),
                )
            };
            imaging::normalise_into(&img, &self.pre, &mut batch.pixels);
            // Class indices come from the dataset's own class list, far below u32::MAX.
            batch.labels.push(sample.label as u32);
            batch.indices.push(idx);
        }
        Some(Ok(batch))
    }
}

/// The batches of one epoch, in order. See [`Loader::epoch`].
pub struct EpochIter {
    job: Arc<EpochJob>,
    /// The batch the epoch started at.
    first_batch: usize,
    next_batch: usize,
    end_batch: usize,
    /// One queue per worker; batch `b` comes from queue `(b - first) % workers`, which is
    /// what keeps delivery in order without a reorder buffer.
    receivers: Vec<Receiver<BatchResult>>,
    handles: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<LoaderStats>>,
    pending_error: Option<DataError>,
    done: bool,
}

impl EpochIter {
    fn spawn_workers(&mut self) -> Result<(), DataError> {
        let workers = self.job.opts.workers;
        let capacity = self.job.opts.prefetch.div_ceil(workers);
        let first = self.first_batch;
        for w in 0..workers {
            let (tx, rx) = sync_channel(capacity);
            let job = Arc::clone(&self.job);
            let end = self.end_batch;
            let handle = std::thread::Builder::new()
                .name(format!("data-worker-{w}"))
                .spawn(move || worker(&job, tx, first + w, end, workers))
                .map_err(DataError::Spawn)?;
            self.receivers.push(rx);
            self.handles.push(handle);
        }
        Ok(())
    }

    /// Batches left in this epoch, including empty ones that will be passed over.
    pub fn remaining(&self) -> usize {
        if self.done {
            0
        } else {
            self.end_batch - self.next_batch
        }
    }

    fn next_result(&mut self) -> Option<BatchResult> {
        if self.next_batch >= self.end_batch {
            return None;
        }
        let b = self.next_batch;
        self.next_batch += 1;
        if self.receivers.is_empty() {
            return self.job.build(b);
        }
        let rx = &self.receivers[(b - self.first_batch) % self.receivers.len()];
        // A closed queue before the batch arrived means the worker died (a panic):
        // workers only stop early when told to, and then nobody is reading.
        Some(rx.recv().unwrap_or(Err(DataError::WorkerFailed)))
    }

    fn stop_workers(&mut self) {
        self.job.stop.store(true, Ordering::Relaxed);
        // Closing the queues wakes any worker blocked on a full one.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            // A panicked worker has already been reported as WorkerFailed.
            let _ = h.join();
        }
    }
}

fn worker(job: &EpochJob, tx: SyncSender<BatchResult>, first: usize, end: usize, step: usize) {
    for b in (first..end).step_by(step) {
        let Some(result) = job.build(b) else { return };
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            // The consumer is gone, or this epoch ends with the error just sent.
            return;
        }
    }
}

impl Iterator for EpochIter {
    type Item = BatchResult;

    fn next(&mut self) -> Option<BatchResult> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.done = true;
            return Some(Err(e));
        }
        let start = Instant::now();
        loop {
            let Some(result) = self.next_result() else {
                self.done = true;
                self.stop_workers();
                lock(&self.stats).wait_seconds += start.elapsed().as_secs_f64();
                return None;
            };
            let mut stats = lock(&self.stats);
            match result {
                Ok(batch) => {
                    stats.skipped.extend(batch.skipped.iter().cloned());
                    // A batch whose images were all skipped has nothing to train on;
                    // pass over it (its index is still used up, so resuming stays exact).
                    if batch.is_empty() {
                        continue;
                    }
                    stats.batches += 1;
                    stats.images += batch.len() as u64;
                    stats.wait_seconds += start.elapsed().as_secs_f64();
                    return Some(Ok(batch));
                }
                Err(e) => {
                    stats.wait_seconds += start.elapsed().as_secs_f64();
                    drop(stats);
                    self.done = true;
                    self.stop_workers();
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

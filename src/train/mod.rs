//! `pipeline train`: LoRA or full fine-tuning with MLX.
//!
//! A run folder holds everything: `run.json` (base model and settings), `checkpoint/`
//! (the resumable state, replaced atomically every `save_every` steps), `best/`,
//! `adapters/` (LoRA) or `model/` (full), `metrics.jsonl`, `curves.png` and `summary.*`.

pub mod adapters;
pub mod allreduce;
pub mod compiled;
pub mod curves;
pub mod lanes;
pub mod lora;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod peft;
mod state;
pub mod step;
mod trainer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::BadImages;
pub use lora::LoraConfig;
pub use optim::Schedule;
pub use trainer::{set_trainable, train, train_in_group, AllreduceStats, TrainReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Lora,
    Full,
}

/// Arithmetic of the forward and backward passes. Master weights, optimizer state, the
/// loss and the softmax statistics stay float32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Float32,
    /// bfloat16 activations and matmuls: for GPUs (MLX's CPU bf16 is many times slower
    /// than its f32).
    Bfloat16,
}

impl Precision {
    pub fn dtype(self) -> mlx_rs::Dtype {
        match self {
            Precision::Float32 => mlx_rs::Dtype::Float32,
            Precision::Bfloat16 => mlx_rs::Dtype::Bfloat16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" | "f32" | "fp32" => Ok(Precision::Float32),
            "bfloat16" | "bf16" => Ok(Precision::Bfloat16),
            other => Err(format!("unknown precision `{other}` (float32 or bfloat16)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    ValLoss,
    ValTop1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImagePolicy {
    Fail,
    Skip,
}

impl From<BadImagePolicy> for BadImages {
    fn from(p: BadImagePolicy) -> Self {
        match p {
            BadImagePolicy::Fail => BadImages::Fail,
            BadImagePolicy::Skip => BadImages::Skip,
        }
    }
}

/// Every training setting; also the `[train]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Image folder (with train/ and val/), CSV or JSON/JSONL file.
    pub data: PathBuf,
    /// Validation data when not `data/val`.
    pub val_data: Option<PathBuf>,
    pub mode: Mode,
    pub lora: LoraConfig,
    /// Also train the LayerNorm weights and biases (LoRA mode).
    pub train_norms: bool,
    pub epochs: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    /// Clip gradients to this global norm; 0 disables.
    pub clip_norm: f32,
    /// Recompute each block in the backward pass instead of keeping its activations.
    pub grad_checkpoint: bool,
    pub precision: Precision,
    /// Evaluate every N optimizer steps; 0 = at the end of every epoch.
    pub eval_every: usize,
    /// Save the resumable checkpoint every N optimizer steps; 0 = every epoch.
    pub save_every: usize,
    pub best_metric: BestMetric,
    /// Stop after this many evaluations without improvement; 0 disables.
    pub early_stopping: usize,
    /// Stop after this many optimizer steps; 0 = run all epochs.
    pub max_steps: usize,
    pub seed: u64,
    /// Decoding/augmentation threads.
    pub workers: usize,
    /// CPU training: parts of each batch computed at once, one per core (0: one per
    /// available core; 1: the whole batch in one pass). Ignored on a GPU.
    pub cpu_threads: usize,
    /// Random resized crop + horizontal flip on training images.
    pub augment: bool,
    pub bad_images: BadImagePolicy,
    /// Data-parallel ranks `pipeline run` trains on, on this host (`pipeline launch`);
    /// 1 = this process. Left out of the saved settings when 1, so that run hashes stay
    /// those of before the setting existed.
    #[serde(skip_serializing_if = "is_one")]
    pub ranks: usize,
}

impl TrainConfig {
    /// Settings saved as JSON (unknown keys are errors).
    pub fn from_json_file(path: &std::path::Path) -> Result<TrainConfig, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Settings(format!("{}: {e}", path.display())))
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            val_data: None,
            mode: Mode::Lora,
            lora: LoraConfig::default(),
            train_norms: false,
            epochs: 3,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-3,
            weight_decay: 0.01,
            warmup_steps: 0,
            schedule: Schedule::Cosine,
            clip_norm: 1.0,
            grad_checkpoint: false,
            precision: Precision::Float32,
            eval_every: 0,
            save_every: 0,
            best_metric: BestMetric::ValTop1,
            early_stopping: 0,
            max_steps: 0,
            seed: 0,
            workers: 2,
            cpu_threads: 0,
            augment: true,
            bad_images: BadImagePolicy::Fail,
            ranks: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Adapter(#[from] adapters::AdapterError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid training settings: {0}")]
    Settings(String),
    #[error("step {step}: {what} is not finite ({value}); stopped. The last good checkpoint (step {last_good}) is kept in {run}")]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f32,
        last_good: usize,
        run: PathBuf,
    },
    #[error("{0}: a training run is already there; pass --resume to continue it or --force to start over")]
    RunExists(PathBuf),
    #[error("{0}: nothing to resume (no checkpoint/ yet)")]
    NothingToResume(PathBuf),
}

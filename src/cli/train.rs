//! `pipeline train`: LoRA or full fine-tuning with MLX.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Base checkpoint folder.
    #[arg(long, short, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: image folder, .csv, .json or .jsonl.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Where MLX trains: auto (the GPU when MLX's CUDA build and an NVIDIA GPU are
    /// there, else the CPU), cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: lib::backend::DeviceChoice,
    /// Validation data (default: DATA/val for folders).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Run folder for everything the run writes.
    #[arg(long, short, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint, with its saved settings.
    #[arg(long, conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    /// Start over in an existing run folder.
    #[arg(long)]
    force: bool,
    /// lora or full.
    #[arg(long, default_value = "lora", value_parser = ["lora", "full"])]
    mode: String,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// all, attention, mlp, or a list such as attn.qkv,mlp.fc1.
    #[arg(long, default_value = "all")]
    targets: String,
    /// Also train LayerNorm parameters (LoRA mode).
    #[arg(long)]
    train_norms: bool,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// cosine, linear or constant (after warm-up).
    #[arg(long, default_value = "cosine")]
    schedule: lib::train::Schedule,
    /// Clip gradients to this global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f32,
    /// Recompute block activations in the backward pass: much less memory, some more time.
    #[arg(long)]
    grad_checkpoint: bool,
    /// float32, or bfloat16 (bf16 activations and matmuls with float32 master weights,
    /// optimizer state and loss; for GPUs: on the CPU bf16 is many times slower).
    #[arg(long, default_value = "float32")]
    precision: lib::train::Precision,
    /// Evaluate every N steps (0 = every epoch).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Save the resumable checkpoint every N steps (0 = every epoch).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// val_top1 or val_loss: which evaluation picks best/.
    #[arg(long, default_value = "val_top1", value_parser = ["val_top1", "val_loss"])]
    best_metric: String,
    /// Stop after N evaluations without improvement (0 = off).
    #[arg(long, default_value_t = 0)]
    early_stopping: usize,
    /// Stop after N optimizer steps (0 = all epochs).
    #[arg(long, default_value_t = 0)]
    max_steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image decoding threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// CPU training: cores to spread each batch over, as parts of a few images computed at
    /// once (0 = every available core, 1 = whole batches on one stream). Ignored on a GPU.
    #[arg(long, default_value_t = 0)]
    cpu_threads: usize,
    /// No random resized crop / flip.
    #[arg(long)]
    no_augment: bool,
    /// fail (default) or skip unreadable images.
    #[arg(long, default_value = "fail", value_parser = ["fail", "skip"])]
    bad_images: String,
    /// Data-parallel training: auto (join the group MLX's launch variables describe:
    /// MLX_RANK + MLX_HOSTFILE for ring, MLX_RANK + MLX_WORLD_SIZE + NCCL_HOST_IP +
    /// NCCL_PORT for NCCL), off (ignore them), or any/ring/mpi/nccl.
    #[arg(long, default_value = "auto")]
    distributed: lib::distributed::Choice,
    /// Every training setting as JSON (how `pipeline run` hands its settings to the ranks
    /// it launches); the setting flags are then ignored.
    #[arg(long, hide = true)]
    settings: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    fn config(&self) -> lib::train::TrainConfig {
        use lib::train::*;
        TrainConfig {
            data: self.data.clone().unwrap_or_default(),
            val_data: self.val_data.clone(),
            mode: if self.mode == "full" {
                Mode::Full
            } else {
                Mode::Lora
            },
            lora: LoraConfig {
                rank: self.rank,
                alpha: self.alpha,
                dropout: self.lora_dropout,
                targets: self.targets.clone(),
            },
            train_norms: self.train_norms,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            schedule: self.schedule,
            clip_norm: self.clip_norm,
            grad_checkpoint: self.grad_checkpoint,
            precision: self.precision,
            eval_every: self.eval_every,
            save_every: self.save_every,
            best_metric: if self.best_metric == "val_loss" {
                BestMetric::ValLoss
            } else {
                BestMetric::ValTop1
            },
            early_stopping: self.early_stopping,
            max_steps: self.max_steps,
            seed: self.seed,
            workers: self.workers,
            cpu_threads: self.cpu_threads,
            augment: !self.no_augment,
            bad_images: if self.bad_images == "skip" {
                BadImagePolicy::Skip
            } else {
                BadImagePolicy::Fail
            },
            // `pipeline launch` starts ranks; a `train` process is one of them.
            ranks: 1,
        }
    }

    pub fn run(self) -> Result<()> {
        super::use_device(self.device, self.quiet)?;
        let cfg = match &self.settings {
            Some(p) => lib::train::TrainConfig::from_json_file(p)?,
            None => self.config(),
        };
        let (model, out, resume) = match &self.resume {
            Some(run) => (PathBuf::new(), run.clone(), true),
            None => (
                self.model.clone().expect("required"),
                self.out.clone().expect("required"),
                false,
            ),
        };
        let group = lib::distributed::Group::join(self.distributed)
            .context("joining the data-parallel group")?;
        let r =
            lib::train::train_in_group(&model, &out, &cfg, resume, self.force, self.quiet, &group)
                .with_context(|| match group.is_distributed() {
                    true => format!("rank {}: training into {}", group.rank(), out.display()),
                    false => format!("training into {}", out.display()),
                })?;
        outln!(
            "trained {} steps in {:.1}s ({:.2} img/s, {:.1}% waiting for data){}",
            r.steps,
            r.seconds,
            r.images_per_second,
            100.0 * r.data_wait_fraction,
            r.final_eval
                .as_ref()
                .map(|e| format!("; val top-1 {:.2}%, loss {:.4}", 100.0 * e.top1, e.loss))
                .unwrap_or_default()
        );
        if r.skipped_images > 0 {
            outln!("skipped {} unreadable images", r.skipped_images);
        }
        outln!(
            "output: {}  (summary: {})",
            r.output.display(),
            r.run.join("summary.md").display()
        );
        Ok(())
    }
}

//! The training loop, as a sequence of phases: set-up ([`setup`]), epochs of optimizer
//! steps ([`epoch`]) with evaluation ([`evaluate`]) and checkpoints ([`saves`]) when
//! due, and the run's outputs ([`finish`]). State passes between them in the records
//! below.

mod epoch;
mod evaluate;
mod finish;
mod ranks;
mod saves;
mod setup;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::module::{ModuleParameters, Parameter};
use serde::Serialize;

use super::lanes::Lanes;
use super::metrics::EvalMetrics;
use super::optim::AdamW;
use super::state::Counters;
use super::{BestMetric, Mode, TrainConfig, TrainError};
use crate::config::ModelConfig;
use crate::data::Loader;
use crate::distributed::Group;
use crate::model::Vit;

/// What the trainer keeps of the base checkpoint after building the model.
struct BaseInfo {
    config: ModelConfig,
}

const RUN_FILE: &str = "run.json";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct RunFile {
    base: PathBuf,
    base_hash: String,
    classes: Vec<String>,
    config: TrainConfig,
    tool_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub run: PathBuf,
    pub steps: usize,
    pub epochs_completed: usize,
    pub final_train_loss: Option<f64>,
    pub final_eval: Option<EvalMetrics>,
    pub best: Option<(f64, usize)>,
    pub best_metric: BestMetric,
    pub images_per_second: f64,
    /// Fraction of the training time spent waiting for the data loader.
    pub data_wait_fraction: f64,
    pub skipped_images: usize,
    pub trainable_parameters: usize,
    pub total_parameters: usize,
    pub stopped_early: bool,
    /// `adapters/` (LoRA) or `model/` (full fine-tuning).
    pub output: PathBuf,
    pub seconds: f64,
    /// Where MLX computed: `cpu`, or `gpu` with the GPU's name.
    pub device: String,
    pub precision: super::Precision,
    /// Parts of each batch computed at once (CPU cores used; 1 on a GPU), per rank.
    pub lanes: usize,
    /// Data-parallel processes the run trained on (1: this one alone).
    pub ranks: usize,
    /// The gradient exchange between ranks per step (means over this session's steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce: Option<AllreduceStats>,
}

/// What summing the gradients over the ranks cost per step.
#[derive(Debug, Clone, Serialize)]
pub struct AllreduceStats {
    pub backend: String,
    pub bytes_per_step: usize,
    pub buckets_per_step: usize,
    pub mean_ms: f64,
    pub median_ms: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Marks what trains: LoRA matrices, a new head and (optionally) norms; or everything.
pub fn set_trainable(vit: &mut Vit, cfg: &TrainConfig, new_head: bool) {
    match cfg.mode {
        Mode::Full => vit.unfreeze_parameters(true),
        Mode::Lora => {
            vit.freeze_parameters(true);
            for (_, l) in vit.block_linears_mut() {
                if l.has_lora() {
                    l.lora_a.unfreeze(false);
                    l.lora_b.unfreeze(false);
                }
            }
            if cfg.train_norms {
                for b in &mut vit.blocks {
                    for n in [&mut b.norm1, &mut b.norm2] {
                        n.weight.unfreeze(false);
                        n.bias.unfreeze(false);
                    }
                }
                vit.norm.weight.unfreeze(false);
                vit.norm.bias.unfreeze(false);
            }
        }
    }
    if new_head {
        vit.head.weight.unfreeze(false);
        vit.head.bias.unfreeze(false);
    }
}

fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |m: &str| Err(TrainError::Settings(m.to_string()));
    if cfg.epochs == 0 {
        return bad("epochs must be at least 1");
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return bad("batch_size and grad_accum must be at least 1");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad("lr must be a positive number");
    }
    if cfg.weight_decay < 0.0 || cfg.clip_norm < 0.0 {
        return bad("weight_decay and clip_norm must not be negative");
    }
    Ok(())
}

struct Logger {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Logger {
    fn new(quiet: bool, total: u64) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps {msg} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b
        });
        Logger { quiet, bar }
    }

    fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if !self.quiet => eprintln!("{msg}"),
            None => {}
        }
    }

    fn step(&self, step: usize, msg: String, every: usize) {
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64);
                b.set_message(msg);
            }
            None if !self.quiet && (step % every == 0) => eprintln!("step {step}: {msg}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// How many optimizer steps the run makes, and how often it saves.
struct Steps {
    per_epoch: usize,
    total: usize,
    /// Save the resumable checkpoint every this many steps.
    save_every: usize,
}

/// What set-up settled: fixed for the rest of the run.
struct Plan {
    run: PathBuf,
    base: PathBuf,
    cfg: TrainConfig,
    base_info: BaseInfo,
    base_hash: String,
    classes: Vec<String>,
    /// The layers LoRA was attached to (none in full fine-tuning).
    lora_layers: Vec<String>,
    /// The classes differ from the base's, so the head is new (and trains).
    new_head: bool,
    checkpoint_dir: PathBuf,
    steps: Steps,
    trainable_parameters: usize,
    total_parameters: usize,
    /// This process writes the run's files (rank 0, or the only process).
    writes: bool,
}

/// What training changes and the resumable checkpoint keeps.
struct State {
    vit: Vit,
    opt: AdamW,
    counters: Counters,
}

struct Loaders {
    train: Loader,
    val: Option<Loader>,
}

/// `metrics.jsonl`, kept in memory and rewritten whole.
struct Metrics {
    path: PathBuf,
    history: Vec<serde_json::Value>,
    /// Only rank 0 writes; the other ranks keep the same history in memory.
    write: bool,
}

impl Metrics {
    fn rewrite(&self) -> Result<(), TrainError> {
        if !self.write {
            return Ok(());
        }
        let text: String = self.history.iter().map(|v| format!("{v}\n")).collect();
        crate::fsutil::write_file_atomically(&self.path, text.as_bytes()).map_err(io(&self.path))
    }
}

/// The set-up phase's result.
struct Setup {
    plan: Plan,
    state: State,
    loaders: Loaders,
    metrics: Metrics,
}

/// What the steps read but never change.
struct Ctx<'a> {
    plan: &'a Plan,
    loaders: &'a Loaders,
    log: &'a Logger,
    lanes: &'a Lanes,
    group: &'a Group,
}

/// Running totals of this session's steps, for the report.
struct Tally {
    last_loss: Option<f64>,
    final_eval: Option<EvalMetrics>,
    stopped_early: bool,
    images: usize,
    train_seconds: f64,
    wait_seconds: f64,
    /// The step of the last resumable checkpoint.
    last_saved_step: usize,
    /// Milliseconds of each step's gradient exchange, and its size.
    allreduce_ms: Vec<f64>,
    allreduce_bytes: usize,
    allreduce_buckets: usize,
}

impl Tally {
    fn starting_at(step: usize) -> Self {
        Tally {
            last_loss: None,
            final_eval: None,
            stopped_early: false,
            images: 0,
            train_seconds: 0.0,
            wait_seconds: 0.0,
            last_saved_step: step,
            allreduce_ms: Vec::new(),
            allreduce_bytes: 0,
            allreduce_buckets: 0,
        }
    }
}

/// Trains on top of the checkpoint at `base`, writing everything into `run`. With
/// `resume`, continues the run in `run` from its last checkpoint (the settings saved in
/// the run are used; `base` and `cfg` are ignored).
pub fn train(
    base: &Path,
    run: &Path,
    cfg: &TrainConfig,
    resume: bool,
    force: bool,
    quiet: bool,
) -> Result<TrainReport, TrainError> {
    train_in_group(base, run, cfg, resume, force, quiet, &Group::single())
}

/// [`train`] as one rank of a data-parallel `group`: `cfg.batch_size` is the global
/// batch, of which this rank computes every `size`-th image; gradients, losses and
/// evaluations are summed over the ranks, so every rank makes the same updates. Only
/// rank 0 writes into `run` (which the other ranks must see for `resume`).
pub fn train_in_group(
    base: &Path,
    run: &Path,
    cfg: &TrainConfig,
    resume: bool,
    force: bool,
    quiet: bool,
    group: &Group,
) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    let (base, cfg) = setup::settings(base, run, cfg, resume, force, group)?;
    validate(&cfg)?;
    ranks::validate(&cfg, group)?;
    let Setup {
        plan,
        mut state,
        loaders,
        mut metrics,
    } = setup::set_up(base, cfg, run, resume, force, group)?;
    ranks::check_same_start(group, &plan, &state)?;
    let log = Logger::new(quiet || group.rank() > 0, plan.steps.total as u64);
    setup::announce(&log, &plan, &loaders, group);

    let mut vg = super::compiled::ValueAndGrad::for_default_device();
    let mut value_and_grad = |v: &mut crate::model::Vit, b| vg.call(v, b);
    let lanes = ranks::lanes(&plan.cfg, group);
    let ctx = Ctx {
        plan: &plan,
        loaders: &loaders,
        log: &log,
        lanes: &lanes,
        group,
    };
    let mut tally = Tally::starting_at(state.counters.step);
    while state.counters.step < plan.steps.total {
        let done = epoch::run_epoch(
            &ctx,
            &mut state,
            &mut value_and_grad,
            &mut metrics,
            &mut tally,
        )?;
        if done {
            break;
        }
    }
    log.finish();
    state.vit.set_dropout_seed(None);

    finish::finish(&ctx, &state, &metrics, tally, started)
}

//! Set-up: the run's settings, the base model and data, the model to train (a new head
//! when the classes differ, LoRA, what trains), the optimizer and counters (fresh or
//! resumed), the loaders and the step plan.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use mlx_rs::Array;

use super::{
    io, set_trainable, BaseInfo, Loaders, Logger, Metrics, Plan, RunFile, Setup, State, Steps,
    RUN_FILE,
};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::data::{self, Augment, DataSource, Dataset, Loader, LoaderOptions};
use crate::distributed::Group;
use crate::model::{self, Vit};
use crate::rng::Rng;
use crate::train::optim::AdamW;
use crate::train::state::{self, Counters};
use crate::train::step::trainable;
use crate::train::{lora, Mode, TrainConfig, TrainError};

/// The base and settings to train with: the given ones, or on `resume` those saved in
/// the run.
pub(super) fn settings(
    base: &Path,
    run: &Path,
    cfg: &TrainConfig,
    resume: bool,
    force: bool,
    group: &Group,
) -> Result<(PathBuf, TrainConfig), TrainError> {
    let run_file = run.join(RUN_FILE);
    if resume {
        let text = std::fs::read_to_string(&run_file).map_err(io(&run_file))?;
        let rf: RunFile = serde_json::from_str(&text)
            .map_err(|e| TrainError::Settings(format!("{}: {e}", run_file.display())))?;
        Ok((rf.base, rf.config))
    } else {
        // Rank 0 decides: the others may already see the run.json it has just written.
        if run_file.exists() && !force && group.rank() == 0 {
            return Err(TrainError::RunExists(run.to_path_buf()));
        }
        Ok((base.to_path_buf(), cfg.clone()))
    }
}

/// Everything up to the first step.
pub(super) fn set_up(
    base: PathBuf,
    cfg: TrainConfig,
    run: &Path,
    resume: bool,
    force: bool,
    group: &Group,
) -> Result<Setup, TrainError> {
    let Inputs {
        mut vit,
        base_info,
        base_hash,
        train_set,
        val_set,
        classes,
    } = load_inputs(&base, &cfg)?;
    let (new_head, lora_layers) = prepare_model(&mut vit, &base_info, &classes, &cfg)?;

    let mut opt = AdamW::new(cfg.weight_decay);
    let checkpoint_dir = run.join("checkpoint");
    let counters = if resume {
        restore(run, &checkpoint_dir, &mut vit, &mut opt)?
    } else {
        let rf = RunFile {
            base: base.clone(),
            base_hash: base_hash.clone(),
            classes: classes.clone(),
            config: cfg.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        if group.rank() == 0 {
            start_fresh(run, force, &rf)?;
        }
        Counters::default()
    };

    let shard = (group.rank(), group.size());
    let loaders = make_loaders(&vit.config, &cfg, train_set, val_set, shard)?;
    let steps = plan_steps(&loaders.train, &cfg)?;
    let mut metrics = load_metrics(run.join("metrics.jsonl"), counters.step);
    metrics.write = group.rank() == 0;
    metrics.rewrite()?;

    let total_parameters = vit.config.num_parameters();
    let trainable_parameters = trainable(&vit).values().map(|a| a.size()).sum();
    let plan = Plan {
        run: run.to_path_buf(),
        base,
        cfg,
        base_info,
        base_hash,
        classes,
        lora_layers,
        new_head,
        checkpoint_dir,
        steps,
        trainable_parameters,
        total_parameters,
        writes: group.rank() == 0,
    };
    let state = State { vit, opt, counters };
    Ok(Setup {
        plan,
        state,
        loaders,
        metrics,
    })
}

/// The line a run starts with.
pub(super) fn announce(log: &Logger, plan: &Plan, loaders: &Loaders, group: &Group) {
    let ranks = if group.is_distributed() {
        format!(
            ", {} ranks ({}) of {} images each per batch",
            group.size(),
            group.backend().name(),
            plan.cfg.batch_size / group.size()
        )
    } else {
        String::new()
    };
    log.line(&format!(
        "training {} ({:?}): {} trainable of {:.2}M parameters, {} images in {} classes, {} steps{ranks}",
        plan.base.display(),
        plan.cfg.mode,
        plan.trainable_parameters,
        plan.total_parameters as f64 / 1e6,
        loaders.train.dataset().len(),
        plan.classes.len(),
        plan.steps.total
    ));
}

/// The base model (built, its file already closed) and the data.
struct Inputs {
    vit: Vit,
    base_info: BaseInfo,
    base_hash: String,
    train_set: Dataset,
    val_set: Option<Dataset>,
    classes: Vec<String>,
}

fn load_inputs(base: &Path, cfg: &TrainConfig) -> Result<Inputs, TrainError> {
    let ck = Checkpoint::load(base)?;
    let base_hash = ck.content_hash();
    let train_src = DataSource::detect(&cfg.data)?;
    let val_src = cfg.val_data.as_ref().map(DataSource::detect).transpose()?;
    let (train_set, val_set) = data::load_split(&train_src, val_src.as_ref(), None)?;
    let classes = train_set.classes.clone();

    let vit = model::from_checkpoint(&ck)?;
    // The model holds its own copy of the weights; unmapping the file keeps the base's
    // bytes out of the resident set for the rest of the run.
    let base_config = ck.config.clone();
    drop(ck);
    Ok(Inputs {
        vit,
        base_info: BaseInfo {
            config: base_config,
        },
        base_hash,
        train_set,
        val_set,
        classes,
    })
}

/// Fits the base model to the run: a new head when the classes differ from the base's,
/// LoRA, what trains and the arithmetic. Returns whether the head is new and the layers
/// LoRA was attached to.
fn prepare_model(
    vit: &mut Vit,
    base: &BaseInfo,
    classes: &[String],
    cfg: &TrainConfig,
) -> Result<(bool, Vec<String>), TrainError> {
    let same_head = base.config.num_classes == classes.len()
        && base
            .config
            .class_names
            .as_ref()
            .is_none_or(|n| n.as_slice() == classes);
    let replace_head = !same_head;
    if replace_head {
        new_head(vit, classes.len(), pooled_width(&base.config), cfg.seed);
    }
    vit.config.num_classes = classes.len();
    vit.config.class_names = Some(classes.to_vec());
    let lora_layers = match cfg.mode {
        Mode::Lora => lora::attach(vit, &cfg.lora, cfg.seed).map_err(TrainError::Settings)?,
        Mode::Full => Vec::new(),
    };
    set_trainable(vit, cfg, replace_head);
    vit.grad_checkpoint = cfg.grad_checkpoint;
    vit.compute_dtype = cfg.precision.dtype();
    vit.cast_frozen()?;
    Ok((replace_head, lora_layers))
}

/// The width of the vector the classification head reads.
fn pooled_width(config: &ModelConfig) -> usize {
    config.pooled_dim()
}

/// Puts a freshly initialized `classes` x `width` head on the model (weights
/// truncated-normal times 0.02 from `seed`, biases zero).
fn new_head(vit: &mut Vit, classes: usize, width: usize, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x4EAD);
    let w: Vec<f32> = (0..classes * width)
        .map(|_| rng.trunc_normal() * 0.02)
        .collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[classes as i32, width as i32]));
    vit.head.bias.value = Some(Array::from_slice(&vec![0f32; classes], &[classes as i32]));
}

/// Loads the run's last checkpoint into the model and optimizer; returns its counters.
fn restore(
    run: &Path,
    checkpoint_dir: &Path,
    vit: &mut Vit,
    opt: &mut AdamW,
) -> Result<Counters, TrainError> {
    if !checkpoint_dir.exists() {
        return Err(TrainError::NothingToResume(run.to_path_buf()));
    }
    let loaded = state::load(checkpoint_dir)?;
    let flat: Vec<(Rc<str>, Array)> = loaded
        .params
        .into_iter()
        .map(|(k, v)| (Rc::from(k.as_str()), v))
        .collect();
    mlx_rs::module::update_parameters(vit, flat);
    opt.m = loaded.m;
    opt.v = loaded.v;
    opt.t = loaded.counters.step as u64;
    Ok(loaded.counters)
}

/// A new run: clears an old one's outputs with `force`, then writes `run.json`.
fn start_fresh(run: &Path, force: bool, rf: &RunFile) -> Result<(), TrainError> {
    if force && run.exists() {
        for sub in ["checkpoint", "best", "adapters", "model", "metrics.jsonl"] {
            let p = run.join(sub);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
    }
    std::fs::create_dir_all(run).map_err(io(run))?;
    let run_file = run.join(RUN_FILE);
    crate::fsutil::write_file_atomically(
        &run_file,
        serde_json::to_string_pretty(rf).expect("json").as_bytes(),
    )
    .map_err(io(&run_file))
}

fn make_loaders(
    mc: &ModelConfig,
    cfg: &TrainConfig,
    train_set: Dataset,
    val_set: Option<Dataset>,
    shard: (usize, usize),
) -> Result<Loaders, TrainError> {
    let mut lopts = LoaderOptions::train(mc, cfg.batch_size, cfg.seed);
    lopts.shard = shard;
    lopts.workers = cfg.workers.max(1);
    lopts.bad_images = cfg.bad_images.into();
    if !cfg.augment {
        lopts.augment = Augment {
            random_resized_crop: false,
            hflip: false,
        };
    }
    let train = Loader::new(Arc::new(train_set), lopts.clone())?;
    let val = match val_set {
        Some(v) => {
            let mut o = LoaderOptions::eval(mc, cfg.batch_size);
            o.workers = lopts.workers;
            o.bad_images = lopts.bad_images;
            o.shard = shard;
            Some(Loader::new(Arc::new(v), o)?)
        }
        None => None,
    };
    Ok(Loaders { train, val })
}

fn plan_steps(train: &Loader, cfg: &TrainConfig) -> Result<Steps, TrainError> {
    let per_epoch = train.num_batches() / cfg.grad_accum;
    if per_epoch == 0 {
        return Err(TrainError::Settings(format!(
            "{} training images make no full step of batch {} x accumulation {}",
            train.dataset().len(),
            cfg.batch_size,
            cfg.grad_accum
        )));
    }
    let mut total = per_epoch * cfg.epochs;
    if cfg.max_steps > 0 {
        total = total.min(cfg.max_steps);
    }
    let save_every = if cfg.save_every == 0 {
        per_epoch
    } else {
        cfg.save_every
    };
    Ok(Steps {
        per_epoch,
        total,
        save_every,
    })
}

/// Metrics from before the checkpoint survive a resume; later lines are dropped.
fn load_metrics(path: PathBuf, up_to_step: usize) -> Metrics {
    let history = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["step"]
                .as_u64()
                .is_some_and(|s| (s as usize) <= up_to_step)
        })
        .collect();
    Metrics {
        path,
        history,
        write: true,
    }
}

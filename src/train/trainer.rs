//! The training loop.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mlx_rs::module::{ModuleParameters, Parameter};
use mlx_rs::{error::Exception, Array};
use serde::Serialize;

use super::adapters::{self, AdapterConfig};
use super::metrics::{EvalMetrics, Evaluator};
use super::optim::{self, AdamW};
use super::state::{self, Counters};
use super::step::{self, trainable};
use super::{lora, plot, BestMetric, Mode, TrainConfig, TrainError};
use crate::checkpoint::{self, Checkpoint, TensorOut};
use crate::config::ModelConfig;

/// What the trainer keeps of the base checkpoint after building the model.
struct BaseInfo {
    config: ModelConfig,
}
use crate::data::{self, Augment, DataSource, Loader, LoaderOptions};
use crate::model::{self, Vit};
use crate::rng::Rng;

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
    /// Parts of each batch computed at once (CPU cores used; 1 on a GPU).
    pub lanes: usize,
}

/// MLX's default device in words, for the summary.
fn device_in_words() -> String {
    match mlx_rs::Device::try_default().and_then(|d| d.get_type()) {
        Ok(mlx_rs::DeviceType::Gpu) => match crate::backend::gpu_name() {
            Some(name) => format!("gpu ({name})"),
            None => "gpu".into(),
        },
        Ok(mlx_rs::DeviceType::Cpu) => "cpu".into(),
        Err(_) => "unknown".into(),
    }
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
    let started = Instant::now();
    let run_file = run.join(RUN_FILE);
    let (base, cfg) = if resume {
        let text = std::fs::read_to_string(&run_file).map_err(io(&run_file))?;
        let rf: RunFile = serde_json::from_str(&text)
            .map_err(|e| TrainError::Settings(format!("{}: {e}", run_file.display())))?;
        (rf.base, rf.config)
    } else {
        if run_file.exists() && !force {
            return Err(TrainError::RunExists(run.to_path_buf()));
        }
        (base.to_path_buf(), cfg.clone())
    };
    validate(&cfg)?;

    let ck = Checkpoint::load(&base)?;
    let base_hash = ck.content_hash();
    let train_src = DataSource::detect(&cfg.data)?;
    let val_src = cfg.val_data.as_ref().map(DataSource::detect).transpose()?;
    let (train_set, val_set) = data::load_split(&train_src, val_src.as_ref(), None)?;
    let classes = train_set.classes.clone();

    let mut vit = model::from_checkpoint(&ck)?;
    // The model holds its own copy of the weights; unmapping the file keeps the base's
    // bytes out of the resident set for the rest of the run.
    let base_config = ck.config.clone();
    drop(ck);
    let ck = BaseInfo {
        config: base_config,
    };
    let same_head = ck.config.num_classes == classes.len()
        && ck.config.class_names.as_ref().is_none_or(|n| *n == classes);
    let new_head = !same_head;
    if new_head {
        let d = ck.config.hidden_size;
        let mut rng = Rng::new(cfg.seed ^ 0x4EAD);
        let w: Vec<f32> = (0..classes.len() * d)
            .map(|_| rng.trunc_normal() * 0.02)
            .collect();
        vit.head.weight.value = Some(Array::from_slice(&w, &[classes.len() as i32, d as i32]));
        vit.head.bias.value = Some(Array::from_slice(
            &vec![0f32; classes.len()],
            &[classes.len() as i32],
        ));
    }
    vit.config.num_classes = classes.len();
    vit.config.class_names = Some(classes.clone());
    let lora_layers = match cfg.mode {
        Mode::Lora => lora::attach(&mut vit, &cfg.lora, cfg.seed).map_err(TrainError::Settings)?,
        Mode::Full => Vec::new(),
    };
    set_trainable(&mut vit, &cfg, new_head);
    vit.grad_checkpoint = cfg.grad_checkpoint;
    vit.compute_dtype = cfg.precision.dtype();
    vit.cast_frozen()?;

    let mut counters = Counters::default();
    let mut opt = AdamW::new(cfg.weight_decay);
    let checkpoint_dir = run.join("checkpoint");
    if resume {
        if !checkpoint_dir.exists() {
            return Err(TrainError::NothingToResume(run.to_path_buf()));
        }
        let loaded = state::load(&checkpoint_dir)?;
        let flat: Vec<(Rc<str>, Array)> = loaded
            .params
            .into_iter()
            .map(|(k, v)| (Rc::from(k.as_str()), v))
            .collect();
        mlx_rs::module::update_parameters(&mut vit, flat);
        opt.m = loaded.m;
        opt.v = loaded.v;
        opt.t = loaded.counters.step as u64;
        counters = loaded.counters;
    } else {
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
        let rf = RunFile {
            base: base.clone(),
            base_hash: base_hash.clone(),
            classes: classes.clone(),
            config: cfg.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        crate::fsutil::write_file_atomically(
            &run_file,
            serde_json::to_string_pretty(&rf).expect("json").as_bytes(),
        )
        .map_err(io(&run_file))?;
    }

    let mc = &vit.config;
    let mut lopts = LoaderOptions::train(mc, cfg.batch_size, cfg.seed);
    lopts.workers = cfg.workers.max(1);
    lopts.bad_images = cfg.bad_images.into();
    if !cfg.augment {
        lopts.augment = Augment {
            random_resized_crop: false,
            hflip: false,
        };
    }
    let train_loader = Loader::new(Arc::new(train_set), lopts.clone())?;
    let val_loader = match val_set {
        Some(v) => {
            let mut o = LoaderOptions::eval(mc, cfg.batch_size);
            o.workers = lopts.workers;
            o.bad_images = lopts.bad_images;
            Some(Loader::new(Arc::new(v), o)?)
        }
        None => None,
    };

    let steps_per_epoch = train_loader.num_batches() / cfg.grad_accum;
    if steps_per_epoch == 0 {
        return Err(TrainError::Settings(format!(
            "{} training images make no full step of batch {} x accumulation {}",
            train_loader.dataset().len(),
            cfg.batch_size,
            cfg.grad_accum
        )));
    }
    let mut total_steps = steps_per_epoch * cfg.epochs;
    if cfg.max_steps > 0 {
        total_steps = total_steps.min(cfg.max_steps);
    }
    let save_every = if cfg.save_every == 0 {
        steps_per_epoch
    } else {
        cfg.save_every
    };

    // Metrics from before the checkpoint survive a resume; later lines are dropped.
    let metrics_path = run.join("metrics.jsonl");
    let mut history: Vec<serde_json::Value> = std::fs::read_to_string(&metrics_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["step"]
                .as_u64()
                .is_some_and(|s| (s as usize) <= counters.step)
        })
        .collect();
    let rewrite_metrics = |history: &[serde_json::Value]| -> Result<(), TrainError> {
        let text: String = history.iter().map(|v| format!("{v}\n")).collect();
        crate::fsutil::write_file_atomically(&metrics_path, text.as_bytes())
            .map_err(io(&metrics_path))
    };
    rewrite_metrics(&history)?;

    let output_spec = OutputSpec {
        cfg: &cfg,
        lora_layers: &lora_layers,
        new_head,
        base: &ck,
        base_hash: &base_hash,
        classes: &classes,
    };
    let total_params = vit.config.num_parameters();
    let trainable_count: usize = trainable(&vit).values().map(|a| a.size()).sum();
    let log = Logger::new(quiet, total_steps as u64);
    log.line(&format!(
        "training {} ({:?}): {} trainable of {:.2}M parameters, {} images in {} classes, {} steps",
        base.display(),
        cfg.mode,
        trainable_count,
        total_params as f64 / 1e6,
        train_loader.dataset().len(),
        classes.len(),
        total_steps
    ));

    let mut value_and_grad = mlx_rs::nn::value_and_grad(step::loss);
    let lanes = super::lanes::Lanes::for_default_device(cfg.cpu_threads);

    let mut last_loss = None;
    let mut final_eval = None;
    let mut stopped_early = false;
    let mut images = 0usize;
    let mut train_seconds = 0.0f64;
    let mut wait_seconds = 0.0f64;
    let mut last_saved_step = counters.step;

    'epochs: while counters.step < total_steps {
        let epoch = counters.epoch;
        let mut batches = train_loader.epoch(epoch as u64, counters.batch);
        let mut batch_in_epoch = counters.batch;
        while batch_in_epoch + cfg.grad_accum <= steps_per_epoch * cfg.grad_accum {
            if counters.step >= total_steps {
                break 'epochs;
            }
            let t0 = Instant::now();
            let wait_before = train_loader.stats().wait_seconds;
            let step = counters.step;
            vit.set_dropout_seed(Some(
                cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64),
            ));
            let mut micro = Vec::with_capacity(cfg.grad_accum);
            let mut step_images = 0;
            for _ in 0..cfg.grad_accum {
                let batch = match batches.next() {
                    Some(b) => b?,
                    None => break,
                };
                // The loader's own index: a batch whose images were all skipped is not
                // yielded but still uses up its index.
                batch_in_epoch = batch.index + 1;
                counters.skipped_images += batch.skipped.len();
                if batch.is_empty() {
                    continue;
                }
                let [b, c, h, w] = batch.shape();
                let x = Array::from_slice(&batch.pixels, &[b as i32, c as i32, h as i32, w as i32]);
                let labels: Vec<i32> = batch.labels.iter().map(|l| *l as i32).collect();
                micro.push((x, Array::from_slice(&labels, &[b as i32])));
                step_images += b;
            }
            if micro.is_empty() {
                break;
            }
            let lr = optim::lr_at(cfg.lr, cfg.schedule, cfg.warmup_steps, total_steps, step);
            let out = step::compute(
                &mut vit,
                &mut value_and_grad,
                &mut opt,
                micro,
                cfg.grad_accum,
                cfg.clip_norm,
                lr,
                &lanes,
            )?;
            let (loss_v, norm_v, updated) = (out.loss, out.grad_norm, out.updated);
            for (what, value) in [("loss", loss_v), ("gradient norm", norm_v)] {
                if !value.is_finite() {
                    log.finish();
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        what,
                        value,
                        last_good: last_saved_step,
                        run: run.to_path_buf(),
                    });
                }
            }
            step::apply(&mut vit, updated);
            counters.step += 1;
            counters.batch = batch_in_epoch;
            let dt = t0.elapsed().as_secs_f64();
            train_seconds += dt;
            wait_seconds += train_loader.stats().wait_seconds - wait_before;
            images += step_images;
            last_loss = Some(f64::from(loss_v));
            let ips = step_images as f64 / dt.max(1e-9);
            history.push(serde_json::json!({
                "step": counters.step, "epoch": epoch, "loss": loss_v, "lr": lr,
                "grad_norm": norm_v, "images_per_second": ips,
            }));
            log.step(
                counters.step,
                format!("loss {loss_v:.4} lr {lr:.2e} {ips:.1} img/s"),
                10,
            );

            let end_of_epoch = batch_in_epoch + cfg.grad_accum > steps_per_epoch * cfg.grad_accum;
            let eval_now = if cfg.eval_every > 0 {
                counters.step % cfg.eval_every == 0
            } else {
                end_of_epoch
            } || counters.step == total_steps;
            if end_of_epoch {
                counters.epoch += 1;
                counters.batch = 0;
            }
            if eval_now {
                if let Some(vl) = &val_loader {
                    vit.set_dropout_seed(None);
                    let m = evaluate(&vit, vl)?;
                    log.line(&format!(
                        "step {}: val loss {:.4} top-1 {:.2}%{}",
                        counters.step,
                        m.loss,
                        100.0 * m.top1,
                        m.top5
                            .map(|t| format!(" top-5 {:.2}%", 100.0 * t))
                            .unwrap_or_default()
                    ));
                    history.push(serde_json::json!({
                        "step": counters.step, "epoch": epoch, "val_loss": m.loss, "val_top1": m.top1,
                        "val_top5": m.top5, "val_per_class": m.per_class_accuracy,
                    }));
                    let score = match cfg.best_metric {
                        BestMetric::ValLoss => -m.loss,
                        BestMetric::ValTop1 => m.top1,
                    };
                    if counters.best.is_none_or(|(b, _)| score > b) {
                        counters.best = Some((score, counters.step));
                        counters.evals_since_best = 0;
                        save_output(&run.join("best"), &vit, &output_spec)?;
                    } else {
                        counters.evals_since_best += 1;
                    }
                    final_eval = Some(m);
                    if cfg.early_stopping > 0 && counters.evals_since_best >= cfg.early_stopping {
                        log.line(&format!(
                            "early stopping: no improvement in {} evaluations",
                            cfg.early_stopping
                        ));
                        stopped_early = true;
                    }
                }
            }
            if counters.step % save_every == 0
                || end_of_epoch
                || stopped_early
                || counters.step == total_steps
            {
                rewrite_metrics(&history)?;
                state::save(&checkpoint_dir, &trainable(&vit), &opt.m, &opt.v, &counters)?;
                last_saved_step = counters.step;
            }
            if stopped_early {
                break 'epochs;
            }
            if end_of_epoch {
                continue 'epochs;
            }
        }
        // The epoch ran out of batches (skipped images can shorten it).
        if counters.batch != 0 {
            counters.epoch += 1;
            counters.batch = 0;
        }
    }
    log.finish();
    vit.set_dropout_seed(None);

    let output = match cfg.mode {
        Mode::Lora => run.join("adapters"),
        Mode::Full => run.join("model"),
    };
    save_output(&output, &vit, &output_spec)?;
    rewrite_metrics(&history)?;
    write_curves(run, &history);
    let report = TrainReport {
        device: device_in_words(),
        precision: cfg.precision,
        lanes: lanes.count(),
        run: run.to_path_buf(),
        steps: counters.step,
        epochs_completed: counters.epoch,
        final_train_loss: last_loss,
        final_eval,
        best: counters.best.map(|(s, st)| {
            (
                if cfg.best_metric == BestMetric::ValLoss {
                    -s
                } else {
                    s
                },
                st,
            )
        }),
        best_metric: cfg.best_metric,
        images_per_second: images as f64 / train_seconds.max(1e-9),
        data_wait_fraction: wait_seconds / train_seconds.max(1e-9),
        skipped_images: counters.skipped_images,
        trainable_parameters: trainable_count,
        total_parameters: total_params,
        stopped_early,
        output,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_summary(run, &report)?;
    Ok(report)
}

fn evaluate(vit: &Vit, loader: &Loader) -> Result<EvalMetrics, TrainError> {
    let mut ev = Evaluator::new(vit.config.num_classes);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        if batch.is_empty() {
            continue;
        }
        let [b, c, h, w] = batch.shape();
        let x = Array::from_slice(&batch.pixels, &[b as i32, c as i32, h as i32, w as i32]);
        let out = vit.forward(&x)?;
        let logits = out
            .logits
            .ok_or_else(|| Exception::custom("model has no head"))?;
        ev.add(&model::to_host(&logits)?, &batch.labels);
    }
    Ok(ev.finish())
}

/// What the run's outputs (`best/`, `adapters/` or `model/`) are written from, besides
/// the model itself.
struct OutputSpec<'a> {
    cfg: &'a TrainConfig,
    lora_layers: &'a [String],
    new_head: bool,
    base: &'a BaseInfo,
    base_hash: &'a str,
    classes: &'a [String],
}

/// Writes what the run produced: adapters (LoRA) or a full checkpoint.
fn save_output(dir: &Path, vit: &Vit, spec: &OutputSpec<'_>) -> Result<(), TrainError> {
    let OutputSpec {
        cfg,
        lora_layers,
        new_head,
        base,
        base_hash,
        classes,
    } = *spec;
    match cfg.mode {
        Mode::Lora => {
            let mut replaced = Vec::new();
            if new_head {
                replaced.extend(["head.weight".to_string(), "head.bias".to_string()]);
            }
            if cfg.train_norms {
                for (name, _) in vit.config.tensor_shapes() {
                    if name.contains("norm") {
                        replaced.push(name);
                    }
                }
            }
            let acfg = AdapterConfig {
                format: adapters::FORMAT.into(),
                lora: cfg.lora.clone(),
                layers: lora_layers.to_vec(),
                base_model_hash: base_hash.to_string(),
                base_model_source: base.config.provenance.source.clone(),
                classes: classes.to_vec(),
                mean: base.config.preprocess.mean,
                std: base.config.preprocess.std,
                replaced,
            };
            adapters::save(dir, vit, &acfg, &base.config)?;
        }
        Mode::Full => {
            let params: BTreeMap<String, Array> = vit.named_parameters().into_iter().collect();
            let mut tensors = Vec::new();
            for (name, shape) in vit.config.tensor_shapes() {
                let a = &params[&name];
                tensors.push(TensorOut::owned(name, shape, model::to_host(a)?));
            }
            checkpoint::write(dir, &vit.config, &tensors, true)?;
        }
    }
    Ok(())
}

fn write_curves(run: &Path, history: &[serde_json::Value]) {
    let series = |key: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect()
    };
    // A missing plot is not worth failing a finished run over.
    let _ = plot::write(
        &run.join("curves.png"),
        &series("loss"),
        &series("val_loss"),
        &series("val_top1"),
        &series("lr"),
    );
}

fn write_summary(run: &Path, r: &TrainReport) -> Result<(), TrainError> {
    let json = run.join("summary.json");
    crate::fsutil::write_file_atomically(
        &json,
        serde_json::to_string_pretty(r).expect("json").as_bytes(),
    )
    .map_err(io(&json))?;
    let mut md = Vec::new();
    let _ = writeln!(md, "# Training summary\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| steps | {} ({} epochs) |",
        r.steps, r.epochs_completed
    );
    if let Some(l) = r.final_train_loss {
        let _ = writeln!(md, "| final training loss | {l:.4} |");
    }
    if let Some(e) = &r.final_eval {
        let _ = writeln!(md, "| validation loss | {:.4} |", e.loss);
        let _ = writeln!(md, "| validation top-1 | {:.2}% |", 100.0 * e.top1);
        if let Some(t5) = e.top5 {
            let _ = writeln!(md, "| validation top-5 | {:.2}% |", 100.0 * t5);
        }
    }
    if let Some((v, s)) = r.best {
        let _ = writeln!(md, "| best {:?} | {v:.4} at step {s} |", r.best_metric);
    }
    let _ = writeln!(md, "| device | {} |", r.device);
    let _ = writeln!(md, "| precision | {:?} |", r.precision);
    let _ = writeln!(md, "| lanes (batch parts computed at once) | {} |", r.lanes);
    let _ = writeln!(md, "| throughput | {:.2} images/s |", r.images_per_second);
    let _ = writeln!(
        md,
        "| time waiting for data | {:.1}% |",
        100.0 * r.data_wait_fraction
    );
    let _ = writeln!(md, "| skipped images | {} |", r.skipped_images);
    let _ = writeln!(
        md,
        "| trainable parameters | {} of {} |",
        r.trainable_parameters, r.total_parameters
    );
    let _ = writeln!(md, "| output | {} |", r.output.display());
    let _ = writeln!(md, "\nCurves: `curves.png` (top: training loss blue, validation loss orange; middle: validation top-1; bottom: learning rate).");
    let path = run.join("summary.md");
    crate::fsutil::write_file_atomically(&path, &md).map_err(io(&path))
}

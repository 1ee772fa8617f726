//! The checkpoint phase: the resumable checkpoint every `save_every` steps, and `best/`;
//! and how the run's model outputs (`best/`, `adapters/` or `model/`) are written.

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::Array;

use super::{BaseInfo, Metrics, Plan, State, Tally};
use crate::checkpoint::{self, TensorOut};
use crate::model::{self, Vit};
use crate::train::adapters::{self, AdapterConfig};
use crate::train::metrics::EvalMetrics;
use crate::train::state::{self, Counters};
use crate::train::step::trainable;
use crate::train::{BestMetric, Mode, TrainError};

/// Counts the evaluation `m` against the best so far; a new best is written to `best/`.
pub(super) fn keep_best(
    plan: &Plan,
    vit: &Vit,
    counters: &mut Counters,
    m: &EvalMetrics,
) -> Result<(), TrainError> {
    let score = match plan.cfg.best_metric {
        BestMetric::ValLoss => -m.loss,
        BestMetric::ValTop1 => m.top1,
    };
    if counters.best.is_none_or(|(b, _)| score > b) {
        counters.best = Some((score, counters.step));
        counters.evals_since_best = 0;
        if plan.writes {
            save_output(&plan.run.join("best"), vit, &plan.output_spec())?;
        }
    } else {
        counters.evals_since_best += 1;
    }
    Ok(())
}

/// Writes `metrics.jsonl` and the resumable checkpoint every `save_every` steps, at the
/// end of an epoch, on stopping early and after the last step.
pub(super) fn checkpoint_if_due(
    plan: &Plan,
    st: &State,
    metrics: &Metrics,
    tally: &mut Tally,
    end_of_epoch: bool,
) -> Result<(), TrainError> {
    let step = st.counters.step;
    if step % plan.steps.save_every == 0
        || end_of_epoch
        || tally.stopped_early
        || step == plan.steps.total
    {
        metrics.rewrite()?;
        if !plan.writes {
            tally.last_saved_step = step;
            return Ok(());
        }
        state::save(
            &plan.checkpoint_dir,
            &trainable(&st.vit),
            &st.opt.m,
            &st.opt.v,
            &st.counters,
        )?;
        tally.last_saved_step = step;
    }
    Ok(())
}

/// What the run's outputs (`best/`, `adapters/` or `model/`) are written from, besides
/// the model itself.
pub(super) struct OutputSpec<'a> {
    cfg: &'a crate::train::TrainConfig,
    lora_layers: &'a [String],
    new_head: bool,
    base: &'a BaseInfo,
    base_hash: &'a str,
    classes: &'a [String],
}

impl Plan {
    pub(super) fn output_spec(&self) -> OutputSpec<'_> {
        OutputSpec {
            cfg: &self.cfg,
            lora_layers: &self.lora_layers,
            new_head: self.new_head,
            base: &self.base_info,
            base_hash: &self.base_hash,
            classes: &self.classes,
        }
    }
}

/// Writes what the run produced: adapters (LoRA) or a full checkpoint.
pub(super) fn save_output(dir: &Path, vit: &Vit, spec: &OutputSpec<'_>) -> Result<(), TrainError> {
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

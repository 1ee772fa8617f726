//! The evaluation phase: validation metrics, the best model so far and early stopping.

use mlx_rs::{error::Exception, Array};

use super::{saves, Ctx, Metrics, State, Tally};
use crate::data::Loader;
use crate::distributed::Group;
use crate::model::{self, Vit};
use crate::train::allreduce;
use crate::train::metrics::{EvalMetrics, Evaluator};
use crate::train::TrainError;

/// With a validation set: evaluates on it, logs and records the metrics, keeps the best
/// model and decides on early stopping. Without one, does nothing.
pub(super) fn evaluate_and_track(
    ctx: &Ctx<'_>,
    st: &mut State,
    metrics: &mut Metrics,
    tally: &mut Tally,
    epoch: usize,
) -> Result<(), TrainError> {
    let Some(vl) = &ctx.loaders.val else {
        return Ok(());
    };
    let cfg = &ctx.plan.cfg;
    st.vit.set_dropout_seed(None);
    let m = evaluate(&st.vit, vl, ctx.group)?;
    let step = st.counters.step;
    ctx.log.line(&format!(
        "step {}: val loss {:.4} top-1 {:.2}%{}",
        step,
        m.loss,
        100.0 * m.top1,
        m.top5
            .map(|t| format!(" top-5 {:.2}%", 100.0 * t))
            .unwrap_or_default()
    ));
    metrics.history.push(serde_json::json!({
        "step": step, "epoch": epoch, "val_loss": m.loss, "val_top1": m.top1,
        "val_top5": m.top5, "val_per_class": m.per_class_accuracy,
    }));
    saves::keep_best(ctx.plan, &st.vit, &mut st.counters, &m)?;
    tally.final_eval = Some(m);
    if cfg.early_stopping > 0 && st.counters.evals_since_best >= cfg.early_stopping {
        ctx.log.line(&format!(
            "early stopping: no improvement in {} evaluations",
            cfg.early_stopping
        ));
        tally.stopped_early = true;
    }
    Ok(())
}

/// This rank's share of every validation batch (the loader's shard), summed over the
/// ranks: every rank ends with the metrics of the whole set.
fn evaluate(vit: &Vit, loader: &Loader, group: &Group) -> Result<EvalMetrics, TrainError> {
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
    allreduce::sum_evaluation(group, &mut ev)?;
    Ok(ev.finish())
}

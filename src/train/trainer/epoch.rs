//! The step phase: an epoch's optimizer steps, each followed by the evaluation and the
//! resumable checkpoint when they are due.

use std::time::Instant;

use mlx_rs::module::FlattenedModuleParam;
use mlx_rs::{error::Exception, Array};

use super::{evaluate, ranks, saves, Ctx, Metrics, State, Tally};
use crate::data::EpochIter;
use crate::model::Vit;
use crate::train::state::Counters;
use crate::train::{optim, step, TrainError};

/// Where the loop is in its epoch.
struct Cursor {
    /// The epoch the steps are recorded under (the one the loop started).
    epoch: usize,
    batches: EpochIter,
    /// The loader's index of the next batch.
    batch: usize,
}

/// Runs the rest of the current epoch. `true`: the run is over (every step done, or
/// stopped early); `false`: it goes on with the next epoch.
pub(super) fn run_epoch<F>(
    ctx: &Ctx<'_>,
    st: &mut State,
    value_and_grad: &mut F,
    metrics: &mut Metrics,
    tally: &mut Tally,
) -> Result<bool, TrainError>
where
    F: FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>,
{
    let plan = ctx.plan;
    let accum = plan.cfg.grad_accum;
    let epoch = st.counters.epoch;
    let mut cur = Cursor {
        epoch,
        batches: ctx.loaders.train.epoch(epoch as u64, st.counters.batch),
        batch: st.counters.batch,
    };
    while cur.batch + accum <= plan.steps.per_epoch * accum {
        if st.counters.step >= plan.steps.total {
            return Ok(true);
        }
        if !train_step(ctx, st, value_and_grad, metrics, tally, &mut cur)? {
            break;
        }
        let end_of_epoch = cur.batch + accum > plan.steps.per_epoch * accum;
        after_step(ctx, st, metrics, tally, cur.epoch, end_of_epoch)?;
        if tally.stopped_early {
            return Ok(true);
        }
        if end_of_epoch {
            return Ok(false);
        }
    }
    // The epoch ran out of batches (skipped images can shorten it).
    if st.counters.batch != 0 {
        st.counters.epoch += 1;
        st.counters.batch = 0;
    }
    Ok(false)
}

/// One optimizer step over the next `grad_accum` batches: computes it, applies it and
/// records it. `false` (and no step) when the epoch has no batch left.
fn train_step<F>(
    ctx: &Ctx<'_>,
    st: &mut State,
    value_and_grad: &mut F,
    metrics: &mut Metrics,
    tally: &mut Tally,
    cur: &mut Cursor,
) -> Result<bool, TrainError>
where
    F: FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>,
{
    let cfg = &ctx.plan.cfg;
    let t0 = Instant::now();
    let wait_before = ctx.loaders.train.stats().wait_seconds;
    let step = st.counters.step;
    st.vit
        .set_dropout_seed(Some(ranks::dropout_seed(cfg.seed, step, ctx.group.rank())));
    let (micro, step_images) = next_micro_batches(cur, cfg.grad_accum, &mut st.counters)?;
    if micro.is_empty() {
        return Ok(false);
    }
    let lr = optim::lr_at(
        cfg.lr,
        cfg.schedule,
        cfg.warmup_steps,
        ctx.plan.steps.total,
        step,
    );
    let out = step::compute_in_group(
        &mut st.vit,
        value_and_grad,
        &mut st.opt,
        micro,
        cfg.grad_accum,
        cfg.clip_norm,
        lr,
        ctx.lanes,
        ctx.group,
    )?;
    let (loss_v, norm_v, updated) = (out.loss, out.grad_norm, out.updated);
    check_finite(ctx, step, tally.last_saved_step, loss_v, norm_v)?;
    step::apply(&mut st.vit, updated);
    st.counters.step += 1;
    st.counters.batch = cur.batch;
    let dt = t0.elapsed().as_secs_f64();
    tally.train_seconds += dt;
    tally.wait_seconds += ctx.loaders.train.stats().wait_seconds - wait_before;
    tally.images += step_images;
    tally.last_loss = Some(f64::from(loss_v));
    // Images of the global batch: every rank computed its share at the same time.
    let ips = (step_images * ctx.group.size()) as f64 / dt.max(1e-9);
    let mut record = serde_json::json!({
        "step": st.counters.step, "epoch": cur.epoch, "loss": loss_v, "lr": lr,
        "grad_norm": norm_v, "images_per_second": ips,
    });
    if let Some(r) = out.allreduce {
        let ms = r.time.as_secs_f64() * 1e3;
        record["allreduce_ms"] = ms.into();
        record["allreduce_bytes"] = r.bytes.into();
        tally.allreduce_ms.push(ms);
        (tally.allreduce_bytes, tally.allreduce_buckets) = (r.bytes, r.buckets);
    }
    metrics.history.push(record);
    ctx.log.step(
        st.counters.step,
        format!("loss {loss_v:.4} lr {lr:.2e} {ips:.1} img/s"),
        10,
    );
    Ok(true)
}

/// Up to `accum` non-empty batches as (pixels, labels) arrays, and the images in them.
fn next_micro_batches(
    cur: &mut Cursor,
    accum: usize,
    counters: &mut Counters,
) -> Result<(Vec<(Array, Array)>, usize), TrainError> {
    let mut micro = Vec::with_capacity(accum);
    let mut images = 0;
    for _ in 0..accum {
        let batch = match cur.batches.next() {
            Some(b) => b?,
            None => break,
        };
        // The loader's own index: a batch whose images were all skipped is not
        // yielded but still uses up its index.
        cur.batch = batch.index + 1;
        counters.skipped_images += batch.skipped.len();
        if batch.is_empty() {
            continue;
        }
        let [b, c, h, w] = batch.shape();
        let x = Array::from_slice(&batch.pixels, &[b as i32, c as i32, h as i32, w as i32]);
        let labels: Vec<i32> = batch.labels.iter().map(|l| *l as i32).collect();
        micro.push((x, Array::from_slice(&labels, &[b as i32])));
        images += b;
    }
    Ok((micro, images))
}

/// Stops the run (keeping the last good checkpoint) on a non-finite loss or norm.
fn check_finite(
    ctx: &Ctx<'_>,
    step: usize,
    last_good: usize,
    loss: f32,
    norm: f32,
) -> Result<(), TrainError> {
    for (what, value) in [("loss", loss), ("gradient norm", norm)] {
        if !value.is_finite() {
            ctx.log.finish();
            return Err(TrainError::NonFinite {
                step: step + 1,
                what,
                value,
                last_good,
                run: ctx.plan.run.clone(),
            });
        }
    }
    Ok(())
}

/// What follows a step: the end of the epoch, then the evaluation and the resumable
/// checkpoint when due.
fn after_step(
    ctx: &Ctx<'_>,
    st: &mut State,
    metrics: &mut Metrics,
    tally: &mut Tally,
    epoch: usize,
    end_of_epoch: bool,
) -> Result<(), TrainError> {
    let cfg = &ctx.plan.cfg;
    let counters = &mut st.counters;
    let eval_now = if cfg.eval_every > 0 {
        counters.step % cfg.eval_every == 0
    } else {
        end_of_epoch
    } || counters.step == ctx.plan.steps.total;
    if end_of_epoch {
        counters.epoch += 1;
        counters.batch = 0;
    }
    if eval_now {
        evaluate::evaluate_and_track(ctx, st, metrics, tally, epoch)?;
    }
    saves::checkpoint_if_due(ctx.plan, st, metrics, tally, end_of_epoch)
}

//! Data parallelism across processes: each rank computes the gradient of its share of the
//! global batch, and the shares are summed over the ranks with MLX's `all_sum`, in
//! buckets of about 32 MiB as `mlx.nn.average_gradients` does (one collective per bucket
//! instead of one per tensor; few enough bytes per bucket to keep the copy cheap).
//! Evaluation counts are summed the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use mlx_rs::{array, error::Exception, Array, Dtype};

use super::metrics::Evaluator;
use crate::distributed::Group;

/// Bytes per bucket (mlx.nn.average_gradients' default).
pub const BUCKET_BYTES: usize = 32 << 20;

/// What one step's reduction moved and how long its wait took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reduction {
    /// Bytes each rank contributed (gradients and loss).
    pub bytes: usize,
    pub buckets: usize,
    pub time: Duration,
}

/// Replaces `grads` and `loss` by their sums over the ranks of `scale` times this rank's
/// values. The local values are computed first, so the measured wait is the exchange
/// alone.
pub fn sum_over_ranks(
    group: &Group,
    grads: &mut BTreeMap<String, Array>,
    loss: &mut Array,
    scale: f32,
) -> Result<Reduction, Exception> {
    mlx_rs::transforms::eval(grads.values().chain([&*loss]))?;
    // The loss rides in the first bucket of its dtype: no collective of its own.
    let mut entries: Vec<(Option<String>, Array)> = vec![(None, loss.clone())];
    entries.extend(std::mem::take(grads).into_iter().map(|(k, v)| (Some(k), v)));
    let buckets = plan_buckets(&entries);
    let mut flats = Vec::with_capacity(buckets.len());
    let mut sums = Vec::with_capacity(buckets.len());
    let mut bytes = 0;
    for bucket in &buckets {
        let parts: Vec<Array> = bucket
            .iter()
            .map(|&i| {
                let a = &entries[i].1;
                bytes += a.nbytes();
                let s = array!(scale).as_dtype(a.dtype())?;
                a.reshape(&[-1])?.multiply(&s)
            })
            .collect::<Result<_, Exception>>()?;
        flats.push(mlx_rs::ops::concatenate(&parts, 0)?);
    }
    // The buckets are packed before the clock starts: the time is the exchange's.
    mlx_rs::transforms::eval(flats.iter())?;
    // Only names and shapes are needed from here: the local gradients can go.
    let layout: Vec<(Option<String>, Vec<i32>, usize)> = entries
        .into_iter()
        .map(|(name, a)| (name, a.shape().to_vec(), a.size()))
        .collect();
    for flat in &flats {
        sums.push(group.all_sum(flat)?);
    }
    if measuring() {
        // Waiting for a slower rank is not the exchange's cost: meet first.
        let meet = group.all_sum(&Array::from_slice(&[0f32], &[1]))?;
        group.eval("the measurement barrier", &[meet])?;
    }
    let time = group.timed_eval("the gradient all_sum", &sums)?;
    drop(flats);
    for (bucket, sum) in buckets.iter().zip(sums) {
        let sizes: Vec<usize> = bucket.iter().map(|&i| layout[i].2).collect();
        for (&i, piece) in bucket.iter().zip(split(&sum, &sizes)?) {
            let value = piece.reshape(&layout[i].1)?;
            match &layout[i].0 {
                Some(name) => {
                    grads.insert(name.clone(), value);
                }
                None => *loss = value,
            }
        }
    }
    Ok(Reduction {
        bytes,
        buckets: buckets.len(),
        time,
    })
}

/// `PIPELINE_ALLREDUCE_SYNC=1`: every step's exchange starts with all ranks ready, so
/// its recorded time is the exchange alone (one more tiny collective per step).
fn measuring() -> bool {
    std::env::var_os("PIPELINE_ALLREDUCE_SYNC").is_some_and(|v| v == "1")
}

/// Entry indices grouped into buckets of one dtype and at most [`BUCKET_BYTES`] (a
/// larger tensor gets a bucket of its own), in the entries' order: every rank has the
/// same entries, so every rank issues the same collectives.
fn plan_buckets(entries: &[(Option<String>, Array)]) -> Vec<Vec<usize>> {
    let mut closed: Vec<Vec<usize>> = Vec::new();
    let mut open: Vec<(Dtype, Vec<usize>, usize)> = Vec::new();
    for (i, (_, a)) in entries.iter().enumerate() {
        let (dtype, n) = (a.dtype(), a.nbytes());
        let slot = match open.iter().position(|(d, _, _)| *d == dtype) {
            Some(s) => s,
            None => {
                open.push((dtype, Vec::new(), 0));
                open.len() - 1
            }
        };
        let (_, members, used) = &mut open[slot];
        if !members.is_empty() && *used + n > BUCKET_BYTES {
            closed.push(std::mem::take(members));
            *used = 0;
        }
        members.push(i);
        *used += n;
    }
    closed.extend(
        open.into_iter()
            .map(|(_, m, _)| m)
            .filter(|m| !m.is_empty()),
    );
    closed
}

/// `flat` cut into consecutive pieces of `sizes` elements.
fn split(flat: &Array, sizes: &[usize]) -> Result<Vec<Array>, Exception> {
    if sizes.len() == 1 {
        return Ok(vec![flat.clone()]);
    }
    let mut at = 0usize;
    let cuts: Vec<i32> = sizes[..sizes.len() - 1]
        .iter()
        .map(|n| {
            at += n;
            at as i32
        })
        .collect();
    flat.split_at_indices(&cuts, 0)
}

/// Sums an evaluation's counts over the ranks, so every rank holds the whole
/// validation set's metrics.
pub fn sum_evaluation(group: &Group, ev: &mut Evaluator) -> Result<(), Exception> {
    if !group.is_distributed() {
        return Ok(());
    }
    let (loss, counts) = ev.totals();
    // float32 has 24 bits: the loss sum travels as a float32 and its remainder.
    let hi = loss as f32;
    let lo = (loss - f64::from(hi)) as f32;
    let counts_i: Vec<i32> = counts
        .iter()
        .map(|&c| i32::try_from(c).unwrap_or(i32::MAX))
        .collect();
    let f = group.all_sum(&Array::from_slice(&[hi, lo], &[2]))?;
    let c = group.all_sum(&Array::from_slice(&counts_i, &[counts_i.len() as i32]))?;
    group.eval("the evaluation all_sum", &[f.clone(), c.clone()])?;
    let f: &[f32] = f.as_slice();
    let total = f64::from(f[0]) + f64::from(f[1]);
    let counts: Vec<u64> = c
        .as_slice::<i32>()
        .iter()
        .map(|&v| v.max(0) as u64)
        .collect();
    ev.set_totals(total, &counts);
    Ok(())
}

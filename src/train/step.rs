//! One optimizer step: forward and backward over the micro-batches, gradient averaging
//! and clipping, AdamW, and a single evaluation of everything the step produced. Shared
//! by the trainer and the training benchmark so the benchmark times the real thing.

use std::collections::BTreeMap;
use std::rc::Rc;

use mlx_rs::module::{FlattenedModuleParam, ModuleParameters};
use mlx_rs::{array, error::Exception, Array};

use super::allreduce::{self, Reduction};
use super::lanes::Lanes;
use super::loss::cross_entropy;
use super::optim::{self, AdamW};
use crate::distributed::Group;
use crate::model::Vit;

/// The training objective: mean cross-entropy of the model's logits.
pub fn loss(m: &mut Vit, (x, y): (Array, Array)) -> Result<Array, Exception> {
    let out = m.forward(&x)?;
    let logits = out
        .logits
        .ok_or_else(|| Exception::custom("model has no head"))?;
    cross_entropy(&logits, &y)
}

pub struct StepOutput {
    pub loss: f32,
    pub grad_norm: f32,
    /// New values of the trainable parameters, evaluated; not yet in the model.
    pub updated: BTreeMap<String, Array>,
    /// The gradient exchange between ranks, when there are several.
    pub allreduce: Option<Reduction>,
    /// Host time spent building the step's graph, before its one evaluation.
    pub build: std::time::Duration,
}

pub fn trainable(vit: &Vit) -> BTreeMap<String, Array> {
    vit.trainable_parameters()
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Computes one step over `micro` batches (averaged as if `accum` were there) in this
/// process alone: [`compute_in_group`] without a group.
#[allow(clippy::too_many_arguments)]
pub fn compute<F>(
    vit: &mut Vit,
    value_and_grad: &mut F,
    opt: &mut AdamW,
    micro: Vec<(Array, Array)>,
    accum: usize,
    clip_norm: f32,
    lr: f32,
    lanes: &Lanes,
) -> Result<StepOutput, Exception>
where
    F: FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>,
{
    let single = Group::single();
    compute_in_group(
        vit,
        value_and_grad,
        opt,
        micro,
        accum,
        clip_norm,
        lr,
        lanes,
        &single,
    )
}

/// Computes one step over `micro` batches (averaged as if `accum` were there). The
/// caller checks the loss and norm before applying the update with [`apply`].
///
/// With parallel [`Lanes`] each micro-batch is cut into parts of a few images that run
/// on the lanes at once; the result is the same mean over the batch (parts are weighted
/// by their size). Each part gets its own LoRA dropout masks.
///
/// In a `group` of several ranks, `micro` is this rank's share of each global batch:
/// the rank's gradient and loss sums are summed over the ranks before the norm, so the
/// clipping and the update every rank makes are those of the global batch.
#[allow(clippy::too_many_arguments)]
pub fn compute_in_group<F>(
    vit: &mut Vit,
    value_and_grad: &mut F,
    opt: &mut AdamW,
    micro: Vec<(Array, Array)>,
    accum: usize,
    clip_norm: f32,
    lr: f32,
    lanes: &Lanes,
    group: &Group,
) -> Result<StepOutput, Exception>
where
    F: FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>,
{
    if micro.is_empty() {
        return Err(Exception::custom("a step needs at least one batch"));
    }
    let started = std::time::Instant::now();
    if lanes.is_parallel() {
        // Lane threads can only run work queued on their own streams: anything still lazy
        // (inputs, parameters cast at load) is computed here first.
        let params = vit.parameters().flatten();
        let inputs = micro.iter().flat_map(|(x, y)| [x, y]);
        mlx_rs::transforms::eval(params.values().copied().chain(inputs))?;
    }
    // Each part's share of the step's mean: its share of its micro-batch, over `accum`.
    let mut parts: Vec<(usize, (Array, Array), f32)> = Vec::new();
    for (x, y) in micro {
        let n = x.shape().first().copied().unwrap_or(0).max(0) as usize;
        let tokens = tokens_per_image(vit, &x);
        let size = lanes.part_size(n, tokens);
        let share = |k: usize| k as f32 / n.max(1) as f32 / accum.max(1) as f32;
        if size >= n {
            parts.push((0, (x, y), share(n)));
            continue;
        }
        for start in (0..n).step_by(size) {
            let end = (start + size).min(n);
            let lane = parts.len() % lanes.count();
            // The slices belong to the lane: an array evaluated on a lane thread must not
            // depend on work queued on this thread's stream.
            let _on = lanes.enter(lane);
            let idx: Vec<i32> = (start as i32..end as i32).collect();
            let idx = Array::from_slice(&idx, &[idx.len() as i32]);
            parts.push((
                lane,
                (x.take_axis(&idx, 0)?, y.take_axis(&idx, 0)?),
                share(end - start),
            ));
        }
    }
    // Equal shares (the usual case) are applied once, as scalars, to the loss, the norm and
    // the optimizer's gradient scale instead of a pass over every gradient per part.
    let common = parts[0].2;
    let equal = parts.iter().all(|p| p.2 == common);
    let base_seed = vit.dropout_seed();
    let originals = trainable(vit);
    let mut grads: BTreeMap<String, Array> = BTreeMap::new();
    let mut loss_sum: Option<Array> = None;
    let mut lane_work: Vec<Vec<Vec<Array>>> = vec![Vec::new(); lanes.count()];
    for (index, (lane, xy, share)) in parts.into_iter().enumerate() {
        if index > 0 {
            vit.set_dropout_seed(base_seed.map(|s| part_seed(s, index)));
        }
        let (l, g) = {
            let _on = lanes.enter(lane);
            let (l, g) = part_value_and_grad(vit, value_and_grad, &originals, xy)?;
            let mut g: BTreeMap<String, Array> =
                g.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if equal {
                (l, g)
            } else {
                let w = array!(share);
                for v in g.values_mut() {
                    *v = v.multiply(&w)?;
                }
                (l.multiply(&w)?, g)
            }
        };
        if lanes.is_parallel() {
            let mut group = vec![l.clone()];
            group.extend(backward_order(g.keys()).iter().map(|k| g[k].clone()));
            lane_work[lane].push(group);
        }
        loss_sum = Some(match loss_sum {
            Some(acc) => acc.add(&l)?,
            None => l,
        });
        for (k, v) in g {
            let v = match grads.remove(&k) {
                Some(acc) => acc.add(&v)?,
                None => v,
            };
            grads.insert(k, v);
        }
    }
    vit.set_dropout_seed(base_seed);
    let mut loss_sum =
        loss_sum.ok_or_else(|| Exception::custom("a step needs at least one batch"))?;
    let mut share = if equal { common } else { 1.0 };
    let mut reduction = None;
    if group.is_distributed() {
        // The sums must be this rank's own before they travel; ranks whose parts differ
        // in size (skipped images) then still add comparable means.
        if lanes.is_parallel() {
            lanes.eval(std::mem::take(&mut lane_work))?;
        }
        let r = allreduce::sum_over_ranks(group, &mut grads, &mut loss_sum, share)?;
        reduction = Some(r);
        share = 1.0 / group.size() as f32;
    }
    let share = array!(share);
    let loss = loss_sum.multiply(&share)?;
    let order = backward_order(grads.keys());
    let norm = optim::global_norm(order.iter().map(|k| &grads[k.as_str()]))?.multiply(&share)?;
    let scale = if clip_norm > 0.0 {
        optim::clip_factor(&norm, clip_norm)?.multiply(&share)?
    } else {
        share
    };
    let updated = opt.update_scaled(&originals, &grads, lr, &scale)?;
    if lanes.is_parallel() && reduction.is_none() {
        lanes.eval(lane_work)?;
    }
    // One evaluation per step: loss, norm, new parameters and optimizer state (after the
    // lanes, only the sums and the update are left).
    let mut outputs: Vec<&Array> = vec![&loss, &norm];
    outputs.extend(order.iter().filter_map(|k| updated.get(k.as_str())));
    outputs.extend(opt.state_arrays());
    let build = started.elapsed();
    mlx_rs::transforms::eval(outputs)?;
    Ok(StepOutput {
        loss: loss.item_exact::<f32>(),
        grad_norm: norm.item_exact::<f32>(),
        updated,
        allreduce: reduction,
        build,
    })
}

/// Loss and gradients of one part, after which the model holds `originals` again.
///
/// MLX's module `value_and_grad` leaves its tracers (copies of the parameters) in the
/// model, and the next call makes its tracers on the stream of those copies: every part's
/// parameter copies then ran on the first part's lane, two threads drove that one
/// (thread-unsafe) stream at once, and training crashed now and then inside MLX's CPU
/// encoder (under load 5 of 155 runs with 8 lanes, about one in 140 with 2). Each part
/// starts from the step's own parameters, so its tracers are made on its own lane.
fn part_value_and_grad<F>(
    vit: &mut Vit,
    value_and_grad: &mut F,
    originals: &BTreeMap<String, Array>,
    xy: (Array, Array),
) -> Result<(Array, FlattenedModuleParam), Exception>
where
    F: FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>,
{
    let out = value_and_grad(vit, xy);
    apply(vit, originals.clone());
    out
}

/// Tokens per image of `pixels` `[B, C, H, W]` for this model (patches plus prefix).
fn tokens_per_image(vit: &Vit, pixels: &Array) -> usize {
    let p = vit.config.patch_size.max(1);
    let s = pixels.shape();
    let (h, w) = (
        s.get(2).copied().unwrap_or(0).max(0) as usize,
        s.get(3).copied().unwrap_or(0).max(0) as usize,
    );
    (h / p) * (w / p) + vit.config.num_prefix_tokens()
}

/// Dropout seed of part `index` (> 0) of a step whose seed is `seed`: every part, and
/// every micro-batch, draws its own masks.
fn part_seed(seed: u64, index: usize) -> u64 {
    (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ index as u64)
}

/// Parameter names in the order their gradients should be asked of MLX: embeddings, then
/// blocks first to last, then the final norm and head, i.e. the deepest point of the
/// backward chain first. MLX evaluates its outputs depth first in the order given; starting
/// from the gradient that needs the whole backward chain makes it run the chain block by
/// block and free each block's (recomputed) activations before the next. String order
/// ("blocks.10" before "blocks.2") or hash order kept up to 2.3x the activation memory
/// with gradient checkpointing (ViT-Ti batch 8: 160 MB in this order, 357 MB in hash
/// order).
pub fn backward_order<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let rank = |name: &str| -> (u8, u64) {
        if let Some(rest) = name.strip_prefix("blocks.") {
            let index = rest.split('.').next().and_then(|i| i.parse().ok());
            return (1, index.unwrap_or(u64::MAX));
        }
        match name.split('.').next() {
            Some("patch_embed" | "cls_token" | "reg_tokens" | "pos_embed") => (0, 0),
            Some("norm") => (2, 0),
            Some("head") => (3, 0),
            _ => (4, 0),
        }
    };
    let mut names: Vec<String> = names.into_iter().cloned().collect();
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    names
}

/// Puts the step's new parameter values into the model.
pub fn apply(vit: &mut Vit, updated: BTreeMap<String, Array>) {
    let flat: Vec<(Rc<str>, Array)> = updated
        .into_iter()
        .map(|(k, v)| (Rc::from(k.as_str()), v))
        .collect();
    mlx_rs::module::update_parameters(vit, flat);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_available(a: &Array) -> bool {
        let mut res = false;
        // SAFETY: a valid array handle and an out-parameter.
        let code = unsafe { mlx_sys::_mlx_array_is_available(&mut res, a.as_ptr()) };
        assert_eq!(code, 0);
        res
    }

    /// A part's `value_and_grad` must leave the model its own (evaluated) parameters, not
    /// MLX's tracer copies, whose stream the next part's tracers would inherit.
    #[test]
    fn a_part_leaves_the_model_its_parameters() {
        let dir = tempfile::tempdir().unwrap();
        crate::convert::preset::write_random("vit-micro8", 3, dir.path(), true).unwrap();
        let ck = crate::checkpoint::Checkpoint::load(dir.path()).unwrap();
        let mut vit = crate::model::from_checkpoint(&ck).unwrap();
        let d = vit.config.hidden_size as i32;
        vit.head.weight.value = Some(Array::from_slice(&vec![0.01f32; 3 * d as usize], &[3, d]));
        vit.head.bias.value = Some(Array::from_slice(&[0.0f32; 3], &[3]));
        let cfg = crate::train::TrainConfig {
            mode: crate::train::Mode::Full,
            ..Default::default()
        };
        crate::train::set_trainable(&mut vit, &cfg, true);
        let params = vit.parameters().flatten();
        mlx_rs::transforms::eval(params.values().copied()).unwrap();
        let s = vit.config.image_size as i32;
        let x = Array::from_slice(&vec![0.1f32; (2 * 3 * s * s) as usize], &[2, 3, s, s]);
        let y = Array::from_slice(&[0i32, 2], &[2]);
        let mut vg = mlx_rs::nn::value_and_grad(loss);
        let originals = trainable(&vit);
        assert!(originals.len() > 10);

        let (l, _) =
            part_value_and_grad(&mut vit, &mut vg, &originals, (x.clone(), y.clone())).unwrap();
        // Before anything is evaluated: a tracer copy left behind is still lazy.
        let held = trainable(&vit);
        assert_eq!(held.len(), originals.len());
        for (k, v) in &held {
            assert!(is_available(v), "{k} is a lazy tracer copy");
        }
        assert!(l.item_exact::<f32>().is_finite());

        // What the check catches: MLX's own call leaves lazy copies behind.
        vg(&mut vit, (x, y)).unwrap();
        assert!(trainable(&vit).iter().any(|(_, v)| !is_available(v)));
    }

    #[test]
    fn backward_order_walks_the_model_from_the_input() {
        let names: Vec<String> = [
            "head.weight",
            "blocks.10.mlp.fc1.lora_a",
            "norm.weight",
            "blocks.2.attn.qkv.lora_b",
            "pos_embed",
            "blocks.2.attn.qkv.lora_a",
            "patch_embed.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            backward_order(&names),
            [
                "patch_embed.weight",
                "pos_embed",
                "blocks.2.attn.qkv.lora_a",
                "blocks.2.attn.qkv.lora_b",
                "blocks.10.mlp.fc1.lora_a",
                "norm.weight",
                "head.weight",
            ]
        );
    }
}

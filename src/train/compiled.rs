//! The forward and backward pass of a training step as one compiled MLX function.
//!
//! Uncompiled, every step rebuilds the graph on the host: our forward code runs, MLX's
//! `value_and_grad` traces it and builds the backward graph, and only then does the GPU
//! get work. For a ViT-B at batch 64 on an H200 that host time is a large share of the
//! step. Compiled, MLX traces the step once per input shape, simplifies the tape, fuses
//! its elementwise chains (casts, residual adds, bias and scale epilogues) into single
//! kernels, and each later step only replays the tape.
//!
//! The function's inputs are the trainable parameters, the pixels and the labels; every
//! other array the model holds (its frozen weights) is captured as a constant when the
//! function is first built, which is why one [`ValueAndGrad`] serves one model for one
//! run. It is rebuilt when the set of trainable parameters changes. LoRA dropout draws
//! a new mask each step from seeds the trainer sets per layer; a traced tape would freeze
//! the first step's masks, so the layers' keys (`random::key(seed)`, the same masks as the
//! uncompiled step draws) are inputs too.

use std::rc::Rc;

use mlx_rs::module::{FlattenedModuleParam, ModuleParameters};
use mlx_rs::{error::Exception, Array};

use super::step;
use crate::model::{Closure, Vit};

type PlainFn =
    Box<dyn FnMut(&mut Vit, (Array, Array)) -> Result<(Array, FlattenedModuleParam), Exception>>;

/// `value_and_grad` of [`step::loss`] over the model's trainable parameters, compiled
/// when that is on, plain otherwise; both give the same loss and gradients (up to the
/// rounding of fused elementwise work in bf16).
pub struct ValueAndGrad {
    compile: bool,
    plain: PlainFn,
    built: Option<Built>,
}

struct Built {
    /// Trainable parameter names, in the order the function takes and returns them.
    names: Vec<Rc<str>>,
    /// Whether the layers' dropout keys are an input.
    dropout: bool,
    fun: Closure,
}

/// Whether steps are compiled by default on the current device: on GPUs, where host time
/// shows; not on the CPU, whose steps are long enough that it does not. The variable
/// `PIPELINE_COMPILE_STEP=0|1` overrides it (for A/B measurements).
pub fn default_on() -> bool {
    match std::env::var("PIPELINE_COMPILE_STEP").ok().as_deref() {
        Some("0") => false,
        Some("1") => true,
        _ => !crate::model::gelu::on_cpu(),
    }
}

impl ValueAndGrad {
    pub fn new(compile: bool) -> Self {
        ValueAndGrad {
            compile,
            plain: Box::new(mlx_rs::nn::value_and_grad(step::loss)),
            built: None,
        }
    }

    /// With the device's default ([`default_on`]).
    pub fn for_default_device() -> Self {
        Self::new(default_on())
    }

    pub fn is_compiled(&self) -> bool {
        self.compile
    }

    /// Loss and gradients of the trainable parameters on one batch `(pixels, labels)`.
    pub fn call(
        &mut self,
        vit: &mut Vit,
        batch: (Array, Array),
    ) -> Result<(Array, FlattenedModuleParam), Exception> {
        let Some(keys) = (if self.compile {
            dropout_keys(vit)?
        } else {
            None
        }) else {
            return (self.plain)(vit, batch);
        };
        let mut params: Vec<(Rc<str>, Array)> = vit
            .trainable_parameters()
            .flatten()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<Rc<str>> = params.iter().map(|(k, _)| k.clone()).collect();
        let dropout = keys.is_some();
        if self
            .built
            .as_ref()
            .is_none_or(|b| b.names != names || b.dropout != dropout)
        {
            self.built = Some(build(vit, names.clone(), dropout)?);
        }
        let built = self.built.as_ref().expect("just built");
        let mut inputs: Vec<Array> = params.into_iter().map(|(_, v)| v).collect();
        inputs.push(batch.0);
        inputs.push(batch.1);
        inputs.extend(keys);
        let mut out = built.fun.apply(&inputs)?.into_iter();
        let loss = out
            .next()
            .ok_or_else(|| Exception::custom("compiled step returned no loss"))?;
        let grads: FlattenedModuleParam = names.into_iter().zip(out).collect();
        if grads.len() != built.names.len() {
            return Err(Exception::custom(
                "compiled step returned too few gradients",
            ));
        }
        Ok((loss, grads))
    }
}

/// The LoRA layers that drop inputs while training, in the model's layer order.
fn dropout_layers(vit: &mut Vit) -> Vec<&mut crate::model::Linear> {
    vit.block_linears_mut()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.has_lora() && l.lora_dropout > 0.0)
        .collect()
}

/// `Some(None)`: no layer drops anything; `Some(Some(keys))`: every dropping layer's key
/// of this step, stacked `[layers, 2]`; `None`: some dropping layers have a seed and some
/// not (not something the trainer does), which the uncompiled step handles.
fn dropout_keys(vit: &mut Vit) -> Result<Option<Option<Array>>, Exception> {
    let seeds: Vec<Option<u64>> = dropout_layers(vit).iter().map(|l| l.dropout_seed).collect();
    if seeds.iter().all(Option::is_none) {
        return Ok(Some(None));
    }
    if seeds.iter().any(Option::is_none) {
        return Ok(None);
    }
    let keys = seeds
        .into_iter()
        .flatten()
        .map(mlx_rs::random::key)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Some(mlx_rs::ops::stack(&keys, 0)?)))
}

/// Traces nothing yet: MLX traces on the first application (and per new input shape).
fn build(vit: &Vit, names: Vec<Rc<str>>, dropout: bool) -> Result<Built, Exception> {
    let template = vit.clone();
    let n = names.len();
    let arity = n + 2 + usize::from(dropout);
    let inner_names = names.clone();
    let mut vg = mlx_rs::nn::value_and_grad(step::loss);
    let f = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
        if args.len() != arity {
            return Err(Exception::custom("compiled step: wrong number of inputs"));
        }
        let mut m = template.clone();
        {
            let mut slots = m.parameters_mut().flatten();
            for (name, value) in inner_names.iter().zip(&args[..n]) {
                let slot = slots.get_mut(name).ok_or_else(|| {
                    Exception::custom(format!("compiled step: no parameter {name}"))
                })?;
                **slot = value.clone();
            }
        }
        if dropout {
            use mlx_rs::ops::indexing::IndexOp;
            for (i, layer) in dropout_layers(&mut m).into_iter().enumerate() {
                layer.dropout_key = Some(args[n + 2].index(i as i32));
            }
        }
        let (loss, mut grads) = vg(&mut m, (args[n].clone(), args[n + 1].clone()))?;
        let mut out = Vec::with_capacity(n + 1);
        out.push(loss);
        for name in &inner_names {
            out.push(grads.remove(name).ok_or_else(|| {
                Exception::custom(format!("compiled step: no gradient for {name}"))
            })?);
        }
        Ok(out)
    };
    Ok(Built {
        names,
        dropout,
        fun: Closure::new(f).compiled()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::model::gelu::AS_IF_GPU;
    use crate::train::{lora, set_trainable, LoraConfig, Mode, TrainConfig};

    /// vit-micro8 (standard blocks), or with `swiglu` the timm fixture with packed SwiGLU,
    /// 8 register tokens and layer scale.
    fn model_of(swiglu: bool, mode: Mode, checkpointed: bool, dropout: f32) -> Vit {
        let dir = tempfile::tempdir().unwrap();
        let ck_dir = dir.path().join("model");
        if swiglu {
            let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/timm-vit-reg-swiglu");
            crate::convert::convert(fixture.to_str().unwrap(), &ck_dir, &Default::default())
                .unwrap();
        } else {
            crate::convert::preset::write_random("vit-micro8", 3, &ck_dir, true).unwrap();
        }
        let ck = Checkpoint::load(&ck_dir).unwrap();
        let mut vit = crate::model::from_checkpoint(&ck).unwrap();
        let d = vit.config.hidden_size as i32;
        let mut rng = crate::rng::Rng::new(5);
        let mut random = |shape: &[i32]| {
            let n: i32 = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
            Array::from_slice(&v, shape)
        };
        vit.head.weight.value = Some(random(&[5, d]));
        vit.head.bias.value = Some(random(&[5]));
        // Non-trivial biases and norms, so that their gradients are tested on more than
        // zeros and ones.
        for (name, p) in vit.parameters_mut().flatten() {
            if name.ends_with("bias") || name.contains("norm") || name.contains(".ls") {
                let shape = p.shape().to_vec();
                *p = p.add(random(&shape)).unwrap();
            }
        }
        let cfg = TrainConfig {
            mode,
            ..Default::default()
        };
        if mode == Mode::Lora {
            let lc = LoraConfig {
                dropout,
                ..Default::default()
            };
            lora::attach(&mut vit, &lc, 0).unwrap();
            // B starts at zero; a random B makes A's gradient non-zero too.
            for (_, l) in vit.block_linears_mut() {
                let shape = l.lora_b.value.as_ref().unwrap().shape().to_vec();
                l.lora_b.value = Some(random(&shape));
            }
        }
        set_trainable(&mut vit, &cfg, true);
        vit.grad_checkpoint = checkpointed;
        vit
    }

    fn model(mode: Mode, checkpointed: bool, dropout: f32) -> Vit {
        model_of(false, mode, checkpointed, dropout)
    }

    fn batch_for(vit: &Vit) -> (Array, Array) {
        let s = vit.config.image_size as i32;
        let key = mlx_rs::random::key(11).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[3, 3, s, s], None, None, &key).unwrap();
        (x, Array::from_slice(&[0i32, 3, 4], &[3]))
    }

    fn batch() -> (Array, Array) {
        let key = mlx_rs::random::key(11).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[3, 3, 32, 32], None, None, &key).unwrap();
        (x, Array::from_slice(&[0i32, 3, 4], &[3]))
    }

    fn run(vit: &mut Vit, compile: bool) -> (f32, Vec<(String, Vec<f32>)>) {
        let mut vg = ValueAndGrad::new(compile);
        // Twice: the second call replays the traced function.
        vg.call(vit, batch_for(vit)).unwrap();
        on_host(vg.call(vit, batch_for(vit)).unwrap())
    }

    /// The loss, and the gradients by name in name order, as host values.
    fn on_host((loss, grads): (Array, FlattenedModuleParam)) -> (f32, Vec<(String, Vec<f32>)>) {
        let mut g: Vec<(String, Vec<f32>)> = grads
            .iter()
            .map(|(k, v)| (k.to_string(), crate::model::to_host(v).unwrap()))
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.item_exact::<f32>(), g)
    }

    /// Runs `f` with the GPU's code paths on (restored even if it panics).
    fn as_if_gpu<T>(f: impl FnOnce() -> T) -> T {
        AS_IF_GPU.with(|c| c.set(true));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        AS_IF_GPU.with(|c| c.set(false));
        result.unwrap()
    }

    fn assert_close(what: &str, plain: &[(String, Vec<f32>)], compiled: &[(String, Vec<f32>)]) {
        assert_eq!(plain.len(), compiled.len());
        for ((name, p), (name_c, c)) in plain.iter().zip(compiled) {
            assert_eq!(name, name_c);
            let scale = p.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = p
                .iter()
                .zip(c)
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{what} {name}: relative difference {worst}");
            assert!(scale > 1e-6, "{what} {name}: zero gradient");
        }
    }

    /// The compiled step on the GPU's code paths (matrix-product bias and norm gradients,
    /// flattened adapter products, the fused GELU) gives the loss and every gradient of
    /// the plain CPU step, for full fine-tuning and LoRA, with and without gradient
    /// checkpointing, on standard blocks and on packed SwiGLU with registers and layer
    /// scale.
    #[test]
    fn compiled_gpu_paths_give_the_plain_gradients() {
        for (swiglu, mode, checkpointed) in [
            (false, Mode::Full, false),
            (false, Mode::Lora, false),
            (false, Mode::Full, true),
            (true, Mode::Full, false),
            (true, Mode::Lora, true),
        ] {
            let mut vit = model_of(swiglu, mode, checkpointed, 0.0);
            let (loss, plain) = run(&mut vit, false);
            let (loss_c, compiled) = as_if_gpu(|| run(&mut vit, true));
            let what = format!("{mode:?} swiglu={swiglu} checkpointed={checkpointed}");
            assert!(
                (loss - loss_c).abs() < 1e-5,
                "{what}: loss {loss} vs {loss_c}"
            );
            if mode == Mode::Full && !swiglu {
                assert!(plain.iter().any(|(k, _)| k.ends_with("norm1.bias")));
                assert!(plain.iter().any(|(k, _)| k.ends_with("fc1.bias")));
            }
            assert_close(&what, &plain, &compiled);
        }
    }

    /// With LoRA dropout the compiled step draws the masks the plain step draws for the
    /// same seeds, and new masks for new seeds (the keys are inputs, not traced constants).
    #[test]
    fn compiled_step_draws_each_steps_dropout_masks() {
        let mut vit = model(Mode::Lora, false, 0.3);
        let mut compiled = ValueAndGrad::new(true);
        let mut losses = Vec::new();
        for seed in [41u64, 42] {
            vit.set_dropout_seed(Some(seed));
            let (loss, plain) = run(&mut vit, false);
            let (loss_c, grads_c) =
                as_if_gpu(|| on_host(compiled.call(&mut vit, batch()).unwrap()));
            assert!(
                (loss - loss_c).abs() < 1e-5,
                "seed {seed}: loss {loss} vs {loss_c}"
            );
            assert_close(&format!("seed {seed}"), &plain, &grads_c);
            losses.push(loss_c);
        }
        vit.set_dropout_seed(None);
        let (no_dropout, _) = run(&mut vit, false);
        assert!(
            (losses[0] - losses[1]).abs() > 1e-6 && (losses[0] - no_dropout).abs() > 1e-6,
            "dropout masks did not change: {losses:?} vs {no_dropout}"
        );
    }
}

//! Gradient checkpointing must keep every trainable gradient: compare the gradients of
//! every trainable tensor with and without it, for LoRA and full fine-tuning.
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeMap;

use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model::{self, Vit};
use mlx_coreml_pipeline::rng::Rng;
use mlx_coreml_pipeline::train;
use mlx_rs::module::ModuleParameters;
use mlx_rs::Array;

fn grads(vit: &mut Vit, x: &Array, y: &Array, checkpoint: bool) -> BTreeMap<String, Vec<f32>> {
    vit.grad_checkpoint = checkpoint;
    let loss_fn =
        |m: &mut Vit, (x, y): (Array, Array)| -> Result<Array, mlx_rs::error::Exception> {
            let logits = m.forward(&x)?.logits.unwrap();
            train::loss::cross_entropy(&logits, &y)
        };
    let mut vg = mlx_rs::nn::value_and_grad(loss_fn);
    let (_, g) = vg(vit, (x.clone(), y.clone())).unwrap();
    g.into_iter()
        .map(|(k, v)| (k.to_string(), model::to_host(&v).unwrap()))
        .collect()
}

fn check(mode: train::Mode) {
    let (_t, dir) = common::converted("timm-vit-reg-swiglu");
    let ck = Checkpoint::load(&dir).unwrap();
    let mut vit = model::from_checkpoint(&ck).unwrap();
    let mut rng = Rng::new(4);
    common::random_head(&mut vit, &mut rng, 3, 0.1);
    if mode == train::Mode::Lora {
        train::lora::attach(&mut vit, &train::LoraConfig::default(), 3).unwrap();
        common::random_lora_b(&mut vit, &mut rng, 0.1);
        vit.freeze_parameters(true);
        for (_, l) in vit.block_linears_mut() {
            use mlx_rs::module::Parameter;
            l.lora_a.unfreeze(false);
            l.lora_b.unfreeze(false);
        }
        use mlx_rs::module::Parameter;
        vit.head.weight.unfreeze(false);
        vit.head.bias.unfreeze(false);
    }
    let x: Vec<f32> = (0..2 * 3 * 28 * 28).map(|_| rng.normal()).collect();
    let x = Array::from_slice(&x, &[2, 3, 28, 28]);
    let y = Array::from_slice(&[0i32, 2], &[2]);
    let plain = grads(&mut vit, &x, &y, false);
    let remat = grads(&mut vit, &x, &y, true);
    let trainable: Vec<String> = vit
        .trainable_parameters()
        .flatten()
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(plain.len(), trainable.len());
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        remat.keys().collect::<Vec<_>>()
    );
    let mut block_grads = 0;
    for (name, g) in &plain {
        let r = &remat[name];
        let scale = g.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let diff = common::max_abs_diff(g, r);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{mode:?} {name}: max diff {diff} (scale {scale})"
        );
        if name.starts_with("blocks.") {
            assert!(scale > 0.0, "{mode:?} {name}: zero gradient");
            block_grads += 1;
        }
    }
    assert!(block_grads > 0);
}

#[test]
fn lora_gradients_survive_checkpointing() {
    check(train::Mode::Lora);
}

#[test]
fn full_gradients_survive_checkpointing() {
    check(train::Mode::Full);
}

//! bfloat16 mixed precision: activations and matmuls in bf16 with no silent promotion back
//! to float32, while master weights, gradients and the loss stay float32 and the result
//! stays close to the float32 model's.
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeMap;

use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model::{self, Vit};
use mlx_coreml_pipeline::rng::Rng;
use mlx_coreml_pipeline::train::{self, step, Precision};
use mlx_rs::{Array, Dtype};

fn lora_model(fixture: &str, seed: u64) -> (tempfile::TempDir, Vit) {
    let (t, dir) = common::converted(fixture);
    let ck = Checkpoint::load(&dir).unwrap();
    let mut vit = model::from_checkpoint(&ck).unwrap();
    let mut rng = Rng::new(seed);
    common::random_head(&mut vit, &mut rng, 3, 0.1);
    let cfg = train::TrainConfig::default();
    train::lora::attach(&mut vit, &cfg.lora, seed).unwrap();
    common::random_lora_b(&mut vit, &mut rng, 0.1);
    train::set_trainable(&mut vit, &cfg, true);
    (t, vit)
}

fn batch(rng: &mut Rng, size: i32) -> (Array, Array) {
    let x: Vec<f32> = (0..2 * 3 * size * size).map(|_| rng.normal()).collect();
    (
        Array::from_slice(&x, &[2, 3, size, size]),
        Array::from_slice(&[0i32, 2], &[2]),
    )
}

fn loss_and_grads(vit: &mut Vit, xy: (Array, Array)) -> (Array, BTreeMap<String, Array>) {
    let mut vg = mlx_rs::nn::value_and_grad(step::loss);
    let (l, g) = vg(vit, xy).unwrap();
    (l, g.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn check(fixture: &str) {
    let (_t, mut vit) = lora_model(fixture, 5);
    let mut rng = Rng::new(9);
    let (x, y) = batch(&mut rng, vit.config.image_size as i32);
    let reference = vit.forward(&x).unwrap().logits.unwrap();
    let (ref_loss, ref_grads) = loss_and_grads(&mut vit, (x.clone(), y.clone()));

    vit.compute_dtype = Precision::Bfloat16.dtype();
    vit.cast_frozen().unwrap();
    let out = vit.forward(&x).unwrap();
    assert_eq!(
        out.tokens.dtype(),
        Dtype::Bfloat16,
        "{fixture}: tokens promoted"
    );
    let logits = out.logits.unwrap();
    assert_eq!(
        logits.dtype(),
        Dtype::Bfloat16,
        "{fixture}: logits promoted"
    );

    // Every linear layer (LoRA included) and every block keeps bf16 from bf16 inputs:
    // a float32 operand anywhere would make these float32.
    let blocks = vit.blocks.clone();
    let d = vit.config.hidden_size as i32;
    let tokens = Array::from_slice(
        &(0..2 * 5 * d).map(|_| rng.normal()).collect::<Vec<f32>>(),
        &[2, 5, d],
    )
    .as_dtype(Dtype::Bfloat16)
    .unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let mut b = block.clone();
        {
            use mlx_rs::module::ModuleParameters;
            for (_, p) in b.parameters_mut().flatten() {
                *p = p.as_dtype(Dtype::Bfloat16).unwrap();
            }
        }
        let out = b.forward(&tokens).unwrap();
        assert_eq!(
            out.dtype(),
            Dtype::Bfloat16,
            "{fixture}: block {i} promoted"
        );
        for l in [&b.attn.qkv, &b.attn.q, &b.attn.proj, &b.mlp.fc1] {
            if l.is_present() {
                let input_dim = l.dims().unwrap().1;
                let xin = Array::zeros::<f32>(&[2, 5, input_dim])
                    .unwrap()
                    .as_dtype(Dtype::Bfloat16)
                    .unwrap();
                assert_eq!(l.forward(&xin).unwrap().dtype(), Dtype::Bfloat16);
            }
        }
    }

    // Close to float32 (bf16 keeps 8 bits of mantissa).
    let a = model::to_host(&reference).unwrap();
    let b = model::to_host(&logits).unwrap();
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (u, v) in a.iter().zip(&b) {
        assert!(
            (u - v).abs() < 0.05 * scale + 0.02,
            "{fixture}: logits {u} vs {v}"
        );
    }

    // Loss and gradients come back float32, for the float32 masters, and point the same
    // way as float32's.
    let (loss, grads) = loss_and_grads(&mut vit, (x, y));
    assert_eq!(loss.dtype(), Dtype::Float32);
    let (l32, l16) = (ref_loss.item_exact::<f32>(), loss.item_exact::<f32>());
    assert!(
        (l32 - l16).abs() < 0.05 * l32.abs() + 0.01,
        "{fixture}: loss {l32} vs {l16}"
    );
    assert_eq!(grads.len(), ref_grads.len());
    for (name, g) in &grads {
        assert_eq!(g.dtype(), Dtype::Float32, "{fixture}: gradient of {name}");
        let g16 = model::to_host(g).unwrap();
        let g32 = model::to_host(&ref_grads[name]).unwrap();
        assert!(
            g16.iter().all(|v| v.is_finite()),
            "{fixture}: {name} not finite"
        );
        let dot: f64 = g16
            .iter()
            .zip(&g32)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let n16: f64 = g16.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let n32: f64 = g32.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        if n32 > 1e-6 {
            let cosine = dot / (n16 * n32);
            assert!(cosine > 0.98, "{fixture}: {name} gradient cosine {cosine}");
        }
    }
    // Masters were not touched by the casts.
    for (_, l) in vit.block_linears_mut() {
        assert_eq!(l.lora_a.value.as_ref().unwrap().dtype(), Dtype::Float32);
        assert_eq!(l.weight.value.as_ref().unwrap().dtype(), Dtype::Bfloat16);
    }
}

#[test]
fn bf16_gelu_model_stays_bf16_and_close() {
    check("timm-vit-classifier");
}

#[test]
fn bf16_swiglu_registers_model_stays_bf16_and_close() {
    check("timm-vit-reg-swiglu");
}

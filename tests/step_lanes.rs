//! CPU lanes split a step's batch into parts computed at once; the step must still be the
//! one over the whole batch (same loss, norm and update), and every part and micro-batch
//! must draw its own LoRA dropout masks.
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeMap;

use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model::{self, Vit};
use mlx_coreml_pipeline::rng::Rng;
use mlx_coreml_pipeline::train::{self, lanes::Lanes, optim::AdamW, step};
use mlx_rs::Array;

/// Tests that run lanes hold this: lanes make their streams MLX's default stream while a
/// part's graph is built, and that default is one per process, not per thread, so a test
/// building its graph at the same time on another thread put arrays on a lane's stream and
/// two threads then evaluated one stream at once (under load about one run in eight lost
/// bit-reproducibility; none in 16 with the tests one at a time). A training process
/// builds its graphs on one thread.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn model(mode: train::Mode, lora_dropout: f32) -> (tempfile::TempDir, Vit) {
    let (t, dir) = common::converted("timm-vit-reg-swiglu");
    let ck = Checkpoint::load(&dir).unwrap();
    let mut vit = model::from_checkpoint(&ck).unwrap();
    let mut rng = Rng::new(11);
    common::random_head(&mut vit, &mut rng, 3, 0.1);
    let mut cfg = train::TrainConfig {
        mode,
        ..Default::default()
    };
    cfg.lora.dropout = lora_dropout;
    if mode == train::Mode::Lora {
        train::lora::attach(&mut vit, &cfg.lora, 5).unwrap();
        // So the adapters (and their dropout) change the output.
        common::random_lora_b(&mut vit, &mut rng, 0.1);
    }
    train::set_trainable(&mut vit, &cfg, true);
    (t, vit)
}

fn batch(seed: u64, n: i32) -> (Array, Array) {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * 3 * 28 * 28).map(|_| rng.normal()).collect();
    let y: Vec<i32> = (0..n).map(|i| i % 3).collect();
    (
        Array::from_slice(&x, &[n, 3, 28, 28]),
        Array::from_slice(&y, &[n]),
    )
}

struct Steps {
    losses: Vec<f32>,
    norms: Vec<f32>,
    params: BTreeMap<String, Vec<f32>>,
}

/// Two optimizer steps (so the second uses the optimizer state of the first).
fn run(mode: train::Mode, n: i32, lanes: &Lanes, micro: usize) -> Steps {
    let (_t, mut vit) = model(mode, 0.0);
    let mut vg = mlx_rs::nn::value_and_grad(step::loss);
    let mut opt = AdamW::new(0.01);
    // With eps far above sqrt(v) the update is lr * m: linear in the gradients, so the
    // parameters compare the gradients. (At eps 1e-8 Adam turns rounding-level gradients,
    // such as the key bias's, which is zero in exact arithmetic, into steps of lr.)
    opt.eps = 1.0;
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for s in 0..2 {
        let batches = (0..micro)
            .map(|m| batch(100 + s * 10 + m as u64, n))
            .collect();
        let out = step::compute(
            &mut vit, &mut vg, &mut opt, batches, micro, 0.5, 1e-2, lanes,
        )
        .unwrap();
        losses.push(out.loss);
        norms.push(out.grad_norm);
        step::apply(&mut vit, out.updated);
    }
    let params = step::trainable(&vit)
        .into_iter()
        .map(|(k, v)| (k, model::to_host(&v).unwrap()))
        .collect();
    Steps {
        losses,
        norms,
        params,
    }
}

fn assert_same(a: &Steps, b: &Steps, what: &str) {
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "{what}: loss {x} vs {y}"
        );
    }
    for (x, y) in a.norms.iter().zip(&b.norms) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "{what}: norm {x} vs {y}"
        );
    }
    assert_eq!(a.params.len(), b.params.len());
    for (name, p) in &a.params {
        let diff = common::max_abs_diff(p, &b.params[name]);
        assert!(diff <= 1e-6, "{what}: {name} differs by {diff}");
    }
}

#[test]
fn lanes_compute_the_whole_batch_step() {
    let _one_at_a_time = serial();
    let single = Lanes::single();
    let two = Lanes::for_default_device(2);
    let three = Lanes::for_default_device(3);
    assert!(
        two.is_parallel() && two.count() == 2,
        "tests run MLX on the CPU"
    );
    // 24 tokens per image here, so parts are as large as a lane's share of the batch.
    assert_eq!(two.part_size(5, 24), 3);
    assert_eq!(three.part_size(7, 24), 3);
    for mode in [train::Mode::Lora, train::Mode::Full] {
        // Even parts (2 + 2), uneven ones (3 + 2, 3 + 3 + 1: weighted by size), and
        // accumulation over two micro-batches split in turn.
        for (n, lanes, micro) in [(4, &two, 1), (5, &two, 1), (7, &three, 1), (3, &two, 2)] {
            let what = format!("{mode:?} {micro}x{n} on {}", lanes.count());
            assert_same(
                &run(mode, n, &single, micro),
                &run(mode, n, lanes, micro),
                &what,
            );
        }
    }
}

#[test]
fn part_size_keeps_a_few_hundred_token_rows_per_part() {
    let two = Lanes::for_default_device(2);
    // ViT-B/16 at 224: 197 tokens, two images (394 rows) per part.
    assert_eq!(two.part_size(8, 197), 2);
    assert_eq!(two.part_size(64, 197), 2);
    // 384 px: 577 tokens, one image per part.
    assert_eq!(two.part_size(8, 577), 1);
    // Never more than a lane's share, and the whole batch on a single lane.
    assert_eq!(two.part_size(3, 24), 2);
    assert_eq!(Lanes::single().part_size(8, 197), 8);
    assert_eq!(Lanes::for_default_device(1).count(), 1);
}

fn dropout_loss(micro: Vec<(Array, Array)>, lanes: &Lanes, dropout: f32) -> f32 {
    let (_t, mut vit) = model(train::Mode::Lora, dropout);
    vit.set_dropout_seed(Some(42));
    let mut vg = mlx_rs::nn::value_and_grad(step::loss);
    let mut opt = AdamW::new(0.0);
    let accum = micro.len();
    let out = step::compute(&mut vit, &mut vg, &mut opt, micro, accum, 0.0, 0.0, lanes).unwrap();
    assert_eq!(vit.dropout_seed(), Some(42), "the step's seed is restored");
    out.loss
}

#[test]
fn every_micro_batch_and_part_draws_its_own_dropout_masks() {
    let _one_at_a_time = serial();
    let single = Lanes::single();
    let two = Lanes::for_default_device(2);
    let b = batch(7, 2);
    // Without dropout, the same batch twice is the same loss as once.
    let once = dropout_loss(vec![b.clone()], &single, 0.0);
    let twice = dropout_loss(vec![b.clone(), b.clone()], &single, 0.0);
    assert!((once - twice).abs() < 1e-6, "{once} vs {twice}");
    // With dropout, the second copy gets other masks, so the mean moves.
    let once = dropout_loss(vec![b.clone()], &single, 0.5);
    let twice = dropout_loss(vec![b.clone(), b.clone()], &single, 0.5);
    assert!(
        (once - twice).abs() > 1e-4,
        "{once} vs {twice}: masks repeated"
    );
    // Two identical images split over two lanes: different masks per part too.
    let (x, _) = batch(8, 1);
    let x2 = mlx_rs::ops::concatenate(&[&x, &x], 0).unwrap();
    let y2 = Array::from_slice(&[1i32, 1], &[2]);
    let halves = dropout_loss(vec![(x2.clone(), y2.clone())], &two, 0.5);
    let one = dropout_loss(vec![(x, Array::from_slice(&[1i32], &[1]))], &single, 0.5);
    assert!(
        (halves - one).abs() > 1e-4,
        "{halves} vs {one}: masks repeated"
    );
    // And it is all reproducible.
    assert_eq!(halves, dropout_loss(vec![(x2, y2)], &two, 0.5));
}

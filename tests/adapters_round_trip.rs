//! Adapters saved and applied again give the trained model's logits bit for bit. In a
//! test binary of its own: training tests running beside it switch OpenBLAS's thread
//! count process-wide while their lanes run, and a matmul with another thread count
//! rounds differently in the last bits.
#![cfg(feature = "mlx")]

use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::model;
use mlx_coreml_pipeline::train::{self, adapters};
use mlx_rs::Array;

fn micro_model(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("base");
    mlx_coreml_pipeline::convert::convert("preset:vit-micro8", &out, &Default::default()).unwrap();
    out
}

#[test]
fn adapters_round_trip_reproduces_the_trained_model_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = micro_model(tmp.path());
    let ck = Checkpoint::load(&base).unwrap();
    let mut vit = model::from_checkpoint(&ck).unwrap();
    let cfg = train::LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: "attention".into(),
    };
    let layers = train::lora::attach(&mut vit, &cfg, 7).unwrap();
    // Give B and a new 3-class head non-zero values, as training would.
    let mut rng = mlx_coreml_pipeline::rng::Rng::new(3);
    for (_, l) in vit.block_linears_mut() {
        if let Some(b) = l.lora_b.value.as_ref() {
            let n = b.size();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
            l.lora_b.value = Some(Array::from_slice(&v, b.shape()));
        }
    }
    let w: Vec<f32> = (0..3 * 64).map(|_| rng.normal() * 0.1).collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[3, 64]));
    vit.head.bias.value = Some(Array::from_slice(&[0.1f32, -0.2, 0.3], &[3]));
    let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let acfg = adapters::AdapterConfig {
        format: adapters::FORMAT.into(),
        lora: cfg,
        layers,
        base_model_hash: ck.content_hash(),
        base_model_source: "preset:vit-micro8".into(),
        classes: classes.clone(),
        mean: ck.config.preprocess.mean,
        std: ck.config.preprocess.std,
        replaced: vec!["head.weight".into(), "head.bias".into()],
    };
    let dir = tmp.path().join("adapters");
    adapters::save(&dir, &vit, &acfg, &ck.config).unwrap();

    let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| rng.normal()).collect();
    let x = Array::from_slice(&x, &[2, 3, 32, 32]);
    let want = model::to_host(&vit.forward(&x).unwrap().logits.unwrap()).unwrap();

    let mut again = model::from_checkpoint(&ck).unwrap();
    adapters::apply(&dir, &mut again, &ck.content_hash()).unwrap();
    assert_eq!(again.config.class_names.as_ref().unwrap(), &classes);
    let got = model::to_host(&again.forward(&x).unwrap().logits.unwrap()).unwrap();
    assert_eq!(
        got, want,
        "adapters applied to the base must give the same logits bit for bit"
    );

    // Another base is refused with a clear message.
    let other = tmp.path().join("other");
    mlx_coreml_pipeline::convert::preset::write_random("vit-micro8", 99, &other, false).unwrap();
    let ck2 = Checkpoint::load(&other).unwrap();
    let mut wrong = model::from_checkpoint(&ck2).unwrap();
    let err = adapters::apply(&dir, &mut wrong, &ck2.content_hash())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trained on base model") && err.contains("preset:vit-micro8"),
        "{err}"
    );
}

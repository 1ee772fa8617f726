//! Training-step benchmark for GPUs (MLX's CUDA build): our step (the trainer's own
//! `train::step::compute`) over a list of configurations in one process, one JSON line
//! each, in the same format as `scripts/bench_train_mlx.py --configs` and
//! `scripts/bench_train_torch.py --configs` so `scripts/bench-gpu.sh` can tabulate all
//! three side by side.
//!
//! `bench_gpu --configs vit-ti16:64:lora:float32,vit-b16:256:full:bfloat16 [--steps 10]
//! [--warmup 3] [--device gpu|cpu] [--compile 0,1] [--phases]`
//!
//! `--compile` lists the variants to time each configuration with (the forward and
//! backward pass compiled or not; default: the device's default); `--phases` adds the
//! host's graph-building time and the forward and forward+backward passes alone.

mod common;

use mlx_coreml_pipeline::backend::{self, DeviceChoice};
use mlx_coreml_pipeline::checkpoint::Checkpoint;
use mlx_coreml_pipeline::convert::preset;
use mlx_coreml_pipeline::model;
use mlx_coreml_pipeline::rng::Rng;
use mlx_coreml_pipeline::train::{self, LoraConfig, Precision};
use mlx_rs::Array;

struct Config {
    preset: String,
    batch: usize,
    mode: train::Mode,
    precision: Precision,
}

fn parse(spec: &str) -> Result<Config, String> {
    let f: Vec<&str> = spec.split(':').collect();
    if f.len() != 4 {
        return Err(format!("`{spec}`: want preset:batch:mode:precision"));
    }
    Ok(Config {
        preset: f[0].to_string(),
        batch: f[1].parse().map_err(|_| format!("`{spec}`: bad batch"))?,
        mode: match f[2] {
            "lora" => train::Mode::Lora,
            "full" => train::Mode::Full,
            m => return Err(format!("`{spec}`: mode {m} (lora or full)")),
        },
        precision: f[3].parse()?,
    })
}

fn run(
    c: &Config,
    steps: usize,
    warmup: usize,
    compile: bool,
    phases: bool,
) -> Result<common::StepTiming, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-gpu")
        .join(&c.preset);
    if !dir.join("model.safetensors").exists() {
        preset::write_random(&c.preset, 0, &dir, true).map_err(|e| e.to_string())?;
    }
    let ck = Checkpoint::load(&dir).map_err(|e| e.to_string())?;
    let mut vit = model::from_checkpoint(&ck).map_err(|e| e.to_string())?;
    let d = ck.config.hidden_size as i32;
    let s = ck.config.image_size as i32;
    drop(ck);
    let classes = 10;
    let mut rng = Rng::new(1);
    let w: Vec<f32> = (0..classes * d).map(|_| rng.normal() * 0.02).collect();
    vit.head.weight.value = Some(Array::from_slice(&w, &[classes, d]));
    vit.head.bias.value = Some(Array::from_slice(&vec![0f32; classes as usize], &[classes]));
    let cfg = train::TrainConfig {
        mode: c.mode,
        precision: c.precision,
        ..Default::default()
    };
    if c.mode == train::Mode::Lora {
        train::lora::attach(&mut vit, &LoraConfig::default(), 0).map_err(|e| e.to_string())?;
    }
    train::set_trainable(&mut vit, &cfg, true);
    vit.compute_dtype = c.precision.dtype();
    vit.cast_frozen().map_err(|e| e.to_string())?;
    let b = c.batch as i32;
    // A fixed key: every variant of a configuration trains on the same pixels, so their
    // first losses and gradient norms can be compared.
    let key = mlx_rs::random::key(7).map_err(|e| e.to_string())?;
    let x = mlx_rs::random::normal::<f32>(&[b, 3, s, s], None, None, &key)
        .map_err(|e| e.to_string())?;
    let labels: Vec<i32> = (0..b).map(|i| i % classes).collect();
    let y = Array::from_slice(&labels, &[b]);
    let timing = common::TimingRun {
        warmup,
        steps,
        lr: 1e-4,
        compile,
        phases,
    };
    common::step_timing(&mut vit, &x, &y, &timing).map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = value("--steps").and_then(|v| v.parse().ok()).unwrap_or(10);
    let warmup: usize = value("--warmup").and_then(|v| v.parse().ok()).unwrap_or(3);
    let device: DeviceChoice = value("--device")
        .unwrap_or_else(|| "gpu".into())
        .parse()
        .expect("--device auto|cpu|gpu");
    backend::prepare(device).expect("device");
    let ty = backend::select(device).expect("device");
    let device_name = match ty {
        mlx_rs::DeviceType::Gpu => backend::gpu_name().unwrap_or_else(|| "gpu".into()),
        mlx_rs::DeviceType::Cpu => "cpu".into(),
    };
    let version = backend::mlx_version().unwrap_or_default();
    let specs = value("--configs").expect("--configs preset:batch:mode:precision,...");
    let variants: Vec<bool> = match value("--compile") {
        Some(v) => v.split(',').map(|s| s.trim() == "1").collect(),
        None => vec![mlx_coreml_pipeline::train::compiled::default_on()],
    };
    let phases = args.iter().any(|a| a == "--phases");
    for spec in specs.split(',') {
        for &compile in &variants {
            let mut line = serde_json::json!({
                "framework": "ours",
                "name": spec,
                "device": device_name,
                "mlx_version": version,
                "compiled": compile,
            });
            match parse(spec).and_then(|c| {
                line["name"] = c.preset.clone().into();
                line["batch"] = c.batch.into();
                line["mode"] = format!("{:?}", c.mode).to_lowercase().into();
                line["precision"] = format!("{:?}", c.precision).to_lowercase().into();
                run(&c, steps, warmup, compile, phases).map(|t| (t, c.batch))
            }) {
                Ok((t, batch)) => {
                    line["ms_per_step"] = t.step_ms.into();
                    line["images_per_second"] = (batch as f64 * 1000.0 / t.step_ms).into();
                    line["build_ms"] = t.build_ms.into();
                    line["first_loss"] = t.first_loss.into();
                    line["first_grad_norm"] = t.first_norm.into();
                    if phases {
                        line["fwd_bwd_ms"] = t.fwd_bwd_ms.into();
                        line["fwd_ms"] = t.fwd_ms.into();
                    }
                }
                Err(e) => line["error"] = e.into(),
            }
            println!("{line}");
            let _ = mlx_rs::memory::clear_cache();
        }
    }
}

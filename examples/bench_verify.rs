//! Verify benchmark: `preset:vit-b16` (random init, 86M parameters) converted into a
//! temp dir and exported to an fp16 multiArray package; then our MIL interpreter runs
//! the package on 8 seeded inputs (what `pipeline verify --probe 8` does, one example
//! at a time) and, with the default `mlx` feature, MLX's forward runs on the same 8
//! inputs (one batch, on the CPU). Prints both times and their ratio, and checks the
//! package's outputs against MLX's.
//!
//!     cargo run --release --example bench_verify [-- N]
//!
//! `N` (default 8) is the number of inputs. `INTERP_PROFILE=1` also prints the
//! interpreter's time per kernel.

use std::path::Path;
use std::time::Instant;

use mlx_coreml_pipeline::convert::{self, ConvertOptions};
use mlx_coreml_pipeline::coreml::interp::{kernels, Package, Tensor};
use mlx_coreml_pipeline::coreml::{export, ExportOptions, InputKind, Precision};
use mlx_coreml_pipeline::rng::Rng;

/// `n` normalised `[n, 3, S, S]` inputs made as `verify --probe` makes them: seeded
/// 0..255 pixels through the checkpoint's mean/std.
fn inputs(n: usize, size: usize, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let mut rng = Rng::new(0);
    let plane = size * size;
    let data = (0..n * 3 * plane)
        .map(|i| {
            let ch = (i / plane) % 3;
            let raw = (rng.uniform() * 255.0).round() as f32;
            (raw / 255.0 - mean[ch]) / std[ch]
        })
        .collect();
    Tensor::new(vec![n, 3, size, size], data).expect("shape")
}

/// Runs the package on each example; returns (seconds, outputs concatenated by name).
fn interp(pkg: &Path, x: &Tensor) -> (f64, Vec<(String, Tensor)>) {
    let t = Instant::now();
    let package = Package::open(pkg).expect("open package");
    let (name, _) = package.inputs().expect("inputs").remove(0);
    let mut got: Vec<(String, Tensor)> = Vec::new();
    for i in 0..x.shape[0] {
        let item = x.batch_item(i).expect("item");
        let out = package.run(&[(name.as_str(), item)]).expect("run");
        for (k, v) in out {
            let Some(t) = v.as_tensor() else { continue };
            match got.iter_mut().find(|(n, _)| *n == k) {
                Some((_, acc)) => {
                    acc.shape[0] += t.shape[0];
                    acc.data.extend_from_slice(&t.data);
                }
                None => got.push((k, t.clone())),
            }
        }
    }
    (t.elapsed().as_secs_f64(), got)
}

#[cfg(feature = "mlx")]
fn mlx_forward(ck: &Path, x: &Tensor) -> (f64, f64, Vec<(&'static str, Tensor)>) {
    use mlx_coreml_pipeline::{backend, checkpoint::Checkpoint, model};
    backend::select(backend::DeviceChoice::Cpu).expect("MLX CPU");
    let ck = Checkpoint::load(ck).expect("load checkpoint");
    let vit = model::from_checkpoint(&ck).expect("model");
    drop(ck);
    let shape: Vec<i32> = x.shape.iter().map(|d| *d as i32).collect();
    let host = |a: &mlx_rs::Array| {
        let data = model::to_host(a).expect("to host");
        Tensor::new(a.shape().iter().map(|d| *d as usize).collect(), data).expect("shape")
    };
    let mut times = Vec::new();
    let mut outs = Vec::new();
    // Twice: the first pays for MLX's one-time set-up, the second is the steady state.
    for _ in 0..2 {
        let t = Instant::now();
        let out = vit
            .forward(&mlx_rs::Array::from_slice(&x.data, &shape))
            .expect("forward");
        outs = vec![
            ("tokens", host(&out.tokens)),
            ("embedding", host(&out.pooled)),
        ];
        times.push(t.elapsed().as_secs_f64());
    }
    (times[0], times[1], outs)
}

/// Max abs error over the reference's max abs value.
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape, want.shape, "output shapes");
    let err = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let scale = want
        .data
        .iter()
        .map(|v| f64::from(v.abs()))
        .fold(0.0, f64::max);
    err / scale.max(1e-12)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().expect("temp dir");
    let ck = tmp.path().join("vit_b16");
    let t = Instant::now();
    let report = convert::convert("preset:vit-b16", &ck, &ConvertOptions::default())
        .expect("convert preset:vit-b16");
    println!(
        "convert preset:vit-b16: {} parameters in {:.1} s",
        report.parameters,
        t.elapsed().as_secs_f64()
    );
    let pkg = tmp.path().join("vit_b16.mlpackage");
    let opts = ExportOptions {
        precision: Precision::Fp16,
        input: InputKind::Array,
        force: true,
        ..Default::default()
    };
    let t = Instant::now();
    export(&ck, &pkg, &opts).expect("export");
    println!("export fp16 multiArray: {:.1} s", t.elapsed().as_secs_f64());
    let cfg = mlx_coreml_pipeline::checkpoint::read_config(&ck).expect("config");
    let x = inputs(n, cfg.image_size, cfg.preprocess.mean, cfg.preprocess.std);

    let (ours, got) = interp(&pkg, &x);
    println!(
        "interpreter: {ours:.2} s for {n} inputs ({:.2} s each)",
        ours / n as f64
    );
    if kernels::profile::enabled() {
        let table = kernels::profile::take();
        let mut in_kernels = 0.0;
        for (kernel, time, calls) in &table {
            let s = time.as_secs_f64();
            // sdpa's time is also on its inner kernels' lines.
            if *kernel != "sdpa" {
                in_kernels += s;
            }
            println!("  {kernel:<12} {s:>8.2} s  {calls:>6} calls");
        }
        println!(
            "  {:<12} {:>8.2} s  (decoding weights, copying operands, fp16 rounding, ...)",
            "outside",
            ours - in_kernels
        );
    }

    #[cfg(feature = "mlx")]
    {
        let (cold, warm, want) = mlx_forward(&ck, &x);
        println!("MLX forward: {warm:.2} s for {n} inputs (first call {cold:.2} s)");
        for (name, w) in &want {
            match got.iter().find(|(k, _)| k == name) {
                Some((_, g)) => println!(
                    "  {name}: relative error {:.2e} (fp16 verify passes below 1e-2)",
                    relative_error(g, w)
                ),
                None => println!("  {name}: not a package output"),
            }
        }
        println!(
            "RESULT interp_s={ours:.3} mlx_s={warm:.3} ratio={:.2} (target <= 3)",
            ours / warm
        );
    }
    #[cfg(not(feature = "mlx"))]
    {
        let _ = (&got, relative_error);
        println!("RESULT interp_s={ours:.3} (built without `mlx`: no MLX forward)");
    }
}

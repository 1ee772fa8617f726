//! Helpers the benchmark examples share (not an example itself: Cargo only builds
//! `examples/*.rs` and `examples/*/main.rs`). Not every example uses every helper.
#![allow(dead_code)]

/// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is missing.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Mean milliseconds of the trainer's own optimizer step (`train::step::compute`, clipping
/// at norm 1) on one fixed batch, after `warmup` untimed steps.
#[cfg(feature = "mlx")]
pub fn mean_step_ms(
    vit: &mut mlx_coreml_pipeline::model::Vit,
    x: &mlx_rs::Array,
    y: &mlx_rs::Array,
    warmup: usize,
    steps: usize,
    lr: f32,
) -> Result<f64, mlx_rs::error::Exception> {
    use mlx_coreml_pipeline::train::{optim::AdamW, step};
    let mut vg = mlx_rs::nn::value_and_grad(step::loss);
    let mut opt = AdamW::new(0.01);
    let threads = std::env::var("BENCH_CPU_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lanes = mlx_coreml_pipeline::train::lanes::Lanes::for_default_device(threads);
    let mut total = 0.0;
    for i in 0..warmup + steps {
        let t = std::time::Instant::now();
        let out = step::compute(
            vit,
            &mut vg,
            &mut opt,
            vec![(x.clone(), y.clone())],
            1,
            1.0,
            lr,
            &lanes,
        )?;
        step::apply(vit, out.updated);
        if i >= warmup {
            total += t.elapsed().as_secs_f64();
        }
    }
    Ok(1000.0 * total / steps.max(1) as f64)
}

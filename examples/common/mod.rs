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
/// at norm 1) on one fixed batch, after `warmup` untimed steps; the forward and backward
/// pass compiled or not as the device's default says (`PIPELINE_COMPILE_STEP`).
#[cfg(feature = "mlx")]
pub fn mean_step_ms(
    vit: &mut mlx_coreml_pipeline::model::Vit,
    x: &mlx_rs::Array,
    y: &mlx_rs::Array,
    warmup: usize,
    steps: usize,
    lr: f32,
) -> Result<f64, mlx_rs::error::Exception> {
    let run = TimingRun {
        warmup,
        steps,
        lr,
        compile: mlx_coreml_pipeline::train::compiled::default_on(),
        phases: false,
    };
    Ok(step_timing(vit, x, y, &run)?.step_ms)
}

/// Where a step's time goes, in mean milliseconds per step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTiming {
    /// The whole optimizer step, as the trainer runs it.
    pub step_ms: f64,
    /// Of that, the host building the step's graph before its one evaluation.
    pub build_ms: f64,
    /// Forward and backward pass alone (loss and gradients evaluated, no update).
    pub fwd_bwd_ms: f64,
    /// Forward pass alone (loss evaluated).
    pub fwd_ms: f64,
    /// Loss and gradient norm of the first step, to compare variants by.
    pub first_loss: f32,
    pub first_norm: f32,
}

/// How [`step_timing`] times: `warmup` untimed steps, then the mean of `steps`.
#[derive(Debug, Clone, Copy)]
pub struct TimingRun {
    pub warmup: usize,
    pub steps: usize,
    pub lr: f32,
    /// The forward and backward pass compiled.
    pub compile: bool,
    /// Also time the forward and forward+backward passes alone.
    pub phases: bool,
}

/// [`StepTiming`] of the trainer's step with the forward and backward pass compiled or
/// not (and with `phases`, the forward and backward parts alone); the model ends as
/// trained by the timed steps.
#[cfg(feature = "mlx")]
pub fn step_timing(
    vit: &mut mlx_coreml_pipeline::model::Vit,
    x: &mlx_rs::Array,
    y: &mlx_rs::Array,
    run: &TimingRun,
) -> Result<StepTiming, mlx_rs::error::Exception> {
    let TimingRun {
        warmup,
        steps,
        lr,
        compile,
        phases,
    } = *run;
    use mlx_coreml_pipeline::train::{compiled::ValueAndGrad, optim::AdamW, step};
    use std::time::Instant;
    let mut vg = ValueAndGrad::new(compile);
    let mut opt = AdamW::new(0.01);
    let threads = std::env::var("BENCH_CPU_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lanes = mlx_coreml_pipeline::train::lanes::Lanes::for_default_device(threads);
    let n = steps.max(1) as f64;
    let mut t = StepTiming::default();
    for i in 0..warmup + steps {
        let start = Instant::now();
        let out = step::compute(
            vit,
            &mut |v, b| vg.call(v, b),
            &mut opt,
            vec![(x.clone(), y.clone())],
            1,
            1.0,
            lr,
            &lanes,
        )?;
        if i == 0 {
            (t.first_loss, t.first_norm) = (out.loss, out.grad_norm);
        }
        step::apply(vit, out.updated);
        if i >= warmup {
            t.step_ms += 1000.0 * start.elapsed().as_secs_f64() / n;
            t.build_ms += 1000.0 * out.build.as_secs_f64() / n;
        }
    }
    if !phases {
        return Ok(t);
    }
    for i in 0..warmup + steps {
        let start = Instant::now();
        let (loss, grads) = vg.call(vit, (x.clone(), y.clone()))?;
        mlx_rs::transforms::eval(std::iter::once(&loss).chain(grads.values()))?;
        if i >= warmup {
            t.fwd_bwd_ms += 1000.0 * start.elapsed().as_secs_f64() / n;
        }
    }
    for i in 0..warmup + steps {
        let start = Instant::now();
        let loss = step::loss(vit, (x.clone(), y.clone()))?;
        loss.eval()?;
        if i >= warmup {
            t.fwd_ms += 1000.0 * start.elapsed().as_secs_f64() / n;
        }
    }
    Ok(t)
}

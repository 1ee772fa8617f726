//! The finish phase: the trained model (`adapters/` or `model/`), `metrics.jsonl`,
//! `curves.png` and the summary.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::saves::save_output;
use super::{io, AllreduceStats, Ctx, Metrics, Plan, State, Tally, TrainReport};
use crate::train::curves::{self, CurvesInfo};
use crate::train::{BestMetric, Mode, TrainError};

/// Writes the run's outputs and returns its report.
/// Only the writing rank writes; every rank returns the report.
pub(super) fn finish(
    ctx: &Ctx<'_>,
    st: &State,
    metrics: &Metrics,
    tally: Tally,
    started: Instant,
) -> Result<TrainReport, TrainError> {
    let plan = ctx.plan;
    let (cfg, run) = (&plan.cfg, plan.run.as_path());
    let output = match cfg.mode {
        Mode::Lora => run.join("adapters"),
        Mode::Full => run.join("model"),
    };
    if plan.writes {
        save_output(&output, &st.vit, &plan.output_spec())?;
    }
    metrics.rewrite()?;
    let counters = &st.counters;
    let ranks = ctx.group.size();
    let allreduce = allreduce_stats(ctx, &tally);
    let report = TrainReport {
        device: device_in_words(),
        precision: cfg.precision,
        lanes: ctx.lanes.count(),
        ranks,
        allreduce,
        run: run.to_path_buf(),
        steps: counters.step,
        epochs_completed: counters.epoch,
        final_train_loss: tally.last_loss,
        final_eval: tally.final_eval,
        best: counters.best.map(|(s, at)| {
            (
                if cfg.best_metric == BestMetric::ValLoss {
                    -s
                } else {
                    s
                },
                at,
            )
        }),
        best_metric: cfg.best_metric,
        images_per_second: (tally.images * ranks) as f64 / tally.train_seconds.max(1e-9),
        data_wait_fraction: tally.wait_seconds / tally.train_seconds.max(1e-9),
        skipped_images: counters.skipped_images,
        trainable_parameters: plan.trainable_parameters,
        total_parameters: plan.total_parameters,
        stopped_early: tally.stopped_early,
        output,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !plan.writes {
        return Ok(report);
    }
    // A missing picture is not worth failing a finished run over: the summary says so.
    let pictures = curves::write(run, &curves_info(plan, &report), &metrics.history).is_ok();
    write_summary(run, &report, pictures)?;
    Ok(report)
}

/// The mean and median gradient exchange of this session's steps.
fn allreduce_stats(ctx: &Ctx<'_>, tally: &Tally) -> Option<AllreduceStats> {
    if tally.allreduce_ms.is_empty() {
        return None;
    }
    let mut ms = tally.allreduce_ms.clone();
    ms.sort_by(f64::total_cmp);
    Some(AllreduceStats {
        backend: ctx.group.backend().name().into(),
        bytes_per_step: tally.allreduce_bytes,
        buckets_per_step: tally.allreduce_buckets,
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        median_ms: ms[ms.len() / 2],
    })
}

/// MLX's default device in words, for the summary.
fn device_in_words() -> String {
    match mlx_rs::Device::try_default().and_then(|d| d.get_type()) {
        Ok(mlx_rs::DeviceType::Gpu) => match crate::backend::gpu_name() {
            Some(name) => format!("gpu ({name})"),
            None => "gpu".into(),
        },
        Ok(mlx_rs::DeviceType::Cpu) => "cpu".into(),
        Err(_) => "unknown".into(),
    }
}

/// What the curves' title says about this run.
fn curves_info(plan: &Plan, r: &TrainReport) -> CurvesInfo {
    let cfg = &plan.cfg;
    // `pipeline run` trains into RUN/train: the run's own name says more.
    let named = match plan.run.file_name() {
        Some(n) if n == "train" || n == "baseline" => plan.run.parent().unwrap_or(&plan.run),
        _ => plan.run.as_path(),
    };
    let name = named
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| plan.run.display().to_string());
    let how = match cfg.mode {
        Mode::Lora => format!("LoRA r{}", cfg.lora.rank),
        Mode::Full => "full fine-tuning".into(),
    };
    let data = cfg
        .data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let best = r.best.map(|(v, step)| {
        let why = match r.best_metric {
            BestMetric::ValLoss => format!("val loss {v:.4}"),
            _ => format!("val top-1 {:.1}%", 100.0 * v),
        };
        (step, why)
    });
    let mut subtitle = format!(
        "{} on {}: {} steps, {} epochs, batch {}, lr {}, {}",
        plan.base_info.config.provenance.source,
        data,
        r.steps,
        r.epochs_completed,
        cfg.batch_size,
        crate::plot::short_number(f64::from(cfg.lr)),
        format!("{:?}", cfg.precision).to_lowercase()
    );
    if let Some(e) = &r.final_eval {
        subtitle.push_str(&format!("; final val top-1 {:.1}%", 100.0 * e.top1));
    }
    subtitle.push_str(&format!("; {}", crate::clock::now_utc()));
    CurvesInfo {
        title: format!("Training curves: {name} ({how})"),
        subtitle,
        best,
    }
}

fn write_summary(run: &Path, r: &TrainReport, pictures: bool) -> Result<(), TrainError> {
    let json = run.join("summary.json");
    crate::fsutil::write_file_atomically(
        &json,
        serde_json::to_string_pretty(r).expect("json").as_bytes(),
    )
    .map_err(io(&json))?;
    let mut md = Vec::new();
    let _ = writeln!(md, "# Training summary\n");
    if pictures {
        let _ = writeln!(
            md,
            "![training curves: loss, validation top-1 and learning rate against step](curves.png)\n\n\
             Curves: [`curves.png`](curves.png), [`curves.svg`](curves.svg).\n"
        );
    } else {
        let _ = writeln!(md, "(the curves could not be drawn)\n");
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| steps | {} ({} epochs) |",
        r.steps, r.epochs_completed
    );
    if let Some(l) = r.final_train_loss {
        let _ = writeln!(md, "| final training loss | {l:.4} |");
    }
    if let Some(e) = &r.final_eval {
        let _ = writeln!(md, "| validation loss | {:.4} |", e.loss);
        let _ = writeln!(md, "| validation top-1 | {:.2}% |", 100.0 * e.top1);
        if let Some(t5) = e.top5 {
            let _ = writeln!(md, "| validation top-5 | {:.2}% |", 100.0 * t5);
        }
    }
    if let Some((v, s)) = r.best {
        let _ = writeln!(md, "| best {:?} | {v:.4} at step {s} |", r.best_metric);
    }
    let _ = writeln!(md, "| device | {} |", r.device);
    let _ = writeln!(md, "| precision | {:?} |", r.precision);
    let _ = writeln!(md, "| lanes (batch parts computed at once) | {} |", r.lanes);
    if r.ranks > 1 {
        let _ = writeln!(md, "| data-parallel ranks | {} |", r.ranks);
    }
    if let Some(a) = &r.allreduce {
        let _ = writeln!(
            md,
            "| gradient all_sum per step ({}) | {:.1} MB in {} buckets, {:.1} ms median |",
            a.backend,
            a.bytes_per_step as f64 / 1e6,
            a.buckets_per_step,
            a.median_ms
        );
    }
    let _ = writeln!(md, "| throughput | {:.2} images/s |", r.images_per_second);
    let _ = writeln!(
        md,
        "| time waiting for data | {:.1}% |",
        100.0 * r.data_wait_fraction
    );
    let _ = writeln!(md, "| skipped images | {} |", r.skipped_images);
    let _ = writeln!(
        md,
        "| trainable parameters | {} of {} |",
        r.trainable_parameters, r.total_parameters
    );
    let _ = writeln!(md, "| output | {} |", r.output.display());
    let path = run.join("summary.md");
    crate::fsutil::write_file_atomically(&path, &md).map_err(io(&path))
}

//! The report as text: a header, then one row per compute unit for latency, batch
//! throughput, the compute plan and output agreement.

use std::fmt;

use super::report::{Agreement, BenchReport, FeatureInfo, UnitResult};

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_header(f)?;
        self.write_latency(f)?;
        self.write_batches(f)?;
        self.write_plans(f)?;
        self.write_agreement(f)?;
        self.write_failures(f)
    }
}

fn features(list: &[FeatureInfo]) -> String {
    list.iter()
        .map(|x| {
            let mut s = x.name.clone();
            if let Some(shape) = &x.shape {
                s.push_str(&format!(" {shape:?}"));
            }
            if let Some(dt) = &x.data_type {
                s.push_str(&format!(" {dt}"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Units that were measured (no error).
fn measured(report: &BenchReport) -> impl Iterator<Item = &UnitResult> {
    report.units.iter().filter(|u| u.error.is_none())
}

impl BenchReport {
    fn write_header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        let meta: Vec<String> = ["precision", "base_model", "tool_version"]
            .iter()
            .filter_map(|k| m.metadata.get(*k).map(|v| format!("{k} {v}")))
            .collect();
        writeln!(
            f,
            "coreml-bench report (schema {}, {} {}), {}",
            self.schema_version, self.tool.name, self.tool.version, self.created_at
        )?;
        write!(f, "model    {}", m.path)?;
        if !meta.is_empty() {
            write!(f, " ({})", meta.join(", "))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "         inputs {}; outputs {}; compiled in {:.1} ms",
            features(&m.inputs),
            features(&m.outputs),
            m.compile_ms
        )?;
        let mc = &self.machine;
        write!(f, "machine  {}", mc.chip)?;
        if let Some(hw) = &mc.hardware_model {
            write!(f, " ({hw})")?;
        }
        writeln!(
            f,
            ", {}, thermal {} -> {}",
            mc.os_version, mc.thermal_state_start, mc.thermal_state_end
        )?;
        let s = &self.settings;
        let batches: Vec<String> = s.batch_sizes.iter().map(u32::to_string).collect();
        writeln!(
            f,
            "run      warmup {}, iterations {}, batch sizes [{}], input {} ({} example{})",
            s.warmup,
            s.iterations,
            batches.join(", "),
            s.input_source,
            s.examples,
            if s.examples == 1 { "" } else { "s" }
        )
    }

    fn write_latency(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nlatency (ms)")?;
        writeln!(
            f,
            "{:<5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "unit",
            "cold load",
            "warm load",
            "first",
            "mean",
            "p50",
            "p90",
            "p99",
            "min",
            "max",
            "images/s"
        )?;
        for u in measured(self) {
            let (Some(load), Some(first), Some(l)) = (u.load, u.first_prediction_ms, u.latency)
            else {
                continue;
            };
            writeln!(
                f,
                "{:<5} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1}",
                u.compute_units,
                load.cold_ms,
                load.warm_ms,
                first,
                l.mean_ms,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.min_ms,
                l.max_ms,
                u.throughput_images_per_s.unwrap_or(0.0)
            )?;
        }
        Ok(())
    }

    fn write_batches(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes = &self.settings.batch_sizes;
        if sizes.is_empty() {
            return Ok(());
        }
        writeln!(f, "\nbatch throughput (images/s, predictions(fromBatch:))")?;
        write!(f, "{:<5}", "unit")?;
        for s in sizes {
            write!(f, " {:>10}", format!("batch {s}"))?;
        }
        writeln!(f)?;
        for u in measured(self) {
            write!(f, "{:<5}", u.compute_units)?;
            for s in sizes {
                let b = u.batches.iter().flatten().find(|b| b.batch_size == *s);
                let cell = match b {
                    Some(b) if b.error.is_some() => "failed".to_string(),
                    Some(b) => b
                        .images_per_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                    None => "-".into(),
                };
                write!(f, " {cell:>10}")?;
            }
            writeln!(f)?;
        }
        for u in measured(self) {
            for b in u.batches.iter().flatten() {
                if let Some(e) = &b.error {
                    writeln!(f, "  {} batch {}: {e}", u.compute_units, b.batch_size)?;
                }
            }
        }
        Ok(())
    }

    fn write_plans(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !measured(self).any(|u| u.compute_plan.is_some()) {
            return Ok(());
        }
        writeln!(
            f,
            "\ncompute plan (ops by preferred device, const ops left out)"
        )?;
        writeln!(
            f,
            "{:<5} {:>6} {:>6} {:>6} {:>6} {:>8}",
            "unit", "ops", "cpu", "gpu", "ane", "unknown"
        )?;
        for u in measured(self) {
            if let Some(p) = &u.compute_plan {
                let d = p.ops_by_device;
                writeln!(
                    f,
                    "{:<5} {:>6} {:>6} {:>6} {:>6} {:>8}",
                    u.compute_units, p.op_count, d.cpu, d.gpu, d.ane, d.unknown
                )?;
            }
        }
        for u in measured(self) {
            let Some(ops) = u
                .compute_plan
                .as_ref()
                .and_then(|p| p.ops_not_on_ane.as_ref())
            else {
                continue;
            };
            if ops.is_empty() {
                writeln!(f, "  {}: every op on the Neural Engine", u.compute_units)?;
                continue;
            }
            writeln!(
                f,
                "  {}: {} ops not on the Neural Engine:",
                u.compute_units,
                ops.len()
            )?;
            for op in ops {
                writeln!(
                    f,
                    "    {} ({}, {})",
                    op.output,
                    op.operator,
                    op.device.name()
                )?;
            }
        }
        Ok(())
    }

    fn write_agreement(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any = measured(self)
            .any(|u| u.agreement_with_cpu.is_some() || u.agreement_with_reference.is_some());
        if !any {
            return Ok(());
        }
        writeln!(
            f,
            "\nagreement (max |diff|, relative to the baseline's max |value|, top-1)"
        )?;
        writeln!(
            f,
            "{:<5} {:<9} {:<18} {:>10} {:>10} {:>7}",
            "unit", "baseline", "output", "max|diff|", "relative", "top-1"
        )?;
        for u in measured(self) {
            let agreements = [&u.agreement_with_cpu, &u.agreement_with_reference];
            for a in agreements.into_iter().flatten() {
                write_agreement_rows(f, u, a)?;
            }
        }
        Ok(())
    }

    fn write_failures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: Vec<&UnitResult> = self.units.iter().filter(|u| u.error.is_some()).collect();
        if failed.is_empty() {
            return Ok(());
        }
        writeln!(f, "\nfailed")?;
        for u in failed {
            writeln!(
                f,
                "{:<5} {}",
                u.compute_units,
                u.error.as_deref().unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

fn write_agreement_rows(f: &mut fmt::Formatter<'_>, u: &UnitResult, a: &Agreement) -> fmt::Result {
    let baseline = match a.baseline {
        super::AgreementBaseline::Cpu => "cpu",
        super::AgreementBaseline::Reference => "reference",
    };
    for o in &a.outputs {
        let top1 = o
            .top1_agreement
            .map_or_else(|| "-".to_string(), |t| format!("{:.0}%", t * 100.0));
        writeln!(
            f,
            "{:<5} {:<9} {:<18} {:>10.3e} {:>10.3e} {:>7}",
            u.compute_units,
            baseline,
            o.output,
            o.max_abs_diff,
            o.relative_error(),
            top1
        )?;
    }
    Ok(())
}

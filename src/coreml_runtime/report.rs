//! `pipeline verify --runtime coreml`'s report: each compute-unit setting's outputs
//! compared with the model (MLX forward or `--reference` outputs), with our interpreter
//! and with `cpu`, under the same thresholds and rules as the interpreter's own check
//! (`coreml::verify::compare`, `VerifyReport::judge_compressed`), plus each setting's
//! compute-plan summary. Table (`Display`) and JSON (`Serialize`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{PlanSummary, UnitRun};
use crate::bench::ComputeUnits;
use crate::coreml::verify::{compare, AccuracyCheck, OutputCheck, Rule, Thresholds};
use crate::coreml::{Tensor, VerifyReport};

#[derive(Debug, Clone, Serialize)]
pub struct UnitCheck {
    pub compute_units: ComputeUnits,
    /// Set when the setting could not be loaded or run; it then fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    /// Against the MLX forward of `--model` (or the `--reference` outputs): decides `pass`.
    pub against_model: Vec<OutputCheck>,
    /// Against our interpreter on the same inputs.
    pub against_interpreter: Vec<OutputCheck>,
    /// Against the `cpu` setting, when it ran (absent for `cpu` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against_cpu: Option<Vec<OutputCheck>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<AccuracyCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_plan: Option<PlanSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_plan_note: Option<String>,
    /// Judged by `rule` on `against_model` (and `accuracy`).
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoreMlVerifyReport {
    pub runtime: &'static str,
    /// The interpreter's check of the same inputs (today's `pipeline verify`).
    pub interpreter: VerifyReport,
    pub units: Vec<UnitCheck>,
    /// Every setting ran and passed against the model.
    pub pass: bool,
}

/// A flat output map as reference tensors `[examples, rest]`: `compare` only reads the
/// last axis (the classes of class scores), so the split of the rest does not matter.
fn as_reference(outputs: &BTreeMap<String, Vec<f32>>, examples: usize) -> Vec<(String, Tensor)> {
    outputs
        .iter()
        .filter_map(|(name, data)| {
            let per = data.len() / examples.max(1);
            Tensor::new(vec![examples.max(1), per], data.clone()).map(|t| (name.clone(), t))
        })
        .collect()
}

/// Top-1 of one run's class scores against labels (verify's own accuracy function).
pub type AccuracyOf<'a> = dyn Fn(&BTreeMap<String, Vec<f32>>) -> Option<AccuracyCheck> + 'a;

/// What `build` needs besides the Core ML runs.
pub struct Baseline<'a> {
    /// The interpreter's report, judged as `pipeline verify` judges it.
    pub interpreter: VerifyReport,
    pub interpreter_outputs: &'a BTreeMap<String, Vec<f32>>,
    /// The model's outputs under the reference names (`logits`, `pooled`, ...).
    pub reference: &'a [(String, Tensor)],
    /// Labels of `--data`, for per-setting top-1.
    pub labels: Option<&'a [usize]>,
    pub compressed: crate::coreml::verify::CompressedRules,
    pub accuracy: &'a AccuracyOf<'a>,
}

pub fn build(base: Baseline<'_>, runs: &[UnitRun]) -> CoreMlVerifyReport {
    let examples = base.interpreter.examples;
    let th = base.interpreter.thresholds;
    let interp_ref = as_reference(base.interpreter_outputs, examples);
    let cpu = runs
        .iter()
        .find(|r| r.units == ComputeUnits::Cpu && r.error.is_none());
    let cpu_ref = cpu.map(|c| as_reference(&c.outputs, examples));
    let units = runs
        .iter()
        .map(|run| check_unit(&base, run, &th, &interp_ref, cpu_ref.as_deref()))
        .collect::<Vec<_>>();
    CoreMlVerifyReport {
        runtime: "coreml",
        pass: !units.is_empty() && units.iter().all(|u| u.pass),
        interpreter: base.interpreter,
        units,
    }
}

fn check_unit(
    base: &Baseline<'_>,
    run: &UnitRun,
    th: &Thresholds,
    interp_ref: &[(String, Tensor)],
    cpu_ref: Option<&[(String, Tensor)]>,
) -> UnitCheck {
    let mut check = UnitCheck {
        compute_units: run.units,
        error: run.error.clone(),
        load_ms: run.error.is_none().then_some(run.load_ms),
        against_model: Vec::new(),
        against_interpreter: Vec::new(),
        against_cpu: None,
        accuracy: None,
        compute_plan: run.plan.clone(),
        compute_plan_note: run.plan_note.clone(),
        pass: false,
    };
    if run.error.is_some() {
        return check;
    }
    let mut problem = |e: crate::coreml::verify::VerifyError| {
        check.error.get_or_insert_with(|| e.to_string());
        Vec::new()
    };
    let against_model = compare(&run.outputs, base.reference, th).unwrap_or_else(&mut problem);
    let against_interpreter = compare(&run.outputs, interp_ref, th).unwrap_or_else(&mut problem);
    let against_cpu = match cpu_ref {
        Some(c) if run.units != ComputeUnits::Cpu => {
            Some(compare(&run.outputs, c, th).unwrap_or_else(&mut problem))
        }
        _ => None,
    };
    check.against_model = against_model;
    check.against_interpreter = against_interpreter;
    check.against_cpu = against_cpu;
    check.accuracy = base.labels.and_then(|_| (base.accuracy)(&run.outputs));
    check.pass = check.error.is_none() && judge(base, &check);
    check
}

/// The interpreter's rules on this setting's comparison with the model.
fn judge(base: &Baseline<'_>, check: &UnitCheck) -> bool {
    let mut r = base.interpreter.clone();
    r.outputs = check.against_model.clone();
    r.accuracy = check.accuracy.clone();
    r.pass = !r.outputs.is_empty() && r.outputs.iter().all(|o| o.pass);
    r.rule = Rule::Thresholds;
    if let Some(c) = base.interpreter.compression.clone() {
        r.judge_compressed(c, &base.compressed);
    }
    r.pass
}

fn row(f: &mut fmt::Formatter<'_>, unit: &str, against: &str, o: &OutputCheck) -> fmt::Result {
    writeln!(
        f,
        "{:<5} {:<7} {:<18} {:>12.3e} {:>12.3e} {:>7}  {}",
        unit,
        against,
        o.output,
        o.max_abs_error,
        o.relative_error,
        o.top1_agreement
            .map(|a| format!("{:.0}%", a * 100.0))
            .unwrap_or_else(|| "-".into()),
        if o.pass { "ok" } else { "FAIL" }
    )
}

impl fmt::Display for CoreMlVerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.interpreter;
        writeln!(
            f,
            "{} through Core ML ({}, {} examples; pass: relative error < {:.0e}, top-1 >= {:.0}%)",
            i.package.display(),
            i.precision,
            i.examples,
            i.thresholds.max_relative_error,
            i.thresholds.min_top1_agreement * 100.0
        )?;
        writeln!(
            f,
            "{:<5} {:<7} {:<18} {:>12} {:>12} {:>7}  result",
            "unit", "against", "output", "max abs err", "rel err", "top-1"
        )?;
        for u in &self.units {
            let name = u.compute_units.name();
            for (against, checks) in [
                ("model", &u.against_model),
                ("interp", &u.against_interpreter),
            ] {
                for o in checks {
                    row(f, name, against, o)?;
                }
            }
            for o in u.against_cpu.iter().flatten() {
                row(f, name, "cpu", o)?;
            }
            if let Some(e) = &u.error {
                writeln!(f, "{name:<5} FAIL: {e}")?;
            }
            if let Some(a) = &u.accuracy {
                writeln!(
                    f,
                    "{name:<5} top-1 on {} labelled images: {:.2}% (model {:.2}%)",
                    a.examples,
                    a.package_top1 * 100.0,
                    a.reference_top1 * 100.0
                )?;
            }
        }
        write_plans(f, &self.units)?;
        writeln!(
            f,
            "interpreter against the model: {}",
            if i.pass { "pass" } else { "FAIL" }
        )?;
        writeln!(
            f,
            "judged by: {} (each setting against the model; interp and cpu rows inform)",
            i.rule.describe()
        )?;
        write!(f, "{}", if self.pass { "PASS" } else { "FAIL" })
    }
}

fn write_plans(f: &mut fmt::Formatter<'_>, units: &[UnitCheck]) -> fmt::Result {
    for u in units {
        let name = u.compute_units.name();
        match (&u.compute_plan, &u.compute_plan_note) {
            (Some(p), _) => {
                writeln!(f, "plan {name:<4} {}", p.one_line())?;
                for op in p.ops_not_on_ane.iter().flatten() {
                    writeln!(
                        f,
                        "  off the Neural Engine: {} `{}` on {}",
                        op.operator,
                        op.output,
                        op.device.name()
                    )?;
                }
            }
            (None, Some(note)) => writeln!(f, "plan {name:<4} {note}")?,
            (None, None) => {}
        }
    }
    Ok(())
}

//! What the Swift harness writes: Core ML's answers and raw timings only
//! (`schema/bench-raw.schema.json`), and [`assemble`], which computes the report of
//! `schema/bench-report.schema.json` from it: latency statistics, throughput, batch
//! throughput, compute-plan summaries, agreement between units and with the reference.
//! The harness stays a thin layer over Core ML; everything computed is here, tested.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::agreement::{self, ExampleOutputs};
use super::report::{
    self, AgreementBaseline, BenchReport, BenchSettings, ComputeUnits, InputSource, LoadTimes,
    MachineInfo, ModelInfo, ToolInfo, UnitResult,
};
use super::{stats, BenchError, ReferenceFile};
use crate::coreml_runtime::plan::{summarize, PlanOpRecord};

pub const RAW_FORMAT: &str = "coreml-bench-raw";
pub const RAW_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub format: String,
    pub version: u32,
    pub tool: ToolInfo,
    pub created_at: String,
    pub machine: MachineInfo,
    pub model: ModelInfo,
    pub settings: RawSettings,
    pub units: Vec<RawUnit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub compute_units: Vec<ComputeUnits>,
    pub warmup: u32,
    pub iterations: u32,
    pub batch_sizes: Vec<u32>,
    pub input_source: InputSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub examples: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub batch_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_ms: Option<Vec<f64>>,
    /// One prediction on a stacked `[batch_size, ...]` input (enumerated shapes) per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub ops: Vec<PlanOpRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawOutputKind {
    Multiarray,
    Dictionary,
    String,
    Number,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub kind: RawOutputKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnit {
    pub compute_units: ComputeUnits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadTimes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_prediction_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latencies_ms: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<Vec<RawBatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_plan: Option<RawPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_plan_error: Option<String>,
    /// One map per example: output name -> value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<BTreeMap<String, RawOutput>>>,
}

/// Reads and checks a raw file (format and version first, so another file fails on that).
pub fn read_raw(path: &Path) -> Result<RawRun, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_raw(&text, path)
}

pub fn parse_raw(text: &str, path: &Path) -> Result<RawRun, BenchError> {
    let json_err = |source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
    let format = value.get("format").and_then(|f| f.as_str());
    let version = value.get("version").and_then(|v| v.as_u64());
    if format != Some(RAW_FORMAT) || version != Some(u64::from(RAW_VERSION)) {
        return Err(BenchError::Invalid {
            path: path.to_path_buf(),
            msg: format!(
                "not a `{RAW_FORMAT}` version {RAW_VERSION} file (format {format:?}, version \
                 {version:?}); write it with the coreml-bench of this checkout (swift/)"
            ),
        });
    }
    serde_json::from_str(text).map_err(json_err)
}

/// Whether a JSON text is a raw harness file rather than a report.
pub fn is_raw(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("format")
                .and_then(|f| f.as_str())
                .map(|f| f == RAW_FORMAT)
        })
        .unwrap_or(false)
}

/// One example's outputs flattened for comparison: multiarrays as given (row-major),
/// dictionaries sorted by label; strings (the predicted label) left out, since the
/// probabilities carry the same decision in comparable form.
fn flatten(example: &BTreeMap<String, RawOutput>) -> ExampleOutputs {
    let mut out = ExampleOutputs::new();
    for (name, v) in example {
        let data = v.data.clone().unwrap_or_default();
        let values = match (v.kind, &v.labels) {
            (RawOutputKind::Multiarray | RawOutputKind::Number, _) => data,
            (RawOutputKind::Dictionary, Some(labels)) => agreement::by_label(labels, &data),
            (RawOutputKind::Dictionary, None) => data,
            (RawOutputKind::String, _) => continue,
        };
        out.insert(name.clone(), values);
    }
    out
}

/// The report of a raw run. `reference` is the `--reference` file the run was given
/// (its outputs are what `agreement_with_reference` compares with).
pub fn assemble(raw: &RawRun, reference: Option<&ReferenceFile>) -> Result<BenchReport, String> {
    let outputs: BTreeMap<ComputeUnits, Vec<ExampleOutputs>> = raw
        .units
        .iter()
        .filter(|u| u.error.is_none())
        .map(|u| {
            let ex = u.outputs.iter().flatten().map(flatten).collect();
            (u.compute_units, ex)
        })
        .collect();
    if outputs.is_empty() {
        let errors: Vec<String> = raw
            .units
            .iter()
            .map(|u| format!("{}: {}", u.compute_units, u.error.as_deref().unwrap_or("?")))
            .collect();
        return Err(format!(
            "no compute-unit setting could be measured:\n  {}",
            errors.join("\n  ")
        ));
    }
    let expected = reference.map(agreement::expected_outputs);
    let units = raw
        .units
        .iter()
        .map(|u| unit_result(u, &outputs, expected.as_deref()))
        .collect::<Result<Vec<_>, String>>()?;
    let s = &raw.settings;
    Ok(BenchReport {
        schema_version: report::SCHEMA_VERSION,
        tool: raw.tool.clone(),
        created_at: raw.created_at.clone(),
        machine: raw.machine.clone(),
        model: raw.model.clone(),
        settings: BenchSettings {
            compute_units: s.compute_units.clone(),
            warmup: s.warmup,
            iterations: s.iterations,
            batch_sizes: s.batch_sizes.clone(),
            input_source: s.input_source,
            images: s.images.clone().filter(|i| !i.is_empty()),
            reference: s.reference.clone(),
            examples: s.examples,
        },
        units,
    })
}

fn failed(units: ComputeUnits, error: String) -> UnitResult {
    UnitResult {
        compute_units: units,
        error: Some(error),
        load: None,
        first_prediction_ms: None,
        latency: None,
        throughput_images_per_s: None,
        batches: None,
        compute_plan: None,
        agreement_with_cpu: None,
        agreement_with_reference: None,
    }
}

fn unit_result(
    u: &RawUnit,
    outputs: &BTreeMap<ComputeUnits, Vec<ExampleOutputs>>,
    expected: Option<&[ExampleOutputs]>,
) -> Result<UnitResult, String> {
    let name = u.compute_units;
    if let Some(e) = &u.error {
        return Ok(failed(name, e.clone()));
    }
    let (Some(load), Some(first), Some(samples), Some(batches)) =
        (u.load, u.first_prediction_ms, &u.latencies_ms, &u.batches)
    else {
        return Err(format!(
            "unit `{name}`: measurements missing (only units with an `error` may leave them out)"
        ));
    };
    let latency = stats::latency(samples)
        .ok_or_else(|| format!("unit `{name}`: latencies must be finite, >= 0 and not empty"))?;
    let mine = &outputs[&name];
    // A unit whose outputs are not finite is broken, whatever its speed: say so rather
    // than compare (NaN differences cannot be written as JSON numbers either).
    let bad = mine
        .iter()
        .flat_map(|e| e.iter())
        .find(|(_, v)| v.iter().any(|x| !x.is_finite()));
    if let Some((output, _)) = bad {
        return Ok(failed(
            name,
            format!("Core ML gave non-finite values (NaN or infinity) in `{output}`"),
        ));
    }
    let against = |baseline: &[ExampleOutputs], which| {
        agreement::compare(mine, baseline, which).map_err(|e| format!("unit `{name}`: {e}"))
    };
    let agreement_with_cpu = match outputs.get(&ComputeUnits::Cpu) {
        Some(cpu) if name != ComputeUnits::Cpu => Some(against(cpu, AgreementBaseline::Cpu)?),
        _ => None,
    };
    let agreement_with_reference = expected
        .map(|e| against(e, AgreementBaseline::Reference))
        .transpose()?;
    let allows_ane = crate::coreml_runtime::allows_ane(name);
    Ok(UnitResult {
        compute_units: name,
        error: None,
        load: Some(load),
        first_prediction_ms: Some(first),
        throughput_images_per_s: Some(stats::images_per_second(latency.mean_ms)),
        latency: Some(latency),
        batches: Some(
            batches
                .iter()
                .map(|b| stats::batch(b.batch_size, b.calls_ms.as_deref(), b.error.as_deref()))
                .collect(),
        ),
        compute_plan: u
            .compute_plan
            .as_ref()
            .map(|p| summarize(&p.ops, allows_ane).to_report()),
        agreement_with_cpu,
        agreement_with_reference,
    })
}

/// Reads a raw file and assembles its report, reading the reference file it names
/// (relative paths from the current folder, as the harness was given them) unless
/// `reference` is passed.
pub fn report_from_raw(
    path: &Path,
    reference: Option<&ReferenceFile>,
) -> Result<BenchReport, BenchError> {
    let raw = read_raw(path)?;
    let named = match (reference, &raw.settings.reference) {
        (None, Some(r)) => Some(ReferenceFile::read(Path::new(r))?),
        _ => None,
    };
    let report =
        assemble(&raw, reference.or(named.as_ref())).map_err(|msg| BenchError::Invalid {
            path: path.to_path_buf(),
            msg,
        })?;
    report::check(&report).map_err(|msg| BenchError::Invalid {
        path: path.to_path_buf(),
        msg,
    })?;
    Ok(report)
}

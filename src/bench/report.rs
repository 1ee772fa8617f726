//! The report `coreml-bench` writes, as serde types following
//! `schema/bench-report.schema.json` (field names are the schema's property names).
//! Optional properties are `Option`s: the Swift encoder leaves nil values out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// The report version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema_version: u32,
    pub tool: ToolInfo,
    /// ISO 8601 UTC.
    pub created_at: String,
    pub machine: MachineInfo,
    pub model: ModelInfo,
    pub settings: BenchSettings,
    /// In command-line order.
    pub units: Vec<UnitResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThermalState {
    Nominal,
    Fair,
    Serious,
    Critical,
    Unknown,
}

impl fmt::Display for ThermalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Nominal => "nominal",
            Self::Fair => "fair",
            Self::Serious => "serious",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub chip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_model: Option<String>,
    pub os_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    pub thermal_state_start: ThermalState,
    pub thermal_state_end: ThermalState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    Image,
    Multiarray,
    Dictionary,
    String,
    Int64,
    Double,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    pub name: String,
    pub kind: FeatureKind,
    /// Multiarrays: their shape; images: `[1, 3, height, width]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: String,
    pub inputs: Vec<FeatureInfo>,
    pub outputs: Vec<FeatureInfo>,
    /// The package's user-defined metadata (`precision`, `tool_version`, `base_model`...).
    pub metadata: BTreeMap<String, String>,
    pub compile_ms: f64,
}

/// A Core ML compute-unit setting, named as on `coreml-bench`'s command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeUnits {
    /// `.cpuOnly`
    Cpu,
    /// `.cpuAndGPU`
    Gpu,
    /// `.cpuAndNeuralEngine`
    Ane,
    /// `.all`
    All,
}

impl ComputeUnits {
    pub const ALL: [ComputeUnits; 4] = [Self::Cpu, Self::Gpu, Self::Ane, Self::All];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Ane => "ane",
            Self::All => "all",
        }
    }
}

impl fmt::Display for ComputeUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputSource {
    Synthetic,
    Images,
    Reference,
}

impl fmt::Display for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Synthetic => "synthetic",
            Self::Images => "images",
            Self::Reference => "reference",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadTimes {
    pub cold_ms: f64,
    pub warm_ms: f64,
}

/// Single-prediction latency. Percentiles interpolate linearly between the closest
/// ranks (position `(n - 1) * p` in the sorted samples), as NumPy does by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u32,
    pub mean_ms: f64,
    pub std_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub batch_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_batch_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
    Ane,
    Unknown,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Ane => "ane",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOp {
    /// The op's first output (MIL ops have no name of their own).
    pub output: String,
    pub operator: String,
    /// Preferred device.
    pub device: Device,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported: Option<Vec<Device>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    pub cpu: u32,
    pub gpu: u32,
    pub ane: u32,
    pub unknown: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputePlan {
    pub op_count: u32,
    pub ops_by_device: DeviceCounts,
    /// Only for settings that allow the Neural Engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_not_on_ane: Option<Vec<PlanOp>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputComparison {
    pub output: String,
    pub elements: u64,
    pub max_abs_diff: f64,
    pub baseline_max_abs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
}

impl OutputComparison {
    /// `max_abs_diff / baseline_max_abs`, the measure `pipeline verify` thresholds.
    pub fn relative_error(&self) -> f64 {
        if self.baseline_max_abs > 0.0 {
            self.max_abs_diff / self.baseline_max_abs
        } else {
            self.max_abs_diff
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgreementBaseline {
    Cpu,
    Reference,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub baseline: AgreementBaseline,
    pub examples: u32,
    pub outputs: Vec<OutputComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitResult {
    pub compute_units: ComputeUnits,
    /// Set when the setting could not be measured; the measurements are then absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadTimes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_prediction_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<Vec<BatchResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_plan: Option<ComputePlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_with_cpu: Option<Agreement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_with_reference: Option<Agreement>,
}

impl UnitResult {
    /// The largest batch measured without error, with its images/s.
    pub fn best_batch(&self) -> Option<(u32, f64)> {
        self.batches
            .iter()
            .flatten()
            .filter_map(|b| b.images_per_s.map(|ips| (b.batch_size, ips)))
            .max_by_key(|(size, _)| *size)
    }
}

impl BenchReport {
    pub fn unit(&self, units: ComputeUnits) -> Option<&UnitResult> {
        self.units.iter().find(|u| u.compute_units == units)
    }
}

/// Reads and checks a report.
pub fn read_report(path: &Path) -> Result<BenchReport, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_report(&text, path)
}

/// Parses report text; `path` only names the source in errors.
pub fn parse_report(text: &str, path: &Path) -> Result<BenchReport, BenchError> {
    let json_err = |source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    };
    // The version first: a report from another schema should fail on its version, not
    // on whichever field happened to move.
    let value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
    let version = value
        .get("schema_version")
        .ok_or_else(|| BenchError::MissingVersion {
            path: path.to_path_buf(),
        })?;
    if version.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
        return Err(BenchError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version.to_string(),
            expected: SCHEMA_VERSION,
        });
    }
    // From the text again, so serde's errors carry line and column.
    let report: BenchReport = serde_json::from_str(text).map_err(json_err)?;
    check(&report).map_err(|msg| BenchError::Invalid {
        path: path.to_path_buf(),
        msg,
    })?;
    Ok(report)
}

/// What serde cannot check but the schema (or common sense) requires.
pub(crate) fn check(report: &BenchReport) -> Result<(), String> {
    if report.units.is_empty() {
        return Err("the report has no compute units".into());
    }
    for unit in &report.units {
        let name = unit.compute_units;
        if unit.error.is_some() {
            continue;
        }
        let missing = [
            ("load", unit.load.is_none()),
            ("first_prediction_ms", unit.first_prediction_ms.is_none()),
            ("latency", unit.latency.is_none()),
            (
                "throughput_images_per_s",
                unit.throughput_images_per_s.is_none(),
            ),
            ("batches", unit.batches.is_none()),
        ];
        if let Some((field, _)) = missing.iter().find(|(_, absent)| *absent) {
            return Err(format!(
                "unit `{name}`: `{field}` is missing (only units with an `error` may leave out measurements)"
            ));
        }
        if let Some(l) = &unit.latency {
            let all = [
                l.mean_ms, l.std_ms, l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms,
            ];
            if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "unit `{name}`: latency values must be finite and >= 0"
                ));
            }
            let ordered = [l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms];
            if ordered.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!(
                    "unit `{name}`: latency is not ordered min <= p50 <= p90 <= p99 <= max"
                ));
            }
        }
        for b in unit.batches.iter().flatten() {
            if b.error.is_none() && b.images_per_s.is_none() {
                return Err(format!(
                    "unit `{name}`, batch {}: `images_per_s` is missing",
                    b.batch_size
                ));
            }
        }
    }
    Ok(())
}

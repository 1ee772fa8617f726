//! Benchmarks of exported packages on a Mac, through the Swift harness in `swift/`
//! (`coreml-bench`), and everything around its JSON report that works anywhere:
//! reading it ([`read_report`]), a text table per compute unit (`Display` on
//! [`BenchReport`]) and a PNG chart ([`render_chart`]). The harness writes raw
//! measurements only (`schema/bench-raw.schema.json`, [`raw`]); the report
//! (`schema/bench-report.schema.json`, `schema_version` 1) is computed from them here.
//!
//! No MLX here: the module builds with `--no-default-features`.

mod agreement;
pub mod chart;
pub mod raw;
mod reference;
mod report;
mod run;
mod stats;
mod table;

use std::path::PathBuf;

pub use chart::{render_chart, Chart, ChartBar, ChartPanel, Series};
pub use raw::{assemble, read_raw, report_from_raw, RawRun, RAW_FORMAT, RAW_VERSION};
pub use reference::{ReferenceFile, ReferenceTensor, REFERENCE_FORMAT, REFERENCE_VERSION};
pub use report::{
    parse_report, read_report, Agreement, AgreementBaseline, BatchResult, BenchReport,
    BenchSettings, ComputePlan, ComputeUnits, Device, DeviceCounts, FeatureInfo, FeatureKind,
    InputSource, Latency, LoadTimes, MachineInfo, ModelInfo, OutputComparison, PlanOp,
    ThermalState, ToolInfo, UnitResult, SCHEMA_VERSION,
};
pub use run::{
    bench_package, chart_path_for, coreml_bench_args, default_json_path, raw_path_for,
    BenchOptions, BenchOutcome,
};

/// A report, or the raw harness file it is computed from (recognised by its `format`).
pub fn load_report(path: &std::path::Path) -> Result<BenchReport, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw::is_raw(&text) {
        report_from_raw(path, None)
    } else {
        parse_report(&text, path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid coreml-bench file: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{}: no `schema_version` field; is this a coreml-bench report (schema/bench-report.schema.json)?",
        .path.display()
    )]
    MissingVersion { path: PathBuf },
    #[error(
        "{}: report schema_version {found} is not supported; this build reads version {expected} \
         (write it with the coreml-bench of this checkout, swift/)",
        .path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("{}: {msg}", .path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("{}: writing the chart: {source}", .path.display())]
    Chart {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Options(String),
    #[error("`{command}` failed ({status})")]
    Tool { command: String, status: String },
}

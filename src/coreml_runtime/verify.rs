//! `pipeline verify PKG --runtime coreml`: the inputs and references today's verify
//! gathers (`crate::verify::prepare`), our interpreter on them, then Core ML on each
//! compute-unit setting, all compared in one [`CoreMlVerifyReport`].

use std::path::Path;

use super::report::{build, Baseline};
use super::{check_supported, run_units, CoreMlVerifyReport};
use crate::bench::ComputeUnits;
use crate::verify::{self, VerifyOptions, VerifyStageError};

pub fn verify_coreml(
    package: &Path,
    opts: &VerifyOptions,
    units: &[ComputeUnits],
) -> Result<CoreMlVerifyReport, VerifyStageError> {
    // Before the MLX forward and the interpreter: off a Mac nothing would come of them.
    check_supported()?;
    let p = verify::prepare(package, opts)?;
    let (interpreter, interpreter_outputs) = verify::check_interpreter(package, &p, opts)?;
    let runs = run_units(package, &p.inputs, units)?;
    let labels = p.labels.as_deref();
    let accuracy = |got: &std::collections::BTreeMap<String, Vec<f32>>| {
        labels.and_then(|l| verify::accuracy(got, &p.outputs, l).ok())
    };
    let report = build(
        Baseline {
            interpreter,
            interpreter_outputs: &interpreter_outputs,
            reference: &p.outputs,
            labels,
            compressed: opts.compressed,
            accuracy: &accuracy,
        },
        &runs,
    );
    if let Some(path) = &opts.reference_out {
        verify::write_reference_out(&p.pkg, path, opts, &p.inputs, &p.outputs)?;
    }
    Ok(report)
}

/// `NAME.mlpackage` -> `NAME.coreml-verify.json`, beside the interpreter's `verify.json`.
pub fn default_json_path(package: &Path) -> std::path::PathBuf {
    package.with_extension("coreml-verify.json")
}

pub fn write_json(report: &CoreMlVerifyReport, path: &Path) -> Result<(), VerifyStageError> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| VerifyStageError::Usage(format!("report as JSON: {e}")))?;
    crate::fsutil::write_file_atomically(path, text.as_bytes()).map_err(|source| {
        VerifyStageError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

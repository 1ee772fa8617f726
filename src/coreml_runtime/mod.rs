//! Core ML itself, from Rust: compile a package, load it per compute-unit setting, feed it
//! the inputs `pipeline verify` compares on, read its outputs and its compute plan.
//!
//! Split so that almost all of it is tested on Linux: this module and its portable
//! children pack inputs ([`values`]), decode outputs, run the per-unit loop over an
//! [`Engine`], summarise compute plans ([`plan`]) and compare ([`report`]); `macos.rs`
//! is the thin [`Engine`] over Apple's API (`objc2-core-ml`), compiled only on macOS with
//! the `coreml` feature. There it is type-checked from Linux
//! (`cargo clippy --target aarch64-apple-darwin --no-default-features --features coreml`)
//! but never run. No MLX here: the feature builds without it.

#[cfg(all(target_os = "macos", feature = "coreml"))]
mod macos;
pub mod plan;
pub mod report;
pub mod values;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bench::{ComputeUnits, FeatureKind};
use crate::coreml::Tensor;

pub use plan::{summarize, CostShare, PlanOpRecord, PlanSummary};
pub use report::{CoreMlVerifyReport, UnitCheck};
pub use values::{ElementType, InputValue, OutputValue};

#[derive(Debug, thiserror::Error)]
pub enum CoreMlError {
    #[error(
        "Core ML needs macOS (this is {os}): run `--runtime coreml` on a Mac, or leave \
         --runtime out to check the package with our interpreter"
    )]
    NeedsMacos { os: &'static str },
    #[error(
        "this build has no Core ML: rebuild with the `coreml` feature \
         (cargo build --release --features coreml)"
    )]
    NotBuilt,
    /// An `NSError` from Core ML, with Apple's own message.
    #[error("Core ML could not {action}: {message} ({domain} error {code})")]
    Apple {
        action: String,
        domain: String,
        code: i64,
        message: String,
    },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Output(String),
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `cpu,gpu,ane,all` -> settings in the given order, repeats dropped.
pub fn parse_units(list: &str) -> Result<Vec<ComputeUnits>, CoreMlError> {
    let mut units = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let unit = ComputeUnits::ALL
            .into_iter()
            .find(|u| u.name() == item.to_ascii_lowercase())
            .ok_or_else(|| {
                CoreMlError::Usage(format!(
                    "--compute-units: `{item}` is not cpu, gpu, ane or all"
                ))
            })?;
        if !units.contains(&unit) {
            units.push(unit);
        }
    }
    if units.is_empty() {
        return Err(CoreMlError::Usage(
            "--compute-units needs at least one of cpu, gpu, ane, all".into(),
        ));
    }
    Ok(units)
}

/// Whether a setting lets Core ML use the Neural Engine (only those list ops off it).
pub fn allows_ane(units: ComputeUnits) -> bool {
    matches!(units, ComputeUnits::Ane | ComputeUnits::All)
}

/// What `pipeline doctor` says about Core ML in this build on this machine.
pub fn availability() -> String {
    if !cfg!(target_os = "macos") {
        return format!(
            "unavailable: Core ML needs macOS (this is {})",
            std::env::consts::OS
        );
    }
    if !cfg!(feature = "coreml") {
        return "not in this build (rebuild with --features coreml)".into();
    }
    #[cfg(all(target_os = "macos", feature = "coreml"))]
    {
        macos::availability()
    }
    #[cfg(not(all(target_os = "macos", feature = "coreml")))]
    unreachable!("the checks above return off macOS and without the feature")
}

/// One feature of a loaded model's description.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    pub name: String,
    pub kind: FeatureKind,
    /// Multiarrays: their shape; images: `[1, 3, height, width]`.
    pub shape: Vec<usize>,
    /// Multiarrays only.
    pub dtype: Option<ElementType>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelInterface {
    pub inputs: Vec<FeatureSpec>,
    pub outputs: Vec<FeatureSpec>,
    /// A classifier's labels in the model's class order.
    pub class_labels: Option<Vec<String>>,
}

/// The Core ML calls the per-unit loop needs; `macos.rs` implements it over Apple's API,
/// tests over recorded values.
pub trait Engine {
    type Model;
    /// Loads the compiled model with this compute-unit setting.
    fn load(&self, units: ComputeUnits) -> Result<Self::Model, CoreMlError>;
    fn interface(&self, model: &Self::Model) -> Result<ModelInterface, CoreMlError>;
    /// One prediction (the implementation drains its autorelease pool per call).
    fn predict(
        &self,
        model: &Self::Model,
        inputs: &[(String, InputValue)],
    ) -> Result<Vec<(String, OutputValue)>, CoreMlError>;
    /// The compute plan's ops, `Ok(None)` where the system has none (before macOS 14.4,
    /// or a model that is not an ML program).
    fn plan(&self, units: ComputeUnits) -> Result<Option<Vec<PlanOpRecord>>, CoreMlError>;
}

/// What one compute-unit setting gave.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRun {
    pub units: ComputeUnits,
    /// Set when the setting could not be loaded or run; the rest is then empty.
    pub error: Option<String>,
    pub load_ms: f64,
    /// Every numeric output, examples concatenated (as our interpreter's `run_examples`).
    pub outputs: BTreeMap<String, Vec<f32>>,
    pub plan: Option<PlanSummary>,
    /// Why there is no plan, when there is none.
    pub plan_note: Option<String>,
}

/// Example `index` of each input tensor, packed for the model's input of that name.
pub fn pack_inputs(
    interface: &ModelInterface,
    inputs: &[(String, Tensor)],
    index: usize,
) -> Result<Vec<(String, InputValue)>, CoreMlError> {
    let mut packed = Vec::new();
    for spec in &interface.inputs {
        let (_, t) = inputs
            .iter()
            .find(|(n, _)| *n == spec.name)
            .ok_or_else(|| {
                CoreMlError::Input(format!("no values for the model's input `{}`", spec.name))
            })?;
        let per_example: usize = t.shape.iter().skip(1).product();
        let values = t
            .data
            .get(index * per_example..(index + 1) * per_example)
            .ok_or_else(|| CoreMlError::Input(format!("`{}` has no example {index}", spec.name)))?;
        let want: usize = spec.shape.iter().skip(1).product();
        if t.shape.len() != spec.shape.len() || per_example != want {
            return Err(CoreMlError::Input(format!(
                "input `{}` is {:?}, Core ML takes {:?} per example",
                spec.name, t.shape, spec.shape
            )));
        }
        let value = match spec.kind {
            FeatureKind::Image => {
                let (h, w) = (spec.shape[2], spec.shape[3]);
                InputValue::Image {
                    width: w,
                    height: h,
                    rgb_planes: values::image_planes(values, w, h)?,
                }
            }
            FeatureKind::Multiarray => {
                let dtype = spec.dtype.unwrap_or(ElementType::F32);
                InputValue::MultiArray {
                    shape: spec.shape.clone(),
                    dtype,
                    bytes: values::pack_multiarray(values, dtype),
                }
            }
            other => {
                return Err(CoreMlError::Input(format!(
                    "input `{}` is a {other:?}; only images and multiarrays are fed",
                    spec.name
                )))
            }
        };
        packed.push((spec.name.clone(), value));
    }
    Ok(packed)
}

/// Examples in the inputs: their leading axis (verify's inputs share one).
fn example_count(inputs: &[(String, Tensor)]) -> usize {
    inputs
        .first()
        .and_then(|(_, t)| t.shape.first().copied())
        .unwrap_or(0)
}

/// Loads, runs every example and reads the plan for each setting in turn. A setting
/// that fails is recorded with its error and the others still run (the Neural Engine
/// can refuse a model the CPU runs).
pub fn run_units_with<E: Engine>(
    engine: &E,
    inputs: &[(String, Tensor)],
    units: &[ComputeUnits],
) -> Vec<UnitRun> {
    units
        .iter()
        .map(|&u| {
            let mut run = UnitRun {
                units: u,
                error: None,
                load_ms: 0.0,
                outputs: BTreeMap::new(),
                plan: None,
                plan_note: None,
            };
            if let Err(e) = run_one(engine, inputs, &mut run) {
                run.error = Some(e.to_string());
                run.outputs.clear();
            }
            run
        })
        .collect()
}

fn run_one<E: Engine>(
    engine: &E,
    inputs: &[(String, Tensor)],
    run: &mut UnitRun,
) -> Result<(), CoreMlError> {
    let start = Instant::now();
    let model = engine.load(run.units)?;
    run.load_ms = start.elapsed().as_secs_f64() * 1e3;
    let interface = engine.interface(&model)?;
    for i in 0..example_count(inputs) {
        let packed = pack_inputs(&interface, inputs, i)?;
        let outputs = engine.predict(&model, &packed)?;
        for (name, v) in values::flatten(&outputs, interface.class_labels.as_deref())? {
            run.outputs.entry(name).or_default().extend(v);
        }
    }
    // A plan that cannot be read leaves the unit's outputs valid: note it, go on.
    match engine.plan(run.units) {
        Ok(Some(ops)) => run.plan = Some(summarize(&ops, allows_ane(run.units))),
        Ok(None) => {
            run.plan_note = Some("no compute plan (needs macOS 14.4+ and an ML program)".into())
        }
        Err(e) => run.plan_note = Some(format!("compute plan: {e}")),
    }
    Ok(())
}

/// Runs `package` through Core ML on each setting (macOS with the `coreml` feature);
/// elsewhere says what is missing.
pub fn run_units(
    package: &Path,
    inputs: &[(String, Tensor)],
    units: &[ComputeUnits],
) -> Result<Vec<UnitRun>, CoreMlError> {
    check_supported()?;
    #[cfg(all(target_os = "macos", feature = "coreml"))]
    {
        let engine = macos::CoreMl::compile(package)?;
        Ok(run_units_with(&engine, inputs, units))
    }
    #[cfg(not(all(target_os = "macos", feature = "coreml")))]
    {
        let _ = (package, inputs, units);
        unreachable!("check_supported fails off macOS and without the feature")
    }
}

/// `Ok` only where [`run_units`] can run: before any slow work is done.
pub fn check_supported() -> Result<(), CoreMlError> {
    if !cfg!(target_os = "macos") {
        return Err(CoreMlError::NeedsMacos {
            os: std::env::consts::OS,
        });
    }
    if !cfg!(feature = "coreml") {
        return Err(CoreMlError::NotBuilt);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! The [`Engine`] over Apple's Core ML (`objc2-core-ml`): the only code here that calls
//! Apple's API. Everything it moves in and out is plain bytes handled by `values.rs`.
//! Compiled only on macOS with the `coreml` feature; type-checked from Linux with
//! `cargo clippy --target aarch64-apple-darwin --no-default-features --features coreml`,
//! never run there.
//!
//! About the `unsafe` blocks: objc2's generated methods are `unsafe` because the
//! generator cannot prove what Apple's headers promise (argument validity, thread
//! safety, lifetimes). Each block states the invariant it relies on.

use std::cell::RefCell;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::Duration;

use block2::{RcBlock, StackBlock};
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyObject, NSObjectProtocol, ProtocolObject};
use objc2::{available, AnyThread, ClassType};
use objc2_core_foundation::CFRetained;
use objc2_core_ml::{
    MLCPUComputeDevice, MLComputeDeviceProtocol, MLComputePlan, MLComputeUnits,
    MLDictionaryFeatureProvider, MLFeatureDescription, MLFeatureProvider, MLFeatureType,
    MLFeatureValue, MLGPUComputeDevice, MLModel, MLModelConfiguration,
    MLModelStructureProgramBlock, MLMultiArray, MLMultiArrayDataType, MLNeuralEngineComputeDevice,
};
use objc2_core_video::{
    kCVPixelFormatType_32BGRA, kCVReturnSuccess, CVPixelBuffer, CVPixelBufferCreate,
    CVPixelBufferGetBaseAddress, CVPixelBufferGetBytesPerRow, CVPixelBufferLockBaseAddress,
    CVPixelBufferLockFlags, CVPixelBufferUnlockBaseAddress,
};
use objc2_foundation::{NSArray, NSDictionary, NSError, NSNumber, NSProcessInfo, NSString, NSURL};

use super::values::{self, ElementType, InputValue, OutputValue};
use super::{CoreMlError, Engine, FeatureSpec, ModelInterface, PlanOpRecord};
use crate::bench::{ComputeUnits, Device, FeatureKind};

/// How long a compute plan may take to load before we give up on it (a ViT-L plans in
/// seconds; a hang must not hold `verify` forever).
const PLAN_TIMEOUT: Duration = Duration::from_secs(300);

/// An `NSError` as a typed error carrying Apple's message.
fn apple(action: &str, e: &NSError) -> CoreMlError {
    CoreMlError::Apple {
        action: action.to_string(),
        domain: e.domain().to_string(),
        code: e.code() as i64,
        message: e.localizedDescription().to_string(),
    }
}

pub fn availability() -> String {
    let os = NSProcessInfo::processInfo().operatingSystemVersionString();
    let plan = if available!(macos = 14.4) {
        "compute plans available"
    } else {
        "no compute plans (need macOS 14.4)"
    };
    format!("available (macOS {os}; {plan})")
}

/// A package compiled once (`.mlmodelc` in a temporary folder, removed on drop) and
/// loaded per compute-unit setting.
pub struct CoreMl {
    compiled: Retained<NSURL>,
    compiled_path: Option<PathBuf>,
}

impl CoreMl {
    pub fn compile(package: &Path) -> Result<Self, CoreMlError> {
        // The multiarray buffer accessors we use are macOS 12.3+; say so rather than abort
        // on an unknown selector.
        if !available!(macos = 12.3) {
            return Err(CoreMlError::Usage(
                "Core ML from Rust needs macOS 12.3 or later".into(),
            ));
        }
        let url = NSURL::from_file_path(package).ok_or_else(|| {
            CoreMlError::Usage(format!(
                "{}: not a file path Core ML can take",
                package.display()
            ))
        })?;
        // The synchronous compile is what a command-line run wants: it deprecated in favour
        // of the completion-handler form only so apps keep their main thread free.
        #[allow(deprecated)]
        // SAFETY: `url` is a valid file URL for the duration of the call; the method has
        // no other preconditions.
        let compiled = unsafe { MLModel::compileModelAtURL_error(&url) }
            .map_err(|e| apple(&format!("compile {}", package.display()), &e))?;
        let compiled_path = compiled.to_file_path();
        Ok(CoreMl {
            compiled,
            compiled_path,
        })
    }

    fn configuration(units: ComputeUnits) -> Retained<MLModelConfiguration> {
        let value = match units {
            ComputeUnits::Cpu => MLComputeUnits::CPUOnly,
            ComputeUnits::Gpu => MLComputeUnits::CPUAndGPU,
            ComputeUnits::Ane => MLComputeUnits::CPUAndNeuralEngine,
            ComputeUnits::All => MLComputeUnits::All,
        };
        // SAFETY: a fresh configuration is owned by this thread alone while we set it;
        // `value` is one of the enum's declared cases.
        unsafe {
            let config = MLModelConfiguration::new();
            config.setComputeUnits(value);
            config
        }
    }
}

impl Drop for CoreMl {
    fn drop(&mut self) {
        // Core ML compiles into a temporary folder and leaves it to us to remove.
        if let Some(p) = &self.compiled_path {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Engine for CoreMl {
    type Model = Retained<MLModel>;

    fn load(&self, units: ComputeUnits) -> Result<Self::Model, CoreMlError> {
        let config = Self::configuration(units);
        // SAFETY: both arguments are valid, retained objects for the call.
        unsafe { MLModel::modelWithContentsOfURL_configuration_error(&self.compiled, &config) }
            .map_err(|e| apple(&format!("load the model on {units}"), &e))
    }

    fn interface(&self, model: &Self::Model) -> Result<ModelInterface, CoreMlError> {
        autoreleasepool(|_| {
            // SAFETY: a loaded model's description is immutable and valid while `model` is.
            let d = unsafe { model.modelDescription() };
            // SAFETY: as above; the dictionaries are copies owned by us. `classLabels` is
            // new in macOS 14: objc2 does not check availability, so we do (an unknown
            // selector would abort); without it a classifier's outputs cannot be ordered.
            let (inputs, outputs, labels) = unsafe {
                (
                    d.inputDescriptionsByName(),
                    d.outputDescriptionsByName(),
                    available!(macos = 14.0).then(|| d.classLabels()).flatten(),
                )
            };
            Ok(ModelInterface {
                inputs: features(&inputs),
                outputs: features(&outputs),
                class_labels: labels.map(|l| l.iter().map(|o| label_text(&o)).collect()),
            })
        })
    }

    fn predict(
        &self,
        model: &Self::Model,
        inputs: &[(String, InputValue)],
    ) -> Result<Vec<(String, OutputValue)>, CoreMlError> {
        // One pool per prediction: Core ML autoreleases its output buffers, which would
        // otherwise pile up until the whole loop returns.
        autoreleasepool(|_| {
            let provider = provider(inputs)?;
            let proto = ProtocolObject::<dyn MLFeatureProvider>::from_ref(&*provider);
            // SAFETY: `proto` holds a value for every input the model declares (built from
            // its description); the model is not used from another thread meanwhile.
            let out = unsafe { model.predictionFromFeatures_error(proto) }
                .map_err(|e| apple("predict", &e))?;
            read_outputs(&out)
        })
    }

    fn plan(&self, units: ComputeUnits) -> Result<Option<Vec<PlanOpRecord>>, CoreMlError> {
        if !available!(macos = 14.4) {
            return Ok(None);
        }
        let plan = load_plan(&self.compiled, &Self::configuration(units))?;
        autoreleasepool(|_| {
            // SAFETY: the plan is fully loaded (the completion handler ran) and only this
            // thread reads it.
            let program = unsafe { plan.0.modelStructure().program() };
            let Some(program) = program else {
                return Ok(None);
            };
            // SAFETY: as above.
            let main = unsafe { program.functions() }.objectForKey(&NSString::from_str("main"));
            let Some(main) = main else {
                return Ok(None);
            };
            let mut ops = Vec::new();
            // SAFETY: as above.
            let block = unsafe { main.block() };
            plan_ops(&plan.0, &block, &mut ops);
            Ok(Some(ops))
        })
    }
}

fn label_text(o: &AnyObject) -> String {
    if let Some(s) = o.downcast_ref::<NSString>() {
        s.to_string()
    } else if let Some(n) = o.downcast_ref::<NSNumber>() {
        n.as_i64().to_string()
    } else {
        format!("{o:?}")
    }
}

fn features(by_name: &NSDictionary<NSString, MLFeatureDescription>) -> Vec<FeatureSpec> {
    let mut specs: Vec<FeatureSpec> = by_name.objects().map(|d| feature(&d)).collect();
    // Name order, so runs of one model always list features alike.
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

fn feature(d: &MLFeatureDescription) -> FeatureSpec {
    // SAFETY: feature descriptions are immutable once the model is loaded.
    unsafe {
        let name = d.name().to_string();
        let ty = d.r#type();
        if ty == MLFeatureType::Image {
            let shape = d
                .imageConstraint()
                .map(|c| vec![1, 3, c.pixelsHigh() as usize, c.pixelsWide() as usize])
                .unwrap_or_default();
            return FeatureSpec {
                name,
                kind: FeatureKind::Image,
                shape,
                dtype: None,
            };
        }
        if ty == MLFeatureType::MultiArray {
            let c = d.multiArrayConstraint();
            let shape = c
                .as_ref()
                .map(|c| c.shape().iter().map(|n| n.as_usize()).collect())
                .unwrap_or_default();
            let dtype = c.and_then(|c| ElementType::from_core_ml(c.dataType().0));
            return FeatureSpec {
                name,
                kind: FeatureKind::Multiarray,
                shape,
                dtype,
            };
        }
        let kind = match ty {
            MLFeatureType::Dictionary => FeatureKind::Dictionary,
            MLFeatureType::String => FeatureKind::String,
            MLFeatureType::Int64 => FeatureKind::Int64,
            MLFeatureType::Double => FeatureKind::Double,
            _ => FeatureKind::Other,
        };
        FeatureSpec {
            name,
            kind,
            shape: Vec::new(),
            dtype: None,
        }
    }
}

/// The inputs as an `MLDictionaryFeatureProvider`.
fn provider(
    inputs: &[(String, InputValue)],
) -> Result<Retained<MLDictionaryFeatureProvider>, CoreMlError> {
    let names: Vec<Retained<NSString>> =
        inputs.iter().map(|(n, _)| NSString::from_str(n)).collect();
    let mut objects: Vec<Retained<AnyObject>> = Vec::new();
    for (_, v) in inputs {
        let value = match v {
            InputValue::MultiArray {
                shape,
                dtype,
                bytes,
            } => multiarray_value(shape, *dtype, bytes)?,
            InputValue::Image {
                width,
                height,
                rgb_planes,
            } => image_value(*width, *height, rgb_planes)?,
        };
        objects.push(Retained::into_super(Retained::into_super(value)));
    }
    let keys: Vec<&NSString> = names.iter().map(|n| &**n).collect();
    let dict = NSDictionary::<NSString, AnyObject>::from_retained_objects(&keys, &objects);
    // SAFETY: every value is an MLFeatureValue, which the initializer takes as is.
    unsafe {
        MLDictionaryFeatureProvider::initWithDictionary_error(
            MLDictionaryFeatureProvider::alloc(),
            &dict,
        )
    }
    .map_err(|e| apple("take the inputs", &e))
}

fn multiarray_value(
    shape: &[usize],
    dtype: ElementType,
    bytes: &[u8],
) -> Result<Retained<MLFeatureValue>, CoreMlError> {
    let dims: Vec<Retained<NSNumber>> = shape.iter().map(|d| NSNumber::new_usize(*d)).collect();
    let dims = NSArray::from_retained_slice(&dims);
    // SAFETY: `dims` holds positive sizes and the data type is one Core ML declares.
    let array = unsafe {
        MLMultiArray::initWithShape_dataType_error(
            MLMultiArray::alloc(),
            &dims,
            MLMultiArrayDataType(dtype.core_ml_raw()),
        )
    }
    .map_err(|e| apple("create an input multiarray", &e))?;
    let fits = RefCell::new(false);
    let block = StackBlock::new(|ptr: NonNull<c_void>, size: isize, _strides| {
        // A fresh array is contiguous and row-major ("first-major" in Apple's words), so
        // our row-major bytes go in one copy when the sizes agree.
        if size as usize == bytes.len() {
            // SAFETY: Core ML hands a writable buffer of `size` bytes, valid for the block's
            // duration; `bytes` has exactly `size` bytes and does not overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    ptr.as_ptr().cast::<u8>(),
                    bytes.len(),
                )
            };
            *fits.borrow_mut() = true;
        }
    });
    // SAFETY: the handler runs synchronously, before this call returns, on this thread.
    unsafe { array.getMutableBytesWithHandler(&block) };
    if !fits.into_inner() {
        return Err(CoreMlError::Input(format!(
            "an input multiarray {shape:?} of {} has another size than its {} bytes",
            dtype.name(),
            bytes.len()
        )));
    }
    // SAFETY: `array` is a valid, initialised multiarray.
    Ok(unsafe { MLFeatureValue::featureValueWithMultiArray(&array) })
}

fn image_value(
    width: usize,
    height: usize,
    planes: &[u8],
) -> Result<Retained<MLFeatureValue>, CoreMlError> {
    let mut raw: *mut CVPixelBuffer = std::ptr::null_mut();
    // SAFETY: `raw` is a valid out-pointer; no attributes dictionary is passed.
    let status = unsafe {
        CVPixelBufferCreate(
            None,
            width,
            height,
            kCVPixelFormatType_32BGRA,
            None,
            NonNull::from(&mut raw),
        )
    };
    let buffer = match NonNull::new(raw) {
        // SAFETY: CVPixelBufferCreate returned a +1 reference on success ("Create" rule),
        // which CFRetained takes over and releases on drop.
        Some(p) if status == kCVReturnSuccess => unsafe { CFRetained::from_raw(p) },
        _ => {
            return Err(CoreMlError::Input(format!(
                "CVPixelBufferCreate failed (CVReturn {status})"
            )))
        }
    };
    // SAFETY: the buffer is ours alone; locked before its memory is touched.
    if unsafe { CVPixelBufferLockBaseAddress(&buffer, CVPixelBufferLockFlags(0)) }
        != kCVReturnSuccess
    {
        return Err(CoreMlError::Input(
            "could not lock the input pixel buffer".into(),
        ));
    }
    let rows = CVPixelBufferGetBytesPerRow(&buffer);
    let base = CVPixelBufferGetBaseAddress(&buffer).cast::<u8>();
    let written = if base.is_null() {
        Err(CoreMlError::Input(
            "the input pixel buffer has no memory".into(),
        ))
    } else {
        // SAFETY: while locked, a 32BGRA buffer of `height` rows has `rows * height`
        // writable bytes at `base`.
        let dst = unsafe { std::slice::from_raw_parts_mut(base, rows * height) };
        values::write_bgra(planes, width, height, dst, rows)
    };
    // SAFETY: paired with the lock above.
    unsafe { CVPixelBufferUnlockBaseAddress(&buffer, CVPixelBufferLockFlags(0)) };
    written?;
    // SAFETY: the buffer is valid and filled; Core ML retains it.
    Ok(unsafe { MLFeatureValue::featureValueWithPixelBuffer(&buffer) })
}

fn read_outputs(
    out: &ProtocolObject<dyn MLFeatureProvider>,
) -> Result<Vec<(String, OutputValue)>, CoreMlError> {
    let mut outputs = Vec::new();
    // SAFETY: a prediction's provider is immutable and only this thread reads it.
    let names = unsafe { out.featureNames() }.to_vec();
    for name in names {
        // SAFETY: as above; `name` is one of its feature names.
        let Some(v) = (unsafe { out.featureValueForName(&name) }) else {
            continue;
        };
        if let Some(value) = read_value(&v)? {
            outputs.push((name.to_string(), value));
        }
    }
    Ok(outputs)
}

fn read_value(v: &MLFeatureValue) -> Result<Option<OutputValue>, CoreMlError> {
    // SAFETY: feature values are immutable; each accessor matches the value's type.
    unsafe {
        let ty = v.r#type();
        if ty == MLFeatureType::MultiArray {
            return v.multiArrayValue().map(|a| read_multiarray(&a)).transpose();
        }
        if ty == MLFeatureType::Dictionary {
            let d = v.dictionaryValue();
            let (keys, probs) = d.to_vecs();
            let pairs = keys
                .iter()
                .zip(&probs)
                .map(|(k, p)| (label_text(k), p.as_f64()))
                .collect();
            return Ok(Some(OutputValue::Probabilities(pairs)));
        }
        Ok(match ty {
            MLFeatureType::String => Some(OutputValue::Label(v.stringValue().to_string())),
            MLFeatureType::Double => Some(OutputValue::Number(v.doubleValue())),
            MLFeatureType::Int64 => Some(OutputValue::Number(v.int64Value() as f64)),
            _ => None,
        })
    }
}

fn read_multiarray(a: &MLMultiArray) -> Result<OutputValue, CoreMlError> {
    // SAFETY: an output multiarray is not mutated after the prediction returns.
    let (shape, strides, raw_type) = unsafe {
        let shape: Vec<usize> = a.shape().iter().map(|n| n.as_usize()).collect();
        let strides: Vec<usize> = a.strides().iter().map(|n| n.as_usize()).collect();
        (shape, strides, a.dataType().0)
    };
    let dtype = ElementType::from_core_ml(raw_type).ok_or_else(|| {
        CoreMlError::Output(format!("output multiarray of data type {raw_type:#x}"))
    })?;
    let copy = RefCell::new(Vec::new());
    let block = StackBlock::new(|ptr: NonNull<c_void>, size: isize| {
        // SAFETY: Core ML hands a readable buffer of `size` bytes, valid during the block.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), size as usize) };
        copy.borrow_mut().extend_from_slice(bytes);
    });
    // SAFETY: the handler runs synchronously on this thread before the call returns.
    unsafe { a.getBytesWithHandler(&block) };
    let data = values::decode_multiarray(&copy.into_inner(), dtype, &shape, &strides)?;
    Ok(OutputValue::MultiArray { shape, data })
}

/// A loaded plan handed from Core ML's completion queue to our thread.
struct LoadedPlan(Retained<MLComputePlan>);
// SAFETY: the completion handler only moves the plan into the channel and never touches
// it again; from then on only the receiving thread uses it.
unsafe impl Send for LoadedPlan {}

fn load_plan(url: &NSURL, config: &MLModelConfiguration) -> Result<LoadedPlan, CoreMlError> {
    let (tx, rx) = mpsc::channel::<Result<LoadedPlan, CoreMlError>>();
    let handler = RcBlock::new(move |plan: *mut MLComputePlan, error: *mut NSError| {
        // SAFETY: Core ML passes a valid plan or a valid error, alive during the call;
        // retaining keeps the plan beyond it.
        let result = match unsafe { Retained::retain(plan) } {
            Some(p) => Ok(LoadedPlan(p)),
            None => Err(match unsafe { error.as_ref() } {
                Some(e) => apple("load the compute plan", e),
                None => {
                    CoreMlError::Output("Core ML gave neither a compute plan nor an error".into())
                }
            }),
        };
        let _ = tx.send(result);
    });
    // SAFETY: `url` and `config` are valid; the handler is retained by Core ML until called.
    unsafe {
        MLComputePlan::loadContentsOfURL_configuration_completionHandler(url, config, &handler)
    };
    rx.recv_timeout(PLAN_TIMEOUT).map_err(|_| {
        CoreMlError::Output(format!(
            "the compute plan did not load within {PLAN_TIMEOUT:?}"
        ))
    })?
}

/// The block's ops and those of nested blocks, with their devices and cost.
fn plan_ops(
    plan: &MLComputePlan,
    block: &MLModelStructureProgramBlock,
    ops: &mut Vec<PlanOpRecord>,
) {
    // SAFETY: the loaded plan and its structure are read on this thread only.
    unsafe {
        for op in block.operations().iter() {
            let usage = plan.computeDeviceUsageForMLProgramOperation(&op);
            ops.push(PlanOpRecord {
                output: op
                    .outputs()
                    .firstObject()
                    .map(|o| o.name().to_string())
                    .unwrap_or_default(),
                operator: op.operatorName().to_string(),
                preferred: usage
                    .as_ref()
                    .map(|u| device(&u.preferredComputeDevice()))
                    .unwrap_or(Device::Unknown),
                supported: usage.map(|u| {
                    u.supportedComputeDevices()
                        .iter()
                        .map(|d| device(&d))
                        .collect()
                }),
                cost: plan
                    .estimatedCostOfMLProgramOperation(&op)
                    .map(|c| c.weight()),
            });
            for nested in op.blocks().iter() {
                plan_ops(plan, &nested, ops);
            }
        }
    }
}

fn device(d: &ProtocolObject<dyn MLComputeDeviceProtocol>) -> Device {
    if d.isKindOfClass(MLCPUComputeDevice::class()) {
        Device::Cpu
    } else if d.isKindOfClass(MLGPUComputeDevice::class()) {
        Device::Gpu
    } else if d.isKindOfClass(MLNeuralEngineComputeDevice::class()) {
        Device::Ane
    } else {
        Device::Unknown
    }
}

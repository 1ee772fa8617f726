//! The per-unit loop and the comparison report over a recorded engine: what Core ML gave
//! for a two-example classifier on each setting, replayed without a Mac.

use std::cell::Cell;
use std::collections::BTreeMap;

use super::report::{build, Baseline};
use super::*;
use crate::bench::Device;
use crate::coreml::verify::{CompressedRules, Rule, Thresholds};
use crate::coreml::{Precision, VerifyReport};

/// Replays outputs: logits = first input value per example, scaled per setting; `ane`
/// fails to load, as an fp32 package or an unsupported op can make it.
struct Recorded {
    predictions: Cell<usize>,
}

impl Engine for Recorded {
    type Model = ComputeUnits;

    fn load(&self, units: ComputeUnits) -> Result<ComputeUnits, CoreMlError> {
        if units == ComputeUnits::Ane {
            return Err(CoreMlError::Apple {
                action: "load the model on ane".into(),
                domain: "com.apple.CoreML".into(),
                code: 0,
                message: "recorded failure".into(),
            });
        }
        Ok(units)
    }

    fn interface(&self, _: &ComputeUnits) -> Result<ModelInterface, CoreMlError> {
        Ok(ModelInterface {
            inputs: vec![FeatureSpec {
                name: "pixel_values".into(),
                kind: FeatureKind::Multiarray,
                shape: vec![1, 2],
                dtype: Some(ElementType::F16),
            }],
            outputs: Vec::new(),
            class_labels: Some(vec!["cat".into(), "dog".into()]),
        })
    }

    fn predict(
        &self,
        units: &ComputeUnits,
        inputs: &[(String, InputValue)],
    ) -> Result<Vec<(String, OutputValue)>, CoreMlError> {
        self.predictions.set(self.predictions.get() + 1);
        let InputValue::MultiArray { bytes, dtype, .. } = &inputs[0].1 else {
            panic!("multiarray input expected")
        };
        let x = values::decode_multiarray(bytes, *dtype, &[2], &[1]).unwrap();
        // gpu drifts by 0.5%: within fp16 thresholds.
        let scale = if *units == ComputeUnits::Gpu {
            1.005
        } else {
            1.0
        };
        Ok(vec![
            ("classLabel".into(), OutputValue::Label("dog".into())),
            (
                "classLabel_probs".into(),
                OutputValue::Probabilities(vec![
                    ("dog".into(), f64::from(x[1] * scale)),
                    ("cat".into(), f64::from(x[0])),
                ]),
            ),
        ])
    }

    fn plan(&self, units: ComputeUnits) -> Result<Option<Vec<PlanOpRecord>>, CoreMlError> {
        if units == ComputeUnits::Gpu {
            return Ok(None);
        }
        Ok(Some(vec![PlanOpRecord {
            output: "classLabel_probs".into(),
            operator: "softmax".into(),
            preferred: Device::Cpu,
            supported: Some(vec![Device::Cpu]),
            cost: Some(1.0),
        }]))
    }
}

fn inputs() -> Vec<(String, Tensor)> {
    // Two examples; values already probabilities so outputs equal inputs.
    let t = Tensor::new(vec![2, 2], vec![0.25, 0.75, 0.875, 0.125]).unwrap();
    vec![("pixel_values".into(), t)]
}

#[test]
fn every_setting_runs_every_example_and_failures_stay_in_their_row() {
    let engine = Recorded {
        predictions: Cell::new(0),
    };
    let units = [ComputeUnits::Cpu, ComputeUnits::Gpu, ComputeUnits::Ane];
    let runs = run_units_with(&engine, &inputs(), &units);
    assert_eq!(
        engine.predictions.get(),
        4,
        "2 examples x 2 settings that load"
    );
    assert_eq!(
        runs[0].outputs["classLabel_probs"],
        vec![0.25, 0.75, 0.875, 0.125]
    );
    assert!(runs[0].plan.is_some() && runs[1].plan.is_none());
    assert!(runs[1].plan_note.as_deref().unwrap().contains("14.4"));
    assert!(runs[2]
        .error
        .as_deref()
        .unwrap()
        .contains("recorded failure"));
    assert!(runs[2].outputs.is_empty());
}

fn interpreter_report(outputs: Vec<crate::coreml::verify::OutputCheck>) -> VerifyReport {
    VerifyReport {
        package: "m.mlpackage".into(),
        precision: Precision::Fp16,
        examples: 2,
        thresholds: Thresholds::for_precision(Precision::Fp16),
        rule: Rule::Thresholds,
        compression: None,
        accuracy: None,
        pass: true,
        outputs,
        neural_engine: None,
    }
}

#[test]
fn the_report_compares_with_model_interpreter_and_cpu_and_fails_a_unit_that_did_not_run() {
    let engine = Recorded {
        predictions: Cell::new(0),
    };
    let units = [ComputeUnits::Cpu, ComputeUnits::Gpu, ComputeUnits::Ane];
    let runs = run_units_with(&engine, &inputs(), &units);
    // The model's logits whose softmax the probabilities are compared with.
    let logits = [0.25f32, 0.75, 0.875, 0.125].map(f32::ln).to_vec();
    let reference = vec![(
        "logits".to_string(),
        Tensor::new(vec![2, 2], logits).unwrap(),
    )];
    let mut interp = BTreeMap::new();
    interp.insert(
        "classLabel_probs".to_string(),
        vec![0.25, 0.75, 0.875, 0.125],
    );
    let no_accuracy = |_: &BTreeMap<String, Vec<f32>>| None;
    let base = Baseline {
        interpreter: interpreter_report(Vec::new()),
        interpreter_outputs: &interp,
        reference: &reference,
        labels: None,
        compressed: CompressedRules::default(),
        accuracy: &no_accuracy,
    };
    let r = build(base, &runs);
    assert!(r.units[0].pass && r.units[0].against_cpu.is_none());
    let gpu = &r.units[1];
    assert!(gpu.pass, "{gpu:?}");
    let vs_cpu = &gpu.against_cpu.as_ref().unwrap()[0];
    assert!(
        vs_cpu.max_abs_error > 0.003 && vs_cpu.max_abs_error < 0.005,
        "{vs_cpu:?}"
    );
    assert_eq!(gpu.against_interpreter[0].output, "classLabel_probs");
    assert!(!r.units[2].pass, "a setting that failed to load fails");
    assert!(!r.pass);
    let table = r.to_string();
    assert!(table.contains("gpu   cpu"), "{table}");
    assert!(
        table.contains("ane   FAIL: Core ML could not load the model on ane"),
        "{table}"
    );
    assert!(table.contains("plan cpu  1 ops: cpu 1"), "{table}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["units"][1]["compute_units"], "gpu");
    assert_eq!(json["runtime"], "coreml");
}

#[test]
fn inputs_are_checked_against_the_model_description() {
    let interface = Recorded {
        predictions: Cell::new(0),
    }
    .interface(&ComputeUnits::Cpu)
    .unwrap();
    let wrong = vec![(
        "pixel_values".to_string(),
        Tensor::new(vec![1, 3], vec![0.0; 3]).unwrap(),
    )];
    assert!(pack_inputs(&interface, &wrong, 0).is_err());
    let missing = vec![(
        "image".to_string(),
        Tensor::new(vec![1, 2], vec![0.0; 2]).unwrap(),
    )];
    let err = pack_inputs(&interface, &missing, 0).unwrap_err();
    assert!(err.to_string().contains("pixel_values"), "{err}");
    let image = ModelInterface {
        inputs: vec![FeatureSpec {
            name: "image".into(),
            kind: FeatureKind::Image,
            shape: vec![1, 3, 1, 2],
            dtype: None,
        }],
        ..Default::default()
    };
    let planes = vec![(
        "image".to_string(),
        Tensor::new(vec![1, 3, 1, 2], vec![9.6; 6]).unwrap(),
    )];
    match &pack_inputs(&image, &planes, 0).unwrap()[0].1 {
        InputValue::Image {
            width,
            height,
            rgb_planes,
        } => {
            assert_eq!((*width, *height), (2, 1));
            assert_eq!(rgb_planes, &vec![10u8; 6]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unit_lists_parse_in_order_and_off_macos_core_ml_says_it_needs_a_mac() {
    let u = parse_units("ane, cpu,ANE,all").unwrap();
    assert_eq!(u, [ComputeUnits::Ane, ComputeUnits::Cpu, ComputeUnits::All]);
    assert!(parse_units("npu").unwrap_err().to_string().contains("npu"));
    assert!(parse_units(" , ").is_err());
    if !cfg!(target_os = "macos") {
        let e = check_supported().unwrap_err();
        assert!(e.to_string().contains("needs macOS"), "{e}");
        assert!(availability().contains("needs macOS"));
    }
}

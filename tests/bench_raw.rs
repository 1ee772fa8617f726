//! The Rust side of the benchmark: reports computed from the harness's raw files
//! (tests/data/bench/raw-*.json: one full run, one with a failed unit, one from a macOS
//! without compute plans), their statistics, agreement and plan summaries; the
//! computed reports are kept as tests/data/bench/report-from-raw-*.json, which
//! scripts/check_bench_schema.py validates against the report schema. The raw types'
//! keys are checked against schema/bench-raw.schema.json here (the Swift encoder's by
//! scripts/check_swift.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_coreml_pipeline::bench::raw::{
    RawBatch, RawOutput, RawOutputKind, RawPlan, RawRun, RawSettings, RawUnit,
};
use mlx_coreml_pipeline::bench::{
    self, AgreementBaseline, BenchReport, ComputeUnits, Device, InputSource, LoadTimes,
    ReferenceFile,
};
use mlx_coreml_pipeline::coreml_runtime::PlanOpRecord;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bench")
        .join(name)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn report(raw: &str) -> BenchReport {
    let raw = bench::read_raw(&data(raw)).expect("raw file");
    let reference = raw
        .settings
        .reference
        .as_ref()
        .map(|_| ReferenceFile::read(&data("reference-digits.json")).expect("reference"));
    bench::assemble(&raw, reference.as_ref()).expect("report")
}

/// The computed report equals the one kept beside the raw file (`BLESS=1` rewrites it).
fn matches_kept(report: &BenchReport, kept: &str) {
    let text = serde_json::to_string_pretty(report).unwrap() + "\n";
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(data(kept), &text).unwrap();
    }
    let kept_text = std::fs::read_to_string(data(kept)).expect("kept report (BLESS=1 writes it)");
    assert_eq!(text, kept_text, "{kept} differs from the computed report");
    // And the kept file reads back as a valid schema-v1 report.
    bench::read_report(&data(kept)).expect("kept report is valid");
}

#[test]
fn a_full_run_gives_statistics_throughput_plans_and_agreement() {
    let r = report("raw-full.json");
    assert_eq!(r.schema_version, bench::SCHEMA_VERSION);
    assert_eq!(r.settings.input_source, InputSource::Reference);
    let cpu = r.unit(ComputeUnits::Cpu).unwrap();
    let l = cpu.latency.unwrap();
    // numpy: mean, std(ddof=1), percentile([50, 90, 99]) of the cpu samples.
    assert_eq!(l.count, 20);
    assert!(close(l.mean_ms, 2.4482) && (l.std_ms - 0.080436702803476).abs() < 1e-12);
    assert!(close(l.p50_ms, 2.439) && close(l.p90_ms, 2.546) && close(l.p99_ms, 2.57705));
    assert!(close(l.min_ms, 2.311) && close(l.max_ms, 2.578));
    assert!(close(cpu.throughput_images_per_s.unwrap(), 1000.0 / 2.4482));
    let b8 = &cpu.batches.as_ref().unwrap()[1];
    assert_eq!((b8.batch_size, b8.iterations), (8, Some(3)));
    assert!((b8.images_per_s.unwrap() - 515.043564101).abs() < 1e-6);
    assert!(
        cpu.agreement_with_cpu.is_none(),
        "cpu is not compared with itself"
    );

    let ane = r.unit(ComputeUnits::Ane).unwrap();
    let vs_ref = ane.agreement_with_reference.as_ref().unwrap();
    assert_eq!(
        (vs_ref.baseline, vs_ref.examples),
        (AgreementBaseline::Reference, 4)
    );
    let logits = &vs_ref.outputs[0];
    assert_eq!((logits.output.as_str(), logits.elements), ("logits", 40));
    assert!((logits.max_abs_diff - 0.0192).abs() < 1e-6, "{logits:?}");
    assert!((logits.baseline_max_abs - 5.8165).abs() < 1e-6);
    assert_eq!(logits.top1_agreement, Some(1.0));
    let vs_cpu = &ane.agreement_with_cpu.as_ref().unwrap().outputs[0];
    assert!((vs_cpu.max_abs_diff - 0.0181).abs() < 1e-6);

    let plan = ane.compute_plan.as_ref().unwrap();
    assert_eq!(plan.op_count, 13);
    let d = plan.ops_by_device;
    assert_eq!((d.cpu, d.gpu, d.ane, d.unknown), (2, 0, 10, 1));
    let off: Vec<_> = plan
        .ops_not_on_ane
        .as_ref()
        .unwrap()
        .iter()
        .map(|o| (o.output.as_str(), o.device))
        .collect();
    assert_eq!(
        off,
        [
            ("image__scaled__", Device::Cpu),
            ("blocks_0_mlp_gelu", Device::Unknown),
            ("logits", Device::Cpu)
        ]
    );
    assert!(r
        .unit(ComputeUnits::Gpu)
        .unwrap()
        .compute_plan
        .as_ref()
        .unwrap()
        .ops_not_on_ane
        .is_none());
    matches_kept(&r, "report-from-raw-full.json");
    // The table and the chart work on a computed report as on a written one.
    assert!(r.to_string().contains("ane"));
    let dir = tempfile::tempdir().unwrap();
    bench::render_chart(&r, &dir.path().join("c.png")).expect("chart");
}

#[test]
fn a_failed_unit_keeps_its_error_and_a_failed_batch_its_own() {
    let r = report("raw-failed-unit.json");
    let ane = r.unit(ComputeUnits::Ane).unwrap();
    assert!(ane.error.as_deref().unwrap().contains("execution plan"));
    assert!(ane.latency.is_none() && ane.batches.is_none());
    let gpu = r.unit(ComputeUnits::Gpu).unwrap();
    let batches = gpu.batches.as_ref().unwrap();
    assert!(batches[0].images_per_s.is_some());
    assert!(batches[1].error.as_deref().unwrap().contains("allocate"));
    assert_eq!(gpu.best_batch().map(|(s, _)| s), Some(1));
    assert_eq!(gpu.agreement_with_cpu.as_ref().unwrap().examples, 1);
    assert!(
        gpu.agreement_with_reference.is_none(),
        "synthetic input: no reference"
    );
    matches_kept(&r, "report-from-raw-failed-unit.json");
}

#[test]
fn without_compute_plans_the_rest_is_reported_and_dictionaries_compare_by_label() {
    let r = report("raw-no-plan.json");
    assert!(r.machine.os_version.contains("13.6"));
    assert!(r.units.iter().all(|u| u.compute_plan.is_none()));
    let all = r.unit(ComputeUnits::All).unwrap();
    let a = all.agreement_with_cpu.as_ref().unwrap();
    // The predicted label (a string) is left out; the probabilities are compared.
    let names: Vec<_> = a.outputs.iter().map(|o| o.output.as_str()).collect();
    assert_eq!(names, ["classLabel_probs"]);
    assert_eq!(a.outputs[0].top1_agreement, Some(1.0));
    assert!(a.outputs[0].max_abs_diff < 0.05, "{:?}", a.outputs[0]);
    assert_eq!(r.settings.images.as_ref().unwrap().len(), 2);
    matches_kept(&r, "report-from-raw-no-plan.json");
}

#[test]
fn other_files_and_runs_without_any_measured_unit_are_refused() {
    let err = bench::read_raw(&data("report-full.json")).unwrap_err();
    assert!(err.to_string().contains("coreml-bench-raw"), "{err}");
    let mut raw = bench::read_raw(&data("raw-failed-unit.json")).unwrap();
    for u in &mut raw.units {
        u.error.get_or_insert_with(|| "recorded".into());
    }
    let err = bench::assemble(&raw, None).unwrap_err();
    assert!(
        err.contains("no compute-unit setting could be measured"),
        "{err}"
    );
    // A unit with NaN outputs is reported as failed, the others still are measured.
    let mut raw = bench::read_raw(&data("raw-full.json")).unwrap();
    let out = raw.units[1].outputs.as_mut().unwrap();
    out[0].get_mut("logits").unwrap().data.as_mut().unwrap()[3] = f32::NAN;
    let r = bench::assemble(&raw, None).unwrap();
    assert!(r.units[1].error.as_deref().unwrap().contains("non-finite"));
    assert!(r.units[2].latency.is_some());
    // Both kinds load through load_report.
    assert!(bench::load_report(&data("raw-full.json")).is_ok());
    assert!(bench::load_report(&data("report-full.json")).is_ok());
}

/// A raw run with every optional field set, so its JSON shows every key the Rust types
/// know.
fn everything() -> RawRun {
    let mut raw = bench::read_raw(&data("raw-full.json")).unwrap();
    raw.settings = RawSettings {
        images: Some(vec!["a.png".into()]),
        ..raw.settings
    };
    raw.model.inputs[0].data_type = Some("float16".into());
    raw.machine.hardware_model = Some("Mac14,12".into());
    let value = |kind| RawOutput {
        kind,
        shape: Some(vec![1]),
        data: Some(vec![1.0]),
        labels: Some(vec!["a".into()]),
        string: Some("a".into()),
    };
    raw.units = vec![RawUnit {
        compute_units: ComputeUnits::Ane,
        error: Some("e".into()),
        load: Some(LoadTimes {
            cold_ms: 1.0,
            warm_ms: 1.0,
        }),
        first_prediction_ms: Some(1.0),
        latencies_ms: Some(vec![1.0]),
        batches: Some(vec![RawBatch {
            batch_size: 1,
            calls_ms: Some(vec![1.0]),
            stacked: Some(true),
            error: Some("e".into()),
        }]),
        compute_plan: Some(RawPlan {
            ops: vec![PlanOpRecord {
                output: "x".into(),
                operator: "add".into(),
                preferred: Device::Ane,
                supported: Some(vec![Device::Ane]),
                cost: Some(0.5),
            }],
        }),
        compute_plan_error: Some("e".into()),
        outputs: Some(vec![BTreeMap::from([(
            "x".to_string(),
            value(RawOutputKind::Multiarray),
        )])]),
    }];
    raw
}

/// Follows `$ref`s within the schema.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut n = root;
            for part in r.trim_start_matches("#/").split('/') {
                n = &n[part];
            }
            resolve(root, n)
        }
        None => node,
    }
}

/// Every object in `value` has exactly the schema's properties (the value sets them all).
fn same_keys(root: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(root, schema);
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let ours: Vec<&String> = map.keys().collect();
                let theirs: Vec<&String> = props.keys().collect();
                let (mut a, mut b) = (ours.clone(), theirs.clone());
                a.sort();
                b.sort();
                if a != b {
                    problems.push(format!("{at}: Rust writes {a:?}, the schema has {b:?}"));
                }
                for (k, v) in map {
                    if let Some(s) = props.get(k) {
                        same_keys(root, s, v, &format!("{at}/{k}"), problems);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (k, v) in map {
                    same_keys(root, s, v, &format!("{at}/{k}"), problems);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    same_keys(root, s, v, &format!("{at}/{i}"), problems);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn the_rust_raw_types_have_exactly_the_raw_schemas_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/bench-raw.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let value = serde_json::to_value(everything()).unwrap();
    let mut problems = Vec::new();
    same_keys(&schema, &schema, &value, "#", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // And the three recorded files use no key the Rust reader does not know
    // (deny_unknown_fields), so reading them above proves the other direction.
    for name in ["raw-full.json", "raw-failed-unit.json", "raw-no-plan.json"] {
        bench::read_raw(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

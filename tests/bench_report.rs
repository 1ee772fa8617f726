//! The coreml-bench report reader, table and chart, on the sample reports in
//! tests/data/bench (which scripts/check_bench_schema.py validates against the schema).

use std::path::{Path, PathBuf};

use mlx_coreml_pipeline::bench::{
    self, AgreementBaseline, BenchError, BenchOptions, ComputeUnits, Device, InputSource,
    ReferenceFile, ReferenceTensor, Series, ThermalState,
};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bench")
        .join(name)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn reads_the_full_report() {
    let r = bench::read_report(&sample("report-full.json")).expect("full report");
    assert_eq!(r.schema_version, bench::SCHEMA_VERSION);
    assert_eq!(r.machine.chip, "Apple M2 Pro");
    assert_eq!(r.machine.thermal_state_end, ThermalState::Fair);
    assert_eq!(r.model.metadata["precision"], "fp16");
    assert_eq!(r.settings.input_source, InputSource::Reference);
    let order: Vec<ComputeUnits> = r.units.iter().map(|u| u.compute_units).collect();
    assert_eq!(order, ComputeUnits::ALL);

    let ane = r.unit(ComputeUnits::Ane).expect("ane");
    let l = ane.latency.expect("latency");
    assert_eq!(l.count, 200);
    assert!(close(l.p50_ms, 3.05) && close(l.p90_ms, 3.4));
    let (size, images_per_s) = ane.best_batch().expect("batches");
    assert_eq!(size, 8);
    // The sample rounds images/s to three decimals.
    assert!((images_per_s - 8000.0 / 19.6).abs() < 1e-3);
    let plan = ane.compute_plan.as_ref().expect("plan");
    assert_eq!(plan.ops_by_device.ane, 409);
    let off = plan.ops_not_on_ane.as_ref().expect("ops off the ANE");
    assert_eq!(off[2].device, Device::Unknown);
    let cpu_agreement = ane.agreement_with_cpu.as_ref().expect("vs cpu");
    assert_eq!(cpu_agreement.baseline, AgreementBaseline::Cpu);
    assert_eq!(cpu_agreement.outputs[0].top1_agreement, Some(1.0));
    assert!(r
        .unit(ComputeUnits::Cpu)
        .expect("cpu")
        .agreement_with_cpu
        .is_none());
    let rel = ane
        .agreement_with_reference
        .as_ref()
        .expect("vs reference")
        .outputs[0]
        .relative_error();
    assert!(close(rel, 0.0402 / 9.81));
}

#[test]
fn reads_minimal_and_failed_reports() {
    let m = bench::read_report(&sample("report-minimal.json")).expect("minimal");
    assert_eq!(m.units.len(), 1);
    assert!(m.machine.hardware_model.is_none());
    assert!(m.units[0].compute_plan.is_none());
    assert_eq!(m.units[0].best_batch(), None);

    let f = bench::read_report(&sample("report-failed-unit.json")).expect("failed unit");
    let ane = f.unit(ComputeUnits::Ane).expect("ane");
    assert!(ane
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("Neural Engine"));
    assert!(ane.latency.is_none());
    let cpu = f.unit(ComputeUnits::Cpu).expect("cpu");
    // Batch 8 failed, so the best measured batch is 1.
    assert_eq!(cpu.best_batch().map(|b| b.0), Some(1));
}

#[test]
fn table_lists_every_unit() {
    let r = bench::read_report(&sample("report-full.json")).expect("full");
    let text = r.to_string();
    println!("{text}");
    for needle in [
        "model    runs/vit-b16/vit-b16-fp16.mlpackage (precision fp16",
        "machine  Apple M2 Pro (Mac14,12), Version 14.5 (Build 23F79), thermal nominal -> fair",
        "input reference (4 examples)",
        "latency (ms)",
        "batch throughput",
        "compute plan",
        "logits (linear, cpu)",
        "agreement",
    ] {
        assert!(text.contains(needle), "missing {needle:?}");
    }
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("latency"))
        .skip(2)
        .take(4)
        .collect();
    assert_eq!(rows.len(), 4);
    for (row, unit) in rows.iter().zip(["cpu", "gpu", "ane", "all"]) {
        assert!(row.starts_with(unit), "{row}");
    }
    assert!(
        rows[2].contains("3.05") && rows[2].contains("3.40"),
        "{}",
        rows[2]
    );

    let failed = bench::read_report(&sample("report-failed-unit.json"))
        .expect("failed")
        .to_string();
    println!("{failed}");
    assert!(failed.contains("\nfailed\nane   loading with cpuAndNeuralEngine failed"));
    assert!(failed.contains("cpu batch 8: predictions(fromBatch:) failed"));
}

#[test]
fn chart_bars_are_proportional_to_the_values() {
    let r = bench::read_report(&sample("report-full.json")).expect("full");
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("full.bench.png");
    let chart = bench::render_chart(&r, &png).expect("chart");
    println!("{chart}");

    // BENCH_CHART_OUT=DIR keeps a copy to look at.
    if let Some(out) = std::env::var_os("BENCH_CHART_OUT") {
        std::fs::copy(&png, Path::new(&out).join("full.bench.png")).expect("copy chart");
    }
    let img = image::open(&png).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (chart.width, chart.height));
    assert_eq!(
        img.dimensions(),
        (bench::chart::WIDTH, bench::chart::HEIGHT)
    );
    // 4 latency bars, 4 single + 4 batch throughput bars.
    assert_eq!(chart.bars.len(), 12);

    for b in &chart.bars {
        let p = &chart.panels[b.panel];
        // Measure the bar's height from the pixels: the run of its colour up from the
        // baseline, one column in from its left edge (clear of the whisker).
        let x = b.x0 + 1;
        let colour = image::Rgb(b.colour);
        let measured = (0..p.baseline)
            .rev()
            .take_while(|y| *img.get_pixel(x, *y) == colour)
            .count() as u32;
        assert_eq!(measured, b.height, "{:?} {:?}", b.units, b.series);
        let expected = b.value / p.axis_max * f64::from(p.baseline - p.top);
        assert!((f64::from(measured) - expected).abs() <= 0.5, "{b:?}");
    }

    // Different units, different heights, in proportion to their values.
    let latency: Vec<_> = chart
        .bars
        .iter()
        .filter(|b| b.series == Series::LatencyP50)
        .collect();
    let cpu = latency
        .iter()
        .find(|b| b.units == ComputeUnits::Cpu)
        .expect("cpu");
    let ane = latency
        .iter()
        .find(|b| b.units == ComputeUnits::Ane)
        .expect("ane");
    assert!(cpu.height > 4 * ane.height);
    let ratio = f64::from(cpu.height) / f64::from(ane.height);
    assert!(
        (ratio - 24.02 / 3.05).abs() / (24.02 / 3.05) < 0.05,
        "ratio {ratio}"
    );

    // The ANE latency bar has its p90 whisker: dark pixels above the bar's middle.
    let p = &chart.panels[0];
    let mid = (ane.x0 + ane.x1) / 2;
    let above = p.baseline - ane.height - 1;
    assert_eq!(*img.get_pixel(mid, above), image::Rgb([30, 30, 30]));

    // Throughput runs the other way: the ANE bar is the tallest single-prediction bar.
    let single: Vec<_> = chart
        .bars
        .iter()
        .filter(|b| b.series == Series::Throughput)
        .collect();
    let tallest = single.iter().max_by_key(|b| b.height).expect("bars");
    assert_eq!(tallest.units, ComputeUnits::Ane);
    // Batch bars are lighter shades of the same colour.
    let batch = chart
        .bars
        .iter()
        .find(|b| b.series == Series::BatchThroughput(8) && b.units == ComputeUnits::Ane)
        .expect("ane batch 8");
    assert_ne!(batch.colour, tallest.colour);
    assert!(batch
        .colour
        .iter()
        .zip(tallest.colour)
        .all(|(l, d)| *l >= d));

    let legend = chart.to_string();
    assert!(legend.contains("full.bench.svg"), "{legend}");
}

#[test]
fn chart_of_a_report_with_a_failed_unit() {
    let r = bench::read_report(&sample("report-failed-unit.json")).expect("failed");
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = bench::render_chart(&r, &dir.path().join("f.png")).expect("chart");
    assert_eq!(chart.failed, vec![ComputeUnits::Ane]);
    assert!(chart.bars.iter().all(|b| b.units == ComputeUnits::Cpu));
    assert!(chart.to_string().contains("no bars (failed): ane"));
}

#[test]
fn rejects_another_schema_version() {
    let err = bench::read_report(&sample("invalid-schema-version.json")).expect_err("version 2");
    assert!(
        matches!(err, BenchError::UnsupportedVersion { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("schema_version 2 is not supported"));
    assert!(msg.contains("reads version 1"));
}

#[test]
fn rejects_malformed_reports() {
    let truncated = bench::read_report(&sample("invalid-truncated.json")).expect_err("truncated");
    assert!(
        matches!(truncated, BenchError::Json { .. }),
        "{truncated:?}"
    );
    let msg = truncated.to_string();
    println!("{msg}");
    assert!(msg.contains("invalid-truncated.json") && msg.contains("line"));

    let missing = bench::read_report(&sample("invalid-missing-latency.json")).expect_err("latency");
    let msg = missing.to_string();
    println!("{msg}");
    assert!(msg.contains("unit `cpu`: `latency` is missing"), "{msg}");

    let p = Path::new("inline.json");
    let no_version = bench::parse_report("{\"units\": []}", p).expect_err("no version");
    assert!(matches!(no_version, BenchError::MissingVersion { .. }));
    let wrong_type = bench::parse_report(
        &std::fs::read_to_string(sample("report-minimal.json"))
            .expect("read")
            .replace("\"iterations\": 1,", "\"iterations\": \"many\","),
        p,
    )
    .expect_err("iterations as string");
    println!("{wrong_type}");
    assert!(wrong_type
        .to_string()
        .contains("invalid type: string \"many\""));

    let unordered = std::fs::read_to_string(sample("report-full.json"))
        .expect("read")
        .replace("\"p90_ms\": 3.4,", "\"p90_ms\": 1.0,");
    let err = bench::parse_report(&unordered, p).expect_err("p90 < p50");
    assert!(err.to_string().contains("not ordered"), "{err}");

    let missing_file = bench::read_report(&sample("no-such-report.json")).expect_err("missing");
    assert!(matches!(missing_file, BenchError::Io { .. }));
}

#[test]
fn report_round_trips_through_serde() {
    let r = bench::read_report(&sample("report-full.json")).expect("full");
    let text = serde_json::to_string_pretty(&r).expect("json");
    let again = bench::parse_report(&text, Path::new("again.json")).expect("re-read");
    assert_eq!(r, again);
}

#[test]
fn reference_files_read_check_and_write() {
    let r = ReferenceFile::read(&sample("reference-logits.json")).expect("reference");
    assert_eq!(r.inputs["pixel_values"].shape, vec![2, 3, 2, 2]);
    assert_eq!(r.outputs["logits"].data.len(), 8);

    let mut f = ReferenceFile::new("test");
    f.inputs.insert(
        "pixel_values".into(),
        ReferenceTensor {
            shape: vec![1, 3, 1, 1],
            data: vec![0.0, 0.5, 1.0],
        },
    );
    f.outputs.insert(
        "classLabel_probs".into(),
        ReferenceTensor {
            shape: vec![1, 2],
            data: vec![0.25, 0.75],
        },
    );
    f.class_labels = Some(vec!["cat".into(), "dog".into()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ref.json");
    f.write(&path).expect("write");
    assert_eq!(ReferenceFile::read(&path).expect("read back"), f);

    f.outputs.insert(
        "logits".into(),
        ReferenceTensor {
            shape: vec![2, 2],
            data: vec![0.0; 4],
        },
    );
    let err = f.write(&path).expect_err("2 examples against 1");
    assert!(
        err.to_string()
            .contains("`logits` has 2 examples, the others 1"),
        "{err}"
    );
}

#[test]
fn bench_arguments_and_platform() {
    let opts = BenchOptions {
        compute_units: vec![ComputeUnits::Ane, ComputeUnits::Cpu],
        images: vec!["-odd.jpg".into(), "b.png".into()],
        reference: Some("ref.json".into()),
        ..BenchOptions::default()
    };
    let pkg = Path::new("runs/m.mlpackage");
    let json = bench::default_json_path(pkg);
    assert_eq!(json, Path::new("runs/m.bench.json"));
    assert_eq!(bench::chart_path_for(&json), Path::new("runs/m.bench.png"));
    let args: Vec<String> = bench::coreml_bench_args(pkg, &json, &opts)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args,
        [
            "runs/m.mlpackage",
            "--compute-units",
            "ane,cpu",
            "--warmup",
            "20",
            "--iterations",
            "200",
            "--batch",
            "1,8",
            "--image=-odd.jpg",
            "--image=b.png",
            "--reference",
            "ref.json",
            "--json",
            "runs/m.bench.json",
        ]
    );

    let bad = BenchOptions {
        iterations: 0,
        ..BenchOptions::default()
    };
    assert!(matches!(
        bench::bench_package(pkg, &bad),
        Err(BenchError::Options(_))
    ));

    if !cfg!(target_os = "macos") {
        let err = bench::bench_package(pkg, &BenchOptions::default()).expect_err("no Core ML");
        let msg = err.to_string();
        println!("{msg}");
        assert!(msg.contains("Core ML needs macOS") && msg.contains("--report FILE.json"));
    }
}

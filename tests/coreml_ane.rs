//! The Neural Engine layout and flexible batches: every fixture family in both layouts,
//! both precisions, both input kinds and every output it has, against the outputs its
//! own library produced; coremltools reads every package back and finds no `linear` and
//! nothing above rank 4 in the ANE ones; the two layouts agree; batch packages give on
//! a batch what they give one input at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_coreml_pipeline::coreml::verify::{run_examples, run_examples_batched};
use mlx_coreml_pipeline::coreml::vit::Layout;
use mlx_coreml_pipeline::coreml::{
    export, verify_against, ExportOptions, InputKind, OutputKind, Precision, Tensor,
};

const DINOV2_CLASSIFIERS: [&str; 2] = ["hf-dinov2-classifier", "hf-dinov2-registers-classifier"];

fn tensor(refs: &std::collections::BTreeMap<String, common::Tensor>, name: &str) -> Tensor {
    let t = &refs[name];
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

struct Exported {
    pkg: PathBuf,
    layout: Layout,
}

/// Both layouts of one fixture against its references; returns the packages.
fn check_fixture(name: &str, tmp: &Path, failures: &mut Vec<String>) -> Vec<Exported> {
    let (_keep, ck) = converted(name);
    let refs = reference(name);
    let pixels = tensor(&refs, "pixel_values");
    let cfg = mlx_coreml_pipeline::checkpoint::read_config(&ck).unwrap();
    let raw = Tensor::new(
        pixels.shape.clone(),
        raw_planes(&pixels.data, &pixels.shape, &cfg.preprocess),
    )
    .unwrap();
    let mut outputs = vec![OutputKind::Features];
    if refs.contains_key("logits") {
        outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
    }
    let mut out = Vec::new();
    for layout in [Layout::Standard, Layout::Ane] {
        for precision in [Precision::Fp32, Precision::Fp16] {
            for &output in &outputs {
                for input in [InputKind::Array, InputKind::Image] {
                    let pkg = tmp.join(format!(
                        "{name}-{layout:?}-{precision}-{output:?}-{input:?}.mlpackage"
                    ));
                    let opts = ExportOptions {
                        precision,
                        input,
                        output: Some(output),
                        layout,
                        ..Default::default()
                    };
                    export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
                    let inputs = match input {
                        InputKind::Array => vec![("pixel_values".to_string(), pixels.clone())],
                        InputKind::Image => vec![("image".to_string(), raw.clone())],
                    };
                    let want = match output {
                        OutputKind::Features => vec![
                            (
                                "last_hidden_state".to_string(),
                                tensor(&refs, "last_hidden_state"),
                            ),
                            ("pooled".to_string(), tensor(&refs, "pooled")),
                        ],
                        _ => vec![("logits".to_string(), tensor(&refs, "logits"))],
                    };
                    match verify_against(&pkg, &inputs, &want, precision) {
                        Ok(r) if r.pass => {}
                        Ok(r) => failures.push(r.to_string()),
                        Err(e) => failures.push(format!("{}: {e}", pkg.display())),
                    }
                    out.push(Exported { pkg, layout });
                }
            }
        }
    }
    out
}

/// coremltools reads the packages back; with `ane`, it also finds no `linear` op and no
/// value above rank 4 in the program it rebuilt.
fn coremltools_reads(pkgs: &[&Path], ane: bool) {
    if !coremltools_available("the Neural Engine layout check") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_coreml.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script);
    if ane {
        cmd.arg("--ane");
    }
    let out = cmd.args(pkgs).output().expect("run check_coreml.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success(),
        "check_coreml.py failed:\n{}\n{}",
        fails.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{} passed, 0 failed", pkgs.len())),
        "{text}"
    );
}

#[test]
fn every_fixture_in_both_layouts_matches_its_library_and_coremltools_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut all = Vec::new();
    for name in FIXTURES.iter().chain(&DINOV2_CLASSIFIERS) {
        all.extend(check_fixture(name, tmp.path(), &mut failures));
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let ane: Vec<&Path> = all
        .iter()
        .filter(|e| e.layout == Layout::Ane)
        .map(|e| e.pkg.as_path())
        .collect();
    let standard: Vec<&Path> = all
        .iter()
        .filter(|e| e.layout == Layout::Standard)
        .map(|e| e.pkg.as_path())
        .collect();
    assert_eq!(ane.len(), standard.len());
    coremltools_reads(&ane, true);
    coremltools_reads(&standard, false);
}

/// The largest |a - b| relative to the largest |b|.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(a, b) / scale
}

#[test]
fn the_two_layouts_agree_within_fp16_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "hf-vit-classifier",
        "timm-vit-reg-swiglu",
        "hf-dinov2-registers-classifier",
    ] {
        let (_keep, ck) = converted(name);
        let refs = reference(name);
        let inputs = vec![("pixel_values".to_string(), tensor(&refs, "pixel_values"))];
        let mut runs = Vec::new();
        for layout in [Layout::Standard, Layout::Ane] {
            let pkg = tmp.path().join(format!("{name}-{layout:?}.mlpackage"));
            let opts = ExportOptions {
                input: InputKind::Array,
                output: Some(OutputKind::Features),
                layout,
                ..Default::default()
            };
            export(&ck, &pkg, &opts).unwrap();
            runs.push(run_examples(&pkg, &inputs).unwrap().outputs);
        }
        for out in ["embedding", "tokens"] {
            let r = relative(&runs[1][out], &runs[0][out]);
            println!("{name} {out}: ane vs standard, relative {r:.2e}");
            // Both are fp16 programs of the same arithmetic in another order.
            assert!(r < 5e-3, "{name} {out}: {r}");
        }
    }
}

#[test]
fn batch_packages_give_on_a_batch_what_they_give_one_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_keep, ck) = converted("hf-vit-classifier");
    // 9 inputs: one batch of 8 and one left over.
    let mut rng = mlx_coreml_pipeline::rng::Rng::new(3);
    let n = 9;
    let x: Vec<f32> = (0..n * 3 * 32 * 32).map(|_| rng.normal()).collect();
    let inputs = vec![(
        "pixel_values".to_string(),
        Tensor::new(vec![n, 3, 32, 32], x).unwrap(),
    )];
    let mut pkgs = Vec::new();
    for layout in [Layout::Standard, Layout::Ane] {
        for output in [OutputKind::Logits, OutputKind::Features] {
            let pkg = tmp.path().join(format!("{layout:?}-{output:?}.mlpackage"));
            let opts = ExportOptions {
                input: InputKind::Array,
                output: Some(output),
                layout,
                batch_sizes: vec![1, 8, 16],
                ..Default::default()
            };
            export(&ck, &pkg, &opts).unwrap();
            let one = run_examples(&pkg, &inputs).unwrap();
            let eight = run_examples_batched(&pkg, &inputs, 8).unwrap();
            assert_eq!(one.examples, n);
            assert_eq!(eight.examples, n);
            for (k, v) in &one.outputs {
                let d = max_abs_diff(v, &eight.outputs[k]);
                println!("{layout:?} {output:?} {k}: batch 8 vs one at a time {d:.1e}");
                assert!(d <= 1e-6, "{k}: {d}");
            }
            // Batch 4 was not listed.
            let Err(err) = run_examples_batched(&pkg, &inputs, 4) else {
                panic!("batch 4 was accepted");
            };
            assert!(err.to_string().contains("[1, 8, 16]"), "{err}");
            pkgs.push(pkg);
        }
    }
    let refs: Vec<&Path> = pkgs.iter().map(PathBuf::as_path).collect();
    coremltools_reads(&refs, false);

    // Image inputs and classifiers stay one at a time, said plainly.
    for (input, output, want) in [
        (
            InputKind::Image,
            OutputKind::Logits,
            "image inputs take one image",
        ),
        (
            InputKind::Array,
            OutputKind::Classifier,
            "a classifier returns one label",
        ),
    ] {
        let opts = ExportOptions {
            input,
            output: Some(output),
            batch_sizes: vec![1, 8],
            ..Default::default()
        };
        let Err(err) = export(&ck, &tmp.path().join("bad.mlpackage"), &opts) else {
            panic!("{input:?} + {output:?} with batches was accepted");
        };
        assert!(err.to_string().contains(want), "{err}");
    }
}

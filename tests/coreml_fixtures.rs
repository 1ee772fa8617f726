//! Real transformers / timm checkpoints (the fixtures), converted with `convert`,
//! exported, and run by our interpreter: compared with the outputs their own libraries
//! produced, for every deployment target, both precisions, both input kinds and every
//! output kind the model has.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_coreml_pipeline::coreml::{
    export, verify_against, ExportOptions, InputKind, OutputKind, Precision, Target, Tensor,
};

/// transformers `Dinov2(WithRegisters)ForImageClassification`: cls + patch-mean head,
/// made by scripts/make_dinov2_classifier_fixture.py.
const DINOV2_CLASSIFIERS: [&str; 2] = ["hf-dinov2-classifier", "hf-dinov2-registers-classifier"];

fn tensor(refs: &std::collections::BTreeMap<String, common::Tensor>, name: &str) -> Tensor {
    let t = &refs[name];
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

/// What checking a set of fixtures found.
#[derive(Default)]
struct Outcome {
    reports: Vec<String>,
    failures: Vec<String>,
    packages: Vec<PathBuf>,
}

impl Outcome {
    fn assert_pass(&self) {
        for r in &self.reports {
            println!("{r}\n");
        }
        assert!(
            self.failures.is_empty(),
            "{} failed:\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

/// Every target x precision x input x output of one fixture against its references.
fn check_fixture(name: &str, tmp: &Path, outcome: &mut Outcome) {
    let (_keep, ck) = converted(name);
    let refs = reference(name);
    let pixels = tensor(&refs, "pixel_values");
    // The same inputs for an image-input package: 0..255 values that its built-in
    // preprocessing maps back onto the reference's normalised pixels.
    let cfg = mlx_coreml_pipeline::checkpoint::read_config(&ck).unwrap();
    let raw = raw_planes(&pixels.data, &pixels.shape, &cfg.preprocess);
    let raw = Tensor::new(pixels.shape.clone(), raw).unwrap();
    let mut outputs = vec![OutputKind::Features];
    if refs.contains_key("logits") {
        outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
    }
    for target in Target::ALL {
        for precision in [Precision::Fp32, Precision::Fp16] {
            for (&output, input) in outputs
                .iter()
                .flat_map(|o| [(o, InputKind::Array), (o, InputKind::Image)])
            {
                let pkg = tmp.join(format!(
                    "{name}-{target}-{precision}-{output:?}-{input:?}.mlpackage"
                ));
                let inputs = match input {
                    InputKind::Array => vec![("pixel_values".to_string(), pixels.clone())],
                    InputKind::Image => vec![("image".to_string(), raw.clone())],
                };
                let opts = ExportOptions {
                    precision,
                    target: Some(target),
                    input,
                    output: Some(output),
                    ..Default::default()
                };
                export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
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
                    Ok(r) if r.pass => outcome.reports.push(r.to_string()),
                    Ok(r) => outcome.failures.push(r.to_string()),
                    Err(e) => outcome.failures.push(format!("{}: {e}", pkg.display())),
                }
                outcome.packages.push(pkg);
            }
        }
    }
}

/// coremltools reads every package back (scripts/check_coreml.py); skipped without
/// coremltools unless `COREML_CHECK_REQUIRED=1`.
fn coremltools_check(pkgs: &[PathBuf]) {
    let available = Command::new("python3")
        .args(["-c", "import coremltools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let required = std::env::var("COREML_CHECK_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "coremltools is required (COREML_CHECK_REQUIRED=1) but not installed"
        );
        eprintln!(
            "coremltools not installed: skipped reading {} packages back",
            pkgs.len()
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_coreml.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(pkgs)
        .output()
        .expect("run check_coreml.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success(),
        "check_coreml.py failed:\n{}\n{}",
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fixtures_match_their_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outcome = Outcome::default();
    for name in FIXTURES {
        check_fixture(name, tmp.path(), &mut outcome);
    }
    outcome.assert_pass();
}

#[test]
fn dinov2_classifiers_match_pytorch_and_coremltools_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outcome = Outcome::default();
    for name in DINOV2_CLASSIFIERS {
        check_fixture(name, tmp.path(), &mut outcome);
    }
    outcome.assert_pass();
    coremltools_check(&outcome.packages);
}

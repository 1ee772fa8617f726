//! `pipeline verify --reference-out`: the `coreml-bench --reference` file written from
//! what verify compared against (the fixtures' saved inputs and library outputs), under
//! the package's feature names, for image- and array-input packages of every output kind.
//! No MLX: the references come from the fixtures' `reference.safetensors`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_coreml_pipeline::bench::ReferenceFile;
use mlx_coreml_pipeline::checkpoint::read_config;
use mlx_coreml_pipeline::coreml::{export, ExportOptions, InputKind, OutputKind, Precision};
use mlx_coreml_pipeline::verify::{verify, VerifyOptions, VerifyStageError};

/// Converts and exports a fixture; returns (tempdir, checkpoint dir, package).
fn package(
    fixture_name: &str,
    input: InputKind,
    output: OutputKind,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, ck) = converted(fixture_name);
    let pkg = tmp.path().join("model.mlpackage");
    let opts = ExportOptions {
        precision: Precision::Fp32,
        input,
        output: Some(output),
        ..Default::default()
    };
    export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("{fixture_name}: {e}"));
    (tmp, ck, pkg)
}

/// Verifies `pkg` against the fixture's saved outputs, writing the reference file to `out`.
fn verify_saved(
    name: &str,
    pkg: &Path,
    out: &Path,
) -> Result<mlx_coreml_pipeline::coreml::VerifyReport, VerifyStageError> {
    verify(
        pkg,
        &VerifyOptions {
            reference: Some(fixture(name).join("reference.safetensors")),
            reference_out: Some(out.to_path_buf()),
            ..Default::default()
        },
    )
}

/// Exports `name` as an array-input package, verifies it against its saved reference with
/// `--reference-out`, and reads back the written file (also returned: its path, the
/// fixture's reference tensors).
fn saved_reference(
    name: &str,
    output: OutputKind,
) -> (
    tempfile::TempDir,
    PathBuf,
    ReferenceFile,
    std::collections::BTreeMap<String, Tensor>,
) {
    let (tmp, _ck, pkg) = package(name, InputKind::Array, output);
    let out = tmp.path().join("reference.json");
    let r = verify_saved(name, &pkg, &out).unwrap();
    assert!(r.pass, "{r}");
    let file = ReferenceFile::read(&out).unwrap();
    file.check().unwrap();
    (tmp, out, file, reference(name))
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{name}: max abs difference {d} > {tol}");
}

fn softmax_rows(x: &[f32], classes: usize) -> Vec<f32> {
    x.chunks(classes)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// Validates written files against `$defs/reference_file` with the repository's own
/// checker (`scripts/check_bench_schema.py` on a scratch root holding the schema and the
/// files as `tests/data/bench/reference-*.json`). Skipped without Python's jsonschema
/// unless `COREML_CHECK_REQUIRED=1` (`make test`, which installs the Python tools).
fn check_schema(files: &[(&str, &Path)]) {
    let has_jsonschema = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_jsonschema {
        let required = std::env::var("COREML_CHECK_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "jsonschema is required (COREML_CHECK_REQUIRED=1) but not installed"
        );
        eprintln!("python3 jsonschema not installed: skipped the schema check");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("schema")).unwrap();
    std::fs::copy(
        repo.join("schema/bench-report.schema.json"),
        root.path().join("schema/bench-report.schema.json"),
    )
    .unwrap();
    let samples = root.path().join("tests/data/bench");
    std::fs::create_dir_all(&samples).unwrap();
    for (name, path) in files {
        std::fs::copy(path, samples.join(format!("reference-{name}.json"))).unwrap();
    }
    let out = Command::new("python3")
        .arg(repo.join("scripts/check_bench_schema.py"))
        .arg(root.path())
        .output()
        .expect("run check_bench_schema.py");
    assert!(
        out.status.success(),
        "the written reference files do not validate against $defs/reference_file:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_classifier_writes_raw_pixels_and_class_probabilities() {
    let name = "hf-vit-classifier";
    let (tmp, ck, pkg) = package(name, InputKind::Image, OutputKind::Classifier);
    let refs = reference(name);
    let ref_path = fixture(name).join("reference.safetensors");
    let out = tmp.path().join("reference.json");
    let r = verify(
        &pkg,
        &VerifyOptions {
            // --model only for the preprocessing: the outputs are the saved ones.
            model: Some(ck.clone()),
            reference: Some(ref_path.clone()),
            reference_out: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.pass, "{r}");

    let file = ReferenceFile::read(&out).unwrap();
    file.check().unwrap();
    assert!(
        file.source
            .as_deref()
            .is_some_and(|s| s.contains(&ref_path.display().to_string())),
        "{:?}",
        file.source
    );

    // Input: 0..255 RGB planes whose built-in preprocessing gives the reference pixels.
    assert_eq!(file.inputs.keys().collect::<Vec<_>>(), ["image"]);
    let pv = &refs["pixel_values"];
    let image = &file.inputs["image"];
    assert_eq!(image.shape, pv.shape);
    assert_eq!(image.shape, [3, 3, 32, 32]);
    let cfg = read_config(&ck).unwrap();
    let raw = raw_planes(&pv.data, &pv.shape, &cfg.preprocess);
    assert_close("image", &image.data, &raw, 1e-4);
    // The fixture's pixels are random normals: mapped back they are not 8-bit pixels,
    // which the file says (coreml-bench rounds and clamps them).
    assert!(raw.iter().any(|v| !(0.0..=255.0).contains(v)));
    assert!(
        file.source
            .as_deref()
            .is_some_and(|s| s.contains("not 8-bit pixels")),
        "{:?}",
        file.source
    );

    // Output: the classifier's probabilities (softmax of the reference logits), in the
    // package's class order; nothing for the string label.
    assert_eq!(
        file.outputs.keys().collect::<Vec<_>>(),
        ["classLabel_probs"]
    );
    let logits = &refs["logits"];
    let probs = &file.outputs["classLabel_probs"];
    assert_eq!(probs.shape, logits.shape);
    assert_eq!(probs.shape, [3, 5]);
    assert_close(
        "classLabel_probs",
        &probs.data,
        &softmax_rows(&logits.data, 5),
        1e-6,
    );
    assert_eq!(file.class_labels, Some(cfg.class_labels()));

    check_schema(&[("classifier", &out)]);
}

#[test]
fn array_features_writes_pixel_values_embedding_and_tokens() {
    // Registers: tokens are [N, 21, D]; the reference's `_interp` tensors are not used.
    let (_tmp, out, file, refs) = saved_reference("hf-dinov2-registers", OutputKind::Features);
    assert_eq!(file.inputs.keys().collect::<Vec<_>>(), ["pixel_values"]);
    let pv = &file.inputs["pixel_values"];
    assert_eq!(pv.shape, [3, 3, 28, 28]);
    assert_close("pixel_values", &pv.data, &refs["pixel_values"].data, 0.0);

    assert_eq!(
        file.outputs.keys().collect::<Vec<_>>(),
        ["embedding", "tokens"]
    );
    for (output, reference, shape) in [
        ("embedding", "pooled", &[3, 48][..]),
        ("tokens", "last_hidden_state", &[3, 21, 48][..]),
    ] {
        let got = &file.outputs[output];
        assert_eq!(got.shape, refs[reference].shape, "{output}");
        assert_eq!(got.shape, shape, "{output}");
        assert_close(output, &got.data, &refs[reference].data, 1e-6);
    }
    assert_eq!(file.class_labels, None);

    check_schema(&[("features", &out)]);
}

#[test]
fn logits_package_writes_logits() {
    let (_tmp, _out, file, refs) = saved_reference("timm-vit-classifier", OutputKind::Logits);
    assert_eq!(file.inputs.keys().collect::<Vec<_>>(), ["pixel_values"]);
    assert_eq!(file.outputs.keys().collect::<Vec<_>>(), ["logits"]);
    assert_eq!(file.outputs["logits"].shape, [3, 5]);
    assert_close(
        "logits",
        &file.outputs["logits"].data,
        &refs["logits"].data,
        1e-6,
    );
    assert_eq!(file.class_labels, None);
}

#[test]
fn unwritable_reference_out_is_a_typed_error_naming_the_file() {
    let name = "hf-vit-backbone";
    let (tmp, _ck, pkg) = package(name, InputKind::Array, OutputKind::Features);
    let out = tmp.path().join("no-such-folder").join("reference.json");
    let err = verify_saved(name, &pkg, &out).unwrap_err();
    match &err {
        VerifyStageError::ReferenceOut { path, .. } => assert_eq!(path, &out),
        e => panic!("expected ReferenceOut, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    assert!(!out.exists());
    assert!(!tmp.path().join("no-such-folder").exists());
}

#[test]
fn cli_verify_reference_out() {
    let name = "hf-vit-backbone";
    let (tmp, _ck, pkg) = package(name, InputKind::Array, OutputKind::Features);
    let out = tmp.path().join("bench-reference.json");
    let stdout = run_ok(
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("verify")
            .arg(&pkg)
            .arg("--reference")
            .arg(fixture(name).join("reference.safetensors"))
            .arg("--reference-out")
            .arg(&out),
    );
    assert!(stdout.contains(&out.display().to_string()), "{stdout}");
    let file = ReferenceFile::read(&out).unwrap();
    assert_eq!(
        file.outputs.keys().collect::<Vec<_>>(),
        ["embedding", "tokens"]
    );
    assert_close(
        "embedding",
        &file.outputs["embedding"].data,
        &reference(name)["pooled"].data,
        1e-6,
    );
    // No leftover temporary file beside it.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bench-reference"))
        .collect();
    assert_eq!(names, ["bench-reference.json"]);
}

//! `export` as a whole: deterministic bytes, option resolution, reports, metadata, and
//! failures that are clear and leave no partial package behind.

mod coreml_support;

use std::fs;
use std::path::Path;

use coreml_support::{config, random_tensors, write_checkpoint, Variant};
use mlx_coreml_pipeline::checkpoint::{self, CheckpointError, TensorOut};
use mlx_coreml_pipeline::coreml::interp::Package;
use mlx_coreml_pipeline::coreml::proto::spec;
use mlx_coreml_pipeline::coreml::{
    export, ExportError, ExportMetadata, ExportOptions, InputKind, OutputKind, Precision, Target,
};

fn checkpoint_for(dir: &Path, v: Variant) -> std::path::PathBuf {
    let cfg = config(v);
    let ck = dir.join("ck");
    write_checkpoint(&ck, &cfg, &random_tensors(&cfg, 42));
    ck
}

/// Every file of a folder, relative path -> bytes, sorted.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Names in a folder other than `keep`: leftovers of a failed export.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn two_exports_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::RegistersPrefix1LayerScale);
    for (i, opts) in [
        ExportOptions::default(),
        ExportOptions {
            precision: Precision::Fp32,
            input: InputKind::Array,
            output: Some(OutputKind::Features),
            target: Some(Target::Ios18),
            ..Default::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let a = tmp.path().join(format!("a{i}.mlpackage"));
        let b = tmp.path().join(format!("b{i}.mlpackage"));
        export(&ck, &a, &opts).unwrap();
        export(&ck, &b, &opts).unwrap();
        let (fa, fb) = (files(&a), files(&b));
        assert_eq!(
            fa.len(),
            3,
            "{:?}",
            fa.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(fa == fb, "exports differ");
        // Re-exporting over the same path with force gives the same bytes again.
        export(
            &ck,
            &a,
            &ExportOptions {
                force: true,
                ..opts.clone()
            },
        )
        .unwrap();
        assert!(files(&a) == fb);
    }
}

#[test]
fn manifest_has_fixed_layout_and_content_derived_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    let pkg = tmp.path().join("m.mlpackage");
    export(&ck, &pkg, &ExportOptions::default()).unwrap();
    let text = fs::read_to_string(pkg.join("Manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["fileFormatVersion"], "1.0.0");
    let root = m["rootModelIdentifier"].as_str().unwrap();
    let entries = m["itemInfoEntries"].as_object().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[root]["path"], "com.apple.CoreML/model.mlmodel");
    for e in entries.values() {
        assert_eq!(e["author"], "com.apple.CoreML");
        assert!(pkg.join("Data").join(e["path"].as_str().unwrap()).exists());
    }
    // Other weights, other identifiers.
    let cfg = config(Variant::FusedGeluHead);
    let ck2 = tmp.path().join("ck2");
    write_checkpoint(&ck2, &cfg, &random_tensors(&cfg, 43));
    let pkg2 = tmp.path().join("m2.mlpackage");
    export(&ck2, &pkg2, &ExportOptions::default()).unwrap();
    let m2: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(pkg2.join("Manifest.json")).unwrap()).unwrap();
    assert_ne!(m2["rootModelIdentifier"], m["rootModelIdentifier"]);
}

#[test]
fn options_resolve_to_the_lowest_target_that_supports_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    let run = |name: &str, opts: ExportOptions| export(&ck, &tmp.path().join(name), &opts);
    let r = run("a.mlpackage", ExportOptions::default()).unwrap();
    assert_eq!(
        (r.target, r.spec_version, r.output, r.fused_attention),
        (Target::Ios15, 6, OutputKind::Classifier, false)
    );
    let r = run(
        "b.mlpackage",
        ExportOptions {
            io_fp16: true,
            input: InputKind::Array,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.target, r.spec_version), (Target::Ios16, 7));
    let r = run(
        "c.mlpackage",
        ExportOptions {
            fused_attention: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (r.target, r.spec_version, r.fused_attention),
        (Target::Ios18, 9, true)
    );
    assert_eq!(r.op_counts.get("scaled_dot_product_attention"), Some(&2));
    assert_eq!(r.op_counts.get("matmul"), None);
    let r = run(
        "d.mlpackage",
        ExportOptions {
            target: Some(Target::Ios18),
            fused_attention: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.op_counts.get("matmul"), Some(&4));

    // A backbone defaults to features.
    let tmp2 = tempfile::tempdir().unwrap();
    let ck2 = checkpoint_for(tmp2.path(), Variant::SeparateNoHead);
    let r = export(
        &ck2,
        &tmp2.path().join("e.mlpackage"),
        &ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(r.output, OutputKind::Features);
}

#[test]
fn unsupported_combinations_are_clear_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::SeparateNoHead);
    let cases = [
        (
            ExportOptions {
                io_fp16: true,
                input: InputKind::Array,
                target: Some(Target::Ios15),
                ..Default::default()
            },
            "iOS16",
        ),
        (
            ExportOptions {
                fused_attention: Some(true),
                target: Some(Target::Ios17),
                ..Default::default()
            },
            "iOS18",
        ),
        (
            ExportOptions {
                output: Some(OutputKind::Classifier),
                ..Default::default()
            },
            "classification head",
        ),
        (
            ExportOptions {
                output: Some(OutputKind::Logits),
                ..Default::default()
            },
            "classification head",
        ),
    ];
    for (opts, needle) in cases {
        let err = export(&ck, &tmp.path().join("x.mlpackage"), &opts).unwrap_err();
        assert!(matches!(err, ExportError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(
        leftovers(tmp.path(), &["ck"]).is_empty(),
        "{:?}",
        leftovers(tmp.path(), &["ck"])
    );
}

#[test]
fn missing_tensor_is_reported_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(Variant::FusedGeluHead);
    let ck = tmp.path().join("ck");
    write_checkpoint(&ck, &cfg, &random_tensors(&cfg, 1));
    // Rewrite the weights without one tensor.
    let w = random_tensors(&cfg, 1);
    let tensors: Vec<TensorOut<'static>> = cfg
        .tensor_shapes()
        .into_iter()
        .filter(|(n, _)| n != "blocks.1.mlp.fc2.weight")
        .map(|(n, s)| TensorOut::owned(n.clone(), s, w[&n].1.clone()))
        .collect();
    checkpoint::write_safetensors(&ck.join(checkpoint::WEIGHTS_FILE), &tensors, None).unwrap();
    let err = export(
        &ck,
        &tmp.path().join("m.mlpackage"),
        &ExportOptions::default(),
    )
    .unwrap_err();
    match &err {
        ExportError::Checkpoint(CheckpointError::Missing { names, .. }) => {
            assert_eq!(names, &vec!["blocks.1.mlp.fc2.weight".to_string()])
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("blocks.1.mlp.fc2.weight"));
    assert!(leftovers(tmp.path(), &["ck"]).is_empty());
}

#[test]
fn failure_while_writing_leaves_no_partial_package() {
    // A one-channel model cannot take an RGB image: found while the program (and its
    // weight file) is being written.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(Variant::FusedGeluHead);
    cfg.in_channels = 1;
    let ck = tmp.path().join("ck");
    write_checkpoint(&ck, &cfg, &random_tensors(&cfg, 1));
    let err = export(
        &ck,
        &tmp.path().join("m.mlpackage"),
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::Emit(_)), "{err}");
    assert!(err.to_string().contains("3-channel"), "{err}");
    assert!(
        leftovers(tmp.path(), &["ck"]).is_empty(),
        "{:?}",
        leftovers(tmp.path(), &["ck"])
    );
    // The same model exports with an array input.
    export(
        &ck,
        &tmp.path().join("m.mlpackage"),
        &ExportOptions {
            input: InputKind::Array,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn existing_package_needs_force_and_is_kept_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    let pkg = tmp.path().join("m.mlpackage");
    fs::create_dir(&pkg).unwrap();
    fs::write(pkg.join("keep.txt"), "mine").unwrap();
    let err = export(&ck, &pkg, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("force"), "{err}");
    assert_eq!(fs::read_to_string(pkg.join("keep.txt")).unwrap(), "mine");
    export(
        &ck,
        &pkg,
        &ExportOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!pkg.join("keep.txt").exists());
    assert!(pkg.join("Manifest.json").exists());
    assert!(leftovers(tmp.path(), &["ck", "m.mlpackage"]).is_empty());
}

#[test]
fn unwritable_or_misnamed_output_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    // A parent that is a regular file cannot hold the package.
    let blocker = tmp.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let err = export(&ck, &blocker.join("m.mlpackage"), &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Io { .. }), "{err}");
    let err = export(
        &ck,
        &tmp.path().join("model.zip"),
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::InvalidOutput { .. }), "{err}");
    assert!(leftovers(tmp.path(), &["ck", "file"]).is_empty());
}

#[test]
fn report_counts_ops_and_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    let pkg = tmp.path().join("m.mlpackage");
    let r = export(
        &ck,
        &pkg,
        &ExportOptions {
            precision: Precision::Fp32,
            ..Default::default()
        },
    )
    .unwrap();
    // 2 blocks: 4 linears each, plus the head.
    assert_eq!(r.op_counts["linear"], 9);
    assert_eq!(r.op_counts["layer_norm"], 5);
    assert_eq!(r.op_counts["matmul"], 4);
    assert_eq!(r.op_counts["softmax"], 3);
    assert_eq!(r.op_counts["gelu"], 2);
    assert_eq!(r.op_counts["conv"], 1);
    assert_eq!(r.op_counts["classify"], 1);
    assert_eq!(r.ops_total, r.op_counts.values().sum::<usize>());
    assert_eq!(
        r.weights_bytes,
        fs::metadata(pkg.join("Data/com.apple.CoreML/weights/weight.bin"))
            .unwrap()
            .len()
    );
    assert_eq!(
        r.model_bytes,
        fs::metadata(pkg.join("Data/com.apple.CoreML/model.mlmodel"))
            .unwrap()
            .len()
    );
    // fp32 weights: at least every parameter's 4 bytes (the tiny ones are inline).
    let cfg = config(Variant::FusedGeluHead);
    assert!(r.weights_bytes as usize > 3 * cfg.num_parameters());
    let text = r.to_string();
    assert!(text.contains("linear") && text.contains("iOS15"), "{text}");
    serde_json::to_string(&r).unwrap();
}

#[test]
fn identical_constants_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Separate q/k/v without bias: six zero biases of one size.
    let ck = checkpoint_for(tmp.path(), Variant::SeparateNoHead);
    let r = export(
        &ck,
        &tmp.path().join("m.mlpackage"),
        &ExportOptions::default(),
    )
    .unwrap();
    assert!(r.blobs_deduplicated >= 5, "{}", r.blobs_deduplicated);
}

#[test]
fn metadata_and_description_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint_for(tmp.path(), Variant::FusedGeluHead);
    let pkg = tmp.path().join("m.mlpackage");
    let metadata = ExportMetadata {
        author: Some("Lab".into()),
        license: Some("MIT".into()),
        description: Some("tiny test ViT".into()),
        version: Some("1.2.3".into()),
        adapters_hash: Some("abc123".into()),
        dataset: Some("toy".into()),
        val_accuracy: Some(0.875),
        user_defined: [("extra".to_string(), "yes".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    export(
        &ck,
        &pkg,
        &ExportOptions {
            metadata,
            ..Default::default()
        },
    )
    .unwrap();
    let p = Package::open(&pkg).unwrap();
    assert_eq!(p.model.specification_version, 6);
    let d = p.model.description.as_ref().unwrap();
    let m = d.metadata.as_ref().unwrap();
    assert_eq!(
        (
            m.author.as_str(),
            m.license.as_str(),
            m.short_description.as_str(),
            m.version_string.as_str()
        ),
        ("Lab", "MIT", "tiny test ViT", "1.2.3")
    );
    let ud = &m.user_defined;
    assert_eq!(ud["base_model"], "test/random");
    assert_eq!(ud["adapters_hash"], "abc123");
    assert_eq!(ud["dataset"], "toy");
    assert_eq!(ud["val_accuracy"], "0.875");
    assert_eq!(ud["extra"], "yes");
    assert!(ud["tool_version"].starts_with("mlx-coreml-pipeline "));
    assert_eq!(d.predicted_feature_name, "classLabel");
    assert_eq!(d.predicted_probabilities_name, "classLabel_probs");
    let Some(spec::feature_type::Type::ImageType(img)) =
        d.input[0].r#type.as_ref().and_then(|t| t.r#type.as_ref())
    else {
        panic!("image input expected");
    };
    assert_eq!(
        (img.width, img.height, img.color_space),
        (16, 16, spec::image_feature_type::ColorSpace::Rgb as i32)
    );
    assert!(matches!(
        d.output[1].r#type.as_ref().and_then(|t| t.r#type.as_ref()),
        Some(spec::feature_type::Type::DictionaryType(_))
    ));
}

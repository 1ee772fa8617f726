//! Bad sources give an error that names the file and the tensor, and leave no output.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use mlx_coreml_pipeline::convert::{convert, ConvertOptions};

/// Copies a fixture's checkpoint files into a writable temp folder.
fn copy_fixture(name: &str, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        let src = fixture(name).join(f);
        if src.exists() {
            fs::copy(&src, dst.join(f)).unwrap();
        }
    }
}

/// Rewrites a safetensors file through a closure over (name, shape, f32 data).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = read_tensors(path)
        .into_iter()
        .map(|(n, t)| (n, t.shape, t.data))
        .collect();
    edit(&mut t);
    let outs: Vec<_> = t
        .into_iter()
        .map(|(n, s, d)| mlx_coreml_pipeline::checkpoint::TensorOut::owned(n, s, d))
        .collect();
    mlx_coreml_pipeline::checkpoint::write_safetensors(path, &outs, None).unwrap();
}

/// Runs convert on `src`, expects an error containing every needle, and no output.
fn expect_error(src: &Path, needles: &[&str]) {
    let out = src.parent().unwrap().join("out");
    let err = convert(src.to_str().unwrap(), &out, &ConvertOptions::default())
        .expect_err("conversion should fail")
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error `{err}` does not mention `{n}`");
    }
    assert!(!out.exists(), "output folder left behind");
    let leftovers: Vec<_> = fs::read_dir(src.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("hf-vit-classifier", &src);
    let f = src.join("model.safetensors");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&src, &["model.safetensors", "safetensors"]);
}

#[test]
fn corrupt_header() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("timm-vit-classifier", &src);
    let f = src.join("model.safetensors");
    let mut bytes = fs::read(&f).unwrap();
    bytes[8] = b'#';
    fs::write(&f, &bytes).unwrap();
    expect_error(&src, &["model.safetensors"]);
}

#[test]
fn missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("hf-dinov2", &src);
    rewrite(&src.join("model.safetensors"), |t| {
        t.retain(|(n, _, _)| n != "encoder.layer.1.mlp.fc2.weight")
    });
    expect_error(
        &src,
        &[
            "model.safetensors",
            "missing",
            "encoder.layer.1.mlp.fc2.weight",
        ],
    );
}

#[test]
fn extra_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("timm-vit-reg-swiglu", &src);
    rewrite(&src.join("model.safetensors"), |t| {
        t.push((
            "blocks.0.attn.q_norm.weight".into(),
            vec![12],
            vec![1.0; 12],
        ))
    });
    expect_error(
        &src,
        &[
            "model.safetensors",
            "does not use",
            "blocks.0.attn.q_norm.weight",
        ],
    );
}

#[test]
fn wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("hf-vit-backbone", &src);
    rewrite(&src.join("model.safetensors"), |t| {
        let e = t
            .iter_mut()
            .find(|(n, _, _)| n == "encoder.layer.0.intermediate.dense.weight")
            .unwrap();
        e.1 = vec![96, 96];
    });
    expect_error(
        &src,
        &[
            "model.safetensors",
            "encoder.layer.0.intermediate.dense.weight",
            "[96, 96]",
            "[192, 48]",
        ],
    );
}

#[test]
fn unknown_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("hf-vit-classifier", &src);
    let cfg = fs::read_to_string(src.join("config.json")).unwrap();
    fs::write(
        src.join("config.json"),
        cfg.replace("\"model_type\": \"vit\"", "\"model_type\": \"swin\""),
    )
    .unwrap();
    expect_error(&src, &["config.json", "unknown architecture", "swin"]);
}

#[test]
fn missing_config() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_fixture("hf-vit-classifier", &src);
    fs::remove_file(src.join("config.json")).unwrap();
    expect_error(&src, &["missing config.json"]);
}

#[test]
fn existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), "precious").unwrap();
    let src = fixture("hf-vit-classifier");
    let err = convert(src.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );
    let opts = ConvertOptions {
        force: true,
        ..Default::default()
    };
    convert(src.to_str().unwrap(), &out, &opts).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn every_fixture_converts_and_round_trips_exactly() {
    // The converted weights are the source's bytes, renamed: compare tensor by tensor.
    for name in FIXTURES {
        let (_tmp, dir) = converted(name);
        let ck = mlx_coreml_pipeline::checkpoint::Checkpoint::load(&dir).unwrap();
        let src = read_tensors(&fixture(name).join("model.safetensors"));
        let ours = read_tensors(&dir.join("model.safetensors"));
        let used_total: usize = ours.values().map(|t| t.data.len()).sum();
        let src_total: usize = src
            .iter()
            .filter(|(n, _)| !n.ends_with("mask_token"))
            .map(|(_, t)| t.data.len())
            .sum();
        assert_eq!(
            used_total, src_total,
            "{name}: every source value is carried over"
        );
        assert_eq!(ck.config.num_parameters(), used_total, "{name}");
        let cls_src = src
            .iter()
            .find(|(n, _)| n.ends_with("cls_token"))
            .map(|(_, t)| &t.data)
            .unwrap();
        assert_eq!(&ours["cls_token"].data, cls_src, "{name}");
    }
}

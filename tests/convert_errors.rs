//! Bad sources give an error that names the file and the tensor, and leave no output.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use mlx_coreml_pipeline::convert::{convert, ConvertOptions};
use serde_json::json;

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

/// One edit of a config.json key, by dotted path (`model_args.embed_dim`).
type Edit = (&'static str, Option<serde_json::Value>);

fn set(key: &'static str, value: serde_json::Value) -> Edit {
    (key, Some(value))
}

fn unset(key: &'static str) -> Edit {
    (key, None)
}

/// Copies a fixture and applies `edits` to its config.json.
fn with_config(name: &str, dst: &Path, edits: &[Edit]) {
    copy_fixture(name, dst);
    let path = dst.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in edits {
        let (parents, last) = match key.rsplit_once('.') {
            Some((p, l)) => (p.split('.').collect::<Vec<_>>(), l),
            None => (Vec::new(), *key),
        };
        let obj = parents
            .iter()
            .fold(&mut cfg, |v, k| &mut v[*k])
            .as_object_mut()
            .unwrap_or_else(|| panic!("{name}: no object above `{key}`"));
        match value {
            None => obj.remove(last),
            Some(v) => obj.insert(last.to_string(), v.clone()),
        };
    }
    fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// A fixture whose config.json states `edits` must fail naming every needle.
fn config_mismatch(name: &str, edits: &[Edit], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    with_config(name, &src, edits);
    let mut all = vec!["config.json"];
    all.extend_from_slice(needles);
    expect_error(&src, &all);
}

const CLS: &str = "timm-vit-classifier";
const REG: &str = "timm-vit-reg-swiglu";

#[test]
fn timm_embed_dim_against_patch_embed() {
    // The classifier's weights are 32 wide.
    config_mismatch(
        CLS,
        &[set("model_args.embed_dim", json!(48))],
        &[
            "model_args.embed_dim is 48",
            "patch_embed.proj.weight is [32, 3, 8, 8]",
            "embed dim 32",
        ],
    );
}

#[test]
fn timm_depth_against_blocks() {
    config_mismatch(
        CLS,
        &[set("model_args.depth", json!(3))],
        &["model_args.depth is 3", "blocks.2.norm1.weight", "depth 2"],
    );
}

#[test]
fn timm_num_heads_must_split_embed_dim() {
    config_mismatch(
        CLS,
        &[set("model_args.num_heads", json!(5))],
        &[
            "model_args.num_heads is 5",
            "patch_embed.proj.weight is [32, 3, 8, 8]",
            "embed dim 32 does not split into 5 heads",
        ],
    );
}

#[test]
fn timm_num_classes_against_head() {
    config_mismatch(
        CLS,
        &[set("num_classes", json!(7))],
        &["num_classes is 7", "head.weight is [5, 32]", "5 classes"],
    );
    // 0 classes means no head; the backbone fixture has none.
    config_mismatch(
        REG,
        &[set("num_classes", json!(3))],
        &["num_classes is 3", "no head.weight", "num_classes 0"],
    );
    // With nothing above it, pretrained_cfg.num_classes is the one timm builds with.
    config_mismatch(
        CLS,
        &[
            unset("num_classes"),
            unset("model_args.num_classes"),
            set("pretrained_cfg.num_classes", json!(1000)),
        ],
        &[
            "pretrained_cfg.num_classes is 1000",
            "head.weight is [5, 32]",
            "5 classes",
        ],
    );
}

#[test]
fn timm_pretrained_num_classes_under_top_level_is_ignored() {
    // Older timm exports of fine-tuned models kept the pretrained source's count in
    // pretrained_cfg; timm's own loader replaces it with the top-level num_classes.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    with_config(CLS, &src, &[set("pretrained_cfg.num_classes", json!(1000))]);
    let out = tmp.path().join("out");
    convert(src.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
    let ck = mlx_coreml_pipeline::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(ck.config.num_classes, 5);
}

#[test]
fn timm_img_size_against_pos_embed() {
    config_mismatch(
        CLS,
        &[set("model_args.img_size", json!([40, 40]))],
        &[
            "model_args.img_size is [40,40]",
            "pos_embed is [1, 17, 32]",
            "image size 32",
        ],
    );
    // Without img_size the image size comes from pretrained_cfg.input_size.
    config_mismatch(
        CLS,
        &[
            unset("model_args.img_size"),
            set("pretrained_cfg.input_size", json!([3, 40, 40])),
        ],
        &[
            "pretrained_cfg.input_size is [3,40,40]",
            "pos_embed is [1, 17, 32]",
            "image size 32",
        ],
    );
}

#[test]
fn timm_other_knobs_against_tensors() {
    let cases: Vec<(&str, Vec<Edit>, Vec<&str>)> = vec![
        (
            CLS,
            vec![set("model_args.patch_size", json!(16))],
            vec![
                "model_args.patch_size is 16",
                "patch_embed.proj.weight is [32, 3, 8, 8]",
                "patch size 8",
            ],
        ),
        (
            CLS,
            vec![set("model_args.in_chans", json!(1))],
            vec![
                "model_args.in_chans is 1",
                "patch_embed.proj.weight",
                "3 input channels",
            ],
        ),
        (
            CLS,
            vec![
                unset("model_args.in_chans"),
                set("pretrained_cfg.input_size", json!([1, 32, 32])),
            ],
            vec![
                "pretrained_cfg.input_size is [1,32,32]",
                "patch_embed.proj.weight",
                "3 input channels",
            ],
        ),
        (
            CLS,
            vec![set("num_features", json!(64))],
            vec![
                "num_features is 64",
                "patch_embed.proj.weight",
                "embed dim 32",
            ],
        ),
        (
            CLS,
            vec![set("model_args.mlp_ratio", json!(3.0))],
            vec![
                "model_args.mlp_ratio is 3.0",
                "blocks.0.mlp.fc1.weight is [128, 32]",
                "mlp_ratio 4",
            ],
        ),
        (
            // Packed SwiGLU: fc1 holds int(48 * 5.33334) = 256 rows, gate and value.
            REG,
            vec![set("model_args.mlp_ratio", json!(4.0))],
            vec![
                "model_args.mlp_ratio is 4.0",
                "blocks.0.mlp.fc1.weight is [256, 48]",
                "int(48 * 4.0) = 192",
            ],
        ),
        (
            REG,
            vec![set("model_args.reg_tokens", json!(4))],
            vec![
                "model_args.reg_tokens is 4",
                "reg_token is [1, 8, 48]",
                "8 register tokens",
            ],
        ),
        (
            CLS,
            vec![set("model_args.reg_tokens", json!(4))],
            vec![
                "model_args.reg_tokens is 4",
                "no reg_token",
                "0 register tokens",
            ],
        ),
        (
            CLS,
            vec![set("model_args.class_token", json!(false))],
            vec![
                "model_args.class_token is false",
                "cls_token is [1, 1, 32]",
                "class token present",
            ],
        ),
        (
            CLS,
            vec![set("model_args.qkv_bias", json!(false))],
            vec![
                "model_args.qkv_bias is false",
                "blocks.0.attn.qkv.bias is [96]",
                "qkv bias present",
            ],
        ),
        (
            CLS,
            vec![set("model_args.init_values", json!(1e-5))],
            vec![
                "model_args.init_values is",
                "no blocks.0.ls1.gamma",
                "no layer scale",
            ],
        ),
        (
            REG,
            vec![set("model_args.init_values", json!(null))],
            vec![
                "model_args.init_values is null",
                "blocks.0.ls1.gamma is [48]",
                "layer scale present",
            ],
        ),
        (
            CLS,
            vec![set("model_args.pre_norm", json!(true))],
            vec![
                "model_args.pre_norm is true",
                "no norm_pre.weight",
                "no pre-norm",
            ],
        ),
        (
            CLS,
            vec![set("model_args.no_embed_class", json!(true))],
            vec![
                "model_args.no_embed_class is true",
                "pos_embed is [1, 17, 32]",
                "no_embed_class false",
            ],
        ),
        (
            REG,
            vec![set("model_args.no_embed_class", json!(false))],
            vec![
                "model_args.no_embed_class is false",
                "pos_embed is [1, 16, 48]",
                "no_embed_class true",
            ],
        ),
    ];
    for (name, edits, needles) in &cases {
        config_mismatch(name, edits, needles);
    }
}

//! transformers `Dinov2ForImageClassification` / `Dinov2WithRegistersForImageClassification`
//! convert with cls + patch-mean pooling (head width 2 x hidden); a head of the wrong
//! width is refused, naming the tensor and its shape.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use mlx_coreml_pipeline::checkpoint::{read_config, write_safetensors, TensorOut};
use mlx_coreml_pipeline::config::{Pooling, SourceFamily};
use mlx_coreml_pipeline::convert::{convert, ConvertOptions};

#[test]
fn both_classifiers_convert_with_cls_mean_pooling() {
    for (name, family, registers) in [
        ("hf-dinov2-classifier", SourceFamily::HfDinov2, 0),
        (
            "hf-dinov2-registers-classifier",
            SourceFamily::HfDinov2Registers,
            4,
        ),
    ] {
        let (_tmp, dir) = converted(name);
        let cfg = read_config(&dir).unwrap();
        assert_eq!(cfg.pooling, Pooling::ClsMean, "{name}");
        assert_eq!(cfg.pooled_dim(), 64, "{name}");
        assert_eq!(cfg.num_classes, 3, "{name}");
        assert_eq!(cfg.num_register_tokens, registers, "{name}");
        assert_eq!(cfg.provenance.family, family, "{name}");
        let names = ["tumor", "stroma", "normal"].map(String::from).to_vec();
        assert_eq!(cfg.class_names, Some(names), "{name}");
        let json = fs::read_to_string(dir.join("model.json")).unwrap();
        assert!(json.contains("\"cls_mean\""), "{name}: {json}");
        // The head is carried over byte for byte.
        let src = read_tensors(&fixture(name).join("model.safetensors"));
        let ours = read_tensors(&dir.join("model.safetensors"));
        assert_eq!(ours["head.weight"].shape, vec![3, 64]);
        assert_eq!(ours["head.weight"].data, src["classifier.weight"].data);
    }
}

/// A copy of `name` whose classifier reads only `hidden` features.
fn narrow_head(name: &str, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        fs::copy(fixture(name).join(f), dst.join(f)).unwrap();
    }
    let tensors: Vec<TensorOut<'static>> = read_tensors(&fixture(name).join("model.safetensors"))
        .into_iter()
        .map(|(n, t)| {
            if n == "classifier.weight" {
                // The class-token half: [3, 64] -> [3, 32].
                let data = t.data.chunks(64).flat_map(|r| r[..32].to_vec()).collect();
                TensorOut::owned(n, vec![3, 32], data)
            } else {
                TensorOut::owned(n, t.shape, t.data)
            }
        })
        .collect();
    write_safetensors(&dst.join("model.safetensors"), &tensors, None).unwrap();
}

#[test]
fn a_hidden_wide_head_is_refused_with_its_shape() {
    for name in ["hf-dinov2-classifier", "hf-dinov2-registers-classifier"] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        narrow_head(name, &src);
        let out = tmp.path().join("out");
        let err = convert(src.to_str().unwrap(), &out, &ConvertOptions::default())
            .expect_err("a [K, hidden] head on a DINOv2 classifier must be refused")
            .to_string();
        for needle in [
            "classifier.weight",
            "[3, 32]",
            "[3, 64]",
            "model.safetensors",
        ] {
            assert!(err.contains(needle), "{name}: `{needle}` not in: {err}");
        }
        assert!(!out.exists(), "{name}: no output after an error");
    }
}

//! Real transformers / timm checkpoints (the shared fixtures) exported and run by our
//! interpreter, compared with the outputs their own libraries produced.
//!
//! Until `convert` lands, the source checkpoints are mapped onto ours by a small
//! test-local key mapping (`to_ours`); the comparison does not depend on it beyond the
//! renaming. Fixtures are looked up in `tests/fixtures/` and then `../shared/fixtures/`;
//! the test is skipped (with a note) when neither exists.

mod coreml_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_coreml_pipeline::config::{
    MlpKind, ModelConfig, Pooling, PosInterpolation, Preprocess, Provenance, QkvLayout,
    SourceFamily, FORMAT_VERSION,
};
use mlx_coreml_pipeline::coreml::{
    export, verify_against, ExportOptions, InputKind, OutputKind, Precision, Target, Tensor,
};
use safetensors::SafeTensors;

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn fixtures_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("tests/fixtures"), root.join("../shared/fixtures")]
        .into_iter()
        .find(|p| p.join("hf-vit-classifier/reference.safetensors").exists())
}

fn read_all(path: &Path) -> Weights {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            (
                n,
                (
                    v.shape().to_vec(),
                    mlx_coreml_pipeline::checkpoint::le_f32(v.data()),
                ),
            )
        })
        .collect()
}

/// Source key -> our key, per naming family.
fn rename(family: &str, key: &str) -> Option<String> {
    let k = key.strip_prefix("vit.").unwrap_or(key);
    let fixed = [
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        ("embeddings.register_tokens", "reg_tokens"),
        (
            "embeddings.patch_embeddings.projection.weight",
            "patch_embed.weight",
        ),
        (
            "embeddings.patch_embeddings.projection.bias",
            "patch_embed.bias",
        ),
        ("layernorm.weight", "norm.weight"),
        ("layernorm.bias", "norm.bias"),
        ("classifier.weight", "head.weight"),
        ("classifier.bias", "head.bias"),
        ("patch_embed.proj.weight", "patch_embed.weight"),
        ("patch_embed.proj.bias", "patch_embed.bias"),
        ("reg_token", "reg_tokens"),
    ];
    if let Some((_, ours)) = fixed.iter().find(|(src, _)| *src == k) {
        return Some(ours.to_string());
    }
    if k == "embeddings.mask_token" {
        return None; // unused at inference
    }
    if family == "timm" {
        return Some(
            k.replace(".ls1.gamma", ".ls1")
                .replace(".ls2.gamma", ".ls2"),
        );
    }
    let rest = k.strip_prefix("encoder.layer.")?;
    let (i, rest) = rest.split_once('.')?;
    let sub = [
        ("layernorm_before.", "norm1."),
        ("layernorm_after.", "norm2."),
        ("norm1.", "norm1."),
        ("norm2.", "norm2."),
        ("attention.attention.query.", "attn.q."),
        ("attention.attention.key.", "attn.k."),
        ("attention.attention.value.", "attn.v."),
        ("attention.output.dense.", "attn.proj."),
        ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
        ("layer_scale1.lambda1", "ls1"),
        ("layer_scale2.lambda1", "ls2"),
    ];
    let (src, ours) = sub.iter().find(|(s, _)| rest.starts_with(s))?;
    Some(format!("blocks.{i}.{ours}{}", &rest[src.len()..]))
}

struct Fixture {
    name: &'static str,
    family: &'static str,
    heads: usize,
    eps: f32,
    classes: usize,
}

const FIXTURES: [Fixture; 6] = [
    Fixture {
        name: "hf-vit-classifier",
        family: "hf",
        heads: 2,
        eps: 1e-12,
        classes: 5,
    },
    Fixture {
        name: "hf-vit-backbone",
        family: "hf",
        heads: 3,
        eps: 1e-12,
        classes: 0,
    },
    Fixture {
        name: "hf-dinov2-registers",
        family: "hf",
        heads: 4,
        eps: 1e-6,
        classes: 0,
    },
    Fixture {
        name: "hf-dinov2",
        family: "hf",
        heads: 2,
        eps: 1e-6,
        classes: 0,
    },
    Fixture {
        name: "timm-vit-classifier",
        family: "timm",
        heads: 4,
        eps: 1e-6,
        classes: 5,
    },
    Fixture {
        name: "timm-vit-reg-swiglu",
        family: "timm",
        heads: 4,
        eps: 1e-6,
        classes: 0,
    },
];

/// Our config and weights for a fixture.
fn to_ours(dir: &Path, f: &Fixture) -> (ModelConfig, Weights) {
    let mut w = Weights::new();
    for (k, (shape, data)) in read_all(&dir.join("model.safetensors")) {
        if let Some(ours) = rename(f.family, &k) {
            w.insert(ours, (shape, data));
        }
    }
    // Drop leading batch axes of tokens and positions.
    for k in ["cls_token", "pos_embed", "reg_tokens"] {
        if let Some((shape, _)) = w.get_mut(k) {
            shape.remove(0);
        }
    }
    w.get_mut("cls_token").unwrap().0 = vec![w["cls_token"].0[1]];
    let (d, c, p) = {
        let s = &w["patch_embed.weight"].0;
        (s[0], s[1], s[2])
    };
    let layers = (0..)
        .take_while(|i| w.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    let regs = w.get("reg_tokens").map_or(0, |t| t.0[0]);
    let pos_rows = w["pos_embed"].0[0];
    let fc1_out = w["blocks.0.mlp.fc1.weight"].0[0];
    let fc2_in = w["blocks.0.mlp.fc2.weight"].0[1];
    let swiglu = fc1_out == 2 * fc2_in;
    // Patches form a square grid after the prefix rows.
    let grid = ((pos_rows as f64).sqrt() as usize..=pos_rows)
        .rev()
        .find(|g| g * g <= pos_rows && pos_rows - g * g <= 1 + regs)
        .unwrap();
    let prefix = pos_rows - grid * grid;
    let cfg = ModelConfig {
        format_version: FORMAT_VERSION,
        image_size: grid * p,
        patch_size: p,
        in_channels: c,
        hidden_size: d,
        num_layers: layers,
        num_heads: f.heads,
        mlp: if swiglu {
            MlpKind::SwigluPacked
        } else {
            MlpKind::Gelu
        },
        mlp_hidden: fc2_in,
        qkv: if w.contains_key("blocks.0.attn.qkv.weight") {
            QkvLayout::Fused
        } else {
            QkvLayout::Separate
        },
        qkv_bias: true,
        layer_scale: w.contains_key("blocks.0.ls1"),
        num_register_tokens: regs,
        pos_embed_prefix: prefix,
        pos_interpolation: PosInterpolation::BicubicAntialias,
        norm_eps: f.eps,
        pooling: Pooling::Cls,
        num_classes: f.classes,
        class_names: None,
        preprocess: Preprocess {
            mean: [0.5; 3],
            std: [0.5; 3],
            resize_shorter: grid * p,
        },
        provenance: Provenance {
            family: SourceFamily::Preset,
            source: f.name.into(),
            key_prefix: String::new(),
        },
    };
    cfg.validate().unwrap();
    (cfg, w)
}

fn tensor(w: &Weights, name: &str) -> Tensor {
    let (s, d) = &w[name];
    Tensor::new(s.clone(), d.clone()).unwrap()
}

#[test]
fn fixtures_match_their_libraries() {
    let Some(root) = fixtures_dir() else {
        eprintln!("fixtures not found (tests/fixtures or ../shared/fixtures): skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for f in &FIXTURES {
        let dir = root.join(f.name);
        let (cfg, w) = to_ours(&dir, f);
        let ck = tmp.path().join(f.name);
        coreml_support::write_checkpoint(&ck, &cfg, &w);
        let refs = read_all(&dir.join("reference.safetensors"));
        let inputs = vec![("pixel_values".to_string(), tensor(&refs, "pixel_values"))];
        let mut outputs = vec![OutputKind::Features];
        if f.classes > 0 {
            outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
        }
        for target in [Target::Ios15, Target::Ios18] {
            for precision in [Precision::Fp32, Precision::Fp16] {
                for &output in &outputs {
                    let pkg = tmp.path().join(format!(
                        "{}-{target}-{precision}-{output:?}.mlpackage",
                        f.name
                    ));
                    let opts = ExportOptions {
                        precision,
                        target: Some(target),
                        input: InputKind::Array,
                        output: Some(output),
                        ..Default::default()
                    };
                    export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("{}: {e}", f.name));
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
                        Ok(r) if r.pass => reports.push(r.to_string()),
                        Ok(r) => failures.push(r.to_string()),
                        Err(e) => failures.push(format!("{}: {e}", pkg.display())),
                    }
                }
            }
        }
    }
    for r in &reports {
        println!("{r}\n");
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

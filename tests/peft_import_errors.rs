//! `pipeline merge` on PEFT LoRA folders: the folders our training writes round-trip
//! (merged through the PEFT route they give our own merge's weights), and a folder
//! broken in one way is refused with a message naming the file and the offending key or
//! setting, leaving nothing at `--out`.
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use safetensors::tensor::{Dtype, TensorView};

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

/// A case: a converted base and a copy of one of its PEFT folders, ready to break.
struct Case {
    tmp: tempfile::TempDir,
    base: PathBuf,
    peft: PathBuf,
}

impl Case {
    fn new(fixture_name: &str, folder: &str) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let (base, ad) = base_and_adapters(tmp.path(), fixture_name);
        let peft = tmp.path().join("broken");
        copy_dir(&ad.join(folder), &peft);
        Case { tmp, base, peft }
    }

    fn config_path(&self) -> PathBuf {
        self.peft.join("adapter_config.json")
    }

    fn weights_path(&self) -> PathBuf {
        self.peft.join("adapter_model.safetensors")
    }

    /// Sets one key of `adapter_config.json`.
    fn set_config(&self, key: &str, value: serde_json::Value) {
        let path = self.config_path();
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    }

    /// Merges the broken folder onto `base` through the CLI: it must fail and leave
    /// nothing behind at `--out` (nor a temporary sibling). Returns the error printed.
    fn refused_on(&self, base: &Path) -> String {
        let out_parent = self.tmp.path().join("out");
        std::fs::create_dir(&out_parent).unwrap();
        let out = out_parent.join("merged");
        let o = pipeline()
            .args(["merge", "--base"])
            .arg(base)
            .arg("--adapters")
            .arg(&self.peft)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !o.status.success(),
            "merge accepted a broken folder:\n{}{err}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(!out.exists(), "{} was written", out.display());
        let left: Vec<_> = std::fs::read_dir(&out_parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        eprintln!("{err}");
        err
    }

    fn refused(&self) -> String {
        self.refused_on(&self.base)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        assert!(e.file_type().unwrap().is_file());
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn assert_names(err: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(err.contains(w), "the message does not name `{w}`:\n{err}");
    }
}

/// Rewrites a safetensors file with extra float32 tensors added to what it holds.
fn add_tensors(path: &Path, extra: &[(&str, Vec<usize>)]) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
    let data: Vec<Vec<u8>> = extra
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            (0..n)
                .flat_map(|i| (0.01 * i as f32).to_le_bytes())
                .collect()
        })
        .collect();
    for ((name, shape), bytes) in extra.iter().zip(&data) {
        views.push((
            name.to_string(),
            TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
        ));
    }
    let out = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(path, out).unwrap();
}

fn keys(path: &Path) -> Vec<String> {
    read_tensors(path).into_keys().collect()
}

#[test]
fn dora_in_the_config_is_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    c.set_config("use_dora", serde_json::json!(true));
    let err = c.refused();
    assert_names(&err, &[&c.config_path().display().to_string(), "use_dora"]);
}

#[test]
fn trained_biases_are_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    c.set_config("bias", serde_json::json!("all"));
    let err = c.refused();
    assert_names(
        &err,
        &[&c.config_path().display().to_string(), "bias", "`all`"],
    );
}

#[test]
fn another_peft_method_is_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    c.set_config("peft_type", serde_json::json!("IA3"));
    let err = c.refused();
    assert_names(
        &err,
        &[&c.config_path().display().to_string(), "peft_type", "IA3"],
    );
}

#[test]
fn per_module_ranks_are_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    c.set_config(
        "rank_pattern",
        serde_json::json!({"layers.0.attention.q_proj": 8}),
    );
    let err = c.refused();
    assert_names(
        &err,
        &[&c.config_path().display().to_string(), "rank_pattern"],
    );
}

#[test]
fn a_missing_config_is_named() {
    let c = Case::new("hf-vit-backbone", "peft");
    std::fs::remove_file(c.config_path()).unwrap();
    let err = c.refused();
    assert_names(&err, &[&c.config_path().display().to_string()]);
}

#[test]
fn a_truncated_weights_file_is_named() {
    let c = Case::new("hf-vit-backbone", "peft");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.weights_path())
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = c.refused();
    assert_names(&err, &[&c.weights_path().display().to_string()]);
}

#[test]
fn a_pickled_adapter_is_not_read_and_the_way_out_is_given() {
    let c = Case::new("hf-vit-backbone", "peft");
    let bin = c.peft.join("adapter_model.bin");
    std::fs::rename(c.weights_path(), &bin).unwrap();
    let err = c.refused();
    assert_names(
        &err,
        &[
            &bin.display().to_string(),
            "pickled",
            "save_pretrained",
            "safe_serialization=True",
        ],
    );
}

#[test]
fn an_adapter_of_another_base_is_refused_by_its_shapes() {
    // DINOv2 with registers (hidden 48) and DINOv2 (hidden 32) share their module names.
    let c = Case::new("hf-dinov2-registers", "peft");
    let (_t, other) = converted("hf-dinov2");
    let err = c.refused_on(&other);
    let a = "base_model.model.encoder.layer.0.attention.q_proj.lora_A.weight";
    assert!(
        keys(&c.weights_path()).iter().any(|k| k == a),
        "{:?}",
        keys(&c.weights_path())
    );
    assert_names(
        &err,
        &[
            &c.weights_path().display().to_string(),
            a,
            "[4, 48]",
            "[48, 4]",
            "[32, 32]",
        ],
    );
}

#[test]
fn an_adapter_for_another_model_names_a_key_that_matches_nothing() {
    // transformers ViT names onto a timm base.
    let c = Case::new("hf-vit-backbone", "peft");
    let (_t, timm) = converted("timm-vit-classifier");
    let err = c.refused_on(&timm);
    let all = keys(&c.weights_path());
    let named = all
        .iter()
        .find(|k| err.contains(&format!("`{k}`")))
        .unwrap_or_else(|| panic!("no key of {all:?} in:\n{err}"));
    assert!(named.starts_with("base_model.model."), "{named}");
    assert_names(
        &err,
        &[
            &c.weights_path().display().to_string(),
            "names no",
            "(tried timm names)",
        ],
    );
}

#[test]
fn lora_on_the_patch_embedding_is_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    let a = "base_model.model.embeddings.patch_embeddings.projection.lora_A.weight";
    let b = "base_model.model.embeddings.patch_embeddings.projection.lora_B.weight";
    // PEFT's LoRA on a Conv2d: A a conv of the kernel's size to r, B a 1x1 conv back.
    add_tensors(
        &c.weights_path(),
        &[(a, vec![4, 3, 8, 8]), (b, vec![48, 4, 1, 1])],
    );
    let err = c.refused();
    assert_names(
        &err,
        &[
            &c.weights_path().display().to_string(),
            a,
            "not one of its linear layers",
        ],
    );
}

#[test]
fn a_dora_magnitude_vector_without_use_dora_is_refused() {
    let c = Case::new("hf-vit-backbone", "peft");
    let m = "base_model.model.layers.0.attention.q_proj.lora_magnitude_vector";
    assert!(
        keys(&c.weights_path())
            .iter()
            .any(|k| k.starts_with("base_model.model.layers.0.attention.q_proj.")),
        "{:?}",
        keys(&c.weights_path())
    );
    add_tensors(&c.weights_path(), &[(m, vec![48])]);
    let err = c.refused();
    assert_names(&err, &[&c.weights_path().display().to_string(), m, "DoRA"]);
}

/// Merges through the CLI and returns what it printed.
fn merge_ok(base: &Path, adapters: &Path, out: &Path) -> String {
    run_ok(
        pipeline()
            .args(["merge", "--base"])
            .arg(base)
            .arg("--adapters")
            .arg(adapters)
            .arg("--out")
            .arg(out),
    )
}

#[test]
fn our_peft_folders_merge_to_the_weights_of_our_own_merge() {
    for (name, folder, naming) in [
        ("hf-dinov2", "peft", "transformers 5 backbone"),
        ("timm-vit-reg-swiglu", "peft", "timm"),
        (
            "hf-vit-backbone",
            "peft-transformers4",
            "transformers 4 backbone",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (base, ad) = base_and_adapters(tmp.path(), name);
        let ours = tmp.path().join("ours");
        let theirs = tmp.path().join("theirs");
        merge_ok(&base, &ad, &ours);
        let printed = merge_ok(&base, &ad.join(folder), &theirs);
        assert!(
            printed.contains(&format!("PEFT LoRA ({naming} names, r 4, alpha 8")),
            "{name}: {printed}"
        );
        let a = read_tensors(&ours.join("model.safetensors"));
        let b = read_tensors(&theirs.join("model.safetensors"));
        // A backbone class has no head, so its folder carries none (the head goes to
        // `peft-classifier/`): the PEFT merge has exactly the base's tensors.
        let head_in_folder = keys(&ad.join(folder).join("adapter_model.safetensors"))
            .iter()
            .any(|k| k.ends_with("classifier.weight") || k.ends_with(".head.weight"));
        let missing: BTreeSet<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        assert!(extra.is_empty(), "{name}: {extra:?}");
        if head_in_folder {
            assert!(missing.is_empty(), "{name}: {missing:?}");
        } else {
            let head: BTreeSet<&String> = a.keys().filter(|k| k.starts_with("head.")).collect();
            assert_eq!(missing, head, "{name}");
        }
        let mut worst = (0f32, String::new());
        for (k, t) in &b {
            assert_eq!(t.shape, a[k].shape, "{name}: {k}");
            let d = max_abs_diff(&t.data, &a[k].data);
            if d >= worst.0 {
                worst = (d, k.clone());
            }
        }
        assert!(
            worst.0 < 1e-5,
            "{name}: `{}` differs by {}",
            worst.1,
            worst.0
        );
        eprintln!(
            "{name} {folder}: {} tensors, max |ours - PEFT| {:.1e} ({})",
            b.len(),
            worst.0,
            worst.1
        );
    }
}

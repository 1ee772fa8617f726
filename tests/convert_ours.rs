//! `convert` of our own checkpoint folder (model.json + model.safetensors, as convert and
//! train write them): validated and copied byte for byte, or refused naming the file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use mlx_coreml_pipeline::checkpoint::{self, Checkpoint, TensorOut};
use mlx_coreml_pipeline::convert::{convert, ConvertOptions};

fn run(src: &Path, out: &Path, opts: &ConvertOptions) -> Result<(), String> {
    convert(src.to_str().unwrap(), out, opts)
        .map(|r| assert_eq!(r.family, "ours (checkpoint folder)"))
        .map_err(|e| e.to_string())
}

/// Copies a checkpoint folder (its two files) to `dst`.
fn copy_checkpoint(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for f in [checkpoint::CONFIG_FILE, checkpoint::WEIGHTS_FILE] {
        fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

fn expect_refused(src: &Path, needles: &[&str]) {
    let out = src.parent().unwrap().join(format!(
        "{}-out",
        src.file_name().unwrap().to_string_lossy()
    ));
    let err = run(src, &out, &ConvertOptions::default()).expect_err("should be refused");
    for n in needles {
        assert!(err.contains(n), "error `{err}` does not mention `{n}`");
    }
    assert!(!out.exists(), "output folder left behind");
}

#[test]
fn our_checkpoint_is_copied_unchanged() {
    // A converted transformers classifier: head, class names, provenance.
    let (tmp, ours) = converted("hf-vit-classifier");
    let out = tmp.path().join("copy");
    run(&ours, &out, &ConvertOptions::default()).unwrap();
    for f in [checkpoint::CONFIG_FILE, checkpoint::WEIGHTS_FILE] {
        assert_eq!(
            fs::read(ours.join(f)).unwrap(),
            fs::read(out.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let (a, b) = (
        Checkpoint::load(&ours).unwrap(),
        Checkpoint::load(&out).unwrap(),
    );
    assert_eq!(
        a.content_hash(),
        b.content_hash(),
        "adapters would not apply"
    );
    assert_eq!(a.config, b.config);

    // An existing output needs --force.
    let err = run(&ours, &out, &ConvertOptions::default()).unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    let force = ConvertOptions {
        force: true,
        ..Default::default()
    };
    run(&ours, &out, &force).unwrap();
}

#[test]
fn our_checkpoint_with_image_size_is_resampled() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    convert("preset:vit-micro8", &base, &ConvertOptions::default()).unwrap();
    let out = tmp.path().join("48");
    let opts = ConvertOptions {
        image_size: Some(48),
        ..Default::default()
    };
    run(&base, &out, &opts).unwrap();
    let ck = Checkpoint::load(&out).unwrap();
    assert_eq!(ck.config.image_size, 48);
    assert_eq!(ck.shape("pos_embed"), vec![1 + 6 * 6, 64]);
    let odd = ConvertOptions {
        image_size: Some(50),
        ..Default::default()
    };
    let err = run(&base, &tmp.path().join("50"), &odd).unwrap_err();
    assert!(err.contains("not a multiple of the patch size"), "{err}");
    assert!(!tmp.path().join("50").exists());
}

#[test]
fn the_committed_quickstart_base_converts() {
    let base: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart-base");
    let tmp = tempfile::tempdir().unwrap();
    run(&base, &tmp.path().join("m"), &ConvertOptions::default()).unwrap();
    let ck = Checkpoint::load(&tmp.path().join("m")).unwrap();
    assert_eq!((ck.config.image_size, ck.config.patch_size), (32, 8));
}

#[test]
fn malformed_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    convert("preset:vit-micro8", &good, &ConvertOptions::default()).unwrap();
    let weights = |dir: &Path| dir.join(checkpoint::WEIGHTS_FILE);

    // Truncated weights.
    let dir = tmp.path().join("truncated");
    copy_checkpoint(&good, &dir);
    let bytes = fs::read(weights(&dir)).unwrap();
    fs::write(weights(&dir), &bytes[..bytes.len() / 2]).unwrap();
    expect_refused(&dir, &["not a valid checkpoint", "model.safetensors"]);

    // No weights at all.
    let dir = tmp.path().join("no-weights");
    copy_checkpoint(&good, &dir);
    fs::remove_file(weights(&dir)).unwrap();
    expect_refused(&dir, &["not a valid checkpoint", "model.safetensors"]);

    // A tensor missing, and one the config does not know.
    let tensors = read_tensors(&weights(&good));
    let rewrite = |dir: &Path, keep: &dyn Fn(&str) -> bool, extra: Option<&str>| {
        copy_checkpoint(&good, dir);
        let mut outs: Vec<TensorOut<'static>> = tensors
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| TensorOut::owned(n.clone(), t.shape.clone(), t.data.clone()))
            .collect();
        if let Some(name) = extra {
            outs.push(TensorOut::owned(name, vec![2], vec![0.0, 1.0]));
        }
        checkpoint::write_safetensors(&weights(dir), &outs, None).unwrap();
    };
    let dir = tmp.path().join("missing");
    rewrite(&dir, &|n| n != "blocks.0.attn.qkv.weight", None);
    expect_refused(&dir, &["missing tensors", "blocks.0.attn.qkv.weight"]);
    let dir = tmp.path().join("extra");
    rewrite(&dir, &|_| true, Some("stray.weight"));
    expect_refused(&dir, &["unexpected tensors", "stray.weight"]);

    // A config that does not parse, and one with an unknown key.
    let dir = tmp.path().join("bad-json");
    copy_checkpoint(&good, &dir);
    fs::write(dir.join(checkpoint::CONFIG_FILE), "{ not json").unwrap();
    expect_refused(&dir, &["not a valid checkpoint", "model.json"]);
    let dir = tmp.path().join("unknown-key");
    copy_checkpoint(&good, &dir);
    let text = fs::read_to_string(dir.join(checkpoint::CONFIG_FILE)).unwrap();
    let text = text.replacen('{', "{\n  \"colour\": \"blue\",", 1);
    fs::write(dir.join(checkpoint::CONFIG_FILE), text).unwrap();
    expect_refused(&dir, &["model.json", "colour"]);

    // A folder with neither model.json nor config.json names both.
    let dir = tmp.path().join("empty");
    fs::create_dir_all(&dir).unwrap();
    let err = convert(
        dir.to_str().unwrap(),
        &tmp.path().join("empty-out"),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("config.json") && err.contains("model.json"),
        "{err}"
    );
}

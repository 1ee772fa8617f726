//! Hub sources resolve from the Hugging Face cache layout when offline, and say clearly
//! when a repo is not cached. (One test per binary: it sets process environment.)
#![cfg(feature = "hub")]

mod common;

use std::fs;

use common::*;
use mlx_coreml_pipeline::convert::{convert, ConvertOptions};

#[test]
fn offline_hub_source_uses_cache_or_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let repo = home.join("hub/models--owkin--phikon-fixture");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), commit).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        fs::copy(fixture("hf-vit-backbone").join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let out = tmp.path().join("out");
    let r = convert("owkin/phikon-fixture", &out, &ConvertOptions::default()).unwrap();
    assert_eq!(r.source, "owkin/phikon-fixture");
    let ck = mlx_coreml_pipeline::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(ck.config.provenance.source, "owkin/phikon-fixture");
    assert_eq!(ck.config.hidden_size, 48);

    let err = convert(
        "owkin/not-cached",
        &tmp.path().join("out2"),
        &ConvertOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(!tmp.path().join("out2").exists());
}

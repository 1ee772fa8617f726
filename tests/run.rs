//! `pipeline run` on the quickstart: every stage end to end, coremltools reads the package,
//! unchanged stages are not redone, a changed learning rate redoes training onwards, and
//! config errors are clear.
#![cfg(feature = "mlx")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The quickstart config with its run folder moved into `dir`.
fn config_in(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/quickstart.toml")).unwrap();
    let data = root().join("examples/quickstart-data");
    let text = text
        .replace(
            "out = \"../runs/quickstart\"",
            &format!("out = {:?}", dir.join("run")),
        )
        .replace("data = \"quickstart-data\"", &format!("data = {data:?}"));
    let p = dir.join("quickstart.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = pipeline().arg("run").args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn status_of(stdout: &str, stage: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with(stage))
        .map(|l| l[8..].trim().to_string())
        .unwrap_or_default()
}

#[test]
fn quickstart_end_to_end_then_cached_then_partial_redo() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_in(tmp.path());
    let c = cfg.to_str().unwrap();
    let (ok, out, err) = run(&[c, "--quiet", "--set", "train.epochs=4"]);
    assert!(ok, "{out}{err}");
    for stage in ["convert", "train", "merge", "export", "verify"] {
        assert!(status_of(&out, stage).starts_with("done"), "{stage}: {out}");
    }
    assert!(status_of(&out, "bench").starts_with("skipped"), "{out}");
    let run_dir = tmp.path().join("run");
    for f in [
        "model/model.json",
        "train/adapters/adapters.safetensors",
        "train/curves.png",
        "merged/model.json",
        "model.mlpackage/Manifest.json",
        "verify.json",
        "reference.json",
        "summary.md",
        "summary.json",
    ] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    let verify: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("verify.json")).unwrap())
            .unwrap();
    assert_eq!(verify["pass"], true);
    // What verify compared against, as coreml-bench --reference reads it.
    let reference =
        mlx_coreml_pipeline::bench::ReferenceFile::read(&run_dir.join("reference.json")).unwrap();
    assert!(
        reference.inputs.contains_key("image"),
        "{:?}",
        reference.inputs.keys()
    );
    assert!(
        reference.outputs.contains_key("classLabel_probs") && reference.class_labels.is_some(),
        "{:?}",
        reference.outputs.keys()
    );
    // coremltools parses the spec and rebuilds the program from our weight.bin.
    let st = Command::new("python3")
        .arg(root().join("scripts/check_coreml.py"))
        .arg(run_dir.join("model.mlpackage"))
        .status()
        .unwrap();
    assert!(st.success(), "coremltools rejected the quickstart package");

    let (ok, out, err) = run(&[c, "--quiet", "--set", "train.epochs=4"]);
    assert!(ok, "{err}");
    for stage in ["convert", "train", "merge", "export", "verify"] {
        assert!(
            status_of(&out, stage).starts_with("skipped (unchanged)"),
            "{stage}: {out}"
        );
    }

    let (ok, out, err) = run(&[
        c,
        "--quiet",
        "--set",
        "train.epochs=4",
        "--set",
        "train.lr=1e-3",
    ]);
    assert!(ok, "{err}");
    assert!(status_of(&out, "convert").starts_with("skipped"), "{out}");
    for stage in ["train", "merge", "export", "verify"] {
        assert!(status_of(&out, stage).starts_with("done"), "{stage}: {out}");
    }
    let (ok, out, _) = run(&[
        c,
        "--quiet",
        "--set",
        "train.epochs=4",
        "--set",
        "train.lr=1e-3",
        "--from",
        "export",
    ]);
    assert!(ok);
    assert!(
        status_of(&out, "merge").starts_with("skipped")
            && status_of(&out, "export").starts_with("done"),
        "{out}"
    );
}

#[test]
fn config_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_in(tmp.path());
    let text = std::fs::read_to_string(&cfg).unwrap();
    let write = |name: &str, t: String| {
        let p = tmp.path().join(name);
        std::fs::write(&p, t).unwrap();
        p
    };
    let unknown = write(
        "unknown.toml",
        text.replace("mode = \"lora\"", "mode = \"lora\"\nlearning_rate = 1"),
    );
    let (ok, _, err) = run(&[unknown.to_str().unwrap()]);
    assert!(
        !ok && err.contains("unknown field `learning_rate`") && err.contains("line 15"),
        "{err}"
    );
    let wrong_type = write(
        "type.toml",
        text.replace("epochs = 12", "epochs = \"many\""),
    );
    let (ok, _, err) = run(&[wrong_type.to_str().unwrap()]);
    assert!(
        !ok && err.contains("epochs") && err.contains("type.toml"),
        "{err}"
    );
    let missing = write(
        "missing.toml",
        text.replace("quickstart-data", "no-such-folder"),
    );
    let (ok, _, err) = run(&[missing.to_str().unwrap()]);
    assert!(
        !ok && err.contains("no-such-folder") && err.contains("does not exist"),
        "{err}"
    );
    let (ok, _, err) = run(&[cfg.to_str().unwrap(), "--set", "train.epochz=1"]);
    assert!(!ok && err.contains("epochz"), "{err}");
}

#[test]
fn example_model_configs_are_valid() {
    let dir = root().join("examples/models");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let cfg = mlx_coreml_pipeline::run::load_config(&p, &[])
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(
                cfg.convert.source.contains('/'),
                "{}: hub id expected",
                p.display()
            );
            n += 1;
        }
    }
    assert_eq!(n, 5);
}

//! `pipeline run` on the quickstart: every stage end to end, coremltools reads the package,
//! unchanged stages are not redone, a changed learning rate redoes training onwards, and
//! config errors are clear. With `[merge] adapters` (ours or PEFT) training is skipped and
//! the given adapters are merged, exported and verified.
#![cfg(feature = "mlx")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use mlx_coreml_pipeline::train::adapters;

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
    let base = root().join("examples/quickstart-base");
    let text = text
        .replace(
            "out = \"../runs/quickstart\"",
            &format!("out = {:?}", dir.join("run")),
        )
        .replace("data = \"quickstart-data\"", &format!("data = {data:?}"))
        .replace(
            "source = \"quickstart-base\"",
            &format!("source = {base:?}"),
        );
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

/// The quickstart exactly as shipped (pretrained base, its own epochs, the random-init
/// baseline): the validation top-1 the README promises, and a summary that shows it
/// with its pictures.
#[test]
fn quickstart_as_shipped_reaches_its_target_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_in(tmp.path());
    let (ok, out, err) = run(&[cfg.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{out}{err}");
    assert!(status_of(&out, "baseline").starts_with("done"), "{out}");
    let run_dir = tmp.path().join("run");
    let top1 = |p: &str| -> f64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join(p)).unwrap()).unwrap();
        v["final_eval"]["top1"].as_f64().unwrap()
    };
    let ours = top1("train/summary.json");
    let random = top1("baseline/train/summary.json");
    println!("quickstart: val top-1 {ours:.3} from the base, {random:.3} from random init");
    assert!(ours >= 0.80, "val top-1 {ours}");
    assert!(ours > random + 0.2, "{ours} vs random init {random}");

    let md = std::fs::read_to_string(run_dir.join("summary.md")).unwrap();
    for want in [
        "## Key numbers",
        &format!(
            "| validation top-1 (MLX, this run) | {:.1}% |",
            100.0 * ours
        ),
        &format!(
            "| validation top-1, same recipe from preset:vit-micro8 | {:.1}% |",
            100.0 * random
        ),
        "![Training curves",
        "(train/curves.png)",
        "(train/curves.svg)",
    ] {
        assert!(md.contains(want), "no {want:?} in\n{md}");
    }
    let svg = std::fs::read_to_string(run_dir.join("train/curves.svg")).unwrap();
    assert!(svg.contains("Training curves: run (LoRA r8)"), "{svg}");
    assert!(svg.contains("best checkpoint (step"));
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
        "train/curves.svg",
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

    // Compressing: only export and verify run again; an uncompressed twin is written and
    // both are judged on the labelled validation split.
    let (ok, out, err) = run(&[
        c,
        "--quiet",
        "--set",
        "train.epochs=4",
        "--set",
        "train.lr=1e-3",
        "--set",
        "export.compress=\"palette6\"",
    ]);
    assert!(ok, "{out}{err}");
    assert!(status_of(&out, "merge").starts_with("skipped"), "{out}");
    assert!(status_of(&out, "export").contains("palette6"), "{out}");
    let verify_line = status_of(&out, "verify");
    assert!(
        verify_line.contains("top-1") && verify_line.contains("uncompressed"),
        "{out}"
    );
    assert!(run_dir.join("model-fp16.mlpackage/Manifest.json").exists());
    let verify: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("verify.json")).unwrap())
            .unwrap();
    assert_eq!(verify["rule"], "top1_drop", "{verify}");
    assert_eq!(verify["compression"], "palette6");
    assert_eq!(
        verify["accuracy"]["examples"], 60,
        "the quickstart's validation split"
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
    // The line after `mode = "lora"`, 1-based.
    let line = 2 + text
        .lines()
        .position(|l| l.starts_with("mode = \"lora\""))
        .unwrap();
    let (ok, _, err) = run(&[unknown.to_str().unwrap()]);
    assert!(
        !ok && err.contains("unknown field `learning_rate`")
            && err.contains(&format!("line {line}")),
        "{err}"
    );
    let epochs = text.lines().find(|l| l.starts_with("epochs = ")).unwrap();
    let wrong_type = write("type.toml", text.replace(epochs, "epochs = \"many\""));
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

    // [merge]: an unknown key names itself and its line; a missing adapters folder is named
    // before any stage runs; no [train] data needs [merge] adapters.
    let merge_typo = write(
        "merge_typo.toml",
        format!("{text}\n[merge]\nadapterz = \"x\"\n"),
    );
    let line = text.lines().count() + 3;
    let (ok, _, err) = run(&[merge_typo.to_str().unwrap()]);
    assert!(
        !ok && err.contains("unknown field `adapterz`") && err.contains(&format!("line {line}")),
        "{err}"
    );
    let (ok, _, err) = run(&[
        cfg.to_str().unwrap(),
        "--set",
        "merge.adapters=no-such-adapters",
    ]);
    assert!(
        !ok && err.contains("merge.adapters")
            && err.contains("no-such-adapters")
            && err.contains("does not exist"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists(), "a stage ran");
    let no_data: String = text
        .lines()
        .filter(|l| !l.starts_with("data = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let no_data = write("no_data.toml", no_data);
    let (ok, _, err) = run(&[no_data.to_str().unwrap()]);
    assert!(
        !ok && err.contains("train.data") && err.contains("[merge]"),
        "{err}"
    );
}

/// `pipeline merge` of `adapters` into `base`, into `out`.
fn merge_by_hand(base: &Path, adapters: &Path, out: PathBuf) -> PathBuf {
    common::run_ok(
        pipeline()
            .arg("merge")
            .arg("--base")
            .arg(base)
            .arg("--adapters")
            .arg(adapters)
            .arg("--out")
            .arg(&out),
    );
    out
}

fn max_abs_diff_of_checkpoints(a: &Path, b: &Path) -> f32 {
    let (x, y) = (
        common::read_tensors(&a.join("model.safetensors")),
        common::read_tensors(&b.join("model.safetensors")),
    );
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    x.iter()
        .map(|(k, t)| {
            assert_eq!(t.shape, y[k].shape, "{k}");
            common::max_abs_diff(&t.data, &y[k].data)
        })
        .fold(0.0, f32::max)
}

#[test]
fn merge_adapters_fold_given_peft_or_ours_skipping_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, ad) = common::base_and_adapters(tmp.path(), "hf-vit-backbone");
    assert!(ad.join("peft/adapter_model.safetensors").exists());
    // No [train] section: the adapters path is relative to the config file.
    let cfg = tmp.path().join("given.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nout = \"run\"\n\n[convert]\nsource = {:?}\n\n[merge]\nadapters = \"adapters/peft\"\n",
            common::fixture("hf-vit-backbone")
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (ok, out, err) = run(&[c, "--quiet"]);
    assert!(ok, "{out}{err}");
    let train = status_of(&out, "train");
    assert!(
        train.starts_with("skipped") && train.contains("adapters given in [merge]"),
        "{out}"
    );
    for stage in ["convert", "merge", "export", "verify"] {
        assert!(status_of(&out, stage).starts_with("done"), "{stage}: {out}");
    }
    assert!(status_of(&out, "merge").contains("PEFT LoRA"), "{out}");
    let run_dir = tmp.path().join("run");
    assert!(!run_dir.join("train").exists());
    let verify: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("verify.json")).unwrap())
            .unwrap();
    assert_eq!(verify["pass"], true);
    let summary = std::fs::read_to_string(run_dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("adapters given in [merge]") && summary.contains("PEFT LoRA"),
        "{summary}"
    );

    // The same folder through `pipeline merge` gives the same model.
    let diff = max_abs_diff_of_checkpoints(
        &run_dir.join("merged"),
        &merge_by_hand(
            &run_dir.join("model"),
            &ad.join("peft"),
            tmp.path().join("merged-peft"),
        ),
    );
    assert!(diff < 1e-6, "run vs pipeline merge: {diff}");

    // Unchanged: all cached.
    let (ok, out, err) = run(&[c, "--quiet"]);
    assert!(ok, "{out}{err}");
    for stage in ["convert", "merge", "export", "verify"] {
        assert!(
            status_of(&out, stage).starts_with("skipped (unchanged)"),
            "{stage}: {out}"
        );
    }
    assert!(status_of(&out, "train").contains("adapters given"), "{out}");

    // A changed adapter (here only its config file) redoes merge onwards.
    let peft_cfg = ad.join("peft/adapter_config.json");
    let mut text = std::fs::read_to_string(&peft_cfg).unwrap();
    text.push('\n');
    std::fs::write(&peft_cfg, text).unwrap();
    let (ok, out, err) = run(&[c, "--quiet"]);
    assert!(ok, "{out}{err}");
    assert!(
        status_of(&out, "convert").starts_with("skipped (unchanged)"),
        "{out}"
    );
    for stage in ["merge", "export", "verify"] {
        assert!(status_of(&out, stage).starts_with("done"), "{stage}: {out}");
    }

    // Our own adapters folder folds the same way, onto the same model.
    let ours = ad.to_str().unwrap().to_string();
    let (ok, out, err) = run(&[c, "--quiet", "--set", &format!("merge.adapters={ours:?}")]);
    assert!(ok, "{out}{err}");
    assert!(
        status_of(&out, "merge").starts_with("done")
            && status_of(&out, "merge").contains(adapters::FORMAT),
        "{out}"
    );
    assert!(status_of(&out, "verify").starts_with("done"), "{out}");
    let diff = max_abs_diff_of_checkpoints(
        &run_dir.join("merged"),
        &merge_by_hand(&run_dir.join("model"), &ad, tmp.path().join("merged-ours")),
    );
    assert!(diff < 1e-6, "run vs pipeline merge (ours): {diff}");
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

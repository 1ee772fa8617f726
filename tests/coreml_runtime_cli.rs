//! `pipeline verify --runtime coreml` and `pipeline bench --report RAW` from the command
//! line, where Core ML is not: the first says plainly what it needs before doing any work,
//! the second computes and renders a report from a recorded raw harness file.

use std::path::Path;
use std::process::Command;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

#[test]
fn verify_with_core_ml_says_what_it_needs_off_a_mac() {
    if cfg!(all(target_os = "macos", feature = "coreml")) {
        return;
    }
    // No package and no model are read: the check comes first.
    let o = pipeline()
        .args(["verify", "missing.mlpackage", "--runtime", "coreml"])
        .output()
        .expect("run pipeline");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let expected = if cfg!(target_os = "macos") {
        "--features coreml"
    } else {
        "needs macOS"
    };
    assert!(err.contains(expected), "{err}");
    let o = pipeline()
        .args([
            "verify",
            "m.mlpackage",
            "--runtime",
            "coreml",
            "--compute-units",
            "npu",
        ])
        .output()
        .expect("run pipeline");
    assert!(String::from_utf8_lossy(&o.stderr).contains("`npu` is not cpu, gpu, ane or all"));
}

#[test]
fn bench_renders_a_report_computed_from_a_raw_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bench");
    let raw = tmp.path().join("m.bench.raw.json");
    std::fs::copy(data.join("raw-failed-unit.json"), &raw).unwrap();
    let o = pipeline()
        .arg("bench")
        .arg("--report")
        .arg(&raw)
        .output()
        .expect("run pipeline");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("ane"), "{out}");
    assert!(tmp.path().join("m.bench.raw.png").exists());
}

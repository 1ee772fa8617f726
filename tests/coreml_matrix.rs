//! Exports a matrix of packages (every target x fp16/fp32 x image/array x
//! classifier/features, over several model variants) and has coremltools check them
//! with `scripts/check_coreml.py`: coremltools rebuilding our programs through its own
//! builder is the proof that the bytes are valid Core ML.
//!
//! Set `COREML_MATRIX_DIR` to keep the packages; set `COREML_CHECK_REQUIRED=1` (CI) to
//! fail instead of skipping when coremltools is not installed.

mod coreml_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use coreml_support::{config, random_tensors, write_checkpoint, Variant};
use mlx_coreml_pipeline::coreml::{
    export, ExportOptions, InputKind, OutputKind, Precision, Target,
};

fn export_matrix(root: &Path) -> Vec<PathBuf> {
    let mut pkgs = Vec::new();
    for (vi, v) in Variant::ALL.iter().enumerate() {
        let cfg = config(*v);
        let ck = root.join(format!("ck-{vi}"));
        write_checkpoint(&ck, &cfg, &random_tensors(&cfg, 7 + vi as u64));
        let mut outputs = vec![OutputKind::Features];
        if cfg.num_classes > 0 {
            outputs.extend([OutputKind::Classifier, OutputKind::Logits]);
        }
        for target in Target::ALL {
            for precision in [Precision::Fp16, Precision::Fp32] {
                for input in [InputKind::Image, InputKind::Array] {
                    for &output in &outputs {
                        // Logits are checked on one variant only, to keep the run short.
                        if output == OutputKind::Logits && vi != 0 {
                            continue;
                        }
                        let name =
                            format!("v{vi}-{target}-{precision}-{input:?}-{output:?}.mlpackage");
                        let out = root.join(name);
                        let opts = ExportOptions {
                            precision,
                            target: Some(target),
                            input,
                            output: Some(output),
                            force: true,
                            ..Default::default()
                        };
                        export(&ck, &out, &opts)
                            .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
                        pkgs.push(out);
                        // fp16 I/O where the target allows it.
                        if target >= Target::Ios16
                            && input == InputKind::Array
                            && precision == Precision::Fp16
                        {
                            let out =
                                root.join(format!("v{vi}-{target}-fp16io-{output:?}.mlpackage"));
                            let opts = ExportOptions {
                                io_fp16: true,
                                ..opts
                            };
                            export(&ck, &out, &opts)
                                .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
                            pkgs.push(out);
                        }
                    }
                }
            }
        }
    }
    pkgs
}

fn coremltools_available() -> bool {
    Command::new("python3")
        .args(["-c", "import coremltools"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn coremltools_accepts_every_exported_package() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::env::var_os("COREML_MATRIX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).unwrap();
    let pkgs = export_matrix(&root);
    assert!(pkgs.len() > 100, "{} packages", pkgs.len());

    if !coremltools_available() {
        let required = std::env::var("COREML_CHECK_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "coremltools is required (COREML_CHECK_REQUIRED=1) but not installed"
        );
        eprintln!(
            "coremltools not installed: exported {} packages, skipped the check",
            pkgs.len()
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_coreml.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(&pkgs)
        .output()
        .expect("run check_coreml.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success(),
        "check_coreml.py failed:\n{}\n{}",
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Real transformers / timm checkpoints (the fixtures), converted with `convert`,
//! exported, and run by our interpreter: compared with the outputs their own libraries
//! produced, for both ends of the target range and both precisions.

mod common;

use common::*;
use mlx_coreml_pipeline::coreml::{
    export, verify_against, ExportOptions, InputKind, OutputKind, Precision, Target, Tensor,
};

fn tensor(refs: &std::collections::BTreeMap<String, common::Tensor>, name: &str) -> Tensor {
    let t = &refs[name];
    Tensor::new(t.shape.clone(), t.data.clone()).unwrap()
}

#[test]
fn fixtures_match_their_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for name in FIXTURES {
        let (_keep, ck) = converted(name);
        let refs = reference(name);
        let inputs = vec![("pixel_values".to_string(), tensor(&refs, "pixel_values"))];
        let mut outputs = vec![OutputKind::Features];
        if refs.contains_key("logits") {
            outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
        }
        for target in [Target::Ios15, Target::Ios18] {
            for precision in [Precision::Fp32, Precision::Fp16] {
                for &output in &outputs {
                    let pkg = tmp.path().join(format!(
                        "{}-{target}-{precision}-{output:?}.mlpackage",
                        name
                    ));
                    let opts = ExportOptions {
                        precision,
                        target: Some(target),
                        input: InputKind::Array,
                        output: Some(output),
                        ..Default::default()
                    };
                    export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("{}: {e}", name));
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

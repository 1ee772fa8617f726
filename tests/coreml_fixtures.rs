//! Real transformers / timm checkpoints (the fixtures), converted with `convert`,
//! exported, and run by our interpreter: compared with the outputs their own libraries
//! produced, for every deployment target, both precisions, both input kinds and every
//! output kind the model has.

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
        let pixels = tensor(&refs, "pixel_values");
        // The same inputs for an image-input package: 0..255 values that its built-in
        // preprocessing maps back onto the reference's normalised pixels.
        let cfg = mlx_coreml_pipeline::checkpoint::read_config(&ck).unwrap();
        let raw = raw_planes(&pixels.data, &pixels.shape, &cfg.preprocess);
        let raw = Tensor::new(pixels.shape.clone(), raw).unwrap();
        let mut outputs = vec![OutputKind::Features];
        if refs.contains_key("logits") {
            outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
        }
        for target in [Target::Ios15, Target::Ios16, Target::Ios17, Target::Ios18] {
            for precision in [Precision::Fp32, Precision::Fp16] {
                for (&output, input) in outputs
                    .iter()
                    .flat_map(|o| [(o, InputKind::Array), (o, InputKind::Image)])
                {
                    let pkg = tmp.path().join(format!(
                        "{}-{target}-{precision}-{output:?}-{input:?}.mlpackage",
                        name
                    ));
                    let inputs = match input {
                        InputKind::Array => vec![("pixel_values".to_string(), pixels.clone())],
                        InputKind::Image => vec![("image".to_string(), raw.clone())],
                    };
                    let opts = ExportOptions {
                        precision,
                        target: Some(target),
                        input,
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

//! Class token + patch mean pooling (transformers `Dinov2ForImageClassification`): the
//! emitted program, run by our interpreter, against the independent float32 forward of
//! tests/coreml_support, for every target, precision, input kind and output kind. The
//! `embedding` output is 2D wide and the head reads all of it.

mod coreml_support;

use coreml_support::{
    config, normalise, random_tensors, reference_forward, softmax, write_checkpoint, RefOut, Rng,
    Variant,
};
use mlx_coreml_pipeline::config::ModelConfig;
use mlx_coreml_pipeline::coreml::{
    export, run_package, verify_against, ExportOptions, InputKind, Output, OutputKind, Precision,
    Target, Tensor,
};

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Two model inputs of `kind` and the reference outputs for them.
fn cases(cfg: &ModelConfig, w: &Weights, kind: InputKind) -> Vec<(Tensor, RefOut)> {
    let mut rng = Rng::new(91);
    let s = cfg.image_size;
    (0..2)
        .map(|_| {
            let n = 3 * s * s;
            let (input, pixels) = match kind {
                InputKind::Image => {
                    let rgb: Vec<f32> = (0..n).map(|_| (rng.uniform() * 255.0).floor()).collect();
                    let px = normalise(cfg, &rgb);
                    (rgb, px)
                }
                InputKind::Array => {
                    let px = rng.normals(n, 1.0);
                    (px.clone(), px)
                }
            };
            let r = reference_forward(cfg, w, &pixels);
            (Tensor::new(vec![1, 3, s, s], input).unwrap(), r)
        })
        .collect()
}

type Weights = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

fn input_name(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Image => "image",
        InputKind::Array => "pixel_values",
    }
}

/// fp32 packages straight against the reference, to 1e-4 absolute.
fn check_fp32(
    pkg: &std::path::Path,
    cfg: &ModelConfig,
    kind: InputKind,
    output: OutputKind,
    cases: &[(Tensor, RefOut)],
) -> Result<(), String> {
    for (x, r) in cases {
        let out = run_package(pkg, &[(input_name(kind), x.clone())]).map_err(|e| e.to_string())?;
        let tensor = |n: &str| {
            out.get(n)
                .and_then(Output::as_tensor)
                .ok_or(format!("no {n}"))
        };
        let errs = match output {
            OutputKind::Features => {
                let e = tensor("embedding")?;
                if e.shape != [1, 2 * cfg.hidden_size] {
                    return Err(format!("embedding shape {:?}", e.shape));
                }
                vec![
                    ("embedding", max_abs(&e.data, &r.pooled)),
                    ("tokens", max_abs(&tensor("tokens")?.data, &r.tokens)),
                ]
            }
            OutputKind::Logits => vec![("logits", max_abs(&tensor("logits")?.data, &r.logits))],
            OutputKind::Classifier => {
                let Some(Output::Probabilities(p)) = out.get("classLabel_probs") else {
                    return Err("no probabilities".into());
                };
                let probs: Vec<f32> = p.iter().map(|(_, v)| *v as f32).collect();
                vec![("probabilities", max_abs(&probs, &softmax(&r.logits)))]
            }
        };
        for (n, e) in errs {
            if e.is_nan() || e >= 1e-4 {
                return Err(format!("{n} max abs error {e:e}"));
            }
        }
    }
    Ok(())
}

/// Both precisions through `verify_against` with its thresholds (a batch of the cases).
fn check_verify(
    pkg: &std::path::Path,
    cfg: &ModelConfig,
    kind: InputKind,
    output: OutputKind,
    precision: Precision,
    cases: &[(Tensor, RefOut)],
) -> Result<(), String> {
    let (s, t, d) = (cfg.image_size, cfg.num_tokens(), cfg.hidden_size);
    let stack = |f: &dyn Fn(&(Tensor, RefOut)) -> Vec<f32>, tail: &[usize]| {
        let mut shape = vec![cases.len()];
        shape.extend_from_slice(tail);
        Tensor::new(shape, cases.iter().flat_map(f).collect()).unwrap()
    };
    let inputs = vec![(
        input_name(kind).to_string(),
        stack(&|c| c.0.data.clone(), &[3, s, s]),
    )];
    let refs = match output {
        OutputKind::Features => vec![
            (
                "pooled".to_string(),
                stack(&|c| c.1.pooled.clone(), &[cfg.pooled_dim()]),
            ),
            (
                "last_hidden_state".to_string(),
                stack(&|c| c.1.tokens.clone(), &[t, d]),
            ),
        ],
        _ => vec![(
            "logits".to_string(),
            stack(&|c| c.1.logits.clone(), &[cfg.num_classes]),
        )],
    };
    let report = verify_against(pkg, &inputs, &refs, precision).map_err(|e| e.to_string())?;
    if report.pass && report.examples == cases.len() {
        Ok(())
    } else {
        Err(format!("{report}"))
    }
}

#[test]
fn cls_mean_pooling_every_target_precision_input_output() {
    let cfg = config(Variant::ClsMeanPooling);
    assert_eq!(cfg.pooled_dim(), 2 * cfg.hidden_size);
    let w = random_tensors(&cfg, 2024);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &cfg, &w);
    let mut failures = Vec::new();
    let mut checked = 0;
    for kind in [InputKind::Image, InputKind::Array] {
        let cases = cases(&cfg, &w, kind);
        for target in Target::ALL {
            for precision in [Precision::Fp32, Precision::Fp16] {
                for output in [
                    OutputKind::Features,
                    OutputKind::Logits,
                    OutputKind::Classifier,
                ] {
                    let tag = format!("{target}/{precision}/{kind:?}/{output:?}");
                    let pkg = dir.path().join(format!(
                        "m-{target}-{precision}-{kind:?}-{output:?}.mlpackage"
                    ));
                    let opts = ExportOptions {
                        precision,
                        target: Some(target),
                        input: kind,
                        output: Some(output),
                        ..Default::default()
                    };
                    checked += 1;
                    let result = export(&ck, &pkg, &opts)
                        .map_err(|e| format!("export: {e}"))
                        .and_then(|_| match precision {
                            Precision::Fp32 => check_fp32(&pkg, &cfg, kind, output, &cases),
                            Precision::Fp16 => Ok(()),
                        })
                        .and_then(|_| {
                            if output == OutputKind::Classifier {
                                return Ok(());
                            }
                            check_verify(&pkg, &cfg, kind, output, precision, &cases)
                        });
                    if let Err(e) = result {
                        failures.push(format!("{tag}: {e}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The reference's mean really leaves the registers out: putting them in changes the
/// pooled vector, so agreement with it means the program excludes them too.
#[test]
fn reference_mean_excludes_registers() {
    let cfg = config(Variant::ClsMeanPooling);
    let w = random_tensors(&cfg, 5);
    let px = Rng::new(3).normals(3 * cfg.image_size * cfg.image_size, 1.0);
    let r = reference_forward(&cfg, &w, &px);
    let d = cfg.hidden_size;
    assert_eq!(r.pooled.len(), 2 * d);
    assert_eq!(&r.pooled[..d], &r.tokens[..d]);
    let rows = r.tokens.len() / d;
    let with_registers: Vec<f32> = (0..d)
        .map(|j| (1..rows).map(|row| r.tokens[row * d + j]).sum::<f32>() / (rows - 1) as f32)
        .collect();
    assert!(max_abs(&r.pooled[d..], &with_registers) > 1e-3);
}

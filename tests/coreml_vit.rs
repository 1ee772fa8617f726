//! The emitted programs, run by our interpreter, against an independent float32 ViT
//! forward written from the config's semantics (tests/coreml_support): every variant,
//! target, precision, input kind and output kind.

mod coreml_support;

use std::collections::HashMap;

use coreml_support::{
    config, normalise, random_tensors, reference_forward, softmax, write_checkpoint, Rng, Variant,
};
use mlx_coreml_pipeline::config::ModelConfig;
use mlx_coreml_pipeline::coreml::{
    export, run_package, verify_against, ExportOptions, InputKind, Output, OutputKind, Precision,
    Target, Tensor,
};

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Two examples: model input values and the reference outputs for them.
struct Case {
    inputs: Vec<Tensor>,
    pooled: Vec<Vec<f32>>,
    tokens: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
}

fn case(cfg: &ModelConfig, w: &Weights, input: InputKind, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let s = cfg.image_size;
    let shape = vec![1, 3, s, s];
    let mut c = Case {
        inputs: vec![],
        pooled: vec![],
        tokens: vec![],
        logits: vec![],
    };
    for _ in 0..2 {
        let n = 3 * s * s;
        let (model_in, pixels) = match input {
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
        c.inputs.push(Tensor::new(shape.clone(), model_in).unwrap());
        c.pooled.push(r.pooled);
        c.tokens.push(r.tokens);
        c.logits.push(r.logits);
    }
    c
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn stack(rows: &[Vec<f32>], shape_tail: &[usize]) -> Tensor {
    let mut shape = vec![rows.len()];
    shape.extend_from_slice(shape_tail);
    Tensor::new(shape, rows.concat()).unwrap()
}

fn input_name(input: InputKind) -> &'static str {
    match input {
        InputKind::Image => "image",
        InputKind::Array => "pixel_values",
    }
}

/// Exports one combination and checks it; returns a failure message.
#[allow(clippy::too_many_arguments)] // one argument per axis of the test matrix
fn check(
    dir: &std::path::Path,
    ck: &std::path::Path,
    cfg: &ModelConfig,
    c: &Case,
    target: Target,
    precision: Precision,
    input: InputKind,
    output: OutputKind,
) -> Result<(), String> {
    let tag = format!("{target}/{precision}/{input:?}/{output:?}");
    let pkg = dir.join(format!(
        "m-{target}-{precision}-{input:?}-{output:?}.mlpackage"
    ));
    let opts = ExportOptions {
        precision,
        target: Some(target),
        input,
        output: Some(output),
        ..Default::default()
    };
    export(ck, &pkg, &opts).map_err(|e| format!("{tag}: export: {e}"))?;
    let (d, t) = (cfg.hidden_size, cfg.num_tokens());
    let name = input_name(input);

    // fp32 straight against the reference, to 1e-4 absolute.
    if precision == Precision::Fp32 {
        for (i, x) in c.inputs.iter().enumerate() {
            let out =
                run_package(&pkg, &[(name, x.clone())]).map_err(|e| format!("{tag}: run: {e}"))?;
            let get = |n: &str| {
                out.get(n)
                    .and_then(Output::as_tensor)
                    .map(|t| t.data.clone())
            };
            let errs: Vec<(&str, f32)> = match output {
                OutputKind::Features => vec![
                    (
                        "embedding",
                        max_abs(&get("embedding").ok_or("no embedding")?, &c.pooled[i]),
                    ),
                    (
                        "tokens",
                        max_abs(&get("tokens").ok_or("no tokens")?, &c.tokens[i]),
                    ),
                ],
                OutputKind::Logits => vec![(
                    "logits",
                    max_abs(&get("logits").ok_or("no logits")?, &c.logits[i]),
                )],
                OutputKind::Classifier => {
                    let Some(Output::Probabilities(p)) = out.get("classLabel_probs") else {
                        return Err(format!("{tag}: no probabilities"));
                    };
                    let probs: Vec<f32> = p.iter().map(|(_, v)| *v as f32).collect();
                    let names: Vec<String> = p.iter().map(|(n, _)| n.clone()).collect();
                    if names != cfg.class_labels() {
                        return Err(format!("{tag}: classes {names:?}"));
                    }
                    let want = softmax(&c.logits[i]);
                    let best =
                        (0..want.len()).fold(0, |b, j| if want[j] > want[b] { j } else { b });
                    match out.get("classLabel") {
                        Some(Output::Label(l)) if *l == cfg.class_labels()[best] => {}
                        other => {
                            return Err(format!(
                                "{tag}: label {other:?}, want {}",
                                cfg.class_labels()[best]
                            ))
                        }
                    }
                    vec![("probabilities", max_abs(&probs, &want))]
                }
            };
            for (n, e) in errs {
                if e.is_nan() || e >= 1e-4 {
                    return Err(format!("{tag}: {n} max abs error {e:e}"));
                }
            }
        }
    }

    // Both precisions through `verify_against` with its thresholds.
    let inputs = vec![(
        name.to_string(),
        stack(
            &c.inputs.iter().map(|t| t.data.clone()).collect::<Vec<_>>(),
            &[3, cfg.image_size, cfg.image_size],
        ),
    )];
    let refs = match output {
        OutputKind::Features => vec![
            ("pooled".to_string(), stack(&c.pooled, &[d])),
            ("last_hidden_state".to_string(), stack(&c.tokens, &[t, d])),
        ],
        _ => vec![("logits".to_string(), stack(&c.logits, &[cfg.num_classes]))],
    };
    let report = verify_against(&pkg, &inputs, &refs, precision)
        .map_err(|e| format!("{tag}: verify: {e}"))?;
    if report.examples != 2 {
        return Err(format!("{tag}: verify ran {} examples", report.examples));
    }
    if !report.pass {
        return Err(format!("{tag}:\n{report}"));
    }
    Ok(())
}

fn run_variant(v: Variant) {
    let cfg = config(v);
    let w = random_tensors(&cfg, 1000 + v as u64);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &cfg, &w);
    let mut outputs = vec![OutputKind::Features];
    if cfg.num_classes > 0 {
        outputs.extend([OutputKind::Logits, OutputKind::Classifier]);
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for input in [InputKind::Image, InputKind::Array] {
        let c = case(&cfg, &w, input, 77 + v as u64);
        for target in Target::ALL {
            for precision in [Precision::Fp32, Precision::Fp16] {
                for &output in &outputs {
                    checked += 1;
                    if let Err(e) =
                        check(dir.path(), &ck, &cfg, &c, target, precision, input, output)
                    {
                        failures.push(e);
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{v:?}: {} of {checked} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fused_qkv_gelu_five_class_head() {
    run_variant(Variant::FusedGeluHead);
}

#[test]
fn separate_qkv_without_bias_no_head() {
    run_variant(Variant::SeparateNoHead);
}

#[test]
fn registers_without_position_and_layer_scale() {
    run_variant(Variant::RegistersPrefix1LayerScale);
}

#[test]
fn registers_patch_only_positions_packed_swiglu() {
    run_variant(Variant::RegistersPrefix0Swiglu);
}

#[test]
fn mean_pooling_registers_with_positions() {
    run_variant(Variant::MeanPooling);
}

/// The reference itself catches the mistakes the fixtures README lists, so agreement
/// with it means something: swapping the SwiGLU halves changes the output.
#[test]
fn reference_is_sensitive_to_swiglu_half_order() {
    let cfg = config(Variant::RegistersPrefix0Swiglu);
    let mut w = random_tensors(&cfg, 5);
    let px = Rng::new(3).normals(3 * cfg.image_size * cfg.image_size, 1.0);
    let a = reference_forward(&cfg, &w, &px);
    // Swap the two halves of fc1 (rows) in block 0.
    let h = cfg.mlp_hidden;
    let d = cfg.hidden_size;
    let (_, fc1) = w.get_mut("blocks.0.mlp.fc1.weight").unwrap();
    let (first, second) = fc1.split_at_mut(h * d);
    first.swap_with_slice(second);
    let (_, b1) = w.get_mut("blocks.0.mlp.fc1.bias").unwrap();
    let (first, second) = b1.split_at_mut(h);
    first.swap_with_slice(second);
    let b = reference_forward(&cfg, &w, &px);
    assert!(max_abs(&a.tokens, &b.tokens) > 1e-2);
}

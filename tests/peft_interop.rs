//! PEFT interop, proven by the other side: PyTorch (transformers 5, timm, peft; and
//! transformers 4 + its peft in a second environment) loads our `adapters/peft*/` folders
//! with the lines their READMEs give and reproduces our merged model; adapters trained
//! with PEFT in PyTorch merge with `pipeline merge` and our MLX forward and exported
//! package reproduce PyTorch. Needs `scripts/peft_interop.py`'s Python packages:
//! skipped without them unless `PEFT_CHECK_REQUIRED=1` (as `make test` sets).
#![cfg(feature = "mlx")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mlx_coreml_pipeline::checkpoint::{self, Checkpoint};
use mlx_coreml_pipeline::convert::torch_names::{Flavour, Wrapper};
use mlx_coreml_pipeline::coreml::{self, ExportOptions, InputKind, OutputKind, Precision};
use mlx_coreml_pipeline::model;
use mlx_coreml_pipeline::train::{self, peft, TrainConfig};
use mlx_rs::Array;

const TOL: f32 = 1e-4;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peft_interop.py")
}

/// An interpreter with torch + peft (+ transformers, timm), or None to skip.
fn python_with(exe: &str, required_var: &str, what: &str) -> Option<PathBuf> {
    let ok = Command::new(exe)
        .arg(script())
        .arg("versions")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(PathBuf::from(exe));
    }
    let required = std::env::var(required_var).is_ok_and(|v| v == "1");
    assert!(!required, "{what} is required ({required_var}=1) but `{exe} scripts/peft_interop.py versions` fails: run scripts/setup-python.sh");
    eprintln!("{what} not available: skipped");
    None
}

fn python() -> Option<PathBuf> {
    python_with(
        "python3",
        "PEFT_CHECK_REQUIRED",
        "torch + transformers 5 + peft + timm",
    )
}

/// The transformers 4.x environment `scripts/setup-python.sh` makes.
fn python_tf4() -> Option<PathBuf> {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tf4/bin/python");
    python_with(
        exe.to_str().unwrap(),
        "PEFT_TF4_REQUIRED",
        "transformers 4 + peft",
    )
}

fn run_py(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg(script())
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "peft_interop.py {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three classes of 32x32 images: a coloured square on noise.
fn images(root: &Path) {
    for split in ["train", "val"] {
        for (c, name) in ["red", "green", "blue"].iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..6u32 {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let n = ((x * 31 + y * 17 + i * 13) % 64) as u8;
                    let mut p = [n, n, n];
                    if (6 + i..20 + i).contains(&x) && (6..20).contains(&y) {
                        p[c] = 230;
                    }
                    image::Rgb(p)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

fn pixels_of(name: &str) -> Array {
    let px = &reference(name)["pixel_values"];
    let shape: Vec<i32> = px.shape.iter().map(|d| *d as i32).collect();
    Array::from_slice(&px.data, &shape)
}

/// (tokens, logits) of a checkpoint on the fixture's inputs.
fn forward(ck_dir: &Path, x: &Array) -> (Vec<f32>, Option<Vec<f32>>) {
    let vit = model::from_checkpoint(&Checkpoint::load(ck_dir).unwrap()).unwrap();
    let out = vit.forward(x).unwrap();
    (
        model::to_host(&out.tokens).unwrap(),
        out.logits.map(|l| model::to_host(&l).unwrap()),
    )
}

/// A short LoRA run of our own on a converted fixture: 3 classes, so every base gets a
/// new head (the classifiers' have 5).
fn our_run(name: &str, tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = tmp.join("base");
    mlx_coreml_pipeline::convert::convert(
        fixture(name).to_str().unwrap(),
        &base,
        &Default::default(),
    )
    .unwrap();
    let data = tmp.join("data");
    images(&data);
    let cfg = TrainConfig {
        data: data.clone(),
        epochs: 2,
        batch_size: 6,
        lr: 1e-2,
        workers: 1,
        augment: false,
        ..Default::default()
    };
    let run = tmp.join("run");
    train::train(&base, &run, &cfg, false, false, true).unwrap();
    let merged = tmp.join("merged");
    mlx_coreml_pipeline::merge::merge(&base, &run.join("adapters"), &merged, false).unwrap();
    (base, run, merged)
}

#[test]
fn pytorch_loads_our_adapters_and_matches_the_merged_model() {
    let Some(py) = python() else { return };
    let tf4 = python_tf4();
    let mut fixtures: Vec<&str> = FIXTURES.to_vec();
    fixtures.push("hf-dinov2-classifier");
    let mut report = Vec::new();
    for name in fixtures {
        let tmp = tempfile::tempdir().unwrap();
        let (base, run, merged) = our_run(name, tmp.path());
        let x = pixels_of(name);
        let (tokens, logits) = forward(&merged, &x);
        let (base_tokens, _) = forward(&base, &x);
        // The run must have changed the backbone, or matching it would prove nothing.
        let moved = max_abs_diff(&tokens, &base_tokens);
        assert!(
            moved > 1e-3,
            "{name}: LoRA changed the features by only {moved}"
        );
        let base_cfg = checkpoint::read_config(&base).unwrap();
        let layouts = peft::export::layouts(&base_cfg, true);
        assert!(!layouts.is_empty(), "{name}: no PEFT folders");
        for layout in layouts {
            let exe = match layout.flavour {
                Flavour::Transformers4 => match &tf4 {
                    Some(p) => p.clone(),
                    None => continue,
                },
                _ => py.clone(),
            };
            assert!(run
                .join("adapters")
                .join(layout.folder)
                .join("README.md")
                .exists());
            let out = tmp.path().join(format!("{}.safetensors", layout.folder));
            let fixture_px = fixture(name).join("reference.safetensors");
            run_py(
                &exe,
                &[
                    "load",
                    "--run",
                    run.to_str().unwrap(),
                    "--folder",
                    layout.folder,
                    "--pixels",
                    fixture_px.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                ],
            );
            let theirs = &read_tensors(&out)["output"].data;
            let (ours, what) = match (layout.flavour, layout.wrapper) {
                (Flavour::Timm, _) | (_, Wrapper::Classifier) => {
                    (logits.clone().expect("head"), "logits")
                }
                (_, Wrapper::Backbone) => (tokens.clone(), "last_hidden_state"),
            };
            let d = max_abs_diff(&ours, theirs);
            report.push(format!(
                "{name} {}: {what} max |ours - PyTorch| {d:.2e}",
                layout.folder
            ));
            assert!(
                d < TOL,
                "{name} {}: PyTorch's {what} differ from our merged model's by {d}",
                layout.folder
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// One adapter trained in PyTorch: which fixture, which class, and its options.
struct Case {
    fixture: &'static str,
    kind: &'static str,
    extra: &'static [&'static str],
    tf4: bool,
}

const CASES: [Case; 6] = [
    Case {
        fixture: "hf-vit-classifier",
        kind: "classifier",
        extra: &[],
        tf4: false,
    },
    Case {
        fixture: "hf-dinov2",
        kind: "backbone",
        extra: &[],
        tf4: false,
    },
    Case {
        fixture: "hf-dinov2-registers",
        kind: "classifier",
        extra: &["--rslora"],
        tf4: false,
    },
    Case {
        fixture: "timm-vit-classifier",
        kind: "timm",
        extra: &["--num-labels", "4"],
        tf4: false,
    },
    Case {
        fixture: "timm-vit-reg-swiglu",
        kind: "timm",
        extra: &["--swiglu"],
        tf4: false,
    },
    Case {
        fixture: "hf-vit-backbone",
        kind: "backbone",
        extra: &[],
        tf4: true,
    },
];

#[test]
fn pytorch_peft_adapters_merge_export_and_match_pytorch() {
    let Some(py) = python() else { return };
    let tf4 = python_tf4();
    let mut report = Vec::new();
    for case in CASES {
        let exe = match (case.tf4, &tf4) {
            (false, _) => py.clone(),
            (true, Some(p)) => p.clone(),
            (true, None) => continue,
        };
        let name = case.fixture;
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let adapter = t.join("peft");
        let outputs = t.join("torch.safetensors");
        let (fx, ad, ou) = (fixture(name), adapter.clone(), outputs.clone());
        let mut args = vec![
            "train",
            "--kind",
            case.kind,
            "--base",
            fx.to_str().unwrap(),
            "--out",
            ad.to_str().unwrap(),
            "--outputs",
            ou.to_str().unwrap(),
        ];
        args.extend(case.extra);
        run_py(&exe, &args);
        let base = t.join("base");
        mlx_coreml_pipeline::convert::convert(
            fixture(name).to_str().unwrap(),
            &base,
            &Default::default(),
        )
        .unwrap();
        let merged = t.join("merged");
        let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["merge", "--base"])
            .arg(&base)
            .arg("--adapters")
            .arg(&adapter)
            .arg("--out")
            .arg(&merged)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: merge failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs = &read_tensors(&outputs)["output"];
        let x = pixels_of(name);
        let backbone = case.kind == "backbone";
        let pick = |(tokens, logits): (Vec<f32>, Option<Vec<f32>>)| {
            if backbone {
                tokens
            } else {
                logits.expect("head")
            }
        };
        let ours = pick(forward(&merged, &x));
        let d = max_abs_diff(&ours, &theirs.data);
        assert!(
            d < TOL,
            "{name}: our MLX forward differs from PyTorch's adapted model by {d}"
        );
        // The adapter must matter: the base alone is far from PyTorch's adapted model.
        if backbone {
            let moved = max_abs_diff(&pick(forward(&base, &x)), &theirs.data);
            assert!(
                moved > 1e-3,
                "{name}: the adapter moved the features by only {moved}"
            );
        }
        let pkg = t.join("model.mlpackage");
        let opts = ExportOptions {
            precision: Precision::Fp32,
            input: InputKind::Array,
            output: Some(if backbone {
                OutputKind::Features
            } else {
                OutputKind::Logits
            }),
            ..Default::default()
        };
        coreml::export(&merged, &pkg, &opts).unwrap();
        let package = coreml::interp::Package::open(&pkg).unwrap();
        let px = &reference(name)["pixel_values"];
        let per = px.data.len() / px.shape[0];
        let out_name = if backbone { "tokens" } else { "logits" };
        let mut got = Vec::new();
        for i in 0..px.shape[0] {
            let mut shape = px.shape.clone();
            shape[0] = 1;
            let input =
                coreml::Tensor::new(shape, px.data[i * per..(i + 1) * per].to_vec()).unwrap();
            let outs = package.run(&[("pixel_values", input)]).unwrap();
            match &outs[out_name] {
                coreml::Output::Tensor(t) => got.extend_from_slice(&t.data),
                other => panic!("{name}: {out_name} is {other:?}"),
            }
        }
        let dp = max_abs_diff(&got, &theirs.data);
        assert!(
            dp < TOL,
            "{name}: our fp32 package differs from PyTorch's adapted model by {dp}"
        );
        report.push(format!(
            "{name} ({}{}): MLX {d:.2e}, package {dp:.2e}",
            case.kind,
            if case.tf4 { ", transformers 4" } else { "" }
        ));
    }
    println!("{}", report.join("\n"));
}

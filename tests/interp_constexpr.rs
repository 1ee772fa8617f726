//! Our interpreter's reading of compressed weights (`constexpr_*` ops), checked against
//! coremltools itself: scripts/make_compressed_reference.py compresses one of our fp16
//! packages with `ct.optimize.coreml` (every method, iOS16 and iOS18 encodings) and
//! writes `decompress_weights`' package of each; running both through our interpreter
//! must give identical outputs, since the decoded weights are the same numbers.
//! Skipped without coremltools unless `COREML_CHECK_REQUIRED=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use mlx_coreml_pipeline::coreml::interp::Package;
use mlx_coreml_pipeline::coreml::proto::mil as pb;
use mlx_coreml_pipeline::coreml::{
    export, ExportOptions, InputKind, Output, OutputKind, Precision, Target, Tensor,
};

const FIXTURE: &str = "hf-vit-classifier";

fn coremltools_available() -> bool {
    common::coremltools_available("the compressed-weights check")
}

fn main_block(pkg: &Package) -> &pb::Block {
    let Some(mlx_coreml_pipeline::coreml::proto::spec::model::Type::MlProgram(p)) =
        &pkg.model.r#type
    else {
        panic!("{}: not an ML Program", pkg.path.display());
    };
    let f = &p.functions["main"];
    &f.block_specializations[&f.opset]
}

/// What a package's constexpr ops look like, read through our own protobuf types.
#[derive(Default, Debug)]
struct Seen {
    ops: BTreeMap<String, usize>,
    /// Ops whose parameters are attributes (iOS16/17) / inputs (iOS18).
    attr_form: usize,
    input_form: usize,
    /// Inputs bound by name to another constexpr op's output.
    chained: usize,
    /// MIL data types of the parameters, by op type and parameter name.
    dtypes: BTreeMap<(String, String), BTreeSet<i32>>,
}

fn seen(pkg: &Package) -> Seen {
    use pb::argument::binding::Binding;
    let block = main_block(pkg);
    let mut s = Seen::default();
    let constexpr_outputs: BTreeSet<&str> = block
        .operations
        .iter()
        .filter(|op| op.r#type.starts_with("constexpr_"))
        .flat_map(|op| op.outputs.iter().map(|o| o.name.as_str()))
        .collect();
    let dtype = |v: &pb::Value| match &v.r#type {
        Some(pb::ValueType {
            r#type: Some(pb::value_type::Type::TensorType(t)),
        }) => t.data_type,
        _ => -1,
    };
    for op in &block.operations {
        if !op.r#type.starts_with("constexpr_") {
            continue;
        }
        *s.ops.entry(op.r#type.clone()).or_default() += 1;
        if op.inputs.is_empty() {
            s.attr_form += 1;
        } else {
            s.input_form += 1;
        }
        for (k, v) in op.attributes.iter().filter(|(k, _)| *k != "name") {
            s.dtypes
                .entry((op.r#type.clone(), k.clone()))
                .or_default()
                .insert(dtype(v));
        }
        for (k, arg) in &op.inputs {
            for b in &arg.arguments {
                match &b.binding {
                    Some(Binding::Name(n)) if constexpr_outputs.contains(n.as_str()) => {
                        s.chained += 1
                    }
                    Some(Binding::Value(v)) => {
                        s.dtypes
                            .entry((op.r#type.clone(), k.clone()))
                            .or_default()
                            .insert(dtype(v));
                    }
                    _ => {}
                }
            }
        }
    }
    s
}

fn spawn_reference(pkg: &Path, out: &Path, only: Option<&str>) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_compressed_reference.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(pkg).arg(out);
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    cmd.env("TQDM_DISABLE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run make_compressed_reference.py")
}

/// (method name, compressed package, decompressed package) from the script's manifest.
fn methods(out: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(out.join("manifest.json")).expect("manifest.json");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest json");
    m["methods"]
        .as_object()
        .expect("methods")
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                PathBuf::from(v["compressed"].as_str().expect("compressed")),
                PathBuf::from(v["decompressed"].as_str().expect("decompressed")),
            )
        })
        .collect()
}

#[test]
fn compressed_packages_decode_to_coremltools_weights() {
    if !coremltools_available() {
        return;
    }
    let (_keep, ck) = converted(FIXTURE);
    let refs = reference(FIXTURE);
    let pixels = &refs["pixel_values"];
    let pixels = Tensor::new(pixels.shape.clone(), pixels.data.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // Every method for iOS16 (attribute form) and iOS18 (input form, sub-byte types,
    // chains); iOS17 shares iOS16's encoding, so a few. All are made at once
    // (coremltools is single-threaded).
    let targets = [
        (Target::Ios16, None),
        (
            Target::Ios17,
            Some("int8-per-channel,lut4-per-tensor,prune-50"),
        ),
        (Target::Ios18, None),
    ];
    let mut jobs = Vec::new();
    for (target, only) in targets {
        let pkg = tmp.path().join(format!("{target}.mlpackage"));
        let opts = ExportOptions {
            precision: Precision::Fp16,
            target: Some(target),
            input: InputKind::Array,
            output: Some(OutputKind::Logits),
            ..Default::default()
        };
        export(&ck, &pkg, &opts).unwrap_or_else(|e| panic!("export {target}: {e}"));
        let out = tmp.path().join(format!("{target}-compressed"));
        let child = spawn_reference(&pkg, &out, only);
        jobs.push((target, pkg, out, child));
    }

    // Every child is waited for before anything can fail.
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|(t, pkg, out, child)| (t, pkg, out, child.wait_with_output().unwrap()))
        .collect();
    // Each example of the fixture's batch on its own (the packages take batch 1).
    let n = pixels.shape[0];
    let batch: Vec<Tensor> = (0..n).map(|i| pixels.batch_item(i).unwrap()).collect();
    let run = |pkg: &Package, what: &str| -> Vec<BTreeMap<String, Output>> {
        batch
            .iter()
            .map(|x| {
                pkg.run(&[("pixel_values", x.clone())])
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
            })
            .collect()
    };
    let logits = |outs: &[BTreeMap<String, Output>]| -> Vec<f32> {
        outs.iter()
            .flat_map(|o| o["logits"].as_tensor().unwrap().data.clone())
            .collect()
    };
    let mut failures = Vec::new();
    for (target, pkg, out, o) in jobs {
        assert!(
            o.status.success(),
            "make_compressed_reference.py {target} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let plain = logits(&run(&Package::open(&pkg).unwrap(), "uncompressed"));
        let mut all_ops = BTreeSet::new();
        let mut chained = 0;
        let ms = methods(&out);
        assert!(!ms.is_empty(), "{target}: no methods");
        for (name, comp, dec) in ms {
            let cp = Package::open(&comp).unwrap_or_else(|e| panic!("{target} {name}: {e}"));
            let s = seen(&cp);
            assert!(!s.ops.is_empty(), "{target} {name}: nothing was compressed");
            match target {
                Target::Ios16 | Target::Ios17 => assert_eq!(
                    s.input_form, 0,
                    "{target} {name}: constexpr parameters should be attributes"
                ),
                _ => assert_eq!(
                    s.attr_form, 0,
                    "{target} {name}: constexpr parameters should be inputs"
                ),
            }
            chained += s.chained;
            all_ops.extend(s.ops.keys().cloned());
            let dp = Package::open(&dec).unwrap();
            assert!(
                seen(&dp).ops.is_empty(),
                "{target} {name}: decompressed package has constexpr ops"
            );
            let got = run(&cp, &format!("{target} {name} compressed"));
            let want = run(&dp, &format!("{target} {name} decompressed"));
            let (g, w) = (logits(&got), logits(&want));
            assert!(g.iter().all(|v| v.is_finite()), "{target} {name}");
            println!(
                "{target} {name}: {:?}; vs decompressed {:e}, vs uncompressed {:e}; dtypes {:?}",
                s.ops,
                max_abs_diff(&g, &w),
                max_abs_diff(&g, &plain),
                s.dtypes
            );
            if got != want {
                failures.push(format!(
                    "{target} {name}: outputs differ from the decompressed package's \
                     (max |diff| {:e})",
                    max_abs_diff(&g, &w)
                ));
            }
        }
        let expected: &[&str] = match target {
            Target::Ios18 => &[
                "constexpr_blockwise_shift_scale",
                "constexpr_lut_to_dense",
                "constexpr_sparse_to_dense",
                "constexpr_lut_to_sparse",
                "constexpr_sparse_blockwise_shift_scale",
            ],
            _ => &[
                "constexpr_affine_dequantize",
                "constexpr_lut_to_dense",
                "constexpr_sparse_to_dense",
            ],
        };
        for op in expected {
            assert!(
                all_ops.contains(*op),
                "{target}: coremltools wrote no {op} (saw {all_ops:?})"
            );
        }
        if target == Target::Ios18 {
            assert!(chained > 0, "iOS18: no chained constexpr ops");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! The `pipeline` binary end to end: convert, inspect, embed on the fixtures' reference
//! pixels and on decoded images.
#![cfg(feature = "mlx")]

mod common;

use std::process::Command;

use common::*;

fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run pipeline");
    assert!(
        o.status.success(),
        "pipeline failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn convert_inspect_embed_match_references() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["timm-vit-classifier", "hf-dinov2-registers"] {
        let model = tmp.path().join(name);
        run_ok(
            pipeline()
                .args(["convert", fixture(name).to_str().unwrap(), "--out"])
                .arg(&model),
        );
        let text = run_ok(pipeline().arg("inspect").arg(&model));
        assert!(text.contains("parameters"), "{text}");
        let out = tmp.path().join(format!("{name}.safetensors"));
        let refs = fixture(name).join("reference.safetensors");
        run_ok(
            pipeline()
                .args(["embed", "--model"])
                .arg(&model)
                .arg("--pixels")
                .arg(&refs)
                .arg("--out")
                .arg(&out),
        );
        let got = read_tensors(&out);
        let want = reference(name);
        for key in ["last_hidden_state", "pooled", "logits"] {
            if let Some(w) = want.get(key) {
                let g = &got[key];
                assert_eq!(g.shape, w.shape, "{name} {key}");
                let d = max_abs_diff(&g.data, &w.data);
                assert!(d < 1e-4, "{name} {key}: {d}");
            }
        }
    }
}

#[test]
fn embed_images_of_any_format_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    run_ok(
        pipeline()
            .args(["convert", "preset:vit-micro8", "--out"])
            .arg(&model),
    );
    // A wide grayscale PNG, an RGBA PNG and a small JPEG: all become 32x32 RGB.
    let gray = image::GrayImage::from_fn(90, 40, |x, y| image::Luma([((x * 3 + y) % 256) as u8]));
    gray.save(tmp.path().join("a.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(33, 50, |x, y| {
        image::Rgba([x as u8 * 7, y as u8 * 5, 128, 200])
    });
    rgba.save(tmp.path().join("b.png")).unwrap();
    let rgb = image::RgbImage::from_fn(20, 20, |x, y| {
        image::Rgb([x as u8 * 12, 255 - y as u8 * 12, 30])
    });
    rgb.save(tmp.path().join("c.jpg")).unwrap();
    let out = tmp.path().join("e.safetensors");
    let text = run_ok(
        pipeline()
            .args(["embed", "--model"])
            .arg(&model)
            .args(["--out"])
            .arg(&out)
            .arg(tmp.path().join("a.png"))
            .arg(tmp.path().join("b.png"))
            .arg(tmp.path().join("c.jpg")),
    );
    assert!(text.contains("embedded 3"), "{text}");
    let got = read_tensors(&out);
    assert_eq!(got["pooled"].shape, vec![3, 64]);
    assert_eq!(got["last_hidden_state"].shape, vec![3, 17, 64]);
    assert!(got["pooled"].data.iter().all(|v| v.is_finite()));
}

#[test]
fn corrupt_image_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    run_ok(
        pipeline()
            .args(["convert", "preset:vit-micro8", "--out"])
            .arg(&model),
    );
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = tmp.path().join("e.safetensors");
    let o = pipeline()
        .args(["embed", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken.png") && err.contains("cannot read image"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn presets_build_and_run() {
    // The smallest preset end to end, and every preset's config is valid.
    for p in mlx_coreml_pipeline::convert::preset::PRESETS {
        p.config().validate().unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    run_ok(
        pipeline()
            .args(["convert", "preset:vit-micro8", "--out"])
            .arg(&model),
    );
    let ck = mlx_coreml_pipeline::checkpoint::Checkpoint::load(&model).unwrap();
    // By hand: patch 64*3*8*8+64, cls 64, pos 17*64, 4 blocks of (2 norms 256, qkv
    // 64*192+192, proj 64*64+64, fc1 64*256+256, fc2 256*64+64), final norm 128.
    let block = 256 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64);
    let want = (64 * 3 * 64 + 64) + 64 + 17 * 64 + 4 * block + 128;
    assert_eq!(ck.config.num_parameters(), want);
    assert_eq!(want, 213_568);
}

/// `pipeline convert --list-presets | head -1`: the reader has gone before the output is
/// written; the command ends quietly (it panicked on the broken pipe).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = pipeline()
        .args(["convert", "--list-presets"])
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(err.is_empty(), "{err}");
}

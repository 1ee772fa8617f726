//! Data-parallel training over MLX's ring backend on loopback: two ranks against one
//! process, MLX's launch variables set by hand, a rank killed mid-run and resumed, and
//! the start-up checks (batch split, settings that differ between ranks, a missing rank).
#![cfg(feature = "mlx")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn pipeline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    // A test that goes wrong must not wait MLX's default five minutes.
    c.env("PIPELINE_DIST_TIMEOUT", "60");
    c
}

/// The micro ViT (0.21M parameters, 32x32) and 3 classes of coloured squares.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base");
    mlx_coreml_pipeline::convert::convert("preset:vit-micro8", &base, &Default::default()).unwrap();
    let data = dir.join("data");
    for split in ["train", "val"] {
        for (c, name) in ["red", "green", "blue"].iter().enumerate() {
            let d = data.join(split).join(name);
            fs::create_dir_all(&d).unwrap();
            for i in 0..12u32 {
                let off = i * 7 % 16;
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let inside = (off..off + 14).contains(&x) && (off..off + 14).contains(&y);
                    let n = ((x * 31 + y * 17 + i * 13) % 64) as u8;
                    let mut p = [n, n, n];
                    if inside {
                        p[c] = 230;
                    }
                    image::Rgb(p)
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    (base, data)
}

/// `train` arguments: no dropout, no augmentation, global batch 8, evaluation twice.
fn train_args(base: &Path, data: &Path, run: &Path, mode: &str, epochs: &str) -> Vec<String> {
    [
        "train",
        "--model",
        &s(base),
        "--data",
        &s(data),
        "--out",
        &s(run),
        "--mode",
        mode,
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--no-augment",
        "--seed",
        "7",
        "--lr",
        "3e-3",
        "--eval-every",
        "4",
        "--save-every",
        "1",
        "--workers",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Replaces the value of `flag` in `args`.
fn set(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    args[i + 1] = value.to_string();
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// One process computing each batch as two lanes of 4 images; each rank computes its 4
/// on one lane: the same parts, whatever the machine's cores.
fn single(args: &[String]) -> Vec<String> {
    let mut a = args.to_vec();
    a.extend(["--cpu-threads".into(), "2".into()]);
    a
}

fn ranked(args: &[String]) -> Vec<String> {
    let mut a = args.to_vec();
    a.extend(["--cpu-threads".into(), "1".into()]);
    a
}

fn launch(n: usize, args: &[String]) -> Command {
    let mut c = pipeline();
    c.args(["launch", "-n", &n.to_string(), "--"]).args(args);
    c
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    read_tensors(path)
}

/// `a` and `b` within `tol` of each other relative to their norm: per tensor, or with
/// `whole`, over all tensors together. Full fine-tuning is judged as a whole: the key
/// projection's bias has no true gradient (softmax ignores a constant added to every
/// key), so its gradient is rounding noise, which AdamW turns into steps of the full
/// learning rate in either direction; any change of summation order moves that
/// tensor, not the model.
fn assert_close(a: &Path, b: &Path, tol: f64, whole: bool) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut diff_all, mut norm_all) = (0.0, 0.0);
    for (name, x) in &a {
        let y = &b[name];
        let diff: f64 = x
            .data
            .iter()
            .zip(&y.data)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum();
        let norm: f64 = x.data.iter().map(|p| f64::from(*p).powi(2)).sum();
        (diff_all, norm_all) = (diff_all + diff, norm_all + norm);
        let rel = (diff / norm.max(1e-30)).sqrt();
        assert!(whole || rel <= tol, "{name}: relative difference {rel:e}");
    }
    let rel = (diff_all / norm_all.max(1e-30)).sqrt();
    assert!(rel <= tol, "relative difference {rel:e}");
}

/// Training losses by step from `metrics.jsonl`.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

fn assert_same_curve(a: &Path, b: &Path) {
    let (a, b) = (losses(a), losses(b));
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs(),
            "step {sa}: loss {la} vs {lb}"
        );
    }
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn two_ranks_match_one_process_and_hand_set_variables_match_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = setup(tmp.path());
    for (mode, file) in [
        ("lora", "adapters/adapters.safetensors"),
        ("full", "model/model.safetensors"),
    ] {
        let one = tmp.path().join(format!("{mode}-one"));
        let two = tmp.path().join(format!("{mode}-two"));
        run_ok(pipeline().args(single(&train_args(&base, &data, &one, mode, "1"))));
        let out = run_ok(&mut launch(
            2,
            &ranked(&train_args(&base, &data, &two, mode, "1")),
        ));
        assert!(
            out.contains("[rank 0] ") && out.contains("[rank 1] "),
            "{out}"
        );
        assert_close(&one.join(file), &two.join(file), 1e-5, mode == "full");
        assert_same_curve(&one, &two);
        let sm = summary(&two);
        assert_eq!(sm["ranks"], 2, "{sm}");
        assert!(
            sm["allreduce"]["bytes_per_step"].as_u64().unwrap() > 0,
            "{sm}"
        );
        // Evaluation was split over the ranks and summed: the whole validation set.
        assert_eq!(sm["final_eval"]["count"], 36, "{sm}");
        assert_eq!(
            sm["final_eval"]["count"],
            summary(&one)["final_eval"]["count"]
        );
    }

    // mlx.launch's variables set by hand start the same run as `pipeline launch`.
    let hand = tmp.path().join("lora-hand");
    let hostfile = tmp.path().join("hosts.json");
    let ports = free_ports(2);
    fs::write(
        &hostfile,
        format!(r#"[["127.0.0.1:{}"],["127.0.0.1:{}"]]"#, ports[0], ports[1]),
    )
    .unwrap();
    let args = ranked(&train_args(&base, &data, &hand, "lora", "1"));
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            pipeline()
                .args(&args)
                .env("MLX_RANK", r.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in ranks {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let file = "adapters/adapters.safetensors";
    assert_eq!(
        fs::read(hand.join(file)).unwrap(),
        fs::read(tmp.path().join("lora-two").join(file)).unwrap(),
        "hand-set variables must give launch's run"
    );

    // `--distributed off` ignores the variables: one process, the whole batch.
    let off = tmp.path().join("lora-off");
    let o = pipeline()
        .args(single(&train_args(&base, &data, &off, "lora", "1")))
        .args(["--distributed", "off", "--max-steps", "1"])
        .env("MLX_RANK", "1")
        .env("MLX_HOSTFILE", &hostfile)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(summary(&off)["ranks"], 1);
}

fn free_ports(n: usize) -> Vec<u16> {
    let l: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    l.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn checkpoint_step(run: &Path) -> u64 {
    fs::read_to_string(run.join("checkpoint/state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

#[test]
fn killed_rank_stops_the_launch_and_resume_finishes_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = setup(tmp.path());
    let full = tmp.path().join("full");
    run_ok(&mut launch(
        2,
        &ranked(&train_args(&base, &data, &full, "lora", "3")),
    ));

    let killed = tmp.path().join("killed");
    let mut child = launch(2, &ranked(&train_args(&base, &data, &killed, "lora", "3")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let pid = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("launch names its ranks");
        lines.push(line.clone());
        if let Some(p) = line.strip_prefix("launch: rank 1 pid ") {
            break p.trim().to_string();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint_step(&killed) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "launch still running after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    lines.extend(rx.try_iter());
    let text = lines.join("\n");
    assert!(!status.success(), "{text}");
    assert!(text.contains("rank 1 was killed by signal 9"), "{text}");
    assert!(
        !killed.join("adapters").exists(),
        "the run finished before the kill"
    );

    let other = tmp.path().join("killed-other-size");
    copy_dir(&killed, &other);
    let resume = vec!["train".to_string(), "--resume".into(), s(&killed)];
    run_ok(&mut launch(2, &resume));
    let file = "adapters/adapters.safetensors";
    assert_eq!(
        fs::read(killed.join(file)).unwrap(),
        fs::read(full.join(file)).unwrap(),
        "resumed on 2 ranks must end as the uninterrupted run"
    );
    // The same checkpoint resumed by one process (another world size) ends as close.
    run_ok(pipeline().args(["train", "--resume", &s(&other)]));
    assert_close(&other.join(file), &full.join(file), 1e-5, false);
    let steps: Vec<u64> = losses(&killed).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
}

#[test]
fn bad_starts_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = setup(tmp.path());

    // A global batch that does not divide over the ranks.
    let mut args = ranked(&train_args(
        &base,
        &data,
        &tmp.path().join("odd"),
        "lora",
        "1",
    ));
    set(&mut args, "--batch-size", "7");
    let o = launch(2, &args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("does not divide over 2 ranks"), "{err}");

    // Ranks started with different settings.
    let hostfile = tmp.path().join("hosts.json");
    let ports = free_ports(2);
    fs::write(
        &hostfile,
        format!(r#"[["127.0.0.1:{}"],["127.0.0.1:{}"]]"#, ports[0], ports[1]),
    )
    .unwrap();
    let run = tmp.path().join("mismatch");
    let ranks: Vec<_> = ["3e-3", "1e-3"]
        .iter()
        .enumerate()
        .map(|(r, lr)| {
            let mut a = ranked(&train_args(&base, &data, &run, "lora", "1"));
            set(&mut a, "--lr", lr);
            pipeline()
                .args(a)
                .env("MLX_RANK", r.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in ranks {
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("other settings"), "{err}");
    }

    // A rank whose peer never starts gives up within the timeout, naming itself.
    let t = Instant::now();
    let o = pipeline()
        .args(ranked(&train_args(
            &base,
            &data,
            &tmp.path().join("alone"),
            "lora",
            "1",
        )))
        .env("MLX_RANK", "0")
        .env("MLX_HOSTFILE", &hostfile)
        .env("PIPELINE_DIST_TIMEOUT", "10")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains("rank 0"), "{err}");
}

#[test]
fn run_trains_on_ranks_and_launch_reaches_hosts_through_ssh() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(root.join("examples/quickstart.toml")).unwrap();
    let text = text
        .replace(
            "out = \"../runs/quickstart\"",
            &format!("out = {:?}", tmp.path().join("run")),
        )
        .replace(
            "data = \"quickstart-data\"",
            &format!("data = {:?}", root.join("examples/quickstart-data")),
        )
        .replace(
            "source = \"quickstart-base\"",
            &format!("source = {:?}", root.join("examples/quickstart-base")),
        );
    let config = tmp.path().join("q.toml");
    fs::write(&config, text).unwrap();
    let out = run_ok(
        pipeline()
            .args(["run", &s(&config), "--set", "train.epochs=1"])
            .args(["--set", "train.ranks=2"]),
    );
    assert!(out.contains("steps on 2 ranks"), "{out}");
    assert_eq!(summary(&tmp.path().join("run/train"))["ranks"], 2);

    // Hosts from an mlx.launch hostfile, reached through an ssh that runs the command
    // here (the same path and folder on every host, as on real machines).
    let (base, data) = setup(tmp.path());
    let ssh = tmp.path().join("fake-ssh");
    fs::write(&ssh, "#!/bin/sh\n# -tt HOST COMMAND\nexec sh -c \"$3\"\n").unwrap();
    let mut perm = fs::metadata(&ssh).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&ssh, perm).unwrap();
    let hosts = tmp.path().join("hosts.json");
    fs::write(
        &hosts,
        r#"[{"ssh": "mac-1", "ips": ["127.0.0.1"]}, {"ssh": "mac-2", "ips": ["127.0.0.1"]}]"#,
    )
    .unwrap();
    let run = tmp.path().join("remote");
    let mut args = ranked(&train_args(&base, &data, &run, "lora", "1"));
    set(&mut args, "--eval-every", "0");
    let out = run_ok(
        pipeline()
            .args(["launch", "-n", "1", "--hosts", &s(&hosts), "--"])
            .args(&args)
            .env("PIPELINE_SSH", &ssh),
    );
    assert!(out.contains("[rank 1] "), "{out}");
    assert_eq!(summary(&run)["ranks"], 2);
}

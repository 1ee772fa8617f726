//! `pipeline launch`: starts the ranks of a data-parallel run with MLX's own launch
//! variables (as `mlx.launch` does), on this host on free loopback ports or on the
//! hosts of an `mlx.launch` hostfile over ssh; prefixes every output line with its rank;
//! and when one rank fails, stops the others and reports the first failure.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// First ring port on remote hosts (mlx.launch's), and its NCCL port.
const REMOTE_RING_PORT: u16 = 32323;
const REMOTE_NCCL_PORT: u16 = 12345;
/// Lines of each rank's error output kept for the failure message.
const KEPT_LINES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchBackend {
    Ring,
    Nccl,
}

impl std::str::FromStr for LaunchBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(LaunchBackend::Ring),
            "nccl" => Ok(LaunchBackend::Nccl),
            other => Err(format!("unknown backend `{other}` (ring or nccl)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Ranks per host (the only host without `hosts`).
    pub ranks: usize,
    /// An `mlx.launch` hostfile: `[{"ssh": "host", "ips": ["10.0.0.2"]}, ...]`.
    pub hosts: Option<PathBuf>,
    pub backend: LaunchBackend,
    /// The `pipeline` arguments each rank runs, e.g. `["train", "--model", ...]`.
    pub args: Vec<String>,
    /// The binary the ranks run (this one); on remote hosts, the same path.
    pub program: PathBuf,
    /// No `launch:` lines of our own (rank output is still shown).
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("launch needs at least one rank and a command (`pipeline launch -n 2 -- train ...`)")]
    Nothing,
    #[error("{path}: {message}")]
    Hostfile { path: PathBuf, message: String },
    #[error("could not find free loopback ports: {0}")]
    Ports(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rank {rank} could not be started: {source}")]
    Spawn { rank: usize, source: std::io::Error },
    #[error("rank {rank} {how}; the other ranks were stopped{}", last_words(.message))]
    RankFailed {
        rank: usize,
        how: String,
        code: i32,
        message: String,
    },
}

fn last_words(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(". Its last error output:\n{message}")
    }
}

impl LaunchError {
    /// The exit status `pipeline launch` ends with: the failed rank's own, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::RankFailed { code, .. } => *code,
            _ => 1,
        }
    }
}

#[derive(serde::Deserialize)]
struct HostEntry {
    ssh: String,
    #[serde(default)]
    ips: Vec<String>,
}

/// Where a rank runs: on this host, or through ssh on `ssh`.
#[derive(Clone)]
struct Placement {
    ssh: Option<String>,
    ip: String,
}

/// A started rank and the threads copying its output.
struct Rank {
    child: Child,
    readers: Vec<JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// Runs the ranks to the end. `Ok` when every rank succeeded.
pub fn launch(opts: &LaunchOptions) -> Result<(), LaunchError> {
    if opts.ranks == 0 || opts.args.is_empty() {
        return Err(LaunchError::Nothing);
    }
    let places = placements(opts)?;
    let tmp = std::env::temp_dir().join(format!("pipeline-launch-{}", std::process::id()));
    let env = rank_env(opts, &places, &tmp)?;
    let mut ranks = Vec::with_capacity(places.len());
    for (rank, place) in places.iter().enumerate() {
        match start(opts, rank, place, &env[rank], &tmp) {
            Ok(r) => ranks.push(r),
            Err(e) => {
                stop_all(&mut ranks);
                return Err(e);
            }
        }
        if !opts.quiet {
            eprintln!("launch: rank {rank} pid {}", ranks[rank].child.id());
        }
    }
    let result = watch(&mut ranks);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// One placement per rank: `ranks` on this host, or `ranks` on every host of the file.
fn placements(opts: &LaunchOptions) -> Result<Vec<Placement>, LaunchError> {
    let Some(path) = &opts.hosts else {
        let local = Placement {
            ssh: None,
            ip: "127.0.0.1".into(),
        };
        return Ok(vec![local; opts.ranks]);
    };
    let bad = |message: String| LaunchError::Hostfile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let hosts: Vec<HostEntry> = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not an mlx.launch hostfile ({e})")))?;
    if hosts.is_empty() {
        return Err(bad("no hosts".into()));
    }
    let mut out = Vec::new();
    for h in hosts {
        let ip = h.ips.first().cloned().unwrap_or_else(|| h.ssh.clone());
        for _ in 0..opts.ranks {
            out.push(Placement {
                ssh: Some(h.ssh.clone()),
                ip: ip.clone(),
            });
        }
    }
    Ok(out)
}

/// MLX's variables for each rank (and ours: how many ranks share its host).
fn rank_env(
    opts: &LaunchOptions,
    places: &[Placement],
    tmp: &Path,
) -> Result<Vec<Vec<(String, String)>>, LaunchError> {
    let n = places.len();
    let local = places.iter().all(|p| p.ssh.is_none());
    let ports = if local {
        free_ports(n.max(1)).map_err(LaunchError::Ports)?
    } else {
        (0..n as u16).map(|i| REMOTE_RING_PORT + i).collect()
    };
    let mut shared: Vec<(String, String)> = Vec::new();
    match opts.backend {
        LaunchBackend::Ring => {
            let hostfile: Vec<Vec<String>> = places
                .iter()
                .zip(&ports)
                .map(|(p, port)| vec![format!("{}:{port}", p.ip)])
                .collect();
            std::fs::create_dir_all(tmp).map_err(|source| LaunchError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
            let path = tmp.join("hostfile.json");
            let json = serde_json::to_string(&hostfile).expect("json");
            std::fs::write(&path, json).map_err(|source| LaunchError::Io {
                path: path.clone(),
                source,
            })?;
            shared.push(("MLX_HOSTFILE".into(), path.display().to_string()));
        }
        LaunchBackend::Nccl => {
            let port = if local { ports[0] } else { REMOTE_NCCL_PORT };
            shared.push(("MLX_WORLD_SIZE".into(), n.to_string()));
            shared.push(("NCCL_HOST_IP".into(), places[0].ip.clone()));
            shared.push(("NCCL_PORT".into(), port.to_string()));
        }
    }
    Ok((0..n)
        .map(|rank| {
            let same_host = places.iter().filter(|p| p.ip == places[rank].ip).count();
            let mut env = shared.clone();
            env.push(("MLX_RANK".into(), rank.to_string()));
            env.push(("PIPELINE_LOCAL_RANKS".into(), same_host.to_string()));
            env
        })
        .collect())
}

/// `n` distinct ports the system just handed out on 127.0.0.1 (all held until every one
/// is chosen, so none repeats).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn start(
    opts: &LaunchOptions,
    rank: usize,
    place: &Placement,
    env: &[(String, String)],
    tmp: &Path,
) -> Result<Rank, LaunchError> {
    let mut cmd = match &place.ssh {
        None => {
            let mut c = Command::new(&opts.program);
            c.args(&opts.args).envs(env.iter().map(|(k, v)| (k, v)));
            c
        }
        Some(host) => remote_command(opts, host, env, tmp),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| LaunchError::Spawn { rank, source })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(copy_lines(rank, out, false, None));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(copy_lines(rank, err, true, Some(Arc::clone(&tail))));
    }
    Ok(Rank {
        child,
        readers,
        tail,
    })
}

/// `ssh HOST 'cd DIR && <hostfile written> && env VARS PROGRAM ARGS'`: the same binary
/// path and working folder on every host, as mlx.launch assumes. `PIPELINE_SSH` names
/// another ssh program.
fn remote_command(
    opts: &LaunchOptions,
    host: &str,
    env: &[(String, String)],
    tmp: &Path,
) -> Command {
    let ssh = std::env::var("PIPELINE_SSH").unwrap_or_else(|_| "ssh".into());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut script = format!("cd {} && ", quote(&cwd.display().to_string()));
    if let Some((_, path)) = env.iter().find(|(k, _)| k == "MLX_HOSTFILE") {
        let json = std::fs::read_to_string(path).unwrap_or_default();
        script.push_str(&format!(
            "mkdir -p {} && printf '%s' {} > {} && ",
            quote(&tmp.display().to_string()),
            quote(&json),
            quote(path)
        ));
    }
    script.push_str("exec env");
    for (k, v) in env {
        script.push_str(&format!(" {k}={}", quote(v)));
    }
    script.push(' ');
    script.push_str(&quote(&opts.program.display().to_string()));
    for a in &opts.args {
        script.push(' ');
        script.push_str(&quote(a));
    }
    let mut c = Command::new(ssh);
    // A terminal on the far side makes the remote rank end when its ssh is killed.
    c.args(["-tt", host, &script]);
    c
}

/// Single-quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Copies `from` line by line to our stdout or stderr as `[rank N] line`, keeping the
/// last lines in `tail`.
fn copy_lines(
    rank: usize,
    from: impl Read + Send + 'static,
    to_stderr: bool,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']);
            let shown = format!("[rank {rank}] {line}\n");
            // Output that cannot be shown is not a reason to stop a training run.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(shown.as_bytes())
            } else {
                std::io::stdout().lock().write_all(shown.as_bytes())
            };
            if let Some(t) = &tail {
                let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
                if t.len() == KEPT_LINES {
                    t.pop_front();
                }
                t.push_back(line.to_string());
            }
        }
    })
}

/// Waits for every rank; on the first failure stops the rest and returns it. Among
/// ranks found failed at the same poll, one killed by a signal is named first: the
/// others most likely failed because it went away.
fn watch(ranks: &mut [Rank]) -> Result<(), LaunchError> {
    let mut done = vec![false; ranks.len()];
    loop {
        let mut failed: Vec<(usize, ExitStatus)> = Vec::new();
        for (i, r) in ranks.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                done[i] = true;
                if !status.success() {
                    failed.push((i, status));
                }
            }
        }
        failed.sort_by_key(|(i, s)| (signal_of(s).is_none(), *i));
        if let Some(&(rank, status)) = failed.first() {
            stop_all(ranks);
            let message = ranks[rank]
                .tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            let (how, code) = describe(&status);
            return Err(LaunchError::RankFailed {
                rank,
                how,
                code,
                message,
            });
        }
        if done.iter().all(|d| *d) {
            for r in ranks.iter_mut() {
                for h in r.readers.drain(..) {
                    let _ = h.join();
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every rank still running and waits for it and its output.
fn stop_all(ranks: &mut [Rank]) {
    for r in ranks.iter_mut() {
        if matches!(r.child.try_wait(), Ok(None)) {
            let _ = r.child.kill();
        }
    }
    for r in ranks.iter_mut() {
        let _ = r.child.wait();
        for h in r.readers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(unix)]
fn signal_of(s: &ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(s)
}

#[cfg(not(unix))]
fn signal_of(_: &ExitStatus) -> Option<i32> {
    None
}

/// "exited with status N" or "was killed by signal N", and the status to exit with
/// (128 + N for a signal, as shells report it).
fn describe(s: &ExitStatus) -> (String, i32) {
    match (s.code(), signal_of(s)) {
        (Some(c), _) => (format!("exited with status {c}"), c),
        (None, Some(sig)) => (format!("was killed by signal {sig}"), 128 + sig),
        (None, None) => ("ended abnormally".into(), 1),
    }
}

/// Trains `cfg` on `cfg.ranks` ranks on this host: what `pipeline run` does with
/// `[train] ranks = N`. The settings travel as a JSON file in `run`; with `resume`, the
/// ranks continue the run from its checkpoint.
#[cfg(feature = "mlx")]
pub fn train_on_ranks(
    base: &Path,
    run: &Path,
    cfg: &crate::train::TrainConfig,
    resume: bool,
    quiet: bool,
) -> Result<(), LaunchError> {
    let program = std::env::current_exe().map_err(|source| LaunchError::Io {
        path: PathBuf::from("pipeline"),
        source,
    })?;
    let text = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = vec!["train".into()];
    if resume {
        args.extend(["--resume".into(), text(run)]);
    } else {
        std::fs::create_dir_all(run).map_err(|source| LaunchError::Io {
            path: run.to_path_buf(),
            source,
        })?;
        let settings = run.join(SETTINGS_FILE);
        let json = serde_json::to_string_pretty(cfg).expect("json");
        std::fs::write(&settings, json).map_err(|source| LaunchError::Io {
            path: settings.clone(),
            source,
        })?;
        args.extend(["--model".into(), text(base), "--out".into(), text(run)]);
        args.extend(["--data".into(), text(&cfg.data), "--settings".into()]);
        args.push(text(&settings));
    }
    if quiet {
        args.push("--quiet".into());
    }
    launch(&LaunchOptions {
        ranks: cfg.ranks,
        hosts: None,
        backend: LaunchBackend::Ring,
        args,
        program,
        quiet,
    })
}

/// The settings file [`train_on_ranks`] hands its ranks.
pub const SETTINGS_FILE: &str = "launch-settings.json";

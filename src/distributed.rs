//! A thin safe layer over MLX's own distributed backends (ring over TCP, MPI, NCCL), as
//! mlx-c exposes them through mlx-sys: joining a group, its rank and size, and `all_sum`
//! on the stream the backend needs. No collective is implemented here: MLX does them.
//!
//! MLX gives no way to cancel a collective that waits for a peer that is gone, so every
//! wait we start is watched: past the group's timeout the process prints which rank and
//! which wait it was and exits, rather than hanging a multi-machine job forever.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use mlx_rs::{error::Exception, Array};

/// Exit status of a rank whose collective timed out (the `timeout` command's).
pub const EXIT_TIMEOUT: i32 = 124;

/// How long a wait for the other ranks may take unless `PIPELINE_DIST_TIMEOUT` (seconds)
/// says otherwise: long enough for a peer writing a checkpoint or evaluating, as MLX's
/// own NCCL default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MLX's own choice: NCCL where CUDA is, then ring, then MPI.
    Any,
    Ring,
    Mpi,
    Nccl,
}

impl Backend {
    fn mlx_name(self) -> Option<&'static str> {
        match self {
            Backend::Any => None,
            Backend::Ring => Some("ring"),
            Backend::Mpi => Some("mpi"),
            Backend::Nccl => Some("nccl"),
        }
    }

    pub fn name(self) -> &'static str {
        self.mlx_name().unwrap_or("any")
    }

    /// Collectives of ring and MPI run on the CPU, NCCL's on the GPU.
    fn on_gpu(self) -> bool {
        self == Backend::Nccl
    }
}

/// `--distributed`: join a group when MLX's launch variables are set (auto), never
/// (off), or with a given backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
    Auto,
    Off,
    Backend(Backend),
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Choice::Auto,
            "off" => Choice::Off,
            "any" => Choice::Backend(Backend::Any),
            "ring" => Choice::Backend(Backend::Ring),
            "mpi" => Choice::Backend(Backend::Mpi),
            "nccl" => Choice::Backend(Backend::Nccl),
            other => {
                return Err(format!(
                    "unknown distributed setting `{other}` (auto, off, any, ring, mpi or nccl)"
                ))
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MLX's {backend} backend is not in this build of MLX (the CPU wheel has ring and MPI; NCCL needs the CUDA build)")]
    Unavailable { backend: &'static str },
    #[error(
        "rank {rank}: could not join the {backend} group ({env}); MLX_RING_VERBOSE=1 shows MLX's own account"
    )]
    Init {
        rank: usize,
        backend: &'static str,
        env: String,
    },
    #[error("{0} is set but not a number")]
    BadVariable(&'static str),
    #[error("MLX: {0}")]
    Mlx(#[from] Exception),
}

/// The ranks this process trains with. A group of one (no backend) does nothing.
pub struct Group {
    raw: Option<mlx_sys::mlx_distributed_group>,
    rank: usize,
    size: usize,
    backend: Backend,
    timeout: Duration,
    /// Ranks on this host, including this one: they share its CPU cores.
    local_ranks: usize,
    /// A joined group of one still runs every collective (`PIPELINE_DIST_COLLECTIVES_ON_ONE=1`):
    /// how the NCCL path is exercised on a machine with one GPU.
    collectives_on_one: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(g) = self.raw.take() {
            // SAFETY: the handle came from mlx_distributed_init and is freed once.
            unsafe { mlx_sys::mlx_distributed_group_free(g) };
        }
    }
}

impl Group {
    /// One process on its own.
    pub fn single() -> Group {
        Group {
            raw: None,
            rank: 0,
            size: 1,
            backend: Backend::Any,
            timeout: DEFAULT_TIMEOUT,
            local_ranks: 1,
            collectives_on_one: false,
        }
    }

    /// Joins the group `choice` asks for: with `Auto`, the one MLX's variables describe
    /// (`MLX_RANK` with `MLX_HOSTFILE` for ring, or with `NCCL_HOST_IP` for NCCL, or an
    /// MPI launcher's), else none.
    pub fn join(choice: Choice) -> Result<Group, DistError> {
        let backend = match choice {
            Choice::Off => return Ok(Group::single()),
            Choice::Backend(b) => b,
            Choice::Auto => match detect() {
                Some(b) => b,
                None => return Ok(Group::single()),
            },
        };
        let timeout = timeout_from_env()?;
        let mut group = Group::single();
        group.timeout = timeout;
        group.backend = backend;
        // Until the group says otherwise, messages name the rank the launcher gave.
        group.rank = env_number("MLX_RANK").unwrap_or(0);
        group.size = env_number("MLX_WORLD_SIZE").unwrap_or(0);
        let env = describe_env();
        let name = backend.mlx_name().map(|n| CString::new(n).expect("no NUL"));
        let name_ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: a NUL-terminated name or null (= any backend).
        if backend != Backend::Any && !unsafe { mlx_sys::mlx_distributed_is_available(name_ptr) } {
            return Err(DistError::Unavailable {
                backend: backend.name(),
            });
        }
        let what = format!("joining the {} group ({env})", backend.name());
        let raw = group.bounded(&what, || {
            // SAFETY: `res` is a fresh handle that init fills; freed on failure.
            unsafe {
                let mut res = mlx_sys::mlx_distributed_group_new();
                if mlx_sys::mlx_distributed_init(&mut res, true, name_ptr) != 0 {
                    mlx_sys::mlx_distributed_group_free(res);
                    return None;
                }
                Some(res)
            }
        });
        let raw = raw.ok_or(DistError::Init {
            rank: group.rank,
            backend: backend.name(),
            env,
        })?;
        // SAFETY: a live group handle.
        let (rank, size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw),
                mlx_sys::mlx_distributed_group_size(raw),
            )
        };
        group.raw = Some(raw);
        group.collectives_on_one =
            std::env::var("PIPELINE_DIST_COLLECTIVES_ON_ONE").is_ok_and(|v| v == "1");
        group.rank = rank.max(0) as usize;
        group.size = size.max(1) as usize;
        group.local_ranks = local_ranks(group.rank, group.size);
        Ok(group)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether training takes the collective path (sharding, all-reduce, reduced
    /// evaluation): a group of two or more, or a joined group of one asked to.
    pub fn is_distributed(&self) -> bool {
        self.size > 1 || (self.raw.is_some() && self.collectives_on_one)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Ranks sharing this host's CPU cores (1 without a group).
    pub fn local_ranks(&self) -> usize {
        self.local_ranks
    }

    /// The element-wise sum of `x` over the ranks, as a lazy array on the backend's
    /// stream. Every rank must ask for the same sums in the same order with the same
    /// shapes and dtypes: MLX checks none of it. Without a group, `x` itself.
    pub fn all_sum(&self, x: &Array) -> Result<Array, Exception> {
        let Some(g) = self.raw else {
            return Ok(x.clone());
        };
        // SAFETY: live handles; `res` is filled by the call or freed on failure.
        unsafe {
            let stream = if self.backend.on_gpu() {
                mlx_sys::mlx_default_gpu_stream_new()
            } else {
                mlx_sys::mlx_default_cpu_stream_new()
            };
            let mut res = mlx_sys::mlx_array_new();
            let status = mlx_sys::mlx_distributed_all_sum(&mut res, x.as_ptr(), g, stream);
            mlx_sys::mlx_stream_free(stream);
            if status != 0 {
                mlx_sys::mlx_array_free(res);
                return Err(Exception::custom("all_sum could not be built"));
            }
            Ok(Array::from_ptr(res))
        }
    }

    /// Evaluates `arrays` (which include collectives) within the group's timeout.
    pub fn eval(&self, what: &str, arrays: &[Array]) -> Result<(), Exception> {
        self.bounded(what, || mlx_rs::transforms::eval(arrays.iter()))
    }

    /// Runs `f`, a wait on the other ranks. Past the timeout, prints which rank waited
    /// for what and exits the process: MLX cannot be told to give up a collective.
    pub fn bounded<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let (tx, rx) = mpsc::channel::<()>();
        let timeout = self.timeout;
        let of = if self.size > 0 {
            format!(" of {}", self.size)
        } else {
            String::new()
        };
        let message = format!(
            "error: rank {}{of}: {what} took more than {}s; another rank has probably \
             died or never started (PIPELINE_DIST_TIMEOUT sets the limit)",
            self.rank,
            timeout.as_secs()
        );
        let watchdog = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                eprintln!("{message}");
                std::process::exit(EXIT_TIMEOUT);
            }
        });
        let out = f();
        drop(tx);
        let _ = watchdog.join();
        out
    }

    /// Evaluates `arrays` (collectives) and returns how long the wait took.
    pub fn timed_eval(&self, what: &str, arrays: &[Array]) -> Result<Duration, Exception> {
        let t = Instant::now();
        self.eval(what, arrays)?;
        Ok(t.elapsed())
    }
}

/// The backend MLX's launch variables point at, if any.
fn detect() -> Option<Backend> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set("MLX_RANK") && set("MLX_HOSTFILE") {
        return Some(Backend::Ring);
    }
    if set("MLX_RANK") && set("NCCL_HOST_IP") {
        return Some(Backend::Nccl);
    }
    let mpi_size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok());
    mpi_size.filter(|n| *n > 1).map(|_| Backend::Mpi)
}

fn env_number(key: &str) -> Option<usize> {
    std::env::var(key).ok()?.parse().ok()
}

fn timeout_from_env() -> Result<Duration, DistError> {
    match std::env::var("PIPELINE_DIST_TIMEOUT") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or(DistError::BadVariable("PIPELINE_DIST_TIMEOUT")),
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// MLX's variables as set, for error messages.
fn describe_env() -> String {
    let vars = [
        "MLX_RANK",
        "MLX_HOSTFILE",
        "MLX_WORLD_SIZE",
        "NCCL_HOST_IP",
        "NCCL_PORT",
    ];
    let set: Vec<String> = vars
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    if set.is_empty() {
        "no MLX variables set".into()
    } else {
        set.join(" ")
    }
}

/// Ranks on this host: `PIPELINE_LOCAL_RANKS` when our launcher set it, else the ranks
/// of a ring hostfile whose first address has this rank's host, else 1 (NCCL and MPI
/// ranks use one GPU each, or say nothing about hosts).
fn local_ranks(rank: usize, size: usize) -> usize {
    if let Some(n) = std::env::var("PIPELINE_LOCAL_RANKS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.clamp(1, size);
    }
    let Some(path) = std::env::var_os("MLX_HOSTFILE").map(PathBuf::from) else {
        return 1;
    };
    let hosts: Option<Vec<Vec<String>>> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let host_of = |addrs: &Vec<String>| {
        addrs
            .first()
            .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
    };
    match hosts {
        Some(h) if rank < h.len() => {
            let mine = host_of(&h[rank]);
            h.iter().filter(|a| host_of(a) == mine).count().max(1)
        }
        _ => 1,
    }
}

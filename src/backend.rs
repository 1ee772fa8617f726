//! Which MLX library and device this process computes on.
//!
//! The binary links `libmlx.so` by name. On Linux the CPU build (from `mlx-cpu`) is found
//! through the rpath set at build time; MLX's CUDA build (`mlx-cuda-13`, same version and
//! ABI) is a drop-in replacement for it. When a GPU is wanted and usable, [`prepare`]
//! re-executes the program with the CUDA library (and NVIDIA's runtime libraries) first on
//! the loader's path, so users never export paths themselves. `--device cpu` never does.

use std::path::{Path, PathBuf};

/// The MLX version the project pins (mlx-sys 0.7 / mlx-c); the CUDA library must match.
pub const MLX_VERSION: &str = "0.32.2";
/// Where `scripts/setup.sh --cuda` unpacks the CUDA build, relative to the repository.
pub const CUDA_DIR: &str = ".mlx/mlx-cuda-13-0.32.2";
/// Set in the re-executed process so it does not try again.
const PREPARED_ENV: &str = "PIPELINE_MLX_BACKEND_PREPARED";
/// A folder holding the CUDA build's `libmlx.so`, overriding the search.
pub const CUDA_LIB_ENV: &str = "PIPELINE_MLX_CUDA_LIB";
/// Extra folders with NVIDIA's CUDA 13 libraries (colon-separated).
pub const NVIDIA_LIBS_ENV: &str = "PIPELINE_CUDA_LIBS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The GPU when MLX can use one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" | "cuda" => Ok(DeviceChoice::Gpu),
            other => Err(format!("unknown device `{other}` (auto, cpu or gpu)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("--device gpu: {0}")]
    NoGpu(String),
    #[error("could not restart with MLX's CUDA library: {0}")]
    Exec(std::io::Error),
}

/// Version string of the NVIDIA kernel driver, when one is loaded.
pub fn nvidia_driver() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

fn repo_candidates() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    // The source tree this binary was built from, then the tree around the executable
    // (target/<profile>/pipeline or target/<profile>/examples/x), for copied trees.
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Ok(exe) = std::env::current_exe() {
        for up in [2, 3] {
            if let Some(root) = exe.ancestors().nth(up) {
                roots.push(root.to_path_buf());
            }
        }
    }
    roots
}

/// The folder with the CUDA build's `libmlx.so`, if set up.
pub fn cuda_library_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CUDA_LIB_ENV) {
        let dir = PathBuf::from(dir);
        return dir.join("libmlx.so").is_file().then_some(dir);
    }
    repo_candidates()
        .into_iter()
        .map(|root| root.join(CUDA_DIR).join("mlx/lib"))
        .find(|dir| dir.join("libmlx.so").is_file())
}

/// Folders holding NVIDIA's CUDA libraries that the CUDA build needs (cuBLAS, cuDNN,
/// NVRTC, cuFFT, NCCL, the runtime): from the environment, beside the CUDA build (the
/// layout its wheel expects), or in a Python install's `site-packages/nvidia` (PyTorch
/// brings them).
pub fn nvidia_library_dirs(cuda_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(NVIDIA_LIBS_ENV)
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(lib) = cuda_dir {
        // <dir>/mlx/lib -> <dir>/nvidia
        if let Some(base) = lib.ancestors().nth(2) {
            roots.push(base.join("nvidia"));
        }
    }
    for prefix in site_packages() {
        roots.push(prefix.join("nvidia"));
    }
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("lib"))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        dirs.extend(found);
    }
    dirs
}

/// The NVIDIA libraries MLX's CUDA build links (besides the driver's libcuda).
const CUDA_LIBRARIES: [&str; 5] = [
    "libcublasLt.so.13",
    "libcufft.so.12",
    "libnvrtc.so.13",
    "libcudnn.so.9",
    "libnccl.so.2",
];

/// Which of [`CUDA_LIBRARIES`] none of `dirs` holds.
pub fn missing_cuda_libraries(dirs: &[PathBuf]) -> Vec<&'static str> {
    CUDA_LIBRARIES
        .into_iter()
        .filter(|lib| !dirs.iter().any(|d| d.join(lib).exists()))
        .collect()
}

/// Python package folders on this machine, most specific first.
fn site_packages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            prefixes.push(PathBuf::from(p).join("lib"));
        }
    }
    // The environment of the `python3` first on PATH (a venv's bin/ has its lib/ beside).
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("python3").exists() {
                if let Some(env) = dir.parent() {
                    prefixes.push(env.join("lib"));
                }
                break;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    for p in [
        "/usr/local/lib",
        "/usr/lib",
        "/opt/conda/lib",
        "/opt/venv/lib",
    ] {
        prefixes.push(PathBuf::from(p));
    }
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(&prefix) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons.into_iter().rev() {
            for sub in ["site-packages", "dist-packages"] {
                let dir = py.join(sub);
                if dir.is_dir() {
                    out.push(dir);
                }
            }
        }
    }
    out
}

/// The `libmlx.so` this process has loaded (from the loader's map).
pub fn loaded_library() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libmlx.so"))
        .map(PathBuf::from)
}

fn running_cuda_build() -> bool {
    match (loaded_library(), cuda_library_dir()) {
        (Some(loaded), Some(dir)) => {
            loaded.canonicalize().ok() == dir.join("libmlx.so").canonicalize().ok()
        }
        _ => false,
    }
}

/// Re-executes the program on MLX's CUDA build when `choice` wants a GPU and one can be
/// used; returns (without doing anything) otherwise. Call before any MLX work.
pub fn prepare(choice: DeviceChoice) -> Result<(), BackendError> {
    if choice == DeviceChoice::Cpu
        || !cfg!(target_os = "linux")
        || std::env::var_os(PREPARED_ENV).is_some()
        || running_cuda_build()
    {
        return Ok(());
    }
    let Some(cuda) = cuda_library_dir() else {
        return match choice {
            DeviceChoice::Gpu => Err(BackendError::NoGpu(format!(
                "MLX's CUDA build is not set up (run `bash scripts/setup.sh --cuda`, or set \
                 {CUDA_LIB_ENV} to the folder holding the CUDA build's libmlx.so)"
            ))),
            _ => Ok(()),
        };
    };
    if nvidia_driver().is_none() {
        return match choice {
            DeviceChoice::Gpu => Err(BackendError::NoGpu(
                "no NVIDIA driver is loaded on this machine (/proc/driver/nvidia/version)".into(),
            )),
            _ => Ok(()),
        };
    }
    let nvidia = nvidia_library_dirs(Some(&cuda));
    let missing = missing_cuda_libraries(&nvidia);
    if !missing.is_empty() {
        let why = format!(
            "NVIDIA libraries not found: {} (install PyTorch or the nvidia-* wheels, or set \
             {NVIDIA_LIBS_ENV})",
            missing.join(", ")
        );
        return match choice {
            DeviceChoice::Gpu => Err(BackendError::NoGpu(why)),
            _ => {
                eprintln!("note: staying on the CPU: {why}");
                Ok(())
            }
        };
    }
    let mut paths = vec![cuda.clone()];
    paths.extend(nvidia);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    let joined = std::env::join_paths(paths).map_err(|e| BackendError::NoGpu(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(BackendError::Exec)?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("LD_LIBRARY_PATH", joined)
            .env(PREPARED_ENV, "1")
            .exec();
        Err(BackendError::Exec(err))
    }
    #[cfg(not(unix))]
    {
        let _ = joined;
        Ok(())
    }
}

#[cfg(feature = "mlx")]
pub use with_mlx::*;

#[cfg(feature = "mlx")]
mod with_mlx {
    use super::*;

    fn string(f: impl FnOnce(*mut mlx_sys::mlx_string) -> i32) -> Option<String> {
        unsafe {
            let mut s = mlx_sys::mlx_string_new();
            let ok = f(&mut s) == 0;
            let out = ok.then(|| {
                std::ffi::CStr::from_ptr(mlx_sys::mlx_string_data(s))
                    .to_string_lossy()
                    .into_owned()
            });
            mlx_sys::mlx_string_free(s);
            out
        }
    }

    /// The version of the MLX library actually loaded.
    pub fn mlx_version() -> Option<String> {
        string(|s| unsafe { mlx_sys::mlx_version(s) })
    }

    /// Number of GPUs MLX can use (CUDA or Metal).
    pub fn gpu_count() -> usize {
        let mut cuda = false;
        let mut metal = false;
        unsafe {
            mlx_sys::mlx_cuda_is_available(&mut cuda);
            mlx_sys::mlx_metal_is_available(&mut metal);
        }
        if !(cuda || metal) {
            return 0;
        }
        let mut n = 0;
        unsafe { mlx_sys::mlx_device_count(&mut n, mlx_sys::mlx_device_type__MLX_GPU) };
        n.max(0) as usize
    }

    /// The GPU's name as MLX reports it.
    pub fn gpu_name() -> Option<String> {
        if gpu_count() == 0 {
            return None;
        }
        unsafe {
            let dev = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
            let mut info = mlx_sys::mlx_device_info_new();
            let mut out = None;
            if mlx_sys::mlx_device_info_get(&mut info, dev) == 0 {
                for key in [c"device_name", c"name", c"architecture"] {
                    let (mut has, mut is_str) = (false, false);
                    mlx_sys::mlx_device_info_has_key(&mut has, info, key.as_ptr());
                    mlx_sys::mlx_device_info_is_string(&mut is_str, info, key.as_ptr());
                    if has && is_str {
                        let mut v: *const std::os::raw::c_char = std::ptr::null();
                        if mlx_sys::mlx_device_info_get_string(&mut v, info, key.as_ptr()) == 0
                            && !v.is_null()
                        {
                            out = Some(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned());
                            break;
                        }
                    }
                }
            }
            mlx_sys::mlx_device_info_free(info);
            mlx_sys::mlx_device_free(dev);
            out
        }
    }

    /// Makes the chosen device MLX's default and says which it is.
    pub fn select(choice: DeviceChoice) -> Result<mlx_rs::DeviceType, BackendError> {
        let gpus = gpu_count();
        let ty = match choice {
            DeviceChoice::Cpu => mlx_rs::DeviceType::Cpu,
            DeviceChoice::Auto if gpus == 0 => mlx_rs::DeviceType::Cpu,
            DeviceChoice::Auto => mlx_rs::DeviceType::Gpu,
            DeviceChoice::Gpu if gpus > 0 => mlx_rs::DeviceType::Gpu,
            DeviceChoice::Gpu => {
                return Err(BackendError::NoGpu(format!(
                    "the loaded MLX library ({}) has no usable GPU; `pipeline doctor` says why",
                    loaded_library()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "libmlx".into())
                )))
            }
        };
        let device = match ty {
            mlx_rs::DeviceType::Gpu => mlx_rs::Device::gpu(),
            mlx_rs::DeviceType::Cpu => mlx_rs::Device::cpu(),
        };
        mlx_rs::Device::set_default(&device);
        Ok(ty)
    }

    /// What `pipeline doctor` prints: one `name: value` line each, then what is missing.
    pub fn doctor() -> Vec<(String, String)> {
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| lines.push((k.to_string(), v));
        let loaded = loaded_library();
        let cuda = cuda_library_dir();
        let on_cuda = running_cuda_build();
        let backend = if cfg!(target_os = "macos") {
            "metal"
        } else if on_cuda {
            "cuda"
        } else {
            "cpu"
        };
        push("backend", backend.into());
        push(
            "mlx version",
            format!(
                "{} (pinned {MLX_VERSION})",
                mlx_version().unwrap_or_else(|| "unknown".into())
            ),
        );
        push(
            "libmlx",
            loaded
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "not found in this process's map".into()),
        );
        let gpus = gpu_count();
        push("gpus", gpus.to_string());
        if let Some(name) = gpu_name() {
            push("gpu", name);
        }
        let default = mlx_rs::Device::try_default()
            .and_then(|d| d.get_type())
            .map(|t| format!("{t:?}").to_lowercase())
            .unwrap_or_else(|_| "unknown".into());
        push("default device", default);
        push(
            "nvidia driver",
            nvidia_driver().unwrap_or_else(|| "none".into()),
        );
        push(
            "cuda build",
            cuda.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("not set up ({CUDA_DIR})")),
        );
        let nv = nvidia_library_dirs(cuda.as_deref());
        push(
            "nvidia libraries",
            if nv.is_empty() {
                "none found".into()
            } else {
                nv.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            },
        );
        let mut missing = Vec::new();
        if cfg!(target_os = "linux") {
            if cuda.is_none() {
                missing.push(
                    "MLX's CUDA build (bash scripts/setup.sh --cuda) for GPU training".to_string(),
                );
            }
            if nvidia_driver().is_none() {
                missing.push("an NVIDIA GPU and driver for GPU training".into());
            } else if cuda.is_some() && !on_cuda {
                missing
                    .push("the CUDA build did not load: check the NVIDIA libraries above".into());
            }
        }
        push(
            "missing",
            if missing.is_empty() {
                "nothing".into()
            } else {
                missing.join("; ")
            },
        );
        lines
    }
}

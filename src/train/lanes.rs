//! Data parallelism across CPU cores within one optimizer step.
//!
//! MLX's CPU backend runs each stream's work on one thread, and only its matmuls (through
//! BLAS) use more than one core: on a 2-core machine the second core waited in BLAS's spin
//! loop for about a fifth of every ViT-B step while the first ran elementwise and softmax
//! work. So on the CPU a batch is cut into parts that run on `lanes` streams at once, one
//! host thread evaluating each lane, with BLAS on one thread per call. Parts are small
//! (a few images) because a lane's memory is that of its current part: with gradient
//! checkpointing this is what keeps ViT-B under 0.8 GB.
//!
//! Every part's loss and gradients are built on the caller's thread (graph construction
//! is not shared across threads); only evaluation happens on the lane threads.

use mlx_rs::{error::Exception, Array};

/// Token rows a part should have at least: below this, per-operation overhead outweighs
/// the smaller working set (ViT-Ti, 197 tokens: parts of 1 image were 1.3x slower than
/// parts of 2; ViT-B and ViT-Ti ran as fast with 2-image parts as with 4-image ones).
const MIN_PART_ROWS: usize = 384;

/// An MLX stream that any thread may evaluate on (one at a time).
struct SharedStream(mlx_sys::mlx_stream);

impl Drop for SharedStream {
    fn drop(&mut self) {
        // SAFETY: created by mlx_stream_new_thread_unsafe and freed once here.
        unsafe { mlx_sys::mlx_stream_free(self.0) };
    }
}

/// How a step's batch is spread over the CPU cores. `Lanes::single()` keeps everything on
/// the default stream with one evaluation (GPUs, one core).
pub struct Lanes {
    streams: Vec<SharedStream>,
}

impl Lanes {
    pub fn single() -> Lanes {
        Lanes {
            streams: Vec::new(),
        }
    }

    /// `threads` lanes on the CPU (0: one per available core); a single lane when MLX's
    /// default device is not the CPU or only one core is available.
    pub fn for_default_device(threads: usize) -> Lanes {
        if !crate::model::gelu::on_cpu() {
            return Lanes::single();
        }
        let n = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        if n < 2 {
            return Lanes::single();
        }
        limit_malloc_arenas();
        let streams = (0..n)
            .map(|_| {
                // SAFETY: plain constructors; the device handle is freed after use.
                unsafe {
                    let dev = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_CPU, 0);
                    let s = mlx_sys::mlx_stream_new_thread_unsafe(dev);
                    mlx_sys::mlx_device_free(dev);
                    SharedStream(s)
                }
            })
            .collect();
        Lanes { streams }
    }

    /// Number of lanes (1 when single).
    pub fn count(&self) -> usize {
        self.streams.len().max(1)
    }

    pub fn is_parallel(&self) -> bool {
        self.streams.len() > 1
    }

    /// Images per part for a batch of `batch` images of `tokens` tokens each.
    pub fn part_size(&self, batch: usize, tokens: usize) -> usize {
        if !self.is_parallel() {
            return batch.max(1);
        }
        let per_lane = batch.div_ceil(self.count());
        MIN_PART_ROWS
            .div_ceil(tokens.max(1))
            .clamp(1, per_lane.max(1))
    }

    /// Makes lane `lane`'s stream the default for arrays created until the guard drops.
    pub fn enter(&self, lane: usize) -> Option<DefaultStreamGuard> {
        let lane = lane % self.count();
        let s = self.streams.get(lane)?;
        Some(DefaultStreamGuard::set(s.0, lane))
    }

    /// Evaluates each lane's groups in order, lanes concurrently. A group's arrays are
    /// evaluated together (its loss and gradients), so a lane holds one part's activations
    /// at a time.
    ///
    /// The lanes only evaluate: every array handed to them comes back and is dropped on
    /// the caller's thread once all lanes have joined. MLX's array destructor inspects
    /// and rewires shared graph nodes (siblings of multi-output ops, compiled tapes)
    /// without locks, so arrays of one step must not be released by several threads at
    /// once.
    pub fn eval(&self, lanes: Vec<Vec<Vec<Array>>>) -> Result<(), Exception> {
        let _blas = BlasThreads::one();
        let mut keep: Vec<Vec<Vec<Array>>> = Vec::with_capacity(lanes.len());
        let result = std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|groups| {
                    scope.spawn(move || {
                        let mut r = Ok(());
                        for group in &groups {
                            r = mlx_rs::transforms::eval(group.iter());
                            if r.is_err() {
                                break;
                            }
                        }
                        (groups, r)
                    })
                })
                .collect();
            let mut first = Ok(());
            for h in handles {
                match h.join() {
                    Ok((groups, r)) => {
                        keep.push(groups);
                        if first.is_ok() {
                            first = r;
                        }
                    }
                    Err(_) if first.is_ok() => {
                        first = Err(Exception::custom("a training lane panicked"));
                    }
                    Err(_) => {}
                }
            }
            first
        });
        drop(keep);
        result
    }
}

/// Restores the previous default CPU stream when dropped.
pub struct DefaultStreamGuard {
    previous: mlx_sys::mlx_stream,
    previous_lane: usize,
}

impl DefaultStreamGuard {
    /// Also tells the model which lane's graph is being built, so that each lane has
    /// compiled closures of its own (`model::set_lane`).
    fn set(stream: mlx_sys::mlx_stream, lane: usize) -> Self {
        let previous_lane = crate::model::set_lane(lane);
        // SAFETY: valid streams; `previous` is a new handle we free on drop.
        unsafe {
            let mut previous = mlx_sys::mlx_stream_new();
            let dev = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_CPU, 0);
            mlx_sys::mlx_get_default_stream(&mut previous, dev);
            mlx_sys::mlx_device_free(dev);
            mlx_sys::mlx_set_default_stream(stream);
            DefaultStreamGuard {
                previous,
                previous_lane,
            }
        }
    }
}

impl Drop for DefaultStreamGuard {
    fn drop(&mut self) {
        // SAFETY: `previous` was filled by mlx_get_default_stream.
        unsafe {
            mlx_sys::mlx_set_default_stream(self.previous);
            mlx_sys::mlx_stream_free(self.previous);
        }
        crate::model::set_lane(self.previous_lane);
    }
}

type SetThreads = unsafe extern "C" fn(std::ffi::c_int);
type GetThreads = unsafe extern "C" fn() -> std::ffi::c_int;

extern "C" {
    fn dlsym(
        handle: *mut std::ffi::c_void,
        symbol: *const std::ffi::c_char,
    ) -> *mut std::ffi::c_void;
}

/// OpenBLAS's thread count, when the process has OpenBLAS (Linux; Accelerate on macOS
/// has no such knob and MLX uses the GPU there anyway).
fn openblas() -> Option<(SetThreads, GetThreads)> {
    // RTLD_DEFAULT is the null handle on glibc and musl.
    let find = |name: &std::ffi::CStr| {
        // SAFETY: dlsym with a NUL-terminated name; a null result means absent.
        let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let set = find(c"openblas_set_num_threads")?;
    let get = find(c"openblas_get_num_threads")?;
    // SAFETY: OpenBLAS's documented signatures.
    unsafe {
        Some((
            std::mem::transmute::<*mut std::ffi::c_void, SetThreads>(set),
            std::mem::transmute::<*mut std::ffi::c_void, GetThreads>(get),
        ))
    }
}

/// Sets BLAS's thread count for the process (where it is OpenBLAS): data-parallel ranks
/// sharing a host each take their share of its cores.
pub fn set_blas_threads(n: usize) {
    if let Some((set, _)) = openblas() {
        let n = std::ffi::c_int::try_from(n.max(1)).unwrap_or(1);
        // SAFETY: OpenBLAS call without preconditions.
        unsafe { set(n) }
    }
}

/// BLAS on one thread per call while lanes run (two multi-threaded BLAS calls at once
/// fight over the same cores: 1.6x slower than one thread each); restored on drop.
struct BlasThreads {
    restore: Option<(SetThreads, std::ffi::c_int)>,
}

impl BlasThreads {
    fn one() -> Self {
        let restore = openblas().map(|(set, get)| {
            // SAFETY: OpenBLAS calls without preconditions.
            unsafe {
                let before = get();
                set(1);
                (set, before)
            }
        });
        BlasThreads { restore }
    }
}

impl Drop for BlasThreads {
    fn drop(&mut self) {
        if let Some((set, n)) = self.restore {
            // SAFETY: as above.
            unsafe { set(n) }
        }
    }
}

/// glibc gives threads that allocate at once arenas of their own, and memory freed in one
/// arena is not reused by the others: with lane threads allocating activations, ViT-B's
/// checkpointed step (batch 8) peaked at 874 MB resident with glibc's default limit (8
/// per core), 741-752 MB with two arenas and 729-734 MB with one. The lanes allocate a
/// few thousand buffers per step, so sharing one arena's lock costs nothing measurable.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_ARENA_MAX: std::ffi::c_int = -8;
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator tuning.
            unsafe { mallopt(M_ARENA_MAX, 1) };
        });
    }
}

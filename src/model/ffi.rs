//! MLX function transforms that mlx-rs does not wrap (checkpoint, custom VJP) or wraps in
//! ways we cannot use (compile keyed per call site), over mlx-c's closure API. A
//! [`Closure`] owns an `mlx_closure`; Rust closures become MLX closures through a boxed
//! payload that MLX drops when the last copy of the closure goes away.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mlx_rs::{error::Exception, Array};

type BoxedFn = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;
type BoxedVjp = Box<dyn FnMut(&[Array], &[Array], &[Array]) -> Result<Vec<Array>, Exception>>;

unsafe fn vector_to_arrays(v: mlx_sys::mlx_vector_array) -> Vec<Array> {
    let n = mlx_sys::mlx_vector_array_size(v);
    (0..n)
        .map(|i| {
            let mut a = mlx_sys::mlx_array_new();
            mlx_sys::mlx_vector_array_get(&mut a, v, i);
            Array::from_ptr(a)
        })
        .collect()
}

/// Fills `ret` (a vector MLX created) with `arrays`.
unsafe fn fill_vector(ret: *mut mlx_sys::mlx_vector_array, arrays: &[Array]) {
    let ptrs: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
    mlx_sys::mlx_vector_array_set_data(ret, ptrs.as_ptr(), ptrs.len());
}

unsafe fn new_vector(arrays: &[Array]) -> mlx_sys::mlx_vector_array {
    let ptrs: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
    mlx_sys::mlx_vector_array_new_data(ptrs.as_ptr(), ptrs.len())
}

extern "C" fn call_fn(
    ret: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| unsafe {
        let f = &mut *(payload as *mut BoxedFn);
        match f(&vector_to_arrays(input)) {
            Ok(out) => {
                fill_vector(ret, &out);
                0
            }
            Err(_) => 1,
        }
    }));
    result.unwrap_or(1)
}

extern "C" fn drop_fn(payload: *mut c_void) {
    // SAFETY: created by Box::into_raw in `Closure::new` and dropped once, by MLX.
    unsafe { drop(Box::from_raw(payload as *mut BoxedFn)) }
}

extern "C" fn call_vjp(
    ret: *mut mlx_sys::mlx_vector_array,
    primals: mlx_sys::mlx_vector_array,
    cotangents: mlx_sys::mlx_vector_array,
    outputs: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| unsafe {
        let f = &mut *(payload as *mut BoxedVjp);
        let (p, c, o) = (
            vector_to_arrays(primals),
            vector_to_arrays(cotangents),
            vector_to_arrays(outputs),
        );
        match f(&p, &c, &o) {
            Ok(out) => {
                fill_vector(ret, &out);
                0
            }
            Err(_) => 1,
        }
    }));
    result.unwrap_or(1)
}

extern "C" fn drop_vjp(payload: *mut c_void) {
    // SAFETY: created by Box::into_raw in `Closure::with_vjp` and dropped once, by MLX.
    unsafe { drop(Box::from_raw(payload as *mut BoxedVjp)) }
}

/// An MLX closure: a function of arrays that MLX can transform.
pub struct Closure(mlx_sys::mlx_closure);

impl Drop for Closure {
    fn drop(&mut self) {
        // SAFETY: we own this handle; MLX keeps its own references alive.
        unsafe { mlx_sys::mlx_closure_free(self.0) };
    }
}

fn status(code: i32, what: &str) -> Result<(), Exception> {
    if code == 0 {
        Ok(())
    } else {
        Err(Exception::custom(format!("MLX {what} failed")))
    }
}

impl Closure {
    pub fn new(f: impl FnMut(&[Array]) -> Result<Vec<Array>, Exception> + 'static) -> Self {
        let boxed: Box<BoxedFn> = Box::new(Box::new(f));
        // SAFETY: the payload is released by `drop_fn` exactly once.
        Closure(unsafe {
            mlx_sys::mlx_closure_new_func_payload(
                Some(call_fn),
                Box::into_raw(boxed) as *mut c_void,
                Some(drop_fn),
            )
        })
    }

    /// `fun` with its gradient given by `vjp(primals, cotangents, outputs)` instead of
    /// by differentiating its graph.
    pub fn with_vjp(
        fun: Closure,
        vjp: impl FnMut(&[Array], &[Array], &[Array]) -> Result<Vec<Array>, Exception> + 'static,
    ) -> Result<Self, Exception> {
        let boxed: Box<BoxedVjp> = Box::new(Box::new(vjp));
        unsafe {
            let custom = mlx_sys::mlx_closure_custom_new_func_payload(
                Some(call_vjp),
                Box::into_raw(boxed) as *mut c_void,
                Some(drop_vjp),
            );
            let mut res = mlx_sys::mlx_closure_new();
            let code = mlx_sys::mlx_custom_vjp(&mut res, fun.0, custom);
            mlx_sys::mlx_closure_custom_free(custom);
            let out = Closure(res);
            status(code, "custom_vjp")?;
            Ok(out)
        }
    }

    /// Compiled for fixed shapes (MLX re-traces per new input shape and caches each).
    /// Shape-specialised kernels matter on the CPU: MLX's shapeless kernels there are
    /// strided loops several times slower.
    pub fn compiled(&self) -> Result<Self, Exception> {
        unsafe {
            let mut res = mlx_sys::mlx_closure_new();
            let code = mlx_sys::mlx_compile(&mut res, self.0, false);
            let out = Closure(res);
            status(code, "compile")?;
            Ok(out)
        }
    }

    /// Rematerialised: the outputs' activations are recomputed in the backward pass.
    /// MLX differentiates it only with respect to its inputs (captured arrays are
    /// constants), so everything that needs a gradient must be an input.
    pub fn checkpointed(&self) -> Result<Self, Exception> {
        unsafe {
            let mut res = mlx_sys::mlx_closure_new();
            let code = mlx_sys::mlx_checkpoint(&mut res, self.0);
            let out = Closure(res);
            status(code, "checkpoint")?;
            Ok(out)
        }
    }

    pub fn apply(&self, inputs: &[Array]) -> Result<Vec<Array>, Exception> {
        unsafe {
            let input = new_vector(inputs);
            let mut out = mlx_sys::mlx_vector_array_new();
            let code = mlx_sys::mlx_closure_apply(&mut out, self.0, input);
            mlx_sys::mlx_vector_array_free(input);
            let arrays = if code == 0 {
                vector_to_arrays(out)
            } else {
                Vec::new()
            };
            mlx_sys::mlx_vector_array_free(out);
            status(code, "function application")?;
            Ok(arrays)
        }
    }
}

/// Per-thread slots for a closure built on first use, one per training lane (MLX caches
/// compiled kernels per closure, so the closure must outlive the calls).
pub(crate) type ClosureSlot = std::cell::RefCell<Vec<Option<Closure>>>;

thread_local! {
    /// The training lane whose graph this thread is building (`train::lanes`).
    static LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes `lane` the lane whose graph this thread builds; returns the previous one.
///
/// Each lane gets closures of its own: every application of one compiled closure shares
/// its traced tape, constants included, and the lanes evaluate their graphs on several
/// threads at once, so two lanes could evaluate (and release) the same tape nodes
/// concurrently. Training crashed now and then under load on a lane thread in MLX's array
/// destructor (5 of 55 runs in session 5; once in CI in session 6). The rarer crash left
/// after this had another cause: `train::step`'s `part_value_and_grad`.
pub fn set_lane(lane: usize) -> usize {
    LANE.with(|c| c.replace(lane))
}

/// Applies this lane's closure in `slot`, building it with `build` on first use, and
/// returns its first output.
pub(crate) fn apply_cached(
    slot: &'static std::thread::LocalKey<ClosureSlot>,
    build: fn() -> Result<Closure, Exception>,
    inputs: &[Array],
) -> Result<Array, Exception> {
    let lane = LANE.with(|c| c.get());
    slot.with(|cell| {
        let mut slots = cell.borrow_mut();
        if slots.len() <= lane {
            slots.resize_with(lane + 1, || None);
        }
        if slots[lane].is_none() {
            slots[lane] = Some(build()?);
        }
        let f = slots[lane].as_ref().expect("just built");
        let mut out = f.apply(inputs)?;
        if out.is_empty() {
            return Err(Exception::custom("closure returned no output"));
        }
        Ok(out.remove(0))
    })
}

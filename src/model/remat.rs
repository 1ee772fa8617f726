//! Gradient checkpointing (rematerialisation) through MLX's `checkpoint` transform, which
//! mlx-rs does not wrap. A block runs as a checkpointed closure: its activations are
//! dropped after the forward pass and recomputed in the backward pass.
//!
//! MLX differentiates a checkpointed function only with respect to its inputs; arrays the
//! closure captures are constants to it. So every trainable parameter of the block is
//! passed in as an input (and the frozen ones captured), otherwise their gradients would
//! silently be zero.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mlx_rs::{error::Exception, Array};

type BoxedFn = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

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

unsafe fn arrays_to_vector(arrays: &[Array]) -> mlx_sys::mlx_vector_array {
    let v = mlx_sys::mlx_vector_array_new();
    let ptrs: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
    mlx_sys::mlx_vector_array_append_data(v, ptrs.as_ptr(), ptrs.len());
    v
}

extern "C" fn trampoline(
    ret: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| unsafe {
        let f = &mut *(payload as *mut BoxedFn);
        let args = vector_to_arrays(input);
        match f(&args) {
            Ok(out) => {
                *ret = arrays_to_vector(&out);
                0
            }
            Err(_) => 1,
        }
    }));
    result.unwrap_or(1)
}

extern "C" fn drop_payload(payload: *mut c_void) {
    // SAFETY: created by Box::into_raw in `checkpointed` and dropped once, by MLX.
    unsafe { drop(Box::from_raw(payload as *mut BoxedFn)) }
}

/// Applies `f` to `inputs` as a checkpointed MLX function. `f` must read every array it
/// needs gradients for from `inputs`; it may be called again during the backward pass.
pub fn checkpointed(
    f: impl FnMut(&[Array]) -> Result<Vec<Array>, Exception> + 'static,
    inputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let boxed: Box<BoxedFn> = Box::new(Box::new(f));
    unsafe {
        let fun = mlx_sys::mlx_closure_new_func_payload(
            Some(trampoline),
            Box::into_raw(boxed) as *mut c_void,
            Some(drop_payload),
        );
        let mut ck = mlx_sys::mlx_closure_new();
        let status = mlx_sys::mlx_checkpoint(&mut ck, fun);
        mlx_sys::mlx_closure_free(fun);
        if status != 0 {
            mlx_sys::mlx_closure_free(ck);
            return Err(Exception::custom("mlx_checkpoint failed"));
        }
        let input = arrays_to_vector(inputs);
        let mut out = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_closure_apply(&mut out, ck, input);
        mlx_sys::mlx_vector_array_free(input);
        mlx_sys::mlx_closure_free(ck);
        if status != 0 {
            mlx_sys::mlx_vector_array_free(out);
            return Err(Exception::custom("the checkpointed block failed"));
        }
        let arrays = vector_to_arrays(out);
        mlx_sys::mlx_vector_array_free(out);
        Ok(arrays)
    }
}

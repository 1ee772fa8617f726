//! Float32 kernels for the MIL ops we emit. Each checks what it relies on and returns
//! a message on bad operands; the caller adds the op's name.
//!
//! Matrix products (`linear`, `matmul`, `conv` as im2col + GEMM, attention's per-head
//! products) go through `matrixmultiply`'s sgemm. Large kernels split their output
//! over all cores with scoped threads ([`par_items`]); every output element is still
//! computed by one thread in the order a plain loop would use, so only GEMM's float32
//! summation order differs from the naive kernels. `INTERP_PROFILE=1` times each
//! kernel ([`profile::take`]).
//!
//! One submodule per op family, re-exported here; this module keeps what they share
//! (threads, broadcast strides, index stepping).

mod conv;
mod elementwise;
mod gemm;
mod matmul;
pub mod profile;
mod reduce;
mod shape;
#[cfg(test)]
mod tests;

pub use conv::conv2d;
pub use elementwise::{binary, gelu_exact, gelu_tanh, map, silu};
pub use matmul::{linear, matmul, sdpa};
pub use reduce::{layer_norm, reduce_mean, softmax};
pub use shape::{concat, reshape, slice_by_index, split, transpose};

use std::sync::OnceLock;

use super::tensor::strides;
use crate::coreml::mil::types::norm_axis;

pub type KResult<T> = Result<T, String>;

fn axis(a: i64, rank: usize) -> KResult<usize> {
    norm_axis(a, rank).ok_or_else(|| format!("axis {a} out of range for rank {rank}"))
}

/// Threads the kernels use: all cores.
fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Work (multiply-adds or element operations) below which a kernel stays on one
/// thread: a scoped thread costs tens of microseconds.
const PAR_MIN_WORK: usize = 1 << 17;

/// Runs `f(first, part)` over `out` cut into runs of whole `unit`-element items, one
/// run per core (`first` is the index of the run's first item); on this thread alone
/// when the work (`cost` per item) is too small to pay for threads.
fn par_items<T: Send>(out: &mut [T], unit: usize, cost: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let items = out.len().checked_div(unit).unwrap_or(0);
    let t = threads().min(items);
    if t <= 1 || items.saturating_mul(cost.max(1)) < PAR_MIN_WORK {
        f(0, out);
        return;
    }
    let per = items.div_ceil(t);
    std::thread::scope(|s| {
        let f = &f;
        let mut runs = out.chunks_mut(per * unit).enumerate();
        let mine = runs.next();
        for (i, run) in runs {
            s.spawn(move || f(i * per, run));
        }
        if let Some((_, run)) = mine {
            f(0, run);
        }
    });
}

/// Strides of an operand of shape `s` inside a broadcast index space of rank `r`
/// (0 along axes it is broadcast over).
fn broadcast_strides(s: &[usize], r: usize) -> Vec<usize> {
    let own = strides(s);
    (0..r)
        .map(|i| match (i + s.len()).checked_sub(r) {
            Some(k) if s[k] != 1 => own[k],
            _ => 0,
        })
        .collect()
}

/// Advances a row-major multi-index `idx` over `shape` by one along its axes
/// `..shape.len()`, keeping `offs[j]` (the offset in operand `j`, strides `st[j]`) in
/// step.
fn step<const N: usize>(
    idx: &mut [usize],
    shape: &[usize],
    st: [&[usize]; N],
    offs: &mut [usize; N],
) {
    for d in (0..shape.len()).rev() {
        idx[d] += 1;
        for j in 0..N {
            offs[j] += st[j][d];
        }
        if idx[d] < shape[d] {
            return;
        }
        for j in 0..N {
            offs[j] -= st[j][d] * shape[d];
        }
        idx[d] = 0;
    }
}

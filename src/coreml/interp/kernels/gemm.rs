//! The one GEMM the matrix kernels share: strided operands (transposes cost nothing)
//! through `matrixmultiply`'s sgemm, large products cut into blocks over the cores.

use super::{threads, PAR_MIN_WORK};

/// A matrix inside a slice: element `(i, j)` at `off + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) off: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with rows `ld` apart, from `off`.
    pub(super) fn rows(data: &'a [f32], off: usize, ld: usize) -> Self {
        Mat {
            data,
            off,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of [`Mat::rows`]: element `(i, j)` is stored at row `j`, column `i`.
    pub(super) fn cols(data: &'a [f32], off: usize, ld: usize) -> Self {
        Mat {
            data,
            off,
            rs: 1,
            cs: ld,
        }
    }

    /// Whether an `r x c` matrix from here lies inside `data`.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0
            || c == 0
            || (r - 1)
                .checked_mul(self.rs)
                .zip((c - 1).checked_mul(self.cs))
                .and_then(|(a, b)| a.checked_add(b)?.checked_add(self.off))
                .is_some_and(|last| last < self.data.len())
    }

    /// The sub-matrix from `(i, j)`.
    fn at(self, i: usize, j: usize) -> Self {
        Mat {
            off: self.off + i * self.rs + j * self.cs,
            ..self
        }
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.off..].as_ptr()
    }
}

/// The output of a GEMM shared between threads that write disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only `gemm` makes these, handing each thread a disjoint block of one
// exclusively borrowed slice that outlives the threads (scoped).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method (not field access) so that closures capture the whole `OutPtr`.
    fn add(self, n: usize) -> *mut f32 {
        // SAFETY: callers stay inside the output slice.
        unsafe { self.0.add(n) }
    }
}

/// `C = A B` for an `m x k` A and a `k x n` B on this thread; C is row-major, rows `ldc`
/// apart.
///
/// # Safety
/// `a` and `b` must fit their sizes ([`Mat::fits`]); `c` must be valid for writes of
/// an `m x n` row-major matrix with row stride `ldc >= n`, written by no one else
/// meanwhile; `k > 0`.
unsafe fn sgemm(m: usize, k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, c: *mut f32, ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    // beta = 0: C is only written, never read.
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.ptr(),
        a.rs as isize,
        a.cs as isize,
        b.ptr(),
        b.rs as isize,
        b.cs as isize,
        0.0,
        c,
        ldc as isize,
        1,
    );
}

/// `C = A B` (`m x k` by `k x n`) into the row-major `c` (rows `ldc` apart), on all
/// cores when it is large.
pub(super) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_on(threads(), m, k, n, a, b, c, ldc);
}

/// [`gemm`] on at most `t` threads: the longer of m and n is cut into one block per
/// thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_on(
    t: usize,
    m: usize,
    k: usize,
    n: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.fits(m, k) && b.fits(k, n) && ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm operands out of bounds"
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    let out = OutPtr(c.as_mut_ptr());
    if t <= 1 || m * n * k < PAR_MIN_WORK * 8 {
        // SAFETY: bounds checked above; `c` is borrowed mutably.
        unsafe { sgemm(m, k, n, a, b, out.0, ldc) };
        return;
    }
    // Blocks in multiples of 8 (the AVX and NEON microkernels' tile).
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let per = len.div_ceil(t).next_multiple_of(8);
    std::thread::scope(|s| {
        for start in (0..len).step_by(per) {
            let size = per.min(len - start);
            let run = move || {
                // SAFETY: bounds checked above; each block covers its own rows or
                // columns of `c`, which stays borrowed until the scope ends.
                unsafe {
                    if split_rows {
                        sgemm(size, k, n, a.at(start, 0), b, out.add(start * ldc), ldc);
                    } else {
                        sgemm(m, k, size, a, b.at(0, start), out.add(start), ldc);
                    }
                }
            };
            if start + size == len {
                run();
            } else {
                s.spawn(run);
            }
        }
    });
}

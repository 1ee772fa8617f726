//! Float32 kernels for the MIL ops we emit. Each checks what it relies on and returns
//! a message on bad operands; the caller adds the op's name.
//!
//! Matrix products (`linear`, `matmul`, `conv` as im2col + GEMM, attention's per-head
//! products) go through `matrixmultiply`'s sgemm. Large kernels split their output
//! over all cores with scoped threads ([`par_items`]); every output element is still
//! computed by one thread in the order a plain loop would use, so only GEMM's float32
//! summation order differs from the naive kernels. `INTERP_PROFILE=1` times each
//! kernel ([`profile::take`]).

use std::sync::OnceLock;

use super::tensor::{strides, Tensor};
use crate::coreml::mil::types::{broadcast, norm_axis};

pub type KResult<T> = Result<T, String>;

fn axis(a: i64, rank: usize) -> KResult<usize> {
    norm_axis(a, rank).ok_or_else(|| format!("axis {a} out of range for rank {rank}"))
}

/// Time spent per kernel, recorded only while `INTERP_PROFILE` is set (and not `0`).
/// Kernels that call others (`sdpa`) count their inner kernels twice: once on their
/// own line and once inside the caller's.
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("INTERP_PROFILE").is_some_and(|v| v != "0"))
    }

    /// Adds the time until it is dropped to `name`'s line.
    pub(super) struct Span(Option<(&'static str, Instant)>);

    pub(super) fn span(name: &'static str) -> Span {
        Span(enabled().then(|| (name, Instant::now())))
    }

    impl Drop for Span {
        fn drop(&mut self) {
            if let Some((name, t)) = self.0 {
                let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
                let e = table.entry(name).or_default();
                e.0 += t.elapsed();
                e.1 += 1;
            }
        }
    }

    /// `(kernel, total time, calls)` recorded since the last call, longest first.
    pub fn take() -> Vec<(&'static str, Duration, u64)> {
        let table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
        let mut v: Vec<_> = table.into_iter().map(|(k, (d, n))| (k, d, n)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
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

/// Elementwise binary op with numpy broadcasting.
pub fn binary(x: &Tensor, y: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> KResult<Tensor> {
    let _p = profile::span("binary");
    let out = broadcast(&x.shape, &y.shape)
        .ok_or_else(|| format!("{:?} and {:?} do not broadcast", x.shape, y.shape))?;
    let n: usize = out.iter().product();
    let mut data = vec![0f32; n];
    if x.shape == y.shape {
        // Memory-bound: threads only for large tensors (runs of 64, a quarter each).
        par_items(&mut data, 64, 16, |first, o| {
            let at = first * 64;
            let xs = &x.data[at..at + o.len()];
            let ys = &y.data[at..at + o.len()];
            for ((o, a), b) in o.iter_mut().zip(xs).zip(ys) {
                *o = f(*a, *b);
            }
        });
        return Ok(Tensor { shape: out, data });
    }
    if n == 0 {
        return Ok(Tensor { shape: out, data });
    }
    let r = out.len();
    let (sx, sy) = (
        broadcast_strides(&x.shape, r),
        broadcast_strides(&y.shape, r),
    );
    // Rows along the last axis, each with its own operand strides (0 or 1 there).
    let inner = out.last().copied().unwrap_or(1);
    let (ix, iy) = (
        sx.last().copied().unwrap_or(0),
        sy.last().copied().unwrap_or(0),
    );
    let outer = &out[..r.saturating_sub(1)];
    let (ox, oy) = (&sx[..outer.len()], &sy[..outer.len()]);
    par_items(&mut data, inner, inner.div_ceil(2), |first, part| {
        // Offsets of row `first` in x and y.
        let mut idx = vec![0usize; outer.len()];
        let mut rem = first;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut offs = [
            (0..outer.len()).map(|d| idx[d] * ox[d]).sum::<usize>(),
            (0..outer.len()).map(|d| idx[d] * oy[d]).sum::<usize>(),
        ];
        for row in part.chunks_mut(inner) {
            let [mut a, mut b] = offs;
            for o in row {
                *o = f(x.data[a], y.data[b]);
                a += ix;
                b += iy;
            }
            step(&mut idx, outer, [ox, oy], &mut offs);
        }
    });
    Ok(Tensor { shape: out, data })
}

pub fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let _p = profile::span("map");
    let mut data = vec![0f32; x.numel()];
    // Costly functions (erf, tanh, exp): worth threads from a few thousand elements.
    par_items(&mut data, 1, 16, |first, o| {
        for (o, v) in o.iter_mut().zip(&x.data[first..]) {
            *o = f(*v);
        }
    });
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

pub fn gelu_exact(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn transpose(x: &Tensor, perm: &[usize]) -> KResult<Tensor> {
    let _p = profile::span("transpose");
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!("{perm:?} is not a permutation of rank {r}"));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides(&x.shape);
    // Output axes with their source strides, size-1 axes dropped and axes that stay
    // adjacent in the source merged, so the last one is as long as it can be.
    let mut dims: Vec<(usize, usize)> = Vec::with_capacity(r);
    for &p in perm {
        let (n, st) = (x.shape[p], xs[p]);
        if n == 1 {
            continue;
        }
        match dims.last_mut() {
            Some((pn, ps)) if *ps == st * n => {
                *pn *= n;
                *ps = st;
            }
            _ => dims.push((n, st)),
        }
    }
    let n = x.numel();
    let mut data = vec![0f32; n];
    let (inner, istride) = dims.pop().unwrap_or((1, 1));
    if n == 0 {
        return Ok(Tensor { shape, data });
    }
    let outer: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let ost: Vec<usize> = dims.iter().map(|d| d.1).collect();
    // A copy: memory-bound, threads only for large tensors.
    par_items(&mut data, inner, inner.div_ceil(4), |first, part| {
        let mut idx = vec![0usize; outer.len()];
        let mut rem = first;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut off = [(0..outer.len()).map(|d| idx[d] * ost[d]).sum::<usize>()];
        for row in part.chunks_mut(inner) {
            if istride == 1 {
                row.copy_from_slice(&x.data[off[0]..off[0] + inner]);
            } else {
                for (i, o) in row.iter_mut().enumerate() {
                    *o = x.data[off[0] + i * istride];
                }
            }
            step(&mut idx, &outer, [&ost], &mut off);
        }
    });
    Ok(Tensor { shape, data })
}

pub fn reshape(x: &Tensor, shape: &[i64]) -> KResult<Tensor> {
    // -1 infers one dimension, 0 copies the input's.
    let mut out: Vec<usize> = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(*x.shape.get(i).ok_or("0 in shape beyond the input's rank")?),
            s if s > 0 => out.push(s as usize),
            _ => return Err(format!("bad shape {shape:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || x.numel() % known != 0 {
            return Err(format!("{:?} cannot be reshaped to {shape:?}", x.shape));
        }
        out[i] = x.numel() / known;
    }
    if out.iter().product::<usize>() != x.numel() {
        return Err(format!("{:?} cannot be reshaped to {shape:?}", x.shape));
    }
    Ok(Tensor {
        shape: out,
        data: x.data.clone(),
    })
}

pub fn concat(values: &[&Tensor], ax: i64) -> KResult<Tensor> {
    let first = values.first().ok_or("no values")?;
    let a = axis(ax, first.rank())?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for v in values {
        if v.rank() != first.rank() || (0..v.rank()).any(|i| i != a && v.shape[i] != first.shape[i])
        {
            return Err(format!("{:?} does not match {:?}", v.shape, first.shape));
        }
        shape[a] += v.shape[a];
    }
    let outer: usize = first.shape[..a].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for v in values {
            let chunk: usize = v.shape[a..].iter().product();
            data.extend_from_slice(&v.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Ok(Tensor { shape, data })
}

pub fn split(x: &Tensor, sizes: &[usize], ax: i64) -> KResult<Vec<Tensor>> {
    let a = axis(ax, x.rank())?;
    if sizes.iter().sum::<usize>() != x.shape[a] {
        return Err(format!("sizes {sizes:?} do not add up to {}", x.shape[a]));
    }
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let row = x.shape[a] * inner;
    let mut outs = Vec::new();
    let mut start = 0;
    for &s in sizes {
        let mut shape = x.shape.clone();
        shape[a] = s;
        let mut data = Vec::with_capacity(outer * s * inner);
        for o in 0..outer {
            data.extend_from_slice(&x.data[o * row + start * inner..o * row + (start + s) * inner]);
        }
        outs.push(Tensor { shape, data });
        start += s;
    }
    Ok(outs)
}

/// `slice_by_index` with MIL's semantics: negative bounds count from the end, masked
/// bounds take the full range, squeezed axes (size 1) are removed.
#[allow(clippy::too_many_arguments)]
pub fn slice_by_index(
    x: &Tensor,
    begin: &[i64],
    end: &[i64],
    stride: &[i64],
    begin_mask: &[bool],
    end_mask: &[bool],
    squeeze: &[bool],
) -> KResult<Tensor> {
    let r = x.rank();
    if [
        begin.len(),
        end.len(),
        stride.len(),
        begin_mask.len(),
        end_mask.len(),
        squeeze.len(),
    ]
    .iter()
    .any(|&l| l != r)
    {
        return Err(format!("slice parameters do not match rank {r}"));
    }
    let mut ranges = Vec::with_capacity(r);
    for i in 0..r {
        let n = x.shape[i] as i64;
        if stride[i] <= 0 {
            return Err("only positive strides are supported".into());
        }
        let fix = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let b = if begin_mask[i] { 0 } else { fix(begin[i]) };
        let e = if end_mask[i] { n } else { fix(end[i]) };
        let idx: Vec<usize> = (b..e.max(b))
            .step_by(stride[i] as usize)
            .map(|v| v as usize)
            .collect();
        if squeeze[i] && idx.len() != 1 {
            return Err(format!("squeezed axis {i} has {} elements", idx.len()));
        }
        ranges.push(idx);
    }
    let xs = strides(&x.shape);
    let full: Vec<usize> = ranges.iter().map(|v| v.len()).collect();
    let n: usize = full.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let off: usize = (0..r).map(|d| ranges[d][idx[d]] * xs[d]).sum();
        data.push(x.data[off]);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < full[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let shape = (0..r).filter(|&i| !squeeze[i]).map(|i| full[i]).collect();
    Ok(Tensor { shape, data })
}

pub fn reduce_mean(x: &Tensor, axes: &[i64], keep_dims: bool) -> KResult<Tensor> {
    let r = x.rank();
    let mut red = vec![false; r];
    for &a in axes {
        red[axis(a, r)?] = true;
    }
    let kept: Vec<usize> = (0..r)
        .map(|i| if red[i] { 1 } else { x.shape[i] })
        .collect();
    let ks = strides(&kept);
    let count: usize = (0..r).filter(|&i| red[i]).map(|i| x.shape[i]).product();
    let mut sums = vec![0f32; kept.iter().product()];
    let mut idx = vec![0usize; r];
    for &v in &x.data {
        let off: usize = (0..r)
            .map(|d| if red[d] { 0 } else { idx[d] * ks[d] })
            .sum();
        sums[off] += v;
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < x.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let data = sums.into_iter().map(|s| s / count as f32).collect();
    let shape = if keep_dims {
        kept
    } else {
        (0..r).filter(|&i| !red[i]).map(|i| x.shape[i]).collect()
    };
    Ok(Tensor { shape, data })
}

pub fn softmax(x: &Tensor, ax: i64) -> KResult<Tensor> {
    let _p = profile::span("softmax");
    let a = axis(ax, x.rank())?;
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut out = x.data.clone();
    if out.is_empty() {
        return Ok(Tensor {
            shape: x.shape.clone(),
            data: out,
        });
    }
    // Each `[n, inner]` block on its own; within it the same operations in the same
    // order as ever (max, exp and running sum, division).
    par_items(&mut out, n * inner, n * inner * 8, |_, part| {
        for block in part.chunks_mut(n * inner) {
            if inner == 1 {
                let m = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for v in block.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                for v in block.iter_mut() {
                    *v /= s;
                }
                continue;
            }
            for i in 0..inner {
                let at = |k: usize| k * inner + i;
                let m = (0..n)
                    .map(|k| block[at(k)])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for k in 0..n {
                    let e = (block[at(k)] - m).exp();
                    block[at(k)] = e;
                    s += e;
                }
                for k in 0..n {
                    block[at(k)] /= s;
                }
            }
        }
    });
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

/// Normalises over the trailing axes `axes` (which must be the last ones).
pub fn layer_norm(
    x: &Tensor,
    axes: &[i64],
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> KResult<Tensor> {
    let _p = profile::span("layer_norm");
    let r = x.rank();
    let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<KResult<_>>()?;
    ax.sort_unstable();
    if ax.len() == 1 && ax[0] != r - 1 {
        return layer_norm_strided(x, ax[0], gamma, beta, eps);
    }
    if ax.is_empty() || ax.iter().enumerate().any(|(i, &a)| a != r - ax.len() + i) {
        return Err(format!(
            "axes {axes:?} are not the trailing axes of rank {r}"
        ));
    }
    let d: usize = x.shape[r - ax.len()..].iter().product();
    for p in [gamma, beta].into_iter().flatten() {
        if p.numel() != d {
            return Err(format!("gamma/beta {:?} for normalised size {d}", p.shape));
        }
    }
    let mut out = vec![0f32; x.numel()];
    if out.is_empty() {
        return Ok(Tensor {
            shape: x.shape.clone(),
            data: out,
        });
    }
    par_items(&mut out, d, d * 4, |first, part| {
        let rows = x.data[first * d..].chunks(d);
        for (row, o) in rows.zip(part.chunks_mut(d)) {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..d {
                let g = gamma.map_or(1.0, |g| g.data[i]);
                let b = beta.map_or(0.0, |b| b.data[i]);
                o[i] = (row[i] - mean) * inv * g + b;
            }
        }
    });
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

/// LayerNorm over one inner axis (the Neural Engine layout's channel axis of
/// `[B, C, 1, S]`): each position of the axes after it is normalised over `C` values
/// `inner` apart. Statistics in f64 over few channels cost nothing and match the
/// trailing-axis kernel's f32 results to rounding.
fn layer_norm_strided(
    x: &Tensor,
    a: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> KResult<Tensor> {
    let c = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let outer: usize = x.shape[..a].iter().product();
    for p in [gamma, beta].into_iter().flatten() {
        if p.numel() != c {
            return Err(format!("gamma/beta {:?} for normalised size {c}", p.shape));
        }
    }
    let mut out = vec![0f32; x.numel()];
    for o in 0..outer {
        let base = o * c * inner;
        for j in 0..inner {
            let at = |i: usize| base + i * inner + j;
            let mean = (0..c).map(|i| f64::from(x.data[at(i)])).sum::<f64>() / c as f64;
            let var = (0..c)
                .map(|i| (f64::from(x.data[at(i)]) - mean).powi(2))
                .sum::<f64>()
                / c as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for i in 0..c {
                let g = gamma.map_or(1.0, |g| g.data[i]);
                let b = beta.map_or(0.0, |b| b.data[i]);
                out[at(i)] = ((f64::from(x.data[at(i)]) - mean) * inv) as f32 * g + b;
            }
        }
    }
    Ok(Tensor {
        shape: x.shape.clone(),
        data: out,
    })
}

/// A matrix inside a slice: element `(i, j)` at `off + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    off: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with rows `ld` apart, from `off`.
    fn rows(data: &'a [f32], off: usize, ld: usize) -> Self {
        Mat {
            data,
            off,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of [`Mat::rows`]: element `(i, j)` is stored at row `j`, column `i`.
    fn cols(data: &'a [f32], off: usize, ld: usize) -> Self {
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
fn gemm(m: usize, k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, c: &mut [f32], ldc: usize) {
    gemm_on(threads(), m, k, n, a, b, c, ldc);
}

/// [`gemm`] on at most `t` threads: the longer of m and n is cut into one block per
/// thread.
#[allow(clippy::too_many_arguments)]
fn gemm_on(
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

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> KResult<Tensor> {
    let _p = profile::span("linear");
    if w.rank() != 2 || x.rank() == 0 || x.shape[x.rank() - 1] != w.shape[1] {
        return Err(format!("x {:?} with weight {:?}", x.shape, w.shape));
    }
    let (out, inp) = (w.shape[0], w.shape[1]);
    if let Some(b) = b {
        if b.shape != [out] {
            return Err(format!("bias {:?} for {out} outputs", b.shape));
        }
    }
    let rows = x.numel().checked_div(inp).unwrap_or(0);
    let mut data = vec![0f32; rows * out];
    // x [rows, inp] @ w^T [inp, out]: w read through its strides, no copy.
    gemm(
        rows,
        inp,
        out,
        Mat::rows(&x.data, 0, inp),
        Mat::cols(&w.data, 0, inp),
        &mut data,
        out,
    );
    if let (Some(b), true) = (b, out > 0) {
        for row in data.chunks_mut(out) {
            for (o, b) in row.iter_mut().zip(&b.data) {
                *o += b;
            }
        }
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank checked") = out;
    Ok(Tensor { shape, data })
}

/// Offset of each item of the broadcast batch `batch` in an operand whose batch axes
/// are `s`, its items `mat` elements apart.
fn batch_offsets(batch: &[usize], s: &[usize], mat: usize) -> Vec<usize> {
    let st = broadcast_strides(s, batch.len());
    let n: usize = batch.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; batch.len()];
    let mut off = [0usize];
    for _ in 0..n {
        out.push(off[0] * mat);
        step(&mut idx, batch, [&st], &mut off);
    }
    out
}

pub fn matmul(x: &Tensor, y: &Tensor, tx: bool, ty: bool) -> KResult<Tensor> {
    let _p = profile::span("matmul");
    if x.rank() < 2 || y.rank() < 2 {
        return Err("matmul operands need rank 2 or more".into());
    }
    let (xr, yr) = (x.rank(), y.rank());
    let (xa, xb) = (x.shape[xr - 2], x.shape[xr - 1]);
    let (ya, yb) = (y.shape[yr - 2], y.shape[yr - 1]);
    // Transposes are strides: element (i, j) of a transposed operand is stored at (j, i).
    let ((m, k), xm) = if tx {
        ((xb, xa), Mat::cols(&x.data, 0, xb))
    } else {
        ((xa, xb), Mat::rows(&x.data, 0, xb))
    };
    let ((k2, n), ym) = if ty {
        ((yb, ya), Mat::cols(&y.data, 0, yb))
    } else {
        ((ya, yb), Mat::rows(&y.data, 0, yb))
    };
    let logical = |s: &[usize], t: bool| {
        let mut s = s.to_vec();
        if t {
            let r = s.len();
            s.swap(r - 2, r - 1);
        }
        s
    };
    if k != k2 {
        return Err(format!(
            "{:?} @ {:?}",
            logical(&x.shape, tx),
            logical(&y.shape, ty)
        ));
    }
    let batch = broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2]).ok_or_else(|| {
        format!(
            "batch axes of {:?} and {:?} do not broadcast",
            x.shape, y.shape
        )
    })?;
    let nb: usize = batch.iter().product();
    let xo = batch_offsets(&batch, &x.shape[..xr - 2], m * k);
    let yo = batch_offsets(&batch, &y.shape[..yr - 2], k * n);
    let mut data = vec![0f32; nb * m * n];
    if m * n > 0 {
        if nb >= threads() {
            // Attention's per-head products: whole heads per core.
            par_items(&mut data, m * n, m * n * k, |first, part| {
                for (i, om) in part.chunks_mut(m * n).enumerate() {
                    let a = Mat {
                        off: xo[first + i],
                        ..xm
                    };
                    let b = Mat {
                        off: yo[first + i],
                        ..ym
                    };
                    gemm_on(1, m, k, n, a, b, om, n);
                }
            });
        } else {
            for (bi, om) in data.chunks_mut(m * n).enumerate() {
                let a = Mat { off: xo[bi], ..xm };
                let b = Mat { off: yo[bi], ..ym };
                gemm(m, k, n, a, b, om, n);
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Tensor { shape, data })
}

/// 2-D convolution, NCHW, with explicit padding `[top, bottom, left, right]`: per
/// example and group, the input patches laid out as columns (im2col), then one GEMM.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> KResult<Tensor> {
    let _p = profile::span("conv");
    if x.rank() != 4 || w.rank() != 4 {
        return Err("conv needs rank-4 input and weight".into());
    }
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, ci, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    if groups == 0
        || ci * groups != c
        || o % groups != 0
        || strides.contains(&0)
        || dil.contains(&0)
        || kh == 0
        || kw == 0
    {
        return Err(format!(
            "input {:?}, weight {:?}, groups {groups}",
            x.shape, w.shape
        ));
    }
    if let Some(b) = b {
        if b.numel() != o {
            return Err(format!("bias {:?} for {o} output channels", b.shape));
        }
    }
    let eh = h + pad[0] + pad[1];
    let ew = wd + pad[2] + pad[3];
    let (kh_e, kw_e) = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1);
    if eh < kh_e || ew < kw_e {
        return Err("kernel larger than the padded input".into());
    }
    let oh = (eh - kh_e) / strides[0] + 1;
    let ow = (ew - kw_e) / strides[1] + 1;
    let opg = o / groups;
    let (kk, np) = (ci * kh * kw, oh * ow);
    // A 1x1 kernel with stride 1 and no padding reads the input as it is.
    let direct = kh == 1 && kw == 1 && strides == [1, 1] && pad == [0; 4];
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0f32; kk * np]
    };
    let mut data = vec![0f32; n * o * np];
    for bn in 0..n {
        for g in 0..groups {
            let plane0 = (bn * c + g * ci) * h * wd;
            let src = if direct {
                Mat::rows(&x.data, plane0, np)
            } else {
                im2col(
                    &x.data[plane0..plane0 + ci * h * wd],
                    [h, wd, kh, kw, oh, ow],
                    strides,
                    pad,
                    dil,
                    &mut cols,
                );
                Mat::rows(&cols, 0, np)
            };
            let out0 = (bn * o + g * opg) * np;
            gemm(
                opg,
                kk,
                np,
                Mat::rows(&w.data, g * opg * kk, kk),
                src,
                &mut data[out0..out0 + opg * np],
                np,
            );
        }
    }
    if let Some(b) = b {
        for (i, plane) in data.chunks_mut(np.max(1)).enumerate() {
            let v = b.data[i % o];
            for p in plane {
                *p += v;
            }
        }
    }
    Ok(Tensor {
        shape: vec![n, o, oh, ow],
        data,
    })
}

/// Patches of `x` (`[C, h, w]`) as columns: `cols[(c, ky, kx), (y, x)]` is the input
/// under kernel tap `(ky, kx)` of output position `(y, x)`, 0 in the padding.
fn im2col(
    x: &[f32],
    [h, wd, kh, kw, oh, ow]: [usize; 6],
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    cols: &mut [f32],
) {
    let np = oh * ow;
    par_items(cols, np, np, |first, part| {
        for (r, row) in part.chunks_mut(np).enumerate() {
            let r = first + r;
            let (ic, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let plane = &x[ic * h * wd..(ic + 1) * h * wd];
            for (y, orow) in row.chunks_mut(ow).enumerate() {
                let iy = (y * strides[0] + ky * dil[0]).wrapping_sub(pad[0]);
                if iy >= h {
                    orow.fill(0.0);
                    continue;
                }
                let line = &plane[iy * wd..(iy + 1) * wd];
                for (xo, v) in orow.iter_mut().enumerate() {
                    let ix = (xo * strides[1] + kx * dil[1]).wrapping_sub(pad[2]);
                    *v = if ix < wd { line[ix] } else { 0.0 };
                }
            }
        }
    });
}

/// `softmax(q @ k^T / sqrt(E) + mask) @ v` over the last two axes.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> KResult<Tensor> {
    let _p = profile::span("sdpa");
    let e = *q.shape.last().ok_or("rank-0 query")?;
    let scores = matmul(q, k, false, true)?;
    let scaled = map(&scores, |s| s / (e as f32).sqrt());
    let masked = match mask {
        Some(m) => binary(&scaled, m, |a, b| a + b)?,
        None => scaled,
    };
    let p = softmax(&masked, -1)?;
    matmul(&p, v, false, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about -1..1.
    fn t(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let data = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape, b.shape);
        for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    /// The element at a multi-index of the output, by index arithmetic alone.
    fn at(x: &Tensor, idx: &[usize]) -> f32 {
        let s = strides(&x.shape);
        x.data[idx.iter().zip(&s).map(|(i, s)| i * s).sum::<usize>()]
    }

    fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
        let mut out = vec![vec![]];
        for &n in shape {
            out = out
                .into_iter()
                .flat_map(|p| {
                    (0..n).map(move |i| {
                        let mut q = p.clone();
                        q.push(i);
                        q
                    })
                })
                .collect();
        }
        out
    }

    fn naive_conv(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        s: [usize; 2],
        pad: [usize; 4],
        dil: [usize; 2],
        groups: usize,
    ) -> Tensor {
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (o, ci, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        let oh = (h + pad[0] + pad[1] - dil[0] * (kh - 1) - 1) / s[0] + 1;
        let ow = (wd + pad[2] + pad[3] - dil[1] * (kw - 1) - 1) / s[1] + 1;
        let opg = o / groups;
        let mut data = vec![0f32; n * o * oh * ow];
        for bn in 0..n {
            for oc in 0..o {
                let g = oc / opg;
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut acc = 0f32;
                        for icg in 0..ci {
                            let ic = g * ci + icg;
                            for ky in 0..kh {
                                let iy = (y * s[0] + ky * dil[0]) as isize - pad[0] as isize;
                                for kx in 0..kw {
                                    let ix = (xo * s[1] + kx * dil[1]) as isize - pad[2] as isize;
                                    if iy < 0 || iy >= h as isize || ix < 0 || ix >= wd as isize {
                                        continue;
                                    }
                                    acc += x.data
                                        [((bn * c + ic) * h + iy as usize) * wd + ix as usize]
                                        * w.data[((oc * ci + icg) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        data[((bn * o + oc) * oh + y) * ow + xo] =
                            acc + b.map_or(0.0, |b| b.data[oc]);
                    }
                }
            }
        }
        Tensor::new(vec![n, o, oh, ow], data).unwrap()
    }

    #[test]
    fn conv_matches_the_direct_loop() {
        // Patch embedding (stride = kernel), padding with dilation, groups, 1x1.
        // (input, weight, strides, pad, dilations, groups)
        type Case = (
            [usize; 4],
            [usize; 4],
            [usize; 2],
            [usize; 4],
            [usize; 2],
            usize,
        );
        let cases: &[Case] = &[
            ([1, 3, 32, 32], [8, 3, 16, 16], [16, 16], [0; 4], [1, 1], 1),
            ([2, 4, 9, 7], [6, 2, 3, 2], [2, 1], [1, 2, 0, 1], [2, 1], 2),
            ([1, 6, 5, 5], [6, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 6),
            ([2, 5, 4, 6], [7, 5, 1, 1], [1, 1], [0; 4], [1, 1], 1),
            (
                [1, 32, 12, 12],
                [48, 32, 3, 3],
                [1, 1],
                [1, 1, 1, 1],
                [1, 1],
                1,
            ),
        ];
        for (i, &(xs, ws, s, pad, dil, g)) in cases.iter().enumerate() {
            let (x, w, b) = (t(&xs, i as u32), t(&ws, 100 + i as u32), t(&[ws[0]], 7));
            for b in [None, Some(&b)] {
                let got = conv2d(&x, &w, b, s, pad, dil, g).unwrap();
                close(&got, &naive_conv(&x, &w, b, s, pad, dil, g));
            }
        }
    }

    #[test]
    fn matmul_and_linear_match_the_definition() {
        // (x shape, y shape, tx, ty): broadcast batches, transposes, sizes over the
        // threading threshold.
        let cases: &[(&[usize], &[usize], bool, bool)] = &[
            (&[3, 4], &[4, 5], false, false),
            (&[2, 1, 3, 4], &[3, 5, 4], false, true),
            (&[4, 3], &[2, 5, 4], true, true),
            (&[1, 12, 33, 16], &[1, 12, 33, 16], false, true),
            (&[150, 64], &[64, 120], false, false),
            (&[64, 150], &[120, 64], true, true),
            (&[3, 0], &[0, 2], false, false),
        ];
        for (i, &(xs, ys, tx, ty)) in cases.iter().enumerate() {
            let (x, y) = (t(xs, i as u32), t(ys, 50 + i as u32));
            let got = matmul(&x, &y, tx, ty).unwrap();
            let k = if tx {
                xs[xs.len() - 2]
            } else {
                xs[xs.len() - 1]
            };
            for idx in indices(&got.shape) {
                let r = idx.len();
                let (i, j) = (idx[r - 2], idx[r - 1]);
                let pick = |s: &[usize], a: usize, b: usize| -> Vec<usize> {
                    let mut v: Vec<usize> = idx[r - 2 - (s.len() - 2)..r - 2]
                        .iter()
                        .zip(s)
                        .map(|(i, n)| if *n == 1 { 0 } else { *i })
                        .collect();
                    v.extend([a, b]);
                    v
                };
                let mut want = 0f32;
                for kk in 0..k {
                    let xi = if tx { pick(xs, kk, i) } else { pick(xs, i, kk) };
                    let yi = if ty { pick(ys, j, kk) } else { pick(ys, kk, j) };
                    want += at(&x, &xi) * at(&y, &yi);
                }
                let g = at(&got, &idx);
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "case {i}: {g} vs {want}"
                );
            }
        }
        assert!(matmul(&t(&[2, 3], 0), &t(&[2, 3], 1), false, false).is_err());

        let (x, w, b) = (t(&[1, 197, 64], 1), t(&[300, 64], 2), t(&[300], 3));
        let got = linear(&x, &w, Some(&b)).unwrap();
        for r in 0..197 {
            for o in 0..300 {
                let want: f32 = (0..64)
                    .map(|i| x.data[r * 64 + i] * w.data[o * 64 + i])
                    .sum::<f32>()
                    + b.data[o];
                let g = got.data[r * 300 + o];
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn transpose_and_broadcasting_move_the_right_elements() {
        for (shape, perm) in [
            (vec![1, 197, 12, 64], vec![0, 2, 1, 3]),
            (vec![2, 3, 4, 5], vec![3, 1, 0, 2]),
            (vec![1, 7, 300], vec![0, 2, 1]),
            (vec![4, 1, 3], vec![2, 1, 0]),
            (vec![5], vec![0]),
        ] {
            let x = t(&shape, 9);
            let got = transpose(&x, &perm).unwrap();
            for idx in indices(&got.shape) {
                let mut src = vec![0; idx.len()];
                for (d, &p) in perm.iter().enumerate() {
                    src[p] = idx[d];
                }
                assert_eq!(at(&got, &idx), at(&x, &src));
            }
        }
        for (xs, ys) in [
            (vec![2, 3, 400], vec![400]),
            (vec![1, 12, 197, 197], vec![1]),
            (vec![3, 1, 5], vec![4, 1]),
            (vec![1], vec![2, 300, 3]),
            (vec![2, 3], vec![2, 3]),
        ] {
            let (x, y) = (t(&xs, 4), t(&ys, 5));
            let got = binary(&x, &y, |a, b| a - 2.0 * b).unwrap();
            let r = got.rank();
            for idx in indices(&got.shape) {
                let sub = |s: &[usize]| -> Vec<usize> {
                    idx[r - s.len()..]
                        .iter()
                        .zip(s)
                        .map(|(i, n)| if *n == 1 { 0 } else { *i })
                        .collect()
                };
                let want = at(&x, &sub(&xs)) - 2.0 * at(&y, &sub(&ys));
                assert_eq!(at(&got, &idx), want);
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_rows() {
        let x = t(&[2, 12, 50, 197], 3);
        let s = softmax(&x, -1).unwrap();
        for row in s.data.chunks(197) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Over a middle axis: same as moving the axis last.
        let s1 = softmax(&x, 2).unwrap();
        let moved = softmax(&transpose(&x, &[0, 1, 3, 2]).unwrap(), -1).unwrap();
        close(&s1, &transpose(&moved, &[0, 1, 3, 2]).unwrap());

        let x = t(&[1, 300, 768], 4);
        let (g, b) = (t(&[768], 5), t(&[768], 6));
        let y = layer_norm(&x, &[-1], Some(&g), Some(&b), 1e-6).unwrap();
        for (row, out) in x.data.chunks(768).zip(y.data.chunks(768)) {
            let mean = row.iter().sum::<f32>() / 768.0;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 768.0;
            for i in 0..768 {
                let want = (row[i] - mean) / (var + 1e-6).sqrt() * g.data[i] + b.data[i];
                assert!((out[i] - want).abs() < 1e-4);
            }
        }
        let m = map(&x, gelu_exact);
        assert!(m
            .data
            .iter()
            .zip(&x.data)
            .all(|(a, b)| *a == gelu_exact(*b)));
    }
}

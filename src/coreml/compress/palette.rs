//! Palettes (look-up tables) by one-dimensional k-means.
//!
//! The values are sorted once and reduced to distinct values with counts; prefix sums of
//! counts, values and squares then give any run's size, mean and squared error in O(1),
//! since optimal 1-D clusters are runs of the sorted values.
//! - Up to [`EXACT_MAX`] distinct values: the optimal clustering, by dynamic programming
//!   over the runs (divide and conquer on the monotone split points, O(k m log m)).
//! - Beyond: the same dynamic programming with cluster boundaries restricted to about
//!   [`EXACT_MAX`] candidate points (half at equal value spacing, which resolves the
//!   dense middle of a weight distribution, half at equal counts, which keeps outliers
//!   from coarsening it), then Lloyd's iterations on every value from that near-optimal
//!   start. An iteration finds each cluster's run by binary search for the midpoints
//!   between centroids and its new mean from the prefix sums, so it costs O(k log m)
//!   however large the tensor. At most [`MAX_ITERS`] iterations, stopping as soon as no
//!   run boundary moves. (Lloyd from quantiles alone stalls far from the optimum: 1.2-1.5x
//!   the RMS error of coremltools' k-means on ViT weights.)
//!
//! Ties go one fixed way everywhere (a value on a midpoint joins the lower cluster, the
//! smallest split point wins), sorting uses `total_cmp`, and nothing depends on threads,
//! so a tensor always gets the same palette and indices.

use crate::coreml::mil::DType;

use super::linear::store;

/// Largest number of distinct values clustered exactly.
pub const EXACT_MAX: usize = 4096;
/// Cap on Lloyd's iterations.
pub const MAX_ITERS: usize = 300;
/// Tensors with more values than this are grouped by their fp16 rounding instead of
/// sorted (see [`Runs::grouped`]).
pub const GROUP_ABOVE: usize = 1 << 16;

/// A palette and the index of every value's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    /// `2^nbits` entries, ascending, as stored (rounded to the storage type).
    pub lut: Vec<f32>,
    pub indices: Vec<u8>,
}

/// Sorted distinct values with prefix sums (shifted by the mean, for precision).
struct Runs {
    xs: Vec<f64>,
    /// `cnt[j]`: how many values are below `xs[j]` (length m + 1).
    cnt: Vec<u64>,
    sum: Vec<f64>,
    sq: Vec<f64>,
    shift: f64,
}

impl Runs {
    fn new(values: &[f32]) -> Runs {
        let mut v = values.to_vec();
        v.sort_unstable_by(f32::total_cmp);
        let shift = if v.is_empty() {
            0.0
        } else {
            v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
        };
        let mut xs: Vec<f64> = Vec::new();
        let mut counts: Vec<u64> = Vec::new();
        for &x in &v {
            // -0.0 and 0.0 are one value (the first one seen, -0.0, is kept).
            if xs.last().is_some_and(|&l| l == f64::from(x)) {
                *counts.last_mut().expect("non-empty") += 1;
            } else {
                xs.push(f64::from(x));
                counts.push(1);
            }
        }
        let groups = xs.iter().zip(&counts).map(|(&x, &n)| {
            let d = x - shift;
            (x, n, d * n as f64, d * d * n as f64)
        });
        Runs::from_groups(shift, groups)
    }

    /// Prefix sums over ordered groups `(representative value, count, sum, sum of
    /// squares)`, sums taken relative to `shift`.
    fn from_groups(shift: f64, groups: impl Iterator<Item = (f64, u64, f64, f64)>) -> Runs {
        let (mut xs, mut cnt, mut sum, mut sq) = (Vec::new(), vec![0u64], vec![0f64], vec![0f64]);
        let (mut c, mut a, mut q) = (0u64, 0f64, 0f64);
        for (x, n, s1, s2) in groups {
            xs.push(x);
            c += n;
            a += s1;
            q += s2;
            cnt.push(c);
            sum.push(a);
            sq.push(q);
        }
        Runs {
            xs,
            cnt,
            sum,
            sq,
            shift,
        }
    }

    /// For large tensors: the values grouped by their fp16 rounding, one O(n) pass
    /// instead of a sort. Rounding is monotone, so clusters of the sorted values that
    /// never split a group are runs of groups; each group keeps its exact count, sum and
    /// sum of squares, so run costs and means stay exact. Only boundaries inside a group
    /// (values one fp16 step apart, below the palette's own fp16 precision) are lost.
    fn grouped(values: &[f32]) -> Runs {
        // fp16 bits -> an index that sorts like the values (negatives reversed).
        let key = |x: f32| -> usize {
            let b = half::f16::from_f32(x).to_bits();
            if b & 0x8000 != 0 {
                0x7FFF - (b & 0x7FFF) as usize
            } else {
                0x8000 + b as usize
            }
        };
        let shift = values.iter().map(|&x| f64::from(x)).sum::<f64>() / values.len() as f64;
        let mut n = vec![0u64; 1 << 16];
        let mut s1 = vec![0f64; 1 << 16];
        let mut s2 = vec![0f64; 1 << 16];
        for &x in values {
            let i = key(x);
            let d = f64::from(x) - shift;
            n[i] += 1;
            s1[i] += d;
            s2[i] += d * d;
        }
        // The group's mean stands for it where a single value is needed (candidate
        // spacing, Lloyd's midpoints); means of disjoint ordered groups are ordered.
        let groups = (0..n.len())
            .filter(|&i| n[i] > 0)
            .map(|i| (s1[i] / n[i] as f64 + shift, n[i], s1[i], s2[i]));
        Runs::from_groups(shift, groups)
    }

    fn m(&self) -> usize {
        self.xs.len()
    }

    /// Squared error of the run of distinct values `i..j` around its mean.
    fn cost(&self, i: usize, j: usize) -> f64 {
        let n = (self.cnt[j] - self.cnt[i]) as f64;
        if n == 0.0 {
            return 0.0;
        }
        let s = self.sum[j] - self.sum[i];
        (self.sq[j] - self.sq[i] - s * s / n).max(0.0)
    }

    fn mean(&self, i: usize, j: usize) -> Option<f64> {
        let n = self.cnt[j] - self.cnt[i];
        (n > 0).then(|| (self.sum[j] - self.sum[i]) / n as f64 + self.shift)
    }
}

/// `k` centroids (ascending; repeated when there are fewer than `k` distinct values) of
/// the 1-D k-means of `values`.
pub fn kmeans_1d(values: &[f32], k: usize) -> Vec<f32> {
    kmeans_1d_with(values, k, EXACT_MAX)
}

/// [`kmeans_1d`] with the exact method used up to `exact_max` distinct values.
pub fn kmeans_1d_with(values: &[f32], k: usize, exact_max: usize) -> Vec<f32> {
    assert!(k > 0, "k-means with no clusters");
    if values.is_empty() {
        return vec![0.0; k];
    }
    let runs = if values.len() > GROUP_ABOVE {
        Runs::grouped(values)
    } else {
        Runs::new(values)
    };
    let m = runs.m();
    let mut c: Vec<f64> = if m <= k {
        runs.xs.clone()
    } else if m <= exact_max {
        let all: Vec<usize> = (0..=m).collect();
        exact(&runs, k, &all)
    } else {
        let start = exact(&runs, k, &candidates(&runs, EXACT_MAX.max(4 * k)));
        lloyd(&runs, start)
    };
    while c.len() < k {
        c.push(*c.last().expect("non-empty"));
    }
    c.into_iter().map(|x| x as f32).collect()
}

/// About `n` candidate cluster boundaries (positions in the distinct values, 0 and m
/// included, ascending, unique): half at equal value spacing, half at equal counts.
fn candidates(r: &Runs, n: usize) -> Vec<usize> {
    let m = r.m();
    let (lo, hi) = (r.xs[0], r.xs[m - 1]);
    let total = r.cnt[m] as f64;
    let half = (n / 2).max(1);
    let mut pts = vec![0, m];
    for t in 1..half {
        let v = lo + (hi - lo) * t as f64 / half as f64;
        pts.push(r.xs.partition_point(|&x| x < v));
        let c = total * t as f64 / half as f64;
        pts.push(r.cnt[1..].partition_point(|&x| (x as f64) < c));
    }
    pts.sort_unstable();
    pts.dedup();
    pts
}

/// Optimal clustering into `k` clusters whose boundaries are among `pts` (ascending
/// positions in the distinct values, from 0 to m, more than `k` segments); returns the
/// means.
fn exact(r: &Runs, k: usize, pts: &[usize]) -> Vec<f64> {
    let segs = pts.len() - 1;
    let k = k.min(segs);
    // prev[j]: best cost of the first j segments in l clusters; split[l][j]: start of the
    // last cluster.
    let mut prev: Vec<f64> = (0..=segs).map(|j| r.cost(0, pts[j])).collect();
    let mut split: Vec<Vec<u32>> = vec![vec![0; segs + 1]];
    for l in 2..=k {
        let mut cur = vec![f64::INFINITY; segs + 1];
        let mut arg = vec![0u32; segs + 1];
        // Only j >= l matters (each cluster non-empty).
        solve(r, pts, &prev, &mut cur, &mut arg, l, segs, l - 1, segs - 1);
        prev = cur;
        split.push(arg);
    }
    let mut bounds = vec![segs];
    let mut j = segs;
    for l in (1..k).rev() {
        j = split[l][j] as usize;
        bounds.push(j);
    }
    bounds.push(0);
    bounds.reverse();
    bounds
        .windows(2)
        .map(|w| {
            r.mean(pts[w[0]], pts[w[1]])
                .expect("clusters are non-empty")
        })
        .collect()
}

/// Fills `cur[j]` for `j` in `jlo..=jhi` with `min_i prev[i] + cost(i, j)` over `i` in
/// `olo..=min(ohi, j - 1)`, the split points being monotone in `j`.
#[allow(clippy::too_many_arguments)]
fn solve(
    r: &Runs,
    pts: &[usize],
    prev: &[f64],
    cur: &mut [f64],
    arg: &mut [u32],
    jlo: usize,
    jhi: usize,
    olo: usize,
    ohi: usize,
) {
    if jlo > jhi {
        return;
    }
    let j = (jlo + jhi) / 2;
    let mut best = (f64::INFINITY, olo);
    for (i, &p) in prev.iter().enumerate().take(ohi.min(j - 1) + 1).skip(olo) {
        let v = p + r.cost(pts[i], pts[j]);
        if v < best.0 {
            best = (v, i);
        }
    }
    cur[j] = best.0;
    arg[j] = best.1 as u32;
    if j > jlo {
        solve(r, pts, prev, cur, arg, jlo, j - 1, olo, best.1);
    }
    solve(r, pts, prev, cur, arg, j + 1, jhi, best.1, ohi);
}

/// Lloyd's iterations from the centroids `c` (ascending); returns them, ascending.
fn lloyd(r: &Runs, mut c: Vec<f64>) -> Vec<f64> {
    let m = r.m();
    let k = c.len();
    let mut bounds = vec![usize::MAX; k + 1];
    for _ in 0..MAX_ITERS {
        let mut nb = Vec::with_capacity(k + 1);
        nb.push(0);
        for i in 1..k {
            let mid = (c[i - 1] + c[i]) / 2.0;
            nb.push(r.xs.partition_point(|&x| x <= mid));
        }
        nb.push(m);
        if nb == bounds {
            break;
        }
        for i in 0..k {
            if let Some(mean) = r.mean(nb[i], nb[i + 1]) {
                c[i] = mean;
            }
        }
        c.sort_unstable_by(f64::total_cmp);
        bounds = nb;
    }
    c
}

/// The palette of `2^nbits` entries for `values`, stored as `lut_dtype` (fp16 or fp32),
/// and each value's index: the nearest stored entry (the lower one on a tie).
pub fn palettize(values: &[f32], nbits: u32, lut_dtype: DType) -> Palette {
    let k = 1usize << nbits;
    let lut: Vec<f32> = kmeans_1d(values, k)
        .into_iter()
        .map(|x| store(x, lut_dtype))
        .collect();
    Palette {
        indices: assign(values, &lut),
        lut,
    }
}

/// Index of the nearest entry of the ascending `lut` for each value.
pub fn assign(values: &[f32], lut: &[f32]) -> Vec<u8> {
    let mids: Vec<f64> = lut
        .windows(2)
        .map(|w| (f64::from(w[0]) + f64::from(w[1])) / 2.0)
        .collect();
    values
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            mids.partition_point(|&mid| v > mid) as u8
        })
        .collect()
}

/// Sum of squared distances of each value to its nearest centroid.
pub fn sse(values: &[f32], centroids: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| {
            centroids
                .iter()
                .map(|&c| (f64::from(v) - f64::from(c)).powi(2))
                .fold(f64::INFINITY, f64::min)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Rounded so that repeats occur.
                ((x % 2000) as f32 - 1000.0) / 64.0
            })
            .collect()
    }

    /// The best SSE over every assignment of values to k clusters.
    fn brute_force(values: &[f32], k: usize) -> f64 {
        let n = values.len();
        let mut best = f64::INFINITY;
        let total = k.pow(n as u32);
        for code in 0..total {
            let mut c = code;
            let (mut s, mut q, mut cnt) = (vec![0f64; k], vec![0f64; k], vec![0f64; k]);
            for &v in values {
                let g = c % k;
                c /= k;
                s[g] += f64::from(v);
                q[g] += f64::from(v) * f64::from(v);
                cnt[g] += 1.0;
            }
            let e: f64 = (0..k)
                .map(|g| {
                    if cnt[g] > 0.0 {
                        q[g] - s[g] * s[g] / cnt[g]
                    } else {
                        0.0
                    }
                })
                .sum();
            best = best.min(e);
        }
        best
    }

    #[test]
    fn exact_matches_brute_force() {
        for seed in 0..40u32 {
            let n = 3 + (seed as usize % 6);
            let v = data(n, seed);
            for k in 1..=3usize.min(n) {
                let c = kmeans_1d(&v, k);
                assert_eq!(c.len(), k);
                assert!(c.windows(2).all(|w| w[0] <= w[1]));
                let got = sse(&v, &c);
                let want = brute_force(&v, k);
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want),
                    "seed {seed} k {k}: {got} vs optimum {want} ({v:?})"
                );
            }
        }
    }

    #[test]
    fn approximate_path_finds_separated_clusters_and_nearly_the_optimum() {
        // Four well separated groups: the restricted DP + Lloyd reaches the optimum, which
        // the exact method confirms.
        let mut v = Vec::new();
        for (g, centre) in [-3.0f32, -1.0, 0.5, 4.0].iter().enumerate() {
            for i in 0..50 {
                v.push(centre + (i as f32 - 25.0) * 0.001 * (g + 1) as f32);
            }
        }
        let lloyd = kmeans_1d_with(&v, 4, 0);
        let exact = kmeans_1d_with(&v, 4, usize::MAX);
        assert!((sse(&v, &lloyd) - sse(&v, &exact)).abs() < 1e-9);
        // Random data: within 0.5% of the optimum.
        let v = data(3000, 7);
        for k in [4usize, 16, 64] {
            let lloyd = kmeans_1d_with(&v, k, 0);
            let exact = kmeans_1d_with(&v, k, usize::MAX);
            let (l, e) = (sse(&v, &lloyd), sse(&v, &exact));
            assert!(e <= l * (1.0 + 1e-12), "exact {e} worse than Lloyd {l}");
            assert!(l <= e * 1.005, "k {k}: approximate {l} vs optimum {e}");
        }
    }

    #[test]
    fn few_distinct_values_are_exact() {
        let v = [0.5f32, -1.0, 0.5, 2.0, -1.0];
        let p = palettize(&v, 2, DType::F32);
        assert_eq!(p.lut, vec![-1.0, 0.5, 2.0, 2.0]);
        assert_eq!(p.indices, vec![1, 0, 1, 2, 0]);
        let p = palettize(&[3.0; 10], 8, DType::F16);
        assert_eq!(p.lut.len(), 256);
        assert!(p.indices.iter().all(|&i| i == 0));
    }

    #[test]
    fn deterministic() {
        let v = data(20_000, 3);
        for k in [4usize, 64, 256] {
            let a = kmeans_1d(&v, k);
            let b = kmeans_1d(&v, k);
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // The same values in another order: the same palette.
        let mut r = v.clone();
        r.reverse();
        assert_eq!(
            palettize(&v, 4, DType::F16).lut,
            palettize(&r, 4, DType::F16).lut
        );
    }

    #[test]
    fn indices_are_nearest_entries() {
        let v = data(5000, 11);
        let p = palettize(&v, 4, DType::F16);
        for (&x, &i) in v.iter().zip(&p.indices) {
            let d = (x - p.lut[i as usize]).abs();
            assert!(p.lut.iter().all(|&c| (x - c).abs() >= d));
        }
    }

    #[test]
    fn grouped_large_tensors_cluster_as_well_as_sorted_ones() {
        // 2^17 weight-like values: grouped by fp16 rounding (the large-tensor path) against
        // the sorted distinct values, both through the restricted DP + Lloyd.
        let v: Vec<f32> = data(1 << 17, 11).iter().map(|x| x * 0.02).collect();
        for k in [16usize, 64] {
            let grouped = Runs::grouped(&v);
            let sorted = Runs::new(&v);
            let g = lloyd(
                &grouped,
                exact(&grouped, k, &candidates(&grouped, EXACT_MAX)),
            );
            let s = lloyd(&sorted, exact(&sorted, k, &candidates(&sorted, EXACT_MAX)));
            let f = |c: Vec<f64>| c.into_iter().map(|x| x as f32).collect::<Vec<_>>();
            let (eg, es) = (sse(&v, &f(g)), sse(&v, &f(s)));
            assert!(eg <= es * 1.002, "k {k}: grouped {eg} vs sorted {es}");
        }
        assert_eq!(kmeans_1d(&v, 64), kmeans_1d(&v, 64));
    }
}

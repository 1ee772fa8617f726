//! Resizing the patch rows of a position embedding to another grid, matching PyTorch's
//! `F.interpolate(mode="bicubic", align_corners=False)` with `antialias` off (DINOv2,
//! transformers ViT) and on (DINOv2 with registers, timm). Plain Rust on the host: it runs
//! once per input size.

use crate::config::PosInterpolation;

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Weights of a 1-D resampling from `n_in` to `n_out` samples: for each output, the
/// (input index, weight) taps.
fn taps(n_in: usize, n_out: usize, mode: PosInterpolation) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| match mode {
            PosInterpolation::Bicubic => {
                // Source position of the output centre; four taps, clamped at the edges.
                let src = (o as f64 + 0.5) * scale - 0.5;
                let base = src.floor();
                let t = src - base;
                (-1..=2)
                    .map(|k| {
                        let idx = (base as i64 + k).clamp(0, n_in as i64 - 1) as usize;
                        (idx, cubic(t - k as f64, -0.75))
                    })
                    .collect()
            }
            PosInterpolation::BicubicAntialias => {
                // PIL-style: the kernel is stretched by the scale when shrinking, taps
                // outside the input are dropped and the rest renormalised.
                let support_scale = scale.max(1.0);
                let support = 2.0 * support_scale;
                let centre = (o as f64 + 0.5) * scale;
                let lo = ((centre - support + 0.5).floor() as i64).max(0);
                let hi = ((centre + support + 0.5).floor() as i64).min(n_in as i64);
                let mut w: Vec<(usize, f64)> = (lo..hi)
                    .map(|i| {
                        let x = (i as f64 - centre + 0.5) / support_scale;
                        (i as usize, cubic(x, -0.5))
                    })
                    .collect();
                let total: f64 = w.iter().map(|(_, v)| v).sum();
                if total != 0.0 {
                    for (_, v) in &mut w {
                        *v /= total;
                    }
                }
                w
            }
        })
        .collect()
}

/// The 1-D resampling as a dense `[n_out, n_in]` row-major matrix (for applying it as a
/// matmul, e.g. inside MLX where gradients must flow through it).
pub fn resize_matrix(n_in: usize, n_out: usize, mode: PosInterpolation) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for (o, t) in taps(n_in, n_out, mode).into_iter().enumerate() {
        for (i, w) in t {
            m[o * n_in + i] += w as f32;
        }
    }
    m
}

/// Resizes a `[gh * gw, d]` grid (row-major) to `[oh * ow, d]`, separably (height, then
/// width), in float64 for accuracy.
pub fn resize_grid(
    grid: &[f32],
    (gh, gw): (usize, usize),
    (oh, ow): (usize, usize),
    d: usize,
    mode: PosInterpolation,
) -> Vec<f32> {
    assert_eq!(grid.len(), gh * gw * d, "grid size");
    if (gh, gw) == (oh, ow) {
        return grid.to_vec();
    }
    let th = taps(gh, oh, mode);
    let tw = taps(gw, ow, mode);
    // Along height: [oh, gw, d].
    let mut mid = vec![0f64; oh * gw * d];
    for (o, t) in th.iter().enumerate() {
        for &(i, w) in t {
            for x in 0..gw {
                let src = &grid[(i * gw + x) * d..(i * gw + x + 1) * d];
                let dst = &mut mid[(o * gw + x) * d..(o * gw + x + 1) * d];
                for (a, b) in dst.iter_mut().zip(src) {
                    *a += w * f64::from(*b);
                }
            }
        }
    }
    let mut out = vec![0f64; oh * ow * d];
    for y in 0..oh {
        for (o, t) in tw.iter().enumerate() {
            let dst_off = (y * ow + o) * d;
            for &(i, w) in t {
                let src_off = (y * gw + i) * d;
                for c in 0..d {
                    out[dst_off + c] += w * mid[src_off + c];
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The position embedding for an input of `h x w` pixels: prefix rows kept, patch grid
/// resized. `pos` is `[prefix + g*g, d]` at the native grid `g`.
pub fn for_input(
    pos: &[f32],
    prefix: usize,
    native_grid: usize,
    (gh, gw): (usize, usize),
    d: usize,
    mode: PosInterpolation,
) -> Vec<f32> {
    let (head, grid) = pos.split_at(prefix * d);
    let mut out = head.to_vec();
    out.extend(resize_grid(
        grid,
        (native_grid, native_grid),
        (gh, gw),
        d,
        mode,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let g: Vec<f32> = (0..4 * 4 * 2).map(|v| v as f32).collect();
        for mode in [
            PosInterpolation::Bicubic,
            PosInterpolation::BicubicAntialias,
        ] {
            assert_eq!(resize_grid(&g, (4, 4), (4, 4), 2, mode), g);
        }
    }

    #[test]
    fn constant_grid_stays_constant() {
        // Both kernels are partitions of unity (edge clamping / renormalisation).
        let g = vec![3.5f32; 4 * 4];
        for mode in [
            PosInterpolation::Bicubic,
            PosInterpolation::BicubicAntialias,
        ] {
            for out in [(6, 6), (2, 3), (7, 5)] {
                let r = resize_grid(&g, (4, 4), out, 1, mode);
                assert!(r.iter().all(|v| (v - 3.5).abs() < 1e-5), "{mode:?} {out:?}");
            }
        }
    }
}

//! Symmetric linear quantization: int8 with one scale per output channel (row), and
//! int4 with one scale per block of input channels.
//!
//! `w ~ q * s` with `q` in `[-qmax, qmax]` (127 for int8, 7 for int4: symmetric, zero point
//! 0) and `s = max|w| / qmax` over the row or block. The scale is rounded to its storage
//! type first and `q = round(w / s)` uses that stored scale, so `|w - q * s| <= s / 2`
//! holds for what is actually decoded (before the final rounding of `q * s` to fp16).

use half::f16;

use crate::coreml::mil::DType;

/// Rounds `x` to what storing it as `dtype` (fp16 or fp32) keeps.
pub fn store(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// The scale for a group whose largest magnitude is `max_abs`, as stored. A group of
/// zeros (or one too small for the storage type) gets scale 1 and decodes to zeros.
fn scale_for(max_abs: f32, qmax: f32, dtype: DType) -> f32 {
    let s = store(max_abs / qmax, dtype);
    if s > 0.0 && s.is_finite() {
        s
    } else {
        1.0
    }
}

fn quantize(w: f32, s: f32, qmax: f32) -> i8 {
    (w / s).round().clamp(-qmax, qmax) as i8
}

/// Per-output-channel symmetric int8 of a `[rows, ...]` tensor given as `values`:
/// (quantized values, one scale per row).
pub fn int8_per_channel(values: &[f32], rows: usize, scale_dtype: DType) -> (Vec<i8>, Vec<f32>) {
    assert!(rows > 0 && values.len() % rows == 0);
    let cols = values.len() / rows;
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(cols) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let s = scale_for(max, 127.0, scale_dtype);
        q.extend(row.iter().map(|&w| quantize(w, s, 127.0)));
        scales.push(s);
    }
    (q, scales)
}

/// Per-block symmetric int4 of a `[rows, cin, rest...]` tensor (`inner` = product of
/// `rest`): blocks of `block` input channels (all of `rest` included), so the scale has
/// shape `[rows, cin / block, 1...]`. Returns (values, scales in row-major scale order).
pub fn int4_per_block(
    values: &[f32],
    rows: usize,
    cin: usize,
    inner: usize,
    block: usize,
    scale_dtype: DType,
) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(values.len(), rows * cin * inner);
    assert!(block > 0 && cin % block == 0);
    let nb = cin / block;
    let mut scales = Vec::with_capacity(rows * nb);
    let mut q = vec![0i8; values.len()];
    let span = block * inner;
    for (r, row) in values.chunks_exact(cin * inner).enumerate() {
        for (b, blk) in row.chunks_exact(span).enumerate() {
            let max = blk.iter().fold(0f32, |m, x| m.max(x.abs()));
            let s = scale_for(max, 7.0, scale_dtype);
            let base = r * cin * inner + b * span;
            for (d, &w) in q[base..base + span].iter_mut().zip(blk) {
                *d = quantize(w, s, 7.0);
            }
            scales.push(s);
        }
    }
    (q, scales)
}

/// Decodes `q * s` rounded to `out` (fp16 or fp32): `scale_of(i)` is element `i`'s scale.
pub fn decode(q: &[i8], scale_of: impl Fn(usize) -> f32, out: DType) -> Vec<f32> {
    q.iter()
        .enumerate()
        .map(|(i, &v)| store(f32::from(v) * scale_of(i), out))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn int8_error_within_half_a_step() {
        for dt in [DType::F16, DType::F32] {
            let (rows, cols) = (12, 40);
            let mut w = data(rows * cols, 3);
            w[5] = 0.0;
            for x in &mut w[cols..2 * cols] {
                *x = 0.0; // an all-zero row
            }
            let (q, s) = int8_per_channel(&w, rows, dt);
            assert!(q.iter().all(|&v| (-127..=127).contains(&v)));
            for (i, (&x, &v)) in w.iter().zip(&q).enumerate() {
                let sc = f64::from(s[i / cols]);
                let err = (f64::from(x) - f64::from(v) * sc).abs();
                assert!(err <= sc / 2.0 * (1.0 + 1e-6), "{dt} {i}: {err} > {sc}/2");
            }
            // The largest magnitude of each row is (nearly) hit exactly.
            assert!(q.iter().any(|&v| v.abs() == 127));
            assert!(q[cols..2 * cols].iter().all(|&v| v == 0));
            let dec = decode(&q, |i| s[i / cols], dt);
            assert_eq!(dec[cols..2 * cols], vec![0.0; cols][..]);
        }
    }

    #[test]
    fn int4_blocks() {
        let (rows, cin, inner, block) = (4, 64, 1, 32);
        let w = data(rows * cin * inner, 9);
        let (q, s) = int4_per_block(&w, rows, cin, inner, block, DType::F16);
        assert_eq!(s.len(), rows * cin / block);
        assert!(q.iter().all(|&v| (-7..=7).contains(&v)));
        for (i, (&x, &v)) in w.iter().zip(&q).enumerate() {
            let sc = f64::from(s[i / block]);
            assert!((f64::from(x) - f64::from(v) * sc).abs() <= sc / 2.0 * (1.0 + 1e-6));
        }
        // A conv-shaped tensor: blocks span the kernel too.
        let w = data(2 * 4 * 9, 1);
        let (_, s) = int4_per_block(&w, 2, 4, 9, 2, DType::F32);
        assert_eq!(s.len(), 4);
    }
}

//! The kernels against naive definitions (direct loops, index arithmetic).

use super::*;
use crate::coreml::interp::tensor::Tensor;

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
                                acc += x.data[((bn * c + ic) * h + iy as usize) * wd + ix as usize]
                                    * w.data[((oc * ci + icg) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    data[((bn * o + oc) * oh + y) * ow + xo] = acc + b.map_or(0.0, |b| b.data[oc]);
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

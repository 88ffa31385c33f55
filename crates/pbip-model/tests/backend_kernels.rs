//! The CPU kernels pbip's vendored `burn-flex` adds for the MiT (GELU forward/backward,
//! depthwise-conv input/weight gradients, conv bias gradient) against direct f64 evaluations of
//! their definitions, including the shapes and layouts the MiT does not use (strides, dilation,
//! no padding, non-square planes, transposed GELU inputs) and the generic fallback (grouped, not
//! depthwise).

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData, activation::gelu};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    pbip_model::util::to_vec(t).unwrap()
}

fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{name}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

struct Case {
    b: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
}

/// out = conv2d(x, w, bias), loss = sum(out * r): checks dx, dw, db against the definition.
fn check_conv(case: &Case, seed: u64) {
    let Case {
        b,
        c_in,
        c_out,
        groups,
        h,
        w,
        k,
        stride,
        pad,
        dil,
    } = *case;
    let cpg = c_in / groups;
    let opg = c_out / groups;
    let oh = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) / stride[0] + 1;
    let ow = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) / stride[1] + 1;
    let xv = rnd(b * c_in * h * w, seed);
    let wv = rnd(c_out * cpg * k[0] * k[1], seed + 1);
    let bv = rnd(c_out, seed + 2);
    let rv = rnd(b * c_out * oh * ow, seed + 3);

    let device = Device::flex().autodiff();
    let x: Tensor<4> =
        Tensor::from_data(TensorData::new(xv.clone(), [b, c_in, h, w]), &device).require_grad();
    let wt: Tensor<4> = Tensor::from_data(
        TensorData::new(wv.clone(), [c_out, cpg, k[0], k[1]]),
        &device,
    )
    .require_grad();
    let bt: Tensor<1> =
        Tensor::from_data(TensorData::new(bv.clone(), [c_out]), &device).require_grad();
    let r: Tensor<4> = Tensor::from_data(TensorData::new(rv.clone(), [b, c_out, oh, ow]), &device);
    let out = conv2d(
        x.clone(),
        wt.clone(),
        Some(bt.clone()),
        ConvOptions::new(stride, pad, dil, groups),
    );
    assert_eq!(out.dims(), [b, c_out, oh, ow]);
    let loss = (out.clone() * r).sum();
    let grads = loss.backward();
    let (dx, dw, db) = (
        vec_of(x.grad(&grads).unwrap()),
        vec_of(wt.grad(&grads).unwrap()),
        vec_of(bt.grad(&grads).unwrap()),
    );
    let outv = vec_of(out);

    let mut want_out = vec![0.0f64; b * c_out * oh * ow];
    let mut want_dx = vec![0.0f64; xv.len()];
    let mut want_dw = vec![0.0f64; wv.len()];
    let mut want_db = vec![0.0f64; c_out];
    for bi in 0..b {
        for co in 0..c_out {
            let g = co / opg;
            for y in 0..oh {
                for xo in 0..ow {
                    let oi = ((bi * c_out + co) * oh + y) * ow + xo;
                    let rr = rv[oi] as f64;
                    let mut acc = bv[co] as f64;
                    want_db[co] += rr;
                    for ci in 0..cpg {
                        let cin = g * cpg + ci;
                        for kh in 0..k[0] {
                            for kw in 0..k[1] {
                                let iy = (y * stride[0] + kh * dil[0]) as isize - pad[0] as isize;
                                let ix = (xo * stride[1] + kw * dil[1]) as isize - pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((bi * c_in + cin) * h + iy as usize) * w + ix as usize;
                                let wi = ((co * cpg + ci) * k[0] + kh) * k[1] + kw;
                                acc += xv[xi] as f64 * wv[wi] as f64;
                                want_dx[xi] += rr * wv[wi] as f64;
                                want_dw[wi] += rr * xv[xi] as f64;
                            }
                        }
                    }
                    want_out[oi] = acc;
                }
            }
        }
    }
    assert_close("out", &outv, &want_out, 1e-5);
    assert_close("dx", &dx, &want_dx, 1e-5);
    assert_close("dw", &dw, &want_dw, 1e-5);
    assert_close("db", &db, &want_db, 1e-5);
}

#[test]
fn depthwise_conv_gradients_match_definition() {
    let dw = |c, h, w, k, stride, pad, dil| Case {
        b: 2,
        c_in: c,
        c_out: c,
        groups: c,
        h,
        w,
        k,
        stride,
        pad,
        dil,
    };
    // the MiT's Mix-FFN conv
    check_conv(&dw(8, 12, 12, [3, 3], [1, 1], [1, 1], [1, 1]), 1);
    // strided, dilated, unpadded, rectangular
    check_conv(&dw(5, 11, 9, [3, 3], [2, 2], [1, 1], [1, 1]), 2);
    check_conv(&dw(4, 13, 10, [3, 3], [1, 1], [2, 2], [2, 2]), 3);
    check_conv(&dw(3, 9, 14, [5, 3], [1, 2], [0, 1], [1, 1]), 4);
    check_conv(&dw(6, 7, 7, [3, 3], [3, 1], [0, 0], [1, 2]), 5);
    // padding beyond the kernel reach (output larger than the input)
    check_conv(&dw(3, 6, 5, [3, 3], [1, 1], [3, 2], [1, 1]), 8);
}

#[test]
fn grouped_and_dense_conv_gradients_match_definition() {
    // grouped but not depthwise: burn's default path for dx / dw, the direct bias gradient
    check_conv(
        &Case {
            b: 2,
            c_in: 6,
            c_out: 4,
            groups: 2,
            h: 9,
            w: 8,
            k: [3, 3],
            stride: [1, 1],
            pad: [1, 1],
            dil: [1, 1],
        },
        6,
    );
    // MiT patch embeddings (overlapping, strided) and a dilated one
    for (i, (k, st, pd, dl)) in [(7, 4, 3, 1), (3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 2, 2)]
        .into_iter()
        .enumerate()
    {
        check_conv(
            &Case {
                b: 3,
                c_in: 3,
                c_out: 5,
                groups: 1,
                h: 17,
                w: 15,
                k: [k, k],
                stride: [st, st],
                pad: [pd, pd],
                dil: [dl, dl],
            },
            20 + i as u64,
        );
    }
    // a MiT spatial-reduction conv (kernel = stride)
    check_conv(
        &Case {
            b: 2,
            c_in: 4,
            c_out: 4,
            groups: 1,
            h: 8,
            w: 8,
            k: [4, 4],
            stride: [4, 4],
            pad: [0, 0],
            dil: [1, 1],
        },
        7,
    );
}

fn gelu_ref(x: f64) -> (f64, f64) {
    // erf by its Maclaurin series in f64: for |x| <= 6 the cancellation costs at most ~1e-8,
    // far below the tolerances used here.
    let z = x / std::f64::consts::SQRT_2;
    let erf = {
        let mut term = z;
        let mut sum = z;
        let mut n = 0.0f64;
        while term.abs() > 1e-18 * sum.abs().max(1e-300) && n < 400.0 {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    };
    let cdf = 0.5 * (1.0 + erf);
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (x * cdf, cdf + x * pdf)
}

#[test]
fn gelu_and_its_gradient_match_definition_on_contiguous_and_transposed_inputs() {
    let (rows, cols) = (300, 257);
    let xv: Vec<f32> = (0..rows * cols)
        .map(|i| -6.0 + 12.0 * i as f32 / (rows * cols - 1) as f32)
        .collect();
    let gv = rnd(rows * cols, 11);
    let device = Device::flex().autodiff();
    for transposed in [false, true] {
        let x: Tensor<2> =
            Tensor::from_data(TensorData::new(xv.clone(), [rows, cols]), &device).require_grad();
        let g: Tensor<2> = Tensor::from_data(TensorData::new(gv.clone(), [rows, cols]), &device);
        // a transposed view is a whole-buffer permutation: the in-place/strided kernel path
        let (xin, gin) = if transposed {
            (x.clone().transpose(), g.transpose())
        } else {
            (x.clone(), g)
        };
        let y = gelu(xin);
        let loss = (y.clone() * gin).sum();
        let grads = loss.backward();
        let dx = vec_of(x.grad(&grads).unwrap());
        let y = vec_of(if transposed { y.transpose() } else { y });
        let mut want_y = Vec::with_capacity(xv.len());
        let mut want_dx = Vec::with_capacity(xv.len());
        for (&x, &g) in xv.iter().zip(&gv) {
            let (v, d) = gelu_ref(x as f64);
            want_y.push(v);
            want_dx.push(d * g as f64);
        }
        for i in 0..xv.len() {
            assert!(
                (y[i] as f64 - want_y[i]).abs() <= 3e-7 * want_y[i].abs().max(1.0),
                "gelu({}) = {} vs {} (transposed {transposed})",
                xv[i],
                y[i],
                want_y[i]
            );
            assert!(
                (dx[i] as f64 - want_dx[i]).abs() <= 4e-7 * want_dx[i].abs().max(1.0),
                "gelu'({}) = {} vs {} (transposed {transposed})",
                xv[i],
                dx[i],
                want_dx[i]
            );
        }
    }
}

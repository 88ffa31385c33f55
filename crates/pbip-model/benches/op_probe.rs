//! Single-op timings on the flex backend for the shapes that dominate the MiT-b1 training step
//! (`bench/RESULTS.md`, hot spots); `bench/torch_op_probe.py` times the same ops in PyTorch.
//! Run: `cargo bench -p pbip-model --bench op_probe`.

use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

/// A named operation to time.
type Case<'a> = (&'static str, Box<dyn Fn() -> Tensor<3> + 'a>);

fn t<const D: usize>(s: [usize; D], d: &Device) -> Tensor<D> {
    Tensor::random(s, Distribution::Normal(0.0, 1.0), d)
}
fn main() {
    let d = Device::flex();
    // 2D matmul
    for (m, k, n) in [
        (31360usize, 64usize, 256usize),
        (31360, 256, 64),
        (1960, 512, 2048),
        (1960, 2048, 512),
    ] {
        let a: Tensor<2> = t([m, k], &d);
        let b: Tensor<2> = t([k, n], &d);
        let _ = a.clone().matmul(b.clone()).into_data();
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = a.clone().matmul(b.clone()).into_data();
        }
        let s = t0.elapsed().as_secs_f64() / 5.0;
        println!(
            "2d {m}x{k}x{n}: {:.1} ms {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9
        );
    }
    // 3D input x 2D weight via linear-like broadcast
    let x: Tensor<3> = t([10, 3136, 64], &d);
    let w: Tensor<2> = t([64, 256], &d);
    let _ = x.clone().matmul(w.clone().unsqueeze::<3>()).into_data();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = x.clone().matmul(w.clone().unsqueeze::<3>()).into_data();
    }
    let s = t0.elapsed().as_secs_f64() / 5.0;
    println!(
        "3d bcast 10x3136x64x256: {:.1} ms {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (31360 * 64 * 256) as f64 / s / 1e9
    );
    let lin = burn::nn::LinearConfig::new(64, 256).init(&d);
    let _ = lin.forward(x.clone()).into_data();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = lin.forward(x.clone()).into_data();
    }
    let s = t0.elapsed().as_secs_f64() / 5.0;
    println!(
        "Linear fwd 10x3136x64->256: {:.1} ms {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (31360 * 64 * 256) as f64 / s / 1e9
    );
    // transposed operand (backward-style): x^T [64, 31360] @ dy [31360, 256]
    let a: Tensor<2> = t([31360, 64], &d);
    let b: Tensor<2> = t([31360, 256], &d);
    let _ = a.clone().transpose().matmul(b.clone()).into_data();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = a.clone().transpose().matmul(b.clone()).into_data();
    }
    let s = t0.elapsed().as_secs_f64() / 5.0;
    println!(
        "2d aT@b 64x31360x256: {:.1} ms {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (31360 * 64 * 256) as f64 / s / 1e9
    );
    // attention-like batched
    let q: Tensor<4> = t([10, 8, 196, 64], &d);
    let k: Tensor<4> = t([10, 8, 64, 196], &d);
    let _ = q.clone().matmul(k.clone()).into_data();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = q.clone().matmul(k.clone()).into_data();
    }
    let s = t0.elapsed().as_secs_f64() / 5.0;
    println!(
        "attn 80x196x64x196: {:.1} ms {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (80 * 196 * 64 * 196) as f64 / s / 1e9
    );
    // channel-first Mix-FFN products (src/mit.rs): fc1 as W1ᵀ·xᵀ, fc2 as W2ᵀ·g, and the weight
    // gradient of fc1 (dH · x), against a layout copy of the hidden tensor
    let x: Tensor<3> = t([10, 3136, 64], &d);
    let w1: Tensor<2> = t([64, 256], &d);
    let g: Tensor<3> = t([10, 256, 3136], &d);
    let w2: Tensor<2> = t([256, 64], &d);
    let flops = 2.0 * (31360 * 64 * 256) as f64;
    let cases: Vec<Case<'_>> = vec![
        (
            "cf fc1 W1t.xt [1,256,64]x[10,64,3136]",
            Box::new(|| {
                w1.clone()
                    .transpose()
                    .unsqueeze::<3>()
                    .matmul(x.clone().swap_dims(1, 2))
            }),
        ),
        (
            "cf fc2 W2t.g [1,64,256]x[10,256,3136]",
            Box::new(|| w2.clone().transpose().unsqueeze::<3>().matmul(g.clone())),
        ),
        (
            "cf dW1 dH.x [10,256,3136]x[10,3136,64]",
            Box::new(|| g.clone().matmul(x.clone())),
        ),
        (
            "copy [10,3136,256]->[10,256,3136]",
            Box::new(|| g.clone().swap_dims(1, 2).reshape([10, 3136, 256])),
        ),
    ];
    for (name, f) in cases {
        let _ = f().into_data();
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = f().into_data();
        }
        let s = t0.elapsed().as_secs_f64() / 5.0;
        println!("{name}: {:.1} ms {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
    }
    // stage 4 (14x14 tokens, C=512, hidden 2048): channel-first against token-layout products
    let x4: Tensor<3> = t([10, 196, 512], &d);
    let w14: Tensor<2> = t([512, 2048], &d);
    let g4: Tensor<3> = t([10, 2048, 196], &d);
    let w24: Tensor<2> = t([2048, 512], &d);
    let x4f: Tensor<2> = t([1960, 512], &d);
    let g4f: Tensor<2> = t([1960, 2048], &d);
    let flops4 = 2.0 * (1960 * 512 * 2048) as f64;
    let cases4: Vec<Case<'_>> = vec![
        (
            "s4 cf fc1 [1,2048,512]x[10,512,196]",
            Box::new(|| {
                w14.clone()
                    .transpose()
                    .unsqueeze::<3>()
                    .matmul(x4.clone().swap_dims(1, 2))
            }),
        ),
        (
            "s4 cf fc2 [1,512,2048]x[10,2048,196]",
            Box::new(|| w24.clone().transpose().unsqueeze::<3>().matmul(g4.clone())),
        ),
        (
            "s4 cf dW1 [10,2048,196]x[10,196,512]",
            Box::new(|| g4.clone().matmul(x4.clone())),
        ),
        (
            "s4 tok fc1 [1960,512]x[512,2048]",
            Box::new(|| x4f.clone().matmul(w14.clone()).unsqueeze::<3>()),
        ),
        (
            "s4 tok fc2 [1960,2048]x[2048,512]",
            Box::new(|| g4f.clone().matmul(w24.clone()).unsqueeze::<3>()),
        ),
        (
            "s4 tok dW1 [512,1960]x[1960,2048]",
            Box::new(|| x4f.clone().transpose().matmul(g4f.clone()).unsqueeze::<3>()),
        ),
    ];
    for (name, f) in cases4 {
        let _ = f().into_data();
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = f().into_data();
        }
        let s = t0.elapsed().as_secs_f64() / 5.0;
        println!("{name}: {:.1} ms {:.1} GFLOP/s", s * 1e3, flops4 / s / 1e9);
    }
    // depthwise conv
    let x: Tensor<4> = t([10, 256, 56, 56], &d);
    let c = burn::nn::conv::Conv2dConfig::new([256, 256], [3, 3])
        .with_groups(256)
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&d);
    let _ = c.forward(x.clone()).into_data();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = c.forward(x.clone()).into_data();
    }
    println!(
        "dwconv 10x256x56x56: {:.1} ms",
        t0.elapsed().as_secs_f64() / 5.0 * 1e3
    );
}

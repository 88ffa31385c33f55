//! Single-op timings on the flex backend for the shapes that dominate the MiT-b1 training step
//! (`bench/RESULTS.md`, hot spots); `bench/torch_op_probe.py` times the same ops in PyTorch.
//! Run: `cargo bench -p pbip-model --bench op_probe`.

use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;
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

//! MiT ClassNet timing on the devices named by `PBIP_BENCH_DEVICES` (comma-separated `device:`
//! spellings, default `cpu` = burn-flex; `tch-cpu` / `cuda` with `--features tch`, `wgpu` with
//! `--features wgpu`).
//!
//! * training step: batch 10 at 224 px, forward (stochastic depth on) + BCE over the
//!   mean-merged cls of the four scales (weights 0, 0.1, 1, 1) + 0.1·0.0005·mean(cam4),
//!   backward, AdamW step (lr 5e-5, wd 1e-3). The FG/BG vision-tower pass is excluded (it is
//!   the encoder's cost, not the backbone's);
//! * inference: batch 32 at 224 px, forward without autodiff.
//!
//! `PBIP_BENCH_PRECISION` (comma-separated `f32`, `bf16`; default `f32`) runs each device in
//! each precision ([`pbip_model::Precision`]; bf16 rows are labelled `burn-<device>-bf16`).
//!
//! Run: `cargo bench -p pbip-model --bench mit_bench [-- mit_b1]`. `bench/run.sh` runs this and the
//! same model in PyTorch (`bench/torch_mit_bench.py`) and prints one table.
//! Output lines: `RESULT backend variant train_ms infer_ms img_per_s`.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use pbip_model::{
    ClassNet, ClassNetConfig, HostTensor, MergeMethod, Precision, cam_mean, classification_loss,
};

const WARMUP: usize = 1;

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat`
/// (Linux; clock ticks taken as 1/100 s); `None` elsewhere. Reported next to the wall times:
/// on a shared or virtualised machine (CPU steal) wall time alone is not comparable across runs.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name: state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}
/// Timed iterations (`PBIP_BENCH_ITERS`, default 3; GPU runs use more).
fn iters() -> usize {
    std::env::var("PBIP_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn run(backend: &str, base: Device, variant: &str, precision: Precision) -> Result<(), String> {
    let iters = iters();
    let k_list = vec![3, 3, 3, 3];
    let cfg =
        ClassNetConfig::new(variant, [4, 2, 2, 1], k_list.clone()).map_err(|e| e.to_string())?;
    let protos = HostTensor {
        shape: vec![12, 512],
        data: (0..12 * 512)
            .map(|i| ((i % 7) as f32 - 3.0) / 64.0)
            .collect(),
    };
    let device = base.clone().autodiff();
    let mut model = ClassNet::init(&cfg, &protos, 0, &device).map_err(|e| e.to_string())?;
    model.set_precision(precision);
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(1e-3)
        .init();
    let x: Tensor<4> = Tensor::random([10, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let y: Tensor<2> = Tensor::random([10, 4], Distribution::Bernoulli(0.5), &device);
    let weights = [0.0, 0.1, 1.0, 1.0];
    // (forward, backward, optimiser) seconds of the timed steps
    let mut parts = [0.0f64; 3];
    let mut step = |model: ClassNet, parts: &mut [f64; 3]| -> Result<ClassNet, String> {
        let t = Instant::now();
        let out = model.forward_with(x.clone(), true);
        let cls = classification_loss(&out.cls, y.clone(), &k_list, &weights, MergeMethod::Mean)
            .map_err(|e| e.to_string())?;
        let loss = cls + cam_mean(out.cam[3].clone()) * (0.1 * 0.0005);
        // Synchronise (a lazy backend would otherwise be timed on queueing only).
        let _ = loss.clone().into_data();
        parts[0] += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let _ = model.logit_scale[0].val().into_data();
        parts[1] += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let model = optim.step(5e-5, model, grads);
        let _ = model.logit_scale[0].val().into_data();
        parts[2] += t.elapsed().as_secs_f64();
        Ok(model)
    };
    let mut scratch = [0.0f64; 3];
    for _ in 0..WARMUP {
        model = step(model, &mut scratch)?;
    }
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..iters {
        model = step(model, &mut parts)?;
    }
    let train = t0.elapsed().as_secs_f64() / iters as f64;
    let cpu = match (c0, cpu_seconds()) {
        (Some(a), Some(b)) => format!(
            ", CPU time {:.0} ms per step",
            (b - a) * 1000.0 / iters as f64
        ),
        _ => String::new(),
    };
    println!(
        "# burn-{backend} {variant} train step split: forward {:.0} ms, backward {:.0} ms, AdamW {:.0} ms{cpu}",
        parts[0] * 1000.0 / iters as f64,
        parts[1] * 1000.0 / iters as f64,
        parts[2] * 1000.0 / iters as f64
    );

    let eval = model.valid();
    let xi: Tensor<4> = Tensor::random([32, 3, 224, 224], Distribution::Normal(0.0, 1.0), &base);
    for _ in 0..WARMUP {
        let _ = eval.forward(xi.clone()).cam[3].clone().into_data();
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        let _ = eval.forward(xi.clone()).cam[3].clone().into_data();
    }
    let inf = t0.elapsed().as_secs_f64() / iters as f64;
    println!(
        "RESULT burn-{backend} {variant} {:.0} {:.0} {:.2}",
        train * 1000.0,
        inf * 1000.0,
        32.0 / inf
    );
    Ok(())
}

fn main() {
    let variant = std::env::args()
        .skip(1)
        .find(|a| a.starts_with("mit_b"))
        .unwrap_or_else(|| "mit_b1".into());
    let names = std::env::var("PBIP_BENCH_DEVICES").unwrap_or_else(|_| "cpu".into());
    let mut precisions = Vec::new();
    for p in std::env::var("PBIP_BENCH_PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .split(',')
        .map(str::trim)
    {
        match p {
            "f32" => precisions.push(Precision::F32),
            "bf16" => precisions.push(Precision::Bf16),
            other => eprintln!("skipping precision {other}: f32 or bf16"),
        }
    }
    let mut backends: Vec<(String, Device)> = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match pbip_model::backend::device_named(name) {
            Ok(d) => backends.push((name.to_string(), d)),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
    for (name, device) in backends {
        for &p in &precisions {
            let label = match p {
                Precision::F32 => name.clone(),
                Precision::Bf16 => format!("{name}-bf16"),
            };
            if let Err(e) = run(&label, device.clone(), &variant, p) {
                eprintln!("burn-{label} {variant}: {e}");
            }
        }
    }
}

//! Regression: the contrastive term (FG/BG images through a frozen, randomly initialised Swin-T,
//! InfoNCE against nearly collinear prototypes) must give finite gradients.
//!
//! Mechanism of the bug this guards against: a masked-out region of an FG/BG image is exactly zero;
//! in a bias-free (random-init) Swin its tokens stay exactly zero, every LayerNorm there runs at
//! zero variance and multiplies the gradient by ~1/sqrt(1e-5) (and the L2 normalisation of an
//! all-zero feature by 1/1e-12), so the gradient w.r.t. those pixels overflows f32 to inf/NaN
//! (stage 3 of Swin-T at 112 px). The masking used to be a product with the 0/1 mask, and
//! `inf * 0 = NaN` reached cam4 and every ClassNet parameter.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pbip_encoder::{MedClipVision, SwinConfig};
use pbip_model::util::to_vec;
use pbip_model::{ClassNet, ClassNetConfig, ClassNetOutput, HostTensor, LossConfig, pbip_loss};

/// `k` unit rows with pairwise cosine > 0.998 (one shared direction plus small noise).
fn collinear_protos(k: usize, seed: u64) -> HostTensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let base: Vec<f64> = (0..512).map(|_| rnd()).collect();
    let bn = base.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut data = Vec::with_capacity(k * 512);
    for _ in 0..k {
        let row: Vec<f64> = base.iter().map(|b| b / bn + 0.002 * rnd()).collect();
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        data.extend(row.iter().map(|v| (v / n) as f32));
    }
    let p = HostTensor {
        shape: vec![k, 512],
        data,
    };
    for i in 0..k {
        for j in 0..i {
            let dot: f32 = (0..512)
                .map(|d| p.data[i * 512 + d] * p.data[j * 512 + d])
                .sum();
            assert!(dot > 0.998, "prototypes {i},{j}: cos {dot}");
        }
    }
    p
}

fn non_finite(v: &[f32]) -> usize {
    v.iter().filter(|x| !x.is_finite()).count()
}

fn tower(device: &Device) -> MedClipVision {
    MedClipVision::random(&SwinConfig::swin_tiny(), 42, device)
        .unwrap()
        .frozen()
}

/// A pair whose BG image is entirely masked (CAM channel constant: every pixel ≥ δ·max) and one
/// whose FG image is entirely masked (channel far below δ·max), straight through `pbip_loss`.
#[test]
fn fully_masked_fg_and_bg_images_give_finite_cam_gradient() {
    let device = Device::flex().autodiff();
    let enc_model = tower(&device);
    let enc = |x: Tensor<4>| enc_model.forward(x);
    let p = collinear_protos(2, 1);
    let protos: Tensor<2> = Tensor::from_data(TensorData::new(p.data.clone(), [2, 512]), &device);
    let (s, g) = (112, 4);
    // sample 0: channel 0 = 1 everywhere (mask all 1 -> BG all zero), channel 1 = -1 (FG all zero)
    let mut cam = vec![1.0f32; g * g];
    cam.extend(vec![-1.0f32; g * g]);
    let cam4: Tensor<4> =
        Tensor::from_data(TensorData::new(cam, [1, 2, g, g]), &device).require_grad();
    let cls = cam4
        .clone()
        .reshape([1, 2, g * g])
        .mean_dim(2)
        .reshape([1, 2]);
    let out = ClassNetOutput {
        cls: vec![cls.clone(), cls.clone(), cls.clone(), cls],
        cam: vec![
            cam4.clone().detach(),
            cam4.clone().detach(),
            cam4.clone().detach(),
            cam4.clone(),
        ],
        prototypes: protos,
        features: Vec::new(),
    };
    device.seed(3);
    let x: Tensor<4> = Tensor::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
    let y: Tensor<2> = Tensor::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device);
    let lc = LossConfig::default();
    // k_list [2]: one parent with both subclasses; only channel 0 is above the parent mean.
    let l = pbip_loss(&out, x.clone(), y, &[2], &lc, &enc).unwrap();
    assert_eq!(l.pairs, vec![(0, 0)]);
    let total = to_vec(l.total.clone()).unwrap();
    assert!(total[0].is_finite(), "{total:?}");
    let gc = to_vec(cam4.grad(&l.total.backward()).unwrap()).unwrap();
    assert_eq!(non_finite(&gc), 0, "d total / d cam4 (BG all zero): {gc:?}");

    // Pair (0, 1): its FG image is all zero.
    let (xf, xb) = pbip_model::fg_bg_images(x, cam4.clone(), &[(0, 1)], 0.5, 1e-8).unwrap();
    assert!(to_vec(xf.clone()).unwrap().iter().all(|v| *v == 0.0));
    let fg = pbip_model::info_nce_fg(enc(xf), out.prototypes.clone(), &[1], 0.07, 1e-12).unwrap();
    let bg = pbip_model::info_nce_bg(enc(xb), out.prototypes.clone(), &[1], 0.07, 1e-12).unwrap();
    let gc = to_vec(cam4.grad(&(fg + bg).backward()).unwrap()).unwrap();
    assert_eq!(
        non_finite(&gc),
        0,
        "d (fg+bg) / d cam4 (FG all zero): {gc:?}"
    );
}

/// The whole model: random mit_b0 ClassNet, random Swin-T, collinear prototypes, 112 px, several
/// seeds and mask thresholds (δ = 1 leaves the FG images nearly empty, δ = 0 the BG images):
/// loss and every parameter gradient finite.
#[test]
fn classnet_gradients_finite_with_contrastive_term() {
    let device = Device::flex().autodiff();
    let enc_model = tower(&device);
    let enc = |x: Tensor<4>| enc_model.forward(x);
    let cfg = ClassNetConfig::new("mit_b0", [4, 2, 2, 1], vec![3, 3]).unwrap();
    let (b, s) = (2, 112);
    let y: Tensor<2> =
        Tensor::from_data(TensorData::new(vec![1.0f32, 1., 1., 1.], [b, 2]), &device);
    let mut bad = Vec::new();
    for (seed, delta) in [(0u64, 1.0), (1, 0.0), (2, 0.5)] {
        let p = collinear_protos(6, seed);
        let model = ClassNet::init(&cfg, &p, seed, &device).unwrap();
        device.seed(seed);
        let x: Tensor<4> = Tensor::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let out = model.forward_with(x.clone(), true);
        let lc = LossConfig {
            mask_threshold: delta,
            ..LossConfig::default()
        };
        let l = pbip_loss(&out, x, y.clone(), &cfg.k_list, &lc, &enc).unwrap();
        assert!(!l.pairs.is_empty(), "seed {seed}: no pair selected");
        let total = to_vec(l.total.clone()).unwrap()[0];
        assert!(total.is_finite(), "seed {seed} δ {delta}: loss {total}");
        let grads = model.gradients(&l.total.backward()).unwrap();
        assert!(grads.contains_key("l_fc4.fc1.weight"));
        for (name, t) in &grads {
            let n = non_finite(&t.data);
            if n > 0 {
                bad.push(format!("seed {seed} δ {delta}: {name}: {n} non-finite"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

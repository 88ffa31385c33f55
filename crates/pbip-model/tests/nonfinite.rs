//! Regression: the contrastive term (FG/BG images through a frozen Swin tower, InfoNCE against
//! nearly collinear prototypes) must give finite gradients.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pbip_model::util::to_vec;
use pbip_model::{ClassNet, ClassNetConfig, HostTensor, LossConfig, fg_bg_images, pbip_loss};

/// `k` unit rows with pairwise cosine > 0.998 (one shared direction plus small noise).
fn collinear_protos(k: usize, seed: u64) -> HostTensor {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
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
    HostTensor {
        shape: vec![k, 512],
        data,
    }
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn stats(name: &str, v: &[f32]) {
    let nf = v.iter().filter(|x| !x.is_finite()).count();
    let mx = v.iter().filter(|x| x.is_finite()).fold(0f32, |a, b| a.max(b.abs()));
    eprintln!("  {name}: {} values, {nf} non-finite, max|finite| {mx:e}", v.len());
}

#[test]
fn diagnose() {
    let device = Device::flex().autodiff();
    let cfg = ClassNetConfig::new("mit_b0", [4, 2, 2, 1], vec![3, 3]).unwrap();
    let swin = pbip_encoder::SwinConfig::swin_tiny();
    let tower = pbip_encoder::MedClipVision::random(&swin, 7, &device)
        .unwrap()
        .frozen();
    let lc = LossConfig::default();
    let b = 4; let s: usize = std::env::var("PX").ok().and_then(|v| v.parse().ok()).unwrap_or(112);
    for seed in 0..3u64 {
        let p = collinear_protos(6, seed);
        let model = ClassNet::init(&cfg, &p, seed, &device).unwrap();
        device.seed(seed);
        let x: Tensor<4> = Tensor::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let y: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0., 0., 1., 1., 1., 1., 0.], [b, 2]),
            &device,
        );
        let out = model.forward_with(x.clone(), true);
        // Split the graph at cam4 and at the FG/BG images.
        let cam4 = out.cam[3].clone().detach().require_grad();
        let mut out2 = out.clone();
        out2.cam[3] = cam4.clone();
        let enc = |t: Tensor<4>| tower.forward(t);
        let l = pbip_loss(&out2, x.clone(), y.clone(), &cfg.k_list, &lc, &enc).unwrap();
        eprintln!("seed {seed}: pairs {:?} total {:?} fg {:?} bg {:?}", l.pairs,
            to_vec(l.total.clone()).unwrap(),
            l.fg.clone().map(|t| to_vec(t).unwrap()), l.bg.clone().map(|t| to_vec(t).unwrap()));
        let g = l.total.backward();
        let gc = to_vec(cam4.grad(&g).unwrap()).unwrap();
        stats("d/dcam4", &gc);
        if l.pairs.is_empty() {
            continue;
        }
        // images split
        let (xf, xb) = fg_bg_images(x.clone(), cam4.clone(), &l.pairs, lc.mask_threshold, lc.minmax_eps).unwrap();
        stats("xf", &to_vec(xf.clone()).unwrap());
        stats("xb", &to_vec(xb.clone()).unwrap());
        for (nm, img) in [("fg", xf), ("bg", xb)] {
            let leaf = img.detach().require_grad();
            let f = tower.forward(leaf.clone());
            stats(&format!("{nm} features"), &to_vec(f.clone()).unwrap());
            let ks: Vec<usize> = l.pairs.iter().map(|p| p.1).collect();
            let loss = if nm == "fg" {
                pbip_model::info_nce_fg(f, out.prototypes.clone(), &ks, lc.temperature, lc.feature_eps).unwrap()
            } else {
                pbip_model::info_nce_bg(f, out.prototypes.clone(), &ks, lc.temperature, lc.feature_eps).unwrap()
            };
            let g = loss.backward();
            stats(&format!("d/d{nm}image"), &to_vec(leaf.grad(&g).unwrap()).unwrap());
        }
        let _ = finite(&gc);
    }
}

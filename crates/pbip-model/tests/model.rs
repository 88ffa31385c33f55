//! Model-level behaviour on small random models: shapes, gradient routing, loading errors,
//! checkpoint round trips, the loss wiring and the evaluation path.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pbip_model::util::{to_host, to_vec};
use pbip_model::{
    ClassNet, ClassNetConfig, EvalConfig, Gate, HostTensor, LossConfig, ModelError, evaluate,
    pbip_loss,
};

fn protos(k: usize) -> HostTensor {
    // Deterministic unit-norm rows.
    let mut data = Vec::with_capacity(k * 512);
    for r in 0..k {
        let row: Vec<f32> = (0..512)
            .map(|j| ((r * 7 + j * 13) % 17) as f32 - 8.0)
            .collect();
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        data.extend(row.iter().map(|v| v / n));
    }
    HostTensor {
        shape: vec![k, 512],
        data,
    }
}

fn small() -> (ClassNetConfig, HostTensor) {
    (
        ClassNetConfig::new("mit_b0", [4, 2, 2, 1], vec![2, 1]).unwrap(),
        protos(3),
    )
}

fn image(device: &Device, b: usize, s: usize) -> Tensor<4> {
    Tensor::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), device)
}

/// A frozen, differentiable stand-in encoder: channel means times a fixed matrix -> [n,512].
fn fake_encoder(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    let pooled = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
    let m: Vec<f32> = (0..c * 512)
        .map(|i| ((i * 31 % 23) as f32 - 11.0) / 11.0)
        .collect();
    let m: Tensor<2> = Tensor::from_data(TensorData::new(m, [c, 512]), &pooled.device());
    pooled.matmul(m)
}

#[test]
fn output_shapes_follow_strides() {
    let (cfg, p) = small();
    let device = Device::flex();
    let model = ClassNet::init(&cfg, &p, 0, &device).unwrap();
    let out = model.forward(image(&device, 2, 64));
    let cams: Vec<[usize; 4]> = out.cam.iter().map(|c| c.dims()).collect();
    assert_eq!(
        cams,
        vec![[2, 3, 16, 16], [2, 3, 8, 8], [2, 3, 4, 4], [2, 3, 4, 4]]
    );
    assert!(out.cls.iter().all(|c| c.dims() == [2, 3]));
    let feats: Vec<[usize; 4]> = out.features.iter().map(|f| f.dims()).collect();
    assert_eq!(
        feats,
        vec![
            [2, 32, 16, 16],
            [2, 64, 8, 8],
            [2, 160, 4, 4],
            [2, 256, 4, 4]
        ]
    );
    // cls_i is the spatial mean of cam_i
    let c1 = to_vec(out.cls[0].clone()).unwrap();
    let m1 = to_vec(
        out.cam[0]
            .clone()
            .reshape([2, 3, 256])
            .mean_dim(2)
            .reshape([2, 3]),
    )
    .unwrap();
    for (a, b) in c1.iter().zip(&m1) {
        assert!((a - b).abs() < 1e-5);
    }
    let names = model.parameter_names();
    assert!(names.contains(&"encoder.block1.0.attn.sr.weight".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("encoder.block4.0.attn.sr"))
    );
    assert!(names.contains(&"logit_scale4".to_string()));
    // bad inputs are errors, not panics
    assert!(
        model
            .try_forward(Tensor::zeros([1, 1, 64, 64], &device), false)
            .is_err()
    );
    assert!(
        model
            .try_forward(Tensor::zeros([1, 3, 16, 64], &device), false)
            .is_err()
    );
    // strides 4,2,2,1 with sr 8,4,2,1: stage-1 grid (n + 6 - 7)/4 + 1 must be >= 8, so n >= 29
    assert!(
        model
            .try_forward(Tensor::zeros([1, 3, 28, 32], &device), false)
            .is_err()
    );
    assert!(
        model
            .try_forward(Tensor::zeros([1, 3, 29, 29], &device), false)
            .is_ok()
    );
}

#[test]
fn cam4_keeps_gradient_and_cam1_is_detached() {
    let (cfg, p) = small();
    let device = Device::flex().autodiff();
    let model = ClassNet::init(&cfg, &p, 1, &device).unwrap();
    let out = model.forward(image(&device, 1, 64));
    let loss = out.cam[0].clone().sum() + out.cam[3].clone().sum();
    let grads = model.gradients(&loss.backward()).unwrap();
    assert!(grads.contains_key("l_fc4.fc2.weight"));
    assert!(grads.contains_key("logit_scale4"));
    assert!(
        !grads.contains_key("l_fc1.fc2.weight"),
        "cam1 must be detached"
    );
    assert!(!grads.contains_key("logit_scale1"));
    // cls1 keeps its gradient
    let out = model.forward(image(&device, 1, 64));
    let grads = model
        .gradients(&out.cls[0].clone().sum().backward())
        .unwrap();
    assert!(grads.contains_key("logit_scale1"));
}

#[test]
fn checkpoint_round_trip_and_error_listing() {
    let (cfg, p) = small();
    let device = Device::flex();
    let model = ClassNet::init(&cfg, &p, 2, &device).unwrap();
    let map = model.to_tensor_map().unwrap();
    assert_eq!(map["encoder.block1.0.attn.kv.weight"].shape, vec![64, 32]);
    assert_eq!(map["l_fc4.fc2.weight"].shape, vec![256, 256]);
    assert!((map["logit_scale2"].data[0] - 1.0 / 0.07).abs() < 1e-5);
    let x = image(&device, 1, 64);
    let again = ClassNet::load_upstream(&map, &cfg, &p, &device).unwrap();
    let a = to_vec(model.forward(x.clone()).cam[3].clone()).unwrap();
    let b = to_vec(again.forward(x.clone()).cam[3].clone()).unwrap();
    assert_eq!(a, b);
    // `model.` prefix (best_cam.pth layout) is accepted
    let prefixed = map
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .collect();
    assert!(ClassNet::load_upstream(&prefixed, &cfg, &p, &device).is_ok());

    let mut bad = map.clone();
    bad.remove("encoder.norm4.weight");
    bad.insert(
        "encoder.extra.weight".into(),
        HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    bad.insert(
        "l_fc1.fc1.bias".into(),
        HostTensor {
            shape: vec![3],
            data: vec![0.0; 3],
        },
    );
    match ClassNet::load_upstream(&bad, &cfg, &p, &device) {
        Err(ModelError::Weights {
            missing,
            unexpected,
            misshaped,
            ..
        }) => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].starts_with("encoder.norm4.weight"));
            assert_eq!(unexpected, vec!["encoder.extra.weight".to_string()]);
            assert_eq!(misshaped.len(), 1);
            assert!(misshaped[0].starts_with("l_fc1.fc1.bias"));
        }
        other => panic!("expected a weights error, got {other:?}"),
    }
    // wrong prototype bank
    assert!(ClassNet::init(&cfg, &protos(4), 0, &device).is_err());
    assert!(ClassNetConfig::new("mit_b9", [4, 2, 2, 1], vec![1]).is_err());
}

#[test]
fn pretrained_backbone_from_nvlabs_names() {
    let (cfg, p) = small();
    let device = Device::flex();
    let model = ClassNet::init(&cfg, &p, 3, &device).unwrap();
    let mut nv: pbip_model::TensorMap = model
        .to_tensor_map()
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("encoder.").map(|s| (s.to_string(), v)))
        .collect();
    nv.insert(
        "head.weight".into(),
        HostTensor {
            shape: vec![1000, 256],
            data: vec![0.0; 256_000],
        },
    );
    let m2 = ClassNet::with_pretrained_backbone(&nv, &cfg, &p, 9, &device).unwrap();
    let a = model.to_tensor_map().unwrap();
    let b = m2.to_tensor_map().unwrap();
    assert_eq!(
        a["encoder.block2.1.mlp.fc1.weight"],
        b["encoder.block2.1.mlp.fc1.weight"]
    );
    assert_ne!(
        a["l_fc1.fc1.weight"], b["l_fc1.fc1.weight"],
        "head comes from the seeded init"
    );
}

#[test]
fn loss_wiring_contrastive_gradient_and_empty_selection() {
    let (cfg, p) = small();
    let device = Device::flex().autodiff();
    let model = ClassNet::init(&cfg, &p, 4, &device).unwrap();
    let x = image(&device, 2, 64);
    let y: Tensor<2> = Tensor::from_data(
        TensorData::new(vec![1.0f32, 1.0, 1.0, 0.0], [2, 2]),
        &device,
    );
    let lc = LossConfig::default();
    let out = model.forward(x.clone());
    let l = pbip_loss(&out, x.clone(), y.clone(), &cfg.k_list, &lc, &fake_encoder).unwrap();
    // exactly one subclass of the 2-subclass parent is above the mean (ties aside)
    assert!(!l.pairs.is_empty());
    let total = to_vec(l.total.clone()).unwrap()[0] as f64;
    let parts = to_vec(l.cls.clone()).unwrap()[0] as f64
        + 0.1
            * (to_vec(l.fg.clone().unwrap()).unwrap()[0] as f64
                + to_vec(l.bg.clone().unwrap()).unwrap()[0] as f64
                + 0.0005 * to_vec(l.cam_mean.clone()).unwrap()[0] as f64);
    assert!((total - parts).abs() < 1e-5 * parts.abs().max(1.0));
    let g_with = model.gradients(&l.total.backward()).unwrap();

    // Same batch without the contrastive terms: the l_fc4 gradient must change (it flows
    // through the FG/BG images and the encoder back to cam4).
    let out = model.forward(x.clone());
    let lc0 = LossConfig {
        contrastive_weight: 0.0,
        ..LossConfig::default()
    };
    let l0 = pbip_loss(&out, x.clone(), y, &cfg.k_list, &lc0, &fake_encoder).unwrap();
    let g_without = model.gradients(&l0.total.backward()).unwrap();
    assert_ne!(g_with["l_fc4.fc1.weight"], g_without["l_fc4.fc1.weight"]);

    // No label -> empty selection -> contrastive skipped, cam-mean term kept.
    let out = model.forward(x.clone());
    let yz: Tensor<2> = Tensor::zeros([2, 2], &device);
    let le = pbip_loss(&out, x, yz, &cfg.k_list, &lc, &fake_encoder).unwrap();
    assert!(le.pairs.is_empty() && le.fg.is_none() && le.bg.is_none());
    let t = to_vec(le.total).unwrap()[0];
    let e = to_vec(le.cls).unwrap()[0] + 0.1 * 0.0005 * to_vec(le.cam_mean).unwrap()[0];
    assert!((t - e).abs() < 1e-6);
}

#[test]
fn stochastic_depth_only_when_requested() {
    let (mut cfg, p) = small();
    cfg.backbone.drop_path_rate = 0.9;
    let device = Device::flex().autodiff();
    let model = ClassNet::init(&cfg, &p, 5, &device).unwrap();
    let x = image(&device, 4, 64);
    let a = to_vec(model.forward(x.clone()).cam[3].clone()).unwrap();
    let b = to_vec(model.forward(x.clone()).cam[3].clone()).unwrap();
    assert_eq!(a, b, "deterministic forward");
    let c = to_vec(model.forward_with(x, true).cam[3].clone()).unwrap();
    assert_ne!(a, c, "DropPath active in training");
}

#[test]
fn evaluation_path_gates_and_tta() {
    let (cfg, p) = small();
    let device = Device::flex();
    let model = ClassNet::init(&cfg, &p, 6, &device).unwrap().valid();
    let x = image(&device, 2, 64);
    let y: Tensor<2> = Tensor::from_data(
        TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
        &device,
    );
    let ev = evaluate(&model, x.clone(), &Gate::Labels(y), &EvalConfig::default()).unwrap();
    assert_eq!(ev.fused.dims(), [2, 2, 64, 64]);
    // Gated-out classes are exactly zero; where the present class is positive it wins.
    let f = to_host(ev.fused.clone()).unwrap();
    let plane = 64 * 64;
    assert!(
        f.data[plane..2 * plane].iter().all(|v| *v == 0.0),
        "sample 0, class 1 gated out"
    );
    assert!(
        f.data[2 * plane..3 * plane].iter().all(|v| *v == 0.0),
        "sample 1, class 0 gated out"
    );
    let fused_max = f.data.iter().cloned().fold(f32::MIN, f32::max);
    assert!(fused_max <= 1.0 + 1e-5 && fused_max > 0.3);
    let pred = pbip_model::util::int_to_vec(ev.pred).unwrap();
    for i in 0..plane {
        if f.data[3 * plane + i] > 0.0 {
            assert_eq!(pred[plane + i], 1);
        }
        if f.data[i] > 0.0 {
            assert_eq!(pred[i], 0);
        }
    }
    // TTA and the predicted gate run and keep shapes.
    let cfg_tta = EvalConfig {
        tta: true,
        ..EvalConfig::default()
    };
    let gate = Gate::Predicted {
        threshold: 0.5,
        merge: pbip_model::MergeMethod::Mean,
    };
    let ev = evaluate(&model, x, &gate, &cfg_tta).unwrap();
    assert_eq!(ev.pred.dims(), [2, 64, 64]);
    assert_eq!(ev.scales.len(), 4);
}

#[test]
fn safetensors_checkpoint_round_trip_with_metadata() {
    let (cfg, p) = small();
    let device = Device::flex();
    let model = ClassNet::init(&cfg, &p, 7, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("epoch".to_string(), "3".to_string());
    extra.insert(
        "class_order".to_string(),
        "[\"benign\",\"tumor\"]".to_string(),
    );
    model.save_safetensors(&path, &cfg, &extra).unwrap();
    // atomic write: only the final file is left in the folder
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ckpt.safetensors")]);
    let (back, cfg2, meta) = ClassNet::load_safetensors(&path, &device).unwrap();
    assert_eq!(cfg2, cfg);
    assert_eq!(meta["epoch"], "3");
    assert_eq!(meta["k_list"], "2,1");
    assert_eq!(meta["format"], "pbip-classnet");
    assert_eq!(back.prototypes_host(), p);
    assert_eq!(
        back.to_tensor_map().unwrap(),
        model.to_tensor_map().unwrap()
    );
    // the same file read as an upstream state dict (prototypes entry is not a parameter)
    let mut plain = pbip_weights::read_safetensors(&path).unwrap().0;
    plain.remove("prototypes");
    assert!(ClassNet::load_upstream(&plain, &cfg, &p, &device).is_ok());
    // a missing file is an error naming it
    let err =
        ClassNet::load_upstream_file(&dir.path().join("nope.pth"), &cfg, &p, &device).unwrap_err();
    assert!(err.to_string().contains("nope.pth"), "{err}");
}

//! Parity of the Swin/MedCLIP tower with the upstream PyTorch run (fixture README), plus autodiff.
//!
//! PBIP_PARITY_FIXTURE selects another fixture of the same layout (default: the shared mit_b0 seed 1).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use pbip_encoder::{MedClipVision, SwinConfig};
use pbip_weights::{HostTensor, TensorMap, read_pth, read_safetensors};

/// The PyTorch parity fixture's stem ([`pbip_testdata::parity_fixture_stem`]).
fn fixture_stem() -> String {
    pbip_testdata::parity_fixture_stem()
}

fn fixture_file(suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", fixture_stem()))
}

fn fixture_path() -> PathBuf {
    fixture_file("safetensors")
}

fn load() -> (TensorMap, BTreeMap<String, String>, SwinConfig) {
    let p = fixture_path();
    let (m, meta) = read_safetensors(&p).unwrap_or_else(|e| panic!("{e}"));
    let cfg = SwinConfig::from_json(meta.get("swin").expect("fixture has swin metadata")).unwrap();
    (m, meta, cfg)
}

fn to_burn<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = t.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
}

use pbip_testdata::rel_err;

fn check_features(model: &MedClipVision, m: &TensorMap, device: &Device, what: &str) {
    let x = to_burn::<4>(&m["input.image"], device);
    let y = model.try_forward(x).unwrap();
    let expect = &m["out.clip_features"];
    assert_eq!(y.dims().to_vec(), expect.shape, "{what}");
    let got = y.try_into_vec_as::<f32>().unwrap();
    let e = rel_err(&got, &expect.data);
    eprintln!("{what}: relative error {e:.3e}");
    assert!(e <= 1e-4, "{what}: relative error {e:.3e} > 1e-4");
}

#[test]
fn parity_clip_features_from_safetensors_and_pth() {
    let (m, _, cfg) = load();
    let device = Device::flex();
    assert_eq!(MedClipVision::detect_prefix(&m), Some("clip.vision_model."));
    let model = MedClipVision::from_tensor_map(&m, "clip.vision_model.", &cfg, &device).unwrap();
    check_features(&model, &m, &device, "safetensors");

    // the exported weights are exactly the fixture's tensors
    let exported = model.to_tensor_map("clip.vision_model.").unwrap();
    let fixture_clip: TensorMap = m
        .iter()
        .filter(|(k, _)| k.starts_with("clip.vision_model."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(exported, fixture_clip);

    // the same tower from the torch pickle of its state dict (prefix "")
    let vpth = fixture_file("vision.pth");
    if std::env::var_os("PBIP_PARITY_FIXTURE").is_none() || vpth.exists() {
        let sd = read_pth(&vpth).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(MedClipVision::detect_prefix(&sd), Some(""));
        let model = MedClipVision::from_tensor_map(&sd, "", &cfg, &device).unwrap();
        check_features(&model, &m, &device, "vision.pth");
    }
}

#[test]
fn parity_gradients_reach_the_input() {
    let (m, _, cfg) = load();
    let device = Device::flex().autodiff();
    let model = MedClipVision::from_tensor_map(&m, "clip.vision_model.", &cfg, &device)
        .unwrap()
        .frozen();
    let img = &m["input.image"];
    // one image is enough
    let one = HostTensor {
        shape: vec![1, 3, 224, 224],
        data: img.data[..3 * 224 * 224].to_vec(),
    };
    let x = to_burn::<4>(&one, &device).require_grad();
    let y = model.forward(x.clone());
    let grads = y.sum().backward();
    let g = x
        .grad(&grads)
        .expect("input gradient")
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_eq!(g.len(), 3 * 224 * 224);
    assert!(g.iter().all(|v| v.is_finite()));
    let nonzero = g.iter().filter(|v| **v != 0.0).count();
    assert!(
        nonzero > g.len() / 2,
        "only {nonzero} non-zero gradient entries"
    );
    // frozen: parameters get no gradient
    assert!(model.projection.weight.val().grad(&grads).is_none());
}

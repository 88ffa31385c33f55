//! The torch-written fixture checkpoints agree with the safetensors fixture written by the same run.

use std::path::PathBuf;

use pbip_weights::{TensorMap, read_pth, read_safetensors, read_tensors, strip_prefix};

fn fixture(name: &str) -> PathBuf {
    pbip_testdata::fixtures_dir().join(name)
}

fn assert_same(got: &TensorMap, reference: &TensorMap, what: &str) {
    assert!(!got.is_empty(), "{what}: no tensors");
    for (k, t) in got {
        let r = reference
            .get(k)
            .unwrap_or_else(|| panic!("{what}: {k} not in the safetensors fixture"));
        assert_eq!(t.shape, r.shape, "{what}: {k} shape");
        assert_eq!(t.data, r.data, "{what}: {k} values");
    }
}

#[test]
fn classnet_pth_matches_safetensors() {
    let (st, meta) = read_safetensors(&fixture("upstream-mit_b0-seed1.safetensors")).unwrap();
    assert_eq!(meta.get("backbone").map(String::as_str), Some("mit_b0"));
    let pth = read_pth(&fixture("upstream-mit_b0-seed1.classnet.pth")).unwrap();
    // {"cfg": None, "iter": 0, "model": state_dict}: only model.* tensors
    assert!(
        pth.keys().all(|k| k.starts_with("model.")),
        "{:?}",
        pth.keys().take(3).collect::<Vec<_>>()
    );
    let sd = strip_prefix(&pth, "model.");
    assert!(sd.contains_key("encoder.block1.0.attn.kv.weight"));
    assert_same(&sd, &st, "classnet");
    // every model weight of the fixture is in the checkpoint
    let n_model = st
        .keys()
        .filter(|k| {
            k.starts_with("encoder.") || k.starts_with("l_fc") || k.starts_with("logit_scale")
        })
        .count();
    assert_eq!(sd.len(), n_model);
}

#[test]
fn vision_pth_matches_safetensors() {
    let (st, _) = read_tensors(&fixture("upstream-mit_b0-seed1.safetensors")).unwrap();
    let clip = strip_prefix(&st, "clip.vision_model.");
    let pth = read_tensors(&fixture("upstream-mit_b0-seed1.vision.pth"))
        .unwrap()
        .0;
    assert!(pth.contains_key("projection_head.weight"));
    assert_eq!(pth.len(), clip.len());
    assert_same(&pth, &clip, "vision");
}

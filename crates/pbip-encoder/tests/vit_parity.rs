//! Parity of the ViT encoder with timm (fixtures made by `testdata/make_vit_fixtures.py`: random
//! timm models, their tokens and pooled features for several input sizes), loading the weights
//! from timm names and from Hugging Face names, plus export and autodiff.
//!
//! `PBIP_VIT_FIXTURE` selects other fixtures of the same layout: a file, a folder (every
//! `*.safetensors` in it) or several of them separated like `PATH`. Default:
//! `crates/pbip-encoder/tests/fixtures/`. Everything about the architecture comes from the
//! files' metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use pbip_encoder::{Vit, VitConfig, VitNames, VitPool};
use pbip_weights::{HostTensor, TensorMap, read_safetensors};

/// Allowed relative error (‖ours − timm‖ / ‖timm‖).
const TOL: f64 = 1e-4;

fn fixture_files() -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = match std::env::var_os("PBIP_VIT_FIXTURE") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![pbip_testdata::crate_dir().join("tests/fixtures")],
    };
    let mut files = Vec::new();
    for r in roots {
        if r.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&r)
                .unwrap_or_else(|e| panic!("{}: {e}", r.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(r);
        }
    }
    assert!(!files.is_empty(), "no ViT fixtures found");
    files
}

struct Fixture {
    name: String,
    map: TensorMap,
    cfg: VitConfig,
    inputs: Vec<String>,
    /// `timm.` plus the HF prefixes the file has.
    weight_sets: Vec<String>,
}

fn load_fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for path in fixture_files() {
        let (map, meta) = read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"));
        let Some(vit) = meta.get("vit") else {
            // other fixtures may share a folder
            eprintln!("{}: no `vit` metadata, skipped", path.display());
            continue;
        };
        let cfg = VitConfig::from_json(vit).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let inputs: Vec<String> = serde_json::from_str(meta.get("inputs").expect("inputs"))
            .expect("inputs is a JSON list");
        let hf: BTreeMap<String, String> = meta
            .get("hf_prefixes")
            .map(|s| serde_json::from_str(s).expect("hf_prefixes is a JSON object"))
            .unwrap_or_default();
        let mut weight_sets = vec!["timm.".to_string()];
        weight_sets.extend(hf.into_keys());
        out.push(Fixture {
            name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            map,
            cfg,
            inputs,
            weight_sets,
        });
    }
    assert!(!out.is_empty(), "no ViT fixtures with metadata");
    out
}

fn to_burn<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = t.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
}

use pbip_testdata::rel_err;

/// Compares `got` with fixture tensor `key`, recording the error and any failure.
fn compare<const D: usize>(
    got: Tensor<D>,
    m: &TensorMap,
    key: &str,
    what: &str,
    worst: &mut f64,
    failures: &mut Vec<String>,
) {
    let want = &m[key];
    let shape = got.dims().to_vec();
    if shape != want.shape {
        failures.push(format!("{what} {key}: shape {shape:?} != {:?}", want.shape));
        return;
    }
    let got = got.try_into_vec_as::<f32>().expect("read back");
    let e = rel_err(&got, &want.data);
    eprintln!("  {what:<28} {key:<30} rel. error {e:.2e}");
    *worst = worst.max(e);
    if e.is_nan() || e > TOL {
        failures.push(format!("{what} {key}: relative error {e:.3e} > {TOL:e}"));
    }
}

#[test]
fn vit_parity_tokens_and_pooled_from_timm_and_hf_names() {
    let device = Device::flex();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for fx in load_fixtures() {
        let m = &fx.map;
        for set in &fx.weight_sets {
            let what = format!("{} [{set}]", fx.name);
            eprintln!("{what}");
            // the naming scheme is recognised under the prefix
            let sub = pbip_weights::strip_prefix(m, set);
            let want_names = if set == "timm." {
                VitNames::Timm
            } else {
                VitNames::HuggingFace
            };
            assert_eq!(Vit::detect_prefix(&sub), Some(("", want_names)), "{what}");
            let model = Vit::from_tensor_map(m, set, &fx.cfg, &device)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut worst = 0.0f64;
            for tag in &fx.inputs {
                let x = to_burn::<4>(&m[&format!("input.{tag}")], &device);
                let [_, _, h, w] = x.dims();
                let tokens = model
                    .try_forward_features(x)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let key = |k: &str| format!("out.{tag}.{k}");
                compare(
                    tokens.clone(),
                    m,
                    &key("tokens"),
                    &what,
                    &mut worst,
                    &mut failures,
                );
                let pooled = model.pool(tokens.clone(), fx.cfg.global_pool);
                compare(pooled, m, &key("pooled"), &what, &mut worst, &mut failures);
                for (k, pool) in [
                    ("pooled_avg", VitPool::Avg),
                    ("pooled_token_avg", VitPool::TokenAvg),
                ] {
                    if m.contains_key(&key(k)) {
                        let p = model.pool(tokens.clone(), pool);
                        compare(p, m, &key(k), &what, &mut worst, &mut failures);
                    }
                }
                if m.contains_key(&key("pos_embed")) {
                    let p = fx.cfg.patch_size;
                    let pos = model.pos_embed_for(h / p, w / p);
                    compare(pos, m, &key("pos_embed"), &what, &mut worst, &mut failures);
                }
            }
            summary.push(format!("{what}: max relative error {worst:.2e}"));
        }
    }
    for s in &summary {
        eprintln!("{s}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn vit_parity_forward_equals_pooled_tokens_and_rejects_bad_input() {
    let device = Device::flex();
    for fx in load_fixtures() {
        let m = &fx.map;
        let model = Vit::from_tensor_map(m, "timm.", &fx.cfg, &device).expect("load");
        let tag = &fx.inputs[0];
        let x = to_burn::<4>(&m[&format!("input.{tag}")], &device);
        let [b, c, h, w] = x.dims();
        let y = model.try_forward(x).expect("forward");
        assert_eq!(y.dims(), [b, fx.cfg.output_dim()], "{}", fx.name);
        let want = &m[&format!("out.{tag}.pooled")];
        let e = rel_err(&y.try_into_vec_as::<f32>().expect("read"), &want.data);
        assert!(e <= TOL, "{}: forward vs timm pooled {e:.3e}", fx.name);
        // timm refuses sizes that are not multiples of the patch size, and other channel counts
        let p = fx.cfg.patch_size;
        let bad = [
            [b, c, h + 1, w],
            [b, c, h, w - 1],
            [b, c + 1, h, w],
            [0, c, h, w],
        ];
        for dims in bad {
            assert!(model.check_input(dims).is_err(), "{}: {dims:?}", fx.name);
        }
        assert!(model.check_input([1, c, p, 2 * p]).is_ok());
    }
}

#[test]
fn vit_parity_export_is_the_timm_state_dict() {
    let device = Device::flex();
    for fx in load_fixtures() {
        let m = &fx.map;
        let timm: TensorMap = pbip_weights::strip_prefix(m, "timm.")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("head."))
            .collect();
        for set in &fx.weight_sets {
            let model = Vit::from_tensor_map(m, set, &fx.cfg, &device).expect("load");
            let exported = model.to_tensor_map("").expect("export");
            // HF names are converted exactly (the class position is folded by one f32 addition,
            // the same one the fixture script made)
            assert_eq!(exported, timm, "{} [{set}]", fx.name);
        }
    }
}

#[test]
fn vit_parity_gradients_reach_the_input() {
    let device = Device::flex().autodiff();
    let fx = load_fixtures().into_iter().next().expect("a fixture");
    let m = &fx.map;
    let model = Vit::from_tensor_map(m, "timm.", &fx.cfg, &device)
        .expect("load")
        .frozen();
    // a non-native size, so that the resized position embedding is on the path
    let tag = fx
        .inputs
        .iter()
        .find(|t| m.contains_key(&format!("out.{t}.pos_embed")))
        .unwrap_or(&fx.inputs[0]);
    let img = &m[&format!("input.{tag}")];
    let one = HostTensor {
        shape: [&[1][..], &img.shape[1..]].concat(),
        data: img.data[..img.data.len() / img.shape[0]].to_vec(),
    };
    let x = to_burn::<4>(&one, &device).require_grad();
    let y = model.forward(x.clone());
    let grads = y.sum().backward();
    let g = x
        .grad(&grads)
        .expect("input gradient")
        .try_into_vec_as::<f32>()
        .expect("read");
    assert_eq!(g.len(), one.data.len());
    assert!(g.iter().all(|v| v.is_finite()));
    let nonzero = g.iter().filter(|v| **v != 0.0).count();
    assert!(
        nonzero > g.len() / 2,
        "only {nonzero} of {} gradient entries are non-zero",
        g.len()
    );
    // frozen: the encoder's parameters get no gradient
    assert!(model.pos_embed.val().grad(&grads).is_none());
    assert!(model.patch_embed.weight.val().grad(&grads).is_none());
}

//! Our permutohedral dense CRF against pydensecrf (Krähenbühl's C++), fixture from
//! `testdata/make_crf_expected.py`. Same algorithm, so the marginals agree to float rounding (measured max |dQ| 1.2e-7; we require 1e-5).

use pbip_post::crf::{CrfParams, dense_crf, dense_crf_bruteforce};
use serde_json::Value;

fn fixture() -> Value {
    let path = pbip_testdata::crate_dir().join("testdata/crf_expected.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn matches_pydensecrf() {
    let fx = fixture();
    let (w, h, c) = (
        fx["width"].as_u64().unwrap() as usize,
        fx["height"].as_u64().unwrap() as usize,
        fx["num_classes"].as_u64().unwrap() as usize,
    );
    let p = &fx["params"];
    let g = |k: &str| p[k].as_f64().unwrap() as f32;
    let params = CrfParams {
        sxy_gaussian: g("sxy_gaussian"),
        compat_gaussian: g("compat_gaussian"),
        sxy_bilateral: g("sxy_bilateral"),
        srgb: g("srgb"),
        compat_bilateral: g("compat_bilateral"),
        n_iter: p["n_iter"].as_u64().unwrap() as usize,
    };
    let rgb: Vec<u8> = fx["rgb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    let probs = f32s(&fx["probs"]);
    let want_q = f32s(&fx["marginals"]);
    let want_l: Vec<u8> = fx["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    assert!(
        fx["unary_argmax_changed"].as_u64().unwrap() > 20,
        "fixture CRF should change labels"
    );

    let out = dense_crf(&probs, c, w, h, &rgb, &params).unwrap();
    let max_diff = out
        .marginals
        .iter()
        .zip(&want_q)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let eq = out
        .labels
        .iter()
        .zip(&want_l)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "vs pydensecrf: max |dQ| = {max_diff}, labels equal {eq}/{}",
        w * h
    );
    assert!(max_diff < 1e-5, "max marginal diff {max_diff}");
    assert!(eq * 1000 >= 999 * w * h, "labels equal {eq}/{}", w * h);

    // The exact-Gaussian reference is close too (the lattice is an approximation).
    let bf = dense_crf_bruteforce(&probs, c, w, h, &rgb, &params).unwrap();
    let eq_bf = bf
        .labels
        .iter()
        .zip(&want_l)
        .filter(|(a, b)| a == b)
        .count();
    let mad: f32 = bf
        .marginals
        .iter()
        .zip(&want_q)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / want_q.len() as f32;
    eprintln!(
        "bruteforce vs pydensecrf: labels equal {eq_bf}/{}, marginal MAD {mad}",
        w * h
    );
    assert!(eq_bf * 100 >= 98 * w * h);
    assert!(mad < 0.03);
}

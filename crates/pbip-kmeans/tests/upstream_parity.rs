//! Parity with numpy's legacy RNG and with a Python re-implementation of upstream's
//! `CosineSimilarityKMeans` (values written by testdata/make_expected.py).

use pbip_kmeans::numpy_legacy::LegacyRandomState;
use pbip_kmeans::{InitMethod, KMeansConfig, fit};
use serde_json::Value;

fn load() -> Value {
    let path = pbip_testdata::crate_dir().join("testdata/expected_kmeans.json");
    let text = std::fs::read_to_string(path).expect("read expected_kmeans.json");
    serde_json::from_str(&text).expect("parse expected_kmeans.json")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Exact f64 values from their hex bit patterns.
fn bits(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| f64::from_bits(u64::from_str_radix(x.as_str().unwrap(), 16).unwrap()))
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn numpy_legacy_choice_permutation_and_samples() {
    let doc = load();
    let cases = doc["rng"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let n = c["n"].as_u64().unwrap() as usize;
        let k = c["k"].as_u64().unwrap() as usize;
        let seed = u32::try_from(c["seed"].as_u64().unwrap()).unwrap();
        let got = LegacyRandomState::new(seed)
            .choice_without_replacement(n, k)
            .unwrap();
        assert_eq!(got, usizes(&c["choice"]), "choice n={n} k={k} seed={seed}");
        let perm = LegacyRandomState::new(seed).permutation(n);
        let want = usizes(&c["permutation"]);
        assert_eq!(
            &perm[..want.len()],
            &want[..],
            "permutation n={n} seed={seed}"
        );
        let mut st = LegacyRandomState::new(seed);
        for (i, w) in bits(&c["random_sample_bits"]).into_iter().enumerate() {
            assert_eq!(st.random_sample(), w, "random_sample #{i} seed={seed}");
        }
    }
    let mut st = LegacyRandomState::new(42);
    for (i, want) in doc["consecutive_choice_seed42_n50_k4"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(
            st.choice_without_replacement(50, 4).unwrap(),
            usizes(want),
            "call {i}"
        );
    }
    for a in doc["array_seeds"].as_array().unwrap() {
        let key: Vec<u32> = a["key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect();
        let mut st = LegacyRandomState::from_array(&key);
        for w in bits(&a["random_sample_bits"]) {
            assert_eq!(st.random_sample(), w, "array seed of length {}", key.len());
        }
    }
}

#[test]
fn matches_upstream_cosine_kmeans() {
    let doc = load();
    let cases = doc["kmeans"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let n = c["n"].as_u64().unwrap() as usize;
        let dim = c["dim"].as_u64().unwrap() as usize;
        let k = c["k"].as_u64().unwrap() as usize;
        let cfg = KMeansConfig {
            k,
            seed: c["seed"].as_u64().unwrap(),
            init: InitMethod::NumpyLegacy,
            ..KMeansConfig::default()
        };
        let r = fit(&f64s(&c["features"]), n, dim, &cfg).unwrap();
        assert_eq!(r.init_rows, usizes(&c["init_idx"]), "{name}: init rows");
        assert_eq!(
            r.iterations,
            c["iterations"].as_u64().unwrap() as usize,
            "{name}: iterations"
        );
        assert_eq!(
            r.converged,
            c["converged"].as_bool().unwrap(),
            "{name}: converged"
        );
        assert_eq!(r.assignment, usizes(&c["labels"]), "{name}: assignment");
        let want = f64s(&c["centres"]);
        assert_eq!(r.centres.len(), want.len());
        for (i, (g, w)) in r.centres.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6,
                "{name}: centre value {i}: {g} vs {w}"
            );
        }
        for j in 0..k {
            let norm: f64 = r.centre(j).iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-12, "{name}: centre {j} norm {norm}");
        }
        assert_eq!(r.cluster_sizes.iter().sum::<usize>(), n);
    }
}

//! Compares pbip-metrics with scikit-learn numbers written by testdata/make_expected.py.

use pbip_metrics::{
    ConfusionMatrix, MetricsReport, PatchAggregator, roc_auc, roc_auc_multilabel, roc_auc_ovr,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn load() -> Value {
    let path = pbip_testdata::crate_dir().join("testdata/expected_metrics.json");
    let text = std::fs::read_to_string(path).expect("read expected_metrics.json");
    serde_json::from_str(&text).expect("parse expected_metrics.json")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u8::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn assert_close(what: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() <= TOL, "{what}: got {g}, want {w}"),
        (g, _) => panic!("{what}: got {g:?}, want {want}"),
    }
}

#[test]
fn segmentation_matches_sklearn() {
    let doc = load();
    let cases = doc["segmentation"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut saw_absent = false;
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let n = case["num_classes"].as_u64().unwrap() as usize;
        let gt = u8s(&case["gt"]);
        let pred = u8s(&case["pred"]);
        assert!(
            gt.contains(&255),
            "seed {seed}: test data should contain ignored pixels"
        );
        let m = ConfusionMatrix::from_labels(n, &gt, &pred).unwrap();
        for g in 0..n {
            for p in 0..n {
                assert_eq!(
                    m.get(g, p),
                    case["confusion"][g][p].as_u64().unwrap(),
                    "seed {seed}: cm[{g}][{p}]"
                );
            }
        }
        let s = m.summary();
        let pc = &s.per_class;
        for (name, vals) in [
            ("iou", &pc.iou),
            ("dice", &pc.dice),
            ("precision", &pc.precision),
            ("recall", &pc.recall),
            ("f1", &pc.f1),
        ] {
            for c in 0..n {
                let want = &case["per_class"][name][c];
                if want.is_null() {
                    saw_absent = true;
                }
                assert_close(&format!("seed {seed} {name}[{c}]"), vals[c], want);
            }
        }
        for (name, mac, wei) in [
            ("iou", s.macro_avg.iou, s.weighted_avg.iou),
            ("dice", s.macro_avg.dice, s.weighted_avg.dice),
            ("precision", s.macro_avg.precision, s.weighted_avg.precision),
            ("recall", s.macro_avg.recall, s.weighted_avg.recall),
            ("f1", s.macro_avg.f1, s.weighted_avg.f1),
        ] {
            assert_close(
                &format!("seed {seed} macro {name}"),
                mac,
                &case["macro_excluded"][name],
            );
            assert_close(
                &format!("seed {seed} weighted {name}"),
                wei,
                &case["weighted"][name],
            );
        }
        assert_close(
            &format!("seed {seed} miou"),
            s.miou,
            &case["macro_excluded"]["iou"],
        );
        assert_close(&format!("seed {seed} fwiou"), s.fwiou, &case["fwiou"]);
        assert_close(
            &format!("seed {seed} pixel accuracy"),
            s.pixel_accuracy,
            &case["pixel_accuracy"],
        );

        // Splitting the map into "patches" (rows) and merging gives the same global matrix.
        let w = case["width"].as_u64().unwrap() as usize;
        let mut agg = PatchAggregator::new(n).unwrap();
        for (g_row, p_row) in gt.chunks(w).zip(pred.chunks(w)) {
            agg.add_patch(g_row, p_row).unwrap();
        }
        assert_eq!(agg.global(), &m, "seed {seed}: merged patches");
        let names: Vec<String> = (0..n).map(|c| format!("class{c}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let report = MetricsReport::from_patches(&agg, &names).unwrap();
        assert_eq!(report.miou, s.miou);
        assert_eq!(report.num_patches, Some(gt.len() / w));
    }
    assert!(saw_absent, "test data should contain an absent class");
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(f).collect()
}

#[test]
fn roc_auc_matches_sklearn() {
    let doc = load();
    for (i, case) in doc["auc"].as_array().unwrap().iter().enumerate() {
        let got = roc_auc(&f64s(&case["scores"]), &bools(&case["labels"])).unwrap();
        let want = f(&case["auc"]);
        assert!(
            (got - want).abs() <= TOL,
            "auc case {i}: got {got}, want {want}"
        );
    }
    let ml = &doc["multilabel_auc"];
    let k = ml["n_labels"].as_u64().unwrap() as usize;
    let got = roc_auc_multilabel(&f64s(&ml["scores"]), &bools(&ml["labels"]), k).unwrap();
    assert_close("multilabel macro", got.macro_auc, &ml["macro"]);
    for j in 0..k {
        assert_close(
            &format!("multilabel label {j}"),
            got.per_label[j],
            &ml["per_label"][j],
        );
    }
    let ovr = &doc["ovr_auc"];
    let c = ovr["n_classes"].as_u64().unwrap() as usize;
    let classes: Vec<usize> = ovr["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let got = roc_auc_ovr(&f64s(&ovr["scores"]), &classes, c).unwrap();
    assert_close("ovr macro", got.macro_auc, &ovr["macro"]);
}

//! Morphology / components / EDT against scikit-image and scipy outputs written by
//! `testdata/make_expected.py` (exact equality).

use pbip_post::morph::{self, Connectivity, Footprint};
use serde_json::Value;

struct Case {
    name: String,
    w: usize,
    h: usize,
    v: Value,
}

impl Case {
    fn ints(&self, key: &str) -> Vec<i64> {
        let arr = self.v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: missing {key}", self.name));
        let out: Vec<i64> = arr.iter().map(|x| x.as_i64().unwrap_or(i64::MIN)).collect();
        assert_eq!(
            out.len(),
            self.w * self.h,
            "{}: {key} has wrong length",
            self.name
        );
        out
    }
    fn mask(&self, key: &str) -> Vec<bool> {
        self.ints(key).iter().map(|&x| x != 0).collect()
    }
}

fn cases() -> Vec<Case> {
    let path = pbip_testdata::crate_dir().join("testdata/morph_expected.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let cases = v["cases"].as_array().cloned().unwrap_or_default();
    assert!(cases.len() >= 3);
    cases
        .into_iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap_or("?").to_string(),
            w: c["width"].as_u64().unwrap_or(0) as usize,
            h: c["height"].as_u64().unwrap_or(0) as usize,
            v: c,
        })
        .collect()
}

fn diff_count(a: &[bool], b: &[bool]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn binary_closing_opening_match_skimage() {
    for c in cases() {
        let m = c.mask("mask");
        for (key, fp) in [
            ("sq3", Footprint::Square(3)),
            ("sq5", Footprint::Square(5)),
            ("disk2", Footprint::Disk(2)),
        ] {
            let got = morph::binary_closing(&m, c.w, c.h, fp).unwrap();
            let want = c.mask(&format!("closing_{key}"));
            assert_eq!(diff_count(&got, &want), 0, "{} closing {key}", c.name);
            let got = morph::binary_opening(&m, c.w, c.h, fp).unwrap();
            let want = c.mask(&format!("opening_{key}"));
            assert_eq!(diff_count(&got, &want), 0, "{} opening {key}", c.name);
            // The operations did something on these masks.
            assert_ne!(got, m, "{} opening {key} is identity", c.name);
        }
    }
}

#[test]
fn labels_match_skimage_label() {
    for c in cases() {
        let m = c.mask("mask");
        for (key, conn) in [
            ("label_conn1", Connectivity::Four),
            ("label_conn2", Connectivity::Eight),
        ] {
            let (got, n) = morph::label_mask(&m, c.w, c.h, conn).unwrap();
            let want = c.ints(key);
            let got: Vec<i64> = got.iter().map(|&x| x as i64).collect();
            assert_eq!(got, want, "{} {key}", c.name);
            assert_eq!(n as i64, want.iter().copied().max().unwrap_or(0));
        }
        let multi: Vec<u8> = c.ints("multi").iter().map(|&x| x as u8).collect();
        for (key, conn) in [
            ("multi_label_conn1", Connectivity::Four),
            ("multi_label_conn2", Connectivity::Eight),
        ] {
            let (got, _) = morph::label_components(&multi, c.w, c.h, Some(0), conn).unwrap();
            let got: Vec<i64> = got.iter().map(|&x| x as i64).collect();
            assert_eq!(got, c.ints(key), "{} {key}", c.name);
        }
    }
}

#[test]
fn remove_small_objects_matches_skimage() {
    for c in cases() {
        let m = c.mask("mask");
        for (key, conn) in [
            ("rso_min10_conn1", Connectivity::Four),
            ("rso_min10_conn2", Connectivity::Eight),
        ] {
            let got = morph::remove_small_objects(&m, c.w, c.h, 10, conn).unwrap();
            let want = c.mask(key);
            assert_eq!(diff_count(&got, &want), 0, "{} {key}", c.name);
            assert_ne!(want, m, "{} {key}: nothing removed, test is weak", c.name);
        }
    }
}

#[test]
fn edt_matches_scipy() {
    for c in cases() {
        let m = c.mask("mask");
        let want: Vec<f64> = c.v["edt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect();
        let got = morph::distance_transform_edt(&m, c.w, c.h).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{} edt at {i}", c.name);
        }
        assert!(want.iter().any(|&x| x > 2.0));
    }
}

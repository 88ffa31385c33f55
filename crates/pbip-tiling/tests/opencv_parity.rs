//! Exact parity with OpenCV (outputs of `testdata/make_expected.py`).

mod common;

use common::{load_gz, testdata};

use pbip_tiling::cv;
use pbip_tiling::{HsvParams, TissueMethod, tissue_mask, tissue_mask_hsv};

struct Case {
    name: String,
    width: u32,
    height: u32,
    otsu_threshold: u8,
    files: serde_json::Map<String, serde_json::Value>,
}

impl Case {
    fn file(&self, key: &str) -> Vec<u8> {
        let f = self.files[key].as_str().unwrap_or_else(|| panic!("{key}"));
        load_gz(f)
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(testdata().join("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let imgs = v["images"].as_object().expect("images");
    assert!(imgs.len() >= 4);
    imgs.iter()
        .map(|(name, e)| Case {
            name: name.clone(),
            width: e["width"].as_u64().expect("width") as u32,
            height: e["height"].as_u64().expect("height") as u32,
            otsu_threshold: e["otsu_threshold"].as_f64().expect("otsu") as u8,
            files: e["files"].as_object().expect("files").clone(),
        })
        .collect()
}

fn assert_same(case: &str, what: &str, got: &[u8], want: &[u8], width: u32, channels: usize) {
    assert_eq!(got.len(), want.len(), "{case} {what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = bad.first() {
        let px = i / channels;
        panic!(
            "{case} {what}: {} of {} values differ; first at pixel (x={}, y={}) channel {}: got {} want {}",
            bad.len(),
            got.len(),
            px % width as usize,
            px / width as usize,
            i % channels,
            got[i],
            want[i]
        );
    }
}

#[test]
fn hsv_conversion_matches_opencv_exactly() {
    for c in cases() {
        let rgb = c.file("rgb");
        let hsv = cv::rgb_to_hsv(c.width, c.height, &rgb).expect("hsv");
        assert_same(&c.name, "hsv", &hsv, &c.file("hsv"), c.width, 3);
    }
}

#[test]
fn in_range_matches_opencv_exactly() {
    for c in cases() {
        let hsv = c.file("hsv");
        let m = cv::in_range3(c.width, c.height, &hsv, [90, 8, 103], [180, 255, 255], 255)
            .expect("inRange");
        assert_same(&c.name, "inRange", &m, &c.file("inrange"), c.width, 1);
    }
}

#[test]
fn closing_matches_opencv_exactly_for_even_and_odd_kernels() {
    for c in cases() {
        let inr = c.file("inrange");
        for k in 2..=6u32 {
            let got = cv::close_square(c.width, c.height, &inr, k).expect("close");
            assert_same(
                &c.name,
                &format!("close{k}"),
                &got,
                &c.file(&format!("close{k}")),
                c.width,
                1,
            );
        }
    }
}

#[test]
fn hsv_tissue_mask_is_opencv_close4_as_0_1() {
    for c in cases() {
        let rgb = c.file("rgb");
        let got = tissue_mask_hsv(c.width, c.height, &rgb, &HsvParams::default()).expect("mask");
        let want: Vec<u8> = c
            .file("close4")
            .iter()
            .map(|&v| u8::from(v == 255))
            .collect();
        assert!(got.iter().all(|&v| v <= 1));
        assert_same(&c.name, "tissue_mask_hsv", &got, &want, c.width, 1);
    }
}

#[test]
fn median_blur_otsu_and_threshold_match_opencv() {
    for c in cases() {
        let hsv = c.file("hsv");
        let s: Vec<u8> = hsv.chunks_exact(3).map(|p| p[1]).collect();
        let med = cv::median_blur(c.width, c.height, &s, 7).expect("median");
        assert_same(&c.name, "medianBlur7", &med, &c.file("smed7"), c.width, 1);
        assert_eq!(
            cv::otsu_threshold(&med),
            c.otsu_threshold,
            "{} otsu threshold",
            c.name
        );
        let otsu = cv::threshold_binary(&med, c.otsu_threshold, 255);
        assert_same(&c.name, "otsu", &otsu, &c.file("otsu"), c.width, 1);
        let st = cv::threshold_binary(&med, 8, 255);
        assert_same(&c.name, "sthresh8", &st, &c.file("sthresh8"), c.width, 1);
        // full methods: OpenCV mask then OpenCV-parity closing
        let rgb = c.file("rgb");
        let m = tissue_mask(
            c.width,
            c.height,
            &rgb,
            &TissueMethod::Otsu {
                mthresh: 7,
                close: 0,
            },
        )
        .expect("otsu mask");
        let want: Vec<u8> = c.file("otsu").iter().map(|&v| u8::from(v != 0)).collect();
        assert_same(&c.name, "otsu method", &m, &want, c.width, 1);
        let m = tissue_mask(
            c.width,
            c.height,
            &rgb,
            &TissueMethod::Threshold {
                mthresh: 7,
                sthresh: 8,
                close: 0,
            },
        )
        .expect("threshold mask");
        let want: Vec<u8> = c
            .file("sthresh8")
            .iter()
            .map(|&v| u8::from(v != 0))
            .collect();
        assert_same(&c.name, "threshold method", &m, &want, c.width, 1);
    }
}

#[test]
fn bad_buffers_are_errors() {
    assert!(cv::rgb_to_hsv(10, 10, &[0u8; 299]).is_err());
    assert!(tissue_mask_hsv(4, 4, &[0u8; 47], &HsvParams::default()).is_err());
    assert!(cv::median_blur(4, 4, &[0u8; 16], 4).is_err());
    assert!(cv::close_square(4, 4, &[0u8; 15], 4).is_err());
    let e = cv::rgb_to_hsv(10, 10, &[0u8; 299])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("299") && e.contains("300"), "{e}");
}

#[test]
fn components_match_opencv_connected_components_with_stats() {
    let text = std::fs::read_to_string(testdata().join("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for c in cases() {
        let want = &v["images"][&c.name]["components_close4"];
        let close4 = c.file("close4");
        for (key, fg, eight) in [("fg8", true, true), ("bg4", false, false)] {
            let l = pbip_tiling::label_components(c.width, c.height, &close4, fg, eight)
                .expect("labels");
            let mut got: Vec<Vec<u64>> = (0..l.len())
                .map(|i| {
                    let b = l.bboxes[i];
                    vec![
                        l.areas_px[i],
                        u64::from(b.x_min),
                        u64::from(b.y_min),
                        u64::from(b.x_max - b.x_min + 1),
                        u64::from(b.y_max - b.y_min + 1),
                    ]
                })
                .collect();
            got.sort();
            let want: Vec<Vec<u64>> = want[key]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    r.as_array()
                        .expect("row")
                        .iter()
                        .map(|x| x.as_u64().expect("u64"))
                        .collect()
                })
                .collect();
            assert_eq!(got, want, "{} {key}", c.name);
        }
    }
}

//! Parity with hs2p 6.1.0 itself (`detect_contours` + `generate_tiles`, run by
//! `testdata/make_expected.py`) and with OpenCV's contour areas.

mod common;

use common::{load_gz, testdata};

use pbip_tiling::{SlideLevels, TilingParams, contour_areas, label_components, tile_from_mask};

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(testdata().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("json")
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn contour_areas_match_opencv() {
    let v = expected();
    let mut checked = 0;
    for (name, e) in v["images"].as_object().expect("images") {
        let w = e["width"].as_u64().expect("w") as u32;
        let h = e["height"].as_u64().expect("h") as u32;
        for key in ["close4", "inrange"] {
            let mask = load_gz(e["files"][key].as_str().expect("file"));
            let l = label_components(w, h, &mask, true, true).expect("labels");
            let areas = contour_areas(w, h, &l.labels, l.len());
            assert_eq!(areas, l.contour_areas_px);
            let mut got: Vec<Vec<f64>> = (0..l.len())
                .map(|i| {
                    let b = l.bboxes[i];
                    vec![
                        f64::from(b.x_min),
                        f64::from(b.y_min),
                        f64::from(b.x_max - b.x_min + 1),
                        f64::from(b.y_max - b.y_min + 1),
                        areas[i],
                    ]
                })
                .collect();
            got.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let want: Vec<Vec<f64>> = e["contour_areas"][key]
                .as_array()
                .expect("rows")
                .iter()
                .map(f64s)
                .collect();
            assert_eq!(got, want, "{name} {key}");
            checked += want.len();
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn tile_grid_matches_hs2p() {
    let v = expected();
    let ds = f64s(&v["grid_level_downsamples"]);
    let settings = v["grid_settings"].as_object().expect("settings");
    let mut checked = 0;
    for (name, e) in v["images"].as_object().expect("images") {
        let w = e["width"].as_u64().expect("w") as u32;
        let h = e["height"].as_u64().expect("h") as u32;
        let mask = load_gz(e["files"]["close4"].as_str().expect("file"));
        for (key, st) in settings {
            let want = &e["hs2p_grid"][key];
            let extra: Vec<u64> = match st.get("extra_px") {
                Some(v) => f64s(v).iter().map(|&v| v as u64).collect(),
                None => vec![0, 0],
            };
            let slide = SlideLevels {
                dimensions_px: [u64::from(w) * 64 + extra[0], u64::from(h) * 64 + extra[1]],
                level_downsamples: ds.clone(),
                base_spacing_um: st["base"].as_f64().expect("base"),
            };
            let params = TilingParams {
                requested_tile_size_px: st["tile"].as_u64().expect("tile") as u32,
                requested_spacing_um: st["spacing"].as_f64().expect("spacing"),
                overlap: st["overlap"].as_f64().expect("overlap"),
                min_tissue_fraction: st["min_frac"].as_f64().expect("min_frac"),
                ..TilingParams::default()
            };
            let t = tile_from_mask(&slide, w, h, &mask, &params).expect("tiling");
            let ctx = format!("{name} {key}");
            assert_eq!(
                t.components.areas_px.len() as u64,
                want["n_contours"].as_u64().expect("n"),
                "{ctx}: kept components"
            );
            assert_eq!(
                u64::from(t.plan.read_level),
                want["read_level"].as_u64().expect("lvl"),
                "{ctx}"
            );
            assert_eq!(
                u64::from(t.plan.read_tile_size_px),
                want["read_tile_size_px"].as_u64().expect("read"),
                "{ctx}"
            );
            assert_eq!(
                u64::from(t.plan.tile_size_lv0),
                want["tile_size_lv0"].as_u64().expect("lv0"),
                "{ctx}"
            );
            let wx: Vec<i64> = f64s(&want["x"]).iter().map(|&v| v as i64).collect();
            let wy: Vec<i64> = f64s(&want["y"]).iter().map(|&v| v as i64).collect();
            assert_eq!(t.coordinates.x, wx, "{ctx}: x");
            assert_eq!(t.coordinates.y, wy, "{ctx}: y");
            let got_f: Vec<f32> = t
                .coordinates
                .tissue_fraction
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|&f| f as f32)
                .collect();
            let want_f: Vec<f32> = f64s(&want["tissue_fractions"])
                .iter()
                .map(|&f| f as f32)
                .collect();
            assert_eq!(got_f, want_f, "{ctx}: tissue fractions");
            checked += wx.len();
        }
    }
    assert!(checked > 1000, "{checked}");
}

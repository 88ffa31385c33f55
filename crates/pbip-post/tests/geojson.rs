//! GeoJSON export: parses, rings closed, and an even-odd rasterisation of the polygons gives the mask back.

use pbip_post::export::{ClassInfo, label_map_to_geojson, write_geojson};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Random blobby label map: smoothed noise thresholded into classes 0..c and 255 background, plus
/// salt noise (single pixels, diagonal contacts, holes).
fn blobby(w: usize, h: usize, c: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut layers = Vec::new();
    for _ in 0..c + 1 {
        let noise: Vec<f32> = (0..w * h).map(|_| rng.random_range(0.0..1.0)).collect();
        // box blur radius 3, twice
        let mut a = noise;
        for _ in 0..2 {
            let mut b = vec![0f32; w * h];
            for y in 0..h {
                for x in 0..w {
                    let (mut s, mut n) = (0f32, 0f32);
                    for dy in -3i32..=3 {
                        for dx in -3i32..=3 {
                            let (xx, yy) = (x as i32 + dx, y as i32 + dy);
                            if xx >= 0 && yy >= 0 && (xx as usize) < w && (yy as usize) < h {
                                s += a[yy as usize * w + xx as usize];
                                n += 1.0;
                            }
                        }
                    }
                    b[y * w + x] = s / n;
                }
            }
            a = b;
        }
        layers.push(a);
    }
    (0..w * h)
        .map(|i| {
            if rng.random_range(0.0..1.0f32) < 0.03 {
                return rng.random_range(0..=c) as u8;
            }
            let best = (0..=c)
                .max_by(|&a, &b| layers[a][i].total_cmp(&layers[b][i]))
                .unwrap_or(0);
            if best == c { 255 } else { best as u8 }
        })
        .collect()
}

fn rings_of(geom: &Value) -> Vec<Vec<(f64, f64)>> {
    let polys: Vec<&Value> = match geom["type"].as_str() {
        Some("Polygon") => vec![&geom["coordinates"]],
        Some("MultiPolygon") => geom["coordinates"].as_array().unwrap().iter().collect(),
        t => panic!("unexpected geometry type {t:?}"),
    };
    let mut rings = Vec::new();
    for p in polys {
        for r in p.as_array().unwrap() {
            let pts: Vec<(f64, f64)> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|pt| (pt[0].as_f64().unwrap(), pt[1].as_f64().unwrap()))
                .collect();
            rings.push(pts);
        }
    }
    rings
}

/// Even-odd scanline rasteriser at output-pixel centres (coordinates given in level-0 px).
fn rasterise(rings: &[Vec<(f64, f64)>], w: usize, h: usize, ds: f64) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        let cy = (y as f64 + 0.5) * ds;
        let mut xs: Vec<f64> = Vec::new();
        for r in rings {
            for e in r.windows(2) {
                let ((x0, y0), (x1, y1)) = (e[0], e[1]);
                if (y0 <= cy && cy < y1) || (y1 <= cy && cy < y0) {
                    xs.push(x0 + (cy - y0) * (x1 - x0) / (y1 - y0));
                }
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks(2) {
            if pair.len() < 2 {
                continue;
            }
            for x in 0..w {
                let cx = (x as f64 + 0.5) * ds;
                if cx > pair[0] && cx < pair[1] {
                    out[y * w + x] = true;
                }
            }
        }
    }
    out
}

#[test]
fn geojson_round_trips_random_blobby_masks() {
    let classes = ClassInfo::from_names(&["benign", "tumor", "stroma"]);
    let ds = 16.0;
    let dir = tempfile::tempdir().unwrap();
    for (seed, (w, h)) in [(1u64, (60usize, 45usize)), (2, (33, 70)), (3, (80, 80))] {
        let labels = blobby(w, h, 3, seed);
        let gj = label_map_to_geojson(&labels, w, h, ds, &classes).unwrap();
        let path = dir.path().join("x.geojson");
        write_geojson(&path, &gj).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["type"], "FeatureCollection");
        let feats = parsed["features"].as_array().unwrap();
        assert_eq!(feats.len(), 3);
        for (k, f) in feats.iter().enumerate() {
            assert_eq!(f["type"], "Feature");
            assert_eq!(f["properties"]["objectType"], "annotation");
            assert_eq!(
                f["properties"]["classification"]["name"],
                classes[k].name.as_str()
            );
            let col: Vec<u64> = f["properties"]["classification"]["color"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                col,
                classes[k]
                    .color
                    .iter()
                    .map(|&c| c as u64)
                    .collect::<Vec<_>>()
            );
            let rings = rings_of(&f["geometry"]);
            for r in &rings {
                assert!(r.len() >= 5, "ring with {} points", r.len());
                assert_eq!(r.first(), r.last(), "ring not closed");
                for &(x, y) in r {
                    assert!(x >= 0.0 && y >= 0.0 && x <= w as f64 * ds && y <= h as f64 * ds);
                    assert_eq!(x % ds, 0.0);
                }
            }
            let got = rasterise(&rings, w, h, ds);
            let want: Vec<bool> = labels.iter().map(|&l| l == k as u8).collect();
            let inter = got.iter().zip(&want).filter(|(a, b)| **a && **b).count();
            let union = got.iter().zip(&want).filter(|(a, b)| **a || **b).count();
            let iou = inter as f64 / union as f64;
            assert!(iou >= 0.99, "seed {seed} class {k}: IoU {iou}");
            assert!(union > 50);
        }
    }
}

#[test]
fn geojson_is_valid_ogc_geometry_per_shapely() {
    let classes = ClassInfo::from_names(&["a", "b", "c"]);
    let dir = tempfile::tempdir().unwrap();
    let mut maps: Vec<(String, usize, usize, Vec<u8>)> = Vec::new();
    // Checkerboards: every inner corner is a saddle.
    for (w, h) in [(8usize, 8usize), (7, 5)] {
        let m = (0..w * h).map(|i| ((i % w + i / w) % 2) as u8).collect();
        maps.push((format!("checker_{w}x{h}"), w, h, m));
    }
    // Holes that touch the outside, each other, and an island inside a hole, at corners.
    #[rustfmt::skip]
    let touching: Vec<u8> = vec![
        0, 0, 0, 0, 0, 0, 0, 1,
        0, 1, 0, 0, 1, 0, 1, 0,
        0, 0, 1, 0, 0, 0, 0, 0,
        0, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 1, 1, 0,
        0, 1, 1, 0, 0, 1, 1, 0,
        0, 1, 1, 0, 0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 1, 1,
    ];
    maps.push(("touching".into(), 8, 8, touching));
    // Random maps: pure noise (saddles everywhere) and smoothed blobs with speckle.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (i, &(w, h, k)) in [(30usize, 30usize, 2u8), (41, 23, 3), (64, 64, 2)]
        .iter()
        .enumerate()
    {
        let m = (0..w * h).map(|_| rng.random_range(0..k)).collect();
        maps.push((format!("noise_{i}"), w, h, m));
    }
    for seed in 20..26u64 {
        maps.push((format!("blobby_{seed}"), 70, 50, blobby(70, 50, 3, seed)));
    }
    let mut files = Vec::new();
    for (name, w, h, m) in &maps {
        let gj = label_map_to_geojson(m, *w, *h, 4.0, &classes).unwrap();
        let path = dir.path().join(format!("{name}.geojson"));
        write_geojson(&path, &gj).unwrap();
        files.push(path);
    }
    pbip_testdata::assert_geojson_valid(&files);
}

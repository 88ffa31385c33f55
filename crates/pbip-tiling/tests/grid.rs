//! Tile-grid tests on hand-made masks (expected values worked out by hand in the comments).

use pbip_coords::Coordinates;
use pbip_tiling::{
    FilterParams, HsvParams, SlideLevels, TilingParams, filter_components, tile_from_mask,
    tile_from_seg_image, tissue_mask_hsv,
};

const MW: u32 = 100;
const MH: u32 = 75;

/// 6400 x 4800 slide at 0.25 mpp, levels 1/4/16/64; the mask is level 3 (100 x 75, ds 64).
fn slide() -> SlideLevels {
    SlideLevels {
        dimensions_px: [6400, 4800],
        level_downsamples: vec![1.0, 4.0, 16.0, 64.0],
        base_spacing_um: 0.25,
    }
}

/// 224 px at 0.5 mpp: no level within 5 % of 0.5 (0.25, 1.0, ...) -> level 0, read 448,
/// footprint 448 lv0 px = 7 mask px. ref area = int((16 / 64)^2) = 0 -> nothing filtered.
fn params() -> TilingParams {
    TilingParams {
        requested_tile_size_px: 224,
        ..TilingParams::default()
    }
}

fn rect(mask: &mut [u8], x0: u32, y0: u32, x1: u32, y1: u32) {
    for y in y0..=y1 {
        for x in x0..=x1 {
            mask[(y * MW + x) as usize] = 1;
        }
    }
}

fn xy(c: &Coordinates) -> Vec<(i64, i64)> {
    c.x.iter().copied().zip(c.y.iter().copied()).collect()
}

fn frac(c: &Coordinates, x: i64, y: i64) -> Option<f64> {
    let i = xy(c).iter().position(|&p| p == (x, y))?;
    c.tissue_fraction.as_ref().map(|f| f[i])
}

#[test]
fn rectangle_fractions_by_hand() {
    let mut m = vec![0u8; (MW * MH) as usize];
    rect(&mut m, 10, 20, 39, 34); // 30 x 15 mask px
    let t = tile_from_mask(&slide(), MW, MH, &m, &params()).expect("tiling");
    assert_eq!(
        (
            t.plan.read_level,
            t.plan.read_tile_size_px,
            t.plan.tile_size_lv0,
            t.plan.step_lv0
        ),
        (0, 448, 448, 448)
    );
    let c = &t.coordinates;
    // x: bbox [10*64, 39*64 + 1) = [640, 2497) step 448 -> 640, 1088, 1536, 1984, 2432
    // y: [1280, 34*64 + 1 = 2177) -> 1280, 1728, 2176
    let mut want = Vec::new();
    for x in [640i64, 1088, 1536, 1984, 2432] {
        for y in [1280i64, 1728, 2176] {
            want.push((x, y));
        }
    }
    assert_eq!(xy(c), want);
    // x = 2432 -> mask col 38, footprint cols 38..45 -> 2 tissue cols; y = 2176 -> row 34 -> 1 row
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-6);
    assert!(close(frac(c, 640, 1280), 1.0));
    assert!(close(frac(c, 2432, 1280), 2.0 / 7.0));
    assert!(close(frac(c, 640, 2176), 1.0 / 7.0));
    assert!(close(frac(c, 2432, 2176), 2.0 / 49.0));
    // every row carries the geometry
    assert_eq!(c.tile_level.as_deref(), Some(&vec![0u32; 15][..]));
    assert_eq!(c.tile_size_resized.as_deref(), Some(&vec![448u32; 15][..]));
    assert_eq!(c.tile_size_lv0.as_deref(), Some(&vec![448u32; 15][..]));
    assert_eq!(c.target_tile_size.as_deref(), Some(&vec![224u32; 15][..]));
    assert_eq!(
        c.tile_index.as_deref(),
        Some(&(0..15).collect::<Vec<i64>>()[..])
    );
    let g = c.geometry(3, 224);
    assert_eq!((g.level, g.read_size_px, g.out_size_px), (0, 448, 224));

    // min fraction 0.1 drops the 2/49 corner (0.041) only
    let p = TilingParams {
        min_tissue_fraction: 0.1,
        ..params()
    };
    let t2 = tile_from_mask(&slide(), MW, MH, &m, &p).expect("tiling");
    assert_eq!(t2.coordinates.len(), 14);
    assert!(frac(&t2.coordinates, 2432, 2176).is_none());
}

#[test]
fn empty_mask_gives_no_tiles_and_bad_input_is_an_error() {
    let m = vec![0u8; (MW * MH) as usize];
    let t = tile_from_mask(&slide(), MW, MH, &m, &params()).expect("tiling");
    assert!(t.coordinates.is_empty());
    assert!(tile_from_mask(&slide(), MW, MH, &m[1..], &params()).is_err());
    let bad = TilingParams {
        min_tissue_fraction: 1.5,
        ..params()
    };
    assert!(tile_from_mask(&slide(), MW, MH, &m, &bad).is_err());
    let bad = TilingParams {
        overlap: 1.0,
        ..params()
    };
    assert!(tile_from_mask(&slide(), MW, MH, &m, &bad).is_err());
}

#[test]
fn duplicate_origin_from_two_components_is_kept_once_first_component_wins() {
    // Component A: U shape; component B: 3x3 block inside it, not touching it.
    let mut m = vec![0u8; (MW * MH) as usize];
    rect(&mut m, 10, 20, 11, 34); // left bar
    rect(&mut m, 10, 20, 24, 21); // top bar
    rect(&mut m, 10, 33, 24, 34); // bottom bar
    rect(&mut m, 17, 27, 19, 29); // B
    let t = tile_from_mask(&slide(), MW, MH, &m, &params()).expect("tiling");
    let c = &t.coordinates;
    let pts = xy(c);
    let n = pts.iter().filter(|&&p| p == (1088, 1728)).count();
    assert_eq!(n, 1);
    // A's own pixels in footprint cols 17..24, rows 27..34: bottom bar rows 33 (row 34 is out),
    // cols 17..23 -> 7 px / 49; B would give 9 / 49.
    let i = pts
        .iter()
        .position(|&p| p == (1088, 1728))
        .unwrap_or(usize::MAX);
    let f = c.tissue_fraction.as_ref().map(|f| f[i]).unwrap_or(-1.0);
    assert!((f - 7.0 / 49.0).abs() < 1e-6, "{f}");
    assert_eq!(c.contour_index.as_ref().map(|v| v[i]), Some(0));
}

#[test]
fn small_components_dropped_small_holes_filled() {
    let mut m = vec![0u8; (MW * MH) as usize];
    rect(&mut m, 10, 10, 29, 29); // 400 px
    for y in 15..=16 {
        for x in 15..=16 {
            m[(y * MW + x) as usize] = 0; // 4 px hole
        }
    }
    for y in 20..=25 {
        for x in 20..=25 {
            m[(y * MW + x) as usize] = 0; // 36 px hole
        }
    }
    rect(&mut m, 50, 50, 52, 52); // 9 px speck
    m[(60 * MW + 60) as usize] = 1; // 1 px speck
    m[(61 * MW + 61) as usize] = 1; // diagonal neighbour: same 8-connected component (2 px)
    let c = filter_components(MW, MH, &m, 9.0, 10.0).expect("filter");
    // kept: only the square (400 - 4 - 36 = 360 px); the 3x3 speck has contour area 2 * 2 = 4
    assert_eq!(c.areas_px, vec![360]);
    // cv2.contourArea on this mask (checked with OpenCV 5.0.0): outer 361, holes 7 and 47,
    // speck 4 -> hs2p's area 361 - 7 - 47 = 307
    assert_eq!(c.contour_areas_px, vec![307.0]);
    assert_eq!(c.bboxes[0].x_min, 10);
    assert_eq!(c.bboxes[0].x_max, 29);
    let at = |x: u32, y: u32| c.cleaned_mask[(y * MW + x) as usize];
    assert_eq!(at(15, 15), 1, "4 px hole filled");
    assert_eq!(at(22, 22), 0, "36 px hole kept");
    assert_eq!(at(51, 51), 0, "speck dropped");
    assert_eq!(at(60, 60), 0);
    let c = filter_components(MW, MH, &m, 0.0, 0.0).expect("filter");
    // the 3x3 speck (area 4) is kept; the diagonal pair has contour area 0: always dropped
    assert_eq!(c.areas_px, vec![360, 9]);
    assert_eq!(c.contour_areas_px, vec![307.0, 4.0]);

    // the tiler applies a_t * ref area: with 16 / (64 / 1) = 0.25 -> ref area int(0.0625) = 0
    // only zero-area components go; with a 1 mpp request the read level is 1 (ds 4):
    // 16 / 16 = 1 -> ref area 1, a_t = 4 -> contour areas <= 4 dropped (the speck)
    let t = tile_from_mask(&slide(), MW, MH, &m, &params()).expect("tiling");
    assert_eq!(t.components.areas_px, vec![360, 9]);
    let p = TilingParams {
        requested_tile_size_px: 16,
        requested_spacing_um: 1.0,
        filter: FilterParams::default(),
        ..params()
    };
    let t = tile_from_mask(&slide(), MW, MH, &m, &p).expect("tiling");
    assert_eq!(t.plan.read_level, 1);
    assert_eq!(t.components.areas_px, vec![360]);
}

/// Level-3 image of a slide: a pink/purple blob image from testdata (200 x 150).
fn blob_image() -> (u32, u32, Vec<u8>) {
    use std::io::Read;
    let path = pbip_testdata::crate_dir().join("testdata/blobs_a.rgb.bin.gz");
    let f = std::fs::File::open(&path).expect("blobs_a");
    let mut rgb = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut rgb)
        .expect("gunzip");
    (200, 150, rgb)
}

fn blob_slide() -> SlideLevels {
    SlideLevels {
        dimensions_px: [12800, 9600],
        level_downsamples: vec![1.0, 4.0, 16.0, 64.0],
        base_spacing_um: 0.25,
    }
}

#[test]
fn tiles_cover_tissue_never_pure_background_sorted_x_then_y() {
    let (w, h, rgb) = blob_image();
    let p = TilingParams {
        requested_tile_size_px: 224,
        min_tissue_fraction: 1e-6,
        ..TilingParams::default()
    };
    let t = tile_from_seg_image(&blob_slide(), w, h, &rgb, &p).expect("tiling");
    let c = &t.coordinates;
    assert!(c.len() > 10, "{} tiles", c.len());
    let pts = xy(c);
    // strictly increasing (x, y): sorted x then y, no duplicates
    assert!(pts.windows(2).all(|p| p[0] < p[1]));
    // footprint in mask px: 448 / 64 = 7
    let mask = tissue_mask_hsv(w, h, &rgb, &HsvParams::default()).expect("mask");
    let tissue_in = |x: i64, y: i64| -> usize {
        let (mx, my) = (x / 64, y / 64);
        let mut n = 0;
        for yy in my..(my + 7).min(i64::from(h)) {
            for xx in mx..(mx + 7).min(i64::from(w)) {
                n += usize::from(mask[(yy * i64::from(w) + xx) as usize] != 0);
            }
        }
        n
    };
    for (i, &(x, y)) in pts.iter().enumerate() {
        assert!(
            tissue_in(x, y) > 0,
            "tile {i} at ({x}, {y}) is pure background"
        );
        let f = c.tissue_fraction.as_ref().map(|f| f[i]).unwrap_or(0.0);
        assert!(f > 0.0 && f <= 1.0);
    }
    // every pixel of every kept component lies under some tile
    let lab = &t.components.labels;
    for my in 0..i64::from(h) {
        for mx in 0..i64::from(w) {
            if lab[(my * i64::from(w) + mx) as usize] == 0 {
                continue;
            }
            let covered = pts
                .iter()
                .any(|&(x, y)| x / 64 <= mx && mx < x / 64 + 7 && y / 64 <= my && my < y / 64 + 7);
            assert!(covered, "tissue pixel ({mx}, {my}) not covered");
        }
    }
    assert_eq!(t.tissue_method.as_deref(), Some("hsv"));
}

#[test]
fn overlap_half_doubles_density() {
    let mut m = vec![0u8; (MW * MH) as usize];
    rect(&mut m, 10, 20, 59, 54); // 50 x 35 mask px = 3200 x 2240 lv0 px
    let t0 = tile_from_mask(&slide(), MW, MH, &m, &params()).expect("tiling");
    let p = TilingParams {
        overlap: 0.5,
        ..params()
    };
    let t5 = tile_from_mask(&slide(), MW, MH, &m, &p).expect("tiling");
    assert_eq!(t5.plan.step_lv0, 224);
    let a = xy(&t0.coordinates);
    let b = xy(&t5.coordinates);
    // x: [640, 3777) -> 8 origins at step 448, 15 at step 224; y: [1280, 3457) -> 5 and 10
    let distinct = |v: &[(i64, i64)], k: usize| {
        let mut s: Vec<i64> = v.iter().map(|p| if k == 0 { p.0 } else { p.1 }).collect();
        s.sort();
        s.dedup();
        s.len()
    };
    assert_eq!((distinct(&a, 0), distinct(&a, 1)), (8, 5));
    assert_eq!((distinct(&b, 0), distinct(&b, 1)), (15, 10));
    assert_eq!(a.len(), 40);
    assert_eq!(b.len(), 150);
    assert!(a.iter().all(|p| b.contains(p)));
}

#[test]
fn hs2p_npz_round_trip() {
    let (w, h, rgb) = blob_image();
    let p = TilingParams {
        requested_tile_size_px: 224,
        ..TilingParams::default()
    };
    let t = tile_from_seg_image(&blob_slide(), w, h, &rgb, &p).expect("tiling");
    assert!(!t.coordinates.is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let npz = dir.path().join("blob.coordinates.npz");
    let meta_path = t
        .write_hs2p(&npz, "blob", "/slides/blob.svs")
        .expect("write");
    assert_eq!(meta_path, dir.path().join("blob.coordinates.meta.json"));
    let back = Coordinates::read(&npz).expect("read back");
    let c = &t.coordinates;
    assert_eq!(back.x, c.x);
    assert_eq!(back.y, c.y);
    assert_eq!(back.tile_level, c.tile_level);
    assert_eq!(back.tile_size_resized, c.tile_size_resized);
    assert_eq!(back.tile_size_lv0, c.tile_size_lv0);
    assert_eq!(back.target_tile_size, c.target_tile_size);
    assert_eq!(back.tile_index, c.tile_index);
    let (fa, fb) = (
        back.tissue_fraction.clone().unwrap_or_default(),
        c.tissue_fraction.clone().unwrap_or_default(),
    );
    assert_eq!(fa.len(), fb.len());
    assert!(fa.iter().zip(&fb).all(|(a, b)| (a - b).abs() < 1e-7));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).expect("meta")).expect("json");
    assert_eq!(meta["tiling"]["n_tiles"].as_u64(), Some(c.len() as u64));
    assert_eq!(meta["tiling"]["step_px_lv0"].as_u64(), Some(448));
    assert_eq!(meta["tiling"]["min_tissue_fraction"].as_f64(), Some(0.01));
    assert_eq!(meta["segmentation"]["tissue_method"].as_str(), Some("hsv"));
    assert_eq!(
        meta["slide"]["dimensions"],
        serde_json::json!([12800, 9600])
    );
}

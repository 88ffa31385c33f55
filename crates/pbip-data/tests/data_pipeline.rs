//! Integration tests on real pyramidal TIFFs: a lossless synthetic slide whose colours are a
//! known function of its label map, and a pbip-synth dataset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pbip_coords::{Hs2pV1Record, write_hs2p_v1_npy};
use pbip_data::*;
use pbip_pyramid::{
    Downsampling, EdgePadding, PixelFormat, PyramidOptions, TileCompression,
    write_pyramid_from_image,
};

const W: u32 = 1000;
const H: u32 = 760;
const PATCH: u32 = 224;
const PALETTE: [[u8; 3]; 3] = [[200, 40, 40], [40, 200, 40], [40, 40, 200]];
const BG: [u8; 3] = [240, 240, 240];

/// Label map of the lossless slide: 255 on a left strip and a bottom strip, else 3 classes in
/// 37 x 53 px blocks.
fn label_at(x: u32, y: u32) -> u8 {
    if x < 100 || y > 700 {
        255
    } else {
        (((x / 37) + 2 * (y / 53)) % 3) as u8
    }
}

fn colour(l: u8) -> [u8; 3] {
    if l == 255 { BG } else { PALETTE[l as usize] }
}

fn write_gray_png(path: &Path, w: u32, h: u32, data: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
}

fn rec(x: i64, y: i64, level: i64, read: i64) -> Hs2pV1Record {
    Hs2pV1Record {
        x,
        y,
        tile_size_resized: read,
        tile_level: level,
        resize_factor: 1.0,
        tile_size_lv0: read << level,
        target_spacing: 0.5,
    }
}

struct Lossless {
    _dir: tempfile::TempDir,
    slide: PathBuf,
    mask_png: PathBuf,
    mask_tif: PathBuf,
    coords: PathBuf,
    dir: PathBuf,
}

/// Writes the lossless slide (deflate RGB pyramid, 2 levels), its PNG and TIFF masks and an
/// hs2p coordinate file with level-0, level-0-downscaled, level-1, edge and outside rows.
fn lossless() -> Lossless {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let labels: Vec<u8> = (0..H)
        .flat_map(|y| (0..W).map(move |x| label_at(x, y)))
        .collect();
    let rgb: Vec<u8> = labels.iter().flat_map(|&l| colour(l)).collect();
    let opts = PyramidOptions {
        pixel_format: PixelFormat::Rgb8,
        compression: TileCompression::Deflate { level: 1 },
        downsampling: Downsampling::Mean2x2,
        tile_size_px: 256,
        min_level_size_px: 256,
        downsamples: None,
        mpp: Some(0.5),
        description: None,
        big_tiff: false,
        edge_padding: EdgePadding::Replicate,
    };
    let slide = d.join("lossless.tif");
    let summary = write_pyramid_from_image(&slide, W, H, &rgb, &opts).unwrap();
    assert!(summary.levels.len() >= 2);
    let mask_png = d.join("lossless_mask.png");
    write_gray_png(&mask_png, W, H, &labels);
    let mask_tif = d.join("lossless_mask.tif");
    write_pyramid_from_image(
        &mask_tif,
        W,
        H,
        &labels,
        &PyramidOptions::label_mask(Some(0.5)),
    )
    .unwrap();
    let coords = d.join("lossless.npy");
    write_hs2p_v1_npy(
        &coords,
        &[
            rec(150, 100, 0, 224), // 0: level 0, no resize
            rec(300, 200, 0, 448), // 1: level 0, 448 -> 224 (area)
            rec(403, 150, 1, 224), // 2: level 1 (starts at level px 201), no resize
            rec(777, 536, 0, 224), // 3: one column past the right edge
            rec(5000, 10, 0, 224), // 4: outside -> excluded
            rec(500, 300, 1, 112), // 5: level 1, 112 -> 224 (bilinear upscale)
        ],
    )
    .unwrap();
    Lossless {
        slide,
        mask_png,
        mask_tif,
        coords,
        dir: d,
        _dir: dir,
    }
}

fn spec(l: &Lossless, name: &str, labels: Vec<u8>, gt: Option<&Path>) -> SlideSpec {
    SlideSpec {
        name: name.into(),
        slide_path: l.slide.clone(),
        coordinates_path: l.coords.clone(),
        labels,
        gt_path: gt.map(Path::to_path_buf),
    }
}

fn open_set(specs: &[SlideSpec], origin: CoordinateOrigin) -> Arc<SlideSet> {
    let mut o = SlideSetOptions::new(PATCH, 3);
    o.origin = origin;
    Arc::new(SlideSet::open(specs, &o).unwrap())
}

/// Reads patch `row` of slide 0 as raw RGB (identity augmentation).
fn raw_patch(set: &SlideSet, row: usize) -> (PatchInfo, Vec<u8>) {
    let info = set.locate(0, row).unwrap();
    let mut buf = vec![0u8; (PATCH * PATCH * 3) as usize];
    set.read_into(&info, &mut buf).unwrap();
    (info, buf)
}

#[test]
fn outside_rows_are_excluded_and_geometry_follows_coordinates() {
    let l = lossless();
    let set = open_set(
        &[spec(&l, "a", vec![1, 0, 1], Some(&l.mask_png))],
        CoordinateOrigin::TopLeft,
    );
    let s = set.get(0).unwrap();
    assert_eq!(s.valid_rows, vec![0, 1, 2, 3, 5]);
    assert_eq!(s.labels_f32, vec![1.0, 0.0, 1.0]);
    let p2 = set.locate(0, 2).unwrap();
    assert_eq!((p2.level, p2.read_size_px, p2.out_size_px), (1, 224, 224));
    assert_eq!(p2.level_downsample, 2.0);
    assert_eq!(p2.tile_size_lv0(), 448.0);
    let e = set.locate(0, 4).unwrap_err();
    assert!(
        matches!(e, DataError::CoordinateOutside { row: 4, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("lossless.npy"), "{e}");
}

/// Every image pixel whose colour is exactly one palette colour must have that class in the
/// GT crop (and the crop must be mostly checkable).
fn assert_aligned(info: &PatchInfo, rgb: &[u8], mask: &[u8], min_checked: f64) {
    let mut checked = 0usize;
    for (k, (px, &m)) in rgb.chunks_exact(3).zip(mask).enumerate() {
        let class = if px == BG {
            Some(255)
        } else {
            PALETTE.iter().position(|c| c == px).map(|c| c as u8)
        };
        if let Some(c) = class {
            checked += 1;
            assert_eq!(
                c,
                m,
                "row {} pixel ({}, {}): image class {c}, GT {m}",
                info.row.unwrap_or(usize::MAX),
                k % PATCH as usize,
                k / PATCH as usize
            );
        }
    }
    let frac = checked as f64 / mask.len() as f64;
    assert!(
        frac >= min_checked,
        "row {:?}: only {frac} of pixels checkable",
        info.row
    );
}

#[test]
fn gt_crop_is_aligned_with_image_patch() {
    let l = lossless();
    for origin in [CoordinateOrigin::TopLeft, CoordinateOrigin::Centre] {
        let set = open_set(&[spec(&l, "a", vec![1, 1, 1], Some(&l.mask_png))], origin);
        for row in [0, 1, 2, 3, 5] {
            let (info, rgb) = raw_patch(&set, row);
            let mask = set.crop_mask(&info).unwrap();
            // Upscaled level-1 patches blend at every block edge: fewer exact pixels.
            let min = if row == 5 { 0.3 } else { 0.6 };
            assert_aligned(&info, &rgb, &mask, min);
            if row == 3 && origin == CoordinateOrigin::TopLeft {
                // The column past the slide edge: image background fill, GT ignore.
                assert_eq!(mask[PATCH as usize - 1], 255);
            }
        }
        // Independent check at level 0 without resize: the crop is the label map itself.
        let (info, _) = raw_patch(&set, 0);
        let mask = set.crop_mask(&info).unwrap();
        for i in 0..PATCH as i64 {
            for j in 0..PATCH as i64 {
                let (x, y) = (info.x_lv0 + j, info.y_lv0 + i);
                let want = if x < 0 || y < 0 {
                    255
                } else {
                    label_at(x as u32, y as u32)
                };
                assert_eq!(
                    mask[(i * PATCH as i64 + j) as usize],
                    want,
                    "{origin:?} ({x}, {y})"
                );
            }
        }
        if origin == CoordinateOrigin::Centre {
            assert_eq!((info.x_lv0, info.y_lv0), (150 - 112, 100 - 112));
        }
    }
}

#[test]
fn tiff_and_png_masks_give_identical_crops() {
    let l = lossless();
    let a = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&l.mask_png))],
        CoordinateOrigin::TopLeft,
    );
    let b = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&l.mask_tif))],
        CoordinateOrigin::TopLeft,
    );
    for row in [0, 1, 2, 3, 5] {
        let ia = a.locate(0, row).unwrap();
        assert_eq!(
            a.crop_mask(&ia).unwrap(),
            b.crop_mask(&ia).unwrap(),
            "row {row}"
        );
    }
}

#[test]
fn mask_errors_name_the_file() {
    let l = lossless();
    // Wrong size.
    let small = l.dir.join("small_mask.png");
    write_gray_png(&small, 10, 10, &[0u8; 100]);
    let set = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&small))],
        CoordinateOrigin::TopLeft,
    );
    let e = set.mask(0).unwrap_err();
    assert!(
        matches!(e, DataError::MaskSize { .. }) && e.to_string().contains("small_mask.png"),
        "{e}"
    );
    // Out-of-range label (3 classes: value 3 is invalid, 255 is fine).
    let mut labels: Vec<u8> = (0..H)
        .flat_map(|y| (0..W).map(move |x| label_at(x, y)))
        .collect();
    labels[(500 * W + 600) as usize] = 3;
    let bad = l.dir.join("bad_mask.png");
    write_gray_png(&bad, W, H, &labels);
    let set = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&bad))],
        CoordinateOrigin::TopLeft,
    );
    let e = set.mask(0).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("bad_mask.png") && s.contains("(600, 500)"),
        "{s}"
    );
    // Missing file.
    let set = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&l.dir.join("nope.png")))],
        CoordinateOrigin::TopLeft,
    );
    assert!(set.mask(0).unwrap_err().to_string().contains("nope.png"));
    // No mask at all.
    let set = open_set(
        &[spec(&l, "a", vec![1, 1, 1], None)],
        CoordinateOrigin::TopLeft,
    );
    assert!(matches!(set.mask(0).unwrap_err(), DataError::NoMask { .. }));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let l = lossless();
    let o = SlideSetOptions::new(PATCH, 3);
    // All coordinates outside.
    let out = l.dir.join("outside.npy");
    write_hs2p_v1_npy(
        &out,
        &[rec(5000, 0, 0, 224), rec(0, 900, 0, 224), rec(0, 0, 5, 224)],
    )
    .unwrap();
    let mut s = spec(&l, "a", vec![1, 0, 0], None);
    s.coordinates_path = out;
    let e = SlideSet::open(&[s], &o).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::NoUsableCoordinates {
                total: 3,
                outside: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("outside.npy"));
    // Unreadable slide.
    let junk = l.dir.join("junk.tif");
    std::fs::write(&junk, b"II*\0garbage").unwrap();
    let mut s = spec(&l, "a", vec![1, 0, 0], None);
    s.slide_path = junk;
    let e = SlideSet::open(&[s], &o).unwrap_err();
    assert!(e.to_string().contains("junk.tif"), "{e}");
    // Missing coordinate file.
    let mut s = spec(&l, "a", vec![1, 0, 0], None);
    s.coordinates_path = l.dir.join("none.npy");
    assert!(
        SlideSet::open(&[s], &o)
            .unwrap_err()
            .to_string()
            .contains("none.npy")
    );
    // Label vector of the wrong width.
    assert!(SlideSet::open(&[spec(&l, "a", vec![1, 0], None)], &o).is_err());
}

#[test]
fn normalisation_values_in_a_batch() {
    let l = lossless();
    let set = open_set(
        &[spec(&l, "a", vec![0, 1, 0], None)],
        CoordinateOrigin::TopLeft,
    );
    let req = [PatchRequest {
        slide_index: 0,
        row: 0,
        aug: AugParams::default(),
    }];
    let n = 224usize * 224;
    for norm in [Normalization::default(), Normalization::upstream_bgr()] {
        let b = build_batch(&set, &req, &Preprocess::MeanStd(norm), false).unwrap();
        assert_eq!(b.shape(), [1, 3, 224, 224]);
        assert_eq!(b.label(0), &[0.0, 1.0, 0.0]);
        // Pixel (i, j) of row 0 is level-0 pixel (150 + j, 100 + i).
        for (i, j) in [(0usize, 0usize), (17, 200), (223, 223), (100, 5)] {
            let rgb = colour(label_at(150 + j as u32, 100 + i as u32));
            for plane in 0..3 {
                let src = if norm.channel_order == ChannelOrder::Bgr {
                    2 - plane
                } else {
                    plane
                };
                let want = (f64::from(rgb[src]) / 255.0 - HISTO_MEAN[plane]) / HISTO_STD[plane];
                let got = b.image(0)[plane * n + i * 224 + j];
                assert!(
                    (f64::from(got) - want).abs() < 1e-5,
                    "{norm:?} ({i},{j}) plane {plane}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn augmentation_moves_pixels_and_masks_as_documented() {
    let l = lossless();
    let set = open_set(
        &[spec(&l, "a", vec![1, 1, 1], Some(&l.mask_png))],
        CoordinateOrigin::TopLeft,
    );
    let pre = Preprocess::MeanStd(Normalization::default());
    let id = build_batch(
        &set,
        &[PatchRequest {
            slide_index: 0,
            row: 0,
            aug: AugParams::default(),
        }],
        &pre,
        true,
    )
    .unwrap();
    let n = 224usize;
    type Map = fn(usize, usize, usize) -> (usize, usize);
    let cases: [(AugParams, Map); 4] = [
        // out(i, j) = in(f(i, j))
        (
            AugParams {
                hflip: true,
                ..Default::default()
            },
            |i, j, n| (i, n - 1 - j),
        ),
        (
            AugParams {
                vflip: true,
                ..Default::default()
            },
            |i, j, n| (n - 1 - i, j),
        ),
        (
            AugParams {
                rot90_k: 2,
                ..Default::default()
            },
            |i, j, n| (n - 1 - i, n - 1 - j),
        ),
        // hflip then np.rot90 (counter-clockwise) = transpose
        (
            AugParams {
                hflip: true,
                rot90_k: 1,
                ..Default::default()
            },
            |i, j, _| (j, i),
        ),
    ];
    for (aug, f) in cases {
        let b = build_batch(
            &set,
            &[PatchRequest {
                slide_index: 0,
                row: 0,
                aug,
            }],
            &pre,
            true,
        )
        .unwrap();
        assert_eq!(b.info[0].aug, aug);
        for i in 0..n {
            for j in 0..n {
                let (si, sj) = f(i, j, n);
                for c in 0..3 {
                    assert_eq!(
                        b.image(0)[c * n * n + i * n + j],
                        id.image(0)[c * n * n + si * n + sj]
                    );
                }
                assert_eq!(
                    b.mask(0).unwrap()[i * n + j],
                    id.mask(0).unwrap()[si * n + sj]
                );
            }
        }
    }
}

fn synth(dir: &Path, n: usize) -> pbip_synth::SynthSummary {
    let opts = pbip_synth::SynthOptions {
        num_slides: n,
        size_px: 768,
        thumbnails: false,
        seed: 3,
        ..pbip_synth::SynthOptions::new(dir)
    };
    pbip_synth::generate(&opts).unwrap()
}

fn synth_specs(s: &pbip_synth::SynthSummary) -> Vec<SlideSpec> {
    s.slides
        .iter()
        .map(|sl| {
            let mut labels = vec![0u8; 2];
            labels[sl.label as usize] = 1;
            SlideSpec {
                name: sl.name.clone(),
                slide_path: sl.slide_path.clone(),
                coordinates_path: sl.coordinates_path.clone(),
                labels,
                gt_path: Some(sl.mask_path.clone()),
            }
        })
        .collect()
}

fn batches_equal(a: &PatchBatch, b: &PatchBatch) -> bool {
    a.data == b.data && a.labels == b.labels && a.info == b.info && a.cursor == b.cursor
}

#[test]
fn synth_gt_agrees_with_tissue_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let s = synth(dir.path(), 4);
    let set = Arc::new(SlideSet::open(&synth_specs(&s), &SlideSetOptions::new(224, 2)).unwrap());
    let mut mixed = 0;
    for (si, sd) in set.slides().iter().enumerate() {
        for &row in &sd.valid_rows {
            let info = set.locate(si, row).unwrap();
            let mut rgb = vec![0u8; 224 * 224 * 3];
            set.read_into(&info, &mut rgb).unwrap();
            let agree = |mask: &[u8]| {
                let ok = rgb
                    .chunks_exact(3)
                    .zip(mask)
                    .filter(|(px, m)| {
                        let white = px.iter().all(|&v| v >= 225);
                        white == (**m == 255)
                    })
                    .count();
                ok as f64 / mask.len() as f64
            };
            let mask = set.crop_mask(&info).unwrap();
            assert!(mask.iter().all(|&v| v == 0 || v == 1 || v == 255));
            let bg = mask.iter().filter(|&&v| v == 255).count() as f64 / mask.len() as f64;
            let a = agree(&mask);
            assert!(a >= 0.95, "{} row {row}: agreement {a}", sd.spec.name);
            if (0.15..0.5).contains(&bg) {
                mixed += 1;
                // A crop shifted by 24 px agrees clearly less: the check can fail.
                let mut shifted = info.clone();
                shifted.x_lv0 += 24;
                shifted.y_lv0 += 24;
                let b = agree(&set.crop_mask(&shifted).unwrap());
                assert!(
                    b < a,
                    "{} row {row}: shifted {b} vs aligned {a}",
                    sd.spec.name
                );
            }
        }
    }
    assert!(mixed >= 3, "only {mixed} patches straddle a tissue border");
}

#[test]
fn loader_matches_single_threaded_reference_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = synth(dir.path(), 8);
    let specs = synth_specs(&s);
    let set = Arc::new(SlideSet::open(&specs, &SlideSetOptions::new(224, 2)).unwrap());
    let sopts = SamplerOptions {
        seed: 11,
        batch_size: 3,
        balance: Balance::Slides,
        iterations_per_epoch: None,
        bag_size: 1,
        background_class: None,
    };
    let plan = TrainPlan::new(
        Arc::clone(&set),
        sopts,
        AugmentOptions::default(),
        Preprocess::default(),
    )
    .unwrap();
    let ipe = plan.sampler.iterations_per_epoch();
    assert_eq!(ipe, 3); // ceil(8 / 3)
    let total = 4 * ipe;
    // Reference: one by one on this thread.
    let mut reference = Vec::new();
    let mut st = plan.sampler.initial_state();
    for _ in 0..total {
        reference.push(plan.batch(&st).unwrap());
        st = plan.sampler.advance(&st, 1);
    }
    // Sanity: augmentation varies and batches differ.
    assert!(
        reference
            .iter()
            .flat_map(|b| &b.info)
            .any(|i| !i.aug.is_identity())
    );
    assert!(!batches_equal(&reference[0], &reference[1]));
    // Balance over slides: 9 draws per epoch over 8 slides = every slide once, one twice.
    let mut all = [0usize; 8];
    for e in 0..4 {
        let mut seen = [0usize; 8];
        for b in &reference[(e * ipe) as usize..((e + 1) * ipe) as usize] {
            for i in &b.info {
                seen[i.slide_index] += 1;
                all[i.slide_index] += 1;
                assert_eq!(b.label(0).len(), 2);
            }
        }
        assert!(
            seen.iter().all(|&c| (1..=2).contains(&c)),
            "epoch {e}: {seen:?}"
        );
    }
    assert_eq!(all.iter().sum::<usize>(), 36);
    // Labels follow slides.
    for b in &reference {
        for (k, i) in b.info.iter().enumerate() {
            assert_eq!(
                b.label(k),
                set.get(i.slide_index).unwrap().labels_f32.as_slice()
            );
        }
    }
    // Threaded loader, several worker counts.
    for workers in [0, 1, 3] {
        let mut ld = TrainLoader::new(
            plan.clone(),
            plan.sampler.initial_state(),
            Some(total),
            LoaderOptions {
                num_workers: workers,
                prefetch: 2,
            },
        )
        .unwrap();
        let got: Vec<PatchBatch> = ld.by_ref().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), reference.len());
        for (k, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert!(batches_equal(a, b), "workers {workers}, batch {k}");
        }
        assert_eq!(ld.stats().batches, total);
        assert!(ld.stats().wait_secs >= 0.0);
    }
    // Resume: consume 5, save the state as JSON, rebuild everything, continue.
    let saved = {
        let mut ld = TrainLoader::new(
            plan.clone(),
            plan.sampler.initial_state(),
            Some(total),
            LoaderOptions {
                num_workers: 2,
                prefetch: 4,
            },
        )
        .unwrap();
        for _ in 0..5 {
            ld.next_batch().unwrap().unwrap();
        }
        serde_json::to_string(&ld.state()).unwrap()
    };
    let state: SamplerState = serde_json::from_str(&saved).unwrap();
    assert_eq!((state.epoch, state.step), (1, 2));
    let set2 = Arc::new(SlideSet::open(&specs, &SlideSetOptions::new(224, 2)).unwrap());
    let plan2 = TrainPlan::new(
        set2,
        sopts,
        AugmentOptions::default(),
        Preprocess::default(),
    )
    .unwrap();
    let ld = TrainLoader::new(
        plan2,
        state,
        Some(total),
        LoaderOptions {
            num_workers: 2,
            prefetch: 2,
        },
    )
    .unwrap();
    let rest: Vec<PatchBatch> = ld.map(|r| r.unwrap()).collect();
    assert_eq!(rest.len(), reference.len() - 5);
    for (a, b) in rest.iter().zip(&reference[5..]) {
        assert!(batches_equal(a, b));
    }
    // A different seed gives a different sequence; its state does not fit this plan.
    let other = TrainPlan::new(
        Arc::clone(&set),
        SamplerOptions { seed: 12, ..sopts },
        AugmentOptions::default(),
        Preprocess::default(),
    )
    .unwrap();
    let ob = other.batch(&other.sampler.initial_state()).unwrap();
    assert!(!batches_equal(&ob, &reference[0]));
    assert!(
        TrainLoader::new(
            plan.clone(),
            other.sampler.initial_state(),
            None,
            LoaderOptions::default()
        )
        .is_err()
    );
}

#[test]
fn eval_plan_first_n_without_augmentation() {
    let dir = tempfile::tempdir().unwrap();
    let s = synth(dir.path(), 4);
    let set = Arc::new(SlideSet::open(&synth_specs(&s), &SlideSetOptions::new(224, 2)).unwrap());
    let plan = EvalPlan::new(
        Arc::clone(&set),
        PatchesPerSlide::First(2),
        3,
        Preprocess::default(),
        true,
    )
    .unwrap();
    let want: Vec<(usize, usize)> = set
        .slides()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.valid_rows.iter().take(2).map(move |&r| (i, r)))
        .collect();
    assert_eq!(
        plan.items
            .iter()
            .map(|r| (r.slide_index, r.row))
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(plan.num_batches(), want.len().div_ceil(3));
    let loader = Loader::new(
        Arc::new(plan.clone()),
        LoaderOptions {
            num_workers: 2,
            prefetch: 2,
        },
    )
    .unwrap();
    let got: Vec<PatchBatch> = loader.map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), plan.num_batches());
    let mut k = 0;
    for b in &got {
        assert!(b.masks.is_some());
        for (i, info) in b.info.iter().enumerate() {
            assert!(info.aug.is_identity());
            assert_eq!((info.slide_index, info.row.unwrap()), want[k]);
            // The first patch of a slide is its first coordinate row.
            let c = &set.get(info.slide_index).unwrap().coords;
            assert_eq!(
                (info.x_lv0, info.y_lv0),
                (c.x[info.row.unwrap()], c.y[info.row.unwrap()])
            );
            assert_eq!(b.mask(i).unwrap(), set.crop_mask(info).unwrap().as_slice());
            k += 1;
        }
    }
    assert_eq!(k, want.len());
    // Deterministic: a second pass is identical.
    let again: Vec<PatchBatch> = (0..plan.num_batches())
        .map(|i| plan.batch(i).unwrap().unwrap())
        .collect();
    assert_eq!(got, again);
    let all = EvalPlan::new(
        set.clone(),
        PatchesPerSlide::All,
        8,
        Preprocess::default(),
        false,
    )
    .unwrap();
    assert_eq!(
        all.items.len(),
        set.slides().iter().map(|s| s.num_valid()).sum::<usize>()
    );
}

#[test]
fn adhoc_placements_and_class_balanced_training_batches() {
    let l = lossless();
    let m = Some(l.mask_png.as_path());
    let set = open_set(
        &[
            spec(&l, "a", vec![1, 0, 0], m),
            spec(&l, "b", vec![1, 0, 0], m),
            spec(&l, "c", vec![1, 0, 0], m),
            spec(&l, "t", vec![0, 0, 1], m),
        ],
        CoordinateOrigin::TopLeft,
    );
    let pre = Preprocess::default();
    // An ad-hoc placement equal to coordinate row 2 gives the same patch and GT.
    let p = set.placement(0, 403, 150, 1, 224).unwrap();
    assert_eq!(p.row, None);
    let r = set.locate(0, 2).unwrap();
    assert_eq!(
        (
            p.x_lv0,
            p.y_lv0,
            p.level,
            p.read_size_px,
            p.out_size_px,
            p.level_downsample
        ),
        (
            r.x_lv0,
            r.y_lv0,
            r.level,
            r.read_size_px,
            r.out_size_px,
            r.level_downsample
        )
    );
    let a = build_batch_at(&set, vec![p], &pre, true).unwrap();
    let b = build_batch(
        &set,
        &[PatchRequest {
            slide_index: 0,
            row: 2,
            aug: AugParams::default(),
        }],
        &pre,
        true,
    )
    .unwrap();
    assert_eq!((a.data == b.data, a.masks == b.masks), (true, true));
    assert!(set.placement(0, 2000, 0, 0, 224).is_err());
    assert!(set.placement(0, 0, 0, 7, 224).is_err());
    assert!(set.placement(9, 0, 0, 0, 224).is_err());
    // Class balance: three class-0 slides, one class-2 slide.
    let sopts = SamplerOptions {
        seed: 1,
        batch_size: 2,
        balance: Balance::Classes,
        iterations_per_epoch: None,
        bag_size: 1,
        background_class: None,
    };
    let plan = TrainPlan::new(Arc::clone(&set), sopts, AugmentOptions::none(), pre).unwrap();
    assert_eq!(plan.sampler.iterations_per_epoch(), 3); // ceil(2 groups * 3 slides / 2)
    let mut st = plan.sampler.initial_state();
    for _epoch in 0..3 {
        let (mut c0, mut c2, mut seen) = (0, 0, [0usize; 4]);
        for _ in 0..plan.sampler.iterations_per_epoch() {
            let b = plan.batch(&st).unwrap();
            for (k, i) in b.info.iter().enumerate() {
                seen[i.slide_index] += 1;
                c0 += usize::from(b.label(k)[0] == 1.0);
                c2 += usize::from(b.label(k)[2] == 1.0);
                assert!(i.aug.is_identity());
            }
            st = plan.sampler.advance(&st, 1);
        }
        assert_eq!((c0, c2), (3, 3));
        assert_eq!(seen, [1, 1, 1, 3]);
    }
}

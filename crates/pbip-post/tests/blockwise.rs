//! Block-wise (tiles with halos, rows for components, maps in scratch files) post-processing gives
//! exactly the whole-map result.

use pbip_post::NO_LABEL;
use pbip_post::morph::{self, BoundaryRefineParams, Connectivity, Footprint};
use pbip_post::plane::{Planes, Rect};
use pbip_post::postprocess::{
    LabelInputs, LabelParams, MorphOp, PostProcessParams, argmax_labels, label_planes,
    postprocess_planes,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Smooth-ish random confidences for `c` classes (blobs), their arg-max labels, and a keep mask.
fn problem(w: usize, h: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = w * h;
    let centres: Vec<(f32, f32, usize)> = (0..12)
        .map(|_| {
            (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                rng.random_range(0..c),
            )
        })
        .collect();
    let mut conf = vec![0f32; c * n];
    for y in 0..h {
        for x in 0..w {
            let mut s = vec![0.05f32; c];
            for &(cx, cy, k) in &centres {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                s[k] += (-d2 / 60.0).exp();
            }
            for v in s.iter_mut() {
                *v += rng.random_range(0.0..0.35f32);
            }
            let sum: f32 = s.iter().sum();
            for k in 0..c {
                conf[k * n + y * w + x] = s[k] / sum;
            }
        }
    }
    let keep: Vec<u8> = (0..n)
        .map(|i| u8::from(!(i % w < 3 && i / w < h / 3) && rng.random_bool(0.97)))
        .collect();
    let weight: Vec<f32> = keep.iter().map(|&k| f32::from(k)).collect();
    let labels = argmax_labels(&conf, Some(&weight), c, w, h).unwrap();
    (conf, labels, keep)
}

/// The whole-map chain, step by step with the whole-image functions.
fn reference_chain(
    labels: &[u8],
    conf: &[f32],
    c: usize,
    w: usize,
    h: usize,
    p: &PostProcessParams,
) -> Vec<u8> {
    let mut lab = labels.to_vec();
    if p.kernel_size > 1 {
        let fp = Footprint::Square(p.kernel_size);
        lab = match p.morphological_op {
            MorphOp::Closing => morph::label_closing(&lab, w, h, fp).unwrap(),
            MorphOp::Opening => morph::label_opening(&lab, w, h, fp).unwrap(),
            MorphOp::None => lab,
        };
    }
    if p.min_component_size > 0 {
        lab = morph::remove_small_components_labels(
            &lab,
            w,
            h,
            p.min_component_size,
            Connectivity::Eight,
            true,
        )
        .unwrap()
        .0;
    }
    if p.edge_refinement {
        lab = morph::refine_boundaries(&lab, conf, c, w, h, &p.refine).unwrap();
    }
    lab
}

fn param_sets() -> Vec<PostProcessParams> {
    let base = PostProcessParams::default();
    vec![
        base.clone(),
        PostProcessParams {
            morphological_op: MorphOp::Opening,
            kernel_size: 5,
            min_component_size: 30,
            ..base.clone()
        },
        PostProcessParams {
            kernel_size: 4,
            edge_refinement: false,
            ..base.clone()
        },
        PostProcessParams {
            morphological_op: MorphOp::None,
            min_component_size: 0,
            refine: BoundaryRefineParams {
                band_px: 5.0,
                sigma_px: 2.0,
                ..BoundaryRefineParams::default()
            },
            ..base
        },
    ]
}

#[test]
fn tiled_chain_equals_whole_map_chain() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h, c, seed) in [(70, 53, 2, 1u64), (41, 88, 3, 2), (9, 7, 2, 3)] {
        let (conf, labels, _) = problem(w, h, c, seed);
        let conf_planes = Planes::from_vec(w, h, c, conf.clone()).unwrap();
        for p in param_sets() {
            let want = reference_chain(&labels, &conf, c, w, h, &p);
            for (tile, on_disk) in [(1000, false), (16, true), (7, false), (1, true)] {
                let scratch = on_disk.then(|| dir.path());
                let lab = Planes::new_in(scratch, "in.u8", w, h, 1).unwrap();
                lab.write_rect(0, Rect::new(0, 0, w, h), &labels).unwrap();
                let got = postprocess_planes(lab, &conf_planes, &p, tile, scratch)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                assert_eq!(got, want, "{w}x{h} C={c} tile {tile} {p:?}");
            }
        }
    }
    // Scratch files are gone once the planes are dropped.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn label_planes_tiling_and_keep() {
    let (w, h, c) = (66, 45, 2);
    let (conf, labels, keep) = problem(w, h, c, 9);
    let conf_p = Planes::from_vec(w, h, c, conf.clone()).unwrap();
    let keep_p = Planes::from_vec(w, h, 1, keep.clone()).unwrap();
    let post = PostProcessParams::default();
    let mut want = reference_chain(&labels, &conf, c, w, h, &post);
    for (l, &k) in want.iter_mut().zip(&keep) {
        if k == 0 {
            *l = NO_LABEL;
        }
    }
    for tile in [2000, 13] {
        let params = LabelParams {
            crf: None,
            crf_block_px: 512,
            crf_halo_px: 0,
            post: post.clone(),
            tile_px: tile,
        };
        let inputs = LabelInputs {
            confidence: &conf_p,
            keep: &keep_p,
            rgb: None,
        };
        let got = label_planes(&inputs, &params, None)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(got, want, "tile {tile}");
    }
    // The CRF needs the slide image.
    let params = LabelParams {
        crf: Some(pbip_post::crf::CrfParams::default()),
        crf_block_px: 32,
        crf_halo_px: 8,
        post,
        tile_px: 16,
    };
    let inputs = LabelInputs {
        confidence: &conf_p,
        keep: &keep_p,
        rgb: None,
    };
    assert!(label_planes(&inputs, &params, None).is_err());
}

#[test]
fn label_planes_crf_tiles_match_dense_crf_blockwise() {
    let (w, h, c) = (50, 40, 2);
    let (conf, _, _) = problem(w, h, c, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let rgb: Vec<u8> = (0..3 * w * h).map(|_| rng.random_range(100..200)).collect();
    let keep = vec![1u8; w * h];
    let conf_p = Planes::from_vec(w, h, c, conf.clone()).unwrap();
    let keep_p = Planes::from_vec(w, h, 1, keep).unwrap();
    let crf = pbip_post::crf::CrfParams {
        sxy_bilateral: 6.0,
        ..Default::default()
    };
    let rgb_of = |r: Rect| -> pbip_post::error::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(3 * r.area());
        for y in r.y0..r.y1() {
            v.extend_from_slice(&rgb[3 * (y * w + r.x0)..3 * (y * w + r.x1())]);
        }
        Ok(v)
    };
    let params = LabelParams {
        crf: Some(crf.clone()),
        crf_block_px: 16,
        crf_halo_px: 18,
        post: PostProcessParams {
            morphological_op: MorphOp::None,
            min_component_size: 0,
            edge_refinement: false,
            ..PostProcessParams::default()
        },
        tile_px: 16,
    };
    let inputs = LabelInputs {
        confidence: &conf_p,
        keep: &keep_p,
        rgb: Some(&rgb_of),
    };
    let got = label_planes(&inputs, &params, None)
        .unwrap()
        .to_vec()
        .unwrap();
    // The same probabilities through the in-memory block-wise CRF.
    let n = w * h;
    let mut probs = vec![0f32; c * n];
    for i in 0..n {
        let sum: f32 = (0..c).map(|k| conf[k * n + i].max(0.0) + 1e-3).sum();
        for k in 0..c {
            probs[k * n + i] = (conf[k * n + i].max(0.0) + 1e-3) / sum;
        }
    }
    let want = pbip_post::crf::dense_crf_blockwise(
        &probs,
        c,
        w,
        h,
        &rgb,
        &crf,
        pbip_post::crf::CrfBlocks {
            block_px: 16,
            halo_px: 18,
        },
    )
    .unwrap();
    assert_eq!(got, want.labels);
}

//! Inference on one slide: patch placement (coordinate file or hs2p-style tiling), batched
//! prediction with patch reading on a worker thread, block-wise stitching at the output level,
//! post-processing, and the per-slide output files.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pbip_config::Config;
use pbip_coords::Coordinates;
use pbip_post::crf::{CrfParams, dense_crf_blockwise, suggested_halo_px};
use pbip_post::export::{
    ClassInfo, label_map_to_geojson, overlay_labels, write_geojson, write_label_png, write_rgb_png,
};
use pbip_post::npz::{ConfidenceEncoding, write_confidence_maps};
use pbip_post::postprocess::{MorphOp, PostProcessParams, argmax_labels, postprocess_labels};
use pbip_post::stitch::{
    DEFAULT_GAUSSIAN_SIGMA_REL, PatchFootprint, PatchMap, StitchConfig, StitchedBlock, Stitcher,
    Weighting, raster_order,
};
use pbip_post::{NO_LABEL, PostError};
use pbip_slide::{Origin, PatchGeometry, Slide};
use rayon::prelude::*;

use crate::PipelineError;
use crate::stage0_sample_prototypes::open_options;

use super::predictor::{PatchPredictor, PatchRef};
use super::{SlideJob, infer_err};

/// Largest side of `visualization.png`, pixels.
pub const VISUALIZATION_MAX_SIDE_PX: usize = 2048;

/// Output files of one slide (names inside `predictions/<slide>/`).
pub const MASK_PNG: &str = "segmentation_mask.png";
/// Confidence maps (`class_k`, float16).
pub const CONFIDENCE_NPZ: &str = "confidence_maps.npz";
/// Overlay on a thumbnail.
pub const VISUALIZATION_PNG: &str = "visualization.png";
/// Tiled pyramidal label TIFF.
pub const MASK_TIFF: &str = "mask.tiff";
/// Per-slide metadata, written last.
pub const METADATA_JSON: &str = "metadata.json";

/// Placement of every patch of a slide.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Level-0 top-left (after origin conversion).
    pub footprints: Vec<PatchFootprint>,
    /// Read geometry per patch.
    pub geometry: Vec<PatchGeometry>,
    /// Where the placement came from (`file:<path>` or `tiled`).
    pub source: String,
    /// When tiled: the tiling, to save as hs2p `.coordinates.npz`.
    pub tiling: Option<pbip_tiling::Tiling>,
}

/// Settings of the inference core derived from the config (see [`InferSettings::from_config`]).
#[derive(Debug, Clone)]
pub struct InferSettings {
    /// Network input side, px.
    pub patch_size_px: u32,
    /// Patches per forward pass.
    pub batch_size: usize,
    /// Tile overlap for self-tiling, fraction of the tile side.
    pub overlap_ratio: f64,
    /// Level-0 pixels per output pixel.
    pub output_downsample: f64,
    /// Stitch weighting.
    pub weighting: Weighting,
    /// Output block side of the stitcher, output pixels.
    pub block_size_px: usize,
    /// Memory budget of the stitcher's live blocks, bytes.
    pub memory_budget_bytes: u64,
    /// Dense CRF parameters when enabled.
    pub crf: Option<CrfParams>,
    /// CRF tile side, output pixels.
    pub crf_block_px: usize,
    /// Post-processing (min component size in output pixels; may be overridden per slide by µm²).
    pub post: PostProcessParams,
    /// Minimum component area in µm² (overrides `post.min_component_size` with the slide mpp).
    pub min_component_size_um2: Option<f64>,
    /// Label only tissue (HSV tissue mask at the output level).
    pub restrict_to_tissue: bool,
    /// Class names.
    pub class_order: Vec<String>,
}

impl InferSettings {
    /// Settings from `cfg.inference`.
    pub fn from_config(cfg: &Config) -> Result<Self, PipelineError> {
        let inf = &cfg.inference;
        let patch_size_px = inf.patch_size.unwrap_or(cfg.patch_size);
        if patch_size_px == 0 {
            return Err(infer_err("inference.patch_size must be > 0"));
        }
        if inf.batch_size == 0 {
            return Err(infer_err("inference.batch_size must be > 0"));
        }
        if !(0.0..1.0).contains(&inf.overlap_ratio) {
            return Err(infer_err(format!(
                "inference.overlap_ratio must be in [0, 1), got {}",
                inf.overlap_ratio
            )));
        }
        if inf.output_downsample == 0 {
            return Err(infer_err("inference.output_downsample must be >= 1"));
        }
        let weighting = match inf.stitch {
            pbip_config::Stitch::Mean => Weighting::Mean,
            pbip_config::Stitch::Gaussian => Weighting::Gaussian {
                sigma_rel: DEFAULT_GAUSSIAN_SIGMA_REL,
            },
        };
        let c = &inf.crf;
        let crf = inf.use_crf.then(|| CrfParams {
            sxy_gaussian: c.sxy_gaussian as f32,
            compat_gaussian: c.compat_gaussian as f32,
            sxy_bilateral: c.sxy_bilateral as f32,
            srgb: c.srgb as f32,
            compat_bilateral: c.compat_bilateral as f32,
            n_iter: c.iterations,
        });
        let pp = &inf.post_processing;
        let post = PostProcessParams {
            morphological_op: match pp.morphological_op {
                pbip_config::MorphOp::Closing => MorphOp::Closing,
                pbip_config::MorphOp::Opening => MorphOp::Opening,
                pbip_config::MorphOp::None => MorphOp::None,
            },
            kernel_size: pp.kernel_size,
            min_component_size: pp.min_component_size,
            edge_refinement: pp.edge_refinement,
            ..PostProcessParams::default()
        };
        Ok(Self {
            patch_size_px,
            batch_size: inf.batch_size,
            overlap_ratio: inf.overlap_ratio,
            output_downsample: f64::from(inf.output_downsample),
            weighting,
            block_size_px: 512,
            memory_budget_bytes: inf.memory_budget_mb.saturating_mul(1 << 20),
            crf,
            crf_block_px: 512,
            post,
            min_component_size_um2: inf.min_component_size_um2,
            restrict_to_tissue: inf.restrict_to_tissue,
            class_order: cfg.class_order.clone(),
        })
    }
}

/// What one slide produced.
#[derive(Debug, Clone)]
pub struct SlideOutput {
    /// Number of patches predicted.
    pub num_patches: usize,
    /// Output grid width, px.
    pub width_px: usize,
    /// Output grid height, px.
    pub height_px: usize,
    /// Level-0 µm per pixel used.
    pub mpp: f64,
    /// Coordinate source.
    pub coordinate_source: String,
    /// Pixels per class in the final mask (index = class).
    pub class_pixels: Vec<u64>,
    /// Minimum component size used, output pixels.
    pub min_component_size_px: usize,
}

fn post_err(e: PostError) -> PipelineError {
    infer_err(e.to_string())
}

/// Patch placement of a slide: from `job.coordinates_path`, else by tiling the slide.
pub fn place_patches(
    cfg: &Config,
    slide: &Slide,
    job: &SlideJob,
    s: &InferSettings,
    mpp: f64,
) -> Result<Placement, PipelineError> {
    let ds_of = |level: usize| slide.level_downsample(level).map_err(PipelineError::from);
    let mut footprints = Vec::new();
    let mut geometry = Vec::new();
    if let Some(cp) = &job.coordinates_path {
        let coords = Coordinates::read(cp)?;
        for i in 0..coords.len() {
            let Some(g) = coords.get_geometry(i, s.patch_size_px) else {
                continue;
            };
            let level = g.level as usize;
            let lds = ds_of(level)?;
            let size_lv0 = f64::from(g.read_size_px) * lds;
            let (mut x, mut y) = (coords.x[i], coords.y[i]);
            if cfg.slide.coordinate_origin == pbip_config::CoordinateOrigin::Centre {
                let half = (size_lv0 / 2.0).floor() as i64;
                x -= half;
                y -= half;
            }
            footprints.push(PatchFootprint {
                x_lv0: x,
                y_lv0: y,
                size_lv0_px: size_lv0,
            });
            geometry.push(PatchGeometry {
                level,
                read_size_px: g.read_size_px,
                out_size_px: s.patch_size_px,
                origin: Origin::TopLeft,
            });
        }
        return Ok(Placement {
            footprints,
            geometry,
            source: format!("file:{}", cp.display()),
            tiling: None,
        });
    }
    // hs2p-style tiling at the slide's own resolution.
    let downsamples = slide.level_downsamples().to_vec();
    let (w0, h0) = slide.dimensions();
    let levels = pbip_tiling::SlideLevels {
        dimensions_px: [w0, h0],
        level_downsamples: downsamples.clone(),
        base_spacing_um: mpp,
    };
    let params = pbip_tiling::TilingParams {
        requested_tile_size_px: s.patch_size_px,
        requested_spacing_um: mpp,
        overlap: s.overlap_ratio,
        ..pbip_tiling::TilingParams::default()
    };
    let seg_level = pbip_tiling::select_level_for_downsample(&downsamples, params.seg_downsample)
        .map_err(|e| infer_err(format!("tiling: {e}")))?;
    let (sw, sh) = slide.level_dimensions(seg_level)?;
    let (sw, sh) = (
        u32::try_from(sw).unwrap_or(u32::MAX),
        u32::try_from(sh).unwrap_or(u32::MAX),
    );
    let seg = slide.read_region(0, 0, seg_level, sw, sh)?;
    let tiling =
        pbip_tiling::tile_from_seg_image(&levels, seg.width, seg.height, &seg.data, &params)
            .map_err(|e| infer_err(format!("tiling: {e}")))?;
    let c = &tiling.coordinates;
    for i in 0..c.len() {
        let Some(g) = c.get_geometry(i, s.patch_size_px) else {
            continue;
        };
        let level = g.level as usize;
        let size_lv0 = f64::from(g.read_size_px) * ds_of(level)?;
        footprints.push(PatchFootprint {
            x_lv0: c.x[i],
            y_lv0: c.y[i],
            size_lv0_px: size_lv0,
        });
        geometry.push(PatchGeometry {
            level,
            read_size_px: g.read_size_px,
            out_size_px: s.patch_size_px,
            origin: Origin::TopLeft,
        });
    }
    Ok(Placement {
        footprints,
        geometry,
        source: "tiled".into(),
        tiling: Some(tiling),
    })
}

/// Stitched output-level maps of a slide.
#[derive(Debug, Clone, PartialEq)]
pub struct Stitched {
    /// Width, output px.
    pub width_px: usize,
    /// Height, output px.
    pub height_px: usize,
    /// Classes.
    pub num_classes: usize,
    /// `[C, H, W]` confidence.
    pub confidence: Vec<f32>,
    /// `[H, W]` weight, 0 = no data.
    pub weight: Vec<f32>,
}

/// Predicts every patch (reading on a worker thread, `batch_size` per forward) and stitches the
/// maps block-wise at `s.output_downsample`. Patches go in raster order.
pub fn predict_and_stitch(
    slide: &Slide,
    slide_name: &str,
    placement: &Placement,
    predictor: &mut dyn PatchPredictor,
    s: &InferSettings,
    bar: &ProgressBar,
) -> Result<Stitched, PipelineError> {
    let (w0, h0) = slide.dimensions();
    let nc = predictor.num_classes();
    let cfg = StitchConfig {
        slide_width_lv0: w0,
        slide_height_lv0: h0,
        downsample: s.output_downsample,
        num_classes: nc,
        weighting: s.weighting,
        block_size_px: s.block_size_px,
        memory_budget_bytes: s.memory_budget_bytes,
    };
    let out_w = (w0 as f64 / s.output_downsample).ceil() as usize;
    let out_h = (h0 as f64 / s.output_downsample).ceil() as usize;
    let mut full = Stitched {
        width_px: out_w,
        height_px: out_h,
        num_classes: nc,
        confidence: vec![0f32; nc * out_w * out_h],
        weight: vec![0f32; out_w * out_h],
    };
    let order = raster_order(&placement.footprints);
    // Declared order = raster order, so the budget check matches the order patches are added in.
    let fps: Vec<PatchFootprint> = order.iter().map(|&i| placement.footprints[i]).collect();
    let side = s.patch_size_px as usize;
    let batch_size = s.batch_size;
    let mut sink = |b: StitchedBlock| -> pbip_post::error::Result<()> {
        let plane = out_w * out_h;
        for r in 0..b.height_px {
            let dst = (b.y0_px + r) * out_w + b.x0_px;
            full.weight[dst..dst + b.width_px]
                .copy_from_slice(&b.weight[r * b.width_px..][..b.width_px]);
            for k in 0..nc {
                let src = &b.confidence[(k * b.height_px + r) * b.width_px..][..b.width_px];
                full.confidence[k * plane + dst..k * plane + dst + b.width_px].copy_from_slice(src);
            }
        }
        Ok(())
    };
    let mut stitcher = Stitcher::new(cfg, fps.clone(), &mut sink).map_err(post_err)?;
    type Batch = Result<(usize, Vec<Vec<u8>>), PipelineError>;
    std::thread::scope(|scope| -> Result<(), PipelineError> {
        let (tx, rx) = sync_channel::<Batch>(2);
        let order_ref = &order;
        let placement_ref = placement;
        scope.spawn(move || {
            for (bi, chunk) in order_ref.chunks(batch_size).enumerate() {
                let read: Result<Vec<Vec<u8>>, PipelineError> = chunk
                    .par_iter()
                    .map(|&i| {
                        let f = placement_ref.footprints[i];
                        let g = &placement_ref.geometry[i];
                        let mut buf = vec![0u8; side * side * 3];
                        slide.read_patch_into(f.x_lv0, f.y_lv0, g, &mut buf)?;
                        Ok(buf)
                    })
                    .collect();
                let failed = read.is_err();
                if tx.send(read.map(|v| (bi * batch_size, v))).is_err() || failed {
                    break;
                }
            }
        });
        let result = (|| -> Result<(), PipelineError> {
            for msg in rx.iter() {
                let (start, rgbs) = msg?;
                let refs: Vec<PatchRef<'_>> = rgbs
                    .iter()
                    .enumerate()
                    .map(|(j, rgb)| {
                        let f = fps[start + j];
                        PatchRef {
                            slide_name,
                            rgb,
                            side_px: side,
                            x_lv0: f.x_lv0,
                            y_lv0: f.y_lv0,
                            size_lv0_px: f.size_lv0_px,
                        }
                    })
                    .collect();
                let maps = predictor.predict(&refs)?;
                if maps.batch != refs.len() || maps.num_classes != nc {
                    return Err(infer_err(format!(
                        "predictor returned {} maps of {} classes for {} patches of {nc} classes",
                        maps.batch,
                        maps.num_classes,
                        refs.len()
                    )));
                }
                for j in 0..refs.len() {
                    let pm = PatchMap {
                        num_classes: nc,
                        height_px: maps.height_px,
                        width_px: maps.width_px,
                        data: maps.patch(j),
                    };
                    stitcher.add_patch(start + j, pm).map_err(post_err)?;
                }
                bar.inc(refs.len() as u64);
            }
            Ok(())
        })();
        drop(rx);
        result
    })?;
    let missing = stitcher.finish().map_err(post_err)?;
    if missing > 0 {
        return Err(infer_err(format!("{missing} patches were never predicted")));
    }
    Ok(full)
}

/// Reads the slide resampled to `tw x th` pixels, RGB8 HWC: each target pixel is the mean of the
/// pixels of the finest level whose downsample does not exceed the target's that fall in its
/// footprint (area average), read strip by strip so memory stays at one strip of that level.
pub fn read_scaled_rgb(slide: &Slide, tw: usize, th: usize) -> Result<Vec<u8>, PipelineError> {
    if tw == 0 || th == 0 {
        return Ok(Vec::new());
    }
    let (w0, h0) = slide.dimensions();
    let (sx, sy) = (w0 as f64 / tw as f64, h0 as f64 / th as f64);
    let level = slide.best_level_for_downsample(sx.min(sy).max(1.0));
    let lds = slide.level_downsample(level)?;
    let (lw, lh) = slide.level_dimensions(level)?;
    let (lw, lh) = (lw.max(1) as usize, lh.max(1) as usize);
    // Level-pixel span [lo, hi) of target pixel t along an axis (at least one pixel).
    let span = |t: usize, scale: f64, n: usize| -> (usize, usize) {
        let lo = ((t as f64 * scale / lds).floor() as usize).min(n - 1);
        let hi = ((((t + 1) as f64) * scale / lds).floor() as usize).clamp(lo + 1, n);
        (lo, hi)
    };
    let cols: Vec<(usize, usize)> = (0..tw).map(|x| span(x, sx, lw)).collect();
    let mut out = vec![0u8; tw * th * 3];
    const STRIP_ROWS: usize = 256;
    let mut y = 0;
    while y < th {
        let (ly0, _) = span(y, sy, lh);
        let mut y1 = y + 1;
        while y1 < th && span(y1, sy, lh).1 <= ly0 + STRIP_ROWS {
            y1 += 1;
        }
        let ly1 = span(y1 - 1, sy, lh).1;
        let strip = slide.read_region(
            0,
            (ly0 as f64 * lds).round() as i64,
            level,
            lw as u32,
            (ly1 - ly0) as u32,
        )?;
        for ty in y..y1 {
            let (r0, r1) = span(ty, sy, lh);
            for (tx, &(c0, c1)) in cols.iter().enumerate() {
                let mut acc = [0u32; 3];
                for r in r0..r1 {
                    let row = &strip.data[3 * ((r - ly0) * lw + c0)..3 * ((r - ly0) * lw + c1)];
                    for px in row.chunks_exact(3) {
                        acc[0] += u32::from(px[0]);
                        acc[1] += u32::from(px[1]);
                        acc[2] += u32::from(px[2]);
                    }
                }
                let n = ((r1 - r0) * (c1 - c0)) as u32;
                for ch in 0..3 {
                    out[3 * (ty * tw + tx) + ch] = ((acc[ch] + n / 2) / n) as u8;
                }
            }
        }
        y = y1;
    }
    Ok(out)
}

/// Labels from stitched maps: arg-max, optional block-wise dense CRF (on the slide image at the
/// output resolution), then the post-processing chain. Pixels without data stay [`NO_LABEL`], and
/// with `restrict_to_tissue` so do pixels outside the HSV tissue mask (hs2p's method, computed on the
/// area-averaged slide image at the output resolution).
pub fn labels_from_maps(
    slide: &Slide,
    st: &Stitched,
    s: &InferSettings,
    min_component_size_px: usize,
) -> Result<Vec<u8>, PipelineError> {
    let (w, h, c) = (st.width_px, st.height_px, st.num_classes);
    let n = w * h;
    let mut labels = argmax_labels(&st.confidence, Some(&st.weight), c, w, h).map_err(post_err)?;
    let rgb = if s.crf.is_some() || s.restrict_to_tissue {
        Some(read_scaled_rgb(slide, w, h)?)
    } else {
        None
    };
    if let (Some(crf), Some(rgb)) = (&s.crf, &rgb) {
        let mut probs = vec![0f32; c * n];
        const EPS: f32 = 1e-3;
        for i in 0..n {
            let sum: f32 = (0..c)
                .map(|k| st.confidence[k * n + i].max(0.0) + EPS)
                .sum();
            for k in 0..c {
                probs[k * n + i] = (st.confidence[k * n + i].max(0.0) + EPS) / sum;
            }
        }
        let out = dense_crf_blockwise(
            &probs,
            c,
            w,
            h,
            rgb,
            crf,
            s.crf_block_px,
            suggested_halo_px(crf),
        )
        .map_err(post_err)?;
        for ((l, &crf_label), &wt) in labels.iter_mut().zip(&out.labels).zip(&st.weight) {
            if wt > 0.0 {
                *l = crf_label;
            }
        }
    }
    let mut keep: Vec<bool> = st.weight.iter().map(|&wt| wt > 0.0).collect();
    if s.restrict_to_tissue
        && let Some(rgb) = &rgb
        && n > 0
    {
        let (w32, h32) = (w as u32, h as u32);
        let tissue = pbip_tiling::tissue_mask(w32, h32, rgb, &pbip_tiling::TissueMethod::default())
            .map_err(|e| infer_err(format!("tissue mask: {e}")))?;
        for (k, &t) in keep.iter_mut().zip(&tissue) {
            *k &= t != 0;
        }
        for (l, &k) in labels.iter_mut().zip(&keep) {
            if !k {
                *l = NO_LABEL;
            }
        }
    }
    let post = PostProcessParams {
        min_component_size: min_component_size_px,
        ..s.post.clone()
    };
    let mut out = postprocess_labels(&labels, &st.confidence, c, w, h, &post).map_err(post_err)?;
    // Post-processing may grow classes into no-data / non-tissue pixels (hole filling): keep them unlabelled.
    for (l, &k) in out.iter_mut().zip(&keep) {
        if !k {
            *l = NO_LABEL;
        }
    }
    Ok(out)
}

/// Runs the whole slide and writes every per-slide output except `metadata.json` into `dir`.
pub fn infer_slide(
    cfg: &Config,
    job: &SlideJob,
    predictor: &mut dyn PatchPredictor,
    s: &InferSettings,
    dir: &Path,
    progress: Option<&MultiProgress>,
) -> Result<SlideOutput, PipelineError> {
    let slide = Slide::open(&job.slide_path, &open_options(cfg, true))?;
    let mpp = match job.mpp.or_else(|| slide.mpp().map(|(x, y)| 0.5 * (x + y))) {
        Some(m) if m.is_finite() && m > 0.0 => m,
        _ => {
            return Err(infer_err(format!(
                "{}: the slide has no mpp (microns per pixel) in its metadata; give it in the manifest's mpp column",
                job.slide_path.display()
            )));
        }
    };
    if predictor.num_classes() != s.class_order.len() {
        return Err(infer_err(format!(
            "the model has {} classes, class_order has {} ({:?})",
            predictor.num_classes(),
            s.class_order.len(),
            s.class_order
        )));
    }
    let placement = place_patches(cfg, &slide, job, s, mpp)?;
    if placement.footprints.is_empty() {
        tracing::warn!(slide = %job.name, "no patches (no tissue found / empty coordinate file): the mask is empty");
    }
    if let Some(t) = &placement.tiling {
        let npz = dir.join(format!("{}.coordinates.npz", job.name));
        t.write_hs2p(&npz, &job.name, &job.slide_path.to_string_lossy())
            .map_err(|e| infer_err(format!("{}: {e}", npz.display())))?;
    }
    let bar = match progress {
        Some(mp) => mp.add(ProgressBar::new(placement.footprints.len() as u64)),
        None => ProgressBar::hidden(),
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} patches {per_sec} ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(job.name.clone());
    let t0 = Instant::now();
    let st = predict_and_stitch(&slide, &job.name, &placement, predictor, s, &bar)?;
    bar.finish_and_clear();
    tracing::info!(slide = %job.name, patches = placement.footprints.len(), secs = t0.elapsed().as_secs_f64(), "predicted and stitched");
    let min_component_size_px = match s.min_component_size_um2 {
        Some(a) => {
            let px_um = mpp * s.output_downsample;
            (a / (px_um * px_um)).round().max(0.0) as usize
        }
        None => s.post.min_component_size,
    };
    let labels = labels_from_maps(&slide, &st, s, min_component_size_px)?;
    write_outputs(&slide, job, &st, &labels, s, mpp, dir)?;
    let mut class_pixels = vec![0u64; st.num_classes];
    for &l in &labels {
        if let Some(c) = class_pixels.get_mut(l as usize) {
            *c += 1;
        }
    }
    Ok(SlideOutput {
        num_patches: placement.footprints.len(),
        width_px: st.width_px,
        height_px: st.height_px,
        mpp,
        coordinate_source: placement.source,
        class_pixels,
        min_component_size_px,
    })
}

fn write_outputs(
    slide: &Slide,
    job: &SlideJob,
    st: &Stitched,
    labels: &[u8],
    s: &InferSettings,
    mpp: f64,
    dir: &Path,
) -> Result<(), PipelineError> {
    let (w, h) = (st.width_px, st.height_px);
    let classes = ClassInfo::from_names(&s.class_order);
    let palette: Vec<[u8; 3]> = classes.iter().map(|c| c.color).collect();
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| infer_err("output too wide"))?,
        u32::try_from(h).map_err(|_| infer_err("output too tall"))?,
    );
    write_label_png(&dir.join(MASK_PNG), labels, w32, h32, &palette).map_err(post_err)?;
    write_confidence_maps(
        &dir.join(CONFIDENCE_NPZ),
        &st.confidence,
        st.num_classes,
        w,
        h,
        ConfidenceEncoding::Float16,
    )
    .map_err(post_err)?;
    // Visualization: thumbnail of at most VISUALIZATION_MAX_SIDE_PX per side.
    let scale = (VISUALIZATION_MAX_SIDE_PX as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as usize).max(1),
        ((h as f64 * scale).round() as usize).max(1),
    );
    let thumb = read_scaled_rgb(slide, tw, th)?;
    let overlay = overlay_labels(&thumb, tw, th, labels, w, h, &palette, 0.45).map_err(post_err)?;
    write_rgb_png(&dir.join(VISUALIZATION_PNG), &overlay, tw as u32, th as u32)
        .map_err(post_err)?;
    // Pyramidal label TIFF at the output level: values = class index, 255 = no label.
    let mut topts = pbip_pyramid::PyramidOptions::label_mask(Some(mpp * s.output_downsample));
    topts.edge_padding = pbip_pyramid::EdgePadding::Value(NO_LABEL);
    topts.tile_size_px = 256;
    topts.min_level_size_px = 256;
    pbip_pyramid::write_pyramid_from_image(&dir.join(MASK_TIFF), w32, h32, labels, &topts)
        .map_err(|e| infer_err(format!("mask.tiff: {e}")))?;
    let gj = label_map_to_geojson(labels, w, h, s.output_downsample, &classes).map_err(post_err)?;
    write_geojson(&dir.join(format!("{}.geojson", job.name)), &gj).map_err(post_err)?;
    Ok(())
}

/// The files a complete slide output folder has (besides `metadata.json`).
pub fn expected_files(name: &str) -> Vec<PathBuf> {
    [MASK_PNG, CONFIDENCE_NPZ, VISUALIZATION_PNG, MASK_TIFF]
        .iter()
        .map(PathBuf::from)
        .chain(std::iter::once(PathBuf::from(format!("{name}.geojson"))))
        .collect()
}

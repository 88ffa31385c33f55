//! Inference on one slide: patch placement (coordinate file or hs2p-style tiling), batched
//! prediction with patch reading on a worker thread, block-wise stitching at the output level,
//! post-processing, and the per-slide output files.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar};
use pbip_config::Config;
use pbip_coords::Coordinates;
use pbip_post::crf::{CrfParams, suggested_halo_px};
use pbip_post::export::{
    ClassInfo, LabelPngWriter, overlay_labels, write_polygons_geojson, write_rgb_png,
};
use pbip_post::npz::{NpzWriter, npy_header};
use pbip_post::plane::{Planes, Rect};
use pbip_post::polygons::MultiClassTracer;
use pbip_post::postprocess::{
    DEFAULT_TILE_PX, LabelInputs, LabelParams, MorphOp, PostProcessParams, label_planes,
};
use pbip_post::stitch::{
    DEFAULT_GAUSSIAN_SIGMA_REL, PatchFootprint, PatchMap, StitchConfig, StitchedBlock, Stitcher,
    Weighting, raster_order,
};
use pbip_post::{NO_LABEL, PostError};
use pbip_slide::{Origin, PatchGeometry, Slide};
use rayon::prelude::*;

use crate::PipelineError;
use crate::settings::open_options;

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
    /// Network-input spacing for self-tiling, µm/px (`None` = the slide's level-0 mpp).
    pub spacing_um: Option<f64>,
    /// Level-0 pixels per output pixel (`auto` resolves per slide, see [`Self::downsample_for`]).
    pub output_downsample: pbip_config::OutputDownsample,
    /// Largest output side for `auto`, output pixels.
    pub max_output_side_px: u64,
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
    /// Tile side of the other block-wise passes (morphology, refinement), output pixels.
    pub tile_px: usize,
    /// Folder for scratch maps (`None` = the slide's temporary output folder).
    pub scratch_dir: Option<PathBuf>,
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
        if inf.batch_size == pbip_config::BatchSize::Fixed(0) {
            return Err(infer_err("inference.batch_size must be > 0 or auto"));
        }
        if !(0.0..1.0).contains(&inf.overlap_ratio) {
            return Err(infer_err(format!(
                "inference.overlap_ratio must be in [0, 1), got {}",
                inf.overlap_ratio
            )));
        }
        if inf.output_downsample == pbip_config::OutputDownsample::Factor(0) {
            return Err(infer_err(
                "inference.output_downsample must be >= 1 or auto",
            ));
        }
        let weighting = match inf.stitch {
            pbip_config::Stitch::Mean => Weighting::Mean,
            pbip_config::Stitch::Gaussian => Weighting::Gaussian {
                sigma_rel: DEFAULT_GAUSSIAN_SIGMA_REL,
            },
        };
        let c = &inf.crf;
        let crf = inf.use_crf.then_some(CrfParams {
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
            // `auto`: a placeholder until the run asks the predictor (`run_with_predictor`)
            batch_size: inf
                .batch_size
                .fixed()
                .unwrap_or(pbip_model::autobatch::CPU_AUTO_BATCH),
            overlap_ratio: inf.overlap_ratio,
            spacing_um: inf.spacing_um,
            output_downsample: inf.output_downsample,
            max_output_side_px: inf.max_output_side_px,
            weighting,
            block_size_px: 512,
            memory_budget_bytes: inf.memory_budget_mb.saturating_mul(1 << 20),
            crf,
            crf_block_px: 512,
            tile_px: DEFAULT_TILE_PX,
            scratch_dir: inf.scratch_dir.clone(),
            post,
            min_component_size_um2: inf.min_component_size_um2,
            restrict_to_tissue: inf.restrict_to_tissue,
            class_order: cfg.class_order.clone(),
        })
    }
}

impl InferSettings {
    /// Level-0 pixels per output pixel for a slide of `w0 x h0` level-0 pixels.
    pub fn downsample_for(&self, w0: u64, h0: u64) -> f64 {
        f64::from(
            self.output_downsample
                .resolve(w0, h0, self.max_output_side_px),
        )
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
    /// Level-0 pixels per output pixel used.
    pub output_downsample: f64,
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
    match &job.coordinates_path {
        Some(cp) => place_from_file(cfg, slide, job, s, cp),
        None => place_by_tiling(slide, s, mpp),
    }
}

/// The footprints and read geometries of the rows of `coords` (level-0 top-left corners; with
/// `centre`, (x, y) are patch centres and shifted by half the footprint).
fn patches_of(
    slide: &Slide,
    coords: &Coordinates,
    patch_size_px: u32,
    centre: bool,
) -> Result<(Vec<PatchFootprint>, Vec<PatchGeometry>), PipelineError> {
    let mut footprints = Vec::new();
    let mut geometry = Vec::new();
    for i in 0..coords.len() {
        let Some(g) = coords.get_geometry(i, patch_size_px) else {
            continue;
        };
        let level = g.level as usize;
        let size_lv0 = f64::from(g.read_size_px) * slide.level_downsample(level)?;
        let (mut x, mut y) = (coords.x[i], coords.y[i]);
        if centre {
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
            out_size_px: patch_size_px,
            origin: Origin::TopLeft,
        });
    }
    Ok((footprints, geometry))
}

/// Placement from the coordinate file `cp`; patches that do not touch the slide are skipped
/// with a warning (an error when none does).
fn place_from_file(
    cfg: &Config,
    slide: &Slide,
    job: &SlideJob,
    s: &InferSettings,
    cp: &Path,
) -> Result<Placement, PipelineError> {
    let coords = Coordinates::read(cp)?;
    let centre = cfg.slide.coordinate_origin == pbip_config::CoordinateOrigin::Centre;
    let (mut footprints, mut geometry) = patches_of(slide, &coords, s.patch_size_px, centre)?;
    // Patches that do not touch the slide would be read as padding and stitched nowhere.
    let (w0, h0) = slide.dimensions();
    let touches = |f: &PatchFootprint| {
        let size = f.size_lv0_px.ceil() as i64;
        f.x_lv0 < w0 as i64
            && f.y_lv0 < h0 as i64
            && f.x_lv0.saturating_add(size) > 0
            && f.y_lv0.saturating_add(size) > 0
    };
    let outside: Vec<usize> = (0..footprints.len())
        .filter(|&i| !touches(&footprints[i]))
        .collect();
    if !outside.is_empty() {
        let first = &footprints[outside[0]];
        if outside.len() == footprints.len() {
            return Err(infer_err(format!(
                "{}: all {} coordinates lie outside the slide ({w0} x {h0} px at level 0; e.g. \
                 ({}, {})): wrong slide for this coordinate file, or coordinates at another \
                 level / in microns?",
                cp.display(),
                footprints.len(),
                first.x_lv0,
                first.y_lv0
            )));
        }
        tracing::warn!(
            slide = %job.name,
            "{} of {} coordinates in {} lie outside the slide ({w0} x {h0} px at level 0; \
             e.g. ({}, {})); they are skipped",
            outside.len(),
            footprints.len(),
            cp.display(),
            first.x_lv0,
            first.y_lv0
        );
        (footprints, geometry) = footprints
            .into_iter()
            .zip(geometry)
            .filter(|(f, _)| touches(f))
            .unzip();
    }
    Ok(Placement {
        footprints,
        geometry,
        source: format!("file:{}", cp.display()),
        tiling: None,
    })
}

/// hs2p-style tiling at the slide's own resolution.
fn place_by_tiling(slide: &Slide, s: &InferSettings, mpp: f64) -> Result<Placement, PipelineError> {
    let downsamples = slide.level_downsamples().to_vec();
    let (w0, h0) = slide.dimensions();
    let levels = pbip_tiling::SlideLevels {
        dimensions_px: [w0, h0],
        level_downsamples: downsamples.clone(),
        base_spacing_um: mpp,
    };
    let params = pbip_tiling::TilingParams {
        requested_tile_size_px: s.patch_size_px,
        requested_spacing_um: s.spacing_um.unwrap_or(mpp),
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
    let (footprints, geometry) = patches_of(slide, &tiling.coordinates, s.patch_size_px, false)?;
    Ok(Placement {
        footprints,
        geometry,
        source: "tiled".into(),
        tiling: Some(tiling),
    })
}

/// Stitched output-level maps of a slide, in scratch files (or memory).
#[derive(Debug)]
pub struct Stitched {
    /// Width, output px.
    pub width_px: usize,
    /// Height, output px.
    pub height_px: usize,
    /// Classes.
    pub num_classes: usize,
    /// Level-0 px per output px.
    pub downsample: f64,
    /// `C` planes of stitched confidence (0 where no patch).
    pub confidence: Planes<f32>,
    /// 1 plane: 1 where the pixel has data (and is tissue, with `restrict_to_tissue`), else 0.
    pub keep: Planes<u8>,
}

/// Output-level tissue mask of a slide, computed on a thumbnail of at most
/// [`VISUALIZATION_MAX_SIDE_PX`] per side and sampled with nearest neighbour (pixel centres
/// aligned); at output sizes up to that it is exact at the output level.
#[derive(Debug, Clone)]
pub struct TissueMap {
    /// Thumbnail width.
    pub width_px: usize,
    /// Thumbnail height.
    pub height_px: usize,
    /// 0/1 per thumbnail pixel.
    pub mask: Vec<u8>,
}

impl TissueMap {
    /// Tissue (hs2p HSV method) of an RGB thumbnail.
    pub fn from_thumbnail(tw: usize, th: usize, rgb: &[u8]) -> Result<Self, PipelineError> {
        let mask = if tw * th == 0 {
            Vec::new()
        } else {
            pbip_tiling::tissue_mask(
                tw as u32,
                th as u32,
                rgb,
                &pbip_tiling::TissueMethod::default(),
            )
            .map_err(|e| infer_err(format!("tissue mask: {e}")))?
        };
        Ok(Self {
            width_px: tw,
            height_px: th,
            mask,
        })
    }

    /// Is output pixel `(x, y)` of an `out_w x out_h` grid tissue?
    fn at(&self, x: usize, y: usize, out_w: usize, out_h: usize) -> bool {
        if self.mask.is_empty() {
            return false;
        }
        let tx = (((x as f64 + 0.5) * self.width_px as f64 / out_w as f64) as usize)
            .min(self.width_px - 1);
        let ty = (((y as f64 + 0.5) * self.height_px as f64 / out_h as f64) as usize)
            .min(self.height_px - 1);
        self.mask[ty * self.width_px + tx] != 0
    }
}

/// Thumbnail size (at most [`VISUALIZATION_MAX_SIDE_PX`] per side) of a `w x h` output grid.
pub fn thumbnail_size(w: usize, h: usize) -> (usize, usize) {
    let scale = (VISUALIZATION_MAX_SIDE_PX as f64 / w.max(h).max(1) as f64).min(1.0);
    (
        ((w as f64 * scale).round() as usize).max(1),
        ((h as f64 * scale).round() as usize).max(1),
    )
}

/// Output grid size at `downsample` of a `w0 x h0` slide.
pub fn output_size(w0: u64, h0: u64, downsample: f64) -> (usize, usize) {
    (
        (w0 as f64 / downsample).ceil() as usize,
        (h0 as f64 / downsample).ceil() as usize,
    )
}

/// Where [`predict_and_stitch`] puts the stitched maps.
#[derive(Debug, Clone, Copy)]
pub struct StitchTarget<'a> {
    /// Level-0 pixels per output pixel.
    pub downsample: f64,
    /// When given, `keep` is cleared outside tissue.
    pub tissue: Option<&'a TissueMap>,
    /// Folder of the output planes (memory when `None`).
    pub scratch: Option<&'a Path>,
}

/// Predicts every patch (reading on a worker thread, `batch_size` per forward) and stitches the
/// maps block-wise into the planes of `target`. Patches go in raster order.
pub fn predict_and_stitch(
    slide: &Slide,
    slide_name: &str,
    placement: &Placement,
    predictor: &mut dyn PatchPredictor,
    s: &InferSettings,
    target: &StitchTarget<'_>,
    bar: &ProgressBar,
) -> Result<Stitched, PipelineError> {
    let StitchTarget {
        downsample,
        tissue,
        scratch,
    } = *target;
    let (w0, h0) = slide.dimensions();
    let nc = predictor.num_classes();
    let cfg = StitchConfig {
        slide_width_lv0: w0,
        slide_height_lv0: h0,
        downsample,
        num_classes: nc,
        weighting: s.weighting,
        block_size_px: s.block_size_px,
        memory_budget_bytes: s.memory_budget_bytes,
    };
    let (out_w, out_h) = output_size(w0, h0, downsample);
    let confidence =
        Planes::<f32>::new_in(scratch, "confidence.f32", out_w, out_h, nc).map_err(post_err)?;
    let keep = Planes::<u8>::new_in(scratch, "keep.u8", out_w, out_h, 1).map_err(post_err)?;
    let order = raster_order(&placement.footprints);
    // Declared order = raster order, so the budget check matches the order patches are added in.
    let fps: Vec<PatchFootprint> = order.iter().map(|&i| placement.footprints[i]).collect();
    let side = s.patch_size_px as usize;
    let batch_size = s.batch_size;
    let mut sink = |b: StitchedBlock| -> pbip_post::error::Result<()> {
        let rect = Rect::new(b.x0_px, b.y0_px, b.width_px, b.height_px);
        if b.weight.iter().all(|&wt| wt <= 0.0) {
            return Ok(()); // the planes start at zero: nothing to write
        }
        confidence.write_rect_all(rect, &b.confidence)?;
        let mut k = Vec::with_capacity(rect.area());
        for r in 0..b.height_px {
            for c in 0..b.width_px {
                let has_data = b.weight[r * b.width_px + c] > 0.0;
                let ok =
                    has_data && tissue.is_none_or(|t| t.at(b.x0_px + c, b.y0_px + r, out_w, out_h));
                k.push(u8::from(ok));
            }
        }
        keep.write_rect(0, rect, &k)
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
    Ok(Stitched {
        width_px: out_w,
        height_px: out_h,
        num_classes: nc,
        downsample,
        confidence,
        keep,
    })
}

/// Reads rectangle `r` of the slide resampled to a `tw x th` grid, RGB8 HWC (`r.w * r.h * 3`
/// bytes): each grid pixel is the mean of the pixels of the finest level whose downsample does not
/// exceed the grid's that fall in its footprint (area average). The level is read in strips of at
/// most 256 rows, so memory stays at one strip of the rectangle's width.
pub fn read_scaled_rgb_rect(
    slide: &Slide,
    tw: usize,
    th: usize,
    r: Rect,
) -> Result<Vec<u8>, PipelineError> {
    if r.area() == 0 {
        return Ok(Vec::new());
    }
    if r.x1() > tw || r.y1() > th {
        return Err(infer_err(format!(
            "scaled read: rect {r:?} outside the {tw}x{th} grid"
        )));
    }
    let (w0, h0) = slide.dimensions();
    let (sx, sy) = (w0 as f64 / tw as f64, h0 as f64 / th as f64);
    let level = slide.best_level_for_downsample(sx.min(sy).max(1.0));
    let lds = slide.level_downsample(level)?;
    let (lw, lh) = slide.level_dimensions(level)?;
    let (lw, lh) = (lw.max(1) as usize, lh.max(1) as usize);
    // Level-pixel span [lo, hi) of grid pixel t along an axis (at least one pixel).
    let span = |t: usize, scale: f64, n: usize| -> (usize, usize) {
        let lo = ((t as f64 * scale / lds).floor() as usize).min(n - 1);
        let hi = ((((t + 1) as f64) * scale / lds).floor() as usize).clamp(lo + 1, n);
        (lo, hi)
    };
    let cols: Vec<(usize, usize)> = (r.x0..r.x1()).map(|x| span(x, sx, lw)).collect();
    let (lx0, lx1) = (cols[0].0, cols[cols.len() - 1].1);
    let lspan = lx1 - lx0;
    let mut out = vec![0u8; r.area() * 3];
    const STRIP_ROWS: usize = 256;
    let mut y = r.y0;
    while y < r.y1() {
        let (ly0, _) = span(y, sy, lh);
        let mut y1 = y + 1;
        while y1 < r.y1() && span(y1, sy, lh).1 <= ly0 + STRIP_ROWS {
            y1 += 1;
        }
        let ly1 = span(y1 - 1, sy, lh).1;
        let strip = slide.read_region(
            (lx0 as f64 * lds).round() as i64,
            (ly0 as f64 * lds).round() as i64,
            level,
            lspan as u32,
            (ly1 - ly0) as u32,
        )?;
        for ty in y..y1 {
            let (r0, r1) = span(ty, sy, lh);
            for (i, &(c0, c1)) in cols.iter().enumerate() {
                let mut acc = [0u32; 3];
                for rr in r0..r1 {
                    let base = (rr - ly0) * lspan;
                    let row = &strip.data[3 * (base + c0 - lx0)..3 * (base + c1 - lx0)];
                    for px in row.chunks_exact(3) {
                        acc[0] += u32::from(px[0]);
                        acc[1] += u32::from(px[1]);
                        acc[2] += u32::from(px[2]);
                    }
                }
                let n = ((r1 - r0) * (c1 - c0)) as u32;
                for ch in 0..3 {
                    out[3 * ((ty - r.y0) * r.w + i) + ch] = ((acc[ch] + n / 2) / n) as u8;
                }
            }
        }
        y = y1;
    }
    Ok(out)
}

/// The whole slide resampled to `tw x th` ([`read_scaled_rgb_rect`] of the whole grid).
pub fn read_scaled_rgb(slide: &Slide, tw: usize, th: usize) -> Result<Vec<u8>, PipelineError> {
    read_scaled_rgb_rect(slide, tw, th, Rect::new(0, 0, tw, th))
}

/// Labels from stitched maps, block-wise ([`pbip_post::postprocess::label_planes`]): arg-max where
/// `keep`, optional dense CRF on the slide image at the output resolution (tiles of
/// `crf_block_px` with halos), then the post-processing chain; pixels without data (or outside
/// tissue) stay [`NO_LABEL`]. Intermediate planes live in `scratch` (memory when `None`).
pub fn labels_from_maps(
    slide: &Slide,
    st: &Stitched,
    s: &InferSettings,
    min_component_size_px: usize,
    scratch: Option<&Path>,
) -> Result<Planes<u8>, PipelineError> {
    let (w, h) = (st.width_px, st.height_px);
    let rgb_of = |r: Rect| -> pbip_post::error::Result<Vec<u8>> {
        read_scaled_rgb_rect(slide, w, h, r).map_err(|e| PostError::InvalidArgument(e.to_string()))
    };
    let inputs = LabelInputs {
        confidence: &st.confidence,
        keep: &st.keep,
        rgb: Some(&rgb_of),
    };
    let params = LabelParams {
        crf: s.crf.clone(),
        crf_block_px: s.crf_block_px,
        crf_halo_px: s.crf.as_ref().map_or(0, suggested_halo_px),
        post: PostProcessParams {
            min_component_size: min_component_size_px,
            ..s.post.clone()
        },
        tile_px: s.tile_px,
    };
    label_planes(&inputs, &params, scratch).map_err(post_err)
}

/// A scratch folder removed (with its files) when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(base: &Path, slide_name: &str) -> Result<Self, PipelineError> {
        let p = base.join(format!(".pbip-scratch-{slide_name}-{}", std::process::id()));
        if p.exists() {
            let _ = std::fs::remove_dir_all(&p);
        }
        std::fs::create_dir_all(&p).map_err(|source| PipelineError::Io {
            path: p.clone(),
            source,
        })?;
        Ok(Self(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), "could not remove the scratch folder: {e}");
        }
    }
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
    let (w0, h0) = slide.dimensions();
    let downsample = s.downsample_for(w0, h0);
    let (out_w, out_h) = output_size(w0, h0, downsample);
    tracing::info!(slide = %job.name, downsample, out_w, out_h, "output grid");
    let placement = place_patches(cfg, &slide, job, s, mpp)?;
    if placement.footprints.is_empty() {
        tracing::warn!(slide = %job.name, "no patches (no tissue found / empty coordinate file): the mask is empty");
    }
    if let Some(t) = &placement.tiling {
        let npz = dir.join(format!("{}.coordinates.npz", job.name));
        t.write_hs2p(&npz, &job.name, &job.slide_path.to_string_lossy())
            .map_err(|e| infer_err(format!("{}: {e}", npz.display())))?;
    }
    let scratch = ScratchDir::create(s.scratch_dir.as_deref().unwrap_or(dir), &job.name)?;
    // Thumbnail: visualisation background and tissue mask.
    let thumb = Thumbnail::read(&slide, out_w, out_h)?;
    let tissue = if s.restrict_to_tissue {
        Some(TissueMap::from_thumbnail(
            thumb.width_px,
            thumb.height_px,
            &thumb.rgb,
        )?)
    } else {
        None
    };
    let bar = crate::progress::multi_progress_bar(
        progress,
        placement.footprints.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} patches {per_sec} ETA {eta}",
        job.name.clone(),
    );
    let t0 = Instant::now();
    let st = predict_and_stitch(
        &slide,
        &job.name,
        &placement,
        predictor,
        s,
        &StitchTarget {
            downsample,
            tissue: tissue.as_ref(),
            scratch: Some(&scratch.0),
        },
        &bar,
    )?;
    bar.finish_and_clear();
    tracing::info!(slide = %job.name, patches = placement.footprints.len(), secs = t0.elapsed().as_secs_f64(), "predicted and stitched");
    let min_component_size_px = match s.min_component_size_um2 {
        Some(a) => {
            let px_um = mpp * downsample;
            (a / (px_um * px_um)).round().max(0.0) as usize
        }
        None => s.post.min_component_size,
    };
    let t1 = Instant::now();
    let labels = labels_from_maps(&slide, &st, s, min_component_size_px, Some(&scratch.0))?;
    tracing::info!(slide = %job.name, secs = t1.elapsed().as_secs_f64(), "labels (CRF, post-processing)");
    let t2 = Instant::now();
    let class_pixels = write_outputs(job, &st, &labels, s, mpp, &thumb, dir)?;
    tracing::info!(slide = %job.name, secs = t2.elapsed().as_secs_f64(), "outputs written");
    drop(labels);
    drop(st);
    drop(scratch);
    Ok(SlideOutput {
        num_patches: placement.footprints.len(),
        width_px: out_w,
        height_px: out_h,
        mpp,
        output_downsample: downsample,
        coordinate_source: placement.source,
        class_pixels,
        min_component_size_px,
    })
}

/// Rows per band when streaming the output maps (about 8 MiB of f32 per band).
fn band_rows(width: usize) -> usize {
    ((8 << 20) / (4 * width.max(1))).clamp(1, 4096)
}

/// The slide resampled to at most [`VISUALIZATION_MAX_SIDE_PX`] per side
/// ([`thumbnail_size`], [`read_scaled_rgb`]): the visualisation background and the source of the
/// tissue mask.
struct Thumbnail {
    width_px: usize,
    height_px: usize,
    /// RGB8 HWC.
    rgb: Vec<u8>,
}

impl Thumbnail {
    /// The thumbnail of a slide whose output grid is `out_w x out_h`.
    fn read(slide: &Slide, out_w: usize, out_h: usize) -> Result<Self, PipelineError> {
        let (width_px, height_px) = thumbnail_size(out_w, out_h);
        Ok(Self {
            width_px,
            height_px,
            rgb: read_scaled_rgb(slide, width_px, height_px)?,
        })
    }
}

/// Writes the per-slide files from the label and confidence planes, streaming bands of rows.
/// Returns the number of output pixels per class.
fn write_outputs(
    job: &SlideJob,
    st: &Stitched,
    labels: &Planes<u8>,
    s: &InferSettings,
    mpp: f64,
    thumb: &Thumbnail,
    dir: &Path,
) -> Result<Vec<u64>, PipelineError> {
    let (w, h, nc) = (st.width_px, st.height_px, st.num_classes);
    let (tw, th) = (thumb.width_px, thumb.height_px);
    let classes = ClassInfo::from_names(&s.class_order);
    let palette: Vec<[u8; 3]> = classes.iter().map(|c| c.color).collect();
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| infer_err("output too wide"))?,
        u32::try_from(h).map_err(|_| infer_err("output too tall"))?,
    );
    let band = band_rows(w);
    // One pass over the label rows: PNG, GeoJSON polygons, class counts, thumbnail labels.
    let mut png =
        LabelPngWriter::create(&dir.join(MASK_PNG), w32, h32, &palette).map_err(post_err)?;
    let mut tracer = MultiClassTracer::new(w, nc);
    let mut class_pixels = vec![0u64; nc];
    let thumb_rows: Vec<usize> = (0..th)
        .map(|ty| (((ty as f64 + 0.5) * h as f64 / th as f64) as usize).min(h.saturating_sub(1)))
        .collect();
    let thumb_cols: Vec<usize> = (0..tw)
        .map(|tx| (((tx as f64 + 0.5) * w as f64 / tw as f64) as usize).min(w.saturating_sub(1)))
        .collect();
    let mut thumb_labels = vec![NO_LABEL; tw * th];
    let mut next_thumb_row = 0usize;
    for y0 in (0..h).step_by(band) {
        let rows = band.min(h - y0);
        let data = labels.read_rows(0, y0, rows).map_err(post_err)?;
        for (r, row) in data.chunks_exact(w).enumerate() {
            png.write_row(row).map_err(post_err)?;
            tracer.push_row(row).map_err(post_err)?;
            for &l in row {
                if let Some(c) = class_pixels.get_mut(l as usize) {
                    *c += 1;
                }
            }
            while next_thumb_row < th && thumb_rows[next_thumb_row] == y0 + r {
                let dst = &mut thumb_labels[next_thumb_row * tw..(next_thumb_row + 1) * tw];
                for (d, &x) in dst.iter_mut().zip(&thumb_cols) {
                    *d = row[x];
                }
                next_thumb_row += 1;
            }
        }
    }
    png.finish().map_err(post_err)?;
    write_polygons_geojson(
        &dir.join(format!("{}.geojson", job.name)),
        &tracer.finish().map_err(post_err)?,
        st.downsample,
        &classes,
    )
    .map_err(post_err)?;
    write_confidence_npz(&dir.join(CONFIDENCE_NPZ), st, band)?;
    // Visualization: overlay on the thumbnail.
    let raster = |data| pbip_post::export::Raster {
        data,
        width_px: tw,
        height_px: th,
    };
    let overlay = overlay_labels(raster(&thumb.rgb), raster(&thumb_labels), &palette, 0.45)
        .map_err(post_err)?;
    write_rgb_png(&dir.join(VISUALIZATION_PNG), &overlay, tw as u32, th as u32)
        .map_err(post_err)?;
    write_mask_tiff(
        &dir.join(MASK_TIFF),
        labels,
        (w32, h32),
        mpp * st.downsample,
    )?;
    Ok(class_pixels)
}

/// Confidence maps: one float16 member `class_k` per class, streamed plane by plane in bands of
/// `band` rows.
fn write_confidence_npz(path: &Path, st: &Stitched, band: usize) -> Result<(), PipelineError> {
    let (w, h) = (st.width_px, st.height_px);
    let mut npz = NpzWriter::create(path).map_err(post_err)?;
    for k in 0..st.num_classes {
        let header = npy_header("<f2", &[h, w]);
        let size = header.len() as u64 + 2 * (w as u64) * (h as u64);
        npz.add_streamed(&format!("class_{k}"), size, |mw| {
            mw.write(&header)?;
            let mut bytes = Vec::new();
            for y0 in (0..h).step_by(band) {
                let rows = band.min(h - y0);
                let vals = st.confidence.read_rows(k, y0, rows)?;
                bytes.clear();
                bytes.reserve(2 * vals.len());
                for v in vals {
                    bytes.extend_from_slice(&half_bytes(v));
                }
                mw.write(&bytes)?;
            }
            Ok(())
        })
        .map_err(post_err)?;
    }
    npz.finish().map_err(post_err)
}

/// Pyramidal label TIFF of the `w x h` output-level labels: values = class index, 255 = no
/// label; resolution `mpp_out` µm per pixel.
fn write_mask_tiff(
    path: &Path,
    labels: &Planes<u8>,
    (w, h): (u32, u32),
    mpp_out: f64,
) -> Result<(), PipelineError> {
    let mut topts = pbip_pyramid::PyramidOptions::label_mask(Some(mpp_out));
    topts.edge_padding = pbip_pyramid::EdgePadding::Value(NO_LABEL);
    topts.tile_size_px = 256;
    topts.min_level_size_px = 256;
    pbip_pyramid::write_pyramid(
        path,
        w,
        h,
        &topts,
        |region: &pbip_pyramid::Region, buf: &mut [u8]| {
            let r = Rect::new(
                region.x_px as usize,
                region.y_px as usize,
                region.width_px as usize,
                region.height_px as usize,
            );
            labels
                .read_rect(0, r, buf)
                .map_err(|e| Box::new(e) as pbip_pyramid::SourceError)
        },
    )
    .map_err(|e| infer_err(format!("mask.tiff: {e}")))?;
    Ok(())
}

/// Little-endian IEEE half bytes of `v` (round to nearest).
fn half_bytes(v: f32) -> [u8; 2] {
    pbip_post::npz::f16_bytes(v)
}

/// The files a complete slide output folder has (besides `metadata.json`).
pub fn expected_files(name: &str) -> Vec<PathBuf> {
    [MASK_PNG, CONFIDENCE_NPZ, VISUALIZATION_PNG, MASK_TIFF]
        .iter()
        .map(PathBuf::from)
        .chain(std::iter::once(PathBuf::from(format!("{name}.geojson"))))
        .collect()
}

//! hs2p's tile grid (`hs2p.tiling.generate`): per tissue component, a grid over its level-0
//! bounding box, per-tile tissue fraction from an integral image in mask space, then
//! merge, dedupe and sort x-then-y.

use std::path::{Path, PathBuf};

use pbip_coords::{Coordinates, TilingMeta, write_hs2p_npz};

use crate::components::{FilterParams, TissueComponents, filter_components, scaled_ref_tile_area};
use crate::error::{TilingError, check_buffer};
use crate::levels::{TilePlan, plan_tiles};
use crate::mask::{TissueMethod, tissue_mask};

/// Geometry of the slide being tiled.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideLevels {
    /// Level-0 size `[width, height]` in px.
    pub dimensions_px: [u64; 2],
    /// Downsample of every level (level 0 = 1).
    pub level_downsamples: Vec<f64>,
    /// Level-0 spacing (µm/px, "mpp").
    pub base_spacing_um: f64,
}

/// Tiling parameters; defaults follow hs2p 4.4.1 `configs/default.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingParams {
    /// Output tile size in px at `requested_spacing_um` (hs2p default 256; PBIP uses its
    /// `patch_size`, 224).
    pub requested_tile_size_px: u32,
    /// Requested spacing (µm/px). Default 0.5.
    pub requested_spacing_um: f64,
    /// Relative spacing tolerance for the read level. Default 0.05.
    pub tolerance: f64,
    /// Tile overlap fraction in `[0, 1)`. Default 0.
    pub overlap: f64,
    /// Keep tiles whose tissue fraction is `>=` this. Default 0.01.
    pub min_tissue_fraction: f64,
    /// Target downsample of the segmentation level. Default 64.
    pub seg_downsample: f64,
    /// Tissue detection method. Default HSV.
    pub method: TissueMethod,
    /// Component / hole filtering. Default `ref_tile_size 16, a_t 4, a_h 2`.
    pub filter: FilterParams,
}

impl Default for TilingParams {
    fn default() -> Self {
        TilingParams {
            requested_tile_size_px: 256,
            requested_spacing_um: 0.5,
            tolerance: 0.05,
            overlap: 0.0,
            min_tissue_fraction: 0.01,
            seg_downsample: 64.0,
            method: TissueMethod::default(),
            filter: FilterParams::default(),
        }
    }
}

/// Result of tiling a slide.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiling {
    /// Tiles: x, y (level-0 top-left), tile_level, tile_size_resized (= read size),
    /// tile_size_lv0, target_tile_size, resize_factor, target_spacing, tissue_fraction,
    /// tile_index (0..n) and contour_index (kept component, 0-based) filled on every row.
    pub coordinates: Coordinates,
    /// Tile geometry.
    pub plan: TilePlan,
    /// Kept tissue components at the mask resolution (with the cleaned mask).
    pub components: TissueComponents,
    /// The slide geometry the tiles were computed for.
    pub slide: SlideLevels,
    /// Tissue method name recorded in the meta JSON (`None` for a precomputed mask).
    pub tissue_method: Option<String>,
    /// Minimum tissue fraction used.
    pub min_tissue_fraction: f64,
}

impl Tiling {
    /// hs2p `.coordinates.meta.json` metadata for these tiles.
    pub fn meta(&self, sample_id: &str, image_path: &str) -> TilingMeta {
        TilingMeta {
            sample_id: sample_id.to_string(),
            image_path: image_path.to_string(),
            slide_dimensions_px: self.slide.dimensions_px,
            base_spacing_um: Some(self.slide.base_spacing_um),
            level_downsamples: self.slide.level_downsamples.clone(),
            requested_tile_size_px: self.plan.requested_tile_size_px,
            requested_spacing_um: self.plan.requested_spacing_um,
            read_level: self.plan.read_level,
            read_tile_size_px: self.plan.read_tile_size_px,
            read_spacing_um: self.plan.read_spacing_um,
            tile_size_lv0: self.plan.tile_size_lv0,
            step_px_lv0: self.plan.step_lv0,
            tolerance: self.plan.tolerance,
            overlap: self.plan.overlap,
            min_tissue_fraction: self.min_tissue_fraction,
            is_within_tolerance: self.plan.is_within_tolerance,
            backend: "pbip".to_string(),
            tissue_method: self.tissue_method.clone(),
        }
    }

    /// Writes `npz_path` (hs2p `{sample_id}.coordinates.npz`) and its `.meta.json`; returns
    /// the meta JSON path.
    pub fn write_hs2p(
        &self,
        npz_path: impl AsRef<Path>,
        sample_id: &str,
        image_path: &str,
    ) -> Result<PathBuf, TilingError> {
        Ok(write_hs2p_npz(
            npz_path,
            &self.coordinates,
            &self.meta(sample_id, image_path),
        )?)
    }
}

fn check_params(params: &TilingParams) -> Result<(), TilingError> {
    if !(params.min_tissue_fraction.is_finite()
        && (0.0..=1.0).contains(&params.min_tissue_fraction))
    {
        return Err(TilingError::param(
            "min_tissue_fraction",
            format!("{} must be in [0, 1]", params.min_tissue_fraction),
        ));
    }
    for (name, v) in [("a_t", params.filter.a_t), ("a_h", params.filter.a_h)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(TilingError::param(
                name,
                format!("{v} must be finite and >= 0"),
            ));
        }
    }
    Ok(())
}

/// Tiles a slide from an RGB8 image of its segmentation level (the whole level, `seg_width x
/// seg_height`): tissue mask by `params.method`, then [`tile_from_mask`].
/// Choose the level with [`crate::select_level_for_downsample`]`(downsamples,
/// params.seg_downsample)`.
pub fn tile_from_seg_image(
    slide: &SlideLevels,
    seg_width: u32,
    seg_height: u32,
    rgb: &[u8],
    params: &TilingParams,
) -> Result<Tiling, TilingError> {
    let mask = tissue_mask(seg_width, seg_height, rgb, &params.method)?;
    let mut t = tile_from_mask(slide, seg_width, seg_height, &mask, params)?;
    t.tissue_method = Some(params.method.name().to_string());
    Ok(t)
}

/// Tiles a slide from a binary tissue mask (non-zero = tissue) covering the whole slide at
/// `mask_width x mask_height` (e.g. the segmentation level, or a precomputed mask).
/// `params.method` is not used.
///
/// Steps (hs2p `detect_contours` + `generate_tiles`):
/// 1. tile plan from the requested size/spacing ([`plan_tiles`]);
/// 2. drop components `<= a_t * ref_area`, fill holes `<= a_h * ref_area`, where `ref_area`
///    is [`scaled_ref_tile_area`] with the mask downsample `slide / mask` per axis;
/// 3. for each kept component (in raster order of its first pixel), its bounding box in
///    level-0 px is `[trunc(x_min * ds_x), trunc(x_max * ds_x) + 1)` (hs2p scales contour
///    points by the downsample and truncates to int), clipped to the slide; tile origins are
///    `x0 + i * step_lv0 < x1` (same for y);
/// 4. a tile's fraction = pixels of that component inside its footprint projected to mask
///    space (origin `floor(x * mask_w / slide_w)`, side `max(1, round(tile_size_lv0 * mask_w
///    / slide_w))`, clipped to the mask) / side², as f32; kept when `>= min_tissue_fraction`
///    (compared in f32, as numpy does);
/// 5. merge, dedupe (the first component's entry wins, like hs2p's `np.unique(return_index)`),
///    sort by x then y.
pub fn tile_from_mask(
    slide: &SlideLevels,
    mask_width: u32,
    mask_height: u32,
    mask: &[u8],
    params: &TilingParams,
) -> Result<Tiling, TilingError> {
    check_buffer("tissue mask", mask_width, mask_height, 1, mask)?;
    check_params(params)?;
    let [slide_w, slide_h] = slide.dimensions_px;
    if slide_w == 0 || slide_h == 0 || mask_width == 0 || mask_height == 0 {
        return Err(TilingError::param(
            "dimensions",
            format!(
                "slide {slide_w}x{slide_h} and mask {mask_width}x{mask_height} must be non-empty"
            ),
        ));
    }
    let plan = plan_tiles(
        params.requested_tile_size_px,
        params.requested_spacing_um,
        slide.base_spacing_um,
        &slide.level_downsamples,
        params.tolerance,
        params.overlap,
    )?;
    let ds_x = slide_w as f64 / f64::from(mask_width);
    let ds_y = slide_h as f64 / f64::from(mask_height);
    let read_ds = slide
        .level_downsamples
        .get(plan.read_level as usize)
        .copied()
        .unwrap_or(1.0);
    let ref_area = scaled_ref_tile_area(
        params.filter.ref_tile_size_px,
        (ds_x, ds_y),
        (read_ds, read_ds),
    );
    let comps = filter_components(
        mask_width,
        mask_height,
        mask,
        params.filter.a_t * ref_area,
        params.filter.a_h * ref_area,
    )?;

    let scale_x = f64::from(mask_width) / slide_w as f64;
    let scale_y = f64::from(mask_height) / slide_h as f64;
    let tw = (f64::from(plan.tile_size_lv0) * scale_x)
        .round_ties_even()
        .max(1.0) as i64;
    let th = (f64::from(plan.tile_size_lv0) * scale_y)
        .round_ties_even()
        .max(1.0) as i64;
    let tile_area = (tw * th) as f64;
    let min_frac = params.min_tissue_fraction as f32;
    let step = i64::from(plan.step_lv0);
    let (mw, mh) = (i64::from(mask_width), i64::from(mask_height));

    // (x, y, fraction, component)
    let mut tiles: Vec<(i64, i64, f32, usize)> = Vec::new();
    for (ci, bb) in comps.bboxes.iter().enumerate() {
        let label = ci as u32 + 1;
        // integral image of this component's pixels over its bbox
        let (bx0, by0) = (i64::from(bb.x_min), i64::from(bb.y_min));
        let cw = (bb.x_max - bb.x_min + 1) as usize;
        let ch = (bb.y_max - bb.y_min + 1) as usize;
        let mut integ = vec![0u64; (cw + 1) * (ch + 1)];
        for yy in 0..ch {
            let row = (by0 as usize + yy) * mask_width as usize + bx0 as usize;
            let mut run = 0u64;
            for xx in 0..cw {
                run += u64::from(comps.labels[row + xx] == label);
                integ[(yy + 1) * (cw + 1) + xx + 1] = integ[yy * (cw + 1) + xx + 1] + run;
            }
        }
        let sum_rect = |x0: i64, y0: i64, x1: i64, y1: i64| -> u64 {
            // clip to the bbox crop (pixels of this component lie inside it)
            let cx0 = (x0 - bx0).clamp(0, cw as i64) as usize;
            let cx1 = (x1 - bx0).clamp(0, cw as i64) as usize;
            let cy0 = (y0 - by0).clamp(0, ch as i64) as usize;
            let cy1 = (y1 - by0).clamp(0, ch as i64) as usize;
            if cx1 <= cx0 || cy1 <= cy0 {
                return 0;
            }
            let at = |x: usize, y: usize| integ[y * (cw + 1) + x];
            at(cx1, cy1) + at(cx0, cy0) - at(cx0, cy1) - at(cx1, cy0)
        };

        let x_cont = (f64::from(bb.x_min) * ds_x).trunc() as i64;
        let y_cont = (f64::from(bb.y_min) * ds_y).trunc() as i64;
        let x_last = (f64::from(bb.x_max) * ds_x).trunc() as i64;
        let y_last = (f64::from(bb.y_max) * ds_y).trunc() as i64;
        let x_start = x_cont.max(0);
        let y_start = y_cont.max(0);
        let x_end = (x_last + 1).min(slide_w as i64);
        let y_end = (y_last + 1).min(slide_h as i64);
        let mut x = x_start;
        while x < x_end {
            let mx0 = ((x as f64) * scale_x).floor() as i64;
            let (mx0c, mx1c) = (mx0.clamp(0, mw), (mx0 + tw).clamp(0, mw));
            let mut y = y_start;
            while y < y_end {
                let my0 = ((y as f64) * scale_y).floor() as i64;
                let (my0c, my1c) = (my0.clamp(0, mh), (my0 + th).clamp(0, mh));
                let s = sum_rect(mx0c, my0c, mx1c, my1c);
                let frac = ((s as f64 / tile_area) as f32).clamp(0.0, 1.0);
                if frac >= min_frac {
                    tiles.push((x, y, frac, ci));
                }
                y += step;
            }
            x += step;
        }
    }
    // stable sort keeps component order among equal (x, y): first component wins on dedupe
    tiles.sort_by_key(|t| (t.0, t.1));
    tiles.dedup_by_key(|t| (t.0, t.1));
    tracing::debug!(
        components = comps.bboxes.len(),
        tiles = tiles.len(),
        tile_size_lv0 = plan.tile_size_lv0,
        step_lv0 = plan.step_lv0,
        read_level = plan.read_level,
        "tiled slide"
    );

    let n = tiles.len();
    let mut c = Coordinates::from_xy(
        tiles.iter().map(|t| t.0).collect(),
        tiles.iter().map(|t| t.1).collect(),
    );
    c.tile_level = Some(vec![plan.read_level; n]);
    c.tile_size_resized = Some(vec![plan.read_tile_size_px; n]);
    c.tile_size_lv0 = Some(vec![plan.tile_size_lv0; n]);
    c.target_tile_size = Some(vec![plan.requested_tile_size_px; n]);
    c.resize_factor = Some(vec![
        f64::from(plan.read_tile_size_px)
            / f64::from(plan.requested_tile_size_px);
        n
    ]);
    c.target_spacing = Some(vec![plan.requested_spacing_um; n]);
    c.tissue_fraction = Some(tiles.iter().map(|t| f64::from(t.2)).collect());
    c.tile_index = Some((0..n as i64).collect());
    c.contour_index = Some(tiles.iter().map(|t| t.3 as i64).collect());

    Ok(Tiling {
        coordinates: c,
        plan,
        components: comps,
        slide: slide.clone(),
        tissue_method: None,
        min_tissue_fraction: params.min_tissue_fraction,
    })
}

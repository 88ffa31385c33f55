//! The stage-5 post-processing chain on a stitched output-level map, mirroring the config block
//! `inference.post_processing {morphological_op, kernel_size, min_component_size, edge_refinement}`.
//!
//! Order (each step optional): arg-max labels ([`argmax_labels`], weight 0 -> [`NO_LABEL`]) ->
//! morphological closing/opening of the label map (square `kernel_size`) -> removal of per-class
//! components smaller than `min_component_size` pixels (8-connectivity, replaced by the surrounding
//! majority; background holes of that size are filled too) -> boundary refinement.
//! See [`crate::morph`] for the exact semantics of each step.

use rayon::prelude::*;

use crate::NO_LABEL;
use crate::components;
use crate::crf::CrfParams;
use crate::error::{Result, invalid};
use crate::morph::{self, BoundaryRefineParams, Connectivity, Footprint};
use crate::plane::{Planes, Rect, crop, tile_grid};

/// Morphological operation of the config (`closing`, `opening`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MorphOp {
    /// `closing`: fill small background holes/gaps inside classes.
    Closing,
    /// `opening`: remove thin protrusions/specks (they become background).
    Opening,
    /// `none`.
    None,
}

impl std::str::FromStr for MorphOp {
    type Err = crate::PostError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "closing" => Ok(MorphOp::Closing),
            "opening" => Ok(MorphOp::Opening),
            "none" => Ok(MorphOp::None),
            other => invalid(format!(
                "morphological_op must be closing, opening or none, got {other:?}"
            )),
        }
    }
}

/// Post-processing parameters (config `inference.post_processing`).
#[derive(Debug, Clone, PartialEq)]
pub struct PostProcessParams {
    /// Morphological operation.
    pub morphological_op: MorphOp,
    /// Square kernel side in output pixels (e.g. 3); 0 or 1 disables the morphological step.
    pub kernel_size: usize,
    /// Minimum component size in output pixels (e.g. 100); 0 disables the step.
    pub min_component_size: usize,
    /// Whether to run boundary refinement.
    pub edge_refinement: bool,
    /// Boundary-refinement parameters.
    pub refine: BoundaryRefineParams,
}

impl Default for PostProcessParams {
    /// The seed config: closing, kernel 3, min component 100 px, edge refinement on.
    fn default() -> Self {
        Self {
            morphological_op: MorphOp::Closing,
            kernel_size: 3,
            min_component_size: 100,
            edge_refinement: true,
            refine: BoundaryRefineParams::default(),
        }
    }
}

/// Arg-max labels of `[C, H, W]` confidence (lowest class on ties); pixels whose `weight` is 0 (no
/// data) get [`NO_LABEL`]. `weight` may be `None` (all pixels have data).
pub fn argmax_labels(
    confidence: &[f32],
    weight: Option<&[f32]>,
    num_classes: usize,
    width_px: usize,
    height_px: usize,
) -> Result<Vec<u8>> {
    let n = width_px * height_px;
    if num_classes == 0 || num_classes > 255 || confidence.len() != num_classes * n {
        return invalid(format!(
            "argmax_labels: confidence has {} values, expected C*H*W = {num_classes}*{height_px}*{width_px} (1 <= C <= 255)",
            confidence.len()
        ));
    }
    if let Some(w) = weight
        && w.len() != n
    {
        return invalid(format!(
            "argmax_labels: weight has {} values, expected {n}",
            w.len()
        ));
    }
    Ok((0..n)
        .map(|i| {
            if weight.is_some_and(|w| w[i] <= 0.0) {
                return NO_LABEL;
            }
            let mut best = 0;
            for k in 1..num_classes {
                if confidence[k * n + i] > confidence[best * n + i] {
                    best = k;
                }
            }
            best as u8
        })
        .collect())
}

/// Runs the post-processing chain (see the module docs) on a label map with its confidence.
/// This is [`postprocess_planes`] on in-memory planes.
pub fn postprocess_labels(
    labels: &[u8],
    confidence: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    params: &PostProcessParams,
) -> Result<Vec<u8>> {
    let (w, h) = (width_px, height_px);
    if labels.len() != w * h || num_classes == 0 || confidence.len() != num_classes * w * h {
        return invalid(format!(
            "postprocess_labels: {} labels and {} confidence values for {num_classes} classes of {w}x{h}",
            labels.len(),
            confidence.len()
        ));
    }
    let lab = Planes::from_vec(w, h, 1, labels.to_vec())?;
    let conf = Planes::from_vec(w, h, num_classes, confidence.to_vec())?;
    let out = postprocess_planes(lab, &conf, params, DEFAULT_TILE_PX, None)?;
    out.to_vec()
}

/// Default tile side of the block-wise passes, output pixels.
pub const DEFAULT_TILE_PX: usize = 1024;

/// Halo of the closing/opening pass for a square kernel of side `k` (closing and opening reach
/// `2 * (k / 2)` pixels).
pub fn morph_halo_px(k: usize) -> usize {
    2 * (k / 2) + 1
}

/// Halo of the boundary-refinement pass: band + boundary detection + Gaussian support.
pub fn refine_halo_px(p: &BoundaryRefineParams) -> usize {
    let gauss_r = (morph::REFINE_TRUNCATE * p.sigma_px + 0.5) as usize;
    p.band_px.max(0.0).ceil() as usize + 2 + gauss_r
}

/// Runs `f` on every tile (core, context) of the grid in parallel (rayon): `f` returns the core's
/// values, which are written to `dst`.
fn for_tiles(
    dst: &Planes<u8>,
    tile_px: usize,
    halo_px: usize,
    f: impl Fn(Rect, Rect) -> Result<Vec<u8>> + Sync,
) -> Result<()> {
    let tiles = tile_grid(dst.width(), dst.height(), tile_px, halo_px);
    tiles.par_iter().try_for_each(|&(core, ctx)| {
        let v = f(core, ctx)?;
        dst.write_rect(0, core, &v)
    })
}

/// Block-wise label closing/opening (`op`, square `kernel_size`): each tile is processed with a
/// halo of [`morph_halo_px`], which makes the result identical to the whole-map operation.
pub fn morph_planes(
    src: &Planes<u8>,
    dst: &Planes<u8>,
    op: MorphOp,
    kernel_size: usize,
    tile_px: usize,
) -> Result<()> {
    let fp = Footprint::Square(kernel_size);
    for_tiles(dst, tile_px, morph_halo_px(kernel_size), |core, ctx| {
        let lab = src.read_rect_vec(0, ctx)?;
        let out = match op {
            MorphOp::Closing => morph::label_closing(&lab, ctx.w, ctx.h, fp)?,
            MorphOp::Opening => morph::label_opening(&lab, ctx.w, ctx.h, fp)?,
            MorphOp::None => lab,
        };
        Ok(crop(&out, ctx, core))
    })
}

/// Block-wise boundary refinement with a halo of [`refine_halo_px`] (identical to the whole-map
/// [`morph::refine_boundaries`]).
pub fn refine_planes(
    src: &Planes<u8>,
    confidence: &Planes<f32>,
    dst: &Planes<u8>,
    params: &BoundaryRefineParams,
    tile_px: usize,
) -> Result<()> {
    let c = confidence.planes();
    for_tiles(dst, tile_px, refine_halo_px(params), |core, ctx| {
        let lab = src.read_rect_vec(0, ctx)?;
        let conf = confidence.read_rect_all(ctx)?;
        let out = morph::refine_boundaries(&lab, &conf, c, ctx.w, ctx.h, params)?;
        Ok(crop(&out, ctx, core))
    })
}

fn check_same_size(a: (usize, usize), b: (usize, usize), what: &str) -> Result<()> {
    if a != b {
        return invalid(format!(
            "{what}: maps of different sizes {}x{} and {}x{}",
            a.0, a.1, b.0, b.1
        ));
    }
    Ok(())
}

/// The post-processing chain (closing/opening -> small components -> boundary refinement; see the
/// module docs) on label planes, block-wise (tiles of `tile_px` with halos, or rows for the
/// components), with intermediate planes in `scratch` (a folder; `None` = memory). Returns the
/// final labels (possibly `labels` itself when every step is disabled).
pub fn postprocess_planes(
    labels: Planes<u8>,
    confidence: &Planes<f32>,
    params: &PostProcessParams,
    tile_px: usize,
    scratch: Option<&std::path::Path>,
) -> Result<Planes<u8>> {
    let (w, h) = (labels.width(), labels.height());
    check_same_size(
        (w, h),
        (confidence.width(), confidence.height()),
        "postprocess",
    )?;
    let mut cur = labels;
    let mut spare: Option<Planes<u8>> = None;
    let next = |spare: &mut Option<Planes<u8>>, name: &str| -> Result<Planes<u8>> {
        match spare.take() {
            Some(p) => Ok(p),
            None => Planes::new_in(scratch, name, w, h, 1),
        }
    };
    if params.kernel_size > 1 && params.morphological_op != MorphOp::None {
        let dst = next(&mut spare, "labels_b.u8")?;
        morph_planes(
            &cur,
            &dst,
            params.morphological_op,
            params.kernel_size,
            tile_px,
        )?;
        spare = Some(std::mem::replace(&mut cur, dst));
    }
    if params.min_component_size > 0 {
        let dst = next(&mut spare, "labels_b.u8")?;
        let replaced = components::remove_small_components_planes(
            &cur,
            &dst,
            params.min_component_size,
            Connectivity::Eight,
            true,
        )?;
        tracing::debug!(replaced, "small components replaced");
        spare = Some(std::mem::replace(&mut cur, dst));
    }
    if params.edge_refinement {
        let dst = next(&mut spare, "labels_b.u8")?;
        refine_planes(&cur, confidence, &dst, &params.refine, tile_px)?;
        cur = dst;
    }
    Ok(cur)
}

/// Inputs of [`label_planes`]: the stitched maps of a slide at the output level.
pub struct LabelInputs<'a> {
    /// `C` planes of stitched confidence in [0, 1].
    pub confidence: &'a Planes<f32>,
    /// 1 plane: 1 where a pixel may be labelled (it has data and, optionally, is tissue), else 0.
    pub keep: &'a Planes<u8>,
    /// RGB8 (HWC) of a rectangle of the slide at the output resolution; needed by the CRF.
    pub rgb: Option<&'a (dyn Fn(Rect) -> Result<Vec<u8>> + Sync)>,
}

/// Parameters of [`label_planes`].
#[derive(Debug, Clone, PartialEq)]
pub struct LabelParams {
    /// Dense CRF (block-wise on tiles of `crf_block_px` with `crf_halo_px`), if enabled.
    pub crf: Option<CrfParams>,
    /// CRF tile side, output pixels.
    pub crf_block_px: usize,
    /// CRF tile halo, output pixels (see [`crate::crf::suggested_halo_px`]).
    pub crf_halo_px: usize,
    /// The post-processing chain.
    pub post: PostProcessParams,
    /// Tile side of the other block-wise passes.
    pub tile_px: usize,
}

/// Probability floor added to every class before normalising confidences for the CRF unary.
pub const CRF_PROB_EPS: f32 = 1e-3;

/// Labels of a slide from its stitched maps, block-wise: arg-max (lowest class on ties) where
/// `keep` is set, [`NO_LABEL`] elsewhere; optional dense CRF on the normalised confidences
/// (`(max(c, 0) + 1e-3) / sum`) and the slide image (CRF labels replace the arg-max where `keep`);
/// then the post-processing chain; finally pixels outside `keep` are set to [`NO_LABEL`] again
/// (post-processing may grow classes into them). Intermediate planes live in `scratch`.
pub fn label_planes(
    input: &LabelInputs<'_>,
    params: &LabelParams,
    scratch: Option<&std::path::Path>,
) -> Result<Planes<u8>> {
    let conf = input.confidence;
    let (w, h, c) = (conf.width(), conf.height(), conf.planes());
    check_same_size((w, h), (input.keep.width(), input.keep.height()), "labels")?;
    if c == 0 || c > 255 {
        return invalid(format!("labels: {c} classes (1..=255 allowed)"));
    }
    let labels = Planes::new_in(scratch, "labels_a.u8", w, h, 1)?;
    let argmax_core = |cv: &[f32], ctx: Rect, core: Rect, keep: &[u8]| -> Vec<u8> {
        let n = ctx.area();
        let mut out = Vec::with_capacity(core.area());
        for y in core.y0..core.y1() {
            for x in core.x0..core.x1() {
                let i = (y - ctx.y0) * ctx.w + (x - ctx.x0);
                if keep[(y - core.y0) * core.w + (x - core.x0)] == 0 {
                    out.push(NO_LABEL);
                    continue;
                }
                let mut best = 0;
                for k in 1..c {
                    if cv[k * n + i] > cv[best * n + i] {
                        best = k;
                    }
                }
                out.push(best as u8);
            }
        }
        out
    };
    match (&params.crf, input.rgb) {
        (Some(crf), Some(rgb)) => {
            for_tiles(
                &labels,
                params.crf_block_px,
                params.crf_halo_px,
                |core, ctx| {
                    let keep = input.keep.read_rect_vec(0, core)?;
                    if keep.iter().all(|&k| k == 0) {
                        return Ok(vec![NO_LABEL; core.area()]);
                    }
                    let cv = conf.read_rect_all(ctx)?;
                    let n = ctx.area();
                    let mut probs = vec![0f32; c * n];
                    for i in 0..n {
                        let sum: f32 = (0..c).map(|k| cv[k * n + i].max(0.0) + CRF_PROB_EPS).sum();
                        for k in 0..c {
                            probs[k * n + i] = (cv[k * n + i].max(0.0) + CRF_PROB_EPS) / sum;
                        }
                    }
                    let img = rgb(ctx)?;
                    let out = crate::crf::dense_crf(&probs, c, ctx.w, ctx.h, &img, crf)?;
                    let crf_core = crop(&out.labels, ctx, core);
                    Ok(crf_core
                        .into_iter()
                        .zip(&keep)
                        .map(|(l, &k)| if k != 0 { l } else { NO_LABEL })
                        .collect())
                },
            )?;
        }
        (Some(_), None) => return invalid("labels: the CRF needs the slide image (rgb)"),
        (None, _) => {
            for_tiles(&labels, params.tile_px, 0, |core, _ctx| {
                let keep = input.keep.read_rect_vec(0, core)?;
                let cv = conf.read_rect_all(core)?;
                Ok(argmax_core(&cv, core, core, &keep))
            })?;
        }
    }
    let out = postprocess_planes(labels, conf, &params.post, params.tile_px, scratch)?;
    // Post-processing may grow classes into no-data / non-tissue pixels: keep them unlabelled.
    for_tiles_in_place(&out, params.tile_px, |core, lab| {
        let keep = input.keep.read_rect_vec(0, core)?;
        for (l, &k) in lab.iter_mut().zip(&keep) {
            if k == 0 {
                *l = NO_LABEL;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Runs `f` on every tile core of `p` (no halo) and writes the modified values back.
fn for_tiles_in_place(
    p: &Planes<u8>,
    tile_px: usize,
    f: impl Fn(Rect, &mut [u8]) -> Result<()> + Sync,
) -> Result<()> {
    let tiles = tile_grid(p.width(), p.height(), tile_px, 0);
    tiles.par_iter().try_for_each(|&(core, _)| {
        let mut v = p.read_rect_vec(0, core)?;
        f(core, &mut v)?;
        p.write_rect(0, core, &v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_and_chain() {
        let (w, h) = (20, 20);
        let n = w * h;
        let mut conf = vec![0f32; 2 * n];
        for i in 0..n {
            let x = i % w;
            let p1 = if x >= 10 { 0.8 } else { 0.2 };
            conf[n + i] = p1;
            conf[i] = 1.0 - p1;
        }
        // A speck of class 1 inside class 0 and a no-data pixel.
        conf[n + 5 * w + 3] = 0.9;
        conf[5 * w + 3] = 0.1;
        let mut weight = vec![1f32; n];
        weight[0] = 0.0;
        let lab = argmax_labels(&conf, Some(&weight), 2, w, h).unwrap();
        assert_eq!(lab[0], NO_LABEL);
        assert_eq!(lab[5 * w + 3], 1);
        assert_eq!(lab[5 * w + 15], 1);
        let p = PostProcessParams {
            min_component_size: 4,
            ..Default::default()
        };
        let out = postprocess_labels(&lab, &conf, 2, w, h, &p).unwrap();
        assert_eq!(out[5 * w + 3], 0, "speck removed");
        assert_eq!(out[0], 0, "one-pixel background hole filled");
        assert_eq!(out[5 * w + 15], 1);
        assert!("bogus".parse::<MorphOp>().is_err());
        assert_eq!("opening".parse::<MorphOp>().unwrap(), MorphOp::Opening);
    }
}

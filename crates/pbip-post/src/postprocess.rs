//! The stage-5 post-processing chain on a stitched output-level map, mirroring the config block
//! `inference.post_processing {morphological_op, kernel_size, min_component_size, edge_refinement}`.
//!
//! Order (each step optional): arg-max labels ([`argmax_labels`], weight 0 -> [`NO_LABEL`]) ->
//! morphological closing/opening of the label map (square `kernel_size`) -> removal of per-class
//! components smaller than `min_component_size` pixels (8-connectivity, replaced by the surrounding
//! majority; background holes of that size are filled too) -> boundary refinement.
//! See [`crate::morph`] for the exact semantics of each step.

use crate::NO_LABEL;
use crate::error::{Result, invalid};
use crate::morph::{self, BoundaryRefineParams, Connectivity, Footprint};

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
pub fn postprocess_labels(
    labels: &[u8],
    confidence: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    params: &PostProcessParams,
) -> Result<Vec<u8>> {
    let (w, h) = (width_px, height_px);
    let mut lab = labels.to_vec();
    if params.kernel_size > 1 {
        let fp = Footprint::Square(params.kernel_size);
        lab = match params.morphological_op {
            MorphOp::Closing => morph::label_closing(&lab, w, h, fp)?,
            MorphOp::Opening => morph::label_opening(&lab, w, h, fp)?,
            MorphOp::None => lab,
        };
    }
    if params.min_component_size > 0 {
        let (l, replaced) = morph::remove_small_components_labels(
            &lab,
            w,
            h,
            params.min_component_size,
            Connectivity::Eight,
            true,
        )?;
        tracing::debug!(replaced, "small components replaced");
        lab = l;
    }
    if params.edge_refinement {
        lab = morph::refine_boundaries(&lab, confidence, num_classes, w, h, &params.refine)?;
    }
    Ok(lab)
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

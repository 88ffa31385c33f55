//! Whole-slide score of a prediction against a GT mask (`pbip view --gt-dir`), with the
//! definitions `pbip demo` prints (stage 5): tumour IoU on slides with tumour, otherwise the
//! fraction of tissue called tumour. GT: an 8-bit grey or indexed PNG of the slide (any size,
//! usually level 0), pixel = class index, 255 = background; it is sampled at the centre of every
//! prediction pixel. Prediction: `segmentation_mask.png`. Both are streamed row by row.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;

/// Score of one slide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideScore {
    /// Tumour IoU (None when the GT has no tumour).
    pub tumour_iou: Option<f64>,
    /// GT tissue predicted tumour that is not tumour, over GT tissue.
    pub false_positive_tissue_fraction: f64,
    /// GT tumour pixels over GT tissue pixels (prediction grid).
    pub gt_tumour_fraction: f64,
}

/// Scores `prediction_png` against `gt_png` for class `positive` (`pbip_post::score`).
pub fn score_slide(prediction_png: &Path, gt_png: &Path, positive: u8) -> Result<SlideScore> {
    let c = pbip_post::score::score_label_pngs(prediction_png, gt_png, positive)?;
    Ok(SlideScore {
        tumour_iou: c.tumour_iou(),
        false_positive_tissue_fraction: c.false_positive_tissue_fraction(),
        gt_tumour_fraction: c.gt_tumour_fraction(),
    })
}

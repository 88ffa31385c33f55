//! Scores whole-slide predictions against GT masks (synthetic data, or any slide with a GT mask):
//! tumour IoU on slides with tumour, false-positive tissue fraction on slides without, each next to
//! the trivial "all tissue is tumour" map. Both masks are streamed row by row.
//!
//! GT: an 8-bit PNG (gray or indexed) of the slide (any size; usually level 0), pixel = class
//! index, 255 = background. Prediction: `segmentation_mask.png` (255 = no label). GT is sampled at
//! the centre of every prediction pixel. "Tissue" = GT != 255; "tumour" = GT == `positive_class`.

use std::path::Path;

use serde::Serialize;

use super::infer_err;
use crate::PipelineError;

/// Whole-slide score of one slide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideScore {
    /// Slide name.
    pub name: String,
    /// GT tissue pixels (prediction grid).
    pub tissue_px: u64,
    /// GT tumour pixels.
    pub tumour_px: u64,
    /// Predicted tumour pixels.
    pub predicted_tumour_px: u64,
    /// Tumour IoU (None when the slide has no tumour).
    pub tumour_iou: Option<f64>,
    /// IoU of the trivial map (every tissue pixel tumour) = tumour / tissue.
    pub trivial_iou: Option<f64>,
    /// Tissue predicted tumour that is not tumour, over tissue.
    pub false_positive_tissue_fraction: f64,
    /// The same for the trivial map: (tissue - tumour) / tissue.
    pub trivial_false_positive_fraction: f64,
}

/// Scores one prediction mask against its GT mask (see the module docs).
pub fn score_slide(
    name: &str,
    prediction_png: &Path,
    gt_png: &Path,
    positive_class: u8,
) -> Result<SlideScore, PipelineError> {
    let c = pbip_post::score::score_label_pngs(prediction_png, gt_png, positive_class)
        .map_err(|e| infer_err(format!("{name}: {e}")))?;
    Ok(SlideScore {
        name: name.to_string(),
        tissue_px: c.tissue_px,
        tumour_px: c.tumour_px,
        predicted_tumour_px: c.predicted_tumour_px,
        tumour_iou: c.tumour_iou(),
        trivial_iou: c.trivial_iou(),
        false_positive_tissue_fraction: c.false_positive_tissue_fraction(),
        trivial_false_positive_fraction: c.trivial_false_positive_fraction(),
    })
}

/// Scores every slide folder of `predictions_dir` that has a `segmentation_mask.png` and a GT mask
/// `gt_dir/<name>.png`; slides without GT are skipped. Sorted by name.
pub fn score_predictions(
    predictions_dir: &Path,
    gt_dir: &Path,
    positive_class: u8,
) -> Result<Vec<SlideScore>, PipelineError> {
    let rd = std::fs::read_dir(predictions_dir).map_err(|source| PipelineError::Io {
        path: predictions_dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join(super::slide::MASK_PNG).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let gt = gt_dir.join(format!("{n}.png"));
        if !gt.is_file() {
            continue;
        }
        let pred = predictions_dir.join(&n).join(super::slide::MASK_PNG);
        out.push(score_slide(&n, &pred, &gt, positive_class)?);
    }
    Ok(out)
}

/// A text table of whole-slide scores with the trivial map beside each, and the means over slides
/// with and without the positive class.
pub fn scores_table(scores: &[SlideScore], positive_name: &str) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<24} {:>10} {:>14} {:>16} {:>18}",
        "slide",
        format!("{positive_name} IoU"),
        "trivial IoU",
        "tissue called",
        "trivial called"
    );
    let (mut ious, mut fps) = (Vec::new(), Vec::new());
    for s in scores {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
        let _ = writeln!(
            t,
            "{:<24} {:>10} {:>14} {:>15.2}% {:>17.2}%",
            s.name,
            f(s.tumour_iou),
            f(s.trivial_iou),
            100.0 * s.false_positive_tissue_fraction,
            100.0 * s.trivial_false_positive_fraction
        );
        match s.tumour_iou {
            Some(i) => ious.push(i),
            None => fps.push(s.false_positive_tissue_fraction),
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    if let Some(m) = mean(&ious) {
        let _ = writeln!(
            t,
            "mean {positive_name} IoU over {} slide(s) with {positive_name}: {m:.3}",
            ious.len()
        );
    }
    if let Some(m) = mean(&fps) {
        let _ = writeln!(
            t,
            "mean fraction of tissue called {positive_name} over {} slide(s) without: {:.2}% (max {:.2}%)",
            fps.len(),
            100.0 * m,
            100.0 * fps.iter().copied().fold(0.0, f64::max)
        );
    }
    t
}

/// Writes the scores as CSV (one row per slide).
pub fn write_scores_csv(path: &Path, scores: &[SlideScore]) -> Result<(), PipelineError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| infer_err(format!("{}: {e}", path.display()));
    w.write_record([
        "slide",
        "tissue_px",
        "positive_px",
        "predicted_positive_px",
        "positive_iou",
        "trivial_iou",
        "false_positive_tissue_fraction",
        "trivial_false_positive_fraction",
    ])
    .map_err(io)?;
    for s in scores {
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
        w.write_record([
            s.name.clone(),
            s.tissue_px.to_string(),
            s.tumour_px.to_string(),
            s.predicted_tumour_px.to_string(),
            f(s.tumour_iou),
            f(s.trivial_iou),
            format!("{:.6}", s.false_positive_tissue_fraction),
            format!("{:.6}", s.trivial_false_positive_fraction),
        ])
        .map_err(io)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| infer_err(format!("{}: {e}", path.display())))?;
    crate::write_atomic(path, &bytes)
}

//! Segmentation and slide-level metrics for pbip.
//!
//! # Confusion matrix
//!
//! [`ConfusionMatrix`] counts pixels over `N` classes with `u64` counts; **rows are the ground
//! truth (GT), columns the prediction**: `M[g][p]` = number of pixels with GT class `g` predicted
//! as `p`. Label maps are `u8` slices of equal length (row-major).
//!
//! * A pixel whose GT equals the ignore value (default **255**, [`IGNORE_LABEL`]) is not counted,
//!   whatever its prediction.
//! * A pixel with a valid GT whose prediction equals the ignore value ("no prediction") is
//!   counted in a separate per-GT-class `unpredicted` vector: it is a false negative of its GT
//!   class and an error for pixel accuracy, but it is no class's false positive.
//! * Any other value outside `0..N` (in GT, or in the prediction where the GT is counted) is an
//!   error naming the map (`gt`/`pred`), the flat pixel index and the value; the matrix is left
//!   unchanged. Maps of different lengths are an error.
//! * Matrices of the same `N` and ignore value can be merged (added).
//! * CSV ([`ConfusionMatrix::write_csv`]): header `gt\pred,<class names>`, then one line per GT
//!   class `<name>,<counts>`; an extra last column `unpredicted` appears only when some
//!   prediction was the ignore value.
//!
//! # Per-class scores
//!
//! For class `c`: `TP = M[c][c]`, `FP = Σ_g M[g][c] − TP` (predicted `c`, GT not `c`),
//! `FN = GT pixels of c − TP` (GT `c`, predicted something else or unpredicted).
//!
//! | score | definition |
//! |---|---|
//! | IoU (Jaccard) | TP / (TP + FP + FN) |
//! | Dice | 2·TP / (2·TP + FP + FN) |
//! | precision | TP / (TP + FP) |
//! | recall (sensitivity) | TP / (TP + FN) |
//! | F1 | 2·TP / (2·TP + FP + FN) — at pixel level identical to Dice; equals 2PR/(P+R) whenever P+R > 0 |
//!
//! **Absent classes.** A class that occurs neither in the GT nor in the prediction (TP = FP =
//! FN = 0) has *no* score: it is `None` in Rust and `null` in JSON (never 1, never 0), and it is
//! **excluded from every average**. If a class occurs in exactly one of GT and prediction, any
//! 0/0 ratio of that class evaluates to **0** (precision of a class that is in the GT but never
//! predicted = 0; recall of a class that is predicted but absent from the GT = 0). This equals
//! scikit-learn with `zero_division=0` for every class that is present somewhere.
//!
//! # Averages
//!
//! * **Macro** (over classes of the global matrix): unweighted mean of a per-class score over
//!   the classes where it is defined. Differs from scikit-learn's `average="macro"` with
//!   `labels=range(N)`, which counts an absent class as `zero_division` (0 by default).
//! * **mIoU** = macro IoU.
//! * **Weighted**: Σ_c n_c·s_c / Σ_c n_c with n_c the GT pixel count of class c (classes absent
//!   from the GT get weight 0). Identical to scikit-learn's `average="weighted"`.
//! * **FwIoU** (frequency-weighted IoU, as in the PBIP paper) = Σ_c freq_c·IoU_c with
//!   freq_c = n_c / Σ n = the weighted IoU.
//! * **Pixel accuracy** = Σ_c TP_c / (number of counted pixels).
//! * **Mean over patches** ([`PatchAggregator`]): every patch gets its own matrix and scores; the
//!   per-class patch mean averages a class's score over the patches where it is defined; the
//!   patch macro average is the mean over patches of each patch's macro average (patches whose
//!   pixels are all ignored are skipped). The global matrix is the sum of the patch matrices.
//! * Any average over an empty set is `None`.
//!
//! # Slide-level classification
//!
//! * [`threshold_accuracy`]: positive iff `score >= threshold`.
//! * [`roc_auc`]: binary ROC AUC, identical to scikit-learn's `roc_auc_score`: one ROC point per
//!   distinct score (ties move TPR and FPR together), trapezoidal area. Undefined (error) when
//!   only one class is present.
//! * [`roc_auc_multilabel`] / [`roc_auc_ovr`]: one-vs-rest binary AUC per label/class and their
//!   unweighted mean over the labels where it is defined (scikit-learn raises instead).
//! * [`sweep_threshold`]: candidate thresholds are `+inf` and every distinct score; returns the
//!   one maximising accuracy, F1, balanced accuracy or Youden's J, ties towards the highest
//!   threshold. Rates with a zero denominator count as 0.
//!
//! # JSON
//!
//! [`MetricsReport`] is the serialisable `metrics.json`: `miou`, `fwiou`, `pixel_accuracy`,
//! per-class maps `iou`, `dice`, `precision`, `recall`, `f1` (class name → value or null),
//! `per_class`, averaged `macro` and `weighted` blocks, optional patch means and the matrix.

mod classification;
mod confusion;
mod error;
mod scores;

pub use classification::{
    MultiLabelAccuracy, MultiLabelAuc, ThresholdChoice, ThresholdMetric, multilabel_accuracy,
    roc_auc, roc_auc_multilabel, roc_auc_ovr, sweep_threshold, threshold_accuracy,
};
pub use confusion::{ConfusionMatrix, IGNORE_LABEL};
pub use error::MetricsError;
pub use scores::{
    Averages, ClassMap, ClassMetrics, ClassScores, MetricsReport, PatchAggregator, PatchMeans,
    PatchSummary, SegmentationSummary,
};

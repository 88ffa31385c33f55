//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while building or evaluating metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The number of classes is not usable (0, or so large that a class index collides with the
    /// ignore value or does not fit in a `u8` label).
    #[error("invalid number of classes {num_classes}: {reason}")]
    InvalidNumClasses {
        /// The requested number of classes.
        num_classes: usize,
        /// Why it is rejected.
        reason: String,
    },
    /// A label map holds a value that is neither a class index (0..N) nor the ignore value.
    #[error(
        "{which} label value {value} at pixel index {index} is outside 0..{num_classes} and is not the ignore value {ignore:?}"
    )]
    LabelOutOfRange {
        /// `"gt"` or `"pred"`.
        which: &'static str,
        /// Flat (row-major) pixel index of the first offending value.
        index: usize,
        /// The offending value.
        value: u8,
        /// Number of classes of the matrix.
        num_classes: usize,
        /// The ignore value, if any.
        ignore: Option<u8>,
    },
    /// Ground truth and prediction label maps have different lengths.
    #[error("label maps differ in size: gt has {gt_len} pixels, pred has {pred_len}")]
    SizeMismatch {
        /// Number of GT pixels.
        gt_len: usize,
        /// Number of predicted pixels.
        pred_len: usize,
    },
    /// Two confusion matrices cannot be merged (different class count or ignore value).
    #[error("cannot merge confusion matrices: {reason}")]
    IncompatibleMatrices {
        /// Why.
        reason: String,
    },
    /// A raw count vector does not have N*N entries.
    #[error("count vector has {got} entries, expected {expected} ({num_classes} x {num_classes})")]
    CountLength {
        /// Entries given.
        got: usize,
        /// Entries expected.
        expected: usize,
        /// Number of classes.
        num_classes: usize,
    },
    /// The class-name list does not match the number of classes.
    #[error("got {got} class names for a matrix of {expected} classes")]
    ClassNames {
        /// Number of classes of the matrix.
        expected: usize,
        /// Number of names given.
        got: usize,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Scores and labels of a slide-level evaluation have different lengths.
    #[error("{what}: {left} vs {right}")]
    LengthMismatch {
        /// Which lengths disagree.
        what: &'static str,
        /// First length.
        left: usize,
        /// Second length.
        right: usize,
    },
    /// A score is NaN or infinite.
    #[error("score at index {index} is not finite ({value})")]
    NonFiniteScore {
        /// Flat index of the score.
        index: usize,
        /// The value.
        value: f64,
    },
    /// No samples were given.
    #[error("no samples given")]
    Empty,
    /// ROC AUC is undefined because only one class is present in the labels.
    #[error(
        "ROC AUC is undefined: only {present} samples are present ({positives} positive, {negatives} negative)"
    )]
    SingleClass {
        /// `"positive"` or `"negative"`: the class that is present.
        present: &'static str,
        /// Number of positives.
        positives: usize,
        /// Number of negatives.
        negatives: usize,
    },
}

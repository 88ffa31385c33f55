//! Pixel confusion matrix.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::MetricsError;
use crate::scores::{ClassMetrics, SegmentationSummary};

/// The label value that marks pixels that are not counted (background / unlabeled).
pub const IGNORE_LABEL: u8 = 255;

/// Maps at least this long are counted through a 256x256 pair histogram.
const TABLE_MIN_PIXELS: usize = 1 << 16;

/// Pixel confusion matrix over `N` classes: `counts[gt * N + pred]`, rows = ground truth,
/// columns = prediction, `u64` counts.
///
/// Pixels whose **GT** equals the ignore value (default [`IGNORE_LABEL`] = 255) are skipped.
/// Pixels whose **prediction** equals the ignore value while the GT is a valid class are not
/// skipped: they are counted in a separate per-GT-class `unpredicted` vector and count as false
/// negatives of their GT class (and as errors for pixel accuracy), so that a predictor cannot
/// improve its score by abstaining. Any other value outside `0..N` is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    ignore: Option<u8>,
    counts: Vec<u64>,
    unpredicted: Vec<u64>,
}

impl ConfusionMatrix {
    /// Empty matrix over `num_classes` classes with ignore value 255.
    /// `num_classes` must be in `1..=255`.
    pub fn new(num_classes: usize) -> Result<Self, MetricsError> {
        Self::with_ignore(num_classes, Some(IGNORE_LABEL))
    }

    /// Empty matrix with an explicit ignore value (`None`: every value must be a class index).
    /// The ignore value must not be a class index (`ignore >= num_classes`).
    pub fn with_ignore(num_classes: usize, ignore: Option<u8>) -> Result<Self, MetricsError> {
        if num_classes == 0 {
            return Err(MetricsError::InvalidNumClasses {
                num_classes,
                reason: "at least one class is needed".into(),
            });
        }
        if num_classes > 256 {
            return Err(MetricsError::InvalidNumClasses {
                num_classes,
                reason: "u8 label maps hold at most 256 classes".into(),
            });
        }
        if let Some(ig) = ignore
            && usize::from(ig) < num_classes
        {
            return Err(MetricsError::InvalidNumClasses {
                num_classes,
                reason: format!("the ignore value {ig} is a class index"),
            });
        }
        Ok(Self {
            num_classes,
            ignore,
            counts: vec![0; num_classes * num_classes],
            unpredicted: vec![0; num_classes],
        })
    }

    /// Matrix from raw row-major counts (`counts[gt * N + pred]`), ignore value 255, no
    /// unpredicted pixels.
    pub fn from_counts(num_classes: usize, counts: Vec<u64>) -> Result<Self, MetricsError> {
        let mut m = Self::new(num_classes)?;
        if counts.len() != num_classes * num_classes {
            return Err(MetricsError::CountLength {
                got: counts.len(),
                expected: num_classes * num_classes,
                num_classes,
            });
        }
        m.counts = counts;
        Ok(m)
    }

    /// Matrix of one pair of label maps (ignore value 255).
    pub fn from_labels(num_classes: usize, gt: &[u8], pred: &[u8]) -> Result<Self, MetricsError> {
        let mut m = Self::new(num_classes)?;
        m.accumulate(gt, pred)?;
        Ok(m)
    }

    /// Adds one pair of label maps (same length, row-major; the shapes themselves are the
    /// caller's business). On error the matrix is left unchanged.
    pub fn accumulate(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), MetricsError> {
        if gt.len() != pred.len() {
            return Err(MetricsError::SizeMismatch {
                gt_len: gt.len(),
                pred_len: pred.len(),
            });
        }
        if gt.len() >= TABLE_MIN_PIXELS {
            return self.accumulate_table(gt, pred);
        }
        let n = self.num_classes;
        // Validate first so that an error leaves the matrix untouched.
        for (index, (&g, &p)) in gt.iter().zip(pred).enumerate() {
            if Some(g) == self.ignore {
                continue;
            }
            if usize::from(g) >= n {
                return Err(self.out_of_range("gt", index, g));
            }
            if Some(p) != self.ignore && usize::from(p) >= n {
                return Err(self.out_of_range("pred", index, p));
            }
        }
        for (&g, &p) in gt.iter().zip(pred) {
            if Some(g) == self.ignore {
                continue;
            }
            let g = usize::from(g);
            if Some(p) == self.ignore {
                self.unpredicted[g] += 1;
            } else {
                self.counts[g * n + usize::from(p)] += 1;
            }
        }
        Ok(())
    }

    /// Large maps: one branch-free pass into a 256x256 histogram of (gt, pred) pairs, then
    /// validation of the histogram (the offending pixel is searched only on error).
    fn accumulate_table(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), MetricsError> {
        let mut table = vec![0u64; 256 * 256];
        for (&g, &p) in gt.iter().zip(pred) {
            table[(usize::from(g) << 8) | usize::from(p)] += 1;
        }
        let n = self.num_classes;
        let ignore = self.ignore.map(usize::from);
        let valid = |v: usize| v < n;
        for g in 0..256usize {
            if Some(g) == ignore {
                continue;
            }
            for p in 0..256usize {
                if table[(g << 8) | p] == 0 {
                    continue;
                }
                if !valid(g) || !(valid(p) || Some(p) == ignore) {
                    // Find the first offending pixel for the error message.
                    for (index, (&gv, &pv)) in gt.iter().zip(pred).enumerate() {
                        if Some(gv) == self.ignore {
                            continue;
                        }
                        if usize::from(gv) >= n {
                            return Err(self.out_of_range("gt", index, gv));
                        }
                        if Some(pv) != self.ignore && usize::from(pv) >= n {
                            return Err(self.out_of_range("pred", index, pv));
                        }
                    }
                }
            }
        }
        for g in 0..n {
            for p in 0..n {
                self.counts[g * n + p] += table[(g << 8) | p];
            }
            if let Some(ig) = ignore {
                self.unpredicted[g] += table[(g << 8) | ig];
            }
        }
        Ok(())
    }

    fn out_of_range(&self, which: &'static str, index: usize, value: u8) -> MetricsError {
        MetricsError::LabelOutOfRange {
            which,
            index,
            value,
            num_classes: self.num_classes,
            ignore: self.ignore,
        }
    }

    /// Adds the counts of `other` (same class count and ignore value).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<(), MetricsError> {
        if other.num_classes != self.num_classes || other.ignore != self.ignore {
            return Err(MetricsError::IncompatibleMatrices {
                reason: format!(
                    "{} classes / ignore {:?} vs {} classes / ignore {:?}",
                    self.num_classes, self.ignore, other.num_classes, other.ignore
                ),
            });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.unpredicted.iter_mut().zip(&other.unpredicted) {
            *a += b;
        }
        Ok(())
    }

    /// Number of classes `N`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The ignore value.
    pub fn ignore(&self) -> Option<u8> {
        self.ignore
    }

    /// Row-major counts, `counts()[gt * N + pred]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Count of pixels with GT class `gt` predicted as `pred` (0 when out of range).
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        if gt < self.num_classes && pred < self.num_classes {
            self.counts[gt * self.num_classes + pred]
        } else {
            0
        }
    }

    /// Per GT class: pixels whose prediction was the ignore value.
    pub fn unpredicted(&self) -> &[u64] {
        &self.unpredicted
    }

    /// Total counted pixels (GT not ignored), unpredicted pixels included.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.unpredicted.iter().sum::<u64>()
    }

    /// GT pixels of class `c` (row sum plus unpredicted).
    pub fn gt_count(&self, c: usize) -> u64 {
        if c >= self.num_classes {
            return 0;
        }
        let n = self.num_classes;
        self.counts[c * n..(c + 1) * n].iter().sum::<u64>() + self.unpredicted[c]
    }

    /// Pixels predicted as class `c` (column sum).
    pub fn pred_count(&self, c: usize) -> u64 {
        if c >= self.num_classes {
            return 0;
        }
        (0..self.num_classes).map(|g| self.get(g, c)).sum()
    }

    /// True positives of class `c` (the diagonal entry).
    pub fn true_positives(&self, c: usize) -> u64 {
        self.get(c, c)
    }

    /// Per-class IoU, Dice, precision, recall and F1 (see the crate docs for definitions).
    pub fn class_metrics(&self) -> ClassMetrics {
        ClassMetrics::from_matrix(self)
    }

    /// Global summary: per-class metrics, macro and weighted averages, mIoU, FwIoU, pixel accuracy.
    pub fn summary(&self) -> SegmentationSummary {
        SegmentationSummary::from_matrix(self)
    }

    /// CSV text: header `gt\pred,<names...>` then one row per GT class `<name>,<counts...>`.
    /// If any prediction was the ignore value, a last column `unpredicted` is added.
    /// Names containing `,`, `"` or line breaks are quoted (RFC 4180).
    pub fn to_csv_string(&self, class_names: &[&str]) -> Result<String, MetricsError> {
        if class_names.len() != self.num_classes {
            return Err(MetricsError::ClassNames {
                expected: self.num_classes,
                got: class_names.len(),
            });
        }
        let with_unpred = self.unpredicted.iter().any(|&u| u > 0);
        let mut s = String::from("gt\\pred");
        for name in class_names {
            s.push(',');
            s.push_str(&csv_field(name));
        }
        if with_unpred {
            s.push_str(",unpredicted");
        }
        s.push('\n');
        for (g, name) in class_names.iter().enumerate() {
            s.push_str(&csv_field(name));
            for p in 0..self.num_classes {
                let _ = write!(s, ",{}", self.get(g, p));
            }
            if with_unpred {
                let _ = write!(s, ",{}", self.unpredicted[g]);
            }
            s.push('\n');
        }
        Ok(s)
    }

    /// Writes [`Self::to_csv_string`] to `path`.
    pub fn write_csv(&self, path: &Path, class_names: &[&str]) -> Result<(), MetricsError> {
        let text = self.to_csv_string(class_names)?;
        std::fs::write(path, text).map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_matrix_with_ignore() {
        // gt:   0 0 1 1 2 255 1
        // pred: 0 1 1 1 0 2   255
        let gt = [0u8, 0, 1, 1, 2, 255, 1];
        let pred = [0u8, 1, 1, 1, 0, 2, 255];
        let m = ConfusionMatrix::from_labels(3, &gt, &pred).unwrap();
        assert_eq!(m.counts(), &[1, 1, 0, 0, 2, 0, 1, 0, 0]);
        assert_eq!(m.unpredicted(), &[0, 1, 0]);
        assert_eq!(m.total(), 6);
        assert_eq!(m.gt_count(1), 3);
        assert_eq!(m.pred_count(0), 2);
        assert_eq!(m.pred_count(2), 0);
    }

    #[test]
    fn errors_leave_matrix_unchanged() {
        let mut m = ConfusionMatrix::new(2).unwrap();
        m.accumulate(&[0, 1], &[0, 1]).unwrap();
        let before = m.clone();
        let e = m.accumulate(&[0, 1, 2], &[0, 1, 1]).unwrap_err();
        assert!(matches!(
            e,
            MetricsError::LabelOutOfRange {
                which: "gt",
                index: 2,
                value: 2,
                ..
            }
        ));
        let e = m.accumulate(&[0, 1], &[0, 7]).unwrap_err();
        assert!(matches!(
            e,
            MetricsError::LabelOutOfRange {
                which: "pred",
                index: 1,
                value: 7,
                ..
            }
        ));
        // An invalid prediction under an ignored GT pixel is not an error.
        m.accumulate(&[255], &[9]).unwrap();
        let e = m.accumulate(&[0], &[0, 0]).unwrap_err();
        assert!(matches!(
            e,
            MetricsError::SizeMismatch {
                gt_len: 1,
                pred_len: 2
            }
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn large_maps_use_the_same_rules() {
        // Same data through the direct path (chunks) and the histogram path (whole map).
        let len = TABLE_MIN_PIXELS * 2 + 17;
        let gt: Vec<u8> = (0..len)
            .map(|i| if i % 7 == 0 { 255 } else { (i % 3) as u8 })
            .collect();
        let pred: Vec<u8> = (0..len)
            .map(|i| if i % 11 == 0 { 255 } else { (i / 5 % 3) as u8 })
            .collect();
        let whole = ConfusionMatrix::from_labels(3, &gt, &pred).unwrap();
        let mut parts = ConfusionMatrix::new(3).unwrap();
        for (g, p) in gt.chunks(1000).zip(pred.chunks(1000)) {
            parts.accumulate(g, p).unwrap();
        }
        assert_eq!(whole, parts);
        assert!(whole.unpredicted().iter().sum::<u64>() > 0);
        let mut bad = pred.clone();
        bad[len - 3] = 9;
        let mut m = whole.clone();
        let e = m.accumulate(&gt, &bad).unwrap_err();
        assert!(matches!(
            e,
            MetricsError::LabelOutOfRange {
                which: "pred",
                value: 9,
                ..
            }
        ));
        assert_eq!(m, whole);
        let mut bad_gt = gt.clone();
        bad_gt[5] = 3;
        let e = m.accumulate(&bad_gt, &pred).unwrap_err();
        assert!(matches!(
            e,
            MetricsError::LabelOutOfRange {
                which: "gt",
                index: 5,
                value: 3,
                ..
            }
        ));
    }

    #[test]
    fn constructor_errors() {
        assert!(ConfusionMatrix::new(0).is_err());
        assert!(ConfusionMatrix::new(256).is_err());
        assert!(ConfusionMatrix::with_ignore(256, None).is_ok());
        assert!(ConfusionMatrix::with_ignore(4, Some(3)).is_err());
        assert!(ConfusionMatrix::from_counts(2, vec![1, 2, 3]).is_err());
    }

    #[test]
    fn merge_adds_and_checks() {
        let mut a = ConfusionMatrix::from_labels(2, &[0, 1], &[1, 1]).unwrap();
        let b = ConfusionMatrix::from_labels(2, &[0, 0, 1], &[0, 255, 1]).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.counts(), &[1, 1, 0, 2]);
        assert_eq!(a.unpredicted(), &[1, 0]);
        let c = ConfusionMatrix::new(3).unwrap();
        assert!(a.merge(&c).is_err());
    }

    #[test]
    fn csv_layout() {
        let m = ConfusionMatrix::from_counts(2, vec![5, 1, 2, 7]).unwrap();
        let s = m.to_csv_string(&["benign", "tu,mor"]).unwrap();
        assert_eq!(
            s,
            "gt\\pred,benign,\"tu,mor\"\nbenign,5,1\n\"tu,mor\",2,7\n"
        );
        assert!(m.to_csv_string(&["a"]).is_err());
        let m = ConfusionMatrix::from_labels(2, &[0, 1], &[255, 1]).unwrap();
        let s = m.to_csv_string(&["a", "b"]).unwrap();
        assert_eq!(s, "gt\\pred,a,b,unpredicted\na,0,0,1\nb,0,1,0\n");
    }
}

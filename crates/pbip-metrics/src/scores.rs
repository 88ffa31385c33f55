//! Per-class scores, averages, per-patch aggregation and the metrics JSON report.

use std::path::Path;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::confusion::ConfusionMatrix;
use crate::error::MetricsError;

/// Per-class scores of one confusion matrix. Every vector has one entry per class;
/// `None` = the class is absent from both GT and prediction (see the crate docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// TP / (TP + FP + FN).
    pub iou: Vec<Option<f64>>,
    /// 2·TP / (2·TP + FP + FN).
    pub dice: Vec<Option<f64>>,
    /// TP / (TP + FP); 0 when the class is in the GT but never predicted.
    pub precision: Vec<Option<f64>>,
    /// TP / (TP + FN); 0 when the class is predicted but absent from the GT.
    pub recall: Vec<Option<f64>>,
    /// 2·TP / (2·TP + FP + FN) (identical to `dice` at pixel level).
    pub f1: Vec<Option<f64>>,
    /// GT pixels per class (TP + FN, unpredicted pixels included).
    pub gt_pixels: Vec<u64>,
    /// Predicted pixels per class (TP + FP).
    pub pred_pixels: Vec<u64>,
    /// True positives per class.
    pub true_positives: Vec<u64>,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { num / den } else { 0.0 }
}

impl ClassMetrics {
    /// Computes the per-class scores of `m`.
    pub fn from_matrix(m: &ConfusionMatrix) -> Self {
        let n = m.num_classes();
        let mut out = ClassMetrics {
            iou: Vec::with_capacity(n),
            dice: Vec::with_capacity(n),
            precision: Vec::with_capacity(n),
            recall: Vec::with_capacity(n),
            f1: Vec::with_capacity(n),
            gt_pixels: Vec::with_capacity(n),
            pred_pixels: Vec::with_capacity(n),
            true_positives: Vec::with_capacity(n),
        };
        for c in 0..n {
            let tp = m.true_positives(c);
            let gt = m.gt_count(c);
            let pr = m.pred_count(c);
            out.gt_pixels.push(gt);
            out.pred_pixels.push(pr);
            out.true_positives.push(tp);
            if gt == 0 && pr == 0 {
                out.iou.push(None);
                out.dice.push(None);
                out.precision.push(None);
                out.recall.push(None);
                out.f1.push(None);
                continue;
            }
            let (tpf, gtf, prf) = (tp as f64, gt as f64, pr as f64);
            let dice = ratio(2.0 * tpf, gtf + prf);
            out.iou.push(Some(ratio(tpf, gtf + prf - tpf)));
            out.dice.push(Some(dice));
            out.precision.push(Some(ratio(tpf, prf)));
            out.recall.push(Some(ratio(tpf, gtf)));
            out.f1.push(Some(dice));
        }
        out
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.iou.len()
    }

    /// Classes present in GT or prediction (the ones that enter averages).
    pub fn num_defined(&self) -> usize {
        self.iou.iter().filter(|v| v.is_some()).count()
    }

    fn metric(&self, k: Metric) -> &[Option<f64>] {
        match k {
            Metric::Iou => &self.iou,
            Metric::Dice => &self.dice,
            Metric::Precision => &self.precision,
            Metric::Recall => &self.recall,
            Metric::F1 => &self.f1,
        }
    }

    /// Macro average: unweighted mean over the classes where the score is defined.
    pub fn macro_average(&self) -> Averages {
        Averages::from_fn(|k| mean_defined(self.metric(k)))
    }

    /// Weighted average: Σ_c gt_c·s_c / Σ_c gt_c (classes absent from the GT get weight 0;
    /// `None` when there are no GT pixels). Like sklearn's `average="weighted"`.
    pub fn weighted_average(&self) -> Averages {
        let total: u64 = self.gt_pixels.iter().sum();
        Averages::from_fn(|k| {
            if total == 0 {
                return None;
            }
            let mut acc = 0.0;
            for (v, &w) in self.metric(k).iter().zip(&self.gt_pixels) {
                if let Some(v) = v {
                    acc += w as f64 * v;
                }
            }
            Some(acc / total as f64)
        })
    }
}

fn mean_defined(v: &[Option<f64>]) -> Option<f64> {
    let (s, n) = v
        .iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { None } else { Some(s / n as f64) }
}

#[derive(Debug, Clone, Copy)]
enum Metric {
    Iou,
    Dice,
    Precision,
    Recall,
    F1,
}

const METRICS: [Metric; 5] = [
    Metric::Iou,
    Metric::Dice,
    Metric::Precision,
    Metric::Recall,
    Metric::F1,
];

/// One averaged value per score; `None` when nothing is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Averages {
    /// Averaged IoU.
    pub iou: Option<f64>,
    /// Averaged Dice.
    pub dice: Option<f64>,
    /// Averaged precision.
    pub precision: Option<f64>,
    /// Averaged recall.
    pub recall: Option<f64>,
    /// Averaged F1.
    pub f1: Option<f64>,
}

impl Averages {
    fn from_fn(mut f: impl FnMut(Metric) -> Option<f64>) -> Self {
        Averages {
            iou: f(Metric::Iou),
            dice: f(Metric::Dice),
            precision: f(Metric::Precision),
            recall: f(Metric::Recall),
            f1: f(Metric::F1),
        }
    }
}

/// Summary of one (global or per-patch) confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationSummary {
    /// Per-class scores.
    pub per_class: ClassMetrics,
    /// Macro averages over classes (absent classes excluded).
    pub macro_avg: Averages,
    /// GT-pixel-count weighted averages.
    pub weighted_avg: Averages,
    /// Mean IoU = `macro_avg.iou`.
    pub miou: Option<f64>,
    /// Frequency-weighted IoU: Σ_c (gt_c / total)·IoU_c = `weighted_avg.iou`.
    pub fwiou: Option<f64>,
    /// Σ_c TP_c / total counted pixels (`None` when no pixel was counted).
    pub pixel_accuracy: Option<f64>,
    /// Counted pixels (GT not ignored).
    pub num_pixels: u64,
}

impl SegmentationSummary {
    /// Summary of `m`.
    pub fn from_matrix(m: &ConfusionMatrix) -> Self {
        let per_class = ClassMetrics::from_matrix(m);
        let macro_avg = per_class.macro_average();
        let weighted_avg = per_class.weighted_average();
        let total = m.total();
        let tp: u64 = per_class.true_positives.iter().sum();
        SegmentationSummary {
            miou: macro_avg.iou,
            fwiou: weighted_avg.iou,
            pixel_accuracy: (total > 0).then(|| tp as f64 / total as f64),
            num_pixels: total,
            per_class,
            macro_avg,
            weighted_avg,
        }
    }
}

/// Accumulates patches: a global confusion matrix plus per-patch scores, to report both
/// "macro over classes of the global matrix" and "mean over patches".
#[derive(Debug, Clone)]
pub struct PatchAggregator {
    global: ConfusionMatrix,
    num_patches: usize,
    // per metric (5), per class: sum and count of defined per-patch values
    class_sum: Vec<Vec<f64>>,
    class_n: Vec<Vec<usize>>,
    // per metric: sum and count of per-patch macro averages
    macro_sum: Vec<f64>,
    macro_n: Vec<usize>,
    acc_sum: f64,
    acc_n: usize,
}

/// Result of [`PatchAggregator::finish`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchSummary {
    /// Summary of the global (summed) confusion matrix.
    pub global: SegmentationSummary,
    /// Number of patches added.
    pub num_patches: usize,
    /// Per class, the mean over the patches where the class is defined.
    pub patch_mean_per_class: PatchMeans,
    /// Mean over patches of each patch's macro average (patches without any defined class,
    /// i.e. fully ignored, are skipped).
    pub patch_macro_avg: Averages,
    /// Mean over patches of the per-patch pixel accuracy (fully ignored patches skipped).
    pub patch_pixel_accuracy: Option<f64>,
}

/// Per-class means over patches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchMeans {
    /// Mean per-patch IoU per class.
    pub iou: Vec<Option<f64>>,
    /// Mean per-patch Dice per class.
    pub dice: Vec<Option<f64>>,
    /// Mean per-patch precision per class.
    pub precision: Vec<Option<f64>>,
    /// Mean per-patch recall per class.
    pub recall: Vec<Option<f64>>,
    /// Mean per-patch F1 per class.
    pub f1: Vec<Option<f64>>,
    /// Number of patches in which the class is defined.
    pub num_patches: Vec<usize>,
}

impl PatchAggregator {
    /// New aggregator over `num_classes` classes, ignore value 255.
    pub fn new(num_classes: usize) -> Result<Self, MetricsError> {
        Self::from_empty(ConfusionMatrix::new(num_classes)?)
    }

    /// New aggregator with an explicit ignore value.
    pub fn with_ignore(num_classes: usize, ignore: Option<u8>) -> Result<Self, MetricsError> {
        Self::from_empty(ConfusionMatrix::with_ignore(num_classes, ignore)?)
    }

    fn from_empty(global: ConfusionMatrix) -> Result<Self, MetricsError> {
        let n = global.num_classes();
        Ok(Self {
            global,
            num_patches: 0,
            class_sum: vec![vec![0.0; n]; 5],
            class_n: vec![vec![0; n]; 5],
            macro_sum: vec![0.0; 5],
            macro_n: vec![0; 5],
            acc_sum: 0.0,
            acc_n: 0,
        })
    }

    /// Adds one patch given as label maps.
    pub fn add_patch(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), MetricsError> {
        let mut m = ConfusionMatrix::with_ignore(self.global.num_classes(), self.global.ignore())?;
        m.accumulate(gt, pred)?;
        self.add_matrix(&m)
    }

    /// Adds one patch given as its confusion matrix.
    pub fn add_matrix(&mut self, m: &ConfusionMatrix) -> Result<(), MetricsError> {
        self.global.merge(m)?;
        self.num_patches += 1;
        let s = SegmentationSummary::from_matrix(m);
        let macro_avg = [
            s.macro_avg.iou,
            s.macro_avg.dice,
            s.macro_avg.precision,
            s.macro_avg.recall,
            s.macro_avg.f1,
        ];
        for (mi, &k) in METRICS.iter().enumerate() {
            for (c, v) in s.per_class.metric(k).iter().enumerate() {
                if let Some(v) = v {
                    self.class_sum[mi][c] += v;
                    self.class_n[mi][c] += 1;
                }
            }
            if let Some(v) = macro_avg[mi] {
                self.macro_sum[mi] += v;
                self.macro_n[mi] += 1;
            }
        }
        if let Some(a) = s.pixel_accuracy {
            self.acc_sum += a;
            self.acc_n += 1;
        }
        Ok(())
    }

    /// Adds every patch of `other` (same classes and ignore value), as if each had been added here.
    pub fn merge(&mut self, other: &PatchAggregator) -> Result<(), MetricsError> {
        self.global.merge(&other.global)?;
        self.num_patches += other.num_patches;
        for mi in 0..self.class_sum.len() {
            for c in 0..self.class_sum[mi].len() {
                self.class_sum[mi][c] += other.class_sum[mi][c];
                self.class_n[mi][c] += other.class_n[mi][c];
            }
            self.macro_sum[mi] += other.macro_sum[mi];
            self.macro_n[mi] += other.macro_n[mi];
        }
        self.acc_sum += other.acc_sum;
        self.acc_n += other.acc_n;
        Ok(())
    }

    /// The global matrix so far.
    pub fn global(&self) -> &ConfusionMatrix {
        &self.global
    }

    /// Final numbers.
    pub fn finish(&self) -> PatchSummary {
        let per = |mi: usize| -> Vec<Option<f64>> {
            self.class_sum[mi]
                .iter()
                .zip(&self.class_n[mi])
                .map(|(&s, &n)| (n > 0).then(|| s / n as f64))
                .collect()
        };
        let mac = |mi: usize| {
            (self.macro_n[mi] > 0).then(|| self.macro_sum[mi] / self.macro_n[mi] as f64)
        };
        PatchSummary {
            global: self.global.summary(),
            num_patches: self.num_patches,
            patch_mean_per_class: PatchMeans {
                iou: per(0),
                dice: per(1),
                precision: per(2),
                recall: per(3),
                f1: per(4),
                num_patches: self.class_n[0].clone(),
            },
            patch_macro_avg: Averages {
                iou: mac(0),
                dice: mac(1),
                precision: mac(2),
                recall: mac(3),
                f1: mac(4),
            },
            patch_pixel_accuracy: (self.acc_n > 0).then(|| self.acc_sum / self.acc_n as f64),
        }
    }
}

/// Scores of one class in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// IoU (null when the class is absent from GT and prediction).
    pub iou: Option<f64>,
    /// Dice.
    pub dice: Option<f64>,
    /// Precision.
    pub precision: Option<f64>,
    /// Recall.
    pub recall: Option<f64>,
    /// F1.
    pub f1: Option<f64>,
    /// GT pixels.
    pub gt_pixels: u64,
    /// Predicted pixels.
    pub pred_pixels: u64,
}

/// Ordered `class name -> value` map (serialised as a JSON object in class order).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for ClassMap<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The `metrics.json` document. Undefined values serialise as `null`.
///
/// ```json
/// { "miou": 0.71, "fwiou": 0.80, "pixel_accuracy": 0.88, "num_pixels": 50176,
///   "class_names": ["benign", "tumor"],
///   "iou": {"benign": 0.7, "tumor": 0.72}, "dice": {...}, "precision": {...},
///   "recall": {...}, "f1": {...},
///   "per_class": {"benign": {"iou": ..., "dice": ..., "precision": ..., "recall": ...,
///                 "f1": ..., "gt_pixels": ..., "pred_pixels": ...}, ...},
///   "macro": {"iou": ..., "dice": ..., "precision": ..., "recall": ..., "f1": ...},
///   "weighted": {...},
///   "num_patches": 12, "patch_macro": {...}, "patch_pixel_accuracy": 0.87,
///   "confusion_matrix": [[...], [...]] }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsReport {
    /// Mean IoU over defined classes of the global matrix.
    pub miou: Option<f64>,
    /// Frequency-weighted IoU of the global matrix.
    pub fwiou: Option<f64>,
    /// Pixel accuracy of the global matrix.
    pub pixel_accuracy: Option<f64>,
    /// Counted pixels.
    pub num_pixels: u64,
    /// Class names in class-index order.
    pub class_names: Vec<String>,
    /// Per-class IoU.
    pub iou: ClassMap<Option<f64>>,
    /// Per-class Dice.
    pub dice: ClassMap<Option<f64>>,
    /// Per-class precision.
    pub precision: ClassMap<Option<f64>>,
    /// Per-class recall.
    pub recall: ClassMap<Option<f64>>,
    /// Per-class F1.
    pub f1: ClassMap<Option<f64>>,
    /// All per-class scores grouped by class.
    pub per_class: ClassMap<ClassScores>,
    /// Macro averages over classes (absent classes excluded).
    #[serde(rename = "macro")]
    pub macro_avg: Averages,
    /// GT-pixel-weighted averages.
    #[serde(rename = "weighted")]
    pub weighted_avg: Averages,
    /// Number of patches (when built from a [`PatchSummary`]).
    pub num_patches: Option<usize>,
    /// Mean over patches of the per-patch macro averages.
    pub patch_macro: Option<Averages>,
    /// Mean over patches of per-patch pixel accuracy.
    pub patch_pixel_accuracy: Option<f64>,
    /// Global confusion matrix, rows = GT, columns = prediction.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Per GT class, pixels predicted as the ignore value (all zero normally).
    pub unpredicted: Vec<u64>,
}

impl MetricsReport {
    /// Report of one confusion matrix.
    pub fn from_matrix(m: &ConfusionMatrix, class_names: &[&str]) -> Result<Self, MetricsError> {
        if class_names.len() != m.num_classes() {
            return Err(MetricsError::ClassNames {
                expected: m.num_classes(),
                got: class_names.len(),
            });
        }
        let s = m.summary();
        let names: Vec<String> = class_names.iter().map(|s| s.to_string()).collect();
        let cm =
            |v: &[Option<f64>]| ClassMap(names.iter().cloned().zip(v.iter().copied()).collect());
        let pc = &s.per_class;
        let per_class = ClassMap(
            (0..names.len())
                .map(|c| {
                    (
                        names[c].clone(),
                        ClassScores {
                            iou: pc.iou[c],
                            dice: pc.dice[c],
                            precision: pc.precision[c],
                            recall: pc.recall[c],
                            f1: pc.f1[c],
                            gt_pixels: pc.gt_pixels[c],
                            pred_pixels: pc.pred_pixels[c],
                        },
                    )
                })
                .collect(),
        );
        let n = m.num_classes();
        Ok(MetricsReport {
            miou: s.miou,
            fwiou: s.fwiou,
            pixel_accuracy: s.pixel_accuracy,
            num_pixels: s.num_pixels,
            iou: cm(&pc.iou),
            dice: cm(&pc.dice),
            precision: cm(&pc.precision),
            recall: cm(&pc.recall),
            f1: cm(&pc.f1),
            per_class,
            macro_avg: s.macro_avg,
            weighted_avg: s.weighted_avg,
            num_patches: None,
            patch_macro: None,
            patch_pixel_accuracy: None,
            confusion_matrix: (0..n)
                .map(|g| (0..n).map(|p| m.get(g, p)).collect())
                .collect(),
            unpredicted: m.unpredicted().to_vec(),
            class_names: names,
        })
    }

    /// Report of a patch aggregation (global numbers plus the patch means).
    pub fn from_patches(agg: &PatchAggregator, class_names: &[&str]) -> Result<Self, MetricsError> {
        let mut r = Self::from_matrix(agg.global(), class_names)?;
        let p = agg.finish();
        r.num_patches = Some(p.num_patches);
        r.patch_macro = Some(p.patch_macro_avg);
        r.patch_pixel_accuracy = p.patch_pixel_accuracy;
        Ok(r)
    }

    /// Pretty-printed JSON.
    pub fn to_json_string(&self) -> String {
        // Serialising plain numbers, strings and options into a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), MetricsError> {
        std::fs::write(path, self.to_json_string()).map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn hand_computed_scores_with_absent_class() {
        // 4 classes; class 3 absent from GT and prediction; class 2 in GT only.
        // gt   = [0,0,0,1,1,2,2,255]
        // pred = [0,0,1,1,0,1,1,3]   (pixel 7 ignored, its pred 3 does not count)
        let gt = [0u8, 0, 0, 1, 1, 2, 2, 255];
        let pred = [0u8, 0, 1, 1, 0, 1, 1, 3];
        let m = ConfusionMatrix::from_labels(4, &gt, &pred).unwrap();
        // rows: gt0 [2,1,0,0], gt1 [1,1,0,0], gt2 [0,2,0,0], gt3 [0,0,0,0]
        let s = m.summary();
        let c = &s.per_class;
        // class 0: TP 2, FP 1, FN 1 -> IoU 2/4, Dice 4/6, P 2/3, R 2/3
        assert!(close(c.iou[0], 0.5));
        assert!(close(c.dice[0], 4.0 / 6.0));
        assert!(close(c.precision[0], 2.0 / 3.0));
        assert!(close(c.recall[0], 2.0 / 3.0));
        // class 1: TP 1, FP 3, FN 1 -> IoU 1/5, Dice 2/6, P 1/4, R 1/2
        assert!(close(c.iou[1], 0.2));
        assert!(close(c.f1[1], 2.0 / 6.0));
        assert!(close(c.precision[1], 0.25));
        assert!(close(c.recall[1], 0.5));
        // class 2: TP 0, never predicted -> precision 0 (zero_division=0), recall 0
        assert!(close(c.iou[2], 0.0));
        assert!(close(c.precision[2], 0.0));
        assert!(close(c.recall[2], 0.0));
        // class 3 absent from both -> None
        assert_eq!(c.iou[3], None);
        assert_eq!(c.precision[3], None);
        assert_eq!(c.num_defined(), 3);
        // macro over 3 defined classes
        assert!(close(s.miou, (0.5 + 0.2 + 0.0) / 3.0));
        // FwIoU: freq 3/7, 2/7, 2/7
        assert!(close(s.fwiou, (3.0 * 0.5 + 2.0 * 0.2) / 7.0));
        assert!(close(s.pixel_accuracy, 3.0 / 7.0));
        assert_eq!(s.num_pixels, 7);
        assert!(close(s.weighted_avg.recall, 3.0 / 7.0)); // weighted recall = accuracy
    }

    #[test]
    fn merging_aggregators_equals_adding_every_patch_to_one() {
        let patches: [(&[u8], &[u8]); 4] = [
            (&[0, 0, 1, 1], &[0, 1, 1, 1]),
            (&[1, 1, 1, 255], &[1, 0, 1, 0]),
            (&[0, 0, 0, 0], &[0, 0, 0, 1]),
            (&[255, 255, 255, 255], &[0, 0, 0, 0]),
        ];
        let mut all = PatchAggregator::new(2).unwrap();
        let mut a = PatchAggregator::new(2).unwrap();
        let mut b = PatchAggregator::new(2).unwrap();
        for (i, (g, p)) in patches.iter().enumerate() {
            all.add_patch(g, p).unwrap();
            if i < 2 {
                a.add_patch(g, p).unwrap()
            } else {
                b.add_patch(g, p).unwrap()
            }
        }
        a.merge(&b).unwrap();
        assert_eq!(a.finish(), all.finish());
        assert_eq!(a.finish().num_patches, 4);
        assert!(a.merge(&PatchAggregator::new(3).unwrap()).is_err());
    }

    #[test]
    fn unpredicted_pixels_are_false_negatives() {
        let m = ConfusionMatrix::from_labels(2, &[0, 0, 1, 1], &[0, 255, 1, 1]).unwrap();
        let s = m.summary();
        assert!(close(s.per_class.recall[0], 0.5));
        assert!(close(s.per_class.precision[0], 1.0));
        assert!(close(s.per_class.iou[0], 0.5));
        assert!(close(s.pixel_accuracy, 0.75));
    }

    #[test]
    fn fully_ignored_is_all_none() {
        let m = ConfusionMatrix::from_labels(2, &[255, 255], &[0, 1]).unwrap();
        let s = m.summary();
        assert_eq!(s.miou, None);
        assert_eq!(s.fwiou, None);
        assert_eq!(s.pixel_accuracy, None);
        assert_eq!(s.macro_avg.f1, None);
    }

    #[test]
    fn patch_means_differ_from_global() {
        let mut agg = PatchAggregator::new(2).unwrap();
        // patch A: perfect, only class 0 (class 1 undefined in this patch)
        agg.add_patch(&[0, 0], &[0, 0]).unwrap();
        // patch B: gt [0,1,1,1], pred [1,1,1,1]: class0 IoU 0, class1 IoU 3/4
        agg.add_patch(&[0, 1, 1, 1], &[1, 1, 1, 1]).unwrap();
        let p = agg.finish();
        assert_eq!(p.num_patches, 2);
        assert!(close(p.patch_mean_per_class.iou[0], 0.5));
        assert!(close(p.patch_mean_per_class.iou[1], 0.75));
        assert_eq!(p.patch_mean_per_class.num_patches, vec![2, 1]);
        // per-patch macro: A = 1.0, B = 0.375 -> 0.6875
        assert!(close(p.patch_macro_avg.iou, 0.6875));
        // global: gt0 [2,1], gt1 [0,3]: IoU0 2/3, IoU1 3/4
        assert!(close(p.global.miou, (2.0 / 3.0 + 0.75) / 2.0));
        assert!(close(p.patch_pixel_accuracy, (1.0 + 0.75) / 2.0));
    }

    #[test]
    fn json_report_shape() {
        let m = ConfusionMatrix::from_labels(3, &[0, 1, 1], &[0, 1, 0]).unwrap();
        let r = MetricsReport::from_matrix(&m, &["a", "b", "c"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.to_json_string()).unwrap();
        assert_eq!(v["iou"]["a"], serde_json::json!(0.5));
        assert!(v["iou"]["c"].is_null());
        assert_eq!(v["per_class"]["b"]["gt_pixels"], serde_json::json!(2));
        assert_eq!(v["macro"]["recall"], serde_json::json!(0.75));
        assert_eq!(v["confusion_matrix"][1], serde_json::json!([1, 1, 0]));
        let keys: Vec<&String> = v["iou"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3);
        assert!(MetricsReport::from_matrix(&m, &["a"]).is_err());
    }
}

//! Slide-level (image-level) classification metrics: thresholded accuracy, ROC AUC, threshold
//! sweeps.

use serde::Serialize;

use crate::error::MetricsError;

fn check_binary(scores: &[f64], labels: &[bool]) -> Result<(), MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            what: "scores vs labels",
            left: scores.len(),
            right: labels.len(),
        });
    }
    if scores.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(MetricsError::NonFiniteScore { index, value });
    }
    Ok(())
}

/// Fraction of samples with `(score >= threshold) == label`.
pub fn threshold_accuracy(
    scores: &[f64],
    labels: &[bool],
    threshold: f64,
) -> Result<f64, MetricsError> {
    check_binary(scores, labels)?;
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|&(&s, &l)| (s >= threshold) == l)
        .count();
    Ok(correct as f64 / scores.len() as f64)
}

/// Binary ROC AUC, identical to sklearn's `roc_auc_score(labels, scores)`: the ROC curve has one
/// point per distinct score (tied scores move TPR and FPR together) and the area is the
/// trapezoidal rule over those points. Equivalently the Mann–Whitney probability
/// P(score⁺ > score⁻) + ½·P(score⁺ = score⁻).
///
/// Errors: empty input, length mismatch, non-finite score, or only one class present.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64, MetricsError> {
    check_binary(scores, labels)?;
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::SingleClass {
            present: if positives == 0 {
                "negative"
            } else {
                "positive"
            },
            positives,
            negatives,
        });
    }
    let (mut prev_tp, mut prev_fp) = (0usize, 0usize);
    let mut area2 = 0.0f64; // twice the (unnormalised) area
    for (_, tp, fp) in roc_points(scores, labels) {
        area2 += (fp - prev_fp) as f64 * (tp + prev_tp) as f64;
        prev_tp = tp;
        prev_fp = fp;
    }
    Ok(area2 / 2.0 / (positives as f64 * negatives as f64))
}

/// The points of the ROC curve, by decreasing score: `(score, tp, fp)` counts the positives and
/// negatives scoring `>= score`, one point per distinct score (a group of equal scores, with
/// +0.0 == -0.0, moves both counts together).
fn roc_points<'a>(
    scores: &'a [f64],
    labels: &'a [bool],
) -> impl Iterator<Item = (f64, usize, usize)> + 'a {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0, 0);
    let mut i = 0;
    std::iter::from_fn(move || {
        let s = scores[*order.get(i)?];
        while i < order.len() && scores[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        Some((s, tp, fp))
    })
}

/// Per-label and macro ROC AUC of a multi-label problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiLabelAuc {
    /// Binary AUC of each label vs the rest; `None` when that label has only one class among
    /// the samples (sklearn raises an error in that case).
    pub per_label: Vec<Option<f64>>,
    /// Mean over the labels where the AUC is defined; `None` when none is.
    pub macro_auc: Option<f64>,
}

/// One-vs-rest macro ROC AUC for multi-label data: `scores` and `labels` are row-major
/// `[n_samples, n_labels]`. Each label column is scored with [`roc_auc`]; the macro value is the
/// unweighted mean over defined labels. Equal to sklearn's
/// `roc_auc_score(Y, S, average="macro")` when every label has both classes.
pub fn roc_auc_multilabel(
    scores: &[f64],
    labels: &[bool],
    n_labels: usize,
) -> Result<MultiLabelAuc, MetricsError> {
    check_binary(scores, labels)?;
    if n_labels == 0 || !scores.len().is_multiple_of(n_labels) {
        return Err(MetricsError::LengthMismatch {
            what: "scores length vs n_labels (must divide)",
            left: scores.len(),
            right: n_labels,
        });
    }
    let n = scores.len() / n_labels;
    let mut per_label = Vec::with_capacity(n_labels);
    for j in 0..n_labels {
        let s: Vec<f64> = (0..n).map(|i| scores[i * n_labels + j]).collect();
        let l: Vec<bool> = (0..n).map(|i| labels[i * n_labels + j]).collect();
        per_label.push(match roc_auc(&s, &l) {
            Ok(v) => Some(v),
            Err(MetricsError::SingleClass { .. }) => None,
            Err(e) => return Err(e),
        });
    }
    let defined: Vec<f64> = per_label.iter().flatten().copied().collect();
    let macro_auc =
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    Ok(MultiLabelAuc {
        per_label,
        macro_auc,
    })
}

/// One-vs-rest macro ROC AUC for single-label multi-class data: `scores` row-major
/// `[n_samples, n_classes]`, `classes[i]` the true class of sample i. Class c is scored as the
/// binary problem `classes == c` vs `scores[:, c]` (sklearn `multi_class="ovr"`, macro).
pub fn roc_auc_ovr(
    scores: &[f64],
    classes: &[usize],
    n_classes: usize,
) -> Result<MultiLabelAuc, MetricsError> {
    if n_classes == 0 || scores.len() != classes.len() * n_classes {
        return Err(MetricsError::LengthMismatch {
            what: "scores length vs n_samples * n_classes",
            left: scores.len(),
            right: classes.len() * n_classes,
        });
    }
    let labels: Vec<bool> = classes
        .iter()
        .flat_map(|&c| (0..n_classes).map(move |j| j == c))
        .collect();
    roc_auc_multilabel(scores, &labels, n_classes)
}

/// Accuracy of a thresholded multi-label prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiLabelAccuracy {
    /// Accuracy of each label column.
    pub per_label: Vec<f64>,
    /// Fraction of correct (sample, label) entries (Hamming accuracy).
    pub elementwise: f64,
    /// Fraction of samples with every label correct (subset accuracy).
    pub exact_match: f64,
}

/// Multi-label accuracy with one threshold per label (`score >= threshold` = positive).
pub fn multilabel_accuracy(
    scores: &[f64],
    labels: &[bool],
    thresholds: &[f64],
) -> Result<MultiLabelAccuracy, MetricsError> {
    check_binary(scores, labels)?;
    let k = thresholds.len();
    if k == 0 || !scores.len().is_multiple_of(k) {
        return Err(MetricsError::LengthMismatch {
            what: "scores length vs number of thresholds (must divide)",
            left: scores.len(),
            right: k,
        });
    }
    let n = scores.len() / k;
    let mut per = vec![0usize; k];
    let mut exact = 0usize;
    for i in 0..n {
        let mut all = true;
        for j in 0..k {
            let ok = (scores[i * k + j] >= thresholds[j]) == labels[i * k + j];
            if ok {
                per[j] += 1;
            } else {
                all = false;
            }
        }
        if all {
            exact += 1;
        }
    }
    Ok(MultiLabelAccuracy {
        per_label: per.iter().map(|&c| c as f64 / n as f64).collect(),
        elementwise: per.iter().sum::<usize>() as f64 / (n * k) as f64,
        exact_match: exact as f64 / n as f64,
    })
}

/// What a threshold sweep maximises. Rates with a zero denominator count as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMetric {
    /// (TP + TN) / n.
    Accuracy,
    /// 2·TP / (2·TP + FP + FN).
    F1,
    /// (TPR + TNR) / 2.
    BalancedAccuracy,
    /// Youden's J = TPR − FPR.
    Youden,
}

/// Result of [`sweep_threshold`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdChoice {
    /// Chosen threshold (`score >= threshold` = positive). `f64::INFINITY` means "predict all
    /// negative" was best.
    pub threshold: f64,
    /// Value of the metric at that threshold.
    pub value: f64,
}

fn metric_value(metric: ThresholdMetric, tp: usize, fp: usize, p: usize, n: usize) -> f64 {
    let fn_ = p - tp;
    let tn = n - fp;
    let r = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    match metric {
        ThresholdMetric::Accuracy => r(tp + tn, p + n),
        ThresholdMetric::F1 => r(2 * tp, 2 * tp + fp + fn_),
        ThresholdMetric::BalancedAccuracy => (r(tp, p) + r(tn, n)) / 2.0,
        ThresholdMetric::Youden => r(tp, p) - r(fp, n),
    }
}

/// Threshold that maximises `metric`. Candidates are `+inf` (all negative) and every distinct
/// score (positive iff `score >= t`). Ties are resolved towards the **highest** threshold.
pub fn sweep_threshold(
    scores: &[f64],
    labels: &[bool],
    metric: ThresholdMetric,
) -> Result<ThresholdChoice, MetricsError> {
    check_binary(scores, labels)?;
    let p = labels.iter().filter(|&&l| l).count();
    let n = labels.len() - p;
    let mut best = ThresholdChoice {
        threshold: f64::INFINITY,
        value: metric_value(metric, 0, 0, p, n),
    };
    for (s, tp, fp) in roc_points(scores, labels) {
        let v = metric_value(metric, tp, fp, p, n);
        if v > best.value {
            best = ThresholdChoice {
                threshold: s,
                value: v,
            };
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_hand_computed() {
        // pos scores 0.8, 0.4; neg 0.4, 0.1 -> pairs: (0.8>0.4),(0.8>0.1),(0.4=0.4 -> .5),(0.4>0.1)
        let s = [0.8, 0.4, 0.4, 0.1];
        let l = [true, true, false, false];
        assert!((roc_auc(&s, &l).unwrap() - 3.5 / 4.0).abs() < 1e-15);
        assert!((roc_auc(&[0.5, 0.5], &[true, false]).unwrap() - 0.5).abs() < 1e-15);
        assert!(matches!(
            roc_auc(&[0.1, 0.2], &[true, true]),
            Err(MetricsError::SingleClass { .. })
        ));
        assert!(roc_auc(&[f64::NAN, 0.2], &[true, false]).is_err());
        assert!(roc_auc(&[0.1], &[true, false]).is_err());
    }

    #[test]
    fn sweep_and_accuracy() {
        let s = [0.9, 0.7, 0.6, 0.3, 0.2];
        let l = [true, true, false, true, false];
        assert!((threshold_accuracy(&s, &l, 0.5).unwrap() - 0.6).abs() < 1e-15);
        let c = sweep_threshold(&s, &l, ThresholdMetric::Accuracy).unwrap();
        // t=0.7 -> 4/5 (TP2 TN2); t=0.3 -> 4/5 too: highest threshold wins
        assert_eq!(c.threshold, 0.7);
        assert!((c.value - 0.8).abs() < 1e-15);
        let c = sweep_threshold(&s, &l, ThresholdMetric::F1).unwrap();
        // t=0.3: TP3 FP1 FN0 -> 6/7; t=0.7: 4/5
        assert_eq!(c.threshold, 0.3);
        let c = sweep_threshold(&[0.1, 0.2], &[false, false], ThresholdMetric::Accuracy).unwrap();
        assert_eq!(c.threshold, f64::INFINITY);
        assert_eq!(c.value, 1.0);
    }

    #[test]
    fn multilabel() {
        let s = [0.9, 0.1, 0.8, 0.7, 0.2, 0.3];
        let l = [true, false, true, true, false, false];
        let a = multilabel_accuracy(&s, &l, &[0.5, 0.25]).unwrap();
        assert_eq!(a.per_label, vec![1.0, 2.0 / 3.0]);
        assert!((a.exact_match - 2.0 / 3.0).abs() < 1e-15);
        let auc = roc_auc_multilabel(&s, &l, 2).unwrap();
        assert_eq!(auc.per_label[0], Some(1.0));
        assert_eq!(auc.per_label[1], Some(1.0));
        let auc = roc_auc_multilabel(&s, &[true, false, false, false, true, false], 2).unwrap();
        assert_eq!(auc.per_label[0], Some(0.5));
        assert_eq!(auc.per_label[1], None);
        assert_eq!(auc.macro_auc, Some(0.5));
    }
}

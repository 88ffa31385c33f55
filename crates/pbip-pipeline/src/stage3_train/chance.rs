//! Telling the user when a run is not learning.
//!
//! Two signals, both compared with what needs no model at all:
//! * **loss**: the classification loss of the training batches against the loss of the constant
//!   predictor on the same batches, `logit(p_c)` for every patch (or bag) and class, with `p_c`
//!   the running fraction of positive labels of class `c` (the best constant under BCE). It is
//!   computed on the host from the labels, with the same weights, classes and bag rule as the
//!   real loss ([`ConstantLoss`]);
//! * **validation**: the deployable val mIoU against the best constant map (every pixel one
//!   class), and the patch-level AUC against the GT masks (or the slide AUC without masks).
//!
//! A validation is *at chance* when the mean training classification loss since the previous
//! validation is at least [`LOSS_RATIO`] × the constant predictor's, and the val metrics do not
//! beat the constant map by [`MIOU_MARGIN`] (with GT masks; without them, the patch or slide AUC
//! is at most [`AUC_AT_CHANCE`]). After
//! [`PATIENCE`] validations at chance in a row the run is reported at chance (log, progress bar,
//! `train_summary.json` `"learning": "at_chance"`), and it stays reported so until a later
//! validation is not at chance.

use serde::{Deserialize, Serialize};

use super::validate::ValMetrics;

/// The loss counts as the constant predictor's when it is at least this fraction of it.
pub const LOSS_RATIO: f64 = 0.97;
/// mIoU within this margin of the best constant map counts as the constant map.
pub const MIOU_MARGIN: f64 = 0.02;
/// AUC at or below this counts as no ranking.
pub const AUC_AT_CHANCE: f64 = 0.65;
/// Validations at chance in a row before the run is reported at chance.
pub const PATIENCE: usize = 2;

/// Whether a run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Learning {
    /// Not enough validations yet to tell.
    #[default]
    Unknown,
    /// The loss or the val metrics beat what needs no model.
    Learning,
    /// [`PATIENCE`] validations in a row at chance.
    AtChance,
}

impl std::fmt::Display for Learning {
    /// The name `train_summary.json` uses (`unknown`, `learning`, `at_chance`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Learning::Unknown => "unknown",
            Learning::Learning => "learning",
            Learning::AtChance => "at_chance",
        })
    }
}

/// The classification loss of the constant predictor, accumulated over the training batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConstantLoss {
    /// Positive label counts per class (over the units of every batch seen).
    positives: Vec<f64>,
    /// Units (patches, or bags) seen.
    units: f64,
    /// Σ over batches of the constant predictor's loss, and the batches counted, since the last
    /// [`ConstantLoss::take_interval`].
    interval_sum: f64,
    interval_batches: u64,
    /// Σ of the model's classification loss over the same batches.
    model_sum: f64,
}

fn bce(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

/// How the classification loss scores the labels of a batch; the constant predictor is scored
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRule {
    /// Patches per bag (1: per-patch BCE).
    pub bag_size: usize,
    /// The per-scale weights of the classification loss.
    pub scale_weights: [f64; 4],
    /// The class left out of the loss (`background_class`).
    pub skip: Option<usize>,
    /// Whether every patch of a bag is pushed down for the classes its bag lacks.
    pub negative_instances: bool,
}

impl ConstantLoss {
    /// Adds one batch: `labels` `[B, N]` row-major, scored under `rule`, and the model's
    /// classification loss on the batch. Returns the constant predictor's loss on it.
    pub fn add_batch(&mut self, labels: &[f32], n: usize, rule: &LossRule, model_loss: f64) -> f64 {
        let LossRule {
            bag_size,
            scale_weights,
            skip,
            negative_instances,
        } = *rule;
        if n == 0 || labels.is_empty() {
            return 0.0;
        }
        let b = labels.len() / n;
        let bag = bag_size.max(1);
        let units: Vec<&[f32]> = (0..b / bag)
            .map(|j| &labels[j * bag * n..j * bag * n + n])
            .collect();
        if self.positives.len() != n {
            self.positives = vec![0.0; n];
        }
        for u in &units {
            for (c, &y) in u.iter().enumerate() {
                self.positives[c] += f64::from(y);
            }
        }
        self.units += units.len() as f64;
        let classes: Vec<usize> = (0..n).filter(|&c| Some(c) != skip).collect();
        let z: Vec<f64> = (0..n)
            .map(|c| {
                let p = ((self.positives[c] + 0.5) / (self.units + 1.0)).clamp(1e-4, 1.0 - 1e-4);
                (p / (1.0 - p)).ln()
            })
            .collect();
        // Unit-level BCE, mean over (unit, class).
        let mut unit_loss = 0.0;
        for u in &units {
            for &c in &classes {
                unit_loss += bce(z[c], f64::from(u[c]));
            }
        }
        unit_loss /= (units.len() * classes.len()).max(1) as f64;
        // Negative instances (bags): every patch of a bag, for each class the bag lacks.
        let mut neg = 0.0;
        if bag > 1 && negative_instances {
            let (mut s, mut k) = (0.0, 0usize);
            for u in &units {
                for &c in &classes {
                    if u[c] < 0.5 {
                        s += bag as f64 * bce(z[c], 0.0);
                        k += bag;
                    }
                }
            }
            neg = if k > 0 { s / k as f64 } else { 0.0 };
        }
        let w: f64 = scale_weights.iter().sum();
        let loss = w * (unit_loss + neg);
        self.interval_sum += loss;
        self.model_sum += model_loss;
        self.interval_batches += 1;
        loss
    }

    /// Mean (model loss, constant predictor loss) since the last call, and resets the interval.
    pub fn take_interval(&mut self) -> Option<(f64, f64)> {
        if self.interval_batches == 0 {
            return None;
        }
        let k = self.interval_batches as f64;
        let r = (self.model_sum / k, self.interval_sum / k);
        self.interval_sum = 0.0;
        self.model_sum = 0.0;
        self.interval_batches = 0;
        Some(r)
    }
}

/// One validation's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChanceCheck {
    /// Global step of the validation.
    pub step: u64,
    /// Mean training classification loss since the previous validation.
    pub loss: f64,
    /// The constant predictor's loss on the same batches.
    pub constant_loss: f64,
    /// Whether the val metrics are those of no model.
    pub val_at_chance: bool,
    /// Whether both signals are at chance.
    pub at_chance: bool,
}

/// Whether val metrics are what a constant map / a random ranking gets (None: no validation).
pub fn val_at_chance(v: &ValMetrics) -> bool {
    match (v.miou, v.constant_map_miou) {
        (Some(m), Some(c)) => m <= c + MIOU_MARGIN,
        _ => v.patch_auc.or(v.auc).is_none_or(|a| a <= AUC_AT_CHANCE),
    }
}

/// Accumulates validations into a [`Learning`] verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChanceMonitor {
    /// The checks so far.
    pub checks: Vec<ChanceCheck>,
    /// Current verdict.
    pub learning: Learning,
}

impl ChanceMonitor {
    /// Records a validation (or, without a val split, only the loss) and returns whether the run
    /// has just been found at chance (for a one-time warning).
    pub fn record(
        &mut self,
        step: u64,
        interval: Option<(f64, f64)>,
        val: Option<&ValMetrics>,
    ) -> bool {
        let Some((loss, constant_loss)) = interval else {
            return false;
        };
        let loss_flat = loss >= LOSS_RATIO * constant_loss;
        let val_flat = val.is_none_or(val_at_chance);
        let at_chance = loss_flat && val_flat;
        self.checks.push(ChanceCheck {
            step,
            loss,
            constant_loss,
            val_at_chance: val_flat,
            at_chance,
        });
        let before = self.learning;
        let run = self.checks.iter().rev().take_while(|c| c.at_chance).count();
        self.learning = if run >= PATIENCE {
            Learning::AtChance
        } else if at_chance {
            if before == Learning::AtChance {
                Learning::AtChance
            } else {
                Learning::Unknown
            }
        } else {
            Learning::Learning
        };
        self.learning == Learning::AtChance && before != Learning::AtChance
    }

    /// What to tell the user about a run at chance.
    pub fn advice(&self) -> String {
        let last = self.checks.last();
        format!(
            "training is at chance: for {} validations in a row the classification loss ({}) is no better than a \
             constant predictor's ({}) and the val metrics are those of the best constant map. The model is not learning. Try: \
             model.head.normalize_prototypes: true (a collinear prototype bank, e.g. from a random encoder, cannot \
             separate the classes with upstream's head); background_class for a class present on every slide (e.g. \
             benign); training.mil.bag_size > 1 when a class covers only part of its slides; less colour \
             augmentation (training.augment.color_jitter); another training.optimizer.lr (lower when the loss \
             swings far above the constant predictor's, higher when it sits on it) or more steps; \
             configs/cpu.yaml has settings that learn without pretrained weights",
            self.checks.iter().rev().take_while(|c| c.at_chance).count(),
            last.map_or("?".into(), |c| format!("{:.4}", c.loss)),
            last.map_or("?".into(), |c| format!("{:.4}", c.constant_loss)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(bag_size: usize, scale_weights: [f64; 4], skip: Option<usize>, neg: bool) -> LossRule {
        LossRule {
            bag_size,
            scale_weights,
            skip,
            negative_instances: neg,
        }
    }

    fn val(miou: f64, constant: f64, patch_auc: Option<f64>) -> ValMetrics {
        ValMetrics {
            step: 0,
            patches: 10,
            slides: 2,
            slides_with_gt: 2,
            auc: Some(0.5),
            accuracy: None,
            patch_auc,
            gate_threshold: 0.5,
            miou: Some(miou),
            miou_at_default: None,
            iou: vec![],
            dice: vec![],
            precision: vec![],
            recall: vec![],
            mean_dice: None,
            mean_precision: None,
            mean_recall: None,
            constant_map_miou: Some(constant),
            constant_map_class: Some(0),
        }
    }

    #[test]
    fn constant_loss_of_balanced_labels_is_ln2_per_weight() {
        // Per-patch BCE, 2 classes one-hot, half the patches of each: the constant predictor is
        // p = 0.5 (logit 0) for both classes: ln 2 per class, times Σw = 2.1.
        let mut c = ConstantLoss::default();
        let labels = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let mut last = 0.0;
        for _ in 0..200 {
            last = c.add_batch(&labels, 2, &rule(1, [0.0, 0.1, 1.0, 1.0], None, false), 1.0);
        }
        assert!((last - 2.1 * std::f64::consts::LN_2).abs() < 1e-3, "{last}");
        // Leaving out an always-positive class changes nothing here (mean over the other class).
        let mut c = ConstantLoss::default();
        let labels = [1.0, 0.0, 1.0, 1.0];
        for _ in 0..200 {
            last = c.add_batch(
                &labels,
                2,
                &rule(1, [0.0, 0.0, 1.0, 0.0], Some(0), false),
                1.0,
            );
        }
        assert!((last - std::f64::consts::LN_2).abs() < 1e-2, "{last}");
        let (m, k) = c.take_interval().unwrap();
        assert_eq!(m, 1.0);
        assert!((k - std::f64::consts::LN_2).abs() < 0.05, "{k}");
        assert!(c.take_interval().is_none());
    }

    #[test]
    fn constant_loss_with_bags_adds_the_negative_instances() {
        // 2 bags of 2 patches, 1 class: bag 0 positive, bag 1 negative. p = 0.5 → bag BCE ln 2;
        // negative instances: the 2 patches of bag 1 at logit 0 → ln 2. Total 2·ln 2 (weight 1).
        let mut c = ConstantLoss::default();
        let labels = [1.0, 1.0, 0.0, 0.0];
        let mut last = 0.0;
        for _ in 0..500 {
            last = c.add_batch(&labels, 1, &rule(2, [0.0, 0.0, 1.0, 0.0], None, true), 0.0);
        }
        assert!((last - 2.0 * std::f64::consts::LN_2).abs() < 1e-2, "{last}");
    }

    #[test]
    fn verdicts() {
        let mut m = ChanceMonitor::default();
        // loss at the constant and val at the constant map: at chance after PATIENCE checks
        assert!(!m.record(100, Some((0.70, 0.693)), Some(&val(0.47, 0.47, Some(0.5)))));
        assert_eq!(m.learning, Learning::Unknown);
        assert!(m.record(200, Some((0.69, 0.693)), Some(&val(0.47, 0.47, Some(0.55)))));
        assert_eq!(m.learning, Learning::AtChance);
        assert!(m.advice().contains("at chance"));
        // stays at chance without announcing again
        assert!(!m.record(300, Some((0.70, 0.693)), Some(&val(0.47, 0.47, None))));
        assert_eq!(m.learning, Learning::AtChance);
        // a validation that beats the constant map ends it
        assert!(!m.record(400, Some((0.69, 0.693)), Some(&val(0.55, 0.47, Some(0.9)))));
        assert_eq!(m.learning, Learning::Learning);
        // without GT masks the ranking decides
        let mut nogt = val(0.47, 0.47, None);
        nogt.miou = None;
        nogt.auc = Some(0.9);
        assert!(!val_at_chance(&nogt));
        nogt.auc = Some(0.5);
        assert!(val_at_chance(&nogt));
        // a falling loss is learning even when the val metrics are flat
        let mut m = ChanceMonitor::default();
        m.record(100, Some((0.40, 0.693)), Some(&val(0.47, 0.47, Some(0.5))));
        assert_eq!(m.learning, Learning::Learning);
        // an mIoU well above the constant map is learning
        let mut m = ChanceMonitor::default();
        m.record(100, Some((0.70, 0.693)), Some(&val(0.60, 0.47, Some(0.5))));
        assert_eq!(m.learning, Learning::Learning);
        // no val split: the loss alone decides
        let mut m = ChanceMonitor::default();
        m.record(100, Some((0.70, 0.693)), None);
        m.record(200, Some((0.70, 0.693)), None);
        assert_eq!(m.learning, Learning::AtChance);
    }
}

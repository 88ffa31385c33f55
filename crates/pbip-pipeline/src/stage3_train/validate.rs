//! Validation during training: deterministic val patches, eval-mode forward, masks from the
//! CAMs through the evaluation path, metrics under the deployable protocol (the class gate is the
//! model's own image-level prediction), the gate threshold that maximises val mIoU, slide-level
//! AUC / accuracy from the merged logits, and the best constant-class map as a reference.
//!
//! The fused map is linear in the gate (`fuse = Σ_i w_i · seg_label_i · g`), so it is computed
//! once without gate and every candidate threshold only re-gates it on the host:
//! `pred = argmax_c g_c(t) · fused_c` (first maximum, like the evaluation path's argmax; a patch
//! with every class gated off is predicted as class 0, as there).

use pbip_data::{EvalPlan, PatchBatch};
use pbip_metrics::{ConfusionMatrix, roc_auc_multilabel};
use pbip_model::{ClassNet, EvalConfig, Pooling, pool_values};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::cam_batches::{CamBatches, FusedMaps, threshold_argmax};

/// Candidate gate thresholds: 0.01, 0.02, …, 0.99, then 0.995 and 0.999 (a model whose
/// probabilities are not yet spread out still gets a usable threshold).
pub fn threshold_grid() -> Vec<f64> {
    (1..100)
        .map(|i| f64::from(i) * 0.01)
        .chain([0.995, 0.999])
        .collect()
}

/// Default gate threshold (before any validation): the one default of the checkpoints.
pub const DEFAULT_THRESHOLD: f64 = crate::artifacts::checkpoints::DEFAULT_GATE_THRESHOLD;

/// Validation figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    /// Global step (optimiser steps done) at which this validation ran.
    pub step: u64,
    /// Val patches evaluated.
    pub patches: usize,
    /// Val slides evaluated.
    pub slides: usize,
    /// Slides whose patches had a GT mask.
    pub slides_with_gt: usize,
    /// Slide-level macro ROC AUC of the merged (mean) scale-4 patch logits pooled per slide
    /// (mean, or the bag pooling of multiple-instance training); None if undefined.
    pub auc: Option<f64>,
    /// Slide-level exact-match accuracy at probability 0.5.
    pub accuracy: Option<f64>,
    /// Patch-level ROC AUC against the GT masks: per class, the patch's merged scale-4 logit
    /// against "the class covers at least half of the patch's labelled pixels", averaged over the
    /// classes where both outcomes occur (the background class excluded). None without GT.
    #[serde(default)]
    pub patch_auc: Option<f64>,
    /// Gate threshold that maximises val mIoU (0.5 without GT).
    pub gate_threshold: f64,
    /// Deployable val mIoU at `gate_threshold`.
    pub miou: Option<f64>,
    /// Deployable val mIoU at threshold 0.5.
    pub miou_at_default: Option<f64>,
    /// Per-class IoU at `gate_threshold`.
    pub iou: Vec<Option<f64>>,
    /// Per-class Dice at `gate_threshold`.
    pub dice: Vec<Option<f64>>,
    /// Per-class precision at `gate_threshold`.
    pub precision: Vec<Option<f64>>,
    /// Per-class recall at `gate_threshold`.
    pub recall: Vec<Option<f64>>,
    /// Macro Dice / precision / recall at `gate_threshold`.
    pub mean_dice: Option<f64>,
    /// Macro precision.
    pub mean_precision: Option<f64>,
    /// Macro recall.
    pub mean_recall: Option<f64>,
    /// Best mIoU of a constant map (every tissue pixel = one class), the no-model reference.
    pub constant_map_miou: Option<f64>,
    /// Class of that best constant map.
    pub constant_map_class: Option<usize>,
}

impl ValMetrics {
    /// The value `best` is chosen by: mIoU with GT, else AUC.
    pub fn selection_score(&self) -> Option<f64> {
        if self.slides_with_gt > 0 {
            self.miou
        } else {
            self.auc
        }
    }
}

/// Evaluation settings of the validation.
#[derive(Debug, Clone)]
pub struct ValSettings {
    /// Evaluation path constants (fusion weights, TTA).
    pub eval: EvalConfig,
    /// Which val slides have a GT mask (by slide index of the plan's set).
    pub has_gt: Vec<bool>,
    /// Pooling of a slide's patch logits into its slide score.
    pub slide_pool: Pooling,
}

fn model_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Data {
        stage: super::STAGE,
        message: format!("validation: {e}"),
    }
}

/// Runs the validation of `model` (use an inference model, e.g. `model.valid()`).
pub fn validate(
    model: &ClassNet,
    plan: &EvalPlan,
    s: &ValSettings,
    step: u64,
) -> Result<ValMetrics, PipelineError> {
    let device = model
        .logit_scale
        .first()
        .map(|p| p.val().device())
        .ok_or_else(|| model_err("model has no parameters"))?;
    let mut acc = ValAccumulator::new(model.num_classes(), plan.set.len())?;
    for cb in CamBatches::new(model, plan, device) {
        let cb = cb.map_err(model_err)?;
        let fused = cb.maps.fuse(model, &s.eval).map_err(model_err)?;
        let fused = fused.ok_or_else(|| model_err("every fusion weight is 0"))?;
        acc.add_batch(plan, s, &cb.batch, &cb.logits, &cb.probs, &fused)?;
    }
    acc.metrics(plan, s, step)
}

/// What a validation accumulates over its batches.
struct ValAccumulator {
    /// Classes.
    n: usize,
    /// The candidate gate thresholds ([`threshold_grid`]).
    grid: Vec<f64>,
    /// Deployable confusion matrix at each threshold of `grid`.
    cms: Vec<ConfusionMatrix>,
    /// Deployable confusion matrix at [`DEFAULT_THRESHOLD`].
    cm_default: ConfusionMatrix,
    /// Confusion matrix of each constant map (every pixel = class c).
    constant: Vec<ConfusionMatrix>,
    /// Patch logits per (slide, class), pooled into slide scores at the end.
    slide_logits: Vec<Vec<f64>>,
    /// Patches per slide.
    slide_count: Vec<usize>,
    patches: usize,
    /// Slides whose patches were scored against a GT mask.
    gt_slides: Vec<bool>,
    /// (logit, positive) per class of every patch with a GT mask.
    patch_scores: Vec<Vec<(f64, bool)>>,
}

impl ValAccumulator {
    fn new(n: usize, num_slides: usize) -> Result<Self, PipelineError> {
        let grid = threshold_grid();
        let new_cm = || ConfusionMatrix::with_ignore(n, Some(255)).map_err(model_err);
        Ok(ValAccumulator {
            n,
            cms: grid.iter().map(|_| new_cm()).collect::<Result<_, _>>()?,
            grid,
            cm_default: new_cm()?,
            constant: (0..n).map(|_| new_cm()).collect::<Result<_, _>>()?,
            slide_logits: vec![Vec::new(); num_slides * n],
            slide_count: vec![0usize; num_slides],
            patches: 0,
            gt_slides: vec![false; num_slides],
            patch_scores: vec![Vec::new(); n],
        })
    }

    /// Adds the patches of one batch: slide logits, and with a GT mask the patch scores and the
    /// deployable maps at every candidate threshold.
    fn add_batch(
        &mut self,
        plan: &EvalPlan,
        s: &ValSettings,
        batch: &PatchBatch,
        logits: &[f32],
        probs: &[f32],
        fused: &FusedMaps,
    ) -> Result<(), PipelineError> {
        let n = self.n;
        let plane = fused.plane();
        for (i, info) in batch.info.iter().enumerate() {
            self.patches += 1;
            let si = info.slide_index;
            self.slide_count[si] += 1;
            for cl in 0..n {
                self.slide_logits[si * n + cl].push(f64::from(logits[i * n + cl]));
            }
            if !s.has_gt.get(si).copied().unwrap_or(false) {
                continue;
            }
            self.gt_slides[si] = true;
            let gt = plan.set.crop_mask(info).map_err(model_err)?;
            let labelled = gt.iter().filter(|&&v| usize::from(v) < n).count();
            if labelled > 0 {
                for (cl, scores) in self.patch_scores.iter_mut().enumerate() {
                    let k = gt.iter().filter(|&&v| usize::from(v) == cl).count();
                    scores.push((f64::from(logits[i * n + cl]), 2 * k >= labelled));
                }
            }
            let f = fused.patch(i);
            let p = &probs[i * n..(i + 1) * n];
            let mut pred = vec![0u8; plane];
            for (ti, &t) in self.grid.iter().enumerate() {
                threshold_argmax(f, p, t, &s.eval, &mut pred);
                self.cms[ti].accumulate(&gt, &pred).map_err(model_err)?;
            }
            threshold_argmax(f, p, DEFAULT_THRESHOLD, &s.eval, &mut pred);
            self.cm_default.accumulate(&gt, &pred).map_err(model_err)?;
            for (cl, cm) in self.constant.iter_mut().enumerate() {
                pred.iter_mut().for_each(|v| *v = cl as u8);
                cm.accumulate(&gt, &pred).map_err(model_err)?;
            }
        }
        Ok(())
    }

    /// Slide-level macro AUC and exact-match accuracy at probability 0.5 of the pooled logits.
    fn slide_classification(
        &self,
        plan: &EvalPlan,
        pool: Pooling,
    ) -> Result<(Option<f64>, Option<f64>), PipelineError> {
        let n = self.n;
        let labels_of = |si: usize| {
            plan.set
                .get(si)
                .map(|sd| sd.labels_f32.clone())
                .unwrap_or_default()
        };
        let mut scores = Vec::new();
        let mut truth = Vec::new();
        let mut correct = 0usize;
        let mut counted = 0usize;
        for (si, &count) in self.slide_count.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let y = labels_of(si);
            let mut all_ok = true;
            for cl in 0..n {
                let z = pool_values(&self.slide_logits[si * n + cl], pool).unwrap_or(0.0);
                let pr = 1.0 / (1.0 + (-z).exp());
                scores.push(pr);
                let pos = y.get(cl).copied().unwrap_or(0.0) > 0.5;
                truth.push(pos);
                all_ok &= (pr >= 0.5) == pos;
            }
            counted += 1;
            correct += usize::from(all_ok);
        }
        // A diverged model (non-finite logits) has no AUC.
        let auc = if scores.is_empty() || scores.iter().any(|v| !v.is_finite()) {
            None
        } else {
            roc_auc_multilabel(&scores, &truth, n)
                .map_err(model_err)?
                .macro_auc
        };
        let accuracy = (counted > 0).then(|| correct as f64 / counted as f64);
        Ok((auc, accuracy))
    }

    /// Mean over the classes (background excluded) of the patch-level AUC against the GT masks.
    fn patch_auc(&self, background: Option<usize>) -> Result<Option<f64>, PipelineError> {
        let mut per_class_auc = Vec::new();
        for (cl, v) in self.patch_scores.iter().enumerate() {
            if Some(cl) == background {
                continue;
            }
            let (sc, tr): (Vec<f64>, Vec<bool>) = v.iter().copied().unzip();
            if sc.iter().all(|x| x.is_finite()) && tr.iter().any(|t| *t) && tr.iter().any(|t| !*t) {
                per_class_auc.push(pbip_metrics::roc_auc(&sc, &tr).map_err(model_err)?);
            }
        }
        Ok((!per_class_auc.is_empty())
            .then(|| per_class_auc.iter().sum::<f64>() / per_class_auc.len() as f64))
    }

    /// The validation figures: slide classification, patch AUC and, with GT masks, the
    /// segmentation metrics at the best threshold and the best constant map.
    fn metrics(
        &self,
        plan: &EvalPlan,
        s: &ValSettings,
        step: u64,
    ) -> Result<ValMetrics, PipelineError> {
        let n = self.n;
        let (auc, accuracy) = self.slide_classification(plan, s.slide_pool)?;
        let patch_auc = self.patch_auc(s.eval.background)?;
        let slides_with_gt = self.gt_slides.iter().filter(|v| **v).count();
        let mut m = ValMetrics {
            step,
            patches: self.patches,
            slides: self.slide_count.iter().filter(|c| **c > 0).count(),
            slides_with_gt,
            auc,
            accuracy,
            patch_auc,
            gate_threshold: DEFAULT_THRESHOLD,
            miou: None,
            miou_at_default: None,
            iou: vec![None; n],
            dice: vec![None; n],
            precision: vec![None; n],
            recall: vec![None; n],
            mean_dice: None,
            mean_precision: None,
            mean_recall: None,
            constant_map_miou: None,
            constant_map_class: None,
        };
        if slides_with_gt > 0 {
            self.set_segmentation(&mut m);
        }
        Ok(m)
    }

    /// The segmentation figures of `m`: the threshold of the highest mIoU (ties go to the
    /// threshold closest to 0.5) with its per-class scores, the mIoU at 0.5 and the best
    /// constant map.
    fn set_segmentation(&self, m: &mut ValMetrics) {
        let grid = &self.grid;
        let mut best: Option<(usize, f64)> = None;
        for (ti, cm) in self.cms.iter().enumerate() {
            let Some(v) = cm.summary().miou else { continue };
            let better = match best {
                None => true,
                Some((bi, bv)) => {
                    v > bv || (v == bv && (grid[ti] - 0.5).abs() < (grid[bi] - 0.5).abs())
                }
            };
            if better {
                best = Some((ti, v));
            }
        }
        if let Some((ti, _)) = best {
            let sm = self.cms[ti].summary();
            m.gate_threshold = grid[ti];
            m.miou = sm.miou;
            m.iou = sm.per_class.iou.clone();
            m.dice = sm.per_class.dice.clone();
            m.precision = sm.per_class.precision.clone();
            m.recall = sm.per_class.recall.clone();
            m.mean_dice = sm.macro_avg.dice;
            m.mean_precision = sm.macro_avg.precision;
            m.mean_recall = sm.macro_avg.recall;
        }
        m.miou_at_default = self.cm_default.summary().miou;
        for (cl, cm) in self.constant.iter().enumerate() {
            if let Some(v) = cm.summary().miou
                && m.constant_map_miou.is_none_or(|b| v > b)
            {
                m.constant_map_miou = Some(v);
                m.constant_map_class = Some(cl);
            }
        }
    }
}

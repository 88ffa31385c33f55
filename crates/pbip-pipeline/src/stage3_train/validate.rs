//! Validation during training: deterministic val patches, eval-mode forward, masks from the
//! CAMs through the evaluation path, metrics under the deployable protocol (the class gate is the
//! model's own image-level prediction), the gate threshold that maximises val mIoU, slide-level
//! AUC / accuracy from the merged logits, and the best constant-class map as a reference.
//!
//! The fused map is linear in the gate (`fuse = Σ_i w_i · seg_label_i · g`), so it is computed
//! once without gate and every candidate threshold only re-gates it on the host:
//! `pred = argmax_c g_c(t) · fused_c` (first maximum, like the evaluation path's argmax; a patch
//! with every class gated off is predicted as class 0, as there).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData};
use pbip_data::{EvalPlan, PatchBatch};
use pbip_metrics::{ConfusionMatrix, roc_auc_multilabel};
use pbip_model::{
    ClassNet, EvalConfig, Gate, MapKind, MergeMethod, Pooling, class_maps, evaluate,
    merge_subclasses, pool_values,
};
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// Candidate gate thresholds: 0.01, 0.02, …, 0.99, then 0.995 and 0.999 (a model whose
/// probabilities are not yet spread out still gets a usable threshold).
pub fn threshold_grid() -> Vec<f64> {
    (1..100)
        .map(|i| f64::from(i) * 0.01)
        .chain([0.995, 0.999])
        .collect()
}

/// Default gate threshold (before any validation).
pub const DEFAULT_THRESHOLD: f64 = 0.5;

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

fn host(t: Tensor<4>) -> Result<Vec<f32>, PipelineError> {
    pbip_model::util::to_vec(t).map_err(model_err)
}

/// Runs the validation of `model` (use an inference model, e.g. `model.valid()`).
pub fn validate(
    model: &ClassNet,
    plan: &EvalPlan,
    s: &ValSettings,
    step: u64,
) -> Result<ValMetrics, PipelineError> {
    let n = model.num_classes();
    let device = model
        .logit_scale
        .first()
        .map(|p| p.val().device())
        .ok_or_else(|| model_err("model has no parameters"))?;
    let grid = threshold_grid();
    let new_cm = || ConfusionMatrix::with_ignore(n, Some(255)).map_err(model_err);
    let mut cms: Vec<ConfusionMatrix> = grid.iter().map(|_| new_cm()).collect::<Result<_, _>>()?;
    let mut cm_default = new_cm()?;
    let mut constant: Vec<ConfusionMatrix> = (0..n).map(|_| new_cm()).collect::<Result<_, _>>()?;
    let num_slides = plan.set.len();
    // Patch logits per (slide, class), pooled into slide scores at the end.
    let mut slide_logits: Vec<Vec<f64>> = vec![Vec::new(); num_slides * n];
    let mut slide_count = vec![0usize; num_slides];
    let mut patches = 0usize;
    let mut gt_slides = vec![false; num_slides];
    // (logit, positive) per class of every patch with a GT mask.
    let mut patch_scores: Vec<Vec<(f64, bool)>> = vec![Vec::new(); n];
    for k in 0..plan.num_batches() {
        let batch: PatchBatch = match plan.batch(k) {
            Some(b) => b.map_err(model_err)?,
            None => break,
        };
        let [b, c, h, w] = batch.shape();
        let images: Tensor<4> =
            Tensor::from_data(TensorData::new(batch.data.clone(), [b, c, h, w]), &device);
        let out = model
            .try_forward(images.clone(), false)
            .map_err(model_err)?;
        let merged = merge_subclasses(out.cls[3].clone(), &model.k_list, MergeMethod::Mean)
            .map_err(model_err)?;
        let logits = pbip_model::util::to_vec(merged.clone()).map_err(model_err)?;
        let probs = pbip_model::util::to_vec(sigmoid(merged)).map_err(model_err)?;
        let fused_t = if s.eval.tta {
            evaluate(model, images, &Gate::None, &s.eval)
                .map_err(model_err)?
                .fused
        } else {
            let mut acc: Option<Tensor<4>> = None;
            for (i, cam) in out.cam.into_iter().enumerate() {
                let wgt = s.eval.fuse[i];
                if wgt == 0.0 {
                    continue;
                }
                let m =
                    class_maps(cam, &model.k_list, None, h, w, &s.eval).map_err(model_err)? * wgt;
                acc = Some(match acc {
                    None => m,
                    Some(a) => a + m,
                });
            }
            acc.ok_or_else(|| model_err("every fusion weight is 0"))?
        };
        let fused = host(fused_t)?;
        let plane = h * w;
        for (i, info) in batch.info.iter().enumerate() {
            patches += 1;
            let si = info.slide_index;
            slide_count[si] += 1;
            for cl in 0..n {
                slide_logits[si * n + cl].push(f64::from(logits[i * n + cl]));
            }
            if !s.has_gt.get(si).copied().unwrap_or(false) {
                continue;
            }
            gt_slides[si] = true;
            let gt = plan.set.crop_mask(info).map_err(model_err)?;
            let labelled = gt.iter().filter(|&&v| usize::from(v) < n).count();
            if labelled > 0 {
                for (cl, scores) in patch_scores.iter_mut().enumerate() {
                    let k = gt.iter().filter(|&&v| usize::from(v) == cl).count();
                    scores.push((f64::from(logits[i * n + cl]), 2 * k >= labelled));
                }
            }
            let f = &fused[i * n * plane..(i + 1) * n * plane];
            let p = &probs[i * n..(i + 1) * n];
            let mut pred = vec![0u8; plane];
            let predict = |t: f64, pred: &mut [u8]| {
                let g: Vec<f32> = p
                    .iter()
                    .map(|&v| if f64::from(v) >= t { 1.0 } else { 0.0 })
                    .collect();
                // With probability maps the background class scores the threshold itself.
                let bg = match (s.eval.maps, s.eval.background) {
                    (MapKind::Probability, Some(b)) => Some((b, t as f32)),
                    _ => None,
                };
                pbip_model::gated_argmax(f, &g, n, plane, bg, pred);
            };
            for (ti, &t) in grid.iter().enumerate() {
                predict(t, &mut pred);
                cms[ti].accumulate(&gt, &pred).map_err(model_err)?;
            }
            predict(DEFAULT_THRESHOLD, &mut pred);
            cm_default.accumulate(&gt, &pred).map_err(model_err)?;
            for (cl, cm) in constant.iter_mut().enumerate() {
                pred.iter_mut().for_each(|v| *v = cl as u8);
                cm.accumulate(&gt, &pred).map_err(model_err)?;
            }
        }
    }
    // Slide-level classification.
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
    for si in 0..num_slides {
        if slide_count[si] == 0 {
            continue;
        }
        let y = labels_of(si);
        let mut all_ok = true;
        for cl in 0..n {
            let z = pool_values(&slide_logits[si * n + cl], s.slide_pool).unwrap_or(0.0);
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
    let mut per_class_auc = Vec::new();
    for (cl, v) in patch_scores.iter().enumerate() {
        if Some(cl) == s.eval.background {
            continue;
        }
        let (sc, tr): (Vec<f64>, Vec<bool>) = v.iter().copied().unzip();
        if sc.iter().all(|x| x.is_finite()) && tr.iter().any(|t| *t) && tr.iter().any(|t| !*t) {
            per_class_auc.push(pbip_metrics::roc_auc(&sc, &tr).map_err(model_err)?);
        }
    }
    let patch_auc = (!per_class_auc.is_empty())
        .then(|| per_class_auc.iter().sum::<f64>() / per_class_auc.len() as f64);
    let slides_with_gt = gt_slides.iter().filter(|v| **v).count();
    let mut m = ValMetrics {
        step,
        patches,
        slides: slide_count.iter().filter(|c| **c > 0).count(),
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
        // Best threshold: highest mIoU; ties go to the threshold closest to 0.5.
        let mut best: Option<(usize, f64)> = None;
        for (ti, cm) in cms.iter().enumerate() {
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
            let sm = cms[ti].summary();
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
        m.miou_at_default = cm_default.summary().miou;
        for (cl, cm) in constant.iter().enumerate() {
            if let Some(v) = cm.summary().miou
                && m.constant_map_miou.is_none_or(|b| v > b)
            {
                m.constant_map_miou = Some(v);
                m.constant_map_class = Some(cl);
            }
        }
    }
    Ok(m)
}

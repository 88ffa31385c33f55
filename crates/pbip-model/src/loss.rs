//! PBIP stage-1 losses (upstream `train_stage_1.py`, `utils/fgbg_feature.py`,
//! `utils/contrast_loss.py`), each a separate function.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::classnet::ClassNetOutput;
use crate::merge::{MergeMethod, expand_to_subclasses, merge_subclasses};
use crate::util::{index_tensor, l2_normalize, resize_bilinear_align_corners, to_vec};

/// Every weight and constant of the loss. Defaults are upstream PBIP's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// BCE weight per scale (`l1..l4`), default 0, 0.1, 1, 1.
    pub scale_weights: [f64; 4],
    /// Weight of the contrastive bracket (`l5`), default 0.1.
    pub contrastive_weight: f64,
    /// InfoNCE temperature τ, default 0.07 (fork: 1.0).
    pub temperature: f64,
    /// Mask threshold δ relative to the per-sample CAM maximum, default 0.5 (fork: 0.15).
    pub mask_threshold: f64,
    /// Weight of mean(cam4) *inside* the contrastive bracket, default 0.0005.
    pub cam_mean_weight: f64,
    /// Weight of the total-variation regulariser on cam4 (seed's `cam_smooth`), default 0.
    pub tv_weight: f64,
    /// Weight of the L1 sparsity regulariser on cam4 (seed's `cam_sparsity`), default 0.
    pub l1_weight: f64,
    /// Merge used for the classification loss and the selection, default mean.
    pub merge: MergeMethod,
    /// Epsilon of the FG/BG per-channel min-max, default 1e-8.
    pub minmax_eps: f64,
    /// Epsilon of the feature L2 normalisation in InfoNCE, default 1e-12.
    pub feature_eps: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            scale_weights: [0.0, 0.1, 1.0, 1.0],
            contrastive_weight: 0.1,
            temperature: 0.07,
            mask_threshold: 0.5,
            cam_mean_weight: 0.0005,
            tv_weight: 0.0,
            l1_weight: 0.0,
            merge: MergeMethod::Mean,
            minmax_eps: 1e-8,
            feature_eps: 1e-12,
        }
    }
}

impl LossConfig {
    /// Parses a JSON object; absent fields keep their defaults.
    pub fn from_json(s: &str) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_str(s)
            .map_err(|e| ModelError::Config(format!("loss config JSON: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Rejects non-finite weights, τ ≤ 0 and δ outside [0, 1].
    pub fn validate(&self) -> Result<(), ModelError> {
        let all = [
            self.contrastive_weight,
            self.temperature,
            self.mask_threshold,
            self.cam_mean_weight,
            self.tv_weight,
            self.l1_weight,
            self.minmax_eps,
            self.feature_eps,
        ];
        if all
            .iter()
            .chain(self.scale_weights.iter())
            .any(|v| !v.is_finite())
        {
            return Err(ModelError::Config(format!(
                "loss config has a non-finite value: {self:?}"
            )));
        }
        if self.temperature <= 0.0 {
            return Err(ModelError::Config(format!(
                "temperature must be > 0, got {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.mask_threshold) {
            return Err(ModelError::Config(format!(
                "mask_threshold must be in [0,1], got {}",
                self.mask_threshold
            )));
        }
        Ok(())
    }
}

/// `BCEWithLogits` with mean reduction: mean(max(x,0) − x·y + log(1 + e^{−|x|})). Returns `[1]`.
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let pos = logits.clone().clamp_min(0.0);
    let log_term = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    (pos - logits * targets + log_term).mean()
}

/// `Σ_i w_i · BCE(merge(cls_i), y)` over the four scales. Scales with weight 0 contribute
/// exactly 0 (as upstream's `0.0 * loss1`).
pub fn classification_loss(
    cls: &[Tensor<2>],
    labels: Tensor<2>,
    k_list: &[usize],
    weights: &[f64; 4],
    merge: MergeMethod,
) -> Result<Tensor<1>, ModelError> {
    classification_loss_excluding(cls, labels, k_list, weights, merge, None)
}

/// Keeps every column of `[B,N]` but `skip` (none: unchanged).
fn without_column(x: Tensor<2>, skip: Option<usize>) -> Result<Tensor<2>, ModelError> {
    let [_, n] = x.dims();
    match skip {
        None => Ok(x),
        Some(c) if c < n && n > 1 => {
            let mut parts = Vec::with_capacity(2);
            if c > 0 {
                parts.push(x.clone().narrow(1, 0, c));
            }
            if c + 1 < n {
                parts.push(x.narrow(1, c + 1, n - c - 1));
            }
            Ok(Tensor::cat(parts, 1))
        }
        Some(c) => Err(ModelError::Shape(format!(
            "cannot leave out class {c} of {n} classes"
        ))),
    }
}

/// The losses take the logits of the 4 scales.
fn check_four_scales(cls: &[Tensor<2>]) -> Result<(), ModelError> {
    if cls.len() != 4 {
        return Err(ModelError::Shape(format!(
            "expected 4 scales of logits, got {}",
            cls.len()
        )));
    }
    Ok(())
}

/// [`classification_loss`] without the class `skip` (a class present on every slide, whose
/// constant label carries nothing to learn): the BCE averages over the other classes only.
pub fn classification_loss_excluding(
    cls: &[Tensor<2>],
    labels: Tensor<2>,
    k_list: &[usize],
    weights: &[f64; 4],
    merge: MergeMethod,
    skip: Option<usize>,
) -> Result<Tensor<1>, ModelError> {
    check_four_scales(cls)?;
    let labels = without_column(labels, skip)?;
    let mut total: Option<Tensor<1>> = None;
    for (c, &w) in cls.iter().zip(weights) {
        let merged = without_column(merge_subclasses(c.clone(), k_list, merge)?, skip)?;
        let check = merged.dims();
        if check != labels.dims() {
            return Err(ModelError::Shape(format!(
                "merged logits {check:?} vs labels {:?}",
                labels.dims()
            )));
        }
        let l = bce_with_logits(merged, labels.clone()) * w;
        total = Some(match total {
            None => l,
            Some(t) => t + l,
        });
    }
    total.ok_or_else(|| ModelError::Shape("no logits".into()))
}

/// How [`mil_classification_loss`] reads a batch as bags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MilBags {
    /// Consecutive patches per bag (one slide each).
    pub bag_size: usize,
    /// Pooling of a bag's patch logits into the bag logit.
    pub pooling: crate::pool::Pooling,
    /// Every patch of a bag is also a negative for each class its bag lacks.
    pub negative_instances: bool,
    /// A class left out (present on every slide, e.g. the background class).
    pub skip: Option<usize>,
}

/// Multiple-instance classification loss. The batch holds `B / bag_size` bags of `bag_size`
/// consecutive patches, each bag from one slide and carrying that slide's label. Per scale `i`
/// with weight `w_i ≠ 0`: the merged patch logits `z = merge(cls_i)` `[B,N]` are pooled over the
/// patches of each bag (`pooling`, e.g. top-k: a class is present if a few patches show it) and
/// `BCE(pool(z), y_bag)` is taken; with `negative_instances`, every patch of a bag is also a
/// negative for each class its bag lacks, `mean over (patch, absent class) of BCE(z, 0)` (a
/// benign slide's patches are all clean negatives; a tumour slide's patches are never forced
/// either way). `bag_labels` is `[B / bag_size, N]`; the class `skip` (present on every slide)
/// is left out. Returns `Σ_i w_i · (L_bag + L_neg)`.
pub fn mil_classification_loss(
    cls: &[Tensor<2>],
    bag_labels: Tensor<2>,
    k_list: &[usize],
    weights: &[f64; 4],
    merge: MergeMethod,
    bags: &MilBags,
) -> Result<Tensor<1>, ModelError> {
    let MilBags {
        bag_size,
        pooling,
        negative_instances,
        skip,
    } = *bags;
    check_four_scales(cls)?;
    pooling.validate()?;
    let bag_labels = without_column(bag_labels, skip)?;
    let [nb, n] = bag_labels.dims();
    let device = bag_labels.device();
    let mut total: Tensor<1> = Tensor::zeros([1], &device);
    for (c, &w) in cls.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        let z = without_column(merge_subclasses(c.clone(), k_list, merge)?, skip)?;
        let [b, zn] = z.dims();
        if bag_size == 0 || b != nb * bag_size || zn != n {
            return Err(ModelError::Shape(format!(
                "logits [{b}, {zn}] are not {nb} bags of {bag_size} patches with {n} classes"
            )));
        }
        let per_bag = z.clone().reshape([nb, bag_size, n]).swap_dims(1, 2);
        let pooled = crate::pool::pool_last_dim(per_bag, pooling);
        let mut l = bce_with_logits(pooled, bag_labels.clone());
        if negative_instances {
            let neg = bag_labels
                .clone()
                .neg()
                .add_scalar(1.0)
                .reshape([nb, 1, n])
                .repeat_dim(1, bag_size)
                .reshape([b, n]);
            let softplus = z.clone().clamp_min(0.0) + z.abs().neg().exp().add_scalar(1.0).log();
            let negs = neg.clone().sum();
            // mean over the (patch, absent class) pairs; 0 when the batch has none.
            let inst = (softplus * neg).sum() / negs.clamp_min(1.0);
            l = l + inst;
        }
        total = total + l * w;
    }
    Ok(total)
}

/// Active-subclass selection `sel = (cls4 > expand(mean-merge(cls4))) ∧ expand(y)`, as 0/1
/// `[B,ΣK]` (no gradient).
pub fn select_subclasses(
    cls4: Tensor<2>,
    labels: Tensor<2>,
    k_list: &[usize],
) -> Result<Tensor<2>, ModelError> {
    let cls4 = cls4.detach();
    let parent = merge_subclasses(cls4.clone(), k_list, MergeMethod::Mean)?;
    let parent_exp = expand_to_subclasses(parent, k_list)?;
    let ybar = expand_to_subclasses(labels, k_list)?;
    Ok(cls4.greater(parent_exp).float() * ybar.greater_elem(0.0).float())
}

/// The selected `(sample, subclass)` pairs in row-major (`torch.where`) order.
pub fn selected_pairs(select: Tensor<2>) -> Result<Vec<(usize, usize)>, ModelError> {
    let [_, k] = select.dims();
    let v = to_vec(select)?;
    Ok(v.iter()
        .enumerate()
        .filter(|(_, x)| **x > 0.5)
        .map(|(i, _)| (i / k.max(1), i % k.max(1)))
        .collect())
}

/// FG/BG images of the selected pairs (`FeatureExtractor` + `MaskAdapter_DynamicThreshold`):
/// `A = up(cam4, H×W, bilinear, align_corners)`, `Mbin = A ≥ δ·max_{k,h,w} A[b]`,
/// `X_FG = mm(A_k ⊙ X) ⊙ Mbin_k`, `X_BG = mm((1 − A_k) ⊙ X) ⊙ (1 − Mbin_k)` with `mm` a per-channel
/// min-max over H,W (eps `minmax_eps`). Returns `([n,3,H,W], [n,3,H,W])`, differentiable w.r.t. cam4.
pub fn fg_bg_images(
    images: Tensor<4>,
    cam4: Tensor<4>,
    pairs: &[(usize, usize)],
    mask_threshold: f64,
    minmax_eps: f64,
) -> Result<(Tensor<4>, Tensor<4>), ModelError> {
    let [b, c, h, w] = images.dims();
    let [bc, k, _, _] = cam4.dims();
    if b != bc {
        return Err(ModelError::Shape(format!(
            "images batch {b} vs cam batch {bc}"
        )));
    }
    if pairs.is_empty() {
        return Err(ModelError::Shape(
            "fg_bg_images needs at least one selected pair".into(),
        ));
    }
    if let Some(bad) = pairs.iter().find(|(pb, pk)| *pb >= b || *pk >= k) {
        return Err(ModelError::Shape(format!(
            "pair {bad:?} outside [B={b}, ΣK={k}]"
        )));
    }
    let device = images.device();
    let a = resize_bilinear_align_corners(cam4, h, w);
    let th = a
        .clone()
        .detach()
        .reshape([b, k * h * w])
        .max_dim(1)
        .reshape([b, 1, 1, 1])
        * mask_threshold;
    let mbin = a
        .clone()
        .detach()
        .greater_equal(th.expand([b, k, h, w]))
        .float();
    let n = pairs.len();
    let flat: Vec<usize> = pairs.iter().map(|(pb, pk)| pb * k + pk).collect();
    let bidx: Vec<usize> = pairs.iter().map(|(pb, _)| *pb).collect();
    let a_sel = a
        .reshape([b * k, h, w])
        .select(0, index_tensor(&flat, &device))
        .reshape([n, 1, h, w]);
    let m_sel = mbin
        .reshape([b * k, h, w])
        .select(0, index_tensor(&flat, &device))
        .reshape([n, 1, h, w]);
    let x_sel = images.select(0, index_tensor(&bidx, &device));
    let minmax = |v: Tensor<4>| {
        let f = v.reshape([n, c, h * w]);
        let mn = f.clone().min_dim(2);
        let mx = f.clone().max_dim(2);
        ((f - mn.clone()) / (mx - mn).add_scalar(minmax_eps)).reshape([n, c, h, w])
    };
    // Masking is a selection (`mask_fill`), not a product with the 0/1 mask: same values, but the
    // backward pass *replaces* the gradient of masked-out pixels by 0 instead of multiplying it by 0.
    // A frozen encoder can return a non-finite gradient exactly there (a zeroed region is a run of
    // zero tokens; each LayerNorm at zero variance amplifies the gradient by ~1/sqrt(eps), through
    // a deep Swin this overflows f32), and `inf * 0 = NaN` would then reach cam4.
    let fg_off = m_sel.clone().lower_elem(0.5).expand([n, c, h, w]);
    let bg_off = m_sel.greater_elem(0.5).expand([n, c, h, w]);
    let fg = minmax(a_sel.clone() * x_sel.clone()).mask_fill(fg_off, 0.0);
    let bg = minmax((a_sel.neg().add_scalar(1.0)) * x_sel).mask_fill(bg_off, 0.0);
    Ok((fg, bg))
}

fn check_info_nce(
    features: &Tensor<2>,
    prototypes: &Tensor<2>,
    subclass: &[usize],
) -> Result<(), ModelError> {
    let [n, d] = features.dims();
    let [k, dp] = prototypes.dims();
    if d != dp || n != subclass.len() || n == 0 || k < 2 || subclass.iter().any(|&s| s >= k) {
        return Err(ModelError::Shape(format!(
            "InfoNCE: features [{n},{d}], prototypes [{k},{dp}], {} subclass ids (need n ≥ 1, ΣK ≥ 2, ids < ΣK)",
            subclass.len()
        )));
    }
    Ok(())
}

/// Returns `(e^{s(f_n,p_{k_n})/τ}` `[n]`, `Σ_{j≠k_n} e^{s(f_n,p_j)/τ}` `[n]`), with `f` L2-normalised.
fn pos_neg(
    features: Tensor<2>,
    prototypes: Tensor<2>,
    subclass: &[usize],
    tau: f64,
    eps: f64,
) -> (Tensor<1>, Tensor<1>) {
    let [n, _] = features.dims();
    let [k, _] = prototypes.dims();
    let device = features.device();
    let f = l2_normalize(features, 1, eps);
    let e = f.matmul(prototypes.transpose()).div_scalar(tau).exp(); // [n,k]
    let mut onehot = vec![0.0f32; n * k];
    for (i, &s) in subclass.iter().enumerate() {
        onehot[i * k + s] = 1.0;
    }
    let m: Tensor<2> = Tensor::from_data(TensorData::new(onehot, [n, k]), &device);
    let pos = (e.clone() * m.clone()).sum_dim(1).reshape([n]);
    let neg = (e * m.neg().add_scalar(1.0)).sum_dim(1).reshape([n]);
    (pos, neg)
}

/// FG InfoNCE (batch-pooled): `−log(Σ_n e^{s(f_n,p_n)/τ} / Σ_n [e^{s(f_n,p_n)/τ} + Σ_j e^{s(f_n,neg_{n,j})/τ}])`
/// with `p_n = P[k_n]`, negatives all other prototypes (siblings included). Returns `[1]`.
pub fn info_nce_fg(
    features: Tensor<2>,
    prototypes: Tensor<2>,
    subclass: &[usize],
    temperature: f64,
    feature_eps: f64,
) -> Result<Tensor<1>, ModelError> {
    check_info_nce(&features, &prototypes, subclass)?;
    let (pos, neg) = pos_neg(features, prototypes, subclass, temperature, feature_eps);
    let sp = pos.sum();
    Ok((sp.clone().log() - (sp + neg.sum()).log()).neg())
}

/// BG InfoNCE (batch-pooled): positives are the *other* prototypes averaged over j, the
/// negative is the own-subclass prototype:
/// `−log(Σ_n mean_j e^{s(f_n,neg_{n,j})/τ} / Σ_n [mean_j e^{s(f_n,neg_{n,j})/τ} + e^{s(f_n,p_n)/τ}])`.
pub fn info_nce_bg(
    features: Tensor<2>,
    prototypes: Tensor<2>,
    subclass: &[usize],
    temperature: f64,
    feature_eps: f64,
) -> Result<Tensor<1>, ModelError> {
    check_info_nce(&features, &prototypes, subclass)?;
    let k = prototypes.dims()[0];
    let (own, others) = pos_neg(features, prototypes, subclass, temperature, feature_eps);
    let sp = (others / (k - 1) as f64).sum();
    Ok((sp.clone().log() - (sp + own.sum()).log()).neg())
}

/// Upstream CAM regulariser: plain mean of the raw cam4 logits. Returns `[1]`.
pub fn cam_mean(cam4: Tensor<4>) -> Tensor<1> {
    cam4.mean()
}

/// Anisotropic total variation of `[B,C,H,W]`: mean |Δ_h| + mean |Δ_w| (seed's `cam_smooth`).
pub fn cam_total_variation(cam: Tensor<4>) -> Tensor<1> {
    let [_, _, h, w] = cam.dims();
    let dh = if h > 1 {
        (cam.clone().narrow(2, 1, h - 1) - cam.clone().narrow(2, 0, h - 1))
            .abs()
            .mean()
    } else {
        cam.clone().mean() * 0.0
    };
    let dw = if w > 1 {
        (cam.clone().narrow(3, 1, w - 1) - cam.clone().narrow(3, 0, w - 1))
            .abs()
            .mean()
    } else {
        cam.mean() * 0.0
    };
    dh + dw
}

/// L1 sparsity of `[B,C,H,W]`: mean |cam| (seed's `cam_sparsity`).
pub fn cam_l1(cam: Tensor<4>) -> Tensor<1> {
    cam.abs().mean()
}

/// All loss terms of one batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The optimised total.
    pub total: Tensor<1>,
    /// Σ w_i BCE.
    pub cls: Tensor<1>,
    /// FG InfoNCE (None when no pair is selected).
    pub fg: Option<Tensor<1>>,
    /// BG InfoNCE (None when no pair is selected).
    pub bg: Option<Tensor<1>>,
    /// mean(cam4).
    pub cam_mean: Tensor<1>,
    /// TV(cam4) (computed only when its weight is non-zero).
    pub tv: Option<Tensor<1>>,
    /// L1(cam4) (computed only when its weight is non-zero).
    pub l1: Option<Tensor<1>>,
    /// Selection mask `[B,ΣK]`.
    pub select: Tensor<2>,
    /// Selected `(sample, subclass)` pairs.
    pub pairs: Vec<(usize, usize)>,
    /// Encoder features of the FG images `[n,512]`.
    pub fg_features: Option<Tensor<2>>,
    /// Encoder features of the BG images `[n,512]`.
    pub bg_features: Option<Tensor<2>>,
}

/// The full upstream objective
/// `L = cls + w_c·(fg + bg + w_cam·mean(cam4)) + w_tv·TV(cam4) + w_l1·L1(cam4)`.
/// `encoder` maps `[n,3,H,W]` images to `[n,512]` features; it must be frozen (its parameters
/// not optimised) but differentiable so that the gradient reaches cam4. With no selected pair
/// (or ΣK < 2) the FG/BG terms are skipped (upstream would crash).
pub fn pbip_loss(
    out: &ClassNetOutput,
    images: Tensor<4>,
    labels: Tensor<2>,
    k_list: &[usize],
    cfg: &LossConfig,
    encoder: &dyn Fn(Tensor<4>) -> Tensor<2>,
) -> Result<LossOutput, ModelError> {
    cfg.validate()?;
    if out.cls.len() != 4 || out.cam.len() != 4 {
        return Err(ModelError::Shape(
            "ClassNetOutput must have 4 scales".into(),
        ));
    }
    let cls = classification_loss(
        &out.cls,
        labels.clone(),
        k_list,
        &cfg.scale_weights,
        cfg.merge,
    )?;
    let select = select_subclasses(out.cls[3].clone(), labels, k_list)?;
    let pairs = selected_pairs(select.clone())?;
    let cam4 = out.cam[3].clone();
    let cm = cam_mean(cam4.clone());
    let k_total: usize = k_list.iter().sum();
    let (fg, bg, fgf, bgf) = if pairs.is_empty() || k_total < 2 {
        tracing::debug!("no selected subclass in this batch: contrastive terms skipped");
        (None, None, None, None)
    } else {
        let (xf, xb) = fg_bg_images(
            images,
            cam4.clone(),
            &pairs,
            cfg.mask_threshold,
            cfg.minmax_eps,
        )?;
        let ff = encoder(xf);
        let bf = encoder(xb);
        let ks: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        let fg = info_nce_fg(
            ff.clone(),
            out.prototypes.clone(),
            &ks,
            cfg.temperature,
            cfg.feature_eps,
        )?;
        let bg = info_nce_bg(
            bf.clone(),
            out.prototypes.clone(),
            &ks,
            cfg.temperature,
            cfg.feature_eps,
        )?;
        (Some(fg), Some(bg), Some(ff), Some(bf))
    };
    let mut bracket = cm.clone() * cfg.cam_mean_weight;
    if let (Some(f), Some(b)) = (&fg, &bg) {
        bracket = f.clone() + b.clone() + bracket;
    }
    let mut total = cls.clone() + bracket * cfg.contrastive_weight;
    let tv = (cfg.tv_weight != 0.0).then(|| cam_total_variation(cam4.clone()));
    let l1 = (cfg.l1_weight != 0.0).then(|| cam_l1(cam4));
    if let Some(t) = &tv {
        total = total + t.clone() * cfg.tv_weight;
    }
    if let Some(t) = &l1 {
        total = total + t.clone() * cfg.l1_weight;
    }
    Ok(LossOutput {
        total,
        cls,
        fg,
        bg,
        cam_mean: cm,
        tv,
        l1,
        select,
        pairs,
        fg_features: fgf,
        bg_features: bgf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t<const D: usize>(v: Vec<f32>, s: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(v, s), &Device::flex())
    }

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    fn bce(z: f64, y: f64) -> f64 {
        z.max(0.0) - z * y + (1.0 + (-z.abs()).exp()).ln()
    }

    #[test]
    fn mil_loss_hand_checked() {
        // k_list [1, 1] (benign, tumour), one bag of 3 patches from a tumour slide and one of 3 from
        // a benign slide; only scale 4 weighted (1.0).
        // merged logits per patch (benign, tumour):
        //   bag 0: (0, 2), (0, -1), (0, 0.5)    bag label (1, 1)
        //   bag 1: (1, -2), (1, 1), (1, -3)     bag label (1, 0)
        let z = t(
            vec![
                0.0, 2.0, 0.0, -1.0, 0.0, 0.5, 1.0, -2.0, 1.0, 1.0, 1.0, -3.0,
            ],
            [6, 2],
        );
        let zero = t(vec![0.0; 12], [6, 2]);
        let cls = vec![zero.clone(), zero.clone(), zero, z];
        let y = t(vec![1.0, 1.0, 1.0, 0.0], [2, 2]);
        let w = [0.0, 0.0, 0.0, 1.0];
        // top-k 1/3 = max per bag and class: bag 0 (0, 2), bag 1 (1, 1).
        let pool = crate::pool::Pooling::TopK { fraction: 0.3 };
        // k_list [1, 1] and mean merging throughout.
        let mil = |cls: &[Tensor<2>],
                   y: Tensor<2>,
                   w: &[f64; 4],
                   bag_size: usize,
                   pooling: crate::pool::Pooling,
                   negatives: bool,
                   skip: Option<usize>| {
            mil_classification_loss(
                cls,
                y,
                &[1, 1],
                w,
                MergeMethod::Mean,
                &MilBags {
                    bag_size,
                    pooling,
                    negative_instances: negatives,
                    skip,
                },
            )
            .unwrap()
        };
        let l = mil(&cls, y.clone(), &w, 3, pool, false, None);
        let bag = (bce(0.0, 1.0) + bce(2.0, 1.0) + bce(1.0, 1.0) + bce(1.0, 0.0)) / 4.0;
        close(&to_vec(l).unwrap(), &[bag], 1e-5);
        // + negative instances: the tumour class of the 3 benign-bag patches (-2, 1, -3), target 0.
        let l = mil(&cls, y.clone(), &w, 3, pool, true, None);
        let neg = (bce(-2.0, 0.0) + bce(1.0, 0.0) + bce(-3.0, 0.0)) / 3.0;
        close(&to_vec(l).unwrap(), &[bag + neg], 1e-5);
        // background class 0 left out: only the tumour column counts.
        let l = mil(&cls, y, &w, 3, pool, true, Some(0));
        let bag_t = (bce(2.0, 1.0) + bce(1.0, 0.0)) / 2.0;
        close(&to_vec(l).unwrap(), &[bag_t + neg], 1e-5);
        // mean pooling with bag size 1 equals the per-patch classification loss.
        let cls1 = vec![
            t(vec![0.0; 4], [2, 2]),
            t(vec![0.0; 4], [2, 2]),
            t(vec![0.3, -0.7, 1.1, 0.2], [2, 2]),
            t(vec![0.5, 2.0, -1.0, 0.0], [2, 2]),
        ];
        let y1 = t(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let a = mil(
            &cls1,
            y1.clone(),
            &[0.0, 0.1, 1.0, 1.0],
            1,
            crate::pool::Pooling::Mean,
            false,
            None,
        );
        let b = classification_loss(
            &cls1,
            y1.clone(),
            &[1, 1],
            &[0.0, 0.1, 1.0, 1.0],
            MergeMethod::Mean,
        )
        .unwrap();
        close(
            &to_vec(a).unwrap(),
            &[f64::from(to_vec(b).unwrap()[0])],
            1e-6,
        );
        // and leaving a class out of the per-patch loss averages over the other class only
        let c = classification_loss_excluding(
            &cls1,
            y1,
            &[1, 1],
            &[0.0, 0.0, 0.0, 1.0],
            MergeMethod::Mean,
            Some(0),
        )
        .unwrap();
        close(
            &to_vec(c).unwrap(),
            &[(bce(2.0, 0.0) + bce(0.0, 1.0)) / 2.0],
            1e-6,
        );
    }

    #[test]
    fn bce_matches_closed_form() {
        // (log 2 + (2 + log(1+e^-2))) / 2
        let l = bce_with_logits(t(vec![0.0, 2.0], [1, 2]), t(vec![1.0, 0.0], [1, 2]));
        let e = (2f64.ln() + 2.0 + (1.0 + (-2f64).exp()).ln()) / 2.0;
        close(&to_vec(l).unwrap(), &[e], 1e-6);
    }

    #[test]
    fn classification_loss_weights_scales() {
        // k_list [2]: merged logits = mean(0, 2) = 1 at scale 3, mean(-1,-3) = -2 at scale 4, y = 1.
        let s3 = t(vec![0.0, 2.0], [1, 2]);
        let s4 = t(vec![-1.0, -3.0], [1, 2]);
        let z = t(vec![5.0, 5.0], [1, 2]);
        let y = t(vec![1.0], [1, 1]);
        let l = classification_loss(
            &[z.clone(), z, s3, s4],
            y,
            &[2],
            &[0.0, 0.0, 1.0, 0.5],
            MergeMethod::Mean,
        )
        .unwrap();
        let sp = |x: f64| (1.0 + (-x).exp()).ln(); // BCE with y = 1
        close(&to_vec(l).unwrap(), &[sp(1.0) + 0.5 * sp(-2.0)], 1e-6);
    }

    #[test]
    fn selection_by_hand() {
        let cls4 = t(vec![1.0, 3.0, 5.0, 4.0, 2.0, 0.0], [2, 3]);
        let y = t(vec![1.0, 1.0, 1.0, 0.0], [2, 2]);
        let s = select_subclasses(cls4, y, &[2, 1]).unwrap();
        // sample 0: parent means (2, 5) -> [0,1,0]; sample 1: (3, 0) -> [1,0,0] but class 1 absent
        assert_eq!(
            to_vec(s.clone()).unwrap(),
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(selected_pairs(s).unwrap(), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn fg_bg_images_by_hand() {
        let img = t(
            vec![1., 1., 1., 1., 1., 2., 3., 4., 0., 0., 0., 0.],
            [1, 3, 2, 2],
        );
        let cam = t(vec![1., 2., 3., 4., 0., 0., 0., 0.5], [1, 2, 2, 2]);
        let (fg, bg) = fg_bg_images(img, cam, &[(0, 0)], 0.5, 1e-8).unwrap();
        assert_eq!(fg.dims(), [1, 3, 2, 2]);
        let fg = to_vec(fg).unwrap();
        let bg = to_vec(bg).unwrap();
        // threshold 0.5 * 4 = 2 -> mask [0,1,1,1]
        close(
            &fg,
            &[
                0.,
                1. / 3.,
                2. / 3.,
                1.,
                0.,
                0.2,
                8. / 15.,
                1.,
                0.,
                0.,
                0.,
                0.,
            ],
            1e-6,
        );
        close(&bg, &[1., 0., 0., 0., 1., 0., 0., 0., 0., 0., 0., 0.], 1e-6);
    }

    #[test]
    fn fg_bg_images_upsample_cam() {
        // A 1x1 CAM upsampled to 2x2 is constant: every pixel >= 0.5*max -> BG image all zero.
        let img = t(
            vec![1., 2., 3., 4., 0., 1., 0., 1., 2., 2., 2., 2.],
            [1, 3, 2, 2],
        );
        let cam = t(vec![2.0], [1, 1, 1, 1]);
        let (fg, bg) = fg_bg_images(img, cam, &[(0, 0)], 0.5, 1e-8).unwrap();
        close(&to_vec(bg).unwrap(), &[0.0; 12], 0.0);
        close(
            &to_vec(fg).unwrap(),
            &[0., 1. / 3., 2. / 3., 1., 0., 1., 0., 1., 0., 0., 0., 0.],
            1e-6,
        );
    }

    #[test]
    fn info_nce_single_pair_closed_form() {
        let p = t(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let e = std::f64::consts::E;
        let fg = info_nce_fg(t(vec![2.0, 0.0], [1, 2]), p.clone(), &[0], 1.0, 1e-12).unwrap();
        close(&to_vec(fg).unwrap(), &[(1.0 + 1.0 / e).ln()], 1e-6);
        let bg = info_nce_bg(t(vec![2.0, 0.0], [1, 2]), p, &[0], 1.0, 1e-12).unwrap();
        close(&to_vec(bg).unwrap(), &[(1.0 + e).ln()], 1e-6);
    }

    #[test]
    fn info_nce_is_pooled_over_the_batch_and_uses_tau() {
        // pos = (e, 1), neg = (1, e): pooled = log 2 (a mean of per-sample losses would be 0.813).
        let p = t(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let f = t(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let fg = info_nce_fg(f.clone(), p.clone(), &[0, 0], 1.0, 1e-12).unwrap();
        close(&to_vec(fg).unwrap(), &[2f64.ln()], 1e-6);
        // tau = 0.5, single pair: -log(e^2 / (e^2 + 1))
        let fg = info_nce_fg(t(vec![1.0, 0.0], [1, 2]), p.clone(), &[0], 0.5, 1e-12).unwrap();
        close(&to_vec(fg).unwrap(), &[(1.0 + (-2f64).exp()).ln()], 1e-6);
        // BG positives are averaged over the other prototypes: 3 prototypes, f = e1,
        // own = p0 = e1 (e^1), others p1 = e2 (e^0), p2 = -e1 (e^-1): mean = (1 + 1/e)/2.
        let p3 = t(vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0], [3, 2]);
        let e = std::f64::consts::E;
        let m = (1.0 + 1.0 / e) / 2.0;
        let bg = info_nce_bg(t(vec![1.0, 0.0], [1, 2]), p3, &[0], 1.0, 1e-12).unwrap();
        close(&to_vec(bg).unwrap(), &[-(m / (m + e)).ln()], 1e-6);
    }

    #[test]
    fn info_nce_zero_features_are_finite() {
        let p = t(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let z = t(vec![0.0, 0.0], [1, 2]);
        let fg = to_vec(info_nce_fg(z.clone(), p.clone(), &[1], 0.07, 1e-12).unwrap()).unwrap();
        let bg = to_vec(info_nce_bg(z, p, &[1], 0.07, 1e-12).unwrap()).unwrap();
        close(&fg, &[2f64.ln()], 1e-6);
        close(&bg, &[2f64.ln()], 1e-6);
    }

    #[test]
    fn info_nce_zero_features_have_finite_gradient() {
        let device = Device::flex().autodiff();
        let f: Tensor<2> =
            Tensor::from_data(TensorData::new(vec![0.0f32, 0.0], [1, 2]), &device).require_grad();
        let p: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let l = info_nce_fg(f.clone(), p, &[0], 0.07, 1e-12).unwrap();
        let g = f.grad(&l.backward()).expect("gradient");
        assert!(to_vec(g).unwrap().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn all_zero_fg_image_is_finite() {
        // A zero image gives zero FG/BG images, not NaN (min-max eps).
        let img = t(vec![0.0; 12], [1, 3, 2, 2]);
        let cam = t(vec![1., 2., 3., 4.], [1, 1, 2, 2]);
        let (fg, bg) = fg_bg_images(img, cam, &[(0, 0)], 0.5, 1e-8).unwrap();
        assert!(
            to_vec(fg)
                .unwrap()
                .iter()
                .chain(to_vec(bg).unwrap().iter())
                .all(|v| *v == 0.0)
        );
    }

    /// The case that makes upstream NaN: a CAM channel whose mask covers the whole image gives an
    /// all-zero BG image, a zero feature (bias-free encoder), `x / ||x||` = 0/0 upstream. Here the
    /// loss is the hand value ln 2 (all similarities 0) and the gradient w.r.t. the CAM is finite.
    #[test]
    fn all_zero_bg_image_gives_finite_loss_and_gradient() {
        let device = Device::flex().autodiff();
        let img: Tensor<4> = Tensor::from_data(
            TensorData::new(
                vec![1., 2., 3., 4., 0., 1., 0., 1., 2., 2., 2., 5.],
                [1, 3, 2, 2],
            ),
            &device,
        );
        // channel 0 constant 1 (mask all 1 at δ = 0.5), channel 1 constant 0.2 (below threshold)
        let cam: Tensor<4> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 1., 1., 1., 0.2, 0.2, 0.2, 0.2], [1, 2, 2, 2]),
            &device,
        )
        .require_grad();
        let (xf, xb) = fg_bg_images(img, cam.clone(), &[(0, 0)], 0.5, 1e-8).unwrap();
        // bias-free linear "encoder": channel means @ W [3,2]
        let w: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]),
            &device,
        );
        let enc = |x: Tensor<4>| {
            x.reshape([1, 3, 4])
                .mean_dim(2)
                .reshape([1, 3])
                .matmul(w.clone())
        };
        let p: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let bf = enc(xb);
        assert_eq!(to_vec(bf.clone()).unwrap(), vec![0.0, 0.0]);
        let bg = info_nce_bg(bf, p.clone(), &[0], 0.07, 1e-12).unwrap();
        close(&to_vec(bg.clone()).unwrap(), &[2f64.ln()], 1e-6);
        let fg = info_nce_fg(enc(xf), p, &[0], 0.07, 1e-12).unwrap();
        let total = fg + bg;
        assert!(to_vec(total.clone()).unwrap()[0].is_finite());
        let g = cam
            .grad(&total.backward())
            .expect("gradient reaches the CAM");
        let g = to_vec(g).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    fn regularisers_by_hand() {
        let c = t(vec![1.0, 2.0, 4.0, 8.0], [1, 1, 2, 2]);
        close(
            &to_vec(cam_total_variation(c.clone())).unwrap(),
            &[4.5 + 2.5],
            1e-6,
        );
        close(&to_vec(cam_mean(c)).unwrap(), &[3.75], 1e-6);
        let c = t(vec![-1.0, 2.0, -3.0, 0.0], [1, 1, 2, 2]);
        close(&to_vec(cam_l1(c)).unwrap(), &[1.5], 1e-6);
    }

    #[test]
    fn config_json_defaults_and_validation() {
        let c =
            LossConfig::from_json(r#"{"contrastive_weight": 0.5, "temperature": 1.0}"#).unwrap();
        assert_eq!(c.contrastive_weight, 0.5);
        assert_eq!(c.mask_threshold, 0.5);
        assert_eq!(c.scale_weights, [0.0, 0.1, 1.0, 1.0]);
        assert!(LossConfig::from_json(r#"{"temperature": 0.0}"#).is_err());
        assert!(LossConfig::from_json(r#"{"mask_threshold": 2.0}"#).is_err());
        assert!(LossConfig::from_json("[").is_err());
    }
}

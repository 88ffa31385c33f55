//! Evaluation / pseudo-mask path (upstream `get_seg_label` + `utils/validate.py`).

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::classnet::ClassNet;
use crate::merge::{MergeMethod, merge_subclasses};
use crate::util::resize_bilinear_align_corners;

/// Evaluation constants (defaults = upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// CAM merge (upstream `merge_test: max` = softmax-weighted).
    pub merge: MergeMethod,
    /// Fusion weights of the four scales, default 0, 0.3, 0.3, 0.4.
    pub fuse: [f64; 4],
    /// Min-max epsilon, default 1e-6.
    pub minmax_eps: f64,
    /// Test-time augmentation: hflip × multipliers, averaged (upstream validation).
    pub tta: bool,
    /// TTA multipliers applied to the normalised image, default 0.9, 1.0, 1.1.
    pub tta_multipliers: Vec<f64>,
    /// What a class map is before fusion (default: upstream's min-max).
    pub maps: MapKind,
    /// With [`MapKind::Probability`]: the class present everywhere (e.g. benign tissue), whose map
    /// is replaced by the constant `background_score` after fusion, so a pixel is that class
    /// unless another class's probability reaches the score. None: every class has its own map.
    pub background: Option<usize>,
    /// Score of the background class's map (the pixel threshold), default 0.5.
    pub background_score: f64,
}

/// Per-class maps of the evaluation path, before fusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// Upstream `get_seg_label`: merge → relu → per-channel min-max over the patch.
    #[default]
    MinMax,
    /// Calibrated: merge → sigmoid (the pixel's class probability, on the scale of the gate).
    Probability,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            merge: MergeMethod::SoftmaxWeighted,
            fuse: [0.0, 0.3, 0.3, 0.4],
            minmax_eps: 1e-6,
            tta: false,
            tta_multipliers: vec![0.9, 1.0, 1.1],
            maps: MapKind::MinMax,
            background: None,
            background_score: 0.5,
        }
    }
}

impl EvalConfig {
    /// Parses a JSON object (e.g. the fixture's `eval` metadata); absent fields keep defaults.
    pub fn from_json(s: &str) -> Result<Self, ModelError> {
        serde_json::from_str(s).map_err(|e| ModelError::Config(format!("eval config JSON: {e}")))
    }
}

/// Image-level class gate applied to the CAMs.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a tensor handle; built once per evaluation call
pub enum Gate {
    /// Given multi-hot labels `[B,N]` (upstream protocol: GT image labels, leaks the label).
    Labels(Tensor<2>),
    /// The model's own prediction: `sigmoid(merge(cls4)) ≥ threshold`, where cls4 are the
    /// scale-4 subclass logits of the same forward pass, merged with `merge` (use
    /// [`MergeMethod::Mean`], the merge the BCE was trained on). Deployable protocol.
    Predicted {
        /// Probability threshold (e.g. 0.5).
        threshold: f64,
        /// Merge of the subclass logits.
        merge: MergeMethod,
    },
    /// No gating (all classes kept).
    None,
}

/// Result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Per-scale maps after merge, relu, min-max, gate and upsampling `[B,N,H,W]` (TTA-averaged).
    pub scales: Vec<Tensor<4>>,
    /// Fused map `Σ_i fuse_i · scales_i` `[B,N,H,W]`.
    pub fused: Tensor<4>,
    /// `argmax_c fused` `[B,H,W]` over the N foreground classes.
    pub pred: Tensor<3, Int>,
}

/// `get_seg_label` for one scale: merge → relu → per-channel min-max (eps) → × gate
/// `[B,N]` → bilinear upsample (align_corners) to `out_h × out_w`.
pub fn seg_label(
    cam: Tensor<4>,
    k_list: &[usize],
    gate: Option<Tensor<2>>,
    out_h: usize,
    out_w: usize,
    merge: MergeMethod,
    minmax_eps: f64,
) -> Result<Tensor<4>, ModelError> {
    let m = relu(merge_subclasses(cam, k_list, merge)?);
    let [b, n, h, w] = m.dims();
    let f = m.reshape([b, n, h * w]);
    let mn = f.clone().min_dim(2);
    let mx = f.clone().max_dim(2);
    let x = ((f - mn.clone()) / (mx - mn).add_scalar(minmax_eps)).reshape([b, n, h, w]);
    Ok(resize_bilinear_align_corners(gated(x, gate)?, out_h, out_w))
}

/// `x` `[B,N,H,W]` times the gate `[B,N]` when there is one.
fn gated(x: Tensor<4>, gate: Option<Tensor<2>>) -> Result<Tensor<4>, ModelError> {
    let Some(g) = gate else {
        return Ok(x);
    };
    let [b, n, _, _] = x.dims();
    if g.dims() != [b, n] {
        return Err(ModelError::Shape(format!(
            "gate {:?} vs maps [{b},{n}]",
            g.dims()
        )));
    }
    Ok(x * g.reshape([b, n, 1, 1]))
}

/// One scale's class maps under `cfg.maps`: [`seg_label`] for [`MapKind::MinMax`]; for
/// [`MapKind::Probability`] merge → sigmoid → × gate → bilinear upsample (align_corners).
pub fn class_maps(
    cam: Tensor<4>,
    k_list: &[usize],
    gate: Option<Tensor<2>>,
    out_h: usize,
    out_w: usize,
    cfg: &EvalConfig,
) -> Result<Tensor<4>, ModelError> {
    match cfg.maps {
        MapKind::MinMax => seg_label(cam, k_list, gate, out_h, out_w, cfg.merge, cfg.minmax_eps),
        MapKind::Probability => {
            let x = sigmoid(merge_subclasses(cam, k_list, cfg.merge)?);
            Ok(resize_bilinear_align_corners(gated(x, gate)?, out_h, out_w))
        }
    }
}

/// The background class and its constant score when `cfg` has one ([`MapKind::Probability`] with
/// `background` set), for [`gated_argmax`].
pub fn background_rule(cfg: &EvalConfig) -> Option<(usize, f32)> {
    match (cfg.maps, cfg.background) {
        (MapKind::Probability, Some(b)) => Some((b, cfg.background_score as f32)),
        _ => None,
    }
}

/// Probability maps with a background class, re-expressed so that the threshold `t` sits at 0.5:
/// every other class `c` gets `q_c = σ(logit(p_c) − logit(t))` (0 where its gated map is 0) and
/// the background `1 − max_c q_c`. The arg-max is that of the background rule of
/// [`gated_argmax`] (a class wins where its probability reaches `t`), and for one foreground
/// class the two maps are a probability distribution, which is what stitching, the dense CRF
/// and the confidence maps of whole-slide inference expect.
pub fn calibrate_to_threshold(
    fused: Tensor<4>,
    b: usize,
    threshold: f64,
) -> Result<Tensor<4>, ModelError> {
    let [bs, n, h, w] = fused.dims();
    if b >= n {
        return Err(ModelError::Shape(format!(
            "background class {b} outside the {n} classes"
        )));
    }
    let t = threshold.clamp(1e-6, 1.0 - 1e-6);
    let shift = (t / (1.0 - t)).ln();
    let eps = 1e-6;
    let p = fused.clamp(eps, 1.0 - eps);
    let logit = (p.clone() / (p.clone().neg().add_scalar(1.0))).log();
    let q = sigmoid(logit.sub_scalar(shift));
    // where the gated map is 0 (class gated off) the class gets 0
    let q = q.mask_fill(p.lower_equal_elem(eps), 0.0);
    let mut parts = Vec::with_capacity(n);
    let others: Vec<usize> = (0..n).filter(|&c| c != b).collect();
    let max_other = others
        .iter()
        .map(|&c| q.clone().narrow(1, c, 1))
        .reduce(|a, x| a.max_pair(x))
        .unwrap_or_else(|| Tensor::zeros([bs, 1, h, w], &q.device()));
    for c in 0..n {
        if c == b {
            parts.push(max_other.clone().neg().add_scalar(1.0));
        } else {
            parts.push(q.clone().narrow(1, c, 1));
        }
    }
    Ok(Tensor::cat(parts, 1))
}

/// Per-pixel decision on host maps: `argmax_c gate_c · fused_c` (first maximum; every class
/// gated off → class 0). With `background = Some((b, score))` class `b` competes with the
/// constant `score` instead of its map, whatever its gate: a pixel is `b` unless another gated
/// class scores higher. `fused` is `[N, plane]` class-major, `gate` `[N]`.
pub fn gated_argmax(
    fused: &[f32],
    gate: &[f32],
    n: usize,
    plane: usize,
    background: Option<(usize, f32)>,
    out: &mut [u8],
) {
    for (px, o) in out.iter_mut().enumerate() {
        let score = |c: usize| match background {
            Some((b, s)) if b == c => s,
            _ => gate[c] * fused[c * plane + px],
        };
        let mut best = 0usize;
        let mut bv = score(0);
        for c in 1..n {
            let v = score(c);
            if v > bv {
                bv = v;
                best = c;
            }
        }
        *o = best as u8;
    }
}

/// Fuses per-scale maps with weights (weight-0 scales skipped) and takes the argmax.
pub fn fuse_and_argmax(
    scales: &[Tensor<4>],
    weights: &[f64; 4],
) -> Result<(Tensor<4>, Tensor<3, Int>), ModelError> {
    let mut fused: Option<Tensor<4>> = None;
    for (s, &w) in scales.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        let t = s.clone() * w;
        fused = Some(match fused {
            None => t,
            Some(f) => f + t,
        });
    }
    let fused = match fused {
        Some(f) => f,
        None => {
            scales
                .first()
                .cloned()
                .ok_or_else(|| ModelError::Shape("no scales".into()))?
                * 0.0
        }
    };
    let [b, _, h, w] = fused.dims();
    let pred = fused.clone().argmax(1).reshape([b, h, w]);
    Ok((fused, pred))
}

fn gate_tensor(
    gate: &Gate,
    cls4: &Tensor<2>,
    k_list: &[usize],
) -> Result<Option<Tensor<2>>, ModelError> {
    Ok(match gate {
        Gate::Labels(y) => Some(y.clone()),
        Gate::Predicted { threshold, merge } => {
            let p = sigmoid(merge_subclasses(cls4.clone(), k_list, *merge)?);
            Some(p.greater_equal_elem(*threshold).float())
        }
        Gate::None => None,
    })
}

/// Runs the evaluation path on normalised images `[B,3,H,W]` (use a model without autodiff,
/// e.g. `model.valid()`). With `cfg.tta`, every (hflip, multiplier) pass is de-augmented and the
/// per-scale maps are averaged before fusion; a [`Gate::Predicted`] gate is taken per pass
/// from that pass's own logits.
pub fn evaluate(
    model: &ClassNet,
    images: Tensor<4>,
    gate: &Gate,
    cfg: &EvalConfig,
) -> Result<EvalOutput, ModelError> {
    let [_, _, h, w] = images.dims();
    let mut passes: Vec<(bool, f64)> = vec![(false, 1.0)];
    if cfg.tta {
        if cfg.tta_multipliers.is_empty() {
            return Err(ModelError::Config("tta_multipliers is empty".into()));
        }
        passes = [false, true]
            .iter()
            .flat_map(|&f| cfg.tta_multipliers.iter().map(move |&m| (f, m)))
            .collect();
    }
    let mut acc: Option<Vec<Tensor<4>>> = None;
    for &(flip, mult) in &passes {
        let mut x = images.clone();
        if flip {
            x = x.flip([3]);
        }
        if mult != 1.0 {
            x = x * mult;
        }
        let out = model.forward(x);
        let g = gate_tensor(gate, &out.cls[3], &model.k_list)?;
        let mut maps = Vec::with_capacity(4);
        for (i, cam) in out.cam.into_iter().enumerate() {
            if cfg.fuse[i] == 0.0 {
                maps.push(None);
                continue;
            }
            let mut m = class_maps(cam, &model.k_list, g.clone(), h, w, cfg)?;
            if flip {
                m = m.flip([3]);
            }
            maps.push(Some(m));
        }
        let maps: Vec<Tensor<4>> = maps
            .into_iter()
            .map(|m| {
                m.unwrap_or_else(|| {
                    Tensor::zeros(
                        [images.dims()[0], model.k_list.len(), h, w],
                        &images.device(),
                    )
                })
            })
            .collect();
        acc = Some(match acc {
            None => maps,
            Some(a) => a.into_iter().zip(maps).map(|(x, y)| x + y).collect(),
        });
    }
    let n = passes.len() as f64;
    let scales: Vec<Tensor<4>> = acc
        .ok_or_else(|| ModelError::Config("no evaluation pass".into()))?
        .into_iter()
        .map(|t| if n > 1.0 { t / n } else { t })
        .collect();
    let (fused, pred) = match background_rule(cfg) {
        None => fuse_and_argmax(&scales, &cfg.fuse)?,
        Some((b, score)) => {
            let (fused, _) = fuse_and_argmax(&scales, &cfg.fuse)?;
            let fused = calibrate_to_threshold(fused, b, f64::from(score))?;
            let [bs, _, fh, fw] = fused.dims();
            let pred = fused.clone().argmax(1).reshape([bs, fh, fw]);
            (fused, pred)
        }
    };
    Ok(EvalOutput {
        scales,
        fused,
        pred,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn maps(v: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    #[test]
    fn background_rule_decides_by_threshold() {
        // 2 classes (0 = background), 3 pixels; tumour probabilities 0.9, 0.7, 0 (gated off).
        let fused = [0.2f32, 0.2, 0.2, 0.9, 0.7, 0.0];
        let mut out = [9u8; 3];
        gated_argmax(&fused, &[1.0, 1.0], 2, 3, Some((0, 0.8)), &mut out);
        assert_eq!(out, [1, 0, 0]);
        // without the rule the background's own map competes
        gated_argmax(&fused, &[1.0, 1.0], 2, 3, None, &mut out);
        assert_eq!(out, [1, 1, 0]);
        // a gated-off class never wins
        gated_argmax(&fused, &[1.0, 0.0], 2, 3, Some((0, 0.8)), &mut out);
        assert_eq!(out, [0, 0, 0]);
    }

    #[test]
    fn calibrated_maps_put_the_threshold_at_one_half() {
        let fused = maps(vec![0.2, 0.2, 0.2, 0.9, 0.7, 0.0], [1, 2, 1, 3]);
        let c = crate::util::to_vec(calibrate_to_threshold(fused, 0, 0.8).unwrap()).unwrap();
        // q = σ(logit p − logit 0.8): p 0.9 → σ(2.19722 − 1.38629) = σ(0.81093) = 0.69231
        //                             p 0.7 → σ(0.84730 − 1.38629) = σ(−0.53900) = 0.36842
        let want = [1.0 - 0.69231, 1.0 - 0.36842, 1.0, 0.69231, 0.36842, 0.0];
        for (g, w) in c.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{c:?}");
        }
        // same decisions as the rule above: argmax of the calibrated maps
        let mut out = [9u8; 3];
        gated_argmax(&c, &[1.0, 1.0], 2, 3, None, &mut out);
        assert_eq!(out, [1, 0, 0]);
    }
}

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
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            merge: MergeMethod::SoftmaxWeighted,
            fuse: [0.0, 0.3, 0.3, 0.4],
            minmax_eps: 1e-6,
            tta: false,
            tta_multipliers: vec![0.9, 1.0, 1.1],
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
    let mut x = ((f - mn.clone()) / (mx - mn).add_scalar(minmax_eps)).reshape([b, n, h, w]);
    if let Some(g) = gate {
        if g.dims() != [b, n] {
            return Err(ModelError::Shape(format!(
                "gate {:?} vs maps [{b},{n}]",
                g.dims()
            )));
        }
        x = x * g.reshape([b, n, 1, 1]);
    }
    Ok(resize_bilinear_align_corners(x, out_h, out_w))
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
            let mut m = seg_label(
                cam,
                &model.k_list,
                g.clone(),
                h,
                w,
                cfg.merge,
                cfg.minmax_eps,
            )?;
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
    let (fused, pred) = fuse_and_argmax(&scales, &cfg.fuse)?;
    Ok(EvalOutput {
        scales,
        fused,
        pred,
    })
}

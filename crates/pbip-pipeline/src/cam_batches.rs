//! The batch loop shared by validation during training (stage 3) and evaluation (stage 4):
//! eval-mode forward of each batch of an [`EvalPlan`], the image-level prediction (mean-merged
//! scale-4 logits and their sigmoid), the fused class maps of the evaluation path, and the
//! deployable decision (the classes gated by the model's own prediction at a threshold).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use pbip_data::{EvalPlan, PatchBatch};
use pbip_model::{
    ClassNet, EvalConfig, Gate, MapKind, MergeMethod, ModelError, class_maps, evaluate,
    merge_subclasses,
};

/// Why a batch could not be run (the callers add their stage and context).
#[derive(Debug, thiserror::Error)]
pub enum CamBatchError {
    /// Reading the patches.
    #[error(transparent)]
    Data(#[from] pbip_data::DataError),
    /// The forward pass or the evaluation path.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The batches of an [`EvalPlan`] through an inference model (e.g. `model.valid()`), in order.
pub struct CamBatches<'a> {
    model: &'a ClassNet,
    plan: &'a EvalPlan,
    device: Device,
    next: usize,
}

impl<'a> CamBatches<'a> {
    /// The batches of `plan` through `model`, whose parameters live on `device`.
    pub fn new(model: &'a ClassNet, plan: &'a EvalPlan, device: Device) -> Self {
        CamBatches {
            model,
            plan,
            device,
            next: 0,
        }
    }
}

impl Iterator for CamBatches<'_> {
    type Item = Result<CamBatch, CamBatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.plan.num_batches() {
            return None;
        }
        let batch = self.plan.batch(self.next)?;
        self.next += 1;
        Some(batch.map_err(CamBatchError::from).and_then(|batch| {
            CamBatch::forward(self.model, batch, &self.device).map_err(CamBatchError::from)
        }))
    }
}

/// One batch after the forward pass.
pub struct CamBatch {
    /// The patches (pixels, masks, where they come from).
    pub batch: PatchBatch,
    /// Mean-merged scale-4 logits, `[B, N]` row-major.
    pub logits: Vec<f32>,
    /// Their sigmoid, the image-level class probabilities, `[B, N]` row-major.
    pub probs: Vec<f32>,
    /// What the fused class maps are computed from.
    pub maps: CamMaps,
}

impl CamBatch {
    fn forward(model: &ClassNet, batch: PatchBatch, device: &Device) -> Result<Self, ModelError> {
        let [b, c, h, w] = batch.shape();
        let images: Tensor<4> =
            Tensor::from_data(TensorData::new(batch.data.clone(), [b, c, h, w]), device);
        let out = model.try_forward(images.clone(), false)?;
        let merged = merge_subclasses(out.cls[3].clone(), &model.k_list, MergeMethod::Mean)?;
        let logits = pbip_model::util::to_vec(merged.clone())?;
        let probs = pbip_model::util::to_vec(sigmoid(merged))?;
        Ok(CamBatch {
            batch,
            logits,
            probs,
            maps: CamMaps {
                images,
                cams: out.cam,
                h,
                w,
            },
        })
    }
}

/// The images and per-scale CAMs of a batch, fused on demand ([`CamMaps::fuse`]).
pub struct CamMaps {
    images: Tensor<4>,
    cams: Vec<Tensor<4>>,
    h: usize,
    w: usize,
}

impl CamMaps {
    /// The ungated fused class maps of the evaluation path at the patch size: with TTA, the
    /// evaluation path on the images; otherwise `Σ_i fuse_i · class_maps(cam_i)` over the scales
    /// of non-zero weight. `None` when every fusion weight is 0.
    pub fn fuse(
        self,
        model: &ClassNet,
        eval: &EvalConfig,
    ) -> Result<Option<FusedMaps>, ModelError> {
        let (n, plane) = (model.num_classes(), self.h * self.w);
        let fused = if eval.tta {
            evaluate(model, self.images, &Gate::None, eval)?.fused
        } else {
            let mut acc: Option<Tensor<4>> = None;
            for (i, cam) in self.cams.into_iter().enumerate() {
                let wgt = eval.fuse[i];
                if wgt == 0.0 {
                    continue;
                }
                let m = class_maps(cam, &model.k_list, None, self.h, self.w, eval)? * wgt;
                acc = Some(match acc {
                    None => m,
                    Some(a) => a + m,
                });
            }
            match acc {
                Some(a) => a,
                None => return Ok(None),
            }
        };
        Ok(Some(FusedMaps {
            data: pbip_model::util::to_vec(fused)?,
            n,
            plane,
        }))
    }
}

/// Fused class maps on the host, `[B, N, plane]`.
pub struct FusedMaps {
    data: Vec<f32>,
    n: usize,
    plane: usize,
}

impl FusedMaps {
    /// Pixels per patch.
    pub fn plane(&self) -> usize {
        self.plane
    }

    /// The `[N, plane]` maps of patch `i`.
    pub fn patch(&self, i: usize) -> &[f32] {
        let len = self.n * self.plane;
        &self.data[i * len..(i + 1) * len]
    }
}

/// The deployable decision of one patch into `out` (`plane` pixels): the classes whose
/// probability (`probs`, `[N]`) reaches `threshold` are gated on and the first maximum of the
/// gated fused maps `fused` (`[N, plane]`) wins (every class gated off → class 0). With
/// probability maps and a background class, the background competes with the constant
/// `threshold` instead of its map.
pub fn threshold_argmax(
    fused: &[f32],
    probs: &[f32],
    threshold: f64,
    eval: &EvalConfig,
    out: &mut [u8],
) {
    let gate: Vec<f32> = probs
        .iter()
        .map(|&p| if f64::from(p) >= threshold { 1.0 } else { 0.0 })
        .collect();
    let background = match (eval.maps, eval.background) {
        (MapKind::Probability, Some(b)) => Some((b, threshold as f32)),
        _ => None,
    };
    pbip_model::gated_argmax(fused, &gate, probs.len(), out.len(), background, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_gates_the_classes_and_the_background_scores_the_threshold() {
        // 2 classes, 3 pixels, class-major maps.
        let fused = [0.9, 0.1, 0.6, 0.2, 0.8, 0.4];
        let mut out = [9u8; 3];
        let min_max = EvalConfig::default();
        // Both classes reach 0.5: the larger map wins per pixel.
        threshold_argmax(&fused, &[0.7, 0.6], 0.5, &min_max, &mut out);
        assert_eq!(out, [0, 1, 0]);
        // Class 1 gated off: class 0 everywhere.
        threshold_argmax(&fused, &[0.7, 0.4], 0.5, &min_max, &mut out);
        assert_eq!(out, [0, 0, 0]);
        // Every class gated off: class 0.
        threshold_argmax(&fused, &[0.1, 0.2], 0.5, &min_max, &mut out);
        assert_eq!(out, [0, 0, 0]);
        // Probability maps with background class 0: class 0 scores the threshold (0.3) instead of
        // its map, so class 1 wins where its map exceeds 0.3.
        let prob = EvalConfig {
            maps: MapKind::Probability,
            background: Some(0),
            ..EvalConfig::default()
        };
        threshold_argmax(&fused, &[0.1, 0.6], 0.3, &prob, &mut out);
        assert_eq!(out, [0, 1, 1]);
    }
}

//! Patch predictors: what turns a batch of RGB patches into per-class confidence maps.
//!
//! The inference core ([`super::infer_slide`]) only sees the [`PatchPredictor`] trait, so tests can
//! plug in a synthetic model (e.g. one that outputs a known function of slide position) and the
//! real pipeline plugs in [`ClassNetPredictor`] (evaluation-path CAMs of a trained checkpoint, gated
//! by the model's own image-level prediction).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use pbip_config::Config;
use pbip_data::Preprocess;
use pbip_model::{ClassNet, EvalConfig, Gate, MergeMethod, evaluate};

use crate::PipelineError;

use super::infer_err;

/// One patch handed to a predictor.
#[derive(Debug, Clone, Copy)]
pub struct PatchRef<'a> {
    /// Name of the slide the patch comes from.
    pub slide_name: &'a str,
    /// RGB8 pixels, HWC row-major, `side_px * side_px * 3` bytes.
    pub rgb: &'a [u8],
    /// Patch side in pixels (network input side).
    pub side_px: usize,
    /// Level-0 x of the patch's top-left corner.
    pub x_lv0: i64,
    /// Level-0 y of the patch's top-left corner.
    pub y_lv0: i64,
    /// Side of the level-0 square the patch covers.
    pub size_lv0_px: f64,
}

/// Confidence maps of a batch: `[B, C, h, w]` f32, class-major per patch. Map pixel `(u, v)` of a
/// patch covers the `1/w` (`1/h`) part of its footprint (half-pixel centres, see `pbip_post::stitch`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMaps {
    /// Number of patches B.
    pub batch: usize,
    /// Number of classes C.
    pub num_classes: usize,
    /// Map height h, pixels.
    pub height_px: usize,
    /// Map width w, pixels.
    pub width_px: usize,
    /// `B * C * h * w` values.
    pub data: Vec<f32>,
}

impl PatchMaps {
    /// The `[C, h, w]` slice of patch `i`.
    pub fn patch(&self, i: usize) -> &[f32] {
        let per = self.num_classes * self.height_px * self.width_px;
        &self.data[i * per..(i + 1) * per]
    }
}

/// Something that predicts per-class confidence maps for patches.
pub trait PatchPredictor {
    /// Number of classes C of the maps (= `class_order.len()`).
    fn num_classes(&self) -> usize;
    /// Predicts the maps of a batch (same order as `patches`).
    fn predict(&mut self, patches: &[PatchRef<'_>]) -> Result<PatchMaps, PipelineError>;
    /// Patches per [`predict`](Self::predict) call for `inference.batch_size: auto` and
    /// `side_px`-pixel patches. A predictor that cannot measure its memory keeps the CPU size.
    fn auto_batch_size(&mut self, side_px: usize) -> Result<usize, PipelineError> {
        let _ = side_px;
        Ok(pbip_model::autobatch::CPU_AUTO_BATCH)
    }
}

/// The trained PBIP model: evaluation-path fused CAMs (`evaluation.fuse_weights`, optional TTA),
/// gated by `sigmoid(mean-merged scale-4 logits) >= gate_threshold` (the deployable protocol: a
/// patch the model calls benign gets no tumour map). Values are in [0, 1]; a pixel whose classes
/// are all gated off has confidence 0 everywhere (arg-max class 0).
pub struct ClassNetPredictor {
    model: ClassNet,
    device: Device,
    preprocess: Preprocess,
    eval: EvalConfig,
    gate_threshold: f64,
    /// Output maps are box-downsampled by this integer factor before stitching (1 = full patch
    /// resolution); the stitcher resamples bilinearly anyway.
    map_reduction: usize,
    /// The configured `device:` (for `inference.batch_size: auto`).
    device_choice: pbip_config::Device,
}

impl ClassNetPredictor {
    /// The predictor of a loaded model under `cfg`: `training.normalize` preprocessing, the
    /// evaluation settings with `inference.use_tta` and `gate_threshold` as the background score,
    /// maps at full patch resolution.
    pub fn from_config(
        cfg: &Config,
        model: ClassNet,
        device: Device,
        gate_threshold: f64,
    ) -> Result<Self, PipelineError> {
        let norm = &cfg.training.normalize;
        let order = match norm.channel_order {
            pbip_config::ChannelOrder::Rgb => pbip_data::ChannelOrder::Rgb,
            pbip_config::ChannelOrder::Bgr => pbip_data::ChannelOrder::Bgr,
        };
        let normalization = pbip_data::Normalization::from_slices(&norm.mean, &norm.std, order)
            .map_err(|e| infer_err(format!("training.normalize: {e}")))?;
        let mut eval = crate::settings::eval_config(cfg, cfg.inference.use_tta)?;
        eval.background_score = gate_threshold;
        Ok(Self {
            model,
            device,
            preprocess: Preprocess::MeanStd(normalization),
            eval,
            gate_threshold,
            map_reduction: 1,
            device_choice: cfg.device,
        })
    }

    /// Box-downsamples the output maps by the integer factor `r` before stitching (1 = full patch
    /// resolution; the stitcher resamples bilinearly anyway).
    pub fn with_map_reduction(mut self, r: usize) -> Self {
        self.map_reduction = r.max(1);
        self
    }

    /// Gate threshold in use.
    pub fn gate_threshold(&self) -> f64 {
        self.gate_threshold
    }
}

/// A `model_version` string for a checkpoint: `<file stem>_epoch_<epoch>` when the metadata has an
/// epoch, else the file stem (seed example: `best_epoch_6`).
pub fn model_version(path: &Path, meta: &BTreeMap<String, String>) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    match meta.get("epoch") {
        Some(e) if !e.trim().is_empty() => format!("{stem}_epoch_{}", e.trim()),
        _ => stem,
    }
}

impl PatchPredictor for ClassNetPredictor {
    fn num_classes(&self) -> usize {
        self.model.num_classes()
    }

    fn auto_batch_size(&mut self, side_px: usize) -> Result<usize, PipelineError> {
        crate::settings::inference_batch_size(
            pbip_config::BatchSize::Auto(pbip_config::AutoKeyword::Auto),
            self.device_choice,
            &self.model,
            &self.eval,
            &self.device,
            side_px,
        )
    }

    fn predict(&mut self, patches: &[PatchRef<'_>]) -> Result<PatchMaps, PipelineError> {
        let b = patches.len();
        if b == 0 {
            return Ok(PatchMaps {
                batch: 0,
                num_classes: self.num_classes(),
                height_px: 0,
                width_px: 0,
                data: vec![],
            });
        }
        let side = patches[0].side_px;
        let plane = side * side;
        let mut data = vec![0f32; b * 3 * plane];
        for (i, p) in patches.iter().enumerate() {
            if p.side_px != side || p.rgb.len() != 3 * plane {
                return Err(infer_err(format!(
                    "patch {i} is {} px / {} bytes, batch needs {side} px",
                    p.side_px,
                    p.rgb.len()
                )));
            }
            self.preprocess
                .apply(p.rgb, &mut data[i * 3 * plane..(i + 1) * 3 * plane])
                .map_err(|e| infer_err(format!("preprocessing: {e}")))?;
        }
        let images: Tensor<4> =
            Tensor::from_data(TensorData::new(data, [b, 3, side, side]), &self.device);
        let gate = Gate::Predicted {
            threshold: self.gate_threshold,
            merge: MergeMethod::Mean,
        };
        let out = evaluate(&self.model, images, &gate, &self.eval)
            .map_err(|e| infer_err(format!("model: {e}")))?;
        let [_, n, h, w] = out.fused.dims();
        let fused = pbip_model::util::to_vec(out.fused)
            .map_err(|e| infer_err(format!("model output: {e}")))?;
        let r = self.map_reduction;
        if r <= 1 || h % r != 0 || w % r != 0 {
            return Ok(PatchMaps {
                batch: b,
                num_classes: n,
                height_px: h,
                width_px: w,
                data: fused,
            });
        }
        let (oh, ow) = (h / r, w / r);
        let mut red = vec![0f32; b * n * oh * ow];
        let norm = 1.0 / (r * r) as f32;
        for bc in 0..b * n {
            let src = &fused[bc * h * w..(bc + 1) * h * w];
            let dst = &mut red[bc * oh * ow..(bc + 1) * oh * ow];
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = 0f32;
                    for dy in 0..r {
                        let row = &src[(y * r + dy) * w + x * r..][..r];
                        s += row.iter().sum::<f32>();
                    }
                    dst[y * ow + x] = s * norm;
                }
            }
        }
        Ok(PatchMaps {
            batch: b,
            num_classes: n,
            height_px: oh,
            width_px: ow,
            data: red,
        })
    }
}

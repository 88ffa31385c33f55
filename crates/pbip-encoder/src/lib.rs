//! The "MedCLIP vision tower" of PBIP on burn 0.22: a Hugging Face `SwinModel` (patch embedding,
//! shifted-window attention stages, patch merging, final LayerNorm, mean pooling) followed by the
//! MedCLIP `projection_head` (`Linear(8·embed_dim → proj_dim, bias=False)`), output **not**
//! L2-normalised — exactly `MedCLIPVisionModelViT.forward` as PBIP uses it (see the spec, §6).
//!
//! * [`MedClipVision::from_tensor_map`] loads weights from any of the layouts PBIP meets (the
//!   fixture's `clip.vision_model.*`, a MedCLIP `pytorch_model.bin` (`vision_model.*`), the vision
//!   tower's own state dict (`model.*` + `projection_head.weight`), both the transformers ≥ 5 names
//!   (`attention.q_proj`, `mlp.fc1`, ...) and the classic ones (`attention.self.query`,
//!   `intermediate.dense`, ...)). [`MedClipVision::from_swin`] combines a plain HF Swin checkpoint with a
//!   separate or seeded-random projection; [`MedClipVision::random`] builds a seeded random tower.
//! * [`MedClipVision::forward`] maps normalised images `[B,3,H,W]` to features `[B,proj_dim]`. It is
//!   fully differentiable (no detach inside): on an autodiff device, gradients flow back to the images.
//!   Call [`MedClipVision::frozen`] so that its own parameters do not collect gradients.
//! * [`MedClipVision::to_tensor_map`] returns the exact weights in use (to save them with
//!   `pbip_weights::write_safetensors_atomic`).
//!
//! The [`vit`] module holds the timm-style ViT family (UNI, Phikon, H-optimus-0, CONCH's trunk,
//! Virchow: [`vit_preset`]) with the same loading / export / frozen-forward interface ([`Vit`]).

mod load;
mod swin;
pub mod vit;

pub use swin::{MedClipVision, PatchMerging, SwinBlock, SwinStage};
pub use vit::{
    PosEmbedInterp, VIT_PRESETS, Vit, VitBlock, VitConfig, VitMlp, VitNames, VitPool, VitPreset,
    vit_preset,
};

use serde::{Deserialize, Serialize};

/// Errors of the encoder crate.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// Invalid architecture settings.
    #[error("invalid Swin configuration: {0}")]
    Config(String),
    /// Invalid ViT architecture settings or preset name.
    #[error("invalid ViT configuration: {0}")]
    VitConfig(String),
    /// Input tensor of the wrong shape.
    #[error("bad encoder input: {0}")]
    Input(String),
    /// Weight file / name problems (lists every missing, unexpected and mis-shaped tensor).
    #[error(transparent)]
    Weights(#[from] pbip_weights::WeightsError),
    /// Reading a tensor back from the device failed.
    #[error("backend error: {0}")]
    Backend(String),
}

fn default_patch() -> usize {
    4
}
fn default_window() -> usize {
    7
}
fn default_mlp() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_proj() -> usize {
    512
}
fn default_chans() -> usize {
    3
}

/// Architecture of the Swin tower and its projection (field names as in HF `SwinConfig`, so the
/// fixture's `swin` metadata JSON deserialises directly; absent fields take Swin-T values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Patch size of the stem convolution (kernel = stride).
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Channels after the stem (stage 1 width); stage i has `embed_dim · 2^i`.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Attention window (tokens per side).
    #[serde(default = "default_window")]
    pub window_size: usize,
    /// MLP hidden width = `mlp_ratio · dim`.
    #[serde(default = "default_mlp")]
    pub mlp_ratio: f64,
    /// LayerNorm epsilon of blocks and the final norm (the stem and merging norms use 1e-5, as HF).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Output width of the projection head.
    #[serde(default = "default_proj")]
    pub proj_dim: usize,
    /// Input channels.
    #[serde(default = "default_chans")]
    pub num_channels: usize,
}

impl Default for SwinConfig {
    fn default() -> Self {
        Self::swin_tiny()
    }
}

impl SwinConfig {
    /// `microsoft/swin-tiny-patch4-window7-224` + 512-d projection (what PBIP uses).
    pub fn swin_tiny() -> Self {
        Self {
            patch_size: 4,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
            proj_dim: 512,
            num_channels: 3,
        }
    }

    /// Parses a JSON object with HF `SwinConfig` field names (e.g. the fixture's `swin` metadata).
    pub fn from_json(json: &str) -> Result<Self, EncoderError> {
        let c: Self = serde_json::from_str(json)
            .map_err(|e| EncoderError::Config(format!("{e} in {json}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Width of stage `i`.
    pub fn stage_dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Width of the pooled feature (`embed_dim · 2^(stages-1)`; 768 for Swin-T).
    pub fn num_features(&self) -> usize {
        self.stage_dim(self.depths.len().saturating_sub(1))
    }

    /// MLP hidden width at stage `i` (`int(mlp_ratio · dim)` as HF).
    pub fn mlp_hidden(&self, i: usize) -> usize {
        (self.mlp_ratio * self.stage_dim(i) as f64) as usize
    }

    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), EncoderError> {
        let err = |m: String| Err(EncoderError::Config(m));
        if self.patch_size == 0
            || self.embed_dim == 0
            || self.window_size == 0
            || self.proj_dim == 0
        {
            return err(format!("sizes must be positive: {self:?}"));
        }
        if self.num_channels == 0 {
            return err("num_channels must be positive".into());
        }
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return err(format!(
                "depths {:?} and num_heads {:?} must be non-empty and of equal length",
                self.depths, self.num_heads
            ));
        }
        if self.depths.len() > 8 {
            return err(format!(
                "at most 8 stages supported, got {}",
                self.depths.len()
            ));
        }
        for (i, &h) in self.num_heads.iter().enumerate() {
            if h == 0 || !self.stage_dim(i).is_multiple_of(h) {
                return err(format!(
                    "stage {i}: width {} is not divisible by {h} heads",
                    self.stage_dim(i)
                ));
            }
        }
        let ratio_ok = self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0;
        let eps_ok = self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0;
        if !ratio_ok || !eps_ok {
            return err(format!(
                "mlp_ratio {} / layer_norm_eps {} invalid",
                self.mlp_ratio, self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_fixture_json() {
        let c = SwinConfig::from_json(
            r#"{"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 7, "patch_size": 4, "mlp_ratio": 4.0, "layer_norm_eps": 1e-05}"#,
        )
        .unwrap();
        assert_eq!(c.num_features(), 192);
        assert_eq!(c.proj_dim, 512);
        assert_eq!(c.mlp_hidden(3), 768);
        assert_eq!(SwinConfig::swin_tiny().num_features(), 768);
        assert!(
            SwinConfig::from_json(r#"{"embed_dim": 24, "depths": [1], "num_heads": [5]}"#).is_err()
        );
        assert!(
            SwinConfig::from_json(r#"{"embed_dim": 24, "depths": [1, 2], "num_heads": [1]}"#)
                .is_err()
        );
        assert!(SwinConfig::from_json("nope").is_err());
    }
}

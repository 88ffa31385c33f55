//! PBIP model stack on burn 0.22: the NVlabs Mix Transformer backbone ([`mit`]), the PBIP
//! prototype head ([`classnet`]), subclass merging ([`merge`]), the stage-1 losses ([`loss`]),
//! the evaluation / pseudo-mask path ([`eval`]) and checkpoint name maps ([`names`]).
//!
//! [`backend`] maps device names to the backends compiled into this build.
//!
//! All tensors use burn's run-time [`burn::tensor::Device`]; use `Device::flex().autodiff()` for
//! training and gradients, `model.valid()` (or a plain `Device::flex()`) for inference.

pub mod amp;
pub mod autobatch;
pub mod backend;
pub mod classnet;
pub mod eval;
pub(crate) mod fused;
pub mod host;
pub mod loss;
pub mod merge;
pub mod mit;
pub mod names;
pub(crate) mod params;
pub mod pool;
pub mod util;

pub use amp::Precision;
pub use classnet::{
    AdaptiveLayer, ClassNet, ClassNetConfig, ClassNetOutput, HeadConfig, LOGIT_SCALE_INIT,
};
pub use eval::{
    EvalConfig, EvalOutput, Gate, MapKind, background_rule, calibrate_to_threshold, class_maps,
    evaluate, fuse_and_argmax, gated_argmax, seg_label,
};
pub use host::{HostTensor, TensorMap};
pub use loss::{
    LossConfig, LossOutput, MilBags, bce_with_logits, cam_l1, cam_mean, cam_total_variation,
    classification_loss, classification_loss_excluding, fg_bg_images, info_nce_bg, info_nce_fg,
    mil_classification_loss, pbip_loss, select_subclasses, selected_pairs,
};
pub use merge::{MergeMethod, expand_to_subclasses, merge_subclasses};
pub use mit::{MitConfig, MixTransformer};
pub use pool::{Pooling, pool_last_dim, pool_values};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Bad configuration value.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// Tensor shape mismatch.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Weight import problems, all listed.
    #[error("cannot load {what}: missing [{}], unexpected [{}], mis-shaped [{}]", missing.join(", "), unexpected.join(", "), misshaped.join(", "))]
    Weights {
        /// What was being loaded.
        what: String,
        /// Tensors the model needs that the file lacks.
        missing: Vec<String>,
        /// Tensors in the file the model does not use.
        unexpected: Vec<String>,
        /// Tensors whose shape differs.
        misshaped: Vec<String>,
    },
    /// Backend failure (reading a tensor back).
    #[error("backend error: {0}")]
    Backend(String),
    /// Reading or writing a weights file failed (the error names the file).
    #[error(transparent)]
    File(#[from] pbip_weights::WeightsError),
}

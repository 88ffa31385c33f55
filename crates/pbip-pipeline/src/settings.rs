//! Config → library settings: the one place where a [`Config`] section becomes the options
//! struct of a library crate (slide reader, compute device, model head, poolings, evaluation
//! path, training labels), so that every stage that needs one builds it the same way.

use burn::tensor::Device;
use pbip_config::{Config, MapKind, Pool, PoolKind, SlideBackend};
use pbip_model::{EvalConfig, HeadConfig, Pooling};
use pbip_slide::{Backend, OpenOptions};

use crate::PipelineError;

fn config_err(message: String) -> PipelineError {
    PipelineError::Data {
        stage: "config",
        message,
    }
}

/// Slide open options from the config.
pub fn open_options(cfg: &Config, cache: bool) -> OpenOptions {
    OpenOptions {
        backend: match cfg.slide.backend {
            SlideBackend::Auto => Backend::Auto,
            SlideBackend::Rust => Backend::Rust,
            SlideBackend::Openslide => Backend::OpenSlide,
        },
        cache_bytes: if cache {
            (cfg.slide.cache_mb as usize).saturating_mul(1 << 20)
        } else {
            0
        },
        background_rgb: cfg.slide.background,
    }
}

/// The compute device for `cfg.device` (see [`pbip_model::backend`]): `cpu` is burn's pure-Rust
/// `flex` backend; the others need their cargo feature, and a device the build lacks is an error
/// naming the feature, never a silent CPU run.
pub fn compute_device(cfg: &Config) -> Result<Device, PipelineError> {
    let device = pbip_model::backend::device_for(cfg.device).map_err(|e| PipelineError::Data {
        stage: "device",
        message: e.to_string(),
    })?;
    tracing::debug!(device = %cfg.device, "compute device");
    Ok(device)
}

/// The model crate's compute precision for `training.precision` / `inference.precision`
/// (`key`). bf16 on the CPU backend runs (flex converts bf16 products through f32) but is
/// slower than f32 there: that is warned about, not refused. A backend without bf16 (wgpu) is
/// an error naming the key.
pub fn precision(
    cfg: &Config,
    p: pbip_config::Precision,
    key: &'static str,
) -> Result<pbip_model::Precision, PipelineError> {
    Ok(match p {
        pbip_config::Precision::F32 => pbip_model::Precision::F32,
        pbip_config::Precision::Bf16 => {
            let (kind, _) = pbip_model::backend::kind_of(cfg.device);
            if !kind.supports_bf16() {
                return Err(PipelineError::Data {
                    stage: key,
                    message: format!(
                        "bf16 mixed precision is not available on device `{}` (wgpu has no \
                         bf16); use device: cuda (a build with `tch`) or {key}: f32",
                        cfg.device
                    ),
                });
            }
            if kind == pbip_model::backend::BackendKind::Flex {
                tracing::warn!(
                    "{key}: bf16 on device cpu is slower than f32 (the CPU backend computes bf16 \
                     through f32 conversions); mixed precision is meant for GPUs (device: cuda)"
                );
            }
            tracing::info!("{key}: bf16 mixed precision of the MiT backbone");
            pbip_model::Precision::Bf16
        }
    })
}

/// The model crate's pooling for a config pooling.
pub fn pooling(p: &Pool) -> Pooling {
    match p.kind {
        PoolKind::Mean => Pooling::Mean,
        PoolKind::Topk => Pooling::TopK {
            fraction: p.topk_fraction,
        },
        PoolKind::Lse => Pooling::Lse { r: p.lse_r },
    }
}

/// The prototype head of `model.head`.
pub fn head_config(cfg: &Config) -> HeadConfig {
    let h = &cfg.model.head;
    HeadConfig {
        prototype_offsets: h.prototype_offsets,
        normalize_prototypes: h.normalize_prototypes,
        logit_bias: h.logit_bias,
        pool: pooling(&h.pool),
    }
}

/// Whether training uses bags of patches (multiple-instance learning).
pub fn uses_bags(cfg: &Config) -> bool {
    cfg.training.mil.bag_size > 1
}

/// How the patch logits of a slide are pooled into its slide score (validation AUC, evaluation,
/// inference): the bag pooling of multiple-instance training, else the mean (upstream-style).
pub fn slide_pooling(cfg: &Config) -> Pooling {
    if uses_bags(cfg) {
        pooling(&cfg.training.mil.pool)
    } else {
        Pooling::Mean
    }
}

/// The evaluation path of the config: `evaluation.fuse_weights`, `evaluation.maps`,
/// `background_class`, and TTA as given (validation, evaluation and inference have their own
/// switch). The background score is the default 0.5; callers set the gate threshold they use.
pub fn eval_config(cfg: &Config, tta: bool) -> Result<EvalConfig, PipelineError> {
    let e = &cfg.evaluation;
    let fuse: [f64; 4] = e.fuse_weights.as_slice().try_into().map_err(|_| {
        config_err(format!(
            "evaluation.fuse_weights needs 4 values, got {}",
            e.fuse_weights.len()
        ))
    })?;
    if fuse.iter().all(|w| *w == 0.0) {
        return Err(config_err(
            "every evaluation.fuse_weights entry is 0: no scale would make the maps".into(),
        ));
    }
    Ok(EvalConfig {
        fuse,
        tta,
        tta_multipliers: e.tta_multipliers.clone(),
        maps: match e.maps {
            MapKind::Minmax => pbip_model::MapKind::MinMax,
            MapKind::Probability => pbip_model::MapKind::Probability,
        },
        background: cfg.background_index(),
        ..EvalConfig::default()
    })
}

/// Patches per forward pass of the evaluation path (stages 4 and 5): `inference.batch_size`, or
/// for `auto` what [`pbip_model::autobatch::plan_batch`] chooses for `model` on this run's device
/// and `side_px`-pixel patches (logged with how it was chosen).
pub fn inference_batch_size(
    batch_size: pbip_config::BatchSize,
    choice: pbip_config::Device,
    model: &pbip_model::ClassNet,
    eval: &EvalConfig,
    device: &Device,
    side_px: usize,
) -> Result<usize, PipelineError> {
    if let Some(n) = batch_size.fixed() {
        return Ok(n.max(1));
    }
    let plan =
        pbip_model::autobatch::plan_batch(model, eval, device, choice, side_px).map_err(|e| {
            PipelineError::Data {
                stage: "inference.batch_size: auto",
                message: format!(
                    "the probe pass on `{}` failed: {e}; set inference.batch_size to a number",
                    choice
                ),
            }
        })?;
    tracing::info!("{}", plan.explanation);
    Ok(plan.batch_size)
}

/// The data crate's patch count for a config count (`all` or the first N, at least 1).
pub fn patches_per_slide(c: pbip_config::PatchCount) -> pbip_data::PatchesPerSlide {
    match c {
        pbip_config::PatchCount::Count(k) => pbip_data::PatchesPerSlide::First(k.max(1)),
        pbip_config::PatchCount::All(_) => pbip_data::PatchesPerSlide::All,
    }
}

/// A slide's training label: the CSV label plus `background_class` (present on every slide).
pub fn training_labels(cfg: &Config, labels: &[u8]) -> Vec<u8> {
    let mut l = labels.to_vec();
    if let Some(b) = cfg.background_index()
        && let Some(v) = l.get_mut(b)
    {
        *v = 1;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "paths: {{split_csv: s.csv, labels_csv: l.csv, wsi_dir: w, coordinates_dir: c}}\nclass_order: [benign, tumor]\n{extra}"
        );
        Config::from_yaml_str(&text, std::path::Path::new("/tmp"), "test", &[]).unwrap()
    }

    #[test]
    fn background_class_is_added_to_every_label() {
        let c = cfg("background_class: benign\n");
        // tumour slide "1" -> {benign, tumour}; benign slide unchanged; an all-zero row gets benign
        assert_eq!(training_labels(&c, &[0, 1]), vec![1, 1]);
        assert_eq!(training_labels(&c, &[1, 0]), vec![1, 0]);
        assert_eq!(training_labels(&c, &[0, 0]), vec![1, 0]);
        let c = cfg("");
        assert_eq!(training_labels(&c, &[0, 1]), vec![0, 1]);
        let c = cfg("background_class: tumor\n");
        assert_eq!(training_labels(&c, &[1, 0]), vec![1, 1]);
    }

    #[test]
    fn precision_maps_the_config_and_refuses_bf16_on_wgpu() {
        let c = cfg("training: {precision: bf16}\n");
        let p = |c: &Config, p| precision(c, p, "training.precision");
        assert_eq!(
            p(&c, c.training.precision).unwrap(),
            pbip_model::Precision::Bf16
        );
        assert_eq!(
            p(&c, c.inference.precision).unwrap(),
            pbip_model::Precision::F32
        );
        let c = cfg("device: wgpu\ntraining: {precision: bf16}\n");
        let e = p(&c, c.training.precision).unwrap_err().to_string();
        assert!(
            e.contains("training.precision") && e.contains("wgpu") && e.contains("f32"),
            "{e}"
        );
        assert!(p(&c, pbip_config::Precision::F32).is_ok());
        let bad = Config::from_yaml_str(
            "paths: {split_csv: s.csv, labels_csv: l.csv, wsi_dir: w, coordinates_dir: c}\n\
             training: {precision: fp16}\n",
            std::path::Path::new("/tmp"),
            "test",
            &[],
        );
        assert!(bad.unwrap_err().to_string().contains("precision"));
    }

    #[test]
    fn slide_pooling_follows_the_bags() {
        assert_eq!(slide_pooling(&cfg("")), Pooling::Mean);
        let c = cfg(
            "training: {batch_size: 8, mil: {bag_size: 4, pool: {kind: topk, topk_fraction: 0.5}}}\n",
        );
        assert_eq!(slide_pooling(&c), Pooling::TopK { fraction: 0.5 });
        let c = cfg("model: {head: {pool: {kind: lse, lse_r: 3.0}}}\n");
        assert_eq!(head_config(&c).pool, Pooling::Lse { r: 3.0 });
    }

    #[test]
    fn eval_config_of_the_config() {
        let c = cfg("background_class: benign\nevaluation: {maps: probability}\n");
        let e = eval_config(&c, false).unwrap();
        assert_eq!(e.background, Some(0));
        assert_eq!(e.maps, pbip_model::MapKind::Probability);
        let c = cfg("evaluation: {fuse_weights: [0, 0, 0, 0]}\n");
        assert!(eval_config(&c, false).is_err());
    }
}

//! Stage 3, `pbip train`: weakly-supervised training of the PBIP ClassNet from slide labels.
//!
//! * Data: [`pbip_data::TrainPlan`] over the training slides (seeded, slide- or class-balanced
//!   draws, augmentation, normalisation) through a [`pbip_data::TrainLoader`] (worker threads,
//!   bounded prefetch; the time spent waiting for data is reported).
//! * Loss: the model stack's PBIP loss with `training.loss_weights` + temperature, mask threshold
//!   and cam-mean weight. With `loss_weights.contrastive: 0` the FG/BG encoder pass is skipped
//!   entirely (classification + CAM regularisers only), which is what the CPU presets use.
//! * Slide labels mean "these classes are present somewhere on the slide":
//!   - `background_class` (e.g. benign) is added to every slide's label and left out of the
//!     classification loss (a constant label carries nothing to learn);
//!   - `training.mil.bag_size` > 1 (multiple-instance learning): a batch is bags of patches of one
//!     slide each; the classification term is the BCE of the bag logit (the patch logits pooled
//!     with `training.mil.pool`, e.g. the best patch) against the slide label, plus, with
//!     `negative_instances`, a BCE pushing every patch of a bag down for the classes its slide
//!     lacks ([`pbip_model::mil_classification_loss`]). Validation pools a slide's patch logits the
//!     same way for its slide score.
//! * Learning checks ([`chance`]): at every validation the training classification loss is
//!   compared with the constant predictor's on the same batches and the val mIoU with the best
//!   constant map; a run at chance for two validations in a row is reported loudly (log,
//!   progress bar, `train_summary.json` `"learning": "at_chance"` with what to try).
//! * Optimiser: AdamW ([`optim::AdamW`], host-side state keyed by parameter path), learning rate
//!   from [`pbip_data::LrSchedule`] per iteration (`lr_at(step)`), optional global-norm clipping.
//!   `poly` runs without warmup whatever `warmup_epochs` says (upstream: warmup_iter 0).
//! * A non-finite loss or gradient skips the step; `training.max_nonfinite_steps` consecutive
//!   ones stop the run after writing `checkpoints/nonfinite.safetensors` (the batch's pixels and,
//!   in the metadata, its slide names and coordinates).
//! * Counters with skipped steps. The iteration `step` (0-based global batch index; logs,
//!   TensorBoard and checkpoints show `step + 1`, the iterations done) counts every batch drawn,
//!   skipped or not, and it alone indexes the learning-rate schedule: `lr = lr_at(step)`. This is
//!   torch's convention for an `LRScheduler` stepped once per iteration (`GradScaler` skips
//!   `optimizer.step()` on an overflow, never `scheduler.step()`). Upstream PBIP differs: its
//!   `PolyWarmupAdamW` advances `global_step` inside `optimizer.step()`, so a skipped fp16 step
//!   does not advance its schedule. pbip follows torch because the run's length is fixed in
//!   iterations (`epochs × iterations_per_epoch`; a skipped batch is still consumed), so the
//!   schedule ends at its configured end value on the last iteration whatever was skipped, and
//!   because lr is then a pure function of the resume cursor (`next_step` in the state file), so
//!   a resumed run cannot drift from an uninterrupted one. AdamW's bias correction counts the
//!   updates each parameter received (skipped steps excluded), like torch's `state["step"]`;
//!   those counts are saved in the state file too.
//! * Validation ([`validate`]) every `validation_interval` steps, at each epoch end and at the
//!   end; `best` by deployable val mIoU (or slide AUC without GT masks).
//! * Outputs under `work_dir`: `checkpoints/*.safetensors` (weights + prototypes; metadata
//!   `pbip_config` (resolved YAML), `class_order`, `k_list`, `step`, `epoch`, `metrics` (JSON),
//!   `gate_threshold`): `latest` (rewritten at every validation, checkpoint and epoch end),
//!   `best`, and the periodic ones named by [`periodic_checkpoint_name`], which never overwrite
//!   each other: `epoch_N` holds the weights at the end of epoch N (1-based, written at every
//!   epoch end) and `epoch_N_step_S` those after S iterations (global, S a multiple of
//!   `checkpoint_interval` inside epoch N, not an epoch end). Also
//!   `checkpoints/latest.state.safetensors` (weights, AdamW moments, cursor: everything
//!   `--resume` needs, one atomic file), `runs/` (TensorBoard), `logs.txt`,
//!   `checkpoints/train_summary.json`.
//! * Resume: the run continues from `latest.state.safetensors`; because batches, augmentation
//!   and DropPath masks are pure functions of (seed, step), the final weights equal those of an
//!   uninterrupted run bit for bit on the CPU backend.

pub mod chance;
pub mod optim;
pub mod validate;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use pbip_config::{Config, Dataset, SchedulerType, SlideEntry, Split};
use pbip_data::{
    AugmentOptions, Balance, ChannelOrder, CoordinateOrigin, EvalPlan, LoaderOptions, LrSchedule,
    MaskOptions, Normalization, PatchBatch, Preprocess, SamplerOptions, SamplerState, ScheduleKind,
    ScheduleOptions, SlideSet, SlideSetOptions, SlideSpec, TrainLoader, TrainPlan,
};
use pbip_model::{ClassNet, ClassNetConfig, ClassNetOutput, EvalConfig, LossConfig};
use pbip_weights::{HostTensor, TensorMap};
use serde::{Deserialize, Serialize};

pub use crate::artifacts::checkpoints::{BEST_FILE, INPUT_MPP_KEY, OUTPUT_DIR, output_dir};
use crate::artifacts::prototypes as s2;
use crate::encoder::EncoderModel;
use crate::{Freshness, PipelineError, RunOptions, StageInfo, StageReport};
use optim::{AdamW, AdamWOptions};
pub use validate::ValMetrics;
use validate::{ValSettings, validate};

/// Stage name in errors.
pub const STAGE: &str = "train";
/// TensorBoard folder under `work_dir`.
pub const RUNS_DIR: &str = "runs";
/// Log file under `work_dir`.
pub const LOG_FILE: &str = "logs.txt";
/// Latest weights.
pub const LATEST_FILE: &str = "latest.safetensors";
/// Training state for `--resume`.
pub const STATE_FILE: &str = "latest.state.safetensors";
/// Batch of the last non-finite step when the run stops for it.
pub const NONFINITE_FILE: &str = "nonfinite.safetensors";
/// Summary of the (last) run.
pub const SUMMARY_FILE: &str = "train_summary.json";
/// Metadata key of the training state JSON in [`STATE_FILE`].
pub const STATE_META_KEY: &str = "pbip_train_state";

/// Stage description.
pub const INFO: StageInfo = StageInfo {
    index: 3,
    command: "train",
    description: "weakly-supervised training of the PBIP ClassNet from slide labels",
    output_dir: OUTPUT_DIR,
};

/// Options of a training run beyond the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `checkpoints/latest.state.safetensors`.
    pub resume: bool,
    /// Stop (after saving the state) once this many steps have run in this invocation
    /// (for tests and interrupted runs; `None` = run to the end).
    pub stop_after_steps: Option<u64>,
    /// Fault injection for tests: the steps (0-based global iterations) whose loss is treated
    /// as non-finite, exactly as a NaN loss would be (no backward, no update, counted as
    /// skipped). Empty in normal runs.
    #[doc(hidden)]
    pub fault_nonfinite_steps: std::collections::BTreeSet<u64>,
}

/// File name of the periodic checkpoint written after `steps_done` iterations, if any:
/// `epoch_N.safetensors` at the end of epoch N (1-based), otherwise
/// `epoch_N_step_S.safetensors` (S = `steps_done`, inside epoch N) when S is a multiple of
/// `checkpoint_interval`. Distinct steps give distinct names, so no periodic checkpoint
/// overwrites another. `None` for a zero interval or epoch length, or `steps_done == 0`.
pub fn periodic_checkpoint_name(
    steps_done: u64,
    iterations_per_epoch: u64,
    checkpoint_interval: u64,
) -> Option<String> {
    if steps_done == 0 || iterations_per_epoch == 0 || checkpoint_interval == 0 {
        return None;
    }
    if steps_done.is_multiple_of(iterations_per_epoch) {
        return Some(format!(
            "epoch_{}.safetensors",
            steps_done / iterations_per_epoch
        ));
    }
    steps_done.is_multiple_of(checkpoint_interval).then(|| {
        format!(
            "epoch_{}_step_{steps_done}.safetensors",
            steps_done / iterations_per_epoch + 1
        )
    })
}

/// `work_dir/runs`.
pub fn runs_dir(cfg: &Config) -> PathBuf {
    cfg.paths.work_dir.join(RUNS_DIR)
}

/// `work_dir/logs.txt`.
pub fn log_path(cfg: &Config) -> PathBuf {
    cfg.paths.work_dir.join(LOG_FILE)
}

/// Throughput figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Steps run in this invocation.
    pub steps: u64,
    /// Training patches per second (wall time of the training loop without validation).
    pub patches_per_sec: f64,
    /// Mean model step time (forward, loss, backward, update), seconds.
    pub model_step_secs: f64,
    /// Fraction of the training-loop time spent waiting for data.
    pub data_wait_fraction: f64,
    /// Compute precision of the backbone in this invocation (`f32`, `bf16`).
    #[serde(default)]
    pub precision: String,
}

/// Summary written to `checkpoints/train_summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Settings this output depends on.
    pub fingerprint: serde_json::Value,
    /// Whether the run reached its last step.
    pub completed: bool,
    /// Optimiser steps done (global).
    pub steps: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Iterations per epoch.
    pub iterations_per_epoch: u64,
    /// Steps skipped for a non-finite loss or gradient.
    pub nonfinite_steps: u64,
    /// Last validation.
    pub last_val: Option<ValMetrics>,
    /// Best validation.
    pub best_val: Option<ValMetrics>,
    /// Validation of the untrained model (step 0), the baseline.
    pub untrained_val: Option<ValMetrics>,
    /// Throughput of the last invocation.
    pub throughput: Throughput,
    /// Slides excluded (with the reason).
    pub excluded: Vec<String>,
    /// Whether the run learns: `learning`, `at_chance` (see [`chance`]) or `unknown`.
    #[serde(default)]
    pub learning: chance::Learning,
    /// What to try when the run is at chance (empty otherwise).
    #[serde(default)]
    pub learning_advice: String,
    /// Every validation's loss-vs-constant and val-vs-constant-map check.
    #[serde(default)]
    pub chance_checks: Vec<chance::ChanceCheck>,
}

/// Result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Stage report.
    pub report: StageReport,
    /// The summary written.
    pub summary: TrainSummary,
}

/// Resumable state (JSON in the metadata of [`STATE_FILE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainState {
    /// Optimiser steps done = global index of the next batch.
    next_step: u64,
    /// Sampler cursor of the next batch.
    sampler: SamplerState,
    /// AdamW update counts per parameter path.
    adam_counts: BTreeMap<String, u64>,
    consecutive_nonfinite: u64,
    total_nonfinite: u64,
    best_val: Option<ValMetrics>,
    last_val: Option<ValMetrics>,
    #[serde(default)]
    untrained_val: Option<ValMetrics>,
    fingerprint: serde_json::Value,
    #[serde(default)]
    constant_loss: chance::ConstantLoss,
    #[serde(default)]
    chance: chance::ChanceMonitor,
}

fn data_err(message: impl Into<String>) -> PipelineError {
    PipelineError::Data {
        stage: STAGE,
        message: message.into(),
    }
}

fn model_err(e: impl std::fmt::Display) -> PipelineError {
    data_err(e.to_string())
}

/// Settings a resumed run must share with the run it continues (and that make outputs stale).
fn fingerprint(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "seed": cfg.seed,
        "class_order": cfg.class_order,
        "patch_size": cfg.patch_size,
        "k_list": cfg.prototypes.k_list,
        "model": cfg.model,
        "training": {
            "epochs": cfg.training.epochs,
            "batch_size": cfg.training.batch_size,
            "optimizer": cfg.training.optimizer,
            "scheduler": cfg.training.scheduler,
            "loss_weights": cfg.training.loss_weights,
            "iterations_per_epoch": cfg.training.iterations_per_epoch,
            "balance_classes": cfg.training.balance_classes,
            "grad_clip": cfg.training.grad_clip,
            "temperature": cfg.training.temperature,
            "mask_threshold": cfg.training.mask_threshold,
            "cam_mean_weight": cfg.training.cam_mean_weight,
            "augment": cfg.training.augment,
            "normalize": cfg.training.normalize,
        },
    })
}

/// Median network-input spacing of a slide set, µm per input pixel (first usable patch of every
/// slide with a known mpp), or None.
fn training_input_mpp(set: &SlideSet) -> Option<f64> {
    let mut v: Vec<f64> = set
        .slides()
        .iter()
        .enumerate()
        .filter_map(|(si, s)| {
            let (mpp, _) = s.slide.mpp()?;
            let row = *s.valid_rows.first()?;
            let info = set.locate(si, row).ok()?;
            Some(mpp * info.tile_size_lv0() / f64::from(info.out_size_px.max(1)))
        })
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Runs stage 3 from scratch (the `pbip run` entry point).
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<StageReport, PipelineError> {
    train(cfg, opts, &TrainOptions::default()).map(|o| o.report)
}

/// Whether stage 3's outputs are complete, newer than the prototypes and made with the same settings.
pub fn freshness(cfg: &Config) -> Freshness {
    let dir = output_dir(cfg);
    let Ok(summary) = crate::read_json::<TrainSummary>(&dir.join(SUMMARY_FILE)) else {
        return Freshness::Stale(format!("no previous {SUMMARY_FILE}"));
    };
    if !summary.completed {
        return Freshness::Stale(
            "the previous training did not finish (use `pbip train --resume`)".into(),
        );
    }
    if summary.fingerprint != fingerprint(cfg) {
        return Freshness::Stale("training settings changed since the last run".into());
    }
    crate::compare_mtimes(
        &[dir.join(LATEST_FILE), dir.join(SUMMARY_FILE)],
        &[s2::prototypes_path(cfg)],
    )
}

/// Appends lines to `logs.txt`.
struct RunLog {
    path: PathBuf,
    file: std::fs::File,
}

impl RunLog {
    fn open(path: &Path) -> Result<Self, PipelineError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| PipelineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RunLog {
            path: path.to_path_buf(),
            file,
        })
    }

    fn line(&mut self, text: &str) -> Result<(), PipelineError> {
        writeln!(self.file, "{text}").map_err(|source| PipelineError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn slide_set_options(cfg: &Config) -> SlideSetOptions {
    let mut o = SlideSetOptions::new(cfg.patch_size, cfg.num_classes());
    o.origin = match cfg.slide.coordinate_origin {
        pbip_config::CoordinateOrigin::TopLeft => CoordinateOrigin::TopLeft,
        pbip_config::CoordinateOrigin::Centre => CoordinateOrigin::Centre,
    };
    o.open.backend = match cfg.slide.backend {
        pbip_config::SlideBackend::Auto => pbip_data::SlideBackend::Auto,
        pbip_config::SlideBackend::Rust => pbip_data::SlideBackend::Rust,
        pbip_config::SlideBackend::Openslide => pbip_data::SlideBackend::OpenSlide,
    };
    o.open.cache_bytes =
        usize::try_from(cfg.slide.cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    o.open.background_rgb = cfg.slide.background;
    o.mask = MaskOptions::new(cfg.num_classes());
    o
}

/// The slide as the training and validation data see it: labels with `background_class`.
fn spec(cfg: &Config, e: &SlideEntry) -> SlideSpec {
    SlideSpec {
        name: e.name.clone(),
        slide_path: e.slide_path.clone(),
        coordinates_path: e.coordinates_path.clone(),
        labels: crate::settings::training_labels(cfg, &e.labels),
        gt_path: e.gt_path.clone(),
    }
}

/// Opens the slides of a split, excluding (with a warning) those without a usable coordinate.
fn open_split(
    cfg: &Config,
    entries: &[&SlideEntry],
    opts: &SlideSetOptions,
    split: &str,
    excluded: &mut Vec<String>,
) -> Result<Option<SlideSet>, PipelineError> {
    let mut keep = Vec::new();
    for e in entries {
        let s = spec(cfg, e);
        match SlideSet::open(std::slice::from_ref(&s), opts) {
            Ok(_) => keep.push(s),
            Err(pbip_data::DataError::NoUsableCoordinates {
                path,
                total,
                outside,
                ..
            }) => {
                let why = format!(
                    "{split} slide {:?} excluded: no usable coordinate in {} ({total} rows, {outside} outside the slide)",
                    e.name,
                    path.display()
                );
                tracing::warn!("{why}");
                excluded.push(why);
            }
            Err(err) => return Err(data_err(format!("{split} slide {:?}: {err}", e.name))),
        }
    }
    if keep.is_empty() {
        return Ok(None);
    }
    SlideSet::open(&keep, opts)
        .map(Some)
        .map_err(|e| data_err(format!("{split} slides: {e}")))
}

fn normalization(cfg: &Config) -> Result<Preprocess, PipelineError> {
    let n = &cfg.training.normalize;
    let order = match n.channel_order {
        pbip_config::ChannelOrder::Rgb => ChannelOrder::Rgb,
        pbip_config::ChannelOrder::Bgr => ChannelOrder::Bgr,
    };
    let norm = Normalization::from_slices(&n.mean, &n.std, order)
        .map_err(|e| data_err(format!("training.normalize: {e}")))?;
    Ok(Preprocess::MeanStd(norm))
}

fn loss_config(cfg: &Config) -> Result<LossConfig, PipelineError> {
    let t = &cfg.training;
    let sw: [f64; 4] = t
        .loss_weights
        .scale_weights
        .as_slice()
        .try_into()
        .map_err(|_| {
            data_err(format!(
                "training.loss_weights.scale_weights needs 4 values, got {}",
                t.loss_weights.scale_weights.len()
            ))
        })?;
    let c = LossConfig {
        scale_weights: sw,
        contrastive_weight: t.loss_weights.contrastive,
        temperature: t.temperature,
        mask_threshold: t.mask_threshold,
        cam_mean_weight: t.cam_mean_weight,
        tv_weight: t.loss_weights.cam_smooth,
        l1_weight: t.loss_weights.cam_sparsity,
        ..LossConfig::default()
    };
    c.validate().map_err(model_err)?;
    Ok(c)
}

/// The evaluation constants of the validation (`evaluation.*`, `validation.tta`).
pub fn eval_config(cfg: &Config) -> Result<EvalConfig, PipelineError> {
    crate::settings::eval_config(cfg, cfg.validation.tta)
}

/// The ClassNet architecture of the config for a prototype bank of width `proto_dim`.
pub fn classnet_config(
    cfg: &Config,
    k_list: &[usize],
    proto_dim: usize,
) -> Result<ClassNetConfig, PipelineError> {
    let strides: [usize; 4] = cfg
        .model
        .strides
        .iter()
        .map(|&s| s as usize)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| {
            data_err(format!(
                "model.strides needs 4 values, got {:?}",
                cfg.model.strides
            ))
        })?;
    let mut c = ClassNetConfig::new(cfg.model.backbone.as_str(), strides, k_list.to_vec())
        .map_err(model_err)?;
    c.proto_dim = proto_dim;
    c.head = crate::settings::head_config(cfg);
    Ok(c)
}

/// Reads the prototype bank and checks it against the config (class order, k_list).
pub fn load_prototypes(cfg: &Config) -> Result<(HostTensor, s2::PrototypesMeta), PipelineError> {
    let path = s2::prototypes_path(cfg);
    if !path.is_file() {
        return Err(data_err(format!(
            "prototype bank {} not found: run `pbip cluster-prototypes` (stages 0-2) first",
            path.display()
        )));
    }
    let (bank, meta) = s2::read_prototypes(&path)?;
    if meta.class_order != cfg.class_order {
        return Err(data_err(format!(
            "{}: prototype class_order {:?} differs from the config's class_order {:?}; rerun stages 0-2",
            path.display(),
            meta.class_order,
            cfg.class_order
        )));
    }
    if meta.k_list != cfg.prototypes.k_list {
        return Err(data_err(format!(
            "{}: prototype k_list {:?} differs from the config's prototypes.k_list {:?}; rerun stage 2",
            path.display(),
            meta.k_list,
            cfg.prototypes.k_list
        )));
    }
    let total: usize = meta.k_list.iter().sum();
    if bank.shape.len() != 2 || bank.shape[0] != total {
        return Err(data_err(format!(
            "{}: features have shape {:?}, expected [{total}, D]",
            path.display(),
            bank.shape
        )));
    }
    Ok((bank, meta))
}

/// Loss terms as host numbers (for logging).
#[derive(Debug, Clone, Copy, Default)]
struct LossValues {
    total: f64,
    cls: f64,
    fg: f64,
    bg: f64,
    cam_mean: f64,
    tv: f64,
    l1: f64,
    pairs: f64,
}

/// TensorBoard tags of the loss terms, in the order of [`LossValues::terms`].
const LOSS_TAGS: [&str; 8] = [
    "train/loss",
    "train/loss_cls",
    "train/loss_fg",
    "train/loss_bg",
    "train/cam_mean",
    "train/cam_tv",
    "train/cam_l1",
    "train/selected_pairs",
];

impl LossValues {
    /// The terms in the order of [`LOSS_TAGS`].
    fn terms(&self) -> [f64; 8] {
        [
            self.total,
            self.cls,
            self.fg,
            self.bg,
            self.cam_mean,
            self.tv,
            self.l1,
            self.pairs,
        ]
    }
    fn from_terms(t: [f64; 8]) -> Self {
        let [total, cls, fg, bg, cam_mean, tv, l1, pairs] = t;
        LossValues {
            total,
            cls,
            fg,
            bg,
            cam_mean,
            tv,
            l1,
            pairs,
        }
    }
    fn add(&mut self, o: &LossValues) {
        let mut t = self.terms();
        for (a, b) in t.iter_mut().zip(o.terms()) {
            *a += b;
        }
        *self = Self::from_terms(t);
    }
    fn scaled(&self, k: f64) -> LossValues {
        Self::from_terms(self.terms().map(|v| v * k))
    }
}

fn scalar(t: Tensor<1>) -> Result<f64, PipelineError> {
    let v = pbip_model::util::to_vec(t).map_err(model_err)?;
    Ok(v.first().copied().map_or(f64::NAN, f64::from))
}

/// The encoder used for FG/BG features (None when the contrastive weight is 0).
struct FeatureEncoder {
    model: EncoderModel,
    projected: bool,
    /// The bank's conditioning (mean `[1, D]`, matrix `[D, D]`), applied to the FG/BG features
    /// so they live where the prototypes do.
    conditioning: Option<(Tensor<2>, Option<Tensor<2>>)>,
}

impl FeatureEncoder {
    /// The saved encoder of stage 1 with the prototype bank's conditioning, on `device`.
    fn load(cfg: &Config, device: &Device) -> Result<Self, PipelineError> {
        let p = crate::encoder::saved_encoder_path(cfg);
        let (m, ident) = crate::encoder::load_saved_encoder(&p, device)?;
        let conditioning = match s2::read_conditioning(&s2::prototypes_path(cfg))? {
            None => None,
            Some((mean, matrix)) => {
                let d = mean.len();
                let mean: Tensor<2> = Tensor::from_data(TensorData::new(mean, [1, d]), device);
                let matrix = matrix.map(|w| -> Tensor<2> {
                    Tensor::from_data(TensorData::new(w, [d, d]), device)
                });
                Some((mean, matrix))
            }
        };
        Ok(FeatureEncoder {
            model: m.frozen(),
            projected: ident.kind != "hf_swin",
            conditioning,
        })
    }

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let f = if self.projected {
            self.model.forward(x)
        } else {
            self.model.pooled(x)
        };
        match &self.conditioning {
            None => f,
            Some((mean, matrix)) => {
                let c = pbip_model::util::l2_normalize(f, 1, 1e-12) - mean.clone();
                match matrix {
                    Some(w) => c.matmul(w.clone()),
                    None => c,
                }
            }
        }
    }
}

/// Multiple-instance settings of a run (`training.mil` with `bag_size` > 1).
#[derive(Debug, Clone, Copy)]
struct MilSettings {
    bag_size: usize,
    pooling: pbip_model::Pooling,
    negative_instances: bool,
    background: Option<usize>,
}

impl MilSettings {
    fn of(cfg: &Config) -> Option<Self> {
        crate::settings::uses_bags(cfg).then(|| MilSettings {
            bag_size: cfg.training.mil.bag_size,
            pooling: crate::settings::pooling(&cfg.training.mil.pool),
            negative_instances: cfg.training.mil.negative_instances,
            background: cfg.background_index(),
        })
    }

    /// The bag classification loss of a batch whose labels are `labels` `[B, N]` (bag `j` is
    /// rows `j·bag_size ..`; every row of a bag has the bag's slide label).
    fn loss(
        &self,
        out: &ClassNetOutput,
        labels: &[f32],
        n: usize,
        k_list: &[usize],
        lc: &LossConfig,
        device: &Device,
    ) -> Result<Tensor<1>, PipelineError> {
        let b = labels.len() / n.max(1);
        let nb = b / self.bag_size;
        let bag_labels: Vec<f32> = (0..nb)
            .flat_map(|j| labels[j * self.bag_size * n..j * self.bag_size * n + n].to_vec())
            .collect();
        let y: Tensor<2> = Tensor::from_data(TensorData::new(bag_labels, [nb, n]), device);
        pbip_model::mil_classification_loss(
            &out.cls,
            y,
            k_list,
            &lc.scale_weights,
            lc.merge,
            &pbip_model::MilBags {
                bag_size: self.bag_size,
                pooling: self.pooling,
                negative_instances: self.negative_instances,
                skip: self.background,
            },
        )
        .map_err(model_err)
    }
}

/// The training objective: the model stack's PBIP loss with the run's settings, the encoder of
/// the FG/BG features and the classification term of the run (bags, background class).
struct Objective {
    lc: LossConfig,
    /// The encoder of the FG/BG features (None when the contrastive weight is 0).
    encoder: Option<FeatureEncoder>,
    mil: Option<MilSettings>,
    /// `background_class`, left out of the classification loss.
    background: Option<usize>,
    /// The same classification loss for the constant predictor ([`chance::ConstantLoss`]).
    constant_rule: chance::LossRule,
}

impl Objective {
    /// The objective of `cfg` (loads the saved encoder when the contrastive weight is not 0).
    fn new(cfg: &Config, lc: LossConfig, device: &Device) -> Result<Self, PipelineError> {
        let mil = MilSettings::of(cfg);
        let encoder = if lc.contrastive_weight != 0.0 {
            Some(FeatureEncoder::load(cfg, device)?)
        } else {
            None
        };
        Ok(Objective {
            constant_rule: chance::LossRule {
                bag_size: cfg.training.mil.bag_size,
                scale_weights: lc.scale_weights,
                skip: cfg.background_index(),
                negative_instances: cfg.training.mil.negative_instances,
            },
            lc,
            encoder,
            mil,
            background: cfg.background_index(),
        })
    }

    /// Total loss (differentiable) and its components of a batch: `images`, `labels` `[B, N]`
    /// (also on the host, `host_labels`) and the model's output `out`.
    fn loss(
        &self,
        out: &ClassNetOutput,
        images: Tensor<4>,
        labels: Tensor<2>,
        host_labels: &[f32],
        k_list: &[usize],
    ) -> Result<(Tensor<1>, LossValues), PipelineError> {
        let (lc, background) = (&self.lc, self.background);
        let n = labels.dims()[1];
        let device = labels.device();
        // The classification term when it is not upstream's per-patch BCE over every class: bags
        // (multiple-instance learning), or a background class left out of the BCE.
        let mil_cls = match (&self.mil, background) {
            (Some(m), _) => Some(m.loss(out, host_labels, n, k_list, lc, &device)?),
            (None, Some(_)) => Some(
                pbip_model::classification_loss_excluding(
                    &out.cls,
                    labels.clone(),
                    k_list,
                    &lc.scale_weights,
                    lc.merge,
                    background,
                )
                .map_err(model_err)?,
            ),
            (None, None) => None,
        };
        if let Some(enc) = &self.encoder {
            let f = |x: Tensor<4>| enc.features(x);
            let mut lo =
                pbip_model::pbip_loss(out, images, labels, k_list, lc, &f).map_err(model_err)?;
            if let Some(c) = mil_cls {
                // Replaces upstream's per-patch classification term.
                lo.total = lo.total - lo.cls + c.clone();
                lo.cls = c;
            }
            let v = LossValues {
                total: scalar(lo.total.clone())?,
                cls: scalar(lo.cls.clone())?,
                fg: lo.fg.clone().map(scalar).transpose()?.unwrap_or(0.0),
                bg: lo.bg.clone().map(scalar).transpose()?.unwrap_or(0.0),
                cam_mean: scalar(lo.cam_mean.clone())?,
                tv: lo.tv.clone().map(scalar).transpose()?.unwrap_or(0.0),
                l1: lo.l1.clone().map(scalar).transpose()?.unwrap_or(0.0),
                pairs: lo.pairs.len() as f64,
            };
            return Ok((lo.total, v));
        }
        // Contrastive weight 0: classification + CAM regularisers, no encoder pass.
        let cls = match mil_cls {
            Some(c) => c,
            None => pbip_model::classification_loss(
                &out.cls,
                labels,
                k_list,
                &lc.scale_weights,
                lc.merge,
            )
            .map_err(model_err)?,
        };
        let cam4 = out.cam[3].clone();
        let cm = pbip_model::cam_mean(cam4.clone());
        let mut total = cls.clone();
        let mut v = LossValues {
            cls: scalar(cls)?,
            cam_mean: scalar(cm)?,
            ..LossValues::default()
        };
        if lc.tv_weight != 0.0 {
            let tv = pbip_model::cam_total_variation(cam4.clone());
            v.tv = scalar(tv.clone())?;
            total = total + tv * lc.tv_weight;
        }
        if lc.l1_weight != 0.0 {
            let l1 = pbip_model::cam_l1(cam4);
            v.l1 = scalar(l1.clone())?;
            total = total + l1 * lc.l1_weight;
        }
        v.total = scalar(total.clone())?;
        Ok((total, v))
    }
}

/// Serialises (seed, forward) pairs of concurrent trainings in one process.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seed of the DropPath masks of global step `g` (SplitMix64 of seed and step).
fn step_seed(seed: u64, g: u64) -> u64 {
    let mut z = seed ^ g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the checkpoints of a run (weights + prototypes, metadata).
struct Checkpointer {
    dir: PathBuf,
    ncfg: ClassNetConfig,
    /// The metadata of every checkpoint (config, class order, prototypes, encoder, input mpp).
    base_meta: BTreeMap<String, String>,
}

impl Checkpointer {
    fn new(
        cfg: &Config,
        ncfg: ClassNetConfig,
        pmeta: &s2::PrototypesMeta,
        input_mpp: Option<f64>,
    ) -> Result<Self, PipelineError> {
        let mut base_meta = BTreeMap::new();
        base_meta.insert("pbip_config".into(), cfg.to_yaml_string()?);
        base_meta.insert(
            "class_order".into(),
            serde_json::to_string(&cfg.class_order).map_err(model_err)?,
        );
        base_meta.insert(
            "prototypes_file".into(),
            s2::prototypes_path(cfg).display().to_string(),
        );
        base_meta.insert(
            "encoder".into(),
            serde_json::to_string(&pmeta.encoder).map_err(model_err)?,
        );
        if let Some(mpp) = input_mpp {
            base_meta.insert(INPUT_MPP_KEY.into(), format!("{mpp}"));
        }
        Ok(Checkpointer {
            dir: output_dir(cfg),
            ncfg,
            base_meta,
        })
    }

    fn save(
        &self,
        model: &ClassNet,
        name: &str,
        step: u64,
        epoch: u64,
        val: Option<&ValMetrics>,
    ) -> Result<PathBuf, PipelineError> {
        let mut meta = self.base_meta.clone();
        meta.insert("step".into(), step.to_string());
        meta.insert("epoch".into(), epoch.to_string());
        if let Some(v) = val {
            meta.insert(
                "metrics".into(),
                serde_json::to_string(v).map_err(model_err)?,
            );
            meta.insert("gate_threshold".into(), v.gate_threshold.to_string());
        } else {
            meta.insert(
                "gate_threshold".into(),
                validate::DEFAULT_THRESHOLD.to_string(),
            );
        }
        let path = self.dir.join(name);
        model
            .save_safetensors(&path, &self.ncfg, &meta)
            .map_err(|e| data_err(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

fn save_state(
    path: &Path,
    model: &ClassNet,
    opt: &AdamW,
    st: &TrainState,
) -> Result<(), PipelineError> {
    let mut map: TensorMap = model
        .to_tensor_map()
        .map_err(model_err)?
        .into_iter()
        .map(|(k, v)| (format!("param.{k}"), v))
        .collect();
    let counts = opt.to_tensors(&mut map);
    let mut st = st.clone();
    st.adam_counts = counts;
    let mut meta = BTreeMap::new();
    meta.insert(
        STATE_META_KEY.to_string(),
        serde_json::to_string(&st).map_err(model_err)?,
    );
    pbip_weights::write_safetensors_atomic(path, &map, &meta)
        .map_err(|e| data_err(format!("{}: {e}", path.display())))
}

fn load_state(path: &Path) -> Result<(TensorMap, TensorMap, TrainState), PipelineError> {
    if !path.is_file() {
        return Err(data_err(format!(
            "--resume: no training state {} (nothing to resume)",
            path.display()
        )));
    }
    let (map, meta) = pbip_weights::read_safetensors(path)
        .map_err(|e| data_err(format!("{}: {e}", path.display())))?;
    let json = meta
        .get(STATE_META_KEY)
        .ok_or_else(|| data_err(format!("{}: not a pbip training state", path.display())))?;
    let st: TrainState = serde_json::from_str(json).map_err(|e| PipelineError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut params = TensorMap::new();
    let mut rest = TensorMap::new();
    for (k, v) in map {
        match k.strip_prefix("param.") {
            Some(p) => {
                params.insert(p.to_string(), v);
            }
            None => {
                rest.insert(k, v);
            }
        }
    }
    Ok((params, rest, st))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.4}"))
}

fn val_line(v: &ValMetrics, epoch: u64) -> String {
    format!(
        "val step {} epoch {}: patches {} slides {} (with GT {}) auc {} acc {} patch-auc {} miou {} (gate threshold {:.3}; at 0.5: {}) dice {} precision {} recall {} iou/class [{}] constant-map miou {}",
        v.step,
        epoch,
        v.patches,
        v.slides,
        v.slides_with_gt,
        fmt_opt(v.auc),
        fmt_opt(v.accuracy),
        fmt_opt(v.patch_auc),
        fmt_opt(v.miou),
        v.gate_threshold,
        fmt_opt(v.miou_at_default),
        fmt_opt(v.mean_dice),
        fmt_opt(v.mean_precision),
        fmt_opt(v.mean_recall),
        v.iou
            .iter()
            .map(|x| fmt_opt(*x))
            .collect::<Vec<_>>()
            .join(" "),
        fmt_opt(v.constant_map_miou),
    )
}

fn tb_val(
    tb: &mut pbip_tensorboard::EventWriter,
    v: &ValMetrics,
    class_order: &[String],
) -> Result<(), PipelineError> {
    let step = v.step as i64;
    let mut vals: Vec<(String, f32)> = vec![("val/gate_threshold".into(), v.gate_threshold as f32)];
    let mut push = |k: &str, x: Option<f64>| {
        if let Some(x) = x {
            vals.push((k.to_string(), x as f32));
        }
    };
    push("val/auc", v.auc);
    push("val/accuracy", v.accuracy);
    push("val/patch_auc", v.patch_auc);
    push("val/miou", v.miou);
    push("val/miou_at_0.5", v.miou_at_default);
    push("val/dice", v.mean_dice);
    push("val/precision", v.mean_precision);
    push("val/recall", v.mean_recall);
    push("val/constant_map_miou", v.constant_map_miou);
    for (i, c) in class_order.iter().enumerate() {
        push(&format!("val/iou/{c}"), v.iou.get(i).copied().flatten());
        push(&format!("val/dice/{c}"), v.dice.get(i).copied().flatten());
    }
    let refs: Vec<(&str, f32)> = vals.iter().map(|(k, x)| (k.as_str(), *x)).collect();
    tb.add_scalars(&refs, step).map_err(model_err)
}

fn write_nonfinite(
    path: &Path,
    batch: &PatchBatch,
    step: u64,
    what: &str,
) -> Result<(), PipelineError> {
    let mut map = TensorMap::new();
    map.insert(
        "images".into(),
        HostTensor {
            shape: batch.shape().to_vec(),
            data: batch.data.clone(),
        },
    );
    map.insert(
        "labels".into(),
        HostTensor {
            shape: vec![batch.n, batch.num_classes],
            data: batch.labels.clone(),
        },
    );
    let patches: Vec<serde_json::Value> = batch
        .info
        .iter()
        .map(|i| {
            serde_json::json!({"slide": i.slide_name, "row": i.row, "x_lv0": i.x_lv0, "y_lv0": i.y_lv0,
                "level": i.level, "read_size_px": i.read_size_px, "aug": i.aug})
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("step".into(), step.to_string());
    meta.insert("reason".into(), what.to_string());
    meta.insert(
        "patches".into(),
        serde_json::Value::Array(patches).to_string(),
    );
    pbip_weights::write_safetensors_atomic(path, &map, &meta)
        .map_err(|e| data_err(format!("{}: {e}", path.display())))
}

/// Trains (or resumes) and returns the outcome.
pub fn train(
    cfg: &Config,
    opts: &RunOptions,
    topts: &TrainOptions,
) -> Result<TrainOutcome, PipelineError> {
    let mut trainer = Trainer::new(cfg, opts, topts)?;
    trainer.validate_untrained()?;
    while let Some(batch) = trainer.loader.next_batch() {
        trainer = trainer.step(batch.map_err(model_err)?)?;
    }
    trainer.finish()
}

/// The training keys that must be positive.
fn check_training_settings(t: &pbip_config::Training) -> Result<(), PipelineError> {
    if t.batch_size == 0 || t.epochs == 0 {
        return Err(data_err(
            "training.batch_size and training.epochs must be > 0",
        ));
    }
    if t.validation_interval == 0 || t.checkpoint_interval == 0 || t.log_interval == 0 {
        return Err(data_err(
            "training.validation_interval, checkpoint_interval and log_interval must be > 0",
        ));
    }
    Ok(())
}

/// Creates the output folders (checkpoints, TensorBoard runs), opens `logs.txt` and writes the
/// resolved config next to the checkpoints.
fn open_outputs(cfg: &Config) -> Result<RunLog, PipelineError> {
    for dir in [output_dir(cfg), runs_dir(cfg)] {
        std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let log = RunLog::open(&log_path(cfg))?;
    cfg.write_resolved(&output_dir(cfg))?;
    Ok(log)
}

/// The slides of a run: the training set, the validation set (if any) and which val slides have
/// a GT mask; the slides left out are in `excluded` (with the reason, also logged).
struct Splits {
    train: SlideSet,
    val: Option<SlideSet>,
    has_gt: Vec<bool>,
    excluded: Vec<String>,
}

impl Splits {
    fn open(
        cfg: &Config,
        train_entries: &[&SlideEntry],
        val_entries: &[&SlideEntry],
        log: &mut RunLog,
    ) -> Result<Self, PipelineError> {
        let sopts = slide_set_options(cfg);
        let mut excluded = Vec::new();
        let train = open_split(cfg, train_entries, &sopts, "train", &mut excluded)?
            .ok_or_else(|| data_err("no training slide has a usable coordinate"))?;
        let val = if val_entries.is_empty() {
            None
        } else {
            open_split(cfg, val_entries, &sopts, "val", &mut excluded)?
        };
        let mut has_gt = Vec::new();
        if let Some(vs) = &val {
            for s in vs.slides() {
                let ok = s.spec.gt_path.as_ref().is_some_and(|p| p.is_file());
                if !ok && cfg.paths.gt_dir.is_some() {
                    let why = format!(
                        "val slide {:?}: no GT mask in {:?}: excluded from the segmentation metrics (still in AUC)",
                        s.spec.name, cfg.paths.gt_dir
                    );
                    tracing::warn!("{why}");
                    excluded.push(why);
                }
                has_gt.push(ok);
            }
        }
        for e in &excluded {
            log.line(&format!("warning: {e}"))?;
        }
        Ok(Splits {
            train,
            val,
            has_gt,
            excluded,
        })
    }
}

/// The AdamW settings of the config.
fn adamw_options(t: &pbip_config::Training) -> AdamWOptions {
    AdamWOptions {
        beta1: t.optimizer.betas[0],
        beta2: t.optimizer.betas[1],
        eps: t.optimizer.eps,
        weight_decay: t.optimizer.weight_decay,
        grad_clip: t.grad_clip,
    }
}

/// The weights and training state a `--resume` continues from (AdamW's moments and counts are
/// loaded into `adamw`); the state must have been written with the settings `fp`.
fn resume_from(
    state_path: &Path,
    fp: &serde_json::Value,
    adamw: &mut AdamW,
) -> Result<(TensorMap, TrainState), PipelineError> {
    let (params, rest, st) = load_state(state_path)?;
    if st.fingerprint != *fp {
        return Err(data_err(format!(
            "--resume: {} was written with different settings (seed, model, prototypes k_list or training keys); resume with the same config, or train from scratch",
            state_path.display()
        )));
    }
    adamw
        .load_tensors(&rest, &st.adam_counts)
        .map_err(|e| data_err(format!("{}: {e}", state_path.display())))?;
    Ok((params, st))
}

/// The model a fresh run starts from: the pretrained backbone of `model.pretrained`, or the
/// seeded random initialisation.
fn fresh_model(
    cfg: &Config,
    ncfg: &ClassNetConfig,
    bank: &HostTensor,
    device: &Device,
) -> Result<ClassNet, PipelineError> {
    match &cfg.model.pretrained {
        Some(v) => {
            let p = &crate::encoder::weights_file(v, "model.pretrained")?;
            ClassNet::with_pretrained_backbone_file(p, ncfg, bank, cfg.seed, device)
                .map_err(|e| data_err(format!("{}: {e}", p.display())))
        }
        None => ClassNet::init(ncfg, bank, cfg.seed, device).map_err(model_err),
    }
}

/// The sampler, augmentation and normalisation of the training batches.
fn train_plan(
    cfg: &Config,
    train_set: Arc<SlideSet>,
    preprocess: Preprocess,
) -> Result<TrainPlan, PipelineError> {
    let t = &cfg.training;
    TrainPlan::new(
        train_set,
        SamplerOptions {
            seed: cfg.seed,
            batch_size: t.batch_size,
            balance: if t.balance_classes {
                Balance::Classes
            } else {
                Balance::Slides
            },
            iterations_per_epoch: t.iterations_per_epoch.map(|v| v as u64),
            bag_size: t.mil.bag_size,
            background_class: cfg.background_index(),
        },
        AugmentOptions {
            hflip: t.augment.hflip,
            vflip: t.augment.vflip,
            rot90: t.augment.rot90,
            color_jitter: t.augment.color_jitter,
            stain_jitter: t.augment.stain_jitter,
            ..AugmentOptions::default()
        },
        preprocess,
    )
    .map_err(model_err)
}

/// The learning-rate schedule of `training.scheduler` over `ipe` iterations per epoch.
fn lr_schedule(t: &pbip_config::Training, ipe: u64) -> Result<LrSchedule, PipelineError> {
    // Upstream's poly schedule has no warmup (PolyWarmupAdamW, warmup_iter 0).
    let warmup = if t.scheduler.kind == SchedulerType::Poly {
        0.0
    } else {
        t.scheduler.warmup_epochs
    };
    LrSchedule::from_options(&ScheduleOptions {
        kind: match t.scheduler.kind {
            SchedulerType::Cosine => ScheduleKind::Cosine,
            SchedulerType::Poly => ScheduleKind::Poly,
            SchedulerType::Constant => ScheduleKind::Constant,
        },
        base_lr: t.optimizer.lr,
        min_lr: 0.0,
        warmup_epochs: warmup,
        power: t.scheduler.power,
        epochs: t.epochs as u64,
        iterations_per_epoch: ipe,
    })
    .map_err(|e| data_err(format!("training.scheduler: {e}")))
}

impl TrainState {
    /// The state of a run that has not started.
    fn fresh(sampler: SamplerState, fingerprint: serde_json::Value) -> Self {
        TrainState {
            next_step: 0,
            sampler,
            adam_counts: BTreeMap::new(),
            consecutive_nonfinite: 0,
            total_nonfinite: 0,
            best_val: None,
            last_val: None,
            untrained_val: None,
            fingerprint,
            constant_loss: chance::ConstantLoss::default(),
            chance: chance::ChanceMonitor::default(),
        }
    }
}

/// The validation of a run: the val patches and how they are scored.
struct Validation {
    plan: EvalPlan,
    settings: ValSettings,
}

impl Validation {
    /// The validation over `val_set` (None without a val split).
    fn new(
        cfg: &Config,
        val_set: Option<&SlideSet>,
        eval: EvalConfig,
        has_gt: Vec<bool>,
    ) -> Result<Option<Self>, PipelineError> {
        let plan = match val_set {
            Some(vs) => Some(
                EvalPlan::new(
                    Arc::new(
                        SlideSet::open(
                            &vs.slides()
                                .iter()
                                .map(|s| s.spec.clone())
                                .collect::<Vec<_>>(),
                            &slide_set_options(cfg),
                        )
                        .map_err(model_err)?,
                    ),
                    crate::settings::patches_per_slide(cfg.validation.patches_per_slide),
                    cfg.training.batch_size,
                    normalization(cfg)?,
                    false,
                )
                .map_err(model_err)?,
            ),
            None => None,
        };
        Ok(plan.map(|plan| Validation {
            plan,
            settings: ValSettings {
                eval,
                has_gt,
                slide_pool: crate::settings::slide_pooling(cfg),
            },
        }))
    }
}

/// Where a run stands in its iterations.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Iterations per epoch.
    ipe: u64,
    /// Iterations of the whole run.
    total_steps: u64,
    /// First iteration of this invocation (> 0 when resumed).
    start_step: u64,
    /// The iteration this invocation stops at (`stop_after_steps`, else `total_steps`).
    end_step: u64,
}

/// The first log line of a run.
fn header_line(
    cfg: &Config,
    span: &Span,
    train_slides: usize,
    val_slides: usize,
    contrastive_weight: f64,
) -> String {
    let t = &cfg.training;
    let start_step = span.start_step;
    format!(
        "{} training: {} train slides, {} val slides, {} iterations/epoch x {} epochs = {} steps, batch {}, backbone {}, lr {} ({:?}), contrastive weight {}{}",
        if start_step > 0 { "resumed" } else { "started" },
        train_slides,
        val_slides,
        span.ipe,
        t.epochs,
        span.total_steps,
        t.batch_size,
        cfg.model.backbone.as_str(),
        t.optimizer.lr,
        t.scheduler.kind,
        contrastive_weight,
        if start_step > 0 {
            format!(", from step {start_step}")
        } else {
            String::new()
        },
    )
}

/// The progress bar of the training steps (hidden without `opts.progress`).
fn progress_bar(opts: &RunOptions, span: &Span) -> indicatif::ProgressBar {
    let pb = crate::progress::progress_bar(
        opts.progress,
        span.total_steps,
        "{msg} [{bar:30}] {pos}/{len} ETA {eta}",
        "",
    );
    pb.set_position(span.start_step);
    pb
}

/// Timing of the training loop (validation excluded) and the current logging interval.
struct LoopClock {
    loop_start: Instant,
    /// Seconds spent validating inside the loop.
    val_secs: f64,
    /// Seconds of forward, loss, backward and update.
    model_secs: f64,
    /// Steps run in this invocation.
    steps_run: u64,
    interval_start: Instant,
    /// The loader's wait time at the start of the interval.
    interval_wait: f64,
    /// Sum of the loss terms of the interval's finite steps, and their count.
    acc: LossValues,
    acc_n: u64,
}

impl LoopClock {
    fn start() -> Self {
        LoopClock {
            loop_start: Instant::now(),
            val_secs: 0.0,
            model_secs: 0.0,
            steps_run: 0,
            interval_start: Instant::now(),
            interval_wait: 0.0,
            acc: LossValues::default(),
            acc_n: 0,
        }
    }
}

/// A training run in progress: the model and its optimiser, the data, the state `--resume`
/// continues from, and where the run writes.
struct Trainer<'a> {
    cfg: &'a Config,
    topts: &'a TrainOptions,
    /// The autodiff device.
    device: Device,
    model: ClassNet,
    adamw: AdamW,
    objective: Objective,
    schedule: LrSchedule,
    loader: TrainLoader,
    validation: Option<Validation>,
    st: TrainState,
    span: Span,
    ckpt: Checkpointer,
    state_path: PathBuf,
    log: RunLog,
    tb: pbip_tensorboard::EventWriter,
    pb: indicatif::ProgressBar,
    clock: LoopClock,
    excluded: Vec<String>,
}

impl<'a> Trainer<'a> {
    /// Reads the data, prototypes and config, builds (or resumes) the model and starts the
    /// loader; logs the run's first line.
    fn new(
        cfg: &'a Config,
        opts: &RunOptions,
        topts: &'a TrainOptions,
    ) -> Result<Self, PipelineError> {
        let t = &cfg.training;
        check_training_settings(t)?;
        let lc = loss_config(cfg)?;
        let ecfg = eval_config(cfg)?;
        let preprocess = normalization(cfg)?;

        // Data.
        let dataset = Dataset::load(cfg)?;
        for w in &dataset.warnings {
            tracing::warn!("{w}");
        }
        let train_entries = dataset.split(Split::Train);
        let val_entries = dataset.split(Split::Val);
        if train_entries.is_empty() {
            return Err(data_err("the training split is empty"));
        }
        check_training_labels(cfg, &train_entries)?;
        let (bank, pmeta) = load_prototypes(cfg)?;
        let ncfg = classnet_config(cfg, &pmeta.k_list, bank.shape[1])?;
        let mut log = open_outputs(cfg)?;
        let splits = Splits::open(cfg, &train_entries, &val_entries, &mut log)?;

        // Model and optimiser.
        let device: Device = crate::settings::compute_device(cfg)?.autodiff();
        let state_path = output_dir(cfg).join(STATE_FILE);
        let fp = fingerprint(cfg);
        let mut adamw = AdamW::new(adamw_options(t));
        let (model, resumed) = if topts.resume {
            let (params, st) = resume_from(&state_path, &fp, &mut adamw)?;
            let m = ClassNet::load_upstream(&params, &ncfg, &bank, &device)
                .map_err(|e| data_err(format!("{}: {e}", state_path.display())))?;
            (m, Some(st))
        } else {
            (fresh_model(cfg, &ncfg, &bank, &device)?, None)
        };
        let mut model = optim::materialize(model).map_err(data_err)?;
        model.set_precision(crate::settings::precision(
            cfg,
            t.precision,
            "training.precision",
        )?);
        let objective = Objective::new(cfg, lc, &device)?;

        // Sampler, schedule, loader.
        let train_set = Arc::new(splits.train);
        let input_mpp = training_input_mpp(&train_set);
        let plan = train_plan(cfg, Arc::clone(&train_set), preprocess)?;
        let ipe = plan.sampler.iterations_per_epoch();
        let total_steps = (t.epochs as u64)
            .checked_mul(ipe)
            .ok_or_else(|| data_err("epochs x iterations overflow"))?;
        let schedule = lr_schedule(t, ipe)?;
        let st = match resumed {
            Some(s) => s,
            None => TrainState::fresh(plan.sampler.initial_state(), fp),
        };
        plan.sampler
            .check_state(&st.sampler)
            .map_err(|e| data_err(format!("--resume: {e}")))?;
        let start_step = st.next_step;
        let end_step = match topts.stop_after_steps {
            Some(k) => (start_step + k).min(total_steps),
            None => total_steps,
        };
        let span = Span {
            ipe,
            total_steps,
            start_step,
            end_step,
        };
        let num_workers = if t.num_workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            t.num_workers
        };
        let loader = TrainLoader::new(
            plan,
            st.sampler,
            Some(end_step),
            LoaderOptions {
                num_workers,
                prefetch: t.prefetch,
            },
        )
        .map_err(model_err)?;
        let validation = Validation::new(cfg, splits.val.as_ref(), ecfg, splits.has_gt)?;

        let tb = pbip_tensorboard::EventWriter::create(runs_dir(cfg)).map_err(model_err)?;
        let ckpt = Checkpointer::new(cfg, ncfg, &pmeta, input_mpp)?;
        let header = header_line(
            cfg,
            &span,
            loader.sampler().slides().len(),
            validation.as_ref().map_or(0, |v| v.plan.set.len()),
            objective.lc.contrastive_weight,
        );
        tracing::info!("{header}");
        log.line(&header)?;
        let pb = progress_bar(opts, &span);
        Ok(Trainer {
            cfg,
            topts,
            device,
            model,
            adamw,
            objective,
            schedule,
            loader,
            validation,
            st,
            span,
            ckpt,
            state_path,
            log,
            tb,
            pb,
            clock: LoopClock::start(),
            excluded: splits.excluded,
        })
    }

    /// The validation of the current model at `step` (None without a val split).
    fn run_validation(&self, step: u64) -> Result<Option<ValMetrics>, PipelineError> {
        match &self.validation {
            Some(v) => validate(&self.model.valid(), &v.plan, &v.settings, step).map(Some),
            None => Ok(None),
        }
    }

    /// Baseline: the untrained model under the same validation (fresh runs only).
    fn validate_untrained(&mut self) -> Result<(), PipelineError> {
        if self.span.start_step == 0
            && self.span.end_step > 0
            && let Some(v) = self.run_validation(0)?
        {
            tb_val(&mut self.tb, &v, &self.cfg.class_order)?;
            let line = format!("untrained {}", val_line(&v, 0));
            tracing::info!("{line}");
            self.log.line(&line)?;
            self.st.untrained_val = Some(v);
        }
        Ok(())
    }

    /// One iteration: forward, loss, backward and AdamW update (or a skipped step when the loss
    /// or gradient is not finite), then the logging, validation and checkpoints due after it.
    /// Takes the trainer by value because AdamW returns the updated model.
    fn step(mut self, batch: PatchBatch) -> Result<Self, PipelineError> {
        let g = self.st.next_step;
        let t0 = Instant::now();
        let lr = self.schedule.lr_at(g);
        let (loss, values) = self.forward(&batch, g)?;
        let mut bad = self.nonfinite_loss(g, &values);
        let mut grad_norm = f64::NAN;
        if bad.is_none() {
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            let host = AdamW::collect_grads(&self.model, &grads).map_err(data_err)?;
            let (norm, finite) = AdamW::grad_norm(&host);
            grad_norm = norm;
            if !finite {
                bad = Some("non-finite gradient".into());
            } else {
                let (m, _) = self.adamw.step(self.model, host, lr).map_err(data_err)?;
                self.model = m;
            }
        }
        self.clock.model_secs += t0.elapsed().as_secs_f64();
        self.st.next_step = g + 1;
        self.st.sampler = self.loader.state();
        self.clock.steps_run += 1;
        match bad {
            Some(why) => self.skip_step(&batch, g, &why)?,
            None => self.record_step(&batch, &values),
        }
        self.report_progress(g, lr, grad_norm, &values)?;
        self.validate_and_checkpoint(g)?;
        Ok(self)
    }

    /// The forward pass (DropPath masks seeded by the step) and the loss of a batch.
    fn forward(
        &self,
        batch: &PatchBatch,
        g: u64,
    ) -> Result<(Tensor<1>, LossValues), PipelineError> {
        let [b, c, h, w] = batch.shape();
        let images: Tensor<4> = Tensor::from_data(
            TensorData::new(batch.data.clone(), [b, c, h, w]),
            &self.device,
        );
        let labels: Tensor<2> = Tensor::from_data(
            TensorData::new(batch.labels.clone(), [b, batch.num_classes]),
            &self.device,
        );
        let out = {
            // The backend RNG (DropPath masks) is process-global: seed it per step and keep other
            // trainings in this process from drawing from it in between (bit-exact resume).
            let _guard = RNG_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            self.device.seed(step_seed(self.cfg.seed, g));
            self.model
                .try_forward(images.clone(), true)
                .map_err(model_err)?
        };
        self.objective
            .loss(&out, images, labels, &batch.labels, &self.model.k_list)
    }

    /// Why the loss of step `g` does not count (non-finite, or an injected fault), if so.
    fn nonfinite_loss(&self, g: u64, values: &LossValues) -> Option<String> {
        if self.topts.fault_nonfinite_steps.contains(&g) {
            Some(format!(
                "non-finite loss (injected fault, true loss {})",
                values.total
            ))
        } else if !values.total.is_finite() {
            Some(format!(
                "non-finite loss {} (cls {}, fg {}, bg {})",
                values.total, values.cls, values.fg, values.bg
            ))
        } else {
            None
        }
    }

    /// A skipped step: counted and logged; `training.max_nonfinite_steps` in a row stop the run
    /// after writing the batch to `checkpoints/nonfinite.safetensors`.
    fn skip_step(&mut self, batch: &PatchBatch, g: u64, why: &str) -> Result<(), PipelineError> {
        let st = &mut self.st;
        st.consecutive_nonfinite += 1;
        st.total_nonfinite += 1;
        let slides: Vec<String> = batch
            .info
            .iter()
            .map(|i| format!("{}@({},{})", i.slide_name, i.x_lv0, i.y_lv0))
            .collect();
        let line = format!(
            "step {g}: {why}: step skipped ({} in a row); batch {}",
            st.consecutive_nonfinite,
            slides.join(" ")
        );
        tracing::warn!("{line}");
        self.log.line(&line)?;
        if st.consecutive_nonfinite >= self.cfg.training.max_nonfinite_steps.max(1) as u64 {
            let p = self.ckpt.dir.join(NONFINITE_FILE);
            write_nonfinite(&p, batch, g, why)?;
            return Err(data_err(format!(
                "{} consecutive steps with a non-finite loss or gradient (training.max_nonfinite_steps), last at step {g}: {why}; the last batch is in {} (slides and coordinates in its metadata). Lower training.optimizer.lr or set training.grad_clip",
                st.consecutive_nonfinite,
                p.display()
            )));
        }
        Ok(())
    }

    /// A finite step: its loss terms join the logging interval and the learning check.
    fn record_step(&mut self, batch: &PatchBatch, values: &LossValues) {
        self.st.consecutive_nonfinite = 0;
        self.clock.acc.add(values);
        self.clock.acc_n += 1;
        self.st.constant_loss.add_batch(
            &batch.labels,
            batch.num_classes,
            &self.objective.constant_rule,
            values.cls,
        );
    }

    /// The progress bar after step `g`, and the interval's figures every `log_interval` steps.
    fn report_progress(
        &mut self,
        g: u64,
        lr: f64,
        grad_norm: f64,
        values: &LossValues,
    ) -> Result<(), PipelineError> {
        let t = &self.cfg.training;
        let (done, epoch) = (g + 1, g / self.span.ipe);
        let clock = &mut self.clock;
        let stats = self.loader.stats();
        self.pb.set_position(done);
        let elapsed = clock.loop_start.elapsed().as_secs_f64() - clock.val_secs;
        self.pb.set_message(format!(
            "{}epoch {}/{} step {done} loss {:.4} lr {:.2e} {:.1} patches/s",
            if self.st.chance.learning == chance::Learning::AtChance {
                "AT CHANCE "
            } else {
                ""
            },
            epoch + 1,
            t.epochs,
            values.total,
            lr,
            (clock.steps_run * t.batch_size as u64) as f64 / elapsed.max(1e-9)
        ));
        if done % t.log_interval as u64 == 0 || done == self.span.end_step {
            let mean = if clock.acc_n > 0 {
                clock.acc.scaled(1.0 / clock.acc_n as f64)
            } else {
                LossValues::default()
            };
            let iv = clock.interval_start.elapsed().as_secs_f64();
            let wait_now = stats.wait_secs - clock.interval_wait;
            let wait_frac = if iv > 0.0 {
                (wait_now / iv).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let pps = (clock.steps_run * t.batch_size as u64) as f64 / elapsed.max(1e-9);
            write_interval(
                &IntervalStats {
                    done,
                    total_steps: self.span.total_steps,
                    epoch: epoch + 1,
                    mean,
                    lr,
                    grad_norm,
                    wait_frac,
                    patches_per_sec: pps,
                    nonfinite_steps: self.st.total_nonfinite,
                },
                &mut self.tb,
                &mut self.log,
            )?;
            clock.acc = LossValues::default();
            clock.acc_n = 0;
            clock.interval_start = Instant::now();
            clock.interval_wait = stats.wait_secs;
        }
        Ok(())
    }

    /// After step `g`: the validation (every `validation_interval` steps, at each epoch end and
    /// at the end) with `best`, `latest` and the state file, the learning check, and the
    /// periodic checkpoints.
    fn validate_and_checkpoint(&mut self, g: u64) -> Result<(), PipelineError> {
        let t = &self.cfg.training;
        let (done, epoch) = (g + 1, g / self.span.ipe);
        let epoch_end = done % self.span.ipe == 0;
        let finished = done == self.span.total_steps;
        let do_val = done % t.validation_interval as u64 == 0 || epoch_end || finished;
        let mut saved_latest = false;
        if do_val && self.validation.is_some() {
            let tv0 = Instant::now();
            if let Some(v) = self.run_validation(done)? {
                self.record_validation(v, done, epoch)?;
            }
            self.save_latest(done, epoch + 1)?;
            saved_latest = true;
            self.clock.val_secs += tv0.elapsed().as_secs_f64();
        }
        if do_val && self.validation.is_none() {
            check_learning(&mut self.st, done, None, &mut self.log, &self.pb)?;
        }
        if let Some(name) =
            periodic_checkpoint_name(done, self.span.ipe, t.checkpoint_interval as u64)
        {
            let p = self.ckpt.save(
                &self.model,
                &name,
                done,
                epoch + 1,
                self.st.last_val.as_ref(),
            )?;
            tracing::debug!("checkpoint {}", p.display());
        }
        if !saved_latest
            && (done % t.checkpoint_interval as u64 == 0 || epoch_end || done == self.span.end_step)
        {
            self.save_latest(done, epoch + 1)?;
        }
        Ok(())
    }

    /// Logs a validation after `done` steps, runs the learning check and keeps `best`.
    fn record_validation(
        &mut self,
        v: ValMetrics,
        done: u64,
        epoch: u64,
    ) -> Result<(), PipelineError> {
        tb_val(&mut self.tb, &v, &self.cfg.class_order)?;
        self.tb.flush().map_err(model_err)?;
        let line = val_line(&v, epoch + 1);
        tracing::info!("{line}");
        self.log.line(&line)?;
        let st = &mut self.st;
        let better = match (
            v.selection_score(),
            st.best_val.as_ref().and_then(|b| b.selection_score()),
        ) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            _ => st.best_val.is_none(),
        };
        check_learning(st, done, Some(&v), &mut self.log, &self.pb)?;
        if let Some(c) = st.chance.checks.last() {
            self.log.line(&format!(
                "learning check step {done}: classification loss {:.4} vs constant predictor {:.4}, val {} -> {:?}",
                c.loss,
                c.constant_loss,
                if c.val_at_chance { "at the constant map" } else { "beats the constant map" },
                st.chance.learning
            ))?;
        }
        if better {
            self.ckpt
                .save(&self.model, BEST_FILE, done, epoch + 1, Some(&v))?;
            self.log.line(&format!(
                "new best at step {done}: {}",
                fmt_opt(v.selection_score())
            ))?;
            st.best_val = Some(v.clone());
        }
        st.last_val = Some(v);
        Ok(())
    }

    /// `latest.safetensors` and the state file after `step` iterations (`epoch` 1-based).
    fn save_latest(&self, step: u64, epoch: u64) -> Result<(), PipelineError> {
        self.ckpt.save(
            &self.model,
            LATEST_FILE,
            step,
            epoch,
            self.st.last_val.as_ref(),
        )?;
        save_state(&self.state_path, &self.model, &self.adamw, &self.st)
    }

    /// Ends the run (the loader is exhausted): checks it reached its last step, makes sure
    /// `latest` exists, and writes the summary with the throughput of this invocation.
    fn finish(mut self) -> Result<TrainOutcome, PipelineError> {
        let t = &self.cfg.training;
        let span = self.span;
        self.pb.finish_and_clear();
        if self.st.next_step < span.end_step {
            return Err(data_err(format!(
                "the training loader ended early at step {} of {}",
                self.st.next_step, span.end_step
            )));
        }
        if self.st.next_step == span.start_step {
            // Nothing left to do (resuming a finished run): make sure latest exists.
            self.save_latest(self.st.next_step, self.st.next_step / span.ipe.max(1))?;
        }
        let stats = self.loader.stats();
        let clock = &self.clock;
        let loop_secs = (clock.loop_start.elapsed().as_secs_f64() - clock.val_secs).max(1e-9);
        let throughput = Throughput {
            steps: clock.steps_run,
            patches_per_sec: (clock.steps_run * t.batch_size as u64) as f64 / loop_secs,
            model_step_secs: if clock.steps_run > 0 {
                clock.model_secs / clock.steps_run as f64
            } else {
                0.0
            },
            data_wait_fraction: (stats.wait_secs / loop_secs).clamp(0.0, 1.0),
            precision: self.model.precision().as_str().to_string(),
        };
        summarize(
            self.cfg,
            &self.st,
            RunEnd {
                fingerprint: fingerprint(self.cfg),
                total_steps: span.total_steps,
                iterations_per_epoch: span.ipe,
                throughput,
                excluded: self.excluded,
                state_path: self.state_path,
            },
            &mut self.log,
            &mut self.tb,
        )
    }
}

/// The training split must hold every class, and no class on every slide (its labels would carry
/// nothing to learn from).
fn check_training_labels(cfg: &Config, train_entries: &[&SlideEntry]) -> Result<(), PipelineError> {
    let n_classes = cfg.num_classes();
    let missing: Vec<&str> = (0..n_classes)
        .filter(|&c| {
            !train_entries
                .iter()
                .any(|e| e.labels.get(c).copied().unwrap_or(0) != 0)
        })
        .map(|c| cfg.class_order[c].as_str())
        .collect();
    if !missing.is_empty() {
        return Err(data_err(format!(
            "the training split has no slide of class(es) {missing:?} (class_order {:?}): a weakly-supervised classifier needs every class present in training",
            cfg.class_order
        )));
    }
    let all_pos: Vec<&str> = (0..n_classes)
        .filter(|&c| {
            train_entries
                .iter()
                .all(|e| e.labels.get(c).copied().unwrap_or(0) != 0)
        })
        .map(|c| cfg.class_order[c].as_str())
        .collect();
    if !all_pos.is_empty() && n_classes > 1 {
        return Err(data_err(format!(
            "every training slide is labelled with class(es) {all_pos:?}: the labels carry no information to learn from"
        )));
    }
    Ok(())
}

/// The learning check at a validation (`val`, or the training loss alone without a val split):
/// compares with the constant predictor over the interval and warns, loudly, when the run is at
/// chance.
fn check_learning(
    st: &mut TrainState,
    done: u64,
    val: Option<&ValMetrics>,
    log: &mut RunLog,
    pb: &indicatif::ProgressBar,
) -> Result<(), PipelineError> {
    let interval = st.constant_loss.take_interval();
    if st.chance.record(done, interval, val) {
        let advice = st.chance.advice();
        tracing::warn!("{advice}");
        log.line(&format!("WARNING: {advice}"))?;
        pb.println(format!("WARNING: {advice}"));
    }
    Ok(())
}

/// The training figures of one logging interval.
struct IntervalStats {
    /// Iterations done.
    done: u64,
    total_steps: u64,
    /// 1-based epoch.
    epoch: u64,
    /// Mean loss terms over the interval's finite steps.
    mean: LossValues,
    lr: f64,
    grad_norm: f64,
    wait_frac: f64,
    patches_per_sec: f64,
    nonfinite_steps: u64,
}

/// Writes a logging interval to TensorBoard (`train/*` scalars) and `logs.txt`.
fn write_interval(
    i: &IntervalStats,
    tb: &mut pbip_tensorboard::EventWriter,
    log: &mut RunLog,
) -> Result<(), PipelineError> {
    let m = &i.mean;
    let scalars: Vec<(&str, f32)> = LOSS_TAGS
        .into_iter()
        .zip(m.terms())
        .chain([
            ("train/lr", i.lr),
            ("train/grad_norm", i.grad_norm),
            ("train/data_wait_fraction", i.wait_frac),
            ("train/patches_per_sec", i.patches_per_sec),
        ])
        .map(|(k, v)| (k, v as f32))
        .chain([("train/nonfinite_steps", i.nonfinite_steps as f32)])
        .collect();
    tb.add_scalars(&scalars, i.done as i64).map_err(model_err)?;
    tb.flush().map_err(model_err)?;
    log.line(&format!(
        "step {}/{} epoch {}: loss {:.5} cls {:.5} fg {:.5} bg {:.5} cam_mean {:.5} tv {:.5} l1 {:.5} pairs {:.1} lr {:.3e} grad_norm {:.4} data-wait {:.1}% {:.1} patches/s",
        i.done,
        i.total_steps,
        i.epoch,
        m.total,
        m.cls,
        m.fg,
        m.bg,
        m.cam_mean,
        m.tv,
        m.l1,
        m.pairs,
        i.lr,
        i.grad_norm,
        100.0 * i.wait_frac,
        i.patches_per_sec
    ))
}

/// What the end of a run reports, from the training loop.
struct RunEnd {
    fingerprint: serde_json::Value,
    total_steps: u64,
    iterations_per_epoch: u64,
    throughput: Throughput,
    excluded: Vec<String>,
    state_path: PathBuf,
}

/// Writes `train_summary.json`, the last log line and the stage report of a finished (or stopped)
/// run.
fn summarize(
    cfg: &Config,
    st: &TrainState,
    end: RunEnd,
    log: &mut RunLog,
    tb: &mut pbip_tensorboard::EventWriter,
) -> Result<TrainOutcome, PipelineError> {
    let RunEnd {
        fingerprint: fp,
        total_steps,
        iterations_per_epoch: ipe,
        throughput,
        excluded,
        state_path,
    } = end;
    let out_dir = output_dir(cfg);
    let runs = runs_dir(cfg);
    let completed = st.next_step >= total_steps;
    let summary = TrainSummary {
        fingerprint: fp,
        completed,
        steps: st.next_step,
        total_steps,
        iterations_per_epoch: ipe,
        nonfinite_steps: st.total_nonfinite,
        last_val: st.last_val.clone(),
        best_val: st.best_val.clone(),
        untrained_val: st.untrained_val.clone(),
        throughput: throughput.clone(),
        excluded: excluded.clone(),
        learning: st.chance.learning,
        learning_advice: if st.chance.learning == chance::Learning::AtChance {
            st.chance.advice()
        } else {
            String::new()
        },
        chance_checks: st.chance.checks.clone(),
    };
    let summary_path = out_dir.join(SUMMARY_FILE);
    crate::write_atomic(
        &summary_path,
        serde_json::to_string_pretty(&summary)
            .map_err(model_err)?
            .as_bytes(),
    )?;
    let tail = format!(
        "{} at step {}/{total_steps}: {:.2} patches/s, model step {:.3} s, data wait {:.1}% of the training loop",
        if completed { "finished" } else { "stopped" },
        st.next_step,
        throughput.patches_per_sec,
        throughput.model_step_secs,
        100.0 * throughput.data_wait_fraction
    );
    tracing::info!("{tail}");
    log.line(&tail)?;
    tb.flush().map_err(model_err)?;

    let mut lines = vec![tail];
    lines.push(format!("checkpoints: {}", out_dir.display()));
    lines.push(format!(
        "TensorBoard: tensorboard --logdir {}",
        runs.display()
    ));
    lines.push(format!("log: {}", log_path(cfg).display()));
    if let Some(v) = &st.last_val {
        lines.push(format!("last {}", val_line(v, v.step.div_ceil(ipe.max(1)))));
    }
    if let Some(v) = &st.best_val {
        lines.push(format!(
            "best at step {}: {}",
            v.step,
            fmt_opt(v.selection_score())
        ));
    }
    for e in &excluded {
        lines.push(format!("warning: {e}"));
    }
    if st.chance.learning == chance::Learning::AtChance {
        lines.push(format!("WARNING: {}", st.chance.advice()));
    }
    let mut outputs = vec![out_dir.join(LATEST_FILE), state_path.clone(), summary_path];
    if out_dir.join(BEST_FILE).is_file() {
        outputs.push(out_dir.join(BEST_FILE));
    }
    outputs.push(tb.path().to_path_buf());
    outputs.push(log_path(cfg));
    Ok(TrainOutcome {
        report: StageReport {
            stage: INFO,
            output_dir: out_dir,
            outputs,
            summary: lines,
        },
        summary,
    })
}

/// Reads a training summary.
pub fn read_summary(cfg: &Config) -> Result<TrainSummary, PipelineError> {
    crate::read_json(&output_dir(cfg).join(SUMMARY_FILE))
}

/// Validates a model on the config's val split (e.g. the untrained model, for a baseline).
pub fn validate_model(cfg: &Config, model: &ClassNet) -> Result<Option<ValMetrics>, PipelineError> {
    let dataset = Dataset::load(cfg)?;
    let sopts = slide_set_options(cfg);
    let mut excluded = Vec::new();
    let Some(vs) = open_split(
        cfg,
        &dataset.split(Split::Val),
        &sopts,
        "val",
        &mut excluded,
    )?
    else {
        return Ok(None);
    };
    let has_gt = vs
        .slides()
        .iter()
        .map(|s| s.spec.gt_path.as_ref().is_some_and(|p| p.is_file()))
        .collect();
    let plan = EvalPlan::new(
        Arc::new(vs),
        crate::settings::patches_per_slide(cfg.validation.patches_per_slide),
        cfg.training.batch_size.max(1),
        normalization(cfg)?,
        false,
    )
    .map_err(model_err)?;
    validate(
        model,
        &plan,
        &ValSettings {
            eval: eval_config(cfg)?,
            has_gt,
            slide_pool: crate::settings::slide_pooling(cfg),
        },
        0,
    )
    .map(Some)
}

/// Builds the untrained model of the config (same seed and initialisation as training) on `device`.
pub fn initial_model(cfg: &Config, device: &Device) -> Result<ClassNet, PipelineError> {
    let (bank, meta) = load_prototypes(cfg)?;
    let ncfg = classnet_config(cfg, &meta.k_list, bank.shape[1])?;
    match &cfg.model.pretrained {
        Some(v) => ClassNet::with_pretrained_backbone_file(
            &crate::encoder::weights_file(v, "model.pretrained")?,
            &ncfg,
            &bank,
            cfg.seed,
            device,
        )
        .map_err(model_err),
        None => ClassNet::init(&ncfg, &bank, cfg.seed, device).map_err(model_err),
    }
}

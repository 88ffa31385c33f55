//! Model-independent data layer of PBIP training (stage 3), evaluation (stage 4) and inference
//! (stage 5).
//!
//! * [`SlideSet`]: slides opened once (`Arc<Slide>`), their coordinates (unusable rows
//!   excluded with a warning), multi-hot labels and lazily loaded GT masks.
//! * [`PatchBatch`]: f32 NCHW pixels + multi-hot labels + provenance ([`PatchInfo`]) + optional
//!   GT masks, built by [`build_batch`].
//! * [`Normalization`] / [`Preprocess`]: mean/std normalisation (PBIP histology stats, RGB or
//!   upstream BGR) and the other upstream preprocessing variants.
//! * [`AugmentOptions`] / [`AugParams`]: flips, random 90° rotation, optional colour jitter,
//!   deterministic per (seed, step, item).
//! * [`TrainSampler`]: slide- or class-balanced random draws, a pure function of its
//!   serialisable cursor [`SamplerState`] (resumable).
//! * [`TrainPlan`] / [`EvalPlan`]: which patches make each batch; [`Loader`] /
//!   [`TrainLoader`]: worker threads with a bounded, in-order prefetch queue and data-wait
//!   statistics.
//! * [`GtMask`]: GT crops aligned exactly with the image patch (nearest neighbour).
//! * [`LrSchedule`]: per-iteration cosine (with warmup) and poly learning rates.

mod augment;
mod batch;
mod error;
mod loader;
mod mask;
mod normalize;
mod rng;
mod sampler;
mod schedule;
mod slides;

pub use augment::{AugParams, AugmentOptions};
pub use batch::{
    EvalPlan, PatchBatch, PatchRequest, PatchesPerSlide, TrainPlan, build_batch, build_batch_at,
};
pub use error::{DataError, Result};
pub use loader::{BatchSource, Loader, LoaderOptions, LoaderStats, TrainLoader, TrainSource};
pub use mask::{GtMask, MAX_MASK_BYTES, MaskOptions, MaskPlacement};
pub use normalize::{
    ChannelOrder, HISTO_MEAN, HISTO_STD, Normalization, Preprocess, global_minmax,
};
pub use sampler::{Balance, Draw, SamplerOptions, SamplerState, SlideKey, TrainSampler};
pub use schedule::{LrSchedule, ScheduleKind, ScheduleOptions};
pub use slides::{CoordinateOrigin, PatchInfo, SlideData, SlideSet, SlideSetOptions, SlideSpec};

/// Re-export of the slide reader options used in [`SlideSetOptions`].
pub use pbip_slide::{Backend as SlideBackend, OpenOptions as SlideOpenOptions};

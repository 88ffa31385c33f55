//! Batches of patches, and the plans that say which patches make each batch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::augment::{AugParams, AugmentOptions};
use crate::error::{DataError, Result};
use crate::normalize::Preprocess;
use crate::sampler::{SamplerState, SlideKey, TrainSampler};
use crate::slides::{PatchInfo, SlideSet};

/// A batch of patches: f32 NCHW pixels, multi-hot labels, provenance, optional GT masks.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchBatch {
    /// `n · 3 · height_px · width_px` floats, NCHW, preprocessed.
    pub data: Vec<f32>,
    /// Number of patches.
    pub n: usize,
    /// Patch height, px.
    pub height_px: usize,
    /// Patch width, px.
    pub width_px: usize,
    /// Number of classes (label width).
    pub num_classes: usize,
    /// `n · num_classes` multi-hot slide labels (1.0 = present).
    pub labels: Vec<f32>,
    /// `n · height_px · width_px` GT class indices (ignore value for background), when asked.
    pub masks: Option<Vec<u8>>,
    /// Provenance of every patch (slide, coordinate row, position, level, augmentation).
    pub info: Vec<PatchInfo>,
    /// Training batches: the sampler state that drew this batch.
    pub cursor: Option<SamplerState>,
}

impl PatchBatch {
    /// `[n, 3, height_px, width_px]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, 3, self.height_px, self.width_px]
    }

    /// Pixels of patch `i` (`3 · h · w` floats, CHW).
    pub fn image(&self, i: usize) -> &[f32] {
        let per = 3 * self.height_px * self.width_px;
        &self.data[i * per..(i + 1) * per]
    }

    /// Label of patch `i` (`num_classes` floats).
    pub fn label(&self, i: usize) -> &[f32] {
        &self.labels[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// GT mask of patch `i` (`h · w` bytes), when the batch has masks.
    pub fn mask(&self, i: usize) -> Option<&[u8]> {
        let per = self.height_px * self.width_px;
        self.masks.as_ref().map(|m| &m[i * per..(i + 1) * per])
    }
}

/// One patch to put in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PatchRequest {
    /// Slide index in the [`SlideSet`].
    pub slide_index: usize,
    /// Coordinate-file row.
    pub row: usize,
    /// Augmentation to apply (identity for evaluation).
    pub aug: AugParams,
}

/// Reads, augments and preprocesses `requests` into one batch (single-threaded; the loader
/// calls this on its workers). `with_masks` also crops each slide's GT mask exactly like the
/// patch and applies the same flips / rotation to it.
pub fn build_batch(
    set: &SlideSet,
    requests: &[PatchRequest],
    preprocess: &Preprocess,
    with_masks: bool,
) -> Result<PatchBatch> {
    let infos = requests
        .iter()
        .map(|r| {
            let mut pi = set.locate(r.slide_index, r.row)?;
            pi.aug = r.aug;
            Ok(pi)
        })
        .collect::<Result<Vec<_>>>()?;
    build_batch_at(set, infos, preprocess, with_masks)
}

/// [`build_batch`] for placements already resolved (from [`SlideSet::locate`] or, for
/// inference grids, [`SlideSet::placement`]); each patch gets the augmentation in its `aug`.
pub fn build_batch_at(
    set: &SlideSet,
    infos: Vec<PatchInfo>,
    preprocess: &Preprocess,
    with_masks: bool,
) -> Result<PatchBatch> {
    let side = set.patch_size_px() as usize;
    let nc = set.num_classes();
    let n = infos.len();
    let plane = side * side;
    let mut data = vec![0f32; n * 3 * plane];
    let mut labels = Vec::with_capacity(n * nc);
    let mut masks = with_masks.then(|| Vec::with_capacity(n * plane));
    let mut rgb = vec![0u8; plane * 3];
    let mut scratch = Vec::new();
    for (i, pi) in infos.iter().enumerate() {
        if pi.out_size_px as usize != side {
            return Err(DataError::InvalidOption(format!(
                "patch of slide {:?} at ({}, {}) is {} px, batch needs {side}",
                pi.slide_name, pi.x_lv0, pi.y_lv0, pi.out_size_px
            )));
        }
        set.read_into(pi, &mut rgb)?;
        pi.aug.apply_rgb(&mut rgb, side, &mut scratch)?;
        preprocess.apply(&rgb, &mut data[i * 3 * plane..(i + 1) * 3 * plane])?;
        if let Some(ms) = masks.as_mut() {
            let mut m = set.crop_mask(pi)?;
            pi.aug.apply_mask(&mut m, side, &mut scratch)?;
            ms.extend_from_slice(&m);
        }
        let slide = set.get(pi.slide_index).ok_or_else(|| {
            DataError::InvalidOption(format!("slide index {} out of range", pi.slide_index))
        })?;
        labels.extend_from_slice(&slide.labels_f32);
    }
    Ok(PatchBatch {
        data,
        n,
        height_px: side,
        width_px: side,
        num_classes: nc,
        labels,
        masks,
        info: infos,
        cursor: None,
    })
}

/// Training batches: sampler draws + augmentation + preprocessing over a slide set.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    /// The training slides.
    pub set: Arc<SlideSet>,
    /// The sampler (over the same slides, same order).
    pub sampler: TrainSampler,
    /// Augmentation switches; parameters are drawn per (sampler seed, global step, item).
    pub augment: AugmentOptions,
    /// Input preprocessing.
    pub preprocess: Preprocess,
}

impl TrainPlan {
    /// A plan whose sampler covers every slide of `set`.
    pub fn new(
        set: Arc<SlideSet>,
        sampler_opts: crate::sampler::SamplerOptions,
        augment: AugmentOptions,
        preprocess: Preprocess,
    ) -> Result<Self> {
        augment.validate()?;
        let keys = set
            .slides()
            .iter()
            .map(|s| SlideKey {
                name: s.spec.name.clone(),
                num_coords: s.num_valid(),
                classes: s.class_indices(),
            })
            .collect();
        let sampler = TrainSampler::new(keys, sampler_opts)?;
        Ok(TrainPlan {
            set,
            sampler,
            augment,
            preprocess,
        })
    }

    /// The patches of the batch at `state`.
    pub fn requests(&self, state: &SamplerState) -> Result<Vec<PatchRequest>> {
        let g = self.sampler.global_step(state);
        let seed = self.sampler.options().seed;
        self.sampler
            .draws(state)
            .into_iter()
            .enumerate()
            .map(|(item, d)| {
                let s = self.set.get(d.slide).ok_or_else(|| {
                    DataError::InvalidOption(format!("sampler slide {} not in the set", d.slide))
                })?;
                Ok(PatchRequest {
                    slide_index: d.slide,
                    row: s.valid_rows[d.coord],
                    aug: self.augment.draw(seed, g, item as u64),
                })
            })
            .collect()
    }

    /// Builds the batch at `state` on the calling thread (the loader's reference).
    pub fn batch(&self, state: &SamplerState) -> Result<PatchBatch> {
        let req = self.requests(state)?;
        let mut b = build_batch(&self.set, &req, &self.preprocess, false)?;
        b.cursor = Some(*state);
        Ok(b)
    }
}

/// How many patches per slide an evaluation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchesPerSlide {
    /// The first N usable coordinates (file order).
    First(usize),
    /// Every usable coordinate.
    All,
}

/// Deterministic evaluation batches: for each slide, its first N usable coordinates in file
/// order, no augmentation, optionally with GT masks; batches of `batch_size` in slide order.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// The evaluated slides.
    pub set: Arc<SlideSet>,
    /// Patches, in order.
    pub items: Vec<PatchRequest>,
    /// Patches per batch.
    pub batch_size: usize,
    /// Input preprocessing.
    pub preprocess: Preprocess,
    /// Crop GT masks too.
    pub with_masks: bool,
}

impl EvalPlan {
    /// Every slide of `set`.
    pub fn new(
        set: Arc<SlideSet>,
        per_slide: PatchesPerSlide,
        batch_size: usize,
        preprocess: Preprocess,
        with_masks: bool,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::InvalidOption(
                "evaluation batch_size must be > 0".into(),
            ));
        }
        if let PatchesPerSlide::First(0) = per_slide {
            return Err(DataError::InvalidOption(
                "patches_per_slide must be > 0".into(),
            ));
        }
        let mut items = Vec::new();
        for (i, s) in set.slides().iter().enumerate() {
            let take = match per_slide {
                PatchesPerSlide::First(n) => n.min(s.valid_rows.len()),
                PatchesPerSlide::All => s.valid_rows.len(),
            };
            items.extend(s.valid_rows[..take].iter().map(|&row| PatchRequest {
                slide_index: i,
                row,
                aug: AugParams::default(),
            }));
        }
        Ok(EvalPlan {
            set,
            items,
            batch_size,
            preprocess,
            with_masks,
        })
    }

    /// Number of batches.
    pub fn num_batches(&self) -> usize {
        self.items.len().div_ceil(self.batch_size)
    }

    /// Batch `k` (`None` past the end).
    pub fn batch(&self, k: usize) -> Option<Result<PatchBatch>> {
        let start = k.checked_mul(self.batch_size)?;
        if start >= self.items.len() {
            return None;
        }
        let end = (start + self.batch_size).min(self.items.len());
        Some(build_batch(
            &self.set,
            &self.items[start..end],
            &self.preprocess,
            self.with_masks,
        ))
    }
}

//! Stage 5 `infer`: whole-slide inference with a trained checkpoint.
//!
//! For every slide (from `--input-dir`, slide paths, or a manifest CSV
//! `sample_id,image_path[,coordinates_path][,mpp]`):
//!
//! 1. **Patches**: from the coordinate file when one is given (any format `pbip-coords` reads, the
//!    config's `slide.coordinate_origin` applies); otherwise the slide is tiled hs2p-style
//!    (`pbip-tiling`: HSV tissue mask at the level nearest 1/64, closing, small-component removal,
//!    a grid of `inference.patch_size` tiles at the slide's own resolution with
//!    `inference.overlap_ratio`), and the tiles used are saved as `<slide>.coordinates.npz` +
//!    `.coordinates.meta.json` (hs2p ≥ 2 format) in the slide's output folder.
//! 2. **Prediction**: patches are read on a worker thread (rayon inside a batch) while the
//!    previous batch runs through the model, `inference.batch_size` per forward pass. The model's
//!    maps are the evaluation-path fused CAMs gated by its own image-level prediction
//!    (`sigmoid(mean-merged logits) ≥ gate_threshold`, threshold from the checkpoint metadata
//!    `gate_threshold`/`threshold`, else 0.5 with a warning), see [`predictor::ClassNetPredictor`].
//! 3. **Stitching** at `inference.output_downsample` (level-0 px per output px; `auto` = the
//!    smallest power of two >= 4 that keeps both sides <= `inference.max_output_side_px`, 16384)
//!    with `inference.stitch` = mean | gaussian weights, block-wise (`pbip_post::stitch`): blocks of
//!    512 output px are accumulated only while a pending patch can touch them, within
//!    `inference.memory_budget_mb`, and written to scratch files as soon as they are complete.
//! 4. **Labels** (`pbip_post::postprocess::label_planes`), block-wise on the scratch maps: arg-max
//!    (pixels no patch covers, and with `restrict_to_tissue` pixels outside the HSV tissue mask of
//!    the thumbnail, = 255, "no label"), dense CRF (`inference.use_crf`, permutohedral lattice, 512
//!    px tiles with a halo of 3 sxy), morphology (tiles with halos), small components
//!    (`min_component_size` output px, or `min_component_size_um2` µm² with the slide mpp; two
//!    streaming passes over the rows), boundary refinement (tiles with halos).
//! 5. **Outputs** in `predictions/<slide>/`, streamed from the scratch maps: `segmentation_mask.png`
//!    (indexed PNG, pixel = class index, 255 = no label / not tissue, transparent),
//!    `confidence_maps.npz` (`class_k` float16 `[H, W]` stitched confidences in [0, 1], 0 where no
//!    patch; not CRF-refined; ZIP64 beyond 4 GiB), `visualization.png` (overlay on a thumbnail
//!    <= 2048 px, text-free legend in class order), `mask.tiff` (tiled pyramidal BigTIFF, deflate,
//!    values as the PNG, resolution tags = mpp x output_downsample), `<slide>.geojson` (QuPath
//!    FeatureCollection, one feature per class, level-0 pixel coordinates, traced row by row), and
//!    `metadata.json` (seed fields + mpp, output_downsample, coordinate_source, pbip_version,
//!    run_fingerprint). Plus `predictions/batch_results.csv`
//!    (`wsi_name,num_patches,processing_time,model_version,status,error`).
//!
//! # Robustness
//!
//! Each slide is written to `predictions/.<slide>.partial/` and renamed into place when complete,
//! `metadata.json` last. A slide whose folder has every output and a `metadata.json` with the same
//! `run_fingerprint` (weights SHA-256 + inference-relevant config + coordinate source) is skipped
//! (`status = skipped`) unless `overwrite`; stale `.partial` folders are removed. A failing slide is
//! recorded (`status = failed`, `error`) and the others go on; [`InferSummary::failed`] tells the
//! caller to exit non-zero.
//!
//! # Shards
//!
//! With `num_shards = N`, slide `i` of the list sorted by name belongs to shard `i mod N`. Each
//! shard writes `batch_results.shard-IIII-of-NNNN.csv`; [`merge_results`] combines them into
//! `batch_results.csv`. [`shard_from_env`] reads SLURM array or Kubernetes Indexed Job variables.
//!
//! # Memory
//!
//! No slide-sized array is held, at level 0 or at the output level. Patch reading holds one batch
//! in flight; the stitcher holds the live blocks (about one row of 512 px blocks, checked against
//! `inference.memory_budget_mb`); the output-level maps (`C` f32 confidence planes, a u8 keep plane
//! and two u8 label planes, i.e. `4 C + 3` bytes per output pixel) live in scratch files
//! (`inference.scratch_dir`, default a hidden folder inside the slide's temporary output folder,
//! removed when the slide is done), read and written by rectangles through the page cache (which
//! is not the process's memory). Every later pass holds one tile with its halo per worker thread
//! (CRF: 512 px + 3 sxy; others 1024 px + a few px) or a band of rows (components, exports), and
//! the polygon tracer holds the chains crossing the current row. Peak memory therefore does not
//! grow with the slide; see `bench/RESULTS.md`.

pub mod predictor;
pub mod score;
pub mod slide;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::MultiProgress;
use pbip_config::{Config, SUPPORTED_SLIDE_EXTENSIONS};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifacts::checkpoints;
use crate::{PipelineError, RunOptions};

pub use predictor::{ClassNetPredictor, PatchMaps, PatchPredictor, PatchRef};
pub use slide::{InferSettings, SlideOutput};

/// Output folder name (under `--output-dir`, or `paths.work_dir` when not given).
pub const OUTPUT_DIR: &str = "predictions";

/// Stage description.
pub const INFO: crate::StageInfo = crate::StageInfo {
    index: 5,
    command: "infer",
    description: "whole-slide inference: masks, confidences, GeoJSON, overlays per slide",
    output_dir: OUTPUT_DIR,
};
/// Batch results file (unsharded run, or merged).
pub const BATCH_RESULTS: &str = "batch_results.csv";
/// Header of the batch results files.
pub const BATCH_RESULTS_HEADER: &str =
    "wsi_name,num_patches,processing_time,model_version,status,error";

pub(crate) fn infer_err(message: impl Into<String>) -> PipelineError {
    PipelineError::Data {
        stage: "infer",
        message: message.into(),
    }
}

/// One slide to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideJob {
    /// Output name (file stem or manifest `sample_id`).
    pub name: String,
    /// Slide file.
    pub slide_path: PathBuf,
    /// Coordinate file; `None` = tile the slide.
    pub coordinates_path: Option<PathBuf>,
    /// mpp override (µm per level-0 pixel).
    pub mpp: Option<f64>,
}

/// Where the slides come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SlideSource {
    /// Every supported slide file directly in a folder.
    Dir(PathBuf),
    /// Explicit slide files.
    Paths(Vec<PathBuf>),
    /// CSV `sample_id,image_path[,coordinates_path][,mpp]` (relative paths: against its folder).
    Manifest(PathBuf),
}

/// Options of [`run_with_predictor`] / [`run`].
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Slides.
    pub source: SlideSource,
    /// Coordinate folder for `Dir`/`Paths` sources: `<stem><paths.coordinates_suffix>` when present.
    pub coordinates_dir: Option<PathBuf>,
    /// Output root; `predictions/` is created inside. `None` = `paths.work_dir`.
    pub output_dir: Option<PathBuf>,
    /// Redo complete slides.
    pub overwrite: bool,
    /// This shard (0-based) and the number of shards.
    pub shard: Option<(usize, usize)>,
    /// Progress bars.
    pub run: RunOptions,
}

/// One row of the batch results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRow {
    /// Slide name.
    pub wsi_name: String,
    /// Patches predicted (0 when failed).
    pub num_patches: usize,
    /// Seconds.
    pub processing_time: String,
    /// Model version.
    pub model_version: String,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    /// Error message of a failed slide.
    pub error: String,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct InferSummary {
    /// `predictions/` folder.
    pub predictions_dir: PathBuf,
    /// Batch results file written.
    pub batch_results: PathBuf,
    /// Rows (this shard's slides, in name order).
    pub rows: Vec<BatchRow>,
    /// Slides processed now.
    pub processed: usize,
    /// Slides skipped (complete).
    pub skipped: usize,
    /// Slides that failed.
    pub failed: usize,
    /// Slides left to another pbip process that was working on them (no row written for them by
    /// this run).
    pub in_progress_elsewhere: usize,
}

/// Per-slide `metadata.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlideMetadata {
    /// Slide file name.
    pub wsi_name: String,
    /// Output name.
    pub sample_id: String,
    /// Model version.
    pub model_version: String,
    /// Patches predicted.
    pub num_patches: usize,
    /// Seconds for this slide.
    pub processing_time_sec: f64,
    /// Class names, index = label value.
    pub class_order: Vec<String>,
    /// File name.
    pub segmentation_mask: String,
    /// File name.
    pub confidence_maps: String,
    /// `float16`.
    pub confidence_encoding: String,
    /// Post-processing settings.
    pub post_processing: serde_json::Value,
    /// UTC time, RFC 3339.
    pub timestamp: String,
    /// µm per level-0 pixel.
    pub mpp: f64,
    /// Level-0 px per output px.
    pub output_downsample: f64,
    /// `[width, height]` of the output maps.
    pub output_size_px: [usize; 2],
    /// `file:<path>` or `tiled`.
    pub coordinate_source: String,
    /// Output pixels per class in the final mask.
    pub class_pixels: Vec<u64>,
    /// Label value of "no label / no tissue".
    pub no_label_value: u8,
    /// pbip version.
    pub pbip_version: String,
    /// Identity of weights + settings; reruns skip slides with the same value.
    pub run_fingerprint: String,
    /// Size in bytes of every output file; a rerun redoes the slide when one differs (e.g. a
    /// file truncated or replaced after the run).
    #[serde(default)]
    pub output_bytes: BTreeMap<String, u64>,
}

/// Shard `(index, count)` from the environment: `SLURM_ARRAY_TASK_ID` −
/// `SLURM_ARRAY_TASK_MIN` (default 0) of `SLURM_ARRAY_TASK_COUNT`, else `JOB_COMPLETION_INDEX`
/// (Kubernetes Indexed Job; the count must come from `count`). `index`/`count` given on the
/// command line win. Returns `None` for an unsharded run.
pub fn shard_from_env(
    index: Option<usize>,
    count: Option<usize>,
) -> Result<Option<(usize, usize)>, PipelineError> {
    let env_usize = |k: &str| -> Result<Option<usize>, PipelineError> {
        match std::env::var(k) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| infer_err(format!("environment {k}={v:?} is not a number"))),
            _ => Ok(None),
        }
    };
    let (mut i, mut n) = (index, count);
    if i.is_none()
        && let Some(id) = env_usize("SLURM_ARRAY_TASK_ID")?
    {
        let min = env_usize("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        i = Some(
            id.checked_sub(min)
                .ok_or_else(|| infer_err("SLURM_ARRAY_TASK_ID < SLURM_ARRAY_TASK_MIN"))?,
        );
        if n.is_none() {
            n = env_usize("SLURM_ARRAY_TASK_COUNT")?;
        }
    }
    if i.is_none() {
        i = env_usize("JOB_COMPLETION_INDEX")?;
    }
    match (i, n) {
        (None, None) => Ok(None),
        (None, Some(n)) => Err(infer_err(format!(
            "--num-shards {n} given without a shard index (--shard-index or SLURM/JOB_COMPLETION_INDEX)"
        ))),
        (Some(i), None) => Err(infer_err(format!(
            "shard index {i} given without the number of shards (--num-shards)"
        ))),
        (Some(i), Some(n)) if n == 0 || i >= n => Err(infer_err(format!(
            "shard index {i} must be < number of shards {n}"
        ))),
        (Some(i), Some(n)) => Ok(Some((i, n))),
    }
}

fn is_slide_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| SUPPORTED_SLIDE_EXTENSIONS.contains(&e.as_str()))
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The jobs of a source, sorted by name; duplicate names are an error.
pub fn list_jobs(cfg: &Config, opts: &InferOptions) -> Result<Vec<SlideJob>, PipelineError> {
    let coords_for = |name: &str| -> Option<PathBuf> {
        let dir = opts.coordinates_dir.as_ref()?;
        let p = dir.join(format!("{name}{}", cfg.paths.coordinates_suffix));
        p.is_file().then_some(p)
    };
    let mut jobs = Vec::new();
    match &opts.source {
        SlideSource::Dir(d) => {
            let rd = std::fs::read_dir(d).map_err(|source| PipelineError::Io {
                path: d.clone(),
                source,
            })?;
            let mut paths: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_slide_file(p))
                .collect();
            paths.sort();
            for p in paths {
                let name = stem(&p);
                jobs.push(SlideJob {
                    coordinates_path: coords_for(&name),
                    name,
                    slide_path: p,
                    mpp: None,
                });
            }
        }
        SlideSource::Paths(ps) => {
            for p in ps {
                let name = stem(p);
                jobs.push(SlideJob {
                    coordinates_path: coords_for(&name),
                    name,
                    slide_path: p.clone(),
                    mpp: None,
                });
            }
        }
        SlideSource::Manifest(m) => jobs = read_manifest(m)?,
    }
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    for w in jobs.windows(2) {
        if w[0].name == w[1].name {
            return Err(infer_err(format!(
                "two slides have the name {:?} ({} and {}); names must be unique",
                w[0].name,
                w[0].slide_path.display(),
                w[1].slide_path.display()
            )));
        }
    }
    for j in &jobs {
        if j.name.is_empty() || j.name.starts_with('.') || j.name.contains(['/', '\\']) {
            return Err(infer_err(format!(
                "bad slide name {:?} ({})",
                j.name,
                j.slide_path.display()
            )));
        }
    }
    Ok(jobs)
}

/// Reads a manifest CSV `sample_id,image_path[,coordinates_path][,mpp]` (header required).
pub fn read_manifest(path: &Path) -> Result<Vec<SlideJob>, PipelineError> {
    let bytes = std::fs::read(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let csv_err = |e: csv::Error| infer_err(format!("{}: {e}", path.display()));
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let cols: Vec<String> = rd
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_string)
        .collect();
    if cols.iter().all(String::is_empty) {
        return Err(infer_err(format!("{}: empty manifest", path.display())));
    }
    let col = |n: &str| cols.iter().position(|c| c == n);
    let (Some(ci), Some(cp)) = (col("sample_id"), col("image_path")) else {
        return Err(infer_err(format!(
            "{}: header must have sample_id and image_path (optional coordinates_path, mpp), got {:?}",
            path.display(),
            cols.join(",")
        )));
    };
    let (cc, cm) = (col("coordinates_path"), col("mpp"));
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    let mut jobs = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(csv_err)?;
        if rec.iter().all(str::is_empty) {
            continue;
        }
        let line = rec.position().map_or(0, |p| p.line());
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).filter(|s| !s.is_empty());
        let (Some(name), Some(img)) = (get(Some(ci)), get(Some(cp))) else {
            return Err(infer_err(format!(
                "{} line {line}: sample_id and image_path are required",
                path.display(),
            )));
        };
        let mpp = match get(cm) {
            Some(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| {
                        infer_err(format!(
                            "{} line {line}: mpp {v:?} is not a positive number",
                            path.display(),
                        ))
                    })?,
            ),
            None => None,
        };
        jobs.push(SlideJob {
            name: name.to_string(),
            slide_path: resolve(img),
            coordinates_path: get(cc).map(resolve),
            mpp,
        });
    }
    Ok(jobs)
}

/// Shard `i` of `n` of name-sorted jobs: job `k` goes to shard `k mod n`.
pub fn shard_jobs(jobs: Vec<SlideJob>, shard: Option<(usize, usize)>) -> Vec<SlideJob> {
    match shard {
        None => jobs,
        Some((i, n)) => jobs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, j)| j)
            .collect(),
    }
}

/// File name of the batch results of a shard.
pub fn batch_results_name(shard: Option<(usize, usize)>) -> String {
    match shard {
        None => BATCH_RESULTS.to_string(),
        Some((i, n)) => format!("batch_results.shard-{i:04}-of-{n:04}.csv"),
    }
}

fn write_batch_results(path: &Path, rows: &[BatchRow]) -> Result<(), PipelineError> {
    let csv_err = |e: String| infer_err(format!("{}: {e}", path.display()));
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| csv_err(e.to_string()))?;
    }
    if rows.is_empty() {
        w.write_record(BATCH_RESULTS_HEADER.split(','))
            .map_err(|e| csv_err(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.to_string()))?;
    crate::write_atomic(path, &bytes)
}

/// Reads a batch results file.
pub fn read_batch_results(path: &Path) -> Result<Vec<BatchRow>, PipelineError> {
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| infer_err(format!("{}: {e}", path.display())))?;
    rd.deserialize()
        .map(|r| r.map_err(|e| infer_err(format!("{}: {e}", path.display()))))
        .collect()
}

/// Merges `rows` into the batch results file at `path` under a lock shared by every pbip
/// process writing into the folder: rows of other slides (earlier runs, concurrent runs) are
/// kept, rows of the same slide are replaced, new slides are appended.
fn merge_batch_results(path: &Path, rows: &[BatchRow]) -> Result<Vec<BatchRow>, PipelineError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let lock_name = format!(
        "{}.lock",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let _lock = FolderLock::acquire(dir, &lock_name)?;
    let mut merged = if path.is_file() {
        read_batch_results(path).unwrap_or_else(|e| {
            tracing::warn!("{e}: unreadable, rewritten with this run's rows only");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    for r in rows {
        match merged.iter_mut().find(|m| m.wsi_name == r.wsi_name) {
            Some(m) => *m = r.clone(),
            None => merged.push(r.clone()),
        }
    }
    write_batch_results(path, &merged)?;
    Ok(merged)
}

/// An exclusive advisory lock on `<dir>/.locks/<name>` (released on drop, also when the process
/// dies). Lock files are left in place: removing one would race with a process opening it.
pub struct FolderLock {
    _file: std::fs::File,
}

impl FolderLock {
    fn open(dir: &Path, name: &str) -> Result<std::fs::File, PipelineError> {
        let locks = dir.join(".locks");
        std::fs::create_dir_all(&locks).map_err(|source| PipelineError::Io {
            path: locks.clone(),
            source,
        })?;
        let path = locks.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| PipelineError::Io { path, source })
    }

    /// Waits for the lock.
    pub fn acquire(dir: &Path, name: &str) -> Result<FolderLock, PipelineError> {
        let file = Self::open(dir, name)?;
        file.lock().map_err(|source| PipelineError::Io {
            path: dir.join(".locks").join(name),
            source,
        })?;
        Ok(FolderLock { _file: file })
    }

    /// Takes the lock if no other process holds it.
    pub fn try_acquire(dir: &Path, name: &str) -> Result<Option<FolderLock>, PipelineError> {
        let file = Self::open(dir, name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FolderLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(PipelineError::Io {
                path: dir.join(".locks").join(name),
                source,
            }),
        }
    }
}

/// Merges every `batch_results.shard-*.csv` in `predictions_dir` into `batch_results.csv` (rows
/// sorted by name). A slide in two shard files is an error. Returns the rows.
pub fn merge_results(predictions_dir: &Path) -> Result<Vec<BatchRow>, PipelineError> {
    let rd = std::fs::read_dir(predictions_dir).map_err(|source| PipelineError::Io {
        path: predictions_dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("batch_results.shard-") && n.ends_with(".csv")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(infer_err(format!(
            "{}: no batch_results.shard-*.csv files",
            predictions_dir.display()
        )));
    }
    let mut by_name: BTreeMap<String, (BatchRow, PathBuf)> = BTreeMap::new();
    for f in &files {
        for r in read_batch_results(f)? {
            if let Some((_, other)) = by_name.get(&r.wsi_name) {
                return Err(infer_err(format!(
                    "slide {:?} is in both {} and {}",
                    r.wsi_name,
                    other.display(),
                    f.display()
                )));
            }
            by_name.insert(r.wsi_name.clone(), (r, f.clone()));
        }
    }
    let rows: Vec<BatchRow> = by_name.into_values().map(|(r, _)| r).collect();
    write_batch_results(&predictions_dir.join(BATCH_RESULTS), &rows)?;
    Ok(rows)
}

/// Identity of a run for one slide: model identity + inference-relevant config + the job.
pub fn run_fingerprint(cfg: &Config, model_identity: &str, job: &SlideJob) -> String {
    let relevant = serde_json::json!({
        "model": model_identity,
        "inference": cfg.inference,
        "class_order": cfg.class_order,
        "patch_size": cfg.patch_size,
        "slide": cfg.slide,
        "training_normalize": cfg.training.normalize,
        "evaluation": cfg.evaluation,
        "coordinates": job.coordinates_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
        "mpp": job.mpp,
        "slide_path": job.slide_path.to_string_lossy(),
    });
    let mut h = Sha256::new();
    h.update(relevant.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

/// True when `dir` holds a complete output made with `fingerprint`: metadata.json with that
/// fingerprint, and every output file with the size recorded there.
pub fn is_complete(dir: &Path, name: &str, fingerprint: &str) -> Option<SlideMetadata> {
    let text = std::fs::read_to_string(dir.join(slide::METADATA_JSON)).ok()?;
    let meta: SlideMetadata = serde_json::from_str(&text).ok()?;
    if meta.run_fingerprint != fingerprint {
        return None;
    }
    slide::expected_files(name)
        .iter()
        .all(|f| {
            let recorded = meta.output_bytes.get(f.to_string_lossy().as_ref());
            let actual = std::fs::metadata(dir.join(f)).ok().filter(|m| m.is_file());
            matches!((recorded, actual), (Some(&n), Some(m)) if m.len() == n)
        })
        .then_some(meta)
}

/// UTC timestamp `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    pbip_report::utc_iso8601(secs)
}

fn post_processing_json(s: &InferSettings, min_component_size_px: usize) -> serde_json::Value {
    serde_json::json!({
        "morphological_op": format!("{:?}", s.post.morphological_op).to_lowercase(),
        "kernel_size": s.post.kernel_size,
        "min_component_size": min_component_size_px,
        "edge_refinement": s.post.edge_refinement,
        "crf": s.crf.as_ref().map(|c| serde_json::json!({
            "iterations": c.n_iter, "sxy_gaussian": c.sxy_gaussian, "compat_gaussian": c.compat_gaussian,
            "sxy_bilateral": c.sxy_bilateral, "srgb": c.srgb, "compat_bilateral": c.compat_bilateral,
        })),
        "stitch": match s.weighting {
            pbip_post::stitch::Weighting::Mean => "mean".to_string(),
            pbip_post::stitch::Weighting::Gaussian { sigma_rel } => format!("gaussian(sigma_rel={sigma_rel})"),
        },
    })
}

/// What became of one slide of a batch run.
enum SlideOutcome {
    /// Another pbip process holds the slide's lock: left to it, no row.
    Elsewhere,
    /// Complete with the same weights and config.
    Skipped(BatchRow),
    /// Processed now.
    Done(BatchRow),
    /// Failed; the row holds the error.
    Failed(BatchRow),
}

/// A batch run: what every slide of it shares.
struct BatchRun<'a> {
    cfg: &'a Config,
    settings: InferSettings,
    /// The `predictions/` folder.
    pred_dir: PathBuf,
    overwrite: bool,
    predictor: &'a mut dyn PatchPredictor,
    model_identity: &'a str,
    model_version: &'a str,
    multi: Option<MultiProgress>,
}

impl BatchRun<'_> {
    /// Runs one slide unless another process has it or it is complete; a failure of the slide
    /// itself is an outcome, not an error.
    fn run_job(&mut self, job: &SlideJob) -> Result<SlideOutcome, PipelineError> {
        let pred_dir = &self.pred_dir;
        let final_dir = pred_dir.join(&job.name);
        let fingerprint = run_fingerprint(self.cfg, self.model_identity, job);
        // One process per slide: another pbip run writing into this folder may hold it.
        let Some(_slide_lock) = FolderLock::try_acquire(pred_dir, &format!("{}.lock", job.name))?
        else {
            tracing::warn!(
                slide = %job.name,
                "in progress in another pbip process writing into {}: left to it",
                pred_dir.display()
            );
            return Ok(SlideOutcome::Elsewhere);
        };
        if !self.overwrite
            && let Some(meta) = is_complete(&final_dir, &job.name, &fingerprint)
        {
            tracing::info!(slide = %job.name, "complete with the same weights and config: skipped");
            return Ok(SlideOutcome::Skipped(BatchRow {
                wsi_name: job.name.clone(),
                num_patches: meta.num_patches,
                processing_time: format!("{:.3}", meta.processing_time_sec),
                model_version: meta.model_version,
                status: "skipped".into(),
                error: String::new(),
            }));
        }
        let t0 = Instant::now();
        let tmp = pred_dir.join(format!(".{}.partial", job.name));
        let result = self.write_slide(job, &fingerprint, &tmp, &final_dir, t0);
        let secs = t0.elapsed().as_secs_f64();
        Ok(match result {
            Ok(out) => {
                tracing::info!(slide = %job.name, patches = out.num_patches, secs, "slide done");
                SlideOutcome::Done(BatchRow {
                    wsi_name: job.name.clone(),
                    num_patches: out.num_patches,
                    processing_time: format!("{secs:.3}"),
                    model_version: self.model_version.to_string(),
                    status: "ok".into(),
                    error: String::new(),
                })
            }
            Err(e) => {
                tracing::error!(slide = %job.name, "failed: {e}");
                let _ = std::fs::remove_dir_all(&tmp);
                SlideOutcome::Failed(BatchRow {
                    wsi_name: job.name.clone(),
                    num_patches: 0,
                    processing_time: format!("{secs:.3}"),
                    model_version: self.model_version.to_string(),
                    status: "failed".into(),
                    error: e.to_string(),
                })
            }
        })
    }

    /// Writes the slide's outputs into the fresh folder `tmp`, `metadata.json` last, then moves
    /// `tmp` to `final_dir` (replacing an older output).
    fn write_slide(
        &mut self,
        job: &SlideJob,
        fingerprint: &str,
        tmp: &Path,
        final_dir: &Path,
        t0: Instant,
    ) -> Result<SlideOutput, PipelineError> {
        if tmp.exists() {
            std::fs::remove_dir_all(tmp).map_err(|source| PipelineError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
        }
        crate::create_dir_all(tmp)?;
        let out = slide::infer_slide(
            self.cfg,
            job,
            self.predictor,
            &self.settings,
            tmp,
            self.multi.as_ref(),
        )?;
        let mut output_bytes = BTreeMap::new();
        for f in slide::expected_files(&job.name) {
            let p = tmp.join(&f);
            let len = std::fs::metadata(&p)
                .map_err(|source| PipelineError::Io { path: p, source })?
                .len();
            output_bytes.insert(f.to_string_lossy().into_owned(), len);
        }
        let meta = SlideMetadata {
            wsi_name: job
                .slide_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sample_id: job.name.clone(),
            model_version: self.model_version.to_string(),
            num_patches: out.num_patches,
            processing_time_sec: t0.elapsed().as_secs_f64(),
            class_order: self.settings.class_order.clone(),
            segmentation_mask: slide::MASK_PNG.into(),
            confidence_maps: slide::CONFIDENCE_NPZ.into(),
            confidence_encoding: "float16".into(),
            post_processing: post_processing_json(&self.settings, out.min_component_size_px),
            timestamp: utc_timestamp(),
            mpp: out.mpp,
            output_downsample: out.output_downsample,
            output_size_px: [out.width_px, out.height_px],
            coordinate_source: out.coordinate_source.clone(),
            class_pixels: out.class_pixels.clone(),
            no_label_value: pbip_post::NO_LABEL,
            pbip_version: env!("CARGO_PKG_VERSION").to_string(),
            run_fingerprint: fingerprint.to_string(),
            output_bytes,
        };
        let mp = tmp.join(slide::METADATA_JSON);
        write_synced(&mp, crate::json_pretty(&meta, &mp)?.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(final_dir).map_err(|source| PipelineError::Io {
                path: final_dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::rename(tmp, final_dir).map_err(|source| PipelineError::Io {
            path: final_dir.to_path_buf(),
            source,
        })?;
        Ok(out)
    }
}

/// Writes `bytes` to `path` and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    let io = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)
}

/// Removes the `.<slide>.partial` folders of `names` in `pred_dir` left by a killed run (not one
/// another process is writing).
fn remove_stale_partials(pred_dir: &Path, names: &BTreeSet<&str>) {
    if let Ok(rd) = std::fs::read_dir(pred_dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = n.strip_prefix('.').and_then(|s| s.strip_suffix(".partial"))
                && names.contains(stem)
                && let Ok(Some(_lock)) = FolderLock::try_acquire(pred_dir, &format!("{stem}.lock"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs inference on every job of `opts` with `predictor` (the testable core of [`run`]).
/// `model_identity` enters the run fingerprint (e.g. the weights' SHA-256); `model_version` is
/// reported per slide.
pub fn run_with_predictor(
    cfg: &Config,
    opts: &InferOptions,
    predictor: &mut dyn PatchPredictor,
    model_identity: &str,
    model_version: &str,
) -> Result<InferSummary, PipelineError> {
    let mut settings = InferSettings::from_config(cfg)?;
    let root = opts
        .output_dir
        .clone()
        .unwrap_or_else(|| cfg.paths.work_dir.clone());
    let pred_dir = root.join(OUTPUT_DIR);
    crate::create_dir_all(&pred_dir)?;
    let all = list_jobs(cfg, opts)?;
    if all.is_empty() {
        return Err(infer_err(
            "no slides to run (empty input folder / list / manifest)",
        ));
    }
    let jobs = shard_jobs(all, opts.shard);
    if cfg.inference.batch_size.fixed().is_none() && !jobs.is_empty() {
        settings.batch_size = predictor.auto_batch_size(settings.patch_size_px as usize)?;
    }
    tracing::info!(slides = jobs.len(), shard = ?opts.shard, out = %pred_dir.display(), "inference");
    let mut batch = BatchRun {
        cfg,
        settings,
        pred_dir,
        overwrite: opts.overwrite,
        predictor,
        model_identity,
        model_version,
        multi: opts.run.progress.then(MultiProgress::new),
    };
    let overall = crate::progress::multi_progress_bar(
        batch.multi.as_ref(),
        jobs.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
        "slides",
    );
    let mut rows = Vec::new();
    let (mut processed, mut skipped, mut failed, mut elsewhere) = (0, 0, 0, 0);
    for job in &jobs {
        overall.set_message(job.name.clone());
        match batch.run_job(job)? {
            SlideOutcome::Elsewhere => elsewhere += 1,
            SlideOutcome::Skipped(row) => {
                rows.push(row);
                skipped += 1;
            }
            SlideOutcome::Done(row) => {
                rows.push(row);
                processed += 1;
            }
            SlideOutcome::Failed(row) => {
                rows.push(row);
                failed += 1;
            }
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    let pred_dir = batch.pred_dir;
    // Remove stale partial folders of this shard's slides (left by a killed run).
    remove_stale_partials(&pred_dir, &jobs.iter().map(|j| j.name.as_str()).collect());
    if elsewhere > 0 {
        tracing::warn!(
            "{elsewhere} slide(s) were in progress in another pbip process; their rows are added \
             to {} by that process",
            batch_results_name(opts.shard)
        );
    }
    let batch_results = pred_dir.join(batch_results_name(opts.shard));
    merge_batch_results(&batch_results, &rows)?;
    Ok(InferSummary {
        predictions_dir: pred_dir,
        batch_results,
        rows,
        processed,
        skipped,
        failed,
        in_progress_elsewhere: elsewhere,
    })
}

/// Loads a checkpoint and runs [`run_with_predictor`] with a [`ClassNetPredictor`]. Slides without
/// coordinates are tiled at `inference.spacing_um`, or, when it is not set, at the spacing the
/// checkpoint was trained at (its `input_mpp`), so that the model sees new slides at its scale.
pub fn run(
    cfg: &Config,
    weights: &Path,
    opts: &InferOptions,
) -> Result<InferSummary, PipelineError> {
    let device = crate::settings::compute_device(cfg)?;
    let checkpoints::Checkpoint {
        model,
        meta,
        gate_threshold,
        ..
    } = checkpoints::load(cfg, weights, &device, "infer")?;
    // Tile new slides at the resolution the model was trained at, unless the config says otherwise.
    let mut cfg_local;
    let cfg = match (cfg.inference.spacing_um, checkpoints::input_mpp(&meta)) {
        (None, Some(mpp)) => {
            tracing::info!(
                spacing_um = mpp,
                "inference.spacing_um not set: tiling slides at the checkpoint's training input spacing"
            );
            cfg_local = cfg.clone();
            cfg_local.inference.spacing_um = Some(mpp);
            &cfg_local
        }
        _ => cfg,
    };
    let mut p = ClassNetPredictor::from_config(cfg, model, device, gate_threshold)?;
    let identity = format!(
        "sha256:{}; gate {gate_threshold}",
        crate::sha256_file(weights)?
    );
    let version = predictor::model_version(weights, &meta);
    tracing::info!(weights = %weights.display(), version, gate_threshold, "model loaded");
    run_with_predictor(cfg, opts, &mut p, &identity, &version)
}

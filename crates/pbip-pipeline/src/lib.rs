//! PBIP pipeline stages. One module per stage; [`STAGES`] lists the implemented ones in order.
//!
//! Each stage reads a validated [`pbip_config::Config`], writes its outputs under
//! `<paths.work_dir>/<stage folder>/` together with the resolved config, and can tell whether its
//! outputs are complete and up to date ([`stage_freshness`]) so that `pbip run` can skip it.

pub mod artifacts;
pub mod cam_batches;
pub mod encoder;
pub mod precomputed;
pub mod progress;
pub mod settings;
pub mod stage0_sample_prototypes;
pub mod stage1_embed_prototypes;
pub mod stage2_cluster_prototypes;
pub mod stage3_train;
pub mod stage4_evaluate;
pub mod stage5_infer;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pbip_config::Config;

/// Errors of the pipeline stages.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] pbip_config::ConfigError),
    /// Dataset problems (all of them).
    #[error(transparent)]
    Dataset(#[from] pbip_config::DatasetErrors),
    /// A coordinate file could not be read or written.
    #[error(transparent)]
    Coords(#[from] pbip_coords::CoordError),
    /// A slide could not be opened or read.
    #[error(transparent)]
    Slide(#[from] pbip_slide::SlideError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// JSON (de)serialisation.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The input data cannot produce a valid output (message names slides / classes).
    #[error("{stage}: {message}")]
    Data {
        /// Stage name.
        stage: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageInfo {
    /// Stage number (0..5).
    pub index: usize,
    /// CLI subcommand name.
    pub command: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Output folder name under `paths.work_dir`.
    pub output_dir: &'static str,
}

/// The stages `pbip run` runs, in execution order (stage 5, [`stage5_infer::INFO`], takes new
/// slides on its own command line).
pub const STAGES: &[StageInfo] = &[
    stage0_sample_prototypes::INFO,
    stage1_embed_prototypes::INFO,
    stage2_cluster_prototypes::INFO,
    stage3_train::INFO,
    stage4_evaluate::INFO,
];

/// What a stage run produced.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// The stage.
    pub stage: StageInfo,
    /// Output folder.
    pub output_dir: PathBuf,
    /// Every file written.
    pub outputs: Vec<PathBuf>,
    /// Human-readable summary lines.
    pub summary: Vec<String>,
}

/// Whether a stage's outputs can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Outputs are complete, newer than their inputs, and made with the same relevant settings.
    UpToDate,
    /// The stage must run; the reason says why.
    Stale(String),
}

/// Options common to every stage run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show progress bars (when stderr is a terminal).
    pub progress: bool,
}

/// Runs stage `index`.
pub fn run_stage(
    index: usize,
    cfg: &Config,
    opts: &RunOptions,
) -> Result<StageReport, PipelineError> {
    match index {
        0 => stage0_sample_prototypes::run(cfg, opts).map(|r| r.report),
        1 => stage1_embed_prototypes::run(cfg, opts),
        2 => stage2_cluster_prototypes::run(cfg, opts),
        3 => stage3_train::run(cfg, opts),
        4 => stage4_evaluate::run_default(cfg, opts),
        other => Err(PipelineError::Data {
            stage: "run",
            message: format!("stage {other} is not implemented"),
        }),
    }
}

/// Tells whether stage `index` can be skipped.
pub fn stage_freshness(index: usize, cfg: &Config) -> Freshness {
    match index {
        0 => stage0_sample_prototypes::freshness(cfg),
        1 => stage1_embed_prototypes::freshness(cfg),
        2 => stage2_cluster_prototypes::freshness(cfg),
        3 => stage3_train::freshness(cfg),
        4 => stage4_evaluate::freshness(cfg),
        other => Freshness::Stale(format!("stage {other} is not implemented")),
    }
}

/// Modification time of a file (None if missing).
pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `UpToDate` when every output exists and none is older than the newest input.
pub(crate) fn compare_mtimes(outputs: &[PathBuf], inputs: &[PathBuf]) -> Freshness {
    let mut oldest_out: Option<SystemTime> = None;
    for p in outputs {
        match mtime(p) {
            Some(t) => oldest_out = Some(oldest_out.map_or(t, |o| o.min(t))),
            None => return Freshness::Stale(format!("output {} is missing", p.display())),
        }
    }
    let mut newest_in = SystemTime::UNIX_EPOCH;
    for p in inputs {
        match mtime(p) {
            Some(t) => newest_in = newest_in.max(t),
            None => return Freshness::Stale(format!("input {} is missing", p.display())),
        }
    }
    match oldest_out {
        Some(o) if o >= newest_in => Freshness::UpToDate,
        _ => Freshness::Stale("an input is newer than the outputs".into()),
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, PipelineError> {
    let mut f = std::fs::File::open(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!("{:x}", h.finalize()))
}

/// Reads the JSON file `path` into a `T` (errors name the file).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `value` as pretty-printed JSON, for the file `path` (named by the error).
pub(crate) fn json_pretty<T: serde::Serialize>(
    value: &T,
    path: &Path,
) -> Result<String, PipelineError> {
    serde_json::to_string_pretty(value).map_err(|e| PipelineError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Creates the folder `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<(), PipelineError> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Removes the file `path` if it exists (e.g. a completion marker before its stage rewrites the
/// outputs, so that an interrupted run never looks complete).
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), PipelineError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The summary (completion marker) `path` of a previous run of a stage, when it reads and was
/// made with `fingerprint` (`fingerprint_of` picks the summary's); else why the stage must run.
pub(crate) fn previous_summary<T: serde::de::DeserializeOwned>(
    path: &Path,
    fingerprint: &serde_json::Value,
    fingerprint_of: impl Fn(&T) -> &serde_json::Value,
) -> Result<T, Freshness> {
    let Ok(summary) = read_json::<T>(path) else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(Freshness::Stale(format!("no previous {name}")));
    };
    if fingerprint_of(&summary) != fingerprint {
        return Err(Freshness::Stale(
            "settings changed since the last run".into(),
        ));
    }
    Ok(summary)
}

/// Writes bytes to `path` atomically (temp file in the same folder, then rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    let io = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

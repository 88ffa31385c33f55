//! The files one stage writes and a later stage reads: their folders, names, metadata types and
//! readers. Each format has this one owner; the writing stage and the reading stages both go
//! through it, so no stage module imports another.

use std::path::{Path, PathBuf};

use pbip_config::Config;
use pbip_weights::{HostTensor, TensorMap};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::encoder::{EncoderIdentity, META_KEY, Preprocess};

/// Stage 0 output: one prototype coordinate file per class.
pub mod coordinates {
    use super::*;

    /// Output folder name under `paths.work_dir`.
    pub const OUTPUT_DIR: &str = "prototype_coordinates";
    /// Output folder of stage 0 for `cfg`.
    pub fn output_dir(cfg: &Config) -> PathBuf {
        cfg.paths.work_dir.join(OUTPUT_DIR)
    }

    /// Path of the `.npy` file of class `class`.
    pub fn class_file(cfg: &Config, class: &str) -> PathBuf {
        output_dir(cfg).join(format!("{class}.npy"))
    }

    /// Path helper for tests and callers: the `.npy` files of all classes.
    pub fn class_files(cfg: &Config) -> Vec<(String, PathBuf)> {
        cfg.class_order
            .iter()
            .map(|c| (c.clone(), class_file(cfg, c)))
            .collect()
    }
}

/// Stage 1 output: the exemplar features and the encoder that made them.
pub mod exemplars {
    use super::*;

    fn data_err(message: String) -> PipelineError {
        PipelineError::Data {
            stage: "embed-prototypes",
            message,
        }
    }

    /// Output folder name under `paths.work_dir` (shared with stage 2).
    pub const OUTPUT_DIR: &str = "image_features";
    /// Features file.
    pub const EXEMPLARS_FILE: &str = "exemplars.safetensors";
    /// Encoder weights file.
    pub const ENCODER_FILE: &str = "encoder.safetensors";
    /// Metadata of `exemplars.safetensors` (also `exemplars.json`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ExemplarsMeta {
        /// Format tag.
        pub format: String,
        /// Class names; `class_index` indexes this.
        pub class_order: Vec<String>,
        /// Slide file names (`wsi_name`); `slide_index` indexes this.
        pub slides: Vec<String>,
        /// Resolved slide paths, same order as `slides`.
        pub slide_paths: Vec<PathBuf>,
        /// Rows per class.
        pub rows_per_class: Vec<usize>,
        /// Feature width.
        pub dim: usize,
        /// Network input side, pixels.
        pub patch_size: u32,
        /// Encoder weights identity.
        pub encoder: EncoderIdentity,
        /// Preprocessing.
        pub preprocess: Preprocess,
        /// Settings this output depends on (for `pbip run`).
        pub fingerprint: serde_json::Value,
        /// Seconds spent reading patches (reader thread, wall).
        pub read_secs: f64,
        /// Seconds spent in the encoder.
        pub encode_secs: f64,
        /// Seconds the encoder waited for patches.
        pub wait_secs: f64,
        /// Total wall seconds.
        pub total_secs: f64,
        /// Where the features came from when stage 1 took precomputed (slide2vec) features
        /// instead of running the encoder; `encoder` then describes that source. Absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub precomputed: Option<PrecomputedSource>,
    }

    /// The precomputed features stage 1 took (`prototypes.precomputed_features`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PrecomputedSource {
        /// The configured folder.
        pub dir: PathBuf,
        /// What was found there: `slide2vec tile_embeddings/`, `slide2vec features/` or `folder`.
        pub layout: String,
        /// Name of the model that made the features.
        pub encoder: String,
        /// Where that name came from: the config key or the slide2vec file recording it.
        pub encoder_from: String,
        /// SHA-256 over the feature files' SHA-256s (in `files` order).
        pub sha256: String,
        /// One entry per slide, in `slides` order.
        pub files: Vec<PrecomputedFile>,
        /// `tolerance_px` used for matching.
        pub tolerance_px: u32,
        /// Rows matched to a tile within the tolerance rather than exactly.
        pub nearest_matches: usize,
        /// Whether `encoder.safetensors` was written (the configured encoder, for the contrastive
        /// terms of training).
        pub encoder_saved: bool,
    }

    /// One slide's precomputed features.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PrecomputedFile {
        /// Slide file name (`wsi_name`).
        pub slide: String,
        /// The feature file.
        pub features: PathBuf,
        /// Its SHA-256.
        pub sha256: String,
        /// The coordinate file of its rows.
        pub coordinates: PathBuf,
        /// Tiles (rows) in the file.
        pub tiles: usize,
    }

    /// Output folder.
    pub fn output_dir(cfg: &Config) -> PathBuf {
        cfg.paths.work_dir.join(OUTPUT_DIR)
    }

    /// Path of `exemplars.safetensors`.
    pub fn exemplars_path(cfg: &Config) -> PathBuf {
        output_dir(cfg).join(EXEMPLARS_FILE)
    }

    /// Reads `exemplars.safetensors`: tensors and metadata.
    pub fn read_exemplars(path: &Path) -> Result<(TensorMap, ExemplarsMeta), PipelineError> {
        let (map, meta) = pbip_weights::read_tensors(path)
            .map_err(|e| data_err(format!("{}: {e}", path.display())))?;
        let json = meta.get(META_KEY).ok_or_else(|| {
            data_err(format!(
                "{}: no pbip metadata (not written by `pbip embed-prototypes`)",
                path.display()
            ))
        })?;
        let meta: ExemplarsMeta = serde_json::from_str(json).map_err(|e| PipelineError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok((map, meta))
    }
}

/// Stage 2 output: the prototype bank.
pub mod prototypes {
    use super::*;

    fn data_err(message: String) -> PipelineError {
        PipelineError::Data {
            stage: "cluster-prototypes",
            message,
        }
    }

    /// Prototype bank file.
    pub const PROTOTYPES_FILE: &str = "prototypes.safetensors";
    /// Per-class clustering result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ClassClusters {
        /// Class name.
        pub class: String,
        /// Exemplars of the class.
        pub exemplars: usize,
        /// k.
        pub k: usize,
        /// Members per cluster.
        pub cluster_sizes: Vec<usize>,
        /// Mean cosine of the members to their centre (null for an empty cluster).
        pub mean_cosine: Vec<Option<f64>>,
        /// Σ cos(x, own centre).
        pub objective: f64,
        /// Lloyd iterations of the kept run.
        pub iterations: usize,
        /// Whether the kept run converged.
        pub converged: bool,
    }

    /// Metadata of `prototypes.safetensors` (also `prototypes.json`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PrototypesMeta {
        /// Format tag.
        pub format: String,
        /// Class names.
        pub class_order: Vec<String>,
        /// Prototypes per class.
        pub k_list: Vec<usize>,
        /// `cumsum([0] + k_list)`.
        pub cumsum_k: Vec<usize>,
        /// Feature width.
        pub dim: usize,
        /// Per-class details.
        pub classes: Vec<ClassClusters>,
        /// k-means settings used.
        pub kmeans: serde_json::Value,
        /// The exemplar file the prototypes come from.
        pub exemplars: PathBuf,
        /// Encoder of the exemplars (training must use the same).
        pub encoder: EncoderIdentity,
        /// Settings this output depends on.
        pub fingerprint: serde_json::Value,
        /// Conditioning applied to the exemplar features before clustering.
        #[serde(default)]
        pub conditioning: pbip_kmeans::ConditioningKind,
        /// How well the bank separates the classes (in the conditioned space).
        #[serde(default)]
        pub separability: Option<pbip_kmeans::Separability>,
    }

    /// Tensor of the conditioning mean in `prototypes.safetensors` (`[D]`).
    pub const CONDITIONING_MEAN: &str = "conditioning_mean";
    /// Tensor of the conditioning matrix in `prototypes.safetensors` (`[D, D]`, whitening only).
    pub const CONDITIONING_MATRIX: &str = "conditioning_matrix";

    /// Path of `prototypes.safetensors`.
    pub fn prototypes_path(cfg: &Config) -> PathBuf {
        super::exemplars::output_dir(cfg).join(PROTOTYPES_FILE)
    }

    /// A bank's conditioning transform: mean `[D]` and, for whitening, matrix `[D, D]` (row-major).
    pub type Conditioning = (Vec<f32>, Option<Vec<f32>>);

    /// The conditioning transform saved with a bank: `(mean [D], matrix [D, D] or None)`, or `None`
    /// for an unconditioned bank.
    pub fn read_conditioning(path: &Path) -> Result<Option<Conditioning>, PipelineError> {
        let (map, _) = pbip_weights::read_tensors(path)
            .map_err(|e| data_err(format!("{}: {e}", path.display())))?;
        Ok(map.get(CONDITIONING_MEAN).map(|m| {
            (
                m.data.clone(),
                map.get(CONDITIONING_MATRIX).map(|w| w.data.clone()),
            )
        }))
    }

    /// Reads a prototype bank: features `[ΣK, D]` (row-major) and metadata.
    pub fn read_prototypes(path: &Path) -> Result<(HostTensor, PrototypesMeta), PipelineError> {
        let (map, meta) = pbip_weights::read_tensors(path)
            .map_err(|e| data_err(format!("{}: {e}", path.display())))?;
        let json = meta.get(META_KEY).ok_or_else(|| {
            data_err(format!(
                "{}: no pbip metadata (not written by `pbip cluster-prototypes`)",
                path.display()
            ))
        })?;
        let meta: PrototypesMeta = serde_json::from_str(json).map_err(|e| PipelineError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let f = map
            .get("features")
            .cloned()
            .ok_or_else(|| data_err(format!("{}: tensor `features` is missing", path.display())))?;
        Ok((f, meta))
    }
}

/// Stage 3 output: trained checkpoints, and the one loader of a checkpoint for stages 4 and 5.
pub mod checkpoints {
    use std::collections::BTreeMap;

    use burn::tensor::Device;
    use pbip_model::{ClassNet, ClassNetConfig};

    use super::*;

    /// Output folder under `work_dir`.
    pub const OUTPUT_DIR: &str = "checkpoints";
    /// Best weights.
    pub const BEST_FILE: &str = "best.safetensors";
    /// Checkpoint metadata key: the median network-input spacing of the training patches, µm per
    /// input pixel (slide mpp × patch footprint / patch size); `pbip infer` tiles new slides at it.
    pub const INPUT_MPP_KEY: &str = "input_mpp";
    /// Checkpoint metadata key of the deployable gate threshold (chosen on the validation set).
    pub const GATE_THRESHOLD_KEY: &str = "gate_threshold";
    /// Gate threshold of a checkpoint that carries none (with a warning).
    pub const DEFAULT_GATE_THRESHOLD: f64 = 0.5;

    /// The checkpoint folder of `cfg`.
    pub fn output_dir(cfg: &Config) -> PathBuf {
        cfg.paths.work_dir.join(OUTPUT_DIR)
    }

    /// `checkpoints/best.safetensors` of `cfg`.
    pub fn best_path(cfg: &Config) -> PathBuf {
        output_dir(cfg).join(BEST_FILE)
    }

    /// The deployable gate threshold in a checkpoint's metadata: `gate_threshold` (or the older
    /// `threshold`) as a number, else a `gate_threshold` inside a JSON `metrics` / `val_metrics` /
    /// `training` / `pbip` entry; only values in [0, 1] count.
    pub fn gate_threshold(meta: &BTreeMap<String, String>) -> Option<f64> {
        let valid = |t: f64| t.is_finite() && (0.0..=1.0).contains(&t);
        let top = [GATE_THRESHOLD_KEY, "threshold"]
            .iter()
            .filter_map(|k| meta.get(*k))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .find(|&t| valid(t));
        top.or_else(|| {
            ["metrics", "val_metrics", "training", "pbip"]
                .iter()
                .filter_map(|k| meta.get(*k))
                .filter_map(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .filter_map(|j| find_number(&j, GATE_THRESHOLD_KEY))
                .find(|&t| valid(t))
        })
    }

    fn find_number(v: &serde_json::Value, key: &str) -> Option<f64> {
        match v {
            serde_json::Value::Object(m) => m
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .or_else(|| m.values().find_map(|c| find_number(c, key))),
            _ => None,
        }
    }

    /// The network-input spacing (µm per input pixel) a checkpoint was trained at.
    pub fn input_mpp(meta: &BTreeMap<String, String>) -> Option<f64> {
        meta.get(INPUT_MPP_KEY)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    }

    /// A checkpoint loaded for evaluation or inference, checked against the config.
    pub struct Checkpoint {
        /// The model.
        pub model: ClassNet,
        /// Its architecture.
        pub config: ClassNetConfig,
        /// The safetensors metadata.
        pub meta: BTreeMap<String, String>,
        /// Deployable gate threshold (from the metadata, else [`DEFAULT_GATE_THRESHOLD`]).
        pub gate_threshold: f64,
    }

    /// Loads the checkpoint at `path` onto `device` and checks it against `cfg`: the class order
    /// it was trained with (when recorded) and the number of classes are errors when they differ;
    /// prototypes per class (`k_list`) come from the checkpoint (a different config value is
    /// warned about).
    /// Errors name the file once; `stage` names the command in them.
    pub fn load(
        cfg: &Config,
        path: &Path,
        device: &Device,
        stage: &'static str,
    ) -> Result<Checkpoint, PipelineError> {
        let err = |message: String| PipelineError::Data { stage, message };
        if !path.is_file() {
            return Err(err(format!(
                "checkpoint {} does not exist (train with `pbip train` first, or give --weights)",
                path.display()
            )));
        }
        let (mut model, config, meta) = ClassNet::load_safetensors(path, device).map_err(|e| {
            let e = e.to_string();
            let shown = path.display().to_string();
            // The model crate's errors may already start with the path.
            if e.contains(&shown) {
                err(e)
            } else {
                err(format!("{shown}: {e}"))
            }
        })?;
        if let Some(co) = meta
            .get("class_order")
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
            && co != cfg.class_order
        {
            return Err(err(format!(
                "{} was trained with class_order {co:?}, the config has {:?}",
                path.display(),
                cfg.class_order
            )));
        }
        let n = cfg.num_classes();
        if model.num_classes() != n {
            return Err(err(format!(
                "{} has {} classes (k_list {:?}), the config has {n} ({:?})",
                path.display(),
                model.num_classes(),
                config.k_list,
                cfg.class_order
            )));
        }
        // The checkpoint carries its prototypes: its own k_list builds the model.
        if config.k_list != cfg.prototypes.k_list {
            tracing::warn!(
                "{} has k_list {:?}, the config {:?}: the checkpoint's prototypes are used",
                path.display(),
                config.k_list,
                cfg.prototypes.k_list
            );
        }
        model.set_precision(crate::settings::precision(
            cfg,
            cfg.inference.precision,
            "inference.precision",
        )?);
        let gate_threshold = gate_threshold(&meta).unwrap_or_else(|| {
            tracing::warn!(
                "{} carries no gate_threshold; the deployable gate uses {DEFAULT_GATE_THRESHOLD}",
                path.display()
            );
            DEFAULT_GATE_THRESHOLD
        });
        Ok(Checkpoint {
            model,
            config,
            meta,
            gate_threshold,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn meta(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }

        #[test]
        fn gate_threshold_reads_every_place_it_was_written_and_checks_its_range() {
            assert_eq!(
                gate_threshold(&meta(&[("gate_threshold", "0.35")])),
                Some(0.35)
            );
            assert_eq!(gate_threshold(&meta(&[("threshold", " 0.4 ")])), Some(0.4));
            assert_eq!(
                gate_threshold(&meta(&[(
                    "metrics",
                    r#"{"val": {"gate_threshold": 0.25}}"#
                )])),
                Some(0.25)
            );
            // out of range or not a number: not a threshold
            assert_eq!(gate_threshold(&meta(&[("gate_threshold", "1.5")])), None);
            assert_eq!(gate_threshold(&meta(&[("gate_threshold", "NaN")])), None);
            assert_eq!(
                gate_threshold(&meta(&[("gate_threshold", "-1"), ("threshold", "0.6")])),
                Some(0.6)
            );
            assert_eq!(gate_threshold(&meta(&[])), None);
            assert_eq!(input_mpp(&meta(&[("input_mpp", "1.0")])), Some(1.0));
            assert_eq!(input_mpp(&meta(&[("input_mpp", "0")])), None);
        }
    }
}

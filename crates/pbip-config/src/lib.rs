//! PBIP pipeline configuration: the YAML schema ([`Config`]), `--set key=value` overrides, validation
//! that reports every problem at once, path resolution, and dataset discovery from the split and
//! labels CSVs ([`Dataset`]).
//!
//! Loading order: read YAML → apply overrides to the YAML tree → deserialise (unknown keys and wrong
//! types are errors naming the key path) → resolve relative paths against the config file's folder →
//! validate.

mod dataset;
mod schema;

pub use dataset::{
    Dataset, DatasetErrors, DatasetProblem, ProblemKind, SUPPORTED_SLIDE_EXTENSIONS, SlideEntry,
    Split, SplitRow, normalise_slide_key, parse_labels_csv, parse_split_csv,
};
pub use schema::*;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// Feature file types `prototypes.precomputed_features.suffix` may end in.
pub const PRECOMPUTED_FEATURE_SUFFIXES: [&str; 3] = [".pt", ".npz", ".npy"];

/// File name of the resolved config written into each stage's output folder.
pub const RESOLVED_CONFIG_FILE: &str = "config.resolved.yaml";

/// One invalid value found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted key path, e.g. `inference.overlap_ratio`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{origin}: not valid YAML: {source}")]
    Yaml {
        /// File name or description of the source.
        origin: String,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// A key has the wrong type, is unknown, or a required key is missing.
    #[error("{origin}: key `{key}`: {message}")]
    Field {
        /// File name or description of the source.
        origin: String,
        /// Dotted key path.
        key: String,
        /// The deserialisation message (expected type / allowed keys).
        message: String,
    },
    /// A `--set` override is malformed or names an unknown key.
    #[error("invalid override `--set {arg}`: {message}")]
    Override {
        /// The override as given.
        arg: String,
        /// What is wrong (with the allowed keys at that level).
        message: String,
    },
    /// Values parsed but are invalid; every problem is listed.
    #[error("{origin}: {} invalid value(s):\n{}", problems.len(), format_problems(problems))]
    Invalid {
        /// File name or description of the source.
        origin: String,
        /// All problems.
        problems: Vec<Problem>,
    },
    /// The resolved config could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config could not be serialised.
    #[error("cannot serialise config: {0}")]
    Serialise(serde_yaml::Error),
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A parsed `--set a.b.c=value` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The text as given.
    pub raw: String,
    /// Key path components.
    pub path: Vec<String>,
    /// Value parsed as YAML (numbers, bools, lists, null, strings).
    pub value: Value,
}

impl Override {
    /// Parses `section.key=value`; the value is parsed as YAML.
    pub fn parse(raw: &str) -> Result<Override, ConfigError> {
        let err = |message: &str| ConfigError::Override {
            arg: raw.to_string(),
            message: message.to_string(),
        };
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| err("expected KEY=VALUE, e.g. training.epochs=2"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(err("empty key"));
        }
        let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(err("empty component in the key path"));
        }
        let value = if value.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml::from_str::<Value>(value)
                .map_err(|e| err(&format!("value `{value}` is not valid YAML: {e}")))?
        };
        Ok(Override {
            raw: raw.to_string(),
            path,
            value,
        })
    }
}

fn schema_tree() -> Value {
    // Serialising the defaults gives every key (Options as null), i.e. the schema's key tree.
    serde_yaml::to_value(Config::default()).unwrap_or(Value::Null)
}

fn keys_of(map: &Mapping) -> String {
    map.keys()
        .filter_map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies overrides to a YAML tree, checking every key path against the schema.
pub fn apply_overrides(tree: &mut Value, overrides: &[Override]) -> Result<(), ConfigError> {
    let schema = schema_tree();
    for ov in overrides {
        if !tree.is_mapping() {
            *tree = Value::Mapping(Mapping::new());
        }
        let mut schema_node = &schema;
        let mut node = &mut *tree;
        for (i, part) in ov.path.iter().enumerate() {
            let so_far = ov.path[..=i].join(".");
            let Some(smap) = schema_node.as_mapping() else {
                return Err(ConfigError::Override {
                    arg: ov.raw.clone(),
                    message: format!("`{}` is a value, not a section", ov.path[..i].join(".")),
                });
            };
            let Some(child_schema) = smap.get(part.as_str()) else {
                let level = if i == 0 {
                    "top level".to_string()
                } else {
                    format!("`{}`", ov.path[..i].join("."))
                };
                return Err(ConfigError::Override {
                    arg: ov.raw.clone(),
                    message: format!(
                        "unknown key `{so_far}`; allowed keys at {level}: {}",
                        keys_of(smap)
                    ),
                });
            };
            schema_node = child_schema;
            if !node.is_mapping() {
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else {
                return Err(ConfigError::Override {
                    arg: ov.raw.clone(),
                    message: format!("`{so_far}` is not a section"),
                });
            };
            let last = i + 1 == ov.path.len();
            let key = Value::String(part.clone());
            if last {
                map.insert(key, ov.value.clone());
                break;
            }
            node = map.entry(key).or_insert(Value::Mapping(Mapping::new()));
        }
    }
    Ok(())
}

/// The absolute folder of a config file (relative paths in it resolve against this).
fn base_dir_of(path: &Path) -> PathBuf {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    std::path::absolute(&base).unwrap_or(base)
}

fn clean_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            // Lexical `..`: drop the previous normal component (paths are printed to users; a
            // symlinked folder followed by `..` is the one case where this differs from the OS).
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn resolve(base: &Path, p: &mut PathBuf) {
    // `hf:org/name...` (weights keys) names a Hugging Face Hub file, not a path.
    if p.as_os_str().is_empty() || p.to_str().is_some_and(|s| s.starts_with("hf:")) {
        return;
    }
    if p.is_relative() {
        *p = clean_path(&base.join(&*p));
    }
}

/// Key paths whose values are file or folder paths (resolved against the defining file's folder).
const PATH_KEYS: &[&[&str]] = &[
    &["paths", "split_csv"],
    &["paths", "labels_csv"],
    &["paths", "wsi_dir"],
    &["paths", "coordinates_dir"],
    &["paths", "gt_dir"],
    &["paths", "work_dir"],
    &["prototypes", "encoder", "weights"],
    &["prototypes", "encoder", "projection_weights"],
    &["prototypes", "precomputed_features", "dir"],
    &["prototypes", "precomputed_features", "coordinates_dir"],
    &["model", "pretrained"],
    &["inference", "scratch_dir"],
];

/// The value at `key` in a YAML tree, if every section on the way exists.
fn tree_value_mut<'a>(tree: &'a mut Value, key: &[&str]) -> Option<&'a mut Value> {
    match key.split_first() {
        None => Some(tree),
        Some((first, rest)) => match tree {
            Value::Mapping(m) => tree_value_mut(m.get_mut(*first)?, rest),
            _ => None,
        },
    }
}

/// Makes the relative path values of a YAML tree absolute against `base`.
fn resolve_tree_paths(tree: &mut Value, base: &Path) {
    for key in PATH_KEYS {
        if let Some(Value::String(s)) = tree_value_mut(tree, key) {
            let mut p = PathBuf::from(s.as_str());
            resolve(base, &mut p);
            *s = p.to_string_lossy().into_owned();
        }
    }
}

/// Deep merge: mappings merge key by key (recursively), anything else in `over` replaces `base`.
fn merge_tree(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_mapping() && v.is_mapping() => {
                        merge_tree(existing, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Checks every key of a file's tree against the schema, naming the file and the allowed keys.
fn check_tree_keys(
    tree: &Value,
    schema: &Value,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let (Value::Mapping(t), Value::Mapping(sm)) = (tree, schema) else {
        return Ok(());
    };
    for (k, v) in t {
        let Some(name) = k.as_str() else { continue };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        match sm.get(name) {
            None => {
                return Err(ConfigError::Field {
                    origin: origin.to_string(),
                    key: path,
                    message: format!(
                        "unknown key; allowed keys at {}: {}",
                        if prefix.is_empty() {
                            "top level".to_string()
                        } else {
                            format!("`{prefix}`")
                        },
                        keys_of(sm)
                    ),
                });
            }
            Some(child) if child.is_mapping() && v.is_mapping() => {
                check_tree_keys(v, child, &path, origin)?
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Config {
    /// Loads several config files, later ones overriding earlier ones key by key (sections
    /// merge; a value or a list replaces the earlier one), then applies `--set` overrides.
    /// Relative paths resolve against the folder of the file that sets them (`--set` paths
    /// against the last file's folder). Errors name the file, or the `--set`, that caused them.
    pub fn load_layered(paths: &[PathBuf], overrides: &[String]) -> Result<Config, ConfigError> {
        let Some(last) = paths.last() else {
            return Err(ConfigError::Override {
                arg: String::new(),
                message: "no config file given (use --config FILE.yaml)".into(),
            });
        };
        if paths.len() == 1 {
            return Config::load(last, overrides);
        }
        let schema = schema_tree();
        let mut tree = Value::Mapping(Mapping::new());
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let origin = path.display().to_string();
            let mut t: Value = serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
                origin: origin.clone(),
                source,
            })?;
            if t.is_null() {
                continue;
            }
            if !t.is_mapping() {
                return Err(ConfigError::Field {
                    origin,
                    key: String::new(),
                    message: "a config file must be a mapping of sections and keys".into(),
                });
            }
            check_tree_keys(&t, &schema, "", &origin)?;
            resolve_tree_paths(&mut t, &base_dir_of(path));
            merge_tree(&mut tree, t);
        }
        let origin = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let text = serde_yaml::to_string(&tree).map_err(ConfigError::Serialise)?;
        Config::from_yaml_str(&text, &base_dir_of(last), &origin, overrides)
    }

    /// Loads a config file, applies `--set` overrides (strings `a.b=v`), resolves relative paths
    /// against the file's folder and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml_str(
            &text,
            &base_dir_of(path),
            &path.display().to_string(),
            overrides,
        )
    }

    /// Parses YAML text (see [`Config::load`]); `base_dir` is where relative paths resolve and
    /// `origin` names the source in error messages.
    pub fn from_yaml_str(
        text: &str,
        base_dir: &Path,
        origin: &str,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut tree: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
            origin: origin.to_string(),
            source,
        })?;
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        let parsed: Vec<Override> = overrides
            .iter()
            .map(|o| Override::parse(o))
            .collect::<Result<_, _>>()?;
        apply_overrides(&mut tree, &parsed)?;
        let mut cfg: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            // A key given by --set is blamed on the --set, not on the file.
            let set_by = parsed.iter().rev().find(|o| {
                let k = o.path.join(".");
                key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
            });
            ConfigError::Field {
                origin: match set_by {
                    Some(o) => format!("--set {}", o.raw),
                    None => origin.to_string(),
                },
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.resolve_paths(base_dir);
        let problems = cfg.validate();
        if !problems.is_empty() {
            let set: Vec<&str> = problems
                .iter()
                .filter_map(|p| {
                    parsed
                        .iter()
                        .rev()
                        .find(|o| o.path.join(".") == p.key)
                        .map(|o| o.raw.as_str())
                })
                .collect();
            return Err(ConfigError::Invalid {
                origin: if set.len() == problems.len() {
                    format!("--set {}", set.join(" --set "))
                } else {
                    origin.to_string()
                },
                problems,
            });
        }
        Ok(cfg)
    }

    /// Makes every relative path absolute against `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let p = &mut self.paths;
        for path in [
            &mut p.split_csv,
            &mut p.labels_csv,
            &mut p.wsi_dir,
            &mut p.coordinates_dir,
            &mut p.work_dir,
        ] {
            resolve(base_dir, path);
        }
        for opt in [
            &mut p.gt_dir,
            &mut self.prototypes.encoder.weights,
            &mut self.prototypes.encoder.projection_weights,
            &mut self.prototypes.precomputed_features.dir,
            &mut self.prototypes.precomputed_features.coordinates_dir,
            &mut self.model.pretrained,
            &mut self.inference.scratch_dir,
        ] {
            if let Some(path) = opt.as_mut() {
                resolve(base_dir, path);
            }
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_order.len()
    }

    /// Index of `background_class` in `class_order`, if set.
    pub fn background_index(&self) -> Option<usize> {
        self.background_class
            .as_ref()
            .and_then(|b| self.class_order.iter().position(|c| c == b))
    }

    /// Checks every value; returns all problems (empty = valid).
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Vec::new();
        let mut bad = |key: &str, message: String| {
            v.push(Problem {
                key: key.to_string(),
                message,
            })
        };

        // classes
        if self.class_order.is_empty() {
            bad(
                "class_order",
                "must list at least one class name, e.g. [benign, tumor]".into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.class_order {
            if name.trim().is_empty() {
                bad("class_order", "class names must not be empty".into());
            } else if name.contains(['/', '\\']) || name == "." || name == ".." {
                bad(
                    "class_order",
                    format!(
                        "class name `{name}` is used as a file name and must not contain path separators"
                    ),
                );
            }
            if !seen.insert(name.as_str()) {
                bad(
                    "class_order",
                    format!("duplicate class name `{name}`; names must be unique"),
                );
            }
        }
        if self.patch_size == 0 {
            bad("patch_size", "must be > 0 pixels (e.g. 224)".into());
        }
        if let Some(bgc) = &self.background_class
            && !self.class_order.contains(bgc)
        {
            bad(
                "background_class",
                format!(
                    "`{bgc}` is not in class_order ({}); name one of the classes or null",
                    self.class_order.join(", ")
                ),
            );
        }
        if self.background_class.is_some() && self.class_order.len() < 2 {
            bad(
                "background_class",
                "needs at least one other class in class_order".into(),
            );
        }

        // paths
        if self.paths.coordinates_suffix.is_empty() {
            bad(
                "paths.coordinates_suffix",
                "must not be empty (e.g. .npy)".into(),
            );
        }

        // prototypes
        let pr = &self.prototypes;
        if pr.k_list.len() != self.class_order.len() {
            bad(
                "prototypes.k_list",
                format!(
                    "has {} entries but class_order has {} classes ({}); give one k per class",
                    pr.k_list.len(),
                    self.class_order.len(),
                    self.class_order.join(", ")
                ),
            );
        }
        if pr.k_list.contains(&0) {
            bad("prototypes.k_list", "every k must be >= 1".into());
        }
        if pr.num_per_class == 0 {
            bad("prototypes.num_per_class", "must be >= 1 slide".into());
        }
        if pr.samples_per_wsi == 0 {
            bad(
                "prototypes.samples_per_wsi",
                "must be >= 1 coordinate".into(),
            );
        }
        if pr.batch_size == 0 {
            bad("prototypes.batch_size", "must be >= 1".into());
        }
        let enc = &pr.encoder;
        if enc.embed_dim == 0 {
            bad("prototypes.encoder.embed_dim", "must be >= 1".into());
        }
        if enc.depths.is_empty() || enc.depths.len() != enc.heads.len() {
            bad(
                "prototypes.encoder.depths",
                format!(
                    "depths ({}) and heads ({}) must be non-empty and of equal length",
                    enc.depths.len(),
                    enc.heads.len()
                ),
            );
        }
        if enc.heads.contains(&0) {
            bad(
                "prototypes.encoder.heads",
                "every head count must be >= 1".into(),
            );
        }
        if enc.window == 0 {
            bad("prototypes.encoder.window", "must be >= 1".into());
        }
        check_normalize(&mut bad, "prototypes.encoder.normalize", &enc.normalize);
        if enc.name.as_ref().is_some_and(|n| n.trim().is_empty()) {
            bad(
                "prototypes.encoder.name",
                "must not be empty; give the model's name (e.g. uni) or null".into(),
            );
        }
        let pf = &pr.precomputed_features;
        let suffix = pf.suffix.to_ascii_lowercase();
        if !PRECOMPUTED_FEATURE_SUFFIXES
            .iter()
            .any(|ext| suffix.ends_with(ext))
        {
            let hint = if suffix.ends_with(".h5") || suffix.ends_with(".hdf5") {
                " (slide2vec writes tile embeddings as .pt, or .npz with output_format=\"npz\"; \
                 HDF5 is not read: convert it to one of those)"
            } else {
                ""
            };
            bad(
                "prototypes.precomputed_features.suffix",
                format!(
                    "`{}` must end in {}{hint}",
                    pf.suffix,
                    PRECOMPUTED_FEATURE_SUFFIXES.join(", ")
                ),
            );
        }
        if pf.encoder.as_ref().is_some_and(|n| n.trim().is_empty()) {
            bad(
                "prototypes.precomputed_features.encoder",
                "must not be empty; give the model that made the features (e.g. uni) or null"
                    .into(),
            );
        }
        let km = &pr.kmeans;
        if km.n_init == 0 {
            bad("prototypes.kmeans.n_init", "must be >= 1".into());
        }
        if km.max_iter == 0 {
            bad("prototypes.kmeans.max_iter", "must be >= 1".into());
        }
        if km.nearest_k == Some(0) {
            bad("prototypes.kmeans.nearest_k", "must be >= 1 or null".into());
        }

        // model
        if self.model.strides.len() != 4 || self.model.strides.contains(&0) {
            bad(
                "model.strides",
                format!(
                    "must be 4 positive strides (e.g. [4, 2, 2, 1]), got {:?}",
                    self.model.strides
                ),
            );
        }

        if let Some(strides) = mit_strides(&self.model.strides)
            && self.patch_size > 0
            && let Some(m) = mit_input_problem(self.patch_size, strides)
        {
            bad("patch_size", m);
        }

        for (k, m) in self.model.head.pool.problems("model.head.pool") {
            bad(&k, m);
        }

        // training
        let t = &self.training;
        if t.epochs == 0 {
            bad("training.epochs", "must be >= 1".into());
        }
        if t.mil.bag_size == 0 {
            bad(
                "training.mil.bag_size",
                "must be >= 1 patch (1 = no bags)".into(),
            );
        } else if !t.batch_size.is_multiple_of(t.mil.bag_size) {
            bad(
                "training.mil.bag_size",
                format!(
                    "training.batch_size {} is not a multiple of the bag size {}; a batch holds whole bags",
                    t.batch_size, t.mil.bag_size
                ),
            );
        }
        for (k, m) in t.mil.pool.problems("training.mil.pool") {
            bad(&k, m);
        }
        if t.batch_size == 0 {
            bad("training.batch_size", "must be >= 1".into());
        }
        if !(t.optimizer.lr.is_finite() && t.optimizer.lr > 0.0) {
            bad(
                "training.optimizer.lr",
                format!("must be a finite number > 0, got {}", t.optimizer.lr),
            );
        }
        if !(t.optimizer.weight_decay.is_finite() && t.optimizer.weight_decay >= 0.0) {
            bad(
                "training.optimizer.weight_decay",
                format!("must be >= 0, got {}", t.optimizer.weight_decay),
            );
        }
        if t.optimizer.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bad(
                "training.optimizer.betas",
                format!("each beta must be in [0, 1), got {:?}", t.optimizer.betas),
            );
        }
        // NaN fails these checks too.
        if t.optimizer.eps.is_nan() || t.optimizer.eps <= 0.0 {
            bad("training.optimizer.eps", "must be > 0".into());
        }
        if t.scheduler.warmup_epochs.is_nan() || t.scheduler.warmup_epochs < 0.0 {
            bad("training.scheduler.warmup_epochs", "must be >= 0".into());
        }
        if t.scheduler.power.is_nan() || t.scheduler.power <= 0.0 {
            bad("training.scheduler.power", "must be > 0".into());
        }
        let lw = &t.loss_weights;
        if lw.scale_weights.len() != 4 {
            bad(
                "training.loss_weights.scale_weights",
                format!(
                    "needs 4 weights (one per scale), got {}",
                    lw.scale_weights.len()
                ),
            );
        }
        for (k, x) in [
            ("training.loss_weights.contrastive", lw.contrastive),
            ("training.loss_weights.cam_smooth", lw.cam_smooth),
            ("training.loss_weights.cam_sparsity", lw.cam_sparsity),
            ("training.cam_mean_weight", t.cam_mean_weight),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                bad(k, format!("must be a finite number >= 0, got {x}"));
            }
        }
        if lw
            .scale_weights
            .iter()
            .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            bad(
                "training.loss_weights.scale_weights",
                "weights must be finite and >= 0".into(),
            );
        }
        if t.validation_interval == 0 {
            bad(
                "training.validation_interval",
                "must be >= 1 iteration".into(),
            );
        }
        if t.checkpoint_interval == 0 {
            bad(
                "training.checkpoint_interval",
                "must be >= 1 iteration".into(),
            );
        }
        if t.iterations_per_epoch == Some(0) {
            bad(
                "training.iterations_per_epoch",
                "must be >= 1 or null".into(),
            );
        }
        if let Some(g) = t.grad_clip
            && !(g.is_finite() && g > 0.0)
        {
            bad(
                "training.grad_clip",
                format!("must be > 0 or null, got {g}"),
            );
        }
        if !(t.temperature.is_finite() && t.temperature > 0.0) {
            bad(
                "training.temperature",
                format!("must be > 0, got {}", t.temperature),
            );
        }
        if !(0.0..=1.0).contains(&t.mask_threshold) {
            bad(
                "training.mask_threshold",
                format!("must be in [0, 1], got {}", t.mask_threshold),
            );
        }
        if t.log_interval == 0 {
            bad("training.log_interval", "must be >= 1".into());
        }
        if !(0.0..=1.0).contains(&t.augment.color_jitter) {
            bad("training.augment.color_jitter", "must be in [0, 1]".into());
        }
        if !(0.0..1.0).contains(&t.augment.stain_jitter) {
            bad("training.augment.stain_jitter", "must be in [0, 1)".into());
        }
        check_normalize(&mut bad, "training.normalize", &t.normalize);

        // validation / evaluation
        if self.validation.patches_per_slide == PatchCount::Count(0) {
            bad(
                "validation.patches_per_slide",
                "must be >= 1 or \"all\"".into(),
            );
        }
        let ev = &self.evaluation;
        if ev.patches_per_slide == PatchCount::Count(0) {
            bad(
                "evaluation.patches_per_slide",
                "must be >= 1 or \"all\"".into(),
            );
        }
        if ev.fuse_weights.len() != 4
            || ev
                .fuse_weights
                .iter()
                .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            bad(
                "evaluation.fuse_weights",
                format!(
                    "needs 4 finite weights >= 0 (one per scale), got {:?}",
                    ev.fuse_weights
                ),
            );
        }
        if ev.tta_multipliers.is_empty()
            || ev
                .tta_multipliers
                .iter()
                .any(|x| !(x.is_finite() && *x > 0.0))
        {
            bad(
                "evaluation.tta_multipliers",
                "needs at least one multiplier > 0".into(),
            );
        }

        // inference
        let inf = &self.inference;
        if inf.batch_size == BatchSize::Fixed(0) {
            bad("inference.batch_size", "must be >= 1 or auto".into());
        }
        if !(inf.overlap_ratio >= 0.0 && inf.overlap_ratio < 1.0) {
            bad(
                "inference.overlap_ratio",
                format!(
                    "must be in [0, 1) (fraction of the tile side), got {}",
                    inf.overlap_ratio
                ),
            );
        }
        if inf.patch_size == Some(0) {
            bad("inference.patch_size", "must be > 0 or null".into());
        }
        if let (Some(side), Some(strides)) = (inf.patch_size, mit_strides(&self.model.strides))
            && side > 0
            && let Some(m) = mit_input_problem(side, strides)
        {
            bad("inference.patch_size", m);
        }
        if inf.output_downsample == OutputDownsample::Factor(0) {
            bad("inference.output_downsample", "must be >= 1 or auto".into());
        }
        if inf.spacing_um.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            bad(
                "inference.spacing_um",
                "must be > 0 (µm per pixel) or null".into(),
            );
        }
        if inf.max_output_side_px == 0 {
            bad("inference.max_output_side_px", "must be >= 1".into());
        }
        let pp = &inf.post_processing;
        if pp.morphological_op != MorphOp::None && pp.kernel_size == 0 {
            bad(
                "inference.post_processing.kernel_size",
                "must be >= 1 when morphological_op is closing or opening".into(),
            );
        }
        if inf.crf.iterations == 0 && inf.use_crf {
            bad(
                "inference.crf.iterations",
                "must be >= 1 when use_crf is true".into(),
            );
        }
        if let Some(a) = inf.min_component_size_um2
            && !(a.is_finite() && a >= 0.0)
        {
            bad(
                "inference.min_component_size_um2",
                "must be >= 0 or null".into(),
            );
        }
        v
    }

    /// The config as YAML text (paths as resolved).
    pub fn to_yaml_string(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(ConfigError::Serialise)
    }

    /// Writes the resolved config to `<dir>/config.resolved.yaml` (creating `dir`), returns the path.
    pub fn write_resolved(&self, dir: &Path) -> Result<PathBuf, ConfigError> {
        let text = self.to_yaml_string()?;
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(RESOLVED_CONFIG_FILE);
        let tmp = dir.join(format!(".{RESOLVED_CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|source| ConfigError::Write {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The effective network input size for inference.
    pub fn inference_patch_size(&self) -> u32 {
        self.inference.patch_size.unwrap_or(self.patch_size)
    }

    /// The effective k-means seed.
    pub fn kmeans_seed(&self) -> u64 {
        self.prototypes.kmeans.seed.unwrap_or(self.seed)
    }
}

/// Spatial-reduction ratios of the four MiT stages (the same in mit_b0 .. mit_b5).
const MIT_SR_RATIOS: [u32; 4] = [8, 4, 2, 1];

/// The 4 strides of `model.strides` when they are valid (else `None`; reported elsewhere).
fn mit_strides(strides: &[u32]) -> Option<[u32; 4]> {
    let s: [u32; 4] = strides.try_into().ok()?;
    (!s.contains(&0)).then_some(s)
}

/// The grid side of each MiT stage for an input side of `side_px`: every overlapping patch
/// embedding (kernel k, padding k/2, stride s, k odd) gives `ceil(n / s)`.
fn mit_stage_grids(side_px: u32, strides: [u32; 4]) -> [u32; 4] {
    let mut n = side_px;
    strides.map(|s| {
        n = n.div_ceil(s);
        n
    })
}

/// The smallest input side the MiT backbone accepts with these strides: every stage's grid must
/// be at least its spatial-reduction ratio (the attention's reduction conv has kernel = stride =
/// ratio and no padding).
pub fn mit_min_input_px(strides: [u32; 4]) -> u32 {
    let ok = |n: u32| {
        mit_stage_grids(n, strides)
            .iter()
            .zip(MIT_SR_RATIOS)
            .all(|(&g, r)| g >= r)
    };
    // The grid of every stage grows with the input, so the first side that works is the minimum.
    let mut n = 1;
    while !ok(n) && n < 1 << 20 {
        n += 1;
    }
    n
}

/// Why an input side of `side_px` cannot go through the MiT backbone, if it cannot.
fn mit_input_problem(side_px: u32, strides: [u32; 4]) -> Option<String> {
    let min = mit_min_input_px(strides);
    (side_px < min).then(|| {
        format!(
            "{side_px} px is smaller than the MiT backbone accepts with model.strides {strides:?}: \
             its stage grids would be {:?} px, below the attention's spatial-reduction ratios \
             {MIT_SR_RATIOS:?}; use at least {min} px (e.g. 112 or 224)",
            mit_stage_grids(side_px, strides)
        )
    })
}

fn check_normalize(bad: &mut impl FnMut(&str, String), key: &str, n: &Normalize) {
    if n.mean.len() != 3 || n.mean.iter().any(|x| !x.is_finite()) {
        bad(
            &format!("{key}.mean"),
            format!("needs 3 finite values, got {:?}", n.mean),
        );
    }
    if n.std.len() != 3 || n.std.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        bad(
            &format!("{key}.std"),
            format!("needs 3 values > 0, got {:?}", n.std),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "paths: {split_csv: s.csv, labels_csv: l.csv, wsi_dir: w, coordinates_dir: c}\nclass_order: [a, b]\n";

    #[test]
    fn layered_configs_later_files_win_and_paths_follow_their_file() {
        let dir = std::env::temp_dir().join(format!("pbip-cfg-layers-{}", std::process::id()));
        let a = dir.join("presets");
        let b = dir.join("data");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            a.join("cpu.yaml"),
            "patch_size: 112\ntraining: {epochs: 1, batch_size: 8, optimizer: {lr: 0.001}}\nmodel: {backbone: mit_b0, pretrained: weights/b0.pth}\n",
        )
        .unwrap();
        std::fs::write(
            b.join("config.yaml"),
            "paths: {split_csv: s.csv, labels_csv: l.csv, wsi_dir: w, coordinates_dir: c}\nclass_order: [x, y]\ntraining: {batch_size: 4}\n",
        )
        .unwrap();
        let c = Config::load_layered(&[a.join("cpu.yaml"), b.join("config.yaml")], &[]).unwrap();
        // later file wins for batch_size; the earlier file's other keys in the same section stay
        assert_eq!(c.training.batch_size, 4);
        assert_eq!(c.training.epochs, 1);
        assert_eq!(c.training.optimizer.lr, 0.001);
        assert_eq!(c.patch_size, 112);
        // each file's relative paths resolve against its own folder
        assert_eq!(
            c.paths.split_csv,
            std::path::absolute(b.join("s.csv")).unwrap()
        );
        assert_eq!(
            c.model.pretrained.as_deref(),
            Some(
                std::path::absolute(a.join("weights/b0.pth"))
                    .unwrap()
                    .as_path()
            )
        );
        // reversed order: the preset now overrides the data file's batch size
        let r = Config::load_layered(&[b.join("config.yaml"), a.join("cpu.yaml")], &[]).unwrap();
        assert_eq!(r.training.batch_size, 8);
        // --set beats every file
        let s = Config::load_layered(
            &[a.join("cpu.yaml"), b.join("config.yaml")],
            &["training.batch_size=2".into()],
        )
        .unwrap();
        assert_eq!(s.training.batch_size, 2);
        // an unknown key names its file
        std::fs::write(a.join("bad.yaml"), "training: {epochz: 3}\n").unwrap();
        let e = Config::load_layered(&[a.join("bad.yaml"), b.join("config.yaml")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.yaml") && e.contains("training.epochz"),
            "{e}"
        );
        // a bad --set value is blamed on the --set, not on a file
        let e = Config::load_layered(
            &[a.join("cpu.yaml"), b.join("config.yaml")],
            &["training.epochs=many".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--set training.epochs=many"), "{e}");
        let e = Config::load_layered(&[b.join("config.yaml")], &["patch_size=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--set patch_size=0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_yaml_str(text, Path::new("/base"), "test.yaml", &sets)
    }

    #[test]
    fn inference_batch_size_is_a_number_or_auto() {
        assert_eq!(
            load(MINIMAL, &[]).unwrap().inference.batch_size,
            BatchSize::Fixed(32)
        );
        let c = load(MINIMAL, &["inference.batch_size=auto"]).unwrap();
        assert_eq!(c.inference.batch_size, BatchSize::Auto(AutoKeyword::Auto));
        assert_eq!(c.inference.batch_size.fixed(), None);
        let c = load(&format!("{MINIMAL}inference: {{batch_size: 12}}\n"), &[]).unwrap();
        assert_eq!(c.inference.batch_size.fixed(), Some(12));
        for bad in ["0", "many", "-3"] {
            let e = load(MINIMAL, &[&format!("inference.batch_size={bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("inference.batch_size"), "{bad}: {e}");
        }
    }

    #[test]
    fn mit_minimum_input_side_follows_strides_and_reduction_ratios() {
        // stage 1: ceil(n / 4) >= 8 (sr 8) needs n >= 29; later stages then have 4 >= 4, 2 >= 2,
        // 2 >= 1 (strides 4,2,2,1) or 1 >= 1 (4,2,2,2)
        assert_eq!(mit_min_input_px([4, 2, 2, 1]), 29);
        assert_eq!(mit_min_input_px([4, 2, 2, 2]), 29);
        // stride 8 first: ceil(n / 8) >= 8 needs n >= 57
        assert_eq!(mit_min_input_px([8, 2, 2, 1]), 57);
        // stage 2 binds: ceil(ceil(n / 2) / 4) >= 4 needs n >= 25, stage 1 ceil(n / 2) >= 8 needs 15
        assert_eq!(mit_min_input_px([2, 4, 1, 1]), 25);
        assert_eq!(mit_stage_grids(16, [4, 2, 2, 1]), [4, 2, 1, 1]);
    }

    #[test]
    fn patch_sizes_the_backbone_cannot_take_are_config_errors() {
        for side in ["7", "8", "16", "28"] {
            let e = load(MINIMAL, &[&format!("patch_size={side}")])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("patch_size") && e.contains("at least 29 px"),
                "{e}"
            );
            let e = load(MINIMAL, &[&format!("inference.patch_size={side}")])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("inference.patch_size") && e.contains("29"),
                "{e}"
            );
        }
        assert!(load(MINIMAL, &["patch_size=29", "inference.patch_size=64"]).is_ok());
    }

    #[test]
    fn minimal_gets_seed_defaults_and_resolved_paths() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.training.epochs, 8);
        assert_eq!(c.training.optimizer.lr, 1e-3);
        assert_eq!(c.inference.overlap_ratio, 0.5);
        assert_eq!(c.paths.wsi_dir, PathBuf::from("/base/w"));
        assert_eq!(c.paths.work_dir, PathBuf::from("/base/work_dir"));
    }

    #[test]
    fn precomputed_feature_paths_resolve_and_their_keys_are_checked() {
        let c = load(
            MINIMAL,
            &[
                "prototypes.precomputed_features.dir=s2v/run1",
                "prototypes.precomputed_features.coordinates_dir=/abs/tiles",
                "prototypes.precomputed_features.encoder=uni",
                "prototypes.precomputed_features.suffix=.NPZ",
            ],
        )
        .unwrap();
        let pf = &c.prototypes.precomputed_features;
        assert_eq!(pf.dir.as_deref(), Some(Path::new("/base/s2v/run1")));
        assert_eq!(pf.coordinates_dir.as_deref(), Some(Path::new("/abs/tiles")));
        assert_eq!(pf.encoder.as_deref(), Some("uni"));
        // off by default
        let d = load(MINIMAL, &[]).unwrap();
        assert!(d.prototypes.precomputed_features.dir.is_none());
        assert_eq!(d.prototypes.precomputed_features.suffix, ".pt");

        let e = load(
            MINIMAL,
            &[
                "prototypes.precomputed_features.suffix=.h5",
                "prototypes.precomputed_features.encoder=' '",
                "prototypes.encoder.name=''",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("prototypes.precomputed_features.suffix") && e.contains("HDF5"),
            "{e}"
        );
        assert!(e.contains("prototypes.precomputed_features.encoder"), "{e}");
        assert!(e.contains("prototypes.encoder.name"), "{e}");
    }

    #[test]
    fn hub_references_are_not_resolved_as_paths() {
        let c = load(
            MINIMAL,
            &[
                "model.pretrained=hf:nvidia/mit-b1",
                "prototypes.encoder.weights=hf:org/name@v1/model.safetensors",
                "prototypes.encoder.projection_weights=proj.safetensors",
            ],
        )
        .unwrap();
        assert_eq!(
            c.model.pretrained.as_deref(),
            Some(Path::new("hf:nvidia/mit-b1"))
        );
        assert_eq!(
            c.prototypes.encoder.weights.as_deref(),
            Some(Path::new("hf:org/name@v1/model.safetensors"))
        );
        assert_eq!(
            c.prototypes.encoder.projection_weights.as_deref(),
            Some(Path::new("/base/proj.safetensors"))
        );
    }

    #[test]
    fn set_overrides_are_typed() {
        let c = load(
            MINIMAL,
            &[
                "training.epochs=2",
                "training.optimizer.lr=5e-5",
                "prototypes.k_list=[1,2]",
                "inference.use_crf=false",
            ],
        )
        .unwrap();
        assert_eq!(c.training.epochs, 2);
        assert_eq!(c.training.optimizer.lr, 5e-5);
        assert_eq!(c.prototypes.k_list, vec![1, 2]);
        assert!(!c.inference.use_crf);
    }

    #[test]
    fn set_unknown_key_lists_allowed() {
        let e = load(MINIMAL, &["training.optimiser.lr=1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `training.optimiser`"), "{e}");
        assert!(e.contains("optimizer") && e.contains("epochs"), "{e}");
        let e = load(MINIMAL, &["training.epochs.x=1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a section"), "{e}");
        let e = load(MINIMAL, &["noequals"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn unknown_field_and_wrong_type_name_the_path() {
        let e = load(&format!("{MINIMAL}training: {{epochz: 3}}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.yaml") && e.contains("training") && e.contains("epochz"),
            "{e}"
        );
        let e = load(
            &format!("{MINIMAL}training: {{optimizer: {{lr: fast}}}}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("training.optimizer.lr"), "{e}");
        let e = load(&format!("{MINIMAL}model: {{backbone: mit_b9}}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.backbone") && e.contains("mit_b5"), "{e}");
    }

    #[test]
    fn validation_reports_all_problems() {
        let e = load(
            MINIMAL,
            &[
                "prototypes.k_list=[3]",
                "inference.overlap_ratio=1.0",
                "training.optimizer.lr=0",
                "patch_size=0",
                "training.batch_size=0",
            ],
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = &e else {
            panic!("{e}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "prototypes.k_list",
            "inference.overlap_ratio",
            "training.optimizer.lr",
            "patch_size",
            "training.batch_size",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
        let e = load(MINIMAL, &["class_order=[a, a]"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate class name `a`"), "{e}");
        let e = load(MINIMAL, &["class_order=[]", "prototypes.k_list=[]"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("class_order"), "{e}");
    }

    #[test]
    fn patch_count_all_or_number() {
        let c = load(MINIMAL, &["evaluation.patches_per_slide=all"]).unwrap();
        assert_eq!(
            c.evaluation.patches_per_slide,
            PatchCount::All(AllKeyword::All)
        );
        let c = load(MINIMAL, &["evaluation.patches_per_slide=4"]).unwrap();
        assert_eq!(c.evaluation.patches_per_slide, PatchCount::Count(4));
        assert!(load(MINIMAL, &["evaluation.patches_per_slide=some"]).is_err());
    }

    #[test]
    fn resolved_roundtrip() {
        let c = load(MINIMAL, &["prototypes.kmeans.init=numpy_legacy"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = c.write_resolved(dir.path()).unwrap();
        let c2 = Config::load(&p, &[]).unwrap();
        assert_eq!(c, c2);
    }
}

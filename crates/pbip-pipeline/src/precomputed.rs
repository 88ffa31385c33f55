//! Precomputed tile features (`prototypes.precomputed_features`): the per-slide tile embeddings
//! slide2vec wrote, which stage 1 takes for the prototype coordinates instead of running the
//! encoder.
//!
//! What slide2vec writes (github.com/clemsgrs/slide2vec; `docs/output-layout.rst`,
//! `slide2vec/artifacts.py`, and `slide2vec/embed.py` of the 1.x/2.x releases):
//!
//! * current releases: `<output_dir>/tile_embeddings/<sample_id>.pt`, a tensor `[N, D]` saved with
//!   `torch.save` (fp16 or fp32), or `<sample_id>.npz` with the array `features` (Python API,
//!   `output_format="npz"`), next to `<sample_id>.meta.json` (`encoder_name`, `feature_dim`,
//!   `coordinates_npz_path`, ...); the tiles are `<output_dir>/tiles/<sample_id>.coordinates.npz`
//!   (+ `.coordinates.meta.json`), rows in the order of the feature rows;
//! * earlier releases: `<output_dir>/features/<name>.pt` (`<name>` = slide file stem with spaces
//!   replaced by `_`; `<name>-tiles.pt` for the tile features of a slide-level model), rows in the
//!   order of hs2p's `<output_dir>/coordinates/<name>.npy`; the model is `model.name` of the run's
//!   `<output_dir>/config.yaml`.
//!
//! A feature row belongs to the tile of the same row of the coordinate file; a prototype
//! coordinate of stage 0 takes the row whose level-0 top-left (x, y) is its own (or, with
//! `tolerance_px`, the nearest within that many px in x and in y). slide2vec never leaves HDF5
//! feature files (its `.h5` / `.npy` shards are temporary), so `.pt`, `.npz` and `.npy` are read.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use pbip_config::{Config, PrecomputedFeatures};
use pbip_coords::Coordinates;
use pbip_weights::HostTensor;

use crate::PipelineError;
use crate::encoder;

const STAGE: &str = "embed-prototypes";
const KEY: &str = "prototypes.precomputed_features";

fn data_err(message: String) -> PipelineError {
    PipelineError::Data {
        stage: STAGE,
        message,
    }
}

/// How the feature files are laid out under `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// slide2vec's current `tile_embeddings/` (+ `tiles/` coordinates, `.meta.json` sidecars).
    TileEmbeddings,
    /// slide2vec's earlier `features/` (+ hs2p `coordinates/`, run `config.yaml`).
    Features,
    /// `dir` holds the feature files itself.
    Folder,
}

impl Layout {
    /// Description recorded in the outputs.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::TileEmbeddings => "slide2vec tile_embeddings/",
            Layout::Features => "slide2vec features/",
            Layout::Folder => "folder",
        }
    }
}

/// The precomputed features a config points at.
#[derive(Debug, Clone)]
pub struct Source {
    /// `prototypes.precomputed_features.dir`.
    pub dir: PathBuf,
    /// Folder holding the per-slide feature files.
    pub features_dir: PathBuf,
    /// What was found in `dir`.
    pub layout: Layout,
    /// `prototypes.precomputed_features.coordinates_dir` (the only place looked in when set).
    pub coordinates_dir: Option<PathBuf>,
    /// Feature file suffix.
    pub suffix: String,
    /// The slide2vec run config (`config.yaml` in `dir`, or above a bare feature folder).
    pub run_config: Option<PathBuf>,
}

/// One slide's files, before anything big is read.
#[derive(Debug, Clone)]
pub struct SlideFiles {
    /// The feature file.
    pub features: PathBuf,
    /// slide2vec's `<id>.meta.json` next to it, when present.
    pub sidecar: Option<Sidecar>,
    /// The coordinate file of its rows.
    pub coordinates: PathBuf,
}

/// What a slide2vec `.meta.json` sidecar records about a feature file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    /// The sidecar file.
    pub path: PathBuf,
    /// `encoder_name`.
    pub encoder_name: Option<String>,
    /// `feature_dim`.
    pub feature_dim: Option<usize>,
    /// `coordinates_npz_path`.
    pub coordinates_npz_path: Option<PathBuf>,
}

impl Source {
    /// Finds the layout of `prototypes.precomputed_features.dir`; `None` when it is not set.
    pub fn locate(pf: &PrecomputedFeatures) -> Result<Option<Source>, PipelineError> {
        let Some(dir) = &pf.dir else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Err(data_err(format!(
                "{KEY}.dir: {} is not a folder; point it at slide2vec's output folder (the one \
                 holding tile_embeddings/ or features/) or at the folder of the feature files",
                dir.display()
            )));
        }
        let (layout, features_dir, default_coords): (_, _, Option<PathBuf>) =
            if dir.join("tile_embeddings").is_dir() {
                (
                    Layout::TileEmbeddings,
                    dir.join("tile_embeddings"),
                    Some(dir.join("tiles")),
                )
            } else if dir.join("features").is_dir() {
                (
                    Layout::Features,
                    dir.join("features"),
                    Some(dir.join("coordinates")),
                )
            } else {
                (Layout::Folder, dir.clone(), None)
            };
        if let Some(c) = &pf.coordinates_dir
            && !c.is_dir()
        {
            return Err(data_err(format!(
                "{KEY}.coordinates_dir: {} is not a folder; give the folder of the tile \
                 coordinates the features were made from (slide2vec's tiles/ or coordinates/), or null",
                c.display()
            )));
        }
        let run_config = [
            Some(dir.join("config.yaml")),
            dir.parent().map(|p| p.join("config.yaml")),
        ]
        .into_iter()
        .flatten()
        .take(if layout == Layout::Folder { 2 } else { 1 })
        .find(|p| p.is_file());
        tracing::debug!(
            dir = %dir.display(),
            layout = layout.describe(),
            coordinates = ?pf.coordinates_dir.as_ref().or(default_coords.as_ref()),
            "precomputed features"
        );
        Ok(Some(Source {
            dir: dir.clone(),
            features_dir,
            layout,
            coordinates_dir: pf.coordinates_dir.clone(),
            suffix: pf.suffix.clone(),
            run_config,
        }))
    }

    /// The names a slide's files may have: its stem, and the stem with spaces replaced by `_`
    /// (slide2vec 1.x).
    fn stems(wsi_name: &str) -> Vec<String> {
        let stem = pbip_config::normalise_slide_key(wsi_name);
        let underscored = stem.replace(' ', "_");
        if underscored == stem {
            vec![stem]
        } else {
            vec![stem, underscored]
        }
    }

    /// The feature file of slide `wsi_name`: `<stem><suffix>` (or slide2vec 1.x's
    /// `<stem>-tiles<suffix>`), `None` when there is none.
    pub fn feature_file(&self, wsi_name: &str) -> Option<PathBuf> {
        let stems = Self::stems(wsi_name);
        let mut names: Vec<String> = stems
            .iter()
            .map(|s| format!("{s}{}", self.suffix))
            .collect();
        if self.layout == Layout::Features {
            names.extend(stems.iter().map(|s| format!("{s}-tiles{}", self.suffix)));
        }
        names
            .into_iter()
            .map(|n| self.features_dir.join(n))
            .find(|p| p.is_file())
    }

    /// The files of slide `wsi_name`: the feature file, its sidecar, and its coordinates (the
    /// configured coordinates folder, else the sidecar's `coordinates_npz_path`, else the
    /// layout's folder; `<stem>.coordinates.npz` before `<stem>.npy`).
    pub fn slide_files(&self, wsi_name: &str) -> Result<SlideFiles, PipelineError> {
        let features = self.feature_file(wsi_name).ok_or_else(|| {
            data_err(format!(
                "no precomputed features for slide {wsi_name} in {} (looked for {}{}); embed it \
                 with slide2vec, or fix {KEY}.dir / {KEY}.suffix",
                self.features_dir.display(),
                pbip_config::normalise_slide_key(wsi_name),
                self.suffix
            ))
        })?;
        let sidecar = read_sidecar(&features)?;
        let stems = Self::stems(wsi_name);
        let in_dir = |dir: &Path| -> Vec<PathBuf> {
            stems
                .iter()
                .flat_map(|s| {
                    [
                        dir.join(format!("{s}.coordinates.npz")),
                        dir.join(format!("{s}.npy")),
                    ]
                })
                .collect()
        };
        let mut candidates = Vec::new();
        match &self.coordinates_dir {
            Some(c) => candidates.extend(in_dir(c)),
            None => {
                candidates.extend(
                    sidecar
                        .as_ref()
                        .and_then(|s| s.coordinates_npz_path.clone()),
                );
                if let Some(c) = self.layout_coordinates_dir() {
                    candidates.extend(in_dir(&c));
                }
            }
        }
        let coordinates = candidates.iter().find(|p| p.is_file()).cloned();
        let coordinates = coordinates.ok_or_else(|| {
            let looked = if candidates.is_empty() {
                "nowhere: no coordinates folder is known".to_string()
            } else {
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            data_err(format!(
                "{}: the tile coordinates of these features were not found (looked in {looked}); \
                 set {KEY}.coordinates_dir to the folder of slide2vec's <slide>.coordinates.npz or \
                 hs2p's <slide>.npy files",
                features.display()
            ))
        })?;
        Ok(SlideFiles {
            features,
            sidecar,
            coordinates,
        })
    }

    /// The coordinates folder of the layout (`tiles/`, `coordinates/`).
    fn layout_coordinates_dir(&self) -> Option<PathBuf> {
        match self.layout {
            Layout::TileEmbeddings => Some(self.dir.join("tiles")),
            Layout::Features => Some(self.dir.join("coordinates")),
            Layout::Folder => None,
        }
    }

    /// `model.name` (and `model.level`) of the slide2vec run config, when there is one.
    pub fn run_config_model(&self) -> Result<Option<(PathBuf, String)>, PipelineError> {
        let Some(path) = &self.run_config else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
            path: path.clone(),
            source,
        })?;
        let v: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| PipelineError::Json {
                path: path.clone(),
                message: format!("not a YAML file: {e}"),
            })?;
        let model = v.get("model");
        if let Some(level) = model.and_then(|m| m.get("level")).and_then(|l| l.as_str())
            && level == "region"
        {
            return Err(data_err(format!(
                "{}: model.level is region: slide2vec wrote region features [tiles per region, D] per \
                 coordinate, not one feature per tile; embed the slides with a tile-level model",
                path.display()
            )));
        }
        Ok(model
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.trim().is_empty())
            .map(|n| (path.clone(), n.trim().to_string())))
    }
}

/// Reads slide2vec's `<id>.meta.json` next to a feature file, if there is one.
fn read_sidecar(features: &Path) -> Result<Option<Sidecar>, PipelineError> {
    let name = features
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
    let path = features.with_file_name(format!("{stem}.meta.json"));
    if !path.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = crate::read_json(&path)?;
    if let Some(kind) = v.get("artifact_type").and_then(|a| a.as_str())
        && kind != "tile_embeddings"
    {
        return Err(data_err(format!(
            "{}: artifact_type is {kind}, not tile_embeddings: point {KEY}.dir at slide2vec's \
             tile embeddings (save_tile_embeddings for a slide-level model)",
            path.display()
        )));
    }
    let encoder_name = v
        .get("encoder_name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.trim().to_string());
    let feature_dim = v
        .get("feature_dim")
        .and_then(serde_json::Value::as_u64)
        .and_then(|d| usize::try_from(d).ok());
    let coordinates_npz_path = v
        .get("coordinates_npz_path")
        .and_then(|n| n.as_str())
        .map(PathBuf::from);
    Ok(Some(Sidecar {
        path,
        encoder_name,
        feature_dim,
        coordinates_npz_path,
    }))
}

/// Reads a per-slide feature file: `.pt` (a tensor saved with `torch.save`), `.npz` (array
/// `features`) or `.npy`, any float dtype, as `[N, D]` f32.
pub fn read_features(path: &Path) -> Result<HostTensor, PipelineError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let t = if name.ends_with(".pt") {
        pbip_weights::read_pth_tensor(path).map_err(|e| data_err(e.to_string()))?
    } else if name.ends_with(".npz") {
        let mut npz = npyz::npz::NpzArchive::open(path).map_err(|e| {
            data_err(format!(
                "{}: not a readable .npz archive: {e}",
                path.display()
            ))
        })?;
        let names: Vec<String> = npz.array_names().map(str::to_string).collect();
        let file = npz
            .by_name("features")
            .map_err(|e| data_err(format!("{}: array features: {e}", path.display())))?
            .ok_or_else(|| {
                data_err(format!(
                    "{}: no array named features (arrays: {}); slide2vec stores tile embeddings \
                     under features",
                    path.display(),
                    names.join(", ")
                ))
            })?;
        npy_to_tensor(path, file)?
    } else if name.ends_with(".npy") {
        let f = std::fs::File::open(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = npyz::NpyFile::new(std::io::BufReader::new(f))
            .map_err(|e| data_err(format!("{}: not a .npy file: {e}", path.display())))?;
        npy_to_tensor(path, file)?
    } else {
        return Err(data_err(format!(
            "{}: unsupported feature file type; {KEY}.suffix must end in {}",
            path.display(),
            pbip_config::PRECOMPUTED_FEATURE_SUFFIXES.join(", ")
        )));
    };
    match t.shape.len() {
        2 => Ok(t),
        1 => Err(data_err(format!(
            "{}: a 1-D tensor {:?} is a slide embedding, not tile embeddings [N, D]; point {KEY}.dir \
             at slide2vec's tile embeddings (tile_embeddings/, or save_tile_embeddings: true for a \
             slide-level model)",
            path.display(),
            t.shape
        ))),
        3 => Err(data_err(format!(
            "{}: a 3-D tensor {:?} holds region (hierarchical) features [regions, tiles, D], not one \
             feature per tile; embed the slides with a tile-level model and no region_tile_multiple",
            path.display(),
            t.shape
        ))),
        _ => Err(data_err(format!(
            "{}: tile embeddings must be [N, D], found shape {:?}",
            path.display(),
            t.shape
        ))),
    }
}

/// An `.npy` array (plain float dtype) as a row-major f32 tensor.
fn npy_to_tensor<R: Read>(
    path: &Path,
    file: npyz::NpyFile<R>,
) -> Result<HostTensor, PipelineError> {
    let bad = |m: String| data_err(format!("{}: {m}", path.display()));
    let shape: Vec<usize> = file
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_, _>>()?;
    let fortran = file.order() == npyz::Order::Fortran;
    let dtype = file.dtype().descr();
    let io = |e: std::io::Error| bad(format!("reading the array: {e}"));
    let data: Vec<f32> = match file.try_data::<f32>() {
        Ok(r) => r.collect::<Result<_, _>>().map_err(io)?,
        Err(file) => match file.try_data::<f64>() {
            Ok(r) => r
                .map(|v| v.map(|v| v as f32))
                .collect::<Result<_, _>>()
                .map_err(io)?,
            Err(file) => match file.try_data::<npyz::half::f16>() {
                Ok(r) => r
                    .map(|v| v.map(npyz::half::f16::to_f32))
                    .collect::<Result<_, _>>()
                    .map_err(io)?,
                Err(_) => {
                    return Err(bad(format!(
                        "dtype {dtype} is not a float array (float16, float32 or float64 expected)"
                    )));
                }
            },
        },
    };
    let data = if fortran && shape.len() == 2 {
        // column-major [N, D] → row-major
        let (n, d) = (shape[0], shape[1]);
        let mut out = vec![0f32; data.len()];
        for j in 0..d {
            for i in 0..n {
                out[i * d + j] = data[j * n + i];
            }
        }
        out
    } else if fortran && shape.len() > 2 {
        return Err(bad(
            "Fortran-order arrays of more than 2 dimensions are not supported".into(),
        ));
    } else {
        data
    };
    HostTensor::new(shape, data).map_err(|e| bad(e.to_string()))
}

/// Where the name of the model that made the features comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureModel {
    /// The model name.
    pub name: String,
    /// `prototypes.precomputed_features.encoder` or the file recording it.
    pub from: String,
}

/// The model that made the features: the configured `encoder` key, checked against what slide2vec
/// recorded (sidecars' `encoder_name`, else the run config's `model.name`); without the key, the
/// recorded name. Errors when the records disagree with the key or with each other, or when
/// neither says.
pub fn feature_model(
    pf: &PrecomputedFeatures,
    source: &Source,
    sidecars: &[&Sidecar],
) -> Result<FeatureModel, PipelineError> {
    let mut records: Vec<(String, String)> = sidecars
        .iter()
        .filter_map(|s| {
            s.encoder_name
                .clone()
                .map(|n| (s.path.display().to_string(), n))
        })
        .collect();
    if records.is_empty()
        && let Some((p, n)) = source.run_config_model()?
    {
        records.push((format!("{} (model.name)", p.display()), n));
    }
    if let Some((first_from, first)) = records.first()
        && let Some((other_from, other)) = records
            .iter()
            .find(|(_, n)| !encoder::same_model_name(n, first))
    {
        return Err(data_err(format!(
            "the precomputed features in {} come from different models: `{first}` ({first_from}) \
             and `{other}` ({other_from}); use features of one model",
            source.dir.display()
        )));
    }
    match (&pf.encoder, records.first()) {
        (Some(key), Some((from, recorded))) if !encoder::same_model_name(key, recorded) => {
            Err(data_err(format!(
                "{from} says the features were made by `{recorded}`, but {KEY}.encoder is `{key}`; \
                 set {KEY}.encoder to the model that made them (or null to take slide2vec's record)"
            )))
        }
        (Some(key), _) => Ok(FeatureModel {
            name: key.trim().to_string(),
            from: format!("{KEY}.encoder"),
        }),
        (None, Some((from, recorded))) => Ok(FeatureModel {
            name: recorded.clone(),
            from: from.clone(),
        }),
        (None, None) => Err(data_err(format!(
            "nothing in {} says which model made the features (no .meta.json encoder_name, no \
             config.yaml model.name); set {KEY}.encoder to its name (e.g. uni)",
            source.dir.display()
        ))),
    }
}

/// Refuses features of another model than the configured encoder.
pub fn check_model(
    cfg: &Config,
    model: &FeatureModel,
    source: &Source,
) -> Result<(), PipelineError> {
    let enc = &cfg.prototypes.encoder;
    let ours = encoder::model_name(enc);
    if encoder::same_model_name(&ours, &model.name) {
        return Ok(());
    }
    Err(data_err(format!(
        "the precomputed features in {} were made by `{}` ({}), but prototypes.encoder is {}: \
         prototypes from one model and training features from another do not match. Fix: configure \
         that model in prototypes.encoder (kind: vit with vit.preset, or prototypes.encoder.name \
         for a model without a preset), or point {KEY}.dir at features made by `{ours}`",
        source.dir.display(),
        model.name,
        model.from,
        encoder::describe(enc)
    )))
}

/// Refuses features whose width is not the configured encoder's.
pub fn check_dim(
    cfg: &Config,
    model: &FeatureModel,
    file: &Path,
    dim: usize,
    expected: usize,
) -> Result<(), PipelineError> {
    if dim == expected {
        return Ok(());
    }
    Err(data_err(format!(
        "{}: the precomputed features are {dim}-d (model `{}`), but prototypes.encoder {} gives \
         {expected}-d features; stage 3 compares training features with the prototypes, so the \
         widths must agree. Fix: configure the encoder that made the features (its vit.preset or \
         vit.arch, e.g. the output variant slide2vec used), or use features of the configured encoder",
        file.display(),
        model.name,
        encoder::describe(&cfg.prototypes.encoder)
    )))
}

/// Finds tiles by level-0 top-left coordinate, exactly or within a tolerance.
pub struct TileIndex<'a> {
    x: &'a [i64],
    y: &'a [i64],
    exact: HashMap<(i64, i64), usize>,
    /// Square buckets of side `tolerance + 1` (only with a tolerance).
    buckets: HashMap<(i64, i64), Vec<usize>>,
    tolerance: i64,
}

impl<'a> TileIndex<'a> {
    /// Indexes the tiles `(x[i], y[i])`; a repeated coordinate keeps its first row.
    pub fn new(x: &'a [i64], y: &'a [i64], tolerance_px: u32) -> Self {
        let tolerance = i64::from(tolerance_px);
        let mut exact = HashMap::with_capacity(x.len());
        let mut buckets: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
        for (i, (&xi, &yi)) in x.iter().zip(y).enumerate() {
            exact.entry((xi, yi)).or_insert(i);
            if tolerance > 0 {
                buckets
                    .entry((xi.div_euclid(tolerance + 1), yi.div_euclid(tolerance + 1)))
                    .or_default()
                    .push(i);
            }
        }
        TileIndex {
            x,
            y,
            exact,
            buckets,
            tolerance,
        }
    }

    /// The row of tile (x, y), else (with a tolerance) the nearest tile whose x and y are each
    /// within the tolerance (Euclidean distance, then the lower row on a tie).
    pub fn find(&self, x: i64, y: i64) -> Option<usize> {
        if let Some(&i) = self.exact.get(&(x, y)) {
            return Some(i);
        }
        if self.tolerance == 0 {
            return None;
        }
        let side = self.tolerance + 1;
        let (bx, by) = (x.div_euclid(side), y.div_euclid(side));
        let mut best: Option<(i64, usize)> = None;
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &i in self.buckets.get(&(bx + dx, by + dy)).into_iter().flatten() {
                    let (ex, ey) = (self.x[i] - x, self.y[i] - y);
                    if ex.abs() > self.tolerance || ey.abs() > self.tolerance {
                        continue;
                    }
                    let d = ex * ex + ey * ey;
                    if best.is_none_or(|(bd, bi)| d < bd || (d == bd && i < bi)) {
                        best = Some((d, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// The nearest tile at any distance (for error messages).
    pub fn nearest_any(&self, x: i64, y: i64) -> Option<(i64, i64)> {
        self.x
            .iter()
            .zip(self.y)
            .min_by_key(|&(&tx, &ty)| (tx - x).pow(2) + (ty - y).pow(2))
            .map(|(&tx, &ty)| (tx, ty))
    }
}

/// Reads a slide's tile coordinates (any format pbip-coords reads).
pub fn read_tiles(path: &Path) -> Result<Coordinates, PipelineError> {
    Ok(Coordinates::read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_index_exact_then_nearest_within_tolerance() {
        let x = [0, 224, 448, 224, 0];
        let y = [0, 0, 0, 224, 0];
        let exact = TileIndex::new(&x, &y, 0);
        assert_eq!(exact.find(224, 224), Some(3));
        assert_eq!(
            exact.find(0, 0),
            Some(0),
            "a repeated tile keeps its first row"
        );
        assert_eq!(exact.find(225, 224), None);
        assert_eq!(exact.nearest_any(230, 200), Some((224, 224)));

        let near = TileIndex::new(&x, &y, 8);
        assert_eq!(near.find(230, 219), Some(3));
        assert_eq!(near.find(440, -8), Some(2));
        // 9 px off in x: outside the tolerance even though y matches
        assert_eq!(near.find(457, 0), None);
        // the nearest of two tiles within the tolerance wins: (3, 3) is 4.2 px from (0, 0) and
        // (6, 0) 6 px from it
        let x2 = [0, 6];
        let y2 = [0, 0];
        let two = TileIndex::new(&x2, &y2, 8);
        assert_eq!(two.find(3, 3), Some(0));
        assert_eq!(two.find(5, 1), Some(1));
        // equidistant: the lower row
        assert_eq!(two.find(3, 0), Some(0));
    }

    #[test]
    fn npy_and_npz_features_of_every_float_dtype() {
        use npyz::WriterBuilder;
        let dir = tempfile::tempdir().unwrap();
        let vals: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        // f64 .npy [2, 3]
        let p64 = dir.path().join("a.npy");
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[2, 3])
                .writer(std::io::BufWriter::new(
                    std::fs::File::create(&p64).unwrap(),
                ))
                .begin_nd()
                .unwrap();
            w.extend(vals.iter().map(|&v| f64::from(v))).unwrap();
            w.finish().unwrap();
        }
        let t = read_features(&p64).unwrap();
        assert_eq!(
            (t.shape.clone(), t.data.clone()),
            (vec![2, 3], vals.clone())
        );

        // f16 inside an .npz under `features` (slide2vec's output_format="npz")
        let pz = dir.path().join("a.npz");
        {
            let mut npz = npyz::npz::NpzWriter::create(&pz).unwrap();
            let mut w = npz
                .array::<npyz::half::f16>("features", Default::default())
                .unwrap()
                .default_dtype()
                .shape(&[3, 2])
                .begin_nd()
                .unwrap();
            w.extend(vals.iter().map(|&v| npyz::half::f16::from_f32(v)))
                .unwrap();
            w.finish().unwrap();
        }
        let t = read_features(&pz).unwrap();
        assert_eq!(
            (t.shape.clone(), t.data.clone()),
            (vec![3, 2], vals.clone())
        );

        // an .npz without `features`, an integer array, a 1-D slide embedding: clear errors
        let pn = dir.path().join("b.npz");
        {
            let mut npz = npyz::npz::NpzWriter::create(&pn).unwrap();
            let mut w = npz
                .array::<f32>("latents", Default::default())
                .unwrap()
                .default_dtype()
                .shape(&[2])
                .begin_nd()
                .unwrap();
            w.extend([1.0f32, 2.0]).unwrap();
            w.finish().unwrap();
        }
        let e = read_features(&pn).unwrap_err().to_string();
        assert!(e.contains("b.npz") && e.contains("latents"), "{e}");
        let pi = dir.path().join("i.npy");
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[2, 1])
                .writer(std::io::BufWriter::new(std::fs::File::create(&pi).unwrap()))
                .begin_nd()
                .unwrap();
            w.extend([3i32, 4]).unwrap();
            w.finish().unwrap();
        }
        let e = read_features(&pi).unwrap_err().to_string();
        assert!(e.contains("i.npy") && e.contains("float"), "{e}");
        let p1 = dir.path().join("s.npy");
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[4])
                .writer(std::io::BufWriter::new(std::fs::File::create(&p1).unwrap()))
                .begin_nd()
                .unwrap();
            w.extend([1.0f32, 2.0, 3.0, 4.0]).unwrap();
            w.finish().unwrap();
        }
        let e = read_features(&p1).unwrap_err().to_string();
        assert!(e.contains("s.npy") && e.contains("slide embedding"), "{e}");
        let e = read_features(&dir.path().join("x.h5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.h5") && e.contains(".pt"), "{e}");
    }

    #[test]
    fn torch_written_tensor_files_are_read() {
        // torch.save of a bare fp16 tensor, as slide2vec writes tile_embeddings/<id>.pt
        let dir = pbip_testdata::crate_dir().join("../pbip-weights/testdata");
        let t = read_features(&dir.join("tile_features_f16.pt")).unwrap();
        assert_eq!(t.shape, vec![5, 3]);
        let text = std::fs::read_to_string(dir.join("tile_features.expected.json")).unwrap();
        let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: Vec<f32> = exp["tile_features_f16.pt"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(t.data, want);
        // a dict is not a tile-embedding file
        let e = read_features(&dir.join("dict_not_tensor.pt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dict_not_tensor.pt"), "{e}");
    }

    #[test]
    fn model_names_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let src = Source {
            dir: dir.path().to_path_buf(),
            features_dir: dir.path().join("features"),
            layout: Layout::Features,
            coordinates_dir: None,
            suffix: ".pt".into(),
            run_config: None,
        };
        let side = |path: &str, name: Option<&str>| Sidecar {
            path: PathBuf::from(path),
            encoder_name: name.map(str::to_string),
            feature_dim: None,
            coordinates_npz_path: None,
        };
        let mut pf = PrecomputedFeatures::default();
        // nothing recorded, no key: error naming the key
        let e = feature_model(&pf, &src, &[]).unwrap_err().to_string();
        assert!(e.contains("precomputed_features.encoder"), "{e}");
        // the key alone
        pf.encoder = Some("H_optimus_0".into());
        let m = feature_model(&pf, &src, &[]).unwrap();
        assert_eq!(m.name, "H_optimus_0");
        // a record agreeing up to spelling, and one disagreeing
        let a = side("a.meta.json", Some("h-optimus-0"));
        assert!(feature_model(&pf, &src, &[&a]).is_ok());
        let b = side("b.meta.json", Some("h-optimus-1"));
        let e = feature_model(&pf, &src, &[&b]).unwrap_err().to_string();
        assert!(
            e.contains("b.meta.json") && e.contains("h-optimus-1"),
            "{e}"
        );
        // records that disagree with each other
        pf.encoder = None;
        let e = feature_model(&pf, &src, &[&a, &b]).unwrap_err().to_string();
        assert!(e.contains("different models"), "{e}");
        // the run config's model.name when there are no sidecars
        let cfg_path = dir.path().join("config.yaml");
        std::fs::write(&cfg_path, "model:\n  name: uni\n  level: tile\n").unwrap();
        let src2 = Source {
            run_config: Some(cfg_path.clone()),
            ..src.clone()
        };
        let m = feature_model(&pf, &src2, &[]).unwrap();
        assert_eq!(m.name, "uni");
        assert!(m.from.contains("config.yaml"));
        std::fs::write(&cfg_path, "model:\n  name: uni\n  level: region\n").unwrap();
        let e = feature_model(&pf, &src2, &[]).unwrap_err().to_string();
        assert!(e.contains("region"), "{e}");

        assert!(encoder::same_model_name("UNI", "uni"));
        assert!(!encoder::same_model_name("uni", "uni2"));
        assert!(!encoder::same_model_name("", ""));
    }
}

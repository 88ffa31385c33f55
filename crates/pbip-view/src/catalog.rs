//! What the viewer serves: the slides it was given and, per slide, the outputs of `pbip infer`.
//!
//! A slide's id is its file stem; the URLs of the server carry ids only, never paths, and every
//! file served is one this catalog found at start-up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use pbip_slide::{OpenOptions, Slide};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ViewError, io_err};
use crate::layers::{
    ConfidenceMaps, LabelMask, PredictionMetadata, default_color, read_png_palette,
};

/// File extensions taken as slides in a folder (pbip's supported slide formats).
pub const SLIDE_EXTENSIONS: &[&str] = &[
    "svs", "tif", "tiff", "ndpi", "mrxs", "scn", "bif", "vms", "vmu", "svslide", "png", "jpg",
    "jpeg", "dcm",
];

/// `pbip infer` output names inside `predictions/<slide>/`.
pub const MASK_TIFF: &str = "mask.tiff";
/// Indexed label PNG.
pub const MASK_PNG: &str = "segmentation_mask.png";
/// Confidence maps.
pub const CONFIDENCE_NPZ: &str = "confidence_maps.npz";
/// Per-slide metadata.
pub const METADATA_JSON: &str = "metadata.json";
/// Batch results.
pub const BATCH_RESULTS: &str = "batch_results.csv";

/// Geometry of a readable slide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideMeta {
    /// Level-0 width, px.
    pub width: u64,
    /// Level-0 height, px.
    pub height: u64,
    /// Level-0 µm per pixel (mean of x and y), when the file says.
    pub mpp: Option<f64>,
    /// Number of pyramid levels.
    pub level_count: usize,
    /// Vendor string.
    pub vendor: String,
    /// "rust" or "openslide".
    pub backend: String,
}

/// One class of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassInfo {
    /// Label value.
    pub index: u8,
    /// Name (`class_order`).
    pub name: String,
    /// RGB colour of the run's palette.
    pub color: [u8; 3],
}

/// A row of `batch_results.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BatchRow {
    /// Slide name.
    pub wsi_name: String,
    /// Patches predicted.
    #[serde(default)]
    pub num_patches: Option<u64>,
    /// Seconds.
    #[serde(default)]
    pub processing_time: Option<String>,
    /// Model version.
    #[serde(default)]
    pub model_version: Option<String>,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    /// Error of a failed slide.
    #[serde(default)]
    pub error: String,
}

/// A layer file and whether it can be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerStatus {
    /// The layer can be shown.
    pub available: bool,
    /// Why not (missing or unreadable file).
    pub error: Option<String>,
}

impl LayerStatus {
    fn ok() -> Self {
        Self {
            available: true,
            error: None,
        }
    }

    fn err(e: impl Into<String>) -> Self {
        Self {
            available: false,
            error: Some(e.into()),
        }
    }
}

/// Where the class mask comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskFile {
    /// `mask.tiff`.
    Tiff(PathBuf),
    /// `segmentation_mask.png` (small masks only).
    Png(PathBuf),
}

/// The outputs of `pbip infer` for one slide.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// `predictions/<id>/`.
    pub dir: PathBuf,
    /// Classes (names from `metadata.json`, colours from the mask PNG's palette).
    pub classes: Vec<ClassInfo>,
    /// Level-0 px per output px.
    pub output_downsample: Option<f64>,
    /// µm per level-0 pixel used by the run.
    pub mpp: Option<f64>,
    /// Output pixels per class.
    pub class_pixels: Vec<u64>,
    /// The class mask file.
    pub mask_file: Option<MaskFile>,
    /// Mask status.
    pub mask: LayerStatus,
    /// `confidence_maps.npz`.
    pub confidence_file: Option<PathBuf>,
    /// Confidence status.
    pub confidence: LayerStatus,
    /// `<id>.geojson`.
    pub geojson_file: Option<PathBuf>,
    /// GeoJSON status.
    pub geojson: LayerStatus,
    /// Problems with `metadata.json` or the palette.
    pub warnings: Vec<String>,
}

/// One slide of the catalog.
#[derive(Debug)]
pub struct Entry {
    /// File stem (the id in URLs).
    pub id: String,
    /// File name.
    pub name: String,
    /// Slide file (None: only listed in `batch_results.csv`).
    pub path: Option<PathBuf>,
    /// Geometry, or why the slide cannot be read.
    pub slide: std::result::Result<SlideMeta, String>,
    /// Outputs of `pbip infer`.
    pub prediction: Option<Prediction>,
    /// Row of `batch_results.csv`.
    pub batch: Option<BatchRow>,
}

impl Entry {
    /// Index of the class reported as "tumour": the first class whose name contains "tumo"
    /// (tumour, tumor), else the last class of a multi-class run.
    pub fn positive_class(&self) -> Option<usize> {
        let p = self.prediction.as_ref()?;
        p.classes
            .iter()
            .position(|c| c.name.to_ascii_lowercase().contains("tumo"))
            .or_else(|| (p.classes.len() >= 2).then(|| p.classes.len() - 1))
    }

    /// (fraction of labelled output pixels, area in mm²) of the positive class.
    pub fn positive_stats(&self) -> Option<(f64, Option<f64>)> {
        let p = self.prediction.as_ref()?;
        let k = self.positive_class()?;
        let px = *p.class_pixels.get(k)?;
        let total: u64 = p.class_pixels.iter().sum();
        if total == 0 {
            return None;
        }
        let mpp = p
            .mpp
            .or_else(|| self.slide.as_ref().ok().and_then(|m| m.mpp));
        let area = match (mpp, p.output_downsample) {
            (Some(m), Some(d)) => Some(px as f64 * (m * d) * (m * d) / 1e6),
            _ => None,
        };
        Some((px as f64 / total as f64, area))
    }
}

/// The slides and predictions of a viewer session.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
}

fn is_slide_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| SLIDE_EXTENSIONS.contains(&e.as_str()))
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The slide files of `inputs` (folders: their slide files, sorted; files: as given).
pub fn list_slides(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io_err(p))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_slide_file(p))
                .collect();
            v.sort();
            if v.is_empty() {
                tracing::warn!(
                    "{}: no slide files ({})",
                    p.display(),
                    SLIDE_EXTENSIONS.join(" ")
                );
            }
            out.extend(v);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(ViewError::Io {
                path: p.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
    }
    Ok(out)
}

/// The `predictions/` folder of an `infer --output-dir` (or the folder itself).
pub fn predictions_dir(p: &Path) -> PathBuf {
    let inner = p.join("predictions");
    if !p.join(BATCH_RESULTS).is_file() && inner.is_dir() {
        inner
    } else {
        p.to_path_buf()
    }
}

/// Rows of `batch_results.csv`, else of every `batch_results.shard-*.csv` (sharded run not
/// merged yet). A missing file gives no rows; a malformed one an error.
pub fn read_batch_results(pred_dir: &Path) -> Result<BTreeMap<String, BatchRow>> {
    let mut files = Vec::new();
    let merged = pred_dir.join(BATCH_RESULTS);
    if merged.is_file() {
        files.push(merged);
    } else if let Ok(rd) = std::fs::read_dir(pred_dir) {
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .is_some_and(|n| n.starts_with("batch_results.shard-") && n.ends_with(".csv"))
            })
            .collect();
        v.sort();
        files = v;
    }
    let mut rows = BTreeMap::new();
    for f in files {
        let mut r = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(&f)
            .map_err(|e| crate::error::format_err(&f, e.to_string()))?;
        for row in r.deserialize::<BatchRow>() {
            let row = row.map_err(|e| crate::error::format_err(&f, e.to_string()))?;
            rows.insert(row.wsi_name.clone(), row);
        }
    }
    Ok(rows)
}

/// Reads the outputs in `dir` (a `predictions/<id>/` folder); `slide_width` aligns a mask
/// without `metadata.json`.
pub fn read_prediction(dir: &Path, id: &str, slide_width: Option<u64>) -> Prediction {
    let mut warnings = Vec::new();
    let meta = match PredictionMetadata::read(&dir.join(METADATA_JSON)) {
        Ok(m) => m,
        Err(e) => {
            warnings.push(e.to_string());
            PredictionMetadata::default()
        }
    };
    let png = dir.join(MASK_PNG);
    let palette = if png.is_file() {
        match read_png_palette(&png) {
            Ok(p) => Some(p),
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        }
    } else {
        None
    };
    // Mask: the TIFF pyramid, else a small PNG.
    let tiff = dir.join(MASK_TIFF);
    let (mask_file, mask, mask_dims) = if tiff.is_file() {
        match LabelMask::open_tiff(&tiff) {
            Ok(m) => (
                Some(MaskFile::Tiff(tiff)),
                LayerStatus::ok(),
                Some(m.dimensions()),
            ),
            Err(e) => (None, LayerStatus::err(e.to_string()), None),
        }
    } else if png.is_file() {
        match LabelMask::open_png(&png) {
            Ok(m) => (
                Some(MaskFile::Png(png.clone())),
                LayerStatus::ok(),
                Some(m.dimensions()),
            ),
            Err(e) => (None, LayerStatus::err(e.to_string()), None),
        }
    } else {
        (
            None,
            LayerStatus::err(format!("{}: no {MASK_TIFF} or {MASK_PNG}", dir.display())),
            None,
        )
    };
    let npz = dir.join(CONFIDENCE_NPZ);
    let (confidence_file, confidence, n_conf) = if npz.is_file() {
        match ConfidenceMaps::open(&npz) {
            Ok(c) => (Some(npz), LayerStatus::ok(), c.class_count()),
            Err(e) => (None, LayerStatus::err(e.to_string()), 0),
        }
    } else {
        (
            None,
            LayerStatus::err(format!("{}: missing", npz.display())),
            0,
        )
    };
    let gj = dir.join(format!("{id}.geojson"));
    let (geojson_file, geojson) = if gj.is_file() {
        (Some(gj), LayerStatus::ok())
    } else {
        (None, LayerStatus::err(format!("{}: missing", gj.display())))
    };
    let output_downsample = meta
        .output_downsample
        .filter(|d| d.is_finite() && *d > 0.0)
        .or_else(|| {
            let w = mask_dims
                .map(|d| d.0)
                .or(meta.output_size_px.map(|s| s[0]))?;
            let sw = slide_width?;
            (w > 0).then(|| sw as f64 / w as f64)
        });
    let n_classes = if meta.class_order.is_empty() {
        n_conf.max(meta.class_pixels.len())
    } else {
        meta.class_order.len()
    };
    let classes = (0..n_classes.min(255))
        .map(|k| ClassInfo {
            index: k as u8,
            name: meta
                .class_order
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("class {k}")),
            color: palette
                .as_ref()
                .and_then(|p| p.get(k).copied())
                .unwrap_or_else(|| default_color(k)),
        })
        .collect();
    let mut p = Prediction {
        dir: dir.to_path_buf(),
        classes,
        output_downsample,
        mpp: meta.mpp.filter(|m| m.is_finite() && *m > 0.0),
        class_pixels: meta.class_pixels,
        mask_file,
        mask,
        confidence_file,
        confidence,
        geojson_file,
        geojson,
        warnings,
    };
    if p.output_downsample.is_none() {
        let why = "the output downsample is unknown (no metadata.json and no slide size)";
        if p.mask.available {
            p.mask = LayerStatus::err(why);
        }
        if p.confidence.available {
            p.confidence = LayerStatus::err(why);
        }
    }
    p
}

/// Opens a slide for its geometry.
pub fn slide_meta(path: &Path, opts: &OpenOptions) -> std::result::Result<SlideMeta, String> {
    let s = Slide::open(path, opts).map_err(|e| e.to_string())?;
    let (width, height) = s.dimensions();
    Ok(SlideMeta {
        width,
        height,
        mpp: s.mpp().map(|(x, y)| (x + y) / 2.0),
        level_count: s.level_count(),
        vendor: s.vendor().to_string(),
        backend: s.backend_name().to_string(),
    })
}

impl Catalog {
    /// Builds the catalog: every slide of `inputs` (opened once for its geometry; one that cannot
    /// be read is listed with its error), its prediction folder under `predictions` and its row of
    /// `batch_results.csv`; slides only in the CSV are listed too (without a slide file).
    /// Two slides with one stem: the second is skipped with a warning.
    pub fn build(
        inputs: &[PathBuf],
        predictions: Option<&Path>,
        open: &OpenOptions,
    ) -> Result<Self> {
        let slides = list_slides(inputs)?;
        let pred_dir = predictions.map(predictions_dir);
        if let Some(p) = &pred_dir
            && !p.is_dir()
        {
            return Err(ViewError::Io {
                path: p.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        let mut batch = match &pred_dir {
            Some(p) => read_batch_results(p)?,
            None => BTreeMap::new(),
        };
        let mut cat = Catalog::default();
        for path in slides {
            let id = stem(&path);
            if id.is_empty() {
                continue;
            }
            if let Some(&i) = cat.by_id.get(&id) {
                tracing::warn!(
                    "{} has the same id {id:?} as {}: skipped",
                    path.display(),
                    cat.entries[i]
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
                continue;
            }
            let slide = slide_meta(&path, open);
            if let Err(e) = &slide {
                tracing::warn!("{e}");
            }
            let prediction = pred_dir.as_ref().and_then(|p| {
                let dir = p.join(&id);
                dir.is_dir()
                    .then(|| read_prediction(&dir, &id, slide.as_ref().ok().map(|m| m.width)))
            });
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| id.clone());
            cat.push(Entry {
                batch: batch.remove(&id),
                id,
                name,
                path: Some(path),
                slide,
                prediction,
            });
        }
        // Slides in batch_results.csv that were not given: listed with their status.
        for (id, row) in batch {
            if cat.by_id.contains_key(&id) {
                continue;
            }
            cat.push(Entry {
                name: id.clone(),
                id,
                path: None,
                slide: Err("slide file not given to pbip view".into()),
                prediction: None,
                batch: Some(row),
            });
        }
        Ok(cat)
    }

    fn push(&mut self, e: Entry) {
        self.by_id.insert(e.id.clone(), self.entries.len());
        self.entries.push(e);
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Index of `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// Mutable entry `i` (scores are filled in after start-up).
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Entry> {
        self.entries.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_results_parse_with_quotes_and_shards() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("batch_results.shard-0000-of-0002.csv"),
            "wsi_name,num_patches,processing_time,model_version,status,error\na,10,1.5,v1,ok,\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("batch_results.shard-0001-of-0002.csv"),
            "wsi_name,num_patches,processing_time,model_version,status,error\nb,0,0.1,v1,failed,\"b.tif: bad, very bad\"\n",
        )
        .unwrap();
        let rows = read_batch_results(d.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows["b"].status, "failed");
        assert_eq!(rows["b"].error, "b.tif: bad, very bad");
        assert_eq!(rows["a"].num_patches, Some(10));
        // The merged file wins over shards.
        std::fs::write(
            d.path().join(BATCH_RESULTS),
            "wsi_name,num_patches,processing_time,model_version,status,error\nc,1,1,v,skipped,\n",
        )
        .unwrap();
        let rows = read_batch_results(d.path()).unwrap();
        assert_eq!(rows.keys().collect::<Vec<_>>(), vec!["c"]);
        std::fs::write(
            d.path().join(BATCH_RESULTS),
            "wsi_name,status\n\"unterminated\n",
        )
        .unwrap();
        assert!(read_batch_results(d.path()).is_err());
    }

    #[test]
    fn predictions_dir_accepts_the_output_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("predictions")).unwrap();
        assert_eq!(predictions_dir(d.path()), d.path().join("predictions"));
        assert_eq!(
            predictions_dir(&d.path().join("predictions")),
            d.path().join("predictions")
        );
    }

    #[test]
    fn positive_class_and_area() {
        let pred = Prediction {
            dir: PathBuf::new(),
            classes: vec![
                ClassInfo {
                    index: 0,
                    name: "benign".into(),
                    color: [0, 0, 0],
                },
                ClassInfo {
                    index: 1,
                    name: "Tumour".into(),
                    color: [0, 0, 0],
                },
                ClassInfo {
                    index: 2,
                    name: "stroma".into(),
                    color: [0, 0, 0],
                },
            ],
            output_downsample: Some(8.0),
            mpp: Some(0.5),
            class_pixels: vec![600, 300, 100],
            mask_file: None,
            mask: LayerStatus::ok(),
            confidence_file: None,
            confidence: LayerStatus::ok(),
            geojson_file: None,
            geojson: LayerStatus::ok(),
            warnings: vec![],
        };
        let e = Entry {
            id: "s".into(),
            name: "s.tif".into(),
            path: None,
            slide: Err("x".into()),
            prediction: Some(pred),
            batch: None,
        };
        assert_eq!(e.positive_class(), Some(1));
        let (frac, area) = e.positive_stats().unwrap();
        assert!((frac - 0.3).abs() < 1e-12);
        // 300 output px of (0.5 µm · 8)² = 16 µm² → 4800 µm² = 0.0048 mm².
        assert!((area.unwrap() - 0.0048).abs() < 1e-12);
    }
}

//! Opened slides with their coordinates, labels and (lazily loaded) GT masks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pbip_coords::Coordinates;
use pbip_slide::{OpenOptions, PatchGeometry, Slide};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::mask::{GtMask, MaskOptions, MaskPlacement};

/// One slide as the caller describes it (e.g. from `pbip_config::SlideEntry`).
#[derive(Debug, Clone, PartialEq)]
pub struct SlideSpec {
    /// Image name (CSV key, no extension).
    pub name: String,
    /// Slide file.
    pub slide_path: PathBuf,
    /// Coordinate file (any format `pbip_coords::Coordinates::read` accepts).
    pub coordinates_path: PathBuf,
    /// Multi-hot slide label in class order (`labels[c] != 0` = class c present).
    pub labels: Vec<u8>,
    /// GT mask file, when there is one.
    pub gt_path: Option<PathBuf>,
}

/// Meaning of (x, y) in the coordinate files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinateOrigin {
    /// Level-0 top-left corner (hs2p / slide2vec; default).
    #[default]
    TopLeft,
    /// Level-0 centre (the fork's reader): the read starts at
    /// `x − floor(read_size_px · downsample / 2)` (same rule as `pbip_slide::Origin::Centre`).
    Centre,
}

/// How slides are opened and patches placed.
#[derive(Debug, Clone)]
pub struct SlideSetOptions {
    /// Side of every patch handed to the network, px (config `patch_size`).
    pub patch_size_px: u32,
    /// Meaning of (x, y) in the coordinate files.
    pub origin: CoordinateOrigin,
    /// Slide reader options (backend, tile cache, background colour).
    pub open: OpenOptions,
    /// GT mask options (number of classes, ignore value, downsample).
    pub mask: MaskOptions,
}

impl SlideSetOptions {
    /// Defaults for `patch_size_px` and `num_classes`.
    pub fn new(patch_size_px: u32, num_classes: usize) -> Self {
        SlideSetOptions {
            patch_size_px,
            origin: CoordinateOrigin::TopLeft,
            open: OpenOptions::default(),
            mask: MaskOptions::new(num_classes),
        }
    }
}

/// Where one patch comes from: every number needed to re-read it or crop its GT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchInfo {
    /// Index of the slide in its [`SlideSet`].
    pub slide_index: usize,
    /// Slide name.
    pub slide_name: String,
    /// Row of the coordinate file (`None` for an ad-hoc placement, e.g. an inference grid).
    pub row: Option<usize>,
    /// Level-0 x of the read's top-left corner (after origin conversion).
    pub x_lv0: i64,
    /// Level-0 y of the read's top-left corner.
    pub y_lv0: i64,
    /// Pyramid level read.
    pub level: u32,
    /// Downsample of that level.
    pub level_downsample: f64,
    /// Square side read at `level`, px.
    pub read_size_px: u32,
    /// Square side of the patch after resizing, px.
    pub out_size_px: u32,
    /// Augmentation applied (identity for evaluation patches).
    pub aug: crate::augment::AugParams,
}

impl PatchInfo {
    /// Side of the patch's footprint in level-0 px (`read_size_px · level_downsample`).
    pub fn tile_size_lv0(&self) -> f64 {
        f64::from(self.read_size_px) * self.level_downsample
    }

    /// The placement used to crop a GT mask exactly like this patch.
    pub fn placement(&self) -> MaskPlacement {
        MaskPlacement {
            x_lv0: self.x_lv0,
            y_lv0: self.y_lv0,
            level_downsample: self.level_downsample,
            read_size_px: self.read_size_px,
            out_size_px: self.out_size_px,
        }
    }
}

/// One opened slide of a [`SlideSet`].
#[derive(Debug)]
pub struct SlideData {
    /// The caller's description.
    pub spec: SlideSpec,
    /// The open slide, shared by all workers.
    pub slide: Arc<Slide>,
    /// Its coordinates as read.
    pub coords: Coordinates,
    /// Rows of `coords` that lie on the slide, in file order.
    pub valid_rows: Vec<usize>,
    /// Multi-hot label as f32 (what the loss gets).
    pub labels_f32: Vec<f32>,
    mask: Mutex<Option<Arc<GtMask>>>,
}

impl SlideData {
    /// Number of usable coordinates.
    pub fn num_valid(&self) -> usize {
        self.valid_rows.len()
    }

    /// Class indices present in the slide label.
    pub fn class_indices(&self) -> Vec<usize> {
        self.spec
            .labels
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, _)| i)
            .collect()
    }
}

/// The slides of one split, opened once and shared (`Arc<SlideSet>`) between loader threads.
#[derive(Debug)]
pub struct SlideSet {
    slides: Vec<SlideData>,
    opts: SlideSetOptions,
    num_classes: usize,
}

impl SlideSet {
    /// Opens every slide and reads every coordinate file.
    ///
    /// Rows whose footprint does not overlap the slide (or whose level the slide lacks) are
    /// excluded with a warning; a slide left with no row is an error
    /// ([`DataError::NoUsableCoordinates`]), as is a label vector of the wrong length.
    pub fn open(specs: &[SlideSpec], opts: &SlideSetOptions) -> Result<SlideSet> {
        if opts.patch_size_px == 0 {
            return Err(DataError::InvalidOption("patch_size must be > 0".into()));
        }
        let num_classes = opts.mask.num_classes;
        let mut slides = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.labels.len() != num_classes {
                return Err(DataError::InvalidOption(format!(
                    "slide {:?} has {} label values, expected {num_classes} (one per class)",
                    spec.name,
                    spec.labels.len()
                )));
            }
            let slide = Slide::open(&spec.slide_path, &opts.open)?;
            let coords = Coordinates::read(&spec.coordinates_path)?;
            let mut valid_rows = Vec::with_capacity(coords.len());
            let mut outside = 0usize;
            let mut first_err = None;
            for row in 0..coords.len() {
                match locate(&slide, &coords, &spec.coordinates_path, row, opts) {
                    Ok(_) => valid_rows.push(row),
                    Err(e) => {
                        outside += 1;
                        if first_err.is_none() {
                            first_err = Some(e.to_string());
                        }
                    }
                }
            }
            if valid_rows.is_empty() {
                return Err(DataError::NoUsableCoordinates {
                    path: spec.coordinates_path.clone(),
                    slide: spec.name.clone(),
                    total: coords.len(),
                    outside,
                });
            }
            if outside > 0 {
                tracing::warn!(
                    slide = %spec.name,
                    excluded = outside,
                    total = coords.len(),
                    first = first_err.as_deref().unwrap_or(""),
                    "coordinates outside the slide excluded"
                );
            }
            slides.push(SlideData {
                labels_f32: spec
                    .labels
                    .iter()
                    .map(|&v| f32::from(u8::from(v != 0)))
                    .collect(),
                spec: spec.clone(),
                slide: Arc::new(slide),
                coords,
                valid_rows,
                mask: Mutex::new(None),
            });
        }
        tracing::debug!(slides = slides.len(), "slide set opened");
        Ok(SlideSet {
            slides,
            opts: opts.clone(),
            num_classes,
        })
    }

    /// Number of slides.
    pub fn len(&self) -> usize {
        self.slides.len()
    }

    /// True without slides.
    pub fn is_empty(&self) -> bool {
        self.slides.is_empty()
    }

    /// Slide `i`.
    pub fn get(&self, i: usize) -> Option<&SlideData> {
        self.slides.get(i)
    }

    /// All slides.
    pub fn slides(&self) -> &[SlideData] {
        &self.slides
    }

    /// Options the set was opened with.
    pub fn options(&self) -> &SlideSetOptions {
        &self.opts
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Patch side handed to the network.
    pub fn patch_size_px(&self) -> u32 {
        self.opts.patch_size_px
    }

    fn slide(&self, i: usize) -> Result<&SlideData> {
        self.slides.get(i).ok_or_else(|| {
            DataError::InvalidOption(format!(
                "slide index {i} out of range ({} slides)",
                self.len()
            ))
        })
    }

    /// Placement of coordinate `row` of slide `slide_index` (errors if outside the slide).
    pub fn locate(&self, slide_index: usize, row: usize) -> Result<PatchInfo> {
        let s = self.slide(slide_index)?;
        let (geom, x, y) = locate(
            &s.slide,
            &s.coords,
            &s.spec.coordinates_path,
            row,
            &self.opts,
        )?;
        Ok(PatchInfo {
            slide_index,
            slide_name: s.spec.name.clone(),
            row: Some(row),
            x_lv0: x,
            y_lv0: y,
            level: geom.level as u32,
            level_downsample: s.slide.level_downsample(geom.level)?,
            read_size_px: geom.read_size_px,
            out_size_px: geom.out_size_px,
            aug: Default::default(),
        })
    }

    /// An ad-hoc placement (not from the coordinate file, e.g. an inference grid): read
    /// `read_size_px` at `level` from the level-0 top-left (x_lv0, y_lv0), resize to the set's
    /// patch size. Errors if the level does not exist or the footprint misses the slide.
    pub fn placement(
        &self,
        slide_index: usize,
        x_lv0: i64,
        y_lv0: i64,
        level: u32,
        read_size_px: u32,
    ) -> Result<PatchInfo> {
        let s = self.slide(slide_index)?;
        let (w, h) = s.slide.dimensions();
        let bad = |msg: String| DataError::CoordinateOutside {
            path: s.spec.slide_path.clone(),
            row: usize::MAX,
            x_lv0,
            y_lv0,
            level,
            width_lv0: w,
            height_lv0: h,
            levels: s.slide.level_count(),
            msg,
        };
        if level as usize >= s.slide.level_count() || read_size_px == 0 {
            return Err(bad("no such level, or read size 0".into()));
        }
        let ds = s.slide.level_downsample(level as usize)?;
        let fp = f64::from(read_size_px) * ds;
        let overlaps = |p: i64, size: u64| (p as f64) < size as f64 && (p as f64 + fp) > 0.0;
        if !overlaps(x_lv0, w) || !overlaps(y_lv0, h) {
            return Err(bad(format!(
                "its {fp} px level-0 footprint does not overlap the slide"
            )));
        }
        Ok(PatchInfo {
            slide_index,
            slide_name: s.spec.name.clone(),
            row: None,
            x_lv0,
            y_lv0,
            level,
            level_downsample: ds,
            read_size_px,
            out_size_px: self.opts.patch_size_px,
            aug: Default::default(),
        })
    }

    /// Forgets every loaded GT mask (they are reloaded on next use), to free memory.
    pub fn release_masks(&self) {
        for s in &self.slides {
            if let Ok(mut g) = s.mask.lock() {
                *g = None;
            }
        }
    }

    /// Reads the RGB8 HWC pixels of a located patch into `out` (`out_size_px² · 3` bytes).
    pub fn read_into(&self, info: &PatchInfo, out: &mut [u8]) -> Result<()> {
        let s = self.slide(info.slide_index)?;
        let geom = PatchGeometry {
            level: info.level as usize,
            read_size_px: info.read_size_px,
            out_size_px: info.out_size_px,
            origin: pbip_slide::Origin::TopLeft,
        };
        s.slide
            .read_patch_into(info.x_lv0, info.y_lv0, &geom, out)?;
        Ok(())
    }

    /// The GT mask of slide `slide_index`, loaded on first use and kept.
    pub fn mask(&self, slide_index: usize) -> Result<Arc<GtMask>> {
        let s = self.slide(slide_index)?;
        let Some(path) = &s.spec.gt_path else {
            return Err(DataError::NoMask {
                slide: s.spec.name.clone(),
            });
        };
        let mut guard = s
            .mask
            .lock()
            .map_err(|_| DataError::WorkerPanicked("GT mask lock poisoned".into()))?;
        if let Some(m) = guard.as_ref() {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(GtMask::open(path, s.slide.dimensions(), &self.opts.mask)?);
        *guard = Some(Arc::clone(&m));
        Ok(m)
    }

    /// Crops the GT mask of a located patch exactly like its image (`out_size_px²` bytes).
    pub fn crop_mask(&self, info: &PatchInfo) -> Result<Vec<u8>> {
        self.mask(info.slide_index)?.crop(&info.placement())
    }
}

/// Geometry and top-left read position of `row`; errors if it is off the slide.
fn locate(
    slide: &Slide,
    coords: &Coordinates,
    coords_path: &std::path::Path,
    row: usize,
    opts: &SlideSetOptions,
) -> Result<(PatchGeometry, i64, i64)> {
    let (w, h) = slide.dimensions();
    let outside = |x: i64, y: i64, level: u32, msg: String| DataError::CoordinateOutside {
        path: coords_path.to_path_buf(),
        row,
        x_lv0: x,
        y_lv0: y,
        level,
        width_lv0: w,
        height_lv0: h,
        levels: slide.level_count(),
        msg,
    };
    let g = coords
        .get_geometry(row, opts.patch_size_px)
        .ok_or_else(|| {
            DataError::InvalidOption(format!(
                "{}: row {row} out of range ({} rows)",
                coords_path.display(),
                coords.len()
            ))
        })?;
    let (x, y) = (coords.x[row], coords.y[row]);
    let level = g.level as usize;
    if level >= slide.level_count() {
        return Err(outside(x, y, g.level, "no such level".into()));
    }
    if g.read_size_px == 0 {
        return Err(outside(x, y, g.level, "read size 0".into()));
    }
    let ds = slide.level_downsample(level)?;
    let fp = f64::from(g.read_size_px) * ds;
    let (x0, y0) = match opts.origin {
        CoordinateOrigin::TopLeft => (x, y),
        CoordinateOrigin::Centre => {
            let half = (fp / 2.0).floor() as i64;
            (x.saturating_sub(half), y.saturating_sub(half))
        }
    };
    let overlaps = |p: i64, size: u64| (p as f64) < size as f64 && (p as f64 + fp) > 0.0;
    if !overlaps(x0, w) || !overlaps(y0, h) {
        return Err(outside(
            x0,
            y0,
            g.level,
            format!("its {fp} px level-0 footprint does not overlap the slide"),
        ));
    }
    let geom = PatchGeometry {
        level,
        read_size_px: g.read_size_px,
        // Every patch of a batch has the network's size: the tile is resized to it.
        out_size_px: opts.patch_size_px,
        origin: pbip_slide::Origin::TopLeft,
    };
    Ok((geom, x0, y0))
}

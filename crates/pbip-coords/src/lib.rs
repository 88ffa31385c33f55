//! Coordinate files for PBIP.
//!
//! Reads every coordinate format met in the slide2vec / hs2p / PBIP ecosystem into one
//! [`Coordinates`] type, and writes the formats PBIP produces:
//!
//! * plain `.npy` integer (or integral float) arrays `(N, 2)` or legacy `(N, k > 2)` `[x, y, ...]`;
//! * structured `.npy` arrays, decoded generically by field name (hs2p 1.0 / slide2vec 1.x,
//!   hs2p 1.1, PBIP prototype files with `<U…`/`|S…` `wsi_name`, any field order and width);
//! * PBIP-fork prototype files whose `wsi_name` field is `'O'` (whole array pickled), parsed
//!   without executing code;
//! * hs2p >= 2 / slide2vec >= 3 `*.coordinates.npz` + `*.coordinates.meta.json`;
//! * `.txt` / `.csv` with `x y` or `x,y` per row.
//!
//! Coordinates are always the **level-0 top-left corner** in level-0 pixels.

mod error;
mod npy;
mod pickle;
mod read;
mod text;
mod write;

pub use error::CoordError;
pub use write::{
    Hs2pV1Record, PROTOTYPE_WSI_NAME_MAX_CHARS, PrototypeRecord, TilingMeta, encode_hs2p_v1_npy,
    encode_prototype_npy, hs2p_meta_json, hs2p_meta_path, write_hs2p_npz, write_hs2p_v1_npy,
    write_prototype_npy,
};

use std::path::Path;

/// Which kind of file a [`Coordinates`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordFormat {
    /// Plain numeric `.npy` array `(N, 2)` or legacy `(N, k > 2)`.
    PlainNpy,
    /// Structured `.npy` with exactly the hs2p 1.0 / slide2vec 1.x fields.
    Hs2pV1Npy,
    /// Structured `.npy` with exactly the hs2p 1.1 fields.
    Hs2pV11Npy,
    /// Structured `.npy` PBIP prototype file with a fixed-width (`U`/`S`) `wsi_name`.
    PrototypeNpy,
    /// PBIP-fork prototype file with an object (`'O'`) `wsi_name`: the array is pickled.
    PickledPrototypeNpy,
    /// Any other structured `.npy` having at least `x` and `y` fields.
    StructuredNpy,
    /// hs2p >= 2 `*.coordinates.npz` + `*.coordinates.meta.json`.
    Hs2pNpz,
    /// Text file (`.txt`, `.csv`).
    Text,
    /// Built in memory.
    InMemory,
}

/// Options for [`Coordinates::read_with`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Accept negative x / y (default: error).
    pub allow_negative: bool,
}

/// How to read one patch: read `read_size_px` x `read_size_px` pixels at pyramid `level`
/// starting at the level-0 top-left (x, y), then resize to `out_size_px`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGeometry {
    /// Pyramid level to read.
    pub level: u32,
    /// Square size to read at `level` (px at that level).
    pub read_size_px: u32,
    /// Square output size after resizing (px).
    pub out_size_px: u32,
}

/// A set of tile coordinates (level-0 top-left, level-0 px) with optional per-row geometry.
///
/// Every `Some(vec)` has exactly `len()` entries. Per-file values (hs2p npz JSON) are
/// repeated on every row.
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinates {
    /// Level-0 top-left x (px).
    pub x: Vec<i64>,
    /// Level-0 top-left y (px).
    pub y: Vec<i64>,
    /// Pyramid level to read (`tile_level`, hs2p `read_level`).
    pub tile_level: Option<Vec<u32>>,
    /// Size to read at `tile_level` (`tile_size_resized`, hs2p `read_tile_size_px`).
    pub tile_size_resized: Option<Vec<u32>>,
    /// Tile footprint in level-0 px.
    pub tile_size_lv0: Option<Vec<u32>>,
    /// Requested output size (`tile_size` / `target_tile_size` / `requested_tile_size_px`).
    pub target_tile_size: Option<Vec<u32>>,
    /// target spacing / spacing of `tile_level`.
    pub resize_factor: Option<Vec<f64>>,
    /// Requested spacing in µm/px (`target_spacing` / `requested_spacing_um`).
    pub target_spacing: Option<Vec<f64>>,
    /// Tissue contour index (hs2p 1.1).
    pub contour_index: Option<Vec<i64>>,
    /// Tissue fraction per tile (hs2p npz `tissue_fractions`).
    pub tissue_fraction: Option<Vec<f64>>,
    /// Tile index (hs2p npz `tile_index`).
    pub tile_index: Option<Vec<i64>>,
    /// Slide file name per row (PBIP prototype files).
    pub wsi_name: Option<Vec<String>>,
    /// Kind of file this came from.
    pub source: CoordFormat,
}

impl Coordinates {
    /// Coordinates with only x and y (no geometry fields).
    pub fn from_xy(x: Vec<i64>, y: Vec<i64>) -> Self {
        Coordinates {
            x,
            y,
            tile_level: None,
            tile_size_resized: None,
            tile_size_lv0: None,
            target_tile_size: None,
            resize_factor: None,
            target_spacing: None,
            contour_index: None,
            tissue_fraction: None,
            tile_index: None,
            wsi_name: None,
            source: CoordFormat::InMemory,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.x.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Reads any supported coordinate file (see the crate docs), rejecting negative coordinates.
    pub fn read(path: impl AsRef<Path>) -> Result<Coordinates, CoordError> {
        read::read_any(path.as_ref(), &ReadOptions::default())
    }

    /// Reads any supported coordinate file with options.
    pub fn read_with(
        path: impl AsRef<Path>,
        opts: &ReadOptions,
    ) -> Result<Coordinates, CoordError> {
        read::read_any(path.as_ref(), opts)
    }

    /// Parses an in-memory `.npy` file (plain, structured or pickled); `path` is only used in errors.
    pub fn from_npy_bytes(
        path: impl AsRef<Path>,
        bytes: &[u8],
        opts: &ReadOptions,
    ) -> Result<Coordinates, CoordError> {
        read::read_npy_bytes(path.as_ref(), bytes, opts)
    }

    /// Parses text coordinates (`x y` / `x,y` rows); `path` is only used in errors.
    pub fn from_text(
        path: impl AsRef<Path>,
        text: &str,
        opts: &ReadOptions,
    ) -> Result<Coordinates, CoordError> {
        let path = path.as_ref();
        let (x, y) = text::parse_text(path, text)?;
        let c = Coordinates {
            source: CoordFormat::Text,
            ..Coordinates::from_xy(x, y)
        };
        read::check_negative(path, &c, opts)?;
        Ok(c)
    }

    /// Patch geometry of row `i` for an output patch size `patch_size_px`:
    /// * with `tile_level` and/or `tile_size_resized`: read `tile_size_resized` (default
    ///   `patch_size_px`) at `tile_level` (default 0), output `target_tile_size` (default
    ///   `patch_size_px`);
    /// * with neither: read `patch_size_px` at level 0, output `patch_size_px`.
    ///
    /// # Panics
    /// If `i >= self.len()` (like slice indexing). Use [`Coordinates::get_geometry`] to avoid it.
    pub fn geometry(&self, i: usize, patch_size_px: u32) -> TileGeometry {
        match self.get_geometry(i, patch_size_px) {
            Some(g) => g,
            None => panic!("row {i} out of range for {} coordinates", self.len()),
        }
    }

    /// Like [`Coordinates::geometry`], `None` if `i` is out of range.
    pub fn get_geometry(&self, i: usize, patch_size_px: u32) -> Option<TileGeometry> {
        if i >= self.len() {
            return None;
        }
        let at_u32 = |v: &Option<Vec<u32>>| v.as_ref().and_then(|v| v.get(i).copied());
        let level = at_u32(&self.tile_level);
        let read = at_u32(&self.tile_size_resized);
        if level.is_none() && read.is_none() {
            return Some(TileGeometry {
                level: 0,
                read_size_px: patch_size_px,
                out_size_px: patch_size_px,
            });
        }
        Some(TileGeometry {
            level: level.unwrap_or(0),
            read_size_px: read.unwrap_or(patch_size_px),
            out_size_px: at_u32(&self.target_tile_size).unwrap_or(patch_size_px),
        })
    }

    /// Rows `indices` (in that order) as new coordinates. Out-of-range indices are skipped.
    pub fn select(&self, indices: &[usize]) -> Coordinates {
        let idx: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len())
            .collect();
        fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
            idx.iter().filter_map(|&i| v.get(i).cloned()).collect()
        }
        fn pick_opt<T: Clone>(v: &Option<Vec<T>>, idx: &[usize]) -> Option<Vec<T>> {
            v.as_ref().map(|v| pick(v, idx))
        }
        Coordinates {
            x: pick(&self.x, &idx),
            y: pick(&self.y, &idx),
            tile_level: pick_opt(&self.tile_level, &idx),
            tile_size_resized: pick_opt(&self.tile_size_resized, &idx),
            tile_size_lv0: pick_opt(&self.tile_size_lv0, &idx),
            target_tile_size: pick_opt(&self.target_tile_size, &idx),
            resize_factor: pick_opt(&self.resize_factor, &idx),
            target_spacing: pick_opt(&self.target_spacing, &idx),
            contour_index: pick_opt(&self.contour_index, &idx),
            tissue_fraction: pick_opt(&self.tissue_fraction, &idx),
            tile_index: pick_opt(&self.tile_index, &idx),
            wsi_name: pick_opt(&self.wsi_name, &idx),
            source: self.source,
        }
    }

    /// Prototype records for these coordinates (stage-0 output). Rows without geometry fields
    /// get level 0, all sizes `patch_size_px`, resize factor 1. `wsi_name` is taken from
    /// `self.wsi_name` when present, otherwise `default_wsi_name`. Errors if a value does not
    /// fit in int32.
    pub fn to_prototype_records(
        &self,
        patch_size_px: u32,
        default_wsi_name: &str,
    ) -> Result<Vec<PrototypeRecord>, CoordError> {
        let mut out = Vec::with_capacity(self.len());
        let bad = |row: usize, what: &str| CoordError::InvalidRecord {
            path: std::path::PathBuf::from("<prototype records>"),
            row,
            msg: format!("{what} is missing or does not fit in int32"),
        };
        for i in 0..self.len() {
            let g = self.geometry(i, patch_size_px);
            let lv0 = self
                .tile_size_lv0
                .as_ref()
                .and_then(|v| v.get(i).copied())
                .unwrap_or(g.read_size_px);
            let rf = self
                .resize_factor
                .as_ref()
                .and_then(|v| v.get(i).copied())
                .unwrap_or(g.read_size_px as f64 / g.out_size_px.max(1) as f64);
            out.push(PrototypeRecord {
                x: self
                    .x
                    .get(i)
                    .and_then(|&v| i32::try_from(v).ok())
                    .ok_or_else(|| bad(i, "x"))?,
                y: self
                    .y
                    .get(i)
                    .and_then(|&v| i32::try_from(v).ok())
                    .ok_or_else(|| bad(i, "y"))?,
                tile_level: i32::try_from(g.level).map_err(|_| bad(i, "tile_level"))?,
                tile_size_resized: i32::try_from(g.read_size_px)
                    .map_err(|_| bad(i, "tile_size_resized"))?,
                tile_size: i32::try_from(g.out_size_px).map_err(|_| bad(i, "tile_size"))?,
                tile_size_lv0: i32::try_from(lv0).map_err(|_| bad(i, "tile_size_lv0"))?,
                resize_factor: rf as f32,
                wsi_name: self
                    .wsi_name
                    .as_ref()
                    .and_then(|v| v.get(i).cloned())
                    .unwrap_or_else(|| default_wsi_name.to_string()),
            });
        }
        Ok(out)
    }
}

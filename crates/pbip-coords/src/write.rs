//! Writers: PBIP prototype `.npy`, hs2p 1.0 `.npy`, hs2p >= 3 `.coordinates.npz` + meta JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Coordinates;
use crate::error::CoordError;
use crate::npy::{build_header, record_descr_repr};

/// Maximum number of characters of `wsi_name` in prototype files (`<U64`).
pub const PROTOTYPE_WSI_NAME_MAX_CHARS: usize = 64;

/// One row of a PBIP prototype coordinate file (stage 0 output).
///
/// On disk: `[('x','<i4'),('y','<i4'),('tile_level','<i4'),('tile_size_resized','<i4'),
/// ('tile_size','<i4'),('tile_size_lv0','<i4'),('resize_factor','<f4'),('wsi_name','<U64')]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrototypeRecord {
    /// Level-0 top-left x (px).
    pub x: i32,
    /// Level-0 top-left y (px).
    pub y: i32,
    /// Pyramid level read.
    pub tile_level: i32,
    /// Size read at `tile_level` (px).
    pub tile_size_resized: i32,
    /// Output patch size (px).
    pub tile_size: i32,
    /// Tile footprint in level-0 px.
    pub tile_size_lv0: i32,
    /// `tile_size_resized / tile_size`.
    pub resize_factor: f32,
    /// Slide file name including its extension (e.g. `slide_003.tif`), at most 64 chars.
    pub wsi_name: String,
}

impl PrototypeRecord {
    /// A record for a patch read at level 0 with size `patch_size_px` (what the fork writes:
    /// level 0, every size = patch size, resize factor 1).
    pub fn level0(x: i32, y: i32, patch_size_px: i32, wsi_name: impl Into<String>) -> Self {
        PrototypeRecord {
            x,
            y,
            tile_level: 0,
            tile_size_resized: patch_size_px,
            tile_size: patch_size_px,
            tile_size_lv0: patch_size_px,
            resize_factor: 1.0,
            wsi_name: wsi_name.into(),
        }
    }
}

/// One row of an hs2p 1.0 / slide2vec 1.x coordinate file.
///
/// On disk: `[('x','<i8'),('y','<i8'),('tile_size_resized','<i8'),('tile_level','<i8'),
/// ('resize_factor','<f8'),('tile_size_lv0','<i8'),('target_spacing','<f8')]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hs2pV1Record {
    /// Level-0 top-left x (px).
    pub x: i64,
    /// Level-0 top-left y (px).
    pub y: i64,
    /// Size read at `tile_level` (px).
    pub tile_size_resized: i64,
    /// Pyramid level read.
    pub tile_level: i64,
    /// target spacing / spacing of `tile_level` (>= 1).
    pub resize_factor: f64,
    /// Tile footprint in level-0 px.
    pub tile_size_lv0: i64,
    /// Requested spacing (µm/px).
    pub target_spacing: f64,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CoordError> {
    let mut f = std::fs::File::create(path).map_err(|e| CoordError::io(path, e))?;
    f.write_all(bytes).map_err(|e| CoordError::io(path, e))?;
    f.flush().map_err(|e| CoordError::io(path, e))
}

/// Encodes prototype records as `.npy` bytes (numpy-identical header).
pub fn encode_prototype_npy(
    path_for_errors: &Path,
    records: &[PrototypeRecord],
) -> Result<Vec<u8>, CoordError> {
    let fields: Vec<(&str, String)> = vec![
        ("x", "<i4".into()),
        ("y", "<i4".into()),
        ("tile_level", "<i4".into()),
        ("tile_size_resized", "<i4".into()),
        ("tile_size", "<i4".into()),
        ("tile_size_lv0", "<i4".into()),
        ("resize_factor", "<f4".into()),
        ("wsi_name", format!("<U{PROTOTYPE_WSI_NAME_MAX_CHARS}")),
    ];
    let mut out = build_header(&record_descr_repr(&fields), &[records.len()]);
    let row_bytes = 7 * 4 + 4 * PROTOTYPE_WSI_NAME_MAX_CHARS;
    out.reserve(records.len() * row_bytes);
    for (row, r) in records.iter().enumerate() {
        let n_chars = r.wsi_name.chars().count();
        if n_chars > PROTOTYPE_WSI_NAME_MAX_CHARS {
            return Err(CoordError::InvalidRecord {
                path: path_for_errors.to_path_buf(),
                row,
                msg: format!(
                    "wsi_name '{}' has {n_chars} characters; at most {PROTOTYPE_WSI_NAME_MAX_CHARS} fit in '<U{PROTOTYPE_WSI_NAME_MAX_CHARS}'",
                    r.wsi_name
                ),
            });
        }
        if r.wsi_name.contains('\0') {
            return Err(CoordError::InvalidRecord {
                path: path_for_errors.to_path_buf(),
                row,
                msg: "wsi_name contains a NUL character".into(),
            });
        }
        for v in [
            r.x,
            r.y,
            r.tile_level,
            r.tile_size_resized,
            r.tile_size,
            r.tile_size_lv0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&r.resize_factor.to_le_bytes());
        for c in r.wsi_name.chars() {
            out.extend_from_slice(&(c as u32).to_le_bytes());
        }
        out.extend(std::iter::repeat_n(
            0u8,
            4 * (PROTOTYPE_WSI_NAME_MAX_CHARS - n_chars),
        ));
    }
    Ok(out)
}

/// Writes a PBIP prototype coordinate file (structured `.npy`, `wsi_name` as `<U64`), readable by
/// numpy with `allow_pickle=False`. The bytes are deterministic and identical to `np.save`.
pub fn write_prototype_npy(
    path: impl AsRef<Path>,
    records: &[PrototypeRecord],
) -> Result<(), CoordError> {
    let path = path.as_ref();
    let bytes = encode_prototype_npy(path, records)?;
    write_file(path, &bytes)
}

/// Encodes hs2p 1.0 records as `.npy` bytes (numpy-identical header).
pub fn encode_hs2p_v1_npy(records: &[Hs2pV1Record]) -> Vec<u8> {
    let fields: Vec<(&str, String)> = vec![
        ("x", "<i8".into()),
        ("y", "<i8".into()),
        ("tile_size_resized", "<i8".into()),
        ("tile_level", "<i8".into()),
        ("resize_factor", "<f8".into()),
        ("tile_size_lv0", "<i8".into()),
        ("target_spacing", "<f8".into()),
    ];
    let mut out = build_header(&record_descr_repr(&fields), &[records.len()]);
    out.reserve(records.len() * 56);
    for r in records {
        for v in [r.x, r.y, r.tile_size_resized, r.tile_level] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&r.resize_factor.to_le_bytes());
        out.extend_from_slice(&r.tile_size_lv0.to_le_bytes());
        out.extend_from_slice(&r.target_spacing.to_le_bytes());
    }
    out
}

/// Writes an hs2p 1.0 / slide2vec 1.x structured coordinate file (exact upstream dtype).
pub fn write_hs2p_v1_npy(
    path: impl AsRef<Path>,
    records: &[Hs2pV1Record],
) -> Result<(), CoordError> {
    let path = path.as_ref();
    write_file(path, &encode_hs2p_v1_npy(records))
}

/// Tiling metadata for an hs2p >= 3 `.coordinates.meta.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingMeta {
    /// Sample id (file stem used by hs2p for `{sample_id}.coordinates.npz`).
    pub sample_id: String,
    /// Path of the slide.
    pub image_path: String,
    /// Level-0 slide size `[width, height]` in px.
    pub slide_dimensions_px: [u64; 2],
    /// Level-0 spacing (µm/px), if known.
    pub base_spacing_um: Option<f64>,
    /// Downsample factor of every pyramid level.
    pub level_downsamples: Vec<f64>,
    /// Requested output tile size (px at `requested_spacing_um`).
    pub requested_tile_size_px: u32,
    /// Requested spacing (µm/px).
    pub requested_spacing_um: f64,
    /// Pyramid level read.
    pub read_level: u32,
    /// Size read at `read_level` (px).
    pub read_tile_size_px: u32,
    /// Spacing of `read_level` (µm/px).
    pub read_spacing_um: f64,
    /// Tile footprint in level-0 px.
    pub tile_size_lv0: u32,
    /// Step between tiles in level-0 px.
    pub step_px_lv0: u32,
    /// Relative spacing tolerance used to pick the level.
    pub tolerance: f64,
    /// Tile overlap fraction.
    pub overlap: f64,
    /// Minimum tissue fraction of kept tiles.
    pub min_tissue_fraction: f64,
    /// Whether `read_spacing_um` is within `tolerance` of `requested_spacing_um`.
    pub is_within_tolerance: bool,
    /// Slide-reading backend name recorded in provenance (e.g. "pbip").
    pub backend: String,
    /// Tissue detection method recorded in the segmentation block (e.g. "hsv").
    pub tissue_method: Option<String>,
}

// The JSON structs list their fields in alphabetical order so that the output matches
// `json.dumps(..., indent=2, sort_keys=True)` whatever serde_json features are enabled.

#[derive(Serialize)]
struct MetaJson<'a> {
    artifact: ArtifactJson,
    filtering: FilteringJson,
    provenance: ProvenanceJson<'a>,
    segmentation: SegmentationJson<'a>,
    slide: SlideJson<'a>,
    tiling: TilingJson,
}

#[derive(Serialize)]
struct ArtifactJson {
    annotation: Option<String>,
    coordinate_space: &'static str,
    output_mode: Option<String>,
    selection_strategy: Option<String>,
    tile_order: &'static str,
}

#[derive(Serialize)]
struct FilteringJson {
    a_h: Option<f64>,
    a_t: Option<f64>,
    black_threshold: Option<i64>,
    blur_threshold: Option<f64>,
    filter_black: Option<bool>,
    filter_blur: Option<bool>,
    filter_grayspace: Option<bool>,
    filter_white: Option<bool>,
    fraction_threshold: Option<f64>,
    grayspace_fraction_threshold: Option<f64>,
    grayspace_saturation_threshold: Option<f64>,
    qc_spacing_um: Option<f64>,
    white_threshold: Option<i64>,
}

#[derive(Serialize)]
struct ProvenanceJson<'a> {
    backend: &'a str,
    image_path: &'a str,
    mask_backend: Option<String>,
    mask_path: Option<String>,
    requested_backend: &'a str,
    requested_mask_backend: Option<String>,
    sample_id: &'a str,
}

#[derive(Serialize)]
struct SegmentationJson<'a> {
    close: Option<i64>,
    mask_level: Option<i64>,
    mask_path: Option<String>,
    mask_spacing_um: Option<f64>,
    mthresh: Option<i64>,
    ref_tile_size_px: Option<i64>,
    requested_seg_downsample: Option<i64>,
    seg_downsample: Option<i64>,
    seg_level: Option<i64>,
    seg_spacing_um: Option<f64>,
    sthresh: Option<i64>,
    sthresh_up: Option<i64>,
    tissue_mask_tissue_value: Option<i64>,
    tissue_method: Option<&'a str>,
}

#[derive(Serialize)]
struct SlideJson<'a> {
    base_spacing_um: Option<f64>,
    dimensions: [u64; 2],
    level_downsamples: &'a [f64],
}

#[derive(Serialize)]
struct TilingJson {
    is_within_tolerance: bool,
    min_tissue_fraction: f64,
    n_tiles: usize,
    overlap: f64,
    read_level: u32,
    read_spacing_um: f64,
    read_tile_size_px: u32,
    requested_spacing_um: f64,
    requested_tile_size_px: u32,
    step_px_lv0: u32,
    tile_size_lv0: u32,
    tolerance: f64,
}

/// The meta JSON path that goes with an hs2p npz path:
/// `x.coordinates.npz` -> `x.coordinates.meta.json` (any `*.npz` -> `*.meta.json`).
pub fn hs2p_meta_path(npz_path: &Path) -> PathBuf {
    let name = npz_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".npz").unwrap_or(&name);
    npz_path.with_file_name(format!("{stem}.meta.json"))
}

/// Builds the `.coordinates.meta.json` text (2-space indent, sorted keys, trailing newline).
pub fn hs2p_meta_json(meta: &TilingMeta, n_tiles: usize) -> String {
    let m = MetaJson {
        artifact: ArtifactJson {
            annotation: None,
            coordinate_space: "level0_px",
            output_mode: None,
            selection_strategy: None,
            tile_order: "x_then_y",
        },
        filtering: FilteringJson {
            a_h: None,
            a_t: None,
            black_threshold: None,
            blur_threshold: None,
            filter_black: None,
            filter_blur: None,
            filter_grayspace: None,
            filter_white: None,
            fraction_threshold: None,
            grayspace_fraction_threshold: None,
            grayspace_saturation_threshold: None,
            qc_spacing_um: None,
            white_threshold: None,
        },
        provenance: ProvenanceJson {
            backend: &meta.backend,
            image_path: &meta.image_path,
            mask_backend: None,
            mask_path: None,
            requested_backend: &meta.backend,
            requested_mask_backend: None,
            sample_id: &meta.sample_id,
        },
        segmentation: SegmentationJson {
            close: None,
            mask_level: None,
            mask_path: None,
            mask_spacing_um: None,
            mthresh: None,
            ref_tile_size_px: None,
            requested_seg_downsample: None,
            seg_downsample: None,
            seg_level: None,
            seg_spacing_um: None,
            sthresh: None,
            sthresh_up: None,
            tissue_mask_tissue_value: None,
            tissue_method: meta.tissue_method.as_deref(),
        },
        slide: SlideJson {
            base_spacing_um: meta.base_spacing_um,
            dimensions: meta.slide_dimensions_px,
            level_downsamples: &meta.level_downsamples,
        },
        tiling: TilingJson {
            is_within_tolerance: meta.is_within_tolerance,
            min_tissue_fraction: meta.min_tissue_fraction,
            n_tiles,
            overlap: meta.overlap,
            read_level: meta.read_level,
            read_spacing_um: meta.read_spacing_um,
            read_tile_size_px: meta.read_tile_size_px,
            requested_spacing_um: meta.requested_spacing_um,
            requested_tile_size_px: meta.requested_tile_size_px,
            step_px_lv0: meta.step_px_lv0,
            tile_size_lv0: meta.tile_size_lv0,
            tolerance: meta.tolerance,
        },
    };
    // Serialising plain structs of numbers/strings cannot fail.
    let mut s = serde_json::to_string_pretty(&m).unwrap_or_default();
    s.push('\n');
    s
}

fn plain_npy_i64(v: &[i64]) -> Vec<u8> {
    let mut out = build_header("'<i8'", &[v.len()]);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes an hs2p >= 3 tiling artifact: `npz_path` (deflated zip of `tile_index.npy` `<i4`,
/// `x.npy` `<i8`, `y.npy` `<i8`, `tissue_fractions.npy` `<f4`) and the sibling meta JSON
/// (see [`hs2p_meta_path`]). `tile_index` is taken from `coords.tile_index` or 0..n;
/// tissue fractions from `coords.tissue_fraction` or 1.0. Returns the meta JSON path.
pub fn write_hs2p_npz(
    npz_path: impl AsRef<Path>,
    coords: &Coordinates,
    meta: &TilingMeta,
) -> Result<PathBuf, CoordError> {
    let npz_path = npz_path.as_ref();
    let n = coords.len();
    if coords.y.len() != n {
        return Err(CoordError::format(
            npz_path,
            "x and y have different lengths",
        ));
    }
    let tile_index: Vec<i32> = match &coords.tile_index {
        Some(t) => {
            if t.len() != n {
                return Err(CoordError::format(
                    npz_path,
                    "tile_index length differs from x",
                ));
            }
            let mut out = Vec::with_capacity(n);
            for (row, &v) in t.iter().enumerate() {
                out.push(i32::try_from(v).map_err(|_| CoordError::InvalidRecord {
                    path: npz_path.to_path_buf(),
                    row,
                    msg: format!("tile_index {v} does not fit in int32"),
                })?);
            }
            out
        }
        None => {
            let n32 = i32::try_from(n).map_err(|_| {
                CoordError::format(
                    npz_path,
                    format!("{n} tiles do not fit an int32 tile_index"),
                )
            })?;
            (0..n32).collect()
        }
    };
    let fractions: Vec<f32> = match &coords.tissue_fraction {
        Some(t) if t.len() == n => t.iter().map(|&v| v as f32).collect(),
        Some(_) => {
            return Err(CoordError::format(
                npz_path,
                "tissue_fraction length differs from x",
            ));
        }
        None => vec![1.0; n],
    };

    let mut ti = build_header("'<i4'", &[n]);
    for v in &tile_index {
        ti.extend_from_slice(&v.to_le_bytes());
    }
    let mut tf = build_header("'<f4'", &[n]);
    for v in &fractions {
        tf.extend_from_slice(&v.to_le_bytes());
    }
    let members: [(&str, Vec<u8>); 4] = [
        ("tile_index.npy", ti),
        ("x.npy", plain_npy_i64(&coords.x)),
        ("y.npy", plain_npy_i64(&coords.y)),
        ("tissue_fractions.npy", tf),
    ];

    let file = std::fs::File::create(npz_path).map_err(|e| CoordError::io(npz_path, e))?;
    let mut zw = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    let zerr =
        |e: zip::result::ZipError| CoordError::format(npz_path, format!("zip write error: {e}"));
    for (name, bytes) in &members {
        zw.start_file(*name, opts).map_err(zerr)?;
        zw.write_all(bytes)
            .map_err(|e| CoordError::io(npz_path, e))?;
    }
    let mut inner = zw.finish().map_err(zerr)?;
    inner.flush().map_err(|e| CoordError::io(npz_path, e))?;

    let meta_path = hs2p_meta_path(npz_path);
    write_file(&meta_path, hs2p_meta_json(meta, n).as_bytes())?;
    Ok(meta_path)
}

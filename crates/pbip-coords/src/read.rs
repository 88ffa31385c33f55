//! Readers: dispatch by extension / content, structured and plain `.npy`, hs2p npz + meta JSON.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::CoordError;
use crate::npy::{Column, Descr, NPY_MAGIC, decode_plain, decode_record_columns, parse_header};
use crate::write::hs2p_meta_path;
use crate::{CoordFormat, Coordinates, ReadOptions, pickle};

/// Largest decompressed npz member we accept (guards against zip bombs).
const MAX_NPZ_MEMBER_BYTES: u64 = 1 << 32;

const HS2P_V1_FIELDS: [&str; 7] = [
    "x",
    "y",
    "tile_size_resized",
    "tile_level",
    "resize_factor",
    "tile_size_lv0",
    "target_spacing",
];
const HS2P_V11_FIELDS: [&str; 9] = [
    "x",
    "y",
    "contour_index",
    "target_tile_size",
    "target_spacing",
    "tile_level",
    "resize_factor",
    "tile_size_resized",
    "tile_size_lv0",
];

fn lower_ext(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, CoordError> {
    std::fs::read(path).map_err(|e| CoordError::io(path, e))
}

/// Reads any supported coordinate file.
pub(crate) fn read_any(path: &Path, opts: &ReadOptions) -> Result<Coordinates, CoordError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".meta.json") {
        let stem = &path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = &stem[..stem.len() - ".meta.json".len()];
        let npz = path.with_file_name(format!("{base}.npz"));
        return read_hs2p(&npz, path, opts);
    }
    let bytes = read_bytes(path)?;
    if bytes.is_empty() {
        return Err(CoordError::format(path, "file is empty"));
    }
    let ext = lower_ext(path);
    match ext.as_str() {
        "npy" => read_npy_bytes(path, &bytes, opts),
        "npz" => read_hs2p_with_bytes(path, &bytes, &hs2p_meta_path(path), opts),
        "txt" | "csv" | "tsv" => read_text_bytes(path, &bytes, opts),
        _ => {
            if bytes.starts_with(NPY_MAGIC) {
                read_npy_bytes(path, &bytes, opts)
            } else if bytes.starts_with(b"PK\x03\x04") {
                read_hs2p_with_bytes(path, &bytes, &hs2p_meta_path(path), opts)
            } else {
                read_text_bytes(path, &bytes, opts)
            }
        }
    }
}

fn read_text_bytes(
    path: &Path,
    bytes: &[u8],
    opts: &ReadOptions,
) -> Result<Coordinates, CoordError> {
    let s = std::str::from_utf8(bytes)
        .map_err(|_| CoordError::format(path, "not a .npy/.npz file and not UTF-8 text"))?;
    Coordinates::from_text(path, s, opts)
}

/// Errors on negative x / y unless allowed.
pub(crate) fn check_negative(
    path: &Path,
    c: &Coordinates,
    opts: &ReadOptions,
) -> Result<(), CoordError> {
    if opts.allow_negative {
        return Ok(());
    }
    for (row, (&x, &y)) in c.x.iter().zip(&c.y).enumerate() {
        if x < 0 || y < 0 {
            return Err(CoordError::NegativeCoordinate {
                path: path.to_path_buf(),
                row,
                x_px: x,
                y_px: y,
            });
        }
    }
    Ok(())
}

/// Parses a `.npy` file held in memory.
pub(crate) fn read_npy_bytes(
    path: &Path,
    bytes: &[u8],
    opts: &ReadOptions,
) -> Result<Coordinates, CoordError> {
    let header = parse_header(bytes).map_err(|e| CoordError::format(path, e))?;
    let data = &bytes[header.data_offset..];
    let c = if header.descr.has_object() {
        let cols = pickle::decode_pickled_records(&header, data)
            .map_err(|e| CoordError::format(path, format!("pickled (object) .npy: {e}")))?;
        columns_to_coords(path, cols, Some(CoordFormat::PickledPrototypeNpy))?
    } else {
        match &header.descr {
            Descr::Record { .. } => {
                if header.fortran_order && header.shape.len() > 1 {
                    return Err(CoordError::format(
                        path,
                        "Fortran-order multi-dimensional structured arrays are not supported",
                    ));
                }
                let cols = decode_record_columns(&header, data)
                    .map_err(|e| CoordError::format(path, e))?;
                columns_to_coords(path, cols, None)?
            }
            Descr::Simple(_) => plain_to_coords(
                path,
                &header.shape,
                decode_plain(&header, data).map_err(|e| CoordError::format(path, e))?,
            )?,
        }
    };
    check_negative(path, &c, opts)?;
    Ok(c)
}

fn float_to_int(path: &Path, what: &str, row: usize, f: f64) -> Result<i64, CoordError> {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Ok(f as i64)
    } else {
        Err(CoordError::format(
            path,
            format!("{what}, row {row}: value {f} is not an integer"),
        ))
    }
}

fn plain_to_coords(path: &Path, shape: &[usize], col: Column) -> Result<Coordinates, CoordError> {
    let (n, k) = match shape {
        [0] => (0, 2),
        [n, k] if *k >= 2 => (*n, *k),
        [_, k] => {
            return Err(CoordError::format(
                path,
                format!(
                    "plain coordinate array must have at least 2 columns (x, y), shape is (N, {k})"
                ),
            ));
        }
        _ => {
            return Err(CoordError::format(
                path,
                format!(
                    "plain coordinate array must be 2-D (N, 2) or (N, k>2), shape is {shape:?}"
                ),
            ));
        }
    };
    let mut x = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    match col {
        Column::Int(v) => {
            for i in 0..n {
                x.push(v[i * k]);
                y.push(v[i * k + 1]);
            }
        }
        Column::Float(v) => {
            for i in 0..n {
                x.push(float_to_int(path, "x", i, v[i * k])?);
                y.push(float_to_int(path, "y", i, v[i * k + 1])?);
            }
        }
        Column::Str(_) => return Err(CoordError::format(path, "plain array of strings")),
    }
    Ok(Coordinates {
        source: CoordFormat::PlainNpy,
        ..Coordinates::from_xy(x, y)
    })
}

fn int_col(path: &Path, name: &str, col: Column) -> Result<Vec<i64>, CoordError> {
    match col {
        Column::Int(v) => Ok(v),
        Column::Float(v) => v
            .iter()
            .enumerate()
            .map(|(i, &f)| float_to_int(path, &format!("field '{name}'"), i, f))
            .collect(),
        Column::Str(_) => Err(CoordError::format(
            path,
            format!("field '{name}' is a string field, expected numbers"),
        )),
    }
}

fn u32_col(path: &Path, name: &str, col: Column, min: u32) -> Result<Vec<u32>, CoordError> {
    let v = int_col(path, name, col)?;
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            u32::try_from(x).ok().filter(|&u| u >= min).ok_or_else(|| {
                CoordError::format(
                    path,
                    format!(
                        "field '{name}', row {i}: value {x} is out of range (must be >= {min})"
                    ),
                )
            })
        })
        .collect()
}

fn f64_col(path: &Path, name: &str, col: Column) -> Result<Vec<f64>, CoordError> {
    match col {
        Column::Float(v) => Ok(v),
        Column::Int(v) => Ok(v.into_iter().map(|x| x as f64).collect()),
        Column::Str(_) => Err(CoordError::format(
            path,
            format!("field '{name}' is a string field, expected numbers"),
        )),
    }
}

/// Maps named columns (structured or unpickled records) to coordinates.
pub(crate) fn columns_to_coords(
    path: &Path,
    cols: Vec<(String, Column)>,
    forced_format: Option<CoordFormat>,
) -> Result<Coordinates, CoordError> {
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    let format = forced_format.unwrap_or_else(|| {
        if names == HS2P_V1_FIELDS {
            CoordFormat::Hs2pV1Npy
        } else if names == HS2P_V11_FIELDS {
            CoordFormat::Hs2pV11Npy
        } else if names.contains(&"wsi_name") {
            CoordFormat::PrototypeNpy
        } else {
            CoordFormat::StructuredNpy
        }
    });
    if !names.contains(&"x") || !names.contains(&"y") {
        return Err(CoordError::format(
            path,
            format!("structured array has no 'x' and 'y' fields (fields: {names:?})"),
        ));
    }
    let n = cols.first().map(|(_, c)| c.len()).unwrap_or(0);
    let mut c = Coordinates {
        source: format,
        ..Coordinates::from_xy(Vec::new(), Vec::new())
    };
    for (name, col) in cols {
        if col.len() != n {
            return Err(CoordError::format(
                path,
                format!("field '{name}' has {} rows, expected {n}", col.len()),
            ));
        }
        match name.as_str() {
            "x" => c.x = int_col(path, &name, col)?,
            "y" => c.y = int_col(path, &name, col)?,
            "tile_level" => c.tile_level = Some(u32_col(path, &name, col, 0)?),
            "tile_size_resized" => c.tile_size_resized = Some(u32_col(path, &name, col, 1)?),
            "tile_size_lv0" => c.tile_size_lv0 = Some(u32_col(path, &name, col, 1)?),
            "target_tile_size" | "tile_size" => {
                c.target_tile_size = Some(u32_col(path, &name, col, 1)?)
            }
            "resize_factor" => c.resize_factor = Some(f64_col(path, &name, col)?),
            "target_spacing" => c.target_spacing = Some(f64_col(path, &name, col)?),
            "contour_index" => c.contour_index = Some(int_col(path, &name, col)?),
            "tissue_fraction" | "tissue_fractions" => {
                c.tissue_fraction = Some(f64_col(path, &name, col)?)
            }
            "tile_index" => c.tile_index = Some(int_col(path, &name, col)?),
            "wsi_name" => match col {
                Column::Str(v) => c.wsi_name = Some(v),
                _ => {
                    return Err(CoordError::format(
                        path,
                        "field 'wsi_name' is not a string field",
                    ));
                }
            },
            other => {
                tracing::debug!(file = %path.display(), field = other, "ignoring unknown coordinate field")
            }
        }
    }
    Ok(c)
}

fn read_hs2p(npz: &Path, meta_path: &Path, opts: &ReadOptions) -> Result<Coordinates, CoordError> {
    match std::fs::read(npz) {
        Ok(bytes) => read_hs2p_with_bytes(npz, &bytes, meta_path, opts),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // hs2p writes no npz when there are no tiles.
            let meta = read_meta(meta_path)?;
            let n_tiles = meta.n_tiles;
            if n_tiles == Some(0) {
                let mut c = Coordinates::from_xy(Vec::new(), Vec::new());
                c.source = CoordFormat::Hs2pNpz;
                apply_meta(&mut c, &meta);
                Ok(c)
            } else {
                Err(CoordError::io(npz, e))
            }
        }
        Err(e) => Err(CoordError::io(npz, e)),
    }
}

/// Geometry block of an hs2p meta JSON.
struct Hs2pMeta {
    read_level: u32,
    read_tile_size_px: u32,
    requested_tile_size_px: Option<u32>,
    tile_size_lv0: Option<u32>,
    requested_spacing_um: Option<f64>,
    n_tiles: Option<u64>,
}

fn read_meta(meta_path: &Path) -> Result<Hs2pMeta, CoordError> {
    let text = std::fs::read_to_string(meta_path).map_err(|e| CoordError::io(meta_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CoordError::format(meta_path, format!("invalid JSON: {e}")))?;
    let tiling = v
        .get("tiling")
        .and_then(|t| t.as_object())
        .ok_or_else(|| CoordError::format(meta_path, "missing 'tiling' object"))?;
    let get_u32 = |key: &str, required: bool| -> Result<Option<u32>, CoordError> {
        match tiling.get(key) {
            None | Some(serde_json::Value::Null) if !required => Ok(None),
            None | Some(serde_json::Value::Null) => Err(CoordError::format(
                meta_path,
                format!("missing 'tiling.{key}'"),
            )),
            Some(x) => {
                let n = x
                    .as_u64()
                    .or_else(|| {
                        x.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        CoordError::format(
                            meta_path,
                            format!("'tiling.{key}' is not a non-negative integer: {x}"),
                        )
                    })?;
                Ok(Some(n))
            }
        }
    };
    let read_level = get_u32("read_level", true)?.unwrap_or(0);
    let read_tile_size_px = get_u32("read_tile_size_px", true)?.unwrap_or(0);
    if read_tile_size_px == 0 {
        return Err(CoordError::format(
            meta_path,
            "'tiling.read_tile_size_px' must be > 0",
        ));
    }
    let requested_tile_size_px = get_u32("requested_tile_size_px", false)?.filter(|&v| v > 0);
    let tile_size_lv0 = get_u32("tile_size_lv0", false)?.filter(|&v| v > 0);
    let n_tiles = get_u32("n_tiles", false)?.map(u64::from);
    let requested_spacing_um = tiling.get("requested_spacing_um").and_then(|x| x.as_f64());
    Ok(Hs2pMeta {
        read_level,
        read_tile_size_px,
        requested_tile_size_px,
        tile_size_lv0,
        requested_spacing_um,
        n_tiles,
    })
}

fn apply_meta(c: &mut Coordinates, m: &Hs2pMeta) {
    let n = c.len();
    c.tile_level = Some(vec![m.read_level; n]);
    c.tile_size_resized = Some(vec![m.read_tile_size_px; n]);
    c.target_tile_size = m.requested_tile_size_px.map(|v| vec![v; n]);
    c.tile_size_lv0 = m.tile_size_lv0.map(|v| vec![v; n]);
    c.target_spacing = m.requested_spacing_um.map(|v| vec![v; n]);
    c.resize_factor = m
        .requested_tile_size_px
        .map(|r| vec![m.read_tile_size_px as f64 / r as f64; n]);
}

fn npz_member(
    path: &Path,
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<Column>, CoordError> {
    let candidates = [format!("{name}.npy"), name.to_string()];
    for cand in &candidates {
        let mut f = match zip.by_name(cand) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => continue,
            Err(e) => return Err(CoordError::format(path, format!("member '{cand}': {e}"))),
        };
        if f.size() > MAX_NPZ_MEMBER_BYTES {
            return Err(CoordError::format(
                path,
                format!(
                    "member '{cand}' declares {} bytes, more than the {MAX_NPZ_MEMBER_BYTES}-byte limit",
                    f.size()
                ),
            ));
        }
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_NPZ_MEMBER_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| {
                CoordError::format(path, format!("member '{cand}': cannot decompress: {e}"))
            })?;
        let h = parse_header(&buf)
            .map_err(|e| CoordError::format(path, format!("member '{cand}': {e}")))?;
        if h.shape.len() != 1 {
            return Err(CoordError::format(
                path,
                format!("member '{cand}' must be 1-D, shape is {:?}", h.shape),
            ));
        }
        if !matches!(h.descr, Descr::Simple(_)) || h.descr.has_object() {
            return Err(CoordError::format(
                path,
                format!("member '{cand}' must be a plain numeric array"),
            ));
        }
        let col = decode_plain(&h, &buf[h.data_offset..])
            .map_err(|e| CoordError::format(path, format!("member '{cand}': {e}")))?;
        return Ok(Some(col));
    }
    Ok(None)
}

fn read_hs2p_with_bytes(
    path: &Path,
    bytes: &[u8],
    meta_path: &Path,
    opts: &ReadOptions,
) -> Result<Coordinates, CoordError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| CoordError::format(path, format!("not a valid .npz (zip) file: {e}")))?;
    let mut cols = Vec::new();
    for name in ["x", "y", "tile_index", "tissue_fractions"] {
        match npz_member(path, &mut zip, name)? {
            Some(c) => cols.push((name.to_string(), c)),
            None if name == "x" || name == "y" => {
                return Err(CoordError::format(
                    path,
                    format!("npz has no '{name}' array"),
                ));
            }
            None => {}
        }
    }
    let mut c = columns_to_coords(path, cols, Some(CoordFormat::Hs2pNpz))?;
    let meta_path: PathBuf = meta_path.to_path_buf();
    if !meta_path.exists() {
        return Err(CoordError::format(
            path,
            format!(
                "hs2p tiling metadata '{}' not found next to the npz; it holds the read level and tile size",
                meta_path.display()
            ),
        ));
    }
    let meta = read_meta(&meta_path)?;
    if let Some(nt) = meta.n_tiles
        && nt != c.len() as u64
    {
        return Err(CoordError::format(
            path,
            format!(
                "npz has {} tiles but '{}' says n_tiles = {nt}",
                c.len(),
                meta_path.display()
            ),
        ));
    }
    apply_meta(&mut c, &meta);
    check_negative(path, &c, opts)?;
    Ok(c)
}

//! Prediction layers over a slide, read tile by tile from the outputs of `pbip infer`
//! (`predictions/<slide>/`):
//!
//! - the **class mask** from `mask.tiff` (tiled pyramidal u8 label TIFF, levels /2 by nearest
//!   sampling; read through pbip-slide), or from `segmentation_mask.png` when no TIFF is there and
//!   the PNG is small ([`MAX_PNG_MASK_PX`]); pixel = class index, 255 = no label;
//! - **confidence maps** from `confidence_maps.npz` (`class_k.npy`, float16 / float32 / uint8
//!   `[H, W]`, stored uncompressed as `pbip infer` writes them): only the rows a tile samples are
//!   read, straight from the file at their offsets, so no map is ever loaded;
//! - the class names and colours from `metadata.json` (`class_order`) and the palette of
//!   `segmentation_mask.png` (the colours of the run).
//!
//! All maps are on the *output grid* of the run: output pixel `(i, j)` covers level-0 pixels
//! `[i·D, (i+1)·D) x [j·D, (j+1)·D)`, `D = output_downsample`. A tile pixel shows the grid cell
//! its centre falls in (nearest neighbour).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pbip_slide::{Backend, OpenOptions, Slide};
use serde::Deserialize;

use crate::dz::{DeepZoom, TileAddr};
use crate::error::{Result, ViewError, format_err, io_err};
use crate::render::{IndexedImage, Palette, lv0_for_level_px, sample_axis, tile_geometry};

/// Label value meaning "no label" (pbip_post::NO_LABEL).
pub const NO_LABEL: u8 = pbip_post::NO_LABEL;

/// Largest `segmentation_mask.png` (pixels) held in memory when no `mask.tiff` exists.
pub const MAX_PNG_MASK_PX: u64 = 16 << 20;

/// Decoded-tile cache of an open `mask.tiff`, bytes.
pub const MASK_CACHE_BYTES: usize = 8 << 20;

/// The fields of `metadata.json` the viewer uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PredictionMetadata {
    /// Class names, index = label value.
    #[serde(default)]
    pub class_order: Vec<String>,
    /// µm per level-0 pixel used by the run.
    #[serde(default)]
    pub mpp: Option<f64>,
    /// Level-0 px per output px.
    #[serde(default)]
    pub output_downsample: Option<f64>,
    /// `[width, height]` of the output maps.
    #[serde(default)]
    pub output_size_px: Option<[u64; 2]>,
    /// Output pixels per class in the final mask.
    #[serde(default)]
    pub class_pixels: Vec<u64>,
}

impl PredictionMetadata {
    /// Reads `metadata.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|e| format_err(path, e.to_string()))
    }
}

/// The class colours of a run: the `PLTE` of `segmentation_mask.png` (only the header chunks are
/// read).
pub fn read_png_palette(path: &Path) -> Result<Vec<[u8; 3]>> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::IDENTITY);
    let r = dec
        .read_info()
        .map_err(|e| format_err(path, e.to_string()))?;
    let plte = r
        .info()
        .palette
        .as_ref()
        .ok_or_else(|| format_err(path, "not an indexed PNG (no palette)"))?;
    Ok(plte.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
}

/// The colour of class `k` when the run's palette is not available.
pub fn default_color(k: usize) -> [u8; 3] {
    pbip_post::export::default_color(k)
}

/// A label map at the output grid.
pub enum LabelMask {
    /// `mask.tiff`, read by tiles.
    Tiff(Box<Slide>),
    /// A small `segmentation_mask.png` in memory.
    Memory {
        /// Width, px.
        width: u64,
        /// Height, px.
        height: u64,
        /// Labels, row-major.
        data: Vec<u8>,
    },
}

impl std::fmt::Debug for LabelMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tiff(s) => f.debug_tuple("Tiff").field(&s.path()).finish(),
            Self::Memory { width, height, .. } => write!(f, "Memory({width} x {height})"),
        }
    }
}

impl LabelMask {
    /// Opens a pyramidal label TIFF (pure-Rust reader; pixels outside read as [`NO_LABEL`]).
    pub fn open_tiff(path: &Path) -> Result<Self> {
        let opts = OpenOptions {
            backend: Backend::Rust,
            cache_bytes: MASK_CACHE_BYTES,
            background_rgb: [NO_LABEL; 3],
        };
        Ok(Self::Tiff(Box::new(Slide::open(path, &opts)?)))
    }

    /// Loads an 8-bit indexed or grey label PNG of at most [`MAX_PNG_MASK_PX`] pixels.
    pub fn open_png(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(io_err(path))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(f));
        dec.set_transformations(png::Transformations::IDENTITY);
        let mut r = dec
            .read_info()
            .map_err(|e| format_err(path, e.to_string()))?;
        let info = r.info();
        let (w, h) = (u64::from(info.width), u64::from(info.height));
        if info.bit_depth != png::BitDepth::Eight
            || !matches!(
                info.color_type,
                png::ColorType::Indexed | png::ColorType::Grayscale
            )
        {
            return Err(format_err(
                path,
                format!(
                    "expected an 8-bit indexed or grey label PNG, got {:?} {:?}",
                    info.color_type, info.bit_depth
                ),
            ));
        }
        if w * h > MAX_PNG_MASK_PX {
            return Err(format_err(
                path,
                format!(
                    "{w} x {h} px is too large to view without mask.tiff (limit {MAX_PNG_MASK_PX} px)"
                ),
            ));
        }
        let n = r
            .output_buffer_size()
            .ok_or_else(|| format_err(path, "image too large"))?;
        let mut data = vec![0u8; n];
        r.next_frame(&mut data)
            .map_err(|e| format_err(path, e.to_string()))?;
        data.truncate((w * h) as usize);
        Ok(Self::Memory {
            width: w,
            height: h,
            data,
        })
    }

    /// Size of the output grid, px.
    pub fn dimensions(&self) -> (u64, u64) {
        match self {
            Self::Tiff(s) => s.dimensions(),
            Self::Memory { width, height, .. } => (*width, *height),
        }
    }

    /// Level `k`'s grid cells per output px (a power of two for pbip's masks) and size.
    fn level(&self, k: usize) -> Result<(f64, (u64, u64))> {
        match self {
            Self::Tiff(s) => {
                let ds = s.level_downsample(k)?;
                // pbip-pyramid's levels are exact /2 steps (nearest: level-k pixel p is output
                // pixel p·2^k); the reader's ratio of sizes is slightly off for odd sizes.
                let p2 = 2f64.powi(ds.log2().round() as i32);
                let ds = if (ds - p2).abs() <= 0.01 * p2 { p2 } else { ds };
                Ok((ds, s.level_dimensions(k)?))
            }
            Self::Memory { width, height, .. } => Ok((1.0, (*width, *height))),
        }
    }

    fn best_level(&self, downsample: f64) -> usize {
        match self {
            Self::Tiff(s) => s.best_level_for_downsample(downsample),
            Self::Memory { .. } => 0,
        }
    }

    /// Labels of the level-`k` rectangle `[x0, x0 + w) x [y0, y0 + h)` ([`NO_LABEL`] outside).
    fn read(&self, k: usize, x0: u64, y0: u64, w: u32, h: u32) -> Result<Vec<u8>> {
        match self {
            Self::Tiff(s) => {
                let ds = s.level_downsample(k)?;
                let img =
                    s.read_region(lv0_for_level_px(x0, ds), lv0_for_level_px(y0, ds), k, w, h)?;
                Ok(img.data.chunks_exact(3).map(|p| p[0]).collect())
            }
            Self::Memory {
                width,
                height,
                data,
            } => {
                let mut out = vec![NO_LABEL; w as usize * h as usize];
                for (r, row) in out.chunks_exact_mut(w as usize).enumerate() {
                    let y = y0 + r as u64;
                    if y >= *height {
                        break;
                    }
                    for (c, v) in row.iter_mut().enumerate() {
                        let x = x0 + c as u64;
                        if x < *width {
                            *v = data[(y * width + x) as usize];
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// The labels under DeepZoom tile `at` of a slide pyramid `dz`, for an output grid of
    /// `output_downsample` level-0 px per cell.
    pub fn tile(
        &self,
        dz: &DeepZoom,
        at: TileAddr,
        output_downsample: f64,
    ) -> Result<IndexedImage> {
        let (rect, d) = tile_geometry(dz, at)?;
        let k = self.best_level(d / output_downsample);
        let (ds, (lw, lh)) = self.level(k)?;
        let cols = sample_axis(rect.x_px, rect.width_px, d, output_downsample * ds, lw);
        let rows = sample_axis(rect.y_px, rect.height_px, d, output_downsample * ds, lh);
        let mut indices = vec![NO_LABEL; rect.width_px as usize * rect.height_px as usize];
        let span = |v: &[Option<u64>]| {
            let lo = v.iter().flatten().min().copied()?;
            let hi = v.iter().flatten().max().copied()?;
            Some((lo, (hi - lo + 1) as u32))
        };
        if let (Some((x0, rw)), Some((y0, rh))) = (span(&cols), span(&rows)) {
            let labels = self.read(k, x0, y0, rw, rh)?;
            for (dst, r) in indices.chunks_exact_mut(rect.width_px as usize).zip(&rows) {
                let Some(r) = r else { continue };
                let src = &labels[((r - y0) * u64::from(rw)) as usize..][..rw as usize];
                for (d, c) in dst.iter_mut().zip(&cols) {
                    if let Some(c) = c {
                        *d = src[(c - x0) as usize];
                    }
                }
            }
        }
        Ok(IndexedImage {
            width: rect.width_px,
            height: rect.height_px,
            indices,
        })
    }
}

/// Element type of a confidence array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F16,
    F32,
    U8,
}

impl Dtype {
    fn bytes(self) -> u64 {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
            Self::U8 => 1,
        }
    }

    fn value(self, b: &[u8]) -> f32 {
        match self {
            Self::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::U8 => f32::from(b[0]) / 255.0,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    offset: u64,
    dtype: Dtype,
    width: u64,
    height: u64,
}

/// Tile width and height and the grid cells of its columns and rows.
type Cells = (u32, u32, Vec<Option<u64>>, Vec<Option<u64>>);

/// Random access to the `class_k` arrays of `confidence_maps.npz`.
#[derive(Debug)]
pub struct ConfidenceMaps {
    path: PathBuf,
    file: File,
    members: Vec<Member>,
}

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

impl ConfidenceMaps {
    /// Indexes the archive: every `class_0.npy`, `class_1.npy`, … member must be stored
    /// uncompressed (as `numpy.savez` and `pbip infer` write them), C-ordered, 2-D, `<f2`, `<f4`
    /// or `|u1`, all of one shape.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut zip = zip::ZipArchive::new(file.try_clone().map_err(io_err(path))?)
            .map_err(|e| format_err(path, format!("not a readable .npz (zip): {e}")))?;
        let mut members: Vec<Member> = Vec::new();
        for k in 0.. {
            let name = format!("class_{k}.npy");
            let (start, size) = match zip.by_name(&name) {
                Ok(m) => {
                    if m.compression() != zip::CompressionMethod::Stored {
                        return Err(format_err(
                            path,
                            format!(
                                "{name} is compressed ({}); the viewer needs an uncompressed .npz (numpy.savez, not savez_compressed)",
                                m.compression()
                            ),
                        ));
                    }
                    (m.data_start(), m.size())
                }
                Err(zip::result::ZipError::FileNotFound) => break,
                Err(e) => return Err(format_err(path, format!("{name}: {e}"))),
            };
            let mut f = &file;
            f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
            let mut counting = Counting {
                inner: f.take(size),
                n: 0,
            };
            let header = npyz::NpyHeader::from_reader(&mut counting)
                .map_err(|e| format_err(path, format!("{name}: {e}")))?;
            let dtype = match header.dtype() {
                npyz::DType::Plain(ts) => match ts.to_string().as_str() {
                    "<f2" => Dtype::F16,
                    "<f4" => Dtype::F32,
                    "|u1" | "<u1" => Dtype::U8,
                    other => {
                        return Err(format_err(
                            path,
                            format!("{name}: dtype {other} (expected <f2, <f4 or |u1)"),
                        ));
                    }
                },
                other => {
                    return Err(format_err(
                        path,
                        format!("{name}: dtype {} (expected a plain type)", other.descr()),
                    ));
                }
            };
            let shape = header.shape();
            if shape.len() != 2 || header.order() != npyz::Order::C {
                return Err(format_err(
                    path,
                    format!("{name}: expected a C-ordered [H, W] array, got shape {shape:?}"),
                ));
            }
            let (height, width) = (shape[0], shape[1]);
            let need = counting.n + height * width * dtype.bytes();
            if need > size {
                return Err(format_err(
                    path,
                    format!("{name}: truncated ({size} bytes, {need} needed)"),
                ));
            }
            if let Some(first) = members.first()
                && (first.width, first.height) != (width, height)
            {
                return Err(format_err(
                    path,
                    format!(
                        "{name} is {width} x {height}, class_0 is {} x {}",
                        first.width, first.height
                    ),
                ));
            }
            members.push(Member {
                offset: start + counting.n,
                dtype,
                width,
                height,
            });
        }
        if members.is_empty() {
            return Err(format_err(path, "no class_0.npy member"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    /// Number of classes.
    pub fn class_count(&self) -> usize {
        self.members.len()
    }

    /// Size of the maps, px.
    pub fn dimensions(&self) -> (u64, u64) {
        (self.members[0].width, self.members[0].height)
    }

    /// Values of class `k` at the grid cells `cols` x `rows` (row-major; NaN outside the map).
    pub fn sample(&self, k: usize, cols: &[Option<u64>], rows: &[Option<u64>]) -> Result<Vec<f32>> {
        let m = self
            .members
            .get(k)
            .ok_or_else(|| ViewError::Invalid(format!("no confidence map for class {k}")))?;
        let mut out = vec![f32::NAN; cols.len() * rows.len()];
        let cols: Vec<Option<u64>> = cols.iter().map(|c| c.filter(|&c| c < m.width)).collect();
        let (Some(&lo), Some(&hi)) = (cols.iter().flatten().min(), cols.iter().flatten().max())
        else {
            return Ok(out);
        };
        let b = m.dtype.bytes();
        let mut buf = vec![0u8; ((hi - lo + 1) * b) as usize];
        let mut have: Option<u64> = None;
        for (dst, r) in out.chunks_exact_mut(cols.len()).zip(rows) {
            let Some(r) = r.filter(|&r| r < m.height) else {
                continue;
            };
            if have != Some(r) {
                let at = m.offset + (r * m.width + lo) * b;
                self.file
                    .read_exact_at(&mut buf, at)
                    .map_err(io_err(&self.path))?;
                have = Some(r);
            }
            for (d, c) in dst.iter_mut().zip(&cols) {
                if let Some(c) = c {
                    let i = ((c - lo) * b) as usize;
                    *d = m.dtype.value(&buf[i..i + b as usize]);
                }
            }
        }
        Ok(out)
    }

    /// Grid cells of a DeepZoom tile (see [`LabelMask::tile`]).
    fn cells(&self, dz: &DeepZoom, at: TileAddr, output_downsample: f64) -> Result<Cells> {
        let (rect, d) = tile_geometry(dz, at)?;
        let (w, h) = self.dimensions();
        Ok((
            rect.width_px,
            rect.height_px,
            sample_axis(rect.x_px, rect.width_px, d, output_downsample, w),
            sample_axis(rect.y_px, rect.height_px, d, output_downsample, h),
        ))
    }

    /// Heat-map tile of class `k`: index `round(p · 254)`, [`NO_LABEL`] where there is no value
    /// (outside the map, NaN, or exactly 0: no patch covered the pixel or the class is gated off).
    pub fn class_tile(
        &self,
        k: usize,
        dz: &DeepZoom,
        at: TileAddr,
        output_downsample: f64,
    ) -> Result<IndexedImage> {
        let (w, h, cols, rows) = self.cells(dz, at, output_downsample)?;
        let v = self.sample(k, &cols, &rows)?;
        Ok(IndexedImage {
            width: w,
            height: h,
            indices: v.into_iter().map(quantize).collect(),
        })
    }

    /// Uncertainty tile: `1 - (p₁ - p₂)` with `p₁ ≥ p₂` the two largest class confidences
    /// (1 = the two best classes tie, 0 = one class is certain), quantised as
    /// [`ConfidenceMaps::class_tile`]; no value where every class is 0 or missing.
    pub fn uncertainty_tile(
        &self,
        dz: &DeepZoom,
        at: TileAddr,
        output_downsample: f64,
    ) -> Result<IndexedImage> {
        let (w, h, cols, rows) = self.cells(dz, at, output_downsample)?;
        let maps = (0..self.class_count())
            .map(|k| self.sample(k, &cols, &rows))
            .collect::<Result<Vec<_>>>()?;
        let n = w as usize * h as usize;
        let indices = (0..n)
            .map(|i| {
                let (mut p1, mut p2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for m in &maps {
                    let v = m[i];
                    if v.is_nan() {
                        continue;
                    }
                    if v > p1 {
                        p2 = p1;
                        p1 = v;
                    } else if v > p2 {
                        p2 = v;
                    }
                }
                // p1 is never NaN (skipped above); -inf when every class is missing.
                if p1 <= 0.0 {
                    return NO_LABEL;
                }
                let p2 = if p2.is_finite() { p2 } else { 0.0 };
                // Keep 0 visible: the colour of certainty, not "no value".
                let u = (1.0 - (p1 - p2)).clamp(0.0, 1.0);
                (u * 254.0).round() as u8
            })
            .collect();
        Ok(IndexedImage {
            width: w,
            height: h,
            indices,
        })
    }
}

fn quantize(v: f32) -> u8 {
    if v.is_nan() || v <= 0.0 {
        NO_LABEL
    } else {
        (v.min(1.0) * 254.0).round() as u8
    }
}

/// Viridis control points (matplotlib), for the heat maps.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// Heat-map palette: index `q` in 0..=254 is viridis at `q / 254`, 255 is transparent.
pub fn heat_palette() -> Palette {
    let mut p = Palette::transparent();
    for q in 0..255usize {
        let t = q as f64 / 254.0 * (VIRIDIS.len() - 1) as f64;
        let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
        let f = t - i as f64;
        for ((out, &a), &b) in p.rgb[q].iter_mut().zip(&VIRIDIS[i]).zip(&VIRIDIS[i + 1]) {
            let (a, b) = (f64::from(a), f64::from(b));
            *out = (a + (b - a) * f).round() as u8;
        }
        p.alpha[q] = 255;
    }
    p
}

/// Colour of value `p` (0..=1) in [`heat_palette`], for the legend.
pub fn heat_color(p: f64) -> [u8; 3] {
    let q = (p.clamp(0.0, 1.0) * 254.0).round() as usize;
    heat_palette().rgb[q]
}

/// Class-mask palette: class `k` in `colors[k]`, opaque unless `hidden[k]`; other indices
/// (including [`NO_LABEL`]) transparent.
pub fn mask_palette(colors: &[[u8; 3]], hidden: &[bool]) -> Palette {
    let mut p = Palette::transparent();
    for (k, c) in colors.iter().enumerate().take(255) {
        p.rgb[k] = *c;
        p.alpha[k] = if hidden.get(k).copied().unwrap_or(false) {
            0
        } else {
            255
        };
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first tile of `level`.
    fn tile0(level: usize) -> TileAddr {
        TileAddr {
            level,
            col: 0,
            row: 0,
        }
    }

    fn write_npz(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
        use std::io::Write;
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        for (name, bytes) in members {
            z.start_file(
                *name,
                zip::write::SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn npy_f16(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> Vec<u8> {
        let mut out = pbip_post::npz::npy_header("<f2", &[h, w]);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&pbip_post::npz::f16_bytes(f(x, y)));
            }
        }
        out
    }

    #[test]
    fn npz_rows_are_read_at_their_offsets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.npz");
        let a = npy_f16(5, 7, |x, y| (x + 10 * y) as f32 / 100.0);
        let b = npy_f16(5, 7, |x, _| if x < 3 { 0.25 } else { 0.75 });
        write_npz(&p, &[("class_0.npy", a), ("class_1.npy", b)], false);
        let m = ConfidenceMaps::open(&p).unwrap();
        assert_eq!(m.class_count(), 2);
        assert_eq!(m.dimensions(), (7, 5));
        let v = m
            .sample(0, &[Some(1), Some(6), None], &[Some(0), Some(4), Some(9)])
            .unwrap();
        // Row 9 is outside the map: NaN like the missing column.
        let nan = f32::NAN;
        let want = [0.01f32, 0.06, nan, 0.41, 0.46, nan, nan, nan, nan];
        assert_eq!(v.len(), want.len());
        for (g, w) in v.iter().zip(want) {
            if w.is_nan() {
                assert!(g.is_nan(), "{v:?}");
            } else {
                assert!((g - w).abs() < 1e-3, "{v:?}");
            }
        }
        let v = m.sample(1, &[Some(2), Some(3)], &[Some(2)]).unwrap();
        assert_eq!(v, vec![0.25, 0.75]);
        assert!(m.sample(2, &[Some(0)], &[Some(0)]).is_err());
    }

    #[test]
    fn bad_npz_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.npz");
        write_npz(&p, &[("class_0.npy", npy_f16(2, 2, |_, _| 0.5))], true);
        let e = ConfidenceMaps::open(&p).unwrap_err().to_string();
        assert!(e.contains("compressed") && e.contains("c.npz"), "{e}");
        write_npz(&p, &[("other.npy", npy_f16(2, 2, |_, _| 0.5))], false);
        let e = ConfidenceMaps::open(&p).unwrap_err().to_string();
        assert!(e.contains("class_0"), "{e}");
        std::fs::write(&p, b"not a zip").unwrap();
        assert!(ConfidenceMaps::open(&p).is_err());
        write_npz(
            &p,
            &[
                ("class_0.npy", npy_f16(2, 2, |_, _| 0.5)),
                ("class_1.npy", npy_f16(3, 2, |_, _| 0.5)),
            ],
            false,
        );
        let e = ConfidenceMaps::open(&p).unwrap_err().to_string();
        assert!(e.contains("class_1"), "{e}");
    }

    #[test]
    fn heat_and_uncertainty_tiles_quantise_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.npz");
        // 8 x 8 output grid, downsample 4 → a 32 x 32 slide; tumour confidence 1 on the left half.
        let a = npy_f16(8, 8, |x, _| if x < 4 { 0.0 } else { 0.5 });
        let b = npy_f16(8, 8, |x, _| if x < 4 { 1.0 } else { 0.5 });
        write_npz(&p, &[("class_0.npy", a), ("class_1.npy", b)], false);
        let m = ConfidenceMaps::open(&p).unwrap();
        let dz = DeepZoom::new(32, 32, 254, 1).unwrap();
        let top = dz.level_count() - 1;
        let t = m.class_tile(1, &dz, tile0(top), 4.0).unwrap();
        assert_eq!((t.width, t.height), (32, 32));
        assert_eq!(t.indices[0], 254);
        assert_eq!(t.indices[31], 127);
        let t0 = m.class_tile(0, &dz, tile0(top), 4.0).unwrap();
        assert_eq!(t0.indices[0], NO_LABEL, "0 = no value");
        let u = m.uncertainty_tile(&dz, tile0(top), 4.0).unwrap();
        assert_eq!(u.indices[0], 0, "certain");
        assert_eq!(u.indices[31], 254, "tie");
        // A coarser DeepZoom level samples every other cell.
        let t = m.class_tile(1, &dz, tile0(top - 1), 4.0).unwrap();
        assert_eq!((t.width, t.height), (16, 16));
        assert_eq!((t.indices[0], t.indices[15]), (254, 127));
    }

    #[test]
    fn mask_tiles_match_the_mask_at_every_level() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mask.tiff");
        // 300 x 200 output grid with class = (x / 50 + y / 50) % 3, a 255 band at y in 100..110.
        let (w, h) = (300u32, 200u32);
        let label = |x: u64, y: u64| -> u8 {
            if (100..110).contains(&y) {
                NO_LABEL
            } else {
                ((x / 50 + y / 50) % 3) as u8
            }
        };
        let mut data = vec![0u8; (w * h) as usize];
        for y in 0..h as u64 {
            for x in 0..w as u64 {
                data[(y * w as u64 + x) as usize] = label(x, y);
            }
        }
        let mut opts = pbip_pyramid::PyramidOptions::label_mask(None);
        opts.tile_size_px = 64;
        opts.min_level_size_px = 32;
        opts.edge_padding = pbip_pyramid::EdgePadding::Value(NO_LABEL);
        pbip_pyramid::write_pyramid_from_image(&path, w, h, &data, &opts).unwrap();
        let tiff = LabelMask::open_tiff(&path).unwrap();
        let png_path = d.path().join("m.png");
        pbip_post::export::write_label_png(
            &png_path,
            &data,
            w,
            h,
            &pbip_post::export::DEFAULT_PALETTE,
        )
        .unwrap();
        let mem = LabelMask::open_png(&png_path).unwrap();
        assert_eq!(tiff.dimensions(), (300, 200));
        assert_eq!(mem.dimensions(), (300, 200));
        // Slide 1200 x 800 (downsample 4).
        let dz = DeepZoom::new(1200, 800, 254, 1).unwrap();
        let top = dz.level_count() - 1;
        for level in [top, top - 1, top - 2, top - 4] {
            let dsz = dz.level_downsample(level);
            let (cols, rows) = dz.tile_grid(level).unwrap();
            for (col, row) in [(0, 0), (cols - 1, rows - 1), (cols / 2, rows / 2)] {
                let rect = dz.tile_rect(level, col, row).unwrap();
                let at = TileAddr { level, col, row };
                let a = tiff.tile(&dz, at, 4.0).unwrap();
                let b = mem.tile(&dz, at, 4.0).unwrap();
                assert_eq!((a.width, a.height), (rect.width_px, rect.height_px));
                let mut agree = 0usize;
                for ty in 0..rect.height_px as u64 {
                    for tx in 0..rect.width_px as u64 {
                        let i = (ty * u64::from(rect.width_px) + tx) as usize;
                        // Centre of the tile pixel on the output grid.
                        let gx = (((rect.x_px + tx) as f64 + 0.5) * dsz / 4.0) as u64;
                        let gy = (((rect.y_px + ty) as f64 + 0.5) * dsz / 4.0) as u64;
                        assert_eq!(
                            b.indices[i],
                            label(gx, gy),
                            "png level {level} tile {col}_{row} px {tx},{ty}"
                        );
                        agree += usize::from(a.indices[i] == label(gx, gy));
                    }
                }
                let n = a.indices.len();
                // Coarser mask levels keep the top-left sample of each block: at most the pixels
                // next to a class edge differ.
                if dsz <= 4.0 {
                    assert_eq!(agree, n, "tiff level {level} tile {col}_{row}");
                } else {
                    assert!(
                        agree * 10 >= n * 8,
                        "tiff level {level} tile {col}_{row}: {agree}/{n}"
                    );
                }
            }
        }
    }

    #[test]
    fn palettes() {
        let p = mask_palette(&[[1, 2, 3], [4, 5, 6]], &[false, true]);
        assert_eq!(
            (p.rgb[0], p.alpha[0], p.alpha[1], p.alpha[255]),
            ([1, 2, 3], 255, 0, 0)
        );
        let h = heat_palette();
        assert_eq!(h.rgb[0], VIRIDIS[0]);
        assert_eq!(h.rgb[254], VIRIDIS[8]);
        assert_eq!(h.alpha[255], 0);
        assert_eq!(heat_color(1.0), [253, 231, 37]);
    }
}

//! Streaming writer of tiled pyramidal TIFFs.
//!
//! Two layouts are supported out of the box:
//!
//! * **RGB8 slides** ([`PyramidOptions::rgb_jpeg`]): JPEG-compressed tiles (one complete JPEG
//!   stream per tile, no `JPEGTables`, `Photometric = YCbCr`, `YCbCrSubSampling = [2, 2]`, the
//!   layout tifffile writes), 256 px tiles, levels /2 computed by 2x2 averaging, sequential IFDs,
//!   `NewSubfileType = 1` for reduced levels, `X/YResolution` in px/cm from the mpp, and an
//!   optional Aperio-style `ImageDescription` ([`aperio_description`]) so readers pick up the mpp.
//! * **u8 label / probability masks** ([`PyramidOptions::label_mask`]): BigTIFF, `minisblack`,
//!   Adobe-deflate 512 px tiles, levels /2 by *nearest* sampling (the top-left sample of each 2x2
//!   block is kept, so label values are never mixed), resolution tags and `NewSubfileType = 1`
//!   for reduced levels: the hs2p / ASAP mask layout.
//!
//! # Streaming
//!
//! [`write_pyramid`] pulls level-0 pixels from a caller-supplied source, one *band* (the full
//! image width times `tile_size_px` rows, fewer for the last band) at a time. Each band is cut
//! into tiles and encoded (in parallel with rayon), then downsampled into the band of the next
//! level, and so on. Tile data of all levels is interleaved in the file; the IFDs (level 0
//! first, then each reduced level) are written at the end. Memory use is therefore about one band
//! per level — a slide much larger than RAM can be written. [`write_pyramid_from_image`] is a
//! convenience wrapper for an image already in memory.
//!
//! Odd level sizes round up: a level of width `w` gives a next level of width `ceil(w / 2)`;
//! in 2x2 averaging a missing right column / bottom row is replaced by the last one (edge
//! clamp). Tiles extending past the image edge are padded with [`PyramidOptions::pad_value`].
//!
//! Output is deterministic: the same pixels and options give byte-identical files.
//!
//! ```no_run
//! use pbip_pyramid::{PyramidOptions, write_pyramid, Region};
//! let opts = PyramidOptions::rgb_jpeg(Some(0.5));
//! let summary = write_pyramid(
//!     std::path::Path::new("slide.tif"),
//!     2048,
//!     1536,
//!     &opts,
//!     |region: &Region, buf: &mut [u8]| {
//!         // fill `region.width_px * region.height_px * 3` RGB bytes, row-major
//!         buf.fill(240);
//!         Ok(())
//!     },
//! )?;
//! assert!(summary.levels.len() >= 2);
//! # Ok::<(), pbip_pyramid::PyramidError>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tiff::encoder::{DirectoryEncoder, Rational, TiffEncoder, TiffKind};
use tiff::tags::Tag;

/// Error from a tile source callback.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the pyramid writer. Every variant names the output file.
#[derive(Debug, thiserror::Error)]
pub enum PyramidError {
    /// The options (or image size) cannot produce a valid file.
    #[error("invalid pyramid options for {path}: {reason}")]
    InvalidOptions {
        /// Output file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Creating or writing the output file failed.
    #[error("I/O error writing {path}: {source}")]
    Io {
        /// Output file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The `tiff` encoder failed.
    #[error("TIFF encoding error writing {path}: {source}")]
    Tiff {
        /// Output file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: tiff::TiffError,
    },
    /// Compressing a tile failed.
    #[error("compressing tile ({tile_x}, {tile_y}) of level {level} of {path}: {message}")]
    Compress {
        /// Output file.
        path: PathBuf,
        /// Pyramid level (0 = full resolution, counting every /2 step).
        level: usize,
        /// Tile column.
        tile_x: u32,
        /// Tile row.
        tile_y: u32,
        /// Encoder message.
        message: String,
    },
    /// The tile source callback returned an error.
    #[error(
        "tile source failed for {path} at level-0 region x={x_px} y={y_px} {width_px}x{height_px}: {source}"
    )]
    Source {
        /// Output file.
        path: PathBuf,
        /// Region left edge (level-0 px).
        x_px: u32,
        /// Region top edge (level-0 px).
        y_px: u32,
        /// Region width (px).
        width_px: u32,
        /// Region height (px).
        height_px: u32,
        /// Error returned by the source.
        #[source]
        source: SourceError,
    },
    /// An in-memory image does not have `width * height * channels` bytes.
    #[error(
        "image buffer for {path} has {actual} bytes, expected {expected} ({width_px}x{height_px}x{channels})"
    )]
    BufferSize {
        /// Output file.
        path: PathBuf,
        /// Expected byte count.
        expected: usize,
        /// Actual byte count.
        actual: usize,
        /// Image width.
        width_px: u32,
        /// Image height.
        height_px: u32,
        /// Samples per pixel.
        channels: usize,
    },
}

/// Pixel layout of the written image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 3 samples per pixel, 8 bit, RGB order in memory.
    Rgb8,
    /// 1 sample per pixel, 8 bit, `minisblack` (labels, probabilities quantised to u8).
    Gray8,
}

impl PixelFormat {
    /// Samples per pixel.
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Gray8 => 1,
        }
    }
}

/// Tile compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileCompression {
    /// Baseline JPEG (TIFF compression 7), one full JPEG stream per tile, 4:2:0 chroma
    /// subsampling, `Photometric = YCbCr`. Only for [`PixelFormat::Rgb8`].
    Jpeg {
        /// JPEG quality, 1..=100.
        quality: u8,
    },
    /// zlib / Adobe deflate (TIFF compression 8), lossless, no predictor.
    Deflate {
        /// zlib level, 0..=9.
        level: u32,
    },
}

/// How a reduced level is computed from the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downsampling {
    /// Rounded mean of each 2x2 block (edge clamped). For images.
    Mean2x2,
    /// Top-left sample of each 2x2 block. For label masks: no value mixing, no mode computation.
    Nearest,
}

/// Options of [`write_pyramid`].
#[derive(Debug, Clone, PartialEq)]
pub struct PyramidOptions {
    /// Pixel layout.
    pub pixel_format: PixelFormat,
    /// Tile compression.
    pub compression: TileCompression,
    /// Reduction method between levels.
    pub downsampling: Downsampling,
    /// Square tile side in px; multiple of 16, 16..=4096.
    pub tile_size_px: u32,
    /// Without `downsamples`: reduced levels are added while the larger side of the next level
    /// is still >= this value (level 0 is always written).
    pub min_level_size_px: u32,
    /// Explicit downsamples to write instead of the automatic /2 chain: strictly increasing
    /// powers of two starting with 1, e.g. `[1, 4, 16]`. Intermediate levels are computed but
    /// not written.
    pub downsamples: Option<Vec<u32>>,
    /// Level-0 microns per pixel; when set, X/YResolution are written in px/cm
    /// (`1e4 / (mpp * downsample)`) with ResolutionUnit = centimetre.
    pub mpp: Option<f64>,
    /// `ImageDescription` of the level-0 IFD (e.g. from [`aperio_description`]).
    pub description: Option<String>,
    /// Write a BigTIFF (64-bit offsets). Classic TIFF fails with an error past 4 GiB.
    pub big_tiff: bool,
    /// How the part of edge tiles that lies outside the image is filled.
    pub edge_padding: EdgePadding,
}

/// Filling of the out-of-image part of right/bottom edge tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgePadding {
    /// Repeat the last image column / row (avoids JPEG colour bleeding at the image border).
    Replicate,
    /// A constant sample value.
    Value(u8),
}

impl PyramidOptions {
    /// RGB slide defaults: JPEG quality 85, 256 px tiles, 2x2 mean, levels down to 256 px,
    /// classic TIFF, edge-replicated padding.
    pub fn rgb_jpeg(mpp: Option<f64>) -> Self {
        Self {
            pixel_format: PixelFormat::Rgb8,
            compression: TileCompression::Jpeg { quality: 85 },
            downsampling: Downsampling::Mean2x2,
            tile_size_px: 256,
            min_level_size_px: 256,
            downsamples: None,
            mpp,
            description: None,
            big_tiff: false,
            edge_padding: EdgePadding::Replicate,
        }
    }

    /// u8 mask defaults (hs2p / ASAP layout): BigTIFF, deflate level 6, 512 px tiles, nearest
    /// /2 levels down to 512 px, padding with 0.
    pub fn label_mask(mpp: Option<f64>) -> Self {
        Self {
            pixel_format: PixelFormat::Gray8,
            compression: TileCompression::Deflate { level: 6 },
            downsampling: Downsampling::Nearest,
            tile_size_px: 512,
            min_level_size_px: 512,
            downsamples: None,
            mpp,
            description: None,
            big_tiff: true,
            edge_padding: EdgePadding::Value(0),
        }
    }
}

/// A rectangle of level-0 pixels requested from a tile source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left edge, level-0 px.
    pub x_px: u32,
    /// Top edge, level-0 px.
    pub y_px: u32,
    /// Width, px.
    pub width_px: u32,
    /// Height, px.
    pub height_px: u32,
}

/// One written level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelInfo {
    /// Index of the IFD in the file (0 = level 0).
    pub ifd_index: usize,
    /// Width in px.
    pub width_px: u32,
    /// Height in px.
    pub height_px: u32,
    /// Power-of-two downsample relative to level 0.
    pub downsample: u32,
    /// Tiles across.
    pub tiles_x: u32,
    /// Tiles down.
    pub tiles_y: u32,
}

/// What [`write_pyramid`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyramidSummary {
    /// Output file.
    pub path: PathBuf,
    /// Written levels, in IFD order.
    pub levels: Vec<LevelInfo>,
    /// Size of the file in bytes.
    pub file_size_bytes: u64,
}

/// Aperio-style `ImageDescription` so OpenSlide 3.x (which ignores TIFF resolution tags for
/// generic TIFFs) and pbip-slide pick up mpp and magnification.
///
/// Caveat: tifffile / tiffslide then parse the file as SVS, whose layout has a stripped
/// thumbnail at IFD 1 and reduced levels with NewSubfileType 0; with this writer's layout they
/// see IFD 1 as a "thumbnail" and stop at the next reduced level. OpenSlide 4 and tifffile read
/// the mpp from X/YResolution anyway, so prefer no description unless OpenSlide 3 matters.
///
/// Format: `"Aperio Image Library pbip-pyramid\r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t}) JPEG/RGB Q={q}|AppMag = {mag}|MPP = {mpp}"`.
pub fn aperio_description(
    width_px: u32,
    height_px: u32,
    tile_size_px: u32,
    jpeg_quality: u8,
    app_mag: f64,
    mpp: f64,
) -> String {
    format!(
        "Aperio Image Library pbip-pyramid\r\n{width_px}x{height_px} [0,0 {width_px}x{height_px}] \
         ({tile_size_px}x{tile_size_px}) JPEG/RGB Q={jpeg_quality}|AppMag = {app_mag}|MPP = {mpp}"
    )
}

/// Computes the level geometry [`write_pyramid`] would write for an image of this size.
pub fn plan_levels(
    width_px: u32,
    height_px: u32,
    opts: &PyramidOptions,
) -> Result<Vec<LevelInfo>, PyramidError> {
    let chain = plan_chain(Path::new("<plan>"), width_px, height_px, opts)?;
    Ok(written_levels(&chain, opts.tile_size_px))
}

/// Writes a pyramidal tiled TIFF to `path`, pulling level-0 pixels from `source`.
///
/// `source(region, buf)` must fill `buf` (exactly `region.width_px * region.height_px *
/// channels` bytes, row-major, interleaved samples) with the level-0 pixels of `region`. It is
/// called once per band, top to bottom; every band spans the full image width and
/// `opts.tile_size_px` rows (fewer for the last band).
///
/// On error the partially written file is removed (best effort).
pub fn write_pyramid<F>(
    path: &Path,
    width_px: u32,
    height_px: u32,
    opts: &PyramidOptions,
    source: F,
) -> Result<PyramidSummary, PyramidError>
where
    F: FnMut(&Region, &mut [u8]) -> Result<(), SourceError>,
{
    let result = write_pyramid_inner(path, width_px, height_px, opts, source);
    if result.is_err() {
        // Best effort: do not leave a truncated file behind.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Writes an in-memory image (`width_px * height_px * channels` bytes, row-major) as a
/// pyramidal tiled TIFF. See [`write_pyramid`].
pub fn write_pyramid_from_image(
    path: &Path,
    width_px: u32,
    height_px: u32,
    data: &[u8],
    opts: &PyramidOptions,
) -> Result<PyramidSummary, PyramidError> {
    let ch = opts.pixel_format.channels();
    let expected = width_px as usize * height_px as usize * ch;
    if data.len() != expected {
        return Err(PyramidError::BufferSize {
            path: path.to_path_buf(),
            expected,
            actual: data.len(),
            width_px,
            height_px,
            channels: ch,
        });
    }
    write_pyramid(
        path,
        width_px,
        height_px,
        opts,
        |r: &Region, buf: &mut [u8]| {
            let row = width_px as usize * ch;
            let start = r.y_px as usize * row;
            let end = start + r.height_px as usize * row;
            // Bands always span the full width, so a band is one contiguous slice.
            let src = data
                .get(start..end)
                .ok_or("band outside the image buffer")?;
            if r.x_px != 0 || r.width_px != width_px || buf.len() != src.len() {
                return Err("unexpected band geometry".into());
            }
            buf.copy_from_slice(src);
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct ChainLevel {
    width: u32,
    height: u32,
    downsample: u32,
    write: bool,
}

fn invalid(path: &Path, reason: impl Into<String>) -> PyramidError {
    PyramidError::InvalidOptions {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn plan_chain(
    path: &Path,
    width: u32,
    height: u32,
    opts: &PyramidOptions,
) -> Result<Vec<ChainLevel>, PyramidError> {
    if width == 0 || height == 0 {
        return Err(invalid(
            path,
            format!("image size {width}x{height} is empty"),
        ));
    }
    let t = opts.tile_size_px;
    if !(16..=4096).contains(&t) || !t.is_multiple_of(16) {
        return Err(invalid(
            path,
            format!("tile_size_px {t} must be a multiple of 16 in 16..=4096"),
        ));
    }
    match opts.compression {
        TileCompression::Jpeg { quality } => {
            if opts.pixel_format != PixelFormat::Rgb8 {
                return Err(invalid(path, "JPEG tiles are only supported for Rgb8"));
            }
            if !(1..=100).contains(&quality) {
                return Err(invalid(
                    path,
                    format!("JPEG quality {quality} not in 1..=100"),
                ));
            }
        }
        TileCompression::Deflate { level } => {
            if level > 9 {
                return Err(invalid(path, format!("deflate level {level} not in 0..=9")));
            }
        }
    }
    if let Some(mpp) = opts.mpp
        && !(mpp.is_finite() && mpp > 0.0)
    {
        return Err(invalid(path, format!("mpp {mpp} must be finite and > 0")));
    }
    if let Some(d) = &opts.description
        && d.contains('\0')
    {
        return Err(invalid(path, "description contains a NUL character"));
    }
    let mut chain = vec![ChainLevel {
        width,
        height,
        downsample: 1,
        write: true,
    }];
    match &opts.downsamples {
        Some(list) => {
            if list.first() != Some(&1) {
                return Err(invalid(
                    path,
                    format!("downsamples {list:?} must start with 1"),
                ));
            }
            for w in list.windows(2) {
                if w[1] <= w[0] {
                    return Err(invalid(
                        path,
                        format!("downsamples {list:?} must be strictly increasing"),
                    ));
                }
            }
            for &d in list {
                if !d.is_power_of_two() {
                    return Err(invalid(
                        path,
                        format!("downsample {d} in {list:?} is not a power of two"),
                    ));
                }
            }
            let max = list.last().copied().unwrap_or(1);
            while chain.last().map(|l| l.downsample).unwrap_or(1) < max {
                let prev = chain[chain.len() - 1];
                if prev.width == 1 && prev.height == 1 {
                    return Err(invalid(
                        path,
                        format!("downsample {max} exceeds the image size {width}x{height}"),
                    ));
                }
                let ds = prev.downsample * 2;
                chain.push(ChainLevel {
                    width: prev.width.div_ceil(2),
                    height: prev.height.div_ceil(2),
                    downsample: ds,
                    write: list.contains(&ds),
                });
            }
        }
        None => loop {
            let prev = chain[chain.len() - 1];
            let (w2, h2) = (prev.width.div_ceil(2), prev.height.div_ceil(2));
            if (prev.width == 1 && prev.height == 1) || w2.max(h2) < opts.min_level_size_px.max(1) {
                break;
            }
            chain.push(ChainLevel {
                width: w2,
                height: h2,
                downsample: prev.downsample * 2,
                write: true,
            });
        },
    }
    Ok(chain)
}

fn written_levels(chain: &[ChainLevel], tile: u32) -> Vec<LevelInfo> {
    chain
        .iter()
        .filter(|l| l.write)
        .enumerate()
        .map(|(i, l)| LevelInfo {
            ifd_index: i,
            width_px: l.width,
            height_px: l.height,
            downsample: l.downsample,
            tiles_x: l.width.div_ceil(tile),
            tiles_y: l.height.div_ceil(tile),
        })
        .collect()
}

struct LevelState {
    geom: ChainLevel,
    band: Vec<u8>,
    band_rows: u32,
    band_start_row: u32,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

struct Engine<'a> {
    path: &'a Path,
    opts: &'a PyramidOptions,
    channels: usize,
    levels: Vec<LevelState>,
}

impl Engine<'_> {
    fn tiff_err(&self, source: tiff::TiffError) -> PyramidError {
        PyramidError::Tiff {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn push_rows<W: Write + Seek, K: TiffKind>(
        &mut self,
        dir: &mut DirectoryEncoder<'_, W, K>,
        level: usize,
        data: &[u8],
        rows: u32,
    ) -> Result<(), PyramidError> {
        let tile = self.opts.tile_size_px;
        let ch = self.channels;
        let n_levels = self.levels.len();
        let path = self.path;
        let st = self
            .levels
            .get_mut(level)
            .ok_or_else(|| invalid(path, format!("internal: level {level} out of range")))?;
        let row_bytes = st.geom.width as usize * ch;
        if data.len() != rows as usize * row_bytes {
            return Err(invalid(path, "internal: band row size mismatch"));
        }
        let target = tile.min(st.geom.height - st.band_start_row);
        if st.band_rows + rows > target {
            return Err(invalid(path, "internal: band overflow"));
        }
        st.band.extend_from_slice(data);
        st.band_rows += rows;
        if st.band_rows < target {
            return Ok(());
        }
        // Band complete: encode its tiles, then feed the next level.
        if st.geom.write {
            let tiles = encode_band(path, self.opts, ch, level, st)?;
            for t in tiles {
                let off = dir
                    .write_data(t.as_slice())
                    .map_err(|source| PyramidError::Tiff {
                        path: path.to_path_buf(),
                        source,
                    })?;
                st.offsets.push(off);
                st.counts.push(t.len() as u64);
            }
        }
        let next = if level + 1 < n_levels {
            Some(downsample_band(
                &st.band,
                st.geom.width,
                st.band_rows,
                ch,
                self.opts.downsampling,
            ))
        } else {
            None
        };
        st.band_start_row += st.band_rows;
        st.band_rows = 0;
        st.band.clear();
        if let Some((down, down_rows)) = next {
            self.push_rows(dir, level + 1, &down, down_rows)?;
        }
        Ok(())
    }
}

fn encode_band(
    path: &Path,
    opts: &PyramidOptions,
    ch: usize,
    level: usize,
    st: &LevelState,
) -> Result<Vec<Vec<u8>>, PyramidError> {
    let tile = opts.tile_size_px as usize;
    let width = st.geom.width as usize;
    let rows = st.band_rows as usize;
    let tiles_x = st.geom.width.div_ceil(opts.tile_size_px);
    let tile_y = st.band_start_row / opts.tile_size_px;
    (0..tiles_x)
        .into_par_iter()
        .map(|tx| {
            let x0 = tx as usize * tile;
            let w = tile.min(width - x0);
            let fill = match opts.edge_padding {
                EdgePadding::Value(v) => v,
                EdgePadding::Replicate => 0,
            };
            let mut buf = vec![fill; tile * tile * ch];
            for r in 0..rows {
                let src = &st.band[(r * width + x0) * ch..(r * width + x0 + w) * ch];
                let dst = &mut buf[r * tile * ch..(r + 1) * tile * ch];
                dst[..w * ch].copy_from_slice(src);
                if opts.edge_padding == EdgePadding::Replicate && w < tile {
                    let last = (w - 1) * ch;
                    for x in w..tile {
                        dst.copy_within(last..last + ch, x * ch);
                    }
                }
            }
            if opts.edge_padding == EdgePadding::Replicate && rows < tile && rows > 0 {
                let row = tile * ch;
                let last = (rows - 1) * row;
                for r in rows..tile {
                    buf.copy_within(last..last + row, r * row);
                }
            }
            compress_tile(&buf, opts, ch).map_err(|message| PyramidError::Compress {
                path: path.to_path_buf(),
                level,
                tile_x: tx,
                tile_y,
                message,
            })
        })
        .collect()
}

fn compress_tile(buf: &[u8], opts: &PyramidOptions, ch: usize) -> Result<Vec<u8>, String> {
    let tile = opts.tile_size_px;
    match opts.compression {
        TileCompression::Jpeg { quality } => {
            if ch != 3 {
                return Err("JPEG needs 3 channels".into());
            }
            let side = u16::try_from(tile).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            enc.encode(buf, side, side, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
        TileCompression::Deflate { level } => {
            let mut enc = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(buf.len() / 4),
                flate2::Compression::new(level),
            );
            enc.write_all(buf).map_err(|e| e.to_string())?;
            enc.finish().map_err(|e| e.to_string())
        }
    }
}

/// Halves a band (`width` x `rows`, `ch` samples) in both directions; returns the new band and
/// its row count (`ceil(rows / 2)`, width `ceil(width / 2)`).
fn downsample_band(
    band: &[u8],
    width: u32,
    rows: u32,
    ch: usize,
    mode: Downsampling,
) -> (Vec<u8>, u32) {
    let (w, r) = (width as usize, rows as usize);
    let (w2, r2) = (w.div_ceil(2), r.div_ceil(2));
    let mut out = vec![0u8; w2 * r2 * ch];
    out.par_chunks_mut(w2 * ch)
        .enumerate()
        .for_each(|(y, orow)| {
            let y0 = 2 * y;
            let y1 = (2 * y + 1).min(r - 1);
            for x in 0..w2 {
                let x0 = 2 * x;
                let x1 = (2 * x + 1).min(w - 1);
                for c in 0..ch {
                    let v = match mode {
                        Downsampling::Nearest => band[(y0 * w + x0) * ch + c],
                        Downsampling::Mean2x2 => {
                            let s = band[(y0 * w + x0) * ch + c] as u32
                                + band[(y0 * w + x1) * ch + c] as u32
                                + band[(y1 * w + x0) * ch + c] as u32
                                + band[(y1 * w + x1) * ch + c] as u32;
                            ((s + 2) / 4) as u8
                        }
                    };
                    orow[x * ch + c] = v;
                }
            }
        });
    (out, r2 as u32)
}

fn px_per_cm(mpp: f64, downsample: u32) -> Rational {
    let v = 1e4 / (mpp * downsample as f64);
    let mut d: u32 = 1000;
    while d > 1 && v * d as f64 > u32::MAX as f64 {
        d /= 10;
    }
    let n = (v * d as f64).round().clamp(1.0, u32::MAX as f64) as u32;
    Rational { n, d }
}

fn write_pyramid_inner<F>(
    path: &Path,
    width: u32,
    height: u32,
    opts: &PyramidOptions,
    source: F,
) -> Result<PyramidSummary, PyramidError>
where
    F: FnMut(&Region, &mut [u8]) -> Result<(), SourceError>,
{
    let chain = plan_chain(path, width, height, opts)?;
    let file = File::create(path).map_err(|source| PyramidError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let writer = BufWriter::with_capacity(1 << 20, file);
    let tiff_err = |source| PyramidError::Tiff {
        path: path.to_path_buf(),
        source,
    };
    if opts.big_tiff {
        let enc = TiffEncoder::new_big(writer).map_err(tiff_err)?;
        write_all(path, enc, &chain, opts, source)?;
    } else {
        let enc = TiffEncoder::new(writer).map_err(tiff_err)?;
        write_all(path, enc, &chain, opts, source)?;
    }
    let file_size_bytes = std::fs::metadata(path)
        .map_err(|source| PyramidError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let levels = written_levels(&chain, opts.tile_size_px);
    tracing::debug!(path = %path.display(), levels = levels.len(), file_size_bytes, "wrote pyramid");
    Ok(PyramidSummary {
        path: path.to_path_buf(),
        levels,
        file_size_bytes,
    })
}

fn write_all<W: Write + Seek, K: TiffKind, F>(
    path: &Path,
    mut enc: TiffEncoder<W, K>,
    chain: &[ChainLevel],
    opts: &PyramidOptions,
    mut source: F,
) -> Result<(), PyramidError>
where
    F: FnMut(&Region, &mut [u8]) -> Result<(), SourceError>,
{
    let ch = opts.pixel_format.channels();
    let tile = opts.tile_size_px;
    let mut engine = Engine {
        path,
        opts,
        channels: ch,
        levels: chain
            .iter()
            .map(|g| LevelState {
                geom: *g,
                band: Vec::with_capacity(g.width as usize * tile as usize * ch),
                band_rows: 0,
                band_start_row: 0,
                offsets: Vec::new(),
                counts: Vec::new(),
            })
            .collect(),
    };
    let (width, height) = (chain[0].width, chain[0].height);

    // The level-0 directory encoder carries the tile data of every level.
    let mut dir0 = enc.image_directory().map_err(|e| engine.tiff_err(e))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut y = 0u32;
    while y < height {
        let rows = tile.min(height - y);
        let region = Region {
            x_px: 0,
            y_px: y,
            width_px: width,
            height_px: rows,
        };
        buf.clear();
        buf.resize(width as usize * rows as usize * ch, 0);
        source(&region, &mut buf).map_err(|source| PyramidError::Source {
            path: path.to_path_buf(),
            x_px: region.x_px,
            y_px: region.y_px,
            width_px: region.width_px,
            height_px: region.height_px,
            source,
        })?;
        engine.push_rows(&mut dir0, 0, &buf, rows)?;
        y += rows;
    }
    for (i, st) in engine.levels.iter().enumerate() {
        if st.band_start_row != st.geom.height || st.band_rows != 0 {
            return Err(invalid(path, format!("internal: level {i} incomplete")));
        }
    }

    let mut written = engine.levels.iter().filter(|s| s.geom.write);
    let st0 = written
        .next()
        .ok_or_else(|| invalid(path, "internal: no level to write"))?;
    write_tags(&mut dir0, st0, opts, true).map_err(|e| engine.tiff_err(e))?;
    dir0.finish().map_err(|e| engine.tiff_err(e))?;
    for st in written {
        let mut d = enc.image_directory().map_err(|e| engine.tiff_err(e))?;
        write_tags(&mut d, st, opts, false).map_err(|e| engine.tiff_err(e))?;
        d.finish().map_err(|e| engine.tiff_err(e))?;
    }
    Ok(())
}

fn write_tags<W: Write + Seek, K: TiffKind>(
    d: &mut DirectoryEncoder<'_, W, K>,
    st: &LevelState,
    opts: &PyramidOptions,
    first: bool,
) -> Result<(), tiff::TiffError> {
    let g = st.geom;
    d.write_tag(Tag::NewSubfileType, if first { 0u32 } else { 1u32 })?;
    d.write_tag(Tag::ImageWidth, g.width)?;
    d.write_tag(Tag::ImageLength, g.height)?;
    match opts.pixel_format {
        PixelFormat::Rgb8 => d.write_tag(Tag::BitsPerSample, &[8u16, 8, 8][..])?,
        PixelFormat::Gray8 => d.write_tag(Tag::BitsPerSample, 8u16)?,
    }
    let (compression, photometric): (u16, u16) = match (opts.compression, opts.pixel_format) {
        (TileCompression::Jpeg { .. }, _) => (7, 6),
        (TileCompression::Deflate { .. }, PixelFormat::Rgb8) => (8, 2),
        (TileCompression::Deflate { .. }, PixelFormat::Gray8) => (8, 1),
    };
    d.write_tag(Tag::Compression, compression)?;
    d.write_tag(Tag::PhotometricInterpretation, photometric)?;
    if first && let Some(desc) = &opts.description {
        d.write_tag(Tag::ImageDescription, desc.as_str())?;
    }
    d.write_tag(Tag::SamplesPerPixel, opts.pixel_format.channels() as u16)?;
    if let Some(mpp) = opts.mpp {
        let r = px_per_cm(mpp, g.downsample);
        d.write_tag(Tag::XResolution, r.clone())?;
        d.write_tag(Tag::YResolution, r)?;
        d.write_tag(Tag::ResolutionUnit, 3u16)?;
    }
    d.write_tag(Tag::PlanarConfiguration, 1u16)?;
    d.write_tag(Tag::Software, "pbip-pyramid")?;
    d.write_tag(Tag::TileWidth, opts.tile_size_px)?;
    d.write_tag(Tag::TileLength, opts.tile_size_px)?;
    if opts.big_tiff {
        d.write_tag(Tag::TileOffsets, st.offsets.as_slice())?;
        d.write_tag(Tag::TileByteCounts, st.counts.as_slice())?;
    } else {
        let to32 = |v: &[u64]| -> Result<Vec<u32>, tiff::TiffError> {
            v.iter()
                .map(|&x| {
                    u32::try_from(x).map_err(|_| {
                        tiff::TiffError::IoError(std::io::Error::other(
                            "classic TIFF offset past 4 GiB; set big_tiff = true",
                        ))
                    })
                })
                .collect()
        };
        d.write_tag(Tag::TileOffsets, to32(&st.offsets)?.as_slice())?;
        d.write_tag(Tag::TileByteCounts, to32(&st.counts)?.as_slice())?;
    }
    d.write_tag(
        Tag::SampleFormat,
        if opts.pixel_format.channels() == 3 {
            &[1u16, 1, 1][..]
        } else {
            &[1u16][..]
        },
    )?;
    if let TileCompression::Jpeg { .. } = opts.compression {
        d.write_tag(Tag::ChromaSubsampling, &[2u16, 2][..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_downsample_rounds_and_clamps_edges() {
        // 3x3 single channel -> 2x2
        let band = [0u8, 2, 10, 4, 6, 20, 100, 101, 255];
        let (out, rows) = downsample_band(&band, 3, 3, 1, Downsampling::Mean2x2);
        assert_eq!(rows, 2);
        // (0+2+4+6+2)/4 = 3 ; right column clamps: (10+10+20+20+2)/4 = 15
        // bottom row clamps: (100+101+100+101+2)/4 = 101 ; corner: 255
        assert_eq!(out, vec![3, 15, 101, 255]);
    }

    #[test]
    fn nearest_downsample_takes_top_left() {
        let band = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let (out, rows) = downsample_band(&band, 3, 3, 1, Downsampling::Nearest);
        assert_eq!(rows, 2);
        assert_eq!(out, vec![1, 3, 7, 9]);
    }

    #[test]
    fn plan_auto_levels_stop_at_min_size() {
        let opts = PyramidOptions::rgb_jpeg(None);
        let lv = plan_levels(2048, 1000, &opts).unwrap();
        let dims: Vec<_> = lv
            .iter()
            .map(|l| (l.width_px, l.height_px, l.downsample))
            .collect();
        assert_eq!(
            dims,
            vec![
                (2048, 1000, 1),
                (1024, 500, 2),
                (512, 250, 4),
                (256, 125, 8)
            ]
        );
        assert_eq!(lv[0].tiles_x, 8);
        assert_eq!(lv[0].tiles_y, 4);
    }

    #[test]
    fn plan_explicit_downsamples() {
        let mut opts = PyramidOptions::rgb_jpeg(None);
        opts.downsamples = Some(vec![1, 4, 16]);
        let lv = plan_levels(1001, 999, &opts).unwrap();
        let dims: Vec<_> = lv
            .iter()
            .map(|l| (l.width_px, l.height_px, l.downsample))
            .collect();
        assert_eq!(dims, vec![(1001, 999, 1), (251, 250, 4), (63, 63, 16)]);
        opts.downsamples = Some(vec![1, 3]);
        assert!(plan_levels(100, 100, &opts).is_err());
        opts.downsamples = Some(vec![2, 4]);
        assert!(plan_levels(100, 100, &opts).is_err());
        opts.downsamples = Some(vec![1, 256]);
        assert!(plan_levels(100, 100, &opts).is_err());
    }

    #[test]
    fn invalid_options_are_errors() {
        let mut opts = PyramidOptions::rgb_jpeg(None);
        opts.tile_size_px = 100;
        assert!(plan_levels(100, 100, &opts).is_err());
        let mut opts = PyramidOptions::label_mask(None);
        opts.compression = TileCompression::Jpeg { quality: 80 };
        assert!(plan_levels(100, 100, &opts).is_err());
        let opts = PyramidOptions::rgb_jpeg(Some(-1.0));
        assert!(plan_levels(100, 100, &opts).is_err());
        let opts = PyramidOptions::rgb_jpeg(None);
        assert!(plan_levels(0, 100, &opts).is_err());
    }

    #[test]
    fn resolution_in_px_per_cm() {
        let r = px_per_cm(0.5, 1);
        assert_eq!(r.n as f64 / r.d as f64, 20000.0);
        let r = px_per_cm(0.25, 4);
        assert_eq!(r.n as f64 / r.d as f64, 10000.0);
    }
}

//! Whole-slide image access for pbip.
//!
//! One [`Slide`] type over three readers:
//! - **rust** (pure Rust): tiled/stripped TIFF and BigTIFF, sequential-IFD and SubIFD pyramids,
//!   Aperio SVS (JPEG YCbCr or RGB, JPEGTables), deflate/LZW/PackBits/uncompressed tiles, and PNG
//!   or JPEG files as single-level slides. Tile bytes are fetched with `pread` on one shared file
//!   handle and decoded tiles are kept in a shared, byte-budgeted, sharded LRU cache
//!   ([`OpenOptions::cache_bytes`]). Without a cache (`cache_bytes: 0`), and with one for a read
//!   that finds none of its tiles cached and needs at most the top half of a tile, baseline JPEG
//!   tiles are decoded only down to the last row the read needs. JPEG tiles
//!   are decoded in strict mode: truncated or corrupt data is an error, never a grey or black
//!   patch. JPEG 2000 tiles are an "unsupported compression, install OpenSlide" error.
//! - **openslide**: libopenslide loaded at run time (`libopenslide.so.1`, then `.so.0`); no
//!   build-time dependency.
//! - **auto**: pure Rust when it can read the file, else OpenSlide (vendor formats that OpenSlide
//!   names, e.g. NDPI, SCN, BIF or Philips TIFF, go to OpenSlide first). When neither backend
//!   can read the file, the error gives both reasons.
//!
//! Coordinates follow OpenSlide: `read_region(x_lv0, y_lv0, level, w, h)` takes the top-left
//! corner in level-0 pixels and a size in pixels of `level`. Level `l` starts at level pixel
//! `floor(x_lv0 / downsample(l))` in the pure-Rust backend. Pixels outside the slide are filled
//! with the background colour of [`OpenOptions::background_rgb`] (default white `[255, 255, 255]`);
//! OpenSlide's transparent pixels are composited over the same colour.
//!
//! `Slide` is `Send + Sync`: open it once and share it (`&Slide` or `Arc<Slide>`) between threads.

mod cache;
mod decode;
mod error;
mod image_backend;
mod openslide;
mod resize;
mod tiff_backend;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

pub use error::{Result, SlideError};
pub use openslide::{openslide_available, openslide_load_error, openslide_version};
pub use resize::resize_rgb;

use error::{arg_err, fmt_err, io_err};

/// Largest single decode / region allocation in bytes (guards against absurd dimensions).
pub const MAX_DECODE_BYTES: usize = 1 << 30;

/// Default decoded-tile cache budget in bytes (256 MiB).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// An RGB8 image in memory: row-major, 3 bytes per pixel (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let mut data = vec![0u8; width as usize * height as usize * 3];
        for p in data.chunks_exact_mut(3) {
            p.copy_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// The pixel at (x, y), or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }
}

/// A region to read: top-left corner in level-0 pixels, size in pixels of `level`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LevelRegion {
    pub x_lv0: i64,
    pub y_lv0: i64,
    pub level: usize,
    pub w: u32,
    pub h: u32,
}

/// Which reader to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Pure Rust when it can read the file, else OpenSlide (default).
    #[default]
    Auto,
    /// Pure-Rust reader only.
    Rust,
    /// libopenslide (loaded at run time) only.
    OpenSlide,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "rust" => Ok(Self::Rust),
            "openslide" => Ok(Self::OpenSlide),
            other => Err(format!(
                "unknown slide backend {other:?} (expected auto, rust or openslide)"
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Rust => "rust",
            Self::OpenSlide => "openslide",
        })
    }
}

/// Options of [`Slide::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Reader to use (default [`Backend::Auto`]: pure Rust first).
    pub backend: Backend,
    /// Byte budget of the decoded-tile cache of the pure-Rust backend, shared by all threads
    /// (default [`DEFAULT_CACHE_BYTES`]). Keep it for grid-ordered or overlapping reads (a tile
    /// is decoded once while cached); 0 disables it, which suits sparse random reads: JPEG
    /// tiles are then decoded only down to the last row each read needs (with a cache, only
    /// where a read has found none of its tiles cached and needs at most half a tile's rows).
    pub cache_bytes: usize,
    /// Colour of pixels outside the slide (default white).
    pub background_rgb: [u8; 3],
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            cache_bytes: DEFAULT_CACHE_BYTES,
            background_rgb: [255, 255, 255],
        }
    }
}

/// Where (x, y) of a patch lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Origin {
    /// (x, y) is the top-left corner in level-0 pixels (hs2p/slide2vec convention, default).
    #[default]
    TopLeft,
    /// (x, y) is the centre: the read starts at `x - floor(read_size_px * downsample / 2)`
    /// (same for y), i.e. shifted by half the level-0 footprint.
    Centre,
}

/// How a patch is read from a slide.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PatchGeometry {
    /// Pyramid level to read from.
    pub level: usize,
    /// Side of the square read at `level`, in level pixels.
    pub read_size_px: u32,
    /// Side of the returned patch (resized with [`resize_rgb`]'s filter).
    pub out_size_px: u32,
    /// Meaning of the (x, y) coordinate.
    pub origin: Origin,
}

impl PatchGeometry {
    /// Read `size_px` at level 0, no resize, top-left origin.
    pub fn level0(size_px: u32) -> Self {
        Self {
            level: 0,
            read_size_px: size_px,
            out_size_px: size_px,
            origin: Origin::TopLeft,
        }
    }
}

/// One pyramid level in [`SlideInfo`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelInfo {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
    /// Downsample from level 0 (mean of the x and y ratios, OpenSlide convention).
    pub downsample: f64,
    /// µm per pixel along x at this level (level-0 mpp times the x size ratio).
    pub mpp_x: Option<f64>,
    /// µm per pixel along y at this level.
    pub mpp_y: Option<f64>,
    /// Tile width (None: stripped or unknown).
    pub tile_width: Option<u32>,
    /// Tile height.
    pub tile_height: Option<u32>,
    /// Compression name ("jpeg", "deflate", ...), None when the backend does not say.
    pub compression: Option<String>,
}

/// An associated (non-pyramid) image in [`SlideInfo`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssociatedImageInfo {
    /// Name ("label", "macro", "thumbnail", ...).
    pub name: String,
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
}

/// Summary of a slide, for `pbip slide-info` (JSON via serde, text via `Display`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideInfo {
    /// The slide file.
    pub path: String,
    /// Level-0 width in pixels.
    pub width: u64,
    /// Level-0 height in pixels.
    pub height: u64,
    /// Number of pyramid levels.
    pub level_count: usize,
    /// Every level, largest first.
    pub levels: Vec<LevelInfo>,
    /// Level-0 µm per pixel along x, if known.
    pub mpp_x: Option<f64>,
    /// Level-0 µm per pixel along y, if known.
    pub mpp_y: Option<f64>,
    /// Vendor ("aperio", "generic-tiff", "png", "jpeg", or OpenSlide's vendor string).
    pub vendor: String,
    /// Backend that reads the slide ("rust" or "openslide").
    pub backend: String,
    /// Associated images.
    pub associated_images: Vec<AssociatedImageInfo>,
}

impl fmt::Display for SlideInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), |m| format!("{m:.4}"));
        writeln!(f, "file:       {}", self.path)?;
        writeln!(f, "vendor:     {}", self.vendor)?;
        writeln!(f, "backend:    {}", self.backend)?;
        writeln!(f, "dimensions: {} x {} px", self.width, self.height)?;
        writeln!(
            f,
            "mpp:        {} x {} µm/px",
            opt(self.mpp_x),
            opt(self.mpp_y)
        )?;
        writeln!(f, "levels:     {}", self.level_count)?;
        writeln!(
            f,
            "  {:>5} {:>10} {:>10} {:>11} {:>9} {:>11}  compression",
            "level", "width", "height", "downsample", "mpp_x", "tile"
        )?;
        for (i, l) in self.levels.iter().enumerate() {
            let tile = match (l.tile_width, l.tile_height) {
                (Some(w), Some(h)) => format!("{w}x{h}"),
                _ => "-".into(),
            };
            writeln!(
                f,
                "  {:>5} {:>10} {:>10} {:>11.4} {:>9} {:>11}  {}",
                i,
                l.width,
                l.height,
                l.downsample,
                opt(l.mpp_x),
                tile,
                l.compression.as_deref().unwrap_or("-")
            )?;
        }
        if self.associated_images.is_empty() {
            writeln!(f, "associated: none")?;
        } else {
            for a in &self.associated_images {
                writeln!(f, "associated: {} ({} x {} px)", a.name, a.width, a.height)?;
            }
        }
        Ok(())
    }
}

enum Inner {
    Tiff(tiff_backend::TiffSlide),
    Image {
        img: RgbImage,
        vendor: String,
        properties: BTreeMap<String, String>,
    },
    OpenSlide(openslide::OsSlide),
}

/// An open whole-slide image. `Send + Sync`; share one instance between threads.
pub struct Slide {
    path: PathBuf,
    inner: Inner,
    background: [u8; 3],
    level_dims: Vec<(u64, u64)>,
    downsamples: Vec<f64>,
}

impl fmt::Debug for Slide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slide")
            .field("path", &self.path)
            .field("backend", &self.backend_name())
            .field("vendor", &self.vendor())
            .field("level_dimensions", &self.level_dims)
            .field("level_downsamples", &self.downsamples)
            .field("background_rgb", &self.background)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Tiff,
    Png,
    Jpeg,
    Other,
}

fn sniff(path: &Path) -> Result<Kind> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut magic = [0u8; 8];
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(io_err(path, e)),
        }
    }
    if n == 0 {
        return Err(fmt_err(path, "empty file"));
    }
    let m = &magic[..n];
    Ok(
        if m.starts_with(b"II*\0")
            || m.starts_with(b"MM\0*")
            || m.starts_with(b"II+\0")
            || m.starts_with(b"MM\0+")
        {
            Kind::Tiff
        } else if m.starts_with(b"\x89PNG") {
            Kind::Png
        } else if m.starts_with(&[0xFF, 0xD8]) {
            Kind::Jpeg
        } else {
            Kind::Other
        },
    )
}

impl Slide {
    /// Open a slide.
    ///
    /// Errors name the file: missing/unreadable file, empty file, corrupt or truncated TIFF,
    /// unsupported compression (with a hint to use OpenSlide), absurd dimensions, or (for
    /// `Backend::Auto`) why both backends refused it.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Slide> {
        let path = path.as_ref();
        let kind = sniff(path)?;
        let rust = || -> Result<Inner> {
            match kind {
                Kind::Tiff => Ok(Inner::Tiff(tiff_backend::TiffSlide::open(path, opts.cache_bytes)?)),
                Kind::Png => Ok(Inner::Image {
                    img: image_backend::read_png(path)?,
                    vendor: "png".into(),
                    properties: BTreeMap::new(),
                }),
                Kind::Jpeg => Ok(Inner::Image {
                    img: image_backend::read_jpeg(path)?,
                    vendor: "jpeg".into(),
                    properties: BTreeMap::new(),
                }),
                Kind::Other => Err(SlideError::Unsupported {
                    path: path.to_path_buf(),
                    msg: "not a TIFF, PNG or JPEG file (vendor formats need --backend openslide/auto)".into(),
                }),
            }
        };
        // A vendor format that OpenSlide recognises by name (NDPI, SCN, BIF, Philips, ...) goes
        // to OpenSlide first under `auto`, even if it is TIFF-based: its geometry follows vendor
        // rules. Generic TIFF and Aperio are read in pure Rust.
        let vendor_first = opts.backend == Backend::Auto
            && openslide::detect_vendor(path).is_some_and(|v| v != "generic-tiff" && v != "aperio");
        let inner = match opts.backend {
            Backend::Rust => rust()?,
            Backend::OpenSlide => Inner::OpenSlide(openslide::OsSlide::open(path)?),
            Backend::Auto if vendor_first => match openslide::OsSlide::open(path) {
                Ok(os) => Inner::OpenSlide(os),
                Err(os_err) => match rust() {
                    Ok(i) => {
                        tracing::info!(
                            "{}: OpenSlide failed ({os_err}), reading it in pure Rust",
                            path.display()
                        );
                        i
                    }
                    Err(rust_err) => {
                        return Err(SlideError::NoBackend {
                            path: path.to_path_buf(),
                            rust: rust_err.to_string(),
                            openslide: os_err.to_string(),
                        });
                    }
                },
            },
            Backend::Auto => match rust() {
                Ok(i) => i,
                Err(SlideError::Io { path, source }) => {
                    return Err(SlideError::Io { path, source });
                }
                Err(rust_err) => match openslide::OsSlide::open(path) {
                    Ok(os) => {
                        tracing::info!("{}: using OpenSlide ({rust_err})", path.display());
                        Inner::OpenSlide(os)
                    }
                    Err(os_err) => {
                        return Err(SlideError::NoBackend {
                            path: path.to_path_buf(),
                            rust: rust_err.to_string(),
                            openslide: os_err.to_string(),
                        });
                    }
                },
            },
        };
        let (level_dims, downsamples) = match &inner {
            Inner::Tiff(t) => (t.level_dims.clone(), t.downsamples.clone()),
            Inner::Image { img, .. } => (
                vec![(u64::from(img.width), u64::from(img.height))],
                vec![1.0],
            ),
            Inner::OpenSlide(o) => (o.level_dims.clone(), o.downsamples.clone()),
        };
        let mut s = Slide {
            path: path.to_path_buf(),
            inner,
            background: opts.background_rgb,
            level_dims,
            downsamples,
        };
        if let Inner::Image {
            properties, vendor, ..
        } = &mut s.inner
        {
            properties.insert("openslide.vendor".into(), vendor.clone());
            properties.insert("openslide.level-count".into(), "1".into());
        }
        Ok(s)
    }

    /// The slide file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of pyramid levels (≥ 1).
    pub fn level_count(&self) -> usize {
        self.level_dims.len()
    }

    fn check_level(&self, level: usize) -> Result<()> {
        if level >= self.level_count() {
            return Err(arg_err(
                &self.path,
                format!(
                    "level {level} does not exist (the slide has {} levels, 0..{})",
                    self.level_count(),
                    self.level_count() - 1
                ),
            ));
        }
        Ok(())
    }

    /// (width, height) of `level` in pixels.
    pub fn level_dimensions(&self, level: usize) -> Result<(u64, u64)> {
        self.check_level(level)?;
        Ok(self.level_dims[level])
    }

    /// Level-0 (width, height).
    pub fn dimensions(&self) -> (u64, u64) {
        self.level_dims[0]
    }

    /// Downsample of `level` relative to level 0: mean of the x and y size ratios (OpenSlide).
    pub fn level_downsample(&self, level: usize) -> Result<f64> {
        self.check_level(level)?;
        Ok(self.downsamples[level])
    }

    /// All level downsamples.
    pub fn level_downsamples(&self) -> &[f64] {
        &self.downsamples
    }

    /// The level whose downsample is the largest one ≤ `downsample` (OpenSlide's rule; level 0 if none).
    pub fn best_level_for_downsample(&self, downsample: f64) -> usize {
        let mut best = 0;
        for (i, &d) in self.downsamples.iter().enumerate() {
            if d <= downsample + 1e-9 {
                best = i;
            }
        }
        best
    }

    /// Level-0 microns per pixel (x, y), when the file records it (vendor metadata, else the TIFF
    /// resolution tags with unit cm or inch).
    pub fn mpp(&self) -> Option<(f64, f64)> {
        match &self.inner {
            Inner::Tiff(t) => t.mpp,
            Inner::Image { .. } => None,
            Inner::OpenSlide(o) => {
                let x = o.properties.get("openslide.mpp-x")?.parse::<f64>().ok()?;
                let y = o.properties.get("openslide.mpp-y")?.parse::<f64>().ok()?;
                (x > 0.0 && y > 0.0).then_some((x, y))
            }
        }
    }

    /// Vendor string ("aperio", "generic-tiff", "png", "jpeg", or OpenSlide's).
    pub fn vendor(&self) -> &str {
        match &self.inner {
            Inner::Tiff(t) => &t.vendor,
            Inner::Image { vendor, .. } => vendor,
            Inner::OpenSlide(o) => &o.vendor,
        }
    }

    /// Slide properties (OpenSlide-style keys: `openslide.mpp-x`, `aperio.AppMag`, `tiff.*`, ...).
    pub fn properties(&self) -> &BTreeMap<String, String> {
        match &self.inner {
            Inner::Tiff(t) => &t.properties,
            Inner::Image { properties, .. } => properties,
            Inner::OpenSlide(o) => &o.properties,
        }
    }

    /// Names of the associated images ("label", "macro", "thumbnail", ...).
    pub fn associated_image_names(&self) -> Vec<String> {
        self.associated_images()
            .into_iter()
            .map(|a| a.name)
            .collect()
    }

    fn associated_images(&self) -> Vec<AssociatedImageInfo> {
        match &self.inner {
            Inner::Tiff(t) => t
                .associated
                .iter()
                .map(|(n, i)| AssociatedImageInfo {
                    name: n.clone(),
                    width: i.width,
                    height: i.height,
                })
                .collect(),
            Inner::Image { .. } => Vec::new(),
            Inner::OpenSlide(o) => o
                .associated
                .iter()
                .map(|(n, (w, h))| AssociatedImageInfo {
                    name: n.clone(),
                    width: *w,
                    height: *h,
                })
                .collect(),
        }
    }

    /// Decode an associated image.
    pub fn read_associated_image(&self, name: &str) -> Result<RgbImage> {
        let r = match &self.inner {
            Inner::Tiff(t) => t.read_associated(name)?,
            Inner::Image { .. } => None,
            Inner::OpenSlide(o) => o.read_associated(name)?,
        };
        r.ok_or_else(|| {
            arg_err(
                &self.path,
                format!(
                    "no associated image {name:?} (available: {:?})",
                    self.associated_image_names()
                ),
            )
        })
    }

    /// "rust" or "openslide".
    pub fn backend_name(&self) -> &'static str {
        match &self.inner {
            Inner::Tiff(_) | Inner::Image { .. } => "rust",
            Inner::OpenSlide(_) => "openslide",
        }
    }

    /// Tile size of `level` (None for stripped images, single images, or when unknown).
    pub fn tile_size(&self, level: usize) -> Option<(u32, u32)> {
        match &self.inner {
            Inner::Tiff(t) => {
                let l = t.levels.get(level)?;
                l.tiled.then_some((l.chunk_w as u32, l.chunk_h as u32))
            }
            Inner::Image { .. } => None,
            Inner::OpenSlide(o) => {
                let w = o
                    .properties
                    .get(&format!("openslide.level[{level}].tile-width"))?
                    .parse()
                    .ok()?;
                let h = o
                    .properties
                    .get(&format!("openslide.level[{level}].tile-height"))?
                    .parse()
                    .ok()?;
                Some((w, h))
            }
        }
    }

    /// Compression of `level` ("jpeg", "deflate", "lzw", "none", ...), None when unknown.
    pub fn compression(&self, level: usize) -> Option<String> {
        match &self.inner {
            Inner::Tiff(t) => t.compression(level),
            Inner::Image { vendor, .. } => Some(if vendor == "png" {
                "png".into()
            } else {
                "jpeg".into()
            }),
            Inner::OpenSlide(_) => None,
        }
    }

    /// Background colour used outside the slide.
    pub fn background_rgb(&self) -> [u8; 3] {
        self.background
    }

    /// Number of tiles decoded so far by the pure-Rust backend (0 for OpenSlide). For tests and
    /// diagnostics of the cache.
    pub fn tiles_decoded(&self) -> u64 {
        match &self.inner {
            Inner::Tiff(t) => t.decoded.load(std::sync::atomic::Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Number of decoded tiles currently cached.
    pub fn cached_tiles(&self) -> usize {
        match &self.inner {
            Inner::Tiff(t) => t.cache.len(),
            _ => 0,
        }
    }

    /// Summary for `slide-info`.
    pub fn info(&self) -> SlideInfo {
        let mpp = self.mpp();
        let (w0, h0) = self.dimensions();
        let levels = (0..self.level_count())
            .map(|l| {
                let (w, h) = self.level_dims[l];
                let ts = self.tile_size(l);
                LevelInfo {
                    width: w,
                    height: h,
                    downsample: self.downsamples[l],
                    mpp_x: mpp.map(|m| m.0 * w0 as f64 / w as f64),
                    mpp_y: mpp.map(|m| m.1 * h0 as f64 / h as f64),
                    tile_width: ts.map(|t| t.0),
                    tile_height: ts.map(|t| t.1),
                    compression: self.compression(l),
                }
            })
            .collect();
        SlideInfo {
            path: self.path.display().to_string(),
            width: w0,
            height: h0,
            level_count: self.level_count(),
            levels,
            mpp_x: mpp.map(|m| m.0),
            mpp_y: mpp.map(|m| m.1),
            vendor: self.vendor().to_string(),
            backend: self.backend_name().to_string(),
            associated_images: self.associated_images(),
        }
    }

    fn region_bytes(&self, w: u32, h: u32) -> Result<usize> {
        (w as usize)
            .checked_mul(h as usize)
            .and_then(|v| v.checked_mul(3))
            .filter(|&v| v <= MAX_DECODE_BYTES)
            .ok_or_else(|| {
                arg_err(
                    &self.path,
                    format!("region {w}x{h} is too large (limit {MAX_DECODE_BYTES} bytes)"),
                )
            })
    }

    /// Read a `w` x `h` region of `level` whose top-left corner is (x_lv0, y_lv0) in level-0 pixels.
    pub fn read_region(
        &self,
        x_lv0: i64,
        y_lv0: i64,
        level: usize,
        w: u32,
        h: u32,
    ) -> Result<RgbImage> {
        let n = self.region_bytes(w, h)?;
        let mut data = vec![0u8; n];
        self.read_region_into(x_lv0, y_lv0, level, w, h, &mut data)?;
        Ok(RgbImage {
            width: w,
            height: h,
            data,
        })
    }

    /// [`Slide::read_region`] into `buf` (`w * h * 3` bytes, RGB8).
    pub fn read_region_into(
        &self,
        x_lv0: i64,
        y_lv0: i64,
        level: usize,
        w: u32,
        h: u32,
        buf: &mut [u8],
    ) -> Result<()> {
        self.check_level(level)?;
        let n = self.region_bytes(w, h)?;
        if buf.len() != n {
            return Err(arg_err(
                &self.path,
                format!("buffer has {} bytes, region {w}x{h} needs {n}", buf.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        match &self.inner {
            Inner::OpenSlide(o) => {
                let r = LevelRegion {
                    x_lv0,
                    y_lv0,
                    level,
                    w,
                    h,
                };
                o.read_region(&r, self.background, buf)
            }
            Inner::Tiff(t) => {
                let ds = self.downsamples[level];
                let lx = (x_lv0 as f64 / ds).floor() as i64;
                let ly = (y_lv0 as f64 / ds).floor() as i64;
                t.read_level_region(level, (lx, ly), (w, h), self.background, buf)
            }
            Inner::Image { img, .. } => {
                fill(buf, self.background);
                copy_region(img, x_lv0, y_lv0, w, h, buf);
                Ok(())
            }
        }
    }

    /// Read one patch (see [`PatchGeometry`]); (x, y) are level-0 pixels.
    pub fn read_patch(&self, x: i64, y: i64, geom: &PatchGeometry) -> Result<RgbImage> {
        let n = self.region_bytes(geom.out_size_px, geom.out_size_px)?;
        let mut data = vec![0u8; n];
        self.read_patch_into(x, y, geom, &mut data)?;
        Ok(RgbImage {
            width: geom.out_size_px,
            height: geom.out_size_px,
            data,
        })
    }

    /// [`Slide::read_patch`] into `out` (`out_size_px² * 3` bytes).
    pub fn read_patch_into(
        &self,
        x: i64,
        y: i64,
        geom: &PatchGeometry,
        out: &mut [u8],
    ) -> Result<()> {
        self.check_level(geom.level)?;
        if geom.read_size_px == 0 || geom.out_size_px == 0 {
            return Err(arg_err(
                &self.path,
                "patch read_size_px and out_size_px must be > 0",
            ));
        }
        let (x0, y0) = match geom.origin {
            Origin::TopLeft => (x, y),
            Origin::Centre => {
                let half = (f64::from(geom.read_size_px) * self.downsamples[geom.level] / 2.0)
                    .floor() as i64;
                (x.saturating_sub(half), y.saturating_sub(half))
            }
        };
        let (r, o) = (geom.read_size_px, geom.out_size_px);
        if r == o {
            return self.read_region_into(x0, y0, geom.level, r, r, out);
        }
        let need = self.region_bytes(r, r)?;
        if out.len() != self.region_bytes(o, o)? {
            return Err(arg_err(
                &self.path,
                format!(
                    "patch buffer has {} bytes, expected {}",
                    out.len(),
                    o as usize * o as usize * 3
                ),
            ));
        }
        PATCH_TMP.with(|tmp| -> Result<()> {
            let mut tmp = tmp.borrow_mut();
            tmp.resize(need, 0);
            self.read_region_into(x0, y0, geom.level, r, r, &mut tmp)?;
            resize_rgb(&tmp, r as usize, r as usize, out, o as usize, o as usize);
            Ok(())
        })
    }
}

/// Fill interleaved RGB pixels with one colour.
pub(crate) fn fill(buf: &mut [u8], rgb: [u8; 3]) {
    if rgb[0] == rgb[1] && rgb[1] == rgb[2] {
        buf.fill(rgb[0]);
    } else {
        for p in buf.chunks_exact_mut(3) {
            p.copy_from_slice(&rgb);
        }
    }
}

thread_local! {
    static PATCH_TMP: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn copy_region(img: &RgbImage, x: i64, y: i64, w: u32, h: u32, buf: &mut [u8]) {
    let (iw, ih) = (i64::from(img.width), i64::from(img.height));
    let x0 = x.max(0);
    let y0 = y.max(0);
    let x1 = x.saturating_add(i64::from(w)).min(iw);
    let y1 = y.saturating_add(i64::from(h)).min(ih);
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let n = ((x1 - x0) * 3) as usize;
    for yy in y0..y1 {
        let src = ((yy * iw + x0) * 3) as usize;
        let dst = ((yy - y) as usize * w as usize + (x0 - x) as usize) * 3;
        buf[dst..dst + n].copy_from_slice(&img.data[src..src + n]);
    }
}

/// Read many patches in parallel (rayon) into one contiguous buffer, in the order of `coords`.
///
/// `out` must hold `coords.len() * out_size_px² * 3` bytes; patch `i` starts at byte
/// `i * out_size_px² * 3`. The first error (if any) is returned.
pub fn read_patches(
    slide: &Slide,
    coords: &[(i64, i64)],
    geom: &PatchGeometry,
    out: &mut [u8],
) -> Result<()> {
    let per = slide.region_bytes(geom.out_size_px, geom.out_size_px)?;
    if per == 0 {
        return Err(arg_err(&slide.path, "patch out_size_px must be > 0"));
    }
    let need = per
        .checked_mul(coords.len())
        .ok_or_else(|| arg_err(&slide.path, "too many patches"))?;
    if out.len() != need {
        return Err(arg_err(
            &slide.path,
            format!(
                "output buffer has {} bytes, {} patches need {need}",
                out.len(),
                coords.len()
            ),
        ));
    }
    out.par_chunks_mut(per)
        .zip(coords.par_iter())
        .try_for_each(|(chunk, &(x, y))| slide.read_patch_into(x, y, geom, chunk))
}

/// Write an RGB image as an 8-bit RGB PNG.
pub fn write_png(path: impl AsRef<Path>, img: &RgbImage) -> Result<()> {
    let path = path.as_ref();
    let werr = |m: String| SlideError::Write {
        path: path.to_path_buf(),
        msg: m,
    };
    if img.data.len() != img.width as usize * img.height as usize * 3
        || img.width == 0
        || img.height == 0
    {
        return Err(werr(format!(
            "image {}x{} has {} bytes",
            img.width,
            img.height,
            img.data.len()
        )));
    }
    let f = std::fs::File::create(path).map_err(|e| werr(e.to_string()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), img.width, img.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| werr(e.to_string()))?;
    w.write_image_data(&img.data)
        .map_err(|e| werr(e.to_string()))?;
    w.finish().map_err(|e| werr(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slide_is_send_sync() {
        fn assert_ss<T: Send + Sync>() {}
        assert_ss::<Slide>();
    }

    #[test]
    fn backend_parses() {
        assert_eq!("OpenSlide".parse::<Backend>(), Ok(Backend::OpenSlide));
        assert!("foo".parse::<Backend>().is_err());
    }
}

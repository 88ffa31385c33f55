//! Pure-Rust TIFF/BigTIFF/Aperio SVS backend.
//!
//! The `tiff` crate only parses the IFDs; chunk bytes are fetched with `pread` on one shared
//! `File` and decoded here (JPEG via zune-jpeg, deflate, LZW, PackBits, none).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tiff::decoder::{Decoder, Limits, ifd::Value};
use tiff::tags::{IfdPointer, Tag};

use crate::cache::{Lookup, TileCache};
use crate::decode::{ChunkDims, ChunkFormat, Window, comp, compression_name, decode_chunk};
use crate::error::{Result, fmt_err, io_err, unsup_err};
use crate::{MAX_DECODE_BYTES, RgbImage, fill};

const MAX_IFDS: usize = 4096;

/// One parsed image file directory.
#[derive(Debug, Clone)]
pub(crate) struct TiffImage {
    pub width: u64,
    pub height: u64,
    pub tiled: bool,
    /// Chunk size: tile size, or (width, rows per strip) for strips.
    pub chunk_w: u64,
    pub chunk_h: u64,
    pub across: u64,
    pub down: u64,
    pub offsets: Vec<u64>,
    pub counts: Vec<u64>,
    pub fmt: ChunkFormat,
    pub description: Option<String>,
    pub subfile_type: u64,
    pub subifds: Vec<u64>,
    pub resolution: Option<(f64, f64, u16)>,
    pub extra_tags: Vec<(&'static str, String)>,
    /// A vendor TIFF variant whose layout only OpenSlide understands (NDPI, SCN, BIF, Philips).
    pub vendor_variant: Option<&'static str>,
}

impl TiffImage {
    fn chunk_rows(&self, idx: u64) -> u64 {
        if self.tiled {
            self.chunk_h
        } else {
            let row0 = (idx / self.across) * self.chunk_h;
            self.chunk_h.min(self.height.saturating_sub(row0))
        }
    }
}

/// Parsed, validated TIFF slide.
pub(crate) struct TiffSlide {
    pub path: PathBuf,
    file: File,
    file_len: u64,
    pub levels: Vec<TiffImage>,
    pub level_dims: Vec<(u64, u64)>,
    pub downsamples: Vec<f64>,
    pub properties: BTreeMap<String, String>,
    pub vendor: String,
    pub mpp: Option<(f64, f64)>,
    pub associated: Vec<(String, TiffImage)>,
    pub cache: TileCache,
    pub decoded: AtomicU64,
}

fn value_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Rational(n, d) if *d != 0 => Some(f64::from(*n) / f64::from(*d)),
        Value::SRational(n, d) if *d != 0 => Some(f64::from(*n) / f64::from(*d)),
        Value::Double(x) => Some(*x),
        Value::Float(x) => Some(f64::from(*x)),
        Value::Short(x) => Some(f64::from(*x)),
        Value::Unsigned(x) => Some(f64::from(*x)),
        Value::List(l) => l.first().and_then(value_f64),
        _ => None,
    }
}

fn tiff_err(path: &Path, what: &str, e: tiff::TiffError) -> crate::SlideError {
    match e {
        tiff::TiffError::IoError(io) => {
            fmt_err(path, format!("truncated or unreadable TIFF ({what}): {io}"))
        }
        other => fmt_err(path, format!("corrupt TIFF ({what}): {other}")),
    }
}

fn parse_image(
    path: &Path,
    dec: &mut Decoder<BufReader<Overlay<'_>>>,
    dir: &tiff::Directory,
) -> Result<TiffImage> {
    let mut t = dec.read_directory_tags(dir);
    let e = |what: &str, err| tiff_err(path, what, err);
    let u = |v: Option<Value>| v.and_then(|v| v.into_u64().ok());
    let width = u(t
        .find_tag(Tag::ImageWidth)
        .map_err(|x| e("ImageWidth", x))?)
    .ok_or_else(|| fmt_err(path, "TIFF image without ImageWidth"))?;
    let height = u(t
        .find_tag(Tag::ImageLength)
        .map_err(|x| e("ImageLength", x))?)
    .ok_or_else(|| fmt_err(path, "TIFF image without ImageLength"))?;
    if width == 0 || height == 0 || width > (1 << 31) || height > (1 << 31) {
        return Err(fmt_err(
            path,
            format!("invalid image dimensions {width}x{height}"),
        ));
    }
    let compression = u(t
        .find_tag(Tag::Compression)
        .map_err(|x| e("Compression", x))?)
    .unwrap_or(1) as u16;
    let photometric = u(t
        .find_tag(Tag::PhotometricInterpretation)
        .map_err(|x| e("PhotometricInterpretation", x))?)
    .unwrap_or(1) as u16;
    let spp = u(t
        .find_tag(Tag::SamplesPerPixel)
        .map_err(|x| e("SamplesPerPixel", x))?)
    .unwrap_or(1);
    let bits = t
        .find_tag(Tag::BitsPerSample)
        .map_err(|x| e("BitsPerSample", x))?
        .and_then(|v| v.into_u64_vec().ok())
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let predictor = u(t.find_tag(Tag::Predictor).map_err(|x| e("Predictor", x))?).unwrap_or(1);
    let planar = u(t
        .find_tag(Tag::PlanarConfiguration)
        .map_err(|x| e("PlanarConfiguration", x))?)
    .unwrap_or(1);
    let jpeg_tables = t
        .find_tag(Tag::JPEGTables)
        .map_err(|x| e("JPEGTables", x))?
        .and_then(|v| v.into_u8_vec().ok());
    let description = t
        .find_tag(Tag::ImageDescription)
        .ok()
        .flatten()
        .and_then(|v| v.into_string().ok());
    let subfile_type = u(t.find_tag(Tag::NewSubfileType).ok().flatten()).unwrap_or(0);
    let subifds = t
        .find_tag(Tag::SubIfd)
        .ok()
        .flatten()
        .and_then(|v| v.into_u64_vec().ok())
        .unwrap_or_default();
    let xres = t
        .find_tag(Tag::XResolution)
        .ok()
        .flatten()
        .as_ref()
        .and_then(value_f64);
    let yres = t
        .find_tag(Tag::YResolution)
        .ok()
        .flatten()
        .as_ref()
        .and_then(value_f64);
    let unit = u(t.find_tag(Tag::ResolutionUnit).ok().flatten()).unwrap_or(2) as u16;
    let resolution = match (xres, yres) {
        (Some(x), Some(y)) => Some((x, y, unit)),
        (Some(x), None) => Some((x, x, unit)),
        _ => None,
    };
    let mut extra_tags = Vec::new();
    for (name, tag) in [
        ("Make", Tag::Make),
        ("Model", Tag::Model),
        ("Software", Tag::Software),
        ("DateTime", Tag::DateTime),
        ("Artist", Tag::Artist),
        ("HostComputer", Tag::HostComputer),
        ("Copyright", Tag::Copyright),
    ] {
        if let Some(s) = t
            .find_tag(tag)
            .ok()
            .flatten()
            .and_then(|v| v.into_string().ok())
        {
            extra_tags.push((name, s));
        }
    }
    let software = extra_tags
        .iter()
        .find(|(n, _)| *n == "Software")
        .map(|(_, s)| s.as_str());
    let xmp = t
        .find_tag(Tag::from_u16_exhaustive(700))
        .ok()
        .flatten()
        .and_then(|v| v.into_u8_vec().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let vendor_variant = vendor_variant(
        t.find_tag(Tag::from_u16_exhaustive(65420))
            .ok()
            .flatten()
            .is_some(),
        description.as_deref(),
        software,
        xmp.as_deref(),
    );
    let tile_w = u(t.find_tag(Tag::TileWidth).map_err(|x| e("TileWidth", x))?);
    let tile_h = u(t
        .find_tag(Tag::TileLength)
        .map_err(|x| e("TileLength", x))?);
    let (tiled, chunk_w, chunk_h, off_tag, cnt_tag) = match (tile_w, tile_h) {
        (Some(tw), Some(th)) => (true, tw, th, Tag::TileOffsets, Tag::TileByteCounts),
        _ => {
            let rps = u(t
                .find_tag(Tag::RowsPerStrip)
                .map_err(|x| e("RowsPerStrip", x))?)
            .unwrap_or(height)
            .min(height);
            (false, width, rps, Tag::StripOffsets, Tag::StripByteCounts)
        }
    };
    if chunk_w == 0 || chunk_h == 0 || chunk_w > (1 << 20) || chunk_h > (1 << 31) {
        return Err(fmt_err(
            path,
            format!("invalid tile/strip size {chunk_w}x{chunk_h}"),
        ));
    }
    let offsets = t
        .find_tag(off_tag)
        .map_err(|x| e("chunk offsets", x))?
        .and_then(|v| v.into_u64_vec().ok())
        .ok_or_else(|| fmt_err(path, "TIFF image without tile/strip offsets"))?;
    let counts = t
        .find_tag(cnt_tag)
        .map_err(|x| e("chunk byte counts", x))?
        .and_then(|v| v.into_u64_vec().ok())
        .ok_or_else(|| fmt_err(path, "TIFF image without tile/strip byte counts"))?;
    let across = width.div_ceil(chunk_w);
    let down = height.div_ceil(chunk_h);
    let n = across
        .checked_mul(down)
        .ok_or_else(|| fmt_err(path, "tile count overflows"))?;
    let n_planes = if planar == 2 { spp.max(1) } else { 1 };
    if (offsets.len() as u64) < n || (counts.len() as u64) < n {
        return Err(fmt_err(
            path,
            format!(
                "image {width}x{height} with {chunk_w}x{chunk_h} chunks needs {} offsets, found {} offsets / {} byte counts",
                n * n_planes,
                offsets.len(),
                counts.len()
            ),
        ));
    }
    Ok(TiffImage {
        width,
        height,
        tiled,
        chunk_w,
        chunk_h,
        across,
        down,
        offsets,
        counts,
        fmt: ChunkFormat {
            compression,
            photometric,
            samples_per_pixel: spp.min(u64::from(u16::MAX)) as u16,
            bits_per_sample: bits.min(u64::from(u16::MAX)) as u16,
            predictor: predictor.min(u64::from(u16::MAX)) as u16,
            planar: planar.min(u64::from(u16::MAX)) as u16,
            jpeg_tables,
        },
        description,
        subfile_type,
        subifds,
        resolution,
        extra_tags,
        vendor_variant,
    })
}

/// Vendor TIFF variants that the pure-Rust reader must not read as generic TIFF (their pyramid,
/// offsets or tile placement follow vendor rules that OpenSlide implements). The tests follow
/// OpenSlide's own detection: NDPI's private tag 65420, Leica's XML description, Ventana's
/// `iScan` XMP, Philips' `DPUfsImport` description or Software.
fn vendor_variant(
    ndpi_tag: bool,
    desc: Option<&str>,
    software: Option<&str>,
    xmp: Option<&str>,
) -> Option<&'static str> {
    let desc = desc.unwrap_or("");
    if ndpi_tag {
        Some("Hamamatsu NDPI")
    } else if desc.starts_with("<?xml") && desc.contains("leica-microsystems.com/scn") {
        Some("Leica SCN")
    } else if xmp.is_some_and(|x| x.contains("<iScan")) {
        Some("Ventana BIF")
    } else if desc.contains("DPUfsImport") || software.is_some_and(|s| s.starts_with("Philips")) {
        Some("Philips TIFF")
    } else {
        None
    }
}

/// Parse "Aperio ...|key = value|..." into `aperio.key` properties.
fn aperio_properties(desc: &str, props: &mut BTreeMap<String, String>) {
    for item in desc.split('|').skip(1) {
        if let Some((k, v)) = item.split_once('=') {
            let k = k.trim();
            if !k.is_empty() {
                props.insert(format!("aperio.{k}"), v.trim().to_string());
            }
        }
    }
}

impl TiffSlide {
    /// Open and validate a TIFF file.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
        if file_len == 0 {
            return Err(fmt_err(path, "empty file"));
        }
        let (main, subifd_images) = {
            let hdr = read_header(path, &file, file_len)?;
            let overlay = Overlay::new(&file, file_len, &hdr);
            let reader = BufReader::new(overlay);
            let dec = Decoder::new(reader).map_err(|e| tiff_err(path, "header", e))?;
            let mut limits = Limits::default();
            limits.ifd_value_size = (file_len.min(512 << 20)) as usize;
            limits.decoding_buffer_size = MAX_DECODE_BYTES;
            let mut dec = dec.with_limits(limits);
            let first = IfdPointer(hdr.first_ifd);
            let mut seen = HashSet::new();
            let mut main = Vec::new();
            let mut next = Some(first);
            while let Some(ptr) = next {
                if !seen.insert(ptr.0) || main.len() >= MAX_IFDS {
                    return Err(fmt_err(path, "IFD chain loops or is too long"));
                }
                if ptr.0 >= file_len {
                    return Err(fmt_err(
                        path,
                        format!("IFD offset {} past end of file ({file_len} bytes)", ptr.0),
                    ));
                }
                let dir = dec
                    .read_directory(ptr)
                    .map_err(|e| tiff_err(path, "IFD", e))?;
                next = dir.next().filter(|p| p.0 != 0);
                main.push(parse_image(path, &mut dec, &dir));
            }
            // SubIFDs of the first image (pyramid stored as SubIFDs).
            let mut subs = Vec::new();
            if let Some(Ok(first_img)) = main.first() {
                for &off in first_img.subifds.clone().iter().take(64) {
                    if !seen.insert(off) || off >= file_len {
                        continue;
                    }
                    let dir = dec
                        .read_directory(IfdPointer(off))
                        .map_err(|e| tiff_err(path, "SubIFD", e))?;
                    if let Ok(img) = parse_image(path, &mut dec, &dir) {
                        subs.push(img);
                    }
                }
            }
            (main, subs)
        };
        let mut main_iter = main.into_iter();
        let first = main_iter
            .next()
            .ok_or_else(|| fmt_err(path, "TIFF without images"))??;
        let rest: Vec<std::result::Result<TiffImage, crate::SlideError>> = main_iter.collect();

        if let Some(v) = first.vendor_variant {
            return Err(unsup_err(
                path,
                format!(
                    "{v} slide: its layout is not generic TIFF and the pure-Rust backend does not \
                     read it; install OpenSlide (libopenslide0) and use --backend openslide/auto"
                ),
            ));
        }
        let is_aperio = first
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("Aperio"));
        let mut properties = BTreeMap::new();
        let vendor = if is_aperio { "aperio" } else { "generic-tiff" }.to_string();
        if let Some(d) = &first.description {
            properties.insert("tiff.ImageDescription".into(), d.clone());
            if is_aperio {
                aperio_properties(d, &mut properties);
            }
        }
        for (k, v) in &first.extra_tags {
            properties.insert(format!("tiff.{k}"), v.clone());
        }
        if let Some((xr, yr, unit)) = first.resolution {
            properties.insert("tiff.XResolution".into(), xr.to_string());
            properties.insert("tiff.YResolution".into(), yr.to_string());
            properties.insert(
                "tiff.ResolutionUnit".into(),
                match unit {
                    1 => "none",
                    2 => "inch",
                    3 => "centimeter",
                    _ => "unknown",
                }
                .into(),
            );
        }

        let mut levels = vec![first.clone()];
        let mut associated = Vec::new();
        for (i, img) in rest.into_iter().enumerate() {
            let dir_index = i + 1;
            let img = match img {
                Ok(img) => img,
                Err(err) => {
                    tracing::debug!("{}: skipping IFD {dir_index}: {err}", path.display());
                    continue;
                }
            };
            if first.tiled {
                if img.tiled && img.subfile_type & 4 == 0 {
                    levels.push(img);
                } else if is_aperio && !img.tiled {
                    let desc = img.description.clone().unwrap_or_default();
                    let line2 = desc
                        .lines()
                        .nth(1)
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    let name = if dir_index == 1 {
                        Some("thumbnail")
                    } else if line2.starts_with("label") {
                        Some("label")
                    } else if line2.starts_with("macro") {
                        Some("macro")
                    } else {
                        None
                    };
                    if let Some(n) = name {
                        associated.push((n.to_string(), img));
                    }
                }
            } else if img.subfile_type & 1 == 1 && img.subfile_type & 4 == 0 {
                levels.push(img);
            }
        }
        for img in subifd_images {
            if img.subfile_type & 4 == 0 && (img.tiled || !first.tiled) {
                levels.push(img);
            }
        }
        // Largest first; drop levels that are not smaller than the previous one.
        levels.sort_by(|a, b| b.width.cmp(&a.width).then(b.height.cmp(&a.height)));
        levels.dedup_by(|b, a| b.width >= a.width);
        // Reject what the decoder cannot handle (on the level images).
        for l in &levels {
            l.fmt.check_supported(path)?;
            let chunk_bytes = l.chunk_w.saturating_mul(l.chunk_h).saturating_mul(3);
            let direct_raw = !l.tiled && l.fmt.compression == comp::NONE;
            if chunk_bytes > MAX_DECODE_BYTES as u64 && !direct_raw {
                return Err(fmt_err(
                    path,
                    format!(
                        "tile/strip of {}x{} pixels is too large to decode",
                        l.chunk_w, l.chunk_h
                    ),
                ));
            }
        }
        let (w0, h0) = (levels[0].width as f64, levels[0].height as f64);
        let level_dims: Vec<(u64, u64)> = levels.iter().map(|l| (l.width, l.height)).collect();
        let downsamples: Vec<f64> = levels
            .iter()
            .map(|l| (w0 / l.width as f64 + h0 / l.height as f64) / 2.0)
            .collect();

        let mut mpp = None;
        if is_aperio
            && let Some(m) = properties
                .get("aperio.MPP")
                .and_then(|s| s.parse::<f64>().ok())
            && m > 0.0
            && m.is_finite()
        {
            mpp = Some((m, m));
        }
        if mpp.is_none()
            && let Some((xr, yr, unit)) = levels[0].resolution
        {
            let um_per_unit = match unit {
                2 => Some(25400.0),
                3 => Some(10000.0),
                _ => None,
            };
            if let Some(k) = um_per_unit
                && xr > 0.0
                && yr > 0.0
            {
                let (mx, my) = (k / xr, k / yr);
                if mx.is_finite() && my.is_finite() {
                    mpp = Some((mx, my));
                }
            }
        }
        properties.insert("openslide.vendor".into(), vendor.clone());
        if let Some((mx, my)) = mpp {
            properties.insert("openslide.mpp-x".into(), mx.to_string());
            properties.insert("openslide.mpp-y".into(), my.to_string());
        }
        if let Some(mag) = properties.get("aperio.AppMag").cloned() {
            properties.insert("openslide.objective-power".into(), mag);
        }
        properties.insert("openslide.level-count".into(), levels.len().to_string());
        for (i, l) in levels.iter().enumerate() {
            properties.insert(format!("openslide.level[{i}].width"), l.width.to_string());
            properties.insert(format!("openslide.level[{i}].height"), l.height.to_string());
            properties.insert(
                format!("openslide.level[{i}].downsample"),
                downsamples[i].to_string(),
            );
            if l.tiled {
                properties.insert(
                    format!("openslide.level[{i}].tile-width"),
                    l.chunk_w.to_string(),
                );
                properties.insert(
                    format!("openslide.level[{i}].tile-height"),
                    l.chunk_h.to_string(),
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            file_len,
            levels,
            level_dims,
            downsamples,
            properties,
            vendor,
            mpp,
            associated,
            cache: TileCache::new(cache_bytes),
            decoded: AtomicU64::new(0),
        })
    }

    /// Compression name of a level.
    pub(crate) fn compression(&self, level: usize) -> Option<String> {
        self.levels
            .get(level)
            .map(|l| compression_name(l.fmt.compression))
    }

    fn read_raw(&self, offset: u64, len: u64, what: &str, buf: &mut Vec<u8>) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.file_len)
        {
            return Err(fmt_err(
                &self.path,
                format!(
                    "{what}: offset {offset} + {len} bytes is past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        if len > MAX_DECODE_BYTES as u64 {
            return Err(fmt_err(
                &self.path,
                format!("{what}: {len} bytes of compressed data is too large"),
            ));
        }
        // No clear(): the read overwrites every byte, so only a grown tail is zeroed.
        buf.resize(len as usize, 0);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_err(&self.path, e))
    }

    /// Decode one chunk of an image (no cache), with the pixels decoded.
    ///
    /// Only the pixels `need` of the chunk are guaranteed (see [`decode_chunk`]); `None` for the
    /// whole chunk.
    fn decode_image_chunk(
        &self,
        img: &TiffImage,
        idx: u64,
        what: &str,
        out: Vec<u8>,
        need: Option<Window>,
    ) -> Result<Option<(Vec<u8>, Window)>> {
        let i = idx as usize;
        let (off, cnt) = (img.offsets[i], img.counts[i]);
        if cnt == 0 {
            return Ok(None);
        }
        let rows = img.chunk_rows(idx);
        let bytes = img.chunk_w.saturating_mul(rows).saturating_mul(3);
        if bytes > MAX_DECODE_BYTES as u64 {
            return Err(fmt_err(
                &self.path,
                format!(
                    "{what} chunk {idx}: {}x{rows} pixels is too large to decode",
                    img.chunk_w
                ),
            ));
        }
        let mut out = out;
        out.resize(bytes as usize, 0);
        let valid = RAW.with(|raw| -> Result<Window> {
            let mut raw = raw.borrow_mut();
            self.read_raw(off, cnt, &format!("{what} chunk {idx}"), &mut raw)?;
            let (w, h) = (img.chunk_w as usize, rows as usize);
            let dims = ChunkDims {
                w,
                h,
                need: need.unwrap_or(Window::full(w, h)),
                jpeg_max: (img.chunk_w as usize, img.chunk_h as usize),
            };
            decode_chunk(&self.path, &img.fmt, &raw, dims, &mut out)
                .map_err(|e| annotate(e, &format!("{what} chunk {idx}")))
        })?;
        self.decoded.fetch_add(1, Ordering::Relaxed);
        Ok(Some((out, valid)))
    }

    /// A decoded chunk of a level whose pixels `need` are valid (others may not be), and
    /// whether the cache held the chunk (with all the pixels needed, or part of them).
    ///
    /// Without a cache only the needed pixels are decoded (JPEG: rows below them are not
    /// decoded at all, columns and rows above them only entropy-decoded). With one, the whole
    /// chunk is decoded (later reads may need any of its pixels), except for a `sparse` read
    /// (one that has found none of its chunks in the cache so far, not even partly) of a chunk
    /// the cache does not hold at all and of which it needs at most half the pixels: then only
    /// those are, and a later read of others decodes it again, whole. Random reads, which need
    /// a corner or an edge of most chunks they touch, so skip most of those chunks' decoding;
    /// reads in grid order, which find the chunks before them cached, decode each chunk once
    /// (if their first read needs a small corner of a chunk, that chunk twice).
    fn chunk(
        &self,
        level: usize,
        idx: u64,
        need: Window,
        sparse: bool,
    ) -> Result<Option<(Arc<Vec<u8>>, bool)>> {
        let key = (level as u32, idx);
        let img = &self.levels[level];
        let rows = img.chunk_rows(idx);
        let seen = match self.cache.get(&key, &need) {
            Lookup::Hit(tile) => return Ok(Some((tile, true))),
            Lookup::Partial => true,
            Lookup::Miss => false,
        };
        let buf = self
            .cache
            .take_buffer(&key, (img.chunk_w * rows * 3) as usize);
        let small = 2 * need.pixels() <= img.chunk_w as usize * rows as usize;
        let only_needed = !self.cache.enabled() || (sparse && !seen && small);
        match self.decode_image_chunk(
            img,
            idx,
            &format!("level {level}"),
            buf,
            only_needed.then_some(need),
        )? {
            None => Ok(None),
            Some((v, valid)) => Ok(Some((self.cache.insert(key, v, valid), seen))),
        }
    }

    /// Read a `w` x `h` region at `level` whose top-left corner is (lx, ly) in level
    /// coordinates into `buf`; pixels no chunk covers (outside the level, chunks without data)
    /// are `background`.
    pub(crate) fn read_level_region(
        &self,
        level: usize,
        (lx, ly): (i64, i64),
        (w, h): (u32, u32),
        background: [u8; 3],
        buf: &mut [u8],
    ) -> Result<()> {
        let img = &self.levels[level];
        let (lw, lh) = (img.width as i64, img.height as i64);
        let x0 = lx.max(0);
        let y0 = ly.max(0);
        let x1 = lx.saturating_add(i64::from(w)).min(lw);
        let y1 = ly.saturating_add(i64::from(h)).min(lh);
        let (cw, ch) = (img.chunk_w as i64, img.chunk_h as i64);
        let out_stride = w as usize * 3;
        let raw_strips = !img.tiled && img.fmt.compression == comp::NONE && img.fmt.predictor == 1;
        // A region inside the level is covered by its chunks' pixels: only the parts of
        // chunks without data need the background (filled below), not the whole buffer first.
        let inside = lx >= 0
            && ly >= 0
            && lx.saturating_add(i64::from(w)) <= lw
            && ly.saturating_add(i64::from(h)) <= lh;
        if !inside || raw_strips {
            fill(buf, background);
        }
        if x0 >= x1 || y0 >= y1 {
            return Ok(());
        }
        if raw_strips {
            return self.read_raw_strips(img, lx, ly, (x0, y0, x1, y1), w, buf);
        }
        let mut sparse = true;
        for ty in (y0 / ch)..=((y1 - 1) / ch) {
            for tx in (x0 / cw)..=((x1 - 1) / cw) {
                let idx = (ty as u64) * img.across + tx as u64;
                let (tx0, ty0) = (tx * cw, ty * ch);
                let rows = img.chunk_rows(idx) as i64;
                let cx0 = x0.max(tx0);
                let cx1 = x1.min(tx0 + cw);
                let cy0 = y0.max(ty0);
                let cy1 = y1.min(ty0 + rows);
                let n = ((cx1 - cx0) * 3) as usize;
                let need = Window {
                    x0: (cx0 - tx0) as usize,
                    y0: (cy0 - ty0) as usize,
                    x1: (cx1 - tx0) as usize,
                    y1: (cy1 - ty0) as usize,
                };
                let Some((tile, cached)) = self.chunk(level, idx, need, sparse)? else {
                    if inside {
                        for y in cy0..cy1 {
                            let dst = (y - ly) as usize * out_stride + ((cx0 - lx) * 3) as usize;
                            fill(&mut buf[dst..dst + n], background);
                        }
                    }
                    continue;
                };
                sparse &= !cached;
                for y in cy0..cy1 {
                    let src = (((y - ty0) * cw + (cx0 - tx0)) * 3) as usize;
                    let dst = (y - ly) as usize * out_stride + ((cx0 - lx) * 3) as usize;
                    buf[dst..dst + n].copy_from_slice(&tile[src..src + n]);
                }
            }
        }
        Ok(())
    }

    /// Uncompressed strips: pread only the needed bytes of each row.
    fn read_raw_strips(
        &self,
        img: &TiffImage,
        lx: i64,
        ly: i64,
        b: (i64, i64, i64, i64),
        w: u32,
        buf: &mut [u8],
    ) -> Result<()> {
        let (x0, y0, x1, y1) = b;
        let spp = u64::from(img.fmt.samples_per_pixel);
        let row_bytes = img.width * spp;
        let out_stride = w as usize * 3;
        let mut tmp = Vec::new();
        for y in y0..y1 {
            let yy = y as u64;
            let strip = yy / img.chunk_h;
            let i = strip as usize;
            if img.counts[i] == 0 {
                continue;
            }
            let within = (yy - strip * img.chunk_h) * row_bytes + x0 as u64 * spp;
            let len = (x1 - x0) as u64 * spp;
            if within + len > img.counts[i] {
                return Err(fmt_err(
                    &self.path,
                    format!("strip {strip} is shorter than its rows"),
                ));
            }
            self.read_raw(
                img.offsets[i] + within,
                len,
                &format!("strip {strip}"),
                &mut tmp,
            )?;
            let dst = (y - ly) as usize * out_stride + ((x0 - lx) * 3) as usize;
            let out = &mut buf[dst..dst + (x1 - x0) as usize * 3];
            let spp = spp as usize;
            if spp == 3 {
                out.copy_from_slice(&tmp);
            } else {
                for (d, s) in out.chunks_exact_mut(3).zip(tmp.chunks_exact(spp)) {
                    if img.fmt.photometric <= 1 {
                        let v = if img.fmt.photometric == 0 {
                            255 - s[0]
                        } else {
                            s[0]
                        };
                        d.fill(v);
                    } else {
                        d.copy_from_slice(&s[..3]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Decode a whole associated image.
    pub(crate) fn read_associated(&self, name: &str) -> Result<Option<RgbImage>> {
        let Some((_, img)) = self.associated.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        img.fmt.check_supported(&self.path)?;
        let bytes = img.width.saturating_mul(img.height).saturating_mul(3);
        if bytes > MAX_DECODE_BYTES as u64 {
            return Err(fmt_err(
                &self.path,
                format!("associated image {name} is too large"),
            ));
        }
        let (w, h) = (img.width as usize, img.height as usize);
        let mut data = vec![255u8; w * h * 3];
        let cw = img.chunk_w as usize;
        for idx in 0..img.across * img.down {
            let Some((tile, _)) = self.decode_image_chunk(
                img,
                idx,
                &format!("associated image {name}"),
                Vec::new(),
                None,
            )?
            else {
                continue;
            };
            let rows = img.chunk_rows(idx) as usize;
            let tx0 = (idx % img.across) as usize * cw;
            let ty0 = (idx / img.across) as usize * img.chunk_h as usize;
            let n = cw.min(w - tx0) * 3;
            for r in 0..rows.min(h.saturating_sub(ty0)) {
                let dst = ((ty0 + r) * w + tx0) * 3;
                data[dst..dst + n].copy_from_slice(&tile[r * cw * 3..r * cw * 3 + n]);
            }
        }
        Ok(Some(RgbImage {
            width: img.width as u32,
            height: img.height as u32,
            data,
        }))
    }
}

/// The real TIFF header.
struct Header {
    little_endian: bool,
    big: bool,
    first_ifd: u64,
}

fn read_header(path: &Path, file: &File, file_len: u64) -> Result<Header> {
    let mut h = [0u8; 16];
    let n = (file_len.min(16)) as usize;
    file.read_exact_at(&mut h[..n], 0)
        .map_err(|e| io_err(path, e))?;
    if n < 8 {
        return Err(fmt_err(path, format!("truncated TIFF header ({n} bytes)")));
    }
    let le = match &h[..2] {
        b"II" => true,
        b"MM" => false,
        _ => return Err(fmt_err(path, "not a TIFF file (bad byte order mark)")),
    };
    let u16_at = |i: usize| {
        if le {
            u16::from_le_bytes([h[i], h[i + 1]])
        } else {
            u16::from_be_bytes([h[i], h[i + 1]])
        }
    };
    let version = u16_at(2);
    let (big, first_ifd) = match version {
        42 => {
            let b = [h[4], h[5], h[6], h[7]];
            (
                false,
                u64::from(if le {
                    u32::from_le_bytes(b)
                } else {
                    u32::from_be_bytes(b)
                }),
            )
        }
        43 => {
            if n < 16 || u16_at(4) != 8 {
                return Err(fmt_err(path, "truncated or invalid BigTIFF header"));
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[8..16]);
            (
                true,
                if le {
                    u64::from_le_bytes(b)
                } else {
                    u64::from_be_bytes(b)
                },
            )
        }
        v => return Err(fmt_err(path, format!("not a TIFF file (version {v})"))),
    };
    if first_ifd < 8 || first_ifd >= file_len {
        return Err(fmt_err(
            path,
            format!("first IFD offset {first_ifd} is outside the file ({file_len} bytes)"),
        ));
    }
    Ok(Header {
        little_endian: le,
        big,
        first_ifd,
    })
}

/// A view of the file whose header points to a tiny synthetic IFD placed just past the end of
/// the file. `tiff::Decoder::new` fully parses the first IFD with default limits (1 MiB of tag
/// values), which large BigTIFF pyramids exceed; with the overlay it parses the synthetic IFD
/// instead and every real IFD is read afterwards with `read_directory` under our own limits.
struct Overlay<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
    header: Vec<u8>,
    extra: Vec<u8>,
}

impl<'a> Overlay<'a> {
    fn new(file: &'a File, len: u64, h: &Header) -> Self {
        let le = h.little_endian;
        let mut hdr = Vec::new();
        let p16 = |v: &mut Vec<u8>, x: u16| {
            v.extend_from_slice(&if le { x.to_le_bytes() } else { x.to_be_bytes() })
        };
        let p32 = |v: &mut Vec<u8>, x: u32| {
            v.extend_from_slice(&if le { x.to_le_bytes() } else { x.to_be_bytes() })
        };
        let p64 = |v: &mut Vec<u8>, x: u64| {
            v.extend_from_slice(&if le { x.to_le_bytes() } else { x.to_be_bytes() })
        };
        hdr.extend_from_slice(if le { b"II" } else { b"MM" });
        // Synthetic IFD lives at `len` (rounded up to even).
        let at = len + (len & 1);
        if h.big {
            p16(&mut hdr, 43);
            p16(&mut hdr, 8);
            p16(&mut hdr, 0);
            p64(&mut hdr, at);
        } else {
            p16(&mut hdr, 42);
            p32(&mut hdr, at as u32);
        }
        // 1x1 8-bit gray uncompressed image, one strip of one byte at offset 0.
        let entries: [(u16, u32); 8] = [
            (256, 1),
            (257, 1),
            (258, 8),
            (259, 1),
            (262, 1),
            (273, 0),
            (278, 1),
            (279, 1),
        ];
        let mut extra = vec![0u8; (at - len) as usize];
        if h.big {
            p64(&mut extra, entries.len() as u64);
            for (tag, val) in entries {
                p16(&mut extra, tag);
                p16(&mut extra, 4); // LONG
                p64(&mut extra, 1);
                p32(&mut extra, val);
                p32(&mut extra, 0);
            }
            p64(&mut extra, 0);
        } else {
            p16(&mut extra, entries.len() as u16);
            for (tag, val) in entries {
                p16(&mut extra, tag);
                p16(&mut extra, 4);
                p32(&mut extra, 1);
                p32(&mut extra, val);
            }
            p32(&mut extra, 0);
        }
        Self {
            file,
            len,
            pos: 0,
            header: hdr,
            extra,
        }
    }
}

impl std::io::Read for Overlay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let p = self.pos;
        let n = if p < self.header.len() as u64 {
            let h = &self.header[p as usize..];
            let k = h.len().min(buf.len());
            buf[..k].copy_from_slice(&h[..k]);
            k
        } else if p >= self.len {
            let off = (p - self.len) as usize;
            if off >= self.extra.len() {
                return Ok(0);
            }
            let e = &self.extra[off..];
            let k = e.len().min(buf.len());
            buf[..k].copy_from_slice(&e[..k]);
            k
        } else {
            let k = ((self.len - p) as usize).min(buf.len());
            self.file.read_at(&mut buf[..k], p)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Overlay<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let total = (self.len + self.extra.len() as u64) as i128;
        let new = match to {
            std::io::SeekFrom::Start(o) => i128::from(o),
            std::io::SeekFrom::End(d) => total + i128::from(d),
            std::io::SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if new < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new.min(i128::from(u64::MAX)) as u64;
        Ok(self.pos)
    }
}

fn annotate(e: crate::SlideError, ctx: &str) -> crate::SlideError {
    match e {
        crate::SlideError::Format { path, msg } => crate::SlideError::Format {
            path,
            msg: format!("{ctx}: {msg}"),
        },
        crate::SlideError::Unsupported { path, msg } => crate::SlideError::Unsupported {
            path,
            msg: format!("{ctx}: {msg}"),
        },
        other => other,
    }
}

thread_local! {
    static RAW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

//! `.npy` / `.npz` writing (no compression), for `confidence_maps.npz`.
//!
//! - `.npy` files are format version 1.0 exactly as `numpy.save` writes them: magic `\x93NUMPY`,
//!   version `1 0`, little-endian u16 header length, header
//!   `{'descr': '<f2', 'fortran_order': False, 'shape': (H, W), }` padded with spaces and a final
//!   `\n` so that the data starts at a multiple of 64 bytes, then C-order little-endian data.
//!   `numpy.load(..., allow_pickle=False)` reads them.
//! - `.npz` is a ZIP archive of `.npy` members named `<key>.npy`, written with method 0 ("stored",
//!   like `numpy.savez`), DOS date 1980-01-01, CRC-32 per member, ZIP64 records (as Python's
//!   `zipfile` writes and reads them) for members, offsets or a central directory beyond 4 GiB.
//!   Members can be streamed ([`NpzWriter::add_streamed`]), so a whole-slide map is never held in
//!   memory.
//! - [`ConfidenceEncoding::Float16`]: IEEE half (`<f2`), round-to-nearest from f32; NaN stays NaN
//!   (callers may mark "no data" pixels with NaN).
//! - [`ConfidenceEncoding::U8`]: `q = round(clamp(p, 0, 1) * 255)` as `|u1` (NaN gives 0); read back
//!   with `p ≈ q / 255` (max error 1/510).

use crate::error::{PostError, Result, invalid};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// How confidence maps are stored in the `.npz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceEncoding {
    /// `float16` arrays.
    Float16,
    /// `uint8` arrays, `q = round(clamp(p, 0, 1) * 255)`.
    U8,
}

/// The `.npy` v1.0 header (magic..padding) for `descr` (e.g. `"<f2"`, `"|u1"`) and C-order `shape`.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Little-endian IEEE half bytes of `v` (round to nearest; NaN stays NaN).
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Complete `.npy` bytes of a float16 array (values converted from f32).
pub fn npy_bytes_f16(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    check_shape(shape, data.len())?;
    let mut out = npy_header("<f2", shape);
    out.reserve(2 * data.len());
    for &v in data {
        out.extend_from_slice(&f16_bytes(v));
    }
    Ok(out)
}

/// Complete `.npy` bytes of a uint8 array.
pub fn npy_bytes_u8(shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    check_shape(shape, data.len())?;
    let mut out = npy_header("|u1", shape);
    out.extend_from_slice(data);
    Ok(out)
}

/// Complete `.npy` bytes of a float32 array.
pub fn npy_bytes_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    check_shape(shape, data.len())?;
    let mut out = npy_header("<f4", shape);
    for &v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// `round(clamp(p, 0, 1) * 255)`.
pub fn quantize_u8(p: f32) -> u8 {
    (p.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn check_shape(shape: &[usize], len: usize) -> Result<()> {
    if shape.is_empty() || shape.iter().product::<usize>() != len {
        return invalid(format!("npy: shape {shape:?} does not match {len} values"));
    }
    Ok(())
}

struct Entry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

/// Streaming writer of a stored (uncompressed) `.npz` archive, ZIP64 where a member, an offset or
/// the central directory passes 4 GiB.
pub struct NpzWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    entries: Vec<Entry>,
    pos: u64,
    zip64_from: u64,
}

/// Writes the data of one member being added with [`NpzWriter::add_streamed`]; counts the bytes
/// and computes their CRC-32.
pub struct MemberWriter<'a> {
    out: &'a mut BufWriter<std::fs::File>,
    path: &'a Path,
    crc: crc32fast::Hasher,
    written: u64,
}

impl MemberWriter<'_> {
    /// Appends bytes to the member.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|source| PostError::Io {
            path: self.path.to_path_buf(),
            source,
        })
    }
}

const DOS_DATE_1980_01_01: u16 = (1 << 5) | 1;
const U32_FULL: u64 = 0xFFFF_FFFF;

impl NpzWriter {
    /// Creates (truncates) the archive file.
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|source| PostError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            entries: Vec::new(),
            pos: 0,
            zip64_from: U32_FULL,
        })
    }

    /// Uses ZIP64 records for every size or offset `>= bytes` (default 4 GiB - 1); for tests.
    #[doc(hidden)]
    pub fn with_zip64_from(mut self, bytes: u64) -> Self {
        self.zip64_from = bytes.min(U32_FULL);
        self
    }

    fn io(&self) -> impl Fn(std::io::Error) -> PostError + '_ {
        move |source| PostError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a member `<key>.npy` with the given complete `.npy` bytes.
    pub fn add_npy(&mut self, key: &str, npy: &[u8]) -> Result<()> {
        self.add_streamed(key, npy.len() as u64, |w| w.write(npy))
    }

    /// Adds a member `<key>.npy` of exactly `size` bytes, written by `fill` (e.g. an `.npy` header
    /// then rows read from disk), so that the member is never held in memory.
    pub fn add_streamed(
        &mut self,
        key: &str,
        size: u64,
        fill: impl FnOnce(&mut MemberWriter<'_>) -> Result<()>,
    ) -> Result<()> {
        if key.is_empty() || key.len() > 200 || key.contains(['/', '\\']) {
            return invalid(format!("{}: bad array key {key:?}", self.path.display()));
        }
        let name = format!("{key}.npy");
        if self.entries.iter().any(|e| e.name == name) {
            return invalid(format!(
                "{}: duplicate array key {key:?}",
                self.path.display()
            ));
        }
        let offset = self.pos;
        let zip64 = size >= self.zip64_from || offset >= self.zip64_from;
        let mut h = Vec::with_capacity(50 + name.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes()); // version needed
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&DOS_DATE_1980_01_01.to_le_bytes());
        let crc_at = offset + h.len() as u64;
        h.extend_from_slice(&0u32.to_le_bytes()); // CRC, patched below
        let size32 = if zip64 { U32_FULL as u32 } else { size as u32 };
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(if zip64 { 20u16 } else { 0 }).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        if zip64 {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
        }
        self.out.write_all(&h).map_err(self.io())?;
        let mut mw = MemberWriter {
            out: &mut self.out,
            path: &self.path,
            crc: crc32fast::Hasher::new(),
            written: 0,
        };
        fill(&mut mw)?;
        let (written, crc) = (mw.written, mw.crc.finalize());
        if written != size {
            return invalid(format!(
                "{}: member {name} declared {size} bytes, {written} written",
                self.path.display()
            ));
        }
        self.pos = offset + h.len() as u64 + size;
        self.out
            .seek(std::io::SeekFrom::Start(crc_at))
            .and_then(|_| self.out.write_all(&crc.to_le_bytes()))
            .and_then(|_| self.out.seek(std::io::SeekFrom::Start(self.pos)))
            .map_err(self.io())?;
        self.entries.push(Entry {
            name,
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// Adds a float16 array (converted from f32).
    pub fn add_f16(&mut self, key: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let b = npy_bytes_f16(shape, data)?;
        self.add_npy(key, &b)
    }

    /// Adds a uint8 array.
    pub fn add_u8(&mut self, key: &str, shape: &[usize], data: &[u8]) -> Result<()> {
        let b = npy_bytes_u8(shape, data)?;
        self.add_npy(key, &b)
    }

    /// Adds a float32 array.
    pub fn add_f32(&mut self, key: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let b = npy_bytes_f32(shape, data)?;
        self.add_npy(key, &b)
    }

    /// Writes the central directory and closes the archive.
    pub fn finish(mut self) -> Result<()> {
        let cd_start = self.pos;
        let big = self.zip64_from;
        let mut cd = Vec::new();
        for e in &self.entries {
            let (size64, off64) = (e.size >= big, e.offset >= big);
            let mut extra = Vec::new();
            if size64 {
                extra.extend_from_slice(&e.size.to_le_bytes());
                extra.extend_from_slice(&e.size.to_le_bytes());
            }
            if off64 {
                extra.extend_from_slice(&e.offset.to_le_bytes());
            }
            let version: u16 = if extra.is_empty() { 20 } else { 45 };
            let size32 = if size64 {
                U32_FULL as u32
            } else {
                e.size as u32
            };
            let off32 = if off64 {
                U32_FULL as u32
            } else {
                e.offset as u32
            };
            cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            cd.extend_from_slice(&version.to_le_bytes()); // made by
            cd.extend_from_slice(&version.to_le_bytes()); // needed
            cd.extend_from_slice(&0u16.to_le_bytes()); // flags
            cd.extend_from_slice(&0u16.to_le_bytes()); // method
            cd.extend_from_slice(&0u16.to_le_bytes()); // time
            cd.extend_from_slice(&DOS_DATE_1980_01_01.to_le_bytes());
            cd.extend_from_slice(&e.crc.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            let extra_len = if extra.is_empty() { 0 } else { 4 + extra.len() };
            cd.extend_from_slice(&(extra_len as u16).to_le_bytes());
            cd.extend_from_slice(&[0u8; 10]); // comment len, disk, int attr, ext attr (4)
            cd.extend_from_slice(&off32.to_le_bytes());
            cd.extend_from_slice(e.name.as_bytes());
            if !extra.is_empty() {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                cd.extend_from_slice(&extra);
            }
        }
        let n = self.entries.len() as u64;
        let cd_size = cd.len() as u64;
        let eocd64 = n >= 0xFFFF || cd_size >= big || cd_start >= big;
        if eocd64 {
            let rec_at = cd_start + cd_size;
            cd.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            cd.extend_from_slice(&44u64.to_le_bytes());
            cd.extend_from_slice(&45u16.to_le_bytes());
            cd.extend_from_slice(&45u16.to_le_bytes());
            cd.extend_from_slice(&[0u8; 8]); // this disk, disk with the central directory
            cd.extend_from_slice(&n.to_le_bytes());
            cd.extend_from_slice(&n.to_le_bytes());
            cd.extend_from_slice(&cd_size.to_le_bytes());
            cd.extend_from_slice(&cd_start.to_le_bytes());
            cd.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes());
            cd.extend_from_slice(&rec_at.to_le_bytes());
            cd.extend_from_slice(&1u32.to_le_bytes());
        }
        let n16 = if eocd64 { 0xFFFF } else { n as u16 };
        let sat = |v: u64| if eocd64 { U32_FULL as u32 } else { v as u32 };
        cd.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        cd.extend_from_slice(&[0u8; 4]); // disk numbers
        cd.extend_from_slice(&n16.to_le_bytes());
        cd.extend_from_slice(&n16.to_le_bytes());
        cd.extend_from_slice(&sat(cd_size).to_le_bytes());
        cd.extend_from_slice(&sat(cd_start).to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        let path = self.path.clone();
        let io = |source| PostError::Io {
            path: path.clone(),
            source,
        };
        self.out.write_all(&cd).map_err(io)?;
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        Ok(())
    }
}

/// Writes `confidence_maps.npz`: one `[H, W]` array `class_k` per class from a `[C, H, W]` f32
/// buffer, encoded as `encoding` says.
pub fn write_confidence_maps(
    path: &Path,
    confidence: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    encoding: ConfidenceEncoding,
) -> Result<()> {
    let n = width_px * height_px;
    if num_classes == 0 || confidence.len() != num_classes * n || n == 0 {
        return invalid(format!(
            "{}: confidence has {} values, expected num_classes*H*W = {num_classes}*{height_px}*{width_px}",
            path.display(),
            confidence.len()
        ));
    }
    let mut w = NpzWriter::create(path)?;
    for k in 0..num_classes {
        let slice = &confidence[k * n..(k + 1) * n];
        let key = format!("class_{k}");
        match encoding {
            ConfidenceEncoding::Float16 => w.add_f16(&key, &[height_px, width_px], slice)?,
            ConfidenceEncoding::U8 => {
                let q: Vec<u8> = slice.iter().map(|&p| quantize_u8(p)).collect();
                w.add_u8(&key, &[height_px, width_px], &q)?
            }
        }
    }
    w.finish()
}

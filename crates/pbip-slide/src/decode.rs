//! Decoding of one TIFF chunk (tile or strip) into RGB8.

use std::io::Read;
use std::path::Path;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::{Result, fmt_err, unsup_err};

/// TIFF compression codes this crate knows about.
pub(crate) mod comp {
    pub const NONE: u16 = 1;
    pub const LZW: u16 = 5;
    pub const OJPEG: u16 = 6;
    pub const JPEG: u16 = 7;
    pub const ADOBE_DEFLATE: u16 = 8;
    pub const PACKBITS: u16 = 32773;
    pub const DEFLATE: u16 = 32946;
    pub const APERIO_J2K_YCBCR: u16 = 33003;
    pub const APERIO_J2K_RGB: u16 = 33005;
    pub const JPEG2000: u16 = 34712;
}

/// Human-readable name of a TIFF compression code.
pub(crate) fn compression_name(c: u16) -> String {
    match c {
        comp::NONE => "none".into(),
        comp::LZW => "lzw".into(),
        comp::OJPEG => "old-jpeg".into(),
        comp::JPEG => "jpeg".into(),
        comp::ADOBE_DEFLATE | comp::DEFLATE => "deflate".into(),
        comp::PACKBITS => "packbits".into(),
        comp::APERIO_J2K_YCBCR => "jpeg2000-ycbcr (aperio 33003)".into(),
        comp::APERIO_J2K_RGB => "jpeg2000-rgb (aperio 33005)".into(),
        comp::JPEG2000 => "jpeg2000".into(),
        other => format!("unknown ({other})"),
    }
}

/// Pixel format of the chunks of one TIFF image.
#[derive(Debug, Clone)]
pub(crate) struct ChunkFormat {
    pub compression: u16,
    pub photometric: u16,
    pub samples_per_pixel: u16,
    pub bits_per_sample: u16,
    pub predictor: u16,
    pub planar: u16,
    pub jpeg_tables: Option<Vec<u8>>,
}

impl ChunkFormat {
    /// Reject formats we cannot decode, with a message naming what is wrong.
    pub(crate) fn check_supported(&self, path: &Path) -> Result<()> {
        match self.compression {
            comp::APERIO_J2K_YCBCR | comp::APERIO_J2K_RGB | comp::JPEG2000 => {
                return Err(unsup_err(
                    path,
                    format!(
                        "unsupported compression {} in the pure-Rust backend, install OpenSlide \
                         (libopenslide0) and use --backend openslide/auto",
                        compression_name(self.compression)
                    ),
                ));
            }
            comp::NONE
            | comp::LZW
            | comp::JPEG
            | comp::ADOBE_DEFLATE
            | comp::DEFLATE
            | comp::PACKBITS => {}
            other => {
                return Err(unsup_err(
                    path,
                    format!(
                        "unsupported compression {} in the pure-Rust backend, install OpenSlide \
                         (libopenslide0) and use --backend openslide/auto",
                        compression_name(other)
                    ),
                ));
            }
        }
        if self.compression == comp::JPEG {
            if !matches!(self.photometric, 0 | 1 | 2 | 6) {
                return Err(unsup_err(
                    path,
                    format!("JPEG with photometric {}", self.photometric),
                ));
            }
            return Ok(());
        }
        if self.bits_per_sample != 8 {
            return Err(unsup_err(
                path,
                format!(
                    "{} bits per sample (only 8 supported)",
                    self.bits_per_sample
                ),
            ));
        }
        if self.planar != 1 && self.samples_per_pixel > 1 {
            return Err(unsup_err(path, "planar configuration 2 (separate planes)"));
        }
        match (self.photometric, self.samples_per_pixel) {
            (0 | 1, 1..) => {}
            (2, 3..) => {}
            (p, s) => {
                return Err(unsup_err(
                    path,
                    format!("photometric {p} with {s} samples per pixel"),
                ));
            }
        }
        if !matches!(self.predictor, 1 | 2) {
            return Err(unsup_err(path, format!("predictor {}", self.predictor)));
        }
        Ok(())
    }
}

/// A rectangle of pixels of a chunk: columns `x0..x1`, rows `y0..y1` (chunk coordinates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Window {
    /// The whole of a `w` x `h` chunk.
    pub(crate) fn full(w: usize, h: usize) -> Self {
        Self {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        }
    }

    /// Whether every pixel of `other` lies in `self` (an empty `other` lies anywhere).
    pub(crate) fn contains(&self, other: &Window) -> bool {
        other.x0 >= other.x1
            || other.y0 >= other.y1
            || (other.x0 >= self.x0
                && other.x1 <= self.x1
                && other.y0 >= self.y0
                && other.y1 <= self.y1)
    }

    /// Number of pixels.
    pub(crate) fn pixels(&self) -> usize {
        self.x1.saturating_sub(self.x0) * self.y1.saturating_sub(self.y0)
    }

    /// `self` clipped to a `w` x `h` chunk.
    fn clip(&self, w: usize, h: usize) -> Self {
        Self {
            x0: self.x0.min(w),
            y0: self.y0.min(h),
            x1: self.x1.min(w),
            y1: self.y1.min(h),
        }
    }
}

/// The size of one chunk and how much of it a decode must produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkDims {
    /// Width, px.
    pub w: usize,
    /// Height, px (a last strip may have fewer rows than the others).
    pub h: usize,
    /// The pixels needed ([`Window::full`]: the whole chunk).
    pub need: Window,
    /// The largest JPEG the chunk may hold (the full tile/strip size; a last strip's JPEG may
    /// be taller than its `h` rows).
    pub jpeg_max: (usize, usize),
}

/// Decode one compressed chunk of `dims.w` x `dims.h` pixels into `out` (RGB8, `w*h*3` bytes);
/// returns the pixels that are decoded (they contain `dims.need`, clipped to the chunk).
///
/// JPEG headers larger than `dims.jpeg_max` are corrupt and refused before anything is
/// allocated. Pixels the chunk does not cover (a JPEG smaller than the chunk) are white.
///
/// With a `need` smaller than the chunk, a baseline JPEG chunk is decoded down to the MCU row
/// of the last needed row (one more when the chroma upsampling of that row needs it) and stops
/// there, and of the rows before, only the needed pixels
/// are transformed and colour-converted (every block is still entropy-decoded): only the
/// pixels of the window returned are valid (each equal to the same pixel of a whole decode),
/// the others are unspecified. Other chunks are always decoded whole.
pub(crate) fn decode_chunk(
    path: &Path,
    fmt: &ChunkFormat,
    raw: &[u8],
    dims: ChunkDims,
    out: &mut [u8],
) -> Result<Window> {
    let ChunkDims { w, h, .. } = dims;
    let npx = w
        .checked_mul(h)
        .ok_or_else(|| fmt_err(path, "chunk size overflows"))?;
    if out.len() != npx * 3 {
        return Err(fmt_err(path, "internal: wrong chunk buffer size"));
    }
    if fmt.compression == comp::JPEG {
        // Photometric RGB: the JPEG components are already R,G,B -> no colour conversion.
        let stream = jpeg_stream(path, fmt.jpeg_tables.as_deref(), raw)?;
        return decode_jpeg_chunk(path, stream, fmt.photometric == 2, dims, out);
    }
    let spp = usize::from(fmt.samples_per_pixel);
    let expected = npx
        .checked_mul(spp)
        .ok_or_else(|| fmt_err(path, "chunk size overflows"))?;
    if spp == 3 {
        decompress(path, fmt.compression, raw, out)?;
        if fmt.predictor == 2 {
            undo_predictor(out, w, spp);
        }
        return Ok(Window::full(w, h));
    }
    let mut tmp = vec![0u8; expected];
    decompress(path, fmt.compression, raw, &mut tmp)?;
    if fmt.predictor == 2 {
        undo_predictor(&mut tmp, w, spp);
    }
    let invert = fmt.photometric == 0;
    let gray = fmt.photometric <= 1;
    for (px, dst) in tmp.chunks_exact(spp).zip(out.chunks_exact_mut(3)) {
        if gray {
            let v = if invert { 255 - px[0] } else { px[0] };
            dst.copy_from_slice(&[v, v, v]);
        } else {
            dst.copy_from_slice(&px[..3]);
        }
    }
    Ok(Window::full(w, h))
}

/// Undo TIFF horizontal differencing (predictor 2) for 8-bit samples.
fn undo_predictor(samples: &mut [u8], w: usize, spp: usize) {
    if w == 0 {
        return;
    }
    for row in samples.chunks_exact_mut(w * spp) {
        for i in spp..row.len() {
            row[i] = row[i].wrapping_add(row[i - spp]);
        }
    }
}

/// Decompress `raw` into exactly `dst.len()` bytes.
fn decompress(path: &Path, compression: u16, raw: &[u8], dst: &mut [u8]) -> Result<()> {
    let n = dst.len();
    match compression {
        comp::NONE => {
            if raw.len() < n {
                return Err(fmt_err(
                    path,
                    format!("uncompressed chunk has {} bytes, expected {n}", raw.len()),
                ));
            }
            dst.copy_from_slice(&raw[..n]);
        }
        comp::ADOBE_DEFLATE | comp::DEFLATE => {
            let mut d = flate2::read::ZlibDecoder::new(raw);
            let mut got = 0;
            while got < n {
                match d.read(&mut dst[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => return Err(fmt_err(path, format!("corrupt deflate chunk: {e}"))),
                }
            }
            if got < n {
                return Err(fmt_err(
                    path,
                    format!("deflate chunk decodes to {got} bytes, expected {n}"),
                ));
            }
            // Read to the end of the zlib stream so that its Adler-32 checksum is verified:
            // corrupt data must be an error, not wrong pixels. Trailing data beyond the chunk
            // (some writers pad) is drained, up to the chunk size.
            let mut scratch = [0u8; 1024];
            let mut extra = 0usize;
            loop {
                match d.read(&mut scratch) {
                    Ok(0) => break,
                    Ok(k) => {
                        extra += k;
                        if extra > n {
                            return Err(fmt_err(
                                path,
                                format!(
                                    "deflate chunk decodes to more than {} bytes, expected {n}",
                                    n + extra
                                ),
                            ));
                        }
                    }
                    Err(e) => return Err(fmt_err(path, format!("corrupt deflate chunk: {e}"))),
                }
            }
        }
        comp::LZW => {
            let mut d = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
            let mut got = 0;
            let mut input = raw;
            loop {
                let r = d.decode_bytes(input, &mut dst[got..]);
                got += r.consumed_out;
                input = &input[r.consumed_in..];
                match r.status {
                    Ok(weezl::LzwStatus::Ok) => {
                        if got >= n || (r.consumed_in == 0 && r.consumed_out == 0) {
                            break;
                        }
                    }
                    Ok(weezl::LzwStatus::Done) | Ok(weezl::LzwStatus::NoProgress) => break,
                    Err(e) => return Err(fmt_err(path, format!("corrupt LZW chunk: {e}"))),
                }
            }
            if got < n {
                return Err(fmt_err(
                    path,
                    format!("LZW chunk decodes to {got} bytes, expected {n}"),
                ));
            }
        }
        comp::PACKBITS => {
            let mut i = 0;
            let mut got = 0;
            while got < n && i < raw.len() {
                let c = raw[i] as i8;
                i += 1;
                if c >= 0 {
                    let k = c as usize + 1;
                    let k = k.min(n - got);
                    if i + k > raw.len() {
                        return Err(fmt_err(path, "truncated PackBits chunk"));
                    }
                    dst[got..got + k].copy_from_slice(&raw[i..i + k]);
                    i += k;
                    got += k;
                } else if c != -128 {
                    let k = (1 - c as isize) as usize;
                    let k = k.min(n - got);
                    let Some(&v) = raw.get(i) else {
                        return Err(fmt_err(path, "truncated PackBits chunk"));
                    };
                    i += 1;
                    dst[got..got + k].fill(v);
                    got += k;
                }
            }
            if got < n {
                return Err(fmt_err(
                    path,
                    format!("PackBits chunk decodes to {got} bytes, expected {n}"),
                ));
            }
        }
        other => {
            return Err(unsup_err(
                path,
                format!("unsupported compression {}", compression_name(other)),
            ));
        }
    }
    Ok(())
}

/// Build the JPEG stream of a TIFF chunk, merging JPEGTables when present.
fn jpeg_stream<'a>(
    path: &Path,
    tables: Option<&[u8]>,
    raw: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>> {
    match tables {
        Some(t) if t.len() >= 4 => {
            if t[0] != 0xFF || t[1] != 0xD8 {
                return Err(fmt_err(path, "JPEGTables does not start with SOI"));
            }
            let tbl = if t[t.len() - 2] == 0xFF && t[t.len() - 1] == 0xD9 {
                &t[..t.len() - 2]
            } else {
                t
            };
            let body = if raw.len() >= 2 && raw[0] == 0xFF && raw[1] == 0xD8 {
                &raw[2..]
            } else {
                raw
            };
            let mut v = Vec::with_capacity(tbl.len() + body.len());
            v.extend_from_slice(tbl);
            v.extend_from_slice(body);
            Ok(std::borrow::Cow::Owned(v))
        }
        _ => Ok(std::borrow::Cow::Borrowed(raw)),
    }
}

/// For a baseline or extended-sequential JPEG (SOF0/SOF1): the byte position of the frame
/// height and the MCU height in pixels. `None` for anything else (progressive, lossless,
/// malformed), which is then decoded whole.
fn sof_height_field(stream: &[u8]) -> Option<(usize, usize)> {
    if stream.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut i = 2;
    loop {
        if *stream.get(i)? != 0xFF {
            return None;
        }
        let mut m = *stream.get(i + 1)?;
        while m == 0xFF {
            i += 1;
            m = *stream.get(i + 1)?;
        }
        match m {
            0xC0 | 0xC1 => {
                // FF Cx, length (2), precision (1), height (2), width (2), Nf (1), Nf x (id, HV, Tq)
                let nf = usize::from(*stream.get(i + 9)?);
                let mut vmax = 1;
                for c in 0..nf {
                    vmax = vmax.max(usize::from(*stream.get(i + 10 + 3 * c + 1)? & 0x0F));
                }
                return Some((i + 5, 8 * vmax));
            }
            0x01 | 0xD0..=0xD8 => i += 2,
            // Other frame types, SOS or EOI before a frame header: decode whole.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xD9 | 0xDA => return None,
            _ => {
                let len = usize::from(u16::from_be_bytes([
                    *stream.get(i + 2)?,
                    *stream.get(i + 3)?,
                ]));
                if len < 2 {
                    return None;
                }
                i += 2 + len;
            }
        }
    }
}

/// [`decode_chunk`] of a JPEG chunk whose stream (tables merged) is `stream`.
fn decode_jpeg_chunk(
    path: &Path,
    mut stream: std::borrow::Cow<'_, [u8]>,
    components_are_rgb: bool,
    dims: ChunkDims,
    out: &mut [u8],
) -> Result<Window> {
    let ChunkDims {
        w,
        h,
        need,
        jpeg_max,
    } = dims;
    let need = need.clip(w, h);
    let need_rows = need.y1;
    // Partial decode: rewrite the frame height so that the decoder stops after the MCU row of
    // the last needed row; the rest of the entropy-coded data is never touched. Rows of that
    // MCU row equal a full decode's, except, with vertically subsampled chroma (MCUs 16 rows
    // tall), its last row, whose chroma neighbour below lies in the next MCU row: when that row
    // is needed, one more MCU row is decoded (the fancy upsampling then sees the same context
    // as in a full decode). Taller MCUs always get the extra row.
    let mut valid_rows = h;
    if need_rows < h
        && let Some((pos, mcu_h)) = sof_height_field(&stream)
    {
        let jh = usize::from(u16::from_be_bytes([stream[pos], stream[pos + 1]]));
        let rows_mcu = need_rows.div_ceil(mcu_h) * mcu_h;
        let (new_h, exact_rows) = match mcu_h {
            8 => (rows_mcu, rows_mcu),
            16 if need_rows < rows_mcu => (rows_mcu, rows_mcu - 1),
            _ => (rows_mcu + mcu_h, rows_mcu),
        };
        if jh >= h && new_h < jh {
            stream.to_mut()[pos..pos + 2].copy_from_slice(&(new_h as u16).to_be_bytes());
            valid_rows = exact_rows;
        }
    }
    let cut = valid_rows < h;
    // Of the rows decoded, only the needed columns and rows are transformed (crop hint).
    let crop = need.x0 > 0 || need.x1 < w || need.y0 > 0;
    let (jw, jh, comps, data) = decode_jpeg(
        path,
        &stream,
        components_are_rgb,
        jpeg_max,
        Some((w, h, &mut *out)),
        crop.then_some(need),
    )?;
    match data {
        Some(data) => {
            if jw < w || jh < h {
                out.fill(255);
            }
            copy_into_rgb(&data, jw, jh, comps, w, h, out);
        }
        None if jh < h && !cut => out[jw * jh * 3..].fill(255),
        None => {}
    }
    Ok(if crop {
        need
    } else {
        Window::full(w, valid_rows)
    })
}

/// Decode a JPEG stream to RGB (or gray). If `direct` (w, h, buffer of w x h RGB) is given and
/// the JPEG is `w` wide, at most `h` tall and has three output components, decode straight into
/// the first rows of the buffer and return `None` as data. With a `crop` window, only its
/// pixels are guaranteed (see [`JpegDecoder::set_crop_hint`]).
///
/// The decoder runs in strict mode: truncated entropy data, stray markers and other
/// non-conformance are errors (the lenient default would silently fill the rest of the image
/// with grey). JPEGs larger than `max` (width, height) are refused from their header.
pub(crate) fn decode_jpeg(
    path: &Path,
    stream: &[u8],
    components_are_rgb: bool,
    max: (usize, usize),
    direct: Option<(usize, usize, &mut [u8])>,
    crop: Option<Window>,
) -> Result<(usize, usize, usize, Option<Vec<u8>>)> {
    let opts = DecoderOptions::default()
        .set_max_width(max.0.clamp(1, 1 << 16))
        .set_max_height(max.1.clamp(1, 1 << 16))
        .set_strict_mode(true);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(stream), opts);
    dec.decode_headers()
        .map_err(|e| fmt_err(path, format!("corrupt JPEG data: {e:?}")))?;
    let input = dec.input_colorspace().unwrap_or(ColorSpace::YCbCr);
    let out_cs = match input {
        ColorSpace::Luma => ColorSpace::Luma,
        ColorSpace::YCbCr if components_are_rgb => ColorSpace::YCbCr, // identity: no conversion
        ColorSpace::YCbCr | ColorSpace::RGB => ColorSpace::RGB,
        other => return Err(unsup_err(path, format!("JPEG colour space {other:?}"))),
    };
    dec.set_options(opts.jpeg_set_out_colorspace(out_cs));
    if let Some(c) = crop {
        dec.set_crop_hint(c.x0, c.y0, c.x1, c.y1);
    }
    let (jw, jh) = dec
        .dimensions()
        .ok_or_else(|| fmt_err(path, "JPEG without dimensions"))?;
    let comps = out_cs.num_components();
    let need = jw
        .checked_mul(jh)
        .and_then(|v| v.checked_mul(comps))
        .filter(|&v| v <= crate::MAX_DECODE_BYTES)
        .ok_or_else(|| {
            fmt_err(
                path,
                format!("JPEG of {jw}x{jh} pixels is too large to decode"),
            )
        })?;
    if let Some((w, h, buf)) = direct
        && w == jw
        && jh <= h
        && comps == 3
        && buf.len() == w * h * 3
    {
        dec.decode_into(&mut buf[..need])
            .map_err(|e| fmt_err(path, format!("corrupt JPEG data: {e:?}")))?;
        return Ok((jw, jh, comps, None));
    }
    let mut v = vec![0u8; need];
    dec.decode_into(&mut v)
        .map_err(|e| fmt_err(path, format!("corrupt JPEG data: {e:?}")))?;
    Ok((jw, jh, comps, Some(v)))
}

/// Copy a decoded `jw` x `jh` image with `comps` components into an RGB `w` x `h` buffer.
pub(crate) fn copy_into_rgb(
    src: &[u8],
    jw: usize,
    jh: usize,
    comps: usize,
    w: usize,
    h: usize,
    out: &mut [u8],
) {
    let cw = jw.min(w);
    for y in 0..jh.min(h) {
        let srow = &src[y * jw * comps..][..cw * comps];
        let drow = &mut out[y * w * 3..][..cw * 3];
        if comps == 3 {
            drow.copy_from_slice(srow);
        } else {
            for (d, s) in drow.chunks_exact_mut(3).zip(srow.chunks_exact(comps)) {
                if comps >= 3 {
                    d.copy_from_slice(&s[..3]);
                } else {
                    d.fill(s[0]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(
        w: u16,
        h: u16,
        sampling: jpeg_encoder::SamplingFactor,
        rgb_components: bool,
    ) -> (Vec<u8>, Vec<u8>) {
        jpeg_with_restarts(w, h, sampling, rgb_components, 0)
    }

    /// A JPEG with a restart marker every `restart_mcus` MCUs (0: none).
    fn jpeg_with_restarts(
        w: u16,
        h: u16,
        sampling: jpeg_encoder::SamplingFactor,
        rgb_components: bool,
        restart_mcus: u16,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut px = Vec::with_capacity(usize::from(w) * usize::from(h) * 3);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (f32::from(x), f32::from(y));
                px.push((128.0 + 100.0 * (fx * 0.13).sin() * (fy * 0.07).cos()) as u8);
                px.push((128.0 + 90.0 * (fx * 0.05 - fy * 0.11).sin()) as u8);
                px.push(((x * 7 + y * 13) % 256) as u8);
            }
        }
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_sampling_factor(sampling);
        if restart_mcus > 0 {
            enc.set_restart_interval(restart_mcus);
        }
        let ct = if rgb_components {
            jpeg_encoder::ColorType::Ycbcr
        } else {
            jpeg_encoder::ColorType::Rgb
        };
        enc.encode(&px, w, h, ct).expect("encode");
        (out, px)
    }

    fn dims(w: usize, h: usize, need_rows: usize) -> ChunkDims {
        ChunkDims {
            w,
            h,
            need: Window::full(w, need_rows),
            jpeg_max: (w, h),
        }
    }

    fn fmt(photometric: u16) -> ChunkFormat {
        ChunkFormat {
            compression: comp::JPEG,
            photometric,
            samples_per_pixel: 3,
            bits_per_sample: 8,
            predictor: 1,
            planar: 1,
            jpeg_tables: None,
        }
    }

    #[test]
    fn partial_jpeg_decode_matches_full_decode_in_needed_rows() {
        let path = Path::new("test.jpg");
        let (w, h) = (96usize, 80usize);
        for (sampling, rgb, photometric) in [
            (jpeg_encoder::SamplingFactor::F_2_2, false, 6),
            (jpeg_encoder::SamplingFactor::F_2_1, false, 6),
            (jpeg_encoder::SamplingFactor::F_1_2, false, 6),
            (jpeg_encoder::SamplingFactor::F_1_1, true, 2),
        ] {
            let (j, _) = jpeg(w as u16, h as u16, sampling, rgb);
            assert!(
                sof_height_field(&j).is_some(),
                "{sampling:?}: SOF0 not found"
            );
            let f = fmt(photometric);
            let mut full = vec![0u8; w * h * 3];
            let all = decode_chunk(path, &f, &j, dims(w, h, h), &mut full).expect("full decode");
            assert_eq!(all, Window::full(w, h));
            for need in 1..h {
                let mut part = vec![7u8; w * h * 3];
                let valid = decode_chunk(path, &f, &j, dims(w, h, need), &mut part)
                    .expect("partial decode");
                assert_eq!((valid.x0, valid.y0, valid.x1), (0, 0, w));
                let rows = valid.y1;
                assert!(
                    (need..=h).contains(&rows),
                    "{sampling:?}: {rows} rows for {need}"
                );
                assert_eq!(
                    part[..rows * w * 3],
                    full[..rows * w * 3],
                    "{sampling:?}: rows 0..{rows} (for {need}) differ"
                );
            }
        }
    }

    #[test]
    fn cropped_jpeg_decode_matches_full_decode_in_its_window() {
        let path = Path::new("test.jpg");
        let (w, h) = (200usize, 120usize);
        for (sampling, rgb, photometric, restarts) in [
            (jpeg_encoder::SamplingFactor::F_2_2, false, 6, 0),
            (jpeg_encoder::SamplingFactor::F_2_2, false, 6, 5),
            (jpeg_encoder::SamplingFactor::F_2_1, false, 6, 0),
            (jpeg_encoder::SamplingFactor::F_1_2, false, 6, 0),
            (jpeg_encoder::SamplingFactor::F_1_1, false, 6, 0),
            (jpeg_encoder::SamplingFactor::F_1_1, false, 6, 7),
            (jpeg_encoder::SamplingFactor::F_1_1, true, 2, 0),
        ] {
            let (j, _) = jpeg_with_restarts(w as u16, h as u16, sampling, rgb, restarts);
            let has_dri = j.windows(2).any(|m| m == [0xFF, 0xDD]);
            assert_eq!(has_dri, restarts > 0, "{sampling:?}: restart interval");
            let f = fmt(photometric);
            let mut full = vec![0u8; w * h * 3];
            decode_chunk(path, &f, &j, dims(w, h, h), &mut full).expect("full decode");
            // Windows touching every edge, corners, thin strips, one pixel, MCU boundaries.
            let mut windows = vec![
                Window {
                    x0: 0,
                    y0: 0,
                    x1: 1,
                    y1: 1,
                },
                Window {
                    x0: w - 1,
                    y0: h - 1,
                    x1: w,
                    y1: h,
                },
                Window {
                    x0: 17,
                    y0: 0,
                    x1: w,
                    y1: 3,
                },
                Window {
                    x0: 0,
                    y0: 31,
                    x1: 5,
                    y1: h,
                },
                Window {
                    x0: 16,
                    y0: 16,
                    x1: 32,
                    y1: 32,
                },
                Window {
                    x0: 15,
                    y0: 15,
                    x1: 33,
                    y1: 33,
                },
                Window {
                    x0: 100,
                    y0: 60,
                    x1: w,
                    y1: h,
                },
                Window {
                    x0: 0,
                    y0: 60,
                    x1: 100,
                    y1: h,
                },
                Window {
                    x0: 100,
                    y0: 0,
                    x1: w,
                    y1: 60,
                },
            ];
            let mut s = 0x9E37_79B9u64;
            for _ in 0..40 {
                let mut r = |m: usize| {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((s >> 33) as usize) % m
                };
                let (x0, y0) = (r(w), r(h));
                let (x1, y1) = (x0 + 1 + r(w - x0), y0 + 1 + r(h - y0));
                windows.push(Window { x0, y0, x1, y1 });
            }
            let mut untouched = 0;
            for need in windows {
                let mut part = vec![7u8; w * h * 3];
                let d = ChunkDims {
                    w,
                    h,
                    need,
                    jpeg_max: (w, h),
                };
                let valid = decode_chunk(path, &f, &j, d, &mut part).expect("cropped decode");
                assert!(
                    valid.contains(&need),
                    "{sampling:?} rst {restarts}: {valid:?} for {need:?}"
                );
                for y in valid.y0..valid.y1 {
                    let row = (y * w + valid.x0) * 3..(y * w + valid.x1) * 3;
                    assert_eq!(
                        part[row.clone()],
                        full[row],
                        "{sampling:?} rst {restarts}: row {y} of {valid:?} (for {need:?}) differs"
                    );
                }
                // The crop is applied: the top-left pixel lies outside most windows and is
                // then not written at all.
                untouched += usize::from(part[..3] == [7, 7, 7]);
            }
            assert!(
                untouched > 30,
                "{sampling:?} rst {restarts}: crop not applied ({untouched})"
            );
        }
    }

    #[test]
    fn truncated_jpeg_is_an_error_in_full_and_partial_decodes() {
        let path = Path::new("test.jpg");
        let (w, h) = (96usize, 80usize);
        let (j, _) = jpeg(
            w as u16,
            h as u16,
            jpeg_encoder::SamplingFactor::F_2_2,
            false,
        );
        let cut = &j[..j.len() * 2 / 3];
        let mut out = vec![0u8; w * h * 3];
        assert!(decode_chunk(path, &fmt(6), cut, dims(w, h, h), &mut out).is_err());
        // The cut lies in the lower third of the image: rows it still covers decode, rows it
        // does not are an error.
        assert!(decode_chunk(path, &fmt(6), cut, dims(w, h, 8), &mut out).is_ok());
        assert!(decode_chunk(path, &fmt(6), cut, dims(w, h, h - 1), &mut out).is_err());
    }

    #[test]
    fn jpeg_larger_than_the_chunk_is_refused() {
        let path = Path::new("test.jpg");
        let (j, _) = jpeg(96, 80, jpeg_encoder::SamplingFactor::F_2_2, false);
        let mut out = vec![0u8; 64 * 64 * 3];
        let e = decode_chunk(path, &fmt(6), &j, dims(64, 64, 64), &mut out).expect_err("too large");
        assert!(e.to_string().contains("test.jpg"), "{e}");
    }

    #[test]
    fn corrupt_deflate_is_an_error() {
        let path = Path::new("t.tif");
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, &data).unwrap();
        let mut z = e.finish().unwrap();
        let mut out = vec![0u8; 300];
        decompress(path, comp::ADOBE_DEFLATE, &z, &mut out).expect("valid stream");
        assert_eq!(out, data);
        let n = z.len();
        z[n - 1] ^= 1; // Adler-32 checksum
        assert!(
            decompress(path, comp::ADOBE_DEFLATE, &z, &mut out).is_err(),
            "checksum not verified"
        );
    }
}

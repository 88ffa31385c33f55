//! PNG and JPEG files opened as single-level slides (decoded once at open).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::decode::{copy_into_rgb, decode_jpeg};
use crate::error::{Result, fmt_err, io_err};
use crate::{MAX_DECODE_BYTES, RgbImage};

/// Decode a PNG file to RGB8 (gray is replicated, alpha is dropped, 16-bit is reduced to 8).
pub(crate) fn read_png(path: &Path) -> Result<RgbImage> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut dec = png::Decoder::new_with_limits(
        BufReader::new(f),
        png::Limits {
            bytes: MAX_DECODE_BYTES,
        },
    );
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec
        .read_info()
        .map_err(|e| fmt_err(path, format!("corrupt PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .filter(|&s| s <= MAX_DECODE_BYTES)
        .ok_or_else(|| fmt_err(path, "PNG is too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| fmt_err(path, format!("corrupt PNG: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let comps = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(fmt_err(path, "indexed PNG was not expanded")),
    };
    let line = info.line_size;
    let mut data = vec![0u8; w * h * 3];
    for y in 0..h {
        let src = &buf[y * line..y * line + w * comps];
        let dst = &mut data[y * w * 3..(y + 1) * w * 3];
        for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(comps)) {
            if comps >= 3 {
                d.copy_from_slice(&s[..3]);
            } else {
                d.fill(s[0]);
            }
        }
    }
    Ok(RgbImage {
        width: info.width,
        height: info.height,
        data,
    })
}

/// Decode a JPEG file to RGB8.
pub(crate) fn read_jpeg(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (w, h, comps, data) = decode_jpeg(path, &bytes, false, (1 << 16, 1 << 16), None, None)?;
    let data = data.ok_or_else(|| fmt_err(path, "internal: JPEG decode returned no data"))?;
    let mut out = vec![0u8; w * h * 3];
    copy_into_rgb(&data, w, h, comps, w, h, &mut out);
    Ok(RgbImage {
        width: w as u32,
        height: h as u32,
        data: out,
    })
}

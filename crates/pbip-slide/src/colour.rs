//! Colour spaces of region reads: RGB, or the YCbCr of JPEG (JFIF: ITU-R BT.601 full range,
//! chroma centred on 128), and the conversions between them.
//!
//! A YCbCr read exists for consumers that encode JPEG: a slide whose tiles are YCbCr JPEGs can
//! then be decoded without converting to RGB and re-encoded without converting back.

use serde::Serialize;

/// The colour space of the pixels of a region read (3 bytes per pixel either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum ColourSpace {
    /// R, G, B (default).
    #[default]
    Rgb,
    /// Y, Cb, Cr as in JPEG/JFIF (BT.601 full range, chroma centred on 128).
    YCbCr,
}

/// Fixed-point (16 fractional bits) JFIF coefficients.
const FIX: i32 = 1 << 16;
const HALF: i32 = 1 << 15;

/// The YCbCr of one RGB pixel (JFIF, rounded to nearest).
pub fn rgb_to_ycbcr_px(rgb: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (i32::from(rgb[0]), i32::from(rgb[1]), i32::from(rgb[2]));
    // 0.299, 0.587, 0.114; 0.168736, 0.331264, 0.5; 0.5, 0.418688, 0.081312 (x 65536).
    let y = (19595 * r + 38470 * g + 7471 * b + HALF) >> 16;
    let cb = (-11059 * r - 21709 * g + 32768 * b + 128 * FIX + HALF) >> 16;
    let cr = (32768 * r - 27439 * g - 5329 * b + 128 * FIX + HALF) >> 16;
    [clamp(y), clamp(cb), clamp(cr)]
}

/// The RGB of one YCbCr pixel (JFIF, rounded to nearest).
pub fn ycbcr_to_rgb_px(ycc: [u8; 3]) -> [u8; 3] {
    let y = i32::from(ycc[0]) * FIX + HALF;
    let (cb, cr) = (i32::from(ycc[1]) - 128, i32::from(ycc[2]) - 128);
    // 1.402; 0.344136, 0.714136; 1.772 (x 65536).
    let r = (y + 91881 * cr) >> 16;
    let g = (y - 22554 * cb - 46802 * cr) >> 16;
    let b = (y + 116130 * cb) >> 16;
    [clamp(r), clamp(g), clamp(b)]
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Convert interleaved RGB pixels to YCbCr in place.
pub fn rgb_to_ycbcr_in_place(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let c = rgb_to_ycbcr_px([p[0], p[1], p[2]]);
        p.copy_from_slice(&c);
    }
}

/// Convert interleaved YCbCr pixels to RGB in place.
pub fn ycbcr_to_rgb_in_place(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let c = ycbcr_to_rgb_px([p[0], p[1], p[2]]);
        p.copy_from_slice(&c);
    }
}

/// `rgb` expressed in `space`.
pub(crate) fn in_space(rgb: [u8; 3], space: ColourSpace) -> [u8; 3] {
    match space {
        ColourSpace::Rgb => rgb,
        ColourSpace::YCbCr => rgb_to_ycbcr_px(rgb),
    }
}

/// Fill interleaved pixels with one colour.
pub(crate) fn fill_px(buf: &mut [u8], c: [u8; 3]) {
    if c[0] == c[1] && c[1] == c[2] {
        buf.fill(c[0]);
    } else {
        for p in buf.chunks_exact_mut(3) {
            p.copy_from_slice(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_primaries_convert_as_jfif() {
        for v in [0u8, 1, 77, 128, 200, 255] {
            assert_eq!(rgb_to_ycbcr_px([v, v, v]), [v, 128, 128]);
            assert_eq!(ycbcr_to_rgb_px([v, 128, 128]), [v, v, v]);
        }
        // JFIF: Y = 0.299 R + 0.587 G + 0.114 B, Cb = 128 + 0.5 B - ..., Cr = 128 + 0.5 R - ...
        assert_eq!(rgb_to_ycbcr_px([255, 0, 0]), [76, 85, 255]);
        assert_eq!(rgb_to_ycbcr_px([0, 255, 0]), [150, 44, 21]);
        assert_eq!(rgb_to_ycbcr_px([0, 0, 255]), [29, 255, 107]);
    }

    #[test]
    fn round_trip_is_within_two_levels_on_a_grid_of_colours() {
        let mut worst = 0;
        for r in (0..=255u8).step_by(5) {
            for g in (0..=255u8).step_by(5) {
                for b in (0..=255u8).step_by(5) {
                    let back = ycbcr_to_rgb_px(rgb_to_ycbcr_px([r, g, b]));
                    for (x, y) in [r, g, b].iter().zip(back) {
                        worst = worst.max((i32::from(*x) - i32::from(y)).abs());
                    }
                }
            }
        }
        // 8-bit YCbCr cannot hold every RGB colour exactly; JFIF round trips stay within 2.
        assert!(worst <= 2, "worst round-trip error {worst}");
    }
}

//! PNG encoding helpers and data URIs.

use base64::Engine as _;

use crate::ReportError;

/// An encoded PNG image with its size.
#[derive(Debug, Clone, PartialEq)]
pub struct PngImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Encoded PNG file bytes.
    pub png: Vec<u8>,
}

impl PngImage {
    /// Encodes an RGB8 image (row-major, HWC, `width * height * 3` bytes).
    pub fn from_rgb8(width: u32, height: u32, rgb: &[u8]) -> Result<Self, ReportError> {
        Ok(Self {
            width,
            height,
            png: encode_png_rgb8(width, height, rgb)?,
        })
    }

    /// Encodes a label map (one `u8` class index per pixel) as a palette PNG; see
    /// [`encode_png_labels`].
    pub fn from_labels(
        width: u32,
        height: u32,
        labels: &[u8],
        class_colors: &[[u8; 3]],
        ignore_color: [u8; 3],
    ) -> Result<Self, ReportError> {
        Ok(Self {
            width,
            height,
            png: encode_png_labels(width, height, labels, class_colors, ignore_color)?,
        })
    }

    /// `data:image/png;base64,...` URI of the image.
    pub fn data_uri(&self) -> String {
        png_data_uri(&self.png)
    }
}

fn check_len(
    width: u32,
    height: u32,
    channels: usize,
    got: usize,
    what: &'static str,
) -> Result<(), ReportError> {
    if width == 0 || height == 0 {
        return Err(ReportError::ImageSize {
            what,
            width,
            height,
            expected: 0,
            got,
        });
    }
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(channels));
    match expected {
        Some(e) if e == got => Ok(()),
        e => Err(ReportError::ImageSize {
            what,
            width,
            height,
            expected: e.unwrap_or(usize::MAX),
            got,
        }),
    }
}

fn encode(
    width: u32,
    height: u32,
    color: png::ColorType,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<Vec<u8>, ReportError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        let mut w = enc
            .write_header()
            .map_err(|e| ReportError::Png(e.to_string()))?;
        w.write_image_data(data)
            .map_err(|e| ReportError::Png(e.to_string()))?;
        w.finish().map_err(|e| ReportError::Png(e.to_string()))?;
    }
    Ok(out)
}

/// Encodes an RGB8 image as PNG bytes.
pub fn encode_png_rgb8(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, ReportError> {
    check_len(width, height, 3, rgb.len(), "RGB image")?;
    encode(width, height, png::ColorType::Rgb, None, rgb)
}

/// Encodes a single-channel u8 image as grayscale PNG bytes.
pub fn encode_png_gray8(width: u32, height: u32, gray: &[u8]) -> Result<Vec<u8>, ReportError> {
    check_len(width, height, 1, gray.len(), "grayscale image")?;
    encode(width, height, png::ColorType::Grayscale, None, gray)
}

/// Encodes a label map as an 8-bit palette PNG whose pixel values are the labels themselves.
///
/// Palette entry `c` is `class_colors[c]` for `c < class_colors.len()`, entry 255 is
/// `ignore_color` (background / ignore), every other entry is magenta (`#ff00ff`, an
/// out-of-range label stands out). At most 255 class colours.
pub fn encode_png_labels(
    width: u32,
    height: u32,
    labels: &[u8],
    class_colors: &[[u8; 3]],
    ignore_color: [u8; 3],
) -> Result<Vec<u8>, ReportError> {
    check_len(width, height, 1, labels.len(), "label map")?;
    if class_colors.len() > 255 {
        return Err(ReportError::Png(format!(
            "{} class colours, at most 255 allowed",
            class_colors.len()
        )));
    }
    let mut pal = Vec::with_capacity(768);
    for i in 0..256usize {
        let c = if i == 255 {
            ignore_color
        } else {
            class_colors.get(i).copied().unwrap_or([255, 0, 255])
        };
        pal.extend_from_slice(&c);
    }
    encode(width, height, png::ColorType::Indexed, Some(pal), labels)
}

/// Distinct, colour-blind-friendly class colours (Okabe–Ito first, then a hue wheel).
pub fn default_class_colors(n: usize) -> Vec<[u8; 3]> {
    const BASE: [[u8; 3]; 8] = [
        [0, 114, 178],   // blue
        [213, 94, 0],    // vermillion
        [0, 158, 115],   // bluish green
        [230, 159, 0],   // orange
        [204, 121, 167], // reddish purple
        [86, 180, 233],  // sky blue
        [240, 228, 66],  // yellow
        [90, 90, 90],    // grey
    ];
    (0..n)
        .map(|i| {
            if i < BASE.len() {
                BASE[i]
            } else {
                // golden-angle hues, fixed saturation/value
                let h = ((i as f64) * 137.508) % 360.0;
                hsv_to_rgb(h, 0.65, 0.85)
            }
        })
        .collect()
}

fn hsv_to_rgb(h: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let q = |t: f64| ((t + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [q(r), q(g), q(b)]
}

/// Standard base64 (RFC 4648, padded) of `bytes`.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `data:image/png;base64,...` URI of PNG bytes.
pub fn png_data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64_encode(png))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (png::OutputInfo, Vec<u8>, Option<Vec<u8>>) {
        let dec = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec()));
        let mut r = dec.read_info().unwrap();
        let pal = r.info().palette.as_ref().map(|p| p.to_vec());
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf, pal)
    }

    #[test]
    fn rgb_roundtrip() {
        let rgb: Vec<u8> = (0..(5 * 3 * 3)).map(|i| (i * 7) as u8).collect();
        let img = PngImage::from_rgb8(5, 3, &rgb).unwrap();
        let (info, data, _) = decode(&img.png);
        assert_eq!((info.width, info.height), (5, 3));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(data, rgb);
    }

    #[test]
    fn labels_palette() {
        let labels = [0u8, 1, 255, 7];
        let png_bytes =
            encode_png_labels(2, 2, &labels, &[[1, 2, 3], [4, 5, 6]], [9, 9, 9]).unwrap();
        let (info, data, pal) = decode(&png_bytes);
        assert_eq!(info.color_type, png::ColorType::Indexed);
        assert_eq!(data, labels);
        let pal = pal.unwrap();
        assert_eq!(&pal[0..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&pal[765..768], &[9, 9, 9]);
        assert_eq!(&pal[21..24], &[255, 0, 255]);
    }

    #[test]
    fn size_errors() {
        assert!(encode_png_rgb8(2, 2, &[0; 11]).is_err());
        assert!(encode_png_rgb8(0, 2, &[]).is_err());
        assert!(encode_png_labels(2, 2, &[0; 3], &[], [0; 3]).is_err());
        assert!(encode_png_gray8(1, 1, &[5]).is_ok());
    }

    #[test]
    fn base64_rfc4648_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert!(png_data_uri(b"foo").ends_with(",Zm9v"));
    }

    #[test]
    fn colors_distinct() {
        let c = default_class_colors(20);
        for i in 0..c.len() {
            for j in 0..i {
                assert_ne!(c[i], c[j], "{i} {j}");
            }
        }
    }
}

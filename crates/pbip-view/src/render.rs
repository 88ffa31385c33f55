//! Tile rendering: slide tiles (RGB → JPEG), indexed overlay tiles (PNG), error tiles.

use pbip_slide::{RgbImage, Slide, resize_rgb};

use crate::dz::{DeepZoom, TileAddr, TileRect};
use crate::error::{Result, ViewError};

/// Largest region read from a slide for one tile, in pixels of the slide level read (a slide
/// without pyramid levels near a zoom level would otherwise need a huge read per tile).
pub const MAX_TILE_READ_PX: u64 = 16 << 20;

/// The level-0 coordinate whose level-`ds` pixel, as pbip-slide computes it
/// (`floor(x_lv0 / ds)`), is `px`.
pub fn lv0_for_level_px(px: u64, ds: f64) -> i64 {
    if ds <= 1.0 {
        return px as i64;
    }
    let mut x = (px as f64 * ds).ceil() as i64;
    // Float rounding may put `x / ds` just below `px`: step until it is not.
    while ((x as f64) / ds).floor() < px as f64 {
        x += 1;
    }
    while x > 0 && (((x - 1) as f64) / ds).floor() >= px as f64 {
        x -= 1;
    }
    x
}

/// The RGB pixels of DeepZoom tile (`col`, `row`) of `level` of `slide`.
///
/// As OpenSlide's `DeepZoomGenerator`: the slide level read is the one whose downsample is the
/// largest ≤ the DeepZoom level's; the tile's area is read there and, when its size differs, resized
/// to the tile (area average when shrinking). At the full-resolution DeepZoom level the tile is
/// exactly `slide.read_region(x, y, 0, w, h)`.
pub fn slide_tile(
    slide: &Slide,
    dz: &DeepZoom,
    level: usize,
    col: u64,
    row: u64,
) -> Result<RgbImage> {
    let rect = dz
        .tile_rect(level, col, row)
        .ok_or_else(|| ViewError::Invalid(format!("no tile {col}_{row} at level {level}")))?;
    let d = dz.level_downsample(level);
    let s = slide.best_level_for_downsample(d);
    let ds = slide.level_downsample(s)?;
    let (lw, lh) = slide.level_dimensions(s)?;
    let scale = d / ds;
    let axis = |start: u64, len: u32, lim: u64| -> (u64, u32) {
        let l = start as f64 * scale;
        let px = (l.floor() as u64).min(lim.saturating_sub(1));
        let want = (f64::from(len) * scale).ceil() as u64;
        let n = want.min(lim.saturating_sub(px)).max(1);
        (px, n.min(u64::from(u32::MAX)) as u32)
    };
    let (px, rw) = axis(rect.x_px, rect.width_px, lw);
    let (py, rh) = axis(rect.y_px, rect.height_px, lh);
    if u64::from(rw) * u64::from(rh) > MAX_TILE_READ_PX {
        return Err(ViewError::Invalid(format!(
            "{}: tile {col}_{row} of DeepZoom level {level} needs a {rw} x {rh} px read of slide level {s}: \
             the slide has no pyramid level near this zoom (zoom in, or convert it to a pyramidal TIFF)",
            slide.path().display()
        )));
    }
    let img = slide.read_region(
        lv0_for_level_px(px, ds),
        lv0_for_level_px(py, ds),
        s,
        rw,
        rh,
    )?;
    if (rw, rh) == (rect.width_px, rect.height_px) {
        return Ok(img);
    }
    let mut data = vec![0u8; rect.width_px as usize * rect.height_px as usize * 3];
    resize_rgb(
        &img.data,
        rw as usize,
        rh as usize,
        &mut data,
        rect.width_px as usize,
        rect.height_px as usize,
    );
    Ok(RgbImage {
        width: rect.width_px,
        height: rect.height_px,
        data,
    })
}

/// Baseline JPEG (4:2:0) of an RGB image.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = (
        u16::try_from(img.width).map_err(|_| ViewError::Encode("tile too wide for JPEG".into()))?,
        u16::try_from(img.height)
            .map_err(|_| ViewError::Encode("tile too tall for JPEG".into()))?,
    );
    let mut out = Vec::with_capacity(img.data.len() / 8);
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.encode(&img.data, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| ViewError::Encode(e.to_string()))?;
    Ok(out)
}

/// A palette image: one index per pixel, a 256-entry RGB palette and per-index alpha.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedImage {
    /// Width, px.
    pub width: u32,
    /// Height, px.
    pub height: u32,
    /// `width * height` palette indices.
    pub indices: Vec<u8>,
}

/// A 256-entry palette with alpha.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Palette {
    /// RGB per index.
    pub rgb: [[u8; 3]; 256],
    /// Alpha per index (0 = transparent).
    pub alpha: [u8; 256],
}

impl Palette {
    /// All black, fully transparent.
    pub fn transparent() -> Self {
        Self {
            rgb: [[0; 3]; 256],
            alpha: [0; 256],
        }
    }
}

/// Indexed PNG (`PLTE` + `tRNS`) of `img` with `palette`.
pub fn encode_indexed_png(img: &IndexedImage, palette: &Palette) -> Result<Vec<u8>> {
    let e = |m: png::EncodingError| ViewError::Encode(m.to_string());
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width, img.height);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let plte: Vec<u8> = palette.rgb.iter().flatten().copied().collect();
        // tRNS may stop at the last non-opaque entry; keep all 256 for simplicity.
        enc.set_palette(plte);
        enc.set_trns(palette.alpha.to_vec());
        let mut w = enc.write_header().map_err(e)?;
        w.write_image_data(&img.indices).map_err(e)?;
        w.finish().map_err(e)?;
    }
    Ok(out)
}

/// For each of `len` tile pixels starting at DeepZoom-level pixel `start` (DeepZoom downsample
/// `dz_ds`), the index of the grid cell its centre falls in, on a grid of `grid_ds` level-0 px per
/// cell with `grid_len` cells (None outside the grid).
pub fn sample_axis(
    start: u64,
    len: u32,
    dz_ds: f64,
    grid_ds: f64,
    grid_len: u64,
) -> Vec<Option<u64>> {
    (0..u64::from(len))
        .map(|i| {
            let g = ((start + i) as f64 + 0.5) * dz_ds / grid_ds;
            let g = g.floor();
            (g >= 0.0 && (g as u64) < grid_len).then_some(g as u64)
        })
        .collect()
}

/// The tile rectangle and DeepZoom downsample of a tile, or an error naming it.
pub fn tile_geometry(dz: &DeepZoom, at: TileAddr) -> Result<(TileRect, f64)> {
    let TileAddr { level, col, row } = at;
    let rect = dz
        .tile_rect(level, col, row)
        .ok_or_else(|| ViewError::Invalid(format!("no tile {col}_{row} at level {level}")))?;
    Ok((rect, dz.level_downsample(level)))
}

/// A grey JPEG tile with a red cross: what the page shows where the slide cannot be read.
pub fn error_tile_rgb(width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let mut img = RgbImage::filled(w, h, [200, 200, 200]);
    let t = (w.min(h) / 40).max(1) as i64;
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
            let on_diag = ((fx - fy).abs() * f64::from(w.min(h))) < t as f64
                || ((fx + fy - 1.0).abs() * f64::from(w.min(h))) < t as f64;
            let border = i64::from(x) < t
                || i64::from(y) < t
                || i64::from(w - 1 - x) < t
                || i64::from(h - 1 - y) < t;
            if on_diag || border {
                let i = (y as usize * w as usize + x as usize) * 3;
                img.data[i..i + 3].copy_from_slice(&[200, 30, 30]);
            }
        }
    }
    img
}

/// The overlay error tile: transparent with a red cross (indexed: 0 transparent, 1 red).
pub fn error_tile_overlay(width: u32, height: u32) -> (IndexedImage, Palette) {
    let rgb = error_tile_rgb(width, height);
    let indices = rgb
        .data
        .chunks_exact(3)
        .map(|p| u8::from(p[1] == 30))
        .collect();
    let mut pal = Palette::transparent();
    pal.rgb[1] = [200, 30, 30];
    pal.alpha[1] = 255;
    (
        IndexedImage {
            width: rgb.width,
            height: rgb.height,
            indices,
        },
        pal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lv0_coordinates_round_trip_through_pbip_slide_rule() {
        for ds in [1.0, 2.0, 4.0, 1.998, 3.999_5, 4.002, 16.01, 7.3] {
            for px in [0u64, 1, 2, 3, 17, 255, 1000, 12_345, 99_999] {
                let x = lv0_for_level_px(px, ds);
                assert_eq!(((x as f64) / ds).floor() as u64, px, "px {px} ds {ds}");
                if x > 0 {
                    assert!(
                        (((x - 1) as f64) / ds).floor() < px as f64,
                        "not the smallest: px {px} ds {ds}"
                    );
                }
            }
        }
    }

    #[test]
    fn full_resolution_tiles_equal_read_region() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.tif");
        let (w, h) = (1100u32, 900u32);
        let px: Vec<u8> = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    [
                        (x % 251) as u8,
                        (y % 241) as u8,
                        ((x * 7 + y * 3) % 256) as u8,
                    ]
                })
            })
            .collect();
        let opts = pbip_pyramid::PyramidOptions::rgb_jpeg(Some(0.5));
        pbip_pyramid::write_pyramid_from_image(&p, w, h, &px, &opts).unwrap();
        let s = Slide::open(&p, &pbip_slide::OpenOptions::default()).unwrap();
        let dz = DeepZoom::new(u64::from(w), u64::from(h), 254, 1).unwrap();
        let top = dz.level_count() - 1;
        for (level, c, r) in [
            (top, 1, 1),
            (top, 4, 3),
            (top, 0, 0),
            (top - 1, 1, 1),
            (top - 2, 0, 0),
        ] {
            let t = slide_tile(&s, &dz, level, c, r).unwrap();
            let rect = dz.tile_rect(level, c, r).unwrap();
            assert_eq!((t.width, t.height), (rect.width_px, rect.height_px));
            // The full-resolution level reads level 0; the next one reads level 1 (downsample 2)
            // 1:1. Both are exactly read_region.
            let (sl, f) = if level == top { (0, 1) } else { (1, 2) };
            if level >= top - 1 {
                let one = s
                    .read_region(
                        (rect.x_px * f) as i64,
                        (rect.y_px * f) as i64,
                        sl,
                        rect.width_px,
                        rect.height_px,
                    )
                    .unwrap();
                assert!(one == t, "level {level} tile {c}_{r}");
            }
        }
    }

    #[test]
    fn jpeg_decodes_to_the_tile() {
        let mut img = RgbImage::filled(40, 24, [180, 90, 140]);
        for x in 0..20 {
            for y in 0..24 {
                let i = (y * 40 + x) * 3;
                img.data[i..i + 3].copy_from_slice(&[20, 200, 60]);
            }
        }
        let bytes = encode_jpeg(&img, 90).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let dec = decode_jpeg(&bytes);
        assert_eq!((dec.0, dec.1), (40, 24));
        // A pixel well inside each half keeps its colour within JPEG rounding.
        let px = |x: usize, y: usize| &dec.2[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
        for (p, want) in [(px(5, 12), [20u8, 200, 60]), (px(34, 12), [180, 90, 140])] {
            for c in 0..3 {
                assert!(
                    (i32::from(p[c]) - i32::from(want[c])).abs() <= 12,
                    "{p:?} vs {want:?}"
                );
            }
        }
    }

    /// Decodes a JPEG with pbip-slide (a single-image slide).
    fn decode_jpeg(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jpg");
        std::fs::write(&p, bytes).unwrap();
        let s = Slide::open(&p, &pbip_slide::OpenOptions::default()).unwrap();
        let (w, h) = s.dimensions();
        let img = s.read_region(0, 0, 0, w as u32, h as u32).unwrap();
        (img.width, img.height, img.data)
    }

    #[test]
    fn indexed_png_keeps_indices_palette_and_alpha() {
        let img = IndexedImage {
            width: 3,
            height: 2,
            indices: vec![0, 1, 255, 1, 0, 2],
        };
        let mut pal = Palette::transparent();
        pal.rgb[0] = [0, 114, 178];
        pal.alpha[0] = 255;
        pal.rgb[1] = [213, 94, 0];
        pal.alpha[1] = 255;
        pal.rgb[2] = [1, 2, 3];
        let bytes = encode_indexed_png(&img, &pal).unwrap();
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::IDENTITY);
        let mut r = dec.read_info().unwrap();
        let info = r.info();
        assert_eq!(info.color_type, png::ColorType::Indexed);
        let plte = info.palette.as_ref().unwrap().to_vec();
        let trns = info.trns.as_ref().unwrap().to_vec();
        assert_eq!(&plte[3..6], &[213, 94, 0]);
        assert_eq!((trns[0], trns[1], trns[2], trns[255]), (255, 255, 0, 0));
        let mut buf = vec![0u8; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..3], &[0, 1, 255]);
        assert_eq!(&buf[3..6], &[1, 0, 2]);
    }

    #[test]
    fn axis_sampling_maps_tile_pixels_to_grid_cells() {
        // Full-resolution DeepZoom level over a grid of 4 lv0 px per cell: 4 pixels per cell.
        assert_eq!(
            sample_axis(6, 6, 1.0, 4.0, 3),
            vec![Some(1), Some(1), Some(2), Some(2), Some(2), Some(2)]
        );
        // Zoomed out by 8 over the same grid: every other cell; past the grid: None.
        assert_eq!(sample_axis(0, 3, 8.0, 4.0, 5), vec![Some(1), Some(3), None]);
    }

    #[test]
    fn error_tiles_have_the_requested_size() {
        let t = error_tile_rgb(30, 20);
        assert_eq!((t.width, t.height, t.data.len()), (30, 20, 30 * 20 * 3));
        assert_eq!(t.pixel(0, 0), Some([200, 30, 30]));
        let (o, p) = error_tile_overlay(30, 20);
        assert_eq!(o.indices.len(), 600);
        assert!(o.indices.contains(&0) && o.indices.contains(&1));
        assert_eq!((p.alpha[0], p.alpha[1]), (0, 255));
    }
}

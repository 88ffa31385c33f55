//! Exports: palette / RGB / overlay PNGs and QuPath-compatible GeoJSON.
//!
//! # PNG
//!
//! - [`write_label_png`]: 8-bit *indexed* PNG of a label map; palette entry `k` is the colour of class
//!   `k` (classes beyond the given palette are black), a `tRNS` chunk makes index
//!   [`NO_LABEL`] (255) fully transparent and every other index opaque. Pixel values stay the class
//!   indices, so `PIL.Image.open(p)` / `np.array` gives the label map back.
//! - [`write_rgb_png`]: plain RGB8 PNG.
//! - [`overlay_labels`]: blends class colours over an RGB thumbnail (label map resampled to the
//!   thumbnail with nearest neighbour, pixel centres aligned; [`NO_LABEL`] is not drawn) and draws a
//!   **text-free legend** in the top-left corner: a white box with a black border holding one filled
//!   square per class, in class-index order from top to bottom (the order of `class_order`), each
//!   square `max(6, min(W, H) / 32)` pixels.
//!
//! # GeoJSON
//!
//! [`label_map_to_geojson`] traces, for every class present, the boundaries of its 4-connected
//! components on the pixel-edge grid (pixel `(x, y)` covers `[x, x+1] x [y, y+1]`): every pixel side
//! between the class and anything else (or the image border) is a directed edge with the class on
//! its right-hand side (image coordinates, y down); edges are chained into closed rings, turning
//! toward the class at diagonal "saddle" vertices so that diagonal-only neighbours stay separate
//! (consistent with 4-connectivity). Collinear vertices are dropped. Rings with positive shoelace
//! area are exteriors, the others holes; each hole belongs to the component on its right. Vertex
//! coordinates are multiplied by `downsample` (level-0 pixels per output pixel), so polygons are in
//! level-0 pixel coordinates. Output: a `FeatureCollection` with one `Feature` per class:
//! `{"type": "Feature", "geometry": Polygon | MultiPolygon, "properties": {"objectType":
//! "annotation", "classification": {"name", "color": [r, g, b]}}}` — the layout QuPath imports.
//! Rings are closed (first point repeated last). Exterior rings have positive area in image
//! coordinates, i.e. they are counter-clockwise when y is taken as pointing up (RFC 7946 order).

use crate::NO_LABEL;
use crate::error::{PostError, Result, invalid};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Default class colours (index = class). Chosen to be distinguishable on H&E.
pub const DEFAULT_PALETTE: [[u8; 3]; 12] = [
    [0, 114, 178],   // blue
    [213, 94, 0],    // vermillion
    [0, 158, 115],   // green
    [240, 228, 66],  // yellow
    [204, 121, 167], // purple
    [86, 180, 233],  // sky blue
    [230, 159, 0],   // orange
    [0, 0, 0],       // black
    [128, 128, 128], // grey
    [255, 0, 255],   // magenta
    [0, 255, 255],   // cyan
    [128, 0, 0],     // maroon
];

/// Colour of class `k` in [`DEFAULT_PALETTE`] (cycling).
pub fn default_color(k: usize) -> [u8; 3] {
    DEFAULT_PALETTE[k % DEFAULT_PALETTE.len()]
}

/// A class as exported: name and RGB colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    /// Class name (from `class_order`).
    pub name: String,
    /// RGB colour.
    pub color: [u8; 3],
}

impl ClassInfo {
    /// Class infos for names with the default palette.
    pub fn from_names(names: &[impl AsRef<str>]) -> Vec<ClassInfo> {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| ClassInfo {
                name: n.as_ref().to_string(),
                color: default_color(k),
            })
            .collect()
    }
}

fn create_file(path: &Path) -> Result<BufWriter<std::fs::File>> {
    std::fs::File::create(path)
        .map(BufWriter::new)
        .map_err(|source| PostError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn png_err(path: &Path) -> impl Fn(png::EncodingError) -> PostError + '_ {
    move |source| PostError::Png {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a label map as an indexed PNG (see the module docs). `palette[k]` is class `k`'s colour.
pub fn write_label_png(
    path: &Path,
    labels: &[u8],
    width_px: u32,
    height_px: u32,
    palette: &[[u8; 3]],
) -> Result<()> {
    if labels.len() != width_px as usize * height_px as usize || width_px == 0 || height_px == 0 {
        return invalid(format!(
            "{}: label map has {} values for {width_px}x{height_px}",
            path.display(),
            labels.len()
        ));
    }
    let mut w = LabelPngWriter::create(path, width_px, height_px, palette)?;
    for row in labels.chunks_exact(width_px as usize) {
        w.write_row(row)?;
    }
    w.finish()
}

/// Row-by-row writer of the indexed label PNG of [`write_label_png`] (for maps that are not held
/// in memory).
pub struct LabelPngWriter {
    path: std::path::PathBuf,
    width_px: usize,
    rows_left: usize,
    stream: png::StreamWriter<'static, BufWriter<std::fs::File>>,
}

impl LabelPngWriter {
    /// Creates the file and writes the header, palette and transparency chunks.
    pub fn create(path: &Path, width_px: u32, height_px: u32, palette: &[[u8; 3]]) -> Result<Self> {
        if width_px == 0 || height_px == 0 {
            return invalid(format!(
                "{}: empty label map {width_px}x{height_px}",
                path.display()
            ));
        }
        let mut plte = vec![0u8; 256 * 3];
        for (k, c) in palette.iter().take(255).enumerate() {
            plte[3 * k..3 * k + 3].copy_from_slice(c);
        }
        let mut trns = vec![255u8; 256];
        trns[NO_LABEL as usize] = 0;
        let mut enc = png::Encoder::new(create_file(path)?, width_px, height_px);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(plte);
        enc.set_trns(trns);
        enc.set_compression(png::Compression::Fast);
        let w = enc.write_header().map_err(png_err(path))?;
        let stream = w.into_stream_writer().map_err(png_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            width_px: width_px as usize,
            rows_left: height_px as usize,
            stream,
        })
    }

    /// Appends the next row (`width` labels).
    pub fn write_row(&mut self, row: &[u8]) -> Result<()> {
        if row.len() != self.width_px || self.rows_left == 0 {
            return invalid(format!(
                "{}: row of {} labels (width {}, {} rows left)",
                self.path.display(),
                row.len(),
                self.width_px,
                self.rows_left
            ));
        }
        self.rows_left -= 1;
        self.stream.write_all(row).map_err(|source| PostError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Finishes the file (every row must have been written).
    pub fn finish(self) -> Result<()> {
        if self.rows_left != 0 {
            return invalid(format!(
                "{}: {} rows missing",
                self.path.display(),
                self.rows_left
            ));
        }
        self.stream.finish().map_err(png_err(&self.path))
    }
}

/// Writes an RGB8 (HWC, row-major) PNG.
pub fn write_rgb_png(path: &Path, rgb: &[u8], width_px: u32, height_px: u32) -> Result<()> {
    if rgb.len() != 3 * width_px as usize * height_px as usize || width_px == 0 || height_px == 0 {
        return invalid(format!(
            "{}: RGB buffer has {} bytes for {width_px}x{height_px}x3",
            path.display(),
            rgb.len()
        ));
    }
    let mut enc = png::Encoder::new(create_file(path)?, width_px, height_px);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().map_err(png_err(path))?;
    w.write_image_data(rgb).map_err(png_err(path))?;
    w.finish().map_err(png_err(path))
}

/// A borrowed row-major 8-bit raster: `width_px * height_px * channels` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Raster<'a> {
    /// The bytes, row-major, channels interleaved.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width_px: usize,
    /// Height in pixels.
    pub height_px: usize,
}

/// Overlay of a label map (one byte per pixel) on an RGB thumbnail (three bytes per pixel; the two
/// may differ in size), with class colours blended at `alpha` (0..=1) and a text-free legend (see
/// the module docs). Returns RGB8 of the thumbnail's size.
pub fn overlay_labels(
    thumb: Raster<'_>,
    labels: Raster<'_>,
    palette: &[[u8; 3]],
    alpha: f32,
) -> Result<Vec<u8>> {
    let (thumb_rgb, thumb_w, thumb_h) = (thumb.data, thumb.width_px, thumb.height_px);
    let (labels, label_w, label_h) = (labels.data, labels.width_px, labels.height_px);
    if thumb_rgb.len() != 3 * thumb_w * thumb_h || thumb_w == 0 || thumb_h == 0 {
        return invalid(format!(
            "overlay: thumbnail has {} bytes for {thumb_w}x{thumb_h}x3",
            thumb_rgb.len()
        ));
    }
    if labels.len() != label_w * label_h || label_w == 0 || label_h == 0 {
        return invalid(format!(
            "overlay: label map has {} values for {label_w}x{label_h}",
            labels.len()
        ));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return invalid(format!("overlay: alpha must be in [0, 1], got {alpha}"));
    }
    let mut out = thumb_rgb.to_vec();
    for y in 0..thumb_h {
        let ly = (((y as f64 + 0.5) * label_h as f64 / thumb_h as f64) as usize).min(label_h - 1);
        for x in 0..thumb_w {
            let lx =
                (((x as f64 + 0.5) * label_w as f64 / thumb_w as f64) as usize).min(label_w - 1);
            let l = labels[ly * label_w + lx];
            if l == NO_LABEL || l as usize >= palette.len() {
                continue;
            }
            let c = palette[l as usize];
            for ch in 0..3 {
                let p = &mut out[3 * (y * thumb_w + x) + ch];
                *p = ((1.0 - alpha) * *p as f32 + alpha * c[ch] as f32)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
    draw_legend(&mut out, thumb_w, thumb_h, palette);
    Ok(out)
}

fn draw_legend(img: &mut [u8], w: usize, h: usize, palette: &[[u8; 3]]) {
    if palette.is_empty() {
        return;
    }
    let s = (w.min(h) / 32).max(6);
    let pad = (s / 3).max(2);
    let box_w = s + 2 * pad;
    let box_h = palette.len() * (s + pad) + pad;
    let mut fill = |x0: usize, y0: usize, bw: usize, bh: usize, c: [u8; 3]| {
        for y in y0..(y0 + bh).min(h) {
            for x in x0..(x0 + bw).min(w) {
                img[3 * (y * w + x)..3 * (y * w + x) + 3].copy_from_slice(&c);
            }
        }
    };
    fill(0, 0, box_w + 2, box_h + 2, [0, 0, 0]);
    fill(1, 1, box_w, box_h, [255, 255, 255]);
    for (k, &c) in palette.iter().enumerate() {
        fill(1 + pad, 1 + pad + k * (s + pad), s, s, c);
    }
}

pub use crate::polygons::{Polygon, trace_class_polygons};

/// QuPath-compatible GeoJSON `FeatureCollection` of the class regions of a label map, in level-0
/// pixels (output-grid corner coordinates times `downsample`). Labels `>= classes.len()` (and
/// [`NO_LABEL`]) are not exported.
pub fn label_map_to_geojson(
    labels: &[u8],
    width_px: usize,
    height_px: usize,
    downsample: f64,
    classes: &[ClassInfo],
) -> Result<serde_json::Value> {
    if labels.len() != width_px * height_px {
        return invalid(format!(
            "GeoJSON: {} labels for {width_px}x{height_px}",
            labels.len()
        ));
    }
    let mut tracer = crate::polygons::MultiClassTracer::new(width_px, classes.len());
    if width_px > 0 {
        for row in labels.chunks_exact(width_px) {
            tracer.push_row(row)?;
        }
    }
    polygons_to_geojson(&tracer.finish()?, downsample, classes)
}

/// GeoJSON `FeatureCollection` (see the module docs) of per-class polygons (`polygons[k]` of class
/// `k`, output-grid corner coordinates), scaled by `downsample` to level-0 pixels, as a JSON value
/// (the text [`write_polygons_geojson`] writes, parsed).
pub fn polygons_to_geojson(
    polygons: &[Vec<Polygon>],
    downsample: f64,
    classes: &[ClassInfo],
) -> Result<serde_json::Value> {
    let mut text = Vec::new();
    let internal = |e: &dyn std::fmt::Display| {
        PostError::InvalidArgument(format!("GeoJSON serialisation (internal error): {e}"))
    };
    serialize_geojson(&mut text, polygons, downsample, classes)?.map_err(|e| internal(&e))?;
    serde_json::from_slice(&text).map_err(|e| internal(&e))
}

/// Writes the `FeatureCollection` of [`polygons_to_geojson`] to `path` without building it in
/// memory: features and coordinates are serialised one at a time (a JSON value costs ~110 bytes
/// per vertex, the text ~17), so memory is the polygons themselves.
pub fn write_polygons_geojson(
    path: &Path,
    polygons: &[Vec<Polygon>],
    downsample: f64,
    classes: &[ClassInfo],
) -> Result<()> {
    let mut f = create_file(path)?;
    serialize_geojson(&mut f, polygons, downsample, classes)?
        .and_then(|()| f.flush())
        .map_err(|source| PostError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The one GeoJSON serialiser: argument errors in the outer `Result`, write errors in the inner.
fn serialize_geojson<W: Write>(
    w: &mut W,
    polygons: &[Vec<Polygon>],
    downsample: f64,
    classes: &[ClassInfo],
) -> Result<std::io::Result<()>> {
    if !(downsample.is_finite() && downsample > 0.0) {
        return invalid(format!("GeoJSON: downsample must be > 0, got {downsample}"));
    }
    if classes.len() > 255 {
        return invalid(format!(
            "GeoJSON: at most 255 classes, got {}",
            classes.len()
        ));
    }
    Ok(write_features(w, polygons, downsample, classes))
}

fn write_features<W: Write>(
    w: &mut W,
    polygons: &[Vec<Polygon>],
    downsample: f64,
    classes: &[ClassInfo],
) -> std::io::Result<()> {
    fn ring<W: Write>(w: &mut W, ring: &[(i64, i64)], ds: f64) -> std::io::Result<()> {
        w.write_all(b"[")?;
        for (i, &(x, y)) in ring.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(b"[")?;
            serde_json::to_writer(&mut *w, &(x as f64 * ds))?;
            w.write_all(b",")?;
            serde_json::to_writer(&mut *w, &(y as f64 * ds))?;
            w.write_all(b"]")?;
        }
        w.write_all(b"]")
    }
    fn polygon<W: Write>(w: &mut W, p: &Polygon, ds: f64) -> std::io::Result<()> {
        w.write_all(b"[")?;
        ring(w, &p.exterior, ds)?;
        for h in &p.holes {
            w.write_all(b",")?;
            ring(w, h, ds)?;
        }
        w.write_all(b"]")
    }
    w.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")?;
    let mut first = true;
    for (polys, ci) in polygons.iter().zip(classes) {
        if polys.is_empty() {
            continue;
        }
        if !first {
            w.write_all(b",")?;
        }
        first = false;
        let kind = if polys.len() == 1 {
            "Polygon"
        } else {
            "MultiPolygon"
        };
        write!(
            w,
            "{{\"type\":\"Feature\",\"geometry\":{{\"type\":\"{kind}\",\"coordinates\":"
        )?;
        if let [p] = polys.as_slice() {
            polygon(w, p, downsample)?;
        } else {
            w.write_all(b"[")?;
            for (i, p) in polys.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                polygon(w, p, downsample)?;
            }
            w.write_all(b"]")?;
        }
        let properties = serde_json::json!({
            "objectType": "annotation",
            "classification": {"name": ci.name, "color": [ci.color[0], ci.color[1], ci.color[2]]}
        });
        w.write_all(b"},\"properties\":")?;
        serde_json::to_writer(&mut *w, &properties)?;
        w.write_all(b"}")?;
    }
    w.write_all(b"]}")
}

/// Writes a GeoJSON value to `path`.
pub fn write_geojson(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = create_file(path)?;
    serde_json::to_writer(&mut f, value).map_err(|e| PostError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    f.flush().map_err(|source| PostError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_pixel_and_hole() {
        let p = trace_class_polygons(&[1], 1, 1, 1).unwrap();
        assert_eq!(
            p,
            vec![Polygon {
                exterior: vec![(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)],
                holes: vec![]
            }]
        );
        #[rustfmt::skip]
        let ring = [1u8, 1, 1,
                    1, 0, 1,
                    1, 1, 1];
        let p = trace_class_polygons(&ring, 3, 3, 1).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].exterior.len(), 5);
        assert_eq!(
            p[0].holes,
            vec![vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]]
        );
    }

    #[test]
    fn geojson_text_and_value_match_the_hand_written_collection() {
        let sq =
            |x: i64, y: i64, s: i64| vec![(x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y)];
        let polygons = vec![
            // class 0: two polygons (MultiPolygon), the first with a hole
            vec![
                Polygon {
                    exterior: sq(0, 0, 3),
                    holes: vec![sq(1, 1, 1)],
                },
                Polygon {
                    exterior: sq(5, 0, 1),
                    holes: vec![],
                },
            ],
            // class 1: one polygon (Polygon)
            vec![Polygon {
                exterior: sq(2, 4, 2),
                holes: vec![],
            }],
            // class 2: none (no feature)
            vec![],
        ];
        let classes = vec![
            ClassInfo {
                name: "benign".into(),
                color: [0, 200, 0],
            },
            ClassInfo {
                name: "tumour \"x\"".into(),
                color: [200, 0, 0],
            },
            ClassInfo {
                name: "other".into(),
                color: [0, 0, 200],
            },
        ];
        let props = |name: &str, c: [u8; 3]| serde_json::json!({"objectType": "annotation", "classification": {"name": name, "color": c}});
        let want = serde_json::json!({
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "MultiPolygon", "coordinates": [
                        [
                            [[0.0, 0.0], [7.5, 0.0], [7.5, 7.5], [0.0, 7.5], [0.0, 0.0]],
                            [[2.5, 2.5], [5.0, 2.5], [5.0, 5.0], [2.5, 5.0], [2.5, 2.5]]
                        ],
                        [[[12.5, 0.0], [15.0, 0.0], [15.0, 2.5], [12.5, 2.5], [12.5, 0.0]]]
                    ]},
                    "properties": props("benign", [0, 200, 0])
                },
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [
                        [[5.0, 10.0], [10.0, 10.0], [10.0, 15.0], [5.0, 15.0], [5.0, 10.0]]
                    ]},
                    "properties": props("tumour \"x\"", [200, 0, 0])
                }
            ]
        });
        assert_eq!(polygons_to_geojson(&polygons, 2.5, &classes).unwrap(), want);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.geojson");
        write_polygons_geojson(&path, &polygons, 2.5, &classes).unwrap();
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(got, want);
        assert!(write_polygons_geojson(&dir.path().join("b"), &polygons, 0.0, &classes).is_err());
        assert!(polygons_to_geojson(&polygons, f64::NAN, &classes).is_err());
    }

    #[test]
    fn saddle_gives_two_polygons() {
        let p = trace_class_polygons(&[1, 0, 0, 1], 2, 2, 1).unwrap();
        assert_eq!(p.len(), 2);
        assert!(
            p.iter()
                .all(|q| q.exterior.len() == 5 && q.holes.is_empty())
        );
    }

    #[test]
    fn label_png_round_trip_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let labels = vec![0u8, 1, 255, 2, 1, 0];
        write_label_png(&path, &labels, 3, 2, &DEFAULT_PALETTE[..3]).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let info = r.info();
        assert_eq!(info.color_type, png::ColorType::Indexed);
        let trns = info.trns.as_ref().unwrap().to_vec();
        assert_eq!(trns[255], 0);
        assert_eq!(trns[0], 255);
        let pal = info.palette.as_ref().unwrap().to_vec();
        assert_eq!(&pal[3..6], &DEFAULT_PALETTE[1]);
        let mut buf = vec![0u8; r.output_buffer_size().unwrap()];
        let fi = r.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..fi.buffer_size()], &labels[..]);
        assert!(write_label_png(&path, &labels, 4, 2, &DEFAULT_PALETTE).is_err());
    }

    #[test]
    fn overlay_blends_and_draws_legend() {
        let (w, h) = (64, 64);
        let thumb = vec![100u8; 3 * w * h];
        let labels = vec![1u8, 255, 255, 0];
        let o = overlay_labels(
            Raster {
                data: &thumb,
                width_px: w,
                height_px: h,
            },
            Raster {
                data: &labels,
                width_px: 2,
                height_px: 2,
            },
            &DEFAULT_PALETTE[..2],
            0.5,
        )
        .unwrap();
        // bottom-left quadrant is NO_LABEL -> unchanged
        assert_eq!(
            &o[3 * (50 * w + 10)..3 * (50 * w + 10) + 3],
            &[100, 100, 100]
        );
        // bottom-right = class 0 blended
        let c = DEFAULT_PALETTE[0];
        let want: Vec<u8> = c
            .iter()
            .map(|&v| ((100.0 + v as f32) / 2.0).round() as u8)
            .collect();
        assert_eq!(&o[3 * (50 * w + 50)..3 * (50 * w + 50) + 3], &want[..]);
        // legend: black border pixel at (0, 0), first class square present
        assert_eq!(&o[0..3], &[0, 0, 0]);
        assert_eq!(
            &o[3 * (4 * w + 4)..3 * (4 * w + 4) + 3],
            &DEFAULT_PALETTE[0]
        );
    }
}

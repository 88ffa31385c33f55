//! Ground-truth masks: u8 class index per pixel, `ignore_value` (default 255) = background /
//! ignore; PNG (8-bit grey or palette indices, also 1/2/4/16-bit grey and grey-as-RGB) or TIFF
//! (single channel, e.g. a pbip-pyramid label pyramid; read region by region), at level-0 size or
//! at a declared downsample of level 0.
//!
//! # Alignment with the image patch
//!
//! A patch reads `read_size_px` level pixels starting at level pixel `lx = floor(x_lv0 / ds)`
//! (`ds` = level downsample) and resizes them to `out_size_px`. Output pixel `j` covers level
//! pixels `[j·r/o, (j+1)·r/o)` whose centre, in level-0 px, is `(lx + (j + ½)·r/o)·ds`. The GT
//! crop takes, for every output pixel, the mask pixel under that centre:
//! `floor(centre_lv0 / mask_downsample)` (nearest neighbour with half-pixel centres, as PIL's
//! `NEAREST`; at level 0 with no resize this is exactly the mask pixel under each image
//! pixel). Mask pixels outside the mask are `ignore_value` (upstream pads with 255).

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pbip_slide::{Backend, OpenOptions, Slide};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Largest mask decoded into memory (bytes).
pub const MAX_MASK_BYTES: usize = 1 << 32;

/// GT mask options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskOptions {
    /// Number of classes: valid labels are `0..num_classes`.
    pub num_classes: usize,
    /// Background / ignore value (default 255).
    pub ignore_value: u8,
    /// Declared mask downsample relative to slide level 0 (`None` = level-0 size, exactly).
    pub downsample: Option<f64>,
}

impl MaskOptions {
    /// Level-0 masks, 255 = ignore.
    pub fn new(num_classes: usize) -> Self {
        MaskOptions {
            num_classes,
            ignore_value: 255,
            downsample: None,
        }
    }
}

/// Placement of a patch, in the terms the crop needs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskPlacement {
    /// Level-0 x of the read's top-left corner.
    pub x_lv0: i64,
    /// Level-0 y of the read's top-left corner.
    pub y_lv0: i64,
    /// Downsample of the level read.
    pub level_downsample: f64,
    /// Square side read at that level, px.
    pub read_size_px: u32,
    /// Square side after resizing, px.
    pub out_size_px: u32,
}

enum Store {
    Memory { data: Vec<u8> },
    Tiff { slide: Box<Slide> },
}

/// An opened GT mask.
pub struct GtMask {
    path: PathBuf,
    width_px: u64,
    height_px: u64,
    downsample: f64,
    opts: MaskOptions,
    store: Store,
}

impl std::fmt::Debug for GtMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GtMask")
            .field("path", &self.path)
            .field("width_px", &self.width_px)
            .field("height_px", &self.height_px)
            .field("downsample", &self.downsample)
            .field(
                "store",
                &match self.store {
                    Store::Memory { .. } => "memory",
                    Store::Tiff { .. } => "tiff",
                },
            )
            .finish()
    }
}

fn mask_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Mask {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl GtMask {
    /// Opens a mask for a slide of level-0 size `slide_dims_lv0` and checks its size.
    /// PNG masks are decoded whole and every value is checked; TIFF masks stay on disk and each
    /// crop is checked.
    pub fn open(path: &Path, slide_dims_lv0: (u64, u64), opts: &MaskOptions) -> Result<GtMask> {
        let ds = opts.downsample.unwrap_or(1.0);
        if !(ds.is_finite() && ds > 0.0) {
            return Err(DataError::InvalidOption(format!(
                "GT mask downsample must be > 0, got {ds}"
            )));
        }
        if opts.num_classes == 0 || opts.num_classes > 255 {
            return Err(DataError::InvalidOption(format!(
                "GT masks need 1..=255 classes, got {}",
                opts.num_classes
            )));
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| mask_err(path, format!("cannot read: {e}")))?;
        let (w, h, store) = if magic == *b"\x89PNG" {
            let (w, h, data) = decode_png(path)?;
            (w, h, Store::Memory { data })
        } else if magic == *b"II*\0"
            || magic == *b"MM\0*"
            || magic == *b"II+\0"
            || magic == *b"MM\0+"
        {
            let slide = Slide::open(
                path,
                &OpenOptions {
                    backend: Backend::Rust,
                    cache_bytes: 64 << 20,
                    background_rgb: [opts.ignore_value; 3],
                },
            )?;
            let (w, h) = slide.dimensions();
            (
                w,
                h,
                Store::Tiff {
                    slide: Box::new(slide),
                },
            )
        } else {
            return Err(mask_err(path, "not a PNG or TIFF file"));
        };
        let m = GtMask {
            path: path.to_path_buf(),
            width_px: w,
            height_px: h,
            downsample: ds,
            opts: *opts,
            store,
        };
        m.check_size(slide_dims_lv0)?;
        if let Store::Memory { data } = &m.store {
            m.check_values(data, 0, 0, w)?;
        }
        tracing::debug!(mask = %path.display(), w, h, ds, "GT mask opened");
        Ok(m)
    }

    /// Builds a mask from memory (tests, previews); `data` is `width_px · height_px` bytes.
    pub fn from_memory(
        name: impl Into<PathBuf>,
        width_px: u64,
        height_px: u64,
        data: Vec<u8>,
        slide_dims_lv0: (u64, u64),
        opts: &MaskOptions,
    ) -> Result<GtMask> {
        let path = name.into();
        if data.len() as u64 != width_px * height_px {
            return Err(mask_err(&path, "buffer size does not match width × height"));
        }
        let m = GtMask {
            path,
            width_px,
            height_px,
            downsample: opts.downsample.unwrap_or(1.0),
            opts: *opts,
            store: Store::Memory { data },
        };
        m.check_size(slide_dims_lv0)?;
        if let Store::Memory { data } = &m.store {
            m.check_values(data, 0, 0, width_px)?;
        }
        Ok(m)
    }

    /// The mask file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Mask size in mask pixels.
    pub fn dimensions(&self) -> (u64, u64) {
        (self.width_px, self.height_px)
    }

    fn check_size(&self, (sw, sh): (u64, u64)) -> Result<()> {
        let ds = self.downsample;
        let ok = |m: u64, s: u64| {
            if ds == 1.0 {
                m == s
            } else {
                let e = s as f64 / ds;
                // Accept floor or ceil of the ideal size (small tolerance for float ratios).
                (m as f64) >= (e - 1e-6).floor() && (m as f64) <= (e + 1e-6).ceil()
            }
        };
        if ok(self.width_px, sw) && ok(self.height_px, sh) {
            return Ok(());
        }
        let expected = if ds == 1.0 {
            format!("{sw}x{sh} (the slide's level-0 size)")
        } else {
            format!(
                "about {:.1}x{:.1} (floor or ceil)",
                sw as f64 / ds,
                sh as f64 / ds
            )
        };
        Err(DataError::MaskSize {
            path: self.path.clone(),
            width_px: self.width_px,
            height_px: self.height_px,
            expected,
            slide_width_lv0: sw,
            slide_height_lv0: sh,
            downsample: ds,
        })
    }

    /// Checks that every value of a `stride`-wide block at (x0, y0) is a class or ignore.
    fn check_values(&self, data: &[u8], x0: u64, y0: u64, stride: u64) -> Result<()> {
        let nc = self.opts.num_classes;
        let ig = self.opts.ignore_value;
        if let Some(i) = data.iter().position(|&v| v as usize >= nc && v != ig) {
            let i = i as u64;
            return Err(DataError::MaskLabel {
                path: self.path.clone(),
                value: data[i as usize],
                x_px: x0 + i % stride.max(1),
                y_px: y0 + i / stride.max(1),
                num_classes: nc,
                ignore: ig,
            });
        }
        Ok(())
    }

    /// Mask pixel index along one axis for output pixel `j`.
    fn src_index(&self, p: &MaskPlacement, origin_lv0: i64, j: u32) -> i64 {
        let ds = p.level_downsample;
        let l0 = (origin_lv0 as f64 / ds).floor();
        let centre_lv0 =
            (l0 + (f64::from(j) + 0.5) * f64::from(p.read_size_px) / f64::from(p.out_size_px)) * ds;
        (centre_lv0 / self.downsample).floor() as i64
    }

    /// Crops and resizes the mask exactly like the image patch at `p` (`out_size_px²` bytes,
    /// row-major). Errors (naming the file) if a TIFF crop holds an invalid label.
    pub fn crop(&self, p: &MaskPlacement) -> Result<Vec<u8>> {
        if p.out_size_px == 0
            || p.read_size_px == 0
            || !p.level_downsample.is_finite()
            || p.level_downsample <= 0.0
        {
            return Err(DataError::InvalidOption(format!(
                "GT crop of {}: empty or invalid placement {p:?}",
                self.path.display()
            )));
        }
        let o = p.out_size_px as usize;
        let xs: Vec<i64> = (0..p.out_size_px)
            .map(|j| self.src_index(p, p.x_lv0, j))
            .collect();
        let ys: Vec<i64> = (0..p.out_size_px)
            .map(|i| self.src_index(p, p.y_lv0, i))
            .collect();
        let ig = self.opts.ignore_value;
        let mut out = vec![ig; o * o];
        match &self.store {
            Store::Memory { data } => {
                let (w, h) = (self.width_px as i64, self.height_px as i64);
                for (i, &sy) in ys.iter().enumerate() {
                    if sy < 0 || sy >= h {
                        continue;
                    }
                    let row = &data[(sy * w) as usize..((sy + 1) * w) as usize];
                    for (j, &sx) in xs.iter().enumerate() {
                        if sx >= 0 && sx < w {
                            out[i * o + j] = row[sx as usize];
                        }
                    }
                }
            }
            Store::Tiff { slide } => {
                // Bounding box of the sampled mask pixels, read once (outside = ignore).
                let (x0, x1) = (xs[0], xs[o - 1]);
                let (y0, y1) = (ys[0], ys[o - 1]);
                let bw = u32::try_from(x1 - x0 + 1)
                    .map_err(|_| mask_err(&self.path, "crop region too large"))?;
                let bh = u32::try_from(y1 - y0 + 1)
                    .map_err(|_| mask_err(&self.path, "crop region too large"))?;
                let region = slide.read_region(x0, y0, 0, bw, bh)?;
                let stride = bw as usize * 3;
                for (i, &sy) in ys.iter().enumerate() {
                    let ry = (sy - y0) as usize;
                    for (j, &sx) in xs.iter().enumerate() {
                        let rx = (sx - x0) as usize;
                        out[i * o + j] = region.data[ry * stride + rx * 3];
                    }
                }
                // Report the first bad value with its mask coordinates.
                if let Some(k) = out
                    .iter()
                    .position(|&v| v as usize >= self.opts.num_classes && v != ig)
                {
                    return Err(DataError::MaskLabel {
                        path: self.path.clone(),
                        value: out[k],
                        x_px: xs[k % o].max(0) as u64,
                        y_px: ys[k / o].max(0) as u64,
                        num_classes: self.opts.num_classes,
                        ignore: ig,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Decodes a PNG mask to one byte per pixel without palette expansion.
fn decode_png(path: &Path) -> Result<(u64, u64, Vec<u8>)> {
    let f = std::fs::File::open(path).map_err(|e| mask_err(path, format!("cannot open: {e}")))?;
    let mut dec = png::Decoder::new_with_limits(
        BufReader::new(f),
        png::Limits {
            bytes: MAX_MASK_BYTES,
        },
    );
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| mask_err(path, format!("corrupt PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .filter(|&s| s <= MAX_MASK_BYTES)
        .ok_or_else(|| mask_err(path, "PNG is too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| mask_err(path, format!("corrupt PNG: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let line = info.line_size;
    let depth = info.bit_depth as u8 as usize;
    let comps = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let mut data = vec![0u8; w * h];
    for y in 0..h {
        let src = &buf[y * line..(y + 1) * line];
        let dst = &mut data[y * w..(y + 1) * w];
        match depth {
            1 | 2 | 4 if comps == 1 => {
                let per = 8 / depth;
                let maskbits = (1u8 << depth) - 1;
                for (x, d) in dst.iter_mut().enumerate() {
                    let byte = src[x / per];
                    let shift = 8 - depth * (x % per + 1);
                    *d = (byte >> shift) & maskbits;
                }
            }
            8 => {
                for (x, d) in dst.iter_mut().enumerate() {
                    let px = &src[x * comps..(x + 1) * comps];
                    if comps >= 3 && (px[0] != px[1] || px[1] != px[2]) {
                        return Err(mask_err(
                            path,
                            format!(
                                "colour pixel {:?} at ({x}, {y}); a GT mask must hold one class \
                                 index per pixel (grey or palette PNG)",
                                &px[..3]
                            ),
                        ));
                    }
                    *d = px[0];
                }
            }
            16 if comps == 1 => {
                for (x, d) in dst.iter_mut().enumerate() {
                    let v = u16::from_be_bytes([src[2 * x], src[2 * x + 1]]);
                    *d = u8::try_from(v).map_err(|_| {
                        mask_err(path, format!("16-bit value {v} at ({x}, {y}) exceeds 255"))
                    })?;
                }
            }
            _ => {
                return Err(mask_err(
                    path,
                    format!(
                        "unsupported PNG layout ({:?}, {depth}-bit); use 8-bit grey or palette",
                        info.color_type
                    ),
                ));
            }
        }
    }
    Ok((w as u64, h as u64, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8x6 mask with value = (x + 10 y) % 2 except a few ignore pixels.
    fn grid(w: u64, h: u64) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| ((x + y) % 2) as u8))
            .collect()
    }

    #[test]
    fn level0_identity_crop() {
        let m = GtMask::from_memory("m", 8, 6, grid(8, 6), (8, 6), &MaskOptions::new(2)).unwrap();
        let p = MaskPlacement {
            x_lv0: 2,
            y_lv0: 1,
            level_downsample: 1.0,
            read_size_px: 3,
            out_size_px: 3,
        };
        let c = m.crop(&p).unwrap();
        // pixel (x, y) -> (x + y) % 2, x in 2..5, y in 1..4
        assert_eq!(c, [1, 0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn out_of_bounds_is_ignore_and_downscale_takes_centres() {
        // Mask value = x (0..8) on a 8x8 mask.
        let data: Vec<u8> = (0..8).flat_map(|_| 0..8u8).collect();
        let m = GtMask::from_memory("m", 8, 8, data, (8, 8), &MaskOptions::new(10)).unwrap();
        // Read 4 px at (6, 6) -> pixels 6,7,out,out with no resize.
        let c = m
            .crop(&MaskPlacement {
                x_lv0: 6,
                y_lv0: 6,
                level_downsample: 1.0,
                read_size_px: 4,
                out_size_px: 4,
            })
            .unwrap();
        assert_eq!(&c[..4], &[6, 7, 255, 255]);
        assert_eq!(&c[8..], &[255; 8]); // rows 8, 9 are below the mask
        // Read 8 px at x=0 resized to 2: centres at lv0 2.0 and 6.0 -> pixels 2 and 6.
        let c = m
            .crop(&MaskPlacement {
                x_lv0: 0,
                y_lv0: 0,
                level_downsample: 1.0,
                read_size_px: 8,
                out_size_px: 2,
            })
            .unwrap();
        assert_eq!(&c[..2], &[2, 6]);
        // Level with downsample 2, x_lv0 = 3 -> level pixel 1 (lv0 2..4); read 2, out 2: centres
        // (1 + 0.5)*2 = 3 and (2 + 0.5)*2 = 5.
        let c = m
            .crop(&MaskPlacement {
                x_lv0: 3,
                y_lv0: 0,
                level_downsample: 2.0,
                read_size_px: 2,
                out_size_px: 2,
            })
            .unwrap();
        assert_eq!(&c[..2], &[3, 5]);
    }

    #[test]
    fn downsampled_mask() {
        // Slide 16x4, mask /4 = 4x1, values 0..4 = mask x.
        let o = MaskOptions {
            downsample: Some(4.0),
            ..MaskOptions::new(4)
        };
        let m = GtMask::from_memory("m", 4, 1, vec![0, 1, 2, 3], (16, 4), &o).unwrap();
        // 8 lv0 px at x=4 -> 8 outputs: centres 4.5..11.5 -> mask px 1,1,1,1,2,2,2,2
        let c = m
            .crop(&MaskPlacement {
                x_lv0: 4,
                y_lv0: 0,
                level_downsample: 1.0,
                read_size_px: 8,
                out_size_px: 8,
            })
            .unwrap();
        assert_eq!(&c[..8], &[1, 1, 1, 1, 2, 2, 2, 2]);
        // 17x4 slide with a /4 mask of width 4 (floor) or 5 (ceil) is fine, 6 is not.
        assert!(GtMask::from_memory("m", 4, 1, vec![0; 4], (17, 4), &o).is_ok());
        assert!(GtMask::from_memory("m", 5, 1, vec![0; 5], (17, 4), &o).is_ok());
        assert!(GtMask::from_memory("m", 6, 1, vec![0; 6], (17, 4), &o).is_err());
    }

    #[test]
    fn wrong_size_and_bad_labels_name_the_file() {
        let e = GtMask::from_memory(
            "bad_size.png",
            8,
            6,
            grid(8, 6),
            (8, 7),
            &MaskOptions::new(2),
        )
        .unwrap_err();
        assert!(matches!(e, DataError::MaskSize { .. }));
        assert!(e.to_string().contains("bad_size.png"), "{e}");
        let mut d = grid(8, 6);
        d[8 * 2 + 5] = 7;
        d[3] = 255; // ignore is fine
        let e = GtMask::from_memory("bad_label.png", 8, 6, d, (8, 6), &MaskOptions::new(2))
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("bad_label.png") && s.contains("value 7") && s.contains("(5, 2)"),
            "{s}"
        );
    }
}

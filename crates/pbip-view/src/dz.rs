//! DeepZoom geometry (the layout OpenSeadragon and OpenSlide's `DeepZoomGenerator` use).
//!
//! DeepZoom level `L` of `N = ceil(log2(max(W, H))) + 1` levels has downsample `2^(N-1-L)`
//! relative to the full-resolution image and size `ceil(W / 2^(N-1-L))` x
//! `ceil(H / 2^(N-1-L))` (level 0 is 1 x 1, level N-1 is W x H). Each level is cut into tiles of
//! `tile_px` x `tile_px` plus `overlap_px` on every side that has a neighbour; tile
//! `(col, row)` starts at `col * tile_px - overlap` (no overlap on the first column / row) and is
//! clipped to the level.

use crate::error::{Result, ViewError};

/// Largest accepted tile side, px.
pub const MAX_TILE_PX: u32 = 4096;

/// The DeepZoom pyramid of an image of `width_px` x `height_px` full-resolution pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepZoom {
    width_px: u64,
    height_px: u64,
    tile_px: u32,
    overlap_px: u32,
    /// Level sizes, level 0 (1 x 1) first.
    levels: Vec<(u64, u64)>,
}

/// The address of one DeepZoom tile: column `col`, row `row` of `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileAddr {
    /// DeepZoom level (0 = 1 x 1 px).
    pub level: usize,
    /// Column.
    pub col: u64,
    /// Row.
    pub row: u64,
}

/// A tile of a DeepZoom level, in pixels of that level (overlap included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileRect {
    /// Left edge, level px.
    pub x_px: u64,
    /// Top edge, level px.
    pub y_px: u64,
    /// Width, px.
    pub width_px: u32,
    /// Height, px.
    pub height_px: u32,
}

impl DeepZoom {
    /// The pyramid of a `width_px` x `height_px` image (both ≥ 1) with square tiles of `tile_px`
    /// (1..=[`MAX_TILE_PX`]) and `overlap_px` (< `tile_px`) px of overlap.
    pub fn new(width_px: u64, height_px: u64, tile_px: u32, overlap_px: u32) -> Result<Self> {
        if width_px == 0 || height_px == 0 {
            return Err(ViewError::Invalid(format!(
                "empty image {width_px} x {height_px} px"
            )));
        }
        if tile_px == 0 || tile_px > MAX_TILE_PX || overlap_px >= tile_px {
            return Err(ViewError::Invalid(format!(
                "tile size {tile_px} px / overlap {overlap_px} px: need 1 ≤ tile ≤ {MAX_TILE_PX} and overlap < tile"
            )));
        }
        let mut levels = vec![(width_px, height_px)];
        let (mut w, mut h) = (width_px, height_px);
        while w > 1 || h > 1 {
            w = w.div_ceil(2);
            h = h.div_ceil(2);
            levels.push((w, h));
        }
        levels.reverse();
        Ok(Self {
            width_px,
            height_px,
            tile_px,
            overlap_px,
            levels,
        })
    }

    /// Full-resolution width, px.
    pub fn width_px(&self) -> u64 {
        self.width_px
    }

    /// Full-resolution height, px.
    pub fn height_px(&self) -> u64 {
        self.height_px
    }

    /// Tile side without overlap, px.
    pub fn tile_px(&self) -> u32 {
        self.tile_px
    }

    /// Overlap, px.
    pub fn overlap_px(&self) -> u32 {
        self.overlap_px
    }

    /// Number of levels.
    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// Size of `level` (None past the last level).
    pub fn level_dimensions(&self, level: usize) -> Option<(u64, u64)> {
        self.levels.get(level).copied()
    }

    /// Full-resolution pixels per pixel of `level` (a power of two).
    pub fn level_downsample(&self, level: usize) -> f64 {
        let top = self.levels.len().saturating_sub(1);
        2f64.powi(top.saturating_sub(level) as i32)
    }

    /// Tiles across and down of `level`.
    pub fn tile_grid(&self, level: usize) -> Option<(u64, u64)> {
        let (w, h) = self.level_dimensions(level)?;
        let t = u64::from(self.tile_px);
        Some((w.div_ceil(t), h.div_ceil(t)))
    }

    /// The rectangle of tile (`col`, `row`) of `level`, None when it does not exist.
    pub fn tile_rect(&self, level: usize, col: u64, row: u64) -> Option<TileRect> {
        let (w, h) = self.level_dimensions(level)?;
        let (cols, rows) = self.tile_grid(level)?;
        if col >= cols || row >= rows {
            return None;
        }
        let t = u64::from(self.tile_px);
        let o = u64::from(self.overlap_px);
        let axis = |i: u64, n: u64, size: u64| -> (u64, u32) {
            let before = if i == 0 { 0 } else { o };
            let after = if i + 1 == n { 0 } else { o };
            let start = i * t;
            let len = t.min(size - start) + before + after;
            // `len` ≤ tile + 2 overlap < 3 * MAX_TILE_PX.
            (start - before, len as u32)
        };
        let (x_px, width_px) = axis(col, cols, w);
        let (y_px, height_px) = axis(row, rows, h);
        Some(TileRect {
            x_px,
            y_px,
            width_px: width_px.min((w - x_px) as u32),
            height_px: height_px.min((h - y_px) as u32),
        })
    }

    /// The `.dzi` XML descriptor, tiles in `format` (`jpeg`, `png`).
    pub fn dzi_xml(&self, format: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Image xmlns=\"http://schemas.microsoft.com/deepzoom/2008\" \
             Format=\"{format}\" Overlap=\"{}\" TileSize=\"{}\"><Size Width=\"{}\" Height=\"{}\"/></Image>\n",
            self.overlap_px, self.tile_px, self.width_px, self.height_px
        )
    }
}

/// Parses a tile file name `"<col>_<row>.<ext>"` with the expected extension.
pub fn parse_tile_name(name: &str, ext: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    let (c, r) = stem.split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(c) || !digits(r) {
        return None;
    }
    Some((c.parse().ok()?, r.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_openslide_deepzoom() {
        // OpenSlide's DeepZoomGenerator for a 1000 x 600 image: 11 levels, 1x1 .. 1000x600.
        let dz = DeepZoom::new(1000, 600, 254, 1).unwrap();
        assert_eq!(dz.level_count(), 11);
        assert_eq!(dz.level_dimensions(0), Some((1, 1)));
        assert_eq!(dz.level_dimensions(10), Some((1000, 600)));
        assert_eq!(dz.level_dimensions(9), Some((500, 300)));
        assert_eq!(dz.level_dimensions(8), Some((250, 150)));
        assert_eq!(dz.level_dimensions(11), None);
        assert_eq!(dz.level_downsample(10), 1.0);
        assert_eq!(dz.level_downsample(8), 4.0);
        // Odd sizes round up: 1001 -> 501 -> 251.
        let dz = DeepZoom::new(1001, 1, 254, 1).unwrap();
        assert_eq!(dz.level_dimensions(dz.level_count() - 2), Some((501, 1)));
        assert_eq!(dz.level_dimensions(dz.level_count() - 3), Some((251, 1)));
        // OpenSeadragon's level count: ceil(log2(max side)) + 1.
        assert_eq!(DeepZoom::new(1024, 3, 254, 1).unwrap().level_count(), 11);
        assert_eq!(DeepZoom::new(1025, 3, 254, 1).unwrap().level_count(), 12);
        assert_eq!(DeepZoom::new(1, 1, 254, 1).unwrap().level_count(), 1);
    }

    #[test]
    fn tiles_have_overlap_only_towards_neighbours() {
        let dz = DeepZoom::new(1000, 600, 254, 1).unwrap();
        assert_eq!(dz.tile_grid(10), Some((4, 3)));
        let t = dz.tile_rect(10, 0, 0).unwrap();
        assert_eq!((t.x_px, t.y_px, t.width_px, t.height_px), (0, 0, 255, 255));
        let t = dz.tile_rect(10, 1, 1).unwrap();
        assert_eq!(
            (t.x_px, t.y_px, t.width_px, t.height_px),
            (253, 253, 256, 256)
        );
        // Last column: 1000 - 762 = 238 px plus the left overlap.
        let t = dz.tile_rect(10, 3, 2).unwrap();
        assert_eq!(
            (t.x_px, t.y_px, t.width_px, t.height_px),
            (761, 507, 239, 93)
        );
        assert_eq!(dz.tile_rect(10, 4, 0), None);
        assert_eq!(dz.tile_rect(10, 0, 3), None);
        assert_eq!(dz.tile_rect(11, 0, 0), None);
        // Every pixel of a level is covered, tiles stay inside it.
        for level in 0..dz.level_count() {
            let (w, h) = dz.level_dimensions(level).unwrap();
            let (cols, rows) = dz.tile_grid(level).unwrap();
            let mut covered_w = 0;
            for c in 0..cols {
                let t = dz.tile_rect(level, c, 0).unwrap();
                assert!(t.x_px + u64::from(t.width_px) <= w);
                covered_w = covered_w.max(t.x_px + u64::from(t.width_px));
            }
            assert_eq!(covered_w, w, "level {level}");
            let last = dz.tile_rect(level, 0, rows - 1).unwrap();
            assert_eq!(last.y_px + u64::from(last.height_px), h, "level {level}");
        }
    }

    #[test]
    fn bad_geometry_is_rejected() {
        assert!(DeepZoom::new(0, 5, 254, 1).is_err());
        assert!(DeepZoom::new(5, 5, 0, 0).is_err());
        assert!(DeepZoom::new(5, 5, 4, 4).is_err());
        assert!(DeepZoom::new(5, 5, MAX_TILE_PX + 1, 0).is_err());
    }

    #[test]
    fn dzi_describes_size_and_tiles() {
        let x = DeepZoom::new(1000, 600, 254, 1).unwrap().dzi_xml("jpeg");
        for needle in [
            "Format=\"jpeg\"",
            "Overlap=\"1\"",
            "TileSize=\"254\"",
            "Width=\"1000\"",
            "Height=\"600\"",
            "http://schemas.microsoft.com/deepzoom/2008",
        ] {
            assert!(x.contains(needle), "{needle} missing in {x}");
        }
    }

    #[test]
    fn tile_names_parse_strictly() {
        assert_eq!(parse_tile_name("3_14.jpeg", "jpeg"), Some((3, 14)));
        assert_eq!(parse_tile_name("0_0.png", "png"), Some((0, 0)));
        for bad in [
            "3_14.png",
            "3-14.jpeg",
            "_1.jpeg",
            "1_.jpeg",
            "a_1.jpeg",
            "1_1_1.jpeg",
            "+1_2.jpeg",
            "../1_2.jpeg",
        ] {
            assert_eq!(parse_tile_name(bad, "jpeg"), None, "{bad}");
        }
    }
}

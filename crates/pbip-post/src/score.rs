//! Whole-slide score of a predicted label mask against a GT mask, both streamed row by row (used by
//! `pbip infer --gt-dir`, `pbip demo` and `pbip view --gt-dir`).
//!
//! GT: an 8-bit grey or indexed PNG of the slide (any size, usually level 0), pixel = class index,
//! 255 = background. Prediction: `segmentation_mask.png` (255 = no label). The GT is sampled at the
//! centre of every prediction pixel. "Tissue" = GT != 255; "tumour" = GT == the positive class.

use std::path::{Path, PathBuf};

use crate::error::{PostError, Result};

/// Pixel counts on the prediction grid, from which every score follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaskCounts {
    /// GT tissue pixels.
    pub tissue_px: u64,
    /// GT positive-class pixels.
    pub tumour_px: u64,
    /// Predicted positive-class pixels.
    pub predicted_tumour_px: u64,
    /// GT and predicted positive.
    pub intersection_px: u64,
    /// GT or predicted positive.
    pub union_px: u64,
    /// GT tissue that is not positive, predicted positive.
    pub false_positive_px: u64,
}

fn frac(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl MaskCounts {
    /// Positive-class IoU (None when the GT has none of it).
    pub fn tumour_iou(&self) -> Option<f64> {
        (self.tumour_px > 0).then(|| frac(self.intersection_px, self.union_px))
    }
    /// IoU of the trivial map "all tissue is tumour" = tumour / tissue (None without tumour).
    pub fn trivial_iou(&self) -> Option<f64> {
        (self.tumour_px > 0).then(|| frac(self.tumour_px, self.tissue_px))
    }
    /// Tissue predicted tumour that is not tumour, over tissue.
    pub fn false_positive_tissue_fraction(&self) -> f64 {
        frac(self.false_positive_px, self.tissue_px)
    }
    /// The same for the trivial map: (tissue - tumour) / tissue.
    pub fn trivial_false_positive_fraction(&self) -> f64 {
        frac(self.tissue_px - self.tumour_px, self.tissue_px)
    }
    /// GT tumour over GT tissue.
    pub fn gt_tumour_fraction(&self) -> f64 {
        frac(self.tumour_px, self.tissue_px)
    }
}

/// An 8-bit grey or indexed label PNG read row by row.
struct LabelRows {
    path: PathBuf,
    reader: png::Reader<std::io::BufReader<std::fs::File>>,
    width: usize,
    height: usize,
    next: usize,
    row: Vec<u8>,
}

impl LabelRows {
    fn open(path: &Path) -> Result<Self> {
        let err = |message: String| PostError::Format {
            path: path.to_path_buf(),
            message,
        };
        let f = std::fs::File::open(path).map_err(|source| PostError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(f));
        dec.set_transformations(png::Transformations::IDENTITY);
        let reader = dec.read_info().map_err(|e| err(e.to_string()))?;
        let info = reader.info();
        if info.bit_depth != png::BitDepth::Eight
            || !matches!(
                info.color_type,
                png::ColorType::Grayscale | png::ColorType::Indexed
            )
        {
            return Err(err(format!(
                "expected an 8-bit gray or indexed PNG of labels, got {:?} {:?}",
                info.color_type, info.bit_depth
            )));
        }
        if info.interlaced {
            return Err(err(
                "interlaced PNGs are not supported; re-save without interlacing".into(),
            ));
        }
        let (width, height) = (info.width as usize, info.height as usize);
        if width == 0 || height == 0 {
            return Err(err("empty mask".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            width,
            height,
            next: 0,
            row: Vec::new(),
        })
    }

    /// Row `y` (rows must be asked in non-decreasing order).
    fn row(&mut self, y: usize) -> Result<&[u8]> {
        while self.next <= y {
            let r = self
                .reader
                .next_row()
                .map_err(|e| PostError::Format {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?
                .ok_or_else(|| PostError::Format {
                    path: self.path.clone(),
                    message: "truncated".into(),
                })?;
            self.row.clear();
            self.row.extend_from_slice(r.data());
            self.next += 1;
        }
        Ok(&self.row)
    }
}

/// Counts `prediction_png` against `gt_png` for class `positive` (see the module docs).
pub fn score_label_pngs(prediction_png: &Path, gt_png: &Path, positive: u8) -> Result<MaskCounts> {
    let mut pred = LabelRows::open(prediction_png)?;
    let mut gt = LabelRows::open(gt_png)?;
    let (mw, mh, gw, gh) = (pred.width, pred.height, gt.width, gt.height);
    let (sx, sy) = (gw as f64 / mw as f64, gh as f64 / mh as f64);
    let cols: Vec<usize> = (0..mw)
        .map(|i| (((i as f64 + 0.5) * sx) as usize).min(gw - 1))
        .collect();
    let mut c = MaskCounts::default();
    for j in 0..mh {
        let gy = (((j as f64 + 0.5) * sy) as usize).min(gh - 1);
        let prow = pred.row(j)?.to_vec();
        let grow = gt.row(gy)?;
        for (i, &p) in prow.iter().enumerate() {
            let g = grow[cols[i]];
            let is_tissue = g != 255;
            let t = g == positive;
            let pt = p == positive;
            c.tissue_px += u64::from(is_tissue);
            c.tumour_px += u64::from(t);
            c.predicted_tumour_px += u64::from(pt);
            c.intersection_px += u64::from(t && pt);
            c.union_px += u64::from(t || pt);
            c.false_positive_px += u64::from(is_tissue && !t && pt);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
        let data: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        let mut e = png::Encoder::new(
            std::io::BufWriter::new(std::fs::File::create(path).unwrap()),
            w,
            h,
        );
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e.write_header().unwrap();
        wr.write_image_data(&data).unwrap();
        wr.finish().unwrap();
    }

    #[test]
    fn iou_and_false_positives_on_a_coarser_prediction() {
        let d = tempfile::tempdir().unwrap();
        let gt = d.path().join("gt.png");
        let pred = d.path().join("pred.png");
        // GT 40 x 40: tissue everywhere, tumour (1) in x < 20. Prediction 10 x 10 (downsample 4)
        // with tumour in x < 5: the same area, IoU 1; then tumour everywhere: IoU 0.5.
        write_gray(&gt, 40, 40, |x, _| u8::from(x < 20));
        write_gray(&pred, 10, 10, |x, _| u8::from(x < 5));
        let s = score_label_pngs(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou(), Some(1.0));
        write_gray(&pred, 10, 10, |x, _| u8::from(x < 10));
        let s = score_label_pngs(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou(), Some(0.5));
        assert!((s.false_positive_tissue_fraction() - 0.5).abs() < 1e-12);
        assert!((s.gt_tumour_fraction() - 0.5).abs() < 1e-12);
        assert_eq!(s.trivial_iou(), Some(0.5));
        // Benign GT: no IoU.
        write_gray(&gt, 40, 40, |x, _| if x < 8 { 255 } else { 0 });
        let s = score_label_pngs(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou(), None);
        assert!((s.false_positive_tissue_fraction() - 1.0).abs() < 1e-12);
        std::fs::write(&gt, b"nope").unwrap();
        assert!(
            score_label_pngs(&pred, &gt, 1)
                .unwrap_err()
                .to_string()
                .contains("gt.png")
        );
    }
}

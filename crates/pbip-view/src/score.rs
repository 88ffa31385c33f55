//! Whole-slide score of a prediction against a GT mask (`pbip view --gt-dir`), with the
//! definitions `pbip demo` prints (stage 5): tumour IoU on slides with tumour, otherwise the
//! fraction of tissue called tumour. GT: an 8-bit grey or indexed PNG of the slide (any size,
//! usually level 0), pixel = class index, 255 = background; it is sampled at the centre of every
//! prediction pixel. Prediction: `segmentation_mask.png`. Both are streamed row by row.

use std::path::Path;

use serde::Serialize;

use crate::error::{Result, format_err, io_err};

/// Score of one slide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideScore {
    /// Tumour IoU (None when the GT has no tumour).
    pub tumour_iou: Option<f64>,
    /// GT tissue predicted tumour that is not tumour, over GT tissue.
    pub false_positive_tissue_fraction: f64,
    /// GT tumour pixels over GT tissue pixels (prediction grid).
    pub gt_tumour_fraction: f64,
}

struct Rows {
    reader: png::Reader<std::io::BufReader<std::fs::File>>,
    width: usize,
    height: usize,
    next: usize,
    row: Vec<u8>,
}

impl Rows {
    fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(f));
        dec.set_transformations(png::Transformations::IDENTITY);
        let reader = dec
            .read_info()
            .map_err(|e| format_err(path, e.to_string()))?;
        let info = reader.info();
        if info.bit_depth != png::BitDepth::Eight
            || !matches!(
                info.color_type,
                png::ColorType::Grayscale | png::ColorType::Indexed
            )
            || info.interlaced
        {
            return Err(format_err(
                path,
                "expected a non-interlaced 8-bit grey or indexed label PNG",
            ));
        }
        let (width, height) = (info.width as usize, info.height as usize);
        if width == 0 || height == 0 {
            return Err(format_err(path, "empty mask"));
        }
        Ok(Self {
            reader,
            width,
            height,
            next: 0,
            row: Vec::new(),
        })
    }

    fn row(&mut self, y: usize, path: &Path) -> Result<&[u8]> {
        while self.next <= y {
            let r = self
                .reader
                .next_row()
                .map_err(|e| format_err(path, e.to_string()))?
                .ok_or_else(|| format_err(path, "truncated"))?;
            self.row.clear();
            self.row.extend_from_slice(r.data());
            self.next += 1;
        }
        Ok(&self.row)
    }
}

/// Scores `prediction_png` against `gt_png` for class `positive`.
pub fn score_slide(prediction_png: &Path, gt_png: &Path, positive: u8) -> Result<SlideScore> {
    let mut pred = Rows::open(prediction_png)?;
    let mut gt = Rows::open(gt_png)?;
    let (mw, mh) = (pred.width, pred.height);
    let (gw, gh) = (gt.width, gt.height);
    let (sx, sy) = (gw as f64 / mw as f64, gh as f64 / mh as f64);
    let cols: Vec<usize> = (0..mw)
        .map(|i| (((i as f64 + 0.5) * sx) as usize).min(gw - 1))
        .collect();
    let (mut inter, mut union, mut tissue, mut tumour, mut fp) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for j in 0..mh {
        let gy = (((j as f64 + 0.5) * sy) as usize).min(gh - 1);
        let prow = pred.row(j, prediction_png)?.to_vec();
        let grow = gt.row(gy, gt_png)?;
        for (i, &p) in prow.iter().enumerate() {
            let g = grow[cols[i]];
            let is_tissue = g != 255;
            let t = g == positive;
            let pt = p == positive;
            tissue += u64::from(is_tissue);
            tumour += u64::from(t);
            inter += u64::from(t && pt);
            union += u64::from(t || pt);
            fp += u64::from(is_tissue && !t && pt);
        }
    }
    let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(SlideScore {
        tumour_iou: (tumour > 0).then(|| frac(inter, union)),
        false_positive_tissue_fraction: frac(fp, tissue),
        gt_tumour_fraction: frac(tumour, tissue),
    })
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
        let s = score_slide(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou, Some(1.0));
        write_gray(&pred, 10, 10, |x, _| u8::from(x < 10));
        let s = score_slide(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou, Some(0.5));
        assert!((s.false_positive_tissue_fraction - 0.5).abs() < 1e-12);
        assert!((s.gt_tumour_fraction - 0.5).abs() < 1e-12);
        // Benign GT: no IoU.
        write_gray(&gt, 40, 40, |x, _| if x < 8 { 255 } else { 0 });
        let s = score_slide(&pred, &gt, 1).unwrap();
        assert_eq!(s.tumour_iou, None);
        assert!((s.false_positive_tissue_fraction - 1.0).abs() < 1e-12);
        std::fs::write(&gt, b"nope").unwrap();
        assert!(
            score_slide(&pred, &gt, 1)
                .unwrap_err()
                .to_string()
                .contains("gt.png")
        );
    }
}

//! Tissue masks as hs2p computes them (`hs2p.wsi.segmentation.segment_tissue`).

use crate::cv;
use crate::error::{TilingError, check_buffer};

/// HSV tissue detection parameters (hs2p `method: hsv`, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HsvParams {
    /// Inclusive lower bound (H, S, V), H in OpenCV units 0..=180. Default `(90, 8, 103)`.
    pub lower: [u8; 3],
    /// Inclusive upper bound (H, S, V). Default `(180, 255, 255)`.
    pub upper: [u8; 3],
    /// Side of the square closing kernel in px (0 = no closing). Default 4.
    pub close: u32,
}

impl Default for HsvParams {
    fn default() -> Self {
        HsvParams {
            lower: [90, 8, 103],
            upper: [180, 255, 255],
            close: 4,
        }
    }
}

/// Tissue detection method (hs2p `seg_params`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TissueMethod {
    /// `inRange(HSV, lower, upper)` then closing (hs2p default).
    Hsv(HsvParams),
    /// Median blur (`mthresh`, default 7) of the HSV saturation, then Otsu's threshold;
    /// then closing with a `close` px square kernel (default 4).
    Otsu {
        /// Median blur kernel size (odd). Default 7.
        mthresh: u32,
        /// Closing kernel size (0 = none). Default 4.
        close: u32,
    },
    /// Median-blurred saturation `> sthresh` (default 8), then closing.
    Threshold {
        /// Median blur kernel size (odd). Default 7.
        mthresh: u32,
        /// Saturation threshold (strictly greater is tissue). Default 8.
        sthresh: u8,
        /// Closing kernel size (0 = none). Default 4.
        close: u32,
    },
}

impl Default for TissueMethod {
    fn default() -> Self {
        TissueMethod::Hsv(HsvParams::default())
    }
}

impl TissueMethod {
    /// hs2p's name of the method (`"hsv"`, `"otsu"`, `"threshold"`).
    pub fn name(&self) -> &'static str {
        match self {
            TissueMethod::Hsv(_) => "hsv",
            TissueMethod::Otsu { .. } => "otsu",
            TissueMethod::Threshold { .. } => "threshold",
        }
    }

    /// Closing kernel size of the method.
    pub fn close(&self) -> u32 {
        match *self {
            TissueMethod::Hsv(p) => p.close,
            TissueMethod::Otsu { close, .. } | TissueMethod::Threshold { close, .. } => close,
        }
    }
}

fn to_binary(mut m: Vec<u8>) -> Vec<u8> {
    for v in &mut m {
        *v = u8::from(*v != 0);
    }
    m
}

/// hs2p's default tissue mask: OpenCV RGB->HSV, `inRange(lower, upper)`, closing with a
/// `close x close` all-ones kernel (OpenCV anchor and border). Returns 0/1 per pixel.
pub fn tissue_mask_hsv(
    width: u32,
    height: u32,
    rgb: &[u8],
    params: &HsvParams,
) -> Result<Vec<u8>, TilingError> {
    let hsv = cv::rgb_to_hsv(width, height, rgb)?;
    let m = cv::in_range3(width, height, &hsv, params.lower, params.upper, 255)?;
    Ok(to_binary(cv::close_square(
        width,
        height,
        &m,
        params.close,
    )?))
}

/// Median-blurred HSV saturation channel (hs2p's input to the `otsu` / `threshold` methods).
pub fn blurred_saturation(
    width: u32,
    height: u32,
    rgb: &[u8],
    mthresh: u32,
) -> Result<Vec<u8>, TilingError> {
    let hsv = cv::rgb_to_hsv(width, height, rgb)?;
    let s: Vec<u8> = hsv.chunks_exact(3).map(|p| p[1]).collect();
    cv::median_blur(width, height, &s, mthresh)
}

/// Tissue mask (0/1 per pixel) of an RGB8 image at the segmentation level, by `method`.
pub fn tissue_mask(
    width: u32,
    height: u32,
    rgb: &[u8],
    method: &TissueMethod,
) -> Result<Vec<u8>, TilingError> {
    check_buffer("RGB image", width, height, 3, rgb)?;
    match *method {
        TissueMethod::Hsv(p) => tissue_mask_hsv(width, height, rgb, &p),
        TissueMethod::Otsu { mthresh, close } => {
            let s = blurred_saturation(width, height, rgb, mthresh)?;
            let t = cv::otsu_threshold(&s);
            tracing::debug!(otsu_threshold = t, "otsu tissue threshold");
            let m = cv::threshold_binary(&s, t, 255);
            Ok(to_binary(cv::close_square(width, height, &m, close)?))
        }
        TissueMethod::Threshold {
            mthresh,
            sthresh,
            close,
        } => {
            let s = blurred_saturation(width, height, rgb, mthresh)?;
            let m = cv::threshold_binary(&s, sthresh, 255);
            Ok(to_binary(cv::close_square(width, height, &m, close)?))
        }
    }
}

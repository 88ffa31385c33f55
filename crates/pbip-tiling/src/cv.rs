//! Bit-exact re-implementations of the OpenCV 8-bit image operations hs2p uses for tissue
//! detection: `cvtColor(COLOR_RGB2HSV)`, `inRange`, `morphologyEx(MORPH_CLOSE)` with a square
//! all-ones kernel, `medianBlur`, and `threshold` (binary and Otsu).
//!
//! Parity with OpenCV (opencv-python-headless 5.0.0) is checked in `tests/opencv_parity.rs`
//! against outputs written by `testdata/make_expected.py`.

use crate::error::{TilingError, check_buffer};

const HSV_SHIFT: u32 = 12;

/// OpenCV's `cvRound` / `saturate_cast<int>(double)`: round half to even.
fn cv_round(v: f64) -> i32 {
    v.round_ties_even() as i32
}

/// OpenCV's lookup tables for 8-bit RGB -> HSV with hue range 180:
/// `sdiv[i] = round((255 << 12) / i)`, `hdiv[i] = round((180 << 12) / (6 i))`, `[0] = 0`.
fn hsv_tables() -> ([i32; 256], [i32; 256]) {
    let mut sdiv = [0i32; 256];
    let mut hdiv = [0i32; 256];
    for i in 1..256usize {
        sdiv[i] = cv_round(f64::from(255i32 << HSV_SHIFT) / i as f64);
        hdiv[i] = cv_round(f64::from(180i32 << HSV_SHIFT) / (6.0 * i as f64));
    }
    (sdiv, hdiv)
}

/// `cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)` for an 8-bit RGB image: returns HSV8 (row-major,
/// 3 bytes per pixel) with H in 0..=180 (OpenCV's half-degree hue), S and V in 0..=255,
/// using OpenCV's fixed-point arithmetic (12-bit tables, round half to even) so that the
/// result is identical byte for byte.
pub fn rgb_to_hsv(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, TilingError> {
    check_buffer("RGB image", width, height, 3, rgb)?;
    let (sdiv, hdiv) = hsv_tables();
    let round = 1i32 << (HSV_SHIFT - 1);
    let mut out = vec![0u8; rgb.len()];
    for (src, dst) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        let (r, g, b) = (i32::from(src[0]), i32::from(src[1]), i32::from(src[2]));
        let v = r.max(g).max(b);
        let vmin = r.min(g).min(b);
        let diff = v - vmin;
        let vr = if v == r { -1i32 } else { 0 };
        let vg = if v == g { -1i32 } else { 0 };
        let s = (diff * sdiv[v as usize] + round) >> HSV_SHIFT;
        let mut h =
            (vr & (g - b)) + (!vr & ((vg & (b - r + 2 * diff)) + (!vg & (r - g + 4 * diff))));
        h = (h * hdiv[diff as usize] + round) >> HSV_SHIFT;
        if h < 0 {
            h += 180;
        }
        dst[0] = h.clamp(0, 255) as u8;
        dst[1] = s.clamp(0, 255) as u8;
        dst[2] = v as u8;
    }
    Ok(out)
}

/// `cv2.inRange(img3, lower, upper)` for a 3-channel 8-bit image (inclusive bounds on every
/// channel), returning 0/`on` per pixel (OpenCV uses `on = 255`).
pub fn in_range3(
    width: u32,
    height: u32,
    img: &[u8],
    lower: [u8; 3],
    upper: [u8; 3],
    on: u8,
) -> Result<Vec<u8>, TilingError> {
    check_buffer("3-channel image", width, height, 3, img)?;
    Ok(img
        .chunks_exact(3)
        .map(|p| {
            let inside = (0..3).all(|c| p[c] >= lower[c] && p[c] <= upper[c]);
            if inside { on } else { 0 }
        })
        .collect())
}

/// Max (`dilate = true`) or min filter with a `k x k` all-ones kernel anchored at `(k/2, k/2)`
/// (OpenCV's default anchor): `dst(y, x) = max/min over dy, dx in [-k/2, k - 1 - k/2]` of
/// `src(y + dy, x + dx)`. Pixels outside the image are ignored, which is exactly OpenCV's
/// default border for morphology (`BORDER_CONSTANT` with `morphologyDefaultBorderValue()`,
/// i.e. 0 for dilation and 255 for erosion). The square kernel is applied separably.
fn rank_filter(width: usize, height: usize, src: &[u8], k: usize, dilate: bool) -> Vec<u8> {
    let a = k / 2;
    let lo = a; // offsets -lo ..= hi
    let hi = k - 1 - a;
    let pick = |acc: u8, v: u8| if dilate { acc.max(v) } else { acc.min(v) };
    let mut rows = vec![0u8; src.len()];
    for y in 0..height {
        let row = &src[y * width..(y + 1) * width];
        for x in 0..width {
            let x0 = x.saturating_sub(lo);
            let x1 = (x + hi).min(width - 1);
            let mut acc = row[x];
            for &v in &row[x0..=x1] {
                acc = pick(acc, v);
            }
            rows[y * width + x] = acc;
        }
    }
    let mut out = vec![0u8; src.len()];
    for y in 0..height {
        let y0 = y.saturating_sub(lo);
        let y1 = (y + hi).min(height - 1);
        for x in 0..width {
            let mut acc = rows[y * width + x];
            for yy in y0..=y1 {
                acc = pick(acc, rows[yy * width + x]);
            }
            out[y * width + x] = acc;
        }
    }
    out
}

/// [`rank_filter`] over a `k x k` square (`dilate`, else erosion), inputs checked.
fn square_filter(
    width: u32,
    height: u32,
    img: &[u8],
    k: u32,
    dilate: bool,
) -> Result<Vec<u8>, TilingError> {
    check_buffer("mask", width, height, 1, img)?;
    if k == 0 {
        return Err(TilingError::param("kernel size", "must be >= 1"));
    }
    if img.is_empty() {
        return Ok(Vec::new());
    }
    Ok(rank_filter(
        width as usize,
        height as usize,
        img,
        k as usize,
        dilate,
    ))
}

/// `cv2.dilate(img, np.ones((k, k), np.uint8))` with OpenCV's default anchor and border.
pub fn dilate_square(width: u32, height: u32, img: &[u8], k: u32) -> Result<Vec<u8>, TilingError> {
    square_filter(width, height, img, k, true)
}

/// `cv2.erode(img, np.ones((k, k), np.uint8))` with OpenCV's default anchor and border.
pub fn erode_square(width: u32, height: u32, img: &[u8], k: u32) -> Result<Vec<u8>, TilingError> {
    square_filter(width, height, img, k, false)
}

/// `cv2.morphologyEx(img, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))`: dilation then erosion
/// with the same (for even `k`, off-centre) anchor `(k/2, k/2)` and OpenCV's default border.
/// For even `k` this is OpenCV's behaviour, not a textbook closing (the structuring element
/// is not reflected between the two passes). `k = 0` returns the input unchanged (hs2p skips
/// closing when `close <= 0`).
pub fn close_square(width: u32, height: u32, img: &[u8], k: u32) -> Result<Vec<u8>, TilingError> {
    check_buffer("mask", width, height, 1, img)?;
    if k == 0 || img.is_empty() {
        return Ok(img.to_vec());
    }
    let (w, h, k) = (width as usize, height as usize, k as usize);
    let d = rank_filter(w, h, img, k, true);
    Ok(rank_filter(w, h, &d, k, false))
}

/// `cv2.medianBlur(img, ksize)` for a single-channel 8-bit image: median of the
/// `ksize x ksize` window with replicated borders (`BORDER_REPLICATE`, as OpenCV always
/// uses for median blur). `ksize` must be odd; 1 returns a copy.
pub fn median_blur(
    width: u32,
    height: u32,
    img: &[u8],
    ksize: u32,
) -> Result<Vec<u8>, TilingError> {
    check_buffer("single-channel image", width, height, 1, img)?;
    if ksize.is_multiple_of(2) {
        return Err(TilingError::param(
            "median blur kernel size",
            format!("{ksize} must be odd and >= 1"),
        ));
    }
    if ksize == 1 || img.is_empty() {
        return Ok(img.to_vec());
    }
    let (w, h) = (width as i64, height as i64);
    let r = i64::from(ksize / 2);
    let rank = (ksize as usize * ksize as usize) / 2; // 0-based index of the median
    let at = |x: i64, y: i64| -> u8 {
        let xc = x.clamp(0, w - 1) as usize;
        let yc = y.clamp(0, h - 1) as usize;
        img[yc * width as usize + xc]
    };
    let mut out = vec![0u8; img.len()];
    for y in 0..h {
        let mut hist = [0u32; 256];
        // window centred at x = 0
        for dy in -r..=r {
            for dx in -r..=r {
                hist[at(dx, y + dy) as usize] += 1;
            }
        }
        for x in 0..w {
            if x > 0 {
                for dy in -r..=r {
                    hist[at(x - r - 1, y + dy) as usize] -= 1;
                    hist[at(x + r, y + dy) as usize] += 1;
                }
            }
            let mut seen = 0usize;
            let mut med = 255u8;
            for (v, &c) in hist.iter().enumerate() {
                seen += c as usize;
                if seen > rank {
                    med = v as u8;
                    break;
                }
            }
            out[(y * w + x) as usize] = med;
        }
    }
    Ok(out)
}

/// OpenCV's Otsu threshold for an 8-bit image (`getThreshVal_Otsu_8u`): the grey level that
/// maximises the between-class variance, computed with OpenCV's exact floating-point
/// recurrence (first maximum wins; classes below `FLT_EPSILON` probability are skipped).
pub fn otsu_threshold(img: &[u8]) -> u8 {
    if img.is_empty() {
        return 0;
    }
    let mut hist = [0u64; 256];
    for &v in img {
        hist[v as usize] += 1;
    }
    let scale = 1.0 / img.len() as f64;
    let mut mu = 0.0f64;
    for (i, &c) in hist.iter().enumerate() {
        mu += i as f64 * c as f64;
    }
    mu *= scale;
    let eps = f64::from(f32::EPSILON);
    let (mut mu1, mut q1) = (0.0f64, 0.0f64);
    let (mut max_sigma, mut max_val) = (0.0f64, 0u8);
    for (i, &c) in hist.iter().enumerate() {
        let p_i = c as f64 * scale;
        mu1 *= q1;
        q1 += p_i;
        let q2 = 1.0 - q1;
        if q1.min(q2) < eps || q1.max(q2) > 1.0 - eps {
            continue;
        }
        mu1 = (mu1 + i as f64 * p_i) / q1;
        let mu2 = (mu - q1 * mu1) / q2;
        let sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2);
        if sigma > max_sigma {
            max_sigma = sigma;
            max_val = i as u8;
        }
    }
    max_val
}

/// `cv2.threshold(img, thresh, maxval, cv2.THRESH_BINARY)[1]`: `maxval` where `v > thresh`.
pub fn threshold_binary(img: &[u8], thresh: u8, maxval: u8) -> Vec<u8> {
    img.iter()
        .map(|&v| if v > thresh { maxval } else { 0 })
        .collect()
}

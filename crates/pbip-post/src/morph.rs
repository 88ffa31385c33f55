//! Morphology, connected components, distance transform and boundary refinement on output-level
//! grids (row-major `width x height` arrays).
//!
//! # Conventions (chosen to match scikit-image / scipy exactly; see `testdata/make_expected.py`)
//!
//! - Binary morphology follows `skimage.morphology.binary_*` with the default `mode='ignore'`:
//!   pixels outside the image are ignored, i.e. dilation pads with `false` and erosion with `true`.
//!   Closing = erosion(dilation(x)), opening = dilation(erosion(x)).
//! - [`Footprint::Square`]`(k)` = `np.ones((k, k))`; [`Footprint::Disk`]`(r)` =
//!   `skimage.morphology.disk(r)` (offsets with `dx^2 + dy^2 <= r^2`). For even `k` the anchor is at
//!   `k/2`: erosion looks at `[i - k/2, i + k/2 - 1]` and dilation at the reflected window
//!   `[i - k/2 + 1, i + k/2]`, so closing/opening do not shift (only odd sizes are tested against
//!   skimage).
//! - Connected components ([`label_components`], like `skimage.measure.label`): pixels with the same
//!   value that touch (4-connectivity = `connectivity=1`, 8-connectivity = `connectivity=2`) form a
//!   component; pixels equal to the background value get 0; labels 1..n are assigned in raster order
//!   of each component's first pixel.
//! - [`remove_small_objects`] removes components with fewer than `min_size` pixels (skimage
//!   `remove_small_objects(min_size=...)`, i.e. `max_size = min_size - 1` in skimage >= 0.26).
//! - [`distance_transform_edt`] is exact (Felzenszwalb & Huttenlocher 2012, two 1-D passes of the
//!   lower envelope of parabolas) and equals `scipy.ndimage.distance_transform_edt` (distance of each
//!   `true` pixel to the nearest `false` pixel, 0 on `false` pixels; `f64::INFINITY` everywhere if
//!   there is no `false` pixel).
//!
//! # Label maps
//!
//! Label maps are `u8` with [`crate::NO_LABEL`] (255) meaning background / no class.
//! - [`label_closing`]: for each class `c` in ascending order, background pixels covered by the
//!   binary closing of the class-`c` mask become `c` (first class wins); class pixels never change.
//!   This fills small background holes and gaps inside classes.
//! - [`label_opening`]: class pixels removed by the binary opening of their own class mask become
//!   background. This removes thin protrusions and specks.
//! - [`remove_small_components_labels`]: every per-class connected component smaller than
//!   `min_size` pixels is replaced by the majority label among the pixels adjacent to it (same
//!   connectivity) that belong to kept components (falling back to all adjacent pixels if none;
//!   ties go to the lower value, so background loses ties). Background components are treated the
//!   same way when `include_background` is set (that fills small holes).
//! - [`refine_boundaries`]: see [`BoundaryRefineParams`].

use crate::NO_LABEL;
use crate::error::{Result, invalid};

/// Structuring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footprint {
    /// `k x k` square (`kernel_size` of the config).
    Square(usize),
    /// Disk of radius r (`(2r+1) x (2r+1)`), as `skimage.morphology.disk(r)`.
    Disk(usize),
}

/// Pixel connectivity (pbip-tiling's, the one labeller's).
pub use pbip_tiling::Connectivity;

fn check_len(len: usize, w: usize, h: usize, what: &str) -> Result<()> {
    if len != w * h {
        return invalid(format!(
            "{what}: array has {len} values, expected width*height = {w}*{h} = {}",
            w * h
        ));
    }
    Ok(())
}

/// How the lines of a 1-D pass lie in a row-major image: `count` lines of `n` pixels, `stride`
/// apart within a line; line `l` starts at `l * n` for rows (`stride == 1`), at `l` for columns.
#[derive(Debug, Clone, Copy)]
struct Lines {
    n: usize,
    stride: usize,
    count: usize,
}

/// 1-D "any"/"all" over windows `[i - a, i + b]` (clipped = ignore) via prefix sums.
fn window_pass(src: &[bool], dst: &mut [bool], lines: Lines, a: usize, b: usize, any: bool) {
    let Lines { n, stride, count } = lines;
    let mut pref = vec![0u32; n + 1];
    for l in 0..count {
        let base = if stride == 1 { l * n } else { l };
        for i in 0..n {
            pref[i + 1] = pref[i] + src[base + i * stride] as u32;
        }
        for i in 0..n {
            let lo = i.saturating_sub(a);
            let hi = (i + b).min(n - 1);
            let ones = pref[hi + 1] - pref[lo];
            dst[base + i * stride] = if any {
                ones > 0
            } else {
                ones as usize == hi + 1 - lo
            };
        }
    }
}

fn square_op(mask: &[bool], w: usize, h: usize, k: usize, dilate: bool) -> Vec<bool> {
    if w == 0 || h == 0 || k == 0 {
        return mask.to_vec();
    }
    // erosion window [i - k/2, i + (k-1) - k/2]; dilation is the reflected window.
    let (a, b) = if dilate {
        (k - 1 - k / 2, k / 2)
    } else {
        (k / 2, k - 1 - k / 2)
    };
    let mut tmp = vec![false; w * h];
    let rows = Lines {
        n: w,
        stride: 1,
        count: h,
    };
    window_pass(mask, &mut tmp, rows, a, b, dilate);
    let mut out = vec![false; w * h];
    let cols = Lines {
        n: h,
        stride: w,
        count: w,
    };
    window_pass(&tmp, &mut out, cols, a, b, dilate);
    out
}

fn disk_op(mask: &[bool], w: usize, h: usize, r: usize, dilate: bool) -> Vec<bool> {
    let ri = r as isize;
    let offs: Vec<(isize, isize)> = (-ri..=ri)
        .flat_map(|dy| (-ri..=ri).map(move |dx| (dx, dy)))
        .filter(|(dx, dy)| dx * dx + dy * dy <= ri * ri)
        .collect();
    let mut out = vec![false; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut acc = !dilate;
            for &(dx, dy) in &offs {
                let (xx, yy) = (x + dx, y + dy);
                if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                    continue;
                }
                let v = mask[yy as usize * w + xx as usize];
                if dilate && v {
                    acc = true;
                    break;
                }
                if !dilate && !v {
                    acc = false;
                    break;
                }
            }
            out[y as usize * w + x as usize] = acc;
        }
    }
    out
}

/// Binary dilation (`mode='ignore'`).
pub fn binary_dilation(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<bool>> {
    check_len(mask.len(), width_px, height_px, "binary_dilation")?;
    Ok(match fp {
        Footprint::Square(k) => square_op(mask, width_px, height_px, k, true),
        Footprint::Disk(r) => disk_op(mask, width_px, height_px, r, true),
    })
}

/// Binary erosion (`mode='ignore'`).
pub fn binary_erosion(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<bool>> {
    check_len(mask.len(), width_px, height_px, "binary_erosion")?;
    Ok(match fp {
        Footprint::Square(k) => square_op(mask, width_px, height_px, k, false),
        Footprint::Disk(r) => disk_op(mask, width_px, height_px, r, false),
    })
}

/// Binary closing = erosion(dilation(mask)).
pub fn binary_closing(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<bool>> {
    let d = binary_dilation(mask, width_px, height_px, fp)?;
    binary_erosion(&d, width_px, height_px, fp)
}

/// Binary opening = dilation(erosion(mask)).
pub fn binary_opening(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<bool>> {
    let e = binary_erosion(mask, width_px, height_px, fp)?;
    binary_dilation(&e, width_px, height_px, fp)
}

fn class_mask(labels: &[u8], c: u8) -> Vec<bool> {
    labels.iter().map(|&l| l == c).collect()
}

fn present_classes(labels: &[u8]) -> Vec<u8> {
    let mut seen = [false; 256];
    for &l in labels {
        seen[l as usize] = true;
    }
    (0..255u8).filter(|&c| seen[c as usize]).collect()
}

/// Label-map closing: background ([`NO_LABEL`]) pixels inside the closing of a class become that
/// class (ascending class order, first wins). See the module docs.
pub fn label_closing(
    labels: &[u8],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<u8>> {
    check_len(labels.len(), width_px, height_px, "label_closing")?;
    let mut out = labels.to_vec();
    for c in present_classes(labels) {
        let closed = binary_closing(&class_mask(labels, c), width_px, height_px, fp)?;
        for (o, (&cl, &orig)) in out.iter_mut().zip(closed.iter().zip(labels)) {
            if cl && orig == NO_LABEL && *o == NO_LABEL {
                *o = c;
            }
        }
    }
    Ok(out)
}

/// Label-map opening: class pixels outside the opening of their class mask become [`NO_LABEL`].
pub fn label_opening(
    labels: &[u8],
    width_px: usize,
    height_px: usize,
    fp: Footprint,
) -> Result<Vec<u8>> {
    check_len(labels.len(), width_px, height_px, "label_opening")?;
    let mut out = labels.to_vec();
    for c in present_classes(labels) {
        let opened = binary_opening(&class_mask(labels, c), width_px, height_px, fp)?;
        for (o, &op) in out.iter_mut().zip(&opened) {
            if *o == c && !op {
                *o = NO_LABEL;
            }
        }
    }
    Ok(out)
}

/// Connected components of equal-valued pixels (`skimage.measure.label(image, background,
/// connectivity)`): returns `(labels, n)` with labels 0 (background) and 1..=n in raster order of
/// first appearance. `background = None` labels every pixel.
pub fn label_components(
    image: &[u8],
    width_px: usize,
    height_px: usize,
    background: Option<u8>,
    conn: Connectivity,
) -> Result<(Vec<u32>, usize)> {
    check_len(image.len(), width_px, height_px, "label_components")?;
    let (w, h) = (width_px, height_px);
    if w * h >= u32::MAX as usize {
        return invalid(format!(
            "label_components: {w}x{h} is too large for u32 labels"
        ));
    }
    pbip_tiling::label_image(image, w, h, background, conn)
        .or_else(|e| invalid(format!("label_components: {e}")))
}

/// Connected components of a binary mask (`skimage.measure.label(mask, connectivity)`).
pub fn label_mask(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    conn: Connectivity,
) -> Result<(Vec<u32>, usize)> {
    let img: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
    label_components(&img, width_px, height_px, Some(0), conn)
}

/// Removes connected components with fewer than `min_size` pixels
/// (`skimage.morphology.remove_small_objects`).
pub fn remove_small_objects(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
    min_size: usize,
    conn: Connectivity,
) -> Result<Vec<bool>> {
    let (lab, n) = label_mask(mask, width_px, height_px, conn)?;
    let mut sizes = vec![0usize; n + 1];
    for &l in &lab {
        sizes[l as usize] += 1;
    }
    Ok(lab
        .iter()
        .map(|&l| l != 0 && sizes[l as usize] >= min_size)
        .collect())
}

/// Relabels a component image so that its distinct non-zero labels become 1..=n in increasing order
/// of their old value (`skimage.segmentation.relabel_sequential`). Returns `(labels, n)`.
pub fn relabel_sequential(labels: &[u32]) -> (Vec<u32>, usize) {
    let mut vals: Vec<u32> = labels.iter().copied().filter(|&l| l != 0).collect();
    vals.sort_unstable();
    vals.dedup();
    let out = labels
        .iter()
        .map(|&l| {
            if l == 0 {
                0
            } else {
                vals.binary_search(&l).map_or(0, |p| p as u32 + 1)
            }
        })
        .collect();
    (out, vals.len())
}

/// Replaces per-class components smaller than `min_size` pixels by the surrounding majority label
/// (see the module docs). Returns the new label map and the number of components replaced. This is
/// [`crate::components::remove_small_components_planes`] on in-memory planes.
pub fn remove_small_components_labels(
    labels: &[u8],
    width_px: usize,
    height_px: usize,
    min_size: usize,
    conn: Connectivity,
    include_background: bool,
) -> Result<(Vec<u8>, usize)> {
    check_len(
        labels.len(),
        width_px,
        height_px,
        "remove_small_components_labels",
    )?;
    let src = crate::plane::Planes::from_vec(width_px, height_px, 1, labels.to_vec())?;
    let dst = crate::plane::Planes::memory(width_px, height_px, 1)?;
    let replaced = crate::components::remove_small_components_planes(
        &src,
        &dst,
        min_size,
        conn,
        include_background,
    )?;
    Ok((dst.to_vec()?, replaced))
}

const EDT_INF: f64 = 1e20;

/// Gaussian truncation (in sigmas) of the boundary-refinement smoothing.
pub const REFINE_TRUNCATE: f32 = 4.0;

/// 1-D squared distance transform of sampled function `f` (Felzenszwalb & Huttenlocher).
fn dt_1d(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in 1..n {
        let fq = f[q] + (q * q) as f64;
        loop {
            let p = v[k];
            let s = (fq - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64));
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                // k == 0 and the new parabola is lower everywhere: replace.
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    k = 0;
    for (q, dq) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let diff = q as f64 - p as f64;
        *dq = diff * diff + f[p];
    }
}

/// Squared Euclidean distance of every pixel to the nearest `seed` pixel (`INFINITY`-like 1e20 if
/// there is none).
pub fn squared_distance_to_seeds(
    seeds: &[bool],
    width_px: usize,
    height_px: usize,
) -> Result<Vec<f64>> {
    check_len(
        seeds.len(),
        width_px,
        height_px,
        "squared_distance_to_seeds",
    )?;
    let (w, h) = (width_px, height_px);
    let mut g: Vec<f64> = seeds
        .iter()
        .map(|&s| if s { 0.0 } else { EDT_INF })
        .collect();
    let m = w.max(h);
    let (mut f, mut d, mut v, mut z) = (
        vec![0.0; m],
        vec![0.0; m],
        vec![0usize; m],
        vec![0.0; m + 1],
    );
    for x in 0..w {
        for y in 0..h {
            f[y] = g[y * w + x];
        }
        dt_1d(&f[..h], &mut d[..h], &mut v, &mut z);
        for y in 0..h {
            g[y * w + x] = d[y];
        }
    }
    for y in 0..h {
        f[..w].copy_from_slice(&g[y * w..(y + 1) * w]);
        dt_1d(&f[..w], &mut d[..w], &mut v, &mut z);
        g[y * w..(y + 1) * w].copy_from_slice(&d[..w]);
    }
    Ok(g)
}

/// Exact Euclidean distance transform (`scipy.ndimage.distance_transform_edt`): distance of every
/// `true` pixel to the nearest `false` pixel; 0 on `false` pixels; `f64::INFINITY` if there is none.
pub fn distance_transform_edt(
    mask: &[bool],
    width_px: usize,
    height_px: usize,
) -> Result<Vec<f64>> {
    let seeds: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let sq = squared_distance_to_seeds(&seeds, width_px, height_px)?;
    Ok(sq
        .into_iter()
        .map(|s| {
            if s >= EDT_INF * 0.5 {
                f64::INFINITY
            } else {
                s.sqrt()
            }
        })
        .collect())
}

/// Separable Gaussian blur with `scipy.ndimage.gaussian_filter` conventions: kernel truncated at
/// `truncate * sigma_px` (radius rounded), borders mode `'reflect'` (`d c b a | a b c d`).
pub fn gaussian_blur(
    image: &[f32],
    width_px: usize,
    height_px: usize,
    sigma_px: f32,
    truncate: f32,
) -> Result<Vec<f32>> {
    check_len(image.len(), width_px, height_px, "gaussian_blur")?;
    if !(sigma_px.is_finite() && sigma_px > 0.0 && truncate.is_finite() && truncate > 0.0) {
        return invalid(format!(
            "gaussian_blur: sigma_px ({sigma_px}) and truncate ({truncate}) must be > 0"
        ));
    }
    let (w, h) = (width_px, height_px);
    if w == 0 || h == 0 {
        return Ok(Vec::new());
    }
    let r = (truncate * sigma_px + 0.5) as isize;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-0.5 * (i as f32 / sigma_px).powi(2)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let period = 2 * n;
        let mut m = i.rem_euclid(period);
        if m >= n {
            m = period - 1 - m;
        }
        m as usize
    };
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (t, &kv) in k.iter().enumerate() {
                acc += kv * image[y * w + reflect(x as isize + t as isize - r, w)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (t, &kv) in k.iter().enumerate() {
                acc += kv * tmp[reflect(y as isize + t as isize - r, h) * w + x];
            }
            out[y * w + x] = acc;
        }
    }
    Ok(out)
}

/// Parameters of [`refine_boundaries`].
///
/// 1. Boundary pixels are pixels whose label differs from one of their 4-neighbours.
/// 2. `d` = exact Euclidean distance (pixels) to the nearest boundary pixel.
/// 3. In the band `d <= band_px`, each class confidence is blended with its Gaussian-smoothed
///    version (`sigma_px`, truncate 4): `c' = a * smooth(c) + (1 - a) * c`, `a = 1 - d / band_px`
///    (smooth transition: full smoothing on the boundary, none at the band edge).
/// 4. Re-threshold in the band: the threshold rises linearly from `boundary_threshold` at the
///    boundary to `threshold` at the band edge; the pixel gets `argmax c'` if `max c' >= threshold(d)`,
///    else [`NO_LABEL`]. Pixels outside the band keep their label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundaryRefineParams {
    /// Half-width of the band around boundaries, in output pixels (e.g. 3).
    pub band_px: f32,
    /// Gaussian sigma in output pixels (e.g. 1).
    pub sigma_px: f32,
    /// Interior confidence threshold (e.g. 0.5).
    pub threshold: f32,
    /// Lower threshold applied on the boundary itself (e.g. 0.35).
    pub boundary_threshold: f32,
}

impl Default for BoundaryRefineParams {
    fn default() -> Self {
        Self {
            band_px: 3.0,
            sigma_px: 1.0,
            threshold: 0.5,
            boundary_threshold: 0.35,
        }
    }
}

/// Boundary refinement of a label map with its `[C, H, W]` confidence maps (see
/// [`BoundaryRefineParams`]).
pub fn refine_boundaries(
    labels: &[u8],
    confidence: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    params: &BoundaryRefineParams,
) -> Result<Vec<u8>> {
    let (w, h, c) = (width_px, height_px, num_classes);
    check_len(labels.len(), w, h, "refine_boundaries labels")?;
    if c == 0 || c > 255 || confidence.len() != c * w * h {
        return invalid(format!(
            "refine_boundaries: confidence has {} values, expected num_classes*W*H = {c}*{w}*{h} with 1 <= C <= 255",
            confidence.len()
        ));
    }
    let p = params;
    if !(p.band_px > 0.0
        && p.sigma_px > 0.0
        && p.threshold.is_finite()
        && p.boundary_threshold.is_finite())
    {
        return invalid(format!(
            "refine_boundaries: band_px and sigma_px must be > 0 and thresholds finite, got {p:?}"
        ));
    }
    let n = w * h;
    let mut boundary = vec![false; n];
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            let diff = (x > 0 && labels[y * w + x - 1] != l)
                || (x + 1 < w && labels[y * w + x + 1] != l)
                || (y > 0 && labels[(y - 1) * w + x] != l)
                || (y + 1 < h && labels[(y + 1) * w + x] != l);
            boundary[y * w + x] = diff;
        }
    }
    let d2 = squared_distance_to_seeds(&boundary, w, h)?;
    let band2 = (p.band_px as f64) * (p.band_px as f64);
    let mut out = labels.to_vec();
    if !d2.iter().any(|&v| v <= band2) {
        return Ok(out);
    }
    let smoothed: Vec<Vec<f32>> = (0..c)
        .map(|k| {
            gaussian_blur(
                &confidence[k * n..(k + 1) * n],
                w,
                h,
                p.sigma_px,
                REFINE_TRUNCATE,
            )
        })
        .collect::<Result<_>>()?;
    for i in 0..n {
        if d2[i] > band2 {
            continue;
        }
        let t = (d2[i].sqrt() as f32 / p.band_px).min(1.0);
        let a = 1.0 - t;
        let mut best = 0usize;
        let mut best_v = f32::NEG_INFINITY;
        for (k, sm) in smoothed.iter().enumerate() {
            let v = a * sm[i] + (1.0 - a) * confidence[k * n + i];
            if v > best_v {
                best_v = v;
                best = k;
            }
        }
        let thr = p.boundary_threshold + (p.threshold - p.boundary_threshold) * t;
        out[i] = if best_v >= thr { best as u8 } else { NO_LABEL };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_sequential_works() {
        let (l, n) = relabel_sequential(&[0, 7, 7, 3, 0, 10]);
        assert_eq!(l, vec![0, 2, 2, 1, 0, 3]);
        assert_eq!(n, 3);
    }

    #[test]
    fn small_label_components_take_majority() {
        // 6x5 map of class 0 with a 2-pixel island of class 1 and a 1-pixel background hole.
        #[rustfmt::skip]
        let lab: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0,
            0, 1, 1, 0, 0, 0,
            0, 0, 0, 0, 255, 0,
            2, 2, 2, 2, 2, 2,
            2, 2, 2, 2, 2, 2,
        ];
        let (out, n) =
            remove_small_components_labels(&lab, 6, 5, 3, Connectivity::Four, false).unwrap();
        assert_eq!(n, 1);
        assert_eq!(out[7], 0);
        assert_eq!(out[8], 0);
        assert_eq!(out[16], 255);
        let (out, n) =
            remove_small_components_labels(&lab, 6, 5, 3, Connectivity::Four, true).unwrap();
        assert_eq!(n, 2);
        assert_eq!(out[16], 0);
        assert!(out[18..].iter().all(|&v| v == 2));
    }

    #[test]
    fn label_open_close() {
        #[rustfmt::skip]
        let lab: Vec<u8> = vec![
            1, 1, 1, 1, 1,
            1, 1, 255, 1, 1,
            1, 1, 1, 1, 1,
            255, 255, 255, 255, 0,
            255, 255, 255, 255, 255,
        ];
        let closed = label_closing(&lab, 5, 5, Footprint::Square(3)).unwrap();
        assert_eq!(closed[7], 1);
        assert_eq!(closed[19], 0);
        let opened = label_opening(&lab, 5, 5, Footprint::Square(3)).unwrap();
        assert_eq!(opened[19], 255, "isolated pixel removed");
        assert_eq!(opened[0], 1);
    }

    #[test]
    fn gaussian_blur_preserves_constant_and_mass() {
        let img = vec![0.3f32; 7 * 5];
        let b = gaussian_blur(&img, 7, 5, 1.2, 4.0).unwrap();
        assert!(b.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut d = vec![0f32; 21 * 21];
        d[10 * 21 + 10] = 1.0;
        let b = gaussian_blur(&d, 21, 21, 1.5, 4.0).unwrap();
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(b[10 * 21 + 10] > b[10 * 21 + 11] && b[10 * 21 + 11] > b[10 * 21 + 12]);
    }

    #[test]
    fn boundary_refinement_smooths_noisy_boundary() {
        use rand::{Rng, SeedableRng};
        let (w, h) = (64, 64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let truth: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 - 32.0, (i / w) as f32 - 32.0);
                (x * x + y * y < 400.0) as u8
            })
            .collect();
        // Confidence: soft edge (logistic of signed distance) plus noise.
        let mut conf = vec![0f32; 2 * w * h];
        for i in 0..w * h {
            let (x, y) = ((i % w) as f32 - 32.0, (i / w) as f32 - 32.0);
            let sd = 20.0 - (x * x + y * y).sqrt();
            let p1 = (1.0 / (1.0 + (-sd).exp()) + rng.random_range(-0.25..0.25f32)).clamp(0.0, 1.0);
            conf[w * h + i] = p1;
            conf[i] = 1.0 - p1;
        }
        let labels: Vec<u8> = (0..w * h)
            .map(|i| (conf[w * h + i] > conf[i]) as u8)
            .collect();
        let errors = |l: &[u8]| l.iter().zip(&truth).filter(|(a, b)| a != b).count();
        let refined =
            refine_boundaries(&labels, &conf, 2, w, h, &BoundaryRefineParams::default()).unwrap();
        assert!(
            errors(&refined) < errors(&labels),
            "{} !< {}",
            errors(&refined),
            errors(&labels)
        );
        // Far from any boundary, labels are untouched.
        let bnd: Vec<bool> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                (x > 0 && labels[i - 1] != labels[i])
                    || (x + 1 < w && labels[i + 1] != labels[i])
                    || (y > 0 && labels[i - w] != labels[i])
                    || (y + 1 < h && labels[i + w] != labels[i])
            })
            .collect();
        let d2 = squared_distance_to_seeds(&bnd, w, h).unwrap();
        for i in 0..w * h {
            if d2[i] > 9.0 {
                assert_eq!(refined[i], labels[i]);
            }
        }
    }

    #[test]
    fn edt_without_background_is_infinite() {
        let d = distance_transform_edt(&[true; 6], 3, 2).unwrap();
        assert!(d.iter().all(|v| v.is_infinite()));
        assert!(distance_transform_edt(&[true; 5], 3, 2).is_err());
    }
}

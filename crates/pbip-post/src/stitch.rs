//! Block-wise stitching of per-patch class confidence maps onto an output-level grid.
//!
//! # Geometry and conventions
//!
//! - A patch is given by its level-0 top-left corner `(x_lv0, y_lv0)` and its square footprint
//!   `size_lv0_px` (level-0 pixels covered), plus a `[C, h, w]` f32 map of any resolution.
//! - The output grid has `downsample` level-0 pixels per output pixel; its size is
//!   `ceil(slide_width_lv0 / downsample) x ceil(slide_height_lv0 / downsample)`.
//! - **Pixel-centre convention**: output pixel `(i, j)` has its centre at level-0
//!   `((i + 0.5) * downsample, (j + 0.5) * downsample)`; patch-map pixel `(u, v)` has its centre at
//!   `x_lv0 + (u + 0.5) * size_lv0_px / w` (and likewise in y). This is the "half-pixel" /
//!   `align_corners=False` convention of PyTorch/OpenCV resizing.
//! - An output pixel belongs to a patch iff its centre lies in `[x_lv0, x_lv0 + size_lv0_px)` (and
//!   likewise in y). Its value is the bilinear interpolation of the patch map at the centre position;
//!   sample positions closer than half a patch pixel to the patch edge are clamped to the edge pixels
//!   (constant extrapolation, like `F.interpolate(..., align_corners=False)`).
//! - Every covered output pixel accumulates `weight * value` per class and `weight`; the stitched
//!   confidence is `acc / weight`. Pixels with weight 0 have **no data**: their confidence is 0 and
//!   their weight 0 (check [`StitchedBlock::weight`]).
//!
//! # Weights
//!
//! - [`Weighting::Mean`]: weight 1 everywhere (plain average of overlapping patches).
//! - [`Weighting::Gaussian`]: `w = exp(-((X - cx)^2 + (Y - cy)^2) / (2 sigma^2))` with
//!   `sigma = sigma_rel * size_lv0_px` in level-0 pixels, `(cx, cy)` the patch centre and `(X, Y)` the
//!   output pixel centre, floored at `1e-6` so that every covered pixel keeps data (MONAI's sliding
//!   window uses the same idea with `sigma_scale = 0.125`, our default [`DEFAULT_GAUSSIAN_SIGMA_REL`]).
//!
//! # Blocks and memory
//!
//! The output grid is split into square blocks of `block_size_px` output pixels. The stitcher is told
//! every patch footprint up front, counts how many pending patches touch each block, allocates a
//! block's accumulators only when the first patch touches it, and hands the finished block to the
//! sink callback as soon as its last patch has been added, then frees it. Blocks touched by no patch
//! are emitted (as all-"no data") by [`Stitcher::finish`]. Blocks are emitted in completion order.
//! Live memory is `live_blocks * (C + 1) * block_size_px^2 * 4` bytes; [`Stitcher::new`] checks the
//! peak for the declared patch order against `memory_budget_bytes`, and allocation checks it again.
//! Feed patches in row-major order of their top-left corner ([`raster_order`]) to keep the number
//! of live blocks at about one row of blocks.

use crate::error::{PostError, Result, invalid};

/// Default Gaussian sigma relative to the patch footprint (MONAI's `sigma_scale`).
pub const DEFAULT_GAUSSIAN_SIGMA_REL: f64 = 0.125;

/// Floor applied to Gaussian weights so covered pixels never lose their data.
pub const GAUSSIAN_WEIGHT_FLOOR: f32 = 1e-6;

/// Weighting of a patch's contribution to the pixels it covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weighting {
    /// Uniform weight 1 (average of overlapping patches).
    Mean,
    /// Gaussian weight centred on the patch, sigma = `sigma_rel * size_lv0_px` (level-0 pixels).
    Gaussian {
        /// Sigma relative to the patch footprint (e.g. [`DEFAULT_GAUSSIAN_SIGMA_REL`]).
        sigma_rel: f64,
    },
}

/// Stitching parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct StitchConfig {
    /// Slide width at level 0, in level-0 pixels.
    pub slide_width_lv0: u64,
    /// Slide height at level 0, in level-0 pixels.
    pub slide_height_lv0: u64,
    /// Level-0 pixels per output pixel (e.g. 16.0).
    pub downsample: f64,
    /// Number of classes C of the patch maps.
    pub num_classes: usize,
    /// Patch weighting.
    pub weighting: Weighting,
    /// Side of a square output block, in output pixels (e.g. 1024).
    pub block_size_px: usize,
    /// Maximum bytes of live block accumulators.
    pub memory_budget_bytes: u64,
}

/// Where a patch lies on the slide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchFootprint {
    /// Level-0 x of the top-left corner.
    pub x_lv0: i64,
    /// Level-0 y of the top-left corner.
    pub y_lv0: i64,
    /// Side of the square region covered, in level-0 pixels.
    pub size_lv0_px: f64,
}

/// A borrowed `[C, h, w]` (class-major, row-major) f32 confidence map of one patch.
#[derive(Debug, Clone, Copy)]
pub struct PatchMap<'a> {
    /// Number of classes C.
    pub num_classes: usize,
    /// Map height h in map pixels.
    pub height_px: usize,
    /// Map width w in map pixels.
    pub width_px: usize,
    /// `C * h * w` values.
    pub data: &'a [f32],
}

/// A finished output block.
#[derive(Debug, Clone, PartialEq)]
pub struct StitchedBlock {
    /// Output-grid x of the block's left column.
    pub x0_px: usize,
    /// Output-grid y of the block's top row.
    pub y0_px: usize,
    /// Block width in output pixels (smaller at the right edge of the grid).
    pub width_px: usize,
    /// Block height in output pixels (smaller at the bottom edge of the grid).
    pub height_px: usize,
    /// Number of classes C.
    pub num_classes: usize,
    /// `[C, height, width]` normalised confidence (`acc / weight`; 0 where weight is 0).
    pub confidence: Vec<f32>,
    /// `[height, width]` accumulated weight; 0 means "no data".
    pub weight: Vec<f32>,
}

/// A whole output map assembled from blocks (convenience for small grids and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct FullMap {
    /// Output width in pixels.
    pub width_px: usize,
    /// Output height in pixels.
    pub height_px: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// `[C, H, W]` confidence.
    pub confidence: Vec<f32>,
    /// `[H, W]` weight (0 = no data).
    pub weight: Vec<f32>,
}

impl FullMap {
    /// An all-"no data" map.
    pub fn new(width_px: usize, height_px: usize, num_classes: usize) -> Self {
        Self {
            width_px,
            height_px,
            num_classes,
            confidence: vec![0.0; num_classes * width_px * height_px],
            weight: vec![0.0; width_px * height_px],
        }
    }

    /// Copies a block into the map.
    pub fn insert_block(&mut self, block: &StitchedBlock) -> Result<()> {
        if block.num_classes != self.num_classes
            || block.x0_px + block.width_px > self.width_px
            || block.y0_px + block.height_px > self.height_px
        {
            return invalid(format!(
                "block at ({}, {}) size {}x{} with {} classes does not fit a {}x{} map with {} classes",
                block.x0_px,
                block.y0_px,
                block.width_px,
                block.height_px,
                block.num_classes,
                self.width_px,
                self.height_px,
                self.num_classes
            ));
        }
        let (w, h) = (self.width_px, self.height_px);
        for c in 0..self.num_classes {
            for r in 0..block.height_px {
                let src = &block.confidence[(c * block.height_px + r) * block.width_px..]
                    [..block.width_px];
                let dst = (c * h + block.y0_px + r) * w + block.x0_px;
                self.confidence[dst..dst + block.width_px].copy_from_slice(src);
            }
        }
        for r in 0..block.height_px {
            let src = &block.weight[r * block.width_px..][..block.width_px];
            let dst = (block.y0_px + r) * w + block.x0_px;
            self.weight[dst..dst + block.width_px].copy_from_slice(src);
        }
        Ok(())
    }
}

/// Indices of `footprints` sorted by (y, x) of the top-left corner: the order that keeps the number of
/// live blocks small.
pub fn raster_order(footprints: &[PatchFootprint]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..footprints.len()).collect();
    idx.sort_by_key(|&i| (footprints[i].y_lv0, footprints[i].x_lv0, i));
    idx
}

struct LiveBlock {
    acc: Vec<f32>,
    weight: Vec<f32>,
}

/// Block-wise stitcher; see the module docs. `F` is the sink receiving finished blocks.
pub struct Stitcher<F: FnMut(StitchedBlock) -> Result<()>> {
    cfg: StitchConfig,
    footprints: Vec<PatchFootprint>,
    added: Vec<bool>,
    out_w: usize,
    out_h: usize,
    blocks_x: usize,
    blocks_y: usize,
    pending: Vec<u32>,
    live: Vec<Option<LiveBlock>>,
    emitted: Vec<bool>,
    live_count: usize,
    sink: F,
}

/// Output-pixel index range `[lo, hi)` (clipped to `[0, n)`) whose centres lie in `[a, b)` (level 0).
fn covered_range(a: f64, b: f64, ds: f64, n: usize) -> (usize, usize) {
    let lo = (a / ds - 0.5).ceil().max(0.0);
    let hi = (b / ds - 0.5).ceil().max(0.0);
    let lo = (lo as usize).min(n);
    let hi = (hi as usize).min(n);
    (lo, hi.max(lo))
}

impl<F: FnMut(StitchedBlock) -> Result<()>> Stitcher<F> {
    /// Creates a stitcher for the given patches (to be added with [`Stitcher::add_patch`], ideally in
    /// index order). Fails if a parameter is invalid or if adding the patches in index order would
    /// exceed the memory budget.
    pub fn new(cfg: StitchConfig, footprints: Vec<PatchFootprint>, sink: F) -> Result<Self> {
        if !(cfg.downsample.is_finite() && cfg.downsample > 0.0) {
            return invalid(format!("downsample must be > 0, got {}", cfg.downsample));
        }
        if cfg.num_classes == 0 {
            return invalid("num_classes must be >= 1");
        }
        if cfg.block_size_px == 0 {
            return invalid("block_size_px must be >= 1");
        }
        if let Weighting::Gaussian { sigma_rel } = cfg.weighting
            && !(sigma_rel.is_finite() && sigma_rel > 0.0)
        {
            return invalid(format!("Gaussian sigma_rel must be > 0, got {sigma_rel}"));
        }
        for (i, f) in footprints.iter().enumerate() {
            if !(f.size_lv0_px.is_finite() && f.size_lv0_px > 0.0) {
                return invalid(format!(
                    "patch {i}: size_lv0_px must be > 0, got {}",
                    f.size_lv0_px
                ));
            }
        }
        let out_w = (cfg.slide_width_lv0 as f64 / cfg.downsample).ceil() as usize;
        let out_h = (cfg.slide_height_lv0 as f64 / cfg.downsample).ceil() as usize;
        let blocks_x = out_w.div_ceil(cfg.block_size_px);
        let blocks_y = out_h.div_ceil(cfg.block_size_px);
        let n_blocks = blocks_x * blocks_y;
        let mut s = Self {
            added: vec![false; footprints.len()],
            footprints,
            out_w,
            out_h,
            blocks_x,
            blocks_y,
            pending: vec![0; n_blocks],
            live: (0..n_blocks).map(|_| None).collect(),
            emitted: vec![false; n_blocks],
            live_count: 0,
            sink,
            cfg,
        };
        for i in 0..s.footprints.len() {
            for b in s.blocks_of(i) {
                s.pending[b] += 1;
            }
        }
        let order: Vec<usize> = (0..s.footprints.len()).collect();
        let peak = s.peak_live_blocks(&order);
        let needed = peak as u64 * s.block_bytes();
        if needed > s.cfg.memory_budget_bytes {
            return Err(PostError::BudgetExceeded {
                needed_bytes: needed,
                budget_bytes: s.cfg.memory_budget_bytes,
                live_blocks: peak,
            });
        }
        tracing::debug!(
            out_w,
            out_h,
            blocks_x,
            blocks_y,
            peak_live_blocks = peak,
            "stitcher created"
        );
        Ok(s)
    }

    /// Output grid size `(width_px, height_px)`.
    pub fn output_size_px(&self) -> (usize, usize) {
        (self.out_w, self.out_h)
    }

    /// Bytes of one live block.
    pub fn block_bytes(&self) -> u64 {
        ((self.cfg.num_classes + 1) * self.cfg.block_size_px * self.cfg.block_size_px * 4) as u64
    }

    /// Peak number of simultaneously live blocks if the patches were added in `order`.
    pub fn peak_live_blocks(&self, order: &[usize]) -> usize {
        let mut pending = self.pending.clone();
        let mut live = vec![false; pending.len()];
        let (mut n, mut peak) = (0usize, 0usize);
        for &i in order {
            if i >= self.footprints.len() {
                continue;
            }
            let blocks = self.blocks_of(i);
            for &b in &blocks {
                if !live[b] {
                    live[b] = true;
                    n += 1;
                }
            }
            peak = peak.max(n);
            for &b in &blocks {
                pending[b] -= 1;
                if pending[b] == 0 {
                    n -= 1;
                }
            }
        }
        peak
    }

    fn pixel_range(&self, i: usize) -> ((usize, usize), (usize, usize)) {
        let f = &self.footprints[i];
        let ds = self.cfg.downsample;
        let xr = covered_range(
            f.x_lv0 as f64,
            f.x_lv0 as f64 + f.size_lv0_px,
            ds,
            self.out_w,
        );
        let yr = covered_range(
            f.y_lv0 as f64,
            f.y_lv0 as f64 + f.size_lv0_px,
            ds,
            self.out_h,
        );
        (xr, yr)
    }

    fn blocks_of(&self, i: usize) -> Vec<usize> {
        let ((x0, x1), (y0, y1)) = self.pixel_range(i);
        if x0 >= x1 || y0 >= y1 {
            return Vec::new();
        }
        let bs = self.cfg.block_size_px;
        let mut v = Vec::new();
        for by in y0 / bs..=(y1 - 1) / bs {
            for bx in x0 / bs..=(x1 - 1) / bs {
                v.push(by * self.blocks_x + bx);
            }
        }
        v
    }

    fn block_rect(&self, b: usize) -> (usize, usize, usize, usize) {
        let bs = self.cfg.block_size_px;
        let (bx, by) = (b % self.blocks_x, b / self.blocks_x);
        let (x0, y0) = (bx * bs, by * bs);
        (x0, y0, bs.min(self.out_w - x0), bs.min(self.out_h - y0))
    }

    /// Adds patch `index` (of the footprints given to [`Stitcher::new`]) with its confidence map, and
    /// emits every block that no pending patch can touch any more.
    pub fn add_patch(&mut self, index: usize, map: PatchMap<'_>) -> Result<()> {
        if index >= self.footprints.len() {
            return invalid(format!(
                "patch index {index} out of range (have {} footprints)",
                self.footprints.len()
            ));
        }
        if self.added[index] {
            return invalid(format!("patch {index} was already added"));
        }
        let c = self.cfg.num_classes;
        if map.num_classes != c || map.width_px == 0 || map.height_px == 0 {
            return invalid(format!(
                "patch {index}: map is [{}, {}, {}], expected {c} classes and non-empty size",
                map.num_classes, map.height_px, map.width_px
            ));
        }
        if map.data.len() != c * map.height_px * map.width_px {
            return invalid(format!(
                "patch {index}: map data has {} values, expected {}",
                map.data.len(),
                c * map.height_px * map.width_px
            ));
        }
        self.added[index] = true;
        let f = self.footprints[index];
        let ds = self.cfg.downsample;
        let ((x0, x1), (y0, y1)) = self.pixel_range(index);
        // Precompute per-column / per-row interpolation taps and 1D Gaussian factors.
        let taps = |lo: usize, hi: usize, origin: f64, n: usize| -> Vec<(usize, usize, f32, f64)> {
            let step = f.size_lv0_px / n as f64;
            (lo..hi)
                .map(|i| {
                    let centre = (i as f64 + 0.5) * ds;
                    let u = ((centre - origin) / step - 0.5).clamp(0.0, (n - 1) as f64);
                    let u0 = u.floor() as usize;
                    let u1 = (u0 + 1).min(n - 1);
                    (
                        u0,
                        u1,
                        (u - u0 as f64) as f32,
                        centre - (origin + 0.5 * f.size_lv0_px),
                    )
                })
                .collect()
        };
        let xt = taps(x0, x1, f.x_lv0 as f64, map.width_px);
        let yt = taps(y0, y1, f.y_lv0 as f64, map.height_px);
        let gauss = |d: f64| -> f64 {
            match self.cfg.weighting {
                Weighting::Mean => 1.0,
                Weighting::Gaussian { sigma_rel } => {
                    let s = sigma_rel * f.size_lv0_px;
                    (-d * d / (2.0 * s * s)).exp()
                }
            }
        };
        let wx: Vec<f64> = xt.iter().map(|t| gauss(t.3)).collect();
        let wy: Vec<f64> = yt.iter().map(|t| gauss(t.3)).collect();
        let blocks = self.blocks_of(index);
        let block_bytes = self.block_bytes();
        for &b in &blocks {
            if self.live[b].is_none() {
                let needed = (self.live_count as u64 + 1) * block_bytes;
                if needed > self.cfg.memory_budget_bytes {
                    return Err(PostError::BudgetExceeded {
                        needed_bytes: needed,
                        budget_bytes: self.cfg.memory_budget_bytes,
                        live_blocks: self.live_count + 1,
                    });
                }
                let (_, _, w, h) = self.block_rect(b);
                self.live[b] = Some(LiveBlock {
                    acc: vec![0.0; c * w * h],
                    weight: vec![0.0; w * h],
                });
                self.live_count += 1;
            }
            let (bx0, by0, bw, bh) = self.block_rect(b);
            let Some(lb) = self.live[b].as_mut() else {
                continue;
            };
            let (ix0, ix1) = (x0.max(bx0), x1.min(bx0 + bw));
            let (iy0, iy1) = (y0.max(by0), y1.min(by0 + bh));
            let (mw, mh) = (map.width_px, map.height_px);
            for oy in iy0..iy1 {
                let (v0, v1, fv, _) = yt[oy - y0];
                let wyv = wy[oy - y0];
                for ox in ix0..ix1 {
                    let (u0, u1, fu, _) = xt[ox - x0];
                    let mut w = (wyv * wx[ox - x0]) as f32;
                    if !matches!(self.cfg.weighting, Weighting::Mean) {
                        w = w.max(GAUSSIAN_WEIGHT_FLOOR);
                    }
                    let p = (oy - by0) * bw + (ox - bx0);
                    lb.weight[p] += w;
                    for k in 0..c {
                        let m = &map.data[k * mw * mh..];
                        let top = m[v0 * mw + u0] * (1.0 - fu) + m[v0 * mw + u1] * fu;
                        let bot = m[v1 * mw + u0] * (1.0 - fu) + m[v1 * mw + u1] * fu;
                        lb.acc[k * bw * bh + p] += w * (top * (1.0 - fv) + bot * fv);
                    }
                }
            }
        }
        for &b in &blocks {
            self.pending[b] -= 1;
            if self.pending[b] == 0 {
                self.emit(b)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, b: usize) -> Result<()> {
        let (x0, y0, w, h) = self.block_rect(b);
        let c = self.cfg.num_classes;
        let (mut acc, weight) = match self.live[b].take() {
            Some(lb) => {
                self.live_count -= 1;
                (lb.acc, lb.weight)
            }
            None => (vec![0.0; c * w * h], vec![0.0; w * h]),
        };
        for k in 0..c {
            for (a, &wt) in acc[k * w * h..(k + 1) * w * h].iter_mut().zip(&weight) {
                *a = if wt > 0.0 { *a / wt } else { 0.0 };
            }
        }
        self.emitted[b] = true;
        (self.sink)(StitchedBlock {
            x0_px: x0,
            y0_px: y0,
            width_px: w,
            height_px: h,
            num_classes: c,
            confidence: acc,
            weight,
        })
    }

    /// Emits every block not yet emitted (blocks no patch touched, and blocks whose patches were not
    /// all added — a warning is logged for those) and returns the number of patches never added.
    pub fn finish(mut self) -> Result<usize> {
        let missing = self.added.iter().filter(|a| !**a).count();
        if missing > 0 {
            tracing::warn!(missing, "stitcher finished with patches never added");
        }
        for b in 0..self.blocks_x * self.blocks_y {
            if !self.emitted[b] {
                self.emit(b)?;
            }
        }
        Ok(missing)
    }
}

/// Stitches all patches in one call and returns the whole output map (for small grids). `patches`
/// yields `(index, map)` pairs; blocks are assembled into a [`FullMap`].
pub fn stitch_full<'a>(
    cfg: StitchConfig,
    footprints: Vec<PatchFootprint>,
    patches: impl IntoIterator<Item = (usize, PatchMap<'a>)>,
) -> Result<FullMap> {
    let out_w = (cfg.slide_width_lv0 as f64 / cfg.downsample).ceil() as usize;
    let out_h = (cfg.slide_height_lv0 as f64 / cfg.downsample).ceil() as usize;
    let mut full = FullMap::new(out_w, out_h, cfg.num_classes);
    {
        let mut st = Stitcher::new(cfg, footprints, |b: StitchedBlock| full.insert_block(&b))?;
        for (i, m) in patches {
            st.add_patch(i, m)?;
        }
        st.finish()?;
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(w: u64, h: u64, ds: f64, c: usize, weighting: Weighting, bs: usize) -> StitchConfig {
        StitchConfig {
            slide_width_lv0: w,
            slide_height_lv0: h,
            downsample: ds,
            num_classes: c,
            weighting,
            block_size_px: bs,
            memory_budget_bytes: 1 << 30,
        }
    }

    /// Smooth "model": class 0 = f0(x, y), class 1 = f1(x, y) at absolute level-0 position.
    fn f(k: usize, x: f64, y: f64) -> f32 {
        match k {
            0 => (0.5 + 0.3 * (x / 3000.0).sin() + 0.15 * (y / 2500.0).cos()) as f32,
            _ => (0.2 + 1e-4 * x - 5e-5 * y + 0.1 * ((x + y) / 4000.0).sin()) as f32,
        }
    }

    fn make_patches(
        w: u64,
        h: u64,
        size: i64,
        stride: i64,
        map_px: usize,
    ) -> (Vec<PatchFootprint>, Vec<Vec<f32>>) {
        let mut fps = Vec::new();
        let mut maps = Vec::new();
        let mut y = 0;
        while y < h as i64 {
            let mut x = 0;
            while x < w as i64 {
                fps.push(PatchFootprint {
                    x_lv0: x,
                    y_lv0: y,
                    size_lv0_px: size as f64,
                });
                let step = size as f64 / map_px as f64;
                let mut m = vec![0f32; 2 * map_px * map_px];
                for k in 0..2 {
                    for v in 0..map_px {
                        for u in 0..map_px {
                            m[(k * map_px + v) * map_px + u] = f(
                                k,
                                x as f64 + (u as f64 + 0.5) * step,
                                y as f64 + (v as f64 + 0.5) * step,
                            );
                        }
                    }
                }
                maps.push(m);
                x += stride;
            }
            y += stride;
        }
        (fps, maps)
    }

    fn run(cfg: StitchConfig, fps: &[PatchFootprint], maps: &[Vec<f32>], map_px: usize) -> FullMap {
        let order = raster_order(fps);
        let r = stitch_full(
            cfg,
            fps.to_vec(),
            order.iter().map(|&i| {
                (
                    i,
                    PatchMap {
                        num_classes: 2,
                        height_px: map_px,
                        width_px: map_px,
                        data: &maps[i],
                    },
                )
            }),
        );
        match r {
            Ok(m) => m,
            Err(e) => panic!("stitch failed: {e}"),
        }
    }

    fn check_equals_f(m: &FullMap, ds: f64, tol: f32) {
        let mut max_err = 0f32;
        for k in 0..2 {
            for j in 0..m.height_px {
                for i in 0..m.width_px {
                    assert!(
                        m.weight[j * m.width_px + i] > 0.0,
                        "pixel ({i},{j}) has no data"
                    );
                    let got = m.confidence[(k * m.height_px + j) * m.width_px + i];
                    let want = f(k, (i as f64 + 0.5) * ds, (j as f64 + 0.5) * ds);
                    max_err = max_err.max((got - want).abs());
                }
            }
        }
        assert!(max_err <= tol, "max error {max_err} > {tol}");
    }

    #[test]
    fn smooth_function_reconstructed_all_modes() {
        // 4096 x 3072 level-0 slide, patches of 512 lv0 px, output downsample 16, blocks of 48 output
        // px (not a divisor of the patch grid so block borders cut through patches).
        let (w, h, ds) = (4096u64, 3072u64, 16.0);
        for &(stride, map_px) in &[(512i64, 32usize), (256, 32), (512, 64), (256, 128)] {
            let (fps, maps) = make_patches(w, h, 512, stride, map_px);
            for weighting in [
                Weighting::Mean,
                Weighting::Gaussian {
                    sigma_rel: DEFAULT_GAUSSIAN_SIGMA_REL,
                },
            ] {
                let blocked = run(cfg(w, h, ds, 2, weighting, 48), &fps, &maps, map_px);
                check_equals_f(&blocked, ds, 1e-4);
                let single = run(cfg(w, h, ds, 2, weighting, 4096), &fps, &maps, map_px);
                assert_eq!(
                    blocked, single,
                    "block-wise differs from single block (stride {stride}, map {map_px})"
                );
            }
        }
    }

    #[test]
    fn coarse_maps_are_bilinear_with_edge_clamp() {
        // Map pixel = 32 lv0 px, output pixel = 16 lv0 px: samples at the patch edge are clamped, so
        // the error is bounded by |grad f| * 16 lv0 px there; interior is bilinear (tiny error).
        let (w, h, ds) = (2048u64, 2048u64, 16.0);
        let (fps, maps) = make_patches(w, h, 512, 512, 16);
        let m = run(cfg(w, h, ds, 2, Weighting::Mean, 40), &fps, &maps, 16);
        let mut max_err = 0f32;
        for j in 0..m.height_px {
            for i in 0..m.width_px {
                let got = m.confidence[j * m.width_px + i];
                max_err =
                    max_err.max((got - f(0, (i as f64 + 0.5) * ds, (j as f64 + 0.5) * ds)).abs());
            }
        }
        // |grad f0| <= 0.3/3000 + 0.15/2500 = 1.6e-4 per lv0 px; 16 px -> 2.6e-3 (+ bilinear error).
        assert!(max_err < 3e-3, "max err {max_err}");
        assert!(
            max_err > 1e-5,
            "clamping should show some error, got {max_err}"
        );
    }

    #[test]
    fn uncovered_pixels_have_no_data_and_blocks_all_emitted() {
        let c = cfg(1000, 700, 10.0, 1, Weighting::Mean, 16);
        let fps = vec![PatchFootprint {
            x_lv0: 200,
            y_lv0: 100,
            size_lv0_px: 300.0,
        }];
        let data = vec![0.75f32; 4];
        let mut seen = Vec::new();
        let mut st = Stitcher::new(c, fps, |b: StitchedBlock| {
            seen.push((
                b.x0_px,
                b.y0_px,
                b.weight.iter().filter(|w| **w > 0.0).count(),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(st.output_size_px(), (100, 70));
        st.add_patch(
            0,
            PatchMap {
                num_classes: 1,
                height_px: 2,
                width_px: 2,
                data: &data,
            },
        )
        .unwrap();
        st.finish().unwrap();
        assert_eq!(seen.len(), 7 * 5);
        let covered: usize = seen.iter().map(|s| s.2).sum();
        assert_eq!(covered, 30 * 30);
    }

    #[test]
    fn budget_is_enforced_and_raster_order_helps() {
        // Tall slide: 2 blocks per row, 16 block rows.
        let (w, h) = (2048u64, 16384u64);
        let (fps, _) = make_patches(w, h, 512, 512, 1);
        // Column-major declared order: many live blocks.
        let mut col_major = fps.clone();
        col_major.sort_by_key(|f| (f.x_lv0, f.y_lv0));
        let mut c = cfg(w, h, 16.0, 2, Weighting::Mean, 64);
        let block_bytes = 3 * 64 * 64 * 4;
        c.memory_budget_bytes = 4 * block_bytes;
        assert!(matches!(
            Stitcher::new(c.clone(), col_major, |_b: StitchedBlock| Ok(())),
            Err(PostError::BudgetExceeded { .. })
        ));
        let st = Stitcher::new(c, fps.clone(), |_b: StitchedBlock| Ok(())).unwrap();
        assert!(st.peak_live_blocks(&raster_order(&fps)) <= 4);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = cfg(100, 100, 0.0, 1, Weighting::Mean, 16);
        assert!(Stitcher::new(c, vec![], |_b: StitchedBlock| Ok(())).is_err());
        let c = cfg(100, 100, 1.0, 1, Weighting::Mean, 16);
        let fps = vec![PatchFootprint {
            x_lv0: 0,
            y_lv0: 0,
            size_lv0_px: 50.0,
        }];
        let mut st = Stitcher::new(c, fps, |_b: StitchedBlock| Ok(())).unwrap();
        let d = [0f32; 3];
        // One class, `h x w` maps over the 3 values of `d`.
        let map = |height_px: usize, width_px: usize| PatchMap {
            num_classes: 1,
            height_px,
            width_px,
            data: &d,
        };
        // 2 x 2 needs 4 values; patch 5 does not exist.
        assert!(st.add_patch(0, map(2, 2)).is_err());
        assert!(st.add_patch(5, map(1, 3)).is_err());
        st.add_patch(0, map(1, 3)).unwrap();
        // Patch 0 was added already.
        assert!(st.add_patch(0, map(1, 3)).is_err());
    }
}

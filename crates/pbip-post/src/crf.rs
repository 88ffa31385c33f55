//! Fully-connected dense CRF (Krähenbühl & Koltun, NeurIPS 2011) with mean-field inference.
//!
//! The model is the one of `pydensecrf` (`DenseCRF2D` + `unary_from_softmax` +
//! `addPairwiseGaussian` + `addPairwiseBilateral`, `DIAG_KERNEL`, `NORMALIZE_SYMMETRIC`, Potts
//! compatibility):
//!
//! - unary `U_i(l) = -ln(max(p_i(l), UNARY_PROB_CLIP))` from the class probabilities;
//! - Gaussian (appearance-free) kernel with features `f_i = (x/sxy_gaussian, y/sxy_gaussian)` and
//!   weight `compat_gaussian`;
//! - bilateral kernel with `f_i = (x/sxy_bilateral, y/sxy_bilateral, r/srgb, g/srgb, b/srgb)` and weight
//!   `compat_bilateral`;
//! - each kernel is `k(i, j) = exp(-|f_i - f_j|^2 / 2)`, symmetrically normalised:
//!   `K~ = D^{-1/2} K D^{-1/2}` with `D_i = sum_j k(i, j)` (self term included, as in pydensecrf);
//! - mean field: `Q = softmax(-U)`, then `n_iter` times `Q = softmax(-U + sum_m w_m K~_m Q)`
//!   (Potts: the message of label `l` only involves `Q(l)`; the constant part of the Potts energy
//!   cancels in the softmax).
//!
//! [`dense_crf`] computes the Gaussian filtering `K Q` with the permutohedral lattice (Adams, Baek &
//! Davis 2010), a port of the `Permutohedral` class of Krähenbühl's densecrf code: O(N (d+1)^2) per
//! filtering instead of O(N^2). The lattice only approximates a Gaussian (piecewise-linear splatting,
//! a [1 2 1]/2 blur along the d+1 lattice directions, barycentric slicing), so it agrees with the exact
//! [`dense_crf_bruteforce`] only approximately (see the tests for the measured agreement).
//!
//! [`dense_crf_blockwise`] runs the CRF on overlapping tiles for big maps: each tile is processed with
//! a halo of `halo_px` pixels on every side and only its core is written. A tile's core result depends
//! only on pixels within its halo, so tiles are independent (and the whole computation is bounded by
//! tile memory). It equals the global CRF up to the messages from pixels farther than the halo: after
//! `n_iter` iterations information travels about `n_iter * 3 * sxy` pixels, but the contribution of a
//! pixel at distance `d` in one step is `exp(-d^2 / (2 sxy^2))`, so a halo of `3 * max(sxy)` (kernel
//! reach, contribution < 1.2 %) already gives nearly the same labels; use [`suggested_halo_px`].

use crate::error::{Result, invalid};
use rayon::prelude::*;

/// Probabilities are clipped to at least this before `-ln` (pydensecrf `unary_from_softmax` clip).
pub const UNARY_PROB_CLIP: f32 = 1e-5;

/// Dense-CRF parameters (names and meanings as in pydensecrf).
#[derive(Debug, Clone, PartialEq)]
pub struct CrfParams {
    /// Spatial std of the appearance-free Gaussian kernel, in pixels (pydensecrf `sxy`, e.g. 3).
    pub sxy_gaussian: f32,
    /// Weight of the Gaussian kernel (pydensecrf `compat`, e.g. 3); 0 disables it.
    pub compat_gaussian: f32,
    /// Spatial std of the bilateral kernel, in pixels (e.g. 80).
    pub sxy_bilateral: f32,
    /// Colour std of the bilateral kernel, in RGB units 0..255 (e.g. 13).
    pub srgb: f32,
    /// Weight of the bilateral kernel (e.g. 10); 0 disables it.
    pub compat_bilateral: f32,
    /// Number of mean-field iterations (e.g. 5).
    pub n_iter: usize,
}

impl Default for CrfParams {
    /// The values of the pydensecrf README / DeepLab: sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10,
    /// 5 iterations.
    fn default() -> Self {
        Self {
            sxy_gaussian: 3.0,
            compat_gaussian: 3.0,
            sxy_bilateral: 80.0,
            srgb: 13.0,
            compat_bilateral: 10.0,
            n_iter: 5,
        }
    }
}

/// CRF output: marginals `[C, H, W]` and arg-max labels `[H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrfOutput {
    /// Number of classes.
    pub num_classes: usize,
    /// Width in pixels.
    pub width_px: usize,
    /// Height in pixels.
    pub height_px: usize,
    /// `[C, H, W]` marginal probabilities.
    pub marginals: Vec<f32>,
    /// `[H, W]` arg-max label (lowest class index on ties).
    pub labels: Vec<u8>,
}

/// Halo suggested for [`dense_crf_blockwise`]: `ceil(3 * max(sxy))` over the enabled kernels.
pub fn suggested_halo_px(p: &CrfParams) -> usize {
    let mut s = 0f32;
    if p.compat_gaussian != 0.0 {
        s = s.max(p.sxy_gaussian);
    }
    if p.compat_bilateral != 0.0 {
        s = s.max(p.sxy_bilateral);
    }
    (3.0 * s).ceil() as usize
}

// ---------------------------------------------------------------------------------------------
// Permutohedral lattice
// ---------------------------------------------------------------------------------------------

/// Open-addressing hash table from lattice keys (`d` i32 coordinates; densecrf uses i16, which
/// overflows for maps wider than ~10k px with small `sxy`) to dense indices.
struct KeyTable<const D: usize> {
    keys: Vec<[i32; D]>,
    table: Vec<u32>,
    mask: usize,
}

const EMPTY: u32 = u32::MAX;

/// Largest feature dimension supported by the lattice (the CRF uses 2 and 5).
pub const MAX_LATTICE_DIM: usize = 8;

impl<const D: usize> KeyTable<D> {
    fn new(cap_hint: usize) -> Self {
        let cap = (cap_hint * 2).next_power_of_two().max(64);
        Self {
            keys: Vec::with_capacity(cap_hint),
            table: vec![EMPTY; cap],
            mask: cap - 1,
        }
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
    #[inline]
    fn hash(key: &[i32; D]) -> usize {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for &k in key {
            h = (h ^ (k as u32 as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        // Finalise (splitmix64) so the low bits used by the mask depend on every key coordinate.
        h ^= h >> 30;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 27;
        h as usize
    }
    fn grow(&mut self) {
        let cap = self.table.len() * 2;
        self.table = vec![EMPTY; cap];
        self.mask = cap - 1;
        for (i, k) in self.keys.iter().enumerate() {
            let mut h = Self::hash(k) & self.mask;
            while self.table[h] != EMPTY {
                h = (h + 1) & self.mask;
            }
            self.table[h] = i as u32;
        }
    }
    /// Index of `key`, inserting it when `create` (returns `None` if absent and not created).
    #[inline]
    fn find(&mut self, key: &[i32; D], create: bool) -> Option<usize> {
        if create && self.keys.len() * 2 >= self.table.len() {
            self.grow();
        }
        let mut h = Self::hash(key) & self.mask;
        loop {
            let e = self.table[h];
            if e == EMPTY {
                if !create {
                    return None;
                }
                let idx = self.keys.len();
                self.keys.push(*key);
                self.table[h] = idx as u32;
                return Some(idx);
            }
            if self.keys[e as usize] == *key {
                return Some(e as usize);
            }
            h = (h + 1) & self.mask;
        }
    }
}

/// Permutohedral lattice built for a set of `n` points with `d`-dimensional features.
pub struct Permutohedral {
    n: usize,
    d: usize,
    m: usize,
    /// `n * (d+1)` lattice vertex index of each point's enclosing simplex vertices.
    offset: Vec<u32>,
    /// `n * (d+1)` barycentric weights.
    barycentric: Vec<f32>,
    /// `(d+1) * m` neighbour pairs (index + 1, 0 = none) along each lattice direction.
    neighbours: Vec<(u32, u32)>,
}

struct Built {
    m: usize,
    offset: Vec<u32>,
    barycentric: Vec<f32>,
    neighbours: Vec<(u32, u32)>,
}

/// Lattice construction for a compile-time feature dimension `D` (splat positions, barycentric
/// weights, blur neighbours), a port of densecrf's `Permutohedral::init`.
fn build<const D: usize>(features: &[f32]) -> Built {
    const S: usize = MAX_LATTICE_DIM + 2;
    let d = D;
    let d1 = D + 1;
    let n = features.len() / D;
    // Start small: lattices have far fewer vertices than points; the table grows as needed.
    let mut table = KeyTable::<D>::new(n.clamp(1, 4096));
    let mut offset = vec![0u32; n * d1];
    let mut barycentric = vec![0f32; n * d1];
    let inv_std_dev = (2.0f32 / 3.0).sqrt() * d1 as f32;
    let mut scale = [0f32; S];
    for (i, sc) in scale.iter_mut().enumerate().take(d) {
        *sc = inv_std_dev / (((i + 2) * (i + 1)) as f32).sqrt();
    }
    let mut canonical = [[0i32; S]; S];
    for (i, row) in canonical.iter_mut().enumerate().take(d + 1) {
        for (j, c) in row.iter_mut().enumerate().take(d + 1) {
            *c = if j <= d - i {
                i as i32
            } else {
                i as i32 - d1 as i32
            };
        }
    }
    let mut elevated = [0f32; S];
    let mut rem0 = [0f32; S];
    let mut key = [0i32; D];
    let mut prev_rem0 = [f32::NAN; S];
    let mut prev_rank = [-1i32; S];
    let down = 1.0 / d1 as f32;
    let up = d1 as f32;
    for (k, f) in features.chunks_exact(D).enumerate() {
        let mut sm = 0f32;
        for j in (1..=d).rev() {
            let cf = f[j - 1] * scale[j - 1];
            elevated[j] = sm - j as f32 * cf;
            sm += cf;
        }
        elevated[0] = sm;
        let mut sum = 0i32;
        for i in 0..=d {
            let rd = (down * elevated[i]).round();
            rem0[i] = rd * up;
            sum += rd as i32;
        }
        let mut rank = [0i32; S];
        for i in 0..d {
            let di = elevated[i] - rem0[i];
            for j in i + 1..=d {
                if di < elevated[j] - rem0[j] {
                    rank[i] += 1;
                } else {
                    rank[j] += 1;
                }
            }
        }
        for i in 0..=d {
            rank[i] += sum;
            if rank[i] < 0 {
                rank[i] += d1 as i32;
                rem0[i] += d1 as f32;
            } else if rank[i] > d as i32 {
                rank[i] -= d1 as i32;
                rem0[i] -= d1 as f32;
            }
        }
        let mut bary = [0f32; S];
        for i in 0..=d {
            let v = (elevated[i] - rem0[i]) * down;
            let r = rank[i] as usize;
            bary[d - r] += v;
            bary[d - r + 1] -= v;
        }
        bary[0] += 1.0 + bary[d + 1];
        // Neighbouring pixels often fall in the same simplex: reuse its vertices.
        let same = k > 0 && prev_rem0[..d1] == rem0[..d1] && prev_rank[..d1] == rank[..d1];
        for remainder in 0..=d {
            if same {
                offset[k * d1 + remainder] = offset[(k - 1) * d1 + remainder];
            } else {
                for i in 0..d {
                    key[i] = rem0[i] as i32 + canonical[remainder][rank[i] as usize];
                }
                offset[k * d1 + remainder] = table.find(&key, true).unwrap_or(0) as u32;
            }
            barycentric[k * d1 + remainder] = bary[remainder];
        }
        if !same {
            prev_rem0 = rem0;
            prev_rank = rank;
        }
    }
    let m = table.len();
    let mut neighbours = vec![(0u32, 0u32); d1 * m];
    for j in 0..=d {
        for i in 0..m {
            let kk = table.keys[i];
            let mut n1 = kk.map(|v| v - 1);
            let mut n2 = kk.map(|v| v + 1);
            if j < d {
                n1[j] = kk[j] + d as i32;
                n2[j] = kk[j] - d as i32;
            }
            let a = table.find(&n1, false).map_or(0, |x| x as u32 + 1);
            let b = table.find(&n2, false).map_or(0, |x| x as u32 + 1);
            neighbours[j * m + i] = (a, b);
        }
    }
    Built {
        m,
        offset,
        barycentric,
        neighbours,
    }
}

impl Permutohedral {
    /// Builds the lattice for `features` (`n * d`, point-major; features already divided by their
    /// std); `1 <= d <=` [`MAX_LATTICE_DIM`].
    pub fn new(features: &[f32], d: usize) -> Result<Self> {
        if d == 0 || d > MAX_LATTICE_DIM || !features.len().is_multiple_of(d) {
            return invalid(format!(
                "lattice features: d={d} must be in 1..={MAX_LATTICE_DIM} and divide the length {}",
                features.len()
            ));
        }
        let b = match d {
            1 => build::<1>(features),
            2 => build::<2>(features),
            3 => build::<3>(features),
            4 => build::<4>(features),
            5 => build::<5>(features),
            6 => build::<6>(features),
            7 => build::<7>(features),
            _ => build::<8>(features),
        };
        Ok(Self {
            n: features.len() / d,
            d,
            m: b.m,
            offset: b.offset,
            barycentric: b.barycentric,
            neighbours: b.neighbours,
        })
    }

    /// Number of lattice vertices.
    pub fn num_vertices(&self) -> usize {
        self.m
    }

    /// Gaussian-filters `input` (`n * vs`, point-major) into `out` (same shape):
    /// splat, blur along the d+1 directions, slice (times densecrf's `alpha = 1/(1 + 2^-d)`).
    pub fn compute(&self, input: &[f32], vs: usize, out: &mut [f32]) {
        let d1 = self.d + 1;
        let mut values = vec![0f32; (self.m + 2) * vs];
        let mut new_values = vec![0f32; (self.m + 2) * vs];
        for i in 0..self.n {
            let inp = &input[i * vs..(i + 1) * vs];
            for j in 0..d1 {
                let o = self.offset[i * d1 + j] as usize + 1;
                let w = self.barycentric[i * d1 + j];
                let dst = &mut values[o * vs..(o + 1) * vs];
                for k in 0..vs {
                    dst[k] += w * inp[k];
                }
            }
        }
        for j in 0..d1 {
            let nb = &self.neighbours[j * self.m..(j + 1) * self.m];
            let vals = &values;
            new_values[vs..(self.m + 1) * vs]
                .par_chunks_mut(vs * 1024)
                .enumerate()
                .for_each(|(chunk, dst)| {
                    for (r, row) in dst.chunks_exact_mut(vs).enumerate() {
                        let i = chunk * 1024 + r;
                        let (n1, n2) = nb[i];
                        let (n1, n2) = (n1 as usize, n2 as usize);
                        let base = (i + 1) * vs;
                        for k in 0..vs {
                            row[k] = vals[base + k] + 0.5 * (vals[n1 * vs + k] + vals[n2 * vs + k]);
                        }
                    }
                });
            std::mem::swap(&mut values, &mut new_values);
        }
        let alpha = 1.0 / (1.0 + 2f32.powi(-(self.d as i32)));
        let vals = &values;
        out[..self.n * vs]
            .par_chunks_mut(vs * 1024)
            .enumerate()
            .for_each(|(chunk, dst)| {
                for (r, o_row) in dst.chunks_exact_mut(vs).enumerate() {
                    let i = chunk * 1024 + r;
                    o_row.iter_mut().for_each(|v| *v = 0.0);
                    for j in 0..d1 {
                        let o = self.offset[i * d1 + j] as usize + 1;
                        let w = self.barycentric[i * d1 + j] * alpha;
                        let src = &vals[o * vs..(o + 1) * vs];
                        for k in 0..vs {
                            o_row[k] += w * src[k];
                        }
                    }
                }
            });
    }
}

// ---------------------------------------------------------------------------------------------
// Inference
// ---------------------------------------------------------------------------------------------

fn check_inputs(
    probs: &[f32],
    c: usize,
    w: usize,
    h: usize,
    rgb: &[u8],
    p: &CrfParams,
) -> Result<()> {
    if c == 0 || c > 255 {
        return invalid(format!("CRF: num_classes must be in 1..=255, got {c}"));
    }
    if probs.len() != c * w * h {
        return invalid(format!(
            "CRF: probabilities have {} values, expected C*H*W = {}",
            probs.len(),
            c * w * h
        ));
    }
    if rgb.len() != 3 * w * h {
        return invalid(format!(
            "CRF: image has {} bytes, expected 3*H*W = {}",
            rgb.len(),
            3 * w * h
        ));
    }
    for (name, v) in [
        ("sxy_gaussian", p.sxy_gaussian),
        ("sxy_bilateral", p.sxy_bilateral),
        ("srgb", p.srgb),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return invalid(format!("CRF: {name} must be > 0, got {v}"));
        }
    }
    for (name, v) in [
        ("compat_gaussian", p.compat_gaussian),
        ("compat_bilateral", p.compat_bilateral),
    ] {
        if !v.is_finite() {
            return invalid(format!("CRF: {name} must be finite, got {v}"));
        }
    }
    Ok(())
}

fn gaussian_features(w: usize, h: usize, sxy: f32) -> Vec<f32> {
    let mut f = Vec::with_capacity(2 * w * h);
    for y in 0..h {
        for x in 0..w {
            f.push(x as f32 / sxy);
            f.push(y as f32 / sxy);
        }
    }
    f
}

fn bilateral_features(w: usize, h: usize, rgb: &[u8], sxy: f32, srgb: f32) -> Vec<f32> {
    let mut f = Vec::with_capacity(5 * w * h);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            f.push(x as f32 / sxy);
            f.push(y as f32 / sxy);
            for ch in 0..3 {
                f.push(rgb[3 * i + ch] as f32 / srgb);
            }
        }
    }
    f
}

/// `-ln(clip(p))`, converted to point-major `[N, C]`.
fn unary_point_major(probs: &[f32], c: usize, n: usize) -> Vec<f32> {
    let mut u = vec![0f32; n * c];
    for k in 0..c {
        for i in 0..n {
            u[i * c + k] = -probs[k * n + i].max(UNARY_PROB_CLIP).ln();
        }
    }
    u
}

fn softmax_neg_into(logits: &[f32], c: usize, q: &mut [f32]) {
    for (l, qr) in logits.chunks_exact(c).zip(q.chunks_exact_mut(c)) {
        let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0f32;
        for k in 0..c {
            qr[k] = (l[k] - mx).exp();
            s += qr[k];
        }
        for v in qr.iter_mut() {
            *v /= s;
        }
    }
}

fn finish_output(q: &[f32], c: usize, w: usize, h: usize) -> CrfOutput {
    let n = w * h;
    let mut marginals = vec![0f32; c * n];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let qr = &q[i * c..(i + 1) * c];
        let mut best = 0;
        for k in 0..c {
            marginals[k * n + i] = qr[k];
            if qr[k] > qr[best] {
                best = k;
            }
        }
        labels[i] = best as u8;
    }
    CrfOutput {
        num_classes: c,
        width_px: w,
        height_px: h,
        marginals,
        labels,
    }
}

/// A kernel: a filter `K` (unnormalised) plus its symmetric normalisation and weight.
trait Filter {
    fn apply(&self, input: &[f32], vs: usize, out: &mut [f32]);
}

impl Filter for Permutohedral {
    fn apply(&self, input: &[f32], vs: usize, out: &mut [f32]) {
        self.compute(input, vs, out);
    }
}

struct Brute {
    features: Vec<f32>,
    d: usize,
}

impl Filter for Brute {
    fn apply(&self, input: &[f32], vs: usize, out: &mut [f32]) {
        let n = self.features.len() / self.d;
        for i in 0..n {
            let fi = &self.features[i * self.d..(i + 1) * self.d];
            let o = &mut out[i * vs..(i + 1) * vs];
            o.iter_mut().for_each(|v| *v = 0.0);
            for j in 0..n {
                let fj = &self.features[j * self.d..(j + 1) * self.d];
                let d2: f32 = fi.iter().zip(fj).map(|(a, b)| (a - b) * (a - b)).sum();
                let k = (-0.5 * d2).exp();
                for v in 0..vs {
                    o[v] += k * input[j * vs + v];
                }
            }
        }
    }
}

struct Kernel {
    filter: Box<dyn Filter>,
    norm: Vec<f32>,
    weight: f32,
}

impl Kernel {
    fn new(filter: Box<dyn Filter>, n: usize, weight: f32) -> Self {
        let ones = vec![1f32; n];
        let mut norm = vec![0f32; n];
        filter.apply(&ones, 1, &mut norm);
        for v in norm.iter_mut() {
            *v = 1.0 / (*v + 1e-20).sqrt();
        }
        Self {
            filter,
            norm,
            weight,
        }
    }
    /// `logits += weight * D^-1/2 K D^-1/2 q`
    fn add_message(
        &self,
        q: &[f32],
        c: usize,
        tmp_in: &mut [f32],
        tmp_out: &mut [f32],
        logits: &mut [f32],
    ) {
        for (i, &nv) in self.norm.iter().enumerate() {
            for k in 0..c {
                tmp_in[i * c + k] = q[i * c + k] * nv;
            }
        }
        self.filter.apply(tmp_in, c, tmp_out);
        for (i, &nv) in self.norm.iter().enumerate() {
            let s = self.weight * nv;
            for k in 0..c {
                logits[i * c + k] += s * tmp_out[i * c + k];
            }
        }
    }
}

fn mean_field(unary: &[f32], c: usize, kernels: &[Kernel], n_iter: usize) -> Vec<f32> {
    let n = unary.len() / c;
    let neg_u: Vec<f32> = unary.iter().map(|u| -u).collect();
    let mut q = vec![0f32; n * c];
    softmax_neg_into(&neg_u, c, &mut q);
    let mut logits = vec![0f32; n * c];
    let mut tmp_in = vec![0f32; n * c];
    let mut tmp_out = vec![0f32; n * c];
    for _ in 0..n_iter {
        logits.copy_from_slice(&neg_u);
        for k in kernels {
            k.add_message(&q, c, &mut tmp_in, &mut tmp_out, &mut logits);
        }
        softmax_neg_into(&logits, c, &mut q);
    }
    q
}

fn build_kernels(
    w: usize,
    h: usize,
    rgb: &[u8],
    p: &CrfParams,
    make: &dyn Fn(Vec<f32>, usize) -> Result<Box<dyn Filter>>,
) -> Result<Vec<Kernel>> {
    let n = w * h;
    let mut kernels = Vec::new();
    if p.compat_gaussian != 0.0 {
        kernels.push(Kernel::new(
            make(gaussian_features(w, h, p.sxy_gaussian), 2)?,
            n,
            p.compat_gaussian,
        ));
    }
    if p.compat_bilateral != 0.0 {
        kernels.push(Kernel::new(
            make(bilateral_features(w, h, rgb, p.sxy_bilateral, p.srgb), 5)?,
            n,
            p.compat_bilateral,
        ));
    }
    Ok(kernels)
}

/// Dense CRF with permutohedral-lattice message passing.
///
/// `probs` is `[C, H, W]` class probabilities, `rgb` is `H * W * 3` RGB8 (row-major, HWC).
pub fn dense_crf(
    probs: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    rgb: &[u8],
    params: &CrfParams,
) -> Result<CrfOutput> {
    check_inputs(probs, num_classes, width_px, height_px, rgb, params)?;
    solve(
        probs,
        num_classes,
        width_px,
        height_px,
        rgb,
        params,
        &|f, d| Ok(Box::new(Permutohedral::new(&f, d)?) as Box<dyn Filter>),
    )
}

/// Mean-field inference on checked inputs, with the Gaussian filters that `make` builds.
fn solve(
    probs: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    rgb: &[u8],
    params: &CrfParams,
    make: &dyn Fn(Vec<f32>, usize) -> Result<Box<dyn Filter>>,
) -> Result<CrfOutput> {
    let n = width_px * height_px;
    let kernels = build_kernels(width_px, height_px, rgb, params, make)?;
    let unary = unary_point_major(probs, num_classes, n);
    let q = mean_field(&unary, num_classes, &kernels, params.n_iter);
    Ok(finish_output(&q, num_classes, width_px, height_px))
}

/// The same model with exact O(N^2) Gaussian filtering (reference for tests; only for small images).
pub fn dense_crf_bruteforce(
    probs: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    rgb: &[u8],
    params: &CrfParams,
) -> Result<CrfOutput> {
    check_inputs(probs, num_classes, width_px, height_px, rgb, params)?;
    let n = width_px * height_px;
    if n > 1 << 16 {
        return invalid(format!(
            "dense_crf_bruteforce: {n} pixels is too many for O(N^2) (max 65536)"
        ));
    }
    solve(
        probs,
        num_classes,
        width_px,
        height_px,
        rgb,
        params,
        &|features, d| Ok(Box::new(Brute { features, d }) as Box<dyn Filter>),
    )
}

/// Tiling of [`dense_crf_blockwise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrfBlocks {
    /// Side of a tile's core (output px), >= 1.
    pub block_px: usize,
    /// Context added on every side of a core (output px), see [`suggested_halo_px`].
    pub halo_px: usize,
}

/// Block-wise dense CRF: tiles of `block_px` x `block_px` output pixels, each run with `halo_px` of
/// context on every side (clipped at the image border); only the tile cores are kept (see the module
/// docs for how close this is to the global CRF). Tiles run in parallel (rayon); memory is bounded by
/// one tile plus halo per worker thread.
pub fn dense_crf_blockwise(
    probs: &[f32],
    num_classes: usize,
    width_px: usize,
    height_px: usize,
    rgb: &[u8],
    params: &CrfParams,
    blocks: CrfBlocks,
) -> Result<CrfOutput> {
    let CrfBlocks { block_px, halo_px } = blocks;
    check_inputs(probs, num_classes, width_px, height_px, rgb, params)?;
    if block_px == 0 {
        return invalid("CRF: block_px must be >= 1");
    }
    let (w, h, c) = (width_px, height_px, num_classes);
    let n = w * h;
    let mut tiles = Vec::new();
    for by in (0..h).step_by(block_px) {
        for bx in (0..w).step_by(block_px) {
            tiles.push((bx, by));
        }
    }
    // Tiles are independent: run them in parallel (memory: one tile + halo per worker thread).
    type TileResult = Result<(usize, usize, usize, usize, CrfOutput)>;
    let results: Vec<TileResult> = tiles
        .par_iter()
        .map(|&(bx, by)| {
            let (tx0, ty0) = (bx.saturating_sub(halo_px), by.saturating_sub(halo_px));
            let (cx1, cy1) = ((bx + block_px).min(w), (by + block_px).min(h));
            let (tx1, ty1) = ((cx1 + halo_px).min(w), (cy1 + halo_px).min(h));
            let (tw, th) = (tx1 - tx0, ty1 - ty0);
            let mut tp = vec![0f32; c * tw * th];
            let mut trgb = vec![0u8; 3 * tw * th];
            for k in 0..c {
                for y in 0..th {
                    let src = (k * h + ty0 + y) * w + tx0;
                    tp[(k * th + y) * tw..(k * th + y + 1) * tw]
                        .copy_from_slice(&probs[src..src + tw]);
                }
            }
            for y in 0..th {
                let src = 3 * ((ty0 + y) * w + tx0);
                trgb[3 * y * tw..3 * (y + 1) * tw].copy_from_slice(&rgb[src..src + 3 * tw]);
            }
            Ok((bx, by, tx0, ty0, dense_crf(&tp, c, tw, th, &trgb, params)?))
        })
        .collect();
    let mut marginals = vec![0f32; c * n];
    let mut labels = vec![0u8; n];
    for r in results {
        let (bx, by, tx0, ty0, out) = r?;
        let (cx1, cy1) = ((bx + block_px).min(w), (by + block_px).min(h));
        let (tw, th) = (out.width_px, out.height_px);
        for y in by..cy1 {
            for x in bx..cx1 {
                let ti = (y - ty0) * tw + (x - tx0);
                labels[y * w + x] = out.labels[ti];
                for k in 0..c {
                    marginals[k * n + y * w + x] = out.marginals[k * tw * th + ti];
                }
            }
        }
    }
    Ok(CrfOutput {
        num_classes: c,
        width_px: w,
        height_px: h,
        marginals,
        labels,
    })
}

/// Builds lattice-filter and brute-force kernels on the same features; returns
/// `(lattice(K v), exact(K v))` for a vector `v` (diagnostics / tests).
#[doc(hidden)]
pub fn filter_pair(features: &[f32], d: usize, v: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let lat = Permutohedral::new(features, d)?;
    let mut a = vec![0f32; v.len()];
    lat.compute(v, 1, &mut a);
    let br = Brute {
        features: features.to_vec(),
        d,
    };
    let mut b = vec![0f32; v.len()];
    br.apply(v, 1, &mut b);
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random smooth-ish test problem: a 2-3 region image with noise and noisy probabilities.
    fn problem(w: usize, h: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cx = rng.random_range(0.3..0.7) * w as f32;
        let cy = rng.random_range(0.3..0.7) * h as f32;
        let r = rng.random_range(0.2..0.35) * w.min(h) as f32;
        let mut truth = vec![0usize; w * h];
        let mut rgb = vec![0u8; 3 * w * h];
        let colours = [[200u8, 60, 60], [60, 200, 60], [60, 60, 200]];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let t = if dx * dx + dy * dy < r * r {
                    1
                } else if c > 2 && x > w * 3 / 4 {
                    2
                } else {
                    0
                };
                truth[y * w + x] = t;
                for ch in 0..3 {
                    let noise: i32 = rng.random_range(-20..=20);
                    rgb[3 * (y * w + x) + ch] = (colours[t][ch] as i32 + noise).clamp(0, 255) as u8;
                }
            }
        }
        let n = w * h;
        let mut probs = vec![0f32; c * n];
        for i in 0..n {
            let mut s = 0f32;
            for k in 0..c {
                let base = if k == truth[i] {
                    0.55
                } else {
                    0.45 / (c - 1) as f32
                };
                let v = (base + rng.random_range(-0.3..0.3f32)).max(0.01);
                probs[k * n + i] = v;
                s += v;
            }
            for k in 0..c {
                probs[k * n + i] /= s;
            }
        }
        (probs, rgb)
    }

    #[test]
    fn lattice_filter_approximates_gaussian() {
        // 2-D features on a grid with std 3 px: the lattice blur of a random vector, after the
        // same normalisation, is close to the exact Gaussian filter.
        let (w, h) = (24, 20);
        let f = gaussian_features(w, h, 3.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v: Vec<f32> = (0..w * h).map(|_| rng.random_range(0.0..1.0)).collect();
        let ones = vec![1f32; w * h];
        let (la, ex) = filter_pair(&f, 2, &v).unwrap();
        let (la1, ex1) = filter_pair(&f, 2, &ones).unwrap();
        // Compare normalised filters (K v / K 1): shape, not overall scale.
        let mut err = 0f32;
        for i in 0..w * h {
            err = err.max((la[i] / la1[i] - ex[i] / ex1[i]).abs());
        }
        assert!(err < 0.06, "normalised filter max diff {err}");
    }

    #[test]
    fn lattice_crf_agrees_with_bruteforce() {
        let params = CrfParams {
            sxy_gaussian: 3.0,
            compat_gaussian: 3.0,
            sxy_bilateral: 5.0,
            srgb: 13.0,
            compat_bilateral: 5.0,
            n_iter: 5,
        };
        let mut total_eq = 0usize;
        let mut total = 0usize;
        for (seed, c) in [(1u64, 2usize), (2, 3), (3, 2), (4, 3)] {
            let (w, h) = (24, 20);
            let (probs, rgb) = problem(w, h, c, seed);
            let a = dense_crf(&probs, c, w, h, &rgb, &params).unwrap();
            let b = dense_crf_bruteforce(&probs, c, w, h, &rgb, &params).unwrap();
            let eq = a
                .labels
                .iter()
                .zip(&b.labels)
                .filter(|(x, y)| x == y)
                .count();
            let mad: f32 = a
                .marginals
                .iter()
                .zip(&b.marginals)
                .map(|(x, y)| (x - y).abs())
                .sum::<f32>()
                / a.marginals.len() as f32;
            eprintln!(
                "seed {seed} C={c}: label agreement {}/{}, marginal MAD {mad}",
                eq,
                w * h
            );
            assert!(mad < 0.03, "marginal mean abs diff {mad}");
            total_eq += eq;
            total += w * h;
            // And the CRF did something: it changes labels w.r.t. the unary arg-max.
            let unary_lab: Vec<u8> = (0..w * h)
                .map(|i| {
                    (0..c)
                        .max_by(|&x, &y| probs[x * w * h + i].total_cmp(&probs[y * w * h + i]))
                        .unwrap_or(0) as u8
                })
                .collect();
            assert!(b.labels != unary_lab);
        }
        let frac = total_eq as f64 / total as f64;
        assert!(frac >= 0.98, "label agreement {frac}");
    }

    #[test]
    fn blockwise_with_halo_matches_global() {
        let params = CrfParams {
            sxy_gaussian: 3.0,
            compat_gaussian: 3.0,
            sxy_bilateral: 6.0,
            srgb: 13.0,
            compat_bilateral: 5.0,
            n_iter: 5,
        };
        let (w, h, c) = (90, 70, 3);
        let (probs, rgb) = problem(w, h, c, 9);
        let g = dense_crf(&probs, c, w, h, &rgb, &params).unwrap();
        let blocks = CrfBlocks {
            block_px: 32,
            halo_px: suggested_halo_px(&params),
        };
        let b = dense_crf_blockwise(&probs, c, w, h, &rgb, &params, blocks).unwrap();
        let eq = g
            .labels
            .iter()
            .zip(&b.labels)
            .filter(|(x, y)| x == y)
            .count();
        assert!(
            eq as f64 >= 0.98 * (w * h) as f64,
            "blockwise agreement {eq}/{}",
            w * h
        );
        // Without halo the agreement is worse or equal (sanity that the halo matters).
        let b0 = dense_crf_blockwise(
            &probs,
            c,
            w,
            h,
            &rgb,
            &params,
            CrfBlocks {
                block_px: 32,
                halo_px: 0,
            },
        )
        .unwrap();
        let eq0 = g
            .labels
            .iter()
            .zip(&b0.labels)
            .filter(|(x, y)| x == y)
            .count();
        assert!(eq >= eq0);
    }

    #[test]
    fn bad_inputs() {
        let p = CrfParams::default();
        assert!(dense_crf(&[0.5; 8], 2, 2, 2, &[0; 11], &p).is_err());
        assert!(dense_crf(&[0.5; 7], 2, 2, 2, &[0; 12], &p).is_err());
        let bad = CrfParams { srgb: 0.0, ..p };
        assert!(dense_crf(&[0.5; 8], 2, 2, 2, &[0; 12], &bad).is_err());
    }
}

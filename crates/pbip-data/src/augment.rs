//! Training augmentation, seeded and deterministic per (seed, step, item).
//!
//! Upstream (Albumentations, in this order): `HorizontalFlip(p=0.5)`, `VerticalFlip(p=0.5)`,
//! `RandomRotate90(p=0.5)` (when applied, `k ∈ {0,1,2,3}` uniformly, rotation by `k·90°`
//! counter-clockwise as `np.rot90`), no colour augmentation. The geometric operations act on the
//! u8 image before normalisation (normalisation is per pixel, so the result is identical); the
//! same parameters can be applied to a label mask ([`AugParams::apply_mask`]).
//!
//! Optional colour jitter (off by default): brightness, contrast and saturation factors drawn
//! uniformly in `[1 − s, 1 + s]`, applied in that order on the u8 image with rounding and
//! clamping.
//!
//! Optional stain jitter (off by default; Tellez et al. 2018, "H&E stain augmentation"): the
//! image is converted to optical density `OD = −ln(max(I, 1) / 255)` and unmixed into
//! haematoxylin, eosin and DAB concentrations with the Ruifrok–Johnston matrix (as
//! `skimage.color.rgb2hed`); each concentration `c` becomes `α·c + β` with `α` uniform in
//! `[1 − σ, 1 + σ]` and `β` uniform in `[−σ, σ]`, and the image is recomposed. It imitates the
//! stain variation between slides and labs without destroying which structures take which stain.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::{below, rng_for, tag, unit_f64};

/// Augmentation switches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentOptions {
    /// Horizontal (left-right) flip with probability `flip_p`.
    pub hflip: bool,
    /// Vertical (up-down) flip with probability `flip_p`.
    pub vflip: bool,
    /// Random 90° rotation: with probability `rot90_p`, rotate by `k·90°`, `k` uniform in 0..4.
    pub rot90: bool,
    /// Flip probability (upstream 0.5).
    pub flip_p: f64,
    /// Probability that `RandomRotate90` is applied (upstream 0.5).
    pub rot90_p: f64,
    /// Colour jitter strength `s` in [0, 1); 0 = off (default).
    pub color_jitter: f64,
    /// H&E stain jitter strength `σ` in [0, 1); 0 = off (default).
    #[serde(default)]
    pub stain_jitter: f64,
}

impl Default for AugmentOptions {
    /// Upstream training augmentation.
    fn default() -> Self {
        AugmentOptions {
            hflip: true,
            vflip: true,
            rot90: true,
            flip_p: 0.5,
            rot90_p: 0.5,
            color_jitter: 0.0,
            stain_jitter: 0.0,
        }
    }
}

impl AugmentOptions {
    /// No augmentation at all (evaluation).
    pub fn none() -> Self {
        AugmentOptions {
            hflip: false,
            vflip: false,
            rot90: false,
            flip_p: 0.5,
            rot90_p: 0.5,
            color_jitter: 0.0,
            stain_jitter: 0.0,
        }
    }

    /// Checks probabilities and jitter range.
    pub fn validate(&self) -> Result<()> {
        let p_ok = |p: f64| (0.0..=1.0).contains(&p);
        if !p_ok(self.flip_p) || !p_ok(self.rot90_p) {
            return Err(DataError::InvalidOption(format!(
                "augment: probabilities must be in [0, 1] (flip_p {}, rot90_p {})",
                self.flip_p, self.rot90_p
            )));
        }
        if !(0.0..1.0).contains(&self.color_jitter) {
            return Err(DataError::InvalidOption(format!(
                "augment.color_jitter must be in [0, 1), got {}",
                self.color_jitter
            )));
        }
        if !(0.0..1.0).contains(&self.stain_jitter) {
            return Err(DataError::InvalidOption(format!(
                "augment.stain_jitter must be in [0, 1), got {}",
                self.stain_jitter
            )));
        }
        Ok(())
    }

    /// Draws the parameters for item `item` of global step `step` under `seed`.
    ///
    /// The same (seed, step, item) always gives the same parameters, whatever the thread or
    /// the order of calls. A fixed number of random values is consumed whatever the switches, so
    /// turning one augmentation off does not change the others' draws.
    pub fn draw(&self, seed: u64, step: u64, item: u64) -> AugParams {
        let mut rng = rng_for(seed, tag::AUGMENT, &[step, item]);
        let u_h = unit_f64(&mut rng);
        let u_v = unit_f64(&mut rng);
        let u_r = unit_f64(&mut rng);
        let k = below(&mut rng, 4) as u8;
        let jit = [unit_f64(&mut rng), unit_f64(&mut rng), unit_f64(&mut rng)];
        let st: [f64; 6] = std::array::from_fn(|_| unit_f64(&mut rng));
        let s = self.color_jitter;
        let sj = self.stain_jitter;
        AugParams {
            hflip: self.hflip && u_h < self.flip_p,
            vflip: self.vflip && u_v < self.flip_p,
            rot90_k: if self.rot90 && u_r < self.rot90_p {
                k
            } else {
                0
            },
            jitter: if s > 0.0 {
                Some(jit.map(|u| (1.0 - s + 2.0 * s * u) as f32))
            } else {
                None
            },
            stain: if sj > 0.0 {
                // α for H, E, D, then β for H, E, D.
                Some(std::array::from_fn(|i| {
                    if i < 3 {
                        (1.0 - sj + 2.0 * sj * st[i]) as f32
                    } else {
                        (sj * (2.0 * st[i] - 1.0)) as f32
                    }
                }))
            } else {
                None
            },
        }
    }
}

/// The augmentation drawn for one patch (recorded in its provenance).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AugParams {
    /// Mirror left-right.
    pub hflip: bool,
    /// Mirror up-down.
    pub vflip: bool,
    /// Counter-clockwise quarter turns after the flips (0..4).
    pub rot90_k: u8,
    /// Brightness, contrast, saturation factors (None = no jitter).
    pub jitter: Option<[f32; 3]>,
    /// Stain jitter: scale α of H, E, D, then shift β of H, E, D (None = no stain jitter).
    #[serde(default)]
    pub stain: Option<[f32; 6]>,
}

impl AugParams {
    /// True when the parameters change nothing.
    pub fn is_identity(&self) -> bool {
        !self.hflip
            && !self.vflip
            && self.rot90_k.is_multiple_of(4)
            && self.jitter.is_none()
            && self.stain.is_none()
    }

    /// Applies flips, rotation and jitter to a square RGB8 HWC image of side `side_px`.
    pub fn apply_rgb(&self, img: &mut [u8], side_px: usize, scratch: &mut Vec<u8>) -> Result<()> {
        geometric::<3>(self, img, side_px, scratch)?;
        if let Some(f) = self.jitter {
            color_jitter(img, f);
        }
        if let Some(s) = self.stain {
            stain_jitter(img, s);
        }
        Ok(())
    }

    /// Applies the geometric part (flips, rotation) to a square one-byte-per-pixel mask.
    pub fn apply_mask(&self, mask: &mut [u8], side_px: usize, scratch: &mut Vec<u8>) -> Result<()> {
        geometric::<1>(self, mask, side_px, scratch)
    }
}

fn geometric<const C: usize>(
    p: &AugParams,
    img: &mut [u8],
    n: usize,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    if img.len() != n * n * C {
        return Err(DataError::InvalidOption(format!(
            "augment: buffer of {} bytes is not a {n}x{n} image with {C} channel(s)",
            img.len()
        )));
    }
    if p.hflip {
        for row in img.chunks_exact_mut(n * C) {
            for x in 0..n / 2 {
                for c in 0..C {
                    row.swap(x * C + c, (n - 1 - x) * C + c);
                }
            }
        }
    }
    if p.vflip {
        for y in 0..n / 2 {
            let (top, bottom) = img.split_at_mut((n - 1 - y) * n * C);
            top[y * n * C..(y + 1) * n * C].swap_with_slice(&mut bottom[..n * C]);
        }
    }
    let k = p.rot90_k % 4;
    if k != 0 {
        scratch.clear();
        scratch.extend_from_slice(img);
        // np.rot90(m, k) (counter-clockwise): out[i][j] = in[src(i, j)].
        for i in 0..n {
            for j in 0..n {
                let (si, sj) = match k {
                    1 => (j, n - 1 - i),
                    2 => (n - 1 - i, n - 1 - j),
                    _ => (n - 1 - j, i),
                };
                let d = (i * n + j) * C;
                let s = (si * n + sj) * C;
                img[d..d + C].copy_from_slice(&scratch[s..s + C]);
            }
        }
    }
    Ok(())
}

/// Brightness, contrast (around the mean grey), saturation (around each pixel's grey), u8 out.
fn color_jitter(img: &mut [u8], f: [f32; 3]) {
    let gray = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut v: Vec<f32> = img
        .iter()
        .map(|&b| (f32::from(b) * f[0]).clamp(0.0, 255.0))
        .collect();
    let npx = (v.len() / 3).max(1);
    let mean = v.chunks_exact(3).map(gray).sum::<f32>() / npx as f32;
    for x in v.iter_mut() {
        *x = ((*x - mean) * f[1] + mean).clamp(0.0, 255.0);
    }
    for px in v.chunks_exact_mut(3) {
        let g = gray(px);
        for c in px.iter_mut() {
            *c = ((*c - g) * f[2] + g).clamp(0.0, 255.0);
        }
    }
    for (b, x) in img.iter_mut().zip(v) {
        *b = x.round() as u8;
    }
}

/// `skimage.color.rgb_from_hed` (Ruifrok & Johnston), rows H, E, D.
const RGB_FROM_HED: [[f32; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];

/// Inverse of a 3x3 matrix (the stain matrix is well conditioned).
fn inverse3(m: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let c = |r: usize, k: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (k1, k2) = ((k + 1) % 3, (k + 2) % 3);
        m[r1][k1] * m[r2][k2] - m[r1][k2] * m[r2][k1]
    };
    let det = m[0][0] * c(0, 0) + m[0][1] * c(0, 1) + m[0][2] * c(0, 2);
    // inverse[i][j] = cofactor(j, i) / det
    std::array::from_fn(|i| std::array::from_fn(|j| c(j, i) / det))
}

/// Stain jitter in HED space: `hed' = α·hed + β` per stain, `s` = [αH, αE, αD, βH, βE, βD].
fn stain_jitter(img: &mut [u8], s: [f32; 6]) {
    let hed_from_rgb = inverse3(&RGB_FROM_HED);
    for px in img.chunks_exact_mut(3) {
        let od: [f32; 3] = std::array::from_fn(|c| -(f32::from(px[c].max(1)) / 255.0).ln());
        let hed: [f32; 3] = std::array::from_fn(|k| {
            let v = (0..3).map(|c| od[c] * hed_from_rgb[c][k]).sum::<f32>();
            v * s[k] + s[3 + k]
        });
        for c in 0..3 {
            let o = (0..3).map(|k| hed[k] * RGB_FROM_HED[k][c]).sum::<f32>();
            px[c] = (255.0 * (-o).exp()).round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stain_jitter_identity_and_direction() {
        // α = 1, β = 0 reproduces the image (up to rounding of exp/ln).
        let mut img: Vec<u8> = vec![200, 120, 180, 255, 255, 255, 90, 40, 140, 1, 1, 1];
        let orig = img.clone();
        stain_jitter(&mut img, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        for (a, b) in img.iter().zip(&orig) {
            assert!(
                (i32::from(*a) - i32::from(*b)).abs() <= 1,
                "{img:?} vs {orig:?}"
            );
        }
        // More haematoxylin (α_H > 1) darkens a purple pixel, most in red (H absorbs red most).
        let mut p = vec![150u8, 100, 170];
        stain_jitter(&mut p, [1.5, 1.0, 1.0, 0.0, 0.0, 0.0]);
        assert!(p[0] < 150 && p[1] < 100 && p[2] < 170, "{p:?}");
        assert!(150 - i32::from(p[0]) > 170 - i32::from(p[2]), "{p:?}");
        // The matrix inverse is right: hed_from_rgb · rgb_from_hed = I.
        let inv = inverse3(&RGB_FROM_HED);
        for (i, row) in RGB_FROM_HED.iter().enumerate() {
            for j in 0..3 {
                let v: f32 = row.iter().zip(&inv).map(|(a, r)| a * r[j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }

    // 3x3 single-channel image:
    // 1 2 3
    // 4 5 6
    // 7 8 9
    const IMG: [u8; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

    fn run(p: AugParams) -> Vec<u8> {
        let mut m = IMG.to_vec();
        p.apply_mask(&mut m, 3, &mut Vec::new()).unwrap();
        m
    }

    #[test]
    fn flips() {
        let h = AugParams {
            hflip: true,
            ..Default::default()
        };
        assert_eq!(run(h), [3, 2, 1, 6, 5, 4, 9, 8, 7]);
        let v = AugParams {
            vflip: true,
            ..Default::default()
        };
        assert_eq!(run(v), [7, 8, 9, 4, 5, 6, 1, 2, 3]);
    }

    #[test]
    fn rot90_counter_clockwise_like_numpy() {
        // np.rot90([[1,2,3],[4,5,6],[7,8,9]]) = [[3,6,9],[2,5,8],[1,4,7]]
        let r1 = AugParams {
            rot90_k: 1,
            ..Default::default()
        };
        assert_eq!(run(r1), [3, 6, 9, 2, 5, 8, 1, 4, 7]);
        let r2 = AugParams {
            rot90_k: 2,
            ..Default::default()
        };
        assert_eq!(run(r2), [9, 8, 7, 6, 5, 4, 3, 2, 1]);
        // k=3: [[7,4,1],[8,5,2],[9,6,3]]
        let r3 = AugParams {
            rot90_k: 3,
            ..Default::default()
        };
        assert_eq!(run(r3), [7, 4, 1, 8, 5, 2, 9, 6, 3]);
    }

    #[test]
    fn flips_then_rotation_order() {
        // hflip then rot90 k=1: hflip = [[3,2,1],[6,5,4],[9,8,7]]; rot90 = [[1,4,7],[2,5,8],[3,6,9]]
        let p = AugParams {
            hflip: true,
            rot90_k: 1,
            ..Default::default()
        };
        assert_eq!(run(p), [1, 4, 7, 2, 5, 8, 3, 6, 9]);
    }

    #[test]
    fn rgb_moves_whole_pixels() {
        // 2x2 RGB: pixel value (10*i, 10*i+1, 10*i+2) for i = 0..4.
        let mut img: Vec<u8> = (0..4)
            .flat_map(|i| [10 * i, 10 * i + 1, 10 * i + 2])
            .collect();
        let p = AugParams {
            hflip: true,
            ..Default::default()
        };
        p.apply_rgb(&mut img, 2, &mut Vec::new()).unwrap();
        assert_eq!(img, [10, 11, 12, 0, 1, 2, 30, 31, 32, 20, 21, 22]);
    }

    #[test]
    fn draw_is_deterministic_and_balanced() {
        let o = AugmentOptions::default();
        assert_eq!(o.draw(3, 10, 2), o.draw(3, 10, 2));
        let n = 8000;
        let (mut h, mut v, mut ks) = (0, 0, [0usize; 4]);
        for i in 0..n {
            let p = o.draw(1, i / 10, i % 10);
            h += p.hflip as usize;
            v += p.vflip as usize;
            ks[p.rot90_k as usize] += 1;
            assert!(p.jitter.is_none());
        }
        let frac = |c: usize| c as f64 / n as f64;
        assert!((frac(h) - 0.5).abs() < 0.03, "{h}");
        assert!((frac(v) - 0.5).abs() < 0.03, "{v}");
        // k = 0 with p 0.5 + 0.5/4 = 0.625, others 0.125 each.
        assert!((frac(ks[0]) - 0.625).abs() < 0.03, "{ks:?}");
        for &k in &ks[1..] {
            assert!((frac(k) - 0.125).abs() < 0.02, "{ks:?}");
        }
        // Switching one augmentation off leaves the others' draws unchanged.
        let no_h = AugmentOptions { hflip: false, ..o };
        for i in 0..50 {
            let (a, b) = (o.draw(9, i, 0), no_h.draw(9, i, 0));
            assert_eq!((a.vflip, a.rot90_k), (b.vflip, b.rot90_k));
            assert!(!b.hflip);
        }
        assert!(AugmentOptions::none().draw(1, 2, 3).is_identity());
    }

    #[test]
    fn jitter_identity_factors_keep_image() {
        let mut img = vec![12u8, 200, 99, 0, 255, 128];
        let orig = img.clone();
        color_jitter(&mut img, [1.0, 1.0, 1.0]);
        assert_eq!(img, orig);
        let o = AugmentOptions {
            color_jitter: 0.2,
            ..AugmentOptions::default()
        };
        let f = o.draw(0, 0, 0).jitter.unwrap();
        assert!(f.iter().all(|&x| (0.8..=1.2).contains(&x)));
        // brightness 0.5 halves a grey pixel
        let mut g = vec![100u8, 100, 100];
        color_jitter(&mut g, [0.5, 1.0, 1.0]);
        assert_eq!(g, [50, 50, 50]);
    }

    #[test]
    fn wrong_size_is_error() {
        let p = AugParams {
            hflip: true,
            ..Default::default()
        };
        assert!(p.apply_mask(&mut [0u8; 5], 2, &mut Vec::new()).is_err());
    }
}

//! Procedural slide model: tissue / tumour fields and H&E-like textures.
//!
//! Everything is a pure function of `(seed, x, y)` so any pixel can be rendered independently
//! (bands in parallel, byte-identical across runs and thread counts).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Label of background (no tissue) in GT masks.
pub const LABEL_BACKGROUND: u8 = 255;
/// Label of benign tissue.
pub const LABEL_BENIGN: u8 = 0;
/// Label of tumour tissue.
pub const LABEL_TUMOUR: u8 = 1;

/// Side of the coarse grid on which the smooth tissue / tumour fields are evaluated.
const GRID: usize = 256;

#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn hash2(seed: u64, a: i64, b: i64) -> u64 {
    mix64(
        seed ^ (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (b as u64)
                .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                .rotate_left(17),
    )
}

/// Uniform in [0, 1) from a hash.
#[inline]
fn unit(h: u64) -> f32 {
    (h >> 40) as f32 * (1.0 / 16_777_216.0)
}

#[inline]
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// `floor` without a libm call (baseline x86-64 has no SSE4.1 `roundss`).
#[inline]
fn ffloor(x: f32) -> f32 {
    let t = x as i64 as f32;
    if t > x { t - 1.0 } else { t }
}

/// Value noise in [0, 1] with lattice spacing 1.
#[inline]
fn vnoise(seed: u64, x: f32, y: f32) -> f32 {
    let (fx, fy) = (ffloor(x), ffloor(y));
    let (ix, iy) = (fx as i64, fy as i64);
    let (tx, ty) = (smooth(x - fx), smooth(y - fy));
    let a = unit(hash2(seed, ix, iy));
    let b = unit(hash2(seed, ix + 1, iy));
    let c = unit(hash2(seed, ix, iy + 1));
    let d = unit(hash2(seed, ix + 1, iy + 1));
    let top = a + (b - a) * tx;
    let bot = c + (d - c) * tx;
    top + (bot - top) * ty
}

fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
    let (mut amp, mut freq, mut sum, mut norm) = (1.0f32, 1.0f32, 0.0f32, 0.0f32);
    for o in 0..octaves {
        sum += amp * vnoise(seed.wrapping_add(o as u64 * 7919), x * freq, y * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

/// A field sampled on a `(GRID+1)^2` lattice over the unit square, bilinearly interpolated.
struct Field {
    v: Vec<f32>,
}

impl Field {
    fn new(f: impl Fn(f32, f32) -> f32) -> Self {
        let n = GRID + 1;
        let mut v = Vec::with_capacity(n * n);
        for j in 0..n {
            for i in 0..n {
                v.push(f(i as f32 / GRID as f32, j as f32 / GRID as f32));
            }
        }
        Self { v }
    }

    /// Value at grid coordinates (gx, gy) in [0, GRID].
    #[inline]
    fn at(&self, gx: f32, gy: f32) -> f32 {
        let n = GRID + 1;
        let gx = gx.clamp(0.0, GRID as f32);
        let gy = gy.clamp(0.0, GRID as f32);
        let ix = (gx as usize).min(GRID - 1);
        let iy = (gy as usize).min(GRID - 1);
        let (tx, ty) = (gx - ix as f32, gy - iy as f32);
        let a = self.v[iy * n + ix];
        let b = self.v[iy * n + ix + 1];
        let c = self.v[(iy + 1) * n + ix];
        let d = self.v[(iy + 1) * n + ix + 1];
        let top = a + (b - a) * tx;
        let bot = c + (d - c) * tx;
        top + (bot - top) * ty
    }

    /// Values at cell centres (what the quantiles are computed on).
    fn cell_values(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(GRID * GRID);
        for j in 0..GRID {
            for i in 0..GRID {
                out.push(self.at(i as f32 + 0.5, j as f32 + 0.5));
            }
        }
        out
    }
}

fn quantile(mut v: Vec<f32>, q: f64) -> f32 {
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(f32::total_cmp);
    let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[i]
}

#[derive(Clone, Copy)]
struct Blob {
    cx: f32,
    cy: f32,
    inv_sx2: f32,
    inv_sy2: f32,
    cos: f32,
    sin: f32,
    weight: f32,
}

impl Blob {
    fn random(rng: &mut ChaCha8Rng, cx: f32, cy: f32, sigma: (f32, f32)) -> Self {
        let s = rng.random_range(sigma.0..sigma.1);
        let aspect = rng.random_range(0.55f32..1.0);
        let ang = rng.random_range(0.0f32..std::f32::consts::PI);
        Self {
            cx,
            cy,
            inv_sx2: 1.0 / (2.0 * s * s),
            inv_sy2: 1.0 / (2.0 * (s * aspect) * (s * aspect)),
            cos: ang.cos(),
            sin: ang.sin(),
            weight: rng.random_range(0.7f32..1.0),
        }
    }

    fn eval(&self, u: f32, v: f32) -> f32 {
        let (du, dv) = (u - self.cx, v - self.cy);
        let a = du * self.cos + dv * self.sin;
        let b = -du * self.sin + dv * self.cos;
        self.weight * (-(a * a * self.inv_sx2 + b * b * self.inv_sy2)).exp()
    }
}

/// Per-slide colour parameters (RGB, 0..255 floats).
#[derive(Clone, Copy)]
struct Palette {
    stroma_fibre: [f32; 3],
    stroma_gap: [f32; 3],
    benign_nucleus: [f32; 3],
    tumour_cytoplasm: [f32; 3],
    tumour_rim: [f32; 3],
    tumour_core: [f32; 3],
    nucleolus: [f32; 3],
}

const BASE_PALETTE: Palette = Palette {
    stroma_fibre: [206.0, 108.0, 162.0],
    stroma_gap: [238.0, 184.0, 214.0],
    benign_nucleus: [78.0, 46.0, 128.0],
    tumour_cytoplasm: [245.0, 173.0, 204.0],
    tumour_rim: [92.0, 55.0, 140.0],
    tumour_core: [168.0, 124.0, 186.0],
    nucleolus: [96.0, 44.0, 124.0],
};

/// The procedural model of one slide.
pub(crate) struct SlideModel {
    seed: u64,
    size_px: u32,
    tumour: bool,
    tissue: Field,
    tissue_threshold: f32,
    tumour_field: Field,
    tumour_threshold: f32,
    palette: Palette,
    /// (cos, sin) of the two fibre directions.
    fibre_dirs: [(f32, f32); 2],
}

impl SlideModel {
    /// Builds the model of one slide from its own seed.
    pub(crate) fn new(seed: u64, size_px: u32, tumour: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Tissue: a few smooth anisotropic blobs plus low-frequency noise.
        let n_blobs = rng.random_range(3..=5);
        let blobs: Vec<Blob> = (0..n_blobs)
            .map(|_| {
                let cx = rng.random_range(0.22f32..0.78);
                let cy = rng.random_range(0.22f32..0.78);
                Blob::random(&mut rng, cx, cy, (0.12, 0.22))
            })
            .collect();
        let nseed = rng.random::<u64>();
        let tissue = Field::new(|u, v| {
            let b: f32 = blobs.iter().map(|bl| bl.eval(u, v)).sum();
            b + 0.45 * (fbm(nseed, u * 5.0, v * 5.0, 4) - 0.5)
        });
        let target_tissue_fraction = rng.random_range(0.42f64..0.58);
        let tissue_threshold = quantile(tissue.cell_values(), 1.0 - target_tissue_fraction);

        // Tumour: 1-3 blobs centred on tissue cells, thresholded to 25-50 % of the tissue.
        let tissue_cells: Vec<(f32, f32)> = {
            let vals = tissue.cell_values();
            (0..GRID * GRID)
                .filter(|&k| vals[k] >= tissue_threshold)
                .map(|k| {
                    (
                        ((k % GRID) as f32 + 0.5) / GRID as f32,
                        ((k / GRID) as f32 + 0.5) / GRID as f32,
                    )
                })
                .collect()
        };
        let n_tblobs = rng.random_range(1..=3);
        let tblobs: Vec<Blob> = (0..n_tblobs)
            .map(|_| {
                let (cx, cy) = if tissue_cells.is_empty() {
                    (0.5, 0.5)
                } else {
                    tissue_cells[rng.random_range(0..tissue_cells.len())]
                };
                Blob::random(&mut rng, cx, cy, (0.07, 0.14))
            })
            .collect();
        let tseed = rng.random::<u64>();
        let tumour_field = Field::new(|u, v| {
            let b: f32 = tblobs.iter().map(|bl| bl.eval(u, v)).sum();
            b + 0.35 * (fbm(tseed, u * 9.0, v * 9.0, 3) - 0.5)
        });
        let target_tumour = rng.random_range(0.25f64..0.5);
        let tumour_threshold = {
            let tv = tissue.cell_values();
            let uv = tumour_field.cell_values();
            let inside: Vec<f32> = (0..tv.len())
                .filter(|&k| tv[k] >= tissue_threshold)
                .map(|k| uv[k])
                .collect();
            quantile(inside, 1.0 - target_tumour)
        };

        // Slight per-slide stain variation, identical for both textures of the slide.
        let stain: [f32; 3] = [
            rng.random_range(0.97f32..1.03),
            rng.random_range(0.95f32..1.05),
            rng.random_range(0.97f32..1.03),
        ];
        let scale = |c: [f32; 3]| [c[0] * stain[0], c[1] * stain[1], c[2] * stain[2]];
        let p = BASE_PALETTE;
        let palette = Palette {
            stroma_fibre: scale(p.stroma_fibre),
            stroma_gap: scale(p.stroma_gap),
            benign_nucleus: scale(p.benign_nucleus),
            tumour_cytoplasm: scale(p.tumour_cytoplasm),
            tumour_rim: scale(p.tumour_rim),
            tumour_core: scale(p.tumour_core),
            nucleolus: scale(p.nucleolus),
        };
        let a0 = rng.random_range(0.0f32..std::f32::consts::PI);
        let fibre_angles = [a0, a0 + rng.random_range(0.7f32..1.4)];
        Self {
            seed: rng.random::<u64>(),
            size_px,
            tumour,
            tissue,
            tissue_threshold,
            tumour_field,
            tumour_threshold,
            palette,
            fibre_dirs: fibre_angles.map(|a| (a.cos(), a.sin())),
        }
    }

    /// GT label of a level-0 pixel: [`LABEL_BACKGROUND`], [`LABEL_BENIGN`] or [`LABEL_TUMOUR`].
    #[inline]
    pub(crate) fn label(&self, x: u32, y: u32) -> u8 {
        let g = GRID as f32 / self.size_px as f32;
        let gx = (x as f32 + 0.5) * g;
        let gy = (y as f32 + 0.5) * g;
        if self.tissue.at(gx, gy) < self.tissue_threshold {
            return LABEL_BACKGROUND;
        }
        if self.tumour && self.tumour_field.at(gx, gy) >= self.tumour_threshold {
            LABEL_TUMOUR
        } else {
            LABEL_BENIGN
        }
    }

    /// RGB of a level-0 pixel with the given label.
    #[inline]
    pub(crate) fn render(&self, x: u32, y: u32, label: u8) -> [u8; 3] {
        let c = match label {
            LABEL_BENIGN => self.benign(x, y),
            LABEL_TUMOUR => self.tumour(x, y),
            _ => {
                let n = unit(hash2(self.seed ^ 0xB6, x as i64, y as i64));
                let v = 240.0 + ffloor(n * 7.0) - 3.0;
                [v, v, v]
            }
        };
        let j = hash2(self.seed ^ 0x51, x as i64, y as i64);
        let jit = |k: u32| ((j >> (k * 8)) & 0xFF) as f32 / 255.0 * 8.0 - 4.0;
        // `as u8` saturates; +0.5 then truncation rounds half up for the non-negative values.
        [
            (c[0] + jit(0) + 0.5).max(0.0) as u8,
            (c[1] + jit(1) + 0.5).max(0.0) as u8,
            (c[2] + jit(2) + 0.5).max(0.0) as u8,
        ]
    }

    /// Benign: wavy oriented pink stroma fibres with sparse small round dark nuclei.
    fn benign(&self, x: u32, y: u32) -> [f32; 3] {
        let p = &self.palette;
        let (xf, yf) = (x as f32, y as f32);
        // Two fibre families, blended by a smooth field; phase warped for waviness.
        let blend = smooth(vnoise(self.seed ^ 0x11, xf / 420.0, yf / 420.0));
        let warp = 26.0 * (vnoise(self.seed ^ 0x12, xf / 260.0, yf / 260.0) - 0.5);
        let k = std::f32::consts::TAU / 9.0;
        let [(c0, s0), (c1, s1)] = self.fibre_dirs;
        let s0 = (k * (xf * c0 + yf * s0) + warp).sin();
        let s1 = (k * (xf * c1 + yf * s1) + warp).sin();
        let s = s0 + (s1 - s0) * blend;
        let fibre = (0.5 + 0.5 * s).powi(2);
        // Fibre breaks / density modulation.
        let dens = 0.55 + 0.45 * vnoise(self.seed ^ 0x13, xf / 35.0, yf / 35.0);
        let w = fibre * dens * 1.25;
        let mut c = lerp3(p.stroma_gap, p.stroma_fibre, w.min(1.0));

        // Sparse small round nuclei, one candidate per 26 px cell, fully inside the cell.
        const CELL: f32 = 26.0;
        let (cx, cy) = (ffloor(xf / CELL), ffloor(yf / CELL));
        let h = hash2(self.seed ^ 0x21, cx as i64, cy as i64);
        if unit(h) < 0.2 {
            let r = 2.5 + 1.5 * unit(mix64(h ^ 1));
            let m = r + 1.0;
            let ox = cx * CELL + m + (CELL - 2.0 * m) * unit(mix64(h ^ 2));
            let oy = cy * CELL + m + (CELL - 2.0 * m) * unit(mix64(h ^ 3));
            let d = ((xf + 0.5 - ox).powi(2) + (yf + 0.5 - oy).powi(2)).sqrt();
            let t = (r - d + 0.5).clamp(0.0, 1.0);
            if t > 0.0 {
                c = lerp3(c, p.benign_nucleus, t);
            }
        }
        c
    }

    /// Tumour: dense, clustered, large pleomorphic vesicular nuclei on pale cytoplasm.
    fn tumour(&self, x: u32, y: u32) -> [f32; 3] {
        let p = &self.palette;
        let (xf, yf) = (x as f32, y as f32);
        let mottle = vnoise(self.seed ^ 0x31, xf / 7.0, yf / 7.0) - 0.5;
        let mut c = p.tumour_cytoplasm;
        c = [
            c[0] + 10.0 * mottle,
            c[1] + 12.0 * mottle,
            c[2] + 8.0 * mottle,
        ];

        const CELL: f32 = 20.0;
        let (cx, cy) = (ffloor(xf / CELL), ffloor(yf / CELL));
        let h = hash2(self.seed ^ 0x41, cx as i64, cy as i64);
        let cluster = vnoise(self.seed ^ 0x42, cx * CELL / 90.0, cy * CELL / 90.0);
        if unit(h) < 0.45 + 0.5 * cluster {
            let a = 4.5 + 2.9 * unit(mix64(h ^ 1));
            let b = a * (0.6 + 0.4 * unit(mix64(h ^ 2)));
            let ang = std::f32::consts::PI * unit(mix64(h ^ 3));
            let ph1 = std::f32::consts::TAU * unit(mix64(h ^ 4));
            let ph2 = std::f32::consts::TAU * unit(mix64(h ^ 5));
            let amp1 = 0.18 * unit(mix64(h ^ 6));
            let amp2 = 0.10 * unit(mix64(h ^ 7));
            let rmax = a * (1.0 + amp1 + amp2) + 0.5;
            let ox = cx * CELL + rmax + (CELL - 2.0 * rmax).max(0.0) * unit(mix64(h ^ 8));
            let oy = cy * CELL + rmax + (CELL - 2.0 * rmax).max(0.0) * unit(mix64(h ^ 9));
            let (dx, dy) = (xf + 0.5 - ox, yf + 0.5 - oy);
            if dx * dx + dy * dy <= rmax * rmax {
                let (sa, ca) = ang.sin_cos();
                let u = dx * ca + dy * sa;
                let v = -dx * sa + dy * ca;
                let phi = v.atan2(u);
                let rf = 1.0 + amp1 * (3.0 * phi + ph1).sin() + amp2 * (5.0 * phi + ph2).sin();
                let rho = ((u / a).powi(2) + (v / b).powi(2)).sqrt() / rf;
                if rho < 1.0 {
                    let chrom = vnoise(self.seed ^ 0x43, xf / 2.0, yf / 2.0);
                    let core = lerp3(p.tumour_core, p.tumour_rim, 0.35 * chrom);
                    let rim_t = smooth(((rho - 0.62) / 0.25).clamp(0.0, 1.0));
                    c = lerp3(core, p.tumour_rim, rim_t);
                    // Prominent nucleolus, slightly off centre.
                    let (nu, nv) = (u / a - 0.15, v / b);
                    if nu * nu + nv * nv < 0.04 {
                        c = p.nucleolus;
                    }
                }
            }
        }
        c
    }
}

#[inline]
fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_rgb(m: &SlideModel, label: u8, n: u32) -> [f64; 3] {
        let mut s = [0f64; 3];
        for y in 0..n {
            for x in 0..n {
                let c = m.render(x, y, label);
                for k in 0..3 {
                    s[k] += c[k] as f64;
                }
            }
        }
        s.map(|v| v / (n * n) as f64)
    }

    /// The two textures must not be separable by mean colour alone.
    #[test]
    fn benign_and_tumour_means_are_close() {
        for seed in [1u64, 7, 42] {
            let m = SlideModel::new(seed, 2048, true);
            let b = mean_rgb(&m, LABEL_BENIGN, 768);
            let t = mean_rgb(&m, LABEL_TUMOUR, 768);
            eprintln!("seed {seed}: benign {b:?} tumour {t:?}");
            for k in 0..3 {
                assert!(
                    (b[k] - t[k]).abs() < 10.0,
                    "channel {k}: benign {b:?} tumour {t:?}"
                );
            }
            // ...but both are clearly tissue, not background.
            assert!(b.iter().sum::<f64>() / 3.0 < 215.0, "{b:?}");
            assert!(t.iter().sum::<f64>() / 3.0 < 215.0, "{t:?}");
        }
    }

    /// The textures do differ: tumour has many more dark pixels (nuclei) than benign.
    #[test]
    fn textures_differ_in_dark_pixel_fraction() {
        let m = SlideModel::new(3, 2048, true);
        let dark = |label: u8| {
            let mut n = 0usize;
            for y in 0..512 {
                for x in 0..512 {
                    let c = m.render(x, y, label);
                    if (c[0] as u32 + c[1] as u32 + c[2] as u32) < 330 {
                        n += 1;
                    }
                }
            }
            n as f64 / (512.0 * 512.0)
        };
        let (b, t) = (dark(LABEL_BENIGN), dark(LABEL_TUMOUR));
        eprintln!("dark fraction benign {b} tumour {t}");
        assert!(t > 3.0 * b, "benign {b} tumour {t}");
    }

    #[test]
    fn background_is_near_240() {
        let m = SlideModel::new(5, 1024, false);
        for y in 0..50 {
            for x in 0..50 {
                let c = m.render(x, y, LABEL_BACKGROUND);
                for v in c {
                    assert!((233..=247).contains(&v), "{c:?}");
                }
            }
        }
    }

    #[test]
    fn benign_slides_have_no_tumour_labels() {
        let m = SlideModel::new(9, 512, false);
        for y in (0..512).step_by(3) {
            for x in (0..512).step_by(3) {
                assert_ne!(m.label(x, y), LABEL_TUMOUR);
            }
        }
    }

    #[test]
    fn vnoise_in_unit_range_and_continuous() {
        for i in 0..1000 {
            let x = i as f32 * 0.37;
            let v = vnoise(3, x, x * 0.5);
            assert!((0.0..=1.0).contains(&v));
            let w = vnoise(3, x + 1e-3, x * 0.5);
            assert!((v - w).abs() < 0.01);
        }
    }
}

//! One-axis bicubic resampling weights, as torch's `F.interpolate(mode="bicubic",
//! align_corners=False)` computes them on the CPU (`aten/src/ATen/native/cpu/UpSampleKernel.cpp`),
//! with and without `antialias`. The 2-D resize of a position-embedding grid is separable, so it is
//! two small matrix products with these weights (see `Vit::pos_embed_for`).

/// How the position embedding is resized to another token grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosEmbedInterp {
    /// `antialias=True` (PIL-style cubic filter, a = -0.5, widened by the scale when shrinking,
    /// weights normalised): what timm's `resample_abs_pos_embed` uses, hence timm's
    /// `dynamic_img_size` models (UNI, H-optimus-0, Virchow).
    #[default]
    BicubicAntialias,
    /// `antialias=False` (cubic convolution, a = -0.75, border samples replicated): what
    /// transformers' `ViTModel.interpolate_pos_encoding` uses.
    Bicubic,
}

/// Keys' cubic convolution kernel for |x| < 1.
fn cubic1(x: f64, a: f64) -> f64 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Keys' cubic convolution kernel for 1 <= |x| < 2.
fn cubic2(x: f64, a: f64) -> f64 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

fn cubic_filter(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        cubic1(x, a)
    } else if x < 2.0 {
        cubic2(x, a)
    } else {
        0.0
    }
}

/// Row-major `[output, input]` weights: `out[i] = Σ_j w[i·input + j] · in[j]`.
///
/// Equal sizes give the identity (torch copies the axis unchanged). Sizes must be positive.
pub fn bicubic_weights(input: usize, output: usize, mode: PosEmbedInterp) -> Vec<f64> {
    let mut w = vec![0.0f64; output * input];
    if input == 0 || output == 0 {
        return w;
    }
    if input == output {
        for i in 0..input {
            w[i * input + i] = 1.0;
        }
        return w;
    }
    // area_pixel_compute_scale (align_corners=False, no explicit scale factor)
    let scale = input as f64 / output as f64;
    let last = input as i64 - 1;
    match mode {
        PosEmbedInterp::Bicubic => {
            const A: f64 = -0.75;
            for i in 0..output {
                // area_pixel_compute_source_index(cubic=true): not clamped at 0
                let real = scale * (i as f64 + 0.5) - 0.5;
                // guard_index_and_lambda
                let idx = (real.floor() as i64).min(last);
                let t = (real - idx as f64).clamp(0.0, 1.0);
                let coeffs = [
                    cubic2(t + 1.0, A),
                    cubic1(t, A),
                    cubic1(1.0 - t, A),
                    cubic2(2.0 - t, A),
                ];
                for (k, c) in coeffs.into_iter().enumerate() {
                    let src = (idx - 1 + k as i64).clamp(0, last) as usize;
                    w[i * input + src] += c;
                }
            }
        }
        PosEmbedInterp::BicubicAntialias => {
            const A: f64 = -0.5;
            let interp_size = 4.0;
            let (support, invscale) = if scale >= 1.0 {
                (interp_size * 0.5 * scale, 1.0 / scale)
            } else {
                (interp_size * 0.5, 1.0)
            };
            let max_interp = support.ceil() as i64 * 2 + 1;
            for i in 0..output {
                let center = scale * (i as f64 + 0.5);
                // C++ casts truncate toward zero
                let xmin = ((center - support + 0.5) as i64).max(0);
                let xsize = ((center + support + 0.5) as i64).min(input as i64) - xmin;
                let xsize = xsize.clamp(0, max_interp);
                let ws: Vec<f64> = (0..xsize)
                    .map(|j| cubic_filter((j as f64 + xmin as f64 - center + 0.5) * invscale, A))
                    .collect();
                let total: f64 = ws.iter().sum();
                for (j, v) in ws.into_iter().enumerate() {
                    let v = if total != 0.0 { v / total } else { v };
                    w[i * input + xmin as usize + j] += v;
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [PosEmbedInterp; 2] = [PosEmbedInterp::Bicubic, PosEmbedInterp::BicubicAntialias];

    #[test]
    fn rows_sum_to_one_and_identity_for_equal_sizes() {
        for mode in MODES {
            for (i, o) in [
                (14, 10),
                (14, 16),
                (14, 12),
                (16, 14),
                (7, 23),
                (3, 1),
                (1, 4),
            ] {
                let w = bicubic_weights(i, o, mode);
                for r in 0..o {
                    let s: f64 = w[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "{mode:?} {i}->{o} row {r}: {s}");
                }
            }
            let w = bicubic_weights(5, 5, mode);
            for r in 0..5 {
                for c in 0..5 {
                    assert_eq!(w[r * 5 + c], if r == c { 1.0 } else { 0.0 });
                }
            }
        }
    }

    #[test]
    fn mirror_symmetric() {
        // resampling a reversed signal gives the reversed result
        for mode in MODES {
            for (i, o) in [(14, 10), (14, 16), (9, 20)] {
                let w = bicubic_weights(i, o, mode);
                for r in 0..o {
                    for c in 0..i {
                        let a = w[r * i + c];
                        let b = w[(o - 1 - r) * i + (i - 1 - c)];
                        assert!((a - b).abs() < 1e-12, "{mode:?} {i}->{o} ({r},{c})");
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_values_follow_keys_definition() {
        // Keys (1981): W(0) = 1, W(±1) = W(±2) = 0, W(0.5) = (a + 2)/8 - (a + 3)/4 + 1
        for a in [-0.5, -0.75] {
            assert_eq!(cubic_filter(0.0, a), 1.0);
            assert!(cubic_filter(1.0, a).abs() < 1e-15);
            assert!(cubic_filter(2.0, a).abs() < 1e-15);
            let half = (a + 2.0) / 8.0 - (a + 3.0) / 4.0 + 1.0;
            assert!((cubic_filter(0.5, a) - half).abs() < 1e-15);
            // W(1.5) = a·(1.5³ - 5·1.5² + 8·1.5 - 4) = 0.125·a
            assert!((cubic_filter(1.5, a) - 0.125 * a).abs() < 1e-15);
        }
        // exact 2x upsampling without antialias: output 1 of 2->4 sits at source 0.25,
        // taps (-1, 0, 1, 2) clamped to (0, 0, 1, 1)
        let w = bicubic_weights(2, 4, PosEmbedInterp::Bicubic);
        let a = -0.75;
        let t: f64 = 0.25;
        let w0 = cubic2(1.0 + t, a) + cubic1(t, a);
        let w1 = cubic1(1.0 - t, a) + cubic2(2.0 - t, a);
        assert!((w[2] - w0).abs() < 1e-15 && (w[3] - w1).abs() < 1e-15);
    }
}

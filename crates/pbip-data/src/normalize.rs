//! Network-input normalisation (u8 HWC RGB → f32 CHW).
//!
//! Three preprocessing variants occur upstream (`../shared/spec/pbip-spec.md` §4, §6, §9.3);
//! [`Preprocess`] names each:
//!
//! | variant | formula per channel | where upstream uses it |
//! |---|---|---|
//! | [`Preprocess::MeanStd`] | `(v/255 − mean) / std` | classifier (ClassNet) input in training, validation, test (Albumentations `Normalize`, `max_pixel_value = 255`) |
//! | [`Preprocess::MeanStdGlobalMinMax`] | `MeanStd`, then `(t − min(t)) / (max(t) − min(t))` over the whole 3×H×W tensor | prototype exemplars fed to the MedCLIP/Swin encoder (`excract_medclip_proces.py`) |
//! | [`Preprocess::Unit`] | `v / 255` | the fork's feature cache of all training coordinates |
//!
//! Channel order: slides are read as RGB. Upstream read PNGs with OpenCV, i.e. **BGR**, and
//! applied `mean[0]`/`std[0]` to the blue channel; [`ChannelOrder::Bgr`] reproduces this (tensor
//! plane 0 = blue, normalised with `mean[0]`, `std[0]`) for upstream checkpoints.
//! [`ChannelOrder::Rgb`] (default) puts red in plane 0 with `mean[0]`, `std[0]`.
//!
//! Arithmetic follows Albumentations exactly in f32: `(v − 255·mean) · (1 / (255·std))`.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// PBIP histology channel means (after /255), in the order the upstream tensor has them.
pub const HISTO_MEAN: [f64; 3] = [0.66791496, 0.47791372, 0.70623304];
/// PBIP histology channel standard deviations (after /255).
pub const HISTO_STD: [f64; 3] = [0.1736589, 0.22564577, 0.19820057];

/// Channel order of the network-input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Plane 0 = red, 1 = green, 2 = blue (as read from the slide).
    #[default]
    Rgb,
    /// Plane 0 = blue, 1 = green, 2 = red (upstream, OpenCV-loaded PNGs).
    Bgr,
}

/// Mean/std normalisation: plane `c` holds `(v/255 − mean[c]) / std[c]`, where `v` is the
/// channel that `channel_order` puts in plane `c`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-plane mean (after /255).
    pub mean: [f64; 3],
    /// Per-plane standard deviation (after /255), > 0.
    pub std: [f64; 3],
    /// Which colour goes into which plane.
    pub channel_order: ChannelOrder,
}

impl Default for Normalization {
    /// The PBIP histology statistics in RGB order.
    fn default() -> Self {
        Normalization {
            mean: HISTO_MEAN,
            std: HISTO_STD,
            channel_order: ChannelOrder::Rgb,
        }
    }
}

impl Normalization {
    /// Upstream PBIP: histology statistics applied to BGR planes.
    pub fn upstream_bgr() -> Self {
        Normalization {
            channel_order: ChannelOrder::Bgr,
            ..Self::default()
        }
    }

    /// From config-style slices (`mean`, `std` of length 3).
    pub fn from_slices(mean: &[f64], std: &[f64], channel_order: ChannelOrder) -> Result<Self> {
        let arr = |v: &[f64], what: &str| -> Result<[f64; 3]> {
            <[f64; 3]>::try_from(v).map_err(|_| {
                DataError::InvalidOption(format!(
                    "normalize.{what} needs 3 values, got {}",
                    v.len()
                ))
            })
        };
        let n = Normalization {
            mean: arr(mean, "mean")?,
            std: arr(std, "std")?,
            channel_order,
        };
        n.validate()?;
        Ok(n)
    }

    /// Checks that every value is finite and every std > 0.
    pub fn validate(&self) -> Result<()> {
        for c in 0..3 {
            if !self.mean[c].is_finite() || !self.std[c].is_finite() || self.std[c] <= 0.0 {
                return Err(DataError::InvalidOption(format!(
                    "normalize: mean {:?} / std {:?} must be finite with std > 0",
                    self.mean, self.std
                )));
            }
        }
        Ok(())
    }

    /// Index of the RGB channel that goes into tensor plane `plane`.
    pub fn source_channel(&self, plane: usize) -> usize {
        match self.channel_order {
            ChannelOrder::Rgb => plane,
            ChannelOrder::Bgr => 2 - plane,
        }
    }

    /// Lookup table `lut[plane][v]` = normalised value of byte `v` in `plane`.
    pub fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            // Albumentations: mean * max_pixel_value, reciprocal(std * max_pixel_value), in f32.
            let m = (self.mean[c] as f32) * 255.0;
            let inv = 1.0 / ((self.std[c] as f32) * 255.0);
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - m) * inv;
            }
        }
        lut
    }

    /// Normalises an RGB8 HWC image (`w*h*3` bytes) into CHW planes `out` (`3*w*h` floats).
    pub fn apply(&self, rgb: &[u8], out: &mut [f32]) -> Result<()> {
        apply_lut(&self.lut(), |p| self.source_channel(p), rgb, out)
    }

    /// Inverse of [`Normalization::apply`] for one value of `plane` (for tests and previews).
    pub fn denormalize(&self, plane: usize, value: f32) -> f32 {
        (value as f64 * self.std[plane] * 255.0 + self.mean[plane] * 255.0) as f32
    }
}

fn apply_lut(
    lut: &[[f32; 256]; 3],
    src_channel: impl Fn(usize) -> usize,
    rgb: &[u8],
    out: &mut [f32],
) -> Result<()> {
    if !rgb.len().is_multiple_of(3) || out.len() != rgb.len() {
        return Err(DataError::InvalidOption(format!(
            "normalise: {} input bytes do not match {} output floats (need 3 per pixel)",
            rgb.len(),
            out.len()
        )));
    }
    let n = rgb.len() / 3;
    for (plane, dst) in out.chunks_exact_mut(n.max(1)).enumerate().take(3) {
        let sc = src_channel(plane);
        let table = &lut[plane];
        for (d, px) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
            *d = table[px[sc] as usize];
        }
    }
    Ok(())
}

/// The upstream preprocessing variants (see the module docs for which is used where).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Preprocess {
    /// `(v/255 − mean)/std`: classifier input.
    MeanStd(Normalization),
    /// Mean/std, then one global min-max over the whole tensor to [0, 1]: prototype exemplars.
    MeanStdGlobalMinMax(Normalization),
    /// `v/255` in the given channel order: the fork's feature cache.
    Unit(ChannelOrder),
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess::MeanStd(Normalization::default())
    }
}

impl Preprocess {
    /// Applies the variant to one RGB8 HWC image into CHW `out` (`3*w*h` floats).
    pub fn apply(&self, rgb: &[u8], out: &mut [f32]) -> Result<()> {
        match self {
            Preprocess::MeanStd(n) => n.apply(rgb, out),
            Preprocess::MeanStdGlobalMinMax(n) => {
                n.apply(rgb, out)?;
                global_minmax(out);
                Ok(())
            }
            Preprocess::Unit(order) => {
                let mut lut = [[0f32; 256]; 3];
                for table in lut.iter_mut() {
                    for (v, o) in table.iter_mut().enumerate() {
                        *o = v as f32 / 255.0;
                    }
                }
                let order = *order;
                apply_lut(
                    &lut,
                    |p| match order {
                        ChannelOrder::Rgb => p,
                        ChannelOrder::Bgr => 2 - p,
                    },
                    rgb,
                    out,
                )
            }
        }
    }
}

/// In-place global min-max to [0, 1]: `(t − min) / (max − min)`; a constant tensor becomes 0
/// (upstream divides by zero there; we avoid the NaN).
pub fn global_minmax(t: &mut [f32]) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in t.iter() {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let range = hi - lo;
    if range.is_nan() || range <= 0.0 {
        t.fill(0.0);
        return;
    }
    for v in t.iter_mut() {
        *v = (*v - lo) / range;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_values_match_hand_computation() {
        // One pixel (200, 100, 50).
        let n = Normalization::default();
        let mut out = [0f32; 3];
        n.apply(&[200, 100, 50], &mut out).unwrap();
        // (200/255 - 0.66791496) / 0.1736589 = (0.78431373 - 0.66791496) / 0.1736589 = 0.67027
        let want = [
            (200.0 / 255.0 - 0.66791496) / 0.1736589,
            (100.0 / 255.0 - 0.47791372) / 0.22564577,
            (50.0 / 255.0 - 0.70623304) / 0.19820057,
        ];
        for c in 0..3 {
            assert!(
                (out[c] as f64 - want[c]).abs() < 1e-5,
                "{out:?} vs {want:?}"
            );
        }
        assert!((out[0] - 0.670_27).abs() < 1e-4);
    }

    #[test]
    fn bgr_puts_blue_first_with_mean0() {
        let n = Normalization::upstream_bgr();
        let mut out = [0f32; 3];
        n.apply(&[200, 100, 50], &mut out).unwrap();
        // plane 0 = blue (50) with mean[0], std[0].
        let want0 = (50.0 / 255.0 - 0.66791496) / 0.1736589;
        let want2 = (200.0 / 255.0 - 0.70623304) / 0.19820057;
        assert!((out[0] as f64 - want0).abs() < 1e-5);
        assert!((out[2] as f64 - want2).abs() < 1e-5);
    }

    #[test]
    fn planes_are_chw() {
        // 2 pixels: (0,0,0), (255,255,255), unit variant.
        let mut out = [0f32; 6];
        Preprocess::Unit(ChannelOrder::Rgb)
            .apply(&[10, 20, 30, 255, 255, 255], &mut out)
            .unwrap();
        assert_eq!(
            out,
            [10.0 / 255.0, 1.0, 20.0 / 255.0, 1.0, 30.0 / 255.0, 1.0]
        );
    }

    #[test]
    fn global_minmax_spans_unit_interval() {
        let mut out = [0f32; 6];
        Preprocess::MeanStdGlobalMinMax(Normalization::default())
            .apply(&[10, 20, 30, 200, 220, 240], &mut out)
            .unwrap();
        let lo = out.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((lo, hi), (0.0, 1.0));
        let mut c = [7f32; 4];
        global_minmax(&mut c);
        assert_eq!(c, [0.0; 4]);
    }

    #[test]
    fn bad_options_rejected() {
        assert!(
            Normalization::from_slices(&[0.5, 0.5], &[1.0, 1.0, 1.0], ChannelOrder::Rgb).is_err()
        );
        assert!(
            Normalization::from_slices(&[0.5; 3], &[1.0, 0.0, 1.0], ChannelOrder::Rgb).is_err()
        );
        assert!(
            Normalization::default()
                .apply(&[1, 2], &mut [0.0; 2])
                .is_err()
        );
    }
}

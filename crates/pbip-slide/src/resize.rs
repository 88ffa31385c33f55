//! RGB8 resizing used for patches.
//!
//! Filter (documented contract):
//! - identical size: plain copy;
//! - downscale: exact **area average** (each output pixel is the coverage-weighted mean of the
//!   input pixels under its footprint, like OpenCV `INTER_AREA`), rounded to nearest;
//! - upscale: **bilinear** with half-pixel centres (`src = (dst + 0.5) * in / out - 0.5`, clamped
//!   at the border, like OpenCV `INTER_LINEAR` / PyTorch `align_corners=False`), rounded to nearest.
//!
//! The filter is chosen per axis, so non-square resizes work too.

/// Per-output-pixel list of (input index, weight); weights sum to 1.
fn axis_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f32)>> {
    let mut out = Vec::with_capacity(n_out);
    if n_out <= n_in {
        let s = n_in as f64 / n_out as f64;
        for i in 0..n_out {
            let a = i as f64 * s;
            let b = ((i + 1) as f64 * s).min(n_in as f64);
            let mut w = Vec::new();
            let mut j = a.floor() as usize;
            while (j as f64) < b && j < n_in {
                let lo = a.max(j as f64);
                let hi = b.min((j + 1) as f64);
                if hi > lo {
                    w.push((j, ((hi - lo) / s) as f32));
                }
                j += 1;
            }
            out.push(w);
        }
    } else {
        let s = n_in as f64 / n_out as f64;
        for i in 0..n_out {
            let src = ((i as f64 + 0.5) * s - 0.5).max(0.0);
            let j0 = (src.floor() as usize).min(n_in - 1);
            let j1 = (j0 + 1).min(n_in - 1);
            let f = (src - j0 as f64) as f32;
            if j1 == j0 || f <= 0.0 {
                out.push(vec![(j0, 1.0)]);
            } else {
                out.push(vec![(j0, 1.0 - f), (j1, f)]);
            }
        }
    }
    out
}

/// Resize an RGB8 image `src` (`sw` x `sh`) into `dst` (`dw` x `dh`, `dw*dh*3` bytes).
///
/// Zero-sized inputs or outputs leave `dst` untouched.
pub fn resize_rgb(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    if sw == 0
        || sh == 0
        || dw == 0
        || dh == 0
        || src.len() < sw * sh * 3
        || dst.len() < dw * dh * 3
    {
        return;
    }
    if sw == dw && sh == dh {
        dst[..dw * dh * 3].copy_from_slice(&src[..sw * sh * 3]);
        return;
    }
    let wx = axis_weights(sw, dw);
    let wy = axis_weights(sh, dh);
    // Horizontal pass: sh rows of dw pixels, f32.
    let mut tmp = vec![0f32; sh * dw * 3];
    for y in 0..sh {
        let srow = &src[y * sw * 3..(y + 1) * sw * 3];
        let trow = &mut tmp[y * dw * 3..(y + 1) * dw * 3];
        for (x, ws) in wx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for &(j, w) in ws {
                acc[0] += w * f32::from(srow[j * 3]);
                acc[1] += w * f32::from(srow[j * 3 + 1]);
                acc[2] += w * f32::from(srow[j * 3 + 2]);
            }
            trow[x * 3..x * 3 + 3].copy_from_slice(&acc);
        }
    }
    // Vertical pass.
    for (y, ws) in wy.iter().enumerate() {
        let drow = &mut dst[y * dw * 3..(y + 1) * dw * 3];
        for (k, d) in drow.iter_mut().enumerate() {
            let mut acc = 0f32;
            for &(j, w) in ws {
                acc += w * tmp[j * dw * 3 + k];
            }
            *d = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscale_by_two_is_mean_of_2x2_blocks() {
        // 4x2 gray image: values 0, 10, 20, 30 / 40, 50, 60, 70 -> 2x1: mean(0,10,40,50)=25, mean(20,30,60,70)=45
        let vals = [0u8, 10, 20, 30, 40, 50, 60, 70];
        let src: Vec<u8> = vals.iter().flat_map(|&v| [v, v, v]).collect();
        let mut dst = vec![0u8; 2 * 3];
        resize_rgb(&src, 4, 2, &mut dst, 2, 1);
        assert_eq!(dst, vec![25, 25, 25, 45, 45, 45]);
    }

    #[test]
    fn downscale_non_integer_factor_weights_partial_pixels() {
        // 3 -> 2: out0 = (1*a + 0.5*b)/1.5, out1 = (0.5*b + 1*c)/1.5
        let src: Vec<u8> = [0u8, 90, 180].iter().flat_map(|&v| [v, v, v]).collect();
        let mut dst = vec![0u8; 6];
        resize_rgb(&src, 3, 1, &mut dst, 2, 1);
        assert_eq!(dst[0], 30); // 45/1.5
        assert_eq!(dst[3], 150); // (45+180)/1.5
    }

    #[test]
    fn upscale_bilinear_half_pixel() {
        // 2 -> 4: src positions -0.25(clamp 0), 0.25, 0.75, 1.25(clamp to last)
        let src: Vec<u8> = [0u8, 100].iter().flat_map(|&v| [v, v, v]).collect();
        let mut dst = vec![0u8; 12];
        resize_rgb(&src, 2, 1, &mut dst, 4, 1);
        assert_eq!([dst[0], dst[3], dst[6], dst[9]], [0, 25, 75, 100]);
    }

    #[test]
    fn same_size_copies() {
        let src: Vec<u8> = (0..27).collect();
        let mut dst = vec![0u8; 27];
        resize_rgb(&src, 3, 3, &mut dst, 3, 3);
        assert_eq!(src, dst);
    }
}

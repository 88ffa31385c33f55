//! Rough timing of the tiling steps on a synthetic 2000 x 1500 segmentation image
//! (about a 128k x 96k px slide at downsample 64). `cargo run --release -p pbip-tiling --example bench_tiling`
use std::time::Instant;

use pbip_tiling::{SlideLevels, TilingParams, TissueMethod, tile_from_seg_image, tissue_mask};

fn main() {
    let (w, h) = (2000u32, 1500u32);
    let mut rgb = vec![238u8; (w * h * 3) as usize];
    let mut state = 12345u64;
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (f64::from(x) - 1000.0, f64::from(y) - 750.0);
            let blob = (dx / 700.0).powi(2) + (dy / 500.0).powi(2) < 1.0
                || ((f64::from(x) - 300.0) / 120.0).powi(2)
                    + ((f64::from(y) - 200.0) / 90.0).powi(2)
                    < 1.0;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = ((state >> 33) % 21) as i32 - 10;
            let i = ((y * w + x) * 3) as usize;
            let base = if blob {
                [200, 110, 170]
            } else {
                [238, 238, 238]
            };
            for c in 0..3 {
                rgb[i + c] = (base[c] + n).clamp(0, 255) as u8;
            }
        }
    }
    let slide = SlideLevels {
        dimensions_px: [u64::from(w) * 64, u64::from(h) * 64],
        level_downsamples: vec![1.0, 4.0, 16.0, 64.0],
        base_spacing_um: 0.25,
    };
    for (name, method) in [
        ("hsv", TissueMethod::default()),
        (
            "otsu",
            TissueMethod::Otsu {
                mthresh: 7,
                close: 4,
            },
        ),
    ] {
        let t0 = Instant::now();
        let m = tissue_mask(w, h, &rgb, &method).expect("mask");
        let t_mask = t0.elapsed().as_secs_f64();
        let params = TilingParams {
            requested_tile_size_px: 224,
            method,
            ..TilingParams::default()
        };
        let t1 = Instant::now();
        let t = tile_from_seg_image(&slide, w, h, &rgb, &params).expect("tiling");
        let t_all = t1.elapsed().as_secs_f64();
        println!(
            "{name}: mask {t_mask:.3} s ({} tissue px), full tiling {t_all:.3} s, {} components, {} tiles",
            m.iter().filter(|&&v| v != 0).count(),
            t.components.areas_px.len(),
            t.coordinates.len()
        );
    }
}

//! Shared by the benchmark slide writers (`view_bench_slide` here, and pbip-pipeline's
//! `bench_slide`, which includes this file by path): hashing, smooth noise, and writing a
//! synthetic pyramidal BigTIFF (0.5 µm/px, 256-px JPEG tiles) from a pixel function, streaming
//! (memory: one band per level).

use std::path::PathBuf;

pub fn hash(x: u64, y: u64, s: u64) -> u64 {
    let mut h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ s;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 29)
}

/// Smooth value noise in [0, 1) on a grid of `cell` px.
pub fn noise(x: u64, y: u64, cell: u64, seed: u64) -> f64 {
    let (cx, cy) = (x / cell, y / cell);
    let (fx, fy) = (
        (x % cell) as f64 / cell as f64,
        (y % cell) as f64 / cell as f64,
    );
    let v = |a: u64, b: u64| (hash(a, b, seed) % 10_000) as f64 / 10_000.0;
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let top = v(cx, cy) * (1.0 - sx) + v(cx + 1, cy) * sx;
    let bot = v(cx, cy + 1) * (1.0 - sx) + v(cx + 1, cy + 1) * sx;
    top * (1.0 - sy) + bot * sy
}

/// `main` of a slide writer invoked as `NAME OUT.tif SIDE_PX`: writes the `SIDE_PX`² slide whose
/// pixel (x, y) is `pixel(x, y)` and prints its levels and size.
pub fn write_slide_main(
    name: &str,
    pixel: impl Fn(u64, u64) -> [u8; 3],
) -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err(format!("usage: {name} OUT.tif SIDE_PX").into());
    }
    let out = PathBuf::from(&args[1]);
    let side: u32 = args[2].parse()?;
    let mut opts = pbip_pyramid::PyramidOptions::rgb_jpeg(Some(0.5));
    opts.big_tiff = true;
    let summary = pbip_pyramid::write_pyramid(&out, side, side, &opts, |r, buf| {
        for j in 0..r.height_px as usize {
            for i in 0..r.width_px as usize {
                let p = pixel(u64::from(r.x_px) + i as u64, u64::from(r.y_px) + j as u64);
                let o = 3 * (j * r.width_px as usize + i);
                buf[o..o + 3].copy_from_slice(&p);
            }
        }
        Ok(())
    })?;
    println!(
        "{}: {} levels, {} bytes",
        out.display(),
        summary.levels.len(),
        summary.file_size_bytes
    );
    Ok(())
}

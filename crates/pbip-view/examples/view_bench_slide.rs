//! Writes a large synthetic pyramidal slide for the tile benchmark (`bench/tiles.sh`), streaming
//! (memory: one band per level): light background, pink "tissue" regions with darker nuclei and
//! per-pixel grain (so JPEG tiles cost what real tissue costs), 0.5 µm/px, 256-px JPEG tiles
//! (quality 85), BigTIFF.
//!
//! `cargo run --release -p pbip-view --example view_bench_slide -- OUT.tif SIDE_PX`

use std::path::PathBuf;

fn hash(x: u64, y: u64, s: u64) -> u64 {
    let mut h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ s;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 29)
}

/// Smooth value noise in [0, 1) on a grid of `cell` px.
fn noise(x: u64, y: u64, cell: u64, seed: u64) -> f64 {
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

fn pixel(x: u64, y: u64) -> [u8; 3] {
    let grain = (hash(x, y, 9) % 25) as i32 - 12;
    let g = |v: i32| (v + grain).clamp(0, 255) as u8;
    let tissue = noise(x, y, 4096, 1) * 0.7 + noise(x, y, 512, 2) * 0.3;
    if tissue < 0.5 {
        return [g(238), g(236), g(240)];
    }
    let shade = (noise(x, y, 64, 5) * 40.0) as i32;
    if hash(x / 7, y / 7, 4).is_multiple_of(23) {
        return [g(80 + shade / 2), g(45), g(125)];
    }
    [g(205 + shade / 2), g(130 + shade), g(180 + shade / 2)]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: view_bench_slide OUT.tif SIDE_PX".into());
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

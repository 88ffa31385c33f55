//! Writes two small sample pyramids for external validation (see `testdata/validate_tifffile.py`).
//!
//! `cargo run -p pbip-pyramid --example write_samples -- OUT_DIR`
//!
//! * `sample_rgb.tif`: 1000x700 RGB, JPEG q90, 256 px tiles, mpp 0.5, levels 1000/500/250;
//!   pixel (x, y) = (128 + 100 sin(x/37), 128 + 100 cos(y/29), 128 + 90 sin((x+y)/53)) truncated.
//! * `sample_mask.tiff`: 1500x1100 u8 label mask, BigTIFF, deflate, 512 px tiles, mpp 0.25,
//!   nearest levels 1500/750/375; value (x, y) = (x/7 + y/5) % 3 + (250 if x > 900 else 0).

use pbip_pyramid::{PyramidOptions, TileCompression, write_pyramid_from_image};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&out)?;

    let (w, h) = (1000u32, 700u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            rgb.push((128.0 + 100.0 * (fx / 37.0).sin()) as u8);
            rgb.push((128.0 + 100.0 * (fy / 29.0).cos()) as u8);
            rgb.push((128.0 + 90.0 * ((fx + fy) / 53.0).sin()) as u8);
        }
    }
    let mut o = PyramidOptions::rgb_jpeg(Some(0.5));
    o.compression = TileCompression::Jpeg { quality: 90 };
    o.min_level_size_px = 250;
    let s = write_pyramid_from_image(&out.join("sample_rgb.tif"), w, h, &rgb, &o)?;
    println!("{:?}", s.levels);

    let (w, h) = (1500u32, 1100u32);
    let mut mask = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            mask.push(((x / 7 + y / 5) % 3) as u8 + if x > 900 { 250 } else { 0 });
        }
    }
    let mut o = PyramidOptions::label_mask(Some(0.25));
    o.min_level_size_px = 300;
    let s = write_pyramid_from_image(&out.join("sample_mask.tiff"), w, h, &mask, &o)?;
    println!("{:?}", s.levels);
    Ok(())
}

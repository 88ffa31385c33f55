//! Writes a large synthetic pyramidal slide for the tile benchmark (`bench/tiles.sh`), streaming
//! (memory: one band per level): light background, pink "tissue" regions with darker nuclei and
//! per-pixel grain (so JPEG tiles cost what real tissue costs), 0.5 µm/px, 256-px JPEG tiles
//! (quality 85), BigTIFF.
//!
//! `cargo run --release -p pbip-view --example view_bench_slide -- OUT.tif SIDE_PX`

mod common {
    pub mod synth_slide;
}

use common::synth_slide::{hash, noise, write_slide_main};

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
    write_slide_main("view_bench_slide", pixel)
}

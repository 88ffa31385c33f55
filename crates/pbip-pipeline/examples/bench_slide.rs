//! Writes a large synthetic pyramidal slide for the stage-5 benchmark (`bench/infer.sh`), streaming
//! (memory: one band of 256 rows per level): white background, pink "tissue" blobs covering about
//! 40 % of the slide, darker, nuclei-dense "tumour" patches inside some of them. 0.5 µm/px.
//!
//! `cargo run --release -p pbip-pipeline --example bench_slide -- OUT.tif SIDE_PX`

// The slide writer and its noise are shared with pbip-view's `view_bench_slide`.
#[path = "../../pbip-view/examples/common/synth_slide.rs"]
mod synth_slide;

use synth_slide::{hash, noise, write_slide_main};

fn pixel(x: u64, y: u64) -> [u8; 3] {
    let tissue = noise(x, y, 4096, 1) * 0.7 + noise(x, y, 1024, 2) * 0.3;
    if tissue < 0.55 {
        return [240, 240, 240];
    }
    let tumour = noise(x, y, 2048, 3) > 0.62;
    let nucleus_density = if tumour { 8 } else { 40 };
    if hash(x / 6, y / 6, 4).is_multiple_of(nucleus_density) {
        return [70, 40, 120];
    }
    if tumour {
        [190, 110, 170]
    } else {
        [225, 150, 190]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    write_slide_main("bench_slide", pixel)
}

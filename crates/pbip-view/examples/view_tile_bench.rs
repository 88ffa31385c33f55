//! In-process timing of `pbip view`'s slide tiles, without HTTP: N random tiles of the highest
//! DeepZoom level read (`render::slide_tile`) and encoded (`render::encode_jpeg`) on one thread,
//! the time of each step per tile. For profiling the tile path (`perf record` on this binary);
//! the benchmark of record is `bench/tiles.sh`.
//!
//! `cargo run --release -p pbip-view --example view_tile_bench -- SLIDE [N] [QUALITY] [CACHE_MIB]`
//!
//! With `SWEEP=1` in the environment, the tiles are instead those of `bench/deepzoom_py.py`'s
//! panning sweep at the highest level (1920 x 1080 views, row by row; N is ignored).

use std::time::{Duration, Instant};

use pbip_slide::{OpenOptions, Slide};
use pbip_view::dz::DeepZoom;
use pbip_view::render;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        return Err("usage: view_tile_bench SLIDE [N] [QUALITY] [CACHE_MIB]".into());
    }
    let n: usize = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let quality: u8 = args.get(3).map_or(Ok(75), |s| s.parse())?;
    let cache_mib: usize = args.get(4).map_or(Ok(64), |s| s.parse())?;
    let opts = OpenOptions {
        cache_bytes: cache_mib << 20,
        ..OpenOptions::default()
    };
    let slide = Slide::open(&args[1], &opts)?;
    let (w, h) = slide.dimensions();
    let dz = DeepZoom::new(w, h, 254, 1)?;
    let top = dz.level_count() - 1;
    let (cols, rows) = dz.tile_grid(top).ok_or("no top level")?;
    // xorshift64*: a fixed list of tiles, the same on every run.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |m: u64| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D) % m
    };
    let tiles: Vec<(u64, u64)> = if std::env::var("SWEEP").is_ok_and(|v| v == "1") {
        let (lw, lh) = dz.level_dimensions(top).ok_or("no top level")?;
        let (vw, vh, t) = (1920u64, 1080u64, 254u64);
        let mut v = Vec::new();
        for y in (0..lh).step_by((vh * 6) as usize) {
            for x in (0..lw).step_by(vw as usize) {
                for r in y / t..rows.min((y + vh) / t + 1) {
                    for c in x / t..cols.min((x + vw) / t + 1) {
                        v.push((c, r));
                    }
                }
            }
        }
        v
    } else {
        (0..n).map(|_| (next(cols), next(rows))).collect()
    };
    let n = tiles.len();
    let (mut read, mut encode) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0usize;
    // FNV-1a of every tile's JPEG and pixels: equal between two builds = the same tiles.
    let hashing = std::env::var("HASH").is_ok_and(|v| v == "1");
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut fnv = |data: &[u8]| {
        for &b in data {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for &(c, r) in &tiles {
        let t0 = Instant::now();
        let img = render::slide_tile(&slide, &dz, top, c, r)?;
        let t1 = Instant::now();
        let jpeg = render::encode_jpeg(&img, quality)?;
        encode += t1.elapsed();
        read += t1 - t0;
        bytes += jpeg.len();
        if hashing {
            fnv(&img.data);
            fnv(&jpeg);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    println!(
        "{n} tiles of level {top}: read {:.3} ms/tile, encode {:.3} ms/tile, total {:.3} ms/tile, \
         {:.1} KiB/tile, {} slide tiles decoded, hash {hash:016x}",
        ms(read),
        ms(encode),
        ms(read + encode),
        bytes as f64 / n as f64 / 1024.0,
        slide.tiles_decoded()
    );
    Ok(())
}

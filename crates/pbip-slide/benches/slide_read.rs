//! Patch-read throughput benchmark: random and grid-order 224-px patches at level 0, 1 and 2
//! threads, for the pure-Rust backend (with and without the tile cache) and the OpenSlide
//! backend (libopenslide loaded at run time).
//!
//! `cargo bench -p pbip-slide --bench slide_read -- [--slide PATH] [--n N] [--coords-out DIR]
//!  [--backends rust,rust-32,rust-nocache,openslide] [--texture-from SLIDE] [--label TEXT]`
//!
//! Without `--slide` (or if the file does not exist) it writes an 8192 x 8192 JPEG (YCbCr 4:2:0,
//! quality 90, JPEGTables, 256-px tiles, 4 levels) pyramid there (default
//! `$CARGO_TARGET_DIR/bench-slide.tif`). Its pixels are level 0 of `--texture-from` mirror-tiled
//! (real tissue; `bench/slide_read.sh` passes CMU-1-Small-Region.svs), else a synthetic pattern
//! with per-pixel noise (a worst case for JPEG decoding).
//! It writes the coordinates it used to `<coords-out>/random.txt` and `grid.txt` (one "x y" per
//! line) so that `bench/slide_read.sh` times openslide-python on exactly the same reads.
//!
//! Output: one markdown table row per (backend, order, threads) with patches per second (wall
//! clock) and CPU milliseconds per patch (user + system time of this process, which is the
//! better comparison on a machine shared with other work).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use pbip_slide::{Backend, OpenOptions, PatchGeometry, Slide, openslide_version, read_patches};

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`), if readable.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, i.e. 11 and 12 after ")".
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Tissue-like texture: smooth pattern plus hash noise, so JPEG tiles carry realistic entropy.
fn textured(w: u32, h: u32) -> Vec<u8> {
    let mut v = common::pattern(w, h, 5);
    let mut s: u64 = 0x1234_5678;
    for b in v.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s % 41) as i16 - 20;
        *b = (i16::from(*b) + n).clamp(0, 255) as u8;
    }
    v
}

/// Level 0 of `src` mirror-tiled to `w` x `h` (real tissue texture at any size).
fn mirrored(src: &std::path::Path, w: u32, h: u32) -> Vec<u8> {
    let s = Slide::open(
        src,
        &OpenOptions {
            backend: Backend::Rust,
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("texture source: {e}"));
    let (sw, sh) = s.dimensions();
    let img = s
        .read_region(0, 0, 0, sw as u32, sh as u32)
        .unwrap_or_else(|e| panic!("texture source: {e}"));
    let (sw, sh) = (sw as usize, sh as usize);
    let fold = |v: usize, n: usize| {
        let m = v % (2 * n);
        if m < n { m } else { 2 * n - 1 - m }
    };
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        let sy = fold(y, sh);
        for x in 0..w as usize {
            let i = (sy * sw + fold(x, sw)) * 3;
            out.extend_from_slice(&img.data[i..i + 3]);
        }
    }
    out
}

fn generate(path: &std::path::Path, texture: Option<&std::path::Path>) {
    let (w, h) = (8192u32, 8192u32);
    eprintln!("generating {w}x{h} JPEG pyramid at {} ...", path.display());
    let t = Instant::now();
    let mut rgb = match texture {
        Some(src) => mirrored(src, w, h),
        None => textured(w, h),
    };
    let (mut cw, mut ch) = (w, h);
    let mut imgs = Vec::new();
    for l in 0..4 {
        let mut img = common::Img::new(
            cw,
            ch,
            rgb.clone(),
            Some(256),
            common::Comp::JpegYcbcrTables,
        );
        if l > 0 {
            img.subfile_type = 1;
        }
        img.res_per_cm = Some(40000.0);
        imgs.push(img);
        let (r, nw, nh) = common::half(&rgb, cw, ch);
        rgb = r;
        cw = nw;
        ch = nh;
    }
    let bytes = common::tiff_bytes(&imgs, false, false);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("bench slide dir");
    }
    std::fs::write(path, bytes).expect("write bench slide");
    eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() {
    let n: usize = arg("--n").and_then(|s| s.parse().ok()).unwrap_or(2000);
    let slide_path = arg("--slide").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
            .join("bench-slide.tif")
    });
    let backends_arg =
        arg("--backends").unwrap_or_else(|| "rust,rust-32,rust-nocache,openslide".into());
    let label = arg("--label");
    if !slide_path.exists() {
        generate(
            &slide_path,
            arg("--texture-from").map(PathBuf::from).as_deref(),
        );
    }
    let probe = Slide::open(
        &slide_path,
        &OpenOptions {
            backend: Backend::Rust,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("open bench slide: {e}"));
    let (w, h) = probe.dimensions();
    let p = 224u64;
    assert!(w > p && h > p, "bench slide must be larger than one patch");
    // Random coordinates (xorshift, fixed seed), patch fully inside the slide.
    let mut s: u64 = 42;
    let random: Vec<(i64, i64)> = (0..n)
        .map(|_| {
            let x = (xorshift(&mut s) % (w - p)) as i64;
            let y = (xorshift(&mut s) % (h - p)) as i64;
            (x, y)
        })
        .collect();
    // Grid, x-major then y (hs2p order), stride 224.
    let mut grid = Vec::with_capacity(n);
    'outer: for x in (0..(w - p) as i64).step_by(p as usize) {
        for y in (0..(h - p) as i64).step_by(p as usize) {
            grid.push((x, y));
            if grid.len() == n {
                break 'outer;
            }
        }
    }
    if let Some(dir) = arg("--coords-out") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("coords dir");
        for (name, c) in [("random.txt", &random), ("grid.txt", &grid)] {
            let s: String = c.iter().map(|(x, y)| format!("{x} {y}\n")).collect();
            std::fs::write(dir.join(name), s).expect("write coords");
        }
    }
    let geom = PatchGeometry::level0(224);
    eprintln!(
        "slide: {} ({w}x{h}, {}), {} random / {} grid patches of 224 px at level 0",
        slide_path.display(),
        probe.vendor(),
        random.len(),
        grid.len()
    );
    drop(probe);
    let os_name = match openslide_version() {
        Some((v, file)) => {
            let origin = if file.contains("openslide_bin") {
                "openslide-bin wheel"
            } else {
                "system"
            };
            let name = PathBuf::from(&file)
                .file_name()
                .map_or(file.clone(), |n| n.to_string_lossy().into_owned());
            format!("pbip openslide backend ({name} {v}, {origin})")
        }
        None => "pbip openslide backend (not installed)".into(),
    };
    let mut backends: Vec<(String, Backend, usize)> = Vec::new();
    for b in backends_arg.split(',') {
        match b.trim() {
            "rust" => backends.push((
                "pbip rust (cache 256 MiB, default)".into(),
                Backend::Rust,
                256 << 20,
            )),
            "rust-32" => backends.push((
                "pbip rust (cache 32 MiB, as OpenSlide's)".into(),
                Backend::Rust,
                32 << 20,
            )),
            "rust-nocache" => backends.push(("pbip rust (no cache)".into(), Backend::Rust, 0)),
            "openslide" if openslide_version().is_some() => {
                backends.push((os_name.clone(), Backend::OpenSlide, 0))
            }
            "openslide" => eprintln!("skipping openslide: libopenslide cannot be loaded"),
            other => panic!("unknown backend {other:?} in --backends"),
        }
    }
    for (name, backend, cache) in backends {
        let name = match &label {
            Some(l) => format!("{name} {l}"),
            None => name,
        };
        for (order, coords) in [("random", &random), ("grid", &grid)] {
            for threads in [1usize, 2] {
                let slide = Slide::open(
                    &slide_path,
                    &OpenOptions {
                        backend,
                        cache_bytes: cache,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("open: {e}"));
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                // Touch the output buffer first: page faults of a fresh allocation are not reads.
                let mut out = vec![1u8; coords.len() * 224 * 224 * 3];
                let c0 = cpu_seconds();
                let t = Instant::now();
                pool.install(|| read_patches(&slide, coords, &geom, &mut out))
                    .unwrap_or_else(|e| panic!("read: {e}"));
                let secs = t.elapsed().as_secs_f64();
                let cpu = match (c0, cpu_seconds()) {
                    (Some(a), Some(b)) => format!("{:.2}", (b - a) * 1000.0 / coords.len() as f64),
                    _ => "-".into(),
                };
                println!(
                    "| {name} | {order} | {threads} | {} | {:.0} | {cpu} |",
                    coords.len(),
                    coords.len() as f64 / secs
                );
            }
        }
    }
}

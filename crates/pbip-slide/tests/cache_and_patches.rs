//! Tile cache (decode counting), patch geometry and parallel batch extraction.

mod common;

use common::{Comp, pyramid, write_tiff};
use pbip_slide::{Backend, OpenOptions, Origin, PatchGeometry, Slide, read_patches, resize_rgb};

fn open(p: &std::path::Path, cache_bytes: usize) -> Slide {
    Slide::open(
        p,
        &OpenOptions {
            backend: Backend::Rust,
            cache_bytes,
            ..Default::default()
        },
    )
    .expect("open")
}

/// A 1024 x 768 single-level slide of 128-px tiles (8 x 6 tiles), compressed with `comp`.
fn grid_slide(dir: &std::path::Path, name: &str, comp: Comp) -> std::path::PathBuf {
    write_tiff(
        dir,
        name,
        &pyramid(1024, 768, 1, Some(128), comp),
        false,
        false,
    )
}

#[test]
fn grid_order_reads_decode_each_tile_once() {
    let dir = tempfile::tempdir().unwrap();
    // 1024 x 768, 128 px tiles -> 8 x 6 = 48 tiles at level 0.
    let p = grid_slide(dir.path(), "g.tif", Comp::JpegYcbcrTables);
    let s = open(&p, 64 << 20);
    let mut n_patches = 0;
    for x in (0..1024 - 100).step_by(100) {
        for y in (0..768 - 100).step_by(100) {
            s.read_region(x, y, 0, 100, 100).unwrap();
            n_patches += 1;
        }
    }
    assert!(n_patches > 40);
    assert_eq!(
        s.tiles_decoded(),
        48,
        "every tile must be decoded exactly once"
    );
    assert_eq!(s.cached_tiles(), 48);
    // Reading again decodes nothing.
    s.read_region(0, 0, 0, 1024, 768).unwrap();
    assert_eq!(s.tiles_decoded(), 48);

    // Without a cache the same grid decodes tiles repeatedly.
    let s0 = open(&p, 0);
    for x in (0..1024 - 100).step_by(100) {
        for y in (0..768 - 100).step_by(100) {
            s0.read_region(x, y, 0, 100, 100).unwrap();
        }
    }
    assert!(s0.tiles_decoded() > 48, "{}", s0.tiles_decoded());
    assert_eq!(s0.cached_tiles(), 0);
}

#[test]
fn sparse_reads_decode_only_their_windows_and_later_reads_get_whole_tiles() {
    let dir = tempfile::tempdir().unwrap();
    // 1024 x 768, 128 px tiles, JPEG with tables (what slide scanners write).
    let p = grid_slide(dir.path(), "s.tif", Comp::JpegYcbcrTables);
    let fresh = open(&p, 0);
    let s = open(&p, 64 << 20);
    // Reads (x, y, w, h) at level 0 through the cache: the pixels must equal those of the slide
    // without cache; the number of tiles decoded so far.
    let read = |x: i64, y: i64, w: u32, h: u32| {
        let got = s.read_region(x, y, 0, w, h).unwrap();
        let want = fresh.read_region(x, y, 0, w, h).unwrap();
        assert!(got == want, "read {x},{y} {w}x{h} differs");
        s.tiles_decoded()
    };
    // A read of a cold cache across 2 x 2 tiles, needing at most half of each (28 x 98, 72 x 98,
    // 28 x 20 and 72 x 20 px): each is decoded in that window only.
    assert_eq!(read(100, 30, 100, 118), 4);
    assert_eq!(s.cached_tiles(), 4);
    // Reads inside those windows are answered by the cache.
    assert_eq!(read(110, 40, 60, 100), 4);
    // A read needing other pixels of the lower two decodes them again, whole. Having found them
    // cached (partly), it is not sparse: the tiles below, of which it needs 44 rows, are decoded
    // whole too, and a read of all the pixels of those four decodes nothing.
    assert_eq!(read(100, 200, 100, 100), 8);
    assert_eq!(read(64, 128, 192, 256), 8);
    // A cold read needing more than half of a tile decodes it whole: a read of other pixels of
    // it later finds them cached.
    let s2 = open(&p, 64 << 20);
    s2.read_region(260, 260, 0, 100, 100).unwrap();
    assert_eq!(s2.tiles_decoded(), 1);
    s2.read_region(256, 256, 0, 128, 128).unwrap();
    assert_eq!(s2.tiles_decoded(), 1);
    read(0, 0, 400, 300);
}

#[test]
fn small_cache_budget_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let p = grid_slide(dir.path(), "e.tif", Comp::Deflate);
    // 128*128*3 = 48 KiB per tile; a 16-shard cache of 16 tiles holds at most ~16.
    let s = open(&p, 16 * 128 * 128 * 3);
    s.read_region(0, 0, 0, 1024, 768).unwrap();
    assert!(s.cached_tiles() <= 16, "{}", s.cached_tiles());
    assert_eq!(s.tiles_decoded(), 48);
    // Results are identical with and without cache.
    let a = s.read_region(37, 41, 0, 500, 300).unwrap();
    let b = open(&p, 0).read_region(37, 41, 0, 500, 300).unwrap();
    assert_eq!(a, b);
}

#[test]
fn patch_geometry_reads_level_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = pyramid(1024, 768, 3, Some(128), Comp::Deflate);
    let p = write_tiff(dir.path(), "p.tif", &imgs, false, false);
    let s = open(&p, 32 << 20);
    // Same size: identical to read_region.
    let g = PatchGeometry::level0(224);
    assert_eq!(
        s.read_patch(100, 50, &g).unwrap(),
        s.read_region(100, 50, 0, 224, 224).unwrap()
    );
    // Level 1, read 112, output 224 (upscale, bilinear).
    let g = PatchGeometry {
        level: 1,
        read_size_px: 112,
        out_size_px: 224,
        origin: Origin::TopLeft,
    };
    let got = s.read_patch(200, 100, &g).unwrap();
    let raw = s.read_region(200, 100, 1, 112, 112).unwrap();
    let mut want = vec![0u8; 224 * 224 * 3];
    resize_rgb(&raw.data, 112, 112, &mut want, 224, 224);
    assert_eq!(got.data, want);
    // Downscale 448 -> 224 at level 0 equals the 2x2 box mean of the source.
    let g = PatchGeometry {
        level: 0,
        read_size_px: 448,
        out_size_px: 224,
        origin: Origin::TopLeft,
    };
    let got = s.read_patch(10, 20, &g).unwrap();
    let src = &imgs[0].rgb;
    let px = |x: usize, y: usize, c: usize| u32::from(src[(y * 1024 + x) * 3 + c]);
    for &(ox, oy) in &[(0usize, 0usize), (17, 91), (223, 223)] {
        for c in 0..3 {
            let (x, y) = (10 + 2 * ox, 20 + 2 * oy);
            let m = (px(x, y, c) + px(x + 1, y, c) + px(x, y + 1, c) + px(x + 1, y + 1, c)) as f64
                / 4.0;
            let g = f64::from(got.data[(oy * 224 + ox) * 3 + c]);
            assert!(
                (g - m).abs() <= 0.5 + 1e-9,
                "area average at {ox},{oy}: {g} vs {m}"
            );
        }
    }
    // Centre origin shifts by half the level-0 footprint (112 * ds(1) = 224 -> 112).
    let gc = PatchGeometry {
        level: 1,
        read_size_px: 112,
        out_size_px: 112,
        origin: Origin::Centre,
    };
    let gt = PatchGeometry {
        origin: Origin::TopLeft,
        ..gc
    };
    let ds = s.level_downsample(1).unwrap();
    let half = (112.0 * ds / 2.0).floor() as i64;
    assert_eq!(
        s.read_patch(500, 400, &gc).unwrap(),
        s.read_patch(500 - half, 400 - half, &gt).unwrap()
    );
}

#[test]
fn read_patches_parallel_matches_sequential_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tiff(
        dir.path(),
        "b.tif",
        &pyramid(1024, 768, 2, Some(128), Comp::JpegYcbcrTables),
        false,
        false,
    );
    let s = open(&p, 32 << 20);
    let coords: Vec<(i64, i64)> = (0..37)
        .map(|i| ((i * 97 % 900) as i64 - 20, (i * 53 % 700) as i64))
        .collect();
    let g = PatchGeometry {
        level: 1,
        read_size_px: 64,
        out_size_px: 48,
        origin: Origin::TopLeft,
    };
    let per = 48 * 48 * 3;
    let mut out = vec![0u8; coords.len() * per];
    read_patches(&s, &coords, &g, &mut out).unwrap();
    for (i, &(x, y)) in coords.iter().enumerate() {
        let one = s.read_patch(x, y, &g).unwrap();
        assert_eq!(&out[i * per..(i + 1) * per], &one.data[..], "patch {i}");
    }
    // Wrong buffer size is an error, not a panic.
    let mut small = vec![0u8; 10];
    assert!(read_patches(&s, &coords, &g, &mut small).is_err());
    // Bad level in geometry is an error.
    let bad = PatchGeometry { level: 9, ..g };
    assert!(read_patches(&s, &coords, &bad, &mut out).is_err());
}

#[test]
fn slide_is_shared_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tiff(
        dir.path(),
        "t.tif",
        &pyramid(512, 512, 1, Some(64), Comp::Lzw),
        false,
        false,
    );
    let s = std::sync::Arc::new(open(&p, 8 << 20));
    let want = s.read_region(0, 0, 0, 512, 512).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                for i in 0..20 {
                    let x = ((t * 131 + i * 17) % 400) as i64;
                    v.push((x, s.read_region(x, x, 0, 100, 100).unwrap()));
                }
                v
            })
        })
        .collect();
    for h in hs {
        for (x, img) in h.join().unwrap() {
            let c = common::crop(&want.data, 512, x as u32, x as u32, 100, 100);
            assert_eq!(img.data, c);
        }
    }
}

#[test]
fn uncached_partial_jpeg_decodes_equal_cached_whole_tiles() {
    // Without a cache only the needed rows of a JPEG tile are decoded; the pixels must be
    // exactly those of whole-tile decodes (cached reads), at every level and alignment.
    let dir = tempfile::tempdir().unwrap();
    for (name, comp) in [
        ("y.tif", Comp::JpegYcbcrTables),
        ("i.tif", Comp::JpegYcbcr),
        ("r.tif", Comp::JpegRgbTables),
    ] {
        let p = write_tiff(
            dir.path(),
            name,
            &pyramid(1000, 700, 2, Some(128), comp),
            false,
            false,
        );
        let cached = open(&p, 64 << 20);
        let uncached = open(&p, 0);
        let mut s: u64 = 7;
        for i in 0..60 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = (s >> 33) as i64 % 1100 - 50;
            let y = (s >> 13) as i64 % 800 - 50;
            let level = i % 2;
            let (w, h) = (1 + (s >> 40) as u32 % 300, 1 + (s >> 50) as u32 % 300);
            let a = cached.read_region(x, y, level, w, h).unwrap();
            let b = uncached.read_region(x, y, level, w, h).unwrap();
            assert!(
                a == b,
                "{name}: region {x},{y} L{level} {w}x{h} differs between cached and partial decodes"
            );
        }
    }
}

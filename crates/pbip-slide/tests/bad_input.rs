//! Bad files and bad arguments give errors naming the file, never panics.

mod common;

use common::{Comp, pyramid, tiff_bytes};
use pbip_slide::{Backend, OpenOptions, Slide, SlideError};
use proptest::prelude::*;

fn rust() -> OpenOptions {
    OpenOptions {
        backend: Backend::Rust,
        ..Default::default()
    }
}

fn open_bytes(
    bytes: &[u8],
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    pbip_slide::Result<Slide>,
) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let r = Slide::open(&p, &rust());
    (dir, p, r)
}

fn err_of(r: pbip_slide::Result<Slide>) -> SlideError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn small_tiff(comp: Comp) -> Vec<u8> {
    tiff_bytes(&pyramid(96, 64, 2, Some(32), comp), false, false)
}

#[test]
fn empty_file() {
    let (_d, p, r) = open_bytes(b"", "empty.svs");
    let e = err_of(r).to_string();
    assert!(
        e.contains("empty file") && e.contains(&p.display().to_string()),
        "{e}"
    );
    let e = Slide::open(&p, &OpenOptions::default())
        .expect_err("auto also fails")
        .to_string();
    assert!(e.contains("empty file"), "{e}");
}

#[test]
fn missing_file() {
    let e = Slide::open("/nonexistent/slide.svs", &OpenOptions::default())
        .expect_err("error")
        .to_string();
    assert!(e.contains("/nonexistent/slide.svs"), "{e}");
}

#[test]
fn not_an_image() {
    let (_d, p, r) = open_bytes(b"hello world, not a slide", "x.svs");
    let e = err_of(r).to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains("not a TIFF"),
        "{e}"
    );
    // Auto: both backends refuse; the error names both reasons.
    let e = Slide::open(&p, &OpenOptions::default())
        .expect_err("auto fails")
        .to_string();
    assert!(e.contains("pure Rust") && e.contains("OpenSlide"), "{e}");
}

#[test]
fn truncated_tiff() {
    let b = small_tiff(Comp::Deflate);
    for cut in [4, 8, 20, b.len() / 2, b.len() - 10] {
        let (_d, p, r) = open_bytes(&b[..cut], "trunc.tif");
        match r {
            Err(e) => assert!(e.to_string().contains(&p.display().to_string()), "{e}"),
            Ok(s) => {
                // IFDs survived but tile data is gone: reads must fail, not return blank pixels.
                let r = s.read_region(0, 0, 0, 96, 64);
                assert!(r.is_err(), "cut at {cut}: read of truncated data succeeded");
            }
        }
    }
}

#[test]
fn tile_offset_past_eof() {
    let mut b = small_tiff(Comp::None);
    // Find the first TileOffsets entry (tag 324, LONG, count 6) and point its first tile past EOF.
    let mut i = 8;
    let mut patched = false;
    while i + 12 <= b.len() {
        if b[i..i + 4] == [0x44, 1, 4, 0] && b[i + 4..i + 8] == [6, 0, 0, 0] {
            let arr = u32::from_le_bytes([b[i + 8], b[i + 9], b[i + 10], b[i + 11]]) as usize;
            b[arr..arr + 4].copy_from_slice(&0x7FFF_0000u32.to_le_bytes());
            patched = true;
            break;
        }
        i += 2;
    }
    assert!(patched);
    let (_d, p, r) = open_bytes(&b, "eof.tif");
    let s = r.expect("IFDs are intact");
    let e = s
        .read_region(0, 0, 0, 32, 32)
        .expect_err("tile past EOF must be an error")
        .to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains("past the end of the file"),
        "{e}"
    );
    // Tiles that are intact still read.
    assert!(s.read_region(64, 32, 0, 32, 32).is_ok());
}

#[test]
fn jpeg2000_compression_is_a_clear_error() {
    let mut b = small_tiff(Comp::None);
    // Rewrite every Compression (259) SHORT entry value 1 -> 33003.
    let mut i = 8;
    let mut n = 0;
    while i + 12 <= b.len() {
        if b[i..i + 4] == [3, 1, 3, 0]
            && b[i + 4..i + 8] == [1, 0, 0, 0]
            && b[i + 8..i + 10] == [1, 0]
        {
            b[i + 8..i + 10].copy_from_slice(&33003u16.to_le_bytes());
            n += 1;
        }
        i += 2;
    }
    assert!(n >= 1);
    let (_d, _p, r) = open_bytes(&b, "j2k.svs");
    let e = err_of(r).to_string();
    assert!(
        e.contains("unsupported compression") && e.contains("libopenslide0") && e.contains("33003"),
        "{e}"
    );
}

#[test]
fn absurd_dimensions_are_rejected() {
    let mut imgs = pyramid(64, 64, 1, Some(32), Comp::None);
    imgs[0].width = 64;
    let mut b = tiff_bytes(&imgs, false, false);
    // Patch ImageWidth (256, LONG) to 4e9 and the tile width to 2^20+1.
    let mut i = 8;
    while i + 12 <= b.len() {
        if b[i..i + 2] == [0, 1] && b[i + 2..i + 4] == [4, 0] {
            b[i + 8..i + 12].copy_from_slice(&4_000_000_000u32.to_le_bytes());
        }
        i += 2;
    }
    let (_d, p, r) = open_bytes(&b, "huge.tif");
    let e = err_of(r).to_string();
    assert!(e.contains(&p.display().to_string()), "{e}");
}

#[test]
fn bad_arguments() {
    let (_d, p, r) = open_bytes(&small_tiff(Comp::Deflate), "ok.tif");
    let s = r.unwrap();
    let e = s
        .read_region(0, 0, 5, 10, 10)
        .expect_err("bad level")
        .to_string();
    assert!(
        e.contains("level 5") && e.contains(&p.display().to_string()),
        "{e}"
    );
    assert!(s.level_dimensions(2).is_err());
    assert!(
        s.read_region(0, 0, 0, 100_000, 100_000).is_err(),
        "region too large must be refused"
    );
    let mut buf = vec![0u8; 5];
    assert!(s.read_region_into(0, 0, 0, 2, 2, &mut buf).is_err());
    assert!(
        s.read_region(i64::MIN, i64::MAX, 0, 4, 4).is_ok(),
        "far outside is background"
    );
    assert!(s.read_associated_image("label").is_err());
}

#[test]
fn corrupt_tile_data_is_an_error_not_black() {
    for comp in [Comp::Deflate, Comp::JpegYcbcrTables] {
        let b = small_tiff(comp);
        // Find the first tile: data starts right after the 8-byte header.
        let mut c = b.clone();
        for v in c.iter_mut().skip(8).take(24) {
            *v = 0x5A;
        }
        let (_d, _p, r) = open_bytes(&c, "corrupt.tif");
        if let Ok(s) = r {
            let res = s.read_region(0, 0, 0, 32, 32);
            assert!(
                res.is_err(),
                "{comp:?}: corrupt first tile decoded without error"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tiffs_never_panic(
        which in 0usize..3,
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let comp = [Comp::Deflate, Comp::JpegYcbcrTables, Comp::Lzw][which];
        let mut b = tiff_bytes(&pyramid(48, 40, 2, Some(16), comp), which == 1, false);
        for (idx, v) in muts {
            let i = idx.index(b.len());
            b[i] = v;
        }
        if let Some(c) = cut {
            let n = c.index(b.len());
            b.truncate(n);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.tif");
        std::fs::write(&p, &b).unwrap();
        exercise(&p)?;
    }

    /// Mutations confined to the compressed tile data of a deflate TIFF: every read either fails
    /// with an error naming the file or returns exactly the original pixels (zlib's Adler-32 is
    /// verified), never wrong pixels.
    #[test]
    fn mutated_deflate_tiles_error_or_decode_exactly(
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let b = tiff_bytes(&pyramid(96, 64, 1, Some(32), Comp::Deflate), false, false);
        let offs = common::ifd0_longs(&b, 324).expect("TileOffsets");
        let counts = common::ifd0_longs(&b, 325).expect("TileByteCounts");
        let lo = *offs.iter().min().unwrap() as usize;
        let hi = offs.iter().zip(&counts).map(|(o, c)| (o + c) as usize).max().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("orig.tif");
        std::fs::write(&p, &b).unwrap();
        let want = Slide::open(&p, &rust()).unwrap().read_region(0, 0, 0, 96, 64).unwrap();
        let mut m = b.clone();
        for (idx, v) in muts {
            m[lo + idx.index(hi - lo)] = v;
        }
        let p = dir.path().join("m.tif");
        std::fs::write(&p, &m).unwrap();
        let s = Slide::open(&p, &rust()).expect("the IFDs are intact");
        match s.read_region(0, 0, 0, 96, 64) {
            Ok(got) => prop_assert_eq!(got, want, "corrupt tile data decoded to different pixels without an error"),
            Err(e) => prop_assert!(e.to_string().contains(&p.display().to_string()), "{}", e),
        }
    }
}

/// Open a (mutated) file and read everything it claims to hold; every error must name the file.
fn exercise(p: &std::path::Path) -> Result<(), TestCaseError> {
    let name = p.display().to_string();
    let check = |e: SlideError| -> Result<(), TestCaseError> {
        prop_assert!(
            e.to_string().contains(&name),
            "error does not name the file: {}",
            e
        );
        Ok(())
    };
    match Slide::open(p, &rust()) {
        Err(e) => check(e)?,
        Ok(s) => {
            for l in 0..s.level_count() {
                let (w, h) = s.level_dimensions(l).unwrap();
                let (rw, rh) = ((w.min(300) + 6) as u32, (h.min(300) + 6) as u32);
                match s.read_region(-3, -3, l, rw, rh) {
                    Ok(img) => prop_assert_eq!(
                        (img.width, img.height, img.data.len()),
                        (rw, rh, (rw * rh * 3) as usize)
                    ),
                    Err(e) => check(e)?,
                }
            }
            for n in s.associated_image_names() {
                if let Err(e) = s.read_associated_image(&n) {
                    check(e)?;
                }
            }
            let _ = s.info().to_string();
        }
    }
    Ok(())
}

fn real_svs() -> &'static (Vec<u8>, Vec<std::ops::Range<usize>>) {
    static ORIG: std::sync::OnceLock<(Vec<u8>, Vec<std::ops::Range<usize>>)> =
        std::sync::OnceLock::new();
    ORIG.get_or_init(|| {
        let p = common::cmu1_path();
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let r = common::structure_ranges(&b)
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        (b, r)
    })
}

proptest! {
    // The real Aperio slide (1.9 MB): most mutations hit its IFDs and tag values (offsets,
    // byte counts, JPEGTables, descriptions), the rest land anywhere (tile data).
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_real_svs_never_panics(
        muts in proptest::collection::vec(
            (any::<bool>(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()),
            1..10,
        ),
        cut in proptest::option::weighted(0.1, any::<prop::sample::Index>()),
    ) {
        let (orig, ranges) = real_svs();
        let mut b = orig.clone();
        for (in_structure, which, pos, v) in muts {
            let i = if in_structure {
                let r = &ranges[which.index(ranges.len())];
                r.start + pos.index(r.len())
            } else {
                pos.index(b.len())
            };
            b[i] = v;
        }
        if let Some(c) = cut {
            let n = c.index(b.len());
            b.truncate(n);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.svs");
        std::fs::write(&p, &b).unwrap();
        exercise(&p)?;
    }
}

#[test]
fn real_svs_structure_ranges_cover_its_ifds() {
    // Guards the fuzz test above: the mutation targets must be the real slide's IFDs.
    let (b, ranges) = real_svs();
    assert!(ranges.len() >= 4 + 4, "{ranges:?}");
    let first_ifd = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    assert!(ranges.iter().any(|r| r.start == first_ifd));
}

#[test]
fn truncated_jpeg_tile_is_an_error_not_grey() {
    let b = small_tiff(Comp::JpegYcbcrTables);
    let (_, _, count, field) = common::ifd0_entry(&b, 325).expect("TileByteCounts");
    assert!(count > 1);
    let counts = common::ifd0_longs(&b, 325).unwrap();
    let mut c = b.clone();
    let at = field as usize;
    c[at..at + 4].copy_from_slice(&(counts[0] * 2 / 3).to_le_bytes());
    let (_d, p, r) = open_bytes(&c, "short_jpeg.tif");
    let s = r.expect("IFDs are intact");
    let e = s
        .read_region(0, 0, 0, 32, 32)
        .expect_err("a truncated JPEG tile must be an error")
        .to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains("JPEG"),
        "{e}"
    );
    assert!(
        s.read_region(32, 0, 0, 32, 32).is_ok(),
        "the other tiles are intact"
    );
}

#[test]
fn jpeg_tile_larger_than_the_tile_is_refused() {
    // A tile whose JPEG header claims a huge image must be refused before decoding.
    let b = small_tiff(Comp::JpegYcbcrTables);
    let offs = common::ifd0_longs(&b, 324).unwrap();
    let counts = common::ifd0_longs(&b, 325).unwrap();
    let (o, n) = (offs[0] as usize, counts[0] as usize);
    let mut c = b.clone();
    let sof = (o..o + n - 9)
        .find(|&i| c[i] == 0xFF && c[i + 1] == 0xC0)
        .expect("SOF0 in the first tile");
    // SOF0: FF C0 len(2) precision(1) height(2) width(2)
    c[sof + 5..sof + 7].copy_from_slice(&30000u16.to_be_bytes());
    c[sof + 7..sof + 9].copy_from_slice(&30000u16.to_be_bytes());
    let (_d, p, r) = open_bytes(&c, "huge_jpeg.tif");
    let e = r
        .expect("IFDs are intact")
        .read_region(0, 0, 0, 32, 32)
        .expect_err("must be refused")
        .to_string();
    assert!(e.contains(&p.display().to_string()), "{e}");
}

#[test]
fn vendor_tiff_variants_are_left_to_openslide() {
    // TIFF-based vendor formats whose geometry only OpenSlide implements: the pure-Rust backend
    // refuses them by name instead of reading them as generic TIFF.
    type Tweak = Box<dyn Fn(&mut common::Img)>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "Hamamatsu NDPI",
            Box::new(|i: &mut common::Img| i.extra_long.push((65420, 1))),
        ),
        (
            "Leica SCN",
            Box::new(|i: &mut common::Img| {
                i.description = Some(r#"<?xml version="1.0"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01"/>"#.into())
            }),
        ),
        (
            "Philips TIFF",
            Box::new(|i: &mut common::Img| i.extra_ascii.push((305, "Philips DP v1.0".into()))),
        ),
    ];
    for (vendor, tweak) in cases {
        let mut imgs = pyramid(96, 64, 2, Some(32), Comp::Deflate);
        tweak(&mut imgs[0]);
        let (_d, p, r) = open_bytes(&tiff_bytes(&imgs, false, false), "vendor.tif");
        let e = err_of(r).to_string();
        assert!(
            e.contains(vendor) && e.contains("OpenSlide") && e.contains(&p.display().to_string()),
            "{e}"
        );
        // auto: never the pure-Rust reader; OpenSlide reads the fake (as what it detects) or the
        // error gives both reasons.
        match Slide::open(&p, &OpenOptions::default()) {
            Ok(s) => assert_eq!(s.backend_name(), "openslide", "{vendor}"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("pure Rust") && e.contains(vendor) && e.contains("OpenSlide:"),
                    "{e}"
                );
            }
        }
    }
}

/// A tile without data (byte count 0) reads as the background colour, also inside the level
/// (where the other tiles cover every pixel and the buffer is not filled first) and into a
/// buffer that holds other pixels before the read.
#[test]
fn tile_without_data_is_background_inside_the_level() {
    let b = small_tiff(Comp::JpegYcbcrTables);
    let (_, _, count, field) = common::ifd0_entry(&b, 325).expect("TileByteCounts");
    assert_eq!(count, 6, "3 x 2 tiles of 32 px");
    let mut c = b.clone();
    // Tile 1: x 32..64, y 0..32.
    let at = field as usize + 4;
    c[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let (orig, holed) = (dir.path().join("orig.tif"), dir.path().join("holed.tif"));
    std::fs::write(&orig, &b).unwrap();
    std::fs::write(&holed, &c).unwrap();
    let bg = [1u8, 2, 3];
    let opts = OpenOptions {
        background_rgb: bg,
        ..rust()
    };
    let want = Slide::open(&orig, &opts).unwrap();
    let s = Slide::open(&holed, &opts).unwrap();
    // Inside the level, crossing tiles 0, 1 and 2 and both rows of tiles.
    let (x, y, w, h) = (20i64, 10i64, 60u32, 40u32);
    let mut got = vec![77u8; w as usize * h as usize * 3];
    s.read_region_into(x, y, 0, w, h, &mut got).unwrap();
    let full = want.read_region(x, y, 0, w, h).unwrap();
    for yy in 0..h as i64 {
        for xx in 0..w as i64 {
            let (lx, ly) = (x + xx, y + yy);
            let i = ((yy * i64::from(w) + xx) * 3) as usize;
            let px = &got[i..i + 3];
            if (32..64).contains(&lx) && ly < 32 {
                assert_eq!(px, bg, "({lx}, {ly}) lies in the tile without data");
            } else {
                assert_eq!(px, &full.data[i..i + 3], "({lx}, {ly}) differs");
            }
        }
    }
    // The same read into a fresh buffer.
    assert_eq!(s.read_region(x, y, 0, w, h).unwrap().data, got);
}

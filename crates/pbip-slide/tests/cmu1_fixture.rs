//! Real Aperio slide (CMU-1-Small-Region.svs, Photometric RGB JPEG with JPEGTables) against
//! regions read by openslide-python 4.0.1 (fixture produced by independent software).

use std::path::PathBuf;

mod common;

use pbip_slide::{Backend, OpenOptions, Slide};

fn shared_dir() -> PathBuf {
    common::fixtures_dir()
}

fn slide_path() -> PathBuf {
    common::cmu1_path()
}

struct Region {
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    rgba: Vec<u8>,
}

fn load_fixture() -> Vec<Region> {
    let p = shared_dir().join("CMU-1-Small-Region.openslide-regions.npz");
    let mut npz =
        npyz::npz::NpzArchive::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let coords = npz
        .by_name("coords")
        .expect("read coords")
        .expect("coords array");
    assert_eq!(coords.shape(), &[18, 4]);
    let c: Vec<i64> = coords.into_vec().expect("coords i64");
    let mut out = Vec::new();
    for i in 0..18 {
        let arr = npz
            .by_name(&format!("region_{i}"))
            .expect("read region")
            .expect("region array");
        let (x, y, w, h) = (
            c[i * 4],
            c[i * 4 + 1],
            c[i * 4 + 2] as u32,
            c[i * 4 + 3] as u32,
        );
        assert_eq!(arr.shape(), &[u64::from(h), u64::from(w), 4]);
        out.push(Region {
            x,
            y,
            w,
            h,
            rgba: arr.into_vec::<u8>().expect("u8 region"),
        });
    }
    out
}

/// (max abs diff, mean abs diff, number of compared values, background errors)
fn compare(slide: &Slide, regions: &[Region]) -> (u8, f64, usize, usize) {
    let bg = slide.background_rgb();
    let (mut max, mut sum, mut n, mut bad_bg) = (0u8, 0u64, 0usize, 0usize);
    for r in regions {
        let img = slide
            .read_region(r.x, r.y, 0, r.w, r.h)
            .expect("read_region");
        for (px, ref_px) in img.data.chunks_exact(3).zip(r.rgba.chunks_exact(4)) {
            match ref_px[3] {
                255 => {
                    for c in 0..3 {
                        let d = px[c].abs_diff(ref_px[c]);
                        max = max.max(d);
                        sum += u64::from(d);
                        n += 1;
                    }
                }
                0 if px != bg => bad_bg += 1,
                _ => {}
            }
        }
    }
    (max, sum as f64 / n.max(1) as f64, n, bad_bg)
}

#[test]
fn rust_backend_matches_openslide_fixture() {
    let regions = load_fixture();
    let opts = OpenOptions {
        backend: Backend::Rust,
        ..Default::default()
    };
    let slide = Slide::open(slide_path(), &opts).expect("open svs");
    assert_eq!(slide.backend_name(), "rust");
    assert_eq!(slide.vendor(), "aperio");
    assert_eq!(slide.level_count(), 1);
    assert_eq!(slide.level_dimensions(0).unwrap(), (2220, 2967));
    let (mx, my) = slide.mpp().expect("mpp");
    assert!(
        (mx - 0.499).abs() < 1e-9 && (my - 0.499).abs() < 1e-9,
        "{mx} {my}"
    );
    assert_eq!(
        slide
            .properties()
            .get("openslide.objective-power")
            .map(String::as_str),
        Some("20")
    );
    assert_eq!(slide.tile_size(0), Some((240, 240)));
    let mut names = slide.associated_image_names();
    names.sort();
    assert_eq!(names, vec!["label", "macro", "thumbnail"]);
    let thumb = slide.read_associated_image("thumbnail").expect("thumbnail");
    assert_eq!((thumb.width, thumb.height), (574, 768));
    let label = slide
        .read_associated_image("label")
        .expect("label (LZW, stripped)");
    assert_eq!((label.width, label.height), (387, 463));
    // With the tile cache (whole tiles) and without (JPEG tiles decoded only down to the
    // needed rows).
    for cache_bytes in [pbip_slide::DEFAULT_CACHE_BYTES, 0] {
        let opts = OpenOptions {
            backend: Backend::Rust,
            cache_bytes,
            ..Default::default()
        };
        let slide = Slide::open(slide_path(), &opts).expect("open svs");
        let (max, mean, n, bad_bg) = compare(&slide, &regions);
        eprintln!(
            "rust (cache {cache_bytes} B) vs openslide fixture: max {max}, mean {mean:.4} over {n} values"
        );
        assert!(n > 18 * 224 * 224, "compared too few pixels: {n}");
        assert!(max <= 6, "max abs diff {max} > 6");
        assert!(mean <= 0.5, "mean abs diff {mean} > 0.5");
        assert_eq!(
            bad_bg, 0,
            "pixels outside the slide must be the background colour"
        );
    }
}

#[test]
fn openslide_backend_matches_fixture_exactly() {
    if !common::require_openslide() {
        return;
    }
    let opts = OpenOptions {
        backend: Backend::OpenSlide,
        ..Default::default()
    };
    let slide = Slide::open(slide_path(), &opts).expect("open svs with OpenSlide");
    assert_eq!(slide.backend_name(), "openslide");
    assert_eq!(slide.vendor(), "aperio");
    assert_eq!(slide.level_dimensions(0).unwrap(), (2220, 2967));
    let (max, mean, n, bad_bg) = compare(&slide, &load_fixture());
    eprintln!("openslide vs fixture: max {max}, mean {mean:.4} over {n} values");
    assert_eq!(
        max, 0,
        "OpenSlide backend must match openslide-python exactly"
    );
    assert_eq!(bad_bg, 0);
    let _ = mean;
}

#[test]
fn custom_background_fills_outside() {
    let opts = OpenOptions {
        backend: Backend::Rust,
        background_rgb: [1, 2, 3],
        ..Default::default()
    };
    let slide = Slide::open(slide_path(), &opts).expect("open");
    let img = slide.read_region(-10, -10, 0, 20, 20).expect("read");
    assert_eq!(img.pixel(0, 0), Some([1, 2, 3]));
    assert_ne!(img.pixel(15, 15), Some([1, 2, 3]));
    let img = slide
        .read_region(100_000, 0, 0, 4, 4)
        .expect("read outside");
    assert!(img.data.chunks_exact(3).all(|p| p == [1, 2, 3]));
}

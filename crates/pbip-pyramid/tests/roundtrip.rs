//! Write pyramids, read them back with the `tiff` crate decoder and compare pixels and tags.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use pbip_pyramid::{
    Downsampling, EdgePadding, PixelFormat, PyramidError, PyramidOptions, Region, TileCompression,
    aperio_description, write_pyramid, write_pyramid_from_image,
};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;

struct Level {
    width: u32,
    height: u32,
    tile_w: u32,
    tile_h: u32,
    subfile: u32,
    compression: u16,
    photometric: u16,
    res_px_per_cm: Option<(f64, f64)>,
    res_unit: Option<u16>,
    description: Option<String>,
    /// Decoded samples as stored (YCbCr for JPEG tiles), row-major.
    pixels: Vec<u8>,
    channels: usize,
}

fn rational(v: tiff::decoder::ifd::Value) -> f64 {
    match v {
        tiff::decoder::ifd::Value::Rational(n, d) => n as f64 / d as f64,
        other => panic!("expected a RATIONAL, got {other:?}"),
    }
}

/// Reads every IFD, decoding every tile and pasting it into a full image.
fn read_levels(path: &Path) -> Vec<Level> {
    let mut dec = Decoder::new(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut out = Vec::new();
    loop {
        let (width, height) = dec.dimensions().unwrap();
        let (tile_w, tile_h) = dec.chunk_dimensions();
        let spp = dec.get_tag_u32(Tag::SamplesPerPixel).unwrap() as usize;
        let subfile = dec
            .find_tag_unsigned::<u32>(Tag::NewSubfileType)
            .unwrap()
            .unwrap_or(0);
        let compression = dec.get_tag_u32(Tag::Compression).unwrap() as u16;
        let photometric = dec.get_tag_u32(Tag::PhotometricInterpretation).unwrap() as u16;
        let res_px_per_cm = match (
            dec.find_tag(Tag::XResolution).unwrap(),
            dec.find_tag(Tag::YResolution).unwrap(),
        ) {
            (Some(x), Some(y)) => Some((rational(x), rational(y))),
            _ => None,
        };
        let res_unit = dec.find_tag_unsigned::<u16>(Tag::ResolutionUnit).unwrap();
        let description = dec
            .find_tag(Tag::ImageDescription)
            .unwrap()
            .map(|v| v.into_string().unwrap());
        // Tile offsets must be present and as many as tiles.
        let n_tiles = width.div_ceil(tile_w) * height.div_ceil(tile_h);
        assert_eq!(
            dec.get_tag_u64_vec(Tag::TileOffsets).unwrap().len() as u32,
            n_tiles
        );
        assert_eq!(dec.tile_count().unwrap(), n_tiles);
        let tiles_x = width.div_ceil(tile_w);
        let mut pixels = vec![0u8; width as usize * height as usize * spp];
        for i in 0..n_tiles {
            let (cw, ch) = dec.chunk_data_dimensions(i);
            let data = match dec.read_chunk(i).unwrap() {
                DecodingResult::U8(v) => v,
                _ => panic!("expected u8 samples"),
            };
            assert_eq!(data.len(), (cw * ch) as usize * spp, "tile {i} size");
            let x0 = (i % tiles_x) * tile_w;
            let y0 = (i / tiles_x) * tile_h;
            for r in 0..ch as usize {
                let dst = ((y0 as usize + r) * width as usize + x0 as usize) * spp;
                pixels[dst..dst + cw as usize * spp]
                    .copy_from_slice(&data[r * cw as usize * spp..(r + 1) * cw as usize * spp]);
            }
        }
        out.push(Level {
            width,
            height,
            tile_w,
            tile_h,
            subfile,
            compression,
            photometric,
            res_px_per_cm,
            res_unit,
            description,
            pixels,
            channels: spp,
        });
        if !dec.more_images() {
            break;
        }
        dec.next_image().unwrap();
    }
    out
}

/// Independent reference: rounded mean of 2x2 blocks, missing column/row replaced by the last.
fn ref_mean_half(img: &[u8], w: usize, h: usize, ch: usize) -> (Vec<u8>, usize, usize) {
    let (w2, h2) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = Vec::with_capacity(w2 * h2 * ch);
    for y in 0..h2 {
        for x in 0..w2 {
            for c in 0..ch {
                let mut s = 0u32;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let yy = (2 * y + dy).min(h - 1);
                    let xx = (2 * x + dx).min(w - 1);
                    s += img[(yy * w + xx) * ch + c] as u32;
                }
                out.push(((s + 2) / 4) as u8);
            }
        }
    }
    (out, w2, h2)
}

fn ref_nearest_half(img: &[u8], w: usize, h: usize) -> (Vec<u8>, usize, usize) {
    let (w2, h2) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = Vec::with_capacity(w2 * h2);
    for y in 0..h2 {
        for x in 0..w2 {
            out.push(img[2 * y * w + 2 * x]);
        }
    }
    (out, w2, h2)
}

fn test_rgb(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            // Smooth gradients plus a few sharp structures.
            let r = (x * 255 / w) as u8;
            let g = (y * 255 / h) as u8;
            let b = if (x / 40 + y / 40) % 2 == 0 { 60 } else { 200 };
            v.extend_from_slice(&[r, g, b]);
        }
    }
    v
}

fn smooth_rgb(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            v.push((128.0 + 100.0 * (fx / 37.0).sin()) as u8);
            v.push((128.0 + 100.0 * (fy / 29.0).cos()) as u8);
            v.push((128.0 + 90.0 * ((fx + fy) / 53.0).sin()) as u8);
        }
    }
    v
}

fn ycbcr_to_rgb(p: &[u8]) -> [f64; 3] {
    let (y, cb, cr) = (p[0] as f64, p[1] as f64 - 128.0, p[2] as f64 - 128.0);
    [
        (y + 1.402 * cr).clamp(0.0, 255.0),
        (y - 0.344136 * cb - 0.714136 * cr).clamp(0.0, 255.0),
        (y + 1.772 * cb).clamp(0.0, 255.0),
    ]
}

#[test]
fn rgb_deflate_roundtrip_is_exact_on_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.tif");
    let (w, h) = (701usize, 523usize);
    let img = test_rgb(w, h);
    let opts = PyramidOptions {
        compression: TileCompression::Deflate { level: 6 },
        tile_size_px: 128,
        min_level_size_px: 100,
        ..PyramidOptions::rgb_jpeg(Some(0.25))
    };
    let summary = write_pyramid_from_image(&path, w as u32, h as u32, &img, &opts).unwrap();
    let levels = read_levels(&path);
    assert_eq!(levels.len(), summary.levels.len());
    // 701 -> 351 -> 176 -> 88 (< 100 stops)
    assert_eq!(levels.len(), 3);
    let (mut cur, mut cw, mut chh) = (img.clone(), w, h);
    for (i, lv) in levels.iter().enumerate() {
        assert_eq!(
            (lv.width as usize, lv.height as usize),
            (cw, chh),
            "level {i} size"
        );
        assert_eq!((lv.tile_w, lv.tile_h), (128, 128));
        assert_eq!(lv.compression, 8);
        assert_eq!(lv.photometric, 2);
        assert_eq!(lv.channels, 3);
        assert_eq!(lv.subfile, if i == 0 { 0 } else { 1 });
        let ds = 1u32 << i;
        let (xr, yr) = lv.res_px_per_cm.unwrap();
        assert!(
            (xr - 1e4 / (0.25 * ds as f64)).abs() < 1e-6,
            "level {i} xres {xr}"
        );
        assert!((yr - xr).abs() < 1e-9);
        assert_eq!(lv.res_unit, Some(3));
        assert!(lv.pixels == cur, "level {i} pixels differ");
        let (n, nw, nh) = ref_mean_half(&cur, cw, chh, 3);
        cur = n;
        cw = nw;
        chh = nh;
    }
}

#[test]
fn rgb_jpeg_roundtrip_within_tolerance_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slide.tif");
    let (w, h) = (600usize, 400usize);
    let img = smooth_rgb(w, h);
    let mut opts = PyramidOptions::rgb_jpeg(Some(0.5));
    opts.compression = TileCompression::Jpeg { quality: 90 };
    opts.min_level_size_px = 150;
    opts.description = Some(aperio_description(600, 400, 256, 90, 20.0, 0.5));
    let summary = write_pyramid_from_image(&path, w as u32, h as u32, &img, &opts).unwrap();
    assert!(summary.file_size_bytes > 0);
    // Classic TIFF header, little endian.
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[..4], b"II*\0");
    let levels = read_levels(&path);
    assert_eq!(levels.len(), 3); // 600x400, 300x200, 150x100
    let (mut cur, mut cw, mut chh) = (img.clone(), w, h);
    for (i, lv) in levels.iter().enumerate() {
        assert_eq!((lv.width as usize, lv.height as usize), (cw, chh));
        assert_eq!((lv.tile_w, lv.tile_h), (256, 256));
        assert_eq!(lv.compression, 7);
        assert_eq!(lv.photometric, 6);
        assert_eq!(lv.subfile, if i == 0 { 0 } else { 1 });
        let (xr, _) = lv.res_px_per_cm.unwrap();
        assert!((xr - 2e4 / (1u32 << i) as f64).abs() < 1e-6);
        if i == 0 {
            let d = lv.description.as_deref().unwrap();
            assert!(d.starts_with("Aperio Image Library"));
            assert!(d.contains("|MPP = 0.5"), "{d}");
            assert!(d.contains("|AppMag = 20"), "{d}");
        } else {
            assert!(lv.description.is_none());
        }
        let mut sum = 0.0;
        let mut max: f64 = 0.0;
        for (p, q) in lv.pixels.chunks(3).zip(cur.chunks(3)) {
            let rgb = ycbcr_to_rgb(p);
            for c in 0..3 {
                let d = (rgb[c] - q[c] as f64).abs();
                sum += d;
                max = max.max(d);
            }
        }
        let mean = sum / (cw * chh * 3) as f64;
        eprintln!("level {i}: mean abs diff {mean:.3}, max {max:.1}");
        assert!(mean < 4.0, "level {i}: mean abs diff {mean}");
        assert!(max < 40.0, "level {i}: max abs diff {max}");
        let (n, nw, nh) = ref_mean_half(&cur, cw, chh, 3);
        cur = n;
        cw = nw;
        chh = nh;
    }
}

#[test]
fn jpeg_tiles_decode_to_rgb_with_zune_jpeg() {
    // Every tile is a complete JPEG stream: decode the raw tile bytes directly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.tif");
    let img = [200u8, 120, 160].repeat(300 * 300);
    let opts = PyramidOptions::rgb_jpeg(Some(0.5));
    write_pyramid_from_image(&path, 300, 300, &img, &opts).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut dec = Decoder::new(std::io::Cursor::new(&bytes)).unwrap();
    let offs = dec.get_tag_u64_vec(Tag::TileOffsets).unwrap();
    let counts = dec.get_tag_u64_vec(Tag::TileByteCounts).unwrap();
    assert_eq!(offs.len(), 4);
    for (o, c) in offs.iter().zip(&counts) {
        let tile = &bytes[*o as usize..(*o + *c) as usize];
        let mut d =
            zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(tile));
        let px = d.decode().unwrap();
        let (tw, th) = d.dimensions().unwrap();
        assert_eq!((tw, th), (256, 256));
        // Top-left pixel is inside the image everywhere.
        for c in 0..3 {
            assert!((px[c] as i32 - img[c] as i32).abs() <= 3, "{:?}", &px[..3]);
        }
    }
}

#[test]
fn label_mask_bigtiff_nearest_levels_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.tiff");
    let (w, h) = (1500usize, 1100usize);
    let mut img = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            img[y * w + x] = ((x / 7 + y / 5) % 3) as u8 + if x > 900 { 250 } else { 0 };
        }
    }
    let mut opts = PyramidOptions::label_mask(Some(0.5));
    opts.min_level_size_px = 300;
    opts.edge_padding = EdgePadding::Value(255);
    // Stream level-0 bands from a closure; record the requested regions.
    let mut regions = Vec::new();
    let summary = write_pyramid(
        &path,
        w as u32,
        h as u32,
        &opts,
        |r: &Region, buf: &mut [u8]| {
            regions.push(*r);
            for row in 0..r.height_px as usize {
                let y = r.y_px as usize + row;
                buf[row * w..(row + 1) * w].copy_from_slice(&img[y * w..(y + 1) * w]);
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(regions.len(), 3); // 512 + 512 + 76 rows
    assert_eq!(
        regions[2],
        Region {
            x_px: 0,
            y_px: 1024,
            width_px: 1500,
            height_px: 76
        }
    );
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[..4], b"II+\0", "BigTIFF header");
    let levels = read_levels(&path);
    assert_eq!(levels.len(), summary.levels.len());
    assert_eq!(levels.len(), 3); // 1500, 750, 375
    let (mut cur, mut cw, mut chh) = (img.clone(), w, h);
    for (i, lv) in levels.iter().enumerate() {
        assert_eq!((lv.width as usize, lv.height as usize), (cw, chh));
        assert_eq!((lv.tile_w, lv.tile_h), (512, 512));
        assert_eq!(lv.compression, 8);
        assert_eq!(lv.photometric, 1);
        assert_eq!(lv.channels, 1);
        assert_eq!(lv.subfile, if i == 0 { 0 } else { 1 });
        assert_eq!(lv.res_unit, Some(3));
        assert!(lv.pixels == cur, "level {i} differs");
        let (n, nw, nh) = ref_nearest_half(&cur, cw, chh);
        cur = n;
        cw = nw;
        chh = nh;
    }
}

#[test]
fn explicit_downsamples_write_only_requested_levels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.tif");
    let (w, h) = (520usize, 300usize);
    let img: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
    let opts = PyramidOptions {
        pixel_format: PixelFormat::Gray8,
        compression: TileCompression::Deflate { level: 1 },
        downsampling: Downsampling::Mean2x2,
        tile_size_px: 64,
        min_level_size_px: 1,
        downsamples: Some(vec![1, 4]),
        mpp: None,
        description: None,
        big_tiff: false,
        edge_padding: EdgePadding::Value(0),
    };
    write_pyramid_from_image(&path, w as u32, h as u32, &img, &opts).unwrap();
    let levels = read_levels(&path);
    assert_eq!(levels.len(), 2);
    let (l1, w1, h1) = ref_mean_half(&img, w, h, 1);
    let (l2, w2, h2) = ref_mean_half(&l1, w1, h1, 1);
    assert_eq!(
        (levels[1].width as usize, levels[1].height as usize),
        (w2, h2)
    );
    assert!(levels[1].pixels == l2);
    assert!(levels[0].res_px_per_cm.is_none());
}

#[test]
fn output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let img = test_rgb(400, 300);
    let opts = PyramidOptions::rgb_jpeg(Some(0.5));
    let a = dir.path().join("a.tif");
    let b = dir.path().join("b.tif");
    write_pyramid_from_image(&a, 400, 300, &img, &opts).unwrap();
    write_pyramid_from_image(&b, 400, 300, &img, &opts).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn source_error_is_reported_and_file_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tif");
    let opts = PyramidOptions::rgb_jpeg(None);
    let err = write_pyramid(&path, 600, 600, &opts, |r: &Region, buf: &mut [u8]| {
        if r.y_px >= 256 {
            return Err("synthetic failure".into());
        }
        buf.fill(1);
        Ok(())
    })
    .unwrap_err();
    match &err {
        PyramidError::Source { y_px, .. } => assert_eq!(*y_px, 256),
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("bad.tif"));
    assert!(!path.exists());
}

#[test]
fn wrong_buffer_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tif");
    let err = write_pyramid_from_image(&path, 10, 10, &[0u8; 10], &PyramidOptions::rgb_jpeg(None))
        .unwrap_err();
    assert!(matches!(
        err,
        PyramidError::BufferSize {
            expected: 300,
            actual: 10,
            ..
        }
    ));
}

#[test]
fn unwritable_path_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing_dir").join("x.tif");
    let err = write_pyramid_from_image(&path, 1, 1, &[0u8; 3], &PyramidOptions::rgb_jpeg(None))
        .unwrap_err();
    assert!(matches!(err, PyramidError::Io { .. }), "{err}");
}

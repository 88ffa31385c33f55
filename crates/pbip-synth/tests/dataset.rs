//! End-to-end checks of a generated dataset (1024 px slides to keep tests small).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pbip_synth::{SynthOptions, SynthSummary, generate};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;

const SIZE: u32 = 1024;

fn opts(dir: &Path) -> SynthOptions {
    SynthOptions {
        num_slides: 6,
        size_px: SIZE,
        seed: 11,
        ..SynthOptions::new(dir)
    }
}

/// One shared dataset for the read-only checks.
fn dataset() -> &'static (tempfile::TempDir, SynthSummary) {
    static DS: OnceLock<(tempfile::TempDir, SynthSummary)> = OnceLock::new();
    DS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(&opts(dir.path())).unwrap();
        (dir, summary)
    })
}

fn read_mask(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(BufReader::new(File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn ycbcr_to_rgb(p: &[u8]) -> [f64; 3] {
    let (y, cb, cr) = (p[0] as f64, p[1] as f64 - 128.0, p[2] as f64 - 128.0);
    [
        (y + 1.402 * cr).clamp(0.0, 255.0),
        (y - 0.344136 * cb - 0.714136 * cr).clamp(0.0, 255.0),
        (y + 1.772 * cb).clamp(0.0, 255.0),
    ]
}

/// Decodes level 0 of a slide to RGB (f64) with the `tiff` crate.
fn read_level0_rgb(path: &Path) -> (u32, u32, Vec<[f64; 3]>) {
    let mut dec = Decoder::new(BufReader::new(File::open(path).unwrap())).unwrap();
    let (w, h) = dec.dimensions().unwrap();
    let (tw, th) = dec.chunk_dimensions();
    assert_eq!(dec.get_tag_u32(Tag::PhotometricInterpretation).unwrap(), 6);
    let tiles_x = w.div_ceil(tw);
    let mut out = vec![[0.0; 3]; (w * h) as usize];
    for i in 0..dec.tile_count().unwrap() {
        let (cw, ch) = dec.chunk_data_dimensions(i);
        let DecodingResult::U8(data) = dec.read_chunk(i).unwrap() else {
            panic!("expected u8")
        };
        let (x0, y0) = ((i % tiles_x) * tw, (i / tiles_x) * th);
        for r in 0..ch {
            for c in 0..cw {
                let k = ((r * cw + c) * 3) as usize;
                out[((y0 + r) * w + x0 + c) as usize] = ycbcr_to_rgb(&data[k..k + 3]);
            }
        }
    }
    (w, h, out)
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_options_give_byte_identical_files() {
    let (dir_a, _) = dataset();
    let dir_b = tempfile::tempdir().unwrap();
    generate(&opts(dir_b.path())).unwrap();
    let fa = list_files(dir_a.path());
    let fb = list_files(dir_b.path());
    assert_eq!(fa, fb);
    assert!(fa.len() >= 6 * 4 + 3, "{fa:?}");
    for f in &fa {
        let a = std::fs::read(dir_a.path().join(f)).unwrap();
        let b = std::fs::read(dir_b.path().join(f)).unwrap();
        assert!(a == b, "{} differs between runs", f.display());
    }
    // A different seed gives different slides.
    let dir_c = tempfile::tempdir().unwrap();
    generate(&SynthOptions {
        num_slides: 4,
        seed: 12,
        ..opts(dir_c.path())
    })
    .unwrap();
    let a = std::fs::read(dir_a.path().join("masks/slide_000.png")).unwrap();
    let c = std::fs::read(dir_c.path().join("masks/slide_000.png")).unwrap();
    assert!(a != c);
}

#[test]
fn csvs_parse_and_match_the_slides() {
    let (dir, summary) = dataset();
    let split = std::fs::read_to_string(dir.path().join("split.csv")).unwrap();
    let mut lines = split.lines();
    assert_eq!(lines.next(), Some("train,val,test"));
    let mut by_split: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 3, "{line:?}");
        for (i, c) in cells.iter().enumerate() {
            if !c.is_empty() {
                by_split.entry(i).or_default().push(c.to_string());
            }
        }
    }
    let labels = std::fs::read_to_string(dir.path().join("labels.csv")).unwrap();
    let mut lines = labels.lines();
    assert_eq!(lines.next(), Some("image_name,label"));
    let label: BTreeMap<String, u8> = lines
        .map(|l| {
            let (n, v) = l.split_once(',').unwrap();
            (n.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(label.len(), 6);
    let all: BTreeSet<&String> = by_split.values().flatten().collect();
    assert_eq!(all.len(), 6, "each slide in exactly one split");
    for (i, names) in &by_split {
        let classes: BTreeSet<u8> = names.iter().map(|n| label[n]).collect();
        // 6 slides: train, val and test all hold both classes.
        assert_eq!(classes, BTreeSet::from([0, 1]), "split column {i}");
    }
    assert_eq!(by_split.len(), 3);
    for name in label.keys() {
        assert!(
            dir.path()
                .join("slides")
                .join(format!("{name}.tif"))
                .is_file()
        );
        assert!(
            dir.path()
                .join("masks")
                .join(format!("{name}.png"))
                .is_file()
        );
        assert!(
            dir.path()
                .join("coordinates")
                .join(format!("{name}.npy"))
                .is_file()
        );
        assert!(
            dir.path()
                .join("thumbnails")
                .join(format!("{name}.png"))
                .is_file()
        );
    }
    for s in &summary.slides {
        assert_eq!(label[&s.name], s.label);
        let col = ["train", "val", "test"]
            .iter()
            .position(|c| *c == s.split.as_str())
            .unwrap();
        assert!(by_split[&col].contains(&s.name));
    }
}

#[test]
fn config_has_exactly_the_agreed_keys() {
    let (dir, summary) = dataset();
    let text = std::fs::read_to_string(dir.path().join("config.yaml")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let map = v.as_mapping().unwrap();
    let keys: BTreeSet<&str> = map.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["seed", "paths", "class_order", "patch_size", "prototypes"])
    );
    assert_eq!(v["seed"].as_u64(), Some(11));
    assert_eq!(v["patch_size"].as_u64(), Some(224));
    let classes: Vec<&str> = v["class_order"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(classes, ["benign", "tumor"]);
    let paths = v["paths"].as_mapping().unwrap();
    let pkeys: BTreeSet<&str> = paths.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        pkeys,
        BTreeSet::from([
            "split_csv",
            "labels_csv",
            "wsi_dir",
            "coordinates_dir",
            "coordinates_suffix",
            "gt_dir",
            "gt_suffix",
            "work_dir"
        ])
    );
    assert_eq!(v["paths"]["coordinates_suffix"].as_str(), Some(".npy"));
    assert_eq!(v["paths"]["gt_suffix"].as_str(), Some(".png"));
    assert_eq!(v["paths"]["work_dir"].as_str(), Some("work"));
    for key in [
        "split_csv",
        "labels_csv",
        "wsi_dir",
        "coordinates_dir",
        "gt_dir",
    ] {
        let rel = v["paths"][key].as_str().unwrap();
        assert!(Path::new(rel).is_relative());
        assert!(dir.path().join(rel).exists(), "{key} -> {rel}");
    }
    let protos = v["prototypes"].as_mapping().unwrap();
    let prkeys: BTreeSet<&str> = protos.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        prkeys,
        BTreeSet::from(["num_per_class", "samples_per_wsi", "k_list"])
    );
    let npc = v["prototypes"]["num_per_class"].as_u64().unwrap() as usize;
    assert_eq!(npc, summary.num_per_class);
    assert!(npc >= 1);
    assert!(v["prototypes"]["samples_per_wsi"].as_u64().unwrap() >= 1);
    let k: Vec<u64> = v["prototypes"]["k_list"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(k, [3, 3]);
}

#[test]
fn masks_are_consistent_with_labels_and_pixels() {
    let (_dir, summary) = dataset();
    for s in &summary.slides {
        let (w, h, mask) = read_mask(&s.mask_path);
        assert_eq!((w, h), (SIZE, SIZE));
        let (mut bg, mut benign, mut tumour) = (0usize, 0usize, 0usize);
        for &v in &mask {
            match v {
                255 => bg += 1,
                0 => benign += 1,
                1 => tumour += 1,
                other => panic!("{}: unexpected mask value {other}", s.name),
            }
        }
        let tissue = benign + tumour;
        let tissue_frac = tissue as f64 / mask.len() as f64;
        assert!(
            (0.3..0.7).contains(&tissue_frac),
            "{}: tissue {tissue_frac}",
            s.name
        );
        assert!((tissue_frac - s.tissue_fraction).abs() < 1e-12);
        let tum_frac = tumour as f64 / tissue as f64;
        assert!((tum_frac - s.tumour_fraction).abs() < 1e-12);
        if s.label == 1 {
            assert!(
                (0.15..0.65).contains(&tum_frac),
                "{}: tumour {tum_frac}",
                s.name
            );
        } else {
            assert_eq!(tumour, 0, "{}: benign slide with tumour pixels", s.name);
        }

        // Pixels: white where the mask says background, stained where it says tissue, and
        // benign / tumour texture means close (< 10 levels per channel).
        let (sw, sh, rgb) = read_level0_rgb(&s.slide_path);
        assert_eq!((sw, sh), (SIZE, SIZE));
        let mut sums = [[0f64; 3]; 3];
        let mut counts = [0usize; 3];
        let mut bg_off = 0usize;
        for (p, &m) in rgb.iter().zip(&mask) {
            let k = match m {
                0 => 0,
                1 => 1,
                _ => 2,
            };
            counts[k] += 1;
            for c in 0..3 {
                sums[k][c] += p[c];
            }
            if m == 255 && p.iter().any(|&v| !(220.0..=255.0).contains(&v)) {
                bg_off += 1;
            }
        }
        let mean = |k: usize| sums[k].map(|v| v / counts[k].max(1) as f64);
        let bgm = mean(2);
        for c in 0..3 {
            assert!(
                (bgm[c] - 240.0).abs() < 3.0,
                "{}: background mean {bgm:?}",
                s.name
            );
        }
        // Only pixels right at the tissue border may be off-white after JPEG.
        assert!(
            (bg_off as f64) < 0.01 * bg as f64,
            "{}: {bg_off} off-white bg px",
            s.name
        );
        let bm = mean(0);
        assert!(
            bm[1] < 200.0,
            "{}: benign tissue is not stained: {bm:?}",
            s.name
        );
        if s.label == 1 {
            let tm = mean(1);
            assert!(
                tm[1] < 200.0,
                "{}: tumour tissue is not stained: {tm:?}",
                s.name
            );
            for c in 0..3 {
                assert!(
                    (bm[c] - tm[c]).abs() < 10.0,
                    "{}: benign {bm:?} tumour {tm:?}",
                    s.name
                );
            }
        }
    }
}

#[test]
fn coordinates_are_exactly_the_tissue_tiles() {
    let (_dir, summary) = dataset();
    for s in &summary.slides {
        let coords = pbip_coords::Coordinates::read(&s.coordinates_path).unwrap();
        assert_eq!(coords.len(), s.num_coordinates);
        assert!(!coords.is_empty(), "{}", s.name);
        let (w, _h, mask) = read_mask(&s.mask_path);
        let tissue_frac = |x: i64, y: i64| {
            let mut n = 0usize;
            for yy in y..y + 224 {
                for xx in x..x + 224 {
                    if mask[(yy as u32 * w + xx as u32) as usize] != 255 {
                        n += 1;
                    }
                }
            }
            n as f64 / (224.0 * 224.0)
        };
        // Expected: every 224 grid tile fully inside the slide with >= 50 % tissue, x-major.
        let mut expected = Vec::new();
        for x in (0..=(SIZE as i64 - 224)).step_by(224) {
            for y in (0..=(SIZE as i64 - 224)).step_by(224) {
                if tissue_frac(x, y) >= 0.5 {
                    expected.push((x, y));
                }
            }
        }
        let got: Vec<(i64, i64)> = coords
            .x
            .iter()
            .copied()
            .zip(coords.y.iter().copied())
            .collect();
        assert_eq!(got, expected, "{}", s.name);
        for (i, _) in got.iter().enumerate() {
            let g = &coords;
            assert_eq!(g.tile_level.as_ref().unwrap()[i], 0);
            assert_eq!(g.tile_size_resized.as_ref().unwrap()[i], 224);
            assert_eq!(g.tile_size_lv0.as_ref().unwrap()[i], 224);
            assert_eq!(g.resize_factor.as_ref().unwrap()[i], 1.0);
            assert_eq!(g.target_spacing.as_ref().unwrap()[i], 0.5);
        }
    }
}

#[test]
fn slides_are_readable_pyramids_with_mpp() {
    let (_dir, summary) = dataset();
    for s in &summary.slides {
        let mut dec = Decoder::new(BufReader::new(File::open(&s.slide_path).unwrap())).unwrap();
        let mut dims = Vec::new();
        loop {
            let (w, h) = dec.dimensions().unwrap();
            assert_eq!(dec.chunk_dimensions(), (256, 256));
            assert_eq!(dec.get_tag_u32(Tag::Compression).unwrap(), 7);
            let sub = dec
                .find_tag_unsigned::<u32>(Tag::NewSubfileType)
                .unwrap()
                .unwrap_or(0);
            assert_eq!(sub, if dims.is_empty() { 0 } else { 1 });
            let xres = match dec.get_tag(Tag::XResolution).unwrap() {
                tiff::decoder::ifd::Value::Rational(n, d) => n as f64 / d as f64,
                v => panic!("{v:?}"),
            };
            let ds = SIZE as f64 / w as f64;
            // 0.5 µm/px -> 20000 px/cm at level 0.
            assert!(
                (xres - 2e4 / ds).abs() < 1e-6,
                "{}: xres {xres} at {w}",
                s.name
            );
            assert_eq!(dec.get_tag_u32(Tag::ResolutionUnit).unwrap(), 3);
            // Every tile decodes.
            for i in 0..dec.tile_count().unwrap() {
                dec.read_chunk(i).unwrap();
            }
            dims.push((w, h));
            if !dec.more_images() {
                break;
            }
            dec.next_image().unwrap();
        }
        assert_eq!(
            dims,
            vec![(1024, 1024), (512, 512), (256, 256)],
            "{}",
            s.name
        );
        assert_eq!(s.num_levels, dims.len());
    }
}

#[test]
fn aperio_description_is_optional() {
    let dir = tempfile::tempdir().unwrap();
    let o = SynthOptions {
        num_slides: 4,
        size_px: 512,
        thumbnails: false,
        aperio_description: true,
        ..SynthOptions::new(dir.path())
    };
    let summary = generate(&o).unwrap();
    assert_eq!(summary.slides.len(), 4);
    assert!(!dir.path().join("thumbnails").exists());
    let mut dec = Decoder::new(BufReader::new(
        File::open(&summary.slides[0].slide_path).unwrap(),
    ))
    .unwrap();
    let d = dec.get_tag_ascii_string(Tag::ImageDescription).unwrap();
    assert!(d.starts_with("Aperio Image Library"), "{d}");
    assert!(d.contains("|MPP = 0.5"), "{d}");
    // Default datasets have none.
    let (_d, s) = dataset();
    let mut dec =
        Decoder::new(BufReader::new(File::open(&s.slides[0].slide_path).unwrap())).unwrap();
    assert!(dec.find_tag(Tag::ImageDescription).unwrap().is_none());
}

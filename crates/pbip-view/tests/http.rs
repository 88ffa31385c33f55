//! HTTP tests of the viewer against a server running in this process, on a fixture made here:
//! two pyramidal slides, a corrupt one, and `pbip infer`-style outputs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pbip_slide::{OpenOptions, Slide};
use pbip_view::{ViewOptions, Viewer};

const A_W: u32 = 1500;
const A_H: u32 = 1100;
/// Level-0 px per output px of the fixture predictions.
const DS: u32 = 4;
const PALETTE: [[u8; 3]; 2] = [[0, 114, 178], [213, 94, 0]];

struct Fixture {
    _dir: tempfile::TempDir,
    slides: PathBuf,
    port: u16,
}

/// Class of output pixel (x, y) of slide `a` for a tumour disc of `radius` output px: tumour (1)
/// in the disc, benign (0) around it, no label (255) in the left 40 columns.
fn disc_label(x: u32, y: u32, radius: i64) -> u8 {
    let (cx, cy) = (A_W / DS / 2, A_H / DS / 2);
    let d2 = (x as i64 - cx as i64).pow(2) + (y as i64 - cy as i64).pow(2);
    if x < 40 {
        255
    } else if d2 < radius * radius {
        1
    } else {
        0
    }
}

/// The prediction of slide `a` at output pixel (x, y): a tumour disc of radius 80.
fn label_a(x: u32, y: u32) -> u8 {
    disc_label(x, y, 80)
}

/// GT of slide `a` at level-0 pixel (x, y): like the prediction, with a smaller tumour disc
/// (radius 70).
fn gt_a(x: u32, y: u32) -> u8 {
    disc_label(x / DS, y / DS, 70)
}

fn rgb_pattern(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            // Smooth colours (JPEG-friendly) with blocks: pixels differ across the slide.
            let block = ((x / 97 + y / 61 + seed) % 3) as u8;
            v.extend_from_slice(&[
                (120 + (x * 100 / w) as u8).wrapping_add(block * 20),
                (60 + (y * 120 / h) as u8).wrapping_add(block * 10),
                (150 + ((x + y) * 60 / (w + h)) as u8).wrapping_sub(block * 15),
            ]);
        }
    }
    v
}

fn write_slide(path: &Path, w: u32, h: u32, seed: u32) {
    let opts = pbip_pyramid::PyramidOptions::rgb_jpeg(Some(0.5));
    pbip_pyramid::write_pyramid_from_image(path, w, h, &rgb_pattern(w, h, seed), &opts).unwrap();
}

fn write_prediction(dir: &Path, id: &str, w: u32, h: u32, label: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(dir).unwrap();
    let labels: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| label(x, y))
        .collect();
    pbip_post::export::write_label_png(&dir.join("segmentation_mask.png"), &labels, w, h, &PALETTE)
        .unwrap();
    let mut t = pbip_pyramid::PyramidOptions::label_mask(Some(0.5 * f64::from(DS)));
    t.edge_padding = pbip_pyramid::EdgePadding::Value(255);
    t.tile_size_px = 256;
    t.min_level_size_px = 64;
    pbip_pyramid::write_pyramid_from_image(&dir.join("mask.tiff"), w, h, &labels, &t).unwrap();
    let mut npz = pbip_post::npz::NpzWriter::create(&dir.join("confidence_maps.npz")).unwrap();
    let tum: Vec<f32> = labels
        .iter()
        .map(|&l| {
            if l == 1 {
                0.9
            } else if l == 0 {
                0.2
            } else {
                0.0
            }
        })
        .collect();
    let ben: Vec<f32> = tum
        .iter()
        .map(|&p| if p > 0.0 { 1.0 - p } else { 0.0 })
        .collect();
    npz.add_f16("class_0", &[h as usize, w as usize], &ben)
        .unwrap();
    npz.add_f16("class_1", &[h as usize, w as usize], &tum)
        .unwrap();
    npz.finish().unwrap();
    let classes = pbip_post::export::ClassInfo::from_names(&["benign", "tumor"]);
    let gj = pbip_post::export::label_map_to_geojson(
        &labels,
        w as usize,
        h as usize,
        f64::from(DS),
        &classes,
    )
    .unwrap();
    std::fs::write(dir.join(format!("{id}.geojson")), gj.to_string()).unwrap();
    let mut counts = [0u64; 2];
    for &l in &labels {
        if l < 2 {
            counts[l as usize] += 1;
        }
    }
    let meta = serde_json::json!({
        "wsi_name": format!("{id}.tif"), "class_order": ["benign", "tumor"], "mpp": 0.5,
        "output_downsample": f64::from(DS), "output_size_px": [w, h], "class_pixels": counts,
        "no_label_value": 255,
    });
    std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let slides = dir.path().join("slides");
        std::fs::create_dir_all(&slides).unwrap();
        write_slide(&slides.join("a.tif"), A_W, A_H, 0);
        write_slide(&slides.join("b.tif"), 600, 400, 1);
        // A corrupt slide among good ones.
        std::fs::write(slides.join("c.tif"), b"II*\0\x08\0\0\0garbage that is no IFD").unwrap();
        std::fs::write(slides.join("notes.txt"), b"not a slide").unwrap();
        let pred = dir.path().join("out/predictions");
        write_prediction(&pred.join("a"), "a", A_W / DS, A_H / DS, label_a);
        // b: a corrupt mask.tiff and no npz.
        std::fs::create_dir_all(pred.join("b")).unwrap();
        std::fs::write(pred.join("b/mask.tiff"), b"II*\0broken").unwrap();
        std::fs::write(
            pred.join("b/metadata.json"),
            r#"{"class_order": ["benign", "tumor"], "output_downsample": 4.0, "class_pixels": [10, 0]}"#,
        )
        .unwrap();
        std::fs::write(
            pred.join("batch_results.csv"),
            "wsi_name,num_patches,processing_time,model_version,status,error\n\
             a,12,1.0,v,ok,\nb,5,1.0,v,ok,\nc,0,0.1,v,failed,\"c.tif: not a slide, sorry\"\ngone,0,0.1,v,failed,missing\n",
        )
        .unwrap();
        let gt = dir.path().join("gt");
        std::fs::create_dir_all(&gt).unwrap();
        let labels: Vec<u8> = (0..A_H).flat_map(|y| (0..A_W).map(move |x| gt_a(x, y))).collect();
        pbip_post::export::write_label_png(&gt.join("a.png"), &labels, A_W, A_H, &PALETTE).unwrap();
        let opts = ViewOptions {
            inputs: vec![slides.clone()],
            predictions: Some(dir.path().join("out")),
            gt_dir: Some(gt),
            port: 0,
            tile_cache_bytes: 4 << 20,
            slide_cache_bytes: 4 << 20,
            max_open_slides: 2,
            render_threads: 2,
            ..ViewOptions::default()
        };
        let viewer = Viewer::bind(opts).unwrap();
        let port = viewer.local_addr().port();
        assert!(viewer.url().starts_with("http://127.0.0.1:"));
        std::thread::spawn(move || viewer.serve());
        Fixture {
            _dir: dir,
            slides,
            port,
        }
    })
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn get(path: &str) -> Resp {
    let f = fixture();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{}{path}", f.port))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

/// Status of a request sent byte for byte (no client-side path normalisation).
fn raw_status(path: &str, host: Option<&str>) -> u16 {
    let f = fixture();
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    let host = host.map_or_else(|| format!("127.0.0.1:{}", f.port), str::to_string);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let line = text.lines().next().unwrap_or("");
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{path}: bad answer {text:?}"))
}

fn decode_jpeg(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    let px = d.decode().unwrap();
    let (w, h) = d.dimensions().unwrap();
    assert_eq!(px.len(), w * h * 3);
    (w, h, px)
}

/// (width, height, indices, palette, alpha) of an indexed PNG.
fn decode_indexed(bytes: &[u8]) -> (u32, u32, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut r = dec.read_info().unwrap();
    let info = r.info().clone();
    assert_eq!(info.color_type, png::ColorType::Indexed);
    let mut buf = vec![0u8; r.output_buffer_size().unwrap()];
    r.next_frame(&mut buf).unwrap();
    buf.truncate((info.width * info.height) as usize);
    (
        info.width,
        info.height,
        buf,
        info.palette.unwrap().to_vec(),
        info.trns.unwrap().to_vec(),
    )
}

fn attr(xml: &str, name: &str) -> u64 {
    let k = format!("{name}=\"");
    let i = xml.find(&k).unwrap_or_else(|| panic!("{name} in {xml}")) + k.len();
    xml[i..].split('"').next().unwrap().parse().unwrap()
}

fn level_count(w: u64, h: u64) -> usize {
    (w.max(h) as f64).log2().ceil() as usize + 1
}

#[test]
fn dzi_describes_the_slide_and_tiles_equal_read_region() {
    let dzi = get("/slides/a.dzi");
    assert_eq!(dzi.status, 200);
    assert_eq!(dzi.header("content-type"), Some("application/xml"));
    let x = dzi.text();
    assert_eq!(
        (attr(&x, "Width"), attr(&x, "Height")),
        (u64::from(A_W), u64::from(A_H))
    );
    assert_eq!((attr(&x, "TileSize"), attr(&x, "Overlap")), (254, 1));
    assert!(x.contains("Format=\"jpeg\""), "{x}");
    let top = level_count(u64::from(A_W), u64::from(A_H)) - 1;
    // Last level exists, the next does not.
    assert_eq!(get(&format!("/slides/a_files/{top}/0_0.jpeg")).status, 200);
    assert_eq!(
        get(&format!("/slides/a_files/{}/0_0.jpeg", top + 1)).status,
        404
    );
    // Tile (1, 2) of the full-resolution level = read_region(253, 507, 0, 256, 256).
    let slide = Slide::open(fixture().slides.join("a.tif"), &OpenOptions::default()).unwrap();
    for (c, r, x0, y0, w, h) in [
        (1u32, 2u32, 253u32, 507u32, 256u32, 256u32),
        (5, 4, 1269, 1015, 231, 85),
    ] {
        let t = get(&format!("/slides/a_files/{top}/{c}_{r}.jpeg"));
        assert_eq!(t.status, 200);
        assert_eq!(t.header("content-type"), Some("image/jpeg"));
        assert!(t.header("x-pbip-error").is_none());
        let (tw, th, px) = decode_jpeg(&t.body);
        assert_eq!((tw as u32, th as u32), (w, h), "tile {c}_{r}");
        let want = slide
            .read_region(i64::from(x0), i64::from(y0), 0, w, h)
            .unwrap();
        let diff: Vec<i32> = px
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let mean = diff.iter().sum::<i32>() as f64 / diff.len() as f64;
        assert!(mean < 3.0, "tile {c}_{r}: mean |diff| {mean}");
        // JPEG rounding stays small except at the colour-block edges.
        let big = diff.iter().filter(|&&d| d > 24).count();
        assert!(
            big * 100 < diff.len(),
            "tile {c}_{r}: {big} large differences"
        );
    }
    // A zoomed-out level: the whole slide in one tile of the DeepZoom size.
    let lv = top - 3; // downsample 8: 188 x 138
    let t = get(&format!("/slides/a_files/{lv}/0_0.jpeg"));
    let (tw, th, px) = decode_jpeg(&t.body);
    assert_eq!((tw, th), (188, 138));
    let thumb = slide.read_region(0, 0, 0, A_W, A_H).unwrap();
    // Mean colour of the thumbnail ≈ mean colour of the slide.
    let mean = |v: &[u8], c: usize| {
        v.iter()
            .skip(c)
            .step_by(3)
            .map(|&b| f64::from(b))
            .sum::<f64>()
            / (v.len() / 3) as f64
    };
    for c in 0..3 {
        assert!(
            (mean(&px, c) - mean(&thumb.data, c)).abs() < 3.0,
            "channel {c}"
        );
    }
}

#[test]
fn api_lists_slides_with_status_and_inference() {
    let r = get("/api/slides");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = v.as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["a", "b", "c", "gone"]);
    let a = &list[0];
    assert_eq!(a["name"], "a.tif");
    assert_eq!(
        (a["width"].as_u64(), a["height"].as_u64()),
        (Some(u64::from(A_W)), Some(u64::from(A_H)))
    );
    assert!((a["mpp"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    assert_eq!(a["status"], "ok");
    assert_eq!(a["inference"]["status"], "ok");
    assert_eq!(a["positive_class"], "tumor");
    let frac = a["positive_fraction"].as_f64().unwrap();
    let (w, h) = (A_W / DS, A_H / DS);
    let (mut t, mut l) = (0u64, 0u64);
    for y in 0..h {
        for x in 0..w {
            let v = label_a(x, y);
            t += u64::from(v == 1);
            l += u64::from(v != 255);
        }
    }
    assert!((frac - t as f64 / l as f64).abs() < 1e-9);
    let area = a["positive_area_mm2"].as_f64().unwrap();
    assert!((area - t as f64 * 4.0 / 1e6).abs() < 1e-9, "{area}");
    let c = &list[2];
    assert_eq!(c["status"], "error");
    assert!(c["error"].as_str().unwrap().contains("c.tif"), "{c}");
    assert_eq!(c["inference"]["error"], "c.tif: not a slide, sorry");
    assert_eq!(list[3]["status"], "error");
    let d = get("/api/slides/a");
    let d: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(d["dzi"], "/slides/a.dzi");
    assert_eq!(d["classes"][1]["name"], "tumor");
    assert_eq!(d["classes"][1]["color"], serde_json::json!(PALETTE[1]));
    assert_eq!(d["layers"]["mask"]["available"], true);
    assert_eq!(d["layers"]["confidence"]["available"], true);
    assert_eq!(d["layers"]["geojson"]["available"], true);
    let b: serde_json::Value = serde_json::from_slice(&get("/api/slides/b").body).unwrap();
    assert_eq!(b["layers"]["mask"]["available"], false);
    assert!(
        b["layers"]["mask"]["error"]
            .as_str()
            .unwrap()
            .contains("mask.tiff"),
        "{b}"
    );
    assert_eq!(b["layers"]["confidence"]["available"], false);
}

/// (offset, length) of DeepZoom tile `c` along an axis of `size` px (tile 254, overlap 1).
fn dz_axis(c: u32, size: u32) -> (u32, u32) {
    let before = u32::from(c > 0);
    let after = u32::from((c + 1) * 254 < size);
    ((c * 254) - before, 254.min(size - c * 254) + before + after)
}

#[test]
fn overlay_tiles_match_the_mask() {
    let x = get("/overlays/a/mask.dzi?hide=1").text();
    assert_eq!(
        (attr(&x, "Width"), attr(&x, "Height")),
        (u64::from(A_W), u64::from(A_H))
    );
    assert!(x.contains("Format=\"png\""));
    let top = level_count(u64::from(A_W), u64::from(A_H)) - 1;
    for (level, dsz, c) in [
        (top, 1u32, 1u32),
        (top - 1, 2, 1),
        (top - 2, 4, 0),
        (top - 2, 4, 1),
        (top - 4, 16, 0),
    ] {
        let t = get(&format!("/overlays/a/mask_files/{level}/{c}_{c}.png"));
        assert_eq!(t.status, 200);
        assert_eq!(t.header("content-type"), Some("image/png"));
        assert!(t.header("x-pbip-error").is_none());
        let (w, h, idx, plte, trns) = decode_indexed(&t.body);
        let (x0, tw) = dz_axis(c, A_W.div_ceil(dsz));
        let (y0, th) = dz_axis(c, A_H.div_ceil(dsz));
        assert_eq!((w, h), (tw, th), "level {level} tile {c}_{c}");
        assert_eq!(&plte[3..6], &PALETTE[1]);
        assert_eq!((trns[0], trns[1], trns[255]), (255, 255, 0));
        let mut classes = [0usize; 3];
        for ty in 0..h {
            for tx in 0..w {
                // The output-grid cell under the centre of the tile pixel.
                let gx = ((x0 + tx) * dsz * 2 + dsz) / (2 * DS);
                let gy = ((y0 + ty) * dsz * 2 + dsz) / (2 * DS);
                let want = if gx < A_W / DS && gy < A_H / DS {
                    label_a(gx, gy)
                } else {
                    255
                };
                let got = idx[(ty * w + tx) as usize];
                if dsz <= DS {
                    assert_eq!(got, want, "level {level} tile {c}_{c} px {tx},{ty}");
                }
                classes[usize::from(got.min(2))] += usize::from(got == want);
            }
        }
        let agree: usize = classes.iter().sum();
        // Coarser than the mask: mask.tiff levels keep the top-left sample of each block, so
        // only pixels at class edges may differ.
        assert!(
            agree * 100 >= (w * h) as usize * 95,
            "level {level}: {agree} of {}",
            w * h
        );
        if (level, c) == (top - 2, 0) {
            assert!(
                classes.iter().all(|&n| n > 0),
                "tile covers every class: {classes:?}"
            );
        }
    }
    // Hidden classes are transparent, the pixels keep their class.
    let t = get(&format!(
        "/overlays/a/mask_files/{}/0_0.png?hide=1",
        top - 2
    ));
    let (_, _, _, _, trns) = decode_indexed(&t.body);
    assert_eq!((trns[0], trns[1]), (255, 0));
    assert_eq!(
        get(&format!("/overlays/a/mask_files/{top}/0_0.png?hide=x")).status,
        400
    );
    // Confidence of the tumour class: 0.9 in the disc (centre: grid 187, 137) → round(0.9 · 254).
    let t = get(&format!(
        "/overlays/a/confidence-1_files/{}/0_0.png",
        top - 2
    ));
    let (w, _, idx, _, trns) = decode_indexed(&t.body);
    let centre = |v: &[u8]| v[(137 * w + 187) as usize];
    assert_eq!(trns[255], 0);
    let want = (0.9f32 * 254.0).round() as u8;
    assert!(
        (i32::from(centre(&idx)) - i32::from(want)).abs() <= 1,
        "{}",
        centre(&idx)
    );
    assert_eq!(idx[(137 * w + 10) as usize], 255, "no value left of x = 40");
    let t = get(&format!(
        "/overlays/a/uncertainty_files/{}/0_0.png",
        top - 2
    ));
    let (_, _, idx, _, _) = decode_indexed(&t.body);
    // p1 - p2 = 0.9 - 0.1 = 0.8 → uncertainty 0.2 → 51.
    assert!(
        (i32::from(centre(&idx)) - 51).abs() <= 1,
        "{}",
        centre(&idx)
    );
    assert_eq!(
        get(&format!("/overlays/a/confidence-2_files/{top}/0_0.png")).status,
        404
    );
}

#[test]
fn unknown_ids_and_paths_are_404() {
    for p in [
        "/slides/nope.dzi",
        "/slides/a.tif",
        "/slides/a",
        "/slides/../Cargo.toml",
        "/slides/..%2F..%2Fetc%2Fpasswd.dzi",
        "/slides/%2Fetc%2Fpasswd.dzi",
        "/slides//etc/passwd.dzi",
        "/slides/a_files/../../a.tif",
        "/slides/a_files/0/0_0.png",
        "/slides/a_files/99/0_0.jpeg",
        "/slides/a_files/11/99_0.jpeg",
        "/slides/a_files/11/-1_0.jpeg",
        "/slides/a_files/x/0_0.jpeg",
        "/slides/..%2Fslides%2Fa_files/0/0_0.jpeg",
        "/slides/",
        "/slides",
        "/overlays/a/../../slides/a.tif",
        "/overlays/a/nope.dzi",
        "/overlays/a/mask_files/0/0_0.jpeg",
        "/overlays/%2E%2E/mask.dzi",
        "/overlays/c/mask.dzi",
        "/api/slides/..",
        "/api/slides/%2Fetc%2Fpasswd",
        "/api/slides/c/geojson",
        "/assets/../Cargo.toml",
        "/assets/%2E%2E/Cargo.toml",
        "/assets/",
        "/etc/passwd",
        "/out/predictions/a/mask.tiff",
        "/predictions/a/metadata.json",
        "/a.tif",
    ] {
        assert_eq!(raw_status(p, None), 404, "{p}");
    }
    // Only this loopback server's names are accepted (DNS rebinding).
    assert_eq!(raw_status("/api/slides", Some("evil.example")), 403);
    assert_eq!(
        raw_status(
            "/api/slides",
            Some(&format!("localhost:{}", fixture().port))
        ),
        200
    );
}

#[test]
fn a_corrupt_slide_gives_errors_and_the_others_are_served() {
    let r = get("/slides/c.dzi");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("c.tif"), "{}", r.text());
    assert_eq!(get("/slides/c_files/0/0_0.jpeg").status, 500);
    assert_eq!(get("/slides/a_files/0/0_0.jpeg").status, 200);
    assert_eq!(get("/slides/b.dzi").status, 200);
    // b's mask.tiff is corrupt: an error tile (transparent with a red cross) and the reason.
    let t = get("/overlays/b/mask_files/5/0_0.png");
    assert_eq!(t.status, 200);
    let why = t.header("x-pbip-error").expect("error header");
    assert!(why.contains("mask.tiff"), "{why}");
    let (w, h, idx, plte, trns) = decode_indexed(&t.body);
    assert_eq!((w, h), (19, 13)); // 600 x 400 at downsample 32
    assert!(idx.contains(&1) && trns[1] == 255 && plte[3] == 200);
    let t = get("/overlays/b/confidence-0_files/5/0_0.png");
    assert!(
        t.header("x-pbip-error")
            .unwrap()
            .contains("confidence_maps.npz"),
        "{:?}",
        t.headers
    );
    // The server is still up.
    assert_eq!(get("/api/slides").status, 200);
}

#[test]
fn page_assets_and_geojson() {
    let p = get("/");
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        p.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(p.text().contains("openseadragon.min.js"));
    let js = get("/assets/openseadragon/openseadragon.min.js");
    assert_eq!(js.status, 200);
    assert!(js.text().contains("OpenSeadragon"));
    assert!(
        get("/assets/openseadragon/LICENSE.txt")
            .text()
            .contains("CodePlex Foundation")
    );
    assert_eq!(get("/assets/viewer.js").status, 200);
    assert_eq!(
        get("/assets/openseadragon/images/home_rest.png").status,
        200
    );
    let g = get("/api/slides/a/geojson");
    assert_eq!(g.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["type"], "FeatureCollection");
    assert!(!v["features"].as_array().unwrap().is_empty());
    assert_eq!(get("/api/slides/b/geojson").status, 404);
}

#[test]
fn tiles_are_cached() {
    let before: serde_json::Value = serde_json::from_slice(&get("/api/stats").body).unwrap();
    let a = get("/slides/a_files/9/1_1.jpeg");
    let b = get("/slides/a_files/9/1_1.jpeg");
    assert_eq!(a.body, b.body);
    let after: serde_json::Value = serde_json::from_slice(&get("/api/stats").body).unwrap();
    let hits = |v: &serde_json::Value| v["tile_cache"]["hits"].as_u64().unwrap();
    assert!(hits(&after) > hits(&before), "{before} → {after}");
    assert!(after["tile_cache"]["bytes"].as_u64().unwrap() <= 4 << 20);
}

#[test]
fn predictions_are_scored_against_the_gt() {
    // The scorer runs in the background: wait for it (it always ends, done or failed).
    let mut polls = 0;
    let a = loop {
        let v: serde_json::Value = serde_json::from_slice(&get("/api/slides").body).unwrap();
        let a = v[0].clone();
        assert_eq!(a["id"], "a");
        if a["score"]["state"] != "pending" {
            break a;
        }
        polls += 1;
        assert!(polls < 100_000, "scoring never finished");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(a["score"]["state"], "done", "{a}");
    let (mut inter, mut union) = (0u64, 0u64);
    for y in 0..A_H / DS {
        for x in 0..A_W / DS {
            let p = label_a(x, y) == 1;
            let g = gt_a(x * DS + DS / 2, y * DS + DS / 2) == 1;
            inter += u64::from(p && g);
            union += u64::from(p || g);
        }
    }
    let iou = a["score"]["tumour_iou"].as_f64().unwrap();
    assert!(
        (iou - inter as f64 / union as f64).abs() < 1e-12,
        "{iou} vs {inter}/{union}"
    );
    assert!(iou > 0.6 && iou < 0.9, "{iou}");
    // Slides without a GT mask are not scored.
    let v: serde_json::Value = serde_json::from_slice(&get("/api/slides").body).unwrap();
    assert!(v[1]["score"].is_null(), "{}", v[1]);
}

//! `pbip view` end to end: the real binary serves a `pbip demo` prediction on a free port until it
//! is killed; the tests talk HTTP to it, compare tiles with `pbip read-region` and the mask files,
//! and render the page in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use pbip_testdata::path_str as s;

const PBIP: &str = env!("CARGO_BIN_EXE_pbip");

fn ok(args: &[&str]) -> String {
    pbip_testdata::run_ok(PBIP, args)
}

/// A small `pbip demo` run shared by the tests of this file: its slides and predictions.
struct Demo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Demo {
    fn slides(&self) -> PathBuf {
        self.root.join("data/slides")
    }
    fn predictions(&self) -> PathBuf {
        self.root.join("work/predictions")
    }
    /// Ids of slides with an `ok` prediction.
    fn predicted(&self) -> Vec<String> {
        let csv = std::fs::read_to_string(self.predictions().join("batch_results.csv")).unwrap();
        csv.lines()
            .skip(1)
            .filter(|l| l.contains(",ok,") || l.contains(",skipped,"))
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect()
    }
}

fn demo() -> &'static Demo {
    static D: OnceLock<Demo> = OnceLock::new();
    D.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("demo");
        ok(&[
            "demo",
            "--out",
            s(&root),
            "--size",
            "1024",
            "--slides",
            "4",
            "--train-steps",
            "3",
        ]);
        let d = Demo { _tmp: tmp, root };
        assert!(!d.predicted().is_empty(), "the demo predicted no slide");
        d
    })
}

/// A running `pbip view`; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    /// Starts `pbip view ARGS --port 0` and waits for the URL it prints.
    fn start(args: &[&str], log: &Path) -> Server {
        let mut child = Command::new(PBIP)
            .arg("view")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start pbip view");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        let port = loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "pbip view {args:?} exited before serving\nstdout:\n{seen}\nstderr:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            seen.push_str(&line);
            if let Some(url) = line.strip_prefix("serving ") {
                let url = url.split_whitespace().next().unwrap();
                assert!(url.starts_with("http://127.0.0.1:"), "{url}");
                let port = url
                    .trim_start_matches("http://127.0.0.1:")
                    .trim_end_matches('/');
                break port.parse().unwrap();
            }
        };
        Server {
            child,
            port,
            _stdout: out,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Resp {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(&self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        let error = r
            .headers()
            .get("x-pbip-error")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        Resp {
            status,
            error,
            body,
        }
    }

    /// Status of a request sent byte for byte (no client-side normalisation of `..`).
    fn raw_status(&self, path: &str) -> u16 {
        let mut t = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            t,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut out = Vec::new();
        t.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {text:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    error: Option<String>,
    body: Vec<u8>,
}

fn json(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

fn attr(xml: &str, name: &str) -> u64 {
    let k = format!("{name}=\"");
    let i = xml.find(&k).unwrap_or_else(|| panic!("{name} in {xml}")) + k.len();
    xml[i..].split('"').next().unwrap().parse().unwrap()
}

fn decode_jpeg(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    let px = d.decode().unwrap();
    let (w, h) = d.dimensions().unwrap();
    (w, h, px)
}

/// (width, height, samples, channels) of a PNG, without palette expansion.
fn decode_png(bytes: &[u8], expand: bool) -> (usize, usize, Vec<u8>, usize) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    dec.set_transformations(if expand {
        png::Transformations::EXPAND
    } else {
        png::Transformations::IDENTITY
    });
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0u8; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (
        info.width as usize,
        info.height as usize,
        buf,
        info.color_type.samples(),
    )
}

fn start_demo_server(name: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let d = demo();
    let logs = tempfile::tempdir().unwrap();
    let (slides, pred) = (d.slides(), d.predictions());
    let mut args = vec![s(&slides), "--predictions", s(&pred)];
    args.extend_from_slice(extra);
    let srv = Server::start(&args, &logs.path().join(format!("{name}.log")));
    (srv, logs)
}

#[test]
fn view_serves_the_deepzoom_pyramid_and_tiles_equal_read_region() {
    let d = demo();
    let (srv, tmp) = start_demo_server("dzi", &["--quality", "95"]);
    let id = &d.predicted()[0];
    let slide = d.slides().join(format!("{id}.tif"));
    let dzi = srv.get(&format!("/slides/{id}.dzi"));
    assert_eq!(dzi.status, 200);
    let x = String::from_utf8(dzi.body).unwrap();
    let (w, h) = (attr(&x, "Width"), attr(&x, "Height"));
    assert_eq!((w, h), (1024, 1024), "{x}");
    assert_eq!((attr(&x, "TileSize"), attr(&x, "Overlap")), (254, 1));
    // Levels 0..=10 (1 x 1 .. 1024 x 1024).
    assert_eq!(
        srv.get(&format!("/slides/{id}_files/10/4_4.jpeg")).status,
        200
    );
    assert_eq!(
        srv.get(&format!("/slides/{id}_files/10/5_0.jpeg")).status,
        404
    );
    assert_eq!(
        srv.get(&format!("/slides/{id}_files/11/0_0.jpeg")).status,
        404
    );
    let l0 = srv.get(&format!("/slides/{id}_files/0/0_0.jpeg"));
    assert_eq!(decode_jpeg(&l0.body).0, 1);
    // Tile (1, 2) of the full-resolution level = read-region 253 507 0 256 256.
    let t = srv.get(&format!("/slides/{id}_files/10/1_2.jpeg"));
    assert_eq!((t.status, t.error.as_deref()), (200, None));
    let (tw, th, px) = decode_jpeg(&t.body);
    assert_eq!((tw, th), (256, 256));
    let region = tmp.path().join("region.png");
    ok(&[
        "read-region",
        s(&slide),
        "253",
        "507",
        "0",
        "256",
        "256",
        s(&region),
    ]);
    let (rw, rh, want, ch) = decode_png(&std::fs::read(&region).unwrap(), true);
    assert_eq!((rw, rh, ch), (256, 256, 3));
    let diff: Vec<i32> = px
        .iter()
        .zip(&want)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .collect();
    let mean = diff.iter().sum::<i32>() as f64 / diff.len() as f64;
    // Quality 95: JPEG rounding is small; a one-pixel shift of this texture gives a mean of ~10.
    assert!(mean < 2.0, "mean |tile - read-region| = {mean}");
    assert!(
        diff.iter().filter(|&&d| d > 32).count() * 200 < diff.len(),
        "JPEG rounding only"
    );
    // The slide list.
    let list = json(&srv.get("/api/slides"));
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (e["width"].as_u64(), e["status"].as_str()),
        (Some(1024), Some("ok"))
    );
    assert!((e["mpp"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{e}");
    assert_eq!(e["inference"]["status"], "ok");
}

#[test]
fn view_overlay_tiles_match_the_mask() {
    let d = demo();
    let (srv, _tmp) = start_demo_server("overlay", &[]);
    let id = &d.predicted()[0];
    let dir = d.predictions().join(id);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metadata.json")).unwrap()).unwrap();
    let ds = meta["output_downsample"].as_f64().unwrap() as usize;
    let (mw, mh, mask, ch) = decode_png(
        &std::fs::read(dir.join("segmentation_mask.png")).unwrap(),
        false,
    );
    assert_eq!(ch, 1);
    let detail = json(&srv.get(&format!("/api/slides/{id}")));
    assert_eq!(detail["layers"]["mask"]["available"], true, "{detail}");
    let names: Vec<&str> = detail["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        meta["class_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>()
    );
    // Full resolution (DeepZoom level 10) and the mask's own resolution (downsample `ds`).
    let top = 10usize;
    let at_ds = top - ds.trailing_zeros() as usize;
    for (level, tile_ds, c, r) in [(top, 1usize, 1usize, 2usize), (at_ds, ds, 0, 0)] {
        let t = srv.get(&format!("/overlays/{id}/mask_files/{level}/{c}_{r}.png"));
        assert_eq!((t.status, t.error.as_deref()), (200, None));
        let (tw, th, idx, _) = decode_png(&t.body, false);
        let (x0, y0) = (
            (c * 254).saturating_sub(usize::from(c > 0)),
            (r * 254).saturating_sub(usize::from(r > 0)),
        );
        let mut labelled = 0;
        for ty in 0..th {
            for tx in 0..tw {
                let gx = ((x0 + tx) * tile_ds * 2 + tile_ds) / (2 * ds);
                let gy = ((y0 + ty) * tile_ds * 2 + tile_ds) / (2 * ds);
                let want = if gx < mw && gy < mh {
                    mask[gy * mw + gx]
                } else {
                    255
                };
                assert_eq!(
                    idx[ty * tw + tx],
                    want,
                    "level {level} tile {c}_{r} px {tx},{ty}"
                );
                labelled += usize::from(want != 255);
            }
        }
        assert!(labelled > 0, "level {level}: the tile shows no prediction");
    }
    // Contours and heat maps are served too.
    let g = json(&srv.get(&format!("/api/slides/{id}/geojson")));
    assert_eq!(g["type"], "FeatureCollection");
    let t = srv.get(&format!(
        "/overlays/{id}/confidence-0_files/{at_ds}/0_0.png"
    ));
    assert_eq!((t.status, t.error), (200, None));
}

#[test]
fn view_answers_404_to_unknown_ids_and_paths() {
    let d = demo();
    let (srv, _tmp) = start_demo_server("404", &[]);
    let id = &d.predicted()[0];
    for p in [
        "/slides/nope.dzi".to_string(),
        "/slides/../Cargo.toml".into(),
        "/slides/..%2F..%2Fwork%2Fpredictions%2Fbatch_results.csv".into(),
        format!("/slides/..%2F{id}.dzi"),
        format!("/slides/{id}.tif"),
        "/slides/%2Fetc%2Fpasswd.dzi".into(),
        "/slides//etc/passwd.dzi".into(),
        format!("/slides/{}.dzi", s(&d.slides().join(id))),
        format!("/slides/{id}_files/../../../etc/passwd"),
        format!("/overlays/{id}/../../slides/{id}.dzi"),
        format!("/overlays/{id}/mask.tiff"),
        format!("/overlays/{id}/..%2Fmask.dzi"),
        "/api/slides/..%2F..".into(),
        "/assets/../../Cargo.toml".into(),
        format!("/{id}/metadata.json"),
        "/predictions/".into(),
        "/etc/passwd".into(),
    ] {
        assert_eq!(srv.raw_status(&p), 404, "{p}");
    }
}

#[test]
fn view_reports_a_corrupt_slide_and_serves_the_others() {
    let d = demo();
    let tmp = tempfile::tempdir().unwrap();
    let slides = tmp.path().join("slides");
    std::fs::create_dir(&slides).unwrap();
    let mut good = Vec::new();
    for e in std::fs::read_dir(d.slides()).unwrap().take(2) {
        let p = e.unwrap().path();
        std::fs::copy(&p, slides.join(p.file_name().unwrap())).unwrap();
        good.push(p.file_stem().unwrap().to_string_lossy().into_owned());
    }
    // Truncated TIFF: a valid header, then nothing.
    let bytes = std::fs::read(d.slides().join(format!("{}.tif", good[0]))).unwrap();
    std::fs::write(slides.join("broken.tif"), &bytes[..64]).unwrap();
    let srv = Server::start(&[s(&slides)], &tmp.path().join("view.log"));
    let list = json(&srv.get("/api/slides"));
    let broken = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "broken")
        .unwrap();
    assert_eq!(broken["status"], "error");
    assert!(
        broken["error"].as_str().unwrap().contains("broken.tif"),
        "{broken}"
    );
    let r = srv.get("/slides/broken.dzi");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.body).contains("broken.tif"));
    for id in &good {
        assert_eq!(srv.get(&format!("/slides/{id}.dzi")).status, 200);
        let t = srv.get(&format!("/slides/{id}_files/9/1_1.jpeg"));
        assert_eq!((t.status, t.error), (200, None));
        assert_eq!(decode_jpeg(&t.body).0, 256);
    }
    // No predictions given: no overlays.
    assert_eq!(
        srv.get(&format!("/overlays/{}/mask.dzi", good[0])).status,
        404
    );
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|c| {
            let o = Command::new(c).arg("--version").output().ok()?;
            o.status.success().then(|| PathBuf::from(c))
        })
}

/// Headless Chromium on `url`: the DOM after its scripts ran (`shot` None), or a screenshot into `shot`.
fn run_chromium(bin: &Path, profile: &Path, url: &str, shot: Option<&Path>) -> String {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        // A 1400 x 900 page from the start: without --kiosk and --screen-info, headless Chromium
        // lays the page out smaller and resizes it only when it takes the screenshot, after the
        // viewer has drawn.
        "--kiosk",
        "--screen-info={1400x900}",
        "--window-size=1400,900",
        // Virtual time runs while the page is idle; tile requests hold it, so the page gets
        // every tile it asks for before the dump / screenshot.
        "--virtual-time-budget=30000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(p) => c.arg(format!("--screenshot={}", p.display())),
        None => c.arg("--dump-dom"),
    };
    let o = c
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn view_page_renders_slide_overlay_and_legend_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED view_page_renders_slide_overlay_and_legend_in_headless_chromium: chromium is not installed (.ci/run installs it)"
        );
        return;
    };
    let d = demo();
    let (srv, tmp) = start_demo_server("chromium", &[]);
    let id = d.predicted()[0].clone();
    let detail = json(&srv.get(&format!("/api/slides/{id}")));
    let classes = detail["classes"].as_array().unwrap().clone();
    let color = |c: &serde_json::Value| -> [u8; 3] {
        let v: Vec<u8> = c["color"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        [v[0], v[1], v[2]]
    };
    let url = srv.url(&format!("/?slide={id}&opacity=1"));
    // The page's state after its tiles have loaded. Headless Chromium dumps the page when its
    // virtual-time budget is spent, and virtual time does not always wait for every tile request
    // and decode of OpenSeadragon (measured: 4 to 6 runs in 8 see every layer loaded), so a run
    // whose page still says "loading" is repeated in a fresh profile.
    let attempts = 8;
    let mut dom = String::new();
    for a in 0..attempts {
        dom = run_chromium(
            &bin,
            &tmp.path().join(format!("profile-dom-{a}")),
            &url,
            None,
        );
        if dom.contains("data-state=\"ready\"") {
            break;
        }
    }
    assert!(
        dom.contains("data-state=\"ready\""),
        "page not ready after {attempts} headless runs:\n{dom}"
    );
    for c in &classes {
        assert!(
            dom.contains(&format!(
                "<span class=\"name\">{}</span>",
                c["name"].as_str().unwrap()
            )),
            "legend lacks {c}:\n{dom}"
        );
    }
    assert!(
        dom.contains(&format!("<td title=\"{id}.tif\">{id}</td>")),
        "slide list:\n{dom}"
    );
    // Screenshots (repeated like the DOM dump while the tiles are not all drawn yet): the mask
    // at full opacity shows the overlay colours and the legend; with the mask off, the slide.
    let near = |a: [u8; 3], b: [u8; 3]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (i32::from(*x) - i32::from(y)).abs() <= 6)
    };
    struct Shot {
        w: usize,
        h: usize,
        px: Vec<u8>,
        ch: usize,
    }
    impl Shot {
        fn at(&self, x: usize, y: usize) -> [u8; 3] {
            let i = (y * self.w + x) * self.ch;
            [self.px[i], self.px[i + 1], self.px[i + 2]]
        }
        /// Pixels of the viewer area (right of the 330 px sidebar, left of the 250 px layer
        /// panel), every second row and column.
        fn viewer_pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
            (0..self.h)
                .step_by(2)
                .flat_map(move |y| (340..self.w - 250).step_by(2).map(move |x| self.at(x, y)))
        }
    }
    let shoot = |url: &str, tag: &str, done: &dyn Fn(&Shot) -> bool| -> Shot {
        let file = tmp.path().join(format!("{tag}.png"));
        for a in 0..attempts {
            run_chromium(
                &bin,
                &tmp.path().join(format!("profile-{tag}-{a}")),
                url,
                Some(&file),
            );
            let (w, h, px, ch) = decode_png(&std::fs::read(&file).unwrap(), true);
            assert!(ch >= 3);
            let shot = Shot { w, h, px, ch };
            if done(&shot) || a + 1 == attempts {
                return shot;
            }
        }
        unreachable!("attempts > 0")
    };
    // H&E-like tissue of the synthetic slides: pink / purple, not grey, not white.
    let is_tissue = |p: [u8; 3]| {
        p[0] > 120 && p[2] > 100 && i32::from(p[0]) - i32::from(p[1]) > 40 && p[1] < 200
    };
    let overlay_of = |shot: &Shot| -> Vec<usize> {
        let mut n = vec![0usize; classes.len()];
        for p in shot.viewer_pixels() {
            for (k, c) in classes.iter().enumerate() {
                n[k] += usize::from(near(p, color(c)));
            }
        }
        n
    };
    let tissue_of = |shot: &Shot| shot.viewer_pixels().filter(|&p| is_tissue(p)).count();
    let masked = shoot(&url, "mask", &|s| overlay_of(s).iter().sum::<usize>() > 500);
    let plain = shoot(&srv.url(&format!("/?slide={id}&mask=0")), "slide", &|s| {
        tissue_of(s) > 200
    });
    let overlay = overlay_of(&masked);
    let tissue = tissue_of(&plain);
    let (w, h) = (masked.w, masked.h);
    let at = |x: usize, y: usize| masked.at(x, y);
    let shot = tmp.path().join("mask.png");
    let labelled: usize = overlay.iter().sum();
    assert!(
        labelled > 500,
        "no overlay colour in the viewer: {overlay:?} pixels per class"
    );
    assert!(tissue > 200, "no slide pixels visible ({tissue})");
    // Legend: a swatch of every class in the layer panel (top right).
    for c in &classes {
        let want = color(c);
        let n = (0..400.min(h))
            .flat_map(|y| (w - 250..w).map(move |x| (x, y)))
            .filter(|&(x, y)| near(at(x, y), want))
            .count();
        assert!(n >= 100, "legend swatch of {c} missing ({n} px)");
    }
    if let Ok(keep) = std::env::var("PBIP_KEEP_VIEW_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

//! Stage 5 (`infer`) tests on synthetic slides: stitching of a known function, block-wise ==
//! single-block, outputs (mask.tiff through the slide reader, GeoJSON rasterised back), resume
//! after an interrupted run, shards, and a real (randomly initialised) checkpoint end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pbip_config::Config;
use pbip_pipeline::PipelineError;
use pbip_pipeline::stage5_infer::slide::{
    self as s5, InferSettings, Placement, StitchTarget, labels_from_maps, predict_and_stitch,
};
use pbip_pipeline::stage5_infer::{
    self as infer, InferOptions, PatchMaps, PatchPredictor, PatchRef, SlideSource, merge_results,
    run_with_predictor,
};
use pbip_post::stitch::{PatchFootprint, Weighting};
use pbip_slide::{OpenOptions, Origin, PatchGeometry, Slide};

struct Synth {
    _dir: tempfile::TempDir,
    root: PathBuf,
    summary: pbip_synth::SynthSummary,
}

/// One small synthetic dataset shared by every test (4 slides of 1024 px, two tumour, two benign).
fn synth() -> &'static Synth {
    static S: OnceLock<Synth> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let opts = pbip_synth::SynthOptions {
            num_slides: 4,
            size_px: 1024,
            seed: 3,
            ..pbip_synth::SynthOptions::new(&root)
        };
        let summary = pbip_synth::generate(&opts).expect("synth");
        Synth {
            _dir: dir,
            root,
            summary,
        }
    })
}

fn config(extra: &[&str]) -> Config {
    let s = synth();
    let mut o: Vec<String> = vec![
        "inference.use_crf=false".into(),
        "inference.output_downsample=8".into(),
        "inference.batch_size=8".into(),
    ];
    o.extend(extra.iter().map(|x| x.to_string()));
    Config::load(&s.summary.config_path, &o).expect("config")
}

/// Reads an 8-bit PNG (gray or indexed) as raw values.
fn read_png_u8(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open png"),
    ));
    let mut r = dec.read_info().expect("png info");
    let mut buf = vec![0u8; r.output_buffer_size().expect("size")];
    let fi = r.next_frame(&mut buf).expect("frame");
    buf.truncate(fi.buffer_size());
    (fi.width as usize, fi.height as usize, buf)
}

/// GT masks of the synthetic slides (level-0 u8, 255 = background).
/// Width, height and pixels of a mask.
type Mask = (usize, usize, Vec<u8>);

fn gt_masks() -> &'static BTreeMap<String, Mask> {
    static M: OnceLock<BTreeMap<String, Mask>> = OnceLock::new();
    M.get_or_init(|| {
        synth()
            .summary
            .slides
            .iter()
            .map(|s| (s.name.clone(), read_png_u8(&s.mask_path)))
            .collect()
    })
}

/// "Model" that outputs the GT at each map pixel centre: tumour 0.9/benign 0.1 on tumour, the
/// reverse on benign tissue, 0.5/0.4 (benign wins) off tissue. Map 16 x 16 per patch.
struct GtPredictor {
    calls: usize,
    fail_on_slide: Option<String>,
}

impl GtPredictor {
    fn new() -> Self {
        Self {
            calls: 0,
            fail_on_slide: None,
        }
    }

    /// A predictor that fails on the slide `name`.
    fn failing_on(name: String) -> Self {
        Self {
            calls: 0,
            fail_on_slide: Some(name),
        }
    }
}

impl PatchPredictor for GtPredictor {
    fn num_classes(&self) -> usize {
        2
    }
    fn predict(&mut self, patches: &[PatchRef<'_>]) -> Result<PatchMaps, PipelineError> {
        self.calls += 1;
        let m = 16usize;
        let mut data = Vec::with_capacity(patches.len() * 2 * m * m);
        for p in patches {
            if self.fail_on_slide.as_deref() == Some(p.slide_name) {
                return Err(PipelineError::Data {
                    stage: "test",
                    message: "simulated crash".into(),
                });
            }
            let (w, h, gt) = &gt_masks()[p.slide_name];
            let step = p.size_lv0_px / m as f64;
            let mut t = vec![0f32; m * m];
            for v in 0..m {
                for u in 0..m {
                    let x = (p.x_lv0 as f64 + (u as f64 + 0.5) * step) as usize;
                    let y = (p.y_lv0 as f64 + (v as f64 + 0.5) * step) as usize;
                    let g = if x < *w && y < *h { gt[y * w + x] } else { 255 };
                    t[v * m + u] = match g {
                        1 => 0.9,
                        0 => 0.1,
                        _ => 0.4,
                    };
                }
            }
            data.extend(t.iter().map(|v| if *v == 0.4 { 0.5 } else { 1.0 - v }));
            data.extend(t);
        }
        Ok(PatchMaps {
            batch: patches.len(),
            num_classes: 2,
            height_px: m,
            width_px: m,
            data,
        })
    }
}

/// "Model" outputting a known function of level-0 position at its map pixel centres.
struct FnPredictor {
    map_px: usize,
}

fn known(k: usize, x: f64, y: f64) -> f32 {
    match k {
        0 => (0.2 + 4e-4 * x + 3e-4 * y) as f32,
        _ => (1.0 - 2e-4 * x + 5e-4 * y) as f32,
    }
}

impl PatchPredictor for FnPredictor {
    fn num_classes(&self) -> usize {
        2
    }
    fn predict(&mut self, patches: &[PatchRef<'_>]) -> Result<PatchMaps, PipelineError> {
        let m = self.map_px;
        let mut data = Vec::new();
        for p in patches {
            let step = p.size_lv0_px / m as f64;
            for k in 0..2 {
                for v in 0..m {
                    for u in 0..m {
                        data.push(known(
                            k,
                            p.x_lv0 as f64 + (u as f64 + 0.5) * step,
                            p.y_lv0 as f64 + (v as f64 + 0.5) * step,
                        ));
                    }
                }
            }
        }
        Ok(PatchMaps {
            batch: patches.len(),
            num_classes: 2,
            height_px: m,
            width_px: m,
            data,
        })
    }
}

fn open(p: &Path) -> Slide {
    Slide::open(p, &OpenOptions::default()).expect("open slide")
}

/// A grid of `size` lv0-px patches with `stride` covering the whole slide.
fn grid(w: u64, h: u64, size: u32, stride: usize) -> Placement {
    let mut footprints = Vec::new();
    let mut geometry = Vec::new();
    for y in (0..h as i64).step_by(stride) {
        for x in (0..w as i64).step_by(stride) {
            footprints.push(PatchFootprint {
                x_lv0: x,
                y_lv0: y,
                size_lv0_px: f64::from(size),
            });
            geometry.push(PatchGeometry {
                level: 0,
                read_size_px: size,
                out_size_px: 32,
                origin: Origin::TopLeft,
            });
        }
    }
    Placement {
        footprints,
        geometry,
        source: "test".into(),
        tiling: None,
    }
}

fn settings(cfg: &Config, weighting: Weighting, block: usize) -> InferSettings {
    let mut s = InferSettings::from_config(cfg).expect("settings");
    s.patch_size_px = 32;
    s.weighting = weighting;
    s.block_size_px = block;
    s
}

#[test]
fn stitched_known_function_both_weightings_no_seams() {
    let sl = &synth().summary.slides[0];
    let slide = open(&sl.slide_path);
    let (w, h) = slide.dimensions();
    let cfg = config(&[]);
    let ds = 8.0;
    // Patch 256 lv0 px, stride 128 (50 % overlap). Map 32 px: map pixel centres coincide with
    // output pixel centres (exact); map 24 px: bilinear between map pixels + edge clamping.
    for (map_px, tol) in [(32usize, 1e-5f32), (24, 6e-3)] {
        for weighting in [Weighting::Mean, Weighting::Gaussian { sigma_rel: 0.125 }] {
            let s = settings(&cfg, weighting, 37);
            let placement = grid(w, h, 256, 128);
            let st = predict_and_stitch(
                &slide,
                &sl.name,
                &placement,
                &mut FnPredictor { map_px },
                &s,
                &StitchTarget {
                    downsample: ds,
                    tissue: None,
                    scratch: None,
                },
                &indicatif::ProgressBar::hidden(),
            )
            .expect("stitch");
            let keep = st.keep.to_vec().expect("keep");
            let confidence = st.confidence.to_vec().expect("confidence");
            assert_eq!(
                (st.width_px, st.height_px),
                (
                    (w as f64 / ds).ceil() as usize,
                    (h as f64 / ds).ceil() as usize
                )
            );
            let n = st.width_px * st.height_px;
            let mut max_err = 0f32;
            for k in 0..2 {
                for j in 0..st.height_px {
                    for i in 0..st.width_px {
                        assert_eq!(keep[j * st.width_px + i], 1, "pixel ({i},{j}) has no data");
                        let want = known(k, (i as f64 + 0.5) * ds, (j as f64 + 0.5) * ds);
                        max_err =
                            max_err.max((confidence[k * n + j * st.width_px + i] - want).abs());
                    }
                }
            }
            assert!(
                max_err <= tol,
                "map {map_px} {weighting:?}: max error {max_err} > {tol}"
            );
        }
    }
}

#[test]
fn blockwise_equals_single_block() {
    let sl = &synth().summary.slides[1];
    let slide = open(&sl.slide_path);
    let (w, h) = slide.dimensions();
    for extra in [
        &["inference.use_crf=false"][..],
        &["inference.use_crf=true", "inference.crf.sxy_bilateral=10"][..],
    ] {
        let cfg = config(extra);
        let placement = grid(w, h, 224, 112);
        let mut results = Vec::new();
        let scratch = tempfile::tempdir().expect("scratch");
        // One block / one tile in memory, vs small stitch blocks, CRF tiles and post-processing
        // tiles with the maps in scratch files.
        for (block, crf_block, tile, dir) in [
            (4096usize, 4096usize, 4096usize, None),
            (13, 40, 17, Some(scratch.path())),
        ] {
            let mut s = settings(&cfg, Weighting::Gaussian { sigma_rel: 0.125 }, block);
            s.crf_block_px = crf_block;
            s.tile_px = tile;
            let st = predict_and_stitch(
                &slide,
                &sl.name,
                &placement,
                &mut GtPredictor::new(),
                &s,
                &StitchTarget {
                    downsample: 8.0,
                    tissue: None,
                    scratch: dir,
                },
                &indicatif::ProgressBar::hidden(),
            )
            .expect("stitch");
            let labels = labels_from_maps(&slide, &st, &s, 20, dir)
                .expect("labels")
                .to_vec()
                .expect("labels");
            let maps = (
                st.confidence.to_vec().expect("confidence"),
                st.keep.to_vec().expect("keep"),
            );
            results.push((maps, labels));
        }
        assert_eq!(
            results[0].0, results[1].0,
            "stitched maps differ between block sizes"
        );
        if extra.len() == 1 {
            assert_eq!(
                results[0].1, results[1].1,
                "masks differ with and without block-wise processing"
            );
        } else {
            // CRF tiles with halos: nearly identical (halo = 3 sxy).
            let diff = results[0]
                .1
                .iter()
                .zip(&results[1].1)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                diff as f64 <= 0.002 * results[0].1.len() as f64,
                "{diff} CRF labels differ"
            );
        }
    }
}

fn opts(out: &Path, shard: Option<(usize, usize)>) -> InferOptions {
    InferOptions {
        source: SlideSource::Dir(synth().root.join("slides")),
        coordinates_dir: None,
        output_dir: Some(out.to_path_buf()),
        overwrite: false,
        shard,
        run: Default::default(),
    }
}

/// A run of `cfg` into `out` (all slides, or one shard) with a fresh [`GtPredictor`] and the model
/// identity `model`; panics with `what` when the run fails.
fn run_gt(
    cfg: &Config,
    out: &Path,
    shard: Option<(usize, usize)>,
    model: &str,
    what: &str,
) -> infer::InferSummary {
    run_with_predictor(cfg, &opts(out, shard), &mut GtPredictor::new(), model, "v").expect(what)
}

/// Every file under `dir` (relative path -> bytes), run-dependent metadata fields nulled. Batch
/// results and the lock files (named after the batch results file) depend on how the run was split.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    pbip_testdata::output_files(dir, &["batch_results", ".locks"])
}

/// Even-odd point-in-polygon over all rings of a GeoJSON geometry.
fn inside(rings: &[Vec<(f64, f64)>], x: f64, y: f64) -> bool {
    let mut c = false;
    for r in rings {
        for i in 0..r.len().saturating_sub(1) {
            let ((x1, y1), (x2, y2)) = (r[i], r[i + 1]);
            if (y1 > y) != (y2 > y) && x < x1 + (y - y1) * (x2 - x1) / (y2 - y1) {
                c = !c;
            }
        }
    }
    c
}

fn rings_of(geom: &serde_json::Value) -> Vec<Vec<(f64, f64)>> {
    let ring = |r: &serde_json::Value| -> Vec<(f64, f64)> {
        r.as_array()
            .expect("ring")
            .iter()
            .map(|p| (p[0].as_f64().expect("x"), p[1].as_f64().expect("y")))
            .collect()
    };
    let polys: Vec<&serde_json::Value> = match geom["type"].as_str() {
        Some("Polygon") => vec![&geom["coordinates"]],
        Some("MultiPolygon") => geom["coordinates"]
            .as_array()
            .expect("multi")
            .iter()
            .collect(),
        other => panic!("unexpected geometry {other:?}"),
    };
    polys
        .iter()
        .flat_map(|p| p.as_array().expect("poly").iter().map(ring))
        .collect()
}

#[test]
fn end_to_end_outputs_readback_and_accuracy() {
    let out = tempfile::tempdir().expect("tmp");
    let cfg = config(&["inference.use_crf=true"]);
    let mut p = GtPredictor::new();
    let sum = run_with_predictor(
        &cfg,
        &opts(out.path(), None),
        &mut p,
        "gt-predictor",
        "test",
    )
    .expect("run");
    assert_eq!(sum.failed, 0);
    assert_eq!(sum.processed, 4);
    let rows = infer::read_batch_results(&sum.batch_results).expect("batch results");
    assert_eq!(rows.len(), 4);
    let ds = 8.0;
    for sl in &synth().summary.slides {
        let dir = sum.predictions_dir.join(&sl.name);
        let (mw, mh, mask) = read_png_u8(&dir.join(s5::MASK_PNG));
        // mask.tiff through the slide reader equals the PNG.
        let t = open(&dir.join(s5::MASK_TIFF));
        assert_eq!(t.dimensions(), (mw as u64, mh as u64));
        let img = t
            .read_region(0, 0, 0, mw as u32, mh as u32)
            .expect("read tiff");
        for (i, &m) in mask.iter().enumerate().take(mw * mh) {
            assert_eq!(img.data[3 * i], m, "mask.tiff differs at {i}");
        }
        let mpp = t.mpp().expect("mask.tiff mpp").0;
        assert!((mpp - 0.5 * ds).abs() < 1e-3, "mask.tiff mpp {mpp}");
        // GeoJSON rasterises back to the mask.
        let gj: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{}.geojson", sl.name))).expect("geojson"),
        )
        .expect("parse");
        assert_eq!(gj["type"], "FeatureCollection");
        for f in gj["features"].as_array().expect("features") {
            let name = f["properties"]["classification"]["name"]
                .as_str()
                .expect("name");
            let k = ["benign", "tumor"]
                .iter()
                .position(|c| *c == name)
                .expect("class") as u8;
            let rings = rings_of(&f["geometry"]);
            let (mut inter, mut uni) = (0usize, 0usize);
            for j in 0..mh {
                for i in 0..mw {
                    let a = mask[j * mw + i] == k;
                    let b = inside(&rings, (i as f64 + 0.5) * ds, (j as f64 + 0.5) * ds);
                    inter += usize::from(a && b);
                    uni += usize::from(a || b);
                }
            }
            assert!(
                uni == 0 || inter as f64 / uni as f64 >= 0.99,
                "{} class {k}: IoU {}",
                sl.name,
                inter as f64 / uni as f64
            );
        }
        // Tumour IoU against the GT at the output level (nearest GT sample at pixel centres).
        let (gw, _, gt) = &gt_masks()[&sl.name];
        let (mut inter, mut uni, mut gt_t) = (0usize, 0usize, 0usize);
        for j in 0..mh {
            for i in 0..mw {
                let g = gt
                    [((j as f64 + 0.5) * ds) as usize * gw + ((i as f64 + 0.5) * ds) as usize]
                    == 1;
                let m = mask[j * mw + i] == 1;
                inter += usize::from(g && m);
                uni += usize::from(g || m);
                gt_t += usize::from(g);
            }
        }
        if sl.label == 1 {
            assert!(gt_t > 0);
            assert!(
                inter as f64 / uni as f64 > 0.8,
                "{}: tumour IoU {}",
                sl.name,
                inter as f64 / uni as f64
            );
        } else {
            assert_eq!(uni, 0, "{}: benign slide has tumour pixels", sl.name);
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(s5::METADATA_JSON)).expect("meta"))
                .expect("json");
        for key in [
            "wsi_name",
            "model_version",
            "num_patches",
            "processing_time_sec",
            "class_order",
            "post_processing",
            "timestamp",
            "mpp",
        ] {
            assert!(!meta[key].is_null(), "metadata lacks {key}");
        }
        assert_eq!(meta["coordinate_source"], "tiled");
        assert!(dir.join(format!("{}.coordinates.npz", sl.name)).is_file());
        let npz = std::fs::read(dir.join(s5::CONFIDENCE_NPZ)).expect("npz");
        assert_eq!(&npz[..4], b"PK\x03\x04");
    }
    // A rerun skips everything.
    let calls = p.calls;
    let again = run_with_predictor(
        &cfg,
        &opts(out.path(), None),
        &mut p,
        "gt-predictor",
        "test",
    )
    .expect("rerun");
    assert_eq!((again.skipped, again.processed), (4, 0));
    assert_eq!(p.calls, calls, "a rerun must not predict complete slides");
}

#[test]
fn resume_after_interrupted_run_gives_identical_outputs() {
    let cfg = config(&[]);
    let full = tempfile::tempdir().expect("tmp");
    run_gt(&cfg, full.path(), None, "m", "full");
    let part = tempfile::tempdir().expect("tmp");
    let names: Vec<String> = synth()
        .summary
        .slides
        .iter()
        .map(|s| s.name.clone())
        .collect();
    // First run dies on slide 2 (recorded, others go on), and a killed earlier run left a
    // half-written temporary folder and an incomplete output folder behind.
    let failed = run_with_predictor(
        &cfg,
        &opts(part.path(), None),
        &mut GtPredictor::failing_on(names[2].clone()),
        "m",
        "v",
    )
    .expect("run");
    assert_eq!(failed.failed, 1);
    let row = failed
        .rows
        .iter()
        .find(|r| r.wsi_name == names[2])
        .expect("row");
    assert_eq!(row.status, "failed");
    assert!(row.error.contains("simulated crash"));
    let pred = part.path().join("predictions");
    std::fs::create_dir_all(pred.join(format!(".{}.partial", names[3]))).expect("mk");
    std::fs::write(
        pred.join(format!(".{}.partial", names[3])).join("junk"),
        b"x",
    )
    .expect("w");
    std::fs::remove_file(pred.join(&names[3]).join(s5::METADATA_JSON)).expect("rm");
    std::fs::write(pred.join(&names[3]).join(s5::MASK_PNG), b"truncated").expect("w");
    let keep = std::fs::metadata(pred.join(&names[0]).join(s5::MASK_PNG))
        .expect("m")
        .modified()
        .expect("mtime");
    let resumed = run_gt(&cfg, part.path(), None, "m", "resume");
    assert_eq!(
        (resumed.failed, resumed.skipped, resumed.processed),
        (0, 2, 2)
    );
    let again = std::fs::metadata(pred.join(&names[0]).join(s5::MASK_PNG))
        .expect("m")
        .modified()
        .expect("mtime");
    assert_eq!(keep, again, "complete slide was rewritten");
    assert_eq!(
        files_of(&full.path().join("predictions")),
        files_of(&pred),
        "resumed outputs differ from an uninterrupted run"
    );
    // Another model identity redoes everything.
    let other = run_gt(&cfg, part.path(), None, "m2", "other");
    assert_eq!(other.processed, 4);
}

#[test]
fn shards_are_disjoint_and_their_union_is_the_full_run() {
    let cfg = config(&["inference.post_processing.edge_refinement=false"]);
    let full = tempfile::tempdir().expect("tmp");
    run_gt(&cfg, full.path(), None, "m", "full");
    let sh = tempfile::tempdir().expect("tmp");
    let mut seen = Vec::new();
    for i in 0..3 {
        let s = run_gt(&cfg, sh.path(), Some((i, 3)), "m", "shard");
        assert!(
            s.batch_results
                .ends_with(format!("batch_results.shard-{i:04}-of-0003.csv"))
        );
        seen.extend(s.rows.iter().map(|r| r.wsi_name.clone()));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a slide ran in two shards");
    let merged = merge_results(&sh.path().join("predictions")).expect("merge");
    let all: Vec<String> = synth()
        .summary
        .slides
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        merged
            .iter()
            .map(|r| r.wsi_name.clone())
            .collect::<Vec<_>>(),
        all
    );
    assert_eq!(
        files_of(&full.path().join("predictions")),
        files_of(&sh.path().join("predictions"))
    );
    assert!(infer::shard_from_env(Some(3), Some(3)).is_err());
    assert_eq!(
        infer::shard_from_env(Some(1), Some(3)).expect("shard"),
        Some((1, 3))
    );
}

#[test]
fn manifest_and_real_checkpoint_end_to_end() {
    use burn::tensor::Device;
    use pbip_model::{ClassNet, ClassNetConfig, HostTensor};
    let out = tempfile::tempdir().expect("tmp");
    let device = Device::flex();
    let ncfg = ClassNetConfig::new("mit_b0", [4, 2, 2, 1], vec![1, 1]).expect("cfg");
    let protos = HostTensor {
        shape: vec![2, 512],
        data: (0..1024).map(|i| if (i % 512) % 2 == i / 512 { 0.0625 } else { -0.0625 } as f32).collect(),
    };
    let model = ClassNet::init(&ncfg, &protos, 0, &device).expect("init");
    let ckpt = out.path().join("best.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("gate_threshold".to_string(), "0.5".to_string());
    meta.insert("epoch".to_string(), "3".to_string());
    model.save_safetensors(&ckpt, &ncfg, &meta).expect("save");
    let sl = &synth().summary.slides[0];
    let manifest = out.path().join("manifest.csv");
    std::fs::write(
        &manifest,
        format!(
            "sample_id,image_path,mpp\nmy_slide,{},0.5\n",
            sl.slide_path.display()
        ),
    )
    .expect("w");
    let cfg = config(&[
        "inference.patch_size=64",
        "inference.batch_size=16",
        "model.backbone=mit_b0",
    ]);
    let o = InferOptions {
        source: SlideSource::Manifest(manifest),
        ..opts(out.path(), None)
    };
    let sum = infer::run(&cfg, &ckpt, &o).expect("run");
    assert_eq!(sum.failed, 0, "{:?}", sum.rows);
    assert_eq!(sum.rows[0].model_version, "best_epoch_3");
    let dir = sum.predictions_dir.join("my_slide");
    let (mw, mh, mask) = read_png_u8(&dir.join(s5::MASK_PNG));
    assert_eq!((mw, mh), (128, 128));
    assert!(mask.iter().any(|&v| v != 255), "no tissue predicted");
    assert!(mask.iter().all(|&v| v <= 1 || v == 255));
}

//! Stage 1 from precomputed slide2vec tile embeddings (`prototypes.precomputed_features`) on
//! synthetic slides: stages 0 → 1 → 2 → 3 with features written in slide2vec's layouts, and the
//! refusals (another model, another width, a coordinate without a tile).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::Device;
use pbip_config::Config;
use pbip_coords::{Coordinates, TilingMeta};
use pbip_encoder::{Vit, VitConfig};
use pbip_pipeline::stage1_embed_prototypes as s1;
use pbip_pipeline::stage3_train::{self as s3, TrainOptions};
use pbip_pipeline::{Freshness, RunOptions, run_stage, stage_freshness};
use sha2::Digest as _;

/// The configured encoder: a small ViT whose class token is the 32-d feature, named like a
/// slide2vec model.
const MODEL: &str = "tiny-path";
const DIM: usize = 32;
const ARCH: &str = "{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 16, global_pool: token}";

/// Synthetic slides, the stage-0 prototype coordinates (built once) and a weights file of the
/// configured ViT.
struct Base {
    _dir: tempfile::TempDir,
    data: PathBuf,
    prototypes: PathBuf,
    weights: PathBuf,
    /// Slide stem → class index (labels.csv).
    labels: HashMap<String, usize>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let opts = pbip_synth::SynthOptions {
            num_slides: 8,
            size_px: 1024,
            seed: 11,
            thumbnails: false,
            ..pbip_synth::SynthOptions::new(&data)
        };
        pbip_synth::generate(&opts).unwrap();
        let work = dir.path().join("work");
        let cfg = config(&data, &work, None, &[]);
        run_stage(0, &cfg, &RunOptions::default()).unwrap();

        let vit = VitConfig::from_json(&yaml_to_json(ARCH)).unwrap();
        assert_eq!(vit.output_dim(), DIM);
        let model = Vit::random(&vit, 5, &Device::flex()).unwrap();
        let weights = dir.path().join("tiny-path.safetensors");
        pbip_weights::write_safetensors_atomic(
            &weights,
            &model.to_tensor_map("").unwrap(),
            &Default::default(),
        )
        .unwrap();

        let text = std::fs::read_to_string(data.join("labels.csv")).unwrap();
        let labels = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .map(|(n, c)| (n.trim().to_string(), c.trim().parse().unwrap()))
            .collect();
        Base {
            prototypes: work.join("prototype_coordinates"),
            data,
            weights,
            labels,
            _dir: dir,
        }
    })
}

fn yaml_to_json(yaml: &str) -> String {
    let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    v.to_string()
}

/// Tiny CPU settings for all stages, the ViT encoder, and (with `s2v`) precomputed features.
fn config(data: &Path, work: &Path, s2v: Option<&Path>, extra: &[String]) -> Config {
    let mut o: Vec<String> = [
        "device=cpu",
        "model.backbone=mit_b0",
        "patch_size=64",
        "prototypes.samples_per_wsi=6",
        "prototypes.k_list=[2,2]",
        "prototypes.kmeans.n_init=2",
        "prototypes.encoder.kind=vit",
        "training.batch_size=2",
        "training.epochs=1",
        "training.iterations_per_epoch=2",
        "training.validation_interval=2",
        "training.checkpoint_interval=2",
        "training.log_interval=1",
        "training.num_workers=1",
        "training.loss_weights.contrastive=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.push(format!("prototypes.encoder.vit.arch={ARCH}"));
    o.push(format!("prototypes.encoder.name={MODEL}"));
    o.push(format!("paths.work_dir={}", work.display()));
    if let Some(d) = s2v {
        o.push(format!(
            "prototypes.precomputed_features.dir={}",
            d.display()
        ));
    }
    o.extend(extra.iter().cloned());
    Config::load(&data.join("config.yaml"), &o).unwrap()
}

/// A work dir holding a copy of the stage-0 outputs.
fn work_with_prototypes(root: &Path) -> PathBuf {
    let work = root.join("work");
    let dst = work.join("prototype_coordinates");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&base().prototypes).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    work
}

/// The feature slide2vec "computed" for tile (x, y) of slide `slide` of class `class`: the class
/// direction (2 on component `class`) plus a small pattern of the tile, every value a multiple of
/// 1/128 below 3 (exact in fp16).
fn feature(slide: usize, class: usize, x: i64, y: i64, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| {
            let k = (x / 224 + 3 * (y / 224) + 7 * j as i64 + 5 * slide as i64).rem_euclid(11);
            k as f32 / 128.0 + if j == class { 2.0 } else { 0.0 }
        })
        .collect()
}

/// `torch.save(tensor, path)` of a row-major `[rows, cols]` tensor: torch's zip layout
/// (`<name>/data.pkl`, `<name>/data/0`, `<name>/byteorder`, `<name>/version`) with the pickle
/// torch writes for a bare tensor (`_rebuild_tensor_v2` of a typed storage).
fn write_torch_tensor(path: &Path, rows: usize, cols: usize, data: &[f32], fp16: bool) {
    fn unicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: usize) {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
    assert_eq!(data.len(), rows * cols);
    let (storage, bytes): (&str, Vec<u8>) = if fp16 {
        let b = data
            .iter()
            .flat_map(|&v| npyz::half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        ("HalfStorage", b)
    } else {
        (
            "FloatStorage",
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    };
    let mut p = vec![0x80, 0x02];
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend_from_slice(format!("ctorch\n{storage}\n").as_bytes());
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    int(&mut p, rows * cols);
    p.extend_from_slice(b"tQK\x00");
    int(&mut p, rows);
    int(&mut p, cols);
    p.push(0x86);
    int(&mut p, cols);
    p.extend_from_slice(b"K\x01\x86\x89ccollections\nOrderedDict\n)RtR.");

    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (entry, content) in [
        ("data.pkl", p),
        ("byteorder", b"little".to_vec()),
        ("data/0", bytes),
        ("version", b"3\n".to_vec()),
    ] {
        zip.start_file(format!("{name}/{entry}"), opts).unwrap();
        zip.write_all(&content).unwrap();
    }
    zip.finish().unwrap();
}

/// Which slide2vec layout to write, and how to spoil it.
#[derive(Clone)]
struct Slide2vec {
    /// Current layout (`tile_embeddings/` + `tiles/` + `.meta.json`) or 1.x (`features/` +
    /// `coordinates/` + `config.yaml`).
    current: bool,
    /// Model name recorded by slide2vec.
    model: String,
    /// Feature width.
    dim: usize,
    fp16: bool,
    /// Added to every tile's x (tiles on another grid).
    shift_x: i64,
    /// Tiles (x, y) of slide `.0` left out.
    drop: Option<(String, Vec<(i64, i64)>)>,
    /// Tile footprint in level-0 px recorded with the tiles.
    lv0: u32,
}

impl Default for Slide2vec {
    fn default() -> Self {
        Slide2vec {
            current: true,
            model: MODEL.into(),
            dim: DIM,
            fp16: true,
            shift_x: 0,
            drop: None,
            lv0: 224,
        }
    }
}

/// Writes slide2vec outputs for every synthetic slide into `out`: all tiles of the slide's
/// coordinate file (rows in reverse order, so that a row index is not a tile's identity), the
/// feature of each, and the files recording the model and the tiling.
fn write_slide2vec(out: &Path, s: &Slide2vec) {
    let b = base();
    let (feat_dir, coord_dir) = if s.current {
        (out.join("tile_embeddings"), out.join("tiles"))
    } else {
        (out.join("features"), out.join("coordinates"))
    };
    std::fs::create_dir_all(&feat_dir).unwrap();
    std::fs::create_dir_all(&coord_dir).unwrap();
    let mut stems: Vec<&String> = b.labels.keys().collect();
    stems.sort();
    for (si, stem) in stems.iter().enumerate() {
        let class = b.labels[*stem];
        let src =
            Coordinates::read(b.data.join("coordinates").join(format!("{stem}.npy"))).unwrap();
        let mut rows: Vec<usize> = (0..src.len()).rev().collect();
        if let Some((slide, drop)) = &s.drop
            && slide == *stem
        {
            rows.retain(|&r| !drop.contains(&(src.x[r], src.y[r])));
        }
        let mut tiles = src.select(&rows);
        for x in &mut tiles.x {
            *x += s.shift_x;
        }
        let mut data = Vec::with_capacity(rows.len() * s.dim);
        for (&x, &y) in tiles.x.iter().zip(&tiles.y) {
            data.extend(feature(si, class, x, y, s.dim));
        }
        write_torch_tensor(
            &feat_dir.join(format!("{stem}.pt")),
            rows.len(),
            s.dim,
            &data,
            s.fp16,
        );
        if s.current {
            let npz = coord_dir.join(format!("{stem}.coordinates.npz"));
            let meta = TilingMeta {
                sample_id: stem.to_string(),
                image_path: b.data.join("slides").display().to_string(),
                slide_dimensions_px: [1024, 1024],
                base_spacing_um: Some(0.5),
                level_downsamples: vec![1.0],
                requested_tile_size_px: 224,
                requested_spacing_um: 0.5,
                read_level: 0,
                read_tile_size_px: 224,
                read_spacing_um: 0.5,
                tile_size_lv0: s.lv0,
                step_px_lv0: 224,
                tolerance: 0.05,
                overlap: 0.0,
                min_tissue_fraction: 0.5,
                is_within_tolerance: true,
                backend: "test".into(),
                tissue_method: None,
            };
            tiles.tile_index = Some((0..rows.len() as i64).collect());
            pbip_coords::write_hs2p_npz(&npz, &tiles, &meta).unwrap();
            let sidecar = serde_json::json!({
                "sample_id": stem,
                "artifact_type": "tile_embeddings",
                "encoder_name": s.model,
                "encoder_level": "tile",
                "feature_dim": s.dim,
                "feature_dtype": if s.fp16 { "fp16" } else { "fp32" },
                "format": "pt",
                "num_tiles": rows.len(),
                "coordinates_npz_path": npz,
            });
            std::fs::write(
                feat_dir.join(format!("{stem}.meta.json")),
                serde_json::to_string_pretty(&sidecar).unwrap(),
            )
            .unwrap();
        } else {
            let records: Vec<pbip_coords::Hs2pV1Record> = (0..tiles.len())
                .map(|i| pbip_coords::Hs2pV1Record {
                    x: tiles.x[i],
                    y: tiles.y[i],
                    tile_size_resized: 224,
                    tile_level: 0,
                    resize_factor: 1.0,
                    tile_size_lv0: i64::from(s.lv0),
                    target_spacing: 0.5,
                })
                .collect();
            pbip_coords::write_hs2p_v1_npy(coord_dir.join(format!("{stem}.npy")), &records)
                .unwrap();
        }
    }
    if !s.current {
        std::fs::write(
            out.join("config.yaml"),
            format!(
                "output_dir: {}\nmodel:\n  level: tile\n  name: {}\n  batch_size: 1\n",
                out.display(),
                s.model
            ),
        )
        .unwrap();
    }
}

/// Stage 1's error for `cfg` (the run must fail).
fn stage1_error(cfg: &Config) -> String {
    run_stage(1, cfg, &RunOptions::default())
        .unwrap_err()
        .to_string()
}

/// Writes slide2vec outputs `s` to `s2v` and returns the config of a run in `work` that reads them.
fn slide2vec_config(work: &Path, s2v: &Path, s: &Slide2vec) -> Config {
    write_slide2vec(s2v, s);
    config(&base().data, work, Some(s2v), &[])
}

fn sha256(path: &Path) -> String {
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The exemplar rows against the features written for their slides and coordinates.
fn check_exemplars(cfg: &Config, shift_x: i64) -> s1::ExemplarsMeta {
    let b = base();
    let (map, meta) = s1::read_exemplars(&s1::exemplars_path(cfg)).unwrap();
    let feats = &map["features"];
    assert_eq!(feats.shape[1], DIM);
    let n = feats.shape[0];
    let s0 = pbip_pipeline::stage0_sample_prototypes::read_summary(cfg).unwrap();
    assert_eq!(
        n,
        s0.classes.iter().map(|c| c.coordinates).sum::<usize>(),
        "one row per stage-0 coordinate"
    );
    let mut stems: Vec<&String> = b.labels.keys().collect();
    stems.sort();
    let (xs, ys, sl) = (
        &map["x_lv0"].data,
        &map["y_lv0"].data,
        &map["slide_index"].data,
    );
    for r in 0..n {
        let stem = pbip_config::normalise_slide_key(&meta.slides[sl[r] as usize]);
        let si = stems.iter().position(|s| **s == stem).unwrap();
        let want = feature(
            si,
            b.labels[&stem],
            xs[r] as i64 + shift_x,
            ys[r] as i64,
            DIM,
        );
        assert_eq!(
            &feats.data[r * DIM..(r + 1) * DIM],
            &want[..],
            "row {r}: slide {stem} ({}, {})",
            xs[r],
            ys[r]
        );
    }
    meta
}

#[test]
fn slide2vec_features_run_stages_1_to_3() {
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    let s2v = d.path().join("slide2vec_run");
    write_slide2vec(&s2v, &Slide2vec::default());
    let contrastive = [
        "training.loss_weights.contrastive=0.1".to_string(),
        format!("prototypes.encoder.weights={}", b.weights.display()),
    ];
    let cfg = config(&b.data, &work, Some(&s2v), &contrastive);

    // Stage 1 reads no slide and runs no encoder; its rows are the written features.
    let report = run_stage(1, &cfg, &RunOptions::default()).unwrap();
    let meta = check_exemplars(&cfg, 0);
    let p = meta
        .precomputed
        .as_ref()
        .expect("precomputed source recorded");
    assert_eq!(p.encoder, MODEL);
    assert!(p.encoder_from.ends_with(".meta.json"), "{}", p.encoder_from);
    assert_eq!(p.layout, "slide2vec tile_embeddings/");
    assert_eq!(p.nearest_matches, 0);
    assert!(p.encoder_saved);
    assert_eq!(p.files.len(), meta.slides.len());
    for f in &p.files {
        assert_eq!(f.sha256, sha256(&f.features), "{}", f.features.display());
        assert!(f.coordinates.ends_with(format!(
            "tiles/{}.coordinates.npz",
            pbip_config::normalise_slide_key(&f.slide)
        )));
    }
    assert!(!meta.encoder.random);
    assert!(
        meta.encoder.source.contains("precomputed"),
        "{}",
        meta.encoder.source
    );
    assert_eq!(meta.encoder.sha256.as_deref(), Some(p.sha256.as_str()));
    // The configured encoder is saved for the contrastive terms: the weights given.
    let enc = work.join("image_features/encoder.safetensors");
    assert!(report.outputs.contains(&enc));
    let (_, ident) = pbip_pipeline::encoder::load_saved_encoder(&enc, &Device::flex()).unwrap();
    assert_eq!(ident.sha256.as_deref(), Some(sha256(&b.weights).as_str()));
    assert_eq!(stage_freshness(1, &cfg), Freshness::UpToDate);

    // Stage 2: each class's prototypes point along its class direction.
    run_stage(2, &cfg, &RunOptions::default()).unwrap();
    let (bank, pm) = pbip_pipeline::stage2_cluster_prototypes::read_prototypes(
        &work.join("image_features/prototypes.safetensors"),
    )
    .unwrap();
    assert_eq!(bank.shape, vec![4, DIM]);
    assert_eq!(pm.encoder, meta.encoder);
    for (r, class) in [0usize, 0, 1, 1].iter().enumerate() {
        let row = &bank.data[r * DIM..(r + 1) * DIM];
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            row[*class] / norm > 0.95 && row[1 - class] / norm < 0.2,
            "prototype {r} of class {class}: {:?}",
            &row[..4]
        );
    }

    // Stage 3: a few steps with the contrastive terms through the saved encoder.
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert!(out.summary.completed);
    assert_eq!(out.summary.nonfinite_steps, 0);

    // Without the contrastive terms no encoder is built, and the earlier one is removed.
    let cfg0 = config(&b.data, &work, Some(&s2v), &[]);
    assert!(matches!(stage_freshness(1, &cfg0), Freshness::Stale(_)));
    let report = run_stage(1, &cfg0, &RunOptions::default()).unwrap();
    assert!(!enc.exists() && !report.outputs.contains(&enc));
    let meta0 = check_exemplars(&cfg0, 0);
    assert!(!meta0.precomputed.unwrap().encoder_saved);
    assert_eq!(stage_freshness(1, &cfg0), Freshness::UpToDate);
    // ... and training asks for it by name when the terms are turned back on without stage 1.
    let e = pbip_pipeline::encoder::load_saved_encoder(&enc, &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("embed-prototypes") && e.contains("contrastive"),
        "{e}"
    );

    // The contrastive terms with a random encoder against another model's prototypes: refused.
    let cfg_r = config(
        &b.data,
        &work,
        Some(&s2v),
        &["training.loss_weights.contrastive=0.1".into()],
    );
    let e = stage1_error(&cfg_r);
    assert!(
        e.contains("prototypes.encoder.weights") && e.contains("contrastive"),
        "{e}"
    );
}

#[test]
fn slide2vec_1x_layout_with_fp32_features_and_config_yaml() {
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    let s2v = d.path().join("output");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            current: false,
            fp16: false,
            model: "Tiny_Path".into(),
            ..Slide2vec::default()
        },
    );
    run_stage(1, &cfg, &RunOptions::default()).unwrap();
    let meta = check_exemplars(&cfg, 0);
    let p = meta.precomputed.unwrap();
    assert_eq!(p.layout, "slide2vec features/");
    assert_eq!(p.encoder, "Tiny_Path");
    assert!(p.encoder_from.contains("config.yaml"), "{}", p.encoder_from);
    assert!(p.files[0].coordinates.starts_with(s2v.join("coordinates")));

    // The feature folder itself, with the coordinates named in the config.
    let cfg = config(
        &b.data,
        &work,
        Some(&s2v.join("features")),
        &[format!(
            "prototypes.precomputed_features.coordinates_dir={}",
            s2v.join("coordinates").display()
        )],
    );
    run_stage(1, &cfg, &RunOptions::default()).unwrap();
    let meta = check_exemplars(&cfg, 0);
    assert_eq!(meta.precomputed.unwrap().layout, "folder");
}

#[test]
fn features_of_another_model_are_refused() {
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    let s2v = d.path().join("s2v");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            model: "virchow2".into(),
            ..Slide2vec::default()
        },
    );
    let e = stage1_error(&cfg);
    assert!(
        e.contains("virchow2") && e.contains(MODEL) && e.contains("meta.json"),
        "{e}"
    );
    assert!(e.contains("Fix"), "{e}");
    assert!(!s1::exemplars_path(&cfg).exists());

    // The config naming another model than slide2vec recorded: refused too.
    let cfg = config(
        &b.data,
        &work,
        Some(&s2v),
        &[format!("prototypes.precomputed_features.encoder={MODEL}")],
    );
    let e = stage1_error(&cfg);
    assert!(
        e.contains("virchow2") && e.contains("precomputed_features.encoder"),
        "{e}"
    );
}

#[test]
fn features_of_another_width_are_refused() {
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    let s2v = d.path().join("s2v");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            dim: 16,
            ..Slide2vec::default()
        },
    );
    let e = stage1_error(&cfg);
    assert!(
        e.contains("16-d") && e.contains("32-d") && e.contains(MODEL) && e.contains(".meta.json"),
        "{e}"
    );
    // Without the sidecar the tensor itself is checked, and the error names the feature file.
    for e in std::fs::read_dir(s2v.join("tile_embeddings")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".meta.json") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let cfg = config(
        &b.data,
        &work,
        Some(&s2v),
        &[
            format!("prototypes.precomputed_features.encoder={MODEL}"),
            format!(
                "prototypes.precomputed_features.coordinates_dir={}",
                s2v.join("tiles").display()
            ),
        ],
    );
    let e = stage1_error(&cfg);
    assert!(e.contains("16-d") && e.contains(".pt"), "{e}");
}

#[test]
fn a_prototype_coordinate_without_a_tile_is_refused_unless_within_the_tolerance() {
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    // One prototype coordinate of one slide has no tile.
    let protos = Coordinates::read(base().prototypes.join("tumor.npy")).unwrap();
    let names = protos.wsi_name.clone().unwrap();
    let slide = pbip_config::normalise_slide_key(&names[0]);
    let s2v = d.path().join("s2v");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            drop: Some((slide.clone(), vec![(protos.x[0], protos.y[0])])),
            ..Slide2vec::default()
        },
    );
    let e = stage1_error(&cfg);
    let example = format!("x={}, y={}", protos.x[0], protos.y[0]);
    assert!(
        e.contains(&format!("slide {slide}")) && e.contains("1 of") && e.contains(&example),
        "{e}"
    );
    assert!(e.contains("tolerance_px"), "{e}");

    // Tiles on a grid 3 px off: refused exactly, matched within a 4 px tolerance.
    let s2v = d.path().join("s2v_shifted");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            shift_x: 3,
            ..Slide2vec::default()
        },
    );
    let e = stage1_error(&cfg);
    assert!(e.contains("different grids"), "{e}");
    let cfg = config(
        &b.data,
        &work,
        Some(&s2v),
        &["prototypes.precomputed_features.tolerance_px=4".into()],
    );
    run_stage(1, &cfg, &RunOptions::default()).unwrap();
    let meta = check_exemplars(&cfg, 3);
    let p = meta.precomputed.unwrap();
    assert_eq!(p.nearest_matches, meta.rows_per_class.iter().sum::<usize>());
}

#[test]
fn tiles_of_another_size_are_refused() {
    // Same grid, but slide2vec's tiles cover 448 level-0 px where the prototype patches cover 224.
    let d = tempfile::tempdir().unwrap();
    let work = work_with_prototypes(d.path());
    let s2v = d.path().join("s2v");
    let cfg = slide2vec_config(
        &work,
        &s2v,
        &Slide2vec {
            lv0: 448,
            ..Slide2vec::default()
        },
    );
    let e = stage1_error(&cfg);
    assert!(
        e.contains("cover 224") && e.contains("cover 448") && e.contains("coordinates.npz"),
        "{e}"
    );
}

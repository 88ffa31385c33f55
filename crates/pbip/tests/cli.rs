//! End-to-end tests of the `pbip` binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use pbip_config::{Split, parse_labels_csv, parse_split_csv};
use pbip_coords::Coordinates;
use pbip_testdata::{path_str as s, text};

const PBIP: &str = env!("CARGO_BIN_EXE_pbip");

fn pbip(args: &[&str]) -> Output {
    pbip_testdata::run(PBIP, args)
}

fn ok(args: &[&str]) -> String {
    pbip_testdata::run_ok(PBIP, args)
}

/// Fails with the expected substring in stderr, without a panic.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = pbip(args);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "pbip {args:?} should fail\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "stderr of pbip {args:?} lacks `{n}`:\n{err}"
        );
    }
    err
}

const SLIDES: usize = 6;
const SIZE: u32 = 1024;

/// One synthetic dataset shared by the tests of this binary.
fn synth_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let out = ok(&[
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--slides",
            &SLIDES.to_string(),
            "--size",
            &SIZE.to_string(),
            "--seed",
            "3",
        ]);
        assert!(out.contains("slide_000"), "{out}");
        (tmp, data)
    })
    .1
}

fn npy_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "npy") {
            m.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    m
}

#[test]
fn synth_then_sample_prototypes_is_valid_and_reproducible() {
    let data = synth_dir();
    let cfg_path = data.join("config.yaml");
    let work1 = tempfile::tempdir().unwrap();
    let work2 = tempfile::tempdir().unwrap();
    let set1 = format!("paths.work_dir={}", s(work1.path()));
    let set2 = format!("paths.work_dir={}", s(work2.path()));
    ok(&[
        "sample-prototypes",
        "--config",
        s(&cfg_path),
        "--set",
        &set1,
        "--set",
        "prototypes.samples_per_wsi=7",
    ]);
    ok(&[
        "sample-prototypes",
        "--config",
        s(&cfg_path),
        "--set",
        &set2,
        "--set",
        "prototypes.samples_per_wsi=7",
    ]);
    let out1 = work1.path().join("prototype_coordinates");
    let out2 = work2.path().join("prototype_coordinates");
    let f1 = npy_files(&out1);
    assert_eq!(
        f1.keys().cloned().collect::<Vec<_>>(),
        vec!["benign.npy".to_string(), "tumor.npy".to_string()]
    );
    assert_eq!(f1, npy_files(&out2), "two runs with the same config differ");
    assert!(out1.join("summary.json").is_file() && out1.join("config.resolved.yaml").is_file());

    // Read back with pbip_coords and check against the inputs (independent of stage 0's code).
    let cfg = pbip_config::Config::load(&cfg_path, &[]).unwrap();
    let labels = parse_labels_csv(&cfg.paths.labels_csv, &cfg.class_order).unwrap();
    let splits = parse_split_csv(&cfg.paths.split_csv).unwrap();
    let train: BTreeSet<String> = splits
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| r.name.clone())
        .collect();
    for (c, class) in cfg.class_order.iter().enumerate() {
        let coords = Coordinates::read(out1.join(format!("{class}.npy"))).unwrap();
        assert!(!coords.is_empty(), "class {class} has no coordinates");
        let names = coords.wsi_name.clone().expect("wsi_name field");
        let mut per_slide: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for (i, name) in names.iter().enumerate().take(coords.len()) {
            per_slide
                .entry(name.clone())
                .or_default()
                .push((coords.x[i], coords.y[i]));
        }
        assert!(per_slide.len() <= cfg.prototypes.num_per_class);
        for (wsi, xy) in &per_slide {
            let slide_path = cfg.paths.wsi_dir.join(wsi);
            assert!(
                slide_path.is_file(),
                "wsi_name {wsi} does not resolve to a slide"
            );
            assert!(wsi.ends_with(".tif"), "wsi_name {wsi} lacks its extension");
            let stem = wsi.trim_end_matches(".tif");
            assert!(train.contains(stem), "{wsi} is not a training slide");
            assert_eq!(labels[stem][c], 1, "{wsi} is not labelled {class}");
            // The sampled rows are distinct rows of the slide's coordinate file, min(7, available) of them.
            let all =
                Coordinates::read(cfg.paths.coordinates_dir.join(format!("{stem}.npy"))).unwrap();
            let all_xy: BTreeSet<(i64, i64)> =
                all.x.iter().copied().zip(all.y.iter().copied()).collect();
            let got: BTreeSet<(i64, i64)> = xy.iter().copied().collect();
            assert_eq!(got.len(), xy.len(), "duplicate coordinates for {wsi}");
            assert!(got.is_subset(&all_xy), "coordinates not from {stem}.npy");
            assert_eq!(xy.len(), all.len().min(7));
            for &(x, y) in xy {
                assert!(
                    x >= 0 && y >= 0 && x < SIZE as i64 && y < SIZE as i64,
                    "({x},{y}) outside {wsi}"
                );
            }
        }
        let ts = coords.tile_size_lv0.clone().unwrap();
        assert!(ts.iter().all(|&t| t == 224));
    }

    // `run` sees the outputs as up to date.
    // Later stages sized for a test: a tiny Swin, MiT-b0, one training step.
    let fast = [
        "prototypes.encoder.embed_dim=24",
        "prototypes.encoder.depths=[1,1,2,1]",
        "prototypes.encoder.heads=[1,2,4,8]",
        "model.backbone=mit_b0",
        "training.epochs=1",
        "training.iterations_per_epoch=1",
        "training.batch_size=2",
        "training.loss_weights.contrastive=0",
        "validation.patches_per_slide=1",
    ];
    let run = |samples: &str| {
        let mut args = vec![
            "run",
            "--config",
            s(&cfg_path),
            "--set",
            &set1,
            "--set",
            samples,
        ];
        for f in &fast {
            args.push("--set");
            args.push(f);
        }
        ok(&args)
    };
    let out = run("prototypes.samples_per_wsi=7");
    assert!(out.contains("up to date"), "{out}");
    // Changing a relevant setting reruns.
    let out = run("prototypes.samples_per_wsi=5");
    assert!(
        !out.contains("up to date") && out.contains("stage 0"),
        "{out}"
    );
}

#[test]
fn multi_class_multi_label_dataset() {
    let data = synth_dir();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..SLIDES).map(|i| format!("slide_{i:03}")).collect();
    // All slides train, three classes, multi-hot per-class columns.
    let mut split = String::from("train,val,test\n");
    let mut labels = String::from("image_name,a,b,c\n");
    for (i, n) in names.iter().enumerate() {
        split.push_str(&format!("{n}.tif,,\n"));
        let row = [
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 0],
            [0, 1, 1],
            [1, 0, 1],
        ][i % 6];
        labels.push_str(&format!("{n},{},{},{}\n", row[0], row[1], row[2]));
    }
    std::fs::write(dir.path().join("split.csv"), split).unwrap();
    std::fs::write(dir.path().join("labels.csv"), &labels).unwrap();
    let cfg = format!(
        "seed: 5\npaths:\n  split_csv: split.csv\n  labels_csv: labels.csv\n  wsi_dir: {}\n  coordinates_dir: {}\n  work_dir: work\nclass_order: [a, b, c]\nprototypes:\n  num_per_class: 2\n  samples_per_wsi: 3\n  k_list: [1, 1, 1]\n",
        s(&data.join("slides")),
        s(&data.join("coordinates"))
    );
    let cfg_path = dir.path().join("cfg.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    ok(&["sample-prototypes", "--config", s(&cfg_path)]);
    let label_map = parse_labels_csv(
        &dir.path().join("labels.csv"),
        &["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        let coords = Coordinates::read(
            dir.path()
                .join("work/prototype_coordinates")
                .join(format!("{class}.npy")),
        )
        .unwrap();
        let slides: BTreeSet<String> = coords.wsi_name.clone().unwrap().into_iter().collect();
        assert_eq!(slides.len(), 2, "class {class}: {slides:?}");
        assert!(coords.len() <= 6);
        for w in slides {
            assert_eq!(label_map[w.trim_end_matches(".tif")][c], 1);
        }
    }
}

fn write_minimal(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("c.yaml");
    std::fs::write(
        &p,
        format!("paths: {{split_csv: s.csv, labels_csv: l.csv, wsi_dir: w, coordinates_dir: c}}\nclass_order: [a, b]\n{extra}"),
    )
    .unwrap();
    p
}

#[test]
fn config_errors_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let p = write_minimal(d.path(), "training:\n  epochz: 3\n");
    fails_with(
        &["sample-prototypes", "--config", s(&p)],
        &["c.yaml", "epochz", "epochs"],
    );
    let p = write_minimal(d.path(), "training:\n  epochs: many\n");
    fails_with(
        &["sample-prototypes", "--config", s(&p)],
        &["c.yaml", "training.epochs"],
    );
    let p = write_minimal(
        d.path(),
        "prototypes:\n  k_list: [3, 3, 3]\ninference:\n  overlap_ratio: 1.0\n",
    );
    fails_with(
        &["sample-prototypes", "--config", s(&p)],
        &["prototypes.k_list", "inference.overlap_ratio", "[0, 1)"],
    );
    let p = write_minimal(d.path(), "");
    fails_with(
        &["run", "--config", s(&p), "--set", "training.nope=1"],
        &["unknown key `training.nope`", "epochs"],
    );
    fails_with(
        &["run", "--config", s(&d.path().join("missing.yaml"))],
        &["missing.yaml"],
    );
}

#[test]
fn csv_errors_are_reported_together() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::create_dir_all(root.join("w")).unwrap();
    std::fs::create_dir_all(root.join("c")).unwrap();
    for n in ["s1", "s2", "s3", "s4"] {
        std::fs::write(root.join("w").join(format!("{n}.tif")), b"x").unwrap();
        std::fs::write(root.join("c").join(format!("{n}.npy")), b"x").unwrap();
    }
    std::fs::remove_file(root.join("c/s4.npy")).unwrap();
    // s1 fine; s2 label out of range; s3 no label; ghost has no slide; s1 also in val; s4 lacks coordinates.
    std::fs::write(
        root.join("s.csv"),
        "train,val,test\ns1,s1.tif,\ns2,,\ns3,,ghost\ns4,,\n",
    )
    .unwrap();
    std::fs::write(
        root.join("l.csv"),
        "image_name,label\ns1,0\ns2,2\ns4,1\nghost,0\n",
    )
    .unwrap();
    let p = write_minimal(root, "");
    fails_with(
        &["sample-prototypes", "--config", s(&p)],
        &[
            "6 problem",
            "two splits",
            "out of range",
            "`s3`",
            "no row in the labels CSV",
            "`ghost`",
            "no file",
            "s4.npy",
        ],
    );
}

fn shared_svs() -> PathBuf {
    pbip_testdata::data_dir().join("CMU-1-Small-Region.svs")
}

#[test]
fn slide_info_json() {
    let slide = synth_dir().join("slides/slide_000.tif");
    let out = ok(&["slide-info", "--json", s(&slide)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["width"], SIZE);
    assert_eq!(v["height"], SIZE);
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(v["level_count"].as_u64().unwrap() as usize, levels.len());
    assert!(levels.len() >= 2);
    assert!((v["mpp_x"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{v}");
    for k in ["mpp_y", "vendor", "backend"] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }

    let svs = shared_svs();
    assert!(svs.is_file(), "{} is missing", svs.display());
    let out = ok(&["slide-info", "--json", "--backend", "rust", s(&svs)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["width"], 2220);
    assert_eq!(v["height"], 2967);
    assert_eq!(v["backend"], "rust");
    let out = ok(&["slide-info", s(&svs)]);
    assert!(out.contains("2220") && out.contains("2967"), "{out}");
    fails_with(
        &["slide-info", s(&synth_dir().join("split.csv"))],
        &["split.csv"],
    );
}

#[test]
fn read_region_writes_png_of_requested_size() {
    let d = tempfile::tempdir().unwrap();
    let png_path = d.path().join("r.png");
    ok(&[
        "read-region",
        s(&shared_svs()),
        "100",
        "200",
        "0",
        "300",
        "150",
        s(&png_path),
    ]);
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let reader = dec.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (300, 150));
    // Negative origin (padded with background) and level 1 of a synthetic slide.
    let png2 = d.path().join("r2.png");
    ok(&[
        "read-region",
        s(&synth_dir().join("slides/slide_001.tif")),
        "-50",
        "-20",
        "1",
        "64",
        "48",
        s(&png2),
    ]);
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png2).unwrap()))
        .read_info()
        .unwrap();
    assert_eq!((reader.info().width, reader.info().height), (64, 48));
    fails_with(
        &[
            "read-region",
            s(&shared_svs()),
            "0",
            "0",
            "9",
            "10",
            "10",
            s(&png2),
        ],
        &["CMU-1-Small-Region.svs"],
    );
}

#[test]
fn demo_runs_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("demo");
    let demo = [
        "demo",
        "--out",
        s(&out_dir),
        "--size",
        "1024",
        "--slides",
        "4",
        "--train-steps",
        "3",
    ];
    let out = ok(&demo);
    assert!(out.contains("prototype coordinates"), "{out}");
    // Stage 3: checkpoints, TensorBoard events, log, and the final val metrics printed.
    for f in [
        "latest.safetensors",
        "best.safetensors",
        "latest.state.safetensors",
        "train_summary.json",
    ] {
        assert!(
            out_dir.join("work/checkpoints").join(f).is_file(),
            "{f} missing:\n{out}"
        );
    }
    let runs: Vec<_> = std::fs::read_dir(out_dir.join("work/runs"))
        .unwrap()
        .collect();
    assert!(!runs.is_empty(), "no TensorBoard file:\n{out}");
    assert!(out_dir.join("work/logs.txt").is_file(), "{out}");
    assert!(
        out.contains("tensorboard --logdir")
            && out.contains("final val metrics")
            && out.contains("slide AUC"),
        "{out}"
    );
    for class in ["benign", "tumor"] {
        let f = out_dir
            .join("work/prototype_coordinates")
            .join(format!("{class}.npy"));
        let c = Coordinates::read(&f).unwrap();
        assert!(!c.is_empty(), "{}", f.display());
        let sheet = out_dir
            .join("work/image_features/prototype_sheets")
            .join(format!("{class}.png"));
        assert!(sheet.is_file(), "{}", sheet.display());
    }
    for f in [
        "exemplars.safetensors",
        "encoder.safetensors",
        "prototypes.safetensors",
    ] {
        assert!(
            out_dir.join("work/image_features").join(f).is_file(),
            "{f} missing:\n{out}"
        );
    }
    // Stage 4 after training: every output exists and metrics.json parses.
    for f in [
        "metrics.json",
        "confusion_matrix.csv",
        "per_slide.csv",
        "evaluation_report.txt",
        "report.html",
    ] {
        assert!(
            out_dir.join("work/results").join(f).is_file(),
            "{f} missing:\n{out}"
        );
    }
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("work/results/metrics.json")).unwrap(),
    )
    .unwrap();
    assert!(m["deployable"]["miou"].is_number(), "{m}");
    assert!(out.contains("stage 4 test metrics"), "{out}");
    // Stage 5 on the test slides: per-slide outputs and whole-slide scores against the GT.
    let pred = out_dir.join("work/predictions");
    let csv = std::fs::read_to_string(pred.join("batch_results.csv")).unwrap();
    let ok_rows: Vec<&str> = csv.lines().filter(|l| l.contains(",ok,")).collect();
    assert!(!ok_rows.is_empty(), "{csv}");
    let mut geojsons = Vec::new();
    for row in ok_rows {
        let name = row.split(',').next().unwrap();
        assert!(
            pred.join(name).join("segmentation_mask.png").is_file(),
            "{name}"
        );
        assert!(pred.join(name).join("metadata.json").is_file(), "{name}");
        geojsons.push(pred.join(name).join(format!("{name}.geojson")));
    }
    // Every GeoJSON the demo writes is valid OGC geometry per shapely (an independent judge).
    pbip_testdata::assert_geojson_valid(&geojsons);
    assert!(
        out.contains("stage 5 predictions") && out.contains("all-tissue-is-tumour map"),
        "{out}"
    );
    // Second run reuses data and skips the up-to-date stages.
    let out = ok(&demo);
    assert!(out.contains("up to date"), "{out}");
    assert!(out.contains("0 processed"), "stage 5 reran:\n{out}");
}

#[test]
fn doctor_lists_backends_and_openslide() {
    let out = ok(&["doctor"]);
    assert!(
        out.contains("device cpu") && out.contains("burn-flex"),
        "{out}"
    );
    assert!(out.contains("OpenSlide"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["doctor", "--json"])).unwrap();
    let checks = json["checks"].as_array().unwrap();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` in {json}"))
    };
    assert_eq!(find("device cpu")["ok"], true);
    assert_eq!(
        find("device tch-cpu, cuda[:N]")["ok"],
        cfg!(feature = "tch"),
        "tch row does not match the build"
    );
    assert_eq!(find("device wgpu[:N]")["ok"], cfg!(feature = "wgpu"));
}

#[test]
fn unknown_devices_are_config_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write_minimal(d.path(), "device: tpu\n");
    fails_with(
        &["sample-prototypes", "--config", s(&p)],
        &["c.yaml", "device", "tpu", "tch-cpu", "cuda:N"],
    );
}

/// A device whose backend this binary lacks stops the first stage that computes, naming the
/// cargo feature and the build command: never a silent run on the CPU.
#[cfg(not(any(feature = "tch", feature = "cuda")))]
#[test]
fn devices_the_build_lacks_name_the_feature() {
    let data = synth_dir();
    let cfg_path = data.join("config.yaml");
    let work = tempfile::tempdir().unwrap();
    let set = format!("paths.work_dir={}", s(work.path()));
    ok(&[
        "sample-prototypes",
        "--config",
        s(&cfg_path),
        "--set",
        &set,
        "--set",
        "prototypes.samples_per_wsi=3",
    ]);
    for device in ["tch-cpu", "cuda:1", "gpu"] {
        let dev = format!("device={device}");
        let err = fails_with(
            &[
                "embed-prototypes",
                "--config",
                s(&cfg_path),
                "--set",
                &set,
                "--set",
                &dev,
            ],
            &["`tch` cargo feature", "--features tch", "pbip doctor"],
        );
        assert!(err.contains(device), "{device}: {err}");
    }
}

//! Stages 0 → 1 → 2 on synthetic slides: files, exact features, prototype bank, errors.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use pbip_config::{Config, EncoderKind};
use pbip_pipeline::encoder::{self, Preprocess};
use pbip_pipeline::stage1_embed_prototypes as s1;
use pbip_pipeline::stage2_cluster_prototypes as s2;
use pbip_pipeline::{RunOptions, run_stage};
use pbip_slide::{OpenOptions, Origin, PatchGeometry, Slide};

fn fixture() -> PathBuf {
    let base = std::env::var("PBIP_PARITY_FIXTURE").unwrap_or_else(|_| {
        pbip_testdata::fixtures_dir()
            .join("upstream-mit_b0-seed1")
            .to_string_lossy()
            .into_owned()
    });
    PathBuf::from(format!("{base}.safetensors"))
}

/// The fixture's small Swin (embed 24, depths 1,1,2,1, heads 1,2,4,8) keeps the test fast.
fn config(data: &Path, work: &Path, extra: &[&str]) -> Config {
    let mut o: Vec<String> = vec![
        format!("paths.work_dir={}", work.display()),
        "prototypes.samples_per_wsi=5".into(),
        "prototypes.num_per_class=2".into(),
        "prototypes.k_list=[2,2]".into(),
        "prototypes.batch_size=1".into(),
        "prototypes.encoder.embed_dim=24".into(),
        "prototypes.encoder.depths=[1,1,2,1]".into(),
        "prototypes.encoder.heads=[1,2,4,8]".into(),
        format!("prototypes.encoder.weights={}", fixture().display()),
        "prototypes.kmeans.n_init=3".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&data.join("config.yaml"), &o).unwrap()
}

fn synth(dir: &Path) {
    let opts = pbip_synth::SynthOptions {
        num_slides: 4,
        size_px: 1024,
        seed: 5,
        ..pbip_synth::SynthOptions::new(dir)
    };
    pbip_synth::generate(&opts).unwrap();
}

/// A temporary folder with a synthetic dataset in `data/` and an empty `work/` path: (the folder,
/// data, work).
fn synth_and_work() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data);
    let work = d.path().join("work");
    (d, data, work)
}

fn col(map: &pbip_weights::TensorMap, name: &str) -> Vec<f32> {
    map[name].data.clone()
}

#[test]
fn stages_0_1_2_produce_exact_features_and_a_unit_prototype_bank() {
    let (_d, data, work) = synth_and_work();
    let cfg = config(&data, &work, &[]);
    let opts = RunOptions::default();
    for stage in 0..3 {
        run_stage(stage, &cfg, &opts).unwrap();
    }

    // Stage 1 outputs.
    let (map, meta) = s1::read_exemplars(&s1::exemplars_path(&cfg)).unwrap();
    let feats = &map["features"];
    let (n, dim) = (feats.shape[0], feats.shape[1]);
    assert_eq!(dim, 512);
    let s0 = pbip_pipeline::stage0_sample_prototypes::read_summary(&cfg).unwrap();
    let per_class: Vec<usize> = s0.classes.iter().map(|c| c.coordinates).collect();
    assert_eq!(
        n,
        per_class.iter().sum::<usize>(),
        "one feature row per stage-0 coordinate"
    );
    assert!(per_class.iter().all(|&c| c >= 5), "{per_class:?}");
    assert_eq!(meta.class_order, vec!["benign", "tumor"]);
    assert!(!meta.encoder.random);
    assert!(meta.encoder.sha256.is_some());
    let classes = col(&map, "class_index");
    assert_eq!(classes.iter().filter(|&&c| c == 0.0).count(), per_class[0]);
    assert_eq!(meta.rows_per_class, per_class);

    // Features of a patch are the encoder applied to that patch read directly (same bits).
    let device = Device::flex();
    let (model, _) =
        encoder::load_saved_encoder(&work.join("image_features/encoder.safetensors"), &device)
            .unwrap();
    let pre = Preprocess::from_config(&cfg);
    let (xs, ys, sl) = (
        col(&map, "x_lv0"),
        col(&map, "y_lv0"),
        col(&map, "slide_index"),
    );
    let (lv, rs) = (col(&map, "tile_level"), col(&map, "tile_size_resized"));
    for row in [0usize, 7, n - 1] {
        let slide =
            Slide::open(&meta.slide_paths[sl[row] as usize], &OpenOptions::default()).unwrap();
        let geom = PatchGeometry {
            level: lv[row] as usize,
            read_size_px: rs[row] as u32,
            out_size_px: 224,
            origin: Origin::TopLeft,
        };
        let img = slide
            .read_patch(xs[row] as i64, ys[row] as i64, &geom)
            .unwrap();
        let mut chw = vec![0f32; 3 * 224 * 224];
        pre.apply(&img.data, 224, row as u64, &mut chw);
        let f = encoder::encode_batch(&model, EncoderKind::Medclip, chw, 1, 224, &device).unwrap();
        let got = &feats.data[row * dim..(row + 1) * dim];
        assert!(
            f.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
            "row {row}: features differ"
        );
    }

    // The saved encoder is the fixture's: features of input.image equal out.clip_features.
    let (fx, _) = pbip_weights::read_tensors(&fixture()).unwrap();
    let img = &fx["input.image"];
    let x: Tensor<4> =
        Tensor::from_data(TensorData::new(img.data.clone(), [2, 3, 224, 224]), &device);
    let f = model.forward(x).try_into_vec_as::<f32>().unwrap();
    let want = &fx["out.clip_features"].data;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = f
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "clip features differ by {err}"
    );

    // Stage 2 outputs.
    let (bank, pm) = s2::read_prototypes(&s2::prototypes_path(&cfg)).unwrap();
    assert_eq!(bank.shape, vec![4, 512]);
    assert_eq!(pm.k_list, vec![2, 2]);
    assert_eq!(pm.cumsum_k, vec![0, 2, 4]);
    for r in 0..4 {
        let norm: f32 = bank.data[r * 512..(r + 1) * 512]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "prototype {r} norm {norm}");
    }
    for (c, want) in pm.classes.iter().zip(&per_class) {
        assert_eq!(c.cluster_sizes.iter().sum::<usize>(), *want);
    }
    for class in ["benign", "tumor"] {
        let sheet = work
            .join("image_features/prototype_sheets")
            .join(format!("{class}.png"));
        let dec = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&sheet).unwrap(),
        ));
        let info = dec.read_info().unwrap().info().clone();
        assert_eq!(info.height, 2 * (112 + 4) + 4, "{}", sheet.display());
    }

    // Reproducible: a second stage 2 gives identical bytes.
    let first = std::fs::read(s2::prototypes_path(&cfg)).unwrap();
    run_stage(2, &cfg, &opts).unwrap();
    assert_eq!(first, std::fs::read(s2::prototypes_path(&cfg)).unwrap());
    assert_eq!(
        pbip_pipeline::stage_freshness(2, &cfg),
        pbip_pipeline::Freshness::UpToDate
    );

    // Batched encoding agrees with one-at-a-time encoding.
    let cfg3 = config(&data, &work, &["prototypes.batch_size=3"]);
    // The batch size does not change what stage 1 computes, so the outputs stay up to date.
    assert_eq!(
        pbip_pipeline::stage_freshness(1, &cfg3),
        pbip_pipeline::Freshness::UpToDate
    );
    run_stage(1, &cfg3, &opts).unwrap();
    let (map3, _) = s1::read_exemplars(&s1::exemplars_path(&cfg3)).unwrap();
    let err = map3["features"]
        .data
        .iter()
        .zip(&feats.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "batch 3 vs batch 1: {err}");

    // Too few exemplars for k: a clear error naming the class and the key.
    let cfg_k = config(&data, &work, &["prototypes.k_list=[11,2]"]);
    let e = run_stage(2, &cfg_k, &opts).unwrap_err().to_string();
    assert!(
        e.contains("benign") && e.contains("k_list") && e.contains("11"),
        "{e}"
    );
    assert!(per_class[0] < 11);
}

#[test]
fn random_encoder_is_recorded_and_missing_stage0_is_explained() {
    let (_d, data, work) = synth_and_work();
    let cfg = config(
        &data,
        &work,
        &[
            "prototypes.encoder.weights=null",
            "prototypes.samples_per_wsi=2",
            "prototypes.k_list=[1,1]",
        ],
    );
    let opts = RunOptions::default();
    let e = run_stage(1, &cfg, &opts).unwrap_err().to_string();
    assert!(e.contains("sample-prototypes"), "{e}");
    run_stage(0, &cfg, &opts).unwrap();
    run_stage(1, &cfg, &opts).unwrap();
    let (_, meta) = s1::read_exemplars(&s1::exemplars_path(&cfg)).unwrap();
    assert!(meta.encoder.random);
    assert!(
        meta.encoder.source.contains("random"),
        "{}",
        meta.encoder.source
    );
    // The same seed gives the same random encoder, so a rerun gives identical features.
    let a = std::fs::read(s1::exemplars_path(&cfg)).unwrap();
    let ta = safetensors_features(&a);
    run_stage(1, &cfg, &opts).unwrap();
    let b = std::fs::read(s1::exemplars_path(&cfg)).unwrap();
    assert_eq!(ta, safetensors_features(&b));
}

fn safetensors_features(bytes: &[u8]) -> Vec<u8> {
    // Compare only the tensor payload (metadata holds timings).
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

#[test]
fn degenerate_bank_is_reported_and_conditioning_separates_it() {
    let (_d, data, work) = synth_and_work();
    let cfg = config(
        &data,
        &work,
        &["prototypes.samples_per_wsi=4", "prototypes.k_list=[2,2]"],
    );
    let opts = RunOptions::default();
    run_stage(0, &cfg, &opts).unwrap();
    run_stage(1, &cfg, &opts).unwrap();
    // Replace the features by collinear ones, as a random encoder gives: every exemplar is
    // e0 + 0.01·(±e1 + noise), the sign of e1 set by the class.
    let path = s1::exemplars_path(&cfg);
    let (mut map, _) = pbip_weights::read_safetensors(&path).unwrap();
    let classes = col(&map, "class_index");
    let dim = map["features"].shape[1];
    let mut f = vec![0f32; classes.len() * dim];
    for (r, c) in classes.iter().enumerate() {
        let row = &mut f[r * dim..(r + 1) * dim];
        row[0] = 1.0;
        row[1] = if *c == 0.0 { 0.01 } else { -0.01 };
        // deterministic small "noise" in the other dimensions
        for (j, v) in row.iter_mut().enumerate().skip(2) {
            *v = 0.002 * (((r * 31 + j * 17) % 13) as f32 / 13.0 - 0.5);
        }
    }
    map.get_mut("features").unwrap().data = f;
    let (_, meta) = pbip_weights::read_safetensors(&path).unwrap();
    pbip_weights::write_safetensors_atomic(&path, &map, &meta).unwrap();

    let report = run_stage(2, &cfg, &opts).unwrap();
    let (_, pm) = s2::read_prototypes(&s2::prototypes_path(&cfg)).unwrap();
    let sep = pm.separability.clone().unwrap();
    assert!(sep.max_inter_class_cosine > 0.99, "{sep:?}");
    assert!(sep.degenerate());
    let text = report.summary.join("\n");
    assert!(
        text.contains("WARNING") && text.contains("does not separate the classes"),
        "{text}"
    );
    assert!(
        text.contains("prototypes.encoder.weights") && text.contains("conditioning"),
        "the warning says what to do: {text}"
    );
    assert!(s2::degenerate_warning(&pm).is_some());

    // With the cosine head configured (the head that learns from such a bank) it is a note.
    let cfg_n = config(
        &data,
        &work,
        &[
            "prototypes.samples_per_wsi=4",
            "prototypes.k_list=[2,2]",
            "model.head.normalize_prototypes=true",
        ],
    );
    let text = run_stage(2, &cfg_n, &opts).unwrap().summary.join("\n");
    assert!(
        !text.contains("WARNING") && text.contains("note: the prototype bank does not separate"),
        "{text}"
    );

    // Centring against the mean exemplar separates the same features: no warning, and the
    // transform is saved with the bank.
    let cfg_c = config(
        &data,
        &work,
        &[
            "prototypes.samples_per_wsi=4",
            "prototypes.k_list=[2,2]",
            "prototypes.conditioning=centre",
        ],
    );
    let report = run_stage(2, &cfg_c, &opts).unwrap();
    let (_, pm) = s2::read_prototypes(&s2::prototypes_path(&cfg_c)).unwrap();
    let sep = pm.separability.clone().unwrap();
    assert!(sep.max_inter_class_cosine < 0.5, "{sep:?}");
    assert_eq!(sep.nearest_prototype_accuracy, vec![1.0, 1.0]);
    assert!(!report.summary.join("\n").contains("WARNING"));
    let (mean, matrix) = s2::read_conditioning(&s2::prototypes_path(&cfg_c))
        .unwrap()
        .unwrap();
    assert_eq!(mean.len(), dim);
    assert!(matrix.is_none());
}

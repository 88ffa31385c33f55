//! Loads the shipped presets in `configs/` and checks them against the schema.

use std::path::PathBuf;

use pbip_config::*;

fn configs_dir() -> PathBuf {
    pbip_testdata::crate_dir().join("../../configs")
}

fn key_paths(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    if let Some(m) = v.as_mapping() {
        for (k, child) in m {
            let k = k.as_str().unwrap_or("?");
            let p = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(p.clone());
            key_paths(child, &p, out);
        }
    }
}

#[test]
fn default_yaml_has_every_key_with_default_values_and_comments() {
    let path = configs_dir().join("default.yaml");
    let cfg = Config::load(&path, &[]).unwrap();
    let mut expected = Config::default();
    let base = std::path::absolute(configs_dir()).unwrap();
    expected.paths.split_csv = "data/split.csv".into();
    expected.paths.labels_csv = "data/labels.csv".into();
    expected.paths.wsi_dir = "data/slides".into();
    expected.paths.coordinates_dir = "data/coordinates".into();
    expected.resolve_paths(&base);
    assert_eq!(
        cfg, expected,
        "configs/default.yaml differs from Config::default()"
    );

    // Same key tree as the schema.
    let text = std::fs::read_to_string(&path).unwrap();
    let tree: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let (mut in_file, mut in_schema) = (Vec::new(), Vec::new());
    key_paths(&tree, "", &mut in_file);
    key_paths(
        &serde_yaml::to_value(Config::default()).unwrap(),
        "",
        &mut in_schema,
    );
    in_file.sort();
    in_schema.sort();
    assert_eq!(in_file, in_schema);

    // Every leaf line carries a comment.
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.ends_with(':') {
            continue;
        }
        assert!(
            t.contains(" #"),
            "line without a comment in default.yaml: {line}"
        );
    }
}

#[test]
fn upstream_preset_values() {
    let cfg = Config::load(&configs_dir().join("pbip-upstream.yaml"), &[]).unwrap();
    assert_eq!(cfg.training.optimizer.lr, 5e-5);
    assert_eq!(cfg.training.optimizer.weight_decay, 1e-3);
    assert_eq!(cfg.training.scheduler.kind, SchedulerType::Poly);
    assert_eq!(cfg.training.scheduler.warmup_epochs, 0.0);
    assert_eq!(cfg.training.loss_weights.cam_smooth, 0.0);
    assert_eq!(cfg.training.loss_weights.cam_sparsity, 0.0);
    assert_eq!(cfg.training.cam_mean_weight, 0.0005);
    assert_eq!(cfg.training.temperature, 0.07);
    assert_eq!(cfg.training.mask_threshold, 0.5);
    assert_eq!(cfg.training.normalize.channel_order, ChannelOrder::Bgr);
    assert_eq!(
        cfg.prototypes.encoder.normalize.channel_order,
        ChannelOrder::Bgr
    );
    assert_eq!(cfg.model.backbone, Backbone::MitB1);
    assert_eq!(cfg.prototypes.kmeans.init, KMeansInit::NumpyLegacy);
    assert_eq!(cfg.kmeans_seed(), 42);
    assert_eq!(cfg.prototypes.kmeans.empty_cluster, EmptyCluster::Keep);
    // Untouched keys keep the defaults.
    assert_eq!(cfg.inference.overlap_ratio, 0.5);
    assert_eq!(cfg.training.checkpoint_interval, 1000);
}

#[test]
fn seed_defaults_in_default_yaml() {
    let cfg = Config::load(
        &configs_dir().join("default.yaml"),
        &["training.epochs=3".to_string()],
    )
    .unwrap();
    assert_eq!(cfg.training.epochs, 3);
    assert_eq!(cfg.training.batch_size, 10);
    assert_eq!(cfg.training.optimizer.lr, 0.001);
    assert_eq!(cfg.training.optimizer.weight_decay, 0.0005);
    assert_eq!(cfg.training.scheduler.kind, SchedulerType::Cosine);
    assert_eq!(
        cfg.training.loss_weights.scale_weights,
        vec![0.0, 0.1, 1.0, 1.0]
    );
    assert_eq!(cfg.training.validation_interval, 100);
    assert_eq!(cfg.inference.batch_size, pbip_config::BatchSize::Fixed(32));
    assert!(cfg.inference.use_crf && !cfg.inference.use_tta);
    assert_eq!(
        cfg.inference.post_processing.morphological_op,
        MorphOp::Closing
    );
    assert_eq!(cfg.inference.post_processing.min_component_size, 100);
    assert!(cfg.paths.wsi_dir.is_absolute());
}

#[test]
fn vit_encoder_keys_from_overrides_and_files() {
    let cfg = Config::load(
        &configs_dir().join("default.yaml"),
        &[
            "prototypes.encoder.kind=vit".to_string(),
            "prototypes.encoder.vit.preset=h-optimus-0".to_string(),
            "prototypes.encoder.vit.arch={depth: 2, global_pool: avg}".to_string(),
            "prototypes.encoder.vit.normalization=config".to_string(),
        ],
    )
    .unwrap();
    let enc = &cfg.prototypes.encoder;
    assert_eq!(enc.kind, EncoderKind::Vit);
    assert_eq!(enc.vit.preset.as_deref(), Some("h-optimus-0"));
    assert_eq!(enc.vit.normalization, Some(VitNormalization::Config));
    let arch = enc.vit.arch.as_ref().unwrap();
    assert_eq!(arch["depth"].as_u64(), Some(2));
    assert_eq!(arch["global_pool"].as_str(), Some("avg"));

    // the free-form `arch` section is accepted in a file; the keys around it are still checked
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vit.yaml");
    std::fs::write(
        &file,
        "prototypes:\n  encoder:\n    kind: vit\n    vit:\n      preset: uni\n      arch:\n        depth: 4\n",
    )
    .unwrap();
    let layered = Config::load_layered(&[configs_dir().join("default.yaml"), file], &[]).unwrap();
    let arch = layered.prototypes.encoder.vit.arch.unwrap();
    assert_eq!(arch["depth"].as_u64(), Some(4));
    assert_eq!(
        layered.prototypes.encoder.vit.preset.as_deref(),
        Some("uni")
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "prototypes:\n  encoder:\n    kind: vit\n    vit:\n      presett: uni\n",
    )
    .unwrap();
    let e = Config::load_layered(&[configs_dir().join("default.yaml"), bad], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("presett"), "{e}");
}

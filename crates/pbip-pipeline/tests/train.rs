//! Stage 3 (`pbip train`) on synthetic slides: outputs, TensorBoard files, resume after SIGKILL,
//! non-finite handling and bad inputs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pbip_config::Config;
use pbip_pipeline::stage3_train::{self as s3, TrainOptions};
use pbip_pipeline::{RunOptions, run_stage};

/// Synthetic data + the prototype bank of stages 0-2 (small random Swin), built once.
struct Base {
    _dir: tempfile::TempDir,
    data: PathBuf,
    features: PathBuf,
}

const SWIN: [&str; 4] = [
    "prototypes.encoder.embed_dim=24",
    "prototypes.encoder.depths=[1,1,2,1]",
    "prototypes.encoder.heads=[1,2,4,8]",
    "prototypes.batch_size=8",
];

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let opts = pbip_synth::SynthOptions {
            num_slides: 8,
            size_px: 1024,
            seed: 11,
            ..pbip_synth::SynthOptions::new(&data)
        };
        pbip_synth::generate(&opts).unwrap();
        let work = dir.path().join("work");
        let mut o: Vec<String> = SWIN.iter().map(|s| s.to_string()).collect();
        o.push(format!("paths.work_dir={}", work.display()));
        o.push("prototypes.samples_per_wsi=6".into());
        let cfg = Config::load(&data.join("config.yaml"), &o).unwrap();
        for stage in 0..3 {
            run_stage(stage, &cfg, &RunOptions::default()).unwrap();
        }
        Base {
            features: work.join("image_features"),
            data,
            _dir: dir,
        }
    })
}

/// Tiny CPU training settings (64 px patches, MiT-b0, batch 2, 2 epochs x 3 steps).
fn tiny() -> Vec<String> {
    [
        "device=cpu",
        "model.backbone=mit_b0",
        "patch_size=64",
        "training.batch_size=2",
        "training.epochs=2",
        "training.iterations_per_epoch=3",
        "training.optimizer.lr=0.001",
        "training.loss_weights.contrastive=0",
        "training.validation_interval=2",
        "training.checkpoint_interval=2",
        "training.log_interval=1",
        "training.num_workers=1",
        "training.scheduler.warmup_epochs=0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A work dir holding a copy of the prototype bank, and the config for it. `data` defaults to
/// the shared synthetic data.
fn setup(work: &Path, data: Option<&Path>, extra: &[String]) -> Config {
    let b = base();
    let data = data.unwrap_or(&b.data);
    let feats = work.join("image_features");
    std::fs::create_dir_all(&feats).unwrap();
    for e in std::fs::read_dir(&b.features).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), feats.join(e.file_name())).unwrap();
        }
    }
    let mut o: Vec<String> = SWIN.iter().map(|s| s.to_string()).collect();
    o.extend(tiny());
    o.push(format!("paths.work_dir={}", work.display()));
    // Data may be a partial copy: slides always come from the shared set.
    o.push(format!("paths.wsi_dir={}", b.data.join("slides").display()));
    o.extend(extra.iter().cloned());
    Config::load(&data.join("config.yaml"), &o).unwrap()
}

/// A private copy of the CSVs, coordinates and masks (not the slides) for tests that corrupt them.
fn copy_data(dst: &Path) {
    let b = base();
    for sub in ["coordinates", "masks"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
        for e in std::fs::read_dir(b.data.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(sub).join(e.file_name())).unwrap();
        }
    }
    for f in ["config.yaml", "split.csv", "labels.csv"] {
        std::fs::copy(b.data.join(f), dst.join(f)).unwrap();
    }
}

fn split_names(data: &Path, column: &str) -> Vec<String> {
    let text = std::fs::read_to_string(data.join("split.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| h.trim() == column).unwrap();
    lines
        .filter_map(|l| l.split(',').nth(col).map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

fn tensors(
    path: &Path,
) -> (
    pbip_weights::TensorMap,
    std::collections::BTreeMap<String, String>,
) {
    pbip_weights::read_safetensors(path).unwrap()
}

#[test]
fn trains_and_writes_checkpoints_tensorboard_and_logs() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let cfg = setup(&work, None, &[]);
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    let ck = work.join("checkpoints");
    assert!(out.summary.completed);
    assert_eq!(out.summary.steps, 6);
    assert_eq!(out.summary.total_steps, 6);
    for f in [
        "latest.safetensors",
        "best.safetensors",
        "latest.state.safetensors",
        "train_summary.json",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    // Periodic checkpoints (checkpoint_interval 2, 3 iterations per epoch, 6 steps): one per
    // epoch end (steps 3, 6) and one per interval step inside an epoch (2, 4); none overwritten.
    let mut periodic: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch_"))
        .collect();
    periodic.sort();
    assert_eq!(
        periodic,
        [
            "epoch_1.safetensors",
            "epoch_1_step_2.safetensors",
            "epoch_2.safetensors",
            "epoch_2_step_4.safetensors",
        ]
    );
    let mut snapshots = Vec::new();
    for (f, step, epoch) in [
        ("epoch_1_step_2", "2", "1"),
        ("epoch_1", "3", "1"),
        ("epoch_2_step_4", "4", "2"),
        ("epoch_2", "6", "2"),
    ] {
        let (map, meta) = tensors(&ck.join(format!("{f}.safetensors")));
        assert_eq!(
            (meta["step"].as_str(), meta["epoch"].as_str()),
            (step, epoch),
            "{f}"
        );
        assert!(meta["pbip_config"].contains("class_order"), "{f}");
        assert_eq!(meta["k_list"], "3,3", "{f}");
        snapshots.push(map);
    }
    // Each file holds the weights of its own step: consecutive snapshots differ, and the last
    // one is the final (latest) model.
    for w in snapshots.windows(2) {
        assert!(
            w[0].iter().any(|(k, t)| t.data != w[1][k].data),
            "two periodic checkpoints hold the same weights"
        );
    }
    let (latest, _) = tensors(&ck.join("latest.safetensors"));
    assert!(latest.iter().all(|(k, t)| t.data == snapshots[3][k].data));
    // Checkpoint metadata and round trip through the model loader.
    let (map, meta) = tensors(&ck.join("latest.safetensors"));
    assert_eq!(meta["step"], "6");
    assert_eq!(meta["k_list"], "3,3");
    assert_eq!(meta["class_order"], "[\"benign\",\"tumor\"]");
    assert!(meta["pbip_config"].contains("class_order"));
    let metrics: serde_json::Value = serde_json::from_str(&meta["metrics"]).unwrap();
    assert_eq!(metrics["step"], 6);
    let thr: f64 = meta["gate_threshold"].parse().unwrap();
    assert!((0.0..=1.0).contains(&thr));
    assert_eq!(map["prototypes"].shape, vec![6, 512]);
    let (model, ncfg, _) = pbip_model::ClassNet::load_safetensors(
        &ck.join("latest.safetensors"),
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    assert_eq!(ncfg.k_list, vec![3, 3]);
    assert_eq!(model.num_classes(), 2);
    // Validation ran at steps 2, 3 (epoch end), 4, 6 and the last one is recorded.
    let last = out.summary.last_val.as_ref().unwrap();
    assert_eq!(last.step, 6);
    assert!(last.patches >= 1 && last.slides_with_gt >= 1, "{last:?}");
    assert!(last.miou.is_some() && last.auc.is_some(), "{last:?}");

    // TensorBoard files parse and hold every loss component, lr, data wait and val metrics.
    let runs = work.join("runs");
    let mut events = Vec::new();
    for e in std::fs::read_dir(&runs).unwrap() {
        events.extend(pbip_tensorboard::read_events(e.unwrap().path()).unwrap());
    }
    let sc = pbip_tensorboard::scalars(&events);
    let steps_of = |tag: &str| -> Vec<i64> {
        sc.iter()
            .filter(|(t, _, _)| t == tag)
            .map(|(_, s, _)| *s)
            .collect()
    };
    for tag in [
        "train/loss",
        "train/loss_cls",
        "train/loss_fg",
        "train/loss_bg",
        "train/cam_mean",
        "train/lr",
        "train/data_wait_fraction",
        "train/patches_per_sec",
    ] {
        assert_eq!(steps_of(tag), vec![1, 2, 3, 4, 5, 6], "{tag}");
    }
    // Step 0 is the untrained model's validation (the baseline).
    assert_eq!(steps_of("val/miou"), vec![0, 2, 3, 4, 6]);
    assert_eq!(steps_of("val/auc"), vec![0, 2, 3, 4, 6]);
    assert_eq!(out.summary.untrained_val.as_ref().map(|v| v.step), Some(0));
    // lr follows the schedule: warmup of round(0.5 * 3) = 2 steps then cosine.
    let lr: Vec<f64> = sc
        .iter()
        .filter(|(t, _, _)| t == "train/lr")
        .map(|(_, _, v)| *v)
        .collect();
    assert!(
        (lr[0] - 0.0005).abs() < 1e-9 && (lr[1] - 0.001).abs() < 1e-9,
        "{lr:?}"
    );
    assert!(lr[5] < lr[2], "{lr:?}");

    let log = std::fs::read_to_string(work.join("logs.txt")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("step ")).count(),
        6,
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("val step ")).count(),
        4,
        "{log}"
    );
    assert!(log.contains("data-wait"), "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("untrained val step 0"))
            .count(),
        1,
        "{log}"
    );

    // A finished run is up to date for `pbip run`.
    assert_eq!(
        pbip_pipeline::stage_freshness(3, &cfg),
        pbip_pipeline::Freshness::UpToDate
    );
}

/// Environment variable that turns `resume_child` into the training process to kill.
const CHILD_ENV: &str = "PBIP_TRAIN_RESUME_CHILD";

/// Not a test on its own: the process `resume_after_sigkill_matches_uninterrupted_run` starts
/// and kills (it trains in the work dir named by `PBIP_TRAIN_RESUME_CHILD`).
#[test]
fn resume_child() {
    let Ok(work) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg = setup(Path::new(&work), None, &resume_settings());
    s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
}

fn resume_settings() -> Vec<String> {
    [
        "training.epochs=3",
        "training.iterations_per_epoch=4",
        "training.checkpoint_interval=1",
        "training.validation_interval=5",
        "training.num_workers=2",
        "training.grad_clip=1.0",
        "training.augment.color_jitter=0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn resume_after_sigkill_matches_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    // Uninterrupted reference run.
    let ref_work = d.path().join("reference");
    let cfg = setup(&ref_work, None, &resume_settings());
    let full = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert!(full.summary.completed);
    assert_eq!(full.summary.steps, 12);

    // The same run in a child process, killed with SIGKILL once it has saved a state mid-run.
    let work = d.path().join("killed");
    std::fs::create_dir_all(&work).unwrap();
    let state = work.join("checkpoints").join(s3::STATE_FILE);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let step_in_state = |p: &Path| -> Option<u64> {
        let (_, meta) = pbip_weights::read_safetensors(p).ok()?;
        let v: serde_json::Value = serde_json::from_str(meta.get(s3::STATE_META_KEY)?).ok()?;
        v["next_step"].as_u64()
    };
    let killed_at = loop {
        if let Some(s) = step_in_state(&state)
            && s >= 3
        {
            break s;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child ended before it could be killed: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let saved = step_in_state(&state).unwrap();
    assert!(
        saved >= killed_at && saved < 12,
        "killed too late: state at step {saved}"
    );
    let summary_done = s3::read_summary(&setup(&work, None, &resume_settings()))
        .map(|s| s.completed)
        .unwrap_or(false);
    assert!(!summary_done, "the killed run must not have finished");

    // `--resume` continues from the saved state and ends with the same weights.
    let cfg_k = setup(&work, None, &resume_settings());
    let resumed = s3::train(
        &cfg_k,
        &RunOptions::default(),
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(resumed.summary.completed);
    assert_eq!(resumed.summary.steps, 12);
    assert_eq!(
        resumed.summary.throughput.steps,
        12 - saved,
        "resumed from step {saved}"
    );
    let (a, _) = tensors(&ref_work.join("checkpoints/latest.safetensors"));
    let (b, _) = tensors(&work.join("checkpoints/latest.safetensors"));
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (k, ta) in &a {
        let tb = &b[k];
        assert_eq!(ta.shape, tb.shape, "{k}");
        let same = ta
            .data
            .iter()
            .zip(&tb.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{k} differs after resume");
        compared += ta.data.len();
    }
    assert!(compared > 1_000_000, "{compared}");
    // And the weights did change during training (the comparison is not trivially equal).
    let init = s3::initial_model(&cfg, &burn::tensor::Device::flex())
        .unwrap()
        .to_tensor_map()
        .unwrap();
    let moved = init.iter().any(|(k, t)| t.data != a[k].data);
    assert!(moved);
}

#[test]
fn non_finite_losses_stop_the_run_with_the_batch_saved() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let cfg = setup(
        &work,
        None,
        &[
            "training.optimizer.lr=1e30".into(),
            "training.max_nonfinite_steps=2".into(),
            "training.scheduler.type=constant".into(),
            "training.scheduler.warmup_epochs=0".into(),
        ],
    );
    let err = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    assert!(err.contains("nonfinite.safetensors"), "{err}");
    let (map, meta) = tensors(&work.join("checkpoints/nonfinite.safetensors"));
    assert_eq!(map["images"].shape, vec![2, 3, 64, 64]);
    let patches: serde_json::Value = serde_json::from_str(&meta["patches"]).unwrap();
    assert_eq!(patches.as_array().unwrap().len(), 2);
    assert!(patches[0]["slide"].as_str().unwrap().starts_with("slide_"));
    assert!(patches[0]["x_lv0"].is_i64());
    let log = std::fs::read_to_string(work.join("logs.txt")).unwrap();
    assert!(log.contains("step skipped"), "{log}");
}

#[test]
fn training_split_with_one_class_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    copy_data(&data);
    let train = split_names(&data, "train");
    let labels = std::fs::read_to_string(data.join("labels.csv")).unwrap();
    let relabelled: String = labels
        .lines()
        .map(|l| match l.split_once(',') {
            Some((name, _)) if train.iter().any(|t| t == name) => format!("{name},1\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(data.join("labels.csv"), relabelled).unwrap();
    let cfg = setup(&d.path().join("work"), Some(&data), &[]);
    let err = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no slide of class") && err.contains("benign"),
        "{err}"
    );
}

#[test]
fn prototypes_with_another_class_order_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(
        &d.path().join("work"),
        None,
        &["class_order=[tumor,benign]".into()],
    );
    let err = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("class_order"), "{err}");
    assert!(err.contains("prototype"), "{err}");
}

#[test]
fn resume_without_state_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(&d.path().join("work"), None, &[]);
    let err = s3::train(
        &cfg,
        &RunOptions::default(),
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nothing to resume"), "{err}");
}

#[test]
fn bad_slides_are_excluded_with_a_warning_and_training_continues() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    copy_data(&data);
    let train = split_names(&data, "train");
    let val = split_names(&data, "val");
    // A training slide whose coordinates all lie outside it.
    let victim = &train[0];
    let rec = pbip_coords::Hs2pV1Record {
        x: 50_000,
        y: 50_000,
        tile_size_resized: 224,
        tile_level: 0,
        resize_factor: 1.0,
        tile_size_lv0: 224,
        target_spacing: 0.5,
    };
    pbip_coords::write_hs2p_v1_npy(
        data.join("coordinates").join(format!("{victim}.npy")),
        &[rec.clone(), rec],
    )
    .unwrap();
    // A val slide without its GT mask.
    let no_gt = &val[0];
    std::fs::remove_file(data.join("masks").join(format!("{no_gt}.png"))).unwrap();
    let work = d.path().join("work");
    let cfg = setup(
        &work,
        Some(&data),
        &[
            "training.epochs=1".into(),
            "training.iterations_per_epoch=2".into(),
        ],
    );
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert!(out.summary.completed);
    let log = std::fs::read_to_string(work.join("logs.txt")).unwrap();
    assert!(
        log.contains(&format!("train slide \"{victim}\" excluded")),
        "{log}"
    );
    assert!(
        log.contains(&format!("val slide \"{no_gt}\": no GT mask")),
        "{log}"
    );
    let v = out.summary.last_val.unwrap();
    assert_eq!(v.slides, val.len());
    assert_eq!(v.slides_with_gt, val.len() - 1);
}

#[test]
fn stop_and_resume_in_process_matches_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let settings = ["training.num_workers=1".to_string()];
    let cfg_a = setup(&d.path().join("a"), None, &settings);
    s3::train(&cfg_a, &RunOptions::default(), &TrainOptions::default()).unwrap();
    let cfg_b = setup(&d.path().join("b"), None, &settings);
    let part = s3::train(
        &cfg_b,
        &RunOptions::default(),
        &TrainOptions {
            stop_after_steps: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!part.summary.completed);
    assert_eq!(part.summary.steps, 2);
    let rest = s3::train(
        &cfg_b,
        &RunOptions::default(),
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rest.summary.completed);
    assert_eq!(rest.summary.throughput.steps, 4);
    let (a, _) = tensors(&d.path().join("a/checkpoints/latest.safetensors"));
    let (b, _) = tensors(&d.path().join("b/checkpoints/latest.safetensors"));
    let differing: Vec<&String> = a
        .keys()
        .filter(|k| {
            a[*k]
                .data
                .iter()
                .zip(&b[*k].data)
                .any(|(x, y)| x.to_bits() != y.to_bits())
        })
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} tensors differ: {:?}",
        differing.len(),
        a.len(),
        &differing[..differing.len().min(8)]
    );
}

#[test]
fn contrastive_terms_train_through_the_frozen_encoder() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let cfg = setup(
        &work,
        None,
        &[
            "patch_size=224".into(),
            "training.epochs=1".into(),
            "training.iterations_per_epoch=2".into(),
            "training.loss_weights.contrastive=0.1".into(),
            "training.temperature=0.07".into(),
            "training.mask_threshold=0.5".into(),
            "training.cam_mean_weight=0.0005".into(),
        ],
    );
    let enc = work.join("image_features/encoder.safetensors");
    let before = std::fs::read(&enc).unwrap();
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert!(out.summary.completed);
    assert_eq!(
        std::fs::read(&enc).unwrap(),
        before,
        "the encoder must stay frozen"
    );
    assert_eq!(
        out.summary.nonfinite_steps, 0,
        "a skipped step would make the checks below vacuous"
    );
    let mut events = Vec::new();
    for e in std::fs::read_dir(work.join("runs")).unwrap() {
        events.extend(pbip_tensorboard::read_events(e.unwrap().path()).unwrap());
    }
    let sc = pbip_tensorboard::scalars(&events);
    let vals = |tag: &str| -> Vec<f64> {
        sc.iter()
            .filter(|(t, _, _)| t == tag)
            .map(|(_, _, v)| *v)
            .collect()
    };
    let pairs = vals("train/selected_pairs");
    let fg = vals("train/loss_fg");
    let bg = vals("train/loss_bg");
    assert_eq!(pairs.len(), 2);
    // Every step with a selected pair has positive InfoNCE terms (−log of a ratio < 1).
    for i in 0..2 {
        if pairs[i] > 0.0 {
            assert!(fg[i] > 0.0 && bg[i] > 0.0, "{pairs:?} {fg:?} {bg:?}");
        }
    }
    assert!(
        pairs.iter().any(|p| *p > 0.0),
        "no pair selected in 2 steps: {pairs:?}"
    );
    let total = vals("train/loss");
    let cls = vals("train/loss_cls");
    let cam = vals("train/cam_mean");
    let (tv, l1) = (vals("train/cam_tv"), vals("train/cam_l1"));
    for i in 0..2 {
        assert!(
            tv[i] > 0.0 && l1[i] > 0.0,
            "seed regularisers on by default: {tv:?} {l1:?}"
        );
        // cam_smooth 0.1 and cam_sparsity 0.01 are the seed defaults.
        let expect = cls[i] + 0.1 * (fg[i] + bg[i] + 0.0005 * cam[i]) + 0.1 * tv[i] + 0.01 * l1[i];
        assert!(
            (total[i] - expect).abs() < 1e-4 * expect.abs().max(1.0),
            "{i}: {} vs {expect}",
            total[i]
        );
    }
}

#[test]
fn vit_encoder_runs_stages_1_to_3_with_its_own_feature_width() {
    // stages 0-2 with a small random ViT (registers, LayerScale, SwiGLU, class token + mean patch
    // token: 2 x 32 = 64-d features), then training with the contrastive terms through it, at a
    // patch size (64 px) other than its native 224 (resized position embedding)
    let b = base();
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let vit = [
        "prototypes.encoder.kind=vit".to_string(),
        "prototypes.encoder.vit.arch={embed_dim: 32, depth: 1, num_heads: 2, patch_size: 16, \
         num_reg_tokens: 2, no_embed_class: true, init_values: 0.1, mlp: swiglu_packed, \
         global_pool: token_avg}"
            .to_string(),
        "prototypes.samples_per_wsi=6".to_string(),
        "prototypes.batch_size=8".to_string(),
        format!("paths.work_dir={}", work.display()),
    ];
    let cfg = Config::load(&b.data.join("config.yaml"), &vit).unwrap();
    for stage in 0..3 {
        run_stage(stage, &cfg, &RunOptions::default()).unwrap();
    }
    let s2 = pbip_pipeline::stage2_cluster_prototypes::read_prototypes;
    let (bank, meta) = s2(&work.join("image_features/prototypes.safetensors")).unwrap();
    assert_eq!(
        bank.shape[1], 64,
        "the prototype width is the ViT's feature width"
    );
    assert_eq!(meta.encoder.kind, "vit");
    assert_eq!(meta.encoder.vit.map(|v| v.output_dim()), Some(64));

    let mut o = tiny();
    o.extend(vit.iter().cloned());
    o.extend([
        "training.epochs=1".to_string(),
        "training.iterations_per_epoch=2".to_string(),
        "training.loss_weights.contrastive=0.1".to_string(),
    ]);
    let cfg = Config::load(&b.data.join("config.yaml"), &o).unwrap();
    let enc = work.join("image_features/encoder.safetensors");
    let before = std::fs::read(&enc).unwrap();
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert!(out.summary.completed);
    assert_eq!(out.summary.nonfinite_steps, 0);
    assert_eq!(
        std::fs::read(&enc).unwrap(),
        before,
        "the encoder stays frozen"
    );
}

/// Manual tool: validates a checkpoint. `PBIP_EVAL_CKPT=ckpt PBIP_EVAL_CONFIG=cfg.yaml
/// PBIP_EVAL_SET="k=v;k=v" cargo test --test train eval_checkpoint -- --ignored --nocapture`.
#[test]
#[ignore]
fn eval_checkpoint() {
    let ckpt = PathBuf::from(std::env::var("PBIP_EVAL_CKPT").unwrap());
    let cfg_path = PathBuf::from(std::env::var("PBIP_EVAL_CONFIG").unwrap());
    let set: Vec<String> = std::env::var("PBIP_EVAL_SET")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let cfg = Config::load(&cfg_path, &set).unwrap();
    let (model, _, _) =
        pbip_model::ClassNet::load_safetensors(&ckpt, &burn::tensor::Device::flex()).unwrap();
    let v = s3::validate_model(&cfg, &model).unwrap();
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
}

/// A JSON field of the training state of a work dir.
fn state_json(work: &Path) -> serde_json::Value {
    let (_, meta) = tensors(&work.join("checkpoints").join(s3::STATE_FILE));
    serde_json::from_str(&meta[s3::STATE_META_KEY]).unwrap()
}

fn tb_values(work: &Path, tag: &str) -> Vec<(i64, f64)> {
    let mut events = Vec::new();
    for e in std::fs::read_dir(work.join("runs")).unwrap() {
        events.extend(pbip_tensorboard::read_events(e.unwrap().path()).unwrap());
    }
    let mut v: Vec<(i64, f64)> = pbip_tensorboard::scalars(&events)
        .into_iter()
        .filter(|(t, _, _)| t == tag)
        .map(|(_, s, x)| (s, x))
        .collect();
    v.sort_by_key(|(s, _)| *s);
    v
}

/// Skipped (non-finite) steps: the lr schedule is indexed by the iteration, skipped ones
/// included (torch's per-iteration scheduler), AdamW's bias correction counts only the updates,
/// and a run stopped right after a skipped step resumes to the same weights bit for bit.
#[test]
fn skipped_steps_advance_the_schedule_and_resume_identically() {
    let d = tempfile::tempdir().unwrap();
    // Steps 1 and 2 (0-based iterations) are skipped as if their loss were NaN.
    let faults: std::collections::BTreeSet<u64> = [1, 2].into_iter().collect();
    let topts = TrainOptions {
        fault_nonfinite_steps: faults.clone(),
        ..Default::default()
    };
    let settings = ["training.num_workers=1".to_string()];
    let full_work = d.path().join("full");
    let cfg = setup(&full_work, None, &settings);
    let full = s3::train(&cfg, &RunOptions::default(), &topts).unwrap();
    assert!(full.summary.completed);
    assert_eq!(full.summary.steps, 6);
    assert_eq!(full.summary.nonfinite_steps, 2);
    let log = std::fs::read_to_string(full_work.join("logs.txt")).unwrap();
    assert_eq!(log.matches("injected fault").count(), 2, "{log}");

    // lr of iteration i (logged at step i + 1) is the schedule at i whatever was skipped:
    // tiny(): base 1e-3, warmup round(0.5 x 3) = 2 iterations, then cosine to 0 over the
    // remaining 4 of the 2 x 3 = 6 iterations.
    let expect = |i: u64| -> f64 {
        if i < 2 {
            1e-3 * (i + 1) as f64 / 2.0
        } else {
            0.5e-3 * (1.0 + (std::f64::consts::PI * (i - 2) as f64 / 4.0).cos())
        }
    };
    let lr = tb_values(&full_work, "train/lr");
    assert_eq!(lr.len(), 6, "{lr:?}");
    for (step, v) in &lr {
        let e = expect(*step as u64 - 1);
        assert!(
            (v - e).abs() <= 1e-6 * e.max(1e-9),
            "step {step}: lr {v}, expected {e}"
        );
    }
    // Were the schedule advanced only by updates (upstream's PolyWarmupAdamW), iteration 3
    // would get lr_at(1) = 1e-3 instead of lr_at(3) ≈ 8.5e-4: the check above tells them apart.
    assert!((expect(3) - expect(1)).abs() > 1e-4);

    // Bias correction: every parameter was updated 6 − 2 = 4 times.
    let st = state_json(&full_work);
    assert_eq!(st["next_step"], 6);
    assert_eq!(st["total_nonfinite"], 2);
    let counts = st["adam_counts"].as_object().unwrap();
    assert!(!counts.is_empty());
    for (k, c) in counts {
        assert_eq!(c.as_u64(), Some(4), "{k}");
    }

    // Stop right after the first skipped step, resume with the same faults: same weights.
    let part_work = d.path().join("part");
    let cfg_p = setup(&part_work, None, &settings);
    let part = s3::train(
        &cfg_p,
        &RunOptions::default(),
        &TrainOptions {
            stop_after_steps: Some(2),
            ..topts.clone()
        },
    )
    .unwrap();
    assert!(!part.summary.completed);
    let st = state_json(&part_work);
    assert_eq!(st["next_step"], 2);
    assert_eq!(st["consecutive_nonfinite"], 1);
    let rest = s3::train(
        &cfg_p,
        &RunOptions::default(),
        &TrainOptions {
            resume: true,
            ..topts
        },
    )
    .unwrap();
    assert!(rest.summary.completed);
    assert_eq!(rest.summary.nonfinite_steps, 2);
    let lr_p = tb_values(&part_work, "train/lr");
    let lr_p: Vec<f64> = lr_p.iter().map(|(_, v)| *v).collect();
    let lr_f: Vec<f64> = lr.iter().map(|(_, v)| *v).collect();
    assert_eq!(lr_p, lr_f);
    let (a, _) = tensors(&full_work.join("checkpoints/latest.safetensors"));
    let (b, _) = tensors(&part_work.join("checkpoints/latest.safetensors"));
    assert_eq!(a.len(), b.len());
    for (k, ta) in &a {
        let same = ta
            .data
            .iter()
            .zip(&b[k].data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same && ta.shape == b[k].shape, "{k} differs after resume");
    }
    let counts_p = state_json(&part_work)["adam_counts"].clone();
    assert_eq!(&counts_p, &state_json(&full_work)["adam_counts"]);
}

#[test]
fn unlearnable_data_ends_at_chance() {
    // Every patch of every slide is the same piece of blank glass (the top-left corner), so the
    // slide labels are independent of the images: the run must say it is at chance.
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    copy_data(&data);
    let coords = data.join("blank_coordinates");
    std::fs::create_dir_all(&coords).unwrap();
    for split in ["train", "val", "test"] {
        for name in split_names(&data, split) {
            std::fs::write(coords.join(format!("{name}.txt")), "0 0\n2 2\n4 4\n").unwrap();
        }
    }
    let work = d.path().join("work");
    let cfg = setup(
        &work,
        Some(&data),
        &[
            format!("paths.coordinates_dir={}", coords.display()),
            "paths.coordinates_suffix=.txt".into(),
            "training.epochs=1".into(),
            "training.iterations_per_epoch=8".into(),
            "training.validation_interval=2".into(),
        ],
    );
    let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
    assert_eq!(
        out.summary.learning,
        s3::chance::Learning::AtChance,
        "{:?}",
        out.summary.chance_checks
    );
    assert!(out.summary.learning_advice.contains("at chance"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("checkpoints/train_summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["learning"], "at_chance");
    // every check compares the loss with the constant predictor's
    for c in &out.summary.chance_checks {
        assert!(
            c.constant_loss > 0.0 && c.loss >= 0.97 * c.constant_loss,
            "{c:?}"
        );
    }
    let log = std::fs::read_to_string(work.join("logs.txt")).unwrap();
    assert!(log.contains("WARNING: training is at chance"), "{log}");
    assert!(out.report.summary.iter().any(|l| l.contains("at chance")));
}

/// `training.precision: bf16` trains the same run as f32 within bf16 rounding: the same
/// batches and initial weights give a first-step loss within 0.2 % of the f32 run's, every later
/// step within 2 % (the weights drift apart by bf16-rounded updates), all finite (measured:
/// 1.4e-5 and at most 7e-4); the products
/// really ran in bf16 (the losses are not the f32 ones) and the summary says so.
#[test]
fn bf16_mixed_precision_trains_like_f32_within_rounding() {
    let mut losses = Vec::new();
    for precision in ["f32", "bf16"] {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        let cfg = setup(&work, None, &[format!("training.precision={precision}")]);
        let out = s3::train(&cfg, &RunOptions::default(), &TrainOptions::default()).unwrap();
        assert!(out.summary.completed);
        assert_eq!(out.summary.nonfinite_steps, 0);
        assert_eq!(out.summary.throughput.precision, precision);
        losses.push(tb_values(&work, "train/loss"));
    }
    let (f32_run, bf16_run) = (&losses[0], &losses[1]);
    assert_eq!(f32_run.len(), 6, "{f32_run:?}");
    assert_eq!(
        f32_run.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        bf16_run.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    eprintln!("train/loss f32 {f32_run:?}\ntrain/loss bf16 {bf16_run:?}");
    for (i, ((_, a), (_, b))) in f32_run.iter().zip(bf16_run).enumerate() {
        assert!(b.is_finite());
        let rel = (a - b).abs() / a.abs().max(1e-6);
        let tol = if i == 0 { 2e-3 } else { 2e-2 };
        assert!(
            rel <= tol,
            "step {i}: f32 {a} vs bf16 {b} ({rel:.2e} > {tol})"
        );
    }
    assert!(
        f32_run.iter().zip(bf16_run).any(|((_, a), (_, b))| a != b),
        "bf16 losses equal the f32 ones: the backbone did not run in bf16"
    );
}

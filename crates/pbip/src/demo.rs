//! `pbip synth` and `pbip demo`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use pbip_config::Config;
use pbip_pipeline::STAGES;
use pbip_pipeline::stage0_sample_prototypes;

/// The CPU preset (`configs/cpu.yaml`), built into the binary so `pbip demo` runs anywhere; the
/// demo writes it next to its data and layers the data's config over it, exactly as a user runs
/// `pbip run --config configs/cpu.yaml --config data/config.yaml`.
pub const CPU_PRESET: &str = include_str!("../../../configs/cpu.yaml");

/// What the demo sets beyond the preset and the synthetic data's config: its own work folder.
pub const DEMO_OVERRIDES: &[&str] = &["paths.work_dir=../work"];

/// Generates a synthetic dataset and returns a printable summary.
pub fn synth(out: &Path, slides: usize, size: u32, seed: u64) -> Result<String> {
    let opts = pbip_synth::SynthOptions {
        num_slides: slides,
        size_px: size,
        seed,
        ..pbip_synth::SynthOptions::new(out)
    };
    let s = pbip_synth::generate(&opts)
        .with_context(|| format!("generating synthetic data in {}", out.display()))?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "synthetic dataset in {}: {} slides of {size} x {size} px",
        s.out_dir.display(),
        s.slides.len()
    );
    for sl in &s.slides {
        let _ = writeln!(
            text,
            "  {:<12} {:<6} {:<5} {:>5} coordinates  tissue {:>4.1}%  tumour {:>4.1}%",
            sl.file_name,
            sl.class_name,
            sl.split.as_str(),
            sl.num_coordinates,
            100.0 * sl.tissue_fraction,
            100.0 * sl.tumour_fraction
        );
    }
    let _ = writeln!(text, "config:     {}", s.config_path.display());
    let _ = writeln!(text, "split CSV:  {}", s.split_csv.display());
    let _ = write!(text, "labels CSV: {}", s.labels_csv.display());
    Ok(text)
}

/// Synthetic data + every implemented stage, printing where every output is.
pub fn demo(
    out: &Path,
    size: u32,
    slides: usize,
    train_steps: Option<usize>,
    set: &[String],
) -> Result<()> {
    let data = out.join("data");
    let marker = data.join(".pbip-demo-params");
    let params = format!("slides={slides} size={size} seed=0\n");
    let reuse = std::fs::read_to_string(&marker).is_ok_and(|m| m == params)
        && data.join("config.yaml").is_file();
    if reuse {
        println!("reusing synthetic data in {}", data.display());
    } else {
        println!("{}", synth(&data, slides, size, 0)?);
        std::fs::write(&marker, &params)
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    let config_path = data.join("config.yaml");
    let preset_path = out.join("cpu.yaml");
    std::fs::write(&preset_path, CPU_PRESET)
        .with_context(|| format!("writing {}", preset_path.display()))?;
    let mut overrides: Vec<String> = DEMO_OVERRIDES.iter().map(|s| s.to_string()).collect();
    if let Some(n) = train_steps {
        overrides.push(format!("training.iterations_per_epoch={n}"));
        overrides.push("training.epochs=1".into());
    }
    overrides.extend(set.iter().cloned());
    let cfg = Config::load_layered(&[preset_path.clone(), config_path.clone()], &overrides)?;
    println!();
    println!(
        "running {} implemented stage(s) with the CPU preset {} and {}",
        STAGES.len(),
        preset_path.display(),
        config_path.display()
    );
    println!(
        "  equivalent: pbip run --config {} --config {} {}",
        preset_path.display(),
        config_path.display(),
        overrides
            .iter()
            .map(|o| format!("--set {o}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    crate::run_pipeline(&cfg, false)?;

    println!();
    println!("demo outputs:");
    println!("  data:      {}", data.display());
    println!("  work dir:  {}", cfg.paths.work_dir.display());
    let summary = stage0_sample_prototypes::read_summary(&cfg)?;
    println!(
        "  stage 0 prototype coordinates: {}",
        stage0_sample_prototypes::output_dir(&cfg).display()
    );
    for c in &summary.classes {
        println!(
            "    {:<8} {:>5} coordinates from {} slide(s): {}",
            c.class,
            c.coordinates,
            c.slides_sampled,
            c.per_slide
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let ex = pbip_pipeline::stage1_embed_prototypes::exemplars_path(&cfg);
    println!("  stage 1 exemplar features:   {}", ex.display());
    let (bank, meta) = pbip_pipeline::stage2_cluster_prototypes::read_prototypes(
        &pbip_pipeline::stage2_cluster_prototypes::prototypes_path(&cfg),
    )?;
    println!(
        "  stage 2 prototype bank:      {} ({} x {}, k_list {:?})",
        pbip_pipeline::stage2_cluster_prototypes::prototypes_path(&cfg).display(),
        bank.shape.first().copied().unwrap_or(0),
        meta.dim,
        meta.k_list
    );
    println!(
        "  stage 2 prototype sheets:    {}",
        pbip_pipeline::stage1_embed_prototypes::output_dir(&cfg)
            .join(pbip_pipeline::stage2_cluster_prototypes::SHEETS_DIR)
            .display()
    );
    let s3 = pbip_pipeline::stage3_train::read_summary(&cfg)?;
    println!(
        "  stage 3 checkpoints:         {} (latest, best, epoch_N .safetensors)",
        pbip_pipeline::stage3_train::output_dir(&cfg).display()
    );
    println!(
        "  stage 3 TensorBoard:         tensorboard --logdir {}",
        pbip_pipeline::stage3_train::runs_dir(&cfg).display()
    );
    println!(
        "  stage 3 log:                 {}",
        pbip_pipeline::stage3_train::log_path(&cfg).display()
    );
    println!(
        "  stage 3 training:            {} steps, {:.1} patches/s, model step {:.3} s, data wait {:.1}%",
        s3.steps,
        s3.throughput.patches_per_sec,
        s3.throughput.model_step_secs,
        100.0 * s3.throughput.data_wait_fraction
    );
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.3}"));
    if let Some(v) = &s3.last_val {
        println!(
            "  stage 3 final val metrics:   slide AUC {}, accuracy {}, patch AUC {}, deployable mIoU {} (gate threshold {:.3}), Dice {}, constant-map mIoU {}",
            f(v.auc),
            f(v.accuracy),
            f(v.patch_auc),
            f(v.miou),
            v.gate_threshold,
            f(v.mean_dice),
            f(v.constant_map_miou)
        );
    }
    println!("  stage 3 learning:            {}", s3.learning);
    if !s3.learning_advice.is_empty() {
        println!("  WARNING: {}", s3.learning_advice);
    }
    if let Some(v) = &s3.best_val {
        println!(
            "  stage 3 best val (step {}):  mIoU {}, AUC {}",
            v.step,
            f(v.miou),
            f(v.auc)
        );
    }
    let results = cfg
        .paths
        .work_dir
        .join(pbip_pipeline::stage4_evaluate::OUTPUT_DIR);
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join(pbip_pipeline::stage4_evaluate::METRICS_FILE))
            .with_context(|| format!("reading {}", results.display()))?,
    )?;
    let g = |k: &str| metrics[k]["miou"].as_f64();
    println!(
        "  stage 4 test metrics:        deployable mIoU {} (best constant map {} {}; label-masked {}, leak reference {}), slide accuracy {}",
        f(g("deployable")),
        metrics["best_constant_map"]["class"]
            .as_str()
            .unwrap_or("?"),
        f(g("best_constant_map")),
        f(g("label_masked")),
        f(g("leak_reference")),
        f(metrics["deployable"]["slide_classification"]["exact_match_accuracy"].as_f64())
    );
    println!(
        "  stage 4 report:              {}",
        results
            .join(pbip_pipeline::stage4_evaluate::REPORT_FILE)
            .display()
    );
    demo_infer(&cfg)
}

/// Stage 5 of the demo: whole-slide inference on the test slides (pbip tiles them itself, as for
/// new slides without coordinates), scored against the synthetic GT masks.
fn demo_infer(cfg: &Config) -> Result<()> {
    use pbip_pipeline::stage5_infer::{self, InferOptions, SlideSource, score};
    let ds = pbip_config::Dataset::load(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let slides: Vec<_> = ds
        .split(pbip_config::Split::Test)
        .iter()
        .map(|s| s.slide_path.clone())
        .collect();
    if slides.is_empty() {
        println!("  stage 5: no test slides");
        return Ok(());
    }
    let weights =
        pbip_pipeline::stage3_train::output_dir(cfg).join(pbip_pipeline::stage3_train::BEST_FILE);
    let n_slides = slides.len();
    let opts = InferOptions {
        source: SlideSource::Paths(slides),
        coordinates_dir: None,
        output_dir: Some(cfg.paths.work_dir.clone()),
        overwrite: false,
        shard: None,
        run: pbip_pipeline::RunOptions { progress: true },
    };
    println!();
    println!(
        "stage 5: pbip infer --weights {} on the {} test slide(s)",
        weights.display(),
        n_slides
    );
    let s = stage5_infer::run(cfg, &weights, &opts)?;
    if s.failed > 0 {
        anyhow::bail!(
            "stage 5: {} slide(s) failed, see {}",
            s.failed,
            s.batch_results.display()
        );
    }
    println!(
        "  stage 5 predictions:         {} ({} processed, {} skipped as complete; results {})",
        s.predictions_dir.display(),
        s.processed,
        s.skipped,
        s.batch_results.display()
    );
    let Some(gt_dir) = &cfg.paths.gt_dir else {
        return Ok(());
    };
    let positive = cfg.class_order.len().saturating_sub(1) as u8;
    for sc in score::score_predictions(&s.predictions_dir, gt_dir, positive)? {
        match (sc.tumour_iou, sc.trivial_iou) {
            (Some(iou), Some(triv)) => println!(
                "  stage 5 {:<12} tumour IoU {iou:.3} (all-tissue-is-tumour map {triv:.3})",
                sc.name
            ),
            _ => println!(
                "  stage 5 {:<12} benign: tissue called tumour {:.1}% (all-tissue-is-tumour map {:.0}%)",
                sc.name,
                100.0 * sc.false_positive_tissue_fraction,
                100.0 * sc.trivial_false_positive_fraction
            ),
        }
    }
    Ok(())
}

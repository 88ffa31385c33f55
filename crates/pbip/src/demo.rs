//! `pbip synth` and `pbip demo`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use pbip_config::Config;
use pbip_pipeline::STAGES;
use pbip_pipeline::stage0_sample_prototypes;

/// Overrides that size the pipeline for a CPU demo (used by `pbip demo`).
pub const DEMO_OVERRIDES: &[&str] = &[
    "paths.work_dir=../work",
    "device=cpu",
    "model.backbone=mit_b0",
    "prototypes.batch_size=8",
    "training.epochs=1",
    "training.batch_size=4",
    "training.num_workers=2",
    "inference.batch_size=8",
    "inference.use_crf=false",
];

/// Generates a synthetic dataset and returns a printable summary.
pub fn synth(out: &Path, slides: usize, size: u32, seed: u64) -> Result<String> {
    let opts = pbip_synth::SynthOptions { num_slides: slides, size_px: size, seed, ..pbip_synth::SynthOptions::new(out) };
    let s = pbip_synth::generate(&opts).with_context(|| format!("generating synthetic data in {}", out.display()))?;
    let mut text = String::new();
    let _ = writeln!(text, "synthetic dataset in {}: {} slides of {size} x {size} px", s.out_dir.display(), s.slides.len());
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
pub fn demo(out: &Path, size: u32, slides: usize) -> Result<()> {
    let data = out.join("data");
    let marker = data.join(".pbip-demo-params");
    let params = format!("slides={slides} size={size} seed=0\n");
    let reuse = std::fs::read_to_string(&marker).is_ok_and(|m| m == params) && data.join("config.yaml").is_file();
    if reuse {
        println!("reusing synthetic data in {}", data.display());
    } else {
        println!("{}", synth(&data, slides, size, 0)?);
        std::fs::write(&marker, &params).with_context(|| format!("writing {}", marker.display()))?;
    }
    let config_path = data.join("config.yaml");
    let overrides: Vec<String> = DEMO_OVERRIDES.iter().map(|s| s.to_string()).collect();
    let cfg = Config::load(&config_path, &overrides)?;
    println!();
    println!("running {} implemented stage(s) with {}", STAGES.len(), config_path.display());
    println!("  equivalent: pbip run --config {} {}", config_path.display(), overrides.iter().map(|o| format!("--set {o}")).collect::<Vec<_>>().join(" "));
    crate::run_pipeline(&cfg, false)?;

    println!();
    println!("demo outputs:");
    println!("  data:      {}", data.display());
    println!("  work dir:  {}", cfg.paths.work_dir.display());
    let summary = stage0_sample_prototypes::read_summary(&cfg)?;
    println!("  stage 0 prototype coordinates: {}", stage0_sample_prototypes::output_dir(&cfg).display());
    for c in &summary.classes {
        println!(
            "    {:<8} {:>5} coordinates from {} slide(s): {}",
            c.class,
            c.coordinates,
            c.slides_sampled,
            c.per_slide.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
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
    println!("  not implemented yet: stages 3-5 (training, evaluation, inference)");
    Ok(())
}

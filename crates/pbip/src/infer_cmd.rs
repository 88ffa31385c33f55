//! `pbip infer` and `pbip merge-results`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use pbip_pipeline::RunOptions;
use pbip_pipeline::stage5_infer::{self, InferOptions, SlideSource};

use crate::ConfigArgs;

/// Arguments of `pbip infer`.
#[derive(Debug, Clone, Args)]
pub(crate) struct InferArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Checkpoint (e.g. work_dir/checkpoints/best.safetensors).
    #[arg(long, value_name = "CKPT")]
    pub weights: PathBuf,
    /// Folder of slides (every supported slide file directly inside).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["manifest", "slides"])]
    pub input_dir: Option<PathBuf>,
    /// Manifest CSV `sample_id,image_path[,coordinates_path][,mpp]` (paths relative to the CSV).
    #[arg(long, value_name = "CSV", conflicts_with = "slides")]
    pub manifest: Option<PathBuf>,
    /// Coordinate folder for --input-dir / slide paths (`<stem><paths.coordinates_suffix>`);
    /// slides without a file there are tiled.
    #[arg(long, value_name = "DIR")]
    pub coordinates_dir: Option<PathBuf>,
    /// Output folder; `predictions/` is created inside (default: paths.work_dir).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Redo slides whose outputs are complete.
    #[arg(long)]
    pub overwrite: bool,
    /// This shard, 0-based (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, or JOB_COMPLETION_INDEX).
    #[arg(long)]
    pub shard_index: Option<usize>,
    /// Number of shards (default: SLURM_ARRAY_TASK_COUNT).
    #[arg(long)]
    pub num_shards: Option<usize>,
    /// Score the whole-slide masks against GT masks `<DIR>/<slide>.png` (u8 class index, 255 =
    /// no tissue) after inference: tumour IoU on slides with tumour, tissue called tumour on slides
    /// without, each next to the "all tissue is tumour" map; written to `predictions/scores.csv`.
    #[arg(long, value_name = "DIR")]
    pub gt_dir: Option<PathBuf>,
    /// The class scored by --gt-dir (default: the last of class_order).
    #[arg(long, value_name = "CLASS", requires = "gt_dir")]
    pub positive_class: Option<String>,
    /// Slide files.
    #[arg(value_name = "SLIDE")]
    pub slides: Vec<PathBuf>,
}

pub(crate) fn infer(args: &InferArgs) -> Result<()> {
    let cfg = args.config.load()?;
    let source = match (&args.input_dir, &args.manifest) {
        (Some(d), None) => SlideSource::Dir(d.clone()),
        (None, Some(m)) => SlideSource::Manifest(m.clone()),
        (None, None) if !args.slides.is_empty() => SlideSource::Paths(args.slides.clone()),
        _ => bail!("give the slides with --input-dir DIR, --manifest CSV or slide paths"),
    };
    let shard = stage5_infer::shard_from_env(args.shard_index, args.num_shards)?;
    let opts = InferOptions {
        source,
        coordinates_dir: args.coordinates_dir.clone(),
        output_dir: args.output_dir.clone(),
        overwrite: args.overwrite,
        shard,
        run: RunOptions { progress: true },
    };
    let s = stage5_infer::run(&cfg, &args.weights, &opts)?;
    println!(
        "infer: {} processed, {} skipped (complete), {} failed, {} in progress in another process; outputs in {}; results {}",
        s.processed,
        s.skipped,
        s.failed,
        s.in_progress_elsewhere,
        s.predictions_dir.display(),
        s.batch_results.display()
    );
    if let Some(gt_dir) = &args.gt_dir {
        let positive = match &args.positive_class {
            Some(name) => cfg
                .class_order
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--positive-class {name:?} is not in class_order {:?}",
                        cfg.class_order
                    )
                })?,
            None => cfg.class_order.len().saturating_sub(1),
        };
        let scores =
            stage5_infer::score::score_predictions(&s.predictions_dir, gt_dir, positive as u8)?;
        if scores.is_empty() {
            bail!(
                "--gt-dir {}: no GT mask <slide>.png for any predicted slide",
                gt_dir.display()
            );
        }
        let table = stage5_infer::score::scores_table(&scores, &cfg.class_order[positive]);
        print!("{table}");
        let csv = s.predictions_dir.join("scores.csv");
        stage5_infer::score::write_scores_csv(&csv, &scores)?;
        println!("scores: {}", csv.display());
    }
    if s.failed > 0 {
        let failed: Vec<String> = s
            .rows
            .iter()
            .filter(|r| r.status == "failed")
            .map(|r| format!("{}: {}", r.wsi_name, r.error))
            .collect();
        bail!("{} slide(s) failed: {}", s.failed, failed.join("; "));
    }
    Ok(())
}

pub(crate) fn merge_results(output_dir: &std::path::Path) -> Result<()> {
    let dir = output_dir.join(stage5_infer::OUTPUT_DIR);
    let dir = if dir.is_dir() {
        dir
    } else {
        output_dir.to_path_buf()
    };
    let rows = stage5_infer::merge_results(&dir)?;
    let failed = rows.iter().filter(|r| r.status == "failed").count();
    println!(
        "merged {} slide(s) into {} ({failed} failed)",
        rows.len(),
        dir.join(stage5_infer::BATCH_RESULTS).display()
    );
    Ok(())
}

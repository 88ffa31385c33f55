//! `pbip`: command-line interface of the PBIP pipeline.

mod demo;
mod doctor;
mod infer_cmd;
mod view_cmd;
mod weights_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pbip_config::Config;
use pbip_pipeline::{Freshness, RunOptions, STAGES};
use pbip_slide::{Backend, OpenOptions, Slide};

/// PBIP: prototype-based weakly supervised segmentation of whole-slide images.
#[derive(Debug, Parser)]
#[command(name = "pbip", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--config` and `--set`, shared by every stage.
#[derive(Debug, Clone, Args)]
struct ConfigArgs {
    /// Pipeline config (YAML); repeatable: later files override earlier ones key by key, e.g.
    /// --config configs/cpu.yaml --config my_data.yaml. Relative paths resolve against the folder
    /// of the file that sets them.
    #[arg(short, long, value_name = "FILE.yaml", required = true)]
    config: Vec<PathBuf>,
    /// Override a config key, e.g. --set training.epochs=2 --set prototypes.k_list=[3,3] (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        Ok(Config::load_layered(&self.config, &self.set)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// Pure Rust when possible, else OpenSlide.
    Auto,
    /// Pure-Rust reader only.
    Rust,
    /// OpenSlide only (libopenslide loaded at run time).
    Openslide,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Rust => Backend::Rust,
            BackendArg::Openslide => Backend::OpenSlide,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SplitArg {
    /// The test column of the split CSV.
    Test,
    /// The val column.
    Val,
    /// The train column.
    Train,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stage 0: sample prototype coordinates per class from the training slides.
    SamplePrototypes(ConfigArgs),
    /// Stage 1: encoder (MedCLIP/Swin) features of the prototype patches.
    EmbedPrototypes(ConfigArgs),
    /// Stage 2: per-class cosine k-means of the features → the prototype bank.
    ClusterPrototypes(ConfigArgs),
    /// Stage 3: weakly-supervised training from slide labels (checkpoints/, runs/, logs.txt).
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue an interrupted run from checkpoints/latest.state.safetensors (same config).
        #[arg(long)]
        resume: bool,
    },
    /// Stage 4: metrics against GT masks (deployable and label-masked protocols), samples, HTML report.
    Evaluate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Checkpoint to evaluate (e.g. work_dir/checkpoints/best.safetensors).
        #[arg(long, value_name = "CKPT")]
        weights: PathBuf,
        /// Split to evaluate.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Output folder (default: <work_dir>/results).
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Stage 5: whole-slide inference with a checkpoint (predictions/<slide>/, batch_results.csv).
    Infer(infer_cmd::InferArgs),
    /// Combine the batch_results.shard-*.csv files of a sharded `infer` run into batch_results.csv.
    MergeResults {
        /// The `infer --output-dir` (or its predictions/ folder).
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
    },
    /// Run the implemented stages in order, skipping those whose outputs are up to date.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Rerun every stage even if its outputs are up to date.
        #[arg(long)]
        force: bool,
    },
    /// Generate a synthetic dataset (slides, masks, coordinates, CSVs, config).
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of slides.
        #[arg(long, default_value_t = 8)]
        slides: usize,
        /// Slide side, in level-0 pixels.
        #[arg(long, default_value_t = 4096)]
        size: u32,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Generate a small synthetic dataset and run the implemented stages on it (CPU-sized).
    Demo {
        /// Output folder (data/ and work_dir/ inside).
        #[arg(long, default_value = "./pbip-demo")]
        out: PathBuf,
        /// Slide side in pixels (for tests).
        #[arg(long, hide = true, default_value_t = 2048)]
        size: u32,
        /// Number of slides (for tests; 40 gives the training 24 slides to generalise from).
        #[arg(long, hide = true, default_value_t = 40)]
        slides: usize,
        /// Training steps instead of the demo preset's (for tests).
        #[arg(long, hide = true)]
        train_steps: Option<usize>,
        /// Override a config key after the demo's own settings, e.g. --set device=tch-cpu (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print slide dimensions, levels, mpp, vendor and backend.
    SlideInfo {
        /// Slide files.
        #[arg(required = true, value_name = "SLIDE")]
        slides: Vec<PathBuf>,
        /// Print JSON (keys width, height, level_count, levels, mpp_x, mpp_y, vendor, backend, ...).
        #[arg(long)]
        json: bool,
        /// Slide reader.
        #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
        backend: BackendArg,
    },
    /// Read a region and write it as PNG: X, Y in level-0 pixels (top-left), WIDTH x HEIGHT at LEVEL.
    #[command(allow_negative_numbers = true)]
    ReadRegion(ReadRegionArgs),
    /// What this build has and this machine offers: compute backends and visible GPUs, OpenSlide, versions.
    Doctor {
        /// Print JSON ({"checks": [{section, name, ok, detail}, ...]}).
        #[arg(long)]
        json: bool,
    },
    /// Web viewer on 127.0.0.1: pan and zoom slides with the predicted mask, confidence heat maps and contours on top.
    View(view_cmd::ViewArgs),
    /// Pretrained weights from the Hugging Face Hub: `list` the presets, `fetch` into the HF cache.
    Weights {
        #[command(subcommand)]
        cmd: weights_cmd::WeightsCmd,
    },
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 0);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn progress() -> RunOptions {
    RunOptions { progress: true }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::SamplePrototypes(args) => run_one(0, &args),
        Command::EmbedPrototypes(args) => run_one(1, &args),
        Command::ClusterPrototypes(args) => run_one(2, &args),
        Command::Train { config, resume } => {
            let cfg = config.load()?;
            let topts = pbip_pipeline::stage3_train::TrainOptions {
                resume,
                ..Default::default()
            };
            let out = pbip_pipeline::stage3_train::train(&cfg, &progress(), &topts)?;
            print_report(&out.report);
            Ok(())
        }
        Command::Evaluate {
            config,
            weights,
            split,
            output_dir,
        } => {
            let cfg = config.load()?;
            let split = match split {
                SplitArg::Test => pbip_config::Split::Test,
                SplitArg::Val => pbip_config::Split::Val,
                SplitArg::Train => pbip_config::Split::Train,
            };
            let eo = pbip_pipeline::stage4_evaluate::EvaluateOptions {
                weights,
                split,
                output_dir,
            };
            let outcome = pbip_pipeline::stage4_evaluate::run(&cfg, &eo, &progress())?;
            print_report(&outcome.report);
            if let Some(message) = outcome.failure_message() {
                bail!("{message}");
            }
            Ok(())
        }
        Command::Infer(args) => infer_cmd::infer(&args),
        Command::MergeResults { output_dir } => infer_cmd::merge_results(&output_dir),
        Command::Run { config, force } => {
            let cfg = config.load()?;
            run_pipeline(&cfg, force)
        }
        Command::Synth {
            out,
            slides,
            size,
            seed,
        } => {
            let summary = demo::synth(&out, slides, size, seed)?;
            println!("{summary}");
            Ok(())
        }
        Command::Demo {
            out,
            size,
            slides,
            train_steps,
            set,
        } => demo::demo(&out, size, slides, train_steps, &set),
        Command::SlideInfo {
            slides,
            json,
            backend,
        } => slide_info(&slides, json, backend),
        Command::ReadRegion(args) => read_region(&args),
        Command::View(args) => view_cmd::run(&args),
        Command::Weights { cmd } => weights_cmd::run(&cmd),
        Command::Doctor { json } => doctor::run(json),
    }
}

fn run_one(stage: usize, args: &ConfigArgs) -> Result<()> {
    let cfg = args.load()?;
    let report = pbip_pipeline::run_stage(stage, &cfg, &progress())?;
    print_report(&report);
    Ok(())
}

/// Runs every implemented stage in order (skipping up-to-date ones unless `force`).
pub(crate) fn run_pipeline(cfg: &Config, force: bool) -> Result<()> {
    for stage in STAGES {
        if !force {
            match pbip_pipeline::stage_freshness(stage.index, cfg) {
                Freshness::UpToDate => {
                    println!(
                        "stage {} ({}): up to date, skipped ({})",
                        stage.index,
                        stage.command,
                        cfg.paths.work_dir.join(stage.output_dir).display()
                    );
                    continue;
                }
                Freshness::Stale(why) => tracing::info!(stage = stage.command, "running: {why}"),
            }
        }
        let report = pbip_pipeline::run_stage(stage.index, cfg, &progress())
            .with_context(|| format!("stage {} ({}) failed", stage.index, stage.command))?;
        print_report(&report);
    }
    Ok(())
}

fn print_report(report: &pbip_pipeline::StageReport) {
    println!(
        "stage {} ({}): outputs in {}",
        report.stage.index,
        report.stage.command,
        report.output_dir.display()
    );
    for line in &report.summary {
        println!("  {line}");
    }
}

fn open_slide(path: &Path, backend: BackendArg) -> Result<Slide> {
    let opts = OpenOptions {
        backend: backend.into(),
        ..OpenOptions::default()
    };
    Ok(Slide::open(path, &opts)?)
}

fn slide_info(slides: &[PathBuf], json: bool, backend: BackendArg) -> Result<()> {
    let mut infos = Vec::with_capacity(slides.len());
    for p in slides {
        infos.push(open_slide(p, backend)?.info());
    }
    if json {
        let text = if infos.len() == 1 {
            serde_json::to_string_pretty(&infos[0])?
        } else {
            serde_json::to_string_pretty(&infos)?
        };
        println!("{text}");
    } else {
        for (i, info) in infos.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{info}");
        }
    }
    Ok(())
}

// Arguments of `pbip read-region` (a plain comment: a doc comment here would replace the
// subcommand help written on `Command::ReadRegion`).
#[derive(Debug, Args)]
struct ReadRegionArgs {
    /// Slide file.
    slide: PathBuf,
    /// Level-0 x of the top-left corner.
    x: i64,
    /// Level-0 y of the top-left corner.
    y: i64,
    /// Pyramid level.
    level: usize,
    /// Width in level pixels.
    width: u32,
    /// Height in level pixels.
    height: u32,
    /// Output PNG.
    out: PathBuf,
    /// Slide reader.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
}

fn read_region(args: &ReadRegionArgs) -> Result<()> {
    let ReadRegionArgs {
        ref slide,
        x,
        y,
        level,
        width,
        height,
        ref out,
        backend,
    } = *args;
    if width == 0 || height == 0 {
        bail!("WIDTH and HEIGHT must be > 0 (got {width} x {height})");
    }
    let s = open_slide(slide, backend)?;
    let img = s.read_region(x, y, level, width, height)?;
    pbip_slide::write_png(out, &img)?;
    println!(
        "wrote {} ({} x {} px, level {level}, backend {})",
        out.display(),
        img.width,
        img.height,
        s.backend_name()
    );
    Ok(())
}

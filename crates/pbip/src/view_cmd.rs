//! `pbip view`: a local web viewer of slides and `pbip infer` predictions (crate `pbip-view`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::BackendArg;

/// Arguments of `pbip view`.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// Slide files, or folders of slides (a slide's id in URLs is its file stem).
    #[arg(required = true, value_name = "DIR|SLIDE")]
    pub slides: Vec<PathBuf>,
    /// `pbip infer --output-dir` (or its predictions/ folder): class masks, confidence heat maps,
    /// GeoJSON contours, batch_results.csv.
    #[arg(long, value_name = "DIR")]
    pub predictions: Option<PathBuf>,
    /// GT masks `<id>.png` (pixel = class, 255 = background): show each prediction's score.
    #[arg(long, value_name = "DIR")]
    pub gt_dir: Option<PathBuf>,
    /// Port (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. Anything but a loopback address makes the slides readable from the
    /// network (a warning is printed).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Open the page in the default browser.
    #[arg(long)]
    pub open: bool,
    /// DeepZoom tile side, px.
    #[arg(long, default_value_t = 254, value_name = "PX")]
    pub tile_size: u32,
    /// DeepZoom tile overlap, px.
    #[arg(long, default_value_t = 1, value_name = "PX")]
    pub overlap: u32,
    /// JPEG quality of slide tiles.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Cache of encoded tiles, MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub tile_cache_mb: usize,
    /// Cache of decoded slide tiles per open slide, MiB (at most 4 slides are open at once).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub slide_cache_mb: usize,
    /// Slide reader.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// Starts the viewer and serves until the process is stopped.
pub fn run(args: &ViewArgs) -> Result<()> {
    let opts = pbip_view::ViewOptions {
        inputs: args.slides.clone(),
        predictions: args.predictions.clone(),
        gt_dir: args.gt_dir.clone(),
        host: args.host,
        port: args.port,
        tile_size_px: args.tile_size,
        overlap_px: args.overlap,
        jpeg_quality: args.quality,
        tile_cache_bytes: args.tile_cache_mb.saturating_mul(1 << 20),
        slide_cache_bytes: args.slide_cache_mb.saturating_mul(1 << 20),
        backend: args.backend.into(),
        ..pbip_view::ViewOptions::default()
    };
    let viewer = pbip_view::Viewer::bind(opts).context("pbip view")?;
    if !args.host.is_loopback() {
        tracing::warn!(
            "listening on {}: anyone who can reach this address can read these slides and predictions",
            args.host
        );
    }
    let s = viewer.summary();
    let url = viewer.url();
    println!(
        "pbip view: {} slide(s), {} with predictions, {} unreadable",
        s.slides, s.with_predictions, s.unreadable
    );
    println!("serving {url}  (Ctrl-C to stop)");
    // Scripts wait for the URL line.
    std::io::stdout().flush().ok();
    if args.open {
        open_browser(&url);
    }
    viewer.serve().context("pbip view")?;
    Ok(())
}

fn open_browser(url: &str) {
    let (cmd, pre): (&str, &[&str]) = if cfg!(target_os = "macos") {
        ("open", &[])
    } else if cfg!(windows) {
        ("cmd", &["/C", "start", ""])
    } else {
        ("xdg-open", &[])
    };
    match std::process::Command::new(cmd)
        .args(pre)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot open a browser ({cmd}: {e}); open {url} yourself"),
    }
}

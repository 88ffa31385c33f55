//! Generates a small synthetic PBIP dataset.
//!
//! `cargo run -p pbip-synth --release --example generate -- OUT_DIR [NUM_SLIDES] [SIZE_PX] [SEED] [aperio]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "synth_data".to_string());
    let mut opts = pbip_synth::SynthOptions::new(out);
    if let Some(n) = args.next() {
        opts.num_slides = n.parse()?;
    }
    if let Some(s) = args.next() {
        opts.size_px = s.parse()?;
    }
    if let Some(s) = args.next() {
        opts.seed = s.parse()?;
    }
    opts.aperio_description = args.next().as_deref() == Some("aperio");
    let t0 = std::time::Instant::now();
    let summary = pbip_synth::generate(&opts)?;
    println!("name       class   split  size       levels coords tissue tumour/tissue bytes");
    for s in &summary.slides {
        println!(
            "{:<10} {:<7} {:<6} {}x{} {:>6} {:>6} {:>6.3} {:>13.3} {}",
            s.name,
            s.class_name,
            s.split.as_str(),
            s.width_px,
            s.height_px,
            s.num_levels,
            s.num_coordinates,
            s.tissue_fraction,
            s.tumour_fraction,
            s.slide_bytes
        );
    }
    println!(
        "config: {} ({:.2} s)",
        summary.config_path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

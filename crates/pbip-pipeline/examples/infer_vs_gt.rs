//! Scores `pbip infer` outputs against GT masks (e.g. `pbip synth`'s `masks/`): whole-slide tumour
//! IoU on tumour slides and the false-positive tissue fraction (tissue predicted tumour / tissue) on
//! benign slides, next to the trivial "all tissue is tumour" map
//! (`pbip_pipeline::stage5_infer::score`).
//!
//! `cargo run -p pbip-pipeline --example infer_vs_gt -- PREDICTIONS_DIR GT_MASK_DIR [CLASS]`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(3..=4).contains(&args.len()) {
        return Err("usage: infer_vs_gt PREDICTIONS_DIR GT_MASK_DIR [POSITIVE_CLASS=1]".into());
    }
    let (pred, gtdir) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let class: u8 = args.get(3).map_or(Ok(1), |c| c.parse())?;
    let scores = pbip_pipeline::stage5_infer::score::score_predictions(&pred, &gtdir, class)?;
    println!("slide,kind,tumour_iou,trivial_iou,fp_tissue_fraction,trivial_fp_fraction");
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
    for s in scores {
        let kind = if s.tumour_px > 0 { "tumour" } else { "benign" };
        println!(
            "{},{kind},{},{},{:.4},{:.4}",
            s.name,
            f(s.tumour_iou),
            f(s.trivial_iou),
            s.false_positive_tissue_fraction,
            s.trivial_false_positive_fraction
        );
    }
    Ok(())
}

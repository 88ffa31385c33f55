//! Scores `pbip infer` outputs against `pbip synth` GT masks: whole-slide tumour IoU on tumour
//! slides and the false-positive tissue fraction (tissue predicted tumour / tissue) on benign slides,
//! next to the trivial "all tissue is tumour" map. GT is sampled at output pixel centres.
//!
//! `cargo run -p pbip-pipeline --example infer_vs_gt -- PREDICTIONS_DIR GT_MASK_DIR`

use std::path::{Path, PathBuf};

fn read_png(path: &Path) -> Result<(usize, usize, Vec<u8>), Box<dyn std::error::Error>> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut r = dec.read_info()?;
    let mut buf = vec![0u8; r.output_buffer_size().ok_or("png size")?];
    let fi = r.next_frame(&mut buf)?;
    buf.truncate(fi.buffer_size());
    Ok((fi.width as usize, fi.height as usize, buf))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: infer_vs_gt PREDICTIONS_DIR GT_MASK_DIR".into());
    }
    let (pred, gtdir) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let mut names: Vec<String> = std::fs::read_dir(&pred)?
        .flatten()
        .filter(|e| e.path().join("segmentation_mask.png").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("slide,kind,tumour_iou,trivial_iou,fp_tissue_fraction,trivial_fp_fraction");
    for n in names {
        let (mw, mh, m) = read_png(&pred.join(&n).join("segmentation_mask.png"))?;
        let gp = gtdir.join(format!("{n}.png"));
        let (gw, gh, g) = read_png(&gp)?;
        let (sx, sy) = (gw as f64 / mw as f64, gh as f64 / mh as f64);
        let (mut inter, mut uni, mut tissue, mut gt_t, mut fp) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for j in 0..mh {
            for i in 0..mw {
                let gv = g[(((j as f64 + 0.5) * sy) as usize).min(gh - 1) * gw
                    + (((i as f64 + 0.5) * sx) as usize).min(gw - 1)];
                let is_tissue = gv != 255;
                let t = gv == 1;
                let p = m[j * mw + i] == 1;
                tissue += u64::from(is_tissue);
                gt_t += u64::from(t);
                inter += u64::from(t && p);
                uni += u64::from(t || p);
                fp += u64::from(is_tissue && !t && p);
            }
        }
        if gt_t > 0 {
            // Trivial: every tissue pixel is tumour -> IoU = tumour / tissue.
            println!(
                "{n},tumour,{:.4},{:.4},,",
                inter as f64 / uni as f64,
                gt_t as f64 / tissue as f64
            );
        } else {
            println!(
                "{n},benign,,,{:.4},1.0000",
                fp as f64 / tissue.max(1) as f64
            );
        }
    }
    Ok(())
}

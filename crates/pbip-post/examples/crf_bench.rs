//! Used by `bench/crf.sh`: runs `dense_crf` on DIR/{rgb.bin,probs.bin,meta.json} (written by
//! bench/crf_ref.py), writes DIR/rust_marginals.bin and DIR/rust_secs.txt (best of 3: wall seconds, CPU seconds).

use pbip_post::crf::{CrfParams, dense_crf};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: crf_bench DIR")?);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let get = |k: &str| meta[k].as_u64().ok_or(format!("meta.json: missing {k}"));
    let (w, h, c) = (
        get("width")? as usize,
        get("height")? as usize,
        get("num_classes")? as usize,
    );
    let p = &meta["params"];
    let f = |k: &str| {
        p[k].as_f64()
            .map(|v| v as f32)
            .ok_or(format!("meta.json: missing params.{k}"))
    };
    let params = CrfParams {
        sxy_gaussian: f("sxy_gaussian")?,
        compat_gaussian: f("compat_gaussian")?,
        sxy_bilateral: f("sxy_bilateral")?,
        srgb: f("srgb")?,
        compat_bilateral: f("compat_bilateral")?,
        n_iter: p["n_iter"].as_u64().ok_or("meta.json: missing n_iter")? as usize,
    };
    let rgb = std::fs::read(dir.join("rgb.bin"))?;
    let probs: Vec<f32> = std::fs::read(dir.join("probs.bin"))?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut best = f64::INFINITY;
    let mut best_cpu = f64::INFINITY;
    let mut out = None;
    for _ in 0..3 {
        let (t0, c0) = (Instant::now(), cpu_secs());
        let o = dense_crf(&probs, c, w, h, &rgb, &params)?;
        best = best.min(t0.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(cpu_secs() - c0);
        out = Some(o);
    }
    let out = out.ok_or("no run")?;
    let bytes: Vec<u8> = out.marginals.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("rust_marginals.bin"), bytes)?;
    std::fs::write(dir.join("rust_secs.txt"), format!("{best} {best_cpu}"))?;
    Ok(())
}

/// Process CPU time (user + system, all threads) from /proc/self/stat, in seconds (NaN elsewhere).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some(rest) = stat.rsplit(')').next() else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the ')' : state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(14) + ticks(15)) / 100.0
}

//! Stage 1: encoder features of the prototype patches.
//!
//! * Reads `prototype_coordinates/<class>.npy` of stage 0 (class_order order, rows in file order),
//!   finds each row's slide by its embedded `wsi_name` in `paths.wsi_dir` (same file name, else the
//!   same stem with any supported slide extension) and opens every slide once.
//! * A patch is `tile_size_resized` pixels at `tile_level`, resized to `patch_size`
//!   ([`pbip_slide::PatchGeometry`]); it is preprocessed by [`crate::encoder::Preprocess`]
//!   (normalisation, channel order, optional upstream augmentation, optional global min-max).
//! * Slide reads of batch b+1 run on a reader thread (patches of a batch in parallel on rayon)
//!   while the encoder runs batch b (`prototypes.batch_size`).
//!
//! Outputs in `<work_dir>/image_features/`:
//! * `exemplars.safetensors`: `features` [N, D] f32; per row `class_index`, `slide_index`, `x_lv0`,
//!   `y_lv0`, `tile_level`, `tile_size_resized` (f32 holding exact integers; coordinates < 2^24);
//!   metadata `pbip` (JSON [`ExemplarsMeta`]: class_order, slide names, encoder identity,
//!   preprocessing, timing).
//! * `encoder.safetensors`: the exact encoder weights used (training loads these).
//! * `exemplars.json`: the same metadata, human-readable, written last (completion marker).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use pbip_config::{Config, EncoderKind, SUPPORTED_SLIDE_EXTENSIONS};
use pbip_coords::Coordinates;
use pbip_slide::{Origin, PatchGeometry, Slide};
use pbip_weights::{HostTensor, TensorMap};
use rayon::prelude::*;

use crate::artifacts::coordinates;
pub use crate::artifacts::exemplars::{
    ENCODER_FILE, EXEMPLARS_FILE, ExemplarsMeta, OUTPUT_DIR, exemplars_path, output_dir,
    read_exemplars,
};
use crate::encoder::{self, META_KEY, Preprocess};
use crate::{Freshness, PipelineError, RunOptions, StageInfo, StageReport};

/// Summary / completion marker.
pub const SUMMARY_FILE: &str = "exemplars.json";

const STAGE: &str = "embed-prototypes";

/// Stage description.
pub const INFO: StageInfo = StageInfo {
    index: 1,
    command: STAGE,
    description: "encoder features of the prototype patches",
    output_dir: OUTPUT_DIR,
};

/// One prototype row to embed.
#[derive(Debug, Clone)]
struct Item {
    class_index: usize,
    slide_index: usize,
    x: i64,
    y: i64,
    geom: PatchGeometry,
}

fn fingerprint(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "class_order": cfg.class_order,
        "patch_size": cfg.patch_size,
        "encoder": cfg.prototypes.encoder,
        "wsi_dir": cfg.paths.wsi_dir,
        "slide_background": cfg.slide.background,
    })
}

/// Finds a slide named `wsi_name` (as stored in prototype files) in `wsi_dir`: the exact file name,
/// else the same stem with any supported slide extension (either case).
pub fn find_slide(wsi_dir: &Path, wsi_name: &str) -> Option<PathBuf> {
    let exact = wsi_dir.join(wsi_name);
    if exact.is_file() {
        return Some(exact);
    }
    let stem = pbip_config::normalise_slide_key(wsi_name);
    for ext in SUPPORTED_SLIDE_EXTENSIONS {
        for e in [ext.to_string(), ext.to_ascii_uppercase()] {
            let p = wsi_dir.join(format!("{stem}.{e}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn data_err(message: String) -> PipelineError {
    PipelineError::Data {
        stage: STAGE,
        message,
    }
}

/// What [`collect_items`] found: the rows to embed, the slides they come from (names and
/// resolved paths, indexed by `Item::slide_index`) and the rows per class.
struct Collected {
    items: Vec<Item>,
    slide_names: Vec<String>,
    slide_paths: Vec<PathBuf>,
    rows_per_class: Vec<usize>,
}

/// Reads the stage-0 files and resolves their slides.
fn collect_items(cfg: &Config) -> Result<Collected, PipelineError> {
    let mut items = Vec::new();
    let mut slide_names: Vec<String> = Vec::new();
    let mut slide_paths: Vec<PathBuf> = Vec::new();
    let mut slide_ix: HashMap<String, usize> = HashMap::new();
    let mut rows_per_class = Vec::new();
    let mut missing = Vec::new();
    for (c, (class, path)) in coordinates::class_files(cfg).into_iter().enumerate() {
        if !path.is_file() {
            return Err(data_err(format!(
                "{} is missing: run `pbip sample-prototypes` first (class `{class}`)",
                path.display()
            )));
        }
        let coords = Coordinates::read(&path)?;
        let names = coords.wsi_name.as_ref().ok_or_else(|| {
            data_err(format!(
                "{}: no wsi_name field; not a prototype coordinate file of stage 0",
                path.display()
            ))
        })?;
        if coords.is_empty() {
            return Err(data_err(format!(
                "{}: no prototype coordinates for class `{class}`",
                path.display()
            )));
        }
        for i in 0..coords.len() {
            let name = names.get(i).cloned().unwrap_or_default();
            let si = match slide_ix.get(&name) {
                Some(&s) => s,
                None => {
                    let Some(p) = find_slide(&cfg.paths.wsi_dir, &name) else {
                        missing.push(name.clone());
                        slide_ix.insert(name.clone(), usize::MAX);
                        continue;
                    };
                    slide_ix.insert(name.clone(), slide_names.len());
                    slide_names.push(name.clone());
                    slide_paths.push(p);
                    slide_names.len() - 1
                }
            };
            if si == usize::MAX {
                continue;
            }
            let g = coords
                .get_geometry(i, cfg.patch_size)
                .ok_or_else(|| data_err(format!("{}: row {i}", path.display())))?;
            items.push(Item {
                class_index: c,
                slide_index: si,
                x: coords.x[i],
                y: coords.y[i],
                geom: PatchGeometry {
                    level: g.level as usize,
                    read_size_px: g.read_size_px,
                    out_size_px: cfg.patch_size,
                    origin: Origin::TopLeft,
                },
            });
        }
        rows_per_class.push(coords.len());
    }
    if !missing.is_empty() {
        return Err(data_err(format!(
            "{} slide(s) named in the prototype files are not in {} (by name or stem with a supported extension): {}",
            missing.len(),
            cfg.paths.wsi_dir.display(),
            missing.join(", ")
        )));
    }
    Ok(Collected {
        items,
        slide_names,
        slide_paths,
        rows_per_class,
    })
}

/// Runs stage 1.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<StageReport, PipelineError> {
    let t0 = Instant::now();
    let Collected {
        items,
        slide_names,
        slide_paths,
        rows_per_class,
    } = collect_items(cfg)?;
    let open_opts = crate::settings::open_options(cfg, true);
    let slides: Vec<Arc<Slide>> = slide_paths
        .iter()
        .map(|p| Slide::open(p, &open_opts).map(Arc::new))
        .collect::<Result<_, _>>()?;

    let device = crate::settings::compute_device(cfg)?;
    let (model, identity) = encoder::build_encoder(cfg, &device)?;
    let pre = Preprocess::from_config(cfg);
    let kind = cfg.prototypes.encoder.kind;
    let side = cfg.patch_size as usize;
    let per_patch = side * side * 3;
    let batch = cfg.prototypes.batch_size.max(1);
    let n = items.len();

    let bar = if opts.progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} patches {per_sec} ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("stage 1: encoding");

    let mut features: Vec<f32> = Vec::new();
    let mut dim = 0usize;
    let (mut read_secs, mut encode_secs, mut wait_secs) = (0f64, 0f64, 0f64);
    std::thread::scope(|scope| -> Result<(), PipelineError> {
        let (tx, rx) = sync_channel::<Result<(Vec<f32>, usize, f64), PipelineError>>(2);
        let items = &items;
        let slides = &slides;
        let pre = &pre;
        scope.spawn(move || {
            for (b, chunk) in items.chunks(batch).enumerate() {
                let t = Instant::now();
                let mut chw = vec![0f32; chunk.len() * 3 * side * side];
                let res = chw
                    .par_chunks_mut(3 * side * side)
                    .zip(chunk.par_iter())
                    .enumerate()
                    .try_for_each(|(j, (out, it))| -> Result<(), PipelineError> {
                        let mut rgb = vec![0u8; per_patch];
                        slides[it.slide_index].read_patch_into(it.x, it.y, &it.geom, &mut rgb)?;
                        pre.apply(&rgb, side, (b * batch + j) as u64, out);
                        Ok(())
                    });
                let msg = res.map(|()| (chw, chunk.len(), t.elapsed().as_secs_f64()));
                let stop = msg.is_err();
                if tx.send(msg).is_err() || stop {
                    break;
                }
            }
        });
        loop {
            let tw = Instant::now();
            let Ok(msg) = rx.recv() else { break };
            wait_secs += tw.elapsed().as_secs_f64();
            let (chw, m, rs) = msg?;
            read_secs += rs;
            let te = Instant::now();
            let f = encoder::encode_batch(&model, kind, chw, m, side, &device)?;
            encode_secs += te.elapsed().as_secs_f64();
            dim = f.len() / m.max(1);
            features.extend_from_slice(&f);
            bar.inc(m as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if features.len() != n * dim || n == 0 {
        return Err(data_err(format!(
            "encoded {} values for {n} patches",
            features.len()
        )));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(data_err(format!(
            "the encoder produced a non-finite feature (patch {}, slide {}); check the encoder weights",
            i / dim,
            slide_names[items[i / dim].slide_index]
        )));
    }

    let out_dir = output_dir(cfg);
    std::fs::create_dir_all(&out_dir).map_err(|source| PipelineError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let summary_path = out_dir.join(SUMMARY_FILE);
    if summary_path.exists() {
        std::fs::remove_file(&summary_path).map_err(|source| PipelineError::Io {
            path: summary_path.clone(),
            source,
        })?;
    }
    let enc_path = out_dir.join(ENCODER_FILE);
    encoder::save_encoder(&enc_path, &model, &identity)?;

    let meta = ExemplarsMeta {
        format: "pbip.exemplars.v1".into(),
        class_order: cfg.class_order.clone(),
        slides: slide_names,
        slide_paths,
        rows_per_class,
        dim,
        patch_size: cfg.patch_size,
        encoder: identity,
        preprocess: pre,
        fingerprint: fingerprint(cfg),
        read_secs,
        encode_secs,
        wait_secs,
        total_secs: t0.elapsed().as_secs_f64(),
    };
    let col = |f: &dyn Fn(&Item) -> f32| -> Result<HostTensor, PipelineError> {
        HostTensor::new(vec![n], items.iter().map(f).collect()).map_err(|e| data_err(e.to_string()))
    };
    let mut map = TensorMap::new();
    map.insert(
        "features".into(),
        HostTensor::new(vec![n, dim], features).map_err(|e| data_err(e.to_string()))?,
    );
    map.insert("class_index".into(), col(&|it| it.class_index as f32)?);
    map.insert("slide_index".into(), col(&|it| it.slide_index as f32)?);
    map.insert("x_lv0".into(), col(&|it| it.x as f32)?);
    map.insert("y_lv0".into(), col(&|it| it.y as f32)?);
    map.insert("tile_level".into(), col(&|it| it.geom.level as f32)?);
    map.insert(
        "tile_size_resized".into(),
        col(&|it| it.geom.read_size_px as f32)?,
    );
    let json = serde_json::to_string_pretty(&meta).map_err(|e| PipelineError::Json {
        path: summary_path.clone(),
        message: e.to_string(),
    })?;
    let mut st_meta = BTreeMap::new();
    st_meta.insert(META_KEY.to_string(), json.clone());
    let ex_path = out_dir.join(EXEMPLARS_FILE);
    pbip_weights::write_safetensors_atomic(&ex_path, &map, &st_meta)
        .map_err(|e| data_err(format!("{}: {e}", ex_path.display())))?;
    let cfg_path = cfg.write_resolved(&out_dir)?;
    crate::write_atomic(&summary_path, json.as_bytes())?;

    let rate = n as f64 / meta.total_secs.max(1e-9);
    let mut summary = vec![
        format!(
            "{n} patches from {} slides, {dim}-d features -> {}",
            meta.slides.len(),
            ex_path.display()
        ),
        format!(
            "{rate:.1} patches/s; reading {:.1} s, encoder {:.1} s, encoder waited {:.1} s for patches",
            meta.read_secs, meta.encode_secs, meta.wait_secs
        ),
        format!(
            "encoder: {} ({}) -> {}",
            meta.encoder.kind,
            meta.encoder.source,
            enc_path.display()
        ),
    ];
    if meta.encoder.random {
        summary.push(
            "WARNING: randomly initialised encoder weights (set prototypes.encoder.weights)".into(),
        );
    }
    tracing::info!(patches = n, patches_per_sec = rate, "stage 1 done");
    Ok(StageReport {
        stage: INFO,
        output_dir: out_dir,
        outputs: vec![ex_path, enc_path, cfg_path, summary_path],
        summary,
    })
}

/// Whether stage 1's outputs are complete, newer than stage 0's, and made with the same settings.
pub fn freshness(cfg: &Config) -> Freshness {
    let dir = output_dir(cfg);
    let summary: Option<ExemplarsMeta> = std::fs::read_to_string(dir.join(SUMMARY_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(summary) = summary else {
        return Freshness::Stale(format!("no previous {SUMMARY_FILE}"));
    };
    if summary.fingerprint != fingerprint(cfg) {
        return Freshness::Stale("settings changed since the last run".into());
    }
    let outputs = [
        dir.join(EXEMPLARS_FILE),
        dir.join(ENCODER_FILE),
        dir.join(SUMMARY_FILE),
    ];
    let inputs: Vec<PathBuf> = coordinates::class_files(cfg)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    crate::compare_mtimes(&outputs, &inputs)
}

/// The encoder kind's output width note, for docs: `medclip` → projection width, `hf_swin` → Swin width.
pub fn feature_dim(cfg: &Config) -> usize {
    let swin = encoder::swin_config(&cfg.prototypes.encoder);
    match cfg.prototypes.encoder.kind {
        EncoderKind::Medclip => swin.proj_dim,
        EncoderKind::HfSwin => swin.num_features(),
    }
}

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
//!
//! With `prototypes.precomputed_features.dir` set, no patch is read or encoded: each row takes the
//! slide2vec tile embedding of the same slide and level-0 coordinate ([`crate::precomputed`]).
//! The features must come from the configured encoder (same model name, same width) or the stage
//! refuses. The outputs are the same files with the same columns; `encoder` in the metadata then
//! describes the feature files (their SHA-256 instead of the weights'), and `precomputed` lists
//! them. `encoder.safetensors` (the configured encoder, for the contrastive terms of stage 3) is
//! built and written only while `training.loss_weights.contrastive` is not 0, and then the
//! encoder must have pretrained weights (`prototypes.encoder.weights`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use pbip_config::{Config, EncoderKind, SUPPORTED_SLIDE_EXTENSIONS};
use pbip_coords::Coordinates;
use pbip_slide::{Origin, PatchGeometry, Slide};
use pbip_weights::{HostTensor, TensorMap};
use rayon::prelude::*;

use crate::artifacts::coordinates;
pub use crate::artifacts::exemplars::{
    ENCODER_FILE, EXEMPLARS_FILE, ExemplarsMeta, OUTPUT_DIR, PrecomputedFile, PrecomputedSource,
    exemplars_path, output_dir, read_exemplars,
};
use crate::encoder::{self, EncoderIdentity, EncoderModel, META_KEY, Preprocess};
use crate::precomputed::{self, Source};
use crate::progress::progress_bar;
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
    /// Footprint in level-0 px (stage 0's `tile_size_lv0`).
    lv0: Option<u32>,
}

fn fingerprint(cfg: &Config) -> serde_json::Value {
    let mut f = serde_json::json!({
        "class_order": cfg.class_order,
        "patch_size": cfg.patch_size,
        "encoder": cfg.prototypes.encoder,
        "wsi_dir": cfg.paths.wsi_dir,
        "slide_background": cfg.slide.background,
    });
    // Only with precomputed features, so that the fingerprints of encoder runs stay as they were.
    if cfg.prototypes.precomputed_features.dir.is_some()
        && let Some(m) = f.as_object_mut()
    {
        m.insert(
            "precomputed_features".into(),
            serde_json::json!(cfg.prototypes.precomputed_features),
        );
        m.insert(
            "saves_encoder".into(),
            serde_json::json!(saves_encoder(cfg)),
        );
    }
    f
}

/// Whether stage 1 with precomputed features builds and saves the encoder (stage 3 needs it for
/// the contrastive terms only).
fn saves_encoder(cfg: &Config) -> bool {
    cfg.training.loss_weights.contrastive != 0.0
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
                lv0: coords
                    .tile_size_lv0
                    .as_ref()
                    .and_then(|v| v.get(i).copied()),
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

/// The features of stage 1 and where they came from.
struct Computed {
    /// `[N, dim]` row-major, rows in item order.
    features: Vec<f32>,
    dim: usize,
    /// Identity recorded in the outputs (the encoder, or the precomputed source).
    identity: EncoderIdentity,
    /// The encoder to save as `encoder.safetensors` (with its own identity), if any.
    encoder: Option<(EncoderModel, EncoderIdentity)>,
    read_secs: f64,
    encode_secs: f64,
    wait_secs: f64,
    precomputed: Option<PrecomputedSource>,
}

/// Runs stage 1.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<StageReport, PipelineError> {
    let t0 = Instant::now();
    let collected = collect_items(cfg)?;
    let computed = match Source::locate(&cfg.prototypes.precomputed_features)? {
        Some(source) => lookup_precomputed(cfg, opts, &collected, &source)?,
        None => encode(cfg, opts, &collected)?,
    };
    write_outputs(cfg, collected, computed, t0)
}

/// Reads the patches and runs the configured encoder on them.
fn encode(cfg: &Config, opts: &RunOptions, c: &Collected) -> Result<Computed, PipelineError> {
    let Collected {
        items, slide_paths, ..
    } = c;
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

    let bar = progress_bar(
        opts.progress,
        n as u64,
        "{prefix} [{bar:30}] {pos}/{len} patches {per_sec} ETA {eta} {msg}",
        "stage 1: encoding",
    );

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
    Ok(Computed {
        features,
        dim,
        identity: identity.clone(),
        encoder: Some((model, identity)),
        read_secs,
        encode_secs,
        wait_secs,
        precomputed: None,
    })
}

/// The configured encoder's feature width, or the error of its settings.
fn expected_dim(cfg: &Config) -> Result<usize, PipelineError> {
    if cfg.prototypes.encoder.kind == EncoderKind::Vit {
        encoder::vit_config(&cfg.prototypes.encoder)?;
    }
    Ok(feature_dim(cfg))
}

/// Every slide's precomputed feature and coordinate files, before anything big is read.
fn precomputed_files(
    source: &Source,
    slide_names: &[String],
) -> Result<Vec<precomputed::SlideFiles>, PipelineError> {
    let mut files = Vec::with_capacity(slide_names.len());
    let mut missing = Vec::new();
    for name in slide_names {
        match source.slide_files(name) {
            Ok(f) => files.push(f),
            Err(e) => missing.push(e.to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(data_err(format!(
            "{} of {} slides lack precomputed features or their coordinates:\n  {}",
            missing.len(),
            slide_names.len(),
            missing.join("\n  ")
        )));
    }
    Ok(files)
}

/// The model that made the features, checked against the configured encoder (same model name,
/// same width as far as the sidecars tell), and the configured encoder's feature width.
fn checked_feature_model(
    cfg: &Config,
    source: &Source,
    files: &[precomputed::SlideFiles],
) -> Result<(precomputed::FeatureModel, usize), PipelineError> {
    let sidecars: Vec<&precomputed::Sidecar> =
        files.iter().filter_map(|f| f.sidecar.as_ref()).collect();
    let model =
        precomputed::feature_model(&cfg.prototypes.precomputed_features, source, &sidecars)?;
    precomputed::check_model(cfg, &model, source)?;
    let dim = expected_dim(cfg)?;
    for s in &sidecars {
        if let Some(d) = s.feature_dim {
            precomputed::check_dim(cfg, &model, &s.path, d, dim)?;
        }
    }
    Ok((model, dim))
}

/// The configured encoder, built to be saved for the contrastive terms of stage 3 (None when
/// `training.loss_weights.contrastive` is 0); it must have pretrained weights, since the
/// prototypes come from `model_name`.
fn contrastive_encoder(
    cfg: &Config,
    model_name: &str,
) -> Result<Option<(EncoderModel, EncoderIdentity)>, PipelineError> {
    if !saves_encoder(cfg) {
        return Ok(None);
    }
    let device = crate::settings::compute_device(cfg)?;
    let (m, ident) = encoder::build_encoder(cfg, &device)?;
    if ident.random {
        return Err(data_err(format!(
            "training.loss_weights.contrastive is {} and the contrastive terms compare the \
             configured encoder's features with prototypes made by `{model_name}`, but \
             prototypes.encoder.weights is not set (a random encoder). Fix: set \
             prototypes.encoder.weights to the weights of `{model_name}`, or \
             training.loss_weights.contrastive: 0",
            cfg.training.loss_weights.contrastive
        )));
    }
    Ok(Some((m, ident)))
}

/// Rows matched to precomputed tiles so far, slide by slide.
struct TileMatches {
    /// `[N, dim]`, rows in item order.
    features: Vec<f32>,
    dim: usize,
    records: Vec<PrecomputedFile>,
    /// Per slide with rows that have no tile: what to tell the user.
    unmatched: Vec<String>,
    /// Per slide whose tiles cover another footprint than the stage-0 patches.
    footprints: Vec<String>,
    /// Rows that took the nearest tile within the tolerance rather than an exact one.
    nearest: usize,
}

impl TileMatches {
    /// Copies the features of the tiles of slide `name` (files `f`) into the rows `rows` of
    /// `items`.
    fn match_slide(
        &mut self,
        cfg: &Config,
        model: &precomputed::FeatureModel,
        name: &str,
        f: &precomputed::SlideFiles,
        items: &[Item],
        rows: &[usize],
    ) -> Result<(), PipelineError> {
        let dim = self.dim;
        let tolerance_px = cfg.prototypes.precomputed_features.tolerance_px;
        let feats = precomputed::read_features(&f.features)?;
        precomputed::check_dim(cfg, model, &f.features, feats.shape[1], dim)?;
        let tiles = precomputed::read_tiles(&f.coordinates)?;
        if tiles.len() != feats.shape[0] {
            return Err(data_err(format!(
                "{} has {} feature rows but its coordinates {} have {} tiles; they must be the \
                 features and tiles of the same slide2vec run",
                f.features.display(),
                feats.shape[0],
                f.coordinates.display(),
                tiles.len()
            )));
        }
        let index = precomputed::TileIndex::new(&tiles.x, &tiles.y, tolerance_px);
        let mut miss: Vec<(i64, i64)> = Vec::new();
        let mut footprint: Option<(u32, u32)> = None;
        for &i in rows {
            let it = &items[i];
            let Some(r) = index.find(it.x, it.y) else {
                miss.push((it.x, it.y));
                continue;
            };
            if (tiles.x[r], tiles.y[r]) != (it.x, it.y) {
                self.nearest += 1;
            }
            let theirs = tiles.tile_size_lv0.as_ref().and_then(|v| v.get(r).copied());
            if let (Some(a), Some(b)) = (it.lv0, theirs)
                && a.abs_diff(b) > 1
                && footprint.is_none()
            {
                footprint = Some((a, b));
            }
            self.features[i * dim..(i + 1) * dim]
                .copy_from_slice(&feats.data[r * dim..(r + 1) * dim]);
        }
        if let Some((x, y)) = miss.first().copied() {
            let near = index.nearest_any(x, y).map_or(String::new(), |(tx, ty)| {
                format!("; the nearest tile is x={tx}, y={ty}")
            });
            self.unmatched.push(format!(
                "slide {name}: {} of {} prototype coordinates have no tile in {} (e.g. x={x}, y={y}{near})",
                miss.len(),
                rows.len(),
                f.coordinates.display()
            ));
        }
        if let Some((ours, theirs)) = footprint {
            self.footprints.push(format!(
                "slide {name}: stage-0 patches cover {ours} level-0 px, the tiles of {} cover {theirs}",
                f.coordinates.display()
            ));
        }
        self.records.push(PrecomputedFile {
            slide: name.to_string(),
            features: f.features.clone(),
            sha256: crate::sha256_file(&f.features)?,
            coordinates: f.coordinates.clone(),
            tiles: tiles.len(),
        });
        Ok(())
    }

    /// The error for rows without a tile, or for tiles of another footprint.
    fn check(&self, tolerance_px: u32) -> Result<(), PipelineError> {
        if !self.unmatched.is_empty() {
            let grid = if tolerance_px == 0 {
                "exactly".to_string()
            } else {
                format!("within {tolerance_px} px")
            };
            return Err(data_err(format!(
                "prototype coordinates without a precomputed tile ({grid}):\n  {}\nThe stage-0 \
                 coordinates and the slide2vec tiles are on different grids. Fix: sample the prototypes \
                 from the coordinates slide2vec embedded (paths.coordinates_dir, then `pbip \
                 sample-prototypes`), or let a coordinate take the nearest tile with {}.tolerance_px",
                self.unmatched.join("\n  "),
                "prototypes.precomputed_features"
            )));
        }
        if !self.footprints.is_empty() {
            return Err(data_err(format!(
                "the precomputed tiles are not the prototype patches:\n  {}\nthe features describe \
                 other regions than stage 3 trains on. Fix: sample the prototypes from the coordinates \
                 slide2vec embedded (paths.coordinates_dir), or embed the slides with slide2vec at the \
                 prototype patch size",
                self.footprints.join("\n  ")
            )));
        }
        Ok(())
    }

    /// SHA-256 over the feature files' SHA-256s (in slide order).
    fn sha256(&self) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for r in &self.records {
            h.update(r.sha256.as_bytes());
            h.update(b"\n");
        }
        format!("{:x}", h.finalize())
    }
}

/// The identity recorded for precomputed features: the configured encoder's kind and settings,
/// the feature files as source and their combined SHA-256.
fn precomputed_identity(
    cfg: &Config,
    model: &precomputed::FeatureModel,
    source: &Source,
    sha256: &str,
) -> EncoderIdentity {
    let enc = &cfg.prototypes.encoder;
    EncoderIdentity {
        kind: encoder::kind_name(enc.kind).to_string(),
        source: format!(
            "precomputed features of `{}` ({} in {})",
            model.name,
            source.layout.describe(),
            source.dir.display()
        ),
        sha256: Some(sha256.to_string()),
        random: false,
        swin: encoder::swin_config(enc),
        vit: if enc.kind == EncoderKind::Vit {
            encoder::vit_config(enc).ok().map(|(v, _)| v)
        } else {
            None
        },
    }
}

/// Takes every row's feature from the precomputed (slide2vec) tile embeddings of its slide.
fn lookup_precomputed(
    cfg: &Config,
    opts: &RunOptions,
    c: &Collected,
    source: &Source,
) -> Result<Computed, PipelineError> {
    let pf = &cfg.prototypes.precomputed_features;
    let Collected {
        items, slide_names, ..
    } = c;
    let files = precomputed_files(source, slide_names)?;
    // The features must come from the configured encoder.
    let (model, dim) = checked_feature_model(cfg, source, &files)?;
    // Stage 3 runs the configured encoder for its contrastive terms: build and save it now.
    let encoder = contrastive_encoder(cfg, &model.name)?;

    let n = items.len();
    let mut by_slide: Vec<Vec<usize>> = vec![Vec::new(); slide_names.len()];
    for (i, it) in items.iter().enumerate() {
        by_slide[it.slide_index].push(i);
    }
    let bar = progress_bar(
        opts.progress,
        files.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} slides ETA {eta} {msg}",
        "stage 1: precomputed features",
    );
    let t = Instant::now();
    let mut matches = TileMatches {
        features: vec![0f32; n * dim],
        dim,
        records: Vec::with_capacity(files.len()),
        unmatched: Vec::new(),
        footprints: Vec::new(),
        nearest: 0,
    };
    for (si, f) in files.iter().enumerate() {
        matches.match_slide(cfg, &model, &slide_names[si], f, items, &by_slide[si])?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    matches.check(pf.tolerance_px)?;
    let sha256 = matches.sha256();
    tracing::info!(
        rows = n,
        slides = matches.records.len(),
        model = %model.name,
        nearest = matches.nearest,
        "stage 1: precomputed features matched"
    );
    Ok(Computed {
        features: matches.features,
        dim,
        identity: precomputed_identity(cfg, &model, source, &sha256),
        precomputed: Some(PrecomputedSource {
            dir: source.dir.clone(),
            layout: source.layout.describe().to_string(),
            encoder: model.name.clone(),
            encoder_from: model.from.clone(),
            sha256,
            files: matches.records,
            tolerance_px: pf.tolerance_px,
            nearest_matches: matches.nearest,
            encoder_saved: encoder.is_some(),
        }),
        encoder,
        read_secs: t.elapsed().as_secs_f64(),
        encode_secs: 0.0,
        wait_secs: 0.0,
    })
}

/// The error for features of the wrong size or with a non-finite value.
fn check_features(c: &Collected, computed: &Computed) -> Result<(), PipelineError> {
    let (n, dim, features) = (c.items.len(), computed.dim, &computed.features);
    if features.len() != n * dim || n == 0 {
        return Err(data_err(format!(
            "encoded {} values for {n} patches",
            features.len()
        )));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        let fix = match &computed.precomputed {
            Some(p) => format!("check the feature files in {}", p.dir.display()),
            None => "check the encoder weights".into(),
        };
        return Err(data_err(format!(
            "a non-finite feature (patch {}, slide {}); {fix}",
            i / dim,
            c.slide_names[c.items[i / dim].slide_index]
        )));
    }
    Ok(())
}

/// The tensors of `exemplars.safetensors`: `features` `[n, dim]` and the per-row columns.
fn exemplar_tensors(
    items: &[Item],
    features: Vec<f32>,
    dim: usize,
) -> Result<TensorMap, PipelineError> {
    let n = items.len();
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
    Ok(map)
}

/// The report lines: rows, throughput or the precomputed source, and the saved encoder.
fn summary_lines(
    meta: &ExemplarsMeta,
    n: usize,
    ex_path: &Path,
    saved_encoder: Option<&EncoderIdentity>,
    enc_path: &Path,
) -> Vec<String> {
    let rate = n as f64 / meta.total_secs.max(1e-9);
    let mut summary = vec![format!(
        "{n} patches from {} slides, {}-d features -> {}",
        meta.slides.len(),
        meta.dim,
        ex_path.display()
    )];
    match &meta.precomputed {
        None => summary.push(format!(
            "{rate:.1} patches/s; reading {:.1} s, encoder {:.1} s, encoder waited {:.1} s for patches",
            meta.read_secs, meta.encode_secs, meta.wait_secs
        )),
        Some(p) => {
            summary.push(format!(
                "precomputed features of `{}` ({}) from {} files in {}, read in {:.1} s{}",
                p.encoder,
                p.encoder_from,
                p.files.len(),
                p.dir.display(),
                meta.read_secs,
                if p.nearest_matches > 0 {
                    format!(
                        "; {} rows took the nearest tile within {} px",
                        p.nearest_matches, p.tolerance_px
                    )
                } else {
                    String::new()
                }
            ));
            if saved_encoder.is_none() {
                summary.push(
                    "no encoder saved (training.loss_weights.contrastive is 0: training does not \
                     run it)"
                        .into(),
                );
            }
        }
    }
    if let Some(ident) = saved_encoder {
        summary.push(format!(
            "encoder: {} ({}) -> {}",
            ident.kind,
            ident.source,
            enc_path.display()
        ));
        if ident.random {
            summary.push(
                "WARNING: randomly initialised encoder weights (set prototypes.encoder.weights)"
                    .into(),
            );
        }
    }
    tracing::info!(patches = n, patches_per_sec = rate, "stage 1 done");
    summary
}

/// Writes the outputs of stage 1.
fn write_outputs(
    cfg: &Config,
    collected: Collected,
    computed: Computed,
    t0: Instant,
) -> Result<StageReport, PipelineError> {
    check_features(&collected, &computed)?;
    let Collected {
        items,
        slide_names,
        slide_paths,
        rows_per_class,
    } = collected;
    let Computed {
        features,
        dim,
        identity,
        encoder: model,
        read_secs,
        encode_secs,
        wait_secs,
        precomputed,
    } = computed;
    let n = items.len();

    let out_dir = output_dir(cfg);
    crate::create_dir_all(&out_dir)?;
    let summary_path = out_dir.join(SUMMARY_FILE);
    crate::remove_file_if_exists(&summary_path)?;
    let enc_path = out_dir.join(ENCODER_FILE);
    let saved_encoder = match &model {
        Some((m, ident)) => {
            encoder::save_encoder(&enc_path, m, ident)?;
            Some(ident.clone())
        }
        None => {
            // An encoder of an earlier run would not belong to these features.
            crate::remove_file_if_exists(&enc_path)?;
            None
        }
    };
    let meta = ExemplarsMeta {
        format: "pbip.exemplars.v1".into(),
        class_order: cfg.class_order.clone(),
        slides: slide_names,
        slide_paths,
        rows_per_class,
        dim,
        patch_size: cfg.patch_size,
        encoder: identity,
        preprocess: Preprocess::from_config(cfg),
        fingerprint: fingerprint(cfg),
        read_secs,
        encode_secs,
        wait_secs,
        total_secs: t0.elapsed().as_secs_f64(),
        precomputed,
    };
    let map = exemplar_tensors(&items, features, dim)?;
    let json = crate::json_pretty(&meta, &summary_path)?;
    let mut st_meta = BTreeMap::new();
    st_meta.insert(META_KEY.to_string(), json.clone());
    let ex_path = out_dir.join(EXEMPLARS_FILE);
    pbip_weights::write_safetensors_atomic(&ex_path, &map, &st_meta)
        .map_err(|e| data_err(format!("{}: {e}", ex_path.display())))?;
    let cfg_path = cfg.write_resolved(&out_dir)?;
    crate::write_atomic(&summary_path, json.as_bytes())?;

    let summary = summary_lines(&meta, n, &ex_path, saved_encoder.as_ref(), &enc_path);
    let mut outputs = vec![ex_path];
    if saved_encoder.is_some() {
        outputs.push(enc_path);
    }
    outputs.extend([cfg_path, summary_path]);
    Ok(StageReport {
        stage: INFO,
        output_dir: out_dir,
        outputs,
        summary,
    })
}

/// Whether stage 1's outputs are complete, newer than stage 0's, and made with the same settings.
pub fn freshness(cfg: &Config) -> Freshness {
    let dir = output_dir(cfg);
    let summary = match crate::previous_summary(
        &dir.join(SUMMARY_FILE),
        &fingerprint(cfg),
        |s: &ExemplarsMeta| &s.fingerprint,
    ) {
        Ok(s) => s,
        Err(stale) => return stale,
    };
    let mut outputs = vec![dir.join(EXEMPLARS_FILE), dir.join(SUMMARY_FILE)];
    if summary.precomputed.as_ref().is_none_or(|p| p.encoder_saved) {
        outputs.push(dir.join(ENCODER_FILE));
    }
    let mut inputs: Vec<PathBuf> = coordinates::class_files(cfg)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if let Some(p) = &summary.precomputed {
        for f in &p.files {
            inputs.push(f.features.clone());
            inputs.push(f.coordinates.clone());
        }
    }
    crate::compare_mtimes(&outputs, &inputs)
}

/// The encoder kind's output width note, for docs: `medclip` → projection width, `hf_swin` → Swin
/// width, `vit` → the ViT's pooled width (0 when its settings are invalid).
pub fn feature_dim(cfg: &Config) -> usize {
    let swin = encoder::swin_config(&cfg.prototypes.encoder);
    match cfg.prototypes.encoder.kind {
        EncoderKind::Medclip => swin.proj_dim,
        EncoderKind::HfSwin => swin.num_features(),
        EncoderKind::Vit => {
            encoder::vit_config(&cfg.prototypes.encoder).map_or(0, |(vit, _)| vit.output_dim())
        }
    }
}

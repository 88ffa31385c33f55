//! Stage 2: per-class cosine k-means of the stage-1 features → the prototype bank.
//!
//! With `prototypes.conditioning` (`centre` | `whiten`, see [`pbip_kmeans::bank`]) the exemplar
//! features are first conditioned against the class-balanced mean exemplar (and whitened), so a
//! bank from an encoder that does not separate the data (a random one) is not a set of nearly
//! identical vectors; the transform is saved with the bank (`conditioning_mean`,
//! `conditioning_matrix`) because every feature compared with the bank must undergo it too.
//!
//! Per class (class_order): the class's exemplar rows are L2-normalised and clustered with
//! [`pbip_kmeans::fit_f32`] (k = `prototypes.k_list[c]`; init, restarts, empty-cluster policy,
//! iterations and seed from `prototypes.kmeans`; `nearest_k` selects the paper variant where a
//! prototype is the normalised mean of the `nearest_k` members nearest its centre).
//!
//! Outputs in `<work_dir>/image_features/`:
//! * `prototypes.safetensors`: `features` [ΣK, D] (unit rows, class_order then cluster);
//!   metadata `pbip` (JSON [`PrototypesMeta`]: k_list, class_order, cumsum_k, per-cluster sizes and
//!   mean cosine to the centre, k-means settings, the exemplar file and encoder identity, the
//!   conditioning, and the bank's separability: inter-class cosines and nearest-prototype accuracy
//!   of the exemplars per class). A degenerate bank (collinear classes, or one that does not
//!   classify its own exemplars) is reported loudly with what to do.
//! * `prototype_sheets/<class>.png`: one row per prototype, the `sheet_patches_per_cluster`
//!   exemplar patches most similar to it (left = most similar), so a person can see what each
//!   prototype stands for.
//! * `prototypes.json`: the metadata, human-readable, written last (completion marker).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pbip_config::{Config, EmptyCluster, KMeansInit};
use pbip_kmeans::{EmptyClusterPolicy, InitMethod, KMeansConfig};
use pbip_slide::{Origin, PatchGeometry, RgbImage, Slide};
use pbip_weights::{HostTensor, TensorMap};

use crate::artifacts::exemplars as stage1;
pub use crate::artifacts::prototypes::{
    CONDITIONING_MATRIX, CONDITIONING_MEAN, ClassClusters, PROTOTYPES_FILE, PrototypesMeta,
    prototypes_path, read_conditioning, read_prototypes,
};
use crate::encoder::META_KEY;
use crate::{Freshness, PipelineError, RunOptions, StageInfo, StageReport};

/// Summary / completion marker.
pub const SUMMARY_FILE: &str = "prototypes.json";
/// Folder of the per-class PNG sheets.
pub const SHEETS_DIR: &str = "prototype_sheets";
/// Thumbnail side in the sheets, pixels.
pub const SHEET_THUMB_PX: u32 = 112;

const STAGE: &str = "cluster-prototypes";

/// Stage description.
pub const INFO: StageInfo = StageInfo {
    index: 2,
    command: STAGE,
    description: "per-class cosine k-means of the exemplar features (the prototype bank)",
    output_dir: stage1::OUTPUT_DIR,
};

/// The warning for a degenerate bank, with what to do (None when the bank separates its classes).
pub fn degenerate_warning(meta: &PrototypesMeta) -> Option<String> {
    let s = meta.separability.as_ref()?;
    if !s.degenerate() {
        return None;
    }
    let acc = meta
        .class_order
        .iter()
        .zip(&s.nearest_prototype_accuracy)
        .map(|(c, a)| format!("{c} {a:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "the prototype bank does not separate the classes: prototypes of different classes have cosine up to {:.4} \
         (>= {} counts as collinear) and the nearest prototype of an exemplar is of its own class for {acc} \
         (balanced {:.2}); the encoder ({}) does not tell the classes apart. Fix: set prototypes.encoder.weights to a \
         pretrained encoder, or prototypes.conditioning: whiten (or centre); without either, train with \
         model.head.normalize_prototypes: true (configs/cpu.yaml), which learns from a degenerate bank",
        s.max_inter_class_cosine,
        pbip_kmeans::bank::COLLINEAR_COSINE,
        s.balanced_accuracy,
        meta.encoder.kind
    ))
}

fn fingerprint(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "class_order": cfg.class_order,
        "k_list": cfg.prototypes.k_list,
        "kmeans": cfg.prototypes.kmeans,
        "seed": cfg.kmeans_seed(),
        "sheet_patches_per_cluster": cfg.prototypes.sheet_patches_per_cluster,
        "conditioning": cfg.prototypes.conditioning,
    })
}

fn data_err(message: String) -> PipelineError {
    PipelineError::Data {
        stage: STAGE,
        message,
    }
}

/// The k-means settings of the config for class `c`.
pub fn kmeans_config(cfg: &Config, k: usize) -> KMeansConfig {
    let km = &cfg.prototypes.kmeans;
    KMeansConfig {
        k,
        max_iter: km.max_iter,
        init: match km.init {
            KMeansInit::Random => InitMethod::Random,
            KMeansInit::KMeansPlusPlus => InitMethod::KMeansPlusPlus,
            KMeansInit::NumpyLegacy => InitMethod::NumpyLegacy,
        },
        n_init: km.n_init,
        seed: cfg.kmeans_seed(),
        empty_cluster: match km.empty_cluster {
            EmptyCluster::Keep => EmptyClusterPolicy::Keep,
            EmptyCluster::ReseedFarthest => EmptyClusterPolicy::ReseedFarthest,
        },
        nearest_members: km.nearest_k,
        ..KMeansConfig::default()
    }
}

fn column(map: &TensorMap, name: &str, n: usize, path: &Path) -> Result<Vec<f32>, PipelineError> {
    match map.get(name) {
        Some(t) if t.data.len() == n => Ok(t.data.clone()),
        Some(t) => Err(data_err(format!(
            "{}: `{name}` has {} values, expected {n}",
            path.display(),
            t.data.len()
        ))),
        None => Err(data_err(format!(
            "{}: tensor `{name}` is missing",
            path.display()
        ))),
    }
}

/// The stage-1 exemplars: features `[n, dim]` and the per-row columns stage 2 uses.
struct Exemplars {
    path: PathBuf,
    meta: stage1::ExemplarsMeta,
    features: Vec<f32>,
    n: usize,
    dim: usize,
    class_of: Vec<usize>,
    slide_ix: Vec<f32>,
    xs: Vec<f32>,
    ys: Vec<f32>,
    levels: Vec<f32>,
    sizes: Vec<f32>,
}

impl Exemplars {
    /// Reads `exemplars.safetensors` of stage 1, made for the config's `class_order`.
    fn read(cfg: &Config) -> Result<Self, PipelineError> {
        let ex_path = stage1::exemplars_path(cfg);
        if !ex_path.is_file() {
            return Err(data_err(format!(
                "{} is missing: run `pbip embed-prototypes` first",
                ex_path.display()
            )));
        }
        let (mut map, ex_meta) = stage1::read_exemplars(&ex_path)?;
        if ex_meta.class_order != cfg.class_order {
            return Err(data_err(format!(
                "{} was computed for class_order {:?}, the config has {:?}: rerun `pbip embed-prototypes`",
                ex_path.display(),
                ex_meta.class_order,
                cfg.class_order
            )));
        }
        let feats = map.get("features").ok_or_else(|| {
            data_err(format!(
                "{}: tensor `features` is missing",
                ex_path.display()
            ))
        })?;
        let (n, dim) = match feats.shape.as_slice() {
            [n, d] => (*n, *d),
            s => {
                return Err(data_err(format!(
                    "{}: `features` has shape {s:?}, expected [N, D]",
                    ex_path.display()
                )));
            }
        };
        let class_ix = column(&map, "class_index", n, &ex_path)?;
        let slide_ix = column(&map, "slide_index", n, &ex_path)?;
        let xs = column(&map, "x_lv0", n, &ex_path)?;
        let ys = column(&map, "y_lv0", n, &ex_path)?;
        let levels = column(&map, "tile_level", n, &ex_path)?;
        let sizes = column(&map, "tile_size_resized", n, &ex_path)?;
        let features = map.remove("features").map(|t| t.data).unwrap_or_default();
        Ok(Self {
            path: ex_path,
            meta: ex_meta,
            features,
            n,
            dim,
            class_of: class_ix.iter().map(|&c| c as usize).collect(),
            slide_ix,
            xs,
            ys,
            levels,
            sizes,
        })
    }
}

/// The features k-means clusters: the exemplars conditioned per `prototypes.conditioning`
/// (identity = upstream: only the normalisation k-means does).
struct Conditioned {
    kind: pbip_kmeans::ConditioningKind,
    conditioner: pbip_kmeans::Conditioner,
    /// `[n, dim]`.
    features: Vec<f32>,
}

impl Conditioned {
    fn fit(cfg: &Config, ex: &Exemplars) -> Result<Self, PipelineError> {
        let kind = match cfg.prototypes.conditioning {
            pbip_config::Conditioning::None => pbip_kmeans::ConditioningKind::None,
            pbip_config::Conditioning::Centre => pbip_kmeans::ConditioningKind::Centre,
            pbip_config::Conditioning::Whiten => pbip_kmeans::ConditioningKind::Whiten,
        };
        let cond_err = |e| data_err(format!("{}: conditioning: {e}", ex.path.display()));
        let raw: Vec<f64> = ex.features.iter().map(|&v| f64::from(v)).collect();
        let conditioner = pbip_kmeans::Conditioner::fit(kind, &raw, ex.n, ex.dim, &ex.class_of)
            .map_err(cond_err)?;
        let features: Vec<f32> = if kind == pbip_kmeans::ConditioningKind::None {
            ex.features.clone()
        } else {
            conditioner
                .apply(&raw, ex.n)
                .map_err(cond_err)?
                .iter()
                .map(|&v| v as f32)
                .collect()
        };
        Ok(Self {
            kind,
            conditioner,
            features,
        })
    }

    /// The transform's tensors to save with the bank (none without conditioning).
    fn insert_tensors(&self, tensors: &mut TensorMap, dim: usize) -> Result<(), PipelineError> {
        if self.kind == pbip_kmeans::ConditioningKind::None {
            return Ok(());
        }
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        tensors.insert(
            CONDITIONING_MEAN.into(),
            HostTensor::new(vec![dim], f(&self.conditioner.mean))
                .map_err(|e| data_err(e.to_string()))?,
        );
        if let Some(m) = &self.conditioner.matrix {
            tensors.insert(
                CONDITIONING_MATRIX.into(),
                HostTensor::new(vec![dim, dim], f(m)).map_err(|e| data_err(e.to_string()))?,
            );
        }
        Ok(())
    }
}

/// One class's part of the bank.
struct ClassBank {
    /// `[k, dim]` unit rows.
    prototypes: Vec<f32>,
    clusters: ClassClusters,
    /// Per prototype: the exemplar rows of its sheet row, most similar first.
    sheet_rows: Vec<Vec<usize>>,
}

/// Clusters the exemplars of class `c` (k = `prototypes.k_list[c]`).
fn cluster_class(
    cfg: &Config,
    c: usize,
    ex: &Exemplars,
    conditioned: &[f32],
) -> Result<ClassBank, PipelineError> {
    let (n, dim) = (ex.n, ex.dim);
    let class = &cfg.class_order[c];
    let k = cfg.prototypes.k_list.get(c).copied().unwrap_or(0);
    let rows: Vec<usize> = (0..n).filter(|&i| ex.class_of[i] == c).collect();
    if rows.is_empty() {
        return Err(data_err(format!(
            "class `{class}` has no exemplars in {}",
            ex.path.display()
        )));
    }
    if rows.len() < k {
        return Err(data_err(format!(
            "class `{class}` has {} exemplar(s) but prototypes.k_list asks for k = {k}: lower k or raise \
             prototypes.num_per_class / samples_per_wsi",
            rows.len()
        )));
    }
    let mut x = Vec::with_capacity(rows.len() * dim);
    for &r in &rows {
        x.extend_from_slice(&conditioned[r * dim..(r + 1) * dim]);
    }
    let res = pbip_kmeans::fit_f32(&x, rows.len(), dim, &kmeans_config(cfg, k))
        .map_err(|e| data_err(format!("class `{class}` ({} exemplars): {e}", rows.len())))?;
    // Members of each cluster sorted by cosine to the prototype (features unit-normalised).
    let norm: Vec<f64> = pbip_kmeans::normalize_rows(
        &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        rows.len(),
        dim,
    )
    .map_err(|e| data_err(format!("class `{class}`: {e}")))?;
    let per = cfg.prototypes.sheet_patches_per_cluster;
    let mut sheet_rows = Vec::with_capacity(k);
    for j in 0..k {
        let p = &res.prototypes[j * dim..(j + 1) * dim];
        let mut members: Vec<(f64, usize)> = (0..rows.len())
            .filter(|&i| res.assignment[i] == j)
            .map(|i| {
                (
                    norm[i * dim..(i + 1) * dim]
                        .iter()
                        .zip(p)
                        .map(|(a, b)| a * b)
                        .sum::<f64>(),
                    rows[i],
                )
            })
            .collect();
        members.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        sheet_rows.push(members.into_iter().take(per).map(|(_, r)| r).collect());
    }
    tracing::info!(class = %class, k, exemplars = rows.len(), iterations = res.iterations, sizes = ?res.cluster_sizes, "clustered");
    Ok(ClassBank {
        prototypes: res.prototypes_f32(),
        clusters: ClassClusters {
            class: class.clone(),
            exemplars: rows.len(),
            k,
            cluster_sizes: res.cluster_sizes.clone(),
            mean_cosine: res.mean_cosine.clone(),
            objective: res.objective,
            iterations: res.iterations,
            converged: res.converged,
        },
        sheet_rows,
    })
}

/// Writes `prototypes.safetensors`: the bank `[total_k, dim]`, the conditioning, and `json` (the
/// metadata) under [`META_KEY`].
fn write_bank(
    path: &Path,
    bank: Vec<f32>,
    total_k: usize,
    dim: usize,
    conditioned: &Conditioned,
    json: &str,
) -> Result<(), PipelineError> {
    let mut tensors = TensorMap::new();
    tensors.insert(
        "features".into(),
        HostTensor::new(vec![total_k, dim], bank).map_err(|e| data_err(e.to_string()))?,
    );
    conditioned.insert_tensors(&mut tensors, dim)?;
    let mut st_meta = BTreeMap::new();
    st_meta.insert(META_KEY.to_string(), json.to_string());
    pbip_weights::write_safetensors_atomic(path, &tensors, &st_meta)
        .map_err(|e| data_err(format!("{}: {e}", path.display())))
}

/// Writes one PNG sheet per class into `sheet_dir`: row j = the exemplar patches of prototype j,
/// read again from their slides (cheap; a few per prototype). Returns the files.
fn write_sheets(
    cfg: &Config,
    ex: &Exemplars,
    sheets: &[(String, Vec<Vec<usize>>)],
    sheet_dir: &Path,
) -> Result<Vec<PathBuf>, PipelineError> {
    crate::create_dir_all(sheet_dir)?;
    let open_opts = crate::settings::open_options(cfg, true);
    let mut open: BTreeMap<usize, Slide> = BTreeMap::new();
    let mut outputs = Vec::new();
    for (class, rows) in sheets {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
        let t = SHEET_THUMB_PX;
        let gap = 4u32;
        let mut sheet = RgbImage::filled(
            cols * (t + gap) + gap,
            rows.len() as u32 * (t + gap) + gap,
            [255, 255, 255],
        );
        for (j, members) in rows.iter().enumerate() {
            for (m, &r) in members.iter().enumerate() {
                let si = ex.slide_ix[r] as usize;
                if let std::collections::btree_map::Entry::Vacant(e) = open.entry(si) {
                    let path = ex
                        .meta
                        .slide_paths
                        .get(si)
                        .ok_or_else(|| data_err(format!("slide index {si} out of range")))?;
                    e.insert(Slide::open(path, &open_opts)?);
                }
                let Some(slide) = open.get(&si) else { continue };
                let geom = PatchGeometry {
                    level: ex.levels[r] as usize,
                    read_size_px: ex.sizes[r] as u32,
                    out_size_px: t,
                    origin: Origin::TopLeft,
                };
                let img = slide.read_patch(ex.xs[r] as i64, ex.ys[r] as i64, &geom)?;
                blit(
                    &mut sheet,
                    &img,
                    gap + m as u32 * (t + gap),
                    gap + j as u32 * (t + gap),
                );
            }
        }
        let p = sheet_dir.join(format!("{class}.png"));
        pbip_slide::write_png(&p, &sheet)?;
        outputs.push(p);
    }
    Ok(outputs)
}

/// The report lines: the bank, its classes, its separability and the degenerate-bank warning.
fn summary_lines(cfg: &Config, meta: &PrototypesMeta, proto_path: &Path) -> Vec<String> {
    let total_k = *meta.cumsum_k.last().unwrap_or(&0);
    let mut summary = vec![format!(
        "{total_k} prototypes ({}-d) -> {}",
        meta.dim,
        proto_path.display()
    )];
    for c in &meta.classes {
        summary.push(format!(
            "{}: k={} from {} exemplars, cluster sizes {:?}, mean cosine {}",
            c.class,
            c.k,
            c.exemplars,
            c.cluster_sizes,
            c.mean_cosine
                .iter()
                .map(|m| m.map_or("-".into(), |v| format!("{v:.4}")))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if let Some(sep) = &meta.separability {
        summary.push(format!(
            "separability{}: inter-class prototype cosine {:.4} .. {:.4}; nearest-prototype accuracy of the exemplars {} (balanced {:.2})",
            match meta.conditioning {
                pbip_kmeans::ConditioningKind::None => String::new(),
                k => format!(" (conditioning {k:?})").to_lowercase(),
            },
            sep.min_inter_class_cosine,
            sep.max_inter_class_cosine,
            meta.class_order
                .iter()
                .zip(&sep.nearest_prototype_accuracy)
                .map(|(c, a)| format!("{c} {a:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            sep.balanced_accuracy
        ));
    }
    if let Some(w) = degenerate_warning(meta) {
        if cfg.model.head.normalize_prototypes {
            // The configured head is the one that learns from such a bank: say so, quietly.
            let n = "the prototype bank does not separate the classes (random or unsuited encoder); \
                     model.head.normalize_prototypes: true is set, which learns from it. A pretrained \
                     encoder (prototypes.encoder.weights) would still give better prototypes";
            tracing::info!("{n}");
            summary.push(format!("note: {n}"));
        } else {
            tracing::warn!("{w}");
            summary.push(format!("WARNING: {w}"));
        }
    }
    summary
}

/// Runs stage 2.
pub fn run(cfg: &Config, _opts: &RunOptions) -> Result<StageReport, PipelineError> {
    let ex = Exemplars::read(cfg)?;
    let (n, dim) = (ex.n, ex.dim);
    let conditioned = Conditioned::fit(cfg, &ex)?;

    let mut bank: Vec<f32> = Vec::new();
    let mut classes = Vec::new();
    let mut cumsum = vec![0usize];
    let mut sheets: Vec<(String, Vec<Vec<usize>>)> = Vec::new();
    for (c, class) in cfg.class_order.iter().enumerate() {
        let cb = cluster_class(cfg, c, &ex, &conditioned.features)?;
        bank.extend(cb.prototypes);
        cumsum.push(cumsum[c] + cb.clusters.k);
        sheets.push((class.clone(), cb.sheet_rows));
        classes.push(cb.clusters);
    }

    let out_dir = stage1::output_dir(cfg);
    let summary_path = out_dir.join(SUMMARY_FILE);
    crate::remove_file_if_exists(&summary_path)?;
    let total_k = *cumsum.last().unwrap_or(&0);
    let bank_f64: Vec<f64> = bank.iter().map(|&v| f64::from(v)).collect();
    let cond_f64: Vec<f64> = conditioned.features.iter().map(|&v| f64::from(v)).collect();
    let separability = pbip_kmeans::separability(
        &bank_f64,
        &cfg.prototypes.k_list,
        &cond_f64,
        n,
        dim,
        &ex.class_of,
    )
    .map_err(|e| data_err(format!("separability: {e}")))?;
    let meta = PrototypesMeta {
        format: "pbip.prototypes.v1".into(),
        class_order: cfg.class_order.clone(),
        k_list: cfg.prototypes.k_list.clone(),
        cumsum_k: cumsum,
        dim,
        classes,
        kmeans: serde_json::to_value(kmeans_config(cfg, 0)).unwrap_or_default(),
        exemplars: ex.path.clone(),
        encoder: ex.meta.encoder.clone(),
        fingerprint: fingerprint(cfg),
        conditioning: conditioned.kind,
        separability: Some(separability),
    };
    let json = crate::json_pretty(&meta, &summary_path)?;
    let proto_path = out_dir.join(PROTOTYPES_FILE);
    write_bank(&proto_path, bank, total_k, dim, &conditioned, &json)?;

    let sheet_dir = out_dir.join(SHEETS_DIR);
    let mut outputs = vec![proto_path.clone()];
    outputs.extend(write_sheets(cfg, &ex, &sheets, &sheet_dir)?);
    let cfg_path = cfg.write_resolved(&out_dir)?;
    outputs.push(cfg_path);
    crate::write_atomic(&summary_path, json.as_bytes())?;
    outputs.push(summary_path);

    let mut summary = summary_lines(cfg, &meta, &proto_path);
    summary.push(format!("prototype sheets: {}", sheet_dir.display()));
    Ok(StageReport {
        stage: INFO,
        output_dir: out_dir,
        outputs,
        summary,
    })
}

fn blit(dst: &mut RgbImage, src: &RgbImage, x0: u32, y0: u32) {
    for y in 0..src.height.min(dst.height.saturating_sub(y0)) {
        let w = src.width.min(dst.width.saturating_sub(x0)) as usize;
        let s = (y as usize * src.width as usize) * 3;
        let d = ((y0 + y) as usize * dst.width as usize + x0 as usize) * 3;
        dst.data[d..d + w * 3].copy_from_slice(&src.data[s..s + w * 3]);
    }
}

/// Whether stage 2's outputs are complete, newer than stage 1's, and made with the same settings.
pub fn freshness(cfg: &Config) -> Freshness {
    let dir = stage1::output_dir(cfg);
    if let Err(stale) = crate::previous_summary(
        &dir.join(SUMMARY_FILE),
        &fingerprint(cfg),
        |s: &PrototypesMeta| &s.fingerprint,
    ) {
        return stale;
    }
    crate::compare_mtimes(
        &[dir.join(PROTOTYPES_FILE), dir.join(SUMMARY_FILE)],
        &[dir.join(stage1::EXEMPLARS_FILE)],
    )
}

//! Stage 0: sample prototype coordinates per class from the training slides.
//!
//! * Training slides are grouped by class: a slide belongs to **every** class it is labelled with
//!   (multi-hot labels), so a multi-label slide can be sampled for several classes (independently).
//!   With single-label data (one class index per slide) each slide belongs to exactly one class.
//!   Slides with no positive label are never sampled.
//! * Per class (in `class_order`), up to `prototypes.num_per_class` slides are drawn without
//!   replacement from that class's slides (sorted by name), then up to `prototypes.samples_per_wsi`
//!   coordinates per slide. All randomness comes from ChaCha8 seeded with `seed`, stream = class
//!   index, so the same config gives byte-identical outputs.
//! * Geometry per coordinate comes from the coordinate file (tile_level, tile_size_resized, output
//!   size, tile_size_lv0, resize_factor); missing fields default to level 0, `patch_size`, and
//!   `tile_size_lv0 = tile_size_resized × level downsample`.
//! * With `slide.coordinate_origin: centre`, (x, y) are converted to the top-left corner
//!   (`x − tile_size_lv0/2`) so outputs always use the level-0 top-left convention.
//! * Coordinates whose top-left corner lies outside the slide, or whose level does not exist, are
//!   dropped with a warning; if every coordinate of a sampled slide is invalid, the stage fails.
//!   Tiles that overhang the right/bottom border are kept (the reader pads) and counted.
//!
//! Outputs in `<work_dir>/prototype_coordinates/`: `<class>.npy` (PBIP prototype structured array),
//! `summary.json` (counts per class and slide, written last), `config.resolved.yaml`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use pbip_config::{Config, CoordinateOrigin, Dataset, SlideEntry, Split};
use pbip_coords::{Coordinates, PrototypeRecord, ReadOptions};
use pbip_slide::Slide;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::artifacts::coordinates::{OUTPUT_DIR, class_file, class_files, output_dir};
use crate::progress::progress_bar;
use crate::{Freshness, PipelineError, RunOptions, StageInfo, StageReport, mtime, write_atomic};

/// Summary file name.
pub const SUMMARY_FILE: &str = "summary.json";

const STAGE: &str = "sample-prototypes";

/// Stage description.
pub const INFO: StageInfo = StageInfo {
    index: 0,
    command: STAGE,
    description: "sample prototype coordinates per class from the training slides",
    output_dir: OUTPUT_DIR,
};

/// Per-class result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    /// Class name.
    pub class: String,
    /// Class index in class_order.
    pub index: usize,
    /// Output file name (in the output folder).
    pub file: String,
    /// Training slides labelled with this class.
    pub slides_available: usize,
    /// Slides sampled.
    pub slides_sampled: usize,
    /// Coordinates written.
    pub coordinates: usize,
    /// Coordinates written per slide (wsi_name with extension).
    pub per_slide: BTreeMap<String, usize>,
}

/// Contents of `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage0Summary {
    /// Settings this output depends on (compared by `pbip run` to decide whether to rerun).
    pub fingerprint: serde_json::Value,
    /// One entry per class, in class_order.
    pub classes: Vec<ClassSummary>,
    /// Coordinates dropped (top-left outside the slide or missing level), per slide.
    pub dropped: BTreeMap<String, usize>,
    /// Kept coordinates whose tile overhangs the slide border, per slide.
    pub overhanging: BTreeMap<String, usize>,
}

/// Result of [`run`].
#[derive(Debug, Clone)]
pub struct Stage0Result {
    /// Generic report.
    pub report: StageReport,
    /// The summary written to `summary.json`.
    pub summary: Stage0Summary,
}

fn fingerprint(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "seed": cfg.seed,
        "class_order": cfg.class_order,
        "patch_size": cfg.patch_size,
        "num_per_class": cfg.prototypes.num_per_class,
        "samples_per_wsi": cfg.prototypes.samples_per_wsi,
        "coordinate_origin": format!("{:?}", cfg.slide.coordinate_origin),
        "split_csv": cfg.paths.split_csv,
        "labels_csv": cfg.paths.labels_csv,
        "wsi_dir": cfg.paths.wsi_dir,
        "coordinates_dir": cfg.paths.coordinates_dir,
        "coordinates_suffix": cfg.paths.coordinates_suffix,
    })
}

struct SlideGeom {
    width: u64,
    height: u64,
    downsamples: Vec<f64>,
}

#[derive(Default)]
struct RowFilter {
    dropped: usize,
    overhanging: usize,
}

/// Turns all coordinate rows of a slide into validated prototype records (top-left convention).
fn slide_records(
    cfg: &Config,
    entry: &SlideEntry,
    coords: &Coordinates,
    geom: &SlideGeom,
    stats: &mut RowFilter,
) -> Result<Vec<PrototypeRecord>, PipelineError> {
    let wsi_name = entry.wsi_name();
    let mut out = Vec::with_capacity(coords.len());
    for i in 0..coords.len() {
        let Some(g) = coords.get_geometry(i, cfg.patch_size) else {
            continue;
        };
        let Some(ds) = geom.downsamples.get(g.level as usize).copied() else {
            stats.dropped += 1;
            continue;
        };
        let lv0 = coords
            .tile_size_lv0
            .as_ref()
            .and_then(|v| v.get(i).copied())
            .unwrap_or_else(|| (g.read_size_px as f64 * ds).round() as u32);
        let rf = coords
            .resize_factor
            .as_ref()
            .and_then(|v| v.get(i).copied())
            .unwrap_or(g.read_size_px as f64 / g.out_size_px.max(1) as f64);
        let (mut x, mut y) = (coords.x[i], coords.y[i]);
        if cfg.slide.coordinate_origin == CoordinateOrigin::Centre {
            x -= i64::from(lv0 / 2);
            y -= i64::from(lv0 / 2);
        }
        if x < 0 || y < 0 || x as u64 >= geom.width || y as u64 >= geom.height {
            stats.dropped += 1;
            continue;
        }
        if x as u64 + u64::from(lv0) > geom.width || y as u64 + u64::from(lv0) > geom.height {
            stats.overhanging += 1;
        }
        let to_i32 = |v: i64, what: &str| {
            i32::try_from(v).map_err(|_| PipelineError::Data {
                stage: STAGE,
                message: format!(
                    "{}: row {i}: {what} = {v} does not fit in int32",
                    entry.coordinates_path.display()
                ),
            })
        };
        out.push(PrototypeRecord {
            x: to_i32(x, "x")?,
            y: to_i32(y, "y")?,
            tile_level: to_i32(i64::from(g.level), "tile_level")?,
            tile_size_resized: to_i32(i64::from(g.read_size_px), "tile_size_resized")?,
            tile_size: to_i32(i64::from(g.out_size_px), "tile_size")?,
            tile_size_lv0: to_i32(i64::from(lv0), "tile_size_lv0")?,
            resize_factor: rf as f32,
            wsi_name: wsi_name.clone(),
        });
    }
    Ok(out)
}

/// Training slides per class, in `class_order` (a slide belongs to every class it is labelled
/// with); an error names the classes without any.
fn slides_by_class<'a>(
    cfg: &Config,
    train: &[&'a SlideEntry],
) -> Result<Vec<Vec<&'a SlideEntry>>, PipelineError> {
    let mut by_class: Vec<Vec<&SlideEntry>> = vec![Vec::new(); cfg.class_order.len()];
    for s in train {
        for c in s.class_indices() {
            if let Some(list) = by_class.get_mut(c) {
                list.push(*s);
            }
        }
    }
    let empty: Vec<&str> = by_class
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_empty())
        .map(|(i, _)| cfg.class_order[i].as_str())
        .collect();
    if !empty.is_empty() {
        return Err(PipelineError::Data {
            stage: STAGE,
            message: format!(
                "no training slide is labelled with class(es) {} ({} training slides in {})",
                empty.join(", "),
                train.len(),
                cfg.paths.split_csv.display()
            ),
        });
    }
    Ok(by_class)
}

/// The slides drawn for one class, and the class's RNG that then draws their coordinates.
struct ClassDraw<'a> {
    rng: ChaCha8Rng,
    slides: Vec<&'a SlideEntry>,
}

/// Per class: up to `num_per_class` of its slides (sorted by name first), drawn with ChaCha8
/// seeded with `seed`, stream = class index.
fn choose_slides<'a>(cfg: &Config, by_class: &mut [Vec<&'a SlideEntry>]) -> Vec<ClassDraw<'a>> {
    let mut chosen = Vec::with_capacity(by_class.len());
    for (c, list) in by_class.iter_mut().enumerate() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(c as u64);
        let k = cfg.prototypes.num_per_class.min(list.len());
        let mut idx = rand::seq::index::sample(&mut rng, list.len(), k).into_vec();
        idx.sort_unstable();
        chosen.push(ClassDraw {
            rng,
            slides: idx.into_iter().map(|i| list[i]).collect(),
        });
    }
    chosen
}

/// The validated rows of the slides read so far: a slide sampled for several classes is opened
/// and filtered once.
struct SlideRows<'c> {
    cfg: &'c Config,
    open_opts: pbip_slide::OpenOptions,
    by_name: HashMap<String, (Vec<PrototypeRecord>, RowFilter)>,
}

impl<'c> SlideRows<'c> {
    fn new(cfg: &'c Config) -> Self {
        Self {
            cfg,
            open_opts: crate::settings::open_options(cfg, false),
            by_name: HashMap::new(),
        }
    }

    /// The rows of `entry` and what was filtered out; an error when no row lies inside the slide.
    fn of(
        &mut self,
        entry: &SlideEntry,
    ) -> Result<&(Vec<PrototypeRecord>, RowFilter), PipelineError> {
        if !self.by_name.contains_key(&entry.name) {
            let rows = self.read(entry)?;
            self.by_name.insert(entry.name.clone(), rows);
        }
        Ok(&self.by_name[&entry.name])
    }

    fn read(&self, entry: &SlideEntry) -> Result<(Vec<PrototypeRecord>, RowFilter), PipelineError> {
        let cfg = self.cfg;
        let slide = Slide::open(&entry.slide_path, &self.open_opts)?;
        let (width, height) = slide.dimensions();
        let geom = SlideGeom {
            width,
            height,
            downsamples: slide.level_downsamples().to_vec(),
        };
        let coords = Coordinates::read_with(
            &entry.coordinates_path,
            &ReadOptions {
                allow_negative: true,
            },
        )?;
        let mut stats = RowFilter::default();
        let rows = slide_records(cfg, entry, &coords, &geom, &mut stats)?;
        if rows.is_empty() {
            return Err(PipelineError::Data {
                stage: STAGE,
                message: format!(
                    "slide `{}`: none of the {} coordinates in {} lies inside the slide ({} x {} px, {} levels; coordinate_origin {:?}) — wrong slide, wrong coordinate file, or wrong slide.coordinate_origin?",
                    entry.wsi_name(),
                    coords.len(),
                    entry.coordinates_path.display(),
                    geom.width,
                    geom.height,
                    geom.downsamples.len(),
                    cfg.slide.coordinate_origin
                ),
            });
        }
        if stats.dropped > 0 {
            tracing::warn!(
                slide = %entry.wsi_name(),
                dropped = stats.dropped,
                total = coords.len(),
                "dropped coordinates outside the slide or at a missing level"
            );
        }
        Ok((rows, stats))
    }
}

/// What sampling drew: the records per class (class_order) and the summary without fingerprint.
struct Sampled {
    records: Vec<Vec<PrototypeRecord>>,
    classes: Vec<ClassSummary>,
    dropped: BTreeMap<String, usize>,
    overhanging: BTreeMap<String, usize>,
}

/// Draws up to `samples_per_wsi` coordinates from every chosen slide, class by class.
fn sample(
    cfg: &Config,
    opts: &RunOptions,
    by_class: &[Vec<&SlideEntry>],
    chosen: Vec<ClassDraw<'_>>,
) -> Result<Sampled, PipelineError> {
    let total: usize = chosen.iter().map(|d| d.slides.len()).sum();
    let bar = progress_bar(
        opts.progress,
        total as u64,
        "{prefix} [{bar:30}] {pos}/{len} slides {msg}",
        "stage 0: sampling",
    );
    let mut slide_rows = SlideRows::new(cfg);
    let mut out = Sampled {
        records: Vec::with_capacity(chosen.len()),
        classes: Vec::with_capacity(chosen.len()),
        dropped: BTreeMap::new(),
        overhanging: BTreeMap::new(),
    };
    for (c, ClassDraw { mut rng, slides }) in chosen.into_iter().enumerate() {
        let class = &cfg.class_order[c];
        let mut recs = Vec::new();
        let mut per_slide = BTreeMap::new();
        for entry in &slides {
            bar.set_message(entry.name.clone());
            let (rows, stats) = slide_rows.of(entry)?;
            if stats.dropped > 0 {
                out.dropped.insert(entry.wsi_name(), stats.dropped);
            }
            if stats.overhanging > 0 {
                out.overhanging.insert(entry.wsi_name(), stats.overhanging);
            }
            let k = cfg.prototypes.samples_per_wsi.min(rows.len());
            let mut idx = rand::seq::index::sample(&mut rng, rows.len(), k).into_vec();
            idx.sort_unstable();
            recs.extend(idx.iter().map(|&i| rows[i].clone()));
            per_slide.insert(entry.wsi_name(), k);
            bar.inc(1);
        }
        tracing::info!(class = %class, slides = slides.len(), coordinates = recs.len(), "sampled prototype coordinates");
        out.classes.push(ClassSummary {
            class: class.clone(),
            index: c,
            file: format!("{class}.npy"),
            slides_available: by_class[c].len(),
            slides_sampled: slides.len(),
            coordinates: recs.len(),
            per_slide,
        });
        out.records.push(recs);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Writes the class files, the resolved config and `summary.json` (last); returns the files.
fn write_outputs(
    cfg: &Config,
    records: &[Vec<PrototypeRecord>],
    summary: &Stage0Summary,
) -> Result<Vec<PathBuf>, PipelineError> {
    let out_dir = output_dir(cfg);
    crate::create_dir_all(&out_dir)?;
    // Remove a stale summary first so an interrupted run never looks complete.
    let summary_path = out_dir.join(SUMMARY_FILE);
    crate::remove_file_if_exists(&summary_path)?;
    let mut outputs = Vec::new();
    for (c, recs) in records.iter().enumerate() {
        let path = class_file(cfg, &cfg.class_order[c]);
        let bytes = pbip_coords::encode_prototype_npy(&path, recs)?;
        write_atomic(&path, &bytes)?;
        outputs.push(path);
    }
    let cfg_path = cfg.write_resolved(&out_dir)?;
    outputs.push(cfg_path);
    let json = crate::json_pretty(summary, &summary_path)?;
    write_atomic(&summary_path, json.as_bytes())?;
    outputs.push(summary_path);
    Ok(outputs)
}

/// The report lines: coordinates per class, and the dropped ones.
fn summary_lines(summary: &Stage0Summary, out_dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for c in &summary.classes {
        lines.push(format!(
            "{}: {} coordinates from {} of {} training slides -> {}",
            c.class,
            c.coordinates,
            c.slides_sampled,
            c.slides_available,
            out_dir.join(&c.file).display()
        ));
    }
    let dropped_total: usize = summary.dropped.values().sum();
    if dropped_total > 0 {
        lines.push(format!(
            "dropped {dropped_total} coordinates outside their slide (see summary.json)"
        ));
    }
    lines
}

/// Runs stage 0 with the given config.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<Stage0Result, PipelineError> {
    let dataset = Dataset::load(cfg)?;
    let train = dataset.split(Split::Train);
    let mut by_class = slides_by_class(cfg, &train)?;
    let chosen = choose_slides(cfg, &mut by_class);
    let sampled = sample(cfg, opts, &by_class, chosen)?;
    let summary = Stage0Summary {
        fingerprint: fingerprint(cfg),
        classes: sampled.classes,
        dropped: sampled.dropped,
        overhanging: sampled.overhanging,
    };
    let outputs = write_outputs(cfg, &sampled.records, &summary)?;
    let out_dir = output_dir(cfg);
    Ok(Stage0Result {
        report: StageReport {
            stage: INFO,
            summary: summary_lines(&summary, &out_dir),
            output_dir: out_dir,
            outputs,
        },
        summary,
    })
}

/// Reads `summary.json` of a previous run.
pub fn read_summary(cfg: &Config) -> Result<Stage0Summary, PipelineError> {
    crate::read_json(&output_dir(cfg).join(SUMMARY_FILE))
}

/// Whether stage 0's outputs are complete, newer than every input, and made with the same settings.
pub fn freshness(cfg: &Config) -> Freshness {
    let out_dir = output_dir(cfg);
    if let Err(stale) = crate::previous_summary(
        &out_dir.join(SUMMARY_FILE),
        &fingerprint(cfg),
        |s: &Stage0Summary| &s.fingerprint,
    ) {
        return stale;
    }
    let mut outputs: Vec<PathBuf> = cfg.class_order.iter().map(|c| class_file(cfg, c)).collect();
    outputs.push(out_dir.join(SUMMARY_FILE));
    outputs.push(out_dir.join(pbip_config::RESOLVED_CONFIG_FILE));
    // Missing outputs first: the dataset need not load for that answer.
    if let Some(p) = outputs.iter().find(|p| mtime(p).is_none()) {
        return Freshness::Stale(format!("output {} is missing", p.display()));
    }
    let dataset = match Dataset::load(cfg) {
        Ok(d) => d,
        Err(e) => return Freshness::Stale(format!("dataset does not load: {e}")),
    };
    let mut inputs: Vec<PathBuf> = vec![cfg.paths.split_csv.clone(), cfg.paths.labels_csv.clone()];
    for s in dataset.split(Split::Train) {
        inputs.push(s.coordinates_path.clone());
        inputs.push(s.slide_path.clone());
    }
    crate::compare_mtimes(&outputs, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SlideEntry {
        SlideEntry {
            name: "s".into(),
            split: Split::Train,
            labels: vec![1, 0],
            slide_path: PathBuf::from("/d/s.svs"),
            coordinates_path: PathBuf::from("/d/s.npy"),
            gt_path: None,
        }
    }

    #[test]
    fn rows_are_filtered_and_converted() {
        let mut cfg = Config {
            patch_size: 100,
            ..Config::default()
        };
        let geom = SlideGeom {
            width: 1000,
            height: 500,
            downsamples: vec![1.0, 4.0],
        };
        let mut c =
            Coordinates::from_xy(vec![0, 950, 1000, -1, 10, 10], vec![0, 10, 10, 0, 499, 20]);
        c.tile_level = Some(vec![0, 0, 0, 0, 0, 1]);
        let mut stats = RowFilter::default();
        let r = slide_records(&cfg, &entry(), &c, &geom, &mut stats).unwrap();
        // x=1000 and x=-1 are outside; (950,10) and (10,499) overhang.
        assert_eq!(r.len(), 4);
        assert_eq!(stats.dropped, 2);
        assert_eq!(stats.overhanging, 2);
        assert_eq!(r[0].wsi_name, "s.svs");
        assert_eq!(
            (r[0].tile_level, r[0].tile_size_resized, r[0].tile_size_lv0),
            (0, 100, 100)
        );
        // Level 1 without tile_size_lv0: 100 px read at downsample 4 -> 400 level-0 px.
        assert_eq!((r[3].tile_level, r[3].tile_size_lv0), (1, 400));

        // Centre origin: shifted by half the level-0 footprint; (0,0) becomes outside.
        cfg.slide.coordinate_origin = CoordinateOrigin::Centre;
        let c = Coordinates::from_xy(vec![0, 60], vec![0, 70]);
        let mut stats = RowFilter::default();
        let r = slide_records(&cfg, &entry(), &c, &geom, &mut stats).unwrap();
        assert_eq!(stats.dropped, 1);
        assert_eq!((r[0].x, r[0].y), (10, 20));

        // Missing level is dropped.
        let mut c = Coordinates::from_xy(vec![0], vec![0]);
        c.tile_level = Some(vec![5]);
        let mut stats = RowFilter::default();
        assert!(
            slide_records(&cfg, &entry(), &c, &geom, &mut stats)
                .unwrap()
                .is_empty()
        );
        assert_eq!(stats.dropped, 1);
    }
}

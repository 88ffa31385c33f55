//! Stage 4: `pbip evaluate` — segmentation metrics against GT masks, under two protocols.
//!
//! For every slide of the chosen split (default `test`): deterministic patches (the first
//! `evaluation.patches_per_slide` coordinates, or `all`), an eval-mode forward, and the CAM
//! evaluation path (merge softmax-weighted → relu → per-channel min-max → gate → bilinear upsample
//! → fuse with `evaluation.fuse_weights` → argmax over the classes; optional TTA). The GT mask is
//! cropped exactly like the patch. Three maps are scored per patch, never mixed up:
//!
//! * `deployable` (headline): the class gate is the model's own image-level prediction,
//!   `sigmoid(mean-merged scale-4 logits) ≥ threshold`, with the threshold stored in the checkpoint
//!   (chosen on the val split during training; 0.5 when absent).
//! * `label_masked` (upstream's protocol, for comparison with the paper only): the gate is the GT
//!   image label of the slide. It leaks the label.
//! * `leak_reference`: what the label alone scores with no model: every pixel of a patch is the
//!   present class with the largest index in class_order (benign/tumour: a tumour slide is tumour
//!   everywhere). A model only adds something where it beats this.
//! * `best_constant_map`: the best map that needs neither a model nor the label: every pixel of
//!   every patch is one class (the class with the best mIoU is kept, e.g. "all tissue benign").
//!
//! Metric definitions (per class c, from the confusion matrix over all evaluated pixels, ignore
//! value 255 excluded): IoU = TP/(TP+FP+FN), Dice = F1 = 2TP/(2TP+FP+FN), precision = TP/(TP+FP),
//! recall = TP/(TP+FN). A class absent from both GT and prediction has undefined scores: it is
//! excluded from the means (reported as null), never counted as 1. `macro` = mean over defined
//! classes; `weighted` = weighted by GT pixel count; `patch_macro` = per-patch scores averaged over
//! patches; FwIoU = Σ_c freq_c · IoU_c (the paper's); pixel accuracy = trace / total.
//! Slide classification: the mean merged logit over a slide's patches → sigmoid → per-class AUC
//! and exact-match accuracy at the checkpoint threshold.
//!
//! Outputs in `<output_dir>` (default `<work_dir>/results/`): `metrics.json`,
//! `confusion_matrix.csv` (deployable; rows GT, columns predicted), `confusion_matrix_label_masked.csv`,
//! `per_slide.csv`, `prediction_samples/` (input, GT and prediction PNGs of the N best and worst
//! patches by deployable mIoU), `evaluation_report.txt`, `report.html` (self-contained).
//! A slide that fails (unreadable, wrong-size mask, labels out of range, no usable coordinates) is
//! recorded in per_slide.csv with the reason; the others are still evaluated and the command exits
//! non-zero.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use pbip_config::{Config, Dataset, SlideEntry, Split};
use pbip_data::{
    EvalPlan, Normalization, PatchBatch, PatchesPerSlide, Preprocess, SlideSet, SlideSetOptions,
    SlideSpec,
};
use pbip_metrics::{ConfusionMatrix, MetricsReport, PatchAggregator, roc_auc_multilabel};
use pbip_model::{ClassNet, EvalConfig, Pooling, background_rule};
use serde::Serialize;

use crate::artifacts::checkpoints;
use crate::cam_batches::{CamBatches, FusedMaps, threshold_argmax};
use crate::{PipelineError, RunOptions, StageInfo, StageReport};

const STAGE: &str = "evaluate";

/// Stage description.
pub const INFO: StageInfo = StageInfo {
    index: 4,
    command: STAGE,
    description: "metrics against GT masks, samples, HTML report",
    output_dir: OUTPUT_DIR,
};

/// Output folder under `work_dir` (unless `--output-dir`).
pub const OUTPUT_DIR: &str = "results";
/// The metrics file.
pub const METRICS_FILE: &str = "metrics.json";
/// The HTML report.
pub const REPORT_FILE: &str = "report.html";

/// Gate threshold of a checkpoint without one.
pub const DEFAULT_THRESHOLD: f64 = checkpoints::DEFAULT_GATE_THRESHOLD;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Checkpoint (`pbip train` safetensors).
    pub weights: PathBuf,
    /// Split to evaluate.
    pub split: Split,
    /// Output folder (default `<work_dir>/results`).
    pub output_dir: Option<PathBuf>,
}

/// What [`run`] produced.
#[derive(Debug, Clone)]
pub struct EvaluateOutcome {
    /// Generic report.
    pub report: StageReport,
    /// Slides that failed (recorded in per_slide.csv).
    pub failed_slides: Vec<(String, String)>,
    /// Deployable mIoU.
    pub deployable_miou: Option<f64>,
}

impl EvaluateOutcome {
    /// `None` when every slide was evaluated, else one message naming the failed slides, their
    /// errors and the per-slide table.
    pub fn failure_message(&self) -> Option<String> {
        (!self.failed_slides.is_empty()).then(|| {
            format!(
                "{} slide(s) failed (see {}): {}",
                self.failed_slides.len(),
                self.report.output_dir.join("per_slide.csv").display(),
                self.failed_slides
                    .iter()
                    .map(|(s, e)| format!("{s}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }
}

fn err(message: String) -> PipelineError {
    PipelineError::Data {
        stage: STAGE,
        message,
    }
}

fn model_err(e: impl std::fmt::Display) -> PipelineError {
    err(e.to_string())
}

/// Slide-set options of the config (patch size, reader, coordinate origin, GT masks).
pub fn slide_set_options(cfg: &Config) -> SlideSetOptions {
    let mut o = SlideSetOptions::new(cfg.patch_size, cfg.num_classes());
    o.open = crate::settings::open_options(cfg, true);
    o.origin = match cfg.slide.coordinate_origin {
        pbip_config::CoordinateOrigin::TopLeft => pbip_data::CoordinateOrigin::TopLeft,
        pbip_config::CoordinateOrigin::Centre => pbip_data::CoordinateOrigin::Centre,
    };
    o
}

/// The classifier-input normalisation of the config (`training.normalize`).
pub fn normalization(cfg: &Config) -> Result<Normalization, PipelineError> {
    let n = &cfg.training.normalize;
    let order = match n.channel_order {
        pbip_config::ChannelOrder::Rgb => pbip_data::ChannelOrder::Rgb,
        pbip_config::ChannelOrder::Bgr => pbip_data::ChannelOrder::Bgr,
    };
    Normalization::from_slices(&n.mean, &n.std, order).map_err(model_err)
}

/// Undo the normalisation of one CHW patch into RGB8 HWC (for sample images).
fn denormalize(chw: &[f32], h: usize, w: usize, norm: &Normalization) -> Vec<u8> {
    let plane = h * w;
    let mut rgb = vec![0u8; plane * 3];
    for p in 0..3 {
        let colour = match norm.channel_order {
            pbip_data::ChannelOrder::Rgb => p,
            pbip_data::ChannelOrder::Bgr => 2 - p,
        };
        for i in 0..plane {
            let v = (f64::from(chw[p * plane + i]) * norm.std[p] + norm.mean[p]) * 255.0;
            rgb[i * 3 + colour] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    rgb
}

#[derive(Debug, Clone, Serialize)]
struct SlideRow {
    slide: String,
    label: String,
    status: String,
    error: String,
    patches: usize,
    probs: Vec<f64>,
    predicted: String,
    deployable_miou: Option<f64>,
    deployable_pixel_accuracy: Option<f64>,
    label_masked_miou: Option<f64>,
    leak_reference_miou: Option<f64>,
}

struct Sample {
    miou: f64,
    slide: String,
    x: i64,
    y: i64,
    rgb: Vec<u8>,
    gt: Vec<u8>,
    pred: Vec<u8>,
}

/// Keeps the `n` best and `n` worst patches by mIoU.
struct SampleKeeper {
    n: usize,
    best: Vec<Sample>,
    worst: Vec<Sample>,
}

impl SampleKeeper {
    fn offer(&mut self, make: impl Fn() -> Sample, miou: f64) {
        if self.n == 0 {
            return;
        }
        let worth_best = self.best.len() < self.n || self.best.iter().any(|s| s.miou < miou);
        let worth_worst = self.worst.len() < self.n || self.worst.iter().any(|s| s.miou > miou);
        if worth_best {
            self.best.push(make());
            self.best.sort_by(|a, b| b.miou.total_cmp(&a.miou));
            self.best.truncate(self.n);
        }
        if worth_worst {
            self.worst.push(make());
            self.worst.sort_by(|a, b| a.miou.total_cmp(&b.miou));
            self.worst.truncate(self.n);
        }
    }
}

/// The scores of one map: its confusion matrix and its per-patch scores.
struct Protocol {
    cm: ConfusionMatrix,
    patches: PatchAggregator,
}

impl Protocol {
    fn new(n: usize) -> Result<Self, PipelineError> {
        Ok(Protocol {
            cm: ConfusionMatrix::with_ignore(n, Some(255)).map_err(model_err)?,
            patches: PatchAggregator::with_ignore(n, Some(255)).map_err(model_err)?,
        })
    }
    fn add(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), PipelineError> {
        self.cm.accumulate(gt, pred).map_err(model_err)?;
        self.patches.add_patch(gt, pred).map_err(model_err)
    }
    fn merge(&mut self, part: &Protocol) -> Result<(), PipelineError> {
        self.cm.merge(&part.cm).map_err(model_err)?;
        self.patches.merge(&part.patches).map_err(model_err)
    }
    fn report(&self, names: &[&str]) -> Result<MetricsReport, PipelineError> {
        MetricsReport::from_patches(&self.patches, names).map_err(model_err)
    }
}

/// The maps scored per patch (of a slide, or of the whole split).
struct Protocols {
    /// Deployable: gated by the model's own image-level prediction.
    dep: Protocol,
    /// Label-masked: gated by the GT image label.
    lab: Protocol,
    /// Leak reference: every pixel = the present class with the largest index.
    leak: Protocol,
    /// One "every pixel = class c" map per class; the best is reported.
    constant: Vec<Protocol>,
}

impl Protocols {
    fn new(n: usize) -> Result<Self, PipelineError> {
        Ok(Protocols {
            dep: Protocol::new(n)?,
            lab: Protocol::new(n)?,
            leak: Protocol::new(n)?,
            constant: (0..n).map(|_| Protocol::new(n)).collect::<Result<_, _>>()?,
        })
    }

    /// Adds the scores of `part` (a slide's) to these.
    fn merge(&mut self, part: &Protocols) -> Result<(), PipelineError> {
        self.dep.merge(&part.dep)?;
        self.lab.merge(&part.lab)?;
        self.leak.merge(&part.leak)?;
        for (total, part) in self.constant.iter_mut().zip(&part.constant) {
            total.merge(part)?;
        }
        Ok(())
    }
}

/// The model and settings of an evaluation.
struct Evaluator<'a> {
    cfg: &'a Config,
    /// Class names in class order.
    names: Vec<&'a str>,
    model: ClassNet,
    device: Device,
    /// Deployable gate threshold (from the checkpoint).
    threshold: f64,
    eval_cfg: EvalConfig,
    slide_pool: Pooling,
    norm: Normalization,
    per_slide: PatchesPerSlide,
    set_opts: SlideSetOptions,
    /// Patches per forward pass (`inference.batch_size`, `auto` resolved once).
    batch_size: usize,
}

impl<'a> Evaluator<'a> {
    fn new(cfg: &'a Config, weights: &Path) -> Result<Self, PipelineError> {
        let names: Vec<&str> = cfg.class_order.iter().map(String::as_str).collect();
        let device = crate::settings::compute_device(cfg)?;
        let checkpoints::Checkpoint {
            model,
            gate_threshold: threshold,
            ..
        } = checkpoints::load(cfg, weights, &device, "evaluate")?;
        let e = &cfg.evaluation;
        let mut eval_cfg = crate::settings::eval_config(cfg, e.use_tta)?;
        eval_cfg.background_score = threshold;
        let batch_size = crate::settings::inference_batch_size(
            cfg.inference.batch_size,
            cfg.device,
            &model,
            &eval_cfg,
            &device,
            cfg.patch_size as usize,
        )?;
        Ok(Evaluator {
            cfg,
            names,
            model,
            device,
            threshold,
            eval_cfg,
            slide_pool: crate::settings::slide_pooling(cfg),
            norm: normalization(cfg)?,
            per_slide: crate::settings::patches_per_slide(e.patches_per_slide),
            set_opts: slide_set_options(cfg),
            batch_size,
        })
    }

    /// Evaluates the patches of one slide (the samples are offered to `keeper` as they come).
    fn slide(
        &self,
        entry: &SlideEntry,
        keeper: &mut SampleKeeper,
    ) -> Result<SlideEval, PipelineError> {
        let n = self.names.len();
        let spec = SlideSpec {
            name: entry.name.clone(),
            slide_path: entry.slide_path.clone(),
            coordinates_path: entry.coordinates_path.clone(),
            labels: entry.labels.clone(),
            gt_path: entry.gt_path.clone(),
        };
        let mut scorer = SlideScorer {
            ev: self,
            label_gate: entry
                .labels
                .iter()
                .map(|&v| if v != 0 { 1.0 } else { 0.0 })
                .collect(),
            leak_class: entry.class_indices().last().copied().unwrap_or(0) as u8,
            protocols: Protocols::new(n)?,
        };
        let set = Arc::new(SlideSet::open(&[spec], &self.set_opts).map_err(model_err)?);
        let plan = EvalPlan::new(
            set,
            self.per_slide,
            self.batch_size,
            Preprocess::MeanStd(self.norm),
            entry.gt_path.is_some(),
        )
        .map_err(model_err)?;
        let mut patch_logits: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut count = 0usize;
        for cb in CamBatches::new(&self.model, &plan, self.device.clone()) {
            let cb = cb.map_err(model_err)?;
            let b = cb.batch.shape()[0];
            for patch in cb.logits.chunks(n.max(1)).take(b) {
                for (class_logits, &z) in patch_logits.iter_mut().zip(patch) {
                    class_logits.push(f64::from(z));
                }
            }
            count += b;
            let Some(masks) = cb.batch.masks.as_ref() else {
                continue;
            };
            let fused = cb
                .maps
                .fuse(&self.model, &self.eval_cfg)
                .map_err(model_err)?;
            let fused =
                fused.ok_or_else(|| err("every evaluation.fuse_weights entry is 0".into()))?;
            scorer.add_batch(&cb.batch, masks, &cb.probs, &fused, keeper)?;
        }
        let slide_logits: Vec<f64> = patch_logits
            .iter()
            .map(|v| pbip_model::pool_values(v, self.slide_pool).unwrap_or(0.0))
            .collect();
        Ok(SlideEval {
            patches: count,
            slide_logits,
            protocols: scorer.protocols,
        })
    }
}

/// One slide's evaluation.
struct SlideEval {
    /// Patches evaluated.
    patches: usize,
    /// The patch logits pooled per class.
    slide_logits: Vec<f64>,
    /// The slide's scores.
    protocols: Protocols,
}

/// Scores the patches of one slide under every protocol.
struct SlideScorer<'e> {
    ev: &'e Evaluator<'e>,
    /// The slide's GT image label as a class gate.
    label_gate: Vec<f32>,
    /// The leak reference's class.
    leak_class: u8,
    protocols: Protocols,
}

impl SlideScorer<'_> {
    /// Scores the patches of a batch with GT `masks` (`[B, plane]`).
    fn add_batch(
        &mut self,
        batch: &PatchBatch,
        masks: &[u8],
        probs: &[f32],
        fused: &FusedMaps,
        keeper: &mut SampleKeeper,
    ) -> Result<(), PipelineError> {
        let ev = self.ev;
        let n = ev.names.len();
        let [b, _, h, w] = batch.shape();
        let plane = h * w;
        let mut pred_dep = vec![0u8; plane];
        let mut pred_lab = vec![0u8; plane];
        let pred_leak = vec![self.leak_class; plane];
        let pred_const: Vec<Vec<u8>> = (0..n).map(|c| vec![c as u8; plane]).collect();
        let p = &mut self.protocols;
        for i in 0..b {
            let gt = &masks[i * plane..(i + 1) * plane];
            let f = fused.patch(i);
            threshold_argmax(
                f,
                &probs[i * n..(i + 1) * n],
                ev.threshold,
                &ev.eval_cfg,
                &mut pred_dep,
            );
            let bg = background_rule(&ev.eval_cfg);
            pbip_model::gated_argmax(f, &self.label_gate, n, plane, bg, &mut pred_lab);
            p.dep.add(gt, &pred_dep)?;
            p.lab.add(gt, &pred_lab)?;
            p.leak.add(gt, &pred_leak)?;
            for (pc, pred) in p.constant.iter_mut().zip(&pred_const) {
                pc.add(gt, pred)?;
            }
            let mut pm = ConfusionMatrix::with_ignore(n, Some(255)).map_err(model_err)?;
            pm.accumulate(gt, &pred_dep).map_err(model_err)?;
            if let Some(miou) = pm.summary().miou {
                let info = &batch.info[i];
                keeper.offer(
                    || Sample {
                        miou,
                        slide: info.slide_name.clone(),
                        x: info.x_lv0,
                        y: info.y_lv0,
                        rgb: denormalize(batch.image(i), h, w, &ev.norm),
                        gt: gt.to_vec(),
                        pred: pred_dep.clone(),
                    },
                    miou,
                );
            }
        }
        Ok(())
    }
}

/// What the evaluation accumulates over the slides of the split.
struct Totals {
    protocols: Protocols,
    keeper: SampleKeeper,
    rows: Vec<SlideRow>,
    /// (slide, error) of the slides that failed.
    failed: Vec<(String, String)>,
    /// Slide probabilities and labels (background class left out) for the slide AUC.
    auc_scores: Vec<f64>,
    auc_truth: Vec<bool>,
    /// Slides whose predicted label set is exactly right, of those counted.
    cls_correct: usize,
    cls_counted: usize,
    total_patches: usize,
}

impl Totals {
    fn new(n: usize, num_samples: usize) -> Result<Self, PipelineError> {
        Ok(Totals {
            protocols: Protocols::new(n)?,
            keeper: SampleKeeper {
                n: num_samples,
                best: Vec::new(),
                worst: Vec::new(),
            },
            rows: Vec::new(),
            failed: Vec::new(),
            auc_scores: Vec::new(),
            auc_truth: Vec::new(),
            cls_correct: 0,
            cls_counted: 0,
            total_patches: 0,
        })
    }

    /// Records a slide's evaluation (or its failure) in its per_slide.csv row and the totals.
    fn add_slide(
        &mut self,
        ev: &Evaluator,
        entry: &SlideEntry,
        result: Result<SlideEval, PipelineError>,
    ) -> Result<(), PipelineError> {
        let label_names: Vec<&str> = entry.class_indices().iter().map(|&c| ev.names[c]).collect();
        let mut row = SlideRow {
            slide: entry.name.clone(),
            label: label_names.join(" "),
            status: "ok".into(),
            error: String::new(),
            patches: 0,
            probs: vec![],
            predicted: String::new(),
            deployable_miou: None,
            deployable_pixel_accuracy: None,
            label_masked_miou: None,
            leak_reference_miou: None,
        };
        match result {
            Ok(slide) => {
                row.patches = slide.patches;
                self.total_patches += slide.patches;
                if slide.patches > 0 {
                    self.classify(ev, entry, &slide.slide_logits, &mut row);
                }
                let p = &slide.protocols;
                let ds = p.dep.cm.summary();
                row.deployable_miou = ds.miou;
                row.deployable_pixel_accuracy = ds.pixel_accuracy;
                row.label_masked_miou = p.lab.cm.summary().miou;
                row.leak_reference_miou = p.leak.cm.summary().miou;
                self.protocols.merge(p)?;
            }
            Err(e) => {
                tracing::error!(slide = %entry.name, "evaluation failed: {e}");
                row.status = "failed".into();
                row.error = e.to_string();
                self.failed.push((entry.name.clone(), e.to_string()));
            }
        }
        self.rows.push(row);
        Ok(())
    }

    /// Slide classification from the pooled logits: AUC inputs, exact-match count and the
    /// row's probabilities and predicted classes.
    fn classify(
        &mut self,
        ev: &Evaluator,
        entry: &SlideEntry,
        slide_logits: &[f64],
        row: &mut SlideRow,
    ) {
        let n = ev.names.len();
        let background = ev.cfg.background_index();
        let probs: Vec<f64> = slide_logits
            .iter()
            .map(|z| 1.0 / (1.0 + (-z).exp()))
            .collect();
        let mut ok = true;
        for (cl, &p) in probs.iter().enumerate().take(n) {
            if Some(cl) == background {
                // Present on every slide: nothing to rank or gate.
                continue;
            }
            let pos = entry.labels.get(cl).copied().unwrap_or(0) != 0;
            self.auc_scores.push(p);
            self.auc_truth.push(pos);
            ok &= (p >= ev.threshold) == pos;
        }
        self.cls_counted += 1;
        self.cls_correct += usize::from(ok);
        row.predicted = (0..n)
            .filter(|&c| probs[c] >= ev.threshold || Some(c) == background)
            .map(|c| ev.names[c])
            .collect::<Vec<_>>()
            .join(" ");
        row.probs = probs;
    }

    /// Exact-match slide accuracy, if any slide was classified.
    fn accuracy(&self) -> Option<f64> {
        (self.cls_counted > 0).then(|| self.cls_correct as f64 / self.cls_counted as f64)
    }
}

/// Runs stage 4.
pub fn run(
    cfg: &Config,
    eo: &EvaluateOptions,
    opts: &RunOptions,
) -> Result<EvaluateOutcome, PipelineError> {
    let t0 = std::time::Instant::now();
    let ev = Evaluator::new(cfg, &eo.weights)?;
    let dataset = Dataset::load(cfg)?;
    let slides = dataset.split(eo.split);
    if slides.is_empty() {
        return Err(err(format!(
            "the {} split of {} is empty",
            eo.split.as_str(),
            cfg.paths.split_csv.display()
        )));
    }
    let mut totals = Totals::new(ev.names.len(), cfg.evaluation.num_samples)?;
    let bar = crate::progress::progress_bar(
        opts.progress,
        slides.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} slides {msg} ETA {eta}",
        "stage 4: evaluating",
    );
    for entry in slides {
        bar.set_message(entry.name.clone());
        let result = ev.slide(entry, &mut totals.keeper);
        totals.add_slide(&ev, entry, result)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let out_dir = eo
        .output_dir
        .clone()
        .unwrap_or_else(|| cfg.paths.work_dir.join(OUTPUT_DIR));
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let results = Results::new(cfg, eo, ev.names, ev.threshold, totals, out_dir)?;
    results.write(t0)
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + use<> {
    let p = p.to_path_buf();
    move |source| PipelineError::Io { path: p, source }
}

/// The metrics reports of the protocols.
struct Reports {
    dep: MetricsReport,
    lab: MetricsReport,
    leak: MetricsReport,
    /// The best constant map's report, its class and the note explaining it.
    constant: MetricsReport,
    const_class: usize,
    const_note: String,
}

impl Reports {
    fn new(p: &Protocols, names: &[&str]) -> Result<Self, PipelineError> {
        let dep = p.dep.report(names)?;
        let lab = p.lab.report(names)?;
        let leak = p.leak.report(names)?;
        // The best constant map by mIoU (first class on ties).
        let mut best_const: Option<(usize, f64)> = None;
        for (c, p) in p.constant.iter().enumerate() {
            if let Some(m) = p.cm.summary().miou
                && best_const.is_none_or(|(_, b)| m > b)
            {
                best_const = Some((c, m));
            }
        }
        let const_class = best_const.map_or(0, |(c, _)| c);
        let constant = match p.constant.get(const_class) {
            Some(p) => p.report(names)?,
            None => leak.clone(),
        };
        let const_note = format!(
            "no model, no label: every pixel = {} (the class whose constant map scores best); a model that does not beat this has learned nothing",
            names.get(const_class).copied().unwrap_or("?")
        );
        Ok(Reports {
            dep,
            lab,
            leak,
            constant,
            const_class,
            const_note,
        })
    }
}

/// The accumulated evaluation, written to the output folder.
struct Results<'a> {
    cfg: &'a Config,
    eo: &'a EvaluateOptions,
    names: Vec<&'a str>,
    threshold: f64,
    totals: Totals,
    reports: Reports,
    out_dir: PathBuf,
}

impl<'a> Results<'a> {
    fn new(
        cfg: &'a Config,
        eo: &'a EvaluateOptions,
        names: Vec<&'a str>,
        threshold: f64,
        totals: Totals,
        out_dir: PathBuf,
    ) -> Result<Self, PipelineError> {
        Ok(Results {
            reports: Reports::new(&totals.protocols, &names)?,
            cfg,
            eo,
            names,
            threshold,
            totals,
            out_dir,
        })
    }

    fn const_name(&self) -> &str {
        self.names
            .get(self.reports.const_class)
            .copied()
            .unwrap_or("?")
    }

    /// Writes every output and returns the outcome.
    fn write(self, t0: std::time::Instant) -> Result<EvaluateOutcome, PipelineError> {
        let metrics_path = self.write_metrics()?;
        let cm_path = self.out_dir.join("confusion_matrix.csv");
        let (dep, lab) = (&self.totals.protocols.dep, &self.totals.protocols.lab);
        dep.cm.write_csv(&cm_path, &self.names).map_err(model_err)?;
        lab.cm
            .write_csv(
                &self.out_dir.join("confusion_matrix_label_masked.csv"),
                &self.names,
            )
            .map_err(model_err)?;
        crate::write_atomic(
            &self.out_dir.join("per_slide.csv"),
            self.per_slide_csv().as_bytes(),
        )?;
        let triplets = self.write_samples()?;
        crate::write_atomic(
            &self.out_dir.join("evaluation_report.txt"),
            self.text_report().as_bytes(),
        )?;
        let html_path = self.write_html(triplets)?;
        let cfg_path = self.cfg.write_resolved(&self.out_dir)?;

        let r = &self.reports;
        let summary = vec![
            format!(
                "deployable mIoU {} (best constant map {}: {}; label-masked {}, leak reference {}) over {} patches of {} slides",
                pct(r.dep.miou),
                self.const_name(),
                pct(r.constant.miou),
                pct(r.lab.miou),
                pct(r.leak.miou),
                self.totals.total_patches,
                self.totals.rows.len()
            ),
            format!("metrics: {}", metrics_path.display()),
            format!("report:  {}", html_path.display()),
            format!("{:.1} s", t0.elapsed().as_secs_f64()),
        ];
        let out_dir = self.out_dir;
        Ok(EvaluateOutcome {
            report: StageReport {
                stage: INFO,
                output_dir: out_dir.clone(),
                outputs: vec![
                    metrics_path,
                    cm_path,
                    out_dir.join("per_slide.csv"),
                    html_path,
                    cfg_path,
                ],
                summary,
            },
            failed_slides: self.totals.failed,
            deployable_miou: self.reports.dep.miou,
        })
    }

    /// `metrics.json`.
    fn write_metrics(&self) -> Result<PathBuf, PipelineError> {
        let (cfg, eo, names, totals, r) =
            (self.cfg, self.eo, &self.names, &self.totals, &self.reports);
        let n = names.len();
        let auc = if totals.auc_scores.is_empty() {
            None
        } else {
            roc_auc_multilabel(
                &totals.auc_scores,
                &totals.auc_truth,
                n - usize::from(cfg.background_index().is_some()),
            )
            .ok()
            .map(|a| serde_json::to_value(a).unwrap_or_default())
        };
        let slide_classification = serde_json::json!({
            "slides": totals.cls_counted,
            "exact_match_accuracy": totals.accuracy(),
            "threshold": self.threshold,
            "auc": auc,
        });
        let section = |r: &MetricsReport,
                       sc: serde_json::Value,
                       note: &str|
         -> Result<serde_json::Value, PipelineError> {
            let mut v = serde_json::to_value(r).map_err(|e| err(e.to_string()))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("slide_classification".into(), sc);
                o.insert("note".into(), serde_json::Value::String(note.into()));
            }
            Ok(v)
        };
        let mut const_section = section(&r.constant, serde_json::Value::Null, &r.const_note)?;
        if let Some(o) = const_section.as_object_mut() {
            o.insert(
                "class".into(),
                serde_json::Value::String(self.const_name().to_string()),
            );
        }
        let metrics = serde_json::json!({
            "split": eo.split.as_str(),
            "checkpoint": eo.weights,
            "evaluation": cfg.evaluation,
            "gate_threshold": self.threshold,
            "precision": cfg.inference.precision,
            "patches": totals.total_patches,
            "slides": totals.rows.len(),
            "failed_slides": totals.failed.len(),
            "deployable": section(&r.dep, slide_classification.clone(), "headline: CAMs gated by the model's own image-level prediction")?,
            "label_masked": section(&r.lab, slide_classification, "upstream protocol: CAMs gated by the GT image label (leaks the label); for comparison with the paper only")?,
            "leak_reference": section(&r.leak, serde_json::Value::Null, "no model: every pixel = the present class with the largest index; a model adds something only where it beats this")?,
            "best_constant_map": const_section,
        });
        let metrics_path = self.out_dir.join(METRICS_FILE);
        let text = serde_json::to_string_pretty(&metrics).map_err(|e| err(e.to_string()))?;
        crate::write_atomic(&metrics_path, text.as_bytes())?;
        Ok(metrics_path)
    }

    /// `per_slide.csv`.
    fn per_slide_csv(&self) -> String {
        let names = &self.names;
        let mut csv = String::from("slide,label,status,patches");
        for c in names {
            let _ = write!(csv, ",prob_{c}");
        }
        csv.push_str(",predicted,deployable_miou,deployable_pixel_accuracy,label_masked_miou,leak_reference_miou,error\n");
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
        for r in &self.totals.rows {
            let _ = write!(
                csv,
                "{},{},{},{}",
                csv_cell(&r.slide),
                csv_cell(&r.label),
                r.status,
                r.patches
            );
            for c in 0..names.len() {
                let _ = write!(csv, ",{}", f(r.probs.get(c).copied()));
            }
            let _ = writeln!(
                csv,
                ",{},{},{},{},{},{}",
                csv_cell(&r.predicted),
                f(r.deployable_miou),
                f(r.deployable_pixel_accuracy),
                f(r.label_masked_miou),
                f(r.leak_reference_miou),
                csv_cell(&r.error)
            );
        }
        csv
    }

    /// `prediction_samples/`: input, GT and prediction PNGs of the best and worst patches.
    fn write_samples(&self) -> Result<Vec<pbip_report::SampleTriplet>, PipelineError> {
        let sample_dir = self.out_dir.join("prediction_samples");
        std::fs::create_dir_all(&sample_dir).map_err(io_err(&sample_dir))?;
        let colors = pbip_report::default_class_colors(self.names.len());
        let ignore_color = [255, 255, 255];
        let side = self.cfg.patch_size;
        let keeper = &self.totals.keeper;
        let mut triplets = Vec::new();
        for (kind, list) in [("best", &keeper.best), ("worst", &keeper.worst)] {
            for (i, s) in list.iter().enumerate() {
                let input =
                    pbip_report::PngImage::from_rgb8(side, side, &s.rgb).map_err(model_err)?;
                let gt =
                    pbip_report::PngImage::from_labels(side, side, &s.gt, &colors, ignore_color)
                        .map_err(model_err)?;
                let pred =
                    pbip_report::PngImage::from_labels(side, side, &s.pred, &colors, ignore_color)
                        .map_err(model_err)?;
                let stem = format!("{kind}_{i:02}_{}_{}_{}", s.slide, s.x, s.y);
                for (suffix, img) in [("input", &input), ("gt", &gt), ("pred", &pred)] {
                    let p = sample_dir.join(format!("{stem}_{suffix}.png"));
                    std::fs::write(&p, &img.png).map_err(io_err(&p))?;
                }
                triplets.push(pbip_report::SampleTriplet {
                    title: format!("{kind} #{}: {}", i + 1, s.slide),
                    iou: Some(s.miou),
                    details: vec![("x, y (level 0)".into(), format!("{}, {}", s.x, s.y))],
                    input,
                    gt,
                    pred,
                });
            }
        }
        Ok(triplets)
    }

    /// `evaluation_report.txt`.
    fn text_report(&self) -> String {
        let (eo, names, totals, r) = (self.eo, &self.names, &self.totals, &self.reports);
        let mut txt = String::new();
        let _ = writeln!(txt, "PBIP evaluation ({} split)", eo.split.as_str());
        let _ = writeln!(txt, "checkpoint: {}", eo.weights.display());
        let _ = writeln!(
            txt,
            "slides: {} ({} failed), patches: {}",
            totals.rows.len(),
            totals.failed.len(),
            totals.total_patches
        );
        let _ = writeln!(txt, "gate threshold (deployable): {}", self.threshold);
        for (name, r) in [
            ("deployable", &r.dep),
            ("label_masked (upstream, leaks the label)", &r.lab),
            ("leak_reference (no model)", &r.leak),
            ("best_constant_map (no model, no label)", &r.constant),
        ] {
            let _ = writeln!(txt, "\n[{name}]");
            let _ = writeln!(
                txt,
                "  mIoU {}  FwIoU {}  pixel accuracy {}",
                pct(r.miou),
                pct(r.fwiou),
                pct(r.pixel_accuracy)
            );
            for (c, cname) in names.iter().enumerate() {
                let s = &r.per_class.0[c].1;
                let _ = writeln!(
                    txt,
                    "  {cname:<12} IoU {:>8}  Dice {:>8}  precision {:>8}  recall {:>8}",
                    pct(s.iou),
                    pct(s.dice),
                    pct(s.precision),
                    pct(s.recall)
                );
            }
        }
        let _ = writeln!(
            txt,
            "\nslide classification: exact-match accuracy {} over {} slides",
            if totals.cls_counted > 0 {
                format!(
                    "{:.2}%",
                    100.0 * totals.cls_correct as f64 / totals.cls_counted as f64
                )
            } else {
                "n/a".into()
            },
            totals.cls_counted
        );
        for (s, e) in &totals.failed {
            let _ = writeln!(txt, "FAILED {s}: {e}");
        }
        txt
    }

    /// `report.html`.
    fn write_html(
        &self,
        triplets: Vec<pbip_report::SampleTriplet>,
    ) -> Result<PathBuf, PipelineError> {
        let (cfg, eo, totals, r) = (self.cfg, self.eo, &self.totals, &self.reports);
        let section = |name: &str, note: &str, m: &MetricsReport| pbip_report::MetricsSection {
            name: name.into(),
            note: Some(note.into()),
            body: pbip_report::SectionBody::Metrics(Box::new(m.clone())),
        };
        let mut report = pbip_report::Report::new("PBIP evaluation");
        report.info = vec![
            ("split".into(), eo.split.as_str().into()),
            ("checkpoint".into(), eo.weights.display().to_string()),
            (
                "slides".into(),
                format!("{} ({} failed)", totals.rows.len(), totals.failed.len()),
            ),
            ("patches".into(), totals.total_patches.to_string()),
            ("gate threshold".into(), self.threshold.to_string()),
            ("date".into(), pbip_report::utc_now()),
        ];
        report.sections = vec![
            section(
                "Deployable (headline)",
                "Class gate = the model's own image-level prediction.",
                &r.dep,
            ),
            section(
                "Label-masked (upstream protocol)",
                "CAMs gated by the GT image label: leaks the label; for comparison with the paper only.",
                &r.lab,
            ),
            section(
                "Leak reference (no model)",
                "Every pixel = the present class of the slide label. A model only helps where it beats this.",
                &r.leak,
            ),
            section(
                "Best constant map (no model, no label)",
                &r.const_note,
                &r.constant,
            ),
        ];
        report.confusion = Some((totals.protocols.dep.cm.clone(), cfg.class_order.clone()));
        let colors = pbip_report::default_class_colors(self.names.len());
        report.legend = cfg
            .class_order
            .iter()
            .cloned()
            .zip(colors.iter().copied())
            .collect();
        report.samples = triplets;
        let html_path = self.out_dir.join(REPORT_FILE);
        report.write(&html_path).map_err(model_err)?;
        Ok(html_path)
    }
}

/// A fraction as a percentage with two decimals, or `n/a`.
fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |x| format!("{:.2}%", 100.0 * x))
}

/// The checkpoint `pbip run` evaluates: `<work_dir>/checkpoints/best.safetensors`.
pub fn default_weights(cfg: &Config) -> PathBuf {
    checkpoints::best_path(cfg)
}

/// Stage 4 as `pbip run` runs it: the best checkpoint on the test split, into `<work_dir>/results`.
/// Slides that fail make the stage fail (after every output is written).
pub fn run_default(cfg: &Config, opts: &RunOptions) -> Result<StageReport, PipelineError> {
    let eo = EvaluateOptions {
        weights: default_weights(cfg),
        split: Split::Test,
        output_dir: None,
    };
    let outcome = run(cfg, &eo, opts)?;
    if let Some(message) = outcome.failure_message() {
        return Err(err(message));
    }
    Ok(outcome.report)
}

/// Up to date when `results/metrics.json` exists, is newer than the best checkpoint and the
/// evaluation settings, and was made from that checkpoint.
pub fn freshness(cfg: &Config) -> crate::Freshness {
    let out = cfg.paths.work_dir.join(OUTPUT_DIR);
    let metrics = out.join(METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&metrics) else {
        return crate::Freshness::Stale("no previous metrics.json".into());
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return crate::Freshness::Stale("unreadable metrics.json".into());
    };
    if v.get("evaluation") != serde_json::to_value(&cfg.evaluation).ok().as_ref() {
        return crate::Freshness::Stale("evaluation settings changed".into());
    }
    crate::compare_mtimes(
        &[metrics, out.join(REPORT_FILE)],
        &[default_weights(cfg), cfg.paths.split_csv.clone()],
    )
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"").replace('\n', " "))
    } else {
        s.to_string()
    }
}

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

use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use pbip_config::{Config, Dataset, Split};
use pbip_data::{EvalPlan, Normalization, Preprocess, SlideSet, SlideSetOptions, SlideSpec};
use pbip_metrics::{ConfusionMatrix, MetricsReport, PatchAggregator, roc_auc_multilabel};
use pbip_model::{Gate, MergeMethod, background_rule, class_maps, evaluate};
use serde::Serialize;

use crate::artifacts::checkpoints;
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
    fn report(&self, names: &[&str]) -> Result<MetricsReport, PipelineError> {
        MetricsReport::from_patches(&self.patches, names).map_err(model_err)
    }
}

/// Runs stage 4.
pub fn run(
    cfg: &Config,
    eo: &EvaluateOptions,
    opts: &RunOptions,
) -> Result<EvaluateOutcome, PipelineError> {
    let t0 = std::time::Instant::now();
    let n = cfg.num_classes();
    let names: Vec<&str> = cfg.class_order.iter().map(String::as_str).collect();
    let device = crate::settings::compute_device(cfg)?;
    let checkpoints::Checkpoint {
        model,
        gate_threshold: threshold,
        ..
    } = checkpoints::load(cfg, &eo.weights, &device, "evaluate")?;
    let e = &cfg.evaluation;
    let mut eval_cfg = crate::settings::eval_config(cfg, e.use_tta)?;
    eval_cfg.background_score = threshold;
    let slide_pool = crate::settings::slide_pooling(cfg);
    let norm = normalization(cfg)?;
    let per_slide = crate::settings::patches_per_slide(e.patches_per_slide);

    let dataset = Dataset::load(cfg)?;
    let slides = dataset.split(eo.split);
    if slides.is_empty() {
        return Err(err(format!(
            "the {} split of {} is empty",
            eo.split.as_str(),
            cfg.paths.split_csv.display()
        )));
    }
    let set_opts = slide_set_options(cfg);

    let mut dep = Protocol::new(n)?;
    let mut lab = Protocol::new(n)?;
    let mut leak = Protocol::new(n)?;
    // One "every pixel = class c" map per class; the best is reported.
    let mut constant: Vec<Protocol> = (0..n).map(|_| Protocol::new(n)).collect::<Result<_, _>>()?;
    let mut keeper = SampleKeeper {
        n: e.num_samples,
        best: Vec::new(),
        worst: Vec::new(),
    };
    let mut rows: Vec<SlideRow> = Vec::new();
    let mut failed = Vec::new();
    let (mut auc_scores, mut auc_truth) = (Vec::new(), Vec::new());
    let (mut cls_correct, mut cls_counted) = (0usize, 0usize);
    let mut total_patches = 0usize;

    let bar = if opts.progress {
        ProgressBar::new(slides.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} slides {msg} ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("stage 4: evaluating");
    for entry in slides {
        bar.set_message(entry.name.clone());
        let label_names: Vec<&str> = entry.class_indices().iter().map(|&c| names[c]).collect();
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
        let spec = SlideSpec {
            name: entry.name.clone(),
            slide_path: entry.slide_path.clone(),
            coordinates_path: entry.coordinates_path.clone(),
            labels: entry.labels.clone(),
            gt_path: entry.gt_path.clone(),
        };
        let slide_dep = std::cell::RefCell::new(Protocol::new(n)?);
        let slide_lab = std::cell::RefCell::new(Protocol::new(n)?);
        let slide_leak = std::cell::RefCell::new(Protocol::new(n)?);
        let slide_const = std::cell::RefCell::new(
            (0..n)
                .map(|_| Protocol::new(n))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let result = (|| -> Result<(usize, Vec<f64>), PipelineError> {
            let set = Arc::new(SlideSet::open(&[spec], &set_opts).map_err(model_err)?);
            let has_gt = entry.gt_path.is_some();
            let plan = EvalPlan::new(
                set,
                per_slide,
                cfg.inference.batch_size.max(1),
                Preprocess::MeanStd(norm),
                has_gt,
            )
            .map_err(model_err)?;
            let mut patch_logits: Vec<Vec<f64>> = vec![Vec::new(); n];
            let mut count = 0usize;
            let label_gate: Vec<f32> = entry
                .labels
                .iter()
                .map(|&v| if v != 0 { 1.0 } else { 0.0 })
                .collect();
            let leak_class = entry.class_indices().last().copied().unwrap_or(0) as u8;
            for k in 0..plan.num_batches() {
                let Some(batch) = plan.batch(k) else { break };
                let batch = batch.map_err(model_err)?;
                let [b, c, h, w] = batch.shape();
                let images: Tensor<4> =
                    Tensor::from_data(TensorData::new(batch.data.clone(), [b, c, h, w]), &device);
                let out = model
                    .try_forward(images.clone(), false)
                    .map_err(model_err)?;
                let merged = pbip_model::merge_subclasses(
                    out.cls[3].clone(),
                    &model.k_list,
                    MergeMethod::Mean,
                )
                .map_err(model_err)?;
                let logits = pbip_model::util::to_vec(merged.clone()).map_err(model_err)?;
                let probs = pbip_model::util::to_vec(sigmoid(merged)).map_err(model_err)?;
                for i in 0..b {
                    for cl in 0..n {
                        patch_logits[cl].push(f64::from(logits[i * n + cl]));
                    }
                }
                count += b;
                let Some(masks) = batch.masks.as_ref() else {
                    continue;
                };
                let fused_t = if eval_cfg.tta {
                    evaluate(&model, images, &Gate::None, &eval_cfg)
                        .map_err(model_err)?
                        .fused
                } else {
                    let mut acc: Option<Tensor<4>> = None;
                    for (i, cam) in out.cam.into_iter().enumerate() {
                        if eval_cfg.fuse[i] == 0.0 {
                            continue;
                        }
                        let m = class_maps(cam, &model.k_list, None, h, w, &eval_cfg)
                            .map_err(model_err)?
                            * eval_cfg.fuse[i];
                        acc = Some(match acc {
                            None => m,
                            Some(a) => a + m,
                        });
                    }
                    acc.ok_or_else(|| err("every evaluation.fuse_weights entry is 0".into()))?
                };
                let fused = pbip_model::util::to_vec(fused_t).map_err(model_err)?;
                let plane = h * w;
                let mut pred_dep = vec![0u8; plane];
                let mut pred_lab = vec![0u8; plane];
                let pred_leak = vec![leak_class; plane];
                let pred_const: Vec<Vec<u8>> = (0..n).map(|c| vec![c as u8; plane]).collect();
                for i in 0..b {
                    let gt = &masks[i * plane..(i + 1) * plane];
                    let f = &fused[i * n * plane..(i + 1) * n * plane];
                    let g: Vec<f32> = probs[i * n..(i + 1) * n]
                        .iter()
                        .map(|&p| if f64::from(p) >= threshold { 1.0 } else { 0.0 })
                        .collect();
                    let bg = background_rule(&eval_cfg);
                    pbip_model::gated_argmax(f, &g, n, plane, bg, &mut pred_dep);
                    pbip_model::gated_argmax(f, &label_gate, n, plane, bg, &mut pred_lab);
                    slide_dep.borrow_mut().add(gt, &pred_dep)?;
                    slide_lab.borrow_mut().add(gt, &pred_lab)?;
                    slide_leak.borrow_mut().add(gt, &pred_leak)?;
                    for (p, pc) in slide_const.borrow_mut().iter_mut().zip(&pred_const) {
                        p.add(gt, pc)?;
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
                                rgb: denormalize(batch.image(i), h, w, &norm),
                                gt: gt.to_vec(),
                                pred: pred_dep.clone(),
                            },
                            miou,
                        );
                    }
                }
            }
            let slide_logits: Vec<f64> = patch_logits
                .iter()
                .map(|v| pbip_model::pool_values(v, slide_pool).unwrap_or(0.0))
                .collect();
            Ok((count, slide_logits))
        })();
        match result {
            Ok((count, slide_logits)) => {
                row.patches = count;
                total_patches += count;
                if count > 0 {
                    let probs: Vec<f64> = slide_logits
                        .iter()
                        .map(|z| 1.0 / (1.0 + (-z).exp()))
                        .collect();
                    let mut ok = true;
                    for (cl, &p) in probs.iter().enumerate().take(n) {
                        if Some(cl) == cfg.background_index() {
                            // Present on every slide: nothing to rank or gate.
                            continue;
                        }
                        let pos = entry.labels.get(cl).copied().unwrap_or(0) != 0;
                        auc_scores.push(p);
                        auc_truth.push(pos);
                        ok &= (p >= threshold) == pos;
                    }
                    cls_counted += 1;
                    cls_correct += usize::from(ok);
                    row.predicted = (0..n)
                        .filter(|&c| probs[c] >= threshold || Some(c) == cfg.background_index())
                        .map(|c| names[c])
                        .collect::<Vec<_>>()
                        .join(" ");
                    row.probs = probs;
                }
                let (d, l, k) = (
                    slide_dep.into_inner(),
                    slide_lab.into_inner(),
                    slide_leak.into_inner(),
                );
                let ds = d.cm.summary();
                row.deployable_miou = ds.miou;
                row.deployable_pixel_accuracy = ds.pixel_accuracy;
                row.label_masked_miou = l.cm.summary().miou;
                row.leak_reference_miou = k.cm.summary().miou;
                let consts = slide_const.into_inner();
                let pairs = [(&mut dep, d), (&mut lab, l), (&mut leak, k)]
                    .into_iter()
                    .chain(constant.iter_mut().zip(consts));
                for (total, part) in pairs {
                    total.cm.merge(&part.cm).map_err(model_err)?;
                    total.patches.merge(&part.patches).map_err(model_err)?;
                }
            }
            Err(e) => {
                tracing::error!(slide = %entry.name, "evaluation failed: {e}");
                row.status = "failed".into();
                row.error = e.to_string();
                failed.push((entry.name.clone(), e.to_string()));
            }
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let out_dir = eo
        .output_dir
        .clone()
        .unwrap_or_else(|| cfg.paths.work_dir.join(OUTPUT_DIR));
    std::fs::create_dir_all(&out_dir).map_err(|source| PipelineError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PipelineError::Io { path: p, source }
    };

    // metrics.json
    let auc = if auc_scores.is_empty() {
        None
    } else {
        roc_auc_multilabel(
            &auc_scores,
            &auc_truth,
            n - usize::from(cfg.background_index().is_some()),
        )
        .ok()
        .map(|a| serde_json::to_value(a).unwrap_or_default())
    };
    let slide_classification = serde_json::json!({
        "slides": cls_counted,
        "exact_match_accuracy": if cls_counted > 0 { Some(cls_correct as f64 / cls_counted as f64) } else { None },
        "threshold": threshold,
        "auc": auc,
    });
    let dep_r = dep.report(&names)?;
    let lab_r = lab.report(&names)?;
    let leak_r = leak.report(&names)?;
    // The best constant map by mIoU (first class on ties).
    let mut best_const: Option<(usize, f64)> = None;
    for (c, p) in constant.iter().enumerate() {
        if let Some(m) = p.cm.summary().miou
            && best_const.is_none_or(|(_, b)| m > b)
        {
            best_const = Some((c, m));
        }
    }
    let const_class = best_const.map_or(0, |(c, _)| c);
    let const_r = match constant.get(const_class) {
        Some(p) => p.report(&names)?,
        None => leak_r.clone(),
    };
    let const_note = format!(
        "no model, no label: every pixel = {} (the class whose constant map scores best); a model that does not beat this has learned nothing",
        names.get(const_class).copied().unwrap_or("?")
    );
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
    let mut const_section = section(&const_r, serde_json::Value::Null, &const_note)?;
    if let Some(o) = const_section.as_object_mut() {
        o.insert(
            "class".into(),
            serde_json::Value::String(names.get(const_class).copied().unwrap_or("?").to_string()),
        );
    }
    let metrics = serde_json::json!({
        "split": eo.split.as_str(),
        "checkpoint": eo.weights,
        "evaluation": cfg.evaluation,
        "gate_threshold": threshold,
        "patches": total_patches,
        "slides": rows.len(),
        "failed_slides": failed.len(),
        "deployable": section(&dep_r, slide_classification.clone(), "headline: CAMs gated by the model's own image-level prediction")?,
        "label_masked": section(&lab_r, slide_classification, "upstream protocol: CAMs gated by the GT image label (leaks the label); for comparison with the paper only")?,
        "leak_reference": section(&leak_r, serde_json::Value::Null, "no model: every pixel = the present class with the largest index; a model adds something only where it beats this")?,
        "best_constant_map": const_section,
    });
    let metrics_path = out_dir.join(METRICS_FILE);
    let text = serde_json::to_string_pretty(&metrics).map_err(|e| err(e.to_string()))?;
    crate::write_atomic(&metrics_path, text.as_bytes())?;
    let cm_path = out_dir.join("confusion_matrix.csv");
    dep.cm.write_csv(&cm_path, &names).map_err(model_err)?;
    lab.cm
        .write_csv(&out_dir.join("confusion_matrix_label_masked.csv"), &names)
        .map_err(model_err)?;

    // per_slide.csv
    let mut csv = String::from("slide,label,status,patches");
    for c in &names {
        let _ = write!(csv, ",prob_{c}");
    }
    csv.push_str(",predicted,deployable_miou,deployable_pixel_accuracy,label_masked_miou,leak_reference_miou,error\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for r in &rows {
        let _ = write!(
            csv,
            "{},{},{},{}",
            csv_cell(&r.slide),
            csv_cell(&r.label),
            r.status,
            r.patches
        );
        for c in 0..n {
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
    crate::write_atomic(&out_dir.join("per_slide.csv"), csv.as_bytes())?;

    // Samples.
    let sample_dir = out_dir.join("prediction_samples");
    std::fs::create_dir_all(&sample_dir).map_err(io(&sample_dir))?;
    let colors = pbip_report::default_class_colors(n);
    let ignore_color = [255, 255, 255];
    let side = cfg.patch_size;
    let mut triplets = Vec::new();
    for (kind, list) in [("best", &keeper.best), ("worst", &keeper.worst)] {
        for (i, s) in list.iter().enumerate() {
            let input = pbip_report::PngImage::from_rgb8(side, side, &s.rgb).map_err(model_err)?;
            let gt = pbip_report::PngImage::from_labels(side, side, &s.gt, &colors, ignore_color)
                .map_err(model_err)?;
            let pred =
                pbip_report::PngImage::from_labels(side, side, &s.pred, &colors, ignore_color)
                    .map_err(model_err)?;
            let stem = format!("{kind}_{i:02}_{}_{}_{}", s.slide, s.x, s.y);
            for (suffix, img) in [("input", &input), ("gt", &gt), ("pred", &pred)] {
                let p = sample_dir.join(format!("{stem}_{suffix}.png"));
                std::fs::write(&p, &img.png).map_err(io(&p))?;
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

    // evaluation_report.txt
    let mut txt = String::new();
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{:.2}%", 100.0 * x));
    let _ = writeln!(txt, "PBIP evaluation ({} split)", eo.split.as_str());
    let _ = writeln!(txt, "checkpoint: {}", eo.weights.display());
    let _ = writeln!(
        txt,
        "slides: {} ({} failed), patches: {total_patches}",
        rows.len(),
        failed.len()
    );
    let _ = writeln!(txt, "gate threshold (deployable): {threshold}");
    for (name, r) in [
        ("deployable", &dep_r),
        ("label_masked (upstream, leaks the label)", &lab_r),
        ("leak_reference (no model)", &leak_r),
        ("best_constant_map (no model, no label)", &const_r),
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
        "\nslide classification: exact-match accuracy {} over {cls_counted} slides",
        if cls_counted > 0 {
            format!("{:.2}%", 100.0 * cls_correct as f64 / cls_counted as f64)
        } else {
            "n/a".into()
        }
    );
    for (s, e) in &failed {
        let _ = writeln!(txt, "FAILED {s}: {e}");
    }
    crate::write_atomic(&out_dir.join("evaluation_report.txt"), txt.as_bytes())?;

    // report.html
    let mut report = pbip_report::Report::new("PBIP evaluation");
    report.info = vec![
        ("split".into(), eo.split.as_str().into()),
        ("checkpoint".into(), eo.weights.display().to_string()),
        (
            "slides".into(),
            format!("{} ({} failed)", rows.len(), failed.len()),
        ),
        ("patches".into(), total_patches.to_string()),
        ("gate threshold".into(), threshold.to_string()),
        ("date".into(), pbip_report::utc_now()),
    ];
    report.sections = vec![
        pbip_report::MetricsSection {
            name: "Deployable (headline)".into(),
            note: Some("Class gate = the model's own image-level prediction.".into()),
            body: pbip_report::SectionBody::Metrics(Box::new(dep_r.clone())),
        },
        pbip_report::MetricsSection {
            name: "Label-masked (upstream protocol)".into(),
            note: Some("CAMs gated by the GT image label: leaks the label; for comparison with the paper only.".into()),
            body: pbip_report::SectionBody::Metrics(Box::new(lab_r.clone())),
        },
        pbip_report::MetricsSection {
            name: "Leak reference (no model)".into(),
            note: Some("Every pixel = the present class of the slide label. A model only helps where it beats this.".into()),
            body: pbip_report::SectionBody::Metrics(Box::new(leak_r.clone())),
        },
        pbip_report::MetricsSection {
            name: "Best constant map (no model, no label)".into(),
            note: Some(const_note.clone()),
            body: pbip_report::SectionBody::Metrics(Box::new(const_r.clone())),
        },
    ];
    report.confusion = Some((dep.cm.clone(), cfg.class_order.clone()));
    report.legend = cfg
        .class_order
        .iter()
        .cloned()
        .zip(colors.iter().copied())
        .collect();
    report.samples = triplets;
    let html_path = out_dir.join(REPORT_FILE);
    report.write(&html_path).map_err(model_err)?;
    let cfg_path = cfg.write_resolved(&out_dir)?;

    let summary = vec![
        format!(
            "deployable mIoU {} (best constant map {}: {}; label-masked {}, leak reference {}) over {total_patches} patches of {} slides",
            pct(dep_r.miou),
            names.get(const_class).copied().unwrap_or("?"),
            pct(const_r.miou),
            pct(lab_r.miou),
            pct(leak_r.miou),
            rows.len()
        ),
        format!("metrics: {}", metrics_path.display()),
        format!("report:  {}", html_path.display()),
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
    ];
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
        failed_slides: failed,
        deployable_miou: dep_r.miou,
    })
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
    if !outcome.failed_slides.is_empty() {
        return Err(err(format!(
            "{} slide(s) failed (see {}): {}",
            outcome.failed_slides.len(),
            outcome.report.output_dir.join("per_slide.csv").display(),
            outcome
                .failed_slides
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
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

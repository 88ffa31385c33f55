#!/usr/bin/env python3
"""Expected metric values from scikit-learn for the pbip-metrics tests.

Usage (from this folder):  pip install scikit-learn numpy && python3 make_expected.py
Writes expected_metrics.json next to this script. The Rust test
(crates/pbip-metrics/tests/sklearn_parity.rs) reads that file; Python is not needed at test time.

Conventions (see the crate docs):
* pixels with GT == 255 are ignored; sklearn sees only the remaining pixels;
* per-class values use zero_division=0; classes absent from both GT and prediction are written
  as null (our crate: None) -- sklearn reports 0 for them;
* the "excluded" macro averages (our rule) are computed here explicitly as the mean of sklearn's
  per-class values over classes present in GT or prediction;
* Dice is checked against sklearn's f1_score (identical at pixel level);
* weighted averages are sklearn's average="weighted"; FwIoU = jaccard_score(average="weighted").
"""
import json
import os
import sys

import numpy as np
import sklearn
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def seg_case(seed, n_classes, h, w, gt_classes=None, pred_classes=None, ignore_frac=0.1):
    rng = np.random.default_rng(seed)
    gt_classes = list(range(n_classes)) if gt_classes is None else gt_classes
    pred_classes = list(range(n_classes)) if pred_classes is None else pred_classes
    gt = rng.choice(gt_classes, size=(h, w)).astype(np.uint8)
    # prediction: copy GT with prob 0.6, else random from pred_classes
    noise = rng.choice(pred_classes, size=(h, w)).astype(np.uint8)
    keep = rng.random((h, w)) < 0.6
    pred = np.where(keep & np.isin(gt, pred_classes), gt, noise).astype(np.uint8)
    ign = rng.random((h, w)) < ignore_frac
    gt[ign] = 255
    gt_f, pred_f = gt.ravel(), pred.ravel()
    m = gt_f != 255
    y, p = gt_f[m].astype(int), pred_f[m].astype(int)
    labels = list(range(n_classes))
    present = np.array([(np.any(y == c) or np.any(p == c)) for c in labels])
    kw = dict(labels=labels, zero_division=0)
    per = {
        "iou": jaccard_score(y, p, average=None, **kw),
        "dice": f1_score(y, p, average=None, **kw),
        "precision": precision_score(y, p, average=None, **kw),
        "recall": recall_score(y, p, average=None, **kw),
        "f1": f1_score(y, p, average=None, **kw),
    }
    fns = {
        "iou": jaccard_score,
        "dice": f1_score,
        "precision": precision_score,
        "recall": recall_score,
        "f1": f1_score,
    }
    out = {
        "seed": seed,
        "num_classes": n_classes,
        "height": h,
        "width": w,
        "gt": gt_f.tolist(),
        "pred": pred_f.tolist(),
        "present": present.tolist(),
        "confusion": confusion_matrix(y, p, labels=labels).tolist(),
        "pixel_accuracy": float(accuracy_score(y, p)),
        "fwiou": float(jaccard_score(y, p, average="weighted", **kw)),
        "per_class": {
            k: [float(v[c]) if present[c] else None for c in labels] for k, v in per.items()
        },
        "macro_excluded": {k: float(np.mean(v[present])) for k, v in per.items()},
        "weighted": {k: float(fns[k](y, p, average="weighted", **kw)) for k in fns},
        # for information: sklearn's own macro (absent classes counted as 0)
        "sklearn_macro_with_absent_as_zero": {
            k: float(fns[k](y, p, average="macro", **kw)) for k in fns
        },
    }
    return out


def main():
    cases = []
    seed = 0
    for n_classes in (2, 3, 4):
        for _ in range(3):
            cases.append(seg_case(seed, n_classes, 9, 11))
            seed += 1
    # class 3 absent from GT and prediction
    cases.append(seg_case(100, 4, 8, 8, gt_classes=[0, 1, 2], pred_classes=[0, 1, 2]))
    # class 2 in GT only (never predicted), class 3 predicted only
    cases.append(seg_case(101, 4, 10, 7, gt_classes=[0, 1, 2], pred_classes=[0, 1, 3]))
    # class 0 absent from both, 2 classes present, many ignored pixels
    cases.append(seg_case(102, 3, 6, 6, gt_classes=[1, 2], pred_classes=[1, 2], ignore_frac=0.4))

    auc_cases = []
    for s in range(6):
        rng = np.random.default_rng(1000 + s)
        n = int(rng.integers(5, 40))
        labels = rng.random(n) < 0.4
        labels[0], labels[1] = True, False
        scores = labels * 0.3 + rng.random(n)
        if s % 2 == 0:
            scores = np.round(scores, 1)  # many ties
        auc_cases.append(
            {
                "scores": scores.tolist(),
                "labels": labels.tolist(),
                "auc": float(roc_auc_score(labels, scores)),
            }
        )

    rng = np.random.default_rng(2000)
    n, k = 30, 3
    ml_labels = rng.random((n, k)) < 0.5
    ml_labels[0], ml_labels[1] = True, False
    ml_scores = np.round(ml_labels * 0.4 + rng.random((n, k)), 2)
    multilabel = {
        "n_labels": k,
        "scores": ml_scores.ravel().tolist(),
        "labels": ml_labels.ravel().tolist(),
        "macro": float(roc_auc_score(ml_labels, ml_scores, average="macro")),
        "per_label": [float(v) for v in roc_auc_score(ml_labels, ml_scores, average=None)],
    }

    rng = np.random.default_rng(3000)
    n, c = 25, 4
    classes = rng.integers(0, c, n)
    classes[:c] = np.arange(c)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[classes]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ovr = {
        "n_classes": c,
        "scores": probs.ravel().tolist(),
        "classes": classes.tolist(),
        "macro": float(roc_auc_score(classes, probs, multi_class="ovr", average="macro")),
    }

    doc = {
        "generator": "make_expected.py",
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": sys.version.split()[0],
        "segmentation": cases,
        "auc": auc_cases,
        "multilabel_auc": multilabel,
        "ovr_auc": ovr,
    }
    with open(os.path.join(HERE, "expected_metrics.json"), "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()

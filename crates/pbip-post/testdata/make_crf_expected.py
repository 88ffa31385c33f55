#!/usr/bin/env python3
"""Expected dense-CRF output from pydensecrf (Krähenbühl's C++ code) for pbip-post tests.

Usage:  pip install numpy pydensecrf2 && python3 make_crf_expected.py
Writes crf_expected.json next to this script:
  {"width", "height", "num_classes", "params": {...}, "rgb": [u8, HWC], "probs": [f32, CHW],
   "marginals": [f32, CHW from d.inference], "labels": [argmax]}
The model: DenseCRF2D + unary_from_softmax (clip 1e-5) + addPairwiseGaussian(sxy, compat) +
addPairwiseBilateral(sxy, srgb, rgbim, compat), default DIAG_KERNEL / NORMALIZE_SYMMETRIC.
"""
import json
import os

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    rng = np.random.default_rng(7)
    h, w, c = 40, 48, 3
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros((h, w), np.int64)
    truth[(xx - 20) ** 2 + (yy - 18) ** 2 < 12 ** 2] = 1
    truth[xx > 36] = 2
    colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200]])
    rgb = np.clip(colours[truth] + rng.integers(-25, 26, size=(h, w, 3)), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1.0, size=(c, h, w)) + 1.2 * np.eye(c)[truth].transpose(2, 0, 1)
    probs = np.exp(logits)
    probs = (probs / probs.sum(0, keepdims=True)).astype(np.float32)
    params = dict(sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=15.0, srgb=13.0, compat_bilateral=10.0, n_iter=5)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=1e-5)))
    d.addPairwiseGaussian(sxy=params["sxy_gaussian"], compat=params["compat_gaussian"])
    d.addPairwiseBilateral(sxy=params["sxy_bilateral"], srgb=params["srgb"], rgbim=np.ascontiguousarray(rgb), compat=params["compat_bilateral"])
    q = np.array(d.inference(params["n_iter"]), dtype=np.float32).reshape(c, h, w)
    out = {
        "width": w,
        "height": h,
        "num_classes": c,
        "params": params,
        "rgb": [int(v) for v in rgb.ravel()],
        "probs": [float(v) for v in probs.ravel()],
        "marginals": [float(v) for v in q.ravel()],
        "labels": [int(v) for v in q.argmax(0).ravel()],
        "unary_argmax_changed": int((q.argmax(0) != probs.argmax(0)).sum()),
    }
    with open(os.path.join(HERE, "crf_expected.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Expected outputs for pbip-post morphology tests, from scikit-image / scipy.

Usage:  pip install numpy scipy scikit-image && python3 make_expected.py
Writes morph_expected.json next to this script (and npy_f16_ref.npy, npy_u8_ref.npy: numpy-written
.npy files whose bytes the Rust .npy writer must reproduce exactly).

JSON layout: {"versions": {...}, "cases": [{"name", "height", "width", "mask": [0/1 row-major],
 "multi": [0..3 row-major], "closing_sq3", "opening_sq3", "closing_sq5", "opening_sq5",
 "closing_disk2", "opening_disk2", "label_conn1", "label_conn2", "multi_label_conn1",
 "multi_label_conn2", "rso_min10_conn1", "rso_min10_conn2", "edt": [float64]}]}
Footprints: square k = np.ones((k, k)); disk(r) = skimage.morphology.disk(r). Morphology uses the
default mode='ignore' (outside pixels ignored: dilation pads with False, erosion pads with True).
remove_small_objects: objects with size < 10 are removed (max_size=9 in skimage >= 0.26).
"""
import json
import os
import warnings

import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
from skimage import measure, morphology

HERE = os.path.dirname(os.path.abspath(__file__))


def blobby(rng, h, w, thresh, sigma):
    noise = rng.random((h, w))
    sm = ndi.gaussian_filter(noise, sigma)
    m = sm > np.quantile(sm, thresh)
    salt = rng.random((h, w)) < 0.03
    return m ^ salt


def rso(mask, min_size, conn):
    try:
        return morphology.remove_small_objects(mask, max_size=min_size - 1, connectivity=conn)
    except TypeError:  # skimage < 0.26
        return morphology.remove_small_objects(mask, min_size=min_size, connectivity=conn)


def flat(a):
    return [int(v) for v in np.asarray(a).ravel()]


def main():
    # binary_closing/opening are deprecated in skimage 0.26 but still the reference the tests name.
    warnings.filterwarnings("ignore", category=FutureWarning)
    rng = np.random.default_rng(20260112)
    cases = []
    for name, (h, w, thresh, sigma) in {
        "small": (23, 31, 0.5, 1.5),
        "medium": (48, 40, 0.6, 2.0),
        "sparse": (37, 53, 0.8, 1.0),
    }.items():
        m = blobby(rng, h, w, thresh, sigma)
        multi = np.zeros((h, w), dtype=np.uint8)
        multi[m] = 1
        multi[blobby(rng, h, w, 0.7, 1.5)] = 2
        multi[blobby(rng, h, w, 0.85, 1.0)] = 3
        sq3, sq5, d2 = np.ones((3, 3), bool), np.ones((5, 5), bool), morphology.disk(2).astype(bool)
        case = {
            "name": name,
            "height": h,
            "width": w,
            "mask": flat(m),
            "multi": flat(multi),
            "closing_sq3": flat(morphology.binary_closing(m, sq3)),
            "opening_sq3": flat(morphology.binary_opening(m, sq3)),
            "closing_sq5": flat(morphology.binary_closing(m, sq5)),
            "opening_sq5": flat(morphology.binary_opening(m, sq5)),
            "closing_disk2": flat(morphology.binary_closing(m, d2)),
            "opening_disk2": flat(morphology.binary_opening(m, d2)),
            "label_conn1": flat(measure.label(m, connectivity=1)),
            "label_conn2": flat(measure.label(m, connectivity=2)),
            "multi_label_conn1": flat(measure.label(multi, background=0, connectivity=1)),
            "multi_label_conn2": flat(measure.label(multi, background=0, connectivity=2)),
            "rso_min10_conn1": flat(rso(m, 10, 1)),
            "rso_min10_conn2": flat(rso(m, 10, 2)),
            "edt": [float(v) for v in ndi.distance_transform_edt(m).ravel()],
        }
        cases.append(case)
    out = {
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "skimage": skimage.__version__},
        "cases": cases,
    }
    with open(os.path.join(HERE, "morph_expected.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
    # Reference .npy files written by numpy itself.
    np.save(os.path.join(HERE, "npy_f16_ref.npy"), (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(np.float16))
    np.save(os.path.join(HERE, "npy_u8_ref.npy"), np.arange(15, dtype=np.uint8).reshape(5, 3) * 17)


if __name__ == "__main__":
    main()

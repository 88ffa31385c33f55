#!/usr/bin/env python3
"""Helper of bench/crf.sh: `gen DIR` writes the benchmark input, `run DIR` times pydensecrf2 on it and
compares with the Rust output (DIR/rust_marginals.bin, DIR/rust_secs.txt)."""
import json
import os
import sys
import time

import numpy as np

H = W = 1024
C = 2
PARAMS = dict(sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=80.0, srgb=13.0, compat_bilateral=10.0, n_iter=5)


def gen(d):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    truth = (((xx - 400) ** 2 + (yy - 500) ** 2) < 250 ** 2) | (np.sin(xx / 60.0) + np.cos(yy / 45.0) > 1.2)
    truth = truth.astype(np.int64)
    colours = np.array([[230, 200, 220], [150, 60, 140]])
    rgb = np.clip(colours[truth] + rng.integers(-30, 31, size=(H, W, 3)), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1.0, size=(C, H, W)) + 1.0 * np.eye(C)[truth].transpose(2, 0, 1)
    probs = np.exp(logits)
    probs = (probs / probs.sum(0, keepdims=True)).astype(np.float32)
    rgb.tofile(os.path.join(d, "rgb.bin"))
    probs.tofile(os.path.join(d, "probs.bin"))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(dict(width=W, height=H, num_classes=C, params=PARAMS), f)


def run(d):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rgb = np.fromfile(os.path.join(d, "rgb.bin"), dtype=np.uint8).reshape(H, W, 3)
    probs = np.fromfile(os.path.join(d, "probs.bin"), dtype=np.float32).reshape(C, H, W)
    times, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        crf = dcrf.DenseCRF2D(W, H, C)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=1e-5)))
        crf.addPairwiseGaussian(sxy=PARAMS["sxy_gaussian"], compat=PARAMS["compat_gaussian"])
        crf.addPairwiseBilateral(sxy=PARAMS["sxy_bilateral"], srgb=PARAMS["srgb"], rgbim=rgb, compat=PARAMS["compat_bilateral"])
        q = np.array(crf.inference(PARAMS["n_iter"]), dtype=np.float32).reshape(C, H, W)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    py, py_cpu = min(times), min(cpus)
    rust_q = np.fromfile(os.path.join(d, "rust_marginals.bin"), dtype=np.float32).reshape(C, H, W)
    rust, rust_cpu = (float(v) for v in open(os.path.join(d, "rust_secs.txt")).read().split())
    agree = float((rust_q.argmax(0) == q.argmax(0)).mean())
    print(f"image {W}x{H}, {C} classes, params {PARAMS}")
    print(f"pydensecrf2 (best of 3, incl. lattice build): wall {py:.3f} s, CPU {py_cpu:.3f} s")
    print(f"pbip-post dense_crf (best of 3, incl. lattice build): wall {rust:.3f} s, CPU {rust_cpu:.3f} s")
    print(f"ratio pbip/pydensecrf2: wall {rust / py:.2f}, CPU {rust_cpu / py_cpu:.2f}")
    print(f"label agreement {agree * 100:.4f} %, max |dQ| = {np.abs(rust_q - q).max():.2e}")


if __name__ == "__main__":
    {"gen": gen, "run": run}[sys.argv[1]](sys.argv[2])

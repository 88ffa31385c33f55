#!/usr/bin/env python3
"""Builds a weak-label benchmark from real H&E: benign tissue from a real slide, tumour from a
real carcinoma image, one label per slide, GT masks for val/test.

Every slide is a canvas at `--mpp` um/px: tissue islands (smooth random shapes) filled with benign
texture quilted from random windows of the benign source (random flips / 90-degree rotations,
feathered seams), and on tumour slides one to three tumour regions inside the tissue filled the
same way from the tumour source(s). The tumour regions are sized so that a chosen fraction
(uniform in `--tumour-tile-fraction`, default 0.10-0.30) of the slide's tissue tiles contain
tumour, as in real resections where a tumour slide is mostly benign. A mild per-slide stain
variation (optical-density scaling per channel) is applied to the whole slide.

Outputs in OUT:
  slides/<name>.tif        tiled JPEG pyramidal TIFF (levels 1, 1/2, 1/4, 1/8; mpp in the
                           resolution tags), readable by pbip and OpenSlide
  masks/<name>.png         GT of val/test slides, u8: 0 benign tissue, 1 tumour, 255 no tissue
  coordinates/<name>.npy   hs2p 1.x structured array of `--tile` px tiles with >= 25 % tissue
  thumbnails/<name>.png    slide thumbnail with the tumour outline
  split.csv, labels.csv    columns train,val,test / image_name,label (0 benign, 1 tumour)
  config.yaml              the data part of a pbip config (paths, classes, prototypes sampling)
  summary.json             per slide: split, label, tissue tiles, tumour tile fraction

Sources: `--benign` is any image (PNG/JPEG/TIFF) at `--benign-mpp`, e.g. a level-0 region of a
real slide exported with `pbip read-region`; `--tumour` one or more images, each `PATH[:MPP]`.
Only numpy, scipy, Pillow and tifffile (+ imagecodecs for JPEG tiles) are needed.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

import tifffile

BACKGROUND_RGB = (242, 242, 240)


def load_rgb(path):
    im = Image.open(path)
    im.load()
    return np.asarray(im.convert("RGB"))


def rescale(img, from_mpp, to_mpp):
    if abs(from_mpp - to_mpp) / to_mpp < 1e-3:
        return img
    f = from_mpp / to_mpp
    h, w = img.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS))


def tissue_of(img):
    """Tissue mask of a source image: saturation and darkness thresholds, cleaned."""
    x = img.astype(np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    m = (sat > 0.12) | (mx < 0.75)
    m = ndimage.binary_opening(m, iterations=2)
    m = ndimage.binary_closing(m, iterations=4)
    return m


class Quilter:
    """Random windows of a source with full tissue, pasted with random flips/rot90 and feathering."""

    def __init__(self, img, win, min_tissue, rng, name):
        self.img = img
        self.win = min(win, img.shape[0], img.shape[1])
        t = tissue_of(img).astype(np.float32)
        ii = t.cumsum(0).cumsum(1)
        ii = np.pad(ii, ((1, 0), (1, 0)))
        w = self.win
        frac = (ii[w:, w:] - ii[:-w, w:] - ii[w:, :-w] + ii[:-w, :-w]) / float(w * w)
        ys, xs = np.nonzero(frac >= min_tissue)
        if len(ys) == 0:
            sys.exit(f"{name}: no {w}x{w} window with >= {min_tissue:.0%} tissue")
        self.cands = np.stack([ys, xs], 1)
        self.rng = rng

    def window(self):
        y, x = self.cands[self.rng.integers(len(self.cands))]
        p = self.img[y : y + self.win, x : x + self.win]
        p = np.rot90(p, self.rng.integers(4))
        if self.rng.random() < 0.5:
            p = p[:, ::-1]
        return p

    def fill(self, h, w):
        """A h x w texture canvas: windows on a grid with 1/4 overlap, feathered."""
        s = self.win
        step = max(1, (3 * s) // 4)
        acc = np.zeros((h + s, w + s, 3), np.float32)
        wsum = np.zeros((h + s, w + s, 1), np.float32)
        ramp = np.minimum(np.arange(s) + 1, s - np.arange(s)).astype(np.float32)
        ramp = np.minimum(ramp / max(1, s // 8), 1.0)
        wt = (ramp[:, None] * ramp[None, :])[..., None]
        oy = self.rng.integers(step)
        ox = self.rng.integers(step)
        for y in range(-oy, h, step):
            for x in range(-ox, w, step):
                p = self.window().astype(np.float32)
                y0, x0 = max(y, 0), max(x, 0)
                py, px = y0 - y, x0 - x
                hh = min(s - py, h + s - y0)
                ww = min(s - px, w + s - x0)
                acc[y0 : y0 + hh, x0 : x0 + ww] += p[py : py + hh, px : px + ww] * wt[py : py + hh, px : px + ww]
                wsum[y0 : y0 + hh, x0 : x0 + ww] += wt[py : py + hh, px : px + ww]
        return (acc[:h, :w] / np.maximum(wsum[:h, :w], 1e-6)).clip(0, 255)


def smooth_field(shape, scale_px, rng):
    h, w = shape
    lh, lw = max(4, h // 16), max(4, w // 16)
    f = ndimage.gaussian_filter(rng.standard_normal((lh, lw)), scale_px / 16.0, mode="wrap")
    f = np.asarray(Image.fromarray(f.astype(np.float32)).resize((w, h), Image.BILINEAR))
    return (f - f.mean()) / (f.std() + 1e-9)


def tissue_shape(size, rng, coverage):
    """Tissue islands covering about `coverage` of the canvas, away from the border."""
    f = smooth_field((size, size), size / 6.0, rng)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    f -= 3.0 * (np.maximum(np.abs(yy - 0.5), np.abs(xx - 0.5)) ** 4) * 16.0
    th = np.quantile(f, 1.0 - coverage)
    m = f > th
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        keep = np.nonzero(sizes >= 0.03 * m.sum())[0] + 1
        m = np.isin(lab, keep)
    return ndimage.binary_fill_holes(m)


def tile_grid(tissue, tile, min_tissue=0.25):
    h, w = tissue.shape
    rows = []
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            if tissue[y : y + tile, x : x + tile].mean() >= min_tissue:
                rows.append((x, y))
    return rows


def tumour_tile_fraction(tumour, tiles, tile):
    if not tiles:
        return 0.0
    hit = sum(1 for x, y in tiles if tumour[y : y + tile, x : x + tile].any())
    return hit / len(tiles)


def tumour_shape(tissue, tiles, tile, target, rng):
    """1-3 smooth regions inside the tissue such that ~target of the tissue tiles hold tumour."""
    size = tissue.shape[0]
    n = int(rng.integers(1, 4))
    ys, xs = np.nonzero(tissue)
    f = np.full(tissue.shape, -np.inf, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = smooth_field(tissue.shape, size / 10.0, rng)
    for _ in range(n):
        i = rng.integers(len(ys))
        cy, cx = ys[i], xs[i]
        r = size * rng.uniform(0.08, 0.16)
        d = np.sqrt(((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.6, 1.6))) ** 2)
        f = np.maximum(f, -d + 0.35 * noise)
    f[~tissue] = -np.inf
    lo, hi = -3.0, 1.0
    best = None
    for _ in range(40):
        th = 0.5 * (lo + hi)
        m = f > th
        fr = tumour_tile_fraction(m, tiles, tile)
        if best is None or abs(fr - target) < abs(best[1] - target):
            best = (m, fr)
        if fr > target:
            lo = th
        else:
            hi = th
    return best


def stain_jitter(img, rng, strength):
    od = -np.log(np.maximum(img.astype(np.float32), 1.0) / 255.0)
    od *= rng.uniform(1.0 - strength, 1.0 + strength, size=3).astype(np.float32)
    return (255.0 * np.exp(-od)).clip(0, 255)


def write_pyramid(path, img, mpp, levels=4, tile=256, quality=90):
    res = 1e4 / mpp  # pixels per centimetre
    opts = dict(
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=levels - 1, resolution=(res, res), **opts)
        cur = img
        for k in range(1, levels):
            cur = np.asarray(
                Image.fromarray(cur).resize((max(1, cur.shape[1] // 2), max(1, cur.shape[0] // 2)), Image.BOX)
            )
            f = 2**k
            tif.write(cur, subfiletype=1, resolution=(res / f, res / f), **opts)


def write_coords(path, tiles, tile, mpp):
    dt = np.dtype(
        [
            ("x", "<i8"),
            ("y", "<i8"),
            ("tile_size_resized", "<i8"),
            ("tile_level", "<i8"),
            ("resize_factor", "<f8"),
            ("tile_size_lv0", "<i8"),
            ("target_spacing", "<f8"),
        ]
    )
    a = np.zeros(len(tiles), dt)
    for i, (x, y) in enumerate(tiles):
        a[i] = (x, y, tile, 0, 1.0, tile, mpp)
    np.save(path, a)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--benign", required=True, help="benign source image (level-0 RGB)")
    ap.add_argument("--benign-mpp", type=float, required=True)
    ap.add_argument("--tumour", required=True, nargs="+", help="tumour source image(s), PATH[:MPP]")
    ap.add_argument("--tumour-mpp", type=float, default=None, help="mpp of tumour sources without :MPP")
    ap.add_argument("--mpp", type=float, default=0.5, help="slide resolution, um/px")
    ap.add_argument("--size", type=int, default=2688, help="slide side, px")
    ap.add_argument("--tile", type=int, default=224, help="coordinate tile side, px")
    ap.add_argument("--split", default="12,12,3,3,4,4", help="train benign,tumour, val benign,tumour, test benign,tumour")
    ap.add_argument("--tumour-tile-fraction", default="0.10,0.30")
    ap.add_argument("--tissue-coverage", default="0.35,0.60")
    ap.add_argument("--stain-jitter", type=float, default=0.03, help="per-slide optical-density scaling per channel, +-fraction")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    benign = rescale(load_rgb(args.benign), args.benign_mpp, args.mpp)
    tumours = []
    for spec in args.tumour:
        path, _, m = spec.rpartition(":") if ":" in spec else (spec, "", "")
        mpp = float(m) if m else args.tumour_mpp
        if mpp is None:
            sys.exit(f"{spec}: give the tumour image's mpp as PATH:MPP or --tumour-mpp")
        tumours.append(rescale(load_rgb(path), mpp, args.mpp))
    bq = Quilter(benign, 320, 0.9, rng, args.benign)
    tq = [Quilter(t, min(256, min(t.shape[:2]) // 2 * 2), 0.8, rng, "tumour source") for t in tumours]

    counts = [int(v) for v in args.split.split(",")]
    if len(counts) != 6:
        sys.exit("--split needs 6 counts")
    plan = []
    for split, (nb, nt) in zip(["train", "val", "test"], [counts[0:2], counts[2:4], counts[4:6]]):
        labels = [0] * nb + [1] * nt
        rng.shuffle(labels)
        plan += [(split, lab) for lab in labels]
    lo_f, hi_f = (float(v) for v in args.tumour_tile_fraction.split(","))
    lo_c, hi_c = (float(v) for v in args.tissue_coverage.split(","))

    for d in ["slides", "masks", "coordinates", "thumbnails"]:
        os.makedirs(os.path.join(args.out, d), exist_ok=True)
    summary = []
    size, tile = args.size, args.tile
    for i, (split, label) in enumerate(plan):
        name = f"slide_{i:03d}"
        srng = np.random.default_rng([args.seed, i])
        bq.rng = srng
        tissue = tissue_shape(size, srng, srng.uniform(lo_c, hi_c))
        tiles = tile_grid(tissue, tile)
        img = bq.fill(size, size)
        gt = np.where(tissue, 0, 255).astype(np.uint8)
        frac = 0.0
        if label == 1:
            target = srng.uniform(lo_f, hi_f)
            tum, frac = tumour_shape(tissue, tiles, tile, target, srng)
            q = tq[int(srng.integers(len(tq)))]
            q.rng = srng
            timg = q.fill(size, size)
            soft = ndimage.gaussian_filter(tum.astype(np.float32), 1.5)[..., None]
            img = img * (1 - soft) + timg * soft
            gt[tum] = 1
        soft_t = ndimage.gaussian_filter(tissue.astype(np.float32), 2.0)[..., None]
        img = img * soft_t + np.array(BACKGROUND_RGB, np.float32) * (1 - soft_t)
        img = stain_jitter(img, srng, args.stain_jitter)
        img += srng.normal(0, 2.0, img.shape).astype(np.float32)
        img = img.clip(0, 255).astype(np.uint8)

        write_pyramid(os.path.join(args.out, "slides", name + ".tif"), img, args.mpp)
        if split != "train":  # GT masks for val/test only, as in a real weak-label dataset
            Image.fromarray(gt).save(os.path.join(args.out, "masks", name + ".png"))
        write_coords(os.path.join(args.out, "coordinates", name + ".npy"), tiles, tile, args.mpp)
        th = Image.fromarray(img).resize((size // 8, size // 8), Image.BOX)
        th = np.asarray(th).copy()
        edge = ndimage.binary_dilation(gt[::8, ::8] == 1) & ~(gt[::8, ::8] == 1)
        th[edge] = (0, 200, 0)
        Image.fromarray(th).save(os.path.join(args.out, "thumbnails", name + ".png"))
        summary.append(
            dict(
                name=name,
                split=split,
                label=label,
                tissue_tiles=len(tiles),
                tumour_tile_fraction=round(frac, 4),
                tumour_pixel_fraction=round(float((gt == 1).sum()) / max(1, int((gt != 255).sum())), 4),
            )
        )
        print(f"{name} {split:5s} label {label} tiles {len(tiles):4d} tumour tiles {frac:.2f}", flush=True)

    cols = {s: [r["name"] for r in summary if r["split"] == s] for s in ["train", "val", "test"]}
    n = max(len(v) for v in cols.values())
    with open(os.path.join(args.out, "split.csv"), "w") as f:
        f.write("train,val,test\n")
        for r in range(n):
            f.write(",".join(cols[s][r] if r < len(cols[s]) else "" for s in ["train", "val", "test"]) + "\n")
    with open(os.path.join(args.out, "labels.csv"), "w") as f:
        f.write("image_name,label\n")
        for r in summary:
            f.write(f"{r['name']},{r['label']}\n")
    with open(os.path.join(args.out, "config.yaml"), "w") as f:
        f.write(
            "# Real-tissue weak-label benchmark (bench/real-tissue/build.py). Paths relative to this file.\n"
            f"seed: {args.seed}\n"
            "paths:\n  split_csv: split.csv\n  labels_csv: labels.csv\n  wsi_dir: slides\n"
            "  coordinates_dir: coordinates\n  coordinates_suffix: .npy\n  gt_dir: masks\n  gt_suffix: .png\n"
            "  work_dir: work\n"
            "class_order: [benign, tumor]\n"
        )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(dict(args=vars(args), slides=summary), f, indent=1)


if __name__ == "__main__":
    main()

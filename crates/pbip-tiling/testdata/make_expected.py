"""Reference outputs for pbip-tiling's OpenCV-parity tests.

Run from anywhere (writes next to this file):
    pip install opencv-python-headless numpy
    python make_expected.py

Writes, for each synthetic image NAME:
    NAME.rgb.bin.gz            RGB8 row-major HWC (the input)
    NAME.hsv.bin.gz            cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    NAME.inrange.bin.gz        cv2.inRange(hsv, (90, 8, 103), (180, 255, 255))  (0/255)
    NAME.close{K}.bin.gz       cv2.morphologyEx(inrange, MORPH_CLOSE, np.ones((K, K), np.uint8)), K in 2..6
    NAME.smed7.bin.gz          cv2.medianBlur(hsv[:, :, 1], 7)
    NAME.otsu.bin.gz           cv2.threshold(smed7, 0, 255, THRESH_OTSU + THRESH_BINARY)[1]
    NAME.sthresh8.bin.gz       cv2.threshold(smed7, 8, 255, THRESH_BINARY)[1]
and expected.json with sizes, hs2p's tile grid (hs2p 6.1.0 `detect_contours` + `generate_tiles`,
run from its wheel) on the close-4 masks, OpenCV contour areas of the outer contours minus
holes, cv2.connectedComponentsWithStats of the close-4 mask (8-connected)
and of its complement (4-connected), the Otsu threshold value and the OpenCV / numpy versions.
All .bin.gz files are gzip-compressed raw uint8 arrays (row-major).
"""

import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
KERNELS = [2, 3, 4, 5, 6]
HS2P_VERSION = "6.1.0"

# hs2p tiling settings run on the close-4 masks, the mask being level 3 (downsample 64)
# of a slide of (64 * mask width + extra_x) x (64 * mask height + extra_y) px
GRID_SETTINGS = {
    # 0.25 mpp, 224 px at 0.5 um: level 0, read 448, ref area int((16 / 64)^2) = 0
    "s1": dict(base=0.25, tile=224, spacing=0.5, overlap=0.0, min_frac=0.01),
    # 0.5 mpp, 256 px at 2 um: level 1 (2 um), ref area int((16 * 4 / 64)^2) = 1, a_t = 4
    "s2": dict(base=0.5, tile=256, spacing=2.0, overlap=0.0, min_frac=0.1),
    # s1 with 50 % overlap
    "s3": dict(base=0.25, tile=224, spacing=0.5, overlap=0.5, min_frac=0.01),
    # s1 on a slide 37 x 11 px larger: non-integer mask downsample, as on real slides
    "s4": dict(base=0.25, tile=224, spacing=0.5, overlap=0.0, min_frac=0.01, extra_px=[37, 11]),
}
DOWNSAMPLES = [1.0, 4.0, 16.0, 64.0]


def load_hs2p():
    """hs2p's tiling functions, imported from its wheel without its heavy dependencies.

    Set HS2P_WHEEL to a downloaded hs2p-6.1.0 wheel, or let this run
    `pip download hs2p==6.1.0 --no-deps`.
    """
    wheel = os.environ.get("HS2P_WHEEL")
    if wheel is None:
        d = tempfile.mkdtemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"hs2p=={HS2P_VERSION}", "--no-deps", "-d", d],
            check=True,
        )
        wheel = glob.glob(os.path.join(d, "*.whl"))[0]
    src = tempfile.mkdtemp()
    zipfile.ZipFile(wheel).extractall(src)
    # empty parent packages, so that hs2p/__init__.py (pandas, wandb, ...) is not executed
    for name in ["hs2p", "hs2p.tiling", "hs2p.wsi"]:
        m = types.ModuleType(name)
        m.__path__ = [os.path.join(src, *name.split("."))]
        sys.modules[name] = m
    from hs2p.tiling.contours import detect_contours
    from hs2p.tiling.generate import generate_tiles

    return detect_contours, generate_tiles


def contour_areas(mask: np.ndarray) -> list:
    """[x, y, w, h, area] per outer contour, area = contourArea(outer) - sum(contourArea(holes))."""
    cont, hier = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hier is None:
        return []
    hier = hier[0]
    rows = []
    for i, h in enumerate(hier):
        if h[3] != -1:
            continue
        area = cv2.contourArea(cont[i]) - sum(
            cv2.contourArea(cont[j]) for j in np.flatnonzero(hier[:, 3] == i)
        )
        x, y, w, hh = cv2.boundingRect(cont[i])
        rows.append([int(x), int(y), int(w), int(hh), float(area)])
    return sorted(rows)


def hs2p_grid(detect_contours, generate_tiles, mask: np.ndarray, st: dict) -> dict:
    h, w = mask.shape
    ex, ey = st.get("extra_px", [0, 0])
    dims = (w * 64 + ex, h * 64 + ey)
    cr = detect_contours(
        mask,
        slide_dimensions=dims,
        ref_tile_size_px=16,
        requested_spacing_um=st["spacing"],
        a_t=4,
        base_spacing_um=st["base"],
        level_downsamples=DOWNSAMPLES,
        tolerance=0.05,
    )
    g = generate_tiles(
        dims,
        cr,
        requested_tile_size_px=st["tile"],
        requested_spacing_um=st["spacing"],
        base_spacing_um=st["base"],
        level_downsamples=DOWNSAMPLES,
        overlap=st["overlap"],
        min_tissue_fraction=st["min_frac"],
        tolerance=0.05,
    )
    return {
        "n_contours": len(cr.contours),
        "read_level": int(g.read_level),
        "read_tile_size_px": int(g.read_tile_size_px),
        "tile_size_lv0": int(g.tile_size_lv0),
        "x": [int(v) for v in g.x],
        "y": [int(v) for v in g.y],
        "tissue_fractions": [float(v) for v in np.asarray(g.tissue_fractions, dtype=np.float32)],
    }


def blobs(seed: int, w: int, h: int, n_blobs: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 238.0)
    tissue = np.zeros((h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    colours = [(225, 140, 190), (150, 80, 170), (200, 110, 160), (120, 60, 150)]
    for i in range(n_blobs):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(6, w / 4), rng.uniform(6, h / 4)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img[inside] = colours[i % len(colours)]
        tissue |= inside
    # small specks (a few px) to exercise small-component removal
    for _ in range(6):
        x, y = int(rng.integers(0, w - 3)), int(rng.integers(0, h - 3))
        s = int(rng.integers(1, 4))
        img[y : y + s, x : x + s] = colours[0]
        tissue[y : y + s, x : x + s] = True
    # background: grey-level noise (low saturation) plus a little colour noise, so that only
    # a few background pixels pass the HSV test; tissue: independent noise per channel
    grey = rng.normal(0, noise, (h, w, 1)) + rng.normal(0, 1.5, (h, w, 3))
    colour = rng.normal(0, noise, (h, w, 3))
    img += np.where(tissue[:, :, None], colour, grey)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def random_colours(seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # every grey level, and colours with repeated max channels (ties in V)
    g = np.arange(256, dtype=np.uint8)
    img[0, :, :] = g[:w, None]
    img[1, :, 0] = img[1, :, 1]  # r == g
    img[2, :, 1] = img[2, :, 2]  # g == b
    img[3, :, 0] = img[3, :, 2]  # r == b
    return img


def save(name: str, arr: np.ndarray) -> str:
    fname = f"{name}.bin.gz"
    with gzip.GzipFile(HERE / fname, "wb", mtime=0) as f:
        f.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
    return fname


def main() -> None:
    detect_contours, generate_tiles = load_hs2p()
    images = {
        "blobs_a": blobs(1, 200, 150, 3, 6.0),
        "blobs_b": blobs(2, 201, 149, 5, 12.0),
        "blobs_c": blobs(3, 97, 61, 2, 20.0),
        "random": random_colours(4, 256, 64),
    }
    out = {
        "opencv_version": cv2.__version__,
        "numpy_version": np.__version__,
        "hsv_lower": [90, 8, 103],
        "hsv_upper": [180, 255, 255],
        "close_kernels": KERNELS,
        "hs2p_version": HS2P_VERSION,
        "grid_settings": GRID_SETTINGS,
        "grid_level_downsamples": DOWNSAMPLES,
        "images": {},
    }
    for name, rgb in images.items():
        h, w = rgb.shape[:2]
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        inr = cv2.inRange(hsv, np.array([90, 8, 103]), np.array([180, 255, 255]))
        smed = cv2.medianBlur(np.ascontiguousarray(hsv[:, :, 1]), 7)
        otsu_t, otsu = cv2.threshold(smed, 0, 255, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
        _, st8 = cv2.threshold(smed, 8, 255, cv2.THRESH_BINARY)
        entry = {
            "width": w,
            "height": h,
            "otsu_threshold": float(otsu_t),
            "inrange_count": int(np.count_nonzero(inr)),
            "files": {
                "rgb": save(f"{name}.rgb", rgb),
                "hsv": save(f"{name}.hsv", hsv),
                "inrange": save(f"{name}.inrange", inr),
                "smed7": save(f"{name}.smed7", smed),
                "otsu": save(f"{name}.otsu", otsu),
                "sthresh8": save(f"{name}.sthresh8", st8),
            },
        }
        for k in KERNELS:
            closed = cv2.morphologyEx(inr, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
            entry["files"][f"close{k}"] = save(f"{name}.close{k}", closed)
        # connected components of the default tissue mask (close 4): 8-connected foreground,
        # and 4-connected background (the complement), as (area, x, y, w, h) sorted
        close4 = cv2.morphologyEx(inr, cv2.MORPH_CLOSE, np.ones((4, 4), np.uint8))
        comps = {}
        for key, img, conn in [("fg8", close4, 8), ("bg4", 255 - close4, 4)]:
            n, _, stats, _ = cv2.connectedComponentsWithStats(img, connectivity=conn)
            rows = [
                [int(st[cv2.CC_STAT_AREA]), int(st[0]), int(st[1]), int(st[2]), int(st[3])]
                for st in stats[1:n]
            ]
            comps[key] = sorted(rows)
        entry["components_close4"] = comps
        entry["contour_areas"] = {"close4": contour_areas(close4), "inrange": contour_areas(inr)}
        entry["hs2p_grid"] = {
            key: hs2p_grid(detect_contours, generate_tiles, close4, st)
            for key, st in GRID_SETTINGS.items()
        }
        out["images"][name] = entry
    (HERE / "expected.json").write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()

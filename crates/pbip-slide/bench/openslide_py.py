"""Time openslide-python read_region on the coordinates written by the Rust bench.

Usage: python openslide_py.py SLIDE COORDS_DIR
Prints markdown rows: | impl | order | threads | patches | patches/s | CPU ms/patch |
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide

slide_path, coords_dir = sys.argv[1], sys.argv[2]
name = f"openslide-python {openslide.__version__} (lib {openslide.__library_version__})"
for order in ("random", "grid"):
    with open(f"{coords_dir}/{order}.txt") as f:
        coords = [tuple(map(int, line.split())) for line in f if line.strip()]
    for threads in (1, 2):
        slide = openslide.OpenSlide(slide_path)

        def read(c):
            return np.asarray(slide.read_region(c, 0, (224, 224)).convert("RGB"))

        c0 = time.process_time()
        t = time.perf_counter()
        if threads == 1:
            for c in coords:
                read(c)
        else:
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(read, coords))
        dt = time.perf_counter() - t
        cpu = (time.process_time() - c0) * 1000.0 / len(coords)
        print(f"| {name} | {order} | {threads} | {len(coords)} | {len(coords) / dt:.0f} | {cpu:.2f} |", flush=True)
        slide.close()

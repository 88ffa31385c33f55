"""Validate pbip-pyramid output with independent software (tifffile + imagecodecs).

Run once (needs `pip install numpy tifffile imagecodecs`):

    cargo run -p pbip-pyramid --example write_samples -- /tmp/pyr_samples
    python crates/pbip-pyramid/testdata/validate_tifffile.py /tmp/pyr_samples

Writes `tifffile_report.json` next to this script. Asserts fail loudly; the report records what
tifffile saw (versions, pages, tags, pixel comparisons against the formulas of
examples/write_samples.rs recomputed here with numpy).
"""

import json
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile


def page_info(p):
    xres = p.tags["XResolution"].value if "XResolution" in p.tags else None
    return {
        "shape": list(p.shape),
        "tile": list(p.tile) if p.tile else None,
        "compression": int(p.compression),
        "photometric": int(p.photometric),
        "subfiletype": int(p.subfiletype),
        "is_reduced": bool(p.is_reduced),
        "xres_px_per_cm": xres[0] / xres[1] if xres else None,
        "resolution_unit": int(p.tags["ResolutionUnit"].value) if "ResolutionUnit" in p.tags else None,
    }


def rgb_ref(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = (128.0 + 100.0 * np.sin(x / 37.0)).astype(np.uint8)
    g = (128.0 + 100.0 * np.cos(y / 29.0)).astype(np.uint8)
    b = (128.0 + 90.0 * np.sin((x + y) / 53.0)).astype(np.uint8)
    return np.stack([r, g, b], axis=-1)


def mean_half(a):
    """Rounded 2x2 mean with edge clamp (the writer's documented rule)."""
    h, w = a.shape[:2]
    p = np.pad(a.astype(np.uint32), [(0, h % 2), (0, w % 2)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    s = p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def main(sample_dir):
    d = Path(sample_dir)
    report = {
        "tifffile": tifffile.__version__,
        "imagecodecs": imagecodecs.__version__,
        "numpy": np.__version__,
    }

    # RGB JPEG pyramid
    with tifffile.TiffFile(d / "sample_rgb.tif") as tf:
        assert not tf.is_bigtiff
        pages = [page_info(p) for p in tf.pages]
        report["rgb_pages"] = pages
        series = tf.series[0]
        report["rgb_series_levels"] = [list(l.shape) for l in series.levels]
        assert [p["shape"] for p in pages] == [[700, 1000, 3], [350, 500, 3], [175, 250, 3]]
        assert all(p["compression"] == 7 and p["photometric"] == 6 for p in pages)
        assert [p["subfiletype"] for p in pages] == [0, 1, 1]
        assert all(p["tile"] == [256, 256] for p in pages)
        assert [round(p["xres_px_per_cm"], 6) for p in pages] == [20000.0, 10000.0, 5000.0]
        assert len(series.levels) == 3
        ref = rgb_ref(1000, 700)
        diffs = []
        for i, p in enumerate(tf.pages):
            got = p.asarray().astype(np.float64)
            dif = np.abs(got - ref.astype(np.float64))
            diffs.append({"level": i, "mean_abs_diff": float(dif.mean()), "max_abs_diff": float(dif.max())})
            assert dif.mean() < 4.0, (i, dif.mean())
            ref = mean_half(ref)
        report["rgb_pixel_diffs_vs_numpy_reference"] = diffs

    # u8 label mask, BigTIFF deflate
    with tifffile.TiffFile(d / "sample_mask.tiff") as tf:
        assert tf.is_bigtiff
        pages = [page_info(p) for p in tf.pages]
        report["mask_pages"] = pages
        report["mask_series_levels"] = [list(l.shape) for l in tf.series[0].levels]
        assert [p["shape"] for p in pages] == [[1100, 1500], [550, 750], [275, 375]]
        assert all(p["compression"] == 8 and p["photometric"] == 1 for p in pages)
        assert [p["subfiletype"] for p in pages] == [0, 1, 1]
        assert all(p["tile"] == [512, 512] for p in pages)
        assert [round(p["xres_px_per_cm"], 6) for p in pages] == [40000.0, 20000.0, 10000.0]
        y, x = np.mgrid[0:1100, 0:1500]
        ref = ((x // 7 + y // 5) % 3 + np.where(x > 900, 250, 0)).astype(np.uint8)
        exact = []
        for i, p in enumerate(tf.pages):
            got = p.asarray()
            ok = bool(np.array_equal(got, ref))
            exact.append({"level": i, "equal_to_numpy_nearest_reference": ok})
            assert ok, i
            ref = ref[0::2, 0::2]
        report["mask_levels_exact"] = exact

    # Optional: OpenSlide (pip install openslide-python openslide-bin).
    try:
        import openslide
    except ImportError:
        openslide = None
    if openslide is not None:
        osr = {"openslide_python": openslide.__version__, "libopenslide": openslide.__library_version__}
        s = openslide.OpenSlide(str(d / "sample_rgb.tif"))
        osr["rgb_vendor"] = s.properties.get("openslide.vendor")
        osr["rgb_level_dimensions"] = [list(x) for x in s.level_dimensions]
        osr["rgb_mpp_x"] = s.properties.get("openslide.mpp-x")
        assert s.level_count == 3
        got = np.asarray(s.read_region((0, 0), 0, (1000, 700)).convert("RGB")).astype(np.float64)
        dif = np.abs(got - rgb_ref(1000, 700).astype(np.float64))
        osr["rgb_level0_mean_abs_diff"] = float(dif.mean())
        assert dif.mean() < 4.0
        m = openslide.OpenSlide(str(d / "sample_mask.tiff"))
        osr["mask_vendor"] = m.properties.get("openslide.vendor")
        osr["mask_level_dimensions"] = [list(x) for x in m.level_dimensions]
        osr["mask_mpp_x"] = m.properties.get("openslide.mpp-x")
        y, x = np.mgrid[0:1100, 0:1500]
        ref = ((x // 7 + y // 5) % 3 + np.where(x > 900, 250, 0)).astype(np.uint8)
        got = np.asarray(m.read_region((0, 0), 0, (1500, 1100)))[..., 0]
        osr["mask_level0_exact"] = bool(np.array_equal(got, ref))
        assert osr["mask_level0_exact"]
        report["openslide"] = osr

    out = Path(__file__).with_name("tifffile_report.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")

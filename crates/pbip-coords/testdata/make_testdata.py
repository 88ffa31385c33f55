#!/usr/bin/env python3
"""Writes the pbip-coords test files with numpy (the independent reference) and `expected.json`.

Run from anywhere:  pip install numpy && python3 crates/pbip-coords/testdata/make_testdata.py
Outputs go next to this script. The Rust tests only read the outputs (no Python at test time).

Every file mimics what a real producer writes:
  * plain arrays: PBIP `load_coordinates` inputs, legacy hs2p (N, 6) float arrays;
  * hs2p 1.0 / slide2vec 1.x and hs2p 1.1 structured arrays (exact upstream dtypes);
  * PBIP-fork prototype files with an object `wsi_name` (np.save pickles the whole array),
    and our `<U64` variant;
  * hs2p >= 3 `*.coordinates.npz` (np.savez_compressed) + `*.coordinates.meta.json`;
  * text files read by np.loadtxt.
`ref_*.npy` are written by numpy for the same records our writers get in the Rust tests; the
writers' output must be byte-identical.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
expected = {"numpy_version": np.__version__, "files": {}}


def p(name):
    return os.path.join(HERE, name)


def record(name, x, y, fmt, error=None, **fields):
    entry = {"format": fmt}
    if error is not None:
        entry["error"] = error
    else:
        entry["x"] = [int(v) for v in x]
        entry["y"] = [int(v) for v in y]
        for k, v in fields.items():
            entry[k] = v
    expected["files"][name] = entry


XY = np.array([[0, 0], [224, 0], [448, 224], [70000, 123456]], dtype=np.int64)

# ---------------------------------------------------------------- plain arrays
for name, dt in [
    ("plain_i8.npy", "<i8"),
    ("plain_i4.npy", "<i4"),
    ("plain_be_i4.npy", ">i4"),
    ("plain_i8_be.npy", ">i8"),
]:
    np.save(p(name), XY.astype(dt))
    record(name, XY[:, 0], XY[:, 1], "PlainNpy")

small = np.array([[0, 1], [255, 65535], [1000, 2]], dtype=np.int64)
np.save(p("plain_u2.npy"), small.astype("<u2"))
record("plain_u2.npy", small[:, 0], small[:, 1], "PlainNpy")
np.save(p("plain_be_u2.npy"), small.astype(">u2"))
record("plain_be_u2.npy", small[:, 0], small[:, 1], "PlainNpy")
tiny = np.array([[0, 1], [127, 5]], dtype=np.int64)
np.save(p("plain_i1.npy"), tiny.astype("|i1"))
record("plain_i1.npy", tiny[:, 0], tiny[:, 1], "PlainNpy")
np.save(p("plain_u1.npy"), tiny.astype("|u1"))
record("plain_u1.npy", tiny[:, 0], tiny[:, 1], "PlainNpy")
np.save(p("plain_u8.npy"), XY.astype("<u8"))
record("plain_u8.npy", XY[:, 0], XY[:, 1], "PlainNpy")

np.save(p("plain_f8.npy"), XY.astype("<f8"))
record("plain_f8.npy", XY[:, 0], XY[:, 1], "PlainNpy")
np.save(p("plain_f4.npy"), small.astype("<f4"))
record("plain_f4.npy", small[:, 0], small[:, 1], "PlainNpy")
np.save(p("plain_f8_nonint.npy"), np.array([[0.0, 1.0], [2.5, 3.0]]))
record("plain_f8_nonint.npy", None, None, "PlainNpy", error="not an integer")

# Fortran-ordered (N, 2): x column stored first.
np.save(p("plain_fortran_i4.npy"), np.asfortranarray(XY.astype("<i4")))
record("plain_fortran_i4.npy", XY[:, 0], XY[:, 1], "PlainNpy")

# Legacy hs2p plain (N, 6) float array [x, y, tile_size_resized, level, resize_factor, target_spacing].
legacy = np.array(
    [[100, 200, 448, 0, 2.0, 0.5], [548, 200, 448, 0, 2.0, 0.5], [996, 648, 448, 0, 2.0, 0.5]],
    dtype=np.float64,
)
np.save(p("legacy_hs2p_n6.npy"), legacy)
record("legacy_hs2p_n6.npy", legacy[:, 0], legacy[:, 1], "PlainNpy")

np.save(p("plain_empty.npy"), np.zeros((0, 2), dtype=np.int64))
record("plain_empty.npy", [], [], "PlainNpy")

np.save(p("plain_negative.npy"), np.array([[10, 20], [-5, 30]], dtype=np.int64))
record("plain_negative.npy", None, None, "PlainNpy", error="negative coordinate")
expected["files"]["plain_negative.npy"]["allow_negative_x"] = [10, -5]
expected["files"]["plain_negative.npy"]["allow_negative_y"] = [20, 30]

np.save(p("plain_1col.npy"), np.array([[1], [2]], dtype=np.int64))
record("plain_1col.npy", None, None, "PlainNpy", error="at least 2 columns")
np.save(p("plain_3d.npy"), np.zeros((2, 2, 2), dtype=np.int64))
record("plain_3d.npy", None, None, "PlainNpy", error="must be 2-D")
np.save(p("plain_str.npy"), np.array([["a", "b"]]))
record("plain_str.npy", None, None, "PlainNpy", error="dtype")

# ---------------------------------------------------------------- hs2p 1.0 / slide2vec 1.x
V10 = [
    ("x", "<i8"), ("y", "<i8"), ("tile_size_resized", "<i8"), ("tile_level", "<i8"),
    ("resize_factor", "<f8"), ("tile_size_lv0", "<i8"), ("target_spacing", "<f8"),
]
v10_rows = [
    (0, 0, 448, 0, 2.0, 448, 0.5),
    (448, 0, 448, 0, 2.0, 448, 0.5),
    (896, 448, 448, 0, 2.0, 448, 0.5),
    (3584, 9000, 448, 0, 2.0, 448, 0.5),
]
arr = np.array(v10_rows, dtype=V10)
np.save(p("hs2p_v10.npy"), arr)
record(
    "hs2p_v10.npy", arr["x"], arr["y"], "Hs2pV1Npy",
    tile_size_resized=[448] * 4, tile_level=[0] * 4, resize_factor=[2.0] * 4,
    tile_size_lv0=[448] * 4, target_spacing=[0.5] * 4,
)
# Reference for write_hs2p_v1_npy (same records in the Rust test).
ref_v1_rows = [
    (12, 34, 444, 1, 1.9841269841269842, 888, 0.5),
    (1000000, 2000000, 444, 1, 1.9841269841269842, 888, 0.5),
    (0, 0, 224, 0, 1.0, 224, 0.25),
]
np.save(p("ref_hs2p_v1.npy"), np.array(ref_v1_rows, dtype=V10))
np.save(p("ref_hs2p_v1_empty.npy"), np.array([], dtype=V10))

# ---------------------------------------------------------------- hs2p 1.1
V11 = [
    ("x", "<i8"), ("y", "<i8"), ("contour_index", "<i8"), ("target_tile_size", "<i8"),
    ("target_spacing", "<f8"), ("tile_level", "<i8"), ("resize_factor", "<f8"),
    ("tile_size_resized", "<i8"), ("tile_size_lv0", "<i8"),
]
v11_rows = [
    (1024, 2048, 0, 224, 0.5, 1, 1.0, 224, 448),
    (1472, 2048, 0, 224, 0.5, 1, 1.0, 224, 448),
    (5000, 7000, 3, 224, 0.5, 1, 1.0, 224, 448),
]
arr = np.array(v11_rows, dtype=V11)
np.save(p("hs2p_v11.npy"), arr)
record(
    "hs2p_v11.npy", arr["x"], arr["y"], "Hs2pV11Npy",
    contour_index=[0, 0, 3], target_tile_size=[224] * 3, target_spacing=[0.5] * 3,
    tile_level=[1] * 3, resize_factor=[1.0] * 3, tile_size_resized=[224] * 3,
    tile_size_lv0=[448] * 3,
)

# ---------------------------------------------------------------- permuted fields, mixed widths
PERM = [
    ("target_spacing", ">f4"), ("tile_level", "|u1"), ("wsi_name", "|S16"), ("y", ">i2"),
    ("extra", "<f8"), ("x", "<u4"), ("tile_size_resized", "<i2"), ("flag", "|b1"),
]
perm_rows = [
    (0.5, 2, b"a.svs", 300, 3.25, 70000, 56, True),
    (0.25, 0, b"bb.tif", 32000, -1.0, 0, 224, False),
]
arr = np.array(perm_rows, dtype=PERM)
np.save(p("permuted_mixed.npy"), arr)
record(
    "permuted_mixed.npy", arr["x"], arr["y"], "PrototypeNpy",
    target_spacing=[0.5, 0.25], tile_level=[2, 0], tile_size_resized=[56, 224],
    wsi_name=["a.svs", "bb.tif"],
)

# Structured array with only x / y (e.g. PBIP load_coordinates input).
arr = np.array([(5, 6), (7, 8)], dtype=[("y", "<i4"), ("x", ">i8")])
np.save(p("structured_yx.npy"), arr)
record("structured_yx.npy", arr["x"], arr["y"], "StructuredNpy")

arr = np.array([(5, 6)], dtype=[("a", "<i4"), ("b", "<i4")])
np.save(p("structured_no_xy.npy"), arr)
record("structured_no_xy.npy", None, None, "StructuredNpy", error="no 'x' and 'y'")

arr = np.array([(5, 6, np.datetime64("2020-01-01"))], dtype=[("x", "<i4"), ("y", "<i4"), ("t", "<M8[D]")])
np.save(p("structured_datetime.npy"), arr)
record("structured_datetime.npy", None, None, "StructuredNpy", error="unsupported dtype")

# Header versions 2.0 (forced) and 3.0 (numpy picks it for a non-latin-1 field name).
arr = np.array([(1, 2, 3), (4, 5, 6)], dtype=[("x", "<i8"), ("y", "<i8"), ("tile_level", "<i8")])
with open(p("structured_v2_header.npy"), "wb") as fh:
    np.lib.format.write_array(fh, arr, version=(2, 0))
record("structured_v2_header.npy", arr["x"], arr["y"], "StructuredNpy", tile_level=[3, 6])
arr = np.array([(1, 2, 9)], dtype=[("x", "<i8"), ("y", "<i8"), ("\u540d\u524d", "<i8")])
np.save(p("structured_v3_header.npy"), arr)
with open(p("structured_v3_header.npy"), "rb") as fh:
    assert fh.read(8)[6] == 3, "numpy did not write a version 3 header"
record("structured_v3_header.npy", arr["x"], arr["y"], "StructuredNpy")

# ---------------------------------------------------------------- PBIP fork prototype files
FORK = [
    ("x", "<i4"), ("y", "<i4"), ("tile_level", "<i4"), ("tile_size_resized", "<i4"),
    ("tile_size", "<i4"), ("tile_size_lv0", "<i4"), ("resize_factor", "<f4"), ("wsi_name", "O"),
]
fork_rows = [
    (0, 7, 0, 224, 224, 224, 1.0, "slide_0.tif"),
    (1500, 2600, 0, 224, 224, 224, 1.0, "slide_0.tif"),
    (33, 44, 0, 224, 224, 224, 1.0, "slide_12_é.tif"),
]
# As extract_patches.py::save_coordinates_slide2vec does: structured array with an object field, np.save.
arr = np.array(fork_rows, dtype=FORK)
np.save(p("pbip_fork_pickled.npy"), arr)
record(
    "pbip_fork_pickled.npy", arr["x"], arr["y"], "PickledPrototypeNpy",
    tile_level=[0] * 3, tile_size_resized=[224] * 3, target_tile_size=[224] * 3,
    tile_size_lv0=[224] * 3, resize_factor=[1.0] * 3,
    wsi_name=["slide_0.tif", "slide_0.tif", "slide_12_é.tif"],
)
# Pickled file whose payload is not the fork's record list (a plain object array of strings).
np.save(p("pickled_object_array.npy"), np.array(["a", "b"], dtype=object))
record("pickled_object_array.npy", None, None, "PickledPrototypeNpy", error="pickle")
# Structured object array whose object field holds a non-string (a list).
arr = np.empty(1, dtype=[("x", "<i4"), ("y", "<i4"), ("wsi_name", "O")])
arr[0] = (1, 2, [1, 2])
np.save(p("pickled_bad_field.npy"), arr)
record("pickled_bad_field.npy", None, None, "PickledPrototypeNpy", error="unexpected list")

# Older numpy (1.x) pickled with protocol 3 (and Python 2 era files with protocol 2):
# same header, the array pickled with another protocol.
import pickle
from numpy.lib import format as npformat

for proto in (2, 3):
    name = f"pbip_fork_pickled_p{proto}.npy"
    arr = np.array(fork_rows[:2], dtype=FORK)
    with open(p(name), "wb") as fh:
        npformat.write_array_header_1_0(fh, npformat.header_data_from_array_1_0(arr))
        pickle.dump(arr, fh, protocol=proto)
    record(
        name, arr["x"], arr["y"], "PickledPrototypeNpy",
        wsi_name=["slide_0.tif", "slide_0.tif"], tile_size_resized=[224, 224],
    )

# Our format: same fields, wsi_name '<U64'. Also the reference for write_prototype_npy.
PROTO = [
    ("x", "<i4"), ("y", "<i4"), ("tile_level", "<i4"), ("tile_size_resized", "<i4"),
    ("tile_size", "<i4"), ("tile_size_lv0", "<i4"), ("resize_factor", "<f4"), ("wsi_name", "<U64"),
]
long_name = "n" * 60 + ".tif"  # exactly 64 characters
proto_rows = [
    (0, 7, 0, 224, 224, 224, 1.0, "slide_0.tif"),
    (1500, 2600, 1, 112, 224, 448, 0.5, "rust_slide_0_é.svs"),
    (2147483647, 5, 0, 224, 224, 224, 1.0, long_name),
]
arr = np.array(proto_rows, dtype=PROTO)
np.save(p("ref_prototype.npy"), arr)
record(
    "ref_prototype.npy", arr["x"], arr["y"], "PrototypeNpy",
    tile_level=[0, 1, 0], tile_size_resized=[224, 112, 224], target_tile_size=[224] * 3,
    tile_size_lv0=[224, 448, 224], resize_factor=[1.0, 0.5, 1.0],
    wsi_name=["slide_0.tif", "rust_slide_0_é.svs", long_name],
)
np.save(p("ref_prototype_empty.npy"), np.array([], dtype=PROTO))
record("ref_prototype_empty.npy", [], [], "PrototypeNpy")
# A big-endian unicode variant.
arr_be = np.array(proto_rows[:2], dtype=[(n, t.replace("<", ">")) for n, t in PROTO])
np.save(p("prototype_be_u64.npy"), arr_be)
record(
    "prototype_be_u64.npy", arr_be["x"], arr_be["y"], "PrototypeNpy",
    wsi_name=["slide_0.tif", "rust_slide_0_é.svs"],
)

# ---------------------------------------------------------------- hs2p >= 3 npz + meta json
n = 5
x = np.array([0, 888, 1776, 0, 888], dtype=np.int64)
y = np.array([0, 0, 0, 888, 888], dtype=np.int64)
tf = np.array([1.0, 0.5, 0.25, 0.75, 0.125], dtype=np.float32)
np.savez_compressed(
    p("sample.coordinates.npz"),
    tile_index=np.arange(n, dtype=np.int32), x=x, y=y, tissue_fractions=tf,
)
meta = {
    "provenance": {
        "sample_id": "sample", "image_path": "/data/sample.svs", "mask_path": None,
        "backend": "openslide", "requested_backend": "auto", "mask_backend": None,
        "requested_mask_backend": None,
    },
    "slide": {"dimensions": [4000, 3000], "base_spacing_um": 0.252, "level_downsamples": [1.0, 4.0, 16.0]},
    "tiling": {
        "requested_tile_size_px": 224, "requested_spacing_um": 0.5, "read_level": 0,
        "read_tile_size_px": 444, "read_spacing_um": 0.252, "tile_size_lv0": 444,
        "tolerance": 0.05, "step_px_lv0": 444, "overlap": 0.0, "min_tissue_fraction": 0.1,
        "is_within_tolerance": True, "n_tiles": n,
    },
    "segmentation": {
        "tissue_method": "hsv", "requested_seg_downsample": 64, "seg_downsample": 64,
        "seg_level": 2, "seg_spacing_um": 16.0, "sthresh": 8, "sthresh_up": 255, "mthresh": 7,
        "close": 4, "mask_path": None, "ref_tile_size_px": 16, "tissue_mask_tissue_value": None,
        "mask_level": None, "mask_spacing_um": None,
    },
    "filtering": {
        "a_t": 4, "a_h": 2, "filter_white": False, "filter_black": False, "white_threshold": 220,
        "black_threshold": 25, "fraction_threshold": 0.9, "filter_grayspace": False,
        "grayspace_saturation_threshold": 0.05, "grayspace_fraction_threshold": 0.6,
        "filter_blur": False, "blur_threshold": 50.0, "qc_spacing_um": 2.0,
    },
    "artifact": {
        "coordinate_space": "level0_px", "tile_order": "x_then_y", "annotation": None,
        "selection_strategy": None, "output_mode": None,
    },
}
with open(p("sample.coordinates.meta.json"), "w") as fh:
    fh.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
record(
    "sample.coordinates.npz", x, y, "Hs2pNpz",
    tile_level=[0] * n, tile_size_resized=[444] * n, target_tile_size=[224] * n,
    tile_size_lv0=[444] * n, target_spacing=[0.5] * n, tile_index=list(range(n)),
    tissue_fraction=[float(v) for v in tf],
)
expected["files"]["sample.coordinates.meta.json"] = dict(expected["files"]["sample.coordinates.npz"])

# Uncompressed variant (np.savez) whose meta says level 1.
np.savez(p("stored.coordinates.npz"), tile_index=np.arange(2, dtype=np.int32), x=x[:2], y=y[:2],
         tissue_fractions=tf[:2])
meta2 = json.loads(json.dumps(meta))
meta2["tiling"].update({"read_level": 1, "read_tile_size_px": 111, "n_tiles": 2})
with open(p("stored.coordinates.meta.json"), "w") as fh:
    fh.write(json.dumps(meta2, indent=2, sort_keys=True) + "\n")
record("stored.coordinates.npz", x[:2], y[:2], "Hs2pNpz", tile_level=[1, 1], tile_size_resized=[111, 111])

# npz whose meta json is missing.
np.savez_compressed(p("nometa.coordinates.npz"), tile_index=np.arange(1, dtype=np.int32),
                    x=x[:1], y=y[:1], tissue_fractions=tf[:1])
record("nometa.coordinates.npz", None, None, "Hs2pNpz", error="not found")

# Reference npz members for the writer test (same arrays as the Rust test passes).
np.savez_compressed(
    p("ref_hs2p_write.npz"),
    tile_index=np.arange(3, dtype=np.int32),
    x=np.array([10, 20, 30], dtype=np.int64), y=np.array([40, 50, 60], dtype=np.int64),
    tissue_fractions=np.array([0.5, 1.0, 0.25], dtype=np.float32),
)

# ---------------------------------------------------------------- text
with open(p("coords.txt"), "w") as fh:
    fh.write("# x y (level-0 top-left)\n\n0 0\n224 0\n448\t224\n\n70000   123456\n")
with open(p("coords.csv"), "w") as fh:
    fh.write("x,y\n0,0\n224,0\n448,224\n70000,123456\n")
for name in ("coords.txt", "coords.csv"):
    arr = np.loadtxt(p(name), delimiter="," if name.endswith("csv") else None,
                     skiprows=1 if name.endswith("csv") else 0, comments="#").astype(np.int64)
    record(name, arr[:, 0], arr[:, 1], "Text")
with open(p("coords_bad.txt"), "w") as fh:
    fh.write("0 0\n1 abc\n")
record("coords_bad.txt", None, None, "Text", error="not a number")

# ---------------------------------------------------------------- sanity: our expectations match numpy
for name, e in expected["files"].items():
    if "error" in e or not name.endswith(".npy"):
        continue
    a = np.load(p(name), allow_pickle=True)
    if a.dtype.names:
        assert list(a["x"]) == e["x"] and list(a["y"]) == e["y"], name
    else:
        a = a.reshape(-1, a.shape[-1] if a.ndim == 2 else 2)
        assert [int(v) for v in a[:, 0]] == e["x"], name

with open(p("expected.json"), "w", encoding="utf-8") as fh:
    json.dump(expected, fh, indent=1, sort_keys=True, ensure_ascii=False)
    fh.write("\n")
print(f"wrote {len(expected['files'])} cases with numpy {np.__version__}", file=sys.stderr)

#!/usr/bin/env python3
"""Checks that every geometry of the given GeoJSON files is valid OGC geometry per shapely.

Used by the tests (pbip-post GeoJSON on random masks, the `pbip demo` outputs): an independent
implementation (shapely -> GEOS, the JTS port) judges pbip's polygons. Exit status 0 when all are
valid, 1 when one is not (each printed with shapely's explanation), 3 when shapely is missing.
"""
import json
import sys

try:
    import shapely
    from shapely.geometry import shape
    from shapely.validation import explain_validity
except ImportError:
    sys.stderr.write(
        "shapely is not installed for %s: run `%s -m pip install shapely`, or set PBIP_PYTHON "
        "to a Python that has it (.ci/run installs one under ~/.cache/pbip-py)\n"
        % (sys.executable, sys.executable)
    )
    sys.exit(3)

bad = 0
count = 0
for path in sys.argv[1:]:
    with open(path) as f:
        doc = json.load(f)
    feats = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
    for i, feat in enumerate(feats):
        geom = shape(feat["geometry"])
        count += 1
        if not geom.is_valid:
            bad += 1
            print("%s feature %d (%s): %s" % (path, i, geom.geom_type, explain_validity(geom)))
print("shapely %s: %d geometries, %d invalid" % (shapely.__version__, count, bad))
if count == 0:
    print("no geometry to check: a test that checks nothing passes nothing")
    sys.exit(1)
sys.exit(1 if bad else 0)

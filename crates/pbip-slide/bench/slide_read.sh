#!/usr/bin/env bash
# Patch-read benchmark: pure Rust vs the OpenSlide backend (libloading) vs openslide-python, on
# the same slides and the same coordinates (random and grid order, 224-px patches at level 0,
# 1 and 2 threads). Prints a markdown table per slide.
#
# Slides: a generated 8192x8192 JPEG pyramid (YCbCr 4:2:0 + JPEGTables, 256-px tiles, whose
# pixels are CMU-1's tissue mirror-tiled) and the real Aperio slide
# ../shared/data/CMU-1-Small-Region.svs (small: 130 tiles, so every cache holds all of it).
# openslide-python and openslide-bin (OpenSlide 4.0.1) are installed into a venv under /tmp;
# the pbip OpenSlide backend is run against the system libopenslide and, when the wheel is
# there, against the wheel's libopenslide.so.1 (PBIP_OPENSLIDE_LIB) too.
#
# Usage (from anywhere): crates/pbip-slide/bench/slide_read.sh   [env: N, WORK, VENV, CARGO_TARGET_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pbip-target-slide}"
N="${N:-2000}"
WORK="${WORK:-$CARGO_TARGET_DIR/slide-bench}"
VENV="${VENV:-/tmp/pbip-slide-bench-venv}"
mkdir -p "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import openslide, numpy" 2>/dev/null \
  || "$VENV/bin/pip" install -q "openslide-python==1.4.*" "openslide-bin==4.0.*" numpy
WHEEL_LIB="$("$VENV/bin/python" -c 'import openslide_bin, os; print(os.path.join(os.path.dirname(openslide_bin.__file__), "libopenslide.so.1"))' 2>/dev/null || true)"

cargo bench -p pbip-slide --bench slide_read --no-run
BENCH_ARGS=(-p pbip-slide --bench slide_read --)

CMU1="$ROOT/../shared/data/CMU-1-Small-Region.svs"
SLIDES=("$WORK/bench-slide.tif")
TEXTURE=()
if [ -f "$CMU1" ]; then
  SLIDES+=("$CMU1")
  TEXTURE=(--texture-from "$CMU1")
fi
# The generated slide is written on first use (by the Rust bench); delete it to regenerate.

echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
for SLIDE in "${SLIDES[@]}"; do
  COORDS="$WORK/coords-$(basename "$SLIDE")"
  echo
  echo "### $(basename "$SLIDE")"
  echo
  echo "| implementation | order | threads | patches | patches/s | CPU ms/patch |"
  echo "|---|---|---|---|---|---|"
  cargo bench -q "${BENCH_ARGS[@]}" --slide "$SLIDE" --n "$N" --coords-out "$COORDS" "${TEXTURE[@]}"
  if [ -n "$WHEEL_LIB" ] && [ -f "$WHEEL_LIB" ]; then
    PBIP_OPENSLIDE_LIB="$WHEEL_LIB" cargo bench -q "${BENCH_ARGS[@]}" --slide "$SLIDE" --n "$N" --backends openslide
  fi
  "$VENV/bin/python" "$HERE/openslide_py.py" "$SLIDE" "$COORDS"
done

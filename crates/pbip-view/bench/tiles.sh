#!/usr/bin/env bash
# Tile benchmark of `pbip view`: random DeepZoom tiles of the highest level per second, pbip view
# over HTTP vs openslide-python's DeepZoomGenerator.get_tile in process, on the same generated
# slide in the same run, plus the server's peak RSS while fetching random tiles and panning.
# Not part of CI (a few minutes on 2 cores; the slide is written once, ~1 GB for 40k²).
#
#   crates/pbip-view/bench/tiles.sh   [env: SIDE (40000), N (1000), TILE (254), OVERLAP (1), WORK, VENV, PBIP_BIN, VIEW_LOAD]
#
# openslide-python and openslide-bin (OpenSlide 4) are installed from PyPI into a throw-away venv
# under /tmp. PBIP_BIN: a prebuilt pbip binary (skips `cargo build --release -p pbip`). VIEW_LOAD:
# a prebuilt examples/view_load.rs, the Rust HTTP client of the second set of pbip rows (skips
# `cargo build --release -p pbip-view --example view_load`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
cd "$ROOT"
SIDE="${SIDE:-40000}"
N="${N:-1000}"
WORK="${WORK:-/tmp/pbip-view-bench}"
VENV="${VENV:-/tmp/pbip-view-bench-venv}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$WORK"

if [ -z "${PBIP_BIN:-}" ]; then
  cargo build --release -p pbip
  PBIP_BIN="$TARGET/release/pbip"
fi
SLIDE="$WORK/bench_${SIDE}.tif"
if [ ! -f "$SLIDE" ]; then
  cargo build --release -p pbip-view --example view_bench_slide
  "$TARGET/release/examples/view_bench_slide" "$SLIDE" "$SIDE"
fi

if [ -z "${VIEW_LOAD:-}" ]; then
  cargo build --release -p pbip-view --example view_load
  VIEW_LOAD="$TARGET/release/examples/view_load"
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import openslide, PIL" 2>/dev/null \
  || "$VENV/bin/pip" install -q "openslide-python==1.4.*" "openslide-bin==4.0.*"

echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "pbip: $("$PBIP_BIN" --version)"
"$VENV/bin/python" "$HERE/deepzoom_py.py" "$SLIDE" "$PBIP_BIN" "$N" "$VIEW_LOAD"

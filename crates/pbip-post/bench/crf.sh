#!/usr/bin/env bash
# CRF benchmark: pbip-post dense_crf vs pydensecrf2 on the same 1024x1024 image, 2 classes, 5 iterations,
# same parameters (sxy 3 / compat 3, bilateral sxy 80 / srgb 13 / compat 10), in the same run.
# Usage: crates/pbip-post/bench/crf.sh
# numpy + pydensecrf2 (the reference being measured against, never a pbip dependency) are installed
# from PyPI into a throw-away venv (PBIP_BENCH_VENV, default /tmp/pbip-crf-venv).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CRATE="$(dirname "$HERE")"
VENV=${PBIP_BENCH_VENV:-/tmp/pbip-crf-venv}
if ! "$VENV/bin/python" -c "import numpy, pydensecrf.densecrf" >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet numpy pydensecrf2
fi
PY="$VENV/bin/python"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
"$PY" "$HERE/crf_ref.py" gen "$DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pbip-target/pbip-post}"
cargo build --quiet --release --manifest-path "$CRATE/Cargo.toml" --example crf_bench
# pydensecrf is single-threaded: compare with one rayon thread first, then with all cores.
for threads in 1 "$(nproc)"; do
  echo "== pbip-post with RAYON_NUM_THREADS=$threads (nproc $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)) =="
  RAYON_NUM_THREADS=$threads "$CARGO_TARGET_DIR/release/examples/crf_bench" "$DIR"
  "$PY" "$HERE/crf_ref.py" run "$DIR"
done

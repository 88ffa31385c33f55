#!/usr/bin/env bash
# CRF benchmark: pbip-post dense_crf vs pydensecrf2 on the same 1024x1024 image, 2 classes, 5 iterations.
# Usage: crates/pbip-post/bench/crf.sh   (from anywhere; needs python3 + pip, installs numpy pydensecrf2)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CRATE="$(dirname "$HERE")"
pip install --quiet numpy pydensecrf2
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
python3 "$HERE/crf_ref.py" gen "$DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/pbip-target/pbip-post}"
cargo build --quiet --release --manifest-path "$CRATE/Cargo.toml" --example crf_bench
# pydensecrf is single-threaded: compare with one rayon thread first, then with all cores.
for threads in 1 "$(nproc)"; do
  echo "== pbip-post with RAYON_NUM_THREADS=$threads (nproc $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)) =="
  RAYON_NUM_THREADS=$threads "$CARGO_TARGET_DIR/release/examples/crf_bench" "$DIR"
  python3 "$HERE/crf_ref.py" run "$DIR"
done

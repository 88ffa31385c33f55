#!/usr/bin/env bash
# MiT ClassNet benchmark: every compiled burn backend next to PyTorch CPU, same model, same run.
#
#   bash crates/pbip-model/bench/run.sh [mit_b1]
#
# PyTorch is installed from PyPI into a throw-away venv under /tmp (PBIP_BENCH_VENV); it is only the
# reference being compared against, never a dependency of pbip. Env:
#   PBIP_BENCH_PROFILE  cargo profile for the burn side (default `bench` = release settings; `dev`
#                       reuses the test build, whose dependencies are also built at opt-level 3)
#   PBIP_BENCH_FEATURES extra cargo features, e.g. `tch` or `wgpu`
#   PBIP_BENCH_DEVICES  devices to time, comma-separated `device:` spellings (default `cpu`; with
#                       `tch`: e.g. cpu,tch-cpu). With `tch` the venv is PyTorch 2.9.0 (what burn-tch
#                       links) under ~/.cache/pbip-torch, and the same PyTorch is the reference.
#   PBIP_BENCH_OPS      non-empty: also time single ops (benches/op_probe.rs vs bench/torch_op_probe.py)
#   CARGO_TARGET_DIR    as usual
set -euo pipefail
VARIANT=${1:-mit_b1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
VENV=${PBIP_BENCH_VENV:-/tmp/pbip-bench-venv}
TORCH_PIN=torch
case ",${PBIP_BENCH_FEATURES:-}," in
  *,tch,*)
    VENV=${PBIP_BENCH_VENV:-$HOME/.cache/pbip-torch}
    TORCH_PIN=torch==2.9.0
    export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 ;;
esac
PROFILE=${PBIP_BENCH_PROFILE:-bench}
OUT=$(mktemp -d /tmp/pbip-bench.XXXXXX)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "installing torch (PyPI) into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_PIN" >&2
fi

FEAT=()
if [ -n "${PBIP_BENCH_FEATURES:-}" ]; then FEAT=(--features "$PBIP_BENCH_FEATURES"); fi
(cd "$ROOT" && cargo bench -p pbip-model --bench mit_bench --profile "$PROFILE" "${FEAT[@]}" -- "$VARIANT") \
  | tee "$OUT/burn.txt" >&2
"$VENV/bin/python" "$HERE/torch_mit_bench.py" "$VARIANT" | tee "$OUT/torch.txt" >&2
if [ -n "${PBIP_BENCH_OPS:-}" ]; then
  echo "== single ops, burn flex" >&2
  (cd "$ROOT" && cargo bench -p pbip-model --bench op_probe --profile "$PROFILE") >&2
  echo "== single ops, pytorch" >&2
  "$VENV/bin/python" "$HERE/torch_op_probe.py" >&2 2>/dev/null
fi

echo
echo "$VARIANT, 224 px, $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -h '^# ' "$OUT/burn.txt" "$OUT/torch.txt" || true
REF=$(awk '/^RESULT pytorch-cpu/ {print $4}' "$OUT/torch.txt")
REFI=$(awk '/^RESULT pytorch-cpu/ {print $5}' "$OUT/torch.txt")
printf '| %-12s | %-19s | %-20s | %-21s | %-14s | %-14s |\n' backend "train step b10 (ms)" "inference b32 (ms)" "inference (img/s)" "train / torch" "infer / torch"
echo "|--------------|---------------------|----------------------|-----------------------|----------------|----------------|"
cat "$OUT/burn.txt" "$OUT/torch.txt" | awk -v ref="$REF" -v refi="$REFI" '/^RESULT/ {
  r1 = (ref > 0) ? sprintf("%.2fx", $4 / ref) : "n/a";
  r2 = (refi > 0) ? sprintf("%.2fx", $5 / refi) : "n/a";
  printf "| %-12s | %19s | %20s | %21s | %14s | %14s |\n", $2, $4, $5, $6, r1, r2 }'
rm -rf "$OUT"

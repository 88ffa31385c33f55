#!/usr/bin/env bash
# Real-tissue weak-label benchmark: builds the data (build.py), runs the whole chain with the CPU
# preset exactly as a user would, and prints one table.
#
#   bash bench/real-tissue/run.sh [OUT]            (default OUT: /tmp/pbip-real-tissue)
#
# Environment:
#   BENIGN=SLIDE:MPP        benign source slide (default: ../shared/data/CMU-1-Small-Region.svs, a real
#                           Aperio H&E slide, read with `pbip read-region`; its mpp is read from the slide)
#   TUMOUR="IMG:MPP ..."    tumour source image(s) (default: the carcinoma H&E image shipped in the
#                           tiatoolbox wheel on PyPI, tiatoolbox/data/target_image.png, 40x ~0.25 um/px)
#   STAIN_JITTER=0.03       per-slide stain variation of the generated slides (build.py --stain-jitter)
#   SEED=0                  data seed;  PRESET=configs/cpu.yaml;  EXTRA="--set k=v ..." extra overrides
#   PBIP=path/to/pbip       binary (default: cargo build --release, target/release/pbip)
#
# Steps timed separately: data build (not part of the 30-minute budget), `pbip run` (stages 0-4:
# the budget), `pbip infer` on the test slides (stage 5, scored with --gt-dir).
# Needs python3 with pip (numpy, scipy, pillow, tifffile, imagecodecs are installed into a venv).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-/tmp/pbip-real-tissue}"
SEED="${SEED:-0}"
STAIN_JITTER="${STAIN_JITTER:-0.03}"
PRESET="${PRESET:-$ROOT/configs/cpu.yaml}"
EXTRA="${EXTRA:-}"
VENV="${PBIP_BENCH_VENV:-/tmp/pbip-bench-venv-data}"
mkdir -p "$OUT"

if [ -z "${PBIP:-}" ]; then
  (cd "$ROOT" && cargo build --release -p pbip >&2)
  PBIP="$ROOT/target/release/pbip"
fi

if ! "$VENV/bin/python" -c "import numpy, scipy, PIL, tifffile, imagecodecs" >/dev/null 2>&1; then
  echo "installing numpy scipy pillow tifffile imagecodecs into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy scipy pillow tifffile imagecodecs >&2
fi
PY="$VENV/bin/python"

SRC="$OUT/sources"
mkdir -p "$SRC"
# Benign source: a level-0 region of a real slide, exported by pbip itself.
BENIGN="${BENIGN:-$ROOT/../shared/data/CMU-1-Small-Region.svs}"
BENIGN_SLIDE="${BENIGN%%:*}"
if [ ! -f "$SRC/benign.png" ]; then
  read -r W H MPP < <("$PBIP" slide-info "$BENIGN_SLIDE" --json | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print(d["width"], d["height"], d.get("mpp_x") or "")')
  [ -n "$MPP" ] || { echo "$BENIGN_SLIDE has no mpp: give BENIGN=SLIDE:MPP" >&2; exit 1; }
  "$PBIP" read-region "$BENIGN_SLIDE" 0 0 0 "$W" "$H" "$SRC/benign.png" >&2
  echo "$MPP" > "$SRC/benign.mpp"
fi
BENIGN_MPP="${BENIGN#*:}"
[ "$BENIGN_MPP" = "$BENIGN" ] && BENIGN_MPP="$(cat "$SRC/benign.mpp")"
# Tumour source: a real carcinoma H&E image from a public wheel (no network besides PyPI).
if [ -z "${TUMOUR:-}" ]; then
  if [ ! -f "$SRC/tumour.png" ]; then
    T="$(mktemp -d)"
    python3 -m pip download -q --no-deps --dest "$T" tiatoolbox==2.1.3 >&2
    (cd "$T" && unzip -q -o tiatoolbox-*.whl tiatoolbox/data/target_image.png)
    cp "$T/tiatoolbox/data/target_image.png" "$SRC/tumour.png"
    rm -rf "$T"
  fi
  TUMOUR="$SRC/tumour.png:0.25"
fi

DATA="$OUT/data"
SIG="seed=$SEED stain=$STAIN_JITTER benign=$BENIGN tumour=$TUMOUR"
if [ ! -f "$DATA/config.yaml" ] || [ "$(cat "$DATA/.signature" 2>/dev/null)" != "$SIG" ]; then
  rm -rf "$DATA"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" "$HERE/build.py" --out "$DATA" --benign "$SRC/benign.png" --benign-mpp "$BENIGN_MPP" \
    --tumour $TUMOUR --stain-jitter "$STAIN_JITTER" --seed "$SEED" >&2
  echo "$SIG" > "$DATA/.signature"
  echo "data built in $(( $(date +%s) - t0 )) s" >&2
fi

WORK="$DATA/work"
rm -rf "$WORK" "$OUT/infer"
t0=$(date +%s)
# shellcheck disable=SC2086
/usr/bin/time -v "$PBIP" run --config "$PRESET" --config "$DATA/config.yaml" $EXTRA 2> "$OUT/run.time" | tee "$OUT/run.log" >&2
RUN_S=$(( $(date +%s) - t0 ))
TEST=$("$PY" -c "
import csv; print(' '.join('$DATA/slides/'+r['test']+'.tif' for r in csv.DictReader(open('$DATA/split.csv')) if r['test']))")
t0=$(date +%s)
# shellcheck disable=SC2086
"$PBIP" infer --config "$PRESET" --config "$DATA/config.yaml" $EXTRA --weights "$WORK/checkpoints/best.safetensors" \
  --output-dir "$OUT/infer" --gt-dir "$DATA/masks" $TEST > "$OUT/infer.log" 2>&1 || { tail -20 "$OUT/infer.log" >&2; exit 1; }
INFER_S=$(( $(date +%s) - t0 ))

"$PY" - "$WORK" "$OUT/infer/predictions/scores.csv" "$RUN_S" "$INFER_S" <<'PY'
import csv, json, sys
work, scores, run_s, infer_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = json.load(open(f"{work}/results/metrics.json"))
t = json.load(open(f"{work}/checkpoints/train_summary.json"))
v = t.get("best_val") or {}
def miou(k): return m[k]["miou"]
def tum(k): return m[k]["iou"].get("tumor")
auc = (m["deployable"]["slide_classification"].get("auc") or {}).get("macro_auc")
rows = list(csv.DictReader(open(scores)))
tum_rows = [r for r in rows if r["positive_iou"]]
ben_rows = [r for r in rows if not r["positive_iou"]]
mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
print()
print(f"| measure | pbip (configs/cpu.yaml) | best constant map | leak reference | target |")
print(f"|---|---|---|---|---|")
print(f"| stages 0-4 wall time | {run_s/60:.1f} min | | | <= 30 min |")
print(f"| val slide AUC (best checkpoint, step {v.get('step')}) | {v.get('auc') or float('nan'):.3f} | 0.5 | | >= 0.90 |")
print(f"| val deployable mIoU | {v.get('miou') or float('nan'):.3f} | {v.get('constant_map_miou') or float('nan'):.3f} | | |")
print(f"| test deployable mIoU, all {m['patches']} patches | {miou('deployable'):.3f} | {miou('best_constant_map'):.3f} ({m['best_constant_map']['class']}) | {miou('leak_reference'):.3f} | >= 0.70 |")
print(f"| test tumour IoU (patches) | {tum('deployable'):.3f} | {tum('best_constant_map'):.3f} | {tum('leak_reference'):.3f} | |")
print(f"| test slide AUC | {auc if auc is not None else float('nan'):.3f} | 0.5 | | |")
print(f"| label-masked mIoU (leaks the label) | {miou('label_masked'):.3f} | | | |")
print(f"| whole-slide tumour IoU, {len(tum_rows)} tumour slides (pbip infer, {infer_s} s) | {mean([float(r['positive_iou']) for r in tum_rows]):.3f} (min {min(float(r['positive_iou']) for r in tum_rows):.3f}) | all tissue tumour: {mean([float(r['trivial_iou']) for r in tum_rows]):.3f} | | >= 0.60 |")
print(f"| benign-slide tissue called tumour, {len(ben_rows)} slides | {100*mean([float(r['false_positive_tissue_fraction']) for r in ben_rows]):.2f}% (max {100*max(float(r['false_positive_tissue_fraction']) for r in ben_rows):.2f}%) | all tissue tumour: 100% | | <= 10% |")
print(f"| learning verdict (train_summary.json) | {t.get('learning')} | | | |")
PY
grep -E "Maximum resident" "$OUT/run.time" | sed 's/^\s*/peak RSS of pbip run: /' || true

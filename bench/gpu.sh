#!/usr/bin/env bash
# GPU check and benchmark, one prepared run for a machine with an NVIDIA GPU (it needs the driver;
# no network and no CUDA toolkit: the CUDA runtime comes with the PyTorch wheels).
#
#   bash bench/gpu.sh            # build (tch, optionally wgpu), parity on the GPU, timings, one table
#
# What it runs, in one process tree, and prints as one table at the end:
#   1. the parity tests on the GPU (PBIP_TEST_DEVICE=cuda: forward <= 1e-4, gradients <= 1e-3 of
#      the upstream PyTorch fixture);
#   2. MiT-b1 at 224 px: train step (batch 10: forward, BCE + CAM terms, backward, AdamW) and
#      inference (batch 32) for pbip on libtorch CUDA (`tch`), pbip on wgpu (when built) and PyTorch
#      CUDA eager, same model, same run; each in f32 and in bf16 mixed precision (pbip
#      `precision: bf16` vs torch.autocast(bfloat16)), every row compared with PyTorch's row of
#      the same precision;
#   3. `pbip infer` of a generated 40k x 40k slide on the GPU (wall time, patches/s).
#
# Needs a python whose torch is 2.9.0 (the version burn-tch links; a CUDA wheel from PyPI):
# PBIP_PYTHON, else ~/.cache/pbip-torch/bin/python, else python3. Without one and with network it
# installs torch==2.9.0 into ~/.cache/pbip-torch. Env:
#   PBIP_GPU_DEVICE   device to test (default cuda; `tch-cpu` runs the same flow on the CPU with
#                     small sizes, to check the script on a machine without a GPU)
#   PBIP_GPU_WGPU=1   also build and time the wgpu backend (+25-50 min of build on 2 cores)
#   PBIP_GPU_SIDE     slide side for step 3 (default 40000; 8000 with tch-cpu)
#   PBIP_GPU_DIR      scratch folder (default /tmp/pbip-gpu-bench)
#   CARGO_TARGET_DIR  as usual (default ~/.cache/pbip-tch-target)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DEV=${PBIP_GPU_DEVICE:-cuda}
DIR=${PBIP_GPU_DIR:-/tmp/pbip-gpu-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pbip-tch-target}
mkdir -p "$DIR"
ROWS="$DIR/rows.txt"
: >"$ROWS"
row() { printf '| %-34s | %-60s |\n' "$1" "$2" | tee -a "$ROWS"; }
if [ "$DEV" = tch-cpu ]; then SIDE=${PBIP_GPU_SIDE:-8000}; ITERS=3; TORCH_DEV=cpu
else SIDE=${PBIP_GPU_SIDE:-40000}; ITERS=20; TORCH_DEV=cuda; fi

# --- python with torch 2.9.0 ---------------------------------------------------------------------
PY=${PBIP_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$HOME/.cache/pbip-torch/bin/python" ]; then PY=$HOME/.cache/pbip-torch/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.9.0") else 1)' 2>/dev/null; then
  echo "no torch 2.9.0 in $PY: installing it into ~/.cache/pbip-torch (needs network)" >&2
  python3 -m venv "$HOME/.cache/pbip-torch" && "$HOME/.cache/pbip-torch/bin/pip" install -q torch==2.9.0 || {
    echo "error: bench/gpu.sh needs PyTorch 2.9.0 (pip install torch==2.9.0) and could not install it" >&2
    exit 1
  }
  PY=$HOME/.cache/pbip-torch/bin/python
fi
VENV=$(cd "$(dirname "$PY")/.." && pwd)
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1
echo "== machine" >&2
nvidia-smi -L 2>/dev/null >&2 || echo "(nvidia-smi not found)" >&2
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())' >&2

# --- build ---------------------------------------------------------------------------------------
echo "== build (features tch) into $CARGO_TARGET_DIR" >&2
t0=$(date +%s)
cargo build --release -p pbip --features tch >&2 &&
  cargo build --release -p pbip-pipeline --features tch --example bench_slide >&2 &&
  cargo test --release -p pbip-model --features tch --no-run >&2 &&
  cargo bench -p pbip-model --bench mit_bench --features tch --no-run >&2 || { echo "error: build failed" >&2; exit 1; }
row "build (tch)" "$(( $(date +%s) - t0 )) s"
PBIP="$CARGO_TARGET_DIR/release/pbip"
"$PBIP" doctor >&2

BENCH_DEVICES=$DEV
if [ -n "${PBIP_GPU_WGPU:-}" ]; then
  echo "== build (features wgpu) into ${CARGO_TARGET_DIR}-wgpu" >&2
  if CARGO_TARGET_DIR="${CARGO_TARGET_DIR}-wgpu" cargo bench -p pbip-model --bench mit_bench --features wgpu --no-run >&2; then
    WGPU_OK=1
  else
    row "build (wgpu)" "failed (see the log above)"
  fi
fi

# --- 1. parity on the device ---------------------------------------------------------------------
echo "== parity on $DEV" >&2
if PBIP_TEST_DEVICE=$DEV cargo test --release -p pbip-model --features tch --test parity -- --nocapture >"$DIR/parity.log" 2>&1; then
  row "parity tests on $DEV" "pass ($(grep -c 'rel err' "$DIR/parity.log") tensors compared)"
else
  row "parity tests on $DEV" "FAIL: see $DIR/parity.log"
fi

# --- 2. MiT-b1 train step and inference ----------------------------------------------------------
echo "== MiT-b1 timings" >&2
PBIP_BENCH_DEVICES=$BENCH_DEVICES PBIP_BENCH_ITERS=$ITERS PBIP_BENCH_PRECISION=f32,bf16 \
  cargo bench -p pbip-model --bench mit_bench --features tch -- mit_b1 2>&1 | tee "$DIR/burn.txt" >&2
if [ -n "${WGPU_OK:-}" ]; then
  PBIP_BENCH_DEVICES=wgpu PBIP_BENCH_ITERS=$ITERS CARGO_TARGET_DIR="${CARGO_TARGET_DIR}-wgpu" \
    cargo bench -p pbip-model --bench mit_bench --features wgpu -- mit_b1 2>&1 | tee -a "$DIR/burn.txt" >&2
fi
"$PY" crates/pbip-model/bench/torch_mit_bench.py mit_b1 0 "$TORCH_DEV" f32 2>&1 | tee "$DIR/torch.txt" >&2
"$PY" crates/pbip-model/bench/torch_mit_bench.py mit_b1 0 "$TORCH_DEV" bf16 2>&1 | tee -a "$DIR/torch.txt" >&2
while read -r _ name _ train infer ips; do
  # the PyTorch row of the same precision
  case "$name" in *-bf16) pat='^RESULT pytorch-[a-z]*-bf16 ' ;; *) pat='^RESULT pytorch-[a-z]* ' ;; esac
  REF=$(grep -E "$pat" "$DIR/torch.txt" | awk '{print $4}' | head -1)
  REFI=$(grep -E "$pat" "$DIR/torch.txt" | awk '{print $5}' | head -1)
  if [ -n "$REF" ]; then
    rel=$(awk -v a="$train" -v b="$REF" -v c="$infer" -v d="$REFI" 'BEGIN{printf "train %.2fx, inference %.2fx of PyTorch time", a/b, c/d}')
  else rel="no PyTorch reference"; fi
  row "MiT-b1 $name" "train b10 ${train} ms, infer b32 ${infer} ms (${ips} img/s); $rel"
done < <(grep -h '^RESULT' "$DIR/burn.txt" "$DIR/torch.txt")

# --- 3. whole-slide inference --------------------------------------------------------------------
echo "== pbip infer on a ${SIDE}^2 slide" >&2
DATA="$DIR/demo"
# a checkpoint: the demo pipeline on small slides with 20 training steps, on the device
"$PBIP" demo --out "$DATA" --slides 12 --size 1024 --train-steps 20 --set "device=$DEV" >"$DIR/demo.log" 2>&1 \
  || { row "demo (checkpoint for infer)" "FAIL: see $DIR/demo.log"; }
CKPT="$DATA/work/checkpoints/best.safetensors"
SLIDE="$DIR/bench_${SIDE}.tif"
[ -f "$SLIDE" ] || "$CARGO_TARGET_DIR/release/examples/bench_slide" "$SLIDE" "$SIDE" >&2
if [ -f "$CKPT" ]; then
  rm -rf "$DIR/infer"
  t0=$(date +%s.%N)
  if "$PBIP" infer --config "$DATA/cpu.yaml" --config "$DATA/data/config.yaml" \
      --set paths.work_dir=../work --set "device=$DEV" \
      --set inference.batch_size=64 --set inference.use_crf=false \
      --weights "$CKPT" --output-dir "$DIR/infer" "$SLIDE" >"$DIR/infer.log" 2>&1; then
    t1=$(date +%s.%N)
    patches=$(awk -F, 'NR==2{print $2}' "$DIR/infer/predictions/batch_results.csv")
    row "pbip infer ${SIDE}^2 on $DEV" "$(awk -v a="$t0" -v b="$t1" -v p="$patches" 'BEGIN{printf "%.0f s, %d patches, %.0f patches/s", b-a, p, p/(b-a)}')"
  else
    row "pbip infer ${SIDE}^2 on $DEV" "FAIL: see $DIR/infer.log"
  fi
fi

echo
echo "bench/gpu.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "no GPU") ($DEV), $(nproc) CPU cores, $(date -u +%F)"
printf '| %-34s | %-60s |\n' what result
echo "|------------------------------------|--------------------------------------------------------------|"
cat "$ROWS"

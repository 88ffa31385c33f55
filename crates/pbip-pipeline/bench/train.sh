#!/usr/bin/env bash
# Stage-3 benchmark: `pbip train` (release build, CPU backend) on generated synthetic slides.
# For each setting it prints the end-to-end training throughput (patches/s over the training
# loop's wall time, validation excluded), the model-only step time (forward + loss + backward +
# AdamW update, timed inside the same run) with the throughput it alone would allow, and the
# fraction of the training loop spent waiting for the data loader. If the data pipeline is not
# the bottleneck, end-to-end patches/s ≈ batch / model step and the data wait is near 0.
# Not part of CI (several minutes on 2 cores).
#
#   crates/pbip-pipeline/bench/train.sh [STEPS]
#
# STEPS: training iterations per setting (default 40). Data, prototypes and runs go to
# $BENCH_DIR (default /tmp/pbip-train-bench; the data and prototype bank are reused). Extra
# settings for every run: PBIP_SET="--set k=v ...". PBIP_BIN=path/to/pbip skips the release build.
# Results: append the table to RESULTS-train.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
steps=${1:-40}
dir=${BENCH_DIR:-/tmp/pbip-train-bench}
mkdir -p "$dir"
if [ -n "${PBIP_BIN:-}" ]; then
  bin=$PBIP_BIN
else
  cargo build --release -p pbip
  bin=${CARGO_TARGET_DIR:-target}/release/pbip
fi
extra=${PBIP_SET:-}

# The demo's data: 40 slides of 2048 px (24 train, 8 val, 8 test), seed 0.
data="$dir/data"
[ -f "$data/config.yaml" ] || "$bin" synth --out "$data" --slides 40 --size 2048 --seed 0 >/dev/null 2>&1
cfg="$data/config.yaml"
protos="$dir/prototypes"
# Stages 0-2 with the demo's settings (random Swin-T encoder, used by the contrastive rows).
proto_set=(--set device=cpu --set prototypes.batch_size=8 --set "paths.work_dir=$protos")
if [ ! -f "$protos/image_features/prototypes.safetensors" ]; then
  for stage in sample-prototypes embed-prototypes cluster-prototypes; do
    "$bin" "$stage" --config "$cfg" "${proto_set[@]}" >/dev/null 2>&1
  done
fi

# The demo's training preset (crates/pbip/src/demo.rs), validation reduced to a minimum (it is
# excluded from the throughput figures anyway).
demo=(device=cpu model.backbone=mit_b0 patch_size=112 training.batch_size=8
  training.optimizer.lr=0.0003 training.scheduler.warmup_epochs=0.03
  training.balance_classes=true training.grad_clip=1.0 training.augment.color_jitter=0.2
  training.loss_weights.contrastive=0 training.loss_weights.cam_smooth=0
  training.loss_weights.cam_sparsity=0 training.num_workers=2
  validation.patches_per_slide=1)

run() { # id (work dir name), label, then --set overrides on top of the demo preset
  local id=$1 name=$2; shift 2
  local work="$dir/work-$id"
  rm -rf "$work"
  mkdir -p "$work"
  cp -r "$protos/image_features" "$work/"
  local sets=() batch=
  for kv in "${demo[@]}" "$@" "training.epochs=1" "training.iterations_per_epoch=$steps" \
    "training.validation_interval=100000" "training.checkpoint_interval=100000" \
    "training.log_interval=10" "paths.work_dir=$work"; do
    sets+=(--set "$kv")
    case $kv in training.batch_size=*) batch=${kv#*=} ;; esac
  done
  # shellcheck disable=SC2086
  "$bin" train --config "$cfg" "${sets[@]}" $extra >"$work/stdout.txt" 2>"$work/stderr.txt"
  local s="$work/checkpoints/train_summary.json"
  jq -r --arg name "$name" --argjson b "$batch" '.throughput as $t |
    "| \($name) | \($b) | \($t.steps) | \($t.patches_per_sec * 10 | round / 10) | \($t.model_step_secs * 1000 | round) | \($b / $t.model_step_secs * 10 | round / 10) | \($t.data_wait_fraction * 1000 | round / 10) |"' "$s"
}

echo "pbip train, CPU backend, $(nproc) cores, $steps iterations per setting, $(date -u +%Y-%m-%d)"
echo
echo "| setting | batch | steps | patches/s end to end | model step ms | patches/s model only | data wait % |"
echo "|---|---|---|---|---|---|---|"
run demo "demo preset (MiT-b0, 112 px, 2 loader threads)"
run demo-1thread "demo preset, 1 loader thread" training.num_workers=1
run demo-contrastive "demo preset + contrastive 0.1 (frozen Swin-T)" training.loss_weights.contrastive=0.1
run b1-224 "MiT-b1, 224 px, batch 10 (upstream model and batch)" model.backbone=mit_b1 patch_size=224 training.batch_size=10

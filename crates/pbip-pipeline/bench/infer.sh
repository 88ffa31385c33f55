#!/usr/bin/env bash
# Stage-5 benchmark: `pbip infer` on generated 40k x 40k and 80k x 80k slides; wall time,
# patches/s and peak RSS (GNU time -v). Not part of CI (minutes to hours on a CPU).
#
#   crates/pbip-pipeline/bench/infer.sh CONFIG.yaml CKPT [SIDES...]
#
# CONFIG.yaml / CKPT: e.g. the `pbip demo` config and work/checkpoints/best.safetensors.
# Extra settings: PBIP_SET="--set inference.output_downsample=16 ..." (default: downsample 16,
# CRF on). Results go to $BENCH_DIR (default /tmp/pbip-infer-bench); append them to RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cfg=${1:?config}; ckpt=${2:?checkpoint}; shift 2
sides=("${@:-40000 80000}")
dir=${BENCH_DIR:-/tmp/pbip-infer-bench}
mkdir -p "$dir"
cargo build --release -p pbip -p pbip-pipeline --example bench_slide
bin=${CARGO_TARGET_DIR:-target}/release
set_args=${PBIP_SET:---set inference.output_downsample=16}
for side in ${sides[@]}; do
  slide="$dir/bench_${side}.tif"
  [ -f "$slide" ] || "$bin/examples/bench_slide" "$slide" "$side"
  out="$dir/out_${side}"
  rm -rf "$out"
  /usr/bin/time -v -o "$dir/time_${side}.txt" \
    "$bin/pbip" infer --config "$cfg" $set_args --weights "$ckpt" --output-dir "$out" "$slide"
  patches=$(awk -F, 'NR==2{print $2}' "$out/predictions/batch_results.csv")
  wall=$(awk -F, 'NR==2{print $3}' "$out/predictions/batch_results.csv")
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$dir/time_${side}.txt")
  echo "side ${side}: ${patches} patches, ${wall} s, $(awk -v p="$patches" -v w="$wall" 'BEGIN{printf "%.1f", p/w}') patches/s, peak RSS $((rss / 1024)) MiB"
done

#!/usr/bin/env bash
# Stage-5 benchmark: `pbip infer` on generated 40k x 40k and 80k x 80k slides with the same settings:
# wall time, patches/s, peak RSS (GNU time -v) and pbip's own per-phase timings. Not part of CI
# (tens of minutes on a 2-core CPU).
#
#   crates/pbip-pipeline/bench/infer.sh CONFIG.yaml CKPT [SIDES...]
#
# CONFIG.yaml / CKPT: e.g. the `pbip demo` config (demo/data/config.yaml) and
# demo/work/checkpoints/best.safetensors. Settings (PBIP_SET, default below): a *fixed*
# output_downsample of 8, so the 80k mask has 4x the pixels of the 40k mask (with `auto` both would be
# about 10k px per side); the demo's network input (112 px at 1 um/px); overlap 0 to keep CPU runs
# short; CRF and post-processing on. Results go to $BENCH_DIR (default /tmp/pbip-infer-bench);
# scratch maps go to the output folder (same disk).
set -euo pipefail
cd "$(dirname "$0")/../../.."
cfg=${1:?config}; ckpt=${2:?checkpoint}; shift 2
sides=("${@:-40000 80000}")
dir=${BENCH_DIR:-/tmp/pbip-infer-bench}
mkdir -p "$dir"
# PBIP_BIN / BENCH_SLIDE_BIN: prebuilt binaries (skips the release build).
bin=${CARGO_TARGET_DIR:-target}/release
pbip_bin=${PBIP_BIN:-$bin/pbip}
slide_bin=${BENCH_SLIDE_BIN:-$bin/examples/bench_slide}
if [ -z "${PBIP_BIN:-}" ]; then cargo build --release -p pbip; fi
if [ -z "${BENCH_SLIDE_BIN:-}" ]; then cargo build --release -p pbip-pipeline --example bench_slide; fi
set_args=${PBIP_SET:---set inference.patch_size=112 --set inference.spacing_um=1.0 --set inference.output_downsample=8 --set inference.overlap_ratio=0 --set inference.batch_size=16 --set inference.use_crf=true}
echo "settings: $set_args"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
for side in ${sides[@]}; do
  slide="$dir/bench_${side}.tif"
  [ -f "$slide" ] || "$slide_bin" "$slide" "$side"
  out="$dir/out_${side}"
  rm -rf "$out"
  RUST_LOG=info /usr/bin/time -v -o "$dir/time_${side}.txt" \
    "$pbip_bin" infer --config "$cfg" $set_args --weights "$ckpt" --output-dir "$out" "$slide" \
    2> "$dir/log_${side}.txt"
  patches=$(awk -F, 'NR==2{print $2}' "$out/predictions/batch_results.csv")
  wall=$(awk -F, 'NR==2{print $3}' "$out/predictions/batch_results.csv")
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$dir/time_${side}.txt")
  size=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print('%dx%d' % tuple(m['output_size_px']))" "$out/predictions/bench_${side}/metadata.json")
  echo "side ${side}: ${patches} patches, ${wall} s, $(awk -v p="$patches" -v w="$wall" 'BEGIN{printf "%.1f", p/w}') patches/s, peak RSS $((rss / 1024)) MiB, output ${size}"
  grep -E "predicted and stitched|labels \(CRF|outputs written" "$dir/log_${side}.txt" | sed 's/^/    /' || true
done

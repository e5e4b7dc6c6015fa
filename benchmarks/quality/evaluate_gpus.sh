#!/usr/bin/env bash
# Issue 20's evaluation of the toy model, spread over the GPUs of one host:
#   1. jenga calibrate --toy --size full (GPU 0): the calibrated config at the Wan base preset's own recall;
#   2. the variants dense, carving (Wan base), calibrated and full (turbo + skip schedule), one process per
#      variant, round-robin over the GPUs, each storing its clips (evaluate.py --videos);
#   3. evaluate.py --from-videos: PSNR / SSIM against dense, task scores with standard errors and 95 % intervals,
#      paired differences to dense, into $OUT/quality-toy.json.
# Usage (repository root, weights at src/jenga/toy/weights/toy-wan.safetensors):
#   bash benchmarks/quality/evaluate_gpus.sh OUT [GPUS] [REPEATS] [STEPS]     (defaults: 4 GPUs, 13 repeats, 20 steps)
set -euo pipefail
out=${1:?usage: evaluate_gpus.sh OUT [GPUS] [REPEATS] [STEPS]}
gpus=${2:-4}
repeats=${3:-13}
steps=${4:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
videos=$(mktemp -d)
mkdir -p "$out"
start=$(date +%s)
CUDA_VISIBLE_DEVICES=0 python -m jenga.cli calibrate --toy --size full --device cuda --min-recall base \
    --run-steps "$steps" --out-dir "$out/calibration" > "$out/calibrate.log" 2>&1
echo "calibrate: $(( $(date +%s) - start )) s"
i=0
pids=()
for variant in dense carving calibrated full; do
    CUDA_VISIBLE_DEVICES=$(( i % gpus )) python "$root/benchmarks/quality/evaluate.py" --skip-attention \
        --repeats "$repeats" --steps "$steps" --calibrated "$out/calibration/calibrated.json" --variants "$variant" \
        --videos "$videos" --out "$out/quality-$variant.json" > "$out/quality-$variant.log" 2>&1 &
    pids+=($!)
    i=$(( i + 1 ))
    if (( i % gpus == 0 )); then wait "${pids[@]}"; pids=(); fi
done
if (( ${#pids[@]} )); then wait "${pids[@]}"; fi
echo "generation: $(( $(date +%s) - start )) s"
python "$root/benchmarks/quality/evaluate.py" --repeats "$repeats" --from-videos "$videos" \
    --out "$out/quality-toy.json" | tee "$out/quality.log"
rm -rf "$videos"
echo "total: $(( $(date +%s) - start )) s"

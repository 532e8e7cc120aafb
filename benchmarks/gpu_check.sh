#!/usr/bin/env bash
# SAM 2.1 on a GPU, in one go (issue 19, "GPU"), in under 8 minutes:
#   1. the core parity tests that honour SAMKIT_TEST_DEVICE, on cuda: SAM 2's image path against the
#      official sam2 (tiny and base_plus) and the fast SAM 2 decoder against the plain reference;
#   2. benchmarks/bench_sam2.py on cuda: fp32 rows (ours and the official) with the reduced-precision
#      rows in bf16, then again with fp16 (the second run skips the SAM 1 clicks and the GIS rows).
# Figures go to $SAMKIT_GPU_OUT (default benchmarks/gpu/): one markdown table per precision and
# the pytest log; copy them into README's "SAM 2.1 speed" (GPU column) and benchmarks/RESULTS.md
# under the commit.
#
#   bash benchmarks/gpu_check.sh             # on a machine with CUDA
#   bash benchmarks/gpu_check.sh --cpu-smoke # the same steps on the CPU in miniature (checks the script)
set -euo pipefail

device=cuda
smoke=0
case "${1:-}" in
  "") ;;
  --cpu-smoke) device=cpu; smoke=1 ;;
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${SAMKIT_GPU_OUT:-$repo/benchmarks/gpu}"
mkdir -p "$out"
python="${PYTHON:-python}"
start=$SECONDS

if [[ $device == cuda ]]; then
  if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); use --cpu-smoke on a CPU" >&2
    exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
fi

echo "== 1. parity tests on $device"
tests=(tests/core/test_sam2_fast_decoder.py tests/core/test_sam2_parity.py)
selection="fast_decode or dynamic or kept_work or prepare_decoder or bf16 or image_embedding or preprocessing"
selection+=" or predictions_match or best_only or predictor_runs"
if [[ $smoke == 1 ]]; then
  # the CPU smoke test: the device switch and the script, not the whole check
  tests=(tests/core/test_sam2_fast_decoder.py)
  selection="points-1-True-True or prepare_decoder"
fi
status=0
SAMKIT_TEST_DEVICE=$device timeout 150 "$python" -m pytest -q -x -p no:cacheprovider "${tests[@]}" -k "$selection" \
  2>&1 | tee "$out/parity_$device.log" || status=$?

echo "== 2. benchmarks on $device"
bench=(benchmarks/bench_sam2.py --device "$device")
if [[ $smoke == 1 ]]; then
  bench+=(--quick --gis-size 0 --sam1)
else
  # sized for the 8 minutes: the GIS raster is 2048 px (4096 on a CPU run, see RESULTS.md)
  bench+=(--repeats 5 --clicks 50 --points-per-side 32 --gis-size 2048)
fi
for precision in bf16 fp16; do
  if [[ $device == cpu && $precision == fp16 ]]; then
    continue  # fp16 autocast is a GPU mode
  fi
  extra=()
  limit=200
  if [[ $precision == fp16 ]]; then
    extra=(--gis-size 0 --sam1)
    limit=100
  fi
  timeout "$limit" "$python" "${bench[@]}" "${extra[@]}" --low-precision "$precision" \
    --markdown "$out/bench_sam2_${device}_${precision}.md" || status=$?
done

echo
echo "gpu_check finished in $((SECONDS - start)) s. Figures:"
ls -1 "$out"
echo "Put the tables of $out/bench_sam2_${device}_*.md into README.md ('SAM 2.1 speed', GPU) and"
echo "benchmarks/RESULTS.md under the commit ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
if [[ $status != 0 ]]; then
  echo "gpu_check: a step failed (exit status $status); see the logs above" >&2
fi
exit "$status"

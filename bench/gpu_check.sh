#!/usr/bin/env bash
# The GPU check: one run on a lent GPU machine (under 8 minutes on one H100) that proves the
# CUDA path and prints one table. Run from the repository root, after installing the project:
#
#   bash bench/gpu_check.sh            # DEV=cuda
#   DEV=cpu bash bench/gpu_check.sh    # dry run on the CPU
#   REDUCED=1 DEV=cpu bash bench/gpu_check.sh   # tiny model and short audio (what a test runs)
#
# Rows: the device-touching tests; the default separating 60 s at fp32/bf16/fp16 (SNR of each
# stem against CPU fp32, wall time); the KJ Mel-RoFormer forward at batch 4 (s per audio s,
# fp32 and bf16, peak GPU memory, flash kernel accepted or not); 20 AMP training steps in bf16
# and in fp16 with a GradScaler; train + --resume against an uninterrupted run.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV:-cuda}"
extra=()
if [ -n "${REDUCED:-}" ]; then extra+=(--reduced); fi
if [ -z "${REDUCED:-}" ]; then
  # Device tests: they run on the CPU and, with CUDA present, on the GPU too.
  tests=$(python -m pytest -q -p no:cacheprovider tests/test_device_path.py tests/test_engine.py \
          -m "not slow" 2>&1 | tail -1)
else
  tests="skipped (reduced)"
fi
python bench/gpu_check.py --device "$DEV" --tests "$tests" "${extra[@]}"

#!/usr/bin/env bash
# Times cws (OpenBLAS and candle matmul paths) and PyTorch on the same training
# step and inference forward, back to back, 2 threads each. See docs/perf-notes.md.
# Usage: scripts/bench_step.sh [tiny small base]; PYTHON names a python with torch+transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}" BENCH_THREADS="${BENCH_THREADS:-2}"
cargo build --release --example bench_step
for shape in "${@:-tiny small base}"; do
  for s in $shape; do
    "${CARGO_TARGET_DIR:-target}/release/examples/bench_step" "$s"
    "$PYTHON" scripts/bench_torch.py "$s" | tail -n +2
  done
done

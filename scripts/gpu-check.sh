#!/usr/bin/env bash
# The CUDA checks, run on a GPU machine from the repository root with the
# bundle that scripts/build-cuda.sh makes (target-cuda/gpu-bundle):
#   1. CPU vs CUDA parity of logits, loss and gradients (examples/device_parity);
#   2. training and inference tokens/s of cws (f32, bf16) next to PyTorch's
#      BertForTokenClassification doing the same step on the same GPU;
#   3. a short from-scratch training run of a bert-base-shaped model
#      (configs/gpu-smoke.toml) whose loss must fall, then the checkpoint
#      reloaded on CUDA and on CPU: same dev F1, same predictions.
#   4. the same run with mixed precision (bf16, and f16 with loss scaling).
# Results go to $OUT (default /tmp/gpu-check) as JSON lines and logs.
#   CWS_GPU_DATA=path/to/pku_10pct.utf8 scripts/gpu-check.sh [parity throughput training mixed]
set -uo pipefail
B=${CWS_GPU_BUNDLE:-target-cuda/gpu-bundle}
OUT=${OUT:-/tmp/gpu-check}
DATA=${CWS_GPU_DATA:-../shared/data/train/pku_10pct.utf8}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo "== $* ($(date +%T))"; }
sections=${*:-parity throughput training mixed}
want() { [[ " $sections " == *" $1 "* ]]; }
head -n 1700 "$DATA" > /tmp/gpu-train.txt
tail -n +1701 "$DATA" > /tmp/gpu-dev.txt

step device
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"

if want parity; then
step parity
for s in small base; do "$B/run.sh" device_parity "$s" | tee -a "$OUT/parity.jsonl"; done

fi

if want throughput; then
step throughput
common=(--shape base --mode both --batch 32 --seq 128 --warmup 3 --steps 20)
"$B/run.sh" cws bench model --device cuda --dtype f32 "${common[@]}" | tee -a "$OUT/throughput.jsonl"
"$B/run.sh" cws bench model --device cuda --dtype bf16 "${common[@]}" | tee -a "$OUT/throughput.jsonl"
python3 scripts/bench_peers.py torch --device cuda --dtype f32 "${common[@]}" | tee -a "$OUT/throughput.jsonl"
python3 scripts/bench_peers.py torch --device cuda --dtype bf16 "${common[@]}" | tee -a "$OUT/throughput.jsonl"
python3 scripts/bench_peers.py torch --device cuda --dtype f32 --attn sdpa "${common[@]}" | tee -a "$OUT/throughput.jsonl"

fi

if want training; then
step training
run=/tmp/gpu-smoke
rm -rf "$run"
"$B/run.sh" cws train --config configs/gpu-smoke.toml --train /tmp/gpu-train.txt --dev /tmp/gpu-dev.txt \
  --output-dir "$run" --device cuda --progress quiet 2>&1 | tee "$OUT/train.log"
cp "$run/metrics.jsonl" "$OUT/train-metrics.jsonl"

step reload
for d in cuda cpu; do
  "$B/run.sh" cws eval --model "$run/last" --gold /tmp/gpu-dev.txt --device "$d" --format json \
    --save-pred "/tmp/pred-$d.txt" | tee "$OUT/reload-$d.json"
done
if cmp -s /tmp/pred-cuda.txt /tmp/pred-cpu.txt; then
  echo "reloaded checkpoint: identical predictions on cuda and cpu" | tee -a "$OUT/summary.txt"
else
  echo "reloaded checkpoint: predictions differ between cuda and cpu on $(diff /tmp/pred-cuda.txt /tmp/pred-cpu.txt | grep -c '^<') lines" | tee -a "$OUT/summary.txt"
fi
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/train-metrics.jsonl")]
losses = [r["loss"] for r in rows if "loss" in r]
evals = [r for r in rows if "dev_f1" in r]
first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
print(f"training loss: first 10 steps {first:.4f} -> last 10 steps {last:.4f} ({'falls' if last < first else 'DOES NOT FALL'})")
print(f"dev F1 during training (last eval, in memory): {evals[-1]['dev_f1']:.6f}")
for d in ("cuda", "cpu"):
    print(f"dev F1 of the reloaded checkpoint on {d}: {json.load(open(f'{out}/reload-{d}.json'))['f1']:.6f}")
PY
fi

if want mixed; then
for p in bf16 f16; do
  step "mixed precision $p"
  rm -rf "/tmp/gpu-$p"
  "$B/run.sh" cws train --config configs/gpu-smoke.toml --train /tmp/gpu-train.txt --dev /tmp/gpu-dev.txt \
    --output-dir "/tmp/gpu-$p" --device cuda --precision "$p" --progress quiet 2>&1 | tee "$OUT/train-$p.log"
  cp "/tmp/gpu-$p/metrics.jsonl" "$OUT/train-metrics-$p.jsonl"
  python3 - "$OUT/train-metrics-$p.jsonl" "$p" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
losses = [r["loss"] for r in rows if "loss" in r]
steps = [r for r in rows if "units_per_s" in r]
evals = [r for r in rows if "dev_f1" in r]
print(f"{sys.argv[2]}: loss {sum(losses[:10]) / 10:.4f} -> {sum(losses[-10:]) / 10:.4f}, "
      f"dev F1 {evals[-1]['dev_f1']:.4f}, {steps[-1]['units_per_s']:.0f} units/s over the run")
PY
done
fi

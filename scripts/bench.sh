#!/usr/bin/env bash
# The whole cws-vs-peers comparison in one run, one measurement at a time:
#   (a) model throughput: cws vs PyTorch (BertForTokenClassification), training
#       step and inference, shapes tiny/small/base at batch 16 x seq 128, CPU;
#       every (system, shape, mode) in its own process, so peak RSS is its own;
#   (b) segmentation speed on the raw PKU test text: cws (model, and
#       --dict-only with the PKU training word list), jieba, pkuseg (its bundled
#       model, and one trained on the same 10% split as cws);
#   (c) accuracy on the PKU and MSR test sets, scored by `cws eval` with the
#       training word lists (P/R/F1/OOV-R/IV-R);
#   (d) a Markdown report on stdout (and in $BENCH_OUT/report.md) and raw JSON
#       lines in $BENCH_OUT/results.jsonl.
# Progress goes to stderr. See docs/BENCHMARKS.md.
#
#   scripts/bench.sh                                   # everything but cws model rows
#   CWS_MODEL_PKU=runs/small-pku/best CWS_MODEL_MSR=runs/small-msr/best scripts/bench.sh
#   BENCH_PARTS=segment,accuracy scripts/bench.sh      # skip the model throughput part
#
# Environment (defaults in brackets; relative paths are taken from the repository root):
#   CWS_BIN          cws binary [target/release/cws]
#   CWS_DATA_DIR     SIGHAN data laid out as data/README.md says [../shared/data]
#   CWS_MODEL_PKU    cws model trained on the PKU split: speed + PKU accuracy rows [none]
#   CWS_MODEL_MSR    cws model trained on the MSR split: MSR accuracy row [none]
#   PEERS_VENV       venv for jieba/pkuseg (and torch), created if missing
#                    [${XDG_CACHE_HOME:-~/.cache}/cws/peers-venv]
#   TORCH_PYTHON     a Python with torch + transformers; when unset they are
#                    installed into PEERS_VENV [PEERS_VENV's python]
#   BENCH_OUT        output folder [bench-out]
#   BENCH_PARTS      any of model,segment,accuracy [model,segment,accuracy]
#   BENCH_SHAPES     model shapes [tiny small base]
#   BENCH_THREADS    threads for cws and PyTorch [2]
#   BENCH_BATCH / BENCH_SEQ                [16 / 128]
#   BENCH_STEPS / BENCH_WARMUP             timed / untimed steps, tiny and small [10 / 2]
#   BENCH_BASE_STEPS / BENCH_BASE_WARMUP   the same for base (~10 s a training step on 2 cores) [2 / 1]
#   BENCH_REPEAT     passes over the PKU test text for chars/s (best reported) [3]
#   PKUSEG_MODELS    where pkuseg models trained on the 10% splits are kept and
#                    reused [$BENCH_OUT/pkuseg-models]
#   PKUSEG_ITERS     pkuseg training iterations [20]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CWS=${CWS_BIN:-target/release/cws}
DATA=${CWS_DATA_DIR:-../shared/data}
MODEL_PKU=${CWS_MODEL_PKU:-}
MODEL_MSR=${CWS_MODEL_MSR:-}
PEERS_VENV=${PEERS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cws/peers-venv}
OUT=${BENCH_OUT:-bench-out}
PARTS=${BENCH_PARTS:-model,segment,accuracy}
read -r -a SHAPES <<<"${BENCH_SHAPES:-tiny small base}"
THREADS=${BENCH_THREADS:-2}
BATCH=${BENCH_BATCH:-16}
SEQ=${BENCH_SEQ:-128}
STEPS=${BENCH_STEPS:-10}
WARMUP=${BENCH_WARMUP:-2}
BASE_STEPS=${BENCH_BASE_STEPS:-2}
BASE_WARMUP=${BENCH_BASE_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-3}
PKUSEG_MODELS=${PKUSEG_MODELS:-$OUT/pkuseg-models}
PKUSEG_ITERS=${PKUSEG_ITERS:-20}
PEERS=scripts/bench_peers.py

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }

[[ -x $CWS ]] || die "no cws binary at $CWS (cargo build --release, or set CWS_BIN)"
SIGHAN=$DATA/sighan2005
TRAIN=$DATA/train
for f in "$SIGHAN"/{pku,msr}_test.utf8 "$SIGHAN"/{pku,msr}_test_gold.utf8 \
    "$SIGHAN"/{pku,msr}_training_words.utf8 "$TRAIN"/{pku,msr}_10pct.utf8; do
    [[ -f $f ]] || die "missing $f (set CWS_DATA_DIR; see data/README.md)"
done
for m in "$MODEL_PKU" "$MODEL_MSR"; do
    [[ -z $m || -d $m ]] || die "no model folder $m"
done

mkdir -p "$OUT/pred"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# --- the peers' venv -------------------------------------------------------
need_torch=false
if has_part model && [[ -z ${TORCH_PYTHON:-} ]]; then need_torch=true; fi
PY=$PEERS_VENV/bin/python
if [[ ! -x $PY ]] || ! "$PY" -c 'import jieba, pkuseg' 2>/dev/null; then
    log "creating the peers' venv at $PEERS_VENV (jieba 0.42.1, pkuseg 0.0.25)"
    python3 -m venv "$PEERS_VENV"
    "$PY" -m pip install -q --upgrade pip
    # pkuseg 0.0.25 is an sdist whose setup.py imports numpy and Cython and
    # needs setuptools + wheel: install those first and build it against them.
    "$PY" -m pip install -q numpy cython setuptools wheel jieba==0.42.1
    "$PY" -m pip install -q --no-build-isolation pkuseg==0.0.25
fi
if $need_torch && ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
    log "installing torch and transformers into $PEERS_VENV (set TORCH_PYTHON to use an existing install)"
    "$PY" -m pip install -q torch transformers
fi
TORCH_PY=${TORCH_PYTHON:-$PY}

# --- helpers ----------------------------------------------------------------
# tag PART [key=value ...]: copy JSON lines from stdin to the results file,
# adding "part" and the given string fields; other lines go to stderr.
tag() {
    local part=$1 extra="" kv
    shift
    for kv in "$@"; do extra+=",\"${kv%%=*}\":\"${kv#*=}\""; done
    while IFS= read -r line; do
        if [[ $line == '{'* ]]; then
            printf '{"part":"%s"%s,%s\n' "$part" "$extra" "${line#\{}" >>"$RESULTS"
        else
            printf '%s\n' "$line" >&2
        fi
    done
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
printf '{"part":"machine","nproc":%s,"cpu":"%s","mem_gib":%s,"loadavg_start":"%s","date":"%s","cws":"%s","threads":%s,"repeat":%s}\n' \
    "$(nproc)" "${cpu_model:-unknown}" \
    "$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)" \
    "$(loadavg)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$("$CWS" --version 2>/dev/null || echo cws)" "$THREADS" "$REPEAT" >>"$RESULTS"
log "load average at start: $(loadavg) (numbers are only meaningful on an idle machine)"

# --- (a) model throughput ---------------------------------------------------
if has_part model; then
    for shape in "${SHAPES[@]}"; do
        steps=$STEPS warmup=$WARMUP
        if [[ $shape == base ]]; then steps=$BASE_STEPS warmup=$BASE_WARMUP; fi
        for mode in train infer; do
            log "model $shape $mode: cws ($warmup warmup + $steps steps)"
            "$CWS" bench model --mode "$mode" --shape "$shape" --batch "$BATCH" --seq "$SEQ" \
                --steps "$steps" --warmup "$warmup" --threads "$THREADS" --device cpu 2>&1 | tag model
            log "model $shape $mode: pytorch"
            "$TORCH_PY" "$PEERS" torch --mode "$mode" --shape "$shape" --batch "$BATCH" --seq "$SEQ" \
                --steps "$steps" --warmup "$warmup" --threads "$THREADS" --device cpu 2>&1 | tag model
        done
    done
fi

# --- pkuseg models trained on the same 10% splits as cws ---------------------
PKUSEG_PKU=$PKUSEG_MODELS/pku_10pct
PKUSEG_MSR=$PKUSEG_MODELS/msr_10pct
train_pkuseg() { # corpus: train pkuseg on its 10% split once; later runs reuse the model
    local dir=$PKUSEG_MODELS/$1_10pct
    [[ -f $dir/weights.npz && -f $dir/features.pkl ]] && return 0
    log "training pkuseg on $1_10pct.utf8 ($PKUSEG_ITERS iterations; once, kept in $dir)"
    "$PY" "$PEERS" pkuseg-train --train "$TRAIN/$1_10pct.utf8" --output "$dir" \
        --iters "$PKUSEG_ITERS" --threads "$THREADS" 2>"$OUT/pkuseg-train-$1.log" | tag pkuseg-train corpus="$1"
}
if has_part segment || has_part accuracy; then train_pkuseg pku; fi
if has_part accuracy; then train_pkuseg msr; fi

# --- (b) segmentation speed on the PKU test text ----------------------------
# Each run also writes its segmentation, scored in (c) (the best-of-N timing is
# over whole passes; the output is the last pass).
PKU_TEXT=$SIGHAN/pku_test.utf8
if has_part segment; then
    if [[ -n $MODEL_PKU ]]; then
        log "segment speed: cws --model $MODEL_PKU"
        "$CWS" bench segment --input "$PKU_TEXT" --model "$MODEL_PKU" --threads "$THREADS" --device cpu \
            --repeat "$REPEAT" 2>&1 | tag segment segmenter=cws-model
    fi
    log "segment speed: cws --dict-only"
    "$CWS" bench segment --input "$PKU_TEXT" --dict-only "$SIGHAN/pku_training_words.utf8" \
        --threads "$THREADS" --repeat "$REPEAT" 2>&1 | tag segment segmenter=cws-dict
    log "segment speed: jieba"
    "$PY" "$PEERS" jieba segment --input "$PKU_TEXT" --repeat "$REPEAT" --threads "$THREADS" \
        --output "$OUT/pred/jieba-pku.utf8" 2>&1 | tag segment segmenter=jieba
    log "segment speed: pkuseg (bundled default model and dictionary)"
    "$PY" "$PEERS" pkuseg segment --input "$PKU_TEXT" --repeat "$REPEAT" --threads "$THREADS" \
        --model default --user-dict default --output "$OUT/pred/pkuseg-default-pku.utf8" 2>&1 |
        tag segment segmenter=pkuseg-default
    log "segment speed: pkuseg (trained on pku_10pct, normalized input, bundled dictionary)"
    "$PY" "$PEERS" pkuseg segment --input "$PKU_TEXT" --repeat "$REPEAT" --threads "$THREADS" \
        --model "$PKUSEG_PKU" --user-dict default --normalize --output "$OUT/pred/pkuseg-10pct-pku.utf8" 2>&1 |
        tag segment segmenter=pkuseg-10pct
fi

# --- (c) accuracy -----------------------------------------------------------
score() { # segmenter corpus pred
    "$CWS" eval --gold "$SIGHAN/$2_test_gold.utf8" --pred "$3" --words "$SIGHAN/$2_training_words.utf8" \
        --format json 2>"$OUT/eval-$1-$2.log" | tag accuracy segmenter="$1" corpus="$2"
}
if has_part accuracy; then
    for corpus in pku msr; do
        text=$SIGHAN/${corpus}_test.utf8
        model=$MODEL_PKU pkuseg_trained=$PKUSEG_PKU
        if [[ $corpus == msr ]]; then model=$MODEL_MSR pkuseg_trained=$PKUSEG_MSR; fi
        log "accuracy on $corpus"
        if [[ -n $model ]]; then
            "$CWS" segment --model "$model" --threads "$THREADS" --device cpu --input "$text" \
                --output "$OUT/pred/cws-model-$corpus.utf8"
            score cws-model "$corpus" "$OUT/pred/cws-model-$corpus.utf8"
        fi
        "$CWS" segment --dict-only "$SIGHAN/${corpus}_training_words.utf8" --input "$text" \
            --output "$OUT/pred/cws-dict-$corpus.utf8"
        score cws-dict "$corpus" "$OUT/pred/cws-dict-$corpus.utf8"
        # PKU outputs come from (b) when it ran; MSR (or PKU without (b)) is segmented here, one pass.
        if [[ $corpus == msr ]] || ! has_part segment; then
            "$PY" "$PEERS" jieba segment --input "$text" --repeat 1 --threads "$THREADS" \
                --output "$OUT/pred/jieba-$corpus.utf8" 2>&1 | tag segment-once segmenter=jieba corpus="$corpus"
            "$PY" "$PEERS" pkuseg segment --input "$text" --repeat 1 --threads "$THREADS" --model default \
                --user-dict default --output "$OUT/pred/pkuseg-default-$corpus.utf8" 2>&1 |
                tag segment-once segmenter=pkuseg-default corpus="$corpus"
            "$PY" "$PEERS" pkuseg segment --input "$text" --repeat 1 --threads "$THREADS" --model "$pkuseg_trained" \
                --user-dict default --normalize --output "$OUT/pred/pkuseg-10pct-$corpus.utf8" 2>&1 |
                tag segment-once segmenter=pkuseg-10pct corpus="$corpus"
        fi
        "$PY" "$PEERS" pkuseg segment --input "$text" --repeat 1 --threads "$THREADS" --model "$pkuseg_trained" \
            --user-dict none --normalize --output "$OUT/pred/pkuseg-10pct-nodict-$corpus.utf8" 2>&1 |
            tag segment-once segmenter=pkuseg-10pct-nodict corpus="$corpus"
        score jieba "$corpus" "$OUT/pred/jieba-$corpus.utf8"
        score pkuseg-default "$corpus" "$OUT/pred/pkuseg-default-$corpus.utf8"
        score pkuseg-10pct "$corpus" "$OUT/pred/pkuseg-10pct-$corpus.utf8"
        score pkuseg-10pct-nodict "$corpus" "$OUT/pred/pkuseg-10pct-nodict-$corpus.utf8"
    done
fi

# --- (d) report -------------------------------------------------------------
printf '{"part":"machine-end","loadavg_end":"%s","date":"%s"}\n' "$(loadavg)" "$(date -u +%Y-%m-%dT%H:%MZ)" >>"$RESULTS"
log "load average at end: $(loadavg); raw results in $RESULTS"
python3 scripts/bench_report.py "$RESULTS" | tee "$OUT/report.md"

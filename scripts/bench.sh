#!/usr/bin/env bash
# The whole cws-vs-peers comparison in one run, one measurement at a time:
#   (a) model throughput: cws vs PyTorch (BertForTokenClassification), training
#       step and inference, shapes tiny/small/base at batch 16 x seq 128, CPU;
#       every (system, shape, mode) in its own process, so peak RSS is its own;
#   (b) segmentation speed on the raw PKU test text: cws (its PKU model:
#       CWS_MODEL_PKU, else the binary's built-in one; and --dict-only with the
#       PKU training word list), jieba, pkuseg (its bundled model, and one
#       trained on the same 10% split as cws);
#   (c) accuracy, scored by `cws eval` (P/R/F1/OOV-R/IV-R):
#       - on the SIGHAN 2005 PKU and MSR test sets, OOV against their training
#         word lists; the cws model rows use CWS_MODEL_PKU / CWS_MODEL_MSR, else
#         the built-in models (`--standard pku|msr`; a binary without
#         --standard has only the PKU one, and the MSR row is skipped);
#       - on a cross-domain dev set, the UD Chinese GSDSimp dev split
#         ($CWS_DATA_DIR/ud/gsdsimp_dev{,_gold}.utf8; corpus `gsdsimp-dev`):
#         cws with its PKU model, jieba, pkuseg's bundled model and its models
#         trained on the PKU 10% split; OOV against the PKU training word list
#         (the set has none of its own). Skipped, with a note, when the files
#         are missing;
#   (d) a Markdown report on stdout (and in $BENCH_OUT/report.md) and raw JSON
#       lines in $BENCH_OUT/results.jsonl.
# Progress goes to stderr. See docs/BENCHMARKS.md.
#
#   scripts/bench.sh                                   # everything; cws model rows from the built-in models
#   CWS_MODEL_PKU=runs/small-pku/best CWS_MODEL_MSR=runs/small-msr/best scripts/bench.sh
#   BENCH_PARTS=segment,accuracy scripts/bench.sh      # skip the model throughput part
#
# Environment (defaults in brackets; relative paths are taken from the repository root):
#   CWS_BIN          cws binary [target/release/cws]
#   CWS_DATA_DIR     SIGHAN data laid out as data/README.md says, and optionally
#                    ud/gsdsimp_dev.utf8 + ud/gsdsimp_dev_gold.utf8 [../shared/data]
#   CWS_MODEL_PKU    cws model trained on the PKU split: speed, PKU and
#                    gsdsimp-dev accuracy rows [the built-in PKU model]
#   CWS_MODEL_MSR    cws model trained on the MSR split: MSR accuracy row
#                    [the built-in MSR model, `--standard msr`, if the binary has it]
#                    (CWS_MODEL, which cws itself reads, is ignored here)
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
if [[ -n ${CWS_MODEL:-} ]]; then
    log "ignoring CWS_MODEL=$CWS_MODEL: the cws model rows use CWS_MODEL_PKU / CWS_MODEL_MSR, else the built-in models"
fi
unset CWS_MODEL
# The built-in models of both standards come with `--standard pku|msr`; a cws
# without that flag has only the PKU one (what `cws segment` without --model
# runs). (A here-string, not a pipe: with pipefail, grep -q leaving early could
# fail the pipe.)
HAS_STANDARD=false
if grep -q -- --standard <<<"$("$CWS" segment --help 2>/dev/null)"; then HAS_STANDARD=true; fi
SIGHAN=$DATA/sighan2005
TRAIN=$DATA/train
for f in "$SIGHAN"/{pku,msr}_test.utf8 "$SIGHAN"/{pku,msr}_test_gold.utf8 \
    "$SIGHAN"/{pku,msr}_training_words.utf8 "$TRAIN"/{pku,msr}_10pct.utf8; do
    [[ -f $f ]] || die "missing $f (set CWS_DATA_DIR; see data/README.md)"
done
for m in "$MODEL_PKU" "$MODEL_MSR"; do
    [[ -z $m || -d $m ]] || die "no model folder $m"
done
# The cross-domain dev set (ud/README.md in the data folder): optional.
GSD_TEXT=$DATA/ud/gsdsimp_dev.utf8
GSD_GOLD=$DATA/ud/gsdsimp_dev_gold.utf8
HAVE_GSD=true
if [[ ! -f $GSD_TEXT || ! -f $GSD_GOLD ]]; then HAVE_GSD=false; fi

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

# cws_model STANDARD: set CWS_ARGS to the flags that pick cws's model of that
# standard (pku, msr) and CWS_MODEL_NAME to its name in the results; return 1
# when there is none (no CWS_MODEL_MSR and a binary without --standard).
cws_model() {
    local model=$MODEL_PKU
    if [[ $1 == msr ]]; then model=$MODEL_MSR; fi
    if [[ -n $model ]]; then
        CWS_ARGS=(--model "$model") CWS_MODEL_NAME=$model
    elif $HAS_STANDARD; then
        CWS_ARGS=(--standard "$1") CWS_MODEL_NAME="built-in $1"
    elif [[ $1 == pku ]]; then
        CWS_ARGS=() CWS_MODEL_NAME="built-in pku"
    else
        return 1
    fi
}

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
    # `cws bench segment` without --model runs the built-in (PKU) model.
    model_args=()
    if [[ -n $MODEL_PKU ]]; then model_args=(--model "$MODEL_PKU"); fi
    log "segment speed: cws, model ${MODEL_PKU:-built-in pku}"
    "$CWS" bench segment --input "$PKU_TEXT" "${model_args[@]+"${model_args[@]}"}" --threads "$THREADS" --device cpu \
        --repeat "$REPEAT" 2>&1 | tag segment segmenter=cws-model model="${MODEL_PKU:-built-in pku}"
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
score() { # segmenter corpus pred gold words [key=value ...]
    local seg=$1 corpus=$2 pred=$3 gold=$4 words=$5
    shift 5
    "$CWS" eval --gold "$gold" --pred "$pred" --words "$words" \
        --format json 2>"$OUT/eval-$seg-$corpus.log" | tag accuracy segmenter="$seg" corpus="$corpus" "$@"
}
cws_model_row() { # corpus text gold words standard: segment with cws's model of that standard, score
    local corpus=$1 text=$2 gold=$3 words=$4 std=$5
    if ! cws_model "$std"; then
        log "note: no CWS_MODEL_${std^^} and $CWS has no --standard (no built-in $std model): no cws model row for $corpus"
        return 0
    fi
    log "$corpus: cws, model $CWS_MODEL_NAME"
    "$CWS" segment "${CWS_ARGS[@]+"${CWS_ARGS[@]}"}" --threads "$THREADS" --device cpu --input "$text" \
        --output "$OUT/pred/cws-model-$corpus.utf8"
    score cws-model "$corpus" "$OUT/pred/cws-model-$corpus.utf8" "$gold" "$words" model="$CWS_MODEL_NAME"
}
peer_once() { # segmenter corpus text pkuseg-10pct-model: one pass, to $OUT/pred/SEGMENTER-CORPUS.utf8
    local seg=$1 corpus=$2 text=$3 trained=$4 args
    case $seg in
        jieba) args=(jieba segment) ;;
        pkuseg-default) args=(pkuseg segment --model default --user-dict default) ;;
        pkuseg-10pct) args=(pkuseg segment --model "$trained" --user-dict default --normalize) ;;
        pkuseg-10pct-nodict) args=(pkuseg segment --model "$trained" --user-dict none --normalize) ;;
        *) die "peer_once: unknown segmenter $seg" ;;
    esac
    "$PY" "$PEERS" "${args[@]}" --input "$text" --repeat 1 --threads "$THREADS" \
        --output "$OUT/pred/$seg-$corpus.utf8" 2>&1 | tag segment-once segmenter="$seg" corpus="$corpus"
}
PEER_ROWS=(jieba pkuseg-default pkuseg-10pct pkuseg-10pct-nodict)
if has_part accuracy; then
    for corpus in pku msr; do
        text=$SIGHAN/${corpus}_test.utf8
        gold=$SIGHAN/${corpus}_test_gold.utf8
        words=$SIGHAN/${corpus}_training_words.utf8
        pkuseg_trained=$PKUSEG_PKU
        if [[ $corpus == msr ]]; then pkuseg_trained=$PKUSEG_MSR; fi
        log "accuracy on $corpus"
        cws_model_row "$corpus" "$text" "$gold" "$words" "$corpus"
        "$CWS" segment --dict-only "$words" --input "$text" --output "$OUT/pred/cws-dict-$corpus.utf8"
        score cws-dict "$corpus" "$OUT/pred/cws-dict-$corpus.utf8" "$gold" "$words"
        # PKU outputs come from (b) when it ran (all but -nodict); the rest is segmented here, one pass.
        for seg in "${PEER_ROWS[@]}"; do
            if [[ $corpus == msr || $seg == pkuseg-10pct-nodict ]] || ! has_part segment; then
                peer_once "$seg" "$corpus" "$text" "$pkuseg_trained"
            fi
        done
        for seg in "${PEER_ROWS[@]}"; do
            score "$seg" "$corpus" "$OUT/pred/$seg-$corpus.utf8" "$gold" "$words"
        done
    done
    # The cross-domain set: the systems as they run on PKU (cws's PKU model,
    # pkuseg's PKU 10% models), OOV against the PKU training word list.
    if $HAVE_GSD; then
        corpus=gsdsimp-dev
        words=$SIGHAN/pku_training_words.utf8
        log "accuracy on $corpus (UD Chinese GSDSimp dev, cross-domain; PKU models, OOV against the PKU word list)"
        cws_model_row "$corpus" "$GSD_TEXT" "$GSD_GOLD" "$words" pku
        for seg in "${PEER_ROWS[@]}"; do
            peer_once "$seg" "$corpus" "$GSD_TEXT" "$PKUSEG_PKU"
            score "$seg" "$corpus" "$OUT/pred/$seg-$corpus.utf8" "$GSD_GOLD" "$words"
        done
    else
        log "note: no $GSD_TEXT and $GSD_GOLD (ud/README.md in the data folder): no gsdsimp-dev rows"
    fi
fi

# --- (d) report -------------------------------------------------------------
printf '{"part":"machine-end","loadavg_end":"%s","date":"%s"}\n' "$(loadavg)" "$(date -u +%Y-%m-%dT%H:%MZ)" >>"$RESULTS"
log "load average at end: $(loadavg); raw results in $RESULTS"
python3 scripts/bench_report.py "$RESULTS" | tee "$OUT/report.md"

#!/usr/bin/env python3
"""Peers of `cws bench`, measured the same way and printed as the same JSON lines.

  python scripts/bench_peers.py torch --shape tiny --shape small --mode both --threads 2
  python scripts/bench_peers.py torch --shape base --device cuda --dtype bf16
  python scripts/bench_peers.py jieba segment --input pku_test.utf8 --output jieba.txt --repeat 3
  python scripts/bench_peers.py pkuseg-train --train pku_10pct.utf8 --output models/pkuseg-pku
  python scripts/bench_peers.py pkuseg segment --input pku_test.utf8 --model models/pkuseg-pku --output p.txt

`torch`: transformers' BertForTokenClassification doing what `cws bench model`
does — a training step (forward, masked cross-entropy, backward, gradient
clipping at 1.0, torch.optim.AdamW) or an inference forward pass, on a random
batch of the same shape (vocabulary 21128, ids drawn from the CJK range,
every position attended). bf16/f16 on CUDA use autocast with f32 weights.

`jieba segment` / `pkuseg segment`: characters per second of the peer
segmenting a text file line by line in this one process (best of --repeat
passes over the whole file; characters = the file's non-whitespace characters,
as `cws bench segment` counts them), the process's peak RSS, and the last
pass's segmentation written to --output (words separated by two spaces, one
output line per input line) so that `cws eval` can score it. Both peers are
single-threaded Python (pkuseg's Viterbi is Cython); neither multiprocessing
mode (jieba.enable_parallel, pkuseg.test(nthread=...)) is used, and numpy's
BLAS pools are capped at --threads.

The 10% training splits are normalized (data/README.md): digits and Latin
runs became one `0` / `X`, full-width forms half-width. `pkuseg segment
--normalize` shows a model trained on them the test text through the same lens
(as cws does) and writes the original characters back; without it such a model
sees digit strings it never saw (PKU F1 0.850 instead of 0.909 here).

`pkuseg-train`: pkuseg.train() on a segmented file (e.g. the same 10% training
split cws trains on); the model folder it writes is what `pkuseg segment
--model` loads. pkuseg.train() also wants a test file, used only for its log
(the final iteration is saved, no selection): by default the first 200 lines
of the training file, so no test data is touched.

Needs torch and transformers for `torch`, jieba 0.42.1 for `jieba`, pkuseg
0.0.25 for `pkuseg` (install them into a temporary venv; scripts/bench.sh makes
one, see docs/BENCHMARKS.md).
"""
import argparse
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

# (hidden, layers, heads, intermediate): the same table as cws::bench::Shape.
SHAPES = {
    "tiny": (128, 2, 2, 512),
    "small": (256, 4, 4, 1024),
    "base": (768, 12, 12, 3072),
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_torch(args):
    import torch
    from transformers import BertConfig, BertForTokenClassification

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    for shape in args.shape:
        h, layers, heads, inter = SHAPES[shape]
        cfg = BertConfig(
            vocab_size=21128, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inter, max_position_embeddings=512, num_labels=4,
            attn_implementation=args.attn,
        )
        torch.manual_seed(0)
        model = BertForTokenClassification(cfg).to(device)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(670, 21128, (args.batch, args.seq), generator=gen).to(device)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 4, (args.batch, args.seq), generator=gen)
        labels[:, 0] = -100
        labels[:, -1] = -100
        labels = labels.to(device)
        no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or "LayerNorm" in n]
        decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4
        )
        scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def ctx():
            if autocast_dtype is None:
                return torch.autocast(device.type, enabled=False)
            return torch.autocast(device.type, dtype=autocast_dtype)

        modes = ["train", "infer"] if args.mode == "both" else [args.mode]
        for mode in modes:
            def step():
                """Seconds of the step's phases: forward (+ loss), backward, clipping + AdamW."""
                t0 = time.perf_counter()
                if mode == "infer":
                    model.eval()
                    with torch.inference_mode(), ctx():
                        model(input_ids=ids, attention_mask=mask).logits[0, 0, 0].item()
                    sync()
                    return (time.perf_counter() - t0, 0.0, 0.0)
                model.train()
                with ctx():
                    out = model(input_ids=ids, attention_mask=mask, labels=labels)
                sync()
                t1 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                if scaler:
                    scaler.scale(out.loss).backward()
                else:
                    out.loss.backward()
                sync()
                t2 = time.perf_counter()
                if scaler:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(opt)
                    scaler.update()
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                sync()
                return (t1 - t0, t2 - t1, time.perf_counter() - t2)

            for _ in range(args.warmup):
                step()
            timed = [step() for _ in range(args.steps)]
            secs = sum(sum(p) for p in timed) / args.steps
            train = mode == "train"

            def med(i):
                return statistics.median(p[i] for p in timed) if train else None

            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "Cpu"
            print(json.dumps({
                "system": f"pytorch {torch.__version__}", "mode": mode, "shape": shape, "device": name,
                "dtype": args.dtype, "batch": args.batch, "seq": args.seq, "steps": args.steps,
                "seconds_per_step": secs, "tokens_per_s": args.batch * args.seq / secs,
                "median_seconds_per_step": statistics.median(sum(p) for p in timed),
                "median_forward_seconds": med(0), "median_backward_seconds": med(1),
                "median_optimizer_seconds": med(2),
                "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            }), flush=True)
            phases = f"; fwd {med(0) * 1e3:.1f} bwd {med(1) * 1e3:.1f} opt {med(2) * 1e3:.1f}" if train else ""
            print(f"pytorch {mode:5} {shape:5} {args.batch * args.seq / secs:9.0f} tokens/s  "
                  f"{secs * 1e3:7.1f} ms/step (median {statistics.median(sum(p) for p in timed) * 1e3:.1f}{phases})",
                  file=sys.stderr)


def read_lines(path):
    """The file's lines without their line ends (CRLF or LF)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f.read().splitlines()]


def count_chars(lines):
    return sum(1 for line in lines for c in line if not c.isspace())


def join_words(words):
    """Words of one line, separated by two spaces; whitespace never inside a word."""
    return "  ".join(w for tok in words for w in tok.split())


NUMBER = re.compile(r"[-+]?[0-9]+(?:[.·][0-9]+)?%?")
LATIN = re.compile(r"[A-Za-z_.]+")


def normalize(line):
    """The training splits' normalization (see data/README.md): full-width ASCII
    to half-width, U+3000 to a space, each number to `0`, each run of Latin
    letters / `_` / `.` to `X`. Returns the normalized text and, per normalized
    character, the span of the original line it stands for."""
    half = "".join(
        chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c) for c in line
    )
    spans = [(i, i + 1) for i in range(len(half))]
    for pattern, unit in ((NUMBER, "0"), (LATIN, "X")):
        text, new_spans, pos = [], [], 0
        for m in pattern.finditer(half):
            text.append(half[pos:m.start()])
            new_spans.extend(spans[pos:m.start()])
            text.append(unit)
            new_spans.append((spans[m.start()][0], spans[m.end() - 1][1]))
            pos = m.end()
        text.append(half[pos:])
        new_spans.extend(spans[pos:])
        half, spans = "".join(text), new_spans
    return half, spans


def with_normalization(cut):
    """Segment the normalized line, then give each word its original characters back."""
    def cut_original(line):
        text, spans = normalize(line)
        words, i = [], 0
        for w in cut(text):
            parts = []
            for c in w:
                while i < len(text) and text[i] != c and text[i].isspace():
                    i += 1  # the segmenter dropped whitespace
                if i >= len(text) or text[i] != c:
                    raise ValueError(f"segmenter output does not spell its input: {line!r}")
                a, b = spans[i]
                parts.append(line[a:b])
                i += 1
            words.append("".join(parts))
        return words
    return cut_original


def load_segmenter(args):
    """(name, function line -> list of words, load seconds)."""
    t0 = time.perf_counter()
    if args.peer == "jieba":
        import jieba

        jieba.setLogLevel(60)
        if args.dict:
            jieba.set_dictionary(args.dict)
        jieba.initialize()
        name = f"jieba {jieba.__version__}"
        hmm = not args.no_hmm

        def cut(line):
            return jieba.lcut(line, HMM=hmm)
    else:
        import pkuseg

        user_dict = None if args.user_dict == "none" else args.user_dict
        seg = pkuseg.pkuseg(model_name=args.model, user_dict=user_dict)
        version = getattr(pkuseg, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version

            version = dist_version("pkuseg")
        model = "default" if args.model == "default" else os.path.basename(os.path.normpath(args.model))
        name = f"pkuseg {version} ({model} model, user_dict {args.user_dict})"

        def cut(line):
            return seg.cut(line) if line.strip() else []
    if getattr(args, "normalize", False):
        cut = with_normalization(cut)
        name += ", normalized input"
    return name, cut, time.perf_counter() - t0


def bench_segment(args):
    lines = read_lines(args.input)
    chars = count_chars(lines)
    name, cut, load_s = load_segmenter(args)
    best = None
    out = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        segmented = [cut(line) for line in lines]
        secs = time.perf_counter() - t0
        best = secs if best is None else min(best, secs)
        out = segmented
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="\n") as f:
            for words in out:
                f.write(join_words(words) + "\n")
    print(json.dumps({
        "chars": chars, "chars_per_s": chars / best, "input": args.input, "mode": "segment",
        "peak_rss_mib": peak_rss_mib(), "seconds": best, "system": name, "threads": 1,
        "processes": 1, "repeat": args.repeat, "load_seconds": load_s, "output": args.output,
    }, ensure_ascii=False), flush=True)
    print(f"{name}: {chars / best:.0f} chars/s ({chars} chars in {best:.2f} s, best of {args.repeat})",
          file=sys.stderr)


def pkuseg_train(args):
    import pkuseg

    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        test = args.test
        if test is None:
            test = os.path.join(tmp, "log-only.utf8")
            with open(test, "w", encoding="utf-8") as f:
                f.write("\n".join(read_lines(args.train)[:200]) + "\n")
        t0 = time.perf_counter()
        # pkuseg prints its progress on stdout; keep stdout for the JSON line.
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            pkuseg.train(args.train, test, args.output, train_iter=args.iters)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        secs = time.perf_counter() - t0
    print(json.dumps({
        "system": "pkuseg", "mode": "pkuseg-train", "train": args.train, "model": args.output,
        "iters": args.iters, "seconds": secs, "peak_rss_mib": peak_rss_mib(),
    }), flush=True)


def cap_threads(n):
    """Cap numpy's BLAS / OpenMP pools before numpy is imported."""
    if n:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(n))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="peer", required=True)
    t = sub.add_parser("torch", help="BertForTokenClassification training step / inference")
    t.add_argument("--shape", action="append", choices=sorted(SHAPES))
    t.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seq", type=int, default=128)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--device", default="cpu")
    t.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    t.add_argument("--threads", type=int)
    t.add_argument("--attn", default="eager", help="transformers attention implementation (eager, sdpa)")

    for peer in ("jieba", "pkuseg"):
        pp = sub.add_parser(peer, help=f"{peer}: segmentation speed (and output for scoring)")
        psub = pp.add_subparsers(dest="action", required=True)
        s = psub.add_parser("segment", help="chars/s over a text file, best of --repeat passes")
        s.add_argument("--input", required=True, help="unsegmented text, one sentence per line")
        s.add_argument("--output", help="write the (last pass's) segmentation here")
        s.add_argument("--repeat", type=int, default=3, help="passes over the input; the best is reported")
        s.add_argument("--threads", type=int, default=2,
                       help="cap for numpy's thread pools (the peer itself runs one thread)")
        if peer == "jieba":
            s.add_argument("--dict", help="replace jieba's main dictionary (default: its bundled one)")
            s.add_argument("--no-hmm", action="store_true", help="no HMM for unknown words")
        else:
            s.add_argument("--model", default="default",
                           help="model folder written by pkuseg-train (default: pkuseg's bundled mixed-domain model)")
            s.add_argument("--user-dict", default="none",
                           help="'none' (default: the model alone), 'default' (pkuseg's bundled dictionary) or a word list file")
            s.add_argument("--normalize", action="store_true",
                           help="show the model the text normalized as the 10%% training splits are (half-width, "
                                "numbers -> 0, Latin runs -> X), write the original characters")
    t = sub.add_parser("pkuseg-train", help="train a pkuseg model (pkuseg.train)")
    t.add_argument("--train", required=True, help="segmented training file (words separated by spaces)")
    t.add_argument("--output", required=True, help="model folder to write")
    t.add_argument("--iters", type=int, default=20, help="training iterations (pkuseg's default: 20)")
    t.add_argument("--test", help="file for pkuseg's own log (default: the first 200 training lines)")
    t.add_argument("--threads", type=int, default=2, help="cap for numpy's thread pools")
    args = p.parse_args()
    if args.peer == "torch":
        args.shape = args.shape or ["tiny", "small"]
        bench_torch(args)
    elif args.peer in ("jieba", "pkuseg"):
        cap_threads(args.threads)
        bench_segment(args)
    else:
        cap_threads(args.threads)
        pkuseg_train(args)


if __name__ == "__main__":
    main()

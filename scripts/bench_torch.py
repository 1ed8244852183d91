#!/usr/bin/env python3
"""PyTorch twin of examples/bench_step.rs: the same shapes, batch and step.

One training step = forward, loss, backward, clip_grad_norm_(1.0), AdamW step
(torch's default implementation on CPU); inference = a forward under
torch.inference_mode(). Median of BENCH_ITERS after one warm-up iteration.
Usage: python scripts/bench_torch.py [tiny small base]; BENCH_THREADS (default 2).
"""
import os
import statistics
import sys
import time

import torch
from transformers import BertConfig, BertForTokenClassification

SHAPES = {
    "tiny": (128, 2, 2, 512),
    "small": (256, 4, 4, 1024),
    "base": (768, 12, 12, 3072),
}


def main():
    names = sys.argv[1:] or ["tiny", "small", "base"]
    batch = int(os.environ.get("BENCH_BATCH", 16))
    seq = int(os.environ.get("BENCH_SEQ", 128))
    iters = int(os.environ.get("BENCH_ITERS", 3))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 2)))
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}x{seq}, median of {iters}")
    n = batch * seq
    ids = (torch.arange(n) * 7919 % 21000 + 100).reshape(batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.long)
    labels = (torch.arange(n) % 4).reshape(batch, seq)
    for name in names:
        h, layers, heads, inter = SHAPES[name]
        cfg = BertConfig(
            vocab_size=21128,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            num_labels=4,
        )
        model = BertForTokenClassification(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        train, fwd, bwd, infer = [], [], [], []
        for it in range(iters + 1):
            model.train()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)
            t4 = time.perf_counter()
            if it > 0:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
                train.append(t3 - t0)
                infer.append(t4 - t3)
        tr, inf = statistics.median(train), statistics.median(infer)
        print(
            f"{name:5} torch  train step {tr * 1e3:8.1f} ms ({n / tr:7.0f} tok/s; "
            f"fwd {statistics.median(fwd) * 1e3:.1f} ms, bwd {statistics.median(bwd) * 1e3:.1f} ms) | "
            f"inference {inf * 1e3:8.1f} ms ({n / inf:7.0f} tok/s)"
        )


if __name__ == "__main__":
    main()

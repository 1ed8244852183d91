#!/usr/bin/env python3
"""Peers of `cws bench`, measured the same way and printed as the same JSON lines.

  python scripts/bench_peers.py torch --shape tiny --shape small --mode both --threads 2
  python scripts/bench_peers.py torch --shape base --device cuda --dtype bf16

`torch`: transformers' BertForTokenClassification doing what `cws bench model`
does — a training step (forward, masked cross-entropy, backward, gradient
clipping at 1.0, torch.optim.AdamW) or an inference forward pass, on a random
batch of the same shape (vocabulary 21128, ids drawn from the CJK range,
every position attended). bf16/f16 on CUDA use autocast with f32 weights.

Needs torch and transformers (install them into a temporary venv).
"""
import argparse
import json
import resource
import sys
import time

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
                if mode == "train":
                    model.train()
                    with ctx():
                        out = model(input_ids=ids, attention_mask=mask, labels=labels)
                    opt.zero_grad(set_to_none=True)
                    if scaler:
                        scaler.scale(out.loss).backward()
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        scaler.step(opt)
                        scaler.update()
                    else:
                        out.loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        opt.step()
                else:
                    model.eval()
                    with torch.inference_mode(), ctx():
                        model(input_ids=ids, attention_mask=mask).logits[0, 0, 0].item()
                sync()

            for _ in range(args.warmup):
                step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            secs = (time.perf_counter() - t0) / args.steps
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "Cpu"
            print(json.dumps({
                "system": f"pytorch {torch.__version__}", "mode": mode, "shape": shape, "device": name,
                "dtype": args.dtype, "batch": args.batch, "seq": args.seq, "steps": args.steps,
                "seconds_per_step": secs, "tokens_per_s": args.batch * args.seq / secs,
                "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            }), flush=True)
            print(f"pytorch {mode:5} {shape:5} {args.batch * args.seq / secs:9.0f} tokens/s  "
                  f"{secs * 1e3:7.1f} ms/step", file=sys.stderr)


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
    args = p.parse_args()
    if args.peer == "torch":
        args.shape = args.shape or ["tiny", "small"]
        bench_torch(args)


if __name__ == "__main__":
    main()

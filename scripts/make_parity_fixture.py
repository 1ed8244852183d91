#!/usr/bin/env python3
"""Builds the PyTorch/transformers reference that the Rust BERT model is checked against.

Regenerate (deterministic, overwrites tests/fixtures/parity/):
    /work/pyenv/bin/python scripts/make_parity_fixture.py
Check that a checkpoint folder written by cws opens in transformers:
    /work/pyenv/bin/python scripts/make_parity_fixture.py --check-hf DIR

The fixture is a tiny random BertForTokenClassification with dropout disabled, so
every number is deterministic: its initial weights (model.safetensors, HF names),
its config (config.json) and expected.safetensors holding the batch, logits,
loss, gradients and the weights after three clipped, scheduled AdamW steps.
"""

import argparse
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForTokenClassification,
    get_linear_schedule_with_warmup,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "parity")

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
WARMUP = 2
TOTAL = 6
STEPS = 3
# Parameters whose gradients are recorded: one or more per depth of the network.
GRAD_PARAMS = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "bert.encoder.layer.0.attention.output.dense.weight",
    "bert.encoder.layer.0.attention.output.LayerNorm.weight",
    "bert.encoder.layer.1.intermediate.dense.weight",
    "bert.encoder.layer.1.output.dense.weight",
    "bert.encoder.layer.1.output.LayerNorm.bias",
    "classifier.weight",
    "classifier.bias",
]


def batch():
    g = torch.Generator().manual_seed(1)
    lengths = [10, 7, 4]  # tokens including [CLS] and [SEP]
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.int64)
    mask = torch.zeros(len(lengths), t, dtype=torch.int64)
    labels = torch.full((len(lengths), t), -100, dtype=torch.int64)
    for i, n in enumerate(lengths):
        # Ids 0..4 are special ([PAD]=0, [CLS]=2, [SEP]=3) and never appear inside text.
        ids[i, 1 : n - 1] = torch.randint(5, 128, (n - 2,), generator=g)
        ids[i, 0] = 2
        ids[i, n - 1] = 3
        mask[i, :n] = 1
        labels[i, 1 : n - 1] = torch.randint(0, 4, (n - 2,), generator=g)
    return ids, mask, labels


def build_model():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # Larger than BERT's 0.02 so activations and gradients are far from zero.
        initializer_range=0.1,
        pad_token_id=0,
        id2label={0: "B", 1: "I", 2: "E", 3: "S"},
        label2id={"B": 0, "I": 1, "E": 2, "S": 3},
    )
    config._attn_implementation = "eager"
    model = BertForTokenClassification(config)
    # HF starts biases at 0 and LayerNorm at 1/0; perturb them so their gradients
    # and the way they enter the forward pass are actually exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.train()  # dropout is 0, so train and eval agree; train mirrors the Rust run
    return model


def param_groups(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith(".bias") or "LayerNorm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make():
    os.makedirs(OUT, exist_ok=True)
    model = build_model()
    ids, mask, labels = batch()

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "config.json"), os.path.join(OUT, "config.json"))
        # Re-save with plain names/contiguous tensors so the file holds exactly our params.
    save_file(
        {k: v.detach().contiguous() for k, v in model.named_parameters()},
        os.path.join(OUT, "model.safetensors"),
    )

    expected = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    expected["logits"] = out.logits.detach().clone()
    expected["loss"] = out.loss.detach().reshape(1).clone()
    out.loss.backward()
    params = dict(model.named_parameters())
    for name in GRAD_PARAMS:
        expected["grad." + name] = params[name].grad.detach().clone()
    model.zero_grad()

    # Half the first step's gradient norm, so that clipping changes every step.
    first = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    first.backward()
    norm0 = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    max_norm = float(f"{0.5 * norm0:.3g}")
    model.zero_grad()

    opt = torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, eps=EPS)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)
    norms, lrs = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(n > max_norm for n in norms), (norms, max_norm)
    for name, p in model.named_parameters():
        expected["step3." + name] = p.detach().clone()
    expected["max_norm"] = torch.tensor([max_norm], dtype=torch.float64)
    expected["grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    expected["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    save_file(
        {k: v.contiguous() for k, v in expected.items()},
        os.path.join(OUT, "expected.safetensors"),
    )
    print(f"loss {out.loss.item():.6f} max_norm {max_norm} grad_norms {norms} lrs {lrs}")


def check_hf(folder):
    model = BertForTokenClassification.from_pretrained(folder, attn_implementation="eager")
    model.eval()
    expected = load_file(os.path.join(OUT, "expected.safetensors"))
    with torch.no_grad():
        logits = model(
            input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]
        ).logits
    diff = (logits - expected["logits"]).abs().max().item()
    print(f"max abs logits difference: {diff:.3e}")
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-hf", metavar="DIR", help="load a cws checkpoint folder in transformers")
    args = ap.parse_args()
    if args.check_hf:
        raise SystemExit(0 if check_hf(args.check_hf) < 1e-4 else 1)
    make()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds the pytorch-crf reference that cws's CRF layer (src/crf.rs) is checked against.

Regenerate (deterministic, overwrites tests/fixtures/crf/):
    python -m venv /work/pyenv && /work/pyenv/bin/pip install torch pytorch-crf safetensors numpy
    /work/pyenv/bin/python scripts/make_crf_fixture.py

Random emissions for a batch with padding (rows of different lengths, the mask's
ones first in each row), random gold tags, random CRF scores; recorded: the
per-sequence log-likelihood (reduction "none"), its "sum" and "token_mean", the
gradients of -sum(llh) with respect to the emissions and the three score tensors,
and the decoded best paths (torchcrf.CRF.decode, which knows no BIES constraint).
"""

import json
import os
from importlib.metadata import version

import torch
from safetensors.torch import save_file
from torchcrf import CRF

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "crf")

LABELS = 4
LENGTHS = [9, 6, 1, 9, 3]


def main():
    torch.manual_seed(20261203)
    b, t = len(LENGTHS), max(LENGTHS)
    crf = CRF(LABELS, batch_first=True)
    with torch.no_grad():
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            p.copy_(torch.randn_like(p))
    emissions = (torch.randn(b, t, LABELS) * 2.0).requires_grad_()
    tags = torch.randint(0, LABELS, (b, t))
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = True

    llh = crf(emissions, tags, mask=mask, reduction="none")
    total = crf(emissions, tags, mask=mask, reduction="sum")
    token_mean = crf(emissions, tags, mask=mask, reduction="token_mean")
    (-total).backward()
    paths = crf.decode(emissions.detach(), mask=mask)

    os.makedirs(OUT, exist_ok=True)
    save_file(
        {
            "emissions": emissions.detach().contiguous(),
            "tags": tags.to(torch.int64).contiguous(),
            "mask": mask.to(torch.uint8).contiguous(),
            "transitions": crf.transitions.detach().contiguous(),
            "start_transitions": crf.start_transitions.detach().contiguous(),
            "end_transitions": crf.end_transitions.detach().contiguous(),
            "llh": llh.detach().contiguous(),
            "llh_sum": total.detach().reshape(1).contiguous(),
            "llh_token_mean": token_mean.detach().reshape(1).contiguous(),
            "grad_emissions": emissions.grad.contiguous(),
            "grad_transitions": crf.transitions.grad.contiguous(),
            "grad_start_transitions": crf.start_transitions.grad.contiguous(),
            "grad_end_transitions": crf.end_transitions.grad.contiguous(),
        },
        os.path.join(OUT, "expected.safetensors"),
    )
    with open(os.path.join(OUT, "paths.json"), "w") as f:
        json.dump(
            {
                "paths": paths,
                "torch": torch.__version__,
                "pytorch_crf": version("pytorch-crf"),
            },
            f,
            indent=1,
        )
        f.write("\n")


if __name__ == "__main__":
    main()

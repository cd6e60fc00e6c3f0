#!/usr/bin/python3
"""sequence_expected.py — prints the PyTorch 1.13 numbers and strings hard-coded in
tests/test_sequence_layers.c (issue 12's layers: initialisation after manual_seed, torch's
repr of each). Run with Debian's /usr/bin/python3 and paste what changed."""
import torch
import torch.nn as nn


def show(name, t):
    vals = ", ".join("%.9g" % v for v in t.detach().reshape(-1).tolist())
    print("%s: shape %s\n  {%s}" % (name, list(t.shape), vals))


torch.manual_seed(0)
conv = nn.Conv1d(2, 4, 3)
show("conv1d(2,4,3).weight", conv.weight)
show("conv1d(2,4,3).bias", conv.bias)

torch.manual_seed(0)
wpe = nn.Embedding(5, 4)  # what positional_embedding(5, 4) draws
show("positional_embedding(5,4).weight", wpe.weight)

for m in [nn.Conv1d(2, 4, 3), nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2,
                                         bias=False),
          nn.ELU(), nn.ELU(alpha=0.3), nn.LogSoftmax(dim=-1), nn.GroupNorm(2, 4),
          nn.GroupNorm(3, 6, eps=1e-3, affine=False)]:
    print(repr(m))
print(list(nn.GroupNorm(2, 4).state_dict().keys()), list(nn.Conv1d(2, 4, 3).state_dict().keys()))

#!/usr/bin/python3
"""sequence_torch_check.py — the PyTorch side of tests/test_sequence_layers.c: Kiln's
sequence-layer models as torch modules (nn.Conv1d, nn.GroupNorm, nn.ELU, nn.LogSoftmax,
and nanoGPT's x + wpe(arange(T)) for positional_embedding), their weights moved both ways
through safetensors and loaded with load_state_dict(strict=True).

  check MODEL SEED WEIGHTS IO   Kiln wrote WEIGHTS (its initial weights for SEED) and IO
                                (inputs, outputs): the weights must equal torch's own for
                                manual_seed(SEED), load strictly, and give the same outputs.
  export MODEL SEED WEIGHTS IO  writes torch's weights (seed SEED, then perturbed so they
                                are not an initialisation) and IO for Kiln to load.
MODEL is "tokens" or "signal". Exits 0 on success, 1 with the difference, 77 without torch.
Safetensors are read and written by hand (the library is not a dependency)."""
import json
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError:
    print("sequence_torch_check: no torch or numpy")
    sys.exit(77)


class PositionalEmbedding(nn.Module):
    """Kiln's positional_embedding: nanoGPT's wpe = nn.Embedding(n, d), added for 0..T-1."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.normal_(self.weight)  # nn.Embedding's reset_parameters

    def forward(self, x):
        return x + self.weight[: x.shape[-2]]


def build(name):
    if name == "tokens":  # input [12] int64, as in tests/test_sequence_layers.c
        return nn.Sequential(nn.Embedding(20, 8), PositionalEmbedding(16, 8), nn.LayerNorm(8),
                             nn.Linear(8, 16), nn.ELU(0.5), nn.Dropout(0.1), nn.Linear(16, 20),
                             nn.LogSoftmax(dim=-1))
    if name == "signal":  # input [2, 16] float32
        return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ELU(),
                             nn.Conv1d(4, 6, 3, stride=2, dilation=2, groups=2, bias=False),
                             nn.Flatten(), nn.Linear(36, 3), nn.LogSoftmax(dim=1))
    raise SystemExit("unknown model " + name)


DTYPES = {"F32": (np.float32, torch.float32), "I64": (np.int64, torch.int64)}


def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for key, e in header.items():
        if key == "__metadata__":
            continue
        a, b = e["data_offsets"]
        array = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=DTYPES[e["dtype"]][0])
        out[key] = torch.from_numpy(array.reshape(e["shape"]).copy())
    return out


def save(path, tensors):
    header, chunks, offset = {}, [], 0
    for key, t in tensors.items():
        t = t.detach().contiguous()
        code = "I64" if t.dtype == torch.int64 else "F32"
        data = t.numpy().astype(DTYPES[code][0]).tobytes()
        header[key] = {"dtype": code, "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def inputs_for(name):
    torch.manual_seed(123)
    if name == "tokens":
        return torch.randint(0, 20, (5, 12))
    return torch.randn(5, 2, 16)


def main():
    mode, name, seed, weights_path, io_path = sys.argv[1:6]
    torch.manual_seed(int(seed))
    model = build(name)
    if mode == "check":
        kiln = load(weights_path)
        mine = model.state_dict()
        if sorted(kiln) != sorted(mine):
            print("names differ: kiln %s, torch %s" % (sorted(kiln), sorted(mine)))
            return 1
        for key, t in mine.items():
            if kiln[key].shape != t.shape:
                print("%s: kiln %s, torch %s" % (key, list(kiln[key].shape), list(t.shape)))
                return 1
            # the same draws; N(0, 1) values differ in the last bit or two (float rounding)
            if not torch.allclose(kiln[key], t, rtol=1e-5, atol=1e-6):
                diff = (kiln[key] - t).abs().max().item()
                print("%s: Kiln's initial weights differ from torch's by %g" % (key, diff))
                return 1
        model.load_state_dict(kiln, strict=True)
        io = load(io_path)
        model.eval()
        with torch.no_grad():
            out = model(io["inputs"])
        diff = (out - io["outputs"]).abs().max().item()
        print("%s: initial weights equal, outputs within %g" % (name, diff))
        return 0 if diff <= 1e-4 else 1
    with torch.no_grad():  # export: weights that are not an initialisation
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    model.eval()
    x = inputs_for(name)
    with torch.no_grad():
        out = model(x)
    save(weights_path, model.state_dict())
    save(io_path, {"inputs": x, "outputs": out})
    print("%s: exported %d tensors" % (name, len(model.state_dict())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""The torch side of tests/test_graph.c: the module equivalent to the graph spec
tests/specs/valid/model-graph-tiny-lm.json, written as a torch user writes it
(nn.Module subclasses, a ModuleList of blocks, the head's weight tied to the
embedding's), and three checks:

  load INIT WEIGHTS    INIT (Kiln's initial weights for seed 7) equals what
                       torch.manual_seed(7) gives this module; WEIGHTS loads strictly.
  outputs WEIGHTS IO   the module with WEIGHTS, on IO's tokens, gives IO's lm_head and
                       cls outputs within 1e-4.
  save WEIGHTS IO      writes this module's state_dict (weights moved off their initial
                       values; both names of the tied weight) and its outputs on some
                       tokens, for Kiln to load strictly.

Exit status 0 when the check holds, 1 (with a message) when not, 77 without torch.
"""
import json
import struct
import sys

try:
    import torch
    import torch.nn as nn
except ImportError:
    print("check_graph_torch: torch is not installed")
    sys.exit(77)

T, C, HEADS, VOCAB = 8, 16, 2, 20


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def forward(self, x):
        n = x.shape[0]
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.reshape(n, T, HEADS, C // HEADS).transpose(1, 2)
        k = k.reshape(n, T, HEADS, C // HEADS).permute(0, 2, 3, 1)
        v = v.reshape(n, T, HEADS, -1).transpose(1, 2)
        weights = torch.softmax(q @ k, dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(n, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(C, 4 * C)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = Attention()
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, C)
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # the head shares the embedding's matrix
        self.cls = nn.Linear(C, 3)

    def forward(self, tokens):
        x = self.wte(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x), self.cls(x.mean(dim=1))


def fail(message):
    print("check_graph_torch: " + message)
    sys.exit(1)


DTYPES = {"F32": torch.float32, "I64": torch.int64}


def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, e in header.items():
        a, b = e["data_offsets"]
        t = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"])
    return out


def save(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        data = t.numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    mode = sys.argv[1]
    if mode == "load":
        init, weights = load(sys.argv[2]), load(sys.argv[3])
        torch.manual_seed(7)
        model = TinyLM()
        state = model.state_dict()
        if sorted(state) != sorted(init):
            fail(f"state-dict names differ: torch {sorted(state)}, kiln {sorted(init)}")
        for name, t in state.items():
            if t.shape != init[name].shape or not torch.allclose(t, init[name], rtol=0, atol=1e-6):
                fail(f"{name}: torch's initial values differ from Kiln's for seed 7")
        model.load_state_dict(weights, strict=True)
        if model.lm_head.weight is not model.wte.weight:
            fail("the tie was lost")
    elif mode == "outputs":
        model = TinyLM()
        model.load_state_dict(load(sys.argv[2]), strict=True)
        model.eval()
        io = load(sys.argv[3])
        with torch.no_grad():
            logits, cls = model(io["tokens"])
        for name, got in (("lm_head", logits), ("cls", cls)):
            diff = (got - io[name]).abs().max().item()
            print(f"check_graph_torch: {name} max abs difference {diff:.3g} (largest value {got.abs().max().item():.3g})")
            if diff > 1e-4:
                fail(f"{name} differs by {diff}")
    elif mode == "save":
        torch.manual_seed(11)
        model = TinyLM()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        tokens = torch.randint(0, VOCAB, (5, T))
        with torch.no_grad():
            logits, cls = model(tokens)
        save(sys.argv[2], model.state_dict())
        save(sys.argv[3], {"tokens": tokens, "lm_head": logits, "cls": cls})
    else:
        fail(f"unknown mode {mode}")
    print("ok")


if __name__ == "__main__":
    main()

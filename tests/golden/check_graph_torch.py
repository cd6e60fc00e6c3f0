#!/usr/bin/python3
"""The torch side of tests/test_graph.c: the modules equivalent to the graph specs
tests/specs/valid/model-graph-tiny-lm.json (MODEL tiny-lm, the default),
model-graph-gpt.json (MODEL gpt: nn.TransformerEncoderLayer blocks, causal, with a
key-padding mask) and examples/chargpt.json (MODEL chargpt: bench/gpt/torch_gpt.py's
CharGPT itself, imported from there, with the example's vocabulary of 256), written as a
torch user writes them (nn.Module subclasses, a ModuleList of blocks, the head's weight
tied to the embedding's), and three checks:

  load INIT WEIGHTS [MODEL]    INIT (Kiln's initial weights for seed 7) equals what
                               torch.manual_seed(7) gives this module, within 1e-5:
                               torch's normal_ fills tables of 16 or more values with a
                               Box-Muller transform in float (angle 2 pi u rounded to
                               float, vectorised cosine), so where the cosine is near 0
                               a draw can differ from Kiln's by ~2e-6 (seen in the
                               256 x 128 embedding of chargpt); WEIGHTS loads strictly.
  outputs WEIGHTS IO [MODEL]   the module with WEIGHTS, on IO's inputs, gives IO's
                               outputs within 1e-4.
  save WEIGHTS IO [MODEL]      writes this module's state_dict (weights moved off their
                               initial values; both names of the tied weight), some
                               inputs and its outputs on them, for Kiln to load strictly.

Exit status 0 when the check holds, 1 (with a message) when not, 77 without torch.
"""
import os
import sys

try:
    import torch
    import torch.nn as nn
except ImportError:
    print("check_graph_torch: torch is not installed")
    sys.exit(77)

from torch_safetensors import load, save  # noqa: E402  (after torch: exit 77 first)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bench", "gpt"))
import torch_gpt  # noqa: E402  (bench/gpt's CharGPT: the module examples/chargpt.json is)

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

    def run(self, io):
        logits, cls = self(io["tokens"])
        return {"lm_head": logits, "cls": cls}

    @staticmethod
    def example_inputs():
        return {"tokens": torch.randint(0, VOCAB, (5, T))}


class GPT(nn.Module):
    """model-graph-gpt.json: pre-norm causal transformer layers over token embeddings,
    a key-padding mask (nonzero = padding) given to every layer, the head tied."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, C)
        self.h = nn.ModuleList([
            nn.TransformerEncoderLayer(C, HEADS, 32, dropout=0.1, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(2)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens, padding):
        x = self.wte(tokens)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        for layer in self.h:
            x = layer(x, src_mask=causal, src_key_padding_mask=padding != 0)
        return self.lm_head(self.ln_f(x))

    def run(self, io):
        return {"lm_head": self(io["tokens"], io["padding"])}

    @staticmethod
    def example_inputs():
        padding = torch.zeros(5, T, dtype=torch.int64)
        padding[1, 6:] = 1  # trailing padding: every query still sees key 0
        padding[3, 3:] = 1
        return {"tokens": torch.randint(0, VOCAB, (5, T)), "padding": padding}


class CharGPT(torch_gpt.CharGPT):
    """examples/chargpt.json: the benchmark's module, unchanged, at the example's
    vocabulary (256 rows: any byte or any text of up to 256 distinct characters)."""

    def __init__(self):
        super().__init__(256)

    def run(self, io):
        return {"lm_head": self(io["tokens"])}

    @staticmethod
    def example_inputs():
        return {"tokens": torch.randint(0, 256, (3, torch_gpt.BLOCK))}


MODELS = {"tiny-lm": TinyLM, "gpt": GPT, "chargpt": CharGPT}


def fail(message):
    print("check_graph_torch: " + message)
    sys.exit(1)


def main():
    mode = sys.argv[1]
    Model = MODELS[sys.argv[4] if len(sys.argv) > 4 else "tiny-lm"]
    if mode == "load":
        init, weights = load(sys.argv[2]), load(sys.argv[3])
        torch.manual_seed(7)
        model = Model()
        state = model.state_dict()
        if sorted(state) != sorted(init):
            fail(f"state-dict names differ: torch {sorted(state)}, kiln {sorted(init)}")
        for name, t in state.items():
            if t.shape != init[name].shape:
                fail(f"{name}: torch's shape {list(t.shape)}, Kiln's {list(init[name].shape)}")
            if not torch.allclose(t, init[name], rtol=1e-6, atol=1e-5):
                diff = (t - init[name]).abs()
                at = int(diff.argmax())
                fail(f"{name}: torch's initial values differ from Kiln's for seed 7 (by "
                     f"{diff.max().item():.3g} at element {at}: torch "
                     f"{t.reshape(-1)[at].item():.9g}, Kiln {init[name].reshape(-1)[at].item():.9g})")
        model.load_state_dict(weights, strict=True)
        tied = Model is not CharGPT  # nanoGPT ties them; bench/gpt's model does not
        if tied and model.lm_head.weight is not model.wte.weight:
            fail("the tie was lost")
    elif mode == "outputs":
        model = Model()
        model.load_state_dict(load(sys.argv[2]), strict=True)
        model.eval()
        io = load(sys.argv[3])
        with torch.no_grad():
            outputs = model.run(io)
        for name, got in outputs.items():
            diff = (got - io[name]).abs().max().item()
            print(f"check_graph_torch: {name} max abs difference {diff:.3g} (largest value {got.abs().max().item():.3g})")
            if diff > 1e-4:
                fail(f"{name} differs by {diff}")
    elif mode == "save":
        torch.manual_seed(11)
        model = Model()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        inputs = model.example_inputs()
        with torch.no_grad():
            outputs = model.run(inputs)
        save(sys.argv[2], model.state_dict())
        save(sys.argv[3], {**inputs, **outputs})
    else:
        fail(f"unknown mode {mode}")
    print("ok")


if __name__ == "__main__":
    main()

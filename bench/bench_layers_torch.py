#!/usr/bin/python3
"""bench_layers_torch.py — PyTorch's side of bench_layers.c: the rows of
bench/bench_layers.rows (every layer of the Fashion-MNIST CNN, MLP and ResNet at batch 64
and of the character GPT at batch 12 x 64 tokens, forward alone and forward + backward,
and each Fashion-MNIST model's whole training step: forward, cross_entropy, backward,
Adam). Each layer is the torch module or function the model uses (bench/fmnist/
torch_fmnist.py, bench/gpt/torch_gpt.py), in training mode. Attention (issue 12) as
nanoGPT computes it on torch 1.13 (no flash attention there: q k^T, masked_fill, softmax,
@ v), alone (sdpa) and in its CausalSelfAttention module (mha); the GPT's own attention
and block (multi_head_attention, transformer_encoder_layer) are nn.MultiheadAttention and
nn.TransformerEncoderLayer with torch_gpt.py's causal mask. Same timing method as
bench_layers.c (warm-up, runs of ~50 ms, median of the runs). Prints one line per
measurement, "<model>.<layer> fwd|fwdbwd <median microseconds>", which bench_layers reads.

Run with Debian's PyTorch: /usr/bin/python3 bench/bench_layers_torch.py [--rows FILE]
[--threads N] [--quick] [--only model.layer|model]
(--only: that row, or that model's rows, as bench_layers --only selects them)
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fmnist"))
from torch_fmnist import model_for  # noqa: E402  the models, as bench/fmnist trains them
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt"))
from torch_gpt import CharGPT  # noqa: E402  examples/chargpt.json's model, as bench/gpt trains it


def measure(fn, quick):
    start = time.perf_counter()
    warm = 0
    while warm < 2 or time.perf_counter() - start < (0.02 if quick else 0.1):
        fn()
        warm += 1
    per_iter = (time.perf_counter() - start) / warm
    iters = max(1, int((0.01 if quick else 0.05) / per_iter))
    times = []
    for _ in range(3 if quick else 5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def read_rows(path):
    rows = []
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        model, layer, kind, shape, options, grad = line.split()
        opts = {} if options == "-" else dict(kv.split("=") for kv in options.split(","))
        rows.append({"model": model, "layer": layer, "kind": kind,
                     "shape": [int(v) for v in shape.split("x")], "options": opts,
                     "input_grad": grad == "yes"})
    return rows


def nano_attention(q, k, v, causal):
    t = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    if causal:
        att = att.masked_fill(torch.tril(torch.ones(t, t)) == 0, float("-inf"))
    return F.softmax(att, dim=-1) @ v


def causal_mask(t):
    """torch_gpt.py's mask: -inf above the diagonal."""
    return torch.triu(torch.full((t, t), float("-inf")), diagonal=1)


def cyclic_indices(shape, classes):
    """int64 values i % classes over shape (class targets, token ids), as Kiln's side."""
    n = math.prod(shape)
    return (torch.arange(n) % classes).view(shape)


def module_op(m):
    return m, list(m.parameters())


def layer_op(row):
    """(op, parameters, input) for a row, as the model runs it; input None: a float
    tensor of the row's shape."""
    kind, o, shape = row["kind"], row["options"], row["shape"]
    bias = int(o.get("bias", 1)) != 0
    if kind == "conv2d":
        return module_op(nn.Conv2d(shape[1], int(o["out"]), int(o["k"]),
                                   padding=int(o.get("p", 0)), bias=bias)) + (None,)
    if kind == "linear":
        return module_op(nn.Linear(shape[-1], int(o["out"]), bias=bias)) + (None,)
    if kind == "max_pool2d":
        k = int(o.get("k", 2))
        return (lambda x: F.max_pool2d(x, k)), [], None
    if kind == "adaptive_avg_pool2d":
        out = int(o.get("out", 1))
        return (lambda x: F.adaptive_avg_pool2d(x, out)), [], None
    if kind == "batch_norm2d":
        return module_op(nn.BatchNorm2d(shape[1])) + (None,)
    if kind == "layer_norm":
        return module_op(nn.LayerNorm(shape[-1])) + (None,)
    if kind == "relu":
        return F.relu, [], None
    if kind == "gelu":
        return F.gelu, [], None
    if kind == "add":  # the residual: both terms get gradients
        other = (torch.rand(shape) * 2 - 1).requires_grad_(row["input_grad"])
        return (lambda x: x + other), [other], None
    if kind == "embedding":  # the row's shape is the token ids'
        vocab = int(o["vocab"])
        m = nn.Embedding(vocab, int(o["dim"]))
        return m, list(m.parameters()), cyclic_indices(shape, vocab)
    if kind == "positional_embedding":  # nanoGPT: x + wpe(arange(T)), x [B, T, E]
        wpe = nn.Embedding(int(o.get("positions", shape[1])), shape[-1])
        pos = torch.arange(shape[1])
        return (lambda x: x + wpe(pos)), list(wpe.parameters()), None
    if kind == "cross_entropy":  # [N, C], or [N, T, C] viewed as the GPT views it
        classes = shape[-1]
        target = cyclic_indices([math.prod(shape[:-1])], classes)
        return (lambda x: F.cross_entropy(x.view(-1, classes), target)), [], None
    # ---- attention (issue 12): nanoGPT's CausalSelfAttention (model.py), dropout 0
    if kind == "sdpa":  # x: the queries [B, H, T, D]; keys and values alike
        k, v = ((torch.rand(shape) * 2 - 1).requires_grad_() for _ in range(2))
        causal = int(o.get("causal", 0))
        return (lambda q: nano_attention(q, k, v, causal)), [k, v], None
    if kind == "mha":  # x: [B, T, E]
        b, t, e = shape
        h = int(o["heads"])
        causal = int(o.get("causal", 0))
        c_attn, c_proj = nn.Linear(e, 3 * e), nn.Linear(e, e)

        def block(x):
            q, k, v = c_attn(x).split(e, dim=2)
            q, k, v = (z.view(b, t, h, e // h).transpose(1, 2) for z in (q, k, v))
            y = nano_attention(q, k, v, causal).transpose(1, 2).contiguous().view(b, t, e)
            return c_proj(y)

        return block, list(c_attn.parameters()) + list(c_proj.parameters()), None
    # ---- the GPT's layers as bench/gpt/torch_gpt.py builds them (x: [B, T, E])
    mask = causal_mask(shape[1]) if int(o.get("causal", 0)) else None
    if kind == "multi_head_attention":
        m = nn.MultiheadAttention(shape[-1], int(o["heads"]), batch_first=True)
        return (lambda x: m(x, x, x, attn_mask=mask, need_weights=False)[0],
                list(m.parameters()), None)
    if kind == "transformer_encoder_layer":
        m = nn.TransformerEncoderLayer(shape[-1], int(o["heads"]), int(o["ff"]), 0.0,
                                       "gelu" if int(o.get("gelu", 1)) else "relu",
                                       batch_first=True,
                                       norm_first=bool(int(o.get("norm_first", 1))))
        return (lambda x: m(x, src_mask=mask)), list(m.parameters()), None
    raise SystemExit(f"bench_layers_torch.py: unknown kind {kind}")


def bench_layer(row, quick):
    op, params, x = layer_op(row)
    if x is None:
        x = torch.rand(row["shape"])
        if row["kind"] != "cross_entropy":
            x = x * 2 - 1
        x.requires_grad_(row["input_grad"])
    with torch.no_grad():
        out = op(x)
    g = torch.rand_like(out) if out.dim() else None

    def fwd():
        with torch.no_grad():
            op(x)

    def fwd_bwd():
        for p in params + [x]:
            p.grad = None  # an int64 x (token ids) has none
        op(x).backward(g)

    name = f"{row['model']}.{row['layer']}"
    print(f"{name} fwd {measure(fwd, quick) * 1e6:.1f}", flush=True)
    print(f"{name} fwdbwd {measure(fwd_bwd, quick) * 1e6:.1f}", flush=True)


def bench_step(row, quick):
    """tokens=V: the input is int64 token ids below V (the GPT: examples/chargpt.json,
    vocab 256), else uniform floats; one class target per row of the output's last dim."""
    name, tokens = row["options"]["model"], int(row["options"].get("tokens", 0))
    model = CharGPT(256) if name == "gpt" else model_for(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = cyclic_indices(row["shape"], tokens) if tokens else torch.rand(row["shape"])
    with torch.no_grad():
        classes = model(x).shape[-1]
    y = cyclic_indices([math.prod(row["shape"])] if tokens else [row["shape"][0]], classes)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x).view(-1, classes), y).backward()
        opt.step()

    print(f"{row['model']}.{row['layer']} fwdbwd {measure(step, quick) * 1e6:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="bench/bench_layers.rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="model.layer or model: only those rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for row in read_rows(args.rows):
        if args.only and args.only not in (row["model"], f"{row['model']}.{row['layer']}"):
            continue
        if row["kind"] == "step":
            bench_step(row, args.quick)
        else:
            bench_layer(row, args.quick)


if __name__ == "__main__":
    main()

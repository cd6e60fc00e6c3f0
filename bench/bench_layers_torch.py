#!/usr/bin/python3
"""bench_layers_torch.py — PyTorch's side of bench_layers.c: the Fashion-MNIST CNN's conv
and pool layers at batch 64, forward alone and forward + backward, and the whole training
step (forward, cross_entropy, backward, Adam); causal self-attention at nanoGPT's shape as
nanoGPT computes it on torch 1.13 (no flash attention there: q k^T, masked_fill, softmax,
@ v), alone (sdpa) and in its CausalSelfAttention module (mha). Same timing method as bench_layers.c
(warm-up, runs of ~50 ms, median of the runs). Prints one line per measurement,
"<name> <median microseconds>", which bench_layers reads.

Run with Debian's PyTorch: /usr/bin/python3 bench/bench_layers_torch.py [--threads N] [--quick]
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def layer(name, make_input, op, params, quick):
    """Times op(x) under no_grad, then forward + backward of op(x) with a fixed grad."""
    x = make_input()
    with torch.no_grad():
        out = op(x)
    g = torch.rand_like(out)

    def fwd():
        with torch.no_grad():
            op(x)

    def fwd_bwd():
        for p in params + [x]:
            p.grad = None
        op(x).backward(g)

    print(f"{name}.fwd {measure(fwd, quick) * 1e6:.1f}", flush=True)
    print(f"{name}.fwdbwd {measure(fwd_bwd, quick) * 1e6:.1f}", flush=True)


def attention(quick):
    """nanoGPT's CausalSelfAttention (model.py) with dropout 0, batch 12, T 64, n_embd 128,
    4 heads: the attention alone on q, k, v [B, H, T, D], then the whole module."""
    b, t, h, d = 12, 64, 4, 32
    e = h * d
    bias = torch.tril(torch.ones(t, t)).view(1, 1, t, t)

    def sdpa(q, k, v):
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(bias[:, :, :t, :t] == 0, float("-inf"))
        return F.softmax(att, dim=-1) @ v

    qkv = [(torch.rand(b, h, t, d) * 2 - 1).requires_grad_() for _ in range(3)]
    g = torch.rand(b, h, t, d)

    def fwd():
        with torch.no_grad():
            sdpa(*qkv)

    def fwd_bwd():
        for p in qkv:
            p.grad = None
        sdpa(*qkv).backward(g)

    print(f"sdpa.fwd {measure(fwd, quick) * 1e6:.1f}", flush=True)
    print(f"sdpa.fwdbwd {measure(fwd_bwd, quick) * 1e6:.1f}", flush=True)

    c_attn, c_proj = nn.Linear(e, 3 * e), nn.Linear(e, e)

    def block(x):
        q, k, v = c_attn(x).split(e, dim=2)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))
        y = sdpa(q, k, v).transpose(1, 2).contiguous().view(b, t, e)
        return c_proj(y)

    layer("mha", lambda: (torch.rand(b, t, e) * 2 - 1).requires_grad_(), block,
          list(c_attn.parameters()) + list(c_proj.parameters()), quick)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = 64
    conv1, conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
    layer("conv1", lambda: torch.rand(n, 1, 28, 28), conv1, list(conv1.parameters()), args.quick)
    layer("pool1", lambda: torch.rand(n, 16, 28, 28).requires_grad_(),
          lambda x: F.max_pool2d(x, 2), [], args.quick)
    layer("conv2", lambda: torch.rand(n, 16, 14, 14).requires_grad_(), conv2,
          list(conv2.parameters()), args.quick)
    layer("pool2", lambda: torch.rand(n, 32, 14, 14).requires_grad_(),
          lambda x: F.max_pool2d(x, 2), [], args.quick)

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(n, 1, 28, 28)
    y = torch.randint(0, 10, (n,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    print(f"step {measure(step, args.quick) * 1e6:.1f}", flush=True)
    attention(args.quick)


if __name__ == "__main__":
    main()

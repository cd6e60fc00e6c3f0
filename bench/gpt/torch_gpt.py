"""bench/gpt/torch_gpt.py — the character GPT of examples/chargpt.json in plain PyTorch,
for bench/gpt/run.sh to compare with Kiln's bench/gpt/kiln_gpt.c: the same tokens (the
files bench/gpt/prepare.py wrote), the same model, initial weights, batches, recipe and
evaluation.

Model (nanoGPT's CPU shakespeare_char shape): wte = nn.Embedding(V, 128), wpe =
nn.Embedding(64, 128) added over positions 0..T-1, four nn.TransformerEncoderLayer(128,
nhead 4, dim_feedforward 512, dropout 0, GELU, norm_first, batch_first) with a causal
mask, ln_f = nn.LayerNorm(128), lm_head = nn.Linear(128, V, bias=False). Modules are made
in the spec's order, so torch.manual_seed(seed) gives Kiln's initial weights for the
same seed.

Recipe (nanoGPT's train.py with its CPU settings): batch 12 windows of 64 tokens drawn as
nanoGPT draws them (torch.randint(len(train) - 64, (12,)), here from a generator seeded
with the seed, which Kiln's generator reproduces), AdamW lr 1e-3, betas (0.9, 0.99),
eps 1e-8, weight decay 0.1 on the parameters of 2 or more dims only (nanoGPT's
configure_optimizers), gradients clipped to norm 1.0, lr warmed up over 100 steps and
cosine-decayed to 1e-4 at the last iteration (nanoGPT's get_lr with lr_decay_iters =
max_iters).

Evaluation: the mean cross-entropy over 240 windows of the validation split (nanoGPT's
eval_iters 20 x batch 12) at evenly spaced starts, the same windows on both sides, so the
final val loss is compared without sampling noise.

Generation: 500 new tokens, greedy, after a prompt of the validation split's first 32
tokens (one token, often a space of an indented line, makes a greedy model repeat it),
with a window of 64: a context that would pass 64 tokens keeps its newest 32 (a key/value
cache holds absolute positions, so it cannot slide one token at a time as nanoGPT's
generate does). With a key/value cache each new token is one position and a drop refills
it; without, each token recomputes its context. Both must give the same tokens.

Prints one JSON line: {"impl": "pytorch", "iters", "batch", "block", "threads",
"tokens_per_second", "train_seconds", "first_loss", "last_loss", "val_loss",
"generate_tokens", "generate_tokens_per_second_cache", "generate_tokens_per_second_no_cache",
"losses": [every 100th step's loss], "peak_rss_mb"} (the process's peak resident set,
torch's libraries included: what running it costs). Training time counts the steps only (batch
gathering, forward, loss, backward, clipping, the optimizer step), not evaluation.

usage: python3 bench/gpt/torch_gpt.py DATA [--iters N] [--threads N] [--seed N]
"""
import argparse
import json
import math
import os
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK, BATCH, N_LAYER, N_HEAD, N_EMBD = 64, 12, 4, 4, 128
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0
EVAL_WINDOWS, GENERATE, PROMPT = 240, 500, BLOCK // 2


class CharGPT(nn.Module):
    """examples/chargpt.json: the state-dict names are the spec's node names (wte.weight,
    wpe.weight, h.0.self_attn.in_proj_weight, ..., ln_f.bias, lm_head.weight)."""

    def __init__(self, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, N_EMBD)
        self.wpe = nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList([
            nn.TransformerEncoderLayer(N_EMBD, N_HEAD, 4 * N_EMBD, 0.0, "gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.masks = {}

    def causal(self, t):
        if t not in self.masks:
            self.masks[t] = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        return self.masks[t]

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:t]
        mask = self.causal(t)
        for layer in self.h:
            x = layer(x, src_mask=mask)
        return self.lm_head(self.ln_f(x))

    def forward_cached(self, idx, cache):
        """The new positions idx [1, t] after the cache's, appending their keys and values
        to cache (a list of [k, v] per layer, [1, heads, cached, head_dim])."""
        start = cache[0][0].shape[2] if cache[0] else 0
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[start:start + t]
        d = N_EMBD // N_HEAD
        for layer, kv in zip(self.h, cache):
            attn = layer.self_attn
            h = layer.norm1(x)
            q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(N_EMBD, -1)
            q, k, v = (z.reshape(1, t, N_HEAD, d).transpose(1, 2) for z in (q, k, v))
            if kv:
                k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
            kv[:] = [k, v]
            s = q @ k.transpose(-2, -1) / math.sqrt(d)
            if t > 1:  # causal among the new positions; every cached one is visible
                s = s + F.pad(self.causal(t), (start, 0))
            y = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, t, N_EMBD)
            x = x + attn.out_proj(y)
            x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
        return self.lm_head(self.ln_f(x))


def nanogpt_lr(it, iters):
    """nanoGPT's get_lr with warmup_iters 100, lr_decay_iters = max_iters, min_lr 1e-4."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > iters:
        return MIN_LR
    ratio = (it - WARMUP) / max(iters - WARMUP, 1)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (LR - MIN_LR)


def eval_starts(n):
    """EVAL_WINDOWS window starts spread evenly over a split of n tokens."""
    last = n - BLOCK - 1
    return [i * last // (EVAL_WINDOWS - 1) for i in range(EVAL_WINDOWS)]


@torch.no_grad()
def val_loss(model, val):
    model.eval()
    total = 0.0
    starts = eval_starts(len(val))
    for i in range(0, len(starts), BATCH):
        ix = torch.tensor(starts[i:i + BATCH])
        x = torch.stack([val[j:j + BLOCK] for j in ix])
        y = torch.stack([val[j + 1:j + 1 + BLOCK] for j in ix])
        logits = model(x)
        total += F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1),
                                 reduction="sum").item()
    model.train()
    return total / (len(starts) * BLOCK)


@torch.no_grad()
def generate(model, prompt, count, cached):
    """count greedy tokens after the list of tokens prompt (at most BLOCK); returns (tokens,
    seconds). The context of each new token is the tokens since `base`; when it would pass
    BLOCK tokens the oldest are dropped, keeping the newest BLOCK // 2 (positions are
    absolute, so cached keys cannot slide along). With the cache each token is one position
    and a drop refills the cache with the kept tokens; without it each token recomputes its
    whole context. Same contexts, so the same tokens."""
    model.eval()
    idx, base = list(prompt), 0
    cache = [[] for _ in model.h]
    start = time.perf_counter()
    for _ in range(count):
        drop = len(idx) - base > BLOCK
        if drop:
            base = len(idx) - BLOCK // 2
        if not cached:
            logits = model(torch.tensor([idx[base:]]))
        else:
            if drop:
                cache = [[] for _ in model.h]
            done = cache[0][0].shape[2] if cache[0] else 0
            logits = model.forward_cached(torch.tensor([idx[base + done:]]), cache)
        idx.append(int(logits[0, -1].argmax()))
    return idx[len(prompt):], time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="the folder bench/gpt/prepare.py wrote")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    train = torch.from_numpy(np.load(os.path.join(args.data, "train.npy")))
    val = torch.from_numpy(np.load(os.path.join(args.data, "val.npy")))
    torch.manual_seed(args.seed)
    model = CharGPT(meta["vocab_size"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    high = len(train) - BLOCK
    losses, seconds = [], 0.0
    first_loss = last_loss = None
    for it in range(args.iters):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it, args.iters)
        ix = torch.randint(high, (BATCH,), generator=gen)
        x = torch.stack([train[i:i + BLOCK] for i in ix])
        y = torch.stack([train[i + 1:i + 1 + BLOCK] for i in ix])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        value = loss.item()
        seconds += time.perf_counter() - start
        first_loss = value if first_loss is None else first_loss
        last_loss = value
        if it % 100 == 0 or it == args.iters - 1:
            losses.append([it, value])
    vloss = val_loss(model, val)
    prompt = [int(t) for t in val[:PROMPT]]
    no_cache, t_plain = generate(model, prompt, GENERATE, cached=False)
    with_cache, t_cache = generate(model, prompt, GENERATE, cached=True)
    tokens = args.iters * BATCH * BLOCK
    print(json.dumps({
        "impl": "pytorch", "iters": args.iters, "batch": BATCH, "block": BLOCK,
        "threads": args.threads, "vocab_size": meta["vocab_size"],
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "train_seconds": seconds, "first_loss": first_loss, "last_loss": last_loss,
        "val_loss": vloss, "generate_tokens": GENERATE,
        "generate_tokens_per_second_cache": GENERATE / t_cache,
        "generate_tokens_per_second_no_cache": GENERATE / t_plain,
        "generate_same_tokens": with_cache == no_cache,
        "generated_head": with_cache[:64], "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""check_attention_torch.py — the torch side of test_attention.c's strict-load test.

Reads DIR/tel.safetensors and DIR/mha.safetensors (a Kiln TransformerEncoderLayer and a
MultiheadAttention, their state dicts under torch's names, plus "input"), loads each into
the torch module of the same configuration with load_state_dict(strict=True), and writes
torch's output for the input to DIR/<name>.torch_out.safetensors. Then writes
DIR/from_torch.safetensors: a torch TransformerEncoderLayer of its own (its state dict,
an input and torch's output) for Kiln to load strictly. The configurations are the C
test's:
    tel: d_model 16, nhead 4, dim_feedforward 24, gelu, norm_first, causal, eval mode
    mha: embed_dim 16, num_heads 2, causal
Safetensors are read and written by tests/golden/torch_safetensors.py.

Usage: /usr/bin/python3 check_attention_torch.py DIR    (exit status 77: no torch)
"""
import os
import sys

try:
    import torch
except ImportError:
    print("check_attention_torch: torch is not installed")
    sys.exit(77)

from torch_safetensors import load, save  # noqa: E402  (after torch: exit 77 first)


def causal(t):
    return torch.ones(t, t, dtype=torch.bool).triu(1)


def make_tel():
    return torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.1, activation="gelu",
                                            batch_first=True, norm_first=True).eval()


def run_tel(m, x):
    return m(x, src_mask=causal(x.shape[1]))


def main():
    folder = sys.argv[1]
    torch.set_num_threads(1)
    with torch.no_grad():
        state = load(os.path.join(folder, "tel.safetensors"))
        x = state.pop("input")
        tel = make_tel()
        tel.load_state_dict(state, strict=True)
        save(os.path.join(folder, "tel.torch_out.safetensors"), {"output": run_tel(tel, x)})

        state = load(os.path.join(folder, "mha.safetensors"))
        x = state.pop("input")
        mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
        mha.load_state_dict(state, strict=True)
        out, _ = mha(x, x, x, attn_mask=causal(x.shape[1]), need_weights=False)
        save(os.path.join(folder, "mha.torch_out.safetensors"), {"output": out})

        torch.manual_seed(5)
        tel = make_tel()
        x = torch.randn(3, 7, 16)
        tensors = dict(tel.state_dict())
        tensors["input"] = x
        tensors["output"] = run_tel(tel, x)
        save(os.path.join(folder, "from_torch.safetensors"), tensors)
    print("check_attention_torch: ok")


if __name__ == "__main__":
    main()

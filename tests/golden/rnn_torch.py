#!/usr/bin/python3
"""rnn_torch.py — PyTorch's side of the round trip in tests/test_rnn.c, for the model of
the spec RNN_SPEC there (an LSTM of two bidirectional layers handing on its sequence, a
GRU handing on its last state, a linear head):

  1. loads the weights Kiln saved into the equivalent torch modules with
     load_state_dict(strict=True) and checks that torch's logits on Kiln's inputs are
     Kiln's (within 1e-4);
  2. makes the same model in torch from another seed and writes its state_dict, and
     inputs with torch's logits, for Kiln to load strictly and compare.

Usage: /usr/bin/python3 rnn_torch.py KILN_WEIGHTS KILN_IO TORCH_WEIGHTS TORCH_IO
Exit status 0: ok; 1: a difference (printed); 77: no torch here (the test skips).
Safetensors are read and written by tests/golden/torch_safetensors.py.
"""
import sys

try:
    import torch
    import torch.nn as nn
except ImportError:
    print("rnn_torch: torch is not installed")
    sys.exit(77)

from torch_safetensors import load, save  # noqa: E402  (after torch: exit 77 first)


class Sequence(nn.LSTM):
    """output "sequence": torch's output, without the states."""

    def forward(self, x):
        return super().forward(x)[0]


class Last(nn.GRU):
    """output "last": the final hidden state of each direction, side by side."""

    def forward(self, x):
        _, h = super().forward(x)
        return torch.cat(list(h[-(2 if self.bidirectional else 1):]), -1)


def model():
    return nn.Sequential(Sequence(3, 8, num_layers=2, bidirectional=True, batch_first=True),
                         Last(16, 6, batch_first=True), nn.Linear(6, 4)).eval()


def main():
    kiln_weights, kiln_io, torch_weights, torch_io = sys.argv[1:5]
    m = model()
    m.load_state_dict(load(kiln_weights), strict=True)
    io = load(kiln_io)
    with torch.no_grad():
        logits = m(io["inputs"])
    diff = (logits - io["logits"]).abs().max().item()
    if not diff <= 1e-4:
        print("rnn_torch: torch's logits differ from Kiln's by %g" % diff)
        return 1
    torch.manual_seed(7)
    m = model()
    inputs = torch.randn(5, 7, 3)
    with torch.no_grad():
        logits = m(inputs)
    save(torch_weights, m.state_dict())
    save(torch_io, {"inputs": inputs, "logits": logits})
    print("rnn_torch: ok (Kiln's weights in torch: max abs difference %g)" % diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())

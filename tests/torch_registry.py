#!/usr/bin/python3
"""PyTorch's side of tests/test_server_registry.c (torch_upload_alias_finetune): a model
trained elsewhere is uploaded to kilnd, served, fine-tuned, and its result comes back.

  make WEIGHTS IO      a torch module wrapping nn.Sequential as `self.net` (so its
                       state_dict names are "net.0.weight", ...), seeded, written as
                       safetensors; IO (JSON) gets 8 inputs and the module's logits
  check WEIGHTS IO     loads Kiln's weights into the plain nn.Sequential with
                       load_state_dict(strict=True) and prints its logits on IO's inputs

Run with Debian's /usr/bin/python3 (torch); exit status 77 when torch is missing.
safetensors files are read and written by tests/golden/generate_safetensors.py (the
python package is not in Debian).
"""
import json
import os
import sys

try:
    import torch
except ImportError:
    print("torch_registry: torch is not installed")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from generate_safetensors import read, write  # noqa: E402


def sequential():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = sequential()

    def forward(self, x):
        return self.net(x)


def main():
    command, weights, io = sys.argv[1:4]
    if command == "make":
        torch.manual_seed(1234)
        model = Wrapper()
        x = torch.randn(8, 4)
        with torch.no_grad():
            logits = model(x)
        write(weights, {k: v.detach() for k, v in model.state_dict().items()}, {"format": "pt"})
        json.dump({"inputs": x.flatten().tolist(), "logits": logits.flatten().tolist()},
                  open(io, "w"))
    else:
        model = sequential()
        model.load_state_dict(read(weights), strict=True)  # raises on any name or shape
        x = torch.tensor(json.load(open(io))["inputs"]).reshape(-1, 4)
        with torch.no_grad():
            print(json.dumps(model(x).flatten().tolist()))


if __name__ == "__main__":
    main()

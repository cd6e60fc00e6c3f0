"""torch_safetensors.py — safetensors read and written by hand for the torch-side test
scripts (check_graph_torch.py, check_attention_torch.py, rnn_torch.py): Debian has no
safetensors package. F32 and I64 tensors, the dtype kept both ways; "__metadata__" is
ignored. Import it after torch (the scripts exit 77 without torch first).
"""
import json
import struct

import torch

DTYPES = {"F32": torch.float32, "I64": torch.int64}
NAMES = {torch.float32: "F32", torch.int64: "I64"}


def load(path):
    """{name: tensor} of a safetensors file (each tensor its own copy)."""
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
    """Writes {name: tensor} (float32 or int64, any strides) as a safetensors file."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

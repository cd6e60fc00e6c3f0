#!/usr/bin/python3
"""Writes tests/golden/data/safetensors_from_python.safetensors for tests/test_safetensors.c,
and is the safetensors module of the other Python helpers (write, read).

python3-safetensors is not packaged, so this writes the format by hand exactly as the
python library lays it out: an 8-byte little-endian header length, a JSON header (no
spaces, "__metadata__" first, padded with spaces to a multiple of 8), then each tensor's
little-endian bytes, contiguous, in name order. Run with Debian's /usr/bin/python3 (torch).
Deterministic: rerunning gives identical bytes.
"""
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "safetensors_from_python.safetensors")

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def tensor_bytes(t):
    t = t.contiguous()
    # bf16/f16 have no numpy dtype: reinterpret as int16 to get the raw bits
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write(path, tensors, metadata):
    header = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


READ_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
               "I32": torch.int32, "U8": torch.uint8}


def read(path):
    """The tensors of a safetensors file (F32, F64 and integer dtypes), by name."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=READ_DTYPES[info["dtype"]])
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors


def main():
    tensors = {
        "weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.25 - 0.5,
        "double": torch.tensor([1.5, -2.25, 1e-3], dtype=torch.float64),
        "half": torch.tensor([1.0, -0.5, 65504.0, 6e-8, float("inf")], dtype=torch.float16),
        "bf16": torch.tensor([3.140625, -1e10], dtype=torch.bfloat16),
        "labels": torch.tensor([0, 7, -3], dtype=torch.int64),
        "i32": torch.tensor([[1, -2], [2147483647, -2147483648]], dtype=torch.int32),
        "bytes": torch.tensor([0, 128, 255], dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    write(OUT, tensors, {"format": "pt", "note": 'h\u00e9llo "quoted"'})
    for name in sorted(tensors):
        print(name, tensors[name].to(torch.float64 if tensors[name].is_floating_point()
                                     else torch.int64).flatten().tolist())


if __name__ == "__main__":
    main()

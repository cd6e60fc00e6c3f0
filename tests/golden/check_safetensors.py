#!/usr/bin/python3
"""Reads a safetensors file written by Kiln (tests/test_safetensors.c) by hand-parsing
the format, checks the layout the python library relies on and compares the values
with what the C test wrote. Prints "ok" and exits 0, or says what differs and exits 1.

Usage: /usr/bin/python3 check_safetensors.py FILE   (exit status 77: no torch, skip)
"""
import json
import struct
import sys

try:
    import torch
except ImportError:
    print("check_safetensors: torch is not installed")
    sys.exit(77)

EXPECTED = {
    # name: (dtype, shape, values) exactly as tests/test_safetensors.c writes them
    "a.step": ("I64", [], [42]),
    "b.weight": ("F32", [3, 2], [0.5, 3.5, 1.5, 4.5, 2.5, 5.5]),  # a transposed view
    "c": ("F32", [4], [-1.0, 0.0, 1e-30, 3e38]),
    "d.labels": ("I64", [3], [-5, 0, 2**62]),
}
META = {"epoch": "3", "note": 'tab\there "q" \\ \u00e9'}


def fail(message):
    print("check_safetensors: " + message)
    sys.exit(1)


def main():
    data = open(sys.argv[1], "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    if n % 8:
        fail(f"header length {n} is not a multiple of 8")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    if header.pop("__metadata__", None) != META:
        fail("metadata differs")
    if sorted(header) != sorted(EXPECTED):
        fail(f"names {sorted(header)}")
    end = 0
    for name in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        info = header[name]
        begin, stop = info["data_offsets"]
        if begin != end:
            fail(f"{name}: data not contiguous ({begin} after {end})")
        end = stop
        dtype, shape, values = EXPECTED[name]
        if info["dtype"] != dtype or info["shape"] != shape:
            fail(f"{name}: {info['dtype']} {info['shape']}, expected {dtype} {shape}")
        torch_dtype = torch.float32 if dtype == "F32" else torch.int64
        t = torch.frombuffer(bytearray(body[begin:stop]), dtype=torch_dtype).reshape(shape)
        if t.flatten().tolist() != torch.tensor(values, dtype=torch_dtype).tolist():
            fail(f"{name}: values {t.flatten().tolist()}, expected {values}")
    if end != len(body):
        fail(f"data ends at {end}, the file at {len(body)}")
    print("ok")


if __name__ == "__main__":
    main()

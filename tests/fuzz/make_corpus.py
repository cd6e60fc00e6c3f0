#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz: small valid files of every format kilnd and kiln
read, and a few edge cases, into tests/fuzz/corpus/<target>/.

    python3 tests/fuzz/make_corpus.py [--kiln build/kiln]

The specs are copied from tests/specs and examples. The weights and checkpoint seeds are
what `kiln train --out` writes for FUZZ_SMALL_MODEL (tests/fuzz/fuzz.h), so they need the
kiln binary (--kiln); without it those files are left as they are. Files this script does
not name (regress-*: inputs that once failed) are never touched. Only the standard library
is used: the formats are written by hand.
"""
import argparse
import glob
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")

# FUZZ_SMALL_MODEL in fuzz.h
SMALL_MODEL = {"input_shape": [1, 4, 4], "layers": [
    {"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "batch_norm2d"},
    {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 3}]}


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def gz(data):
    return gzip.compress(data, mtime=0)


# ---- IDX ------------------------------------------------------------------------------

def idx(code, fmt, shape, values):
    head = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)
    return head + b"".join(struct.pack(">" + fmt, v) for v in values)


def idx_seeds():
    images = idx(0x08, "B", [2, 3, 3], list(range(18)))
    labels = idx(0x08, "B", [4], [0, 1, 2, 9])
    write("idx", "images-u8", images)
    write("idx", "labels-u8", labels)
    write("idx", "images-u8.gz", gz(images))
    write("idx", "labels-two-members.gz", gz(labels[:6]) + gz(labels[6:]))
    write("idx", "i8", idx(0x09, "b", [3], [-1, 0, 1]))
    write("idx", "i16", idx(0x0B, "h", [2, 2], [-300, 0, 7, 300]))
    write("idx", "i32", idx(0x0C, "i", [3], [0, 70000, 5]))
    write("idx", "f32", idx(0x0D, "f", [2, 2], [0.5, -1.0, 3.0, 2.0]))
    write("idx", "f64-labels", idx(0x0E, "d", [3], [1.0, 2.0, 3.0]))
    write("idx", "zero-samples", idx(0x08, "B", [0, 4], []))
    write("idx", "dims-8", idx(0x08, "B", [1] * 8, [7]))
    write("idx", "header-only", bytes([0, 0, 0x08, 2, 0, 0, 0, 9]))
    write("idx", "size-mismatch", idx(0x08, "B", [3], [1, 2]))


# ---- NPY ------------------------------------------------------------------------------

def npy(descr, shape, payload, version=1, fortran=False):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", repr(tuple(shape)))
    length_bytes = 2 if version == 1 else 4
    total = 6 + 2 + length_bytes + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header.encode("latin1") + payload


def npy_seeds():
    write("npy", "f4-2x3", npy("<f4", [2, 3], struct.pack("<6f", 0, 1, 2, 3, 4.5, -1)))
    write("npy", "u1-labels", npy("|u1", [4], bytes([0, 1, 2, 9])))
    write("npy", "i8-labels", npy("<i8", [3], struct.pack("<3q", 0, 5, 2)))
    write("npy", "f8-2x2", npy("<f8", [2, 2], struct.pack("<4d", 1, 2, 3, 4)))
    write("npy", "i4", npy("<i4", [2], struct.pack("<2i", -5, 5)))
    write("npy", "i2-u2", npy("<i2", [1, 2], struct.pack("<2h", -1, 1)))
    write("npy", "u2", npy("<u2", [2], struct.pack("<2H", 1, 65535)))
    write("npy", "i1", npy("|i1", [2, 1], struct.pack("<2b", -1, 1)))
    write("npy", "v2-header", npy("<f4", [1, 1], struct.pack("<f", 1), version=2))
    write("npy", "v3-header", npy("<f4", [1], struct.pack("<f", 1), version=3))
    write("npy", "scalar", npy("<f4", [], struct.pack("<f", 1)))
    write("npy", "zero-size", npy("<f4", [0, 3], b""))
    write("npy", "fortran", npy("<f4", [2, 2], struct.pack("<4f", 1, 2, 3, 4), fortran=True))
    write("npy", "big-endian", npy(">f4", [1], struct.pack(">f", 1)))
    write("npy", "f4-nan", npy("<f4", [1, 2], struct.pack("<2f", float("nan"), 1)))
    write("npy", "f4-2x3.gz", gz(npy("<f4", [2, 3], struct.pack("<6f", 0, 1, 2, 3, 4, 5))))
    # ---- sequence data (issue 12): token matrices and labels per position ----
    write("npy", "i8-tokens-2x4", npy("<i8", [2, 4], struct.pack("<8q", 0, 5, 11, 2, 7, 7, 1, 0)))
    write("npy", "i8-labels-per-position",
          npy("<i8", [2, 3], struct.pack("<6q", -100, 3, 1, -100, 0, 2)))


# ---- CSV ------------------------------------------------------------------------------

def csv_seeds():
    write("csv", "iris-like", "sepal,petal,label\n5.1,1.4,0\n6.2,4.5,1\n7.7,6.7,2\n")
    write("csv", "label-first-crlf", "label,a,b\r\n1,0.5,2\r\n0,-1,1e3\r\n\r\n")
    write("csv", "quoted", '"a","label","b"\n"1.5","2","3"\n  4 , 0 , 5  \n')
    write("csv", "blank-lines", "x,label\n\n1,0\n   \n2,1\n\n")
    write("csv", "nan-and-inf", "x,y,label\nnan,1,0\ninf,-inf,1\n")
    write("csv", "ragged", "x,label\n1,0\n2\n")
    write("csv", "label-only", "label\n1\n2\n")
    write("csv", "no-rows", "x,label\n")
    write("csv", "bad-label", "x,label\n1,0.5\n")
    write("csv", "hex-and-exponents", "x,label\n0x1p3,0\n1e-310,1\n")
    write("csv", "iris-like.gz", gz(b"a,b,label\n1,2,0\n3,4,1\n"))


# ---- safetensors ----------------------------------------------------------------------

def safetensors(tensors, metadata=None, pad=True, raw_header=None):
    """tensors: [(name, dtype, shape, bytes)]; header written as the python library does."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in sorted(tensors):
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    shutil.copy(os.path.join(ROOT, "tests/golden/data/safetensors_from_python.safetensors"),
                os.path.join(CORPUS, "safetensors", "from-python"))
    write("safetensors", "empty", safetensors([]))
    write("safetensors", "metadata-only", safetensors([], {"format": "pt", "k": "v"}))
    every = [("f32", "F32", [2], struct.pack("<2f", 1, 2)),
             ("f64", "F64", [1], struct.pack("<d", 3)),
             ("f16", "F16", [2], struct.pack("<2H", 0x3C00, 0x0001)),
             ("bf16", "BF16", [1], struct.pack("<H", 0x3F80)),
             ("i64", "I64", [1], struct.pack("<q", -7)),
             ("i32", "I32", [1], struct.pack("<i", 7)),
             ("i16", "I16", [1], struct.pack("<h", -2)),
             ("i8", "I8", [1], struct.pack("<b", -1)),
             ("u8", "U8", [1], b"\xff"),
             ("bool", "BOOL", [2], b"\x00\x01")]
    write("safetensors", "every-dtype", safetensors(every, {"format": "pt"}))
    write("safetensors", "scalar-and-empty",
          safetensors([("s", "F32", [], struct.pack("<f", 1)), ("z", "F32", [0, 4], b"")]))
    write("safetensors", "escaped-names",
          safetensors([("caf\u00e9 \ud83d\ude00 \"q\"", "F32", [1], struct.pack("<f", 1))],
                      {"note": "tab\there\\slash"}).replace(b"\\u00e9", b"\\u00E9"))
    write("safetensors", "unpadded", safetensors([("w", "I64", [1], struct.pack("<q", 1))],
                                                 pad=False))
    write("safetensors", "overlap", safetensors([], raw_header=(
        '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}')) + b"abc")
    write("safetensors", "truncated", safetensors([("w", "F32", [4], struct.pack("<4f", 1, 2, 3, 4))])[:-3])


# ---- specs ----------------------------------------------------------------------------

def spec_seeds():
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/specs/valid/model-*.json")) +
                       glob.glob(os.path.join(ROOT, "tests/specs/invalid/model-*.json"))):
        kind = "valid" if "/valid/" in path else "invalid"
        shutil.copy(path, os.path.join(CORPUS, "model_spec", kind + "-" + os.path.basename(path)))
    write("model_spec", "small-model.json", json.dumps(SMALL_MODEL))
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/specs/valid/*.json")) +
                       glob.glob(os.path.join(ROOT, "tests/specs/invalid/job-*.json")) +
                       glob.glob(os.path.join(ROOT, "tests/specs/invalid/cli-*.json")) +
                       glob.glob(os.path.join(ROOT, "examples/*.json"))):
        name = os.path.basename(path)
        if name.startswith("model-"):
            continue
        kind = "example" if "/examples/" in path else "valid" if "/valid/" in path else "invalid"
        shutil.copy(path, os.path.join(CORPUS, "job_spec", kind + "-" + name))


# ---- weights and checkpoints (kiln train) ---------------------------------------------

def trained_seeds(kiln):
    with tempfile.TemporaryDirectory() as tmp:
        rows = ["label," + ",".join(f"p{i}" for i in range(16))]
        for n in range(8):
            rows.append(f"{n % 3}," + ",".join(str((n * 7 + i) % 5 / 4) for i in range(16)))
        with open(os.path.join(tmp, "train.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
        # batch_size and optimizer as the checkpoint target's trainer has them
        job = {"model": SMALL_MODEL, "data": {"train": {"format": "csv", "path": "train.csv"}},
               "optimizer": {"type": "adam", "lr": 0.01}, "batch_size": 4, "epochs": 1, "seed": 0}
        with open(os.path.join(tmp, "job.json"), "w") as f:
            json.dump(job, f)
        subprocess.run([os.path.abspath(kiln), "train", "job.json", "--out", "out", "--quiet"],
                       cwd=tmp, check=True)
        with open(os.path.join(tmp, "out/model.safetensors"), "rb") as f:
            weights = f.read()
        with open(os.path.join(tmp, "out/checkpoint.safetensors"), "rb") as f:
            checkpoint = f.read()
    write("weights", "small-model", weights)
    write("weights", "small-model-checkpoint", checkpoint)
    write("weights", "wrong-shape", safetensors([("0.weight", "F32", [2], struct.pack("<2f", 1, 2))]))
    write("checkpoint", "small-model", checkpoint)
    write("checkpoint", "weights-only", weights)
    write("safetensors", "small-model-checkpoint", checkpoint)


def text_seeds():
    """Text uploads (issue 12): UTF-8, a gzip one, and what a chars tokenizer refuses."""
    write("text", "shakespeare", b"First Citizen:\nBefore we proceed any further, hear me speak.\n")
    write("text", "utf8", "caf\u00e9 \u20ac \U0001f525\n".encode())
    write("text", "overlong", b"ab\xc0\xafcd")
    write("text", "truncated", b"ok\xe2\x82")
    write("text", "nul", b"a\0b")
    write("text", "python.gz", gz(b"def f(x):\n    return x\n"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kiln", help="the kiln binary, for the weights and checkpoint seeds")
    args = parser.parse_args()
    for target in ("safetensors", "idx", "npy", "csv", "model_spec", "job_spec", "weights",
                   "checkpoint", "text"):
        os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    idx_seeds()
    npy_seeds()
    csv_seeds()
    text_seeds()
    safetensors_seeds()
    spec_seeds()
    if args.kiln:
        trained_seeds(args.kiln)
    else:
        print("make_corpus.py: no --kiln, weights and checkpoint seeds left as they are",
              file=sys.stderr)


if __name__ == "__main__":
    main()

"""bench/gpt/prepare.py — turns any text file into the token files both sides of
bench/gpt read, so Kiln and PyTorch train on the same tokens with the same split:

  OUT/train.npy, OUT/val.npy   int64 token ids (nanoGPT's split: the first 90% trains)
  OUT/meta.json                {"corpus", "bytes", "vocab_size", "chars", "train_tokens",
                                "val_tokens"}

Tokens are the characters of the text (nanoGPT's shakespeare_char): the file is decoded as
UTF-8, each byte that is not valid UTF-8 kept as a character of its own
(surrogateescape), and the vocabulary is the sorted set of characters in the whole file.

usage: python3 bench/gpt/prepare.py CORPUS OUT [--block N]
"""
import argparse
import json
import os
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--block", type=int, default=64)
    args = ap.parse_args()
    raw = open(args.corpus, "rb").read()
    text = raw.decode("utf-8", errors="surrogateescape")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(0.9 * len(ids))
    train, val = ids[:cut], ids[cut:]
    # each split must hold at least one window of block + 1 tokens (inputs and targets)
    for name, split in (("train", train), ("val", val)):
        if len(split) < args.block + 1:
            sys.exit(f"bench/gpt: {args.corpus}: the {name} split has {len(split)} tokens, "
                     f"fewer than block + 1 = {args.block + 1} (the file has {len(ids)} "
                     f"characters; it needs at least {10 * (args.block + 1)})")
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "train.npy"), train)
    np.save(os.path.join(args.out, "val.npy"), val)
    meta = {"corpus": os.path.abspath(args.corpus), "bytes": len(raw),
            "vocab_size": len(chars), "characters": len(ids),
            "train_tokens": len(train), "val_tokens": len(val),
            "chars": "".join(chars).encode("utf-8", errors="surrogateescape")
                     .decode("utf-8", errors="replace")}
    json.dump(meta, open(os.path.join(args.out, "meta.json"), "w"))


if __name__ == "__main__":
    main()

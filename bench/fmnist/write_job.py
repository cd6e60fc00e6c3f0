"""bench/fmnist/write_job.py — an example job (examples/fmnist-*.json) rewritten for a
benchmark run: the data folder, batch, device, length (epochs, or max_steps when > 0),
TF32 and any extra fields merged in. Used by bench/fmnist/run.sh and bench/ddp/run.sh.

usage: write_job.py SRC DATA BATCH DEVICE EPOCHS MAX_STEPS TF32(0|1) EXTRA_JSON OUT
"""
import json
import sys

src, data, batch, device, epochs, max_steps, tf32, extra, out = sys.argv[1:]
j = json.load(open(src))
for split, prefix in (("train", "train"), ("test", "t10k")):
    j["data"][split]["images"] = f"{data}/{prefix}-images-idx3-ubyte.gz"
    j["data"][split]["labels"] = f"{data}/{prefix}-labels-idx1-ubyte.gz"
j["batch_size"] = int(batch)
if int(max_steps) > 0:
    j.pop("epochs", None)
    j["max_steps"] = int(max_steps)
else:
    j["epochs"] = int(epochs)
if device != "cpu":
    j["device"] = device
if tf32 == "1":
    j["allow_tf32"] = True
j.update(json.loads(extra))
json.dump(j, open(out, "w"), indent=1)

#!/usr/bin/python3
"""
sklearn_reference.py — the PyTorch side of tests/test_full_sklearn.c: scikit-learn's
bundled diabetes (regression) and breast-cancer (classification) sets split and written
as Kiln datasets, the same model and recipe trained in PyTorch, and a forward of Kiln's
downloaded weights with the preprocessing from their metadata.

Run with Debian's Python (torch 1.13 and scikit-learn):
  /usr/bin/python3 sklearn_reference.py prepare DIR
      writes DIR/diabetes_{train,test}.csv (a "target" column) and
      DIR/cancer_{x,y}_{train,test}.npy (float64 inputs, int64 labels), trains each recipe
      in torch and prints {"recipes": {...}, "torch": {"diabetes_r2", "cancer_accuracy"}}
  /usr/bin/python3 sklearn_reference.py forward WEIGHTS X.npy
      prints the outputs (JSON rows) of the model in WEIGHTS for raw inputs X, applying
      the "kiln.preprocessing" steps of its metadata
Exit status 77: torch or scikit-learn is missing.
"""
import json
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.model_selection import train_test_split
except ImportError as e:
    print("sklearn_reference: %s" % e)
    sys.exit(77)

# One recipe per set: full-batch Adam (the batch is the whole training split, so the order
# of the samples cannot make the two runs differ), normalize "auto" (the training split's
# mean and population std per feature), the initial weights of torch.manual_seed(seed).
RECIPES = {
    "diabetes": {"features": 10, "hidden": 16, "outputs": 1, "loss": "mse", "lr": 0.1,
                 "epochs": 150, "seed": 0},
    "cancer": {"features": 30, "hidden": 32, "outputs": 2, "loss": "cross_entropy", "lr": 0.01,
               "epochs": 100, "seed": 0},
}


def model(r):
    torch.manual_seed(r["seed"])
    return nn.Sequential(nn.Linear(r["features"], r["hidden"]), nn.ReLU(),
                         nn.Linear(r["hidden"], r["outputs"]))


def standardise(train, *others):
    """normalize "auto" as Kiln does it: float64 statistics, float32 arithmetic."""
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1
    m, s = mean.astype(np.float32), std.astype(np.float32)
    return [torch.tensor((a.astype(np.float32) - m) / s) for a in (train,) + others]


def train(r, x, y):
    net = model(r)
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    for _ in range(r["epochs"]):
        opt.zero_grad()
        out = net(x)
        loss = (nn.functional.mse_loss(out, y) if r["loss"] == "mse"
                else nn.functional.cross_entropy(out, y))
        loss.backward()
        opt.step()
    return net


def prepare(folder):
    X, y = load_diabetes(return_X_y=True)
    names = load_diabetes().feature_names
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    for name, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        with open("%s/diabetes_%s.csv" % (folder, name), "w") as f:
            f.write(",".join(names + ["target"]) + "\n")
            for row, t in zip(xs, ys):
                f.write(",".join(repr(float(v)) for v in row) + ",%r\n" % float(t))
    r = RECIPES["diabetes"]
    r["batch_size"] = len(xtr)
    a, b = standardise(xtr, xte)
    net = train(r, a, torch.tensor(ytr, dtype=torch.float32)[:, None])
    p = net(b).detach().numpy()[:, 0].astype(np.float64)
    r2 = 1 - ((p - yte) ** 2).sum() / ((yte - yte.mean()) ** 2).sum()

    X, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    for name, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        np.save("%s/cancer_x_%s.npy" % (folder, name), xs.astype(np.float64))
        np.save("%s/cancer_y_%s.npy" % (folder, name), ys.astype(np.int64))
    r = RECIPES["cancer"]
    r["batch_size"] = len(xtr)
    a, b = standardise(xtr, xte)
    net = train(r, a, torch.tensor(ytr))
    accuracy = float((net(b).argmax(1).numpy() == yte).mean())
    print(json.dumps({"recipes": RECIPES,
                      "torch": {"diabetes_r2": float(r2), "cancer_accuracy": accuracy}}))


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        assert info["dtype"] == "F32", info["dtype"]
        values = np.frombuffer(data[8 + n + start:8 + n + end], dtype="<f4")
        tensors[name] = torch.tensor(values.reshape(info["shape"]).copy())
    return tensors, meta


def forward(weights, inputs):
    tensors, meta = read_safetensors(weights)
    x = np.load(inputs).astype(np.float32)
    prep = json.loads(meta["kiln.preprocessing"])
    for step in prep["steps"]:
        if step["type"] == "scale":
            x = x * np.float32(step["factor"])
        elif step["type"] == "normalize":
            x = (x - np.array(step["mean"], dtype=np.float32)) / np.array(step["std"], dtype=np.float32)
        else:
            raise SystemExit("unknown step %s" % step["type"])
    hidden, features = tensors["0.weight"].shape
    outputs = tensors["2.weight"].shape[0]
    net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
    net.load_state_dict(tensors)  # PyTorch's own state_dict names, strict
    with torch.no_grad():
        out = net(torch.tensor(x)).numpy()
    print(json.dumps({"task": meta.get("kiln.task"), "outputs": out.tolist()}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "forward":
        forward(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)

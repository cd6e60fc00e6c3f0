"""bench/fmnist/torch_fmnist.py — the Fashion-MNIST recipes in plain PyTorch, for
bench/fmnist/run.sh to compare with `kiln train`: the same data (the IDX files read with
gzip + numpy, scaled by 1/255), default init, Adam lr 1e-3, batch 64, cross_entropy,
1 epoch, 2 threads, a plain training loop (no DataLoader). Prints one JSON line:
{"impl": "pytorch", "model", "device", "steps", "train_seconds", "samples_per_second",
 "test_loss", "test_accuracy"} (plus "device_name" and "tf32" on cuda). Training time
excludes data loading and evaluation, as Kiln's does.

On --device cuda the data tensors are moved to the GPU once, each epoch's order is a
torch.randperm drawn on the GPU and batches are gathered there by indexing; TF32 is off
for matmul and for cuDNN (whose default is on) so both sides do fp32 math, unless --tf32
allows it on both; the clock is read after torch.cuda.synchronize().

usage: python3 bench/fmnist/torch_fmnist.py mlp|cnn|resnet [--epochs N] [--threads N]
           [--device cpu|cuda] [--batch N] [--data DIR] [--tf32] [--max-steps N]
"""
import argparse
import gzip
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data, split):
    x = read_idx(f"{data}/{split}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(f"{data}/{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


class BasicBlock(nn.Module):
    """examples/fmnist-resnet.json's block: conv-bn-relu-conv-bn, plus the input, relu."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + y)


class ResNet(nn.Module):
    """examples/fmnist-resnet.json as a torch module: the same modules registered in the
    same order (so the same draws initialise them and the state-dict names are Kiln's:
    stem.conv.weight, stem.bn.*, layers.0.conv1.weight, ..., fc.bias)."""

    def __init__(self, channels=16, blocks=3):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.stem.bn = nn.BatchNorm2d(channels)
        self.stem.relu = nn.ReLU()
        self.stem.pool = nn.MaxPool2d(2)
        self.layers = nn.ModuleList([BasicBlock(channels) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(channels * 7 * 7, 10)

    def forward(self, x):
        s = self.stem
        x = s.pool(s.relu(s.bn(s.conv(x))))
        for block in self.layers:
            x = block(x)
        return self.fc(self.flat(self.pool(x)))


def model_for(name):
    if name == "resnet":
        return ResNet()
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                             nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))


def set_tf32(allow):
    """fp32 math on both sides unless asked: matmul's TF32 is off by default, cuDNN's on."""
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def clock(device):
    """time.perf_counter() once the device has finished what was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def splitmix64(x):
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def kiln_epoch_order(count, seed, epoch):
    """Kiln's kn_epoch_order (core/data.c): torch's CPU randperm under an mt19937 seeded with
    splitmix64(seed ^ splitmix64(epoch)); Kiln's generator is bit-identical to torch's."""
    gen = torch.Generator().manual_seed(splitmix64(seed ^ splitmix64(epoch)))
    return torch.randperm(count, generator=gen)


def evaluate(model, x, y):
    """Mean cross-entropy and accuracy over (x, y), in batches of 1000, in eval mode."""
    model.eval()
    with torch.no_grad():
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), 1000):
            logits = model(x[i:i + 1000])
            yb = y[i:i + 1000]
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["mlp", "cnn", "resnet"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--data", default=DATA, help="folder of the four *-ubyte.gz IDX files")
    ap.add_argument("--tf32", action="store_true", help="cuda: allow TF32 (matmul and cuDNN)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (smoke runs)")
    ap.add_argument("--torch-order", action="store_true",
                    help="shuffle with torch's own generator instead of Kiln's epoch order")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    info = {}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch_fmnist.py: torch sees no CUDA device")
        set_tf32(args.tf32)
        info = {"device_name": torch.cuda.get_device_name(device), "tf32": args.tf32}
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "t10k")
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    model = model_for(args.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = args.batch
    gen = torch.Generator(device=device).manual_seed(args.seed)
    train_count = len(x_train)
    steps, samples, seconds = 0, 0, 0.0
    for epoch in range(args.epochs):
        if args.max_steps and steps >= args.max_steps:
            break
        model.train()
        if args.torch_order:
            start = clock(device)
            order = torch.randperm(train_count, generator=gen, device=device)
        else:
            # Kiln's batches: with the same initial weights (torch.manual_seed(seed) above
            # gives Kiln's init) and the same order, the two runs differ only by rounding,
            # so their accuracies can be compared within 0.5% instead of seed-to-seed noise.
            order = kiln_epoch_order(train_count, args.seed, epoch).to(device)
            start = clock(device)
        for i in range(0, len(order), batch):
            if args.max_steps and steps >= args.max_steps:
                break
            idx = order[i:i + batch]
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            steps += 1
            samples += len(idx)
        seconds += clock(device) - start
    test_loss, test_accuracy = evaluate(model, x_test, y_test)
    print(json.dumps({"impl": "pytorch", "model": args.model, "device": args.device, **info,
                      "batch": batch, "steps": steps,
                      "train_seconds": seconds, "samples_per_second": samples / seconds,
                      "test_loss": test_loss, "test_accuracy": test_accuracy}))


if __name__ == "__main__":
    main()

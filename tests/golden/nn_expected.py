#!/usr/bin/python3
"""nn_expected.py — prints the PyTorch 1.13 numbers hard-coded in tests/test_nn.c
(module initialisation after manual_seed, a small model's forward, adaptive_avg_pool2d,
state_dict names, repr). Run with Debian's /usr/bin/python3 and paste what changed."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def show(name, t):
    vals = ", ".join("%.9g" % v for v in t.detach().reshape(-1).tolist())
    print("%s: shape %s\n  {%s}" % (name, list(t.shape), vals))


torch.manual_seed(0)
lin = nn.Linear(4, 3)
show("linear(4,3).weight", lin.weight)
show("linear(4,3).bias", lin.bias)

torch.manual_seed(0)
conv = nn.Conv2d(2, 3, 3)
show("conv2d(2,3,3).weight[:8]", conv.weight.reshape(-1)[:8])
show("conv2d(2,3,3).bias", conv.bias)

torch.manual_seed(0)
emb = nn.Embedding(5, 4)
show("embedding(5,4).weight", emb.weight)

torch.manual_seed(0)
emb = nn.Embedding(3, 2)
show("embedding(3,2).weight", emb.weight)

# A small model: conv, relu, pool, flatten, linear with seed 1; input = seq values
torch.manual_seed(1)
model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8, 3))
x = torch.tensor([((i * 5 + 3) % 17 - 8) / 8 for i in range(2 * 16)]).reshape(2, 1, 4, 4)
show("small model forward", model(x))
print([k for k in model.state_dict().keys()])

cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))
print(list(cnn.state_dict().keys()), sum(p.numel() for p in cnn.parameters()))
print(cnn)

bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.LayerNorm(4))
print(list(bn.state_dict().keys()))
print(bn)

# adaptive_avg_pool2d on 1x1x5x7 arange, output 3x4, and its gradient for weights arange
x = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7).requires_grad_()
y = F.adaptive_avg_pool2d(x, (3, 4))
show("adaptive 5x7->3x4", y)
y.backward(torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4))
show("adaptive grad", x.grad)

# batch norm: running stats after one training step of the seq input
torch.manual_seed(0)
b = nn.BatchNorm2d(2)
x = torch.tensor([((i * 7 + 3) % 17 - 8) / 8 for i in range(2 * 2 * 3)]).reshape(3, 2, 2)
x = x.reshape(1, 2, 2, 3).repeat(2, 1, 1, 1) * torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
out = b(x)
show("bn running_mean", b.running_mean)
show("bn running_var", b.running_var)
print("bn num_batches_tracked", b.num_batches_tracked)
b.eval()
show("bn eval out[:6]", b(x).reshape(-1)[:6])

# the CNN after manual_seed(42): first, last and sum of each parameter
torch.manual_seed(42)
cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))
for k, v in cnn.state_dict().items():
    f = v.reshape(-1)
    print('{"%s", %.9gf, %.9gf, %.9g},' % (k, f[0].item(), f[-1].item(), f.double().sum().item()))

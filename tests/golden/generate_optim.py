#!/usr/bin/python3
"""
generate_optim.py — writes tests/golden/optim_expected.h, PyTorch 1.13's reference numbers
for tests/test_optim.c: parameters after each step of SGD, Adam, AdamW and RMSprop under
several option sets, learning rates of the schedules, and clip_grad_norm_ results.

Run with Debian's Python (the one that has torch):
    /usr/bin/python3 tests/golden/generate_optim.py
The numbers go into a C header rather than tests/golden/data/*.bin because generate.py
deletes every .bin it did not write itself. Everything is drawn after fixed seeds and
torch runs on one thread (foreach=False, the single-tensor code paths), so rerunning gives
the same file.
"""
import math
import os
import warnings

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim_expected.h")
SHAPES = [(2, 3), (3,), (2, 2)]
STEPS = 4
GRAD_SCALES = [1.0, 0.3, 2.0, 0.5]  # varying magnitudes make amsgrad's max matter



def matrices(params, wd):
    """nanoGPT's configure_optimizers groups: weight decay wd on the parameters of 2+
    dims, none on the rest (Kiln's weight_decay_params "matrices")."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


# name, constructor, skip: (step, param) pairs whose gradient is None at that step.
# The C test has the same table (options spelled out there).
OPTIM_CASES = [
    ("sgd_plain", lambda p: torch.optim.SGD(p, lr=0.1), ()),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), ()),
    ("sgd_dampening_wd",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01), ()),
    ("sgd_nesterov",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001), ()),
    ("sgd_skip", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), ((1, 1), (2, 1))),
    ("adam_default", lambda p: torch.optim.Adam(p), ()),
    ("adam_lr", lambda p: torch.optim.Adam(p, lr=0.1), ()),
    ("adam_wd_amsgrad",
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                amsgrad=True), ()),
    ("adam_skip", lambda p: torch.optim.Adam(p, lr=0.1), ((1, 1), (2, 1), (0, 2))),
    ("adamw_default", lambda p: torch.optim.AdamW(p, lr=0.05), ()),
    ("adamw_amsgrad",
     lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.85, 0.95), weight_decay=0.1,
                                 amsgrad=True), ()),
    ("rmsprop_default", lambda p: torch.optim.RMSprop(p), ()),
    ("rmsprop_momentum", lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, eps=1e-4), ()),
    ("rmsprop_centered",
     lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, centered=True, momentum=0.5,
                                   weight_decay=0.01), ()),
    ("rmsprop_centered_plain", lambda p: torch.optim.RMSprop(p, lr=0.02, centered=True), ()),
    ("adamw_matrices",
     lambda p: torch.optim.AdamW(matrices(p, 0.1), lr=0.02, betas=(0.9, 0.99)), ()),
    ("adam_matrices", lambda p: torch.optim.Adam(matrices(p, 0.1), lr=0.05), ()),
    ("sgd_matrices",
     lambda p: torch.optim.SGD(matrices(p, 0.05), lr=0.05, momentum=0.9), ()),
    ("rmsprop_matrices",
     lambda p: torch.optim.RMSprop(matrices(p, 0.01), lr=0.01, momentum=0.5), ()),
]

SCHED_STEPS = 30


def step_sched(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)


def cosine_sched(opt):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.001)


def warm(main, warmup, factor):
    def make(opt):
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=factor, total_iters=warmup)
        if main is None:
            return linear
        return torch.optim.lr_scheduler.SequentialLR(opt, [linear, main(opt)], milestones=[warmup])
    return make


# name, factory; base lr 0.1. The C test has the same table.
SCHED_CASES = [
    ("step", step_sched),
    ("cosine", cosine_sched),
    ("warmup_constant", warm(None, 5, 0.1)),
    ("warmup_step", warm(step_sched, 4, 0.25)),
    ("warmup_cosine", warm(cosine_sched, 6, 1.0 / 3.0)),
]

# name, max_norm, per-gradient scale
CLIP_CASES = [("clip_active", 1.0, 1.0), ("clip_inactive", 100.0, 1.0), ("clip_tiny", 0.05, 3.0)]


def floats(values, fmt="%.9g"):
    text = ", ".join(fmt % v for v in values)
    lines, line = [], "    "
    for word in text.split(" "):
        if len(line) + len(word) + 1 > 96:
            lines.append(line.rstrip())
            line = "    "
        line += word + " "
    lines.append(line.rstrip())
    return "{\n" + "\n".join(lines) + "\n}"


def flat(tensors):
    return [float(v) for t in tensors for v in t.detach().reshape(-1).tolist()]


def main():
    warnings.filterwarnings("ignore")  # SequentialLR calls step(0), which is deprecated
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    init = [torch.randn(s) for s in SHAPES]
    grads = [[torch.randn(s) * GRAD_SCALES[k] for s in SHAPES] for k in range(STEPS)]
    out = ["/* optim_expected.h — generated by tests/golden/generate_optim.py; do not edit. */",
           "#define OPTIM_STEPS %d" % STEPS,
           "#define OPTIM_NUMEL %d" % sum(math.prod(s) for s in SHAPES),
           "static const float optim_init[] = %s;" % floats(flat(init)),
           "static const float optim_grads[OPTIM_STEPS][OPTIM_NUMEL] = {"]
    out += ["%s," % floats(flat(g)) for g in grads]
    out.append("};")
    for name, make, skip in OPTIM_CASES:
        params = [p.clone().requires_grad_(True) for p in init]
        opt = make(params)
        after = []
        for k in range(STEPS):
            for i, p in enumerate(params):
                p.grad = None if (k, i) in skip else grads[k][i].clone()
            opt.step()
            after.append(floats(flat(params)) + ",")
        out.append("static const float optim_%s[OPTIM_STEPS][OPTIM_NUMEL] = {" % name)
        out += after
        out.append("};")
    for name, make in SCHED_CASES:
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        lrs = []
        for _ in range(SCHED_STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out.append("static const double sched_%s[%d] = %s;" % (
            name, SCHED_STEPS, floats(lrs, "%.17g")))
    for name, max_norm, scale in CLIP_CASES:
        gs = [g.clone() * scale for g in grads[0]]
        params = [torch.zeros(s, requires_grad=True) for s in SHAPES]
        for p, g in zip(params, gs):
            p.grad = g
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        out.append("static const float %s_total = %.9g;" % (name, float(total)))
        out.append("static const float %s_grads[OPTIM_NUMEL] = %s;" % (
            name, floats(flat(p.grad for p in params))))
    with open(OUT, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

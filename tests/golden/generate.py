#!/usr/bin/python3
"""
generate.py — writes the PyTorch golden fixtures that tests/test_golden_*.c compare
every Kiln op against, forward and backward.

Run with Debian's Python (the one that has torch):  /usr/bin/python3 tests/golden/generate.py
It (re)writes tests/golden/data/NAME.bin, one file per case, in the format read by
tests/support/kn_test.c:
    "KNGOLD1\n", uint32 count, then per entry: uint32 name_length, name bytes,
    uint32 dtype (0 float32, 1 int64), uint32 ndim, int64 shape[ndim], the elements.
All little-endian. Each case holds its inputs (under the names the C test uses), "out"
(and "indices" where the op has them), the upstream gradient "grad_out" and "grad_X" for
every float input X that PyTorch differentiates. Inputs are drawn after
torch.manual_seed(crc32(case name)), so the output is byte-for-byte reproducible.
"""
import os
import struct
import sys
import zlib

import torch
import torch.nn.functional as F

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CASES = []


def case(name, make, fn, nograd=()):
    """Registers a case: make() builds the inputs (a dict, drawn after seeding), fn(*inputs)
    returns the output, an (out, indices) pair, or a dict with "out" and extra entries.
    Float inputs require grad unless named in nograd."""
    CASES.append((name, make, fn, set(nograd)))


# ---- input makers (called after the per-case seed) ------------------------------------

def randn(*shape):
    return torch.randn(shape)


def pos(*shape):
    """Values in [0.5, 2): away from the kinks and poles of log, sqrt, pow, div."""
    return torch.rand(shape) * 1.5 + 0.5


def ints(high, *shape):
    return torch.randint(0, high, shape)


def inputs(**makers):
    return lambda: {k: v() if callable(v) else v for k, v in makers.items()}


def R(*shape):
    return lambda: randn(*shape)


def P(*shape):
    return lambda: pos(*shape)


def I(high, *shape):
    return lambda: ints(high, *shape)


# ---- writing --------------------------------------------------------------------------

def encode(entries):
    parts = [b"KNGOLD1\n", struct.pack("<I", len(entries))]
    for key, t in entries:
        t = t.detach().contiguous()
        if t.dtype == torch.int64:
            dtype, payload = 1, t.numpy().astype("<i8").tobytes()
        else:
            dtype, payload = 0, t.to(torch.float32).numpy().astype("<f4").tobytes()
        name = key.encode()
        parts.append(struct.pack("<I", len(name)) + name)
        parts.append(struct.pack("<II", dtype, t.dim()))
        parts.append(struct.pack("<%dq" % t.dim(), *t.shape))
        parts.append(payload)
    return b"".join(parts)


def run_case(name, make, fn, nograd):
    torch.manual_seed(zlib.crc32(name.encode()))
    args = make()
    leaves = []
    for key, value in args.items():
        if value.is_floating_point() and key not in nograd:
            value.requires_grad_(True)
            leaves.append(key)
    entries = [(key, value.detach().clone()) for key, value in args.items()]
    result = fn(*args.values())
    if isinstance(result, dict):
        extra = dict(result)
    elif isinstance(result, tuple):
        extra = {"out": result[0], "indices": result[1]}
    else:
        extra = {"out": result}
    out = extra["out"]
    entries += [(key, value.detach().clone()) for key, value in extra.items()]
    if out.requires_grad:
        grad_out = torch.randn(out.shape)
        out.backward(grad_out)
        entries.append(("grad_out", grad_out))
        for key in leaves:
            grad = args[key].grad
            assert grad is not None, "%s: no gradient for %s" % (name, key)
            entries.append(("grad_" + key, grad))
    return encode(entries)


# ---- elementwise ----------------------------------------------------------------------

def binary_cases(op_name, op, b_maker):
    B = b_maker
    case(op_name + "_same", inputs(a=R(2, 3), b=B(2, 3)), op)
    case(op_name + "_bcast_row", inputs(a=R(2, 3), b=B(3)), op)
    case(op_name + "_bcast_3d", inputs(a=R(2, 1, 4), b=B(3, 1)), op)
    case(op_name + "_scalar0d", inputs(a=R(2, 3), b=B()), op)
    case(op_name + "_scalar0d_left", inputs(a=R(), b=B(2, 3)), op)
    # Non-contiguous: a is base.t(); the C test calls kn_transpose(base, 0, 1).
    case(op_name + "_noncontig", inputs(base=R(3, 2), b=B(2, 3)),
         lambda base, b: op(base.t(), b))


binary_cases("add", torch.add, R)
binary_cases("sub", torch.sub, R)
binary_cases("mul", torch.mul, R)
binary_cases("div", torch.div, P)

UNARY = [
    # name, maker for a [3, 4], fn
    ("add_scalar", R, lambda a: a + 2.5),
    ("mul_scalar", R, lambda a: a * -1.5),
    ("neg", R, torch.neg),
    ("pow_2", P, lambda a: torch.pow(a, 2.0)),
    ("pow_0_5", P, lambda a: torch.pow(a, 0.5)),
    ("pow_3", P, lambda a: torch.pow(a, 3.0)),
    ("pow_m1_5", P, lambda a: torch.pow(a, -1.5)),
    ("exp", R, torch.exp),
    ("log", P, torch.log),
    ("sqrt", P, torch.sqrt),
    ("abs", R, torch.abs),
    ("clamp_both", R, lambda a: torch.clamp(a, -0.5, 0.5)),
    ("clamp_min", R, lambda a: torch.clamp(a, min=-0.3)),
    ("clamp_max", R, lambda a: torch.clamp(a, max=0.4)),
    ("relu", R, torch.relu),
    ("leaky_relu", R, lambda a: F.leaky_relu(a, 0.1)),
    ("gelu_exact", R, lambda a: F.gelu(a)),
    ("gelu_tanh", R, lambda a: F.gelu(a, approximate="tanh")),
    ("silu", R, F.silu),
    ("tanh", R, torch.tanh),
    ("sigmoid", R, torch.sigmoid),
]
for op_name, maker, fn in UNARY:
    case(op_name, inputs(a=maker(3, 4)), fn)
    # Non-contiguous: a is base[:, 1::2]; the C test calls kn_slice(base, 1, 1, 8, 2).
    case(op_name + "_noncontig", inputs(base=maker(3, 8)),
         lambda base, fn=fn: fn(base[:, 1::2]))


def int_cond(*shape):
    return lambda: (torch.rand(*shape) > 0.5).to(torch.int64)


def float_cond(*shape):
    # Non-zero selects a; -2 checks that any non-zero value counts, not just 1.
    return lambda: torch.where(torch.rand(*shape) > 0.5, -2.0, 0.0)


case("where_same", inputs(cond=int_cond(2, 3), a=R(2, 3), b=R(2, 3)),
     lambda cond, a, b: torch.where(cond != 0, a, b))
case("where_bcast", inputs(cond=int_cond(2, 1), a=R(2, 3), b=R(3)),
     lambda cond, a, b: torch.where(cond != 0, a, b))
case("where_float_cond", inputs(cond=float_cond(2, 3), a=R(2, 3), b=R(1, 3)),
     lambda cond, a, b: torch.where(cond != 0, a, b), nograd={"cond"})


def rounded(*shape):
    # Few distinct values, so eq finds matches.
    return lambda: torch.randint(-2, 3, shape).to(torch.float32)


for op_name, op in [("eq", torch.eq), ("gt", torch.gt), ("lt", torch.lt)]:
    case(op_name, inputs(a=rounded(2, 3), b=rounded(3)),
         lambda a, b, op=op: op(a, b).to(torch.float32), nograd={"a", "b"})

# In-place helpers (never recorded): the result is dst after the call.
case("add_inplace", inputs(dst=R(2, 3), src=R(3)),
     lambda dst, src: dst.clone().add_(src, alpha=-0.75), nograd={"dst", "src"})
case("mul_scalar_inplace", inputs(dst=R(2, 3)),
     lambda dst: dst.clone().mul_(2.5), nograd={"dst"})
case("fill_inplace", inputs(dst=R(2, 3)),
     lambda dst: dst.clone().fill_(1.25), nograd={"dst"})
case("copy_inplace", inputs(dst=R(2, 3), src=R(3)),
     lambda dst, src: dst.clone().copy_(src), nograd={"dst", "src"})

# ---- activations with a dim ------------------------------------------------------------

for op_name, op in [("softmax", F.softmax), ("log_softmax", F.log_softmax)]:
    for dim, tag in [(0, "0"), (1, "1"), (-1, "m1")]:
        case("%s_dim%s" % (op_name, tag), inputs(a=R(2, 3, 4)),
             lambda a, op=op, dim=dim: op(a, dim=dim))
    case(op_name + "_noncontig", inputs(base=R(4, 3)),
         lambda base, op=op: op(base.t(), dim=-1))
    case(op_name + "_noncontig_dim0", inputs(base=R(4, 3)),
         lambda base, op=op: op(base.t(), dim=0))

# ---- reductions -------------------------------------------------------------------------

for op_name, op in [("sum", torch.sum), ("mean", torch.mean)]:
    case(op_name + "_dim1", inputs(a=R(2, 3, 4)), lambda a, op=op: op(a, dim=1))
    case(op_name + "_dims02", inputs(a=R(2, 3, 4)), lambda a, op=op: op(a, dim=(0, 2)))
    case(op_name + "_dimm1_keepdim", inputs(a=R(2, 3, 4)),
         lambda a, op=op: op(a, dim=-1, keepdim=True))
    case(op_name + "_dims01_keepdim", inputs(a=R(2, 3, 4)),
         lambda a, op=op: op(a, dim=(0, 1), keepdim=True))
    case(op_name + "_all", inputs(a=R(2, 3, 4)), lambda a, op=op: op(a))
    case(op_name + "_noncontig", inputs(base=R(4, 3)), lambda base, op=op: op(base.t(), dim=1))

for corr in (0, 1):
    v = "var_c%d" % corr
    case(v + "_dim1", inputs(a=R(2, 3, 4)),
         lambda a, c=corr: torch.var(a, dim=1, unbiased=bool(c)))
    case(v + "_dims02", inputs(a=R(2, 3, 4)),
         lambda a, c=corr: torch.var(a, dim=(0, 2), unbiased=bool(c)))
    case(v + "_dimm1_keepdim", inputs(a=R(2, 3, 4)),
         lambda a, c=corr: torch.var(a, dim=-1, unbiased=bool(c), keepdim=True))
    case(v + "_all", inputs(a=R(2, 3, 4)), lambda a, c=corr: torch.var(a, unbiased=bool(c)))
case("var_c1_noncontig", inputs(base=R(4, 3)), lambda base: torch.var(base.t(), dim=1))
case("sum_all_fn", inputs(a=R(3, 5)), lambda a: a.sum())
case("mean_all_fn", inputs(a=R(3, 5)), lambda a: a.mean())

for op_name, op in [("max", torch.max), ("min", torch.min)]:
    case(op_name + "_dim1", inputs(a=R(2, 3, 4)), lambda a, op=op: tuple(op(a, dim=1)))
    case(op_name + "_dim0", inputs(a=R(3, 4)), lambda a, op=op: tuple(op(a, dim=0)))
    case(op_name + "_dimm1_keepdim", inputs(a=R(2, 3, 4)),
         lambda a, op=op: tuple(op(a, dim=-1, keepdim=True)))
    case(op_name + "_all", inputs(a=R(3, 5)), lambda a, op=op: op(a))
    case(op_name + "_noncontig", inputs(base=R(4, 3)), lambda base, op=op: tuple(op(base.t(), 1)))
case("argmax_dim1", inputs(a=R(2, 3, 4)), lambda a: torch.argmax(a, dim=1), nograd={"a"})
case("argmax_dim0_keepdim", inputs(a=R(3, 4)),
     lambda a: torch.argmax(a, dim=0, keepdim=True), nograd={"a"})

# ---- matmul and linear ------------------------------------------------------------------

case("matmul_1d_1d", inputs(a=R(4), b=R(4)), torch.matmul)
case("matmul_2d_1d", inputs(a=R(3, 4), b=R(4)), torch.matmul)
case("matmul_1d_2d", inputs(a=R(4), b=R(4, 5)), torch.matmul)
case("matmul_2d_2d", inputs(a=R(3, 4), b=R(4, 5)), torch.matmul)
case("matmul_3d_2d", inputs(a=R(2, 3, 4), b=R(4, 5)), torch.matmul)
case("matmul_3d_3d", inputs(a=R(2, 3, 4), b=R(2, 4, 5)), torch.matmul)
case("matmul_bcast_batch", inputs(a=R(2, 1, 3, 4), b=R(3, 4, 5)), torch.matmul)
case("matmul_1d_3d", inputs(a=R(4), b=R(2, 4, 5)), torch.matmul)
case("matmul_big", inputs(a=R(16, 24), b=R(24, 12)), torch.matmul)
# Non-contiguous: a = abase.t() [3, 4], b = bbase.t() [4, 5].
case("matmul_noncontig", inputs(abase=R(4, 3), bbase=R(5, 4)),
     lambda abase, bbase: torch.matmul(abase.t(), bbase.t()))

case("linear_bias", inputs(x=R(3, 4), weight=R(5, 4), bias=R(5)), F.linear)
case("linear_nobias", inputs(x=R(3, 4), weight=R(5, 4)), F.linear)
case("linear_3d", inputs(x=R(2, 3, 4), weight=R(5, 4), bias=R(5)), F.linear)
case("linear_noncontig", inputs(xbase=R(4, 3), weight=R(5, 4), bias=R(5)),
     lambda xbase, weight, bias: F.linear(xbase.t(), weight, bias))

# ---- convolution and pooling ------------------------------------------------------------

case("conv2d_plain", inputs(x=R(2, 2, 5, 5), weight=R(3, 2, 3, 3), bias=R(3)), F.conv2d)
case("conv2d_stride2_pad1", inputs(x=R(1, 2, 6, 6), weight=R(3, 2, 3, 3), bias=R(3)),
     lambda x, weight, bias: F.conv2d(x, weight, bias, stride=2, padding=1))
case("conv2d_dilation2", inputs(x=R(1, 2, 7, 7), weight=R(2, 2, 3, 3), bias=R(2)),
     lambda x, weight, bias: F.conv2d(x, weight, bias, dilation=2))
case("conv2d_groups2", inputs(x=R(2, 4, 5, 5), weight=R(4, 2, 3, 3), bias=R(4)),
     lambda x, weight, bias: F.conv2d(x, weight, bias, groups=2))
case("conv2d_nobias", inputs(x=R(1, 3, 5, 4), weight=R(2, 3, 2, 3)),
     lambda x, weight: F.conv2d(x, weight, None, padding=(1, 0)))

case("max_pool2d_k2", inputs(x=R(1, 2, 6, 6)), lambda x: F.max_pool2d(x, 2))
case("max_pool2d_k3_s2_p1", inputs(x=R(2, 2, 7, 7)),
     lambda x: F.max_pool2d(x, 3, stride=2, padding=1))
case("max_pool2d_ceil", inputs(x=R(1, 2, 5, 5)),
     lambda x: F.max_pool2d(x, 2, stride=2, ceil_mode=True))
case("avg_pool2d_k2", inputs(x=R(1, 2, 6, 6)), lambda x: F.avg_pool2d(x, 2))
case("avg_pool2d_pad", inputs(x=R(1, 2, 6, 6)),
     lambda x: F.avg_pool2d(x, 3, stride=2, padding=1))
case("avg_pool2d_pad_exclude", inputs(x=R(1, 2, 6, 6)),
     lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False))
case("avg_pool2d_ceil", inputs(x=R(1, 2, 5, 5)),
     lambda x: F.avg_pool2d(x, 2, stride=2, ceil_mode=True))
case("avg_pool2d_ceil_pad", inputs(x=R(1, 1, 6, 6)),
     lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True))

# ---- layers -------------------------------------------------------------------------------

# Training-mode dropout with 0 < p < 1 depends on the RNG, so it is tested statistically
# elsewhere; here only the two deterministic settings.
case("dropout_eval", inputs(x=R(3, 4)), lambda x: F.dropout(x, 0.5, training=False))
case("dropout_p0_train", inputs(x=R(3, 4)), lambda x: F.dropout(x, 0.0, training=True))

case("embedding", inputs(weight=R(5, 3), indices=lambda: torch.tensor([[0, 2, 4], [2, 2, 1]])),
     lambda weight, indices: F.embedding(indices, weight))

case("layer_norm_affine", inputs(x=R(2, 3, 4), weight=R(4), bias=R(4)),
     lambda x, weight, bias: F.layer_norm(x, (4,), weight, bias, 1e-5))
case("layer_norm_plain", inputs(x=R(2, 3, 4)), lambda x: F.layer_norm(x, (4,), eps=1e-5))
case("layer_norm_2d_affine", inputs(x=R(2, 3, 4), weight=R(3, 4), bias=R(3, 4)),
     lambda x, weight, bias: F.layer_norm(x, (3, 4), weight, bias, 1e-5))


def batch_norm_train(x, weight, bias, running_mean, running_var):
    rm, rv = running_mean.clone(), running_var.clone()
    out = F.batch_norm(x, rm, rv, weight, bias, training=True, momentum=0.1, eps=1e-5)
    return {"out": out, "running_mean_after": rm, "running_var_after": rv}


STATS = {"running_mean": lambda: torch.randn(3) * 0.1, "running_var": lambda: pos(3)}
case("batch_norm_train_4d",
     inputs(x=R(4, 3, 2, 2), weight=R(3), bias=R(3), **STATS), batch_norm_train,
     nograd={"running_mean", "running_var"})
case("batch_norm_train_2d",
     inputs(x=R(5, 3), weight=R(3), bias=R(3), **STATS), batch_norm_train,
     nograd={"running_mean", "running_var"})
case("batch_norm_train_nostats", inputs(x=R(4, 3, 2)),
     lambda x: F.batch_norm(x, None, None, None, None, training=True, eps=1e-5))
case("batch_norm_eval",
     inputs(x=R(4, 3, 2, 2), weight=R(3), bias=R(3), **STATS),
     lambda x, weight, bias, running_mean, running_var: F.batch_norm(
         x, running_mean, running_var, weight, bias, training=False, eps=1e-5),
     nograd={"running_mean", "running_var"})

# ---- losses -------------------------------------------------------------------------------

REDUCTIONS = ["mean", "sum", "none"]
for red in REDUCTIONS:
    case("mse_loss_" + red, inputs(input=R(3, 4), target=R(3, 4)),
         lambda input, target, red=red: F.mse_loss(input, target, reduction=red))
    case("cross_entropy_" + red, inputs(logits=R(4, 5), target=I(5, 4)),
         lambda logits, target, red=red: F.cross_entropy(logits, target, reduction=red))
    case("nll_loss_" + red, inputs(log_probs=R(4, 5), target=I(5, 4)),
         lambda log_probs, target, red=red: F.nll_loss(log_probs, target, reduction=red))
    # The target of BCE is data, not a parameter: only the logits are differentiated.
    case("bce_logits_" + red, inputs(logits=R(3, 4), target=lambda: torch.rand(3, 4)),
         lambda logits, target, red=red: F.binary_cross_entropy_with_logits(
             logits, target, reduction=red), nograd={"target"})

IGNORED = lambda: torch.tensor([1, -100, 3, 0, -100, 2])
case("cross_entropy_ignore_index", inputs(logits=R(6, 4), target=IGNORED),
     lambda logits, target: F.cross_entropy(logits, target))
case("cross_entropy_ignore_index_sum", inputs(logits=R(6, 4), target=IGNORED),
     lambda logits, target: F.cross_entropy(logits, target, reduction="sum"))
case("cross_entropy_ignore_custom",
     inputs(logits=R(5, 4), target=lambda: torch.tensor([1, 2, 2, 0, 3])),
     lambda logits, target: F.cross_entropy(logits, target, ignore_index=2))
case("cross_entropy_smoothing", inputs(logits=R(4, 5), target=I(5, 4)),
     lambda logits, target: F.cross_entropy(logits, target, label_smoothing=0.1))
case("cross_entropy_smoothing_sum", inputs(logits=R(4, 5), target=I(5, 4)),
     lambda logits, target: F.cross_entropy(logits, target, reduction="sum",
                                            label_smoothing=0.1))
case("cross_entropy_smoothing_ignore", inputs(logits=R(6, 4), target=IGNORED),
     lambda logits, target: F.cross_entropy(logits, target, label_smoothing=0.1))
case("cross_entropy_3d", inputs(logits=R(2, 4, 3), target=I(4, 2, 3)),
     lambda logits, target: F.cross_entropy(logits, target))
case("cross_entropy_3d_none", inputs(logits=R(2, 4, 3), target=I(4, 2, 3)),
     lambda logits, target: F.cross_entropy(logits, target, reduction="none"))
case("nll_loss_ignore_index", inputs(log_probs=R(6, 4), target=IGNORED),
     lambda log_probs, target: F.nll_loss(log_probs, target))
case("nll_loss_3d", inputs(log_probs=R(2, 4, 3), target=I(4, 2, 3)),
     lambda log_probs, target: F.nll_loss(log_probs, target))

# ---- views and joins -------------------------------------------------------------------------

case("view", inputs(a=R(2, 6)), lambda a: a.view(3, 4))
case("reshape", inputs(a=R(2, 3, 4)), lambda a: a.reshape(4, -1))
# reshape of a transposed tensor cannot be a view: it copies.
case("reshape_noncontig", inputs(base=R(4, 3)), lambda base: base.t().reshape(12))
case("permute", inputs(a=R(2, 3, 4)), lambda a: a.permute(2, 0, 1))
case("transpose", inputs(a=R(2, 3, 4)), lambda a: a.transpose(0, 2))
case("narrow", inputs(a=R(4, 5)), lambda a: a.narrow(1, 1, 3))
case("slice_step", inputs(a=R(7, 3)), lambda a: a[1:6:2])
case("slice_step_dim1", inputs(a=R(2, 9)), lambda a: a[:, 0:9:3])
case("select", inputs(a=R(2, 3, 4)), lambda a: a.select(1, 2))
case("select_neg", inputs(a=R(3, 4)), lambda a: a.select(0, -1))
case("expand", inputs(a=R(3, 1)), lambda a: a.expand(2, 3, 4))
case("expand_keep", inputs(a=R(1, 4)), lambda a: a.expand(3, -1))
case("squeeze", inputs(a=R(2, 1, 3)), lambda a: a.squeeze(1))
case("squeeze_all", inputs(a=R(1, 3, 1, 2)), lambda a: a.squeeze())
case("unsqueeze", inputs(a=R(2, 3)), lambda a: a.unsqueeze(1))
case("unsqueeze_neg", inputs(a=R(2, 3)), lambda a: a.unsqueeze(-1))
case("flatten", inputs(a=R(2, 3, 4)), lambda a: torch.flatten(a, 1, -1))
case("flatten_all", inputs(a=R(2, 3, 4)), lambda a: torch.flatten(a))
case("contiguous", inputs(base=R(3, 4)), lambda base: base.t().contiguous())
case("cat_dim0", inputs(a=R(2, 3), b=R(1, 3), c=R(3, 3)), lambda a, b, c: torch.cat([a, b, c], 0))
case("cat_dim1", inputs(a=R(2, 3), b=R(2, 1), c=R(2, 2)), lambda a, b, c: torch.cat([a, b, c], 1))
case("stack_dim0", inputs(a=R(2, 3), b=R(2, 3), c=R(2, 3)),
     lambda a, b, c: torch.stack([a, b, c], 0))
case("stack_dim2", inputs(a=R(2, 3), b=R(2, 3)), lambda a, b: torch.stack([a, b], 2))
case("index_select", inputs(a=R(4, 3), index=lambda: torch.tensor([3, 0, 3, 1])),
     lambda a, index: torch.index_select(a, 0, index))
case("index_select_dim1", inputs(a=R(2, 5), index=lambda: torch.tensor([4, 4, 2])),
     lambda a, index: torch.index_select(a, 1, index))
case("gather", inputs(a=R(3, 4), index=lambda: torch.tensor([[0, 3], [1, 1], [2, 0]])),
     lambda a, index: torch.gather(a, 1, index))
case("gather_dim0", inputs(a=R(3, 4), index=I(3, 2, 4)),
     lambda a, index: torch.gather(a, 0, index))


# ---- harder inputs: other strides, saturation, repeated leaves --------------------------------

def big(scale, *shape):
    return lambda: torch.randn(shape) * scale


# A leaf used twice: both paths accumulate into one gradient.
case("mul_self", inputs(a=R(2, 3)), lambda a: a * a)
# Both operands strided, one broadcast: abase.t() [2, 3] - bbase[1::2] [3].
case("sub_noncontig_bcast", inputs(abase=R(3, 2), bbase=R(6)),
     lambda abase, bbase: abase.t() - bbase[1::2])
case("div_noncontig_both", inputs(abase=P(3, 2), bbase=P(3, 2)),
     lambda abase, bbase: abase.t() / bbase.t())
# A stride-0 operand: base [1, 3] expanded to [2, 3].
case("mul_expanded", inputs(base=R(1, 3), b=R(2, 3)), lambda base, b: base.expand(2, 3) * b)
case("exp_0d", inputs(a=R()), torch.exp)
case("tanh_large", inputs(a=big(20, 3, 4)), torch.tanh)
case("sigmoid_large", inputs(a=big(40, 3, 4)), torch.sigmoid)
case("gelu_large", inputs(a=big(10, 3, 4)), F.gelu)
case("silu_large", inputs(a=big(40, 3, 4)), F.silu)
case("softmax_large", inputs(a=big(50, 2, 5)), lambda a: F.softmax(a, -1))
case("log_softmax_large", inputs(a=big(50, 2, 5)), lambda a: F.log_softmax(a, -1))
case("softmax_slice", inputs(base=R(3, 8)), lambda base: F.softmax(base[:, 1::2], -1))

case("sum_dims_unordered", inputs(a=R(2, 3, 4)), lambda a: a.sum(dim=(2, 0)))
case("sum_dims_neg_keepdim", inputs(a=R(2, 3, 4)), lambda a: a.sum(dim=(-1, 0), keepdim=True))
case("sum_expanded", inputs(base=R(1, 3)), lambda base: base.expand(4, 3).sum(0))
case("var_c1_dims_neg_keepdim", inputs(a=R(2, 3, 4)),
     lambda a: torch.var(a, dim=(0, -1), keepdim=True))
case("mean_slice", inputs(base=R(3, 8)), lambda base: base[:, 1::2].mean(-1))
case("max_slice", inputs(base=R(3, 8)), lambda base: tuple(torch.max(base[:, 1::2], 1)))

# abase [2, 4, 3].transpose(1, 2) is a batched transposed operand.
case("matmul_3d_transposed", inputs(abase=R(2, 4, 3), b=R(2, 4, 5)),
     lambda abase, b: torch.matmul(abase.transpose(1, 2), b))
case("matmul_expanded_batch", inputs(abase=R(1, 3, 4), b=R(3, 4, 5)),
     lambda abase, b: torch.matmul(abase.expand(3, 3, 4), b))
# Tied weights: weight = wbase.t() is a transposed view.
case("linear_weight_t", inputs(x=R(3, 4), wbase=R(4, 5), bias=R(5)),
     lambda x, wbase, bias: F.linear(x, wbase.t(), bias))

# Channels-last storage: x = xbase.permute(0, 3, 1, 2).
case("conv2d_noncontig", inputs(xbase=R(1, 5, 5, 2), weight=R(3, 2, 3, 3), bias=R(3)),
     lambda xbase, weight, bias: F.conv2d(xbase.permute(0, 3, 1, 2), weight, bias, padding=1))
case("max_pool2d_noncontig", inputs(xbase=R(1, 6, 6, 2)),
     lambda xbase: F.max_pool2d(xbase.permute(0, 3, 1, 2), 2))
case("avg_pool2d_noncontig", inputs(xbase=R(1, 6, 6, 2)),
     lambda xbase: F.avg_pool2d(xbase.permute(0, 3, 1, 2), 3, stride=2, padding=1))

case("layer_norm_noncontig", inputs(xbase=R(4, 3), weight=R(4), bias=R(4)),
     lambda xbase, weight, bias: F.layer_norm(xbase.t(), (4,), weight, bias, 1e-5))
case("batch_norm_train_noncontig",
     inputs(xbase=R(2, 2, 3, 4), weight=R(4), bias=R(4),
            running_mean=lambda: torch.randn(4) * 0.1, running_var=lambda: pos(4)),
     lambda xbase, weight, bias, running_mean, running_var: batch_norm_train(
         xbase.permute(0, 3, 1, 2), weight, bias, running_mean, running_var),
     nograd={"running_mean", "running_var"})

case("cross_entropy_large", inputs(logits=big(50, 4, 5), target=I(5, 4)),
     lambda logits, target: F.cross_entropy(logits, target))
case("cross_entropy_3d_ignore",
     inputs(logits=R(2, 4, 3), target=lambda: torch.tensor([[1, -100, 3], [-100, 0, 2]])),
     lambda logits, target: F.cross_entropy(logits, target))
case("cross_entropy_noncontig", inputs(lbase=R(5, 4), target=I(5, 4)),
     lambda lbase, target: F.cross_entropy(lbase.t(), target))
case("bce_logits_large", inputs(logits=big(30, 3, 4), target=lambda: torch.rand(3, 4)),
     lambda logits, target: F.binary_cross_entropy_with_logits(logits, target),
     nograd={"target"})

case("cat_negdim", inputs(a=R(2, 3), b=R(2, 2)), lambda a, b: torch.cat([a, b], -1))
case("cat_noncontig", inputs(abase=R(3, 2), b=R(2, 3)),
     lambda abase, b: torch.cat([abase.t(), b], 0))
case("stack_noncontig", inputs(abase=R(3, 2), b=R(2, 3)),
     lambda abase, b: torch.stack([abase.t(), b], 1))
case("index_select_noncontig", inputs(base=R(3, 4), index=lambda: torch.tensor([1, 3, 1])),
     lambda base, index: torch.index_select(base.t(), 0, index))
case("gather_noncontig", inputs(base=R(4, 3), index=lambda: torch.tensor([[0, 3], [2, 2], [1, 0]])),
     lambda base, index: torch.gather(base.t(), 1, index))
case("reshape_expanded", inputs(base=R(3, 1)), lambda base: base.expand(3, 4).reshape(12))
case("embedding_noncontig_indices", inputs(weight=R(5, 3),
                                           ibase=lambda: torch.tensor([[0, 4], [3, 3], [1, 0]])),
     lambda weight, ibase: F.embedding(ibase.t(), weight))


# ---- attention (issue 12) ------------------------------------------------------------------
# scaled_dot_product_attention against the formula torch 1.13 spells out, softmax(q k^T
# * scale + mask) v (checked here against torch's own F._scaled_dot_product_attention
# where that takes the case), then nn.MultiheadAttention and nn.TransformerEncoderLayer
# through torch's modules, and their initialisation for a seed.

import math


def sdpa_ref(q, k, v, causal=False, offset=0, pad=None, scale=None):
    """softmax(q k^T * scale + mask) v; causal: key j hidden from query i when j > i +
    offset; pad [N, S]: nonzero keys hidden."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(diagonal=offset)
        s = s.masked_fill(~allowed, float("-inf"))
    if pad is not None:
        hidden = pad.bool().view(pad.shape[0], *([1] * (q.dim() - 2)), pad.shape[1])
        s = s.masked_fill(hidden, float("-inf"))
    out = torch.softmax(s, -1) @ v
    if pad is None and offset == 0 and scale == 1 / math.sqrt(q.shape[-1]):
        torch_out, _ = F._scaled_dot_product_attention(q, k, v, None, 0.0, False, causal)
        assert torch.allclose(out, torch_out, rtol=0, atol=1e-6), "sdpa_ref != torch's sdpa"
    return out


def pad_mask(*rows):
    return lambda: torch.tensor(rows, dtype=torch.int64)


case("sdpa_basic", inputs(q=R(2, 3, 5, 8), k=R(2, 3, 7, 8), v=R(2, 3, 7, 6)), sdpa_ref)
case("sdpa_causal", inputs(q=R(2, 2, 9, 5), k=R(2, 2, 9, 5), v=R(2, 2, 9, 5)),
     lambda q, k, v: sdpa_ref(q, k, v, causal=True))
case("sdpa_causal_offset", inputs(q=R(1, 2, 3, 4), k=R(1, 2, 8, 4), v=R(1, 2, 8, 4)),
     lambda q, k, v: sdpa_ref(q, k, v, causal=True, offset=5))
case("sdpa_padding", inputs(q=R(3, 2, 6, 4), k=R(3, 2, 6, 4), v=R(3, 2, 6, 4),
                            pad=pad_mask([0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1])),
     lambda q, k, v, pad: sdpa_ref(q, k, v, pad=pad))
case("sdpa_causal_padding", inputs(q=R(2, 2, 5, 4), k=R(2, 2, 5, 4), v=R(2, 2, 5, 4),
                                   pad=pad_mask([0, 1, 0, 0, 1], [0, 0, 0, 1, 1])),
     lambda q, k, v, pad: sdpa_ref(q, k, v, causal=True, pad=pad))
# Longer than one query block (32) and one key block (64), head dims not a multiple of 16.
case("sdpa_long_causal", inputs(q=R(1, 2, 100, 20), k=R(1, 2, 100, 20), v=R(1, 2, 100, 20)),
     lambda q, k, v: sdpa_ref(q, k, v, causal=True))
case("sdpa_long_cross", inputs(q=R(2, 1, 70, 9), k=R(2, 1, 150, 9), v=R(2, 1, 150, 33)),
     sdpa_ref)
case("sdpa_3d", inputs(q=R(2, 5, 3), k=R(2, 4, 3), v=R(2, 4, 2)), sdpa_ref)
case("sdpa_scale", inputs(q=R(1, 2, 4, 6), k=R(1, 2, 4, 6), v=R(1, 2, 4, 6)),
     lambda q, k, v: sdpa_ref(q, k, v, causal=True, scale=0.3))
case("sdpa_large_scores", inputs(q=big(6, 2, 2, 8, 4), k=big(6, 2, 2, 8, 4), v=R(2, 2, 8, 4)),
     sdpa_ref)
# Heads read in place from [N, L, H, E] (strided rows), and a last dim that is strided.
case("sdpa_noncontig", inputs(qbase=R(2, 5, 3, 4), kbase=R(2, 6, 3, 4), vbase=R(2, 3, 5, 6)),
     lambda qbase, kbase, vbase: sdpa_ref(qbase.transpose(1, 2), kbase.transpose(1, 2),
                                          vbase.transpose(-1, -2), causal=True))


def qkv_ref(qkv, heads, **kw):
    n, t, e3 = qkv.shape
    q, k, v = qkv.view(n, t, 3, heads, e3 // 3 // heads).permute(2, 0, 3, 1, 4)
    return sdpa_ref(q, k, v, **kw).transpose(1, 2).reshape(n, t, e3 // 3)


case("attention_qkv", inputs(qkv=R(2, 7, 24)), lambda qkv: qkv_ref(qkv, 2))
case("attention_qkv_causal_padding",
     inputs(qkv=R(2, 40, 36), pad=lambda: (torch.arange(40) >= torch.tensor([[33], [40]])).long()),
     lambda qkv, pad: qkv_ref(qkv, 3, causal=True, pad=pad))


MHA_NAMES = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


# Parameters of the size a trained model has (weights ~ 1/sqrt(fan_in)): randn weights
# make the softmax so peaked that float32 itself is off by 1e-4 in the gradients.
def W(rows, cols):
    return big(1 / math.sqrt(cols), rows, cols)


def mha_params(e):
    return {"in_proj_weight": W(3 * e, e), "in_proj_bias": big(0.1, 3 * e),
            "out_proj.weight": W(e, e), "out_proj.bias": big(0.1, e)}


def mha_ref(heads, causal=False, cross=False, with_pad=False):
    """nn.MultiheadAttention(batch_first=True) with the case's parameters, through
    torch.nn.utils.stateless.functional_call so the gradients reach them."""
    from torch.nn.utils import stateless

    def fn(*args):
        if cross:
            query, key, value, *rest = args
        else:
            query, *rest = args
            key = value = query
        pad = rest.pop(0).bool() if with_pad else None
        e = query.shape[-1]
        m = torch.nn.MultiheadAttention(e, heads, batch_first=True)
        mask = None
        if causal:
            mask = torch.ones(query.shape[1], key.shape[1], dtype=torch.bool).triu(1)
        out, _ = stateless.functional_call(m, dict(zip(MHA_NAMES, rest)), (query, key, value),
                                           {"key_padding_mask": pad, "attn_mask": mask,
                                            "need_weights": False})
        return out
    return fn


case("mha_self", inputs(x=R(2, 6, 8), **mha_params(8)), mha_ref(2))
case("mha_causal_padding", inputs(x=R(2, 5, 12), pad=pad_mask([0, 0, 0, 1, 1], [0, 0, 0, 0, 0]),
                                  **mha_params(12)),
     mha_ref(3, causal=True, with_pad=True))
case("mha_cross", inputs(query=R(2, 4, 8), key=R(2, 6, 8), value=R(2, 6, 8), **mha_params(8)),
     mha_ref(4, cross=True))

TEL_NAMES = ["self_attn." + n for n in MHA_NAMES] + [
    "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]


def tel_params(d, ff):
    return {"self_attn.in_proj_weight": W(3 * d, d), "self_attn.in_proj_bias": big(0.1, 3 * d),
            "self_attn.out_proj.weight": W(d, d), "self_attn.out_proj.bias": big(0.1, d),
            "linear1.weight": W(ff, d), "linear1.bias": big(0.1, ff),
            "linear2.weight": W(d, ff), "linear2.bias": big(0.1, d),
            "norm1.weight": R(d), "norm1.bias": R(d), "norm2.weight": R(d), "norm2.bias": R(d)}


def tel_ref(heads, ff, activation="relu", norm_first=False, causal=False, with_pad=False):
    """nn.TransformerEncoderLayer(batch_first=True, dropout=0) in training mode (torch's
    eval fast path is another kernel), the case's parameters through functional_call."""
    from torch.nn.utils import stateless

    def fn(x, *rest):
        rest = list(rest)
        pad = rest.pop(0).bool() if with_pad else None
        m = torch.nn.TransformerEncoderLayer(x.shape[-1], heads, ff, dropout=0.0,
                                             activation=activation, batch_first=True,
                                             norm_first=norm_first, layer_norm_eps=1e-5)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1) if causal else None
        return stateless.functional_call(m, dict(zip(TEL_NAMES, rest)), (x,),
                                         {"src_mask": mask, "src_key_padding_mask": pad})
    return fn


case("tel_post_relu", inputs(x=R(2, 5, 8), **tel_params(8, 12)), tel_ref(2, 12))
case("tel_pre_gelu_causal", inputs(x=R(2, 6, 8), **tel_params(8, 16)),
     tel_ref(4, 16, activation="gelu", norm_first=True, causal=True))
case("tel_post_padding", inputs(x=R(2, 5, 8), pad=pad_mask([0, 0, 0, 1, 1], [0, 0, 0, 0, 1]),
                                **tel_params(8, 12)),
     tel_ref(2, 12, with_pad=True))


def seeded_modules():
    """The state dicts of torch's modules made right after torch.manual_seed(1234):
    Kiln's modules made after kn_manual_seed(1234) must hold the same numbers."""
    out = {}
    torch.manual_seed(1234)
    for key, value in torch.nn.MultiheadAttention(12, 3, batch_first=True).state_dict().items():
        out["mha." + key] = value
    for key, value in torch.nn.TransformerEncoderLayer(
            8, 2, 24, batch_first=True).state_dict().items():
        out["tel." + key] = value
    out["out"] = torch.zeros(1)
    return out


case("attention_init_seed1234", inputs(), seeded_modules)
# ---- sequence layers (issue 12) -------------------------------------------------------------
# conv1d, elu, group_norm, the learned positional embedding (x + wpe(arange(T))), dtype
# conversion and int64 arithmetic, and cross entropy with the classes on the last dim
# (nanoGPT's F.cross_entropy(logits.view(-1, V), targets.view(-1))). tests/test_golden_sequence.c.

case("elu", inputs(a=R(3, 4)), F.elu)
case("elu_alpha", inputs(a=R(3, 4)), lambda a: F.elu(a, alpha=0.3))
case("elu_large", inputs(a=big(20, 3, 4)), lambda a: F.elu(a, alpha=1.5))
case("elu_noncontig", inputs(base=R(4, 3)), lambda base: F.elu(base.t()))

case("conv1d_plain", inputs(x=R(2, 2, 7), weight=R(3, 2, 3), bias=R(3)), F.conv1d)
case("conv1d_stride2_pad1", inputs(x=R(2, 2, 8), weight=R(4, 2, 3), bias=R(4)),
     lambda x, weight, bias: F.conv1d(x, weight, bias, stride=2, padding=1))
case("conv1d_dilation2", inputs(x=R(1, 3, 9), weight=R(2, 3, 3), bias=R(2)),
     lambda x, weight, bias: F.conv1d(x, weight, bias, dilation=2, padding=2))
case("conv1d_groups2", inputs(x=R(2, 4, 6), weight=R(6, 2, 2), bias=R(6)),
     lambda x, weight, bias: F.conv1d(x, weight, bias, groups=2))
case("conv1d_nobias", inputs(x=R(2, 3, 5), weight=R(2, 3, 1)),
     lambda x, weight: F.conv1d(x, weight, None))
case("conv1d_unbatched", inputs(x=R(2, 6), weight=R(3, 2, 3), bias=R(3)),
     lambda x, weight, bias: F.conv1d(x, weight, bias, padding=1))
# Channels-last storage, as token embeddings [N, T, C] transposed to [N, C, T].
case("conv1d_noncontig", inputs(xbase=R(2, 7, 3), weight=R(4, 3, 3), bias=R(4)),
     lambda xbase, weight, bias: F.conv1d(xbase.transpose(1, 2), weight, bias, padding=1))

case("group_norm_affine", inputs(x=R(2, 4, 3, 2), weight=R(4), bias=R(4)),
     lambda x, weight, bias: F.group_norm(x, 2, weight, bias, 1e-5))
case("group_norm_plain", inputs(x=R(3, 6, 5)), lambda x: F.group_norm(x, 3, eps=1e-5))
case("group_norm_2d", inputs(x=R(4, 6), weight=R(6), bias=R(6)),
     lambda x, weight, bias: F.group_norm(x, 2, weight, bias, 1e-5))
case("group_norm_instance", inputs(x=R(2, 3, 4), weight=R(3), bias=R(3)),
     lambda x, weight, bias: F.group_norm(x, 3, weight, bias, 1e-3))
case("group_norm_one_group", inputs(x=R(2, 4, 3), weight=R(4), bias=R(4)),
     lambda x, weight, bias: F.group_norm(x, 1, weight, bias, 1e-5))
case("group_norm_noncontig", inputs(xbase=R(2, 3, 2, 4), weight=R(4), bias=R(4)),
     lambda xbase, weight, bias: F.group_norm(xbase.permute(0, 3, 1, 2), 2, weight, bias, 1e-5))


def positional(x, weight):
    """nanoGPT: x + wpe(pos) with pos = arange(T); wpe's weight is the table."""
    return x + F.embedding(torch.arange(x.shape[-2]), weight)


case("positional_embedding", inputs(x=R(2, 3, 4), weight=R(5, 4)), positional)
case("positional_embedding_full", inputs(x=R(2, 5, 4), weight=R(5, 4)), positional)
case("positional_embedding_noncontig", inputs(xbase=R(3, 2, 4), weight=R(6, 4)),
     lambda xbase, weight: positional(xbase.transpose(0, 1), weight))

ROUNDING = lambda: torch.tensor([[-2.7, -1.0, -0.5, 0.0], [0.49, 1.5, 2.99, 1e6]])
case("to_int64", inputs(a=ROUNDING), lambda a: a.to(torch.int64), nograd={"a"})
case("to_int64_noncontig", inputs(base=ROUNDING), lambda base: base.t().to(torch.int64),
     nograd={"base"})
case("to_float32", inputs(a=lambda: torch.tensor([[-3, 0, 7], [16777217, -100, 2]])),
     lambda a: a.to(torch.float32))

INTS = lambda: torch.randint(-5, 6, (3, 4))
ROW = lambda: torch.randint(-5, 6, (4,))
for op_name, op in [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul),
                    ("eq", torch.eq), ("gt", torch.gt), ("lt", torch.lt)]:
    case("int64_%s_bcast" % op_name, inputs(a=INTS, b=ROW),
         lambda a, b, op=op: op(a, b).to(torch.float32) if op in (torch.eq, torch.gt, torch.lt)
         else op(a, b))
case("int64_add_noncontig", inputs(abase=lambda: torch.randint(-5, 6, (4, 3)), b=INTS),
     lambda abase, b: abase.t() + b)
case("int64_div", inputs(a=INTS, b=lambda: torch.randint(1, 6, (3, 4))), torch.div)
# int64 with float32 computes in float32; the float side gets its gradient.
case("int64_mul_float", inputs(a=INTS, b=R(3, 4)), torch.mul)
case("int64_lt_float", inputs(a=INTS, b=R(4)), lambda a, b: (a < b).to(torch.float32))


def seq_targets(vocab, *shape, ignored=()):
    def make():
        t = torch.randint(0, vocab, shape)
        for pos in ignored:
            t[pos] = -100
        return t
    return make


def seq_ce(logits, target, **kw):
    v = logits.shape[-1]
    out = F.cross_entropy(logits.reshape(-1, v), target.reshape(-1), **kw)
    return out.reshape(target.shape) if kw.get("reduction") == "none" else out


def seq_nll(log_probs, target, **kw):
    v = log_probs.shape[-1]
    out = F.nll_loss(log_probs.reshape(-1, v), target.reshape(-1), **kw)
    return out.reshape(target.shape) if kw.get("reduction") == "none" else out


SEQ_IGNORED = ((0, 1), (1, 4), (1, 0))
for red in REDUCTIONS:
    case("seq_cross_entropy_" + red,
         inputs(logits=R(2, 5, 7), target=seq_targets(7, 2, 5, ignored=SEQ_IGNORED)),
         lambda logits, target, red=red: seq_ce(logits, target, reduction=red))
    case("seq_nll_loss_" + red,
         inputs(log_probs=R(2, 5, 7), target=seq_targets(7, 2, 5, ignored=SEQ_IGNORED)),
         lambda log_probs, target, red=red: seq_nll(log_probs, target, reduction=red))
case("seq_cross_entropy_smoothing",
     inputs(logits=R(2, 5, 7), target=seq_targets(7, 2, 5, ignored=SEQ_IGNORED)),
     lambda logits, target: seq_ce(logits, target, label_smoothing=0.1))
case("seq_cross_entropy_all_ignored", inputs(logits=R(2, 3, 4), target=lambda: torch.full(
    (2, 3), -100)), lambda logits, target: seq_ce(logits, target))
case("seq_cross_entropy_all_ignored_sum", inputs(logits=R(2, 3, 4), target=lambda: torch.full(
    (2, 3), -100)), lambda logits, target: seq_ce(logits, target, reduction="sum"))
case("seq_cross_entropy_custom_ignore", inputs(logits=R(3, 4, 5), target=I(5, 3, 4)),
     lambda logits, target: seq_ce(logits, target, ignore_index=2))
# [N, V, T] storage transposed to [N, T, V]: torch's layout for F.cross_entropy, this one's.
case("seq_cross_entropy_noncontig",
     inputs(lbase=R(2, 7, 5), target=seq_targets(7, 2, 5, ignored=SEQ_IGNORED)),
     lambda lbase, target: seq_ce(lbase.transpose(1, 2), target))
case("seq_cross_entropy_4d", inputs(logits=R(2, 2, 3, 6), target=I(6, 2, 2, 3)),
     lambda logits, target: seq_ce(logits, target))


def main():
    torch.set_num_threads(1)
    os.makedirs(DATA, exist_ok=True)
    names = set()
    for name, make, fn, nograd in CASES:
        assert name not in names, "duplicate case " + name
        names.add(name)
        with open(os.path.join(DATA, name + ".bin"), "wb") as f:
            f.write(run_case(name, make, fn, nograd))
    for stale in sorted(os.listdir(DATA)):
        if stale.endswith(".bin") and stale[:-4] not in names:
            os.remove(os.path.join(DATA, stale))
    print("wrote %d cases to %s" % (len(CASES), DATA), file=sys.stderr)


if __name__ == "__main__":
    main()

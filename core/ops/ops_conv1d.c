/*
 * ops_conv1d.c — kn_conv1d, torch's F.conv1d, as a conv2d of height 1 (what torch's own
 * CPU path does for most inputs): the input [N, C, L] is viewed as [N, C, 1, L] and the
 * weight [O, C/g, K] as [O, C/g, 1, K]; the views and conv2d carry the gradients, and
 * conv2d's kernels (im2col + GEMM on the CPU, ops_conv.c's CUDA path) do the work on
 * either device. The checks here name conv1d's shapes, so no conv2d shape ever shows.
 */
#include "kn_internal.h"

static int or_default(int value, int fallback)
{
    return value ? value : fallback;
}

kn_tensor *kn_conv1d(kn_tensor *x, kn_tensor *weight, kn_tensor *bias, kn_conv1d_args args)
{
    kn_tensor *inputs[3] = {x, weight, bias};
    if (!kn__check_inputs("conv1d", inputs, bias ? 3 : 2)) return NULL;
    if (x->ndim != 2 && x->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "conv1d: expected a 2-D [C, L] or 3-D [N, C, L] input, got %s",
                              kn__shape(x));
    if (weight->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "conv1d: expected a 3-D weight [O, C/groups, K], got %s",
                              kn__shape(weight));
    int stride = or_default(args.stride, 1), dilation = or_default(args.dilation, 1);
    int groups = or_default(args.groups, 1);
    if (stride < 0 || dilation < 0 || args.padding < 0 || groups < 0)
        return kn__error_null(KN_ERR_VALUE,
                              "conv1d: stride %d, padding %d, dilation %d and groups %d must not "
                              "be negative",
                              args.stride, args.padding, args.dilation, args.groups);
    bool batched = x->ndim == 3;
    int64_t channels = x->shape[batched ? 1 : 0], length = x->shape[batched ? 2 : 1];
    int64_t span = (int64_t)dilation * (weight->shape[2] - 1) + 1;
    if (weight->shape[1] * groups != channels)
        return kn__error_null(KN_ERR_SHAPE,
                              "conv1d: input %s has %lld channels but weight %s expects %lld "
                              "(%lld per group x groups=%d)",
                              kn__shape(x), (long long)channels, kn__shape(weight),
                              (long long)(weight->shape[1] * groups), (long long)weight->shape[1],
                              groups);
    if (length + 2 * (int64_t)args.padding < span)
        return kn__error_null(KN_ERR_SHAPE,
                              "conv1d: input %s of length %lld (padded %lld) is shorter than the "
                              "kernel's span %lld (kernel_size %lld, dilation %d)",
                              kn__shape(x), (long long)length,
                              (long long)(length + 2 * (int64_t)args.padding), (long long)span,
                              (long long)weight->shape[2], dilation);
    kn_conv2d_args a = {.stride = {1, stride},
                        .padding = {0, args.padding},
                        .dilation = {1, dilation},
                        .groups = groups};
    kn_scope_begin();
    kn_tensor *x4 = batched ? kn_unsqueeze(x, 2) : kn_unsqueeze(kn_unsqueeze(x, 0), 2);
    kn_tensor *y = kn_conv2d(x4, kn_unsqueeze(weight, 2), bias, a);
    y = kn_squeeze(y, 2);
    if (y && !batched) y = kn_squeeze(y, 0);
    if (!y) {
        kn_scope_end(); /* the error stays set */
        return NULL;
    }
    return kn_scope_escape(y);
}

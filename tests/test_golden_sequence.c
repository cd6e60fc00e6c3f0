/*
 * test_golden_sequence.c — the ops of issue 12's sequence layers against PyTorch 1.13
 * fixtures (tests/golden/generate.py, section "sequence layers"): elu, conv1d (stride,
 * padding, dilation, groups, no bias, unbatched, channels-last storage), group_norm
 * (affine or not, [N, C] to [N, C, H, W], one group, a group per channel, permuted
 * storage), the learned positional embedding (x + weight[:T]), dtype conversion, int64
 * arithmetic and comparisons (broadcast, strided, promoted with float32), and cross
 * entropy / nll with the classes on the last dim and ignored positions; forward and
 * gradients. Also built as test_cuda_golden_sequence, which runs every case on cuda:0.
 */
#include "golden/golden_case.h"

/* ---- elu ------------------------------------------------------------------------------------- */

static void elu_case(const char *name, double alpha, bool transposed)
{
    GOLDEN_BEGIN(name);
    kn_tensor *leaf = golden_leaf(g, transposed ? "base" : "a");
    kn_tensor *out = kn_elu(transposed ? kn_transpose(leaf, 0, 1) : leaf, alpha);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, transposed ? "base" : "a", leaf, NULL);
    GOLDEN_END();
}

Test(golden_elu, default_alpha)
{
    elu_case("elu", 1.0, false);
}
Test(golden_elu, alpha)
{
    elu_case("elu_alpha", 0.3, false);
}
Test(golden_elu, saturating)
{
    elu_case("elu_large", 1.5, false); /* |x| up to ~60: exp underflows, the slope is alpha */
}
Test(golden_elu, noncontig)
{
    elu_case("elu_noncontig", 1.0, true);
}

/* ---- conv1d ---------------------------------------------------------------------------------- */

static void conv1d_case(const char *name, kn_conv1d_args args)
{
    GOLDEN_BEGIN(name);
    bool channels_last = kn_golden_has(g, "xbase");
    bool has_bias = kn_golden_has(g, "bias");
    kn_tensor *leaf = golden_leaf(g, channels_last ? "xbase" : "x");
    kn_tensor *x = channels_last ? kn_transpose(leaf, 1, 2) : leaf;
    kn_tensor *weight = golden_leaf(g, "weight");
    kn_tensor *bias = has_bias ? golden_leaf(g, "bias") : NULL;
    kn_tensor *out = kn_conv1d(x, weight, bias, args);
    golden_check(g, out, "out", GOLDEN_CONV_TOL);
    const char *xname = channels_last ? "xbase" : "x";
    if (has_bias)
        golden_backward(g, out, GOLDEN_CONV_TOL, xname, leaf, "weight", weight, "bias", bias, NULL);
    else
        golden_backward(g, out, GOLDEN_CONV_TOL, xname, leaf, "weight", weight, NULL);
    GOLDEN_END();
}

Test(golden_conv1d, plain)
{
    conv1d_case("conv1d_plain", (kn_conv1d_args){0});
}
Test(golden_conv1d, stride2_pad1)
{
    conv1d_case("conv1d_stride2_pad1", (kn_conv1d_args){.stride = 2, .padding = 1});
}
Test(golden_conv1d, dilation2)
{
    conv1d_case("conv1d_dilation2", (kn_conv1d_args){.dilation = 2, .padding = 2});
}
Test(golden_conv1d, groups2)
{
    conv1d_case("conv1d_groups2", (kn_conv1d_args){.groups = 2});
}
Test(golden_conv1d, nobias)
{
    conv1d_case("conv1d_nobias", (kn_conv1d_args){0});
}
Test(golden_conv1d, unbatched)
{
    conv1d_case("conv1d_unbatched", (kn_conv1d_args){.padding = 1}); /* [C, L] -> [O, L'] */
}
Test(golden_conv1d, channels_last)
{
    conv1d_case("conv1d_noncontig", (kn_conv1d_args){.padding = 1}); /* [N, L, C].transpose */
}

/* ---- group_norm ------------------------------------------------------------------------------ */

static void group_norm_case(const char *name, int64_t groups, double eps)
{
    GOLDEN_BEGIN(name);
    bool permuted = kn_golden_has(g, "xbase"), affine = kn_golden_has(g, "weight");
    kn_tensor *leaf = golden_leaf(g, permuted ? "xbase" : "x");
    kn_tensor *x = permuted ? kn_permute(leaf, (int[]){0, 3, 1, 2}, 4) : leaf;
    kn_tensor *weight = affine ? golden_leaf(g, "weight") : NULL;
    kn_tensor *bias = affine ? golden_leaf(g, "bias") : NULL;
    kn_tensor *out = kn_group_norm(x, groups, weight, bias, eps);
    golden_check(g, out, "out", 1e-5, 1e-5);
    const char *xname = permuted ? "xbase" : "x";
    if (affine)
        golden_backward(g, out, 1e-4, 1e-5, xname, leaf, "weight", weight, "bias", bias, NULL);
    else
        golden_backward(g, out, 1e-4, 1e-5, xname, leaf, NULL);
    GOLDEN_END();
}

Test(golden_group_norm, affine_4d)
{
    group_norm_case("group_norm_affine", 2, 1e-5);
}
Test(golden_group_norm, plain_3d)
{
    group_norm_case("group_norm_plain", 3, 1e-5);
}
Test(golden_group_norm, features_2d)
{
    group_norm_case("group_norm_2d", 2, 1e-5); /* [N, C]: no trailing dims */
}
Test(golden_group_norm, group_per_channel)
{
    group_norm_case("group_norm_instance", 3, 1e-3);
}
Test(golden_group_norm, one_group)
{
    group_norm_case("group_norm_one_group", 1, 1e-5);
}
Test(golden_group_norm, permuted)
{
    group_norm_case("group_norm_noncontig", 2, 1e-5);
}

/* ---- positional embedding: x + weight[:T] ------------------------------------------------------
 */

static void positional_case(const char *name)
{
    GOLDEN_BEGIN(name);
    bool transposed = kn_golden_has(g, "xbase");
    kn_tensor *leaf = golden_leaf(g, transposed ? "xbase" : "x");
    kn_tensor *x = transposed ? kn_transpose(leaf, 0, 1) : leaf;
    kn_tensor *weight = golden_leaf(g, "weight");
    /* what the positional_embedding layer computes (layer_sequence.c) */
    kn_tensor *out = kn_add(x, kn_narrow(weight, 0, 0, x->shape[x->ndim - 2]));
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, transposed ? "xbase" : "x", leaf, "weight", weight, NULL);
    GOLDEN_END();
}

Test(golden_positional, shorter_than_the_table)
{
    positional_case("positional_embedding"); /* rows 3 and 4 get no gradient */
}
Test(golden_positional, whole_table)
{
    positional_case("positional_embedding_full");
}
Test(golden_positional, noncontig)
{
    positional_case("positional_embedding_noncontig");
}

/* ---- dtype conversion and int64 arithmetic ------------------------------------------------- */

static void to_dtype_case(const char *name, const char *entry, bool transposed, kn_dtype dtype)
{
    GOLDEN_BEGIN(name);
    kn_tensor *in = golden_input(g, entry);
    kn_tensor *out = kn_to_dtype(transposed ? kn_transpose(in, 0, 1) : in, dtype);
    cr_assert_not_null(out, "%s", kn_last_error());
    cr_assert_eq(out->dtype, dtype);
    cr_assert_not(out->requires_grad);
    golden_check(g, out, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

Test(golden_to_dtype, float_to_int64_truncates)
{
    to_dtype_case("to_int64", "a", false, KN_INT64);
}
Test(golden_to_dtype, float_to_int64_noncontig)
{
    to_dtype_case("to_int64_noncontig", "base", true, KN_INT64);
}
Test(golden_to_dtype, int64_to_float_rounds)
{
    to_dtype_case("to_float32", "a", false, KN_FLOAT32); /* 16777217 -> 16777216 */
}

static void int64_case(const char *name, kn_tensor *(*op)(kn_tensor *, kn_tensor *), kn_dtype want)
{
    GOLDEN_BEGIN(name);
    kn_tensor *a = golden_input(g, "a"), *b = golden_input(g, "b");
    kn_tensor *out = op(a, b);
    cr_assert_not_null(out, "%s", kn_last_error());
    cr_assert_eq(out->dtype, want, "%s: %s", name, kn_dtype_name(out->dtype));
    golden_check(g, out, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

Test(golden_int64, add_broadcast)
{
    int64_case("int64_add_bcast", kn_add, KN_INT64);
}
Test(golden_int64, sub_broadcast)
{
    int64_case("int64_sub_bcast", kn_sub, KN_INT64);
}
Test(golden_int64, mul_broadcast)
{
    int64_case("int64_mul_bcast", kn_mul, KN_INT64);
}
Test(golden_int64, eq_broadcast)
{
    int64_case("int64_eq_bcast", kn_eq, KN_FLOAT32);
}
Test(golden_int64, gt_broadcast)
{
    int64_case("int64_gt_bcast", kn_gt, KN_FLOAT32);
}
Test(golden_int64, lt_broadcast)
{
    int64_case("int64_lt_bcast", kn_lt, KN_FLOAT32);
}
Test(golden_int64, true_division_is_float)
{
    GOLDEN_BEGIN("int64_div");
    kn_tensor *out = kn_div(golden_input(g, "a"), golden_input(g, "b"));
    cr_assert_not_null(out, "%s", kn_last_error());
    cr_assert_eq(out->dtype, KN_FLOAT32);
    golden_check(g, out, "out", GOLDEN_TOL);
    GOLDEN_END();
}
Test(golden_int64, noncontig)
{
    GOLDEN_BEGIN("int64_add_noncontig");
    kn_tensor *out = kn_add(kn_transpose(golden_input(g, "abase"), 0, 1), golden_input(g, "b"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    GOLDEN_END();
}
Test(golden_int64, promoted_with_float)
{
    GOLDEN_BEGIN("int64_mul_float");
    kn_tensor *a = golden_input(g, "a"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_mul(a, b);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "b", b, NULL);
    GOLDEN_END();
}
Test(golden_int64, compared_with_float)
{
    GOLDEN_BEGIN("int64_lt_float");
    golden_check(g, kn_lt(golden_input(g, "a"), golden_input(g, "b")), "out", GOLDEN_EXACT);
    GOLDEN_END();
}

/* ---- cross entropy with the classes last ------------------------------------------------------
 */

static void seq_loss_case(const char *name, bool nll, kn_reduction reduction, int64_t ignore,
                          double smoothing)
{
    GOLDEN_BEGIN(name);
    bool transposed = kn_golden_has(g, "lbase");
    const char *entry = transposed ? "lbase" : nll ? "log_probs" : "logits";
    kn_tensor *leaf = golden_leaf(g, entry);
    kn_tensor *scores = transposed ? kn_transpose(leaf, 1, 2) : leaf;
    kn_tensor *target = golden_input(g, "target");
    kn_tensor *out = nll ? kn_sequence_nll_loss(scores, target, reduction, ignore)
                         : kn_sequence_cross_entropy(scores, target, reduction, ignore, smoothing);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, entry, leaf, NULL);
    GOLDEN_END();
}

#define IGNORE KN_DEFAULT_IGNORE_INDEX

Test(golden_sequence_loss, cross_entropy_mean)
{
    seq_loss_case("seq_cross_entropy_mean", false, KN_REDUCTION_MEAN, IGNORE, 0);
}
Test(golden_sequence_loss, cross_entropy_sum)
{
    seq_loss_case("seq_cross_entropy_sum", false, KN_REDUCTION_SUM, IGNORE, 0);
}
Test(golden_sequence_loss, cross_entropy_none)
{
    seq_loss_case("seq_cross_entropy_none", false, KN_REDUCTION_NONE, IGNORE, 0); /* [2, 5] */
}
Test(golden_sequence_loss, nll_mean)
{
    seq_loss_case("seq_nll_loss_mean", true, KN_REDUCTION_MEAN, IGNORE, 0);
}
Test(golden_sequence_loss, nll_sum)
{
    seq_loss_case("seq_nll_loss_sum", true, KN_REDUCTION_SUM, IGNORE, 0);
}
Test(golden_sequence_loss, nll_none)
{
    seq_loss_case("seq_nll_loss_none", true, KN_REDUCTION_NONE, IGNORE, 0);
}
Test(golden_sequence_loss, label_smoothing_with_ignored_positions)
{
    seq_loss_case("seq_cross_entropy_smoothing", false, KN_REDUCTION_MEAN, IGNORE, 0.1);
}
/* torch 1.13: the mean over no counted target is NaN (0 / 0), its gradient 0; the sum 0 */
Test(golden_sequence_loss, all_ignored_mean_is_nan)
{
    seq_loss_case("seq_cross_entropy_all_ignored", false, KN_REDUCTION_MEAN, IGNORE, 0);
}
Test(golden_sequence_loss, all_ignored_sum_is_zero)
{
    seq_loss_case("seq_cross_entropy_all_ignored_sum", false, KN_REDUCTION_SUM, IGNORE, 0);
}
Test(golden_sequence_loss, custom_ignore_index)
{
    seq_loss_case("seq_cross_entropy_custom_ignore", false, KN_REDUCTION_MEAN, 2, 0);
}
Test(golden_sequence_loss, noncontig_logits)
{
    seq_loss_case("seq_cross_entropy_noncontig", false, KN_REDUCTION_MEAN, IGNORE, 0);
}
Test(golden_sequence_loss, rank4)
{
    seq_loss_case("seq_cross_entropy_4d", false, KN_REDUCTION_MEAN, IGNORE, 0);
}

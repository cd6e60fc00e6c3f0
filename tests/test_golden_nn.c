/*
 * test_golden_nn.c — linear algebra and layers against PyTorch fixtures
 * (tests/golden/data): matmul in every rank combination, linear, conv2d (stride,
 * padding, dilation, groups, no bias), max/avg pooling (padding, ceil_mode,
 * count_include_pad), dropout's deterministic settings, embedding, layer_norm and
 * batch_norm (training with running statistics, and eval); forward and gradients.
 */
#include "golden/golden_case.h"

/* ---- matmul ------------------------------------------------------------------------------ */

static void matmul_case(const char *name)
{
    GOLDEN_BEGIN(name);
    kn_tensor *a = golden_leaf(g, "a"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_matmul(a, b);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, GOLDEN_BLAS_TOL, "a", a, "b", b, NULL);
    GOLDEN_END();
}

Test(golden_matmul, vec_vec)
{
    matmul_case("matmul_1d_1d");
} /* [4]·[4] -> [] */
Test(golden_matmul, mat_vec)
{
    matmul_case("matmul_2d_1d");
} /* [3,4]·[4] */
Test(golden_matmul, vec_mat)
{
    matmul_case("matmul_1d_2d");
} /* [4]·[4,5] */
Test(golden_matmul, mat_mat)
{
    matmul_case("matmul_2d_2d");
} /* [3,4]·[4,5] */
Test(golden_matmul, batched_3d_2d)
{
    matmul_case("matmul_3d_2d");
} /* [2,3,4]·[4,5] */
Test(golden_matmul, batched_3d_3d)
{
    matmul_case("matmul_3d_3d");
} /* [2,3,4]·[2,4,5] */
Test(golden_matmul, bcast_batch)
{
    matmul_case("matmul_bcast_batch");
} /* [2,1,3,4]·[3,4,5] */
Test(golden_matmul, vec_batched)
{
    matmul_case("matmul_1d_3d");
} /* [4]·[2,4,5] */
Test(golden_matmul, bigger)
{
    matmul_case("matmul_big");
} /* [16,24]·[24,12] */

Test(golden_matmul, noncontig)
{
    GOLDEN_BEGIN("matmul_noncontig"); /* abase [4,3].t() · bbase [5,4].t() */
    kn_tensor *abase = golden_leaf(g, "abase"), *bbase = golden_leaf(g, "bbase");
    kn_tensor *out = kn_matmul(kn_transpose(abase, 0, 1), kn_transpose(bbase, 0, 1));
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, GOLDEN_BLAS_TOL, "abase", abase, "bbase", bbase, NULL);
    GOLDEN_END();
}

/* abase [2, 4, 3].transpose(1, 2): a batch of transposed matrices. */
Test(golden_matmul, batched_transposed)
{
    GOLDEN_BEGIN("matmul_3d_transposed");
    kn_tensor *abase = golden_leaf(g, "abase"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_matmul(kn_transpose(abase, 1, 2), b);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, GOLDEN_BLAS_TOL, "abase", abase, "b", b, NULL);
    GOLDEN_END();
}

/* abase [1, 3, 4] expanded to a batch of 3 (batch stride 0). */
Test(golden_matmul, expanded_batch)
{
    GOLDEN_BEGIN("matmul_expanded_batch");
    kn_tensor *abase = golden_leaf(g, "abase"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_matmul(kn_expand(abase, KN_SHAPE(3, 3, 4)), b);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, GOLDEN_BLAS_TOL, "abase", abase, "b", b, NULL);
    GOLDEN_END();
}

/* ---- linear ------------------------------------------------------------------------------ */

static void linear_case(const char *name, bool noncontig)
{
    GOLDEN_BEGIN(name);
    bool has_bias = kn_golden_has(g, "bias");
    kn_tensor *leaf = golden_leaf(g, noncontig ? "xbase" : "x");
    kn_tensor *x = noncontig ? kn_transpose(leaf, 0, 1) : leaf;
    kn_tensor *weight = golden_leaf(g, "weight");
    kn_tensor *bias = has_bias ? golden_leaf(g, "bias") : NULL;
    kn_tensor *out = kn_linear(x, weight, bias);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    const char *xname = noncontig ? "xbase" : "x";
    if (has_bias)
        golden_backward(g, out, GOLDEN_BLAS_TOL, xname, leaf, "weight", weight, "bias", bias, NULL);
    else
        golden_backward(g, out, GOLDEN_BLAS_TOL, xname, leaf, "weight", weight, NULL);
    GOLDEN_END();
}

Test(golden_linear, bias)
{
    linear_case("linear_bias", false);
} /* [3,4] -> [3,5] */
Test(golden_linear, nobias)
{
    linear_case("linear_nobias", false);
}
Test(golden_linear, input_3d)
{
    linear_case("linear_3d", false);
} /* [2,3,4] -> [2,3,5] */
Test(golden_linear, noncontig)
{
    linear_case("linear_noncontig", true);
} /* xbase [4,3].t() */

/* Tied weights: weight = wbase.t(), a transposed view of a [4, 5] leaf. */
Test(golden_linear, transposed_weight)
{
    GOLDEN_BEGIN("linear_weight_t");
    kn_tensor *x = golden_leaf(g, "x"), *wbase = golden_leaf(g, "wbase");
    kn_tensor *bias = golden_leaf(g, "bias");
    kn_tensor *out = kn_linear(x, kn_transpose(wbase, 0, 1), bias);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, GOLDEN_BLAS_TOL, "x", x, "wbase", wbase, "bias", bias, NULL);
    GOLDEN_END();
}

/* ---- conv2d ------------------------------------------------------------------------------ */

static void conv_case(const char *name, kn_conv2d_args args)
{
    GOLDEN_BEGIN(name);
    bool has_bias = kn_golden_has(g, "bias");
    kn_tensor *x = golden_leaf(g, "x"), *weight = golden_leaf(g, "weight");
    kn_tensor *bias = has_bias ? golden_leaf(g, "bias") : NULL;
    kn_tensor *out = kn_conv2d(x, weight, bias, args);
    golden_check(g, out, "out", GOLDEN_CONV_TOL);
    if (has_bias)
        golden_backward(g, out, GOLDEN_CONV_TOL, "x", x, "weight", weight, "bias", bias, NULL);
    else
        golden_backward(g, out, GOLDEN_CONV_TOL, "x", x, "weight", weight, NULL);
    GOLDEN_END();
}

Test(golden_conv2d, plain)
{
    conv_case("conv2d_plain", (kn_conv2d_args){0});
}
Test(golden_conv2d, stride2_pad1)
{
    conv_case("conv2d_stride2_pad1", (kn_conv2d_args){.stride = {2, 2}, .padding = {1, 1}});
}
Test(golden_conv2d, dilation2)
{
    conv_case("conv2d_dilation2", (kn_conv2d_args){.dilation = {2, 2}});
}
Test(golden_conv2d, groups2)
{
    conv_case("conv2d_groups2", (kn_conv2d_args){.groups = 2});
}
Test(golden_conv2d, nobias_asymmetric) /* 2x3 kernel, padding (1, 0) */
{
    conv_case("conv2d_nobias", (kn_conv2d_args){.padding = {1, 0}});
}

/* Channels-last storage: x = xbase [1, 5, 5, 2] permuted to NCHW; padding 1. */
Test(golden_conv2d, noncontig_input)
{
    GOLDEN_BEGIN("conv2d_noncontig");
    kn_tensor *xbase = golden_leaf(g, "xbase");
    kn_tensor *weight = golden_leaf(g, "weight"), *bias = golden_leaf(g, "bias");
    kn_tensor *x = kn_permute(xbase, KN_DIMS(0, 3, 1, 2));
    kn_tensor *out = kn_conv2d(x, weight, bias, (kn_conv2d_args){.padding = {1, 1}});
    golden_check(g, out, "out", GOLDEN_CONV_TOL);
    golden_backward(g, out, GOLDEN_CONV_TOL, "xbase", xbase, "weight", weight, "bias", bias, NULL);
    GOLDEN_END();
}

/* ---- pooling ----------------------------------------------------------------------------- */

typedef kn_tensor *(*pool_fn)(kn_tensor *, kn_pool2d_args);

static void pool_case(const char *name, pool_fn op, kn_pool2d_args args)
{
    GOLDEN_BEGIN(name);
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *out = op(x, args);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    GOLDEN_END();
}

Test(golden_pool, max_k2)
{
    pool_case("max_pool2d_k2", kn_max_pool2d, (kn_pool2d_args){.kernel_size = {2, 2}});
}
Test(golden_pool, max_k3_s2_p1)
{
    pool_case("max_pool2d_k3_s2_p1", kn_max_pool2d,
              (kn_pool2d_args){.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}});
}
Test(golden_pool, max_ceil) /* 5x5, kernel 2 stride 2 -> 3x3 with ceil_mode */
{
    pool_case("max_pool2d_ceil", kn_max_pool2d,
              (kn_pool2d_args){.kernel_size = {2, 2}, .stride = {2, 2}, .ceil_mode = true});
}
Test(golden_pool, avg_k2)
{
    pool_case("avg_pool2d_k2", kn_avg_pool2d, (kn_pool2d_args){.kernel_size = {2, 2}});
}
Test(golden_pool, avg_pad) /* count_include_pad=True: divisor 9 at the borders */
{
    pool_case("avg_pool2d_pad", kn_avg_pool2d,
              (kn_pool2d_args){.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}});
}
Test(golden_pool, avg_pad_exclude) /* count_include_pad=False */
{
    pool_case("avg_pool2d_pad_exclude", kn_avg_pool2d,
              (kn_pool2d_args){.kernel_size = {3, 3},
                               .stride = {2, 2},
                               .padding = {1, 1},
                               .exclude_padding_from_count = true});
}
Test(golden_pool, avg_ceil) /* 5x5, kernel 2 stride 2 ceil_mode: last window is clipped */
{
    pool_case("avg_pool2d_ceil", kn_avg_pool2d,
              (kn_pool2d_args){.kernel_size = {2, 2}, .stride = {2, 2}, .ceil_mode = true});
}
Test(golden_pool, avg_ceil_pad)
{
    pool_case("avg_pool2d_ceil_pad", kn_avg_pool2d,
              (kn_pool2d_args){
                  .kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .ceil_mode = true});
}

/* Channels-last storage: x = xbase [1, 6, 6, 2] permuted to NCHW. */
static void pool_noncontig_case(const char *name, pool_fn op, kn_pool2d_args args)
{
    GOLDEN_BEGIN(name);
    kn_tensor *xbase = golden_leaf(g, "xbase");
    kn_tensor *out = op(kn_permute(xbase, KN_DIMS(0, 3, 1, 2)), args);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "xbase", xbase, NULL);
    GOLDEN_END();
}

Test(golden_pool, max_noncontig)
{
    pool_noncontig_case("max_pool2d_noncontig", kn_max_pool2d,
                        (kn_pool2d_args){.kernel_size = {2, 2}});
}
Test(golden_pool, avg_noncontig)
{
    pool_noncontig_case(
        "avg_pool2d_noncontig", kn_avg_pool2d,
        (kn_pool2d_args){.kernel_size = {3, 3}, .stride = {2, 2}, .padding = {1, 1}});
}

/* ---- dropout (deterministic settings only; training with 0 < p < 1 draws from the RNG
 * and is tested statistically in the dropout op's own tests) ------------------------------- */

Test(golden_dropout, eval_is_identity)
{
    GOLDEN_BEGIN("dropout_eval");
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *out = kn_dropout(x, 0.5, false, NULL);
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    GOLDEN_END();
}

Test(golden_dropout, p0_training_is_identity)
{
    GOLDEN_BEGIN("dropout_p0_train");
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *out = kn_dropout(x, 0.0, true, NULL);
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    GOLDEN_END();
}

/* ---- embedding (repeated indices accumulate into the weight's gradient) ------------------- */

Test(golden_embedding, lookup)
{
    GOLDEN_BEGIN("embedding"); /* weight [5, 3], indices [2, 3] */
    kn_tensor *weight = golden_leaf(g, "weight");
    kn_tensor *out = kn_embedding(weight, golden_input(g, "indices"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "weight", weight, NULL);
    GOLDEN_END();
}

/* ---- layer_norm (eps 1e-5) ------------------------------------------------------------------ */

static void layer_norm_case(const char *name, int normalized_ndim)
{
    GOLDEN_BEGIN(name);
    bool affine = kn_golden_has(g, "weight");
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *weight = affine ? golden_leaf(g, "weight") : NULL;
    kn_tensor *bias = affine ? golden_leaf(g, "bias") : NULL;
    kn_tensor *out = kn_layer_norm(x, normalized_ndim, weight, bias, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    if (affine)
        golden_backward(g, out, GOLDEN_TOL, "x", x, "weight", weight, "bias", bias, NULL);
    else
        golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    GOLDEN_END();
}

Test(golden_layer_norm, affine)
{
    layer_norm_case("layer_norm_affine", 1);
} /* over [4] */
Test(golden_layer_norm, plain)
{
    layer_norm_case("layer_norm_plain", 1);
}
Test(golden_layer_norm, two_dims)
{
    layer_norm_case("layer_norm_2d_affine", 2);
} /* [3, 4] */

Test(golden_layer_norm, noncontig) /* x = xbase [4, 3].t() */
{
    GOLDEN_BEGIN("layer_norm_noncontig");
    kn_tensor *xbase = golden_leaf(g, "xbase");
    kn_tensor *weight = golden_leaf(g, "weight"), *bias = golden_leaf(g, "bias");
    kn_tensor *out = kn_layer_norm(kn_transpose(xbase, 0, 1), 1, weight, bias, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "xbase", xbase, "weight", weight, "bias", bias, NULL);
    GOLDEN_END();
}

/* Embedding with transposed indices: ibase [3, 2].t(). */
Test(golden_embedding, noncontig_indices)
{
    GOLDEN_BEGIN("embedding_noncontig_indices");
    kn_tensor *weight = golden_leaf(g, "weight");
    kn_tensor *out = kn_embedding(weight, kn_transpose(golden_input(g, "ibase"), 0, 1));
    golden_check(g, out, "out", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "weight", weight, NULL);
    GOLDEN_END();
}

/* ---- batch_norm (momentum 0.1, eps 1e-5) ---------------------------------------------------- */

/* Training: batch statistics normalise; running_mean/var are updated in place. */
static void batch_norm_train_case(const char *name)
{
    GOLDEN_BEGIN(name);
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *weight = golden_leaf(g, "weight"), *bias = golden_leaf(g, "bias");
    kn_tensor *running_mean = golden_input(g, "running_mean");
    kn_tensor *running_var = golden_input(g, "running_var");
    kn_tensor *out = kn_batch_norm(x, running_mean, running_var, weight, bias, true, 0.1, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_check(g, running_mean, "running_mean_after", GOLDEN_TOL);
    golden_check(g, running_var, "running_var_after", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "x", x, "weight", weight, "bias", bias, NULL);
    GOLDEN_END();
}

Test(golden_batch_norm, train_4d)
{
    batch_norm_train_case("batch_norm_train_4d");
} /* [4,3,2,2] */
Test(golden_batch_norm, train_2d)
{
    batch_norm_train_case("batch_norm_train_2d");
} /* [5,3] */

/* Channels-last storage: x = xbase [2, 2, 3, 4] permuted to [2, 4, 2, 3]. */
Test(golden_batch_norm, train_noncontig)
{
    GOLDEN_BEGIN("batch_norm_train_noncontig");
    kn_tensor *xbase = golden_leaf(g, "xbase");
    kn_tensor *weight = golden_leaf(g, "weight"), *bias = golden_leaf(g, "bias");
    kn_tensor *running_mean = golden_input(g, "running_mean");
    kn_tensor *running_var = golden_input(g, "running_var");
    kn_tensor *x = kn_permute(xbase, KN_DIMS(0, 3, 1, 2));
    kn_tensor *out = kn_batch_norm(x, running_mean, running_var, weight, bias, true, 0.1, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_check(g, running_mean, "running_mean_after", GOLDEN_TOL);
    golden_check(g, running_var, "running_var_after", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "xbase", xbase, "weight", weight, "bias", bias, NULL);
    GOLDEN_END();
}

Test(golden_batch_norm, train_without_stats_or_affine)
{
    GOLDEN_BEGIN("batch_norm_train_nostats"); /* x [4, 3, 2] */
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *out = kn_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    GOLDEN_END();
}

Test(golden_batch_norm, eval_uses_running_stats)
{
    GOLDEN_BEGIN("batch_norm_eval");
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *weight = golden_leaf(g, "weight"), *bias = golden_leaf(g, "bias");
    kn_tensor *running_mean = golden_input(g, "running_mean");
    kn_tensor *running_var = golden_input(g, "running_var");
    kn_tensor *out = kn_batch_norm(x, running_mean, running_var, weight, bias, false, 0.1, 1e-5);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_check(g, running_mean, "running_mean", GOLDEN_EXACT); /* untouched in eval */
    golden_check(g, running_var, "running_var", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "x", x, "weight", weight, "bias", bias, NULL);
    GOLDEN_END();
}

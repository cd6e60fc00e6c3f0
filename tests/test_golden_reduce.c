/*
 * test_golden_reduce.c — reductions against PyTorch fixtures (tests/golden/data): sum,
 * mean and var over one dim, several dims, with keepdim and over everything; sum_all,
 * mean_all; max/min with indices, max_all/min_all, argmax; forward and gradients,
 * contiguous and on a transposed view.
 */
#include "golden/golden_case.h"

/* One case: out = expr(a) for a [2, 3, 4] leaf a. */
#define REDUCE_TEST(suite, name, expr)                                                             \
    Test(suite, name)                                                                              \
    {                                                                                              \
        GOLDEN_BEGIN(#name);                                                                       \
        kn_tensor *a = golden_leaf(g, "a");                                                        \
        kn_tensor *out = (expr);                                                                   \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);                                         \
        GOLDEN_END();                                                                              \
    }

/* PyTorch: op(base.t(), ...) with base [4, 3]; gradient with respect to base. */
#define REDUCE_NONCONTIG_TEST(suite, name, expr)                                                   \
    Test(suite, name)                                                                              \
    {                                                                                              \
        GOLDEN_BEGIN(#name);                                                                       \
        kn_tensor *base = golden_leaf(g, "base");                                                  \
        kn_tensor *a = kn_transpose(base, 0, 1);                                                   \
        kn_tensor *out = (expr);                                                                   \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);                                   \
        GOLDEN_END();                                                                              \
    }

REDUCE_TEST(golden_sum, sum_dim1, kn_sum(a, KN_DIMS(1), false))
REDUCE_TEST(golden_sum, sum_dims02, kn_sum(a, KN_DIMS(0, 2), false))
REDUCE_TEST(golden_sum, sum_dimm1_keepdim, kn_sum(a, KN_DIMS(-1), true))
REDUCE_TEST(golden_sum, sum_dims01_keepdim, kn_sum(a, KN_DIMS(0, 1), true))
REDUCE_TEST(golden_sum, sum_all, kn_sum(a, NULL, 0, false))
REDUCE_TEST(golden_sum, sum_all_fn, kn_sum_all(a))
REDUCE_NONCONTIG_TEST(golden_sum, sum_noncontig, kn_sum(a, KN_DIMS(1), false))

REDUCE_TEST(golden_mean, mean_dim1, kn_mean(a, KN_DIMS(1), false))
REDUCE_TEST(golden_mean, mean_dims02, kn_mean(a, KN_DIMS(0, 2), false))
REDUCE_TEST(golden_mean, mean_dimm1_keepdim, kn_mean(a, KN_DIMS(-1), true))
REDUCE_TEST(golden_mean, mean_dims01_keepdim, kn_mean(a, KN_DIMS(0, 1), true))
REDUCE_TEST(golden_mean, mean_all, kn_mean(a, NULL, 0, false))
REDUCE_TEST(golden_mean, mean_all_fn, kn_mean_all(a))
REDUCE_NONCONTIG_TEST(golden_mean, mean_noncontig, kn_mean(a, KN_DIMS(1), false))

REDUCE_TEST(golden_var, var_c0_dim1, kn_var(a, KN_DIMS(1), 0, false))
REDUCE_TEST(golden_var, var_c0_dims02, kn_var(a, KN_DIMS(0, 2), 0, false))
REDUCE_TEST(golden_var, var_c0_dimm1_keepdim, kn_var(a, KN_DIMS(-1), 0, true))
REDUCE_TEST(golden_var, var_c0_all, kn_var(a, NULL, 0, 0, false))
REDUCE_TEST(golden_var, var_c1_dim1, kn_var(a, KN_DIMS(1), 1, false))
REDUCE_TEST(golden_var, var_c1_dims02, kn_var(a, KN_DIMS(0, 2), 1, false))
REDUCE_TEST(golden_var, var_c1_dimm1_keepdim, kn_var(a, KN_DIMS(-1), 1, true))
REDUCE_TEST(golden_var, var_c1_all, kn_var(a, NULL, 0, 1, false))
REDUCE_NONCONTIG_TEST(golden_var, var_c1_noncontig, kn_var(a, KN_DIMS(1), 1, false))

REDUCE_TEST(golden_sum, sum_dims_unordered, kn_sum(a, KN_DIMS(2, 0), false))
REDUCE_TEST(golden_sum, sum_dims_neg_keepdim, kn_sum(a, KN_DIMS(-1, 0), true))
REDUCE_TEST(golden_var, var_c1_dims_neg_keepdim, kn_var(a, KN_DIMS(0, -1), 1, true))

Test(golden_sum, sum_expanded) /* base [1, 3] expanded to [4, 3] (stride 0), summed over 0 */
{
    GOLDEN_BEGIN("sum_expanded");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_sum(kn_expand(base, KN_SHAPE(4, 3)), KN_DIMS(0), false);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

Test(golden_mean, mean_slice) /* base[:, 1::2].mean(-1) */
{
    GOLDEN_BEGIN("mean_slice");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_mean(kn_slice(base, 1, 1, 8, 2), KN_DIMS(-1), false);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

/* ---- max / min: values, int64 indices, gradient routed to the extremum --------------- */

typedef kn_tensor *(*extremum_fn)(kn_tensor *, int, bool, kn_tensor **);

static void extremum_case(const char *name, extremum_fn op, int dim, bool keepdim, bool noncontig)
{
    GOLDEN_BEGIN(name);
    kn_tensor *leaf = golden_leaf(g, noncontig ? "base" : "a");
    kn_tensor *a = noncontig ? kn_transpose(leaf, 0, 1) : leaf;
    kn_tensor *indices = NULL;
    kn_tensor *out = op(a, dim, keepdim, &indices);
    golden_check(g, out, "out", GOLDEN_TOL);
    cr_assert_not_null(indices, "no indices: %s", kn_last_error());
    cr_assert_eq(indices->dtype, KN_INT64);
    golden_check(g, indices, "indices", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, noncontig ? "base" : "a", leaf, NULL);
    GOLDEN_END();
}

Test(golden_max, dim1)
{
    extremum_case("max_dim1", kn_max, 1, false, false);
}
Test(golden_max, dim0)
{
    extremum_case("max_dim0", kn_max, 0, false, false);
}
Test(golden_max, dimm1_keepdim)
{
    extremum_case("max_dimm1_keepdim", kn_max, -1, true, false);
}
Test(golden_max, noncontig)
{
    extremum_case("max_noncontig", kn_max, 1, false, true);
}
Test(golden_min, dim1)
{
    extremum_case("min_dim1", kn_min, 1, false, false);
}
Test(golden_min, dim0)
{
    extremum_case("min_dim0", kn_min, 0, false, false);
}
Test(golden_min, dimm1_keepdim)
{
    extremum_case("min_dimm1_keepdim", kn_min, -1, true, false);
}
Test(golden_min, noncontig)
{
    extremum_case("min_noncontig", kn_min, 1, false, true);
}

Test(golden_max, slice) /* max over dim 1 of base[:, 1::2] */
{
    GOLDEN_BEGIN("max_slice");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *indices = NULL;
    kn_tensor *out = kn_max(kn_slice(base, 1, 1, 8, 2), 1, false, &indices);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_check(g, indices, "indices", GOLDEN_EXACT);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

Test(golden_max, max_without_indices)
{
    GOLDEN_BEGIN("max_dim1");
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_max(a, 1, false, NULL);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

REDUCE_TEST(golden_max, max_all, kn_max_all(a))
REDUCE_TEST(golden_min, min_all, kn_min_all(a))

Test(golden_argmax, dim1)
{
    GOLDEN_BEGIN("argmax_dim1");
    kn_tensor *out = kn_argmax(golden_input(g, "a"), 1, false);
    cr_assert(out && out->dtype == KN_INT64, "%s", kn_last_error());
    golden_check(g, out, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

Test(golden_argmax, dim0_keepdim)
{
    GOLDEN_BEGIN("argmax_dim0_keepdim");
    kn_tensor *out = kn_argmax(golden_input(g, "a"), 0, true);
    cr_assert(out && out->dtype == KN_INT64, "%s", kn_last_error());
    golden_check(g, out, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

/*
 * test_golden_elementwise.c — the elementwise ops and activations against PyTorch
 * fixtures (tests/golden/data): add/sub/mul/div with broadcasting and 0-d operands,
 * scalar ops, unary maths, clamp, where, comparisons, the in-place helpers, activations
 * and softmax/log_softmax; forward values and gradients, contiguous and not.
 */
#include "golden/golden_case.h"

#include <math.h>

/* ---- binary ops ------------------------------------------------------------------------ */

typedef kn_tensor *(*binary_fn)(kn_tensor *, kn_tensor *);

static void binary_case(const char *name, binary_fn op)
{
    GOLDEN_BEGIN(name);
    kn_tensor *a = golden_leaf(g, "a"), *b = golden_leaf(g, "b");
    kn_tensor *out = op(a, b);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, "b", b, NULL);
    GOLDEN_END();
}

/* PyTorch: op(base.t(), b), gradients with respect to base. */
static void binary_noncontig_case(const char *name, binary_fn op)
{
    GOLDEN_BEGIN(name);
    kn_tensor *base = golden_leaf(g, "base"), *b = golden_leaf(g, "b");
    kn_tensor *a = kn_transpose(base, 0, 1);
    cr_assert(a && !kn_is_contiguous(a), "%s", kn_last_error());
    kn_tensor *out = op(a, b);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "base", base, "b", b, NULL);
    GOLDEN_END();
}

/* Shapes: same [2,3]+[2,3]; bcast_row [2,3]+[3]; bcast_3d [2,1,4]*[3,1]; scalar0d
 * [2,3]+[] and []+[2,3]; noncontig base[3,2].t()+[2,3]. */
#define BINARY_TESTS(op)                                                                           \
    Test(golden_binary, op##_same)                                                                 \
    {                                                                                              \
        binary_case(#op "_same", kn_##op);                                                         \
    }                                                                                              \
    Test(golden_binary, op##_bcast_row)                                                            \
    {                                                                                              \
        binary_case(#op "_bcast_row", kn_##op);                                                    \
    }                                                                                              \
    Test(golden_binary, op##_bcast_3d)                                                             \
    {                                                                                              \
        binary_case(#op "_bcast_3d", kn_##op);                                                     \
    }                                                                                              \
    Test(golden_binary, op##_scalar0d)                                                             \
    {                                                                                              \
        binary_case(#op "_scalar0d", kn_##op);                                                     \
    }                                                                                              \
    Test(golden_binary, op##_scalar0d_left)                                                        \
    {                                                                                              \
        binary_case(#op "_scalar0d_left", kn_##op);                                                \
    }                                                                                              \
    Test(golden_binary, op##_noncontig)                                                            \
    {                                                                                              \
        binary_noncontig_case(#op "_noncontig", kn_##op);                                          \
    }

BINARY_TESTS(add)
BINARY_TESTS(sub)
BINARY_TESTS(mul)
BINARY_TESTS(div)

/* A leaf used twice: both paths accumulate into one gradient. */
Test(golden_binary, mul_self)
{
    GOLDEN_BEGIN("mul_self");
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_mul(a, a);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

/* PyTorch: abase.t() - bbase[1::2]: both strided, the second broadcast. */
Test(golden_binary, sub_noncontig_bcast)
{
    GOLDEN_BEGIN("sub_noncontig_bcast");
    kn_tensor *abase = golden_leaf(g, "abase"), *bbase = golden_leaf(g, "bbase");
    kn_tensor *out = kn_sub(kn_transpose(abase, 0, 1), kn_slice(bbase, 0, 1, 6, 2));
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "abase", abase, "bbase", bbase, NULL);
    GOLDEN_END();
}

Test(golden_binary, div_noncontig_both)
{
    GOLDEN_BEGIN("div_noncontig_both");
    kn_tensor *abase = golden_leaf(g, "abase"), *bbase = golden_leaf(g, "bbase");
    kn_tensor *out = kn_div(kn_transpose(abase, 0, 1), kn_transpose(bbase, 0, 1));
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "abase", abase, "bbase", bbase, NULL);
    GOLDEN_END();
}

/* A stride-0 operand: base [1, 3] expanded to [2, 3]. */
Test(golden_binary, mul_expanded)
{
    GOLDEN_BEGIN("mul_expanded");
    kn_tensor *base = golden_leaf(g, "base"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_mul(kn_expand(base, KN_SHAPE(2, 3)), b);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "base", base, "b", b, NULL);
    GOLDEN_END();
}

/* ---- unary ops ------------------------------------------------------------------------- */

/* out = expr(a) on the fixture's leaf a. */
#define UNARY_TEST(name, expr)                                                                     \
    Test(golden_unary, name)                                                                       \
    {                                                                                              \
        GOLDEN_BEGIN(#name);                                                                       \
        kn_tensor *a = golden_leaf(g, "a");                                                        \
        kn_tensor *out = (expr);                                                                   \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);                                         \
        GOLDEN_END();                                                                              \
    }

/* The same on a = base[:, 1::2] (base [3, 8], a strided view), gradient w.r.t. base. */
#define UNARY_NONCONTIG_TEST(name, expr)                                                           \
    Test(golden_unary, name##_noncontig)                                                           \
    {                                                                                              \
        GOLDEN_BEGIN(#name "_noncontig");                                                          \
        kn_tensor *base = golden_leaf(g, "base");                                                  \
        kn_tensor *a = kn_slice(base, 1, 1, 8, 2);                                                 \
        cr_assert(a && !kn_is_contiguous(a), "%s", kn_last_error());                               \
        kn_tensor *out = (expr);                                                                   \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);                                   \
        GOLDEN_END();                                                                              \
    }

/* Each op on a [3, 4] leaf and on the strided view. */
#define UNARY_TESTS(name, expr) UNARY_TEST(name, expr) UNARY_NONCONTIG_TEST(name, expr)

UNARY_TESTS(add_scalar, kn_add_scalar(a, 2.5))
UNARY_TESTS(mul_scalar, kn_mul_scalar(a, -1.5))
UNARY_TESTS(neg, kn_neg(a))
UNARY_TESTS(pow_2, kn_pow(a, 2.0))
UNARY_TESTS(pow_0_5, kn_pow(a, 0.5))
UNARY_TESTS(pow_3, kn_pow(a, 3.0))
UNARY_TESTS(pow_m1_5, kn_pow(a, -1.5))
UNARY_TESTS(exp, kn_exp(a))
UNARY_TESTS(log, kn_log(a))
UNARY_TESTS(sqrt, kn_sqrt(a))
UNARY_TESTS(abs, kn_abs(a))
UNARY_TESTS(clamp_both, kn_clamp(a, -0.5, 0.5))
UNARY_TESTS(clamp_min, kn_clamp(a, -0.3, INFINITY))
UNARY_TESTS(clamp_max, kn_clamp(a, -INFINITY, 0.4))
UNARY_TESTS(relu, kn_relu(a))
UNARY_TESTS(leaky_relu, kn_leaky_relu(a, 0.1))
UNARY_TESTS(gelu_exact, kn_gelu(a, KN_GELU_EXACT))
UNARY_TESTS(gelu_tanh, kn_gelu(a, KN_GELU_TANH))
UNARY_TESTS(silu, kn_silu(a))
UNARY_TESTS(tanh, kn_tanh(a))
UNARY_TESTS(sigmoid, kn_sigmoid(a))

UNARY_TEST(exp_0d, kn_exp(a))
/* Saturated inputs (|a| up to ~60-120): no overflow, no NaN in values or gradients. */
UNARY_TEST(tanh_large, kn_tanh(a))
UNARY_TEST(sigmoid_large, kn_sigmoid(a))
UNARY_TEST(gelu_large, kn_gelu(a, KN_GELU_EXACT))
UNARY_TEST(silu_large, kn_silu(a))

/* ---- where and comparisons ---------------------------------------------------------------- */

static void where_case(const char *name)
{
    GOLDEN_BEGIN(name);
    kn_tensor *cond = golden_input(g, "cond");
    kn_tensor *a = golden_leaf(g, "a"), *b = golden_leaf(g, "b");
    kn_tensor *out = kn_where(cond, a, b);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, "b", b, NULL);
    GOLDEN_END();
}

Test(golden_where, same)
{
    where_case("where_same");
} /* int64 cond [2,3] */
Test(golden_where, bcast)
{
    where_case("where_bcast");
} /* [2,1], [2,3], [3] */
Test(golden_where, float_cond)
{
    where_case("where_float_cond");
} /* cond -2/0 float */

static void compare_case(const char *name, binary_fn op)
{
    GOLDEN_BEGIN(name);
    kn_tensor *out = op(golden_input(g, "a"), golden_input(g, "b"));
    golden_check(g, out, "out", GOLDEN_EXACT);
    cr_assert_eq(out->dtype, KN_FLOAT32);
    cr_assert(!out->requires_grad);
    GOLDEN_END();
}

Test(golden_compare, eq)
{
    compare_case("eq", kn_eq);
}
Test(golden_compare, gt)
{
    compare_case("gt", kn_gt);
}
Test(golden_compare, lt)
{
    compare_case("lt", kn_lt);
}

/* ---- in-place helpers (no autograd): "out" is dst after the call -------------------------- */

Test(golden_inplace, add_)
{
    GOLDEN_BEGIN("add_inplace");
    kn_tensor *dst = golden_input(g, "dst");
    cr_assert_eq(kn_add_(dst, golden_input(g, "src"), -0.75), KN_OK, "%s", kn_last_error());
    golden_check(g, dst, "out", GOLDEN_TOL);
    GOLDEN_END();
}

Test(golden_inplace, mul_scalar_)
{
    GOLDEN_BEGIN("mul_scalar_inplace");
    kn_tensor *dst = golden_input(g, "dst");
    cr_assert_eq(kn_mul_scalar_(dst, 2.5), KN_OK, "%s", kn_last_error());
    golden_check(g, dst, "out", GOLDEN_TOL);
    GOLDEN_END();
}

Test(golden_inplace, fill_)
{
    GOLDEN_BEGIN("fill_inplace");
    kn_tensor *dst = golden_input(g, "dst");
    cr_assert_eq(kn_fill_(dst, 1.25), KN_OK, "%s", kn_last_error());
    golden_check(g, dst, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

Test(golden_inplace, copy_)
{
    GOLDEN_BEGIN("copy_inplace");
    kn_tensor *dst = golden_input(g, "dst");
    cr_assert_eq(kn_copy_(dst, golden_input(g, "src")), KN_OK, "%s", kn_last_error());
    golden_check(g, dst, "out", GOLDEN_EXACT);
    GOLDEN_END();
}

/* ---- softmax and log_softmax over a [2, 3, 4] tensor ------------------------------------ */

#define SOFTMAX_TEST(op, tag, dim)                                                                 \
    Test(golden_softmax, op##_dim##tag)                                                            \
    {                                                                                              \
        GOLDEN_BEGIN(#op "_dim" #tag);                                                             \
        kn_tensor *a = golden_leaf(g, "a");                                                        \
        kn_tensor *out = kn_##op(a, dim);                                                          \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);                                         \
        GOLDEN_END();                                                                              \
    }

/* PyTorch: op(base.t(), dim) with base [4, 3]. */
#define SOFTMAX_NONCONTIG_TEST(op, suffix, dim)                                                    \
    Test(golden_softmax, op##_noncontig##suffix)                                                   \
    {                                                                                              \
        GOLDEN_BEGIN(#op "_noncontig" #suffix);                                                    \
        kn_tensor *base = golden_leaf(g, "base");                                                  \
        kn_tensor *out = kn_##op(kn_transpose(base, 0, 1), dim);                                   \
        golden_check(g, out, "out", GOLDEN_TOL);                                                   \
        golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);                                   \
        GOLDEN_END();                                                                              \
    }

SOFTMAX_TEST(softmax, 0, 0)
SOFTMAX_TEST(softmax, 1, 1)
SOFTMAX_TEST(softmax, m1, -1)
SOFTMAX_NONCONTIG_TEST(softmax, , -1)
SOFTMAX_NONCONTIG_TEST(softmax, _dim0, 0)
SOFTMAX_TEST(log_softmax, 0, 0)
SOFTMAX_TEST(log_softmax, 1, 1)
SOFTMAX_TEST(log_softmax, m1, -1)
SOFTMAX_NONCONTIG_TEST(log_softmax, , -1)
SOFTMAX_NONCONTIG_TEST(log_softmax, _dim0, 0)

/* Logits of magnitude ~100: the max must be subtracted before exp. */
Test(golden_softmax, softmax_large)
{
    GOLDEN_BEGIN("softmax_large");
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_softmax(a, -1);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_softmax, log_softmax_large)
{
    GOLDEN_BEGIN("log_softmax_large");
    kn_tensor *a = golden_leaf(g, "a");
    kn_tensor *out = kn_log_softmax(a, -1);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "a", a, NULL);
    GOLDEN_END();
}

Test(golden_softmax, softmax_slice) /* along a dim of stride 2: base[:, 1::2] */
{
    GOLDEN_BEGIN("softmax_slice");
    kn_tensor *base = golden_leaf(g, "base");
    kn_tensor *out = kn_softmax(kn_slice(base, 1, 1, 8, 2), -1);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "base", base, NULL);
    GOLDEN_END();
}

/*
 * test_matmul.c — kn_matmul and kn_linear: values against PyTorch 1.13 for every rank
 * combination, transposed and strided operands (no copy and copy paths), batched and
 * broadcast products against a naive reference, gradient checks and error messages.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

/* Expected values computed with torch (see each name's shape comment). */
static const float MM_DOT[] = {0.59375};                                           /* [1] */
static const float MM_MV[] = {0.59375, 0.09375, -0.40625};                         /* [3] */
static const float MM_VM[] = {-0.078125, 0.015625, 0.640625, 0.203125, -0.234375}; /* [5] */
static const float MM_MM[] = {-0.078125, 0.015625,  0.640625,  0.203125,  -0.234375,
                              0.296875,  -0.171875, -0.109375, -0.046875, 0.015625,
                              0.671875,  -0.359375, -0.859375, -0.296875, 0.265625}; /* [3, 5] */
static const float MM_B3_2[] = {
    -0.078125, 0.015625, 0.640625, 0.203125,  -0.234375, 0.296875,  -0.171875, -0.109375,
    -0.046875, 0.015625, 0.671875, -0.359375, -0.859375, -0.296875, 0.265625,  -0.546875,
    1.3125,    -0.8125,  -0.8125,  -0.8125,   -0.171875, 0.0625,    0.828125,  0.265625,
    -0.296875, 0.203125, -0.125,   0.078125,  0.015625,  -0.046875}; /* [2, 3, 5] */
static const float MM_BCAST[] = {
    0.09375, 0.1875,   0.34375, -0.125,    0.59375, -0.4375, 0.3125,  -0.125,  0.3125,  0.375,
    0.3125,  0.875,    0.53125, 0.09375,   0.28125, 0.34375, 0.03125, 0.59375, -1.8125, 0.046875,
    0.03125, 0.265625, 0.28125, -0.046875, -1.8125, -1.8125, 0.3125,  -0.25,   0.3125,  0.25,
    -1.8125, -1.8125,  0.59375, 0.03125,   0.34375, 0.28125}; /* [2, 3, 3, 2] */
static const float MM_V_B[] = {-0.078125, 0.015625,  0.640625,  0.203125, -0.234375,
                               0.203125,  -0.234375, -0.671875, -0.3125,  0.578125};    /* [2, 5] */
static const float MM_B_V[] = {0.59375, 0.09375, -0.40625, -0.90625, 0.71875, 0.21875}; /* [2, 3] */
static const float MM_TT[] = {0.53125, -0.78125,  0.5625, 0.3125, 0.59375,
                              0.40625, -0.671875, 0.375,  0.625,  0.34375,
                              0.28125, -0.5625,   0.1875, 0.9375, 0.09375}; /* [3, 5] */
static const float MM_STEP[] = {0.3125,  -0.203125, 0.34375,  0.09375,  -0.15625,
                                -1.0625, 1.28125,   0.171875, 0.390625, 0.609375,
                                0.21875, -0.15625,  0.53125,  0.15625,  -0.21875}; /* [3, 5] */
static const float LIN_3D[] = {
    -0.03125, -0.875,   0.9375,    -0.4375,  1.90625, -0.53125,  -0.4375,  0.1875,
    0.8125,   0.90625,  -1.03125,  0,        -0.5625, 2.0625,    -0.09375, -1.53125,
    0.703125, -0.78125, -0.40625,  -0.03125, 0.09375, -0.984375, 1.125,    -0.75,
    2.15625,  -0.40625, -0.546875, 0.375,    0.5,     1.15625};            /* [2, 3, 5] */
static const float LIN_1D[] = {0.59375, -0.625, 0.8125, -0.9375, 1.03125}; /* [5] */
static const float LIN_WT[] = {-0.703125, -0.234375, 0.765625,  0.703125, 0.640625,
                               -0.328125, -0.421875, 0.015625,  0.453125, 0.890625,
                               0.046875,  -0.609375, -0.734375, 0.203125, 1.140625}; /* [3, 5] */

Test(matmul, every_rank_combination_matches_torch)
{
    kn_scope_begin();
    kn_tensor *d = kn_matmul(kn_test_seq(KN_SHAPE(4), 1), kn_test_seq(KN_SHAPE(4), 2));
    KN_ASSERT_SHAPE(d, NULL, 0);
    KN_ASSERT_VALUES(d, MM_DOT);
    kn_tensor *mv = kn_matmul(kn_test_seq(KN_SHAPE(3, 4), 1), kn_test_seq(KN_SHAPE(4), 2));
    KN_ASSERT_SHAPE(mv, KN_SHAPE(3));
    KN_ASSERT_VALUES(mv, MM_MV);
    kn_tensor *vm = kn_matmul(kn_test_seq(KN_SHAPE(4), 1), kn_test_seq(KN_SHAPE(4, 5), 2));
    KN_ASSERT_SHAPE(vm, KN_SHAPE(5));
    KN_ASSERT_VALUES(vm, MM_VM);
    kn_tensor *mm = kn_matmul(kn_test_seq(KN_SHAPE(3, 4), 1), kn_test_seq(KN_SHAPE(4, 5), 2));
    KN_ASSERT_SHAPE(mm, KN_SHAPE(3, 5));
    KN_ASSERT_VALUES(mm, MM_MM);
    kn_tensor *b3 = kn_matmul(kn_test_seq(KN_SHAPE(2, 3, 4), 1), kn_test_seq(KN_SHAPE(4, 5), 2));
    KN_ASSERT_SHAPE(b3, KN_SHAPE(2, 3, 5));
    KN_ASSERT_VALUES(b3, MM_B3_2);
    kn_tensor *bc =
        kn_matmul(kn_test_seq(KN_SHAPE(2, 1, 3, 4), 1), kn_test_seq(KN_SHAPE(3, 4, 2), 2));
    KN_ASSERT_SHAPE(bc, KN_SHAPE(2, 3, 3, 2));
    KN_ASSERT_VALUES(bc, MM_BCAST);
    kn_tensor *vb = kn_matmul(kn_test_seq(KN_SHAPE(4), 1), kn_test_seq(KN_SHAPE(2, 4, 5), 2));
    KN_ASSERT_SHAPE(vb, KN_SHAPE(2, 5));
    KN_ASSERT_VALUES(vb, MM_V_B);
    kn_tensor *bv = kn_matmul(kn_test_seq(KN_SHAPE(2, 3, 4), 1), kn_test_seq(KN_SHAPE(4), 2));
    KN_ASSERT_SHAPE(bv, KN_SHAPE(2, 3));
    KN_ASSERT_VALUES(bv, MM_B_V);
    kn_scope_end();
}

Test(matmul, transposed_and_strided_operands)
{
    kn_scope_begin();
    kn_tensor *at = kn_transpose(kn_test_seq(KN_SHAPE(4, 3), 1), 0, 1);
    kn_tensor *bt = kn_transpose(kn_test_seq(KN_SHAPE(5, 4), 2), 0, 1);
    cr_assert(!kn_is_contiguous(at) && !kn_is_contiguous(bt));
    KN_ASSERT_VALUES(kn_matmul(at, bt), MM_TT);
    /* every other column: strides (8, 2) are no BLAS layout, so this takes the copy */
    kn_tensor *stepped = kn_slice(kn_test_seq(KN_SHAPE(3, 8), 1), 1, 0, 8, 2);
    cr_assert_not_null(stepped, "%s", kn_last_error());
    KN_ASSERT_VALUES(kn_matmul(stepped, kn_test_seq(KN_SHAPE(4, 5), 2)), MM_STEP);
    /* a broadcast (stride-0) batch and vector */
    kn_tensor *eb = kn_expand(kn_test_seq(KN_SHAPE(1, 4, 5), 2), KN_SHAPE(2, 4, 5));
    kn_tensor *got = kn_matmul(kn_expand(kn_test_seq(KN_SHAPE(1, 3, 4), 1), KN_SHAPE(2, 3, 4)), eb);
    KN_ASSERT_SHAPE(got, KN_SHAPE(2, 3, 5));
    float twice[30];
    memcpy(twice, MM_MM, sizeof MM_MM);
    memcpy(twice + 15, MM_MM, sizeof MM_MM);
    KN_ASSERT_VALUES(got, twice);
    kn_tensor *ones = kn_expand(kn_ones(KN_SHAPE(1), KN_FLOAT32), KN_SHAPE(4));
    kn_tensor *sum_rows = kn_matmul(kn_test_seq(KN_SHAPE(3, 4), 1), ones);
    kn_tensor *want = kn_sum(kn_test_seq(KN_SHAPE(3, 4), 1), KN_DIMS(1), false);
    float expected[3];
    kn_copy_to_floats(want, expected);
    KN_ASSERT_VALUES(sum_rows, expected);
    kn_scope_end();
}

/* Naive double-precision reference for contiguous [B, m, k] x [B or 1, k, n]. */
static void reference_bmm(const float *a, const float *b, float *c, int64_t batches, bool b_shared,
                          int64_t m, int64_t k, int64_t n)
{
    for (int64_t bi = 0; bi < batches; bi++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t q = 0; q < k; q++)
                    s += (double)a[(bi * m + i) * k + q] * b[((b_shared ? 0 : bi) * k + q) * n + j];
                c[(bi * m + i) * n + j] = (float)s;
            }
}

static void check_against_reference(int64_t batches, bool b_shared, int64_t m, int64_t k, int64_t n)
{
    kn_scope_begin();
    kn_tensor *a = kn_test_uniform(KN_SHAPE(batches, m, k), -1, 1, 7);
    kn_tensor *b = b_shared ? kn_test_uniform(KN_SHAPE(k, n), -1, 1, 8)
                            : kn_test_uniform(KN_SHAPE(batches, k, n), -1, 1, 8);
    kn_tensor *c = kn_matmul(a, b);
    KN_ASSERT_SHAPE(c, KN_SHAPE(batches, m, n));
    float *want = malloc(sizeof(float) * (size_t)(batches * m * n));
    reference_bmm(kn_data_f32(a), kn_data_f32(b), want, batches, b_shared, m, k, n);
    char msg[256];
    cr_assert(kn_test_close(c, want, batches * m * n, 1e-4, 1e-4, msg, sizeof msg), "%s", msg);
    free(want);
    kn_scope_end();
}

Test(matmul, batched_products_match_reference)
{
    check_against_reference(64, false, 8, 8, 8);   /* many small: spread over the pool */
    check_against_reference(3, false, 70, 90, 65); /* large: one threaded GEMM each */
    check_against_reference(5, true, 33, 17, 40);  /* shared b: batch folds into rows */
    check_against_reference(1, true, 130, 70, 90);
}

Test(matmul, empty_dimensions)
{
    kn_scope_begin();
    kn_tensor *z =
        kn_matmul(kn_ones(KN_SHAPE(3, 0), KN_FLOAT32), kn_ones(KN_SHAPE(0, 2), KN_FLOAT32));
    KN_ASSERT_SHAPE(z, KN_SHAPE(3, 2));
    KN_ASSERT_VALUES(z, ((float[]){0, 0, 0, 0, 0, 0}));
    KN_ASSERT_SHAPE(
        kn_matmul(kn_ones(KN_SHAPE(0, 3, 4), KN_FLOAT32), kn_ones(KN_SHAPE(4, 2), KN_FLOAT32)),
        KN_SHAPE(0, 3, 2));
    kn_scope_end();
}

Test(matmul, errors_name_the_shapes)
{
    kn_scope_begin();
    cr_assert_null(
        kn_matmul(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32), kn_ones(KN_SHAPE(4, 5), KN_FLOAT32)));
    cr_assert_str_eq(kn_last_error(),
                     "matmul: shapes [2, 3] and [4, 5] cannot be multiplied (3 != 4)");
    cr_assert_eq(kn_last_status(), KN_ERR_SHAPE);
    cr_assert_null(kn_matmul(kn_ones(KN_SHAPE(3), KN_FLOAT32), kn_ones(KN_SHAPE(4), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "[3] and [4]"), "%s", kn_last_error());
    cr_assert_null(
        kn_matmul(kn_ones(KN_SHAPE(2, 3, 4), KN_FLOAT32), kn_ones(KN_SHAPE(3, 4, 5), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "[2, 3, 4] and [3, 4, 5]") &&
                  strstr(kn_last_error(), "batch"),
              "%s", kn_last_error());
    cr_assert_null(kn_matmul(kn_scalar(2), kn_ones(KN_SHAPE(3), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "at least 1 dimension"), "%s", kn_last_error());
    cr_assert_null(kn_matmul(kn_arange(3), kn_ones(KN_SHAPE(3), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "float32"), "%s", kn_last_error());
    /* a NULL from an earlier failure passes through and keeps that failure's message */
    cr_assert_null(kn_matmul(
        kn_matmul(kn_ones(KN_SHAPE(2, 3), KN_FLOAT32), kn_ones(KN_SHAPE(2, 3), KN_FLOAT32)),
        kn_ones(KN_SHAPE(3), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "[2, 3] and [2, 3]"), "%s", kn_last_error());
    kn_scope_end();
}

static kn_tensor *matmul_fn(kn_tensor **in, void *context)
{
    (void)context;
    return kn_matmul(in[0], in[1]);
}

/* Both operands transposed (their last two dims) inside the function. */
static kn_tensor *matmul_transposed_fn(kn_tensor **in, void *context)
{
    (void)context;
    return kn_matmul(kn_transpose(in[0], -1, -2), kn_transpose(in[1], -1, -2));
}

static void gradcheck_matmul(const int64_t *sa, int na, const int64_t *sb, int nb, kn_test_fn fn)
{
    kn_scope_begin();
    kn_tensor *in[2] = {kn_set_requires_grad(kn_test_uniform(sa, na, -1, 1, 1), true),
                        kn_set_requires_grad(kn_test_uniform(sb, nb, -1, 1, 2), true)};
    KN_ASSERT_GRADCHECK(fn, in, 2, NULL);
    kn_scope_end();
}

Test(matmul, gradcheck_every_rank_combination)
{
    gradcheck_matmul(KN_SHAPE(4), KN_SHAPE(4), matmul_fn);
    gradcheck_matmul(KN_SHAPE(3, 4), KN_SHAPE(4), matmul_fn);
    gradcheck_matmul(KN_SHAPE(4), KN_SHAPE(4, 5), matmul_fn);
    gradcheck_matmul(KN_SHAPE(3, 4), KN_SHAPE(4, 5), matmul_fn);
    gradcheck_matmul(KN_SHAPE(2, 3, 4), KN_SHAPE(4, 5), matmul_fn);
    gradcheck_matmul(KN_SHAPE(3, 4), KN_SHAPE(2, 4, 5), matmul_fn);
    gradcheck_matmul(KN_SHAPE(2, 1, 3, 4), KN_SHAPE(3, 4, 2), matmul_fn);
    gradcheck_matmul(KN_SHAPE(4), KN_SHAPE(2, 4, 5), matmul_fn);
    gradcheck_matmul(KN_SHAPE(2, 3, 4), KN_SHAPE(4), matmul_fn);
    gradcheck_matmul(KN_SHAPE(4, 3), KN_SHAPE(5, 4), matmul_transposed_fn);
    gradcheck_matmul(KN_SHAPE(2, 4, 3), KN_SHAPE(5, 4), matmul_transposed_fn);
}

/* ---- linear ---------------------------------------------------------------------- */

Test(linear, values_match_torch)
{
    kn_scope_begin();
    kn_tensor *y = kn_linear(kn_test_seq(KN_SHAPE(2, 3, 4), 1), kn_test_seq(KN_SHAPE(5, 4), 2),
                             kn_test_seq(KN_SHAPE(5), 3));
    KN_ASSERT_SHAPE(y, KN_SHAPE(2, 3, 5));
    KN_ASSERT_VALUES(y, LIN_3D);
    kn_tensor *v = kn_linear(kn_test_seq(KN_SHAPE(4), 1), kn_test_seq(KN_SHAPE(5, 4), 2), NULL);
    KN_ASSERT_SHAPE(v, KN_SHAPE(5));
    KN_ASSERT_VALUES(v, LIN_1D);
    kn_tensor *wt = kn_transpose(kn_test_seq(KN_SHAPE(4, 5), 2), 0, 1);
    KN_ASSERT_VALUES(kn_linear(kn_test_seq(KN_SHAPE(3, 4), 1), wt, kn_test_seq(KN_SHAPE(5), 3)),
                     LIN_WT);
    /* a transposed input: strides (1, 3) go to BLAS as a transposed operand */
    kn_tensor *xt = kn_transpose(kn_test_seq(KN_SHAPE(4, 3), 1), 0, 1);
    kn_tensor *via_matmul =
        kn_add(kn_matmul(xt, kn_transpose(kn_test_seq(KN_SHAPE(5, 4), 2), 0, 1)),
               kn_test_seq(KN_SHAPE(5), 3));
    float want[15];
    kn_copy_to_floats(via_matmul, want);
    KN_ASSERT_VALUES(kn_linear(xt, kn_test_seq(KN_SHAPE(5, 4), 2), kn_test_seq(KN_SHAPE(5), 3)),
                     want);
    kn_scope_end();
}

static kn_tensor *linear_fn(kn_tensor **in, void *context)
{
    (void)context;
    return kn_linear(in[0], in[1], in[2]);
}

static kn_tensor *linear_transposed_fn(kn_tensor **in, void *context)
{
    (void)context;
    return kn_linear(kn_transpose(in[0], 0, 1), kn_transpose(in[1], 0, 1), in[2]);
}

Test(linear, gradcheck)
{
    kn_scope_begin();
    kn_tensor *in[3] = {kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 3, 4), -1, 1, 1), true),
                        kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5, 4), -1, 1, 2), true),
                        kn_set_requires_grad(kn_test_uniform(KN_SHAPE(5), -1, 1, 3), true)};
    KN_ASSERT_GRADCHECK(linear_fn, in, 3, NULL);
    kn_tensor *vec[3] = {kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4), -1, 1, 4), true), in[1],
                         NULL};
    KN_ASSERT_GRADCHECK(linear_fn, vec, 3, NULL);
    kn_tensor *tr[3] = {kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4, 3), -1, 1, 5), true),
                        kn_set_requires_grad(kn_test_uniform(KN_SHAPE(4, 5), -1, 1, 6), true),
                        in[2]};
    KN_ASSERT_GRADCHECK(linear_transposed_fn, tr, 3, NULL);
    kn_scope_end();
}

Test(linear, bias_gradient_is_row_sum_and_expanded_grads_work)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_seq(KN_SHAPE(3, 2), 1), true);
    kn_tensor *w = kn_set_requires_grad(kn_test_seq(KN_SHAPE(4, 2), 2), true);
    kn_tensor *b = kn_set_requires_grad(kn_zeros(KN_SHAPE(4), KN_FLOAT32), true);
    /* sum_all's gradient reaches linear as an expanded (stride-0) tensor */
    cr_assert_eq(kn_backward(kn_sum_all(kn_linear(x, w, b)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    KN_ASSERT_VALUES(b->grad, ((float[]){3, 3, 3, 3}));
    float gx[6], gw[8], *wv = kn_data_f32(w), *xv = kn_data_f32(x);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) gx[i * 2 + j] = wv[j] + wv[2 + j] + wv[4 + j] + wv[6 + j];
    for (int o = 0; o < 4; o++)
        for (int j = 0; j < 2; j++) gw[o * 2 + j] = xv[j] + xv[2 + j] + xv[4 + j];
    KN_ASSERT_VALUES(x->grad, gx);
    KN_ASSERT_VALUES(w->grad, gw);
    kn_scope_end();
}

Test(linear, errors_name_the_shapes)
{
    kn_scope_begin();
    cr_assert_null(
        kn_linear(kn_ones(KN_SHAPE(4, 3), KN_FLOAT32), kn_ones(KN_SHAPE(5, 7), KN_FLOAT32), NULL));
    cr_assert_str_eq(kn_last_error(),
                     "linear: input [4, 3] has 3 features but weight [5, 7] expects 7");
    cr_assert_null(kn_linear(kn_ones(KN_SHAPE(4, 3), KN_FLOAT32),
                             kn_ones(KN_SHAPE(5, 3), KN_FLOAT32),
                             kn_ones(KN_SHAPE(4), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "bias [4]") && strstr(kn_last_error(), "[5, 3]"), "%s",
              kn_last_error());
    cr_assert_null(
        kn_linear(kn_ones(KN_SHAPE(4, 3), KN_FLOAT32), kn_ones(KN_SHAPE(3), KN_FLOAT32), NULL));
    cr_assert(strstr(kn_last_error(), "2-D"), "%s", kn_last_error());
    kn_scope_end();
}

/*
 * test_dropout.c — kn_dropout: PyTorch's numbers for a seed, the scaled-mask backward,
 * eval / p == 0 identity, p == 1, mask statistics, generators, non-contiguous inputs and
 * the error on a bad p.
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#define ASSERT_CLOSE(t, want, n, rtol, atol)                                                       \
    do {                                                                                           \
        char m_[512];                                                                              \
        cr_assert(kn_test_close((t), (want), (n), (rtol), (atol), m_, sizeof m_), "%s", m_);       \
    } while (0)

static kn_tensor *arange12(void)
{
    float v[12];
    for (int i = 0; i < 12; i++) v[i] = (float)(i + 1);
    return kn_from_floats(v, KN_SHAPE(3, 4));
}

Test(dropout, matches_torch_for_a_seed)
{
    kn_scope_begin();
    /* torch.manual_seed(7); F.dropout(torch.arange(1., 13.).reshape(3, 4), 0.4, True) */
    static const float want[12] = {1.66666663f, 3.33333325f, 0, 0, 0,          0,
                                   11.666666f,  13.333333f,  0, 0, 18.333332f, 20.0f};
    kn_manual_seed(7);
    kn_tensor *y = kn_dropout(arange12(), 0.4, true, NULL);
    cr_assert_not_null(y, "%s", kn_last_error());
    ASSERT_CLOSE(y, want, 12, 1e-6, 0);
    kn_scope_end();
}

Test(dropout, backward_uses_the_same_scaled_mask)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(arange12(), true);
    kn_generator *gen = kn_generator_new(42);
    kn_tensor *y = kn_dropout(x, 0.25, true, gen);
    cr_assert_not_null(y, "%s", kn_last_error());
    cr_assert_eq(kn_backward(kn_sum_all(y), NULL, false), KN_OK, "%s", kn_last_error());
    float out[12], grad[12];
    kn_copy_to_floats(y, out);
    kn_copy_to_floats(x->grad, grad);
    int kept = 0;
    for (int i = 0; i < 12; i++) {
        float scale = out[i] / (float)(i + 1);
        cr_assert(scale == 0.f || fabsf(scale - 1.f / 0.75f) < 1e-6f, "scale %g", scale);
        cr_assert_float_eq(grad[i], scale, 1e-6);
        kept += scale != 0.f;
    }
    cr_assert(kept > 0 && kept < 12, "kept %d of 12", kept);
    kn_generator_free(gen);
    kn_scope_end();
}

Test(dropout, same_seed_same_mask)
{
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(64), KN_FLOAT32);
    kn_generator *a = kn_generator_new(5), *b = kn_generator_new(5);
    float ya[64], yb[64];
    kn_copy_to_floats(kn_dropout(x, 0.5, true, a), ya);
    kn_copy_to_floats(kn_dropout(x, 0.5, true, b), yb);
    cr_assert(memcmp(ya, yb, sizeof ya) == 0);
    kn_copy_to_floats(kn_dropout(x, 0.5, true, a), yb); /* the generator moved on */
    cr_assert(memcmp(ya, yb, sizeof ya) != 0);
    kn_generator_free(a);
    kn_generator_free(b);
    kn_scope_end();
}

Test(dropout, eval_and_zero_p_are_the_identity)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(arange12(), true);
    cr_assert_eq(kn_dropout(x, 0.5, false, NULL), x);
    kn_tensor *y = kn_dropout(x, 0.0, true, NULL);
    cr_assert_eq(y, x);
    cr_assert_eq(kn_backward(kn_sum_all(kn_mul_scalar(y, 2)), NULL, false), KN_OK, "%s",
                 kn_last_error());
    float twos[12];
    for (int i = 0; i < 12; i++) twos[i] = 2.f;
    ASSERT_CLOSE(x->grad, twos, 12, 0, 0);
    kn_scope_end();
}

Test(dropout, p_one_gives_zeros_and_zero_gradient)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(arange12(), true);
    kn_tensor *y = kn_dropout(x, 1.0, true, NULL);
    float zeros[12] = {0};
    ASSERT_CLOSE(y, zeros, 12, 0, 0);
    cr_assert_eq(kn_backward(kn_sum_all(y), NULL, false), KN_OK, "%s", kn_last_error());
    ASSERT_CLOSE(x->grad, zeros, 12, 0, 0);
    kn_scope_end();
}

Test(dropout, mask_statistics)
{
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(200, 500), KN_FLOAT32);
    kn_generator *gen = kn_generator_new(123);
    kn_tensor *y = kn_dropout(x, 0.3, true, gen);
    cr_assert_not_null(y, "%s", kn_last_error());
    const float *v = kn_data_f32(y);
    int64_t zeros = 0;
    double total = 0;
    for (int64_t i = 0; i < 100000; i++) {
        zeros += v[i] == 0.f;
        total += v[i];
    }
    cr_assert(fabs(zeros / 100000.0 - 0.3) < 0.01, "zero fraction %g", zeros / 100000.0);
    cr_assert(fabs(total / 100000.0 - 1.0) < 0.02, "mean %g", total / 100000.0);
    kn_generator_free(gen);
    kn_scope_end();
}

Test(dropout, transposed_input)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(arange12(), true);
    kn_tensor *xt = kn_transpose(x, 0, 1); /* [4, 3], x[j][i] at (i, j) */
    kn_generator *gen = kn_generator_new(9);
    kn_tensor *y = kn_dropout(xt, 0.5, true, gen);
    cr_assert_not_null(y, "%s", kn_last_error());
    cr_assert_eq(y->shape[0], 4);
    cr_assert_eq(kn_backward(kn_sum_all(y), NULL, false), KN_OK, "%s", kn_last_error());
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 3; j++) {
            int64_t yi[2] = {i, j}, xi[2] = {j, i};
            double in = kn_get(x, xi), out = kn_get(y, yi), g = kn_get(x->grad, xi);
            cr_assert(out == 0 || fabs(out - 2 * in) < 1e-5, "out %g in %g", out, in);
            cr_assert(fabs(g - (out == 0 ? 0 : 2)) < 1e-6, "grad %g", g);
        }
    kn_generator_free(gen);
    kn_scope_end();
}

Test(dropout, bad_p_is_an_error)
{
    kn_scope_begin();
    kn_tensor *x = arange12();
    cr_assert_null(kn_dropout(x, 1.5, true, NULL));
    cr_assert(strstr(kn_last_error(), "1.5") && strstr(kn_last_error(), "between 0 and 1"), "%s",
              kn_last_error());
    cr_assert_null(kn_dropout(x, -0.1, false, NULL));
    cr_assert(strstr(kn_last_error(), "-0.1"), "%s", kn_last_error());
    cr_assert_null(kn_dropout(x, NAN, true, NULL));
    kn_clear_error();
    cr_assert_null(kn_dropout(NULL, 0.5, true, NULL));
    kn_scope_end();
}

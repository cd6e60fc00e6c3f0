/*
 * test_print.c — kn_to_string against the exact strings torch 1.13's repr gives for the
 * same tensors (fixed, integer-valued and scientific floats, int64, non-finite values,
 * wrapping at 80 columns, elision above 1000 elements, suffixes, empty and 0-d tensors).
 */
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void check(const kn_tensor *t, const char *want)
{
    cr_assert_not_null(t, "%s", kn_last_error());
    char *got = kn_to_string(t);
    cr_assert_not_null(got, "%s", kn_last_error());
    cr_assert_str_eq(got, want, "\ngot:\n%s\nwant:\n%s", got, want);
    free(got);
}

/* values start, start + step, ... as float32 of the given shape */
static kn_tensor *ramp(double start, double step, double divisor, const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    float *data = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) data[i] = (float)(start + step * (double)i) / (float)divisor;
    kn_tensor *t = kn_from_floats(data, shape, ndim);
    free(data);
    return t;
}

Test(print, matrix_requires_grad)
{
    kn_scope_begin();
    kn_tensor *t = kn_from_floats((float[]){1, 2, 3, 4}, KN_SHAPE(2, 2));
    kn_set_requires_grad(t, true);
    check(t, "tensor([[1., 2.],\n        [3., 4.]], requires_grad=True)");
    check(kn_from_floats((float[]){1.5f, -2.25f, 3.125f, 4}, KN_SHAPE(2, 2)),
          "tensor([[ 1.5000, -2.2500],\n        [ 3.1250,  4.0000]])");
    kn_scope_end();
}

Test(print, scalars)
{
    kn_scope_begin();
    check(kn_scalar(3.5f), "tensor(3.5000)");
    check(kn_scalar(3.0f), "tensor(3.)");
    kn_scope_end();
}

Test(print, int64_with_dtype_suffix)
{
    kn_scope_begin();
    check(kn_from_int64s((int64_t[]){1, -20, 300, 4}, KN_SHAPE(2, 2)),
          "tensor([[  1, -20],\n        [300,   4]], dtype=int64)");
    check(kn_arange(5), "tensor([0, 1, 2, 3, 4], dtype=int64)");
    /* exact beyond 2^53, where a double would round */
    check(kn_from_int64s((int64_t[]){INT64_MAX, -9007199254740993LL}, KN_SHAPE(2)),
          "tensor([9223372036854775807,   -9007199254740993], dtype=int64)");
    kn_scope_end();
}

Test(print, scientific_and_non_finite)
{
    kn_scope_begin();
    check(kn_from_floats((float[]){1e-5f, 1.0f, 123.0f}, KN_SHAPE(3)),
          "tensor([1.0000e-05, 1.0000e+00, 1.2300e+02])");
    check(kn_from_floats((float[]){1.0f, 1e9f}, KN_SHAPE(2)), "tensor([1.0000e+00, 1.0000e+09])");
    check(kn_from_floats((float[]){1.5f, NAN, INFINITY, -INFINITY, 0.f}, KN_SHAPE(5)),
          "tensor([1.5000,    nan,    inf,   -inf, 0.0000])");
    check(kn_zeros(KN_SHAPE(3), KN_FLOAT32), "tensor([0., 0., 0.])");
    check(kn_from_floats((float[]){-0.0f, 1.5f}, KN_SHAPE(2)), "tensor([-0.0000, 1.5000])");
    kn_scope_end();
}

Test(print, wrapping_and_suffix_on_its_own_line)
{
    kn_scope_begin();
    check(ramp(0, 1, 3, KN_SHAPE(30)),
          "tensor([0.0000, 0.3333, 0.6667, 1.0000, 1.3333, 1.6667, 2.0000, 2.3333, 2.6667,\n"
          "        3.0000, 3.3333, 3.6667, 4.0000, 4.3333, 4.6667, 5.0000, 5.3333, 5.6667,\n"
          "        6.0000, 6.3333, 6.6667, 7.0000, 7.3333, 7.6667, 8.0000, 8.3333, 8.6667,\n"
          "        9.0000, 9.3333, 9.6667])");
    check(kn_set_requires_grad(ramp(0, 1, 7, KN_SHAPE(18)), true),
          "tensor([0.0000, 0.1429, 0.2857, 0.4286, 0.5714, 0.7143, 0.8571, 1.0000, 1.1429,\n"
          "        1.2857, 1.4286, 1.5714, 1.7143, 1.8571, 2.0000, 2.1429, 2.2857, 2.4286],\n"
          "       requires_grad=True)");
    check(ramp(0, 1, 1, KN_SHAPE(2, 2, 3)),
          "tensor([[[ 0.,  1.,  2.],\n         [ 3.,  4.,  5.]],\n\n"
          "        [[ 6.,  7.,  8.],\n         [ 9., 10., 11.]]])");
    kn_scope_end();
}

Test(print, elision_above_1000_elements)
{
    kn_scope_begin();
    check(ramp(0, 1, 1, KN_SHAPE(2, 1000)),
          "tensor([[0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 9.9700e+02, 9.9800e+02,\n"
          "         9.9900e+02],\n"
          "        [1.0000e+03, 1.0010e+03, 1.0020e+03,  ..., 1.9970e+03, 1.9980e+03,\n"
          "         1.9990e+03]])");
    check(ramp(0, 1, 7, KN_SHAPE(1001)),
          "tensor([  0.0000,   0.1429,   0.2857,  ..., 142.5714, 142.7143, 142.8571])");
    int64_t *ints = malloc(sizeof(int64_t) * 2400);
    for (int i = 0; i < 2400; i++) ints[i] = i;
    kn_tensor *t = kn_from_int64s(ints, KN_SHAPE(24, 10, 10));
    free(ints);
    char *got = kn_to_string(t);
    cr_assert_not_null(got);
    const char *head = "tensor([[[   0,    1,    2,  ...,    7,    8,    9],\n"
                       "         [  10,   11,   12,  ...,   17,   18,   19],\n"
                       "         [  20,   21,   22,  ...,   27,   28,   29],\n"
                       "         ...,\n"
                       "         [  70,   71,   72,  ...,   77,   78,   79],\n";
    const char *middle = "         [ 290,  291,  292,  ...,  297,  298,  299]],\n\n        ...,\n\n"
                         "        [[2100, 2101, 2102,  ..., 2107, 2108, 2109],\n";
    const char *tail = "         [2390, 2391, 2392,  ..., 2397, 2398, 2399]]], dtype=int64)";
    cr_assert(strncmp(got, head, strlen(head)) == 0, "%s", got);
    cr_assert_not_null(strstr(got, middle), "%s", got);
    cr_assert_str_eq(got + strlen(got) - strlen(tail), tail);
    free(got);
    kn_scope_end();
}

Test(print, empty_tensors)
{
    kn_scope_begin();
    check(kn_zeros(KN_SHAPE(0, 3), KN_FLOAT32), "tensor([], size=(0, 3))");
    check(kn_zeros(KN_SHAPE(0), KN_FLOAT32), "tensor([])");
    check(kn_zeros(KN_SHAPE(0), KN_INT64), "tensor([], dtype=int64)");
    kn_scope_end();
}

Test(print, grad_fn_suffix_uses_the_node_name)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_from_floats((float[]){1, 2}, KN_SHAPE(2)), true);
    check(kn_mul(x, x), "tensor([1., 4.], grad_fn=<mul>)");
    check(kn_add(x, x), "tensor([2., 4.], grad_fn=<add>)");
    kn_scope_end();
}

Test(print, non_contiguous_views)
{
    kn_scope_begin();
    /* torch.arange(6.).reshape(2, 3).t() */
    kn_tensor *t = kn_transpose(ramp(0, 1, 1, KN_SHAPE(2, 3)), 0, 1);
    check(t, "tensor([[0., 3.],\n        [1., 4.],\n        [2., 5.]])");
    kn_scope_end();
}

Test(print, null_is_an_error_and_fprint_writes_a_line)
{
    kn_clear_error();
    cr_assert_null(kn_to_string(NULL));
    cr_assert_eq(kn_last_status(), KN_ERR_NULL);
    kn_scope_begin();
    char *buffer = NULL;
    size_t size = 0;
    FILE *stream = open_memstream(&buffer, &size);
    kn_fprint(stream, kn_scalar(2.0f));
    fclose(stream);
    cr_assert_str_eq(buffer, "tensor(2.)\n");
    free(buffer);
    kn_scope_end();
}

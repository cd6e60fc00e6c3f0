/*
 * test_pool_fast.c — the 2x2 stride-2 max-pool fast path (kn_cpu_max_pool2d_2x2 and its
 * backward, byte positions instead of int64 indices) against the general kernel on the
 * same data: values, argmax choice on ties and NaN, odd sizes (floor mode), and the
 * gradient scattered back. Also kn_cpu_conv_bias_grad against a double-precision sum.
 */
#include "kn_cpu_linalg.h"
#include "kn_test.h"

#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void check_against_general(int64_t planes, int64_t h, int64_t w, unsigned seed)
{
    kn_cpu_pool_geometry g = {.planes = planes,
                              .height = h,
                              .width = w,
                              .out_h = h / 2,
                              .out_w = w / 2,
                              .kernel_h = 2,
                              .kernel_w = 2,
                              .stride_h = 2,
                              .stride_w = 2,
                              .dilation_h = 1,
                              .dilation_w = 1};
    cr_assert(kn_cpu_max_pool2d_is_2x2(&g));
    int64_t n_in = planes * h * w, n_out = planes * g.out_h * g.out_w;
    float *in = malloc(sizeof(float) * (size_t)n_in), *grad = malloc(sizeof(float) * (size_t)n_out);
    float *out_a = malloc(sizeof(float) * (size_t)n_out),
          *out_b = malloc(sizeof(float) * (size_t)n_out);
    float *gi_a = malloc(sizeof(float) * (size_t)n_in),
          *gi_b = malloc(sizeof(float) * (size_t)n_in);
    int64_t *indices = malloc(sizeof(int64_t) * (size_t)n_out);
    uint8_t *which = malloc((size_t)n_out);
    srand(seed);
    for (int64_t i = 0; i < n_in; i++) {
        int r = rand() % 16; /* few distinct values: many ties; some NaN and -inf */
        in[i] = r == 0 ? NAN : r == 1 ? -INFINITY : (float)(r % 5);
    }
    for (int64_t i = 0; i < n_out; i++) grad[i] = (float)(i % 7) - 3.f;
    kn_cpu_max_pool2d(&g, in, out_a, indices);
    kn_cpu_max_pool2d_2x2(&g, in, out_b, which);
    for (int64_t i = 0; i < n_out; i++) {
        cr_assert(memcmp(&out_a[i], &out_b[i], sizeof(float)) == 0 ||
                      (isnan(out_a[i]) && isnan(out_b[i])),
                  "output %lld: %g vs %g", (long long)i, out_a[i], out_b[i]);
        int64_t oh = i / g.out_w % g.out_h, ow = i % g.out_w;
        int64_t at = (2 * oh + which[i] / 2) * w + 2 * ow + which[i] % 2;
        cr_assert_eq(at, indices[i], "index of output %lld", (long long)i);
    }
    memset(gi_b, 0x7f, sizeof(float) * (size_t)n_in); /* must be overwritten everywhere */
    kn_cpu_max_pool2d_backward(&g, grad, indices, gi_a);
    kn_cpu_max_pool2d_2x2_backward(&g, grad, which, gi_b);
    cr_assert(memcmp(gi_a, gi_b, sizeof(float) * (size_t)n_in) == 0, "grad_input differs");
    free(in);
    free(grad);
    free(out_a);
    free(out_b);
    free(gi_a);
    free(gi_b);
    free(indices);
    free(which);
}

Test(pool_fast, matches_general_kernel)
{
    kn_scope_begin();
    check_against_general(3, 28, 28, 1); /* the CNN's first pool, rows of 14 */
    check_against_general(5, 14, 14, 2); /* the second, rows of 7 */
    check_against_general(2, 7, 9, 3);   /* odd: last row and column dropped */
    check_against_general(2, 4, 70, 4);  /* rows longer than one vector */
    check_against_general(64, 2, 2, 5);  /* one output per plane */
    kn_scope_end();
}

Test(pool_fast, not_taken_when_windows_clip)
{
    kn_cpu_pool_geometry g = {.planes = 1,
                              .height = 5,
                              .width = 5,
                              .out_h = 3,
                              .out_w = 3,
                              .kernel_h = 2,
                              .kernel_w = 2,
                              .stride_h = 2,
                              .stride_w = 2,
                              .dilation_h = 1,
                              .dilation_w = 1};
    cr_assert_not(kn_cpu_max_pool2d_is_2x2(&g)); /* ceil mode: the last window clips */
    g.out_h = g.out_w = 2;
    g.pad_h = 1;
    cr_assert_not(kn_cpu_max_pool2d_is_2x2(&g));
}

Test(pool_fast, conv_bias_grad)
{
    enum { N = 3, C = 4, L = 37 };
    static float grad[N * C * L];
    for (int i = 0; i < N * C * L; i++) grad[i] = (float)((i * 37) % 101) / 17.f - 3.f;
    float gb[C];
    kn_cpu_conv_bias_grad(grad, N, C, L, gb);
    for (int c = 0; c < C; c++) {
        double want = 0;
        for (int n = 0; n < N; n++)
            for (int l = 0; l < L; l++) want += grad[(n * C + c) * L + l];
        cr_assert_float_eq(gb[c], want, 1e-4, "channel %d: %g vs %g", c, gb[c], want);
    }
}

/*
 * test_erf.c — the engine's vectorised erf and GELU (kernels/cpu/gelu.c), which exact GELU
 * and its gradient use in place of libm's scalar erff: the erf's error against erf in
 * double over a dense sweep of every float range (denormals, the switch at 1, the clamp
 * at 3.92, the tails, +-inf, NaN, signed zeros); GELU's values and gradient (exact and
 * tanh) being the same bits for any thread count, any strides and any position in a
 * block; the tanh form's relative error; GELU at the special values, as PyTorch gives.
 */
#include "kn.h"
#include "kn_cpu.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Error of got in units of the float spacing at erf(x) (the spacing of the correctly
 * rounded result; denormal results use the denormal spacing). */
static double ulp_error(float x, float got)
{
    double want = erf((double)x);
    float rounded = (float)want;
    double spacing = (double)nextafterf(fabsf(rounded), INFINITY) - (double)fabsf(rounded);
    if (fabsf(rounded) == 1.f) spacing = 0x1p-24; /* just below 1, where results land */
    return fabs((double)got - want) / spacing;
}

#define CHUNK 65536

/* Every 61st bit pattern of the positive floats (~35M values, both signs checked by
 * oddness below), in chunks so the vectorised body and the scalar tail both run. */
Test(erf, within_two_ulp_of_erf_in_double_over_all_floats)
{
    float *x = malloc(sizeof(float) * CHUNK), *y = malloc(sizeof(float) * CHUNK);
    double worst = 0;
    float worst_x = 0;
    uint64_t checked = 0;
    for (uint64_t u = 0; u < 0x7f800000u;) {
        int n = 0;
        for (; n < CHUNK - 3 && u < 0x7f800000u; u += 61) x[n++] = from_bits((uint32_t)u);
        kn_cpu_erff_n(x, y, n);
        for (int i = 0; i < n; i++) {
            double e = ulp_error(x[i], y[i]);
            if (!(e <= worst)) {
                worst = e;
                worst_x = x[i];
            }
        }
        checked += (uint64_t)n;
    }
    cr_assert(checked > 30000000);
    cr_log_info("erf: max error %.3f ulp at x = %.9g over %llu floats", worst, worst_x,
                (unsigned long long)checked);
    cr_assert(worst <= 2.0, "max error %.3f ulp at x = %.9g", worst, worst_x);
    free(x);
    free(y);
}

/* Every float where the pieces meet or the result leaves (0, 1), and every denormal. */
Test(erf, every_float_near_the_switches)
{
    static const float ranges[][2] = {
        {0.f, 0x1p-124f}, /* the denormals and the first normals: erf ~ 2x/sqrt(pi) */
        {0.95f, 1.05f},   /* the polynomial / exp(log erfc) switch */
        {3.8f, 4.1f},     /* erf reaching 1, the clamp at 3.92 */
    };
    float *x = malloc(sizeof(float) * CHUNK), *y = malloc(sizeof(float) * CHUNK);
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
        float v = ranges[r][0];
        while (v <= ranges[r][1]) {
            int n = 0;
            for (; n < CHUNK && v <= ranges[r][1]; v = nextafterf(v, INFINITY)) x[n++] = v;
            kn_cpu_erff_n(x, y, n);
            for (int i = 0; i < n; i++) {
                double e = ulp_error(x[i], y[i]);
                cr_assert(e <= 2.0, "x = %.9g: got %.9g, erf %.9g (%.3f ulp)", x[i], y[i],
                          erf((double)x[i]), e);
            }
        }
    }
    free(x);
    free(y);
}

Test(erf, odd_and_the_special_values)
{
    enum { N = 37 };
    float x[N], y[N], neg[N], yneg[N];
    for (int i = 0; i < N; i++) x[i] = ldexpf(1.f + (float)i / 8.f, i - 20); /* 1e-6 .. 1e5 */
    x[0] = FLT_TRUE_MIN;
    x[1] = FLT_MIN;
    x[2] = FLT_MAX;
    x[3] = 3.92f;
    for (int i = 0; i < N; i++) neg[i] = -x[i];
    kn_cpu_erff_n(x, y, N);
    kn_cpu_erff_n(neg, yneg, N);
    for (int i = 0; i < N; i++) {
        cr_assert(yneg[i] == -y[i], "erf(-x) != -erf(x) at x = %.9g", x[i]);
        cr_assert(ulp_error(x[i], y[i]) <= 2.0, "x = %.9g: %.9g", x[i], y[i]);
    }
    cr_assert(y[2] == 1.f && yneg[2] == -1.f, "erf(+-FLT_MAX) = +-1");
    cr_assert(y[0] > 0.f, "erf of the smallest denormal is the smallest denormal, not 0");

    float s[6] = {INFINITY, -INFINITY, NAN, -NAN, 0.f, -0.f}, ys[6];
    kn_cpu_erff_n(s, ys, 6);
    cr_assert(ys[0] == 1.f && ys[1] == -1.f, "erf(+-inf) = +-1, got %g %g", ys[0], ys[1]);
    cr_assert(isnan(ys[2]) && isnan(ys[3]), "NaN in, NaN out");
    cr_assert(ys[4] == 0.f && !signbit(ys[4]), "erf(+0) = +0");
    cr_assert(ys[5] == 0.f && signbit(ys[5]), "erf(-0) = -0");
}

/* GELU and its gradient (kn_gelu, exact and tanh) over 200003 values: the same bits with
 * 1, 2 and 3 threads, and within float rounding of the formulas in double with libm. */
Test(erf, gelu_same_bits_for_any_thread_count)
{
    enum { N = 200003 };
    float *data = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) data[i] = -12.f + 24.f * (float)i / (float)(N - 1);
    int threads_before = kn_get_num_threads();
    for (int mode = 0; mode < 2; mode++) {
        kn_gelu_approximation approx = mode ? KN_GELU_TANH : KN_GELU_EXACT;
        float *ref_y = NULL, *ref_g = NULL;
        for (int threads = 1; threads <= 3; threads++) {
            kn_set_num_threads(threads);
            kn_scope_begin();
            int64_t shape[1] = {N};
            kn_tensor *x = kn_from_floats(data, shape, 1);
            kn_set_requires_grad(x, true);
            kn_tensor *y = kn_gelu(x, approx);
            cr_assert(y, "%s", kn_last_error());
            kn_tensor *loss = kn_sum_all(kn_mul(y, y));
            cr_assert(kn_backward(loss, NULL, false) == KN_OK, "%s", kn_last_error());
            const float *yv = kn_data_f32(y), *gv = kn_data_f32(kn_grad(x));
            if (!ref_y) {
                ref_y = malloc(sizeof(float) * N);
                ref_g = malloc(sizeof(float) * N);
                memcpy(ref_y, yv, sizeof(float) * N);
                memcpy(ref_g, gv, sizeof(float) * N);
                for (int i = 0; i < N; i++) {
                    double v = data[i], want, dwant;
                    if (mode == 0) {
                        double cdf = 0.5 * (1 + erf(v * M_SQRT1_2));
                        want = v * cdf;
                        dwant = cdf + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
                    } else {
                        double in = sqrt(2 / M_PI) * (v + 0.044715 * v * v * v), t = tanh(in);
                        want = 0.5 * v * (1 + t);
                        dwant = 0.5 * (1 + t) +
                                0.5 * v * (1 - t * t) * sqrt(2 / M_PI) * (1 + 3 * 0.044715 * v * v);
                    }
                    dwant *= 2 * want;
                    cr_assert(fabs(yv[i] - want) <= 1e-6 + 1e-6 * fabs(want),
                              "gelu(%.9g) = %.9g, want %.9g", data[i], yv[i], want);
                    cr_assert(fabs(gv[i] - dwant) <= 1e-5 + 1e-5 * fabs(dwant),
                              "gelu'(%.9g) gives %.9g, want %.9g", data[i], gv[i], dwant);
                }
            } else {
                cr_assert(memcmp(ref_y, yv, sizeof(float) * N) == 0, "values, %d threads", threads);
                cr_assert(memcmp(ref_g, gv, sizeof(float) * N) == 0, "grad, %d threads", threads);
            }
            kn_scope_end();
        }
        free(ref_y);
        free(ref_g);
    }
    kn_set_num_threads(threads_before);
    free(data);
}

/* GELU of x[i] alone must not depend on its neighbours: the exact form skips erf's tail
 * for blocks whose |x / sqrt 2| are all below 1, and strided operands and partial
 * vectors go through a buffer. Each element computed alone (a block of one), every
 * operand strided (the gradient's as a broadcast scalar too), and a contiguous run give
 * the same bits. */
Test(erf, gelu_same_bits_for_any_strides_and_neighbours)
{
    enum { N = 1000, SX = 3, SO = 2 };
    static float x[N], xs[N * SX], ref[N], one[N], got[N * SO], alone;
    for (int i = 0; i < N; i++) {
        /* the first 300 small (one block of 256 without erf's tail), then mixed */
        x[i] = i < 300 ? -1.3f + 2.6f * (float)i / 300.f : -7.f + 14.f * (float)((i * 37) % N) / N;
        xs[i * SX] = x[i];
        one[i] = 1.f;
    }
    float g1 = 1.f;
    for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
        for (int backward = 0; backward < 2; backward++) {
            if (backward)
                kn_cpu_gelu_backward(ref, 1, one, 1, x, 1, N, tanh_approx);
            else
                kn_cpu_gelu(ref, 1, x, 1, N, tanh_approx);
            memset(got, 0, sizeof got);
            if (backward)
                kn_cpu_gelu_backward(got, SO, &g1, 0, xs, SX, N, tanh_approx);
            else
                kn_cpu_gelu(got, SO, xs, SX, N, tanh_approx);
            for (int i = 0; i < N; i++) {
                if (backward)
                    kn_cpu_gelu_backward(&alone, 1, one, 1, x + i, 1, 1, tanh_approx);
                else
                    kn_cpu_gelu(&alone, 1, x + i, 1, 1, tanh_approx);
                cr_assert(memcmp(&alone, ref + i, 4) == 0 && memcmp(got + i * SO, ref + i, 4) == 0,
                          "%s %s at x = %.9g: contiguous %.9g, alone %.9g, strided %.9g",
                          tanh_approx ? "tanh" : "exact", backward ? "grad" : "value", x[i], ref[i],
                          alone, got[i * SO]);
            }
        }
    }
}

/* The tanh form as x / (1 + e^-2y): no cancellation in 1 + tanh(y) for negative x, so
 * the values keep their relative precision down to the smallest normal floats (libm's
 * tanhf form, as PyTorch 1.13, gives 0 from x = -5.06 down, and -2.98e-7 for the true
 * -2.29e-7 at x = -5). */
Test(erf, gelu_tanh_relative_error_against_double)
{
    enum { N = 480001 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) x[i] = -12.f + 24.f * (float)i / (float)(N - 1);
    kn_cpu_gelu(y, 1, x, 1, N, true);
    for (int i = 0; i < N; i++) {
        double v = x[i], in = sqrt(2 / M_PI) * (v + 0.044715 * v * v * v);
        double want = v / (1 + exp(-2 * in));
        if (fabs(want) < 1e-30) continue; /* near or below the denormals */
        /* the error of exp(-2y) grows with |y| (the argument's own rounding) */
        cr_assert(fabs(y[i] - want) <= 2e-5 * fabs(want), "gelu_tanh(%.9g) = %.9g, want %.9g", x[i],
                  y[i], want);
    }
    free(x);
    free(y);
}

/* The exact gradient Phi(x) + x phi(x) against double over [-12, 12]: within 2e-7
 * absolute everywhere (1.36e-7 measured), and for x in [-5.5, -1.5], where Phi's tail is
 * exp(-x^2 / 2) R(|z|) / 2, within 4e-3 relative (1.4e-3 measured). The earlier form
 * 0.5 (1 + erf) lost Phi there to the rounding of erf near -1 (1.9e-2 at x = -5.5);
 * PyTorch 1.13's has the same loss. */
Test(erf, gelu_exact_gradient_against_double)
{
    enum { N = 480001 };
    float *x = malloc(sizeof(float) * N), *g = malloc(sizeof(float) * N);
    float *one = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) {
        x[i] = -12.f + 24.f * (float)i / (float)(N - 1);
        one[i] = 1.f;
    }
    kn_cpu_gelu_backward(g, 1, one, 1, x, 1, N, false);
    for (int i = 0; i < N; i++) {
        double v = x[i];
        double want = 0.5 * erfc(-v * M_SQRT1_2) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
        double err = fabs(g[i] - want);
        cr_assert(err <= 2e-7, "gelu'(%.9g) = %.9g, want %.9g", x[i], g[i], want);
        if (v >= -5.5 && v <= -1.5)
            cr_assert(err <= 4e-3 * fabs(want), "gelu'(%.9g) = %.9g, want %.9g (relative)", x[i],
                      g[i], want);
    }
    free(x);
    free(g);
    free(one);
}

/* Infinities, NaN, huge values and signed zero give what PyTorch 1.13 gives (values and
 * gradients for a gradient of 1): gelu(-inf) is NaN (-inf * 0), the exact gradient at
 * +-inf is NaN (inf * 0 in x phi(x)), the tanh gradient at +-1e13 is 1 and 0 (the second
 * term is 0 once tanh rounds to +-1), at +-1e20 NaN (x^2 overflows); and the tanh form
 * keeps the sign of zero for negative x, as 0.5 x (1 + tanh) does. */
Test(erf, gelu_special_values_as_pytorch)
{
    enum { N = 9 };
    float x[N] = {INFINITY, -INFINITY, NAN, 1e13f, -1e13f, 1e20f, -1e20f, -0.f, -20.f};
    float one[N] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, y[N], g[N];
    for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
        kn_cpu_gelu(y, 1, x, 1, N, tanh_approx);
        kn_cpu_gelu_backward(g, 1, one, 1, x, 1, N, tanh_approx);
        cr_assert(y[0] == INFINITY && isnan(y[1]) && isnan(y[2]), "gelu(inf, -inf, nan)");
        cr_assert(y[3] == 1e13f && y[4] == 0.f && y[5] == 1e20f && y[6] == 0.f, "huge values");
        cr_assert(y[7] == 0.f && signbit(y[7]) && y[8] == 0.f, "gelu(-0) = -0, gelu(-20) = 0");
        cr_assert(isnan(g[0]) && isnan(g[1]) && isnan(g[2]), "gradients at inf, -inf, nan");
        cr_assert(g[3] == 1.f && g[4] == 0.f, "gradients at +-1e13: %g %g", g[3], g[4]);
        if (tanh_approx)
            cr_assert(isnan(g[5]) && isnan(g[6]), "tanh gradients at +-1e20 (x^2 overflows)");
        else
            cr_assert(g[5] == 1.f && g[6] == 0.f, "exact gradients at +-1e20");
        cr_assert(g[7] == 0.5f && g[8] == 0.f, "gradients at -0 and -20");
    }
    float y5;
    kn_cpu_gelu(&y5, 1, &(float){-5.f}, 1, 1, true);
    cr_assert(fabsf(y5 + 2.2918e-7f) <= 1e-11f, "gelu_tanh(-5) = %.9g, want -2.2918e-7", y5);
}

/*
 * gelu.c — GELU (exact and tanh) and its gradient, and the erf they use, written 16 lanes
 * at a time with GCC vector types (kn_cpu_vec.h) so that every target clone (AVX-512,
 * AVX2, SSE) runs vector code. The auto-vectoriser left the scalar forms' selects as
 * masked or scalar code (and the tanh form called libm's scalar tanhf).
 *
 * Strided operands and the last partial vector go through a 16-float buffer, so every
 * element is computed by the same vector code whatever the strides or the thread split:
 * the results are the same bits for any thread count.
 */
#include "kn_cpu.h"
#include "kn_cpu_vec.h"

#include <stdbool.h>
#include <stdint.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define BLOCK 256 /* elements whose |x| is checked before erf's tail is computed for them */
#define SQRT1_2 0.70710678118654752440f
#define SQRT2_PI 0.79788456080286535588f     /* sqrt(2/pi) */
#define INV_SQRT_2PI 0.39894228040143267794f /* 1/sqrt(2 pi) */
#define KAPPA 0.044715f

VINLINE vf vabs(vf x)
{
    return (vf)((vi)x & 0x7fffffff);
}
/* |r| with the sign of s. */
VINLINE vf vcopysign(vf r, vf s)
{
    return (vf)(((vi)r & INT32_MAX) | ((vi)s & INT32_MIN));
}

/* erf for |z| < 1: z + z * P(z^2), P a degree-6 minimax fit of erf(z)/z - 1 whose
 * constant term is 2/sqrt(pi) - 1, so that adding z exactly keeps the result near 1 ulp.
 * Returns the value for |z| (a), unsigned. */
VINLINE vf erf_head(vf a)
{
    vf t = a * a;
    vf p = splat(7.889070548e-05f);
    p = p * t - 8.020828245e-04f;
    p = p * t + 5.189533811e-03f;
    p = p * t - 2.685444430e-02f;
    p = p * t + 1.128360033e-01f;
    p = p * t - 3.761262596e-01f;
    p = p * t + 1.283791661e-01f;
    return a + a * p;
}
/* Horner's rule for the tails' degree-8 polynomials (coefficients from the highest
 * degree) in u = |z| - 1, |z| clamped to [1, 3.92]: past 3.92 erf rounds to 1, and the
 * clamp keeps huge or infinite |z| finite. NaN stays NaN through the selects. */
VINLINE vf tail_poly(vf a, const float c[9])
{
    vf u = vselect(a < 1.f, splat(1.f), a);
    u = vselect(u > 3.92f, splat(3.92f), u);
    u = u - 1.f;
    vf p = splat(c[0]);
    for (int i = 1; i < 9; i++) p = p * u + c[i];
    return p;
}
/* erf for |z| >= 1: 1 - exp(Q(|z| - 1)), Q a degree-8 fit of log(erfc) on [1, 3.95].
 * The clamp (+-inf gives +-1) bounds Q to [-17, -1.8]: 2^k is one normal float and exp
 * needs no range checks. Unsigned, as erf_head. */
VINLINE vf erf_tail(vf a)
{
    static const float Q[9] = {1.620104513e-06f,  -3.272914182e-05f, 3.189656127e-04f,
                               -2.050656127e-03f, 1.007201057e-02f,  -4.157068580e-02f,
                               -8.431069255e-01f, -2.638967276e+00f, -1.849605560e+00f};
    vf q = tail_poly(a, Q);
    vi k;
    vf p = vexp_parts(q, &k);
    return 1.f - p * (vf)((vu)(k + 127) << 23);
}
/* erf(z) (max error ~1.1 ulp against erf in double, tests/test_erf.c); odd, so
 * erf(-0) = -0. tail: some lane of z may have |z| >= 1 (or be NaN); when none has, the
 * tail's polynomial and exp are skipped (the lanes' values do not depend on it). */
VINLINE vf verf(vf z, bool tail)
{
    vf a = vabs(z);
    vf r = erf_head(a);
    if (tail) r = vselect(a < 1.f, r, erf_tail(a));
    return vcopysign(r, z);
}

/* Whether some lane of x[0..n) (n <= BLOCK, a multiple of W unless it is the last
 * block) has |x * SQRT1_2| >= 1 or is NaN: one horizontal test per block, not per
 * vector. */
VINLINE bool needs_tail(const float *x, int64_t sx, int64_t n)
{
    vi any = {0};
    int64_t i = 0;
    if (sx == 1)
        for (; i + W <= n; i += W) any |= ~(vabs(load(x + i) * SQRT1_2) < 1.f);
    int hit = 0;
    for (int k = 0; k < W; k++) hit |= any[k];
    for (; i < n && !hit; i++) hit = !(fabsf(x[i * sx] * SQRT1_2) < 1.f);
    return hit;
}

/* ---- the element functions, 16 lanes ----------------------------------------------- */

/* 0.5 x (1 + erf(x / sqrt 2)) */
VINLINE vf gelu_exact(vf x, bool tail)
{
    return 0.5f * x * (1.f + verf(x * SQRT1_2, tail));
}
/* erfc(a) exp(a^2) for a = |z| >= 1: R(a - 1), R a degree-8 minimax fit on [1, 3.92]
 * weighted for the absolute error of erfc (9.8e-9 in float arithmetic, 0.16 ulp of 1).
 * a is clamped as in erf_tail (tail_poly). */
VINLINE vf erfc_scaled_tail(vf a)
{
    static const float R[9] = {1.068430283e-04f,  -1.057054382e-03f, 4.911279306e-03f,
                               -1.511014439e-02f, 3.687497228e-02f,  -7.905334234e-02f,
                               1.543505490e-01f,  -2.732110620e-01f, 4.275835752e-01f};
    return tail_poly(a, R);
}
/* d/dx: Phi(x) + x phi(x). With z = x / sqrt 2, exp(-z^2) is exp(-x^2 / 2), the
 * Gaussian's exp: for |z| >= 1, Phi = 1 - erfc(|z|) / 2 (x > 0) or erfc(|z|) / 2 (x < 0)
 * with erfc(|z|) = exp(-x^2 / 2) R(|z|), so the tail costs one polynomial and no second
 * exp. The head (|z| < 1) is erf's as in the forward. */
VINLINE vf gelu_exact_grad(vf x, bool tail)
{
    vf e = vexp(-0.5f * x * x);
    vf a = vabs(x * SQRT1_2);
    vf cdf = 0.5f * (1.f + vcopysign(erf_head(a), x));
    if (tail) {
        vf half_erfc = 0.5f * e * erfc_scaled_tail(a);
        vf cdf_tail = vselect(x < 0.f, half_erfc, 1.f - half_erfc);
        cdf = vselect(a < 1.f, cdf, cdf_tail);
    }
    return cdf + x * (e * INV_SQRT_2PI);
}

/* The tanh form 0.5 x (1 + tanh(y)), y = sqrt(2/pi) (x + 0.044715 x^3), as x s with
 * s = (1 + tanh y) / 2 = 1 / (1 + e^-2y). From m = e^-2|y| <= 1 (no overflow):
 * s = 1 / (1 + m) for y >= 0 and m / (1 + m) below, and 1 - tanh^2 y = 4 m / (1 + m)^2.
 * No cancellation in 1 + tanh for negative y, where libm's tanhf form lost digits. */
typedef struct tanh_parts {
    vf s, m, inv; /* inv = 1 / (1 + m) */
} tanh_parts;
VINLINE tanh_parts gelu_tanh_parts(vf x)
{
    vf y = SQRT2_PI * (x + KAPPA * x * x * x);
    tanh_parts t;
    t.m = vexp(-2.f * vabs(y));
    t.inv = 1.f / (1.f + t.m);
    t.s = vselect(y < 0.f, t.m * t.inv, t.inv);
    return t;
}
VINLINE vf gelu_tanh(vf x)
{
    return x * gelu_tanh_parts(x).s;
}
/* d/dx: 0.5 (1 + tanh y) + 0.5 x (1 - tanh^2 y) y', in torch's order (the product with y'
 * last: where tanh y rounds to +-1 the second term is 0 unless y' is infinite). */
VINLINE vf gelu_tanh_grad(vf x)
{
    tanh_parts t = gelu_tanh_parts(x);
    vf inner_d = SQRT2_PI * (1.f + 3.f * KAPPA * x * x);
    return t.s + (x * (2.f * t.m * t.inv * t.inv)) * inner_d;
}

/* ---- the loops ---------------------------------------------------------------------- */

/* Lanes [0, m) of a strided operand (the others 0), or a plain load. */
VINLINE vf gather(const float *p, int64_t stride, int64_t m)
{
    if (stride == 1 && m == W) return load(p);
    float buf[W] = {0};
    for (int64_t k = 0; k < m; k++) buf[k] = p[k * stride];
    return load(buf);
}
VINLINE void scatter(float *p, int64_t stride, int64_t m, vf v)
{
    if (stride == 1 && m == W) {
        store(p, v);
        return;
    }
    float buf[W];
    store(buf, v);
    for (int64_t k = 0; k < m; k++) p[k * stride] = buf[k];
}

CLONES void kn_cpu_gelu(float *out, int64_t so, const float *x, int64_t sx, int64_t n,
                        bool tanh_approx)
{
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t bn = n - b < BLOCK ? n - b : BLOCK;
        bool tail = !tanh_approx && needs_tail(x + b * sx, sx, bn);
        for (int64_t i = b; i < b + bn; i += W) {
            int64_t m = b + bn - i < W ? b + bn - i : W;
            vf v = gather(x + i * sx, sx, m);
            scatter(out + i * so, so, m, tanh_approx ? gelu_tanh(v) : gelu_exact(v, tail));
        }
    }
}

CLONES void kn_cpu_gelu_backward(float *out, int64_t so, const float *grad, int64_t sg,
                                 const float *x, int64_t sx, int64_t n, bool tanh_approx)
{
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t bn = n - b < BLOCK ? n - b : BLOCK;
        bool tail = !tanh_approx && needs_tail(x + b * sx, sx, bn);
        for (int64_t i = b; i < b + bn; i += W) {
            int64_t m = b + bn - i < W ? b + bn - i : W;
            vf v = gather(x + i * sx, sx, m), g = gather(grad + i * sg, sg, m);
            vf d = tanh_approx ? gelu_tanh_grad(v) : gelu_exact_grad(v, tail);
            scatter(out + i * so, so, m, g * d);
        }
    }
}

CLONES void kn_cpu_erff_n(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += W) {
        int64_t m = n - i < W ? n - i : W;
        scatter(y + i, 1, m, verf(gather(x + i, 1, m), true));
    }
}

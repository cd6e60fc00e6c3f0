/*
 * kn_cpu_vec.h — 16-float vectors in GCC's vector extensions, for the kernels whose
 * loops the auto-vectoriser leaves scalar (reductions without -ffast-math, selects).
 * Each target clone (target_clones in the .c files) compiles them to its own
 * instructions: one AVX-512 register, two AVX2 ones, four SSE ones by default.
 * Include from the CPU kernels (kernels/cpu) only.
 */
#ifndef KN_CPU_VEC_H
#define KN_CPU_VEC_H

#include <stdint.h>
#include <string.h>

#include "kn_cpu.h" /* exp's steps, shared with the scalar form */

#define W 16
/* The helpers taking and returning vectors are always inlined, so no call ever crosses
 * the ABI that -Wpsabi warns about. */
#pragma GCC diagnostic ignored "-Wpsabi"
#define VINLINE static inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

VINLINE vf load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
VINLINE void store(float *p, vf v)
{
    memcpy(p, &v, sizeof v);
}
VINLINE vf splat(float x)
{
    return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
VINLINE vf vselect(vi mask, vf a, vf b)
{
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}
/* Lanes added in a fixed order (0, 1, ..., 15): the same bits on every target. */
VINLINE float hsum(vf v)
{
    float s = 0.f;
    for (int k = 0; k < W; k++) s += v[k];
    return s;
}

/* kn_cpu_expf_inline (kn_cpu.h) written with GCC vector types, 16 lanes at a time, for
 * the loops the compiler does not vectorise by itself; same polynomial and results.
 * vexp_parts is its core for x already in range: exp(x) = p * 2^k, k returned apart so
 * callers whose x is bounded scale by 2^k in one step (kernels/cpu/gelu.c). */
VINLINE vf vexp_parts(vf x, vi *k_out)
{
    vf k = KN_CPU_EXP_ROUND(x);
    vf r = KN_CPU_EXP_REMAINDER(x, k);
    vf p;
    KN_CPU_EXP_POLY(p, r);
    *k_out = __builtin_convertvector(k, vi);
    return p;
}
VINLINE vf vexp(vf x)
{
    vi under = x < -103.9f;
    x = vselect(x > 88.7f, splat(88.7f), x);
    x = vselect(under, splat(-103.9f), x);
    vi ki;
    vf p = vexp_parts(x, &ki);
    /* 2^k in two halves so k down to -150 stays representable; unsigned shifts because
     * a NaN gives a garbage k (p is NaN then anyway) */
    vi k1 = ki >> 1, k2 = ki - k1;
    vf s1 = (vf)((vu)(k1 + 127) << 23), s2 = (vf)((vu)(k2 + 127) << 23);
    return vselect(under, splat(0.f), p * s1 * s2);
}

#endif

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

#endif

/*
 * kn_cpu.h — raw CPU compute over buffers: no tensors, no autograd, no scopes.
 * The thread pool, the strided elementwise iterator and the elementwise kernels live
 * here; other kernel families have their own headers beside this one.
 */
#ifndef KN_CPU_H
#define KN_CPU_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kn_ops.h"

/* ---- the scheduler (parallel.c) ------------------------------------------------------ */
typedef void (*kn_cpu_range_fn)(void *context, int64_t begin, int64_t end);
/* Runs fn over [0, n) split in contiguous chunks of at least grain elements, on the
 * calling thread and as many of the pool's workers as its share of the cores allows
 * (see parallel.c). Runs inline (one call fn(ctx,0,n)) when n < 2 * grain, when the
 * share is one thread, or when called from inside a region; a region of only a few
 * grains wakes no sleeping worker (only workers already awake may help). How [0, n) is
 * cut depends on the load: fn's results must not. */
void kn_cpu_parallel_for(int64_t n, int64_t grain, kn_cpu_range_fn fn, void *context);
/* The cores the engine uses, all callers together; <= 0: all cores (or KN_NUM_THREADS). */
void kn_cpu_set_num_threads(int n);
int kn_cpu_get_num_threads(void);
/* The most threads the calling thread's regions use (0: an equal share of
 * kn_cpu_get_num_threads among the threads running regions at the time). Per thread. */
void kn_cpu_set_thread_share(int n);
int kn_cpu_get_thread_share(void);
/* Threads a region started now by the calling thread would get (1 inside a region). */
int kn_cpu_current_share(void);
/* What the scheduler has done since the process started, all callers together (each
 * figure read on its own, not one snapshot): to see how often regions get help and how
 * many futex wake-ups they cost (bench_layers prints them; tests check them). */
typedef struct kn_cpu_pool_counts {
    uint64_t regions; /* top-level regions run (nested and slotless ones not counted) */
    uint64_t helped;  /* of them, regions in which a worker ran a part */
    uint64_t wakes;   /* sleeping workers woken with a FUTEX_WAKE */
} kn_cpu_pool_counts;
void kn_cpu_pool_counts_get(kn_cpu_pool_counts *out);
/* Elements of simple elementwise work under which ops stay single-threaded. */
#define KN_CPU_GRAIN_ELEMENTWISE 32768

/* ---- elementwise (the op enums and kn_cpu_operand are in ../kn_ops.h) --------- */
/* out = op(a, b) over shape; all float32. Parallel above the grain. */
void kn_cpu_binary(kn_binary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                   kn_cpu_operand a, kn_cpu_operand b, float alpha, float beta);
/* out = op(a) over shape; all float32 (a unused for FILL). */
void kn_cpu_unary(kn_unary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                  kn_cpu_operand a, float alpha, float beta);
/* out = cond ? a : b (cond float32 or int64 per cond_is_int64). */
void kn_cpu_where(const int64_t *shape, int ndim, kn_cpu_operand out, kn_cpu_operand cond,
                  bool cond_is_int64, kn_cpu_operand a, kn_cpu_operand b);
/* Strided copy of elem_size-byte elements (any dtype). */
void kn_cpu_copy(const int64_t *shape, int ndim, size_t elem_size, kn_cpu_operand out,
                 kn_cpu_operand in);
/* exp's steps, written once for float and for GCC vectors (kn_cpu_vec.h's vexp_parts),
 * so the scalar and vector forms stay the same arithmetic: k = round(x / ln2), the
 * remainder r = x - k ln2 in two parts, and the degree-7 polynomial of r. */
#define KN_CPU_EXP_ROUND(x) (((x)*1.44269504088896341f + 12582912.f) - 12582912.f)
#define KN_CPU_EXP_REMAINDER(x, k) (((x) - (k)*0.693145751953125f) - (k)*1.428606765330187045e-06f)
#define KN_CPU_EXP_POLY(p, r)                                                                      \
    do {                                                                                           \
        (p) = 1.f / 5040.f * (r) + 1.f / 720.f;                                                    \
        (p) = (p) * (r) + 1.f / 120.f;                                                             \
        (p) = (p) * (r) + 1.f / 24.f;                                                              \
        (p) = (p) * (r) + 1.f / 6.f;                                                               \
        (p) = (p) * (r) + 0.5f;                                                                    \
        (p) = (p) * (r) + 1.f;                                                                     \
        (p) = (p) * (r) + 1.f;                                                                     \
    } while (0)

/* Vectorisable expf used by exp and softmax (max relative error ~2 ulp).
 * Range reduction to [-ln2/2, ln2/2] and a degree-7 polynomial, branch-free so loops
 * over it vectorise (rounding by the 1.5*2^23 trick, not a libm call); saturates like
 * expf (0 below -103.9, as masked logits need) and propagates NaN. */
static inline float kn_cpu_expf_inline(float x)
{
    bool underflow = x < -103.9f; /* exp is below the smallest denormal: exactly 0 */
    x = x > 88.7f ? 88.7f : x;
    x = underflow ? -103.9f : x;
    float k = KN_CPU_EXP_ROUND(x);
    float r = KN_CPU_EXP_REMAINDER(x, k);
    float p;
    KN_CPU_EXP_POLY(p, r);
    /* 2^k in two halves so k down to -150 stays representable */
    int ki = k == k ? (int)k : 0;
    int k1 = ki / 2, k2 = ki - k1;
    union {
        float f;
        uint32_t i;
    } s1 = {.i = (uint32_t)(k1 + 127) << 23}, s2 = {.i = (uint32_t)(k2 + 127) << 23};
    return underflow ? 0.f : p * s1.f * s2.f;
}
float kn_cpu_expf(float x);

/* GELU over n floats (gelu.c): out[i * so] = gelu(x[i * sx]), strides in floats, exact
 * (0.5 x (1 + erf(x / sqrt 2))) or the tanh form. Vector code for every element, so the
 * same bits for any strides and any split of [0, n). */
void kn_cpu_gelu(float *out, int64_t so, const float *x, int64_t sx, int64_t n, bool tanh_approx);
/* out[i * so] = grad[i * sg] * gelu'(x[i * sx]), the same forms. */
void kn_cpu_gelu_backward(float *out, int64_t so, const float *grad, int64_t sg, const float *x,
                          int64_t sx, int64_t n, bool tanh_approx);
/* y[i] = erf(x[i]) for i < n: the erf exact GELU uses (gelu.c; max error ~1.1 ulp against
 * erf in double over all floats, tests/test_erf.c sweeps them). Odd, NaN gives NaN. */
void kn_cpu_erff_n(const float *x, float *y, int64_t n);

#endif

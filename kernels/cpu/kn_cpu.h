/*
 * kn_cpu.h — raw CPU compute over buffers: no tensors, no autograd, no scopes.
 * The thread pool, the strided elementwise iterator and the elementwise kernels live
 * here; other kernel families have their own headers beside this one.
 */
#ifndef KN_CPU_H
#define KN_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KN_CPU_MAX_DIMS 8

/* ---- thread pool ----------------------------------------------------------------- */
typedef void (*kn_cpu_range_fn)(void *context, int64_t begin, int64_t end);
/* Runs fn over [0, n) split in contiguous chunks. Runs inline (one call fn(ctx,0,n))
 * when n < 2 * grain, when one thread is configured, or when called from a worker. */
void kn_cpu_parallel_for(int64_t n, int64_t grain, kn_cpu_range_fn fn, void *context);
void kn_cpu_set_num_threads(int n);
int kn_cpu_get_num_threads(void);
/* Elements of simple elementwise work under which ops stay single-threaded. */
#define KN_CPU_GRAIN_ELEMENTWISE 32768

/* ---- elementwise ----------------------------------------------------------------- */
typedef enum {
    KN_BINARY_ADD,
    KN_BINARY_SUB,
    KN_BINARY_MUL,
    KN_BINARY_DIV,
    KN_BINARY_EQ, /* 1.0f / 0.0f */
    KN_BINARY_GT,
    KN_BINARY_LT,
    KN_BINARY_ADD_SCALED,          /* a + alpha * b */
    KN_BINARY_RELU_BACKWARD,       /* a = grad, b = input: grad * (input > 0) */
    KN_BINARY_LEAKY_RELU_BACKWARD, /* alpha = slope */
    KN_BINARY_TANH_BACKWARD,       /* b = output: grad * (1 - y*y) */
    KN_BINARY_SIGMOID_BACKWARD,    /* b = output: grad * y * (1 - y) */
    KN_BINARY_GELU_BACKWARD,       /* b = input */
    KN_BINARY_GELU_TANH_BACKWARD,  /* b = input */
    KN_BINARY_POW_BACKWARD,        /* b = input: grad * alpha * x^(alpha-1) */
    KN_BINARY_CLAMP_BACKWARD,      /* b = input: grad where lo <= x <= hi (alpha, beta) */
    KN_BINARY_COUNT
} kn_cpu_binary_op;

typedef enum {
    KN_UNARY_COPY,
    KN_UNARY_NEG,
    KN_UNARY_EXP,
    KN_UNARY_LOG,
    KN_UNARY_SQRT,
    KN_UNARY_ABS,
    KN_UNARY_SIGN,
    KN_UNARY_RELU,
    KN_UNARY_LEAKY_RELU, /* alpha = slope */
    KN_UNARY_TANH,
    KN_UNARY_SIGMOID,
    KN_UNARY_GELU,
    KN_UNARY_GELU_TANH,
    KN_UNARY_POW,        /* alpha = exponent */
    KN_UNARY_CLAMP,      /* alpha = lo, beta = hi */
    KN_UNARY_ADD_SCALAR, /* alpha */
    KN_UNARY_MUL_SCALAR, /* alpha */
    KN_UNARY_FILL,       /* alpha */
    KN_UNARY_COUNT
} kn_cpu_unary_op;

/* One operand of the iterator: base pointer at the first element and element strides
 * already broadcast to the iteration shape (0 on broadcast dims). */
typedef struct kn_cpu_operand {
    void *data;
    int64_t strides[KN_CPU_MAX_DIMS];
} kn_cpu_operand;

/* out = op(a, b) over shape; all float32. Parallel above the grain. */
void kn_cpu_binary(kn_cpu_binary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                   kn_cpu_operand a, kn_cpu_operand b, float alpha, float beta);
/* out = op(a) over shape; all float32 (a unused for FILL). */
void kn_cpu_unary(kn_cpu_unary_op op, const int64_t *shape, int ndim, kn_cpu_operand out,
                  kn_cpu_operand a, float alpha, float beta);
/* out = cond ? a : b (cond float32 or int64 per cond_is_int64). */
void kn_cpu_where(const int64_t *shape, int ndim, kn_cpu_operand out, kn_cpu_operand cond,
                  bool cond_is_int64, kn_cpu_operand a, kn_cpu_operand b);
/* Strided copy of elem_size-byte elements (any dtype). */
void kn_cpu_copy(const int64_t *shape, int ndim, size_t elem_size, kn_cpu_operand out,
                 kn_cpu_operand in);
/* Vectorisable expf used by exp and softmax (max relative error ~2 ulp).
 * Range reduction to [-ln2/2, ln2/2] and a degree-7 polynomial, branch-free so loops
 * over it vectorise (rounding by the 1.5*2^23 trick, not a libm call); saturates like
 * expf (0 below -103.9, as masked logits need) and propagates NaN. */
static inline float kn_cpu_expf_inline(float x)
{
    bool underflow = x < -103.9f; /* exp is below the smallest denormal: exactly 0 */
    x = x > 88.7f ? 88.7f : x;
    x = underflow ? -103.9f : x;
    float k = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    float r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.f / 5040.f;
    p = p * r + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
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

#endif

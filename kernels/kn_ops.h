/*
 * kn_ops.h — the elementwise op codes and the strided operand that both kernel back
 * ends take: kernels/cpu (kn_cpu.h) and the CUDA module (kernels/cuda), so the engine
 * hands the same description of an op to either. A new elementwise op adds its code
 * here and its formula to both back ends (docs/adding-a-layer.md). Plain C, no inline code, so
 * nvcc includes it as it is.
 */
#ifndef KN_OPS_H
#define KN_OPS_H

#include <stdint.h>

#define KN_CPU_MAX_DIMS 8

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
    KN_BINARY_SILU_BACKWARD,       /* b = input: grad * s * (1 + x * (1 - s)), s = sigmoid(x) */
    KN_BINARY_POW_BACKWARD,        /* b = input: grad * alpha * x^(alpha-1) */
    KN_BINARY_CLAMP_BACKWARD,      /* b = input: grad where lo <= x <= hi (alpha, beta) */
    /* ---- sequence layers (issue 12) ---- */
    KN_BINARY_ELU_BACKWARD, /* b = input: grad if x > 0, else grad * alpha * exp(x) */
    KN_BINARY_COUNT
} kn_binary_op;

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
    KN_UNARY_SILU,       /* x * sigmoid(x) */
    KN_UNARY_POW,        /* alpha = exponent */
    KN_UNARY_CLAMP,      /* alpha = lo, beta = hi */
    KN_UNARY_ADD_SCALAR, /* alpha */
    KN_UNARY_MUL_SCALAR, /* alpha */
    KN_UNARY_FILL,       /* alpha */
    /* ---- sequence layers (issue 12) ---- */
    KN_UNARY_ELU, /* x if x > 0, else alpha * (exp(x) - 1) */
    KN_UNARY_COUNT
} kn_unary_op;

/* One operand of the iterator: base pointer at the first element and element strides
 * already broadcast to the iteration shape (0 on broadcast dims). */
typedef struct kn_cpu_operand {
    void *data;
    int64_t strides[KN_CPU_MAX_DIMS];
} kn_cpu_operand;

#endif

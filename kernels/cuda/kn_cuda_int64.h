/*
 * kn_cuda_int64.h — the CUDA module's table kn_cuda_int64_v1: int64 kernels, the twins of
 * kernels/cpu/kn_cpu_int64.h (dtype conversion between float32 and int64, the int64
 * binary ops). Same contract as kn_cuda_backend.h: device pointers, work in order on the
 * device's stream, NULL on success or a message naming the op. Buffers are contiguous.
 */
#ifndef KN_CUDA_INT64_H
#define KN_CUDA_INT64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kn_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_INT64_ABI 1
#define KN_CUDA_INT64_SYMBOL "kn_cuda_int64_v1"

typedef struct kn_cuda_int64 {
    int abi;     /* KN_CUDA_INT64_ABI */
    size_t size; /* sizeof(kn_cuda_int64) as the module was built */

    /* out[i] = in[i] converted, n elements: to_int64 true reads float32 and writes int64
     * (truncated toward zero; NaN gives INT64_MIN, beyond the range saturates), false
     * reads int64 and writes float32. */
    const char *(*cast)(int device, bool to_int64, int64_t n, void *out, const void *in);
    /* As kn_cpu_binary_i64: ADD, SUB, MUL write int64 (wrapping), EQ, GT, LT float32 0/1. */
    const char *(*binary)(int device, kn_binary_op op, int64_t n, void *out, const int64_t *a,
                          const int64_t *b);
} kn_cuda_int64;

typedef const kn_cuda_int64 *(*kn_cuda_int64_fn)(void);

const kn_cuda_int64 *kn_cuda_int64_v1(void);

#ifdef __cplusplus
}
#endif
#endif

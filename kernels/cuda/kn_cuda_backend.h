/*
 * kn_cuda_backend.h — the contract between the engine (core/tensor/device.c) and the CUDA
 * module libkiln_cuda.so, which the engine loads at run time with dlopen so that the
 * same binaries run on machines without a GPU or a CUDA driver.
 *
 * The module exports one C symbol, kn_cuda_backend_v1, returning a table of function
 * pointers. Pointers handed to the table are device pointers unless named host.
 * Errors are values: every function that can fail returns NULL on success and
 * otherwise a message naming the operation and the CUDA error, in a thread-local
 * buffer of the module that stays valid until the next call on the same thread.
 * A message starting with "out of memory" means the allocation could not be served.
 *
 * Work runs in order on one stream per device; only synchronize and copy_d2h wait for
 * it. Freed blocks go back to the module's cache and may be reused by later work on
 * the same stream at once (stream order makes that safe).
 */
#ifndef KN_CUDA_BACKEND_H
#define KN_CUDA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kn_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_BACKEND_ABI 2 /* 2: sgemm takes allow_tf32 */
#define KN_CUDA_BACKEND_SYMBOL "kn_cuda_backend_v1"

typedef struct kn_cuda_alloc_stats {
    uint64_t device_allocs; /* calls that reached cudaMalloc */
    uint64_t cache_hits;    /* allocations served from the cache */
    uint64_t bytes_in_use;
    uint64_t bytes_cached;
} kn_cuda_alloc_stats;

typedef struct kn_cuda_backend {
    int abi;     /* KN_CUDA_BACKEND_ABI */
    size_t size; /* sizeof(kn_cuda_backend) as the module was built */

    /* ---- devices ---- */
    /* Counts the devices; an error when the driver is missing or too old. */
    const char *(*device_count)(int *count);
    const char *(*device_name)(int device, char *buf, size_t size);
    const char *(*synchronize)(int device);

    /* ---- caching allocator (size classes; no cudaMalloc once warm) ---- */
    const char *(*alloc)(int device, size_t nbytes, void **out);
    void (*free)(int device, void *ptr, size_t nbytes); /* NULL-safe */
    const char *(*empty_cache)(int device);             /* cached blocks back to CUDA */
    void (*alloc_stats)(int device, kn_cuda_alloc_stats *out);

    /* ---- copies (asynchronous on the device's stream; d2h waits for the result) ---- */
    const char *(*copy_h2d)(int device, void *dst, const void *host_src, size_t nbytes);
    const char *(*copy_d2h)(int device, void *host_dst, const void *src, size_t nbytes);
    const char *(*copy_d2d)(int dst_device, void *dst, int src_device, const void *src,
                            size_t nbytes);

    /* ---- elementwise kernels: kn_cpu_binary / kn_cpu_unary / kn_cpu_copy semantics ----
     * Operands carry element strides already broadcast to shape (0 on broadcast dims);
     * ndim <= KN_CPU_MAX_DIMS. */
    const char *(*binary)(int device, kn_binary_op op, const int64_t *shape, int ndim,
                          kn_cpu_operand out, kn_cpu_operand a, kn_cpu_operand b, float alpha,
                          float beta);
    const char *(*unary)(int device, kn_unary_op op, const int64_t *shape, int ndim,
                         kn_cpu_operand out, kn_cpu_operand a, float alpha, float beta);
    /* Strided copy of elem_size-byte elements (1, 2, 4 or 8). */
    const char *(*copy)(int device, const int64_t *shape, int ndim, size_t elem_size,
                        kn_cpu_operand out, kn_cpu_operand in);
    /* out = value (elem_size bytes of *host_value) at every element. */
    const char *(*fill)(int device, const int64_t *shape, int ndim, size_t elem_size,
                        kn_cpu_operand out, const void *host_value);
    /* float32 sums: in has the iteration shape; out has stride 0 on the dims that are
     * summed away (out[i with those dims at 0] = sum over them). */
    const char *(*sum_to)(int device, const int64_t *shape, int ndim, kn_cpu_operand out,
                          kn_cpu_operand in);

    /* ---- row-major SGEMM through cuBLAS, batch of independent products ----
     * C_i = alpha * op(A_i) op(B_i) + beta * C_i, C_i m x n, A_i = a + i * stride_a, ...
     * trans_a: the m x k matrix is stored transposed (k x m, leading dimension lda).
     * allow_tf32: tensor cores may round the inputs to TF32 (else plain fp32). */
    const char *(*sgemm)(int device, bool allow_tf32, bool trans_a, bool trans_b, int64_t m,
                         int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                         int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b,
                         float beta, float *c, int64_t ldc, int64_t stride_c, int64_t batch);
} kn_cuda_backend;

typedef const kn_cuda_backend *(*kn_cuda_backend_fn)(void);

/* The module's one export. */
const kn_cuda_backend *kn_cuda_backend_v1(void);

#ifdef __cplusplus
}
#endif
#endif

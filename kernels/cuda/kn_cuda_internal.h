/*
 * kn_cuda_internal.h — what the CUDA module's own files share: per-device state (a
 * stream and a cuBLAS handle, made on first use) and the error buffer that every
 * backend function returns its message in.
 */
#ifndef KN_CUDA_INTERNAL_H
#define KN_CUDA_INTERNAL_H

#include "kn_cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

/* Formats a message into the thread-local error buffer and returns it. */
const char *kn_cuda_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* NULL when err is cudaSuccess, else "<op>: <CUDA error name>: <description>". */
const char *kn_cuda_check(cudaError_t err, const char *op);
/* Makes device current and hands out its stream (and cuBLAS handle when asked). */
const char *kn_cuda_enter(int device, const char *op, cudaStream_t *stream, cublasHandle_t *blas);

/* A grid-stride loop over [0, n): any grid size covers any n, and indices are 64-bit. */
#define GRID_STRIDE(i, n)                                                                          \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

/* Kernels (elementwise.cu; sum_to in sum_to.cu). */
const char *kn_cuda_binary(int device, kn_binary_op op, const int64_t *shape, int ndim,
                           kn_cpu_operand out, kn_cpu_operand a, kn_cpu_operand b, float alpha,
                           float beta);
const char *kn_cuda_unary(int device, kn_unary_op op, const int64_t *shape, int ndim,
                          kn_cpu_operand out, kn_cpu_operand a, float alpha, float beta);
const char *kn_cuda_copy(int device, const int64_t *shape, int ndim, size_t elem_size,
                         kn_cpu_operand out, kn_cpu_operand in);
const char *kn_cuda_fill(int device, const int64_t *shape, int ndim, size_t elem_size,
                         kn_cpu_operand out, const void *host_value);
const char *kn_cuda_sum_to(int device, const int64_t *shape, int ndim, kn_cpu_operand out,
                           kn_cpu_operand in);

#endif

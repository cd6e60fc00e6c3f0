/*
 * kn_cuda_blaslt.h — the CUDA module's table kn_cuda_blaslt_v1: products with a fused
 * epilogue through cublasLt, for linear layers (a bias added in the GEMM's epilogue
 * in the forward, the bias gradient reduced in the weight gradient's GEMM in the
 * backward). Same contract as kn_cuda_backend.h: device pointers, work in order on the
 * device's stream, NULL on success or a message naming the op.
 *
 * Matrices are row-major as in kn_cuda_backend's sgemm: op(A) is m x k (stored k x m
 * when trans_a, leading dimension lda), op(B) is k x n, C is m x n with leading
 * dimension ldc. cublasLt has no algorithm for some configurations (odd alignments,
 * empty sizes, old GPUs): then a function returns NULL with *done false and has queued
 * nothing, and the caller computes the same thing another way.
 */
#ifndef KN_CUDA_BLASLT_H
#define KN_CUDA_BLASLT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_BLASLT_ABI 1
#define KN_CUDA_BLASLT_SYMBOL "kn_cuda_blaslt_v1"

typedef struct kn_cuda_blaslt {
    int abi;     /* KN_CUDA_BLASLT_ABI */
    size_t size; /* sizeof(kn_cuda_blaslt) as the module was built */

    /* C = op(A) op(B) + bias, bias[n] added to every row of C (CUBLASLT_EPILOGUE_BIAS).
     * allow_tf32: tensor cores may round the inputs to TF32. */
    const char *(*gemm_bias)(int device, bool allow_tf32, bool trans_a, bool trans_b, int64_t m,
                             int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                             int64_t ldb, const float *bias, float *c, int64_t ldc, bool *done);
    /* C = op(A) op(B) and bias_grad[i] = sum over p of op(A)[i, p] (length m, the sum
     * over the product's k dimension; CUBLASLT_EPILOGUE_BGRADB). Both overwritten. */
    const char *(*gemm_bgrad)(int device, bool allow_tf32, bool trans_a, bool trans_b, int64_t m,
                              int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                              int64_t ldb, float *c, int64_t ldc, float *bias_grad, bool *done);
} kn_cuda_blaslt;

typedef const kn_cuda_blaslt *(*kn_cuda_blaslt_fn)(void);

const kn_cuda_blaslt *kn_cuda_blaslt_v1(void);

#ifdef __cplusplus
}
#endif
#endif

/*
 * kn_cuda_train.h — the CUDA module's second table, kn_cuda_train_v1: the kernels of
 * training that are not elementwise (layer norm and batch norm forward and backward, the
 * fused optimizer steps, and the reductions of gradient clipping). core/tensor/device.c
 * resolves it next to kn_cuda_backend_v1; core/kn_cuda.h hands it to the ops.
 *
 * As in kn_cuda_backend.h, pointers are device pointers unless named host, work runs on
 * the device's stream, and every function returns NULL or a message naming the op (one
 * starting with "out of memory" when scratch memory could not be had).
 */
#ifndef KN_CUDA_TRAIN_H
#define KN_CUDA_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../cpu/kn_cpu_optim.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_TRAIN_ABI 1
#define KN_CUDA_TRAIN_SYMBOL "kn_cuda_train_v1"

/* A float32 vector with an element stride; ptr NULL when absent. */
typedef struct kn_cuda_fvec {
    float *ptr;
    int64_t stride;
} kn_cuda_fvec;

typedef struct kn_cuda_train {
    int abi;     /* KN_CUDA_TRAIN_ABI */
    size_t size; /* sizeof(kn_cuda_train) as the module was built */

    /* kn_cpu_layer_norm_forward / _backward semantics (contiguous rows x cols; weight
     * and bias contiguous or NULL; dx, dweight, dbias NULL when not wanted). */
    const char *(*layer_norm_forward)(int device, const float *x, const float *weight,
                                      const float *bias, float *y, float *mean, float *rstd,
                                      int64_t rows, int64_t cols, float eps);
    const char *(*layer_norm_backward)(int device, const float *dy, const float *x,
                                       const float *mean, const float *rstd, const float *weight,
                                       float *dx, float *dweight, float *dbias, int64_t rows,
                                       int64_t cols);
    /* Batch norm over contiguous x [n, c, s]: y, and the per-channel mean and rstd used
     * (batch statistics when training, the running ones otherwise); when training and
     * n*s > 0 the running statistics (if given) are updated as kn_batch_norm does. */
    const char *(*batch_norm_forward)(int device, const float *x, int64_t n, int64_t c, int64_t s,
                                      bool training, double momentum, double eps,
                                      kn_cuda_fvec running_mean, kn_cuda_fvec running_var,
                                      kn_cuda_fvec weight, kn_cuda_fvec bias, float *y, float *mean,
                                      float *rstd);
    const char *(*batch_norm_backward)(int device, const float *dy, const float *x,
                                       const float *mean, const float *rstd, kn_cuda_fvec weight,
                                       int64_t n, int64_t c, int64_t s, bool training, float *dx,
                                       float *dweight, float *dbias);

    /* kn_cpu_optim_sgd / _adam / _rmsprop on one parameter of n elements (device pointers
     * in *a, the struct itself on the host). */
    const char *(*optim_sgd)(int device, const kn_cpu_optim_args *a, int64_t n);
    const char *(*optim_adam)(int device, const kn_cpu_optim_args *a, int64_t n);
    const char *(*optim_rmsprop)(int device, const kn_cpu_optim_args *a, int64_t n);

    /* Sum of squares of n contiguous floats in double (waits for the result). */
    const char *(*sum_squares)(int device, const float *x, int64_t n, double *host_out);
    /* Whether all n contiguous floats are finite (waits for the result). */
    const char *(*all_finite)(int device, const float *x, int64_t n, bool *host_out);
} kn_cuda_train;

typedef const kn_cuda_train *(*kn_cuda_train_fn)(void);

const kn_cuda_train *kn_cuda_train_v1(void);

#ifdef __cplusplus
}
#endif
#endif

/*
 * kn_cuda_reduce.h — the CUDA module's second table: reductions, softmax and the fused
 * losses, exported as kn_cuda_reduce_v1 next to kn_cuda_backend_v1 and resolved by
 * core/tensor/device.c (core/kn_cuda.h hands it to the ops). Same conventions as
 * kn_cuda_backend.h: device pointers, work in order on the device's stream, NULL on
 * success or a message naming the op.
 *
 * Reductions see their input as a contiguous [outer, reduce, inner] block, exactly as
 * kernels/cpu/kn_cpu_reduce.h: element (o, r, i) at x[(o * reduce + r) * inner + i],
 * results for (o, i) at out[o * inner + i]. The class-index losses see their logits as
 * [N, C, S] with one target per (n, s), position i = n * S + s.
 */
#ifndef KN_CUDA_REDUCE_H
#define KN_CUDA_REDUCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_REDUCE_ABI 2
#define KN_CUDA_REDUCE_SYMBOL "kn_cuda_reduce_v1"

/* How a loss's upstream gradient reaches each element: g[i] * scale when dense, else
 * (float)(g[0] / divisor) (g a 0-d device tensor, divisor 1 for sum, count for mean). */
typedef struct kn_cuda_upstream {
    const float *g;
    bool dense;
    double divisor;
} kn_cuda_upstream;

typedef enum {
    KN_CUDA_LOSS_MSE = 0,
    KN_CUDA_LOSS_BCE = 1,
    KN_CUDA_LOSS_L1 = 2,
    KN_CUDA_LOSS_SMOOTH_L1 = 3,
    KN_CUDA_LOSS_HUBER = 4,
} kn_cuda_loss_kind;

/* What an elementwise loss needs besides its input and target: param is smooth_l1's
 * beta or huber's delta; bce's pos_weight (device, NULL: none) weighs the positive term of
 * element i by pos_weight[i % pos_weight_len] (it broadcasts over the last dim). */
typedef struct kn_cuda_pointwise_loss_args {
    kn_cuda_loss_kind kind;
    float param;
    const float *pos_weight;
    int64_t pos_weight_len;
} kn_cuda_pointwise_loss_args;

typedef struct kn_cuda_reduce {
    int abi;     /* KN_CUDA_REDUCE_ABI */
    size_t size; /* sizeof(kn_cuda_reduce) as the module was built */

    /* out = sum over r / divisor, or (var) sum of (x - mean)^2 / divisor; double totals.
     * reduce == 0 gives 0 / divisor (NaN / divisor for var). */
    const char *(*sum)(int device, const float *x, float *out, int64_t outer, int64_t reduce,
                       int64_t inner, double divisor, bool var);
    /* max (min) over r: NaN wins, first index on ties; values or indices may be NULL.
     * reduce must be > 0. */
    const char *(*max)(int device, const float *x, float *values, int64_t *indices, int64_t outer,
                       int64_t reduce, int64_t inner, bool is_min);
    /* gx = 0 except gx[(o * reduce + index[o, i]) * inner + i] = g[o * inner + i]. */
    const char *(*select_backward)(int device, const float *g, const int64_t *index, float *gx,
                                   int64_t outer, int64_t reduce, int64_t inner);
    /* max_all / min_all backward: g[0] shared evenly by every x equal to value[0] (every NaN
     * when it is NaN); scratch holds one int64. */
    const char *(*extreme_all_backward)(int device, const float *x, int64_t n, const float *value,
                                        const float *g, float *gx, int64_t *scratch);
    /* kn_cpu_softmax / kn_cpu_softmax_backward semantics. */
    const char *(*softmax)(int device, const float *x, float *y, int64_t outer, int64_t dim,
                           int64_t inner, bool log);
    const char *(*softmax_backward)(int device, const float *g, const float *y, float *gx,
                                    int64_t outer, int64_t dim, int64_t inner, bool log);

    /* Targets t[0..n): result[0] = how many are not ignore, result[1] = the position of
     * the first out of [0, c) (n when none); result is a device buffer of two int64. */
    const char *(*check_targets)(int device, const int64_t *t, int64_t n, int64_t c, int64_t ignore,
                                 int64_t *result);
    /* Cross entropy per position (loss, lse), as core/ops/ops_loss.c; weight (device [c],
     * NULL: none) are the class weights, weight_total their sum. */
    const char *(*cross_entropy)(int device, const float *x, const int64_t *t, const float *weight,
                                 float weight_total, float *loss, float *lse, int64_t n, int64_t c,
                                 int64_t s, int64_t ignore, float smoothing);
    const char *(*cross_entropy_backward)(int device, const float *x, const int64_t *t,
                                          const float *weight, float weight_total, const float *lse,
                                          float *dx, int64_t n, int64_t c, int64_t s,
                                          int64_t ignore, float smoothing, kn_cuda_upstream up);
    /* loss[i] = -w[t] lp[(i / s) * c * s + i % s + t[i] * s] (0 where ignored; w = 1 when
     * weight is NULL); lp contiguous. */
    const char *(*nll)(int device, const float *lp, const int64_t *t, const float *weight,
                       float *loss, int64_t n, int64_t c, int64_t s, int64_t ignore);
    const char *(*nll_backward)(int device, const int64_t *t, const float *weight, float *dx,
                                int64_t n, int64_t c, int64_t s, int64_t ignore,
                                kn_cuda_upstream up);
    /* mse, l1, smooth_l1, huber, bce-with-logits per element, and their gradients (dx, dt
     * may be NULL). */
    const char *(*pointwise_loss)(int device, kn_cuda_pointwise_loss_args args, const float *x,
                                  const float *t, float *out, int64_t n);
    const char *(*pointwise_loss_backward)(int device, kn_cuda_pointwise_loss_args args,
                                           const float *x, const float *t, float *dx, float *dt,
                                           int64_t n, kn_cuda_upstream up);
} kn_cuda_reduce;

typedef const kn_cuda_reduce *(*kn_cuda_reduce_fn)(void);

const kn_cuda_reduce *kn_cuda_reduce_v1(void);

#ifdef __cplusplus
}
#endif
#endif

/*
 * kn_cuda_reduce_internal.h — what reduce.cu and loss.cu share inside the CUDA module:
 * launch sizing, the launch check, and the entries of the kn_cuda_reduce table.
 */
#ifndef KN_CUDA_REDUCE_INTERNAL_H
#define KN_CUDA_REDUCE_INTERNAL_H

#include "kn_cuda_reduce.h"

/* Blocks for items at per_block items a block, at least 1, capped (loops grid-stride). */
unsigned kn_cuda_blocks_for(int64_t items, int per_block);
/* The launch error of the last kernel, naming op, or NULL. */
const char *kn_cuda_finish(const char *op);
/* Scratch for a reduction's partials: the table's own alloc (the caching allocator, or
 * the graph's pool while capturing). Freeing it as soon as the kernels that use it are
 * queued is safe: stream order keeps the next user of the block behind them. */
const char *kn_cuda_scratch_alloc(int device, size_t nbytes, void **out);
void kn_cuda_scratch_free(int device, void *ptr, size_t nbytes);

#ifdef __CUDACC__
#include <math.h>

/* ---- block and warp reductions (reduce.cu, elementwise.cu) ---- */

/* identity(): what a lane with nothing to contribute joins with (block_reduce's idle lanes). */
struct add_op {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
    template <typename T> __device__ static T identity() { return T(0); }
};
struct max_op { /* NaN-skipping, as the CPU's x > m ? x : m */
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
    template <typename T> __device__ static T identity() { return -INFINITY; }
};

template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

/* Every thread of the block gets the result; every thread must call it. The block's size
 * is a multiple of 32 (whole warps: the shuffles name every lane); shared holds 32. */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_reduce(v, op);
    __syncthreads(); /* shared may still be read from a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        /* lanes past the last warp hold the identity: shared[0] again would be counted
         * once per idle lane by a sum (8 warps of 256 threads: 25 times) */
        T w = lane < warps ? shared[lane] : Op::template identity<T>();
        w = warp_reduce(w, op);
        if (lane == 0) shared[0] = w;
    }
    __syncthreads();
    return shared[0];
}
#endif

const char *kn_cuda_reduce_sum(int device, const float *x, float *out, int64_t outer,
                               int64_t reduce, int64_t inner, double divisor, bool var);
const char *kn_cuda_reduce_max(int device, const float *x, float *values, int64_t *indices,
                               int64_t outer, int64_t reduce, int64_t inner, bool is_min);
const char *kn_cuda_reduce_select_backward(int device, const float *g, const int64_t *index,
                                           float *gx, int64_t outer, int64_t reduce, int64_t inner);
const char *kn_cuda_reduce_extreme_all_backward(int device, const float *x, int64_t n,
                                                const float *value, const float *g, float *gx,
                                                int64_t *scratch);
const char *kn_cuda_softmax(int device, const float *x, float *y, int64_t outer, int64_t dim,
                            int64_t inner, bool log);
const char *kn_cuda_softmax_backward(int device, const float *g, const float *y, float *gx,
                                     int64_t outer, int64_t dim, int64_t inner, bool log);

const char *kn_cuda_check_targets(int device, const int64_t *t, int64_t n, int64_t c,
                                  int64_t ignore, int64_t *result);
const char *kn_cuda_cross_entropy(int device, const float *x, const int64_t *t, const float *weight,
                                  float weight_total, float *loss, float *lse, int64_t n, int64_t c,
                                  int64_t s, int64_t ignore, float smoothing);
const char *kn_cuda_cross_entropy_backward(int device, const float *x, const int64_t *t,
                                           const float *weight, float weight_total,
                                           const float *lse, float *dx, int64_t n, int64_t c,
                                           int64_t s, int64_t ignore, float smoothing,
                                           kn_cuda_upstream up);
const char *kn_cuda_nll(int device, const float *lp, const int64_t *t, const float *weight,
                        float *loss, int64_t n, int64_t c, int64_t s, int64_t ignore);
const char *kn_cuda_nll_backward(int device, const int64_t *t, const float *weight, float *dx,
                                 int64_t n, int64_t c, int64_t s, int64_t ignore,
                                 kn_cuda_upstream up);
const char *kn_cuda_pointwise_loss(int device, kn_cuda_pointwise_loss_args args, const float *x,
                                   const float *t, float *out, int64_t n);
const char *kn_cuda_pointwise_loss_backward(int device, kn_cuda_pointwise_loss_args args,
                                            const float *x, const float *t, float *dx, float *dt,
                                            int64_t n, kn_cuda_upstream up);

#endif

/*
 * loss.cu — the CUDA module's fused losses (kn_cuda_reduce.h), with the formulas of
 * core/ops/ops_loss.c: cross entropy as one pass per target position (row max, sum of
 * exponentials, lse; NaN logits make the loss NaN; label smoothing; ignore_index gives 0
 * and no gradient), nll on log-probabilities, mse and binary cross entropy with logits
 * (max(x, 0) - x t + log1p(exp(-|x|)), which never overflows), each with its backward,
 * and the device-side check of class targets (count and first out-of-range position).
 *
 * A cross-entropy position gets a warp: lanes stride over the C classes (stride S).
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_reduce_internal.h"

#include <math.h>
#include <stdint.h>

#define THREADS 256

/* the upstream gradient of position i */
__device__ __forceinline__ float upstream_at(const kn_cuda_upstream &up, int64_t i)
{
    return up.dense ? up.g[i] : (float)((double)up.g[0] / up.divisor);
}

/* ---- targets ------------------------------------------------------------------------- */

__global__ void init_targets_kernel(int64_t *result, int64_t n)
{
    result[0] = 0;
    result[1] = n;
}

__global__ void check_targets_kernel(const int64_t *t, int64_t n, int64_t c, int64_t ignore,
                                     int64_t *result)
{
    unsigned long long count = 0;
    long long bad = n;
    GRID_STRIDE(i, n)
    {
        int64_t v = t[i];
        if (v == ignore) continue;
        if (v < 0 || v >= c) {
            if (i < bad) bad = i;
        } else {
            count++;
        }
    }
    if (count) atomicAdd((unsigned long long *)&result[0], count);
    if (bad < n) atomicMin((long long *)&result[1], bad);
}

const char *kn_cuda_check_targets(int device, const int64_t *t, int64_t n, int64_t c,
                                  int64_t ignore, int64_t *result)
{
    cudaStream_t stream;
    const char *op = "cross_entropy targets";
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    init_targets_kernel<<<1, 1, 0, stream>>>(result, n);
    if ((error = kn_cuda_finish(op))) return error;
    if (n <= 0) return NULL;
    unsigned blocks = kn_cuda_blocks_for(n, THREADS);
    if (blocks > 4096) blocks = 4096;
    check_targets_kernel<<<blocks, THREADS, 0, stream>>>(t, n, c, ignore, result);
    return kn_cuda_finish(op);
}

/* ---- cross entropy ------------------------------------------------------------------- */

__device__ __forceinline__ float warp_sum(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

#define WARP_LOOP(pos, n)                                                                          \
    for (int64_t pos = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); pos < (n);    \
         pos += (int64_t)gridDim.x * (blockDim.x >> 5))

__global__ void ce_forward_kernel(const float *xs, const int64_t *ts, float *loss, float *lses,
                                  int64_t n, int64_t c, int64_t s, int64_t ignore, float smoothing)
{
    int lane = threadIdx.x & 31;
    WARP_LOOP(i, n)
    {
        const float *x = xs + (i / s) * c * s + i % s;
        float m = -INFINITY, sum = 0.f, sum_x = 0.f;
        for (int64_t j = lane; j < c; j += 32) m = fmaxf(m, x[j * s]);
        m = warp_max(m);
        for (int64_t j = lane; j < c; j += 32) {
            sum += expf(x[j * s] - m);
            sum_x += x[j * s];
        }
        sum = warp_sum(sum);
        sum_x = warp_sum(sum_x);
        if (lane == 0) {
            float lse = m + logf(sum);
            if (isnan(sum_x)) lse = NAN; /* the max skips NaN: a NaN logit makes the loss NaN */
            lses[i] = lse;
            int64_t t = ts[i];
            if (t == ignore) {
                loss[i] = 0.f;
            } else {
                float nll = lse - x[t * s];
                float smooth = (float)c * lse - sum_x; /* sum over classes of -log p */
                loss[i] = (1.f - smoothing) * nll + smoothing / (float)c * smooth;
            }
        }
    }
}

__global__ void ce_backward_kernel(const float *xs, const int64_t *ts, const float *lses,
                                   float *dxs, int64_t n, int64_t c, int64_t s, int64_t ignore,
                                   float smoothing, kn_cuda_upstream up)
{
    int lane = threadIdx.x & 31;
    float off = smoothing / (float)c, on = 1.f - smoothing;
    WARP_LOOP(i, n)
    {
        int64_t base = (i / s) * c * s + i % s, t = ts[i];
        const float *x = xs + base;
        float *dx = dxs + base;
        if (t == ignore) {
            for (int64_t j = lane; j < c; j += 32) dx[j * s] = 0.f;
            continue;
        }
        float g = upstream_at(up, i), lse = lses[i];
        for (int64_t j = lane; j < c; j += 32) {
            float v = (expf(x[j * s] - lse) - off) * g;
            if (j == t) v -= on * g;
            dx[j * s] = v;
        }
    }
}

const char *kn_cuda_cross_entropy(int device, const float *x, const int64_t *t, float *loss,
                                  float *lse, int64_t n, int64_t c, int64_t s, int64_t ignore,
                                  float smoothing)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "cross_entropy", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0) return NULL;
    ce_forward_kernel<<<kn_cuda_blocks_for(n, THREADS / 32), THREADS, 0, stream>>>(
        x, t, loss, lse, n, c, s, ignore, smoothing);
    return kn_cuda_finish("cross_entropy");
}

const char *kn_cuda_cross_entropy_backward(int device, const float *x, const int64_t *t,
                                           const float *lse, float *dx, int64_t n, int64_t c,
                                           int64_t s, int64_t ignore, float smoothing,
                                           kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "cross_entropy backward", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0 || c <= 0) return NULL;
    ce_backward_kernel<<<kn_cuda_blocks_for(n, THREADS / 32), THREADS, 0, stream>>>(
        x, t, lse, dx, n, c, s, ignore, smoothing, up);
    return kn_cuda_finish("cross_entropy backward");
}

/* ---- nll ------------------------------------------------------------------------------ */

__global__ void nll_forward_kernel(const float *lp, const int64_t *ts, float *loss, int64_t n,
                                   int64_t c, int64_t s, int64_t ignore)
{
    GRID_STRIDE(i, n)
    {
        int64_t t = ts[i];
        loss[i] = t == ignore ? 0.f : -lp[(i / s) * c * s + i % s + t * s];
    }
}

__global__ void nll_backward_kernel(const int64_t *ts, float *dx, int64_t n, int64_t c, int64_t s,
                                    int64_t ignore, kn_cuda_upstream up)
{
    GRID_STRIDE(i, n)
    {
        int64_t t = ts[i];
        if (t != ignore) dx[(i / s) * c * s + i % s + t * s] = -upstream_at(up, i);
    }
}

const char *kn_cuda_nll(int device, const float *lp, const int64_t *t, float *loss, int64_t n,
                        int64_t c, int64_t s, int64_t ignore)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "nll_loss", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0) return NULL;
    nll_forward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(lp, t, loss, n, c, s,
                                                                               ignore);
    return kn_cuda_finish("nll_loss");
}

const char *kn_cuda_nll_backward(int device, const int64_t *t, float *dx, int64_t n, int64_t c,
                                 int64_t s, int64_t ignore, kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *op = "nll_loss backward";
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0 || c <= 0) return NULL;
    size_t bytes = sizeof(float) * (size_t)(n / s) * (size_t)c * (size_t)s;
    if ((error = kn_cuda_check(cudaMemsetAsync(dx, 0, bytes, stream), op))) return error;
    nll_backward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(t, dx, n, c, s,
                                                                                ignore, up);
    return kn_cuda_finish(op);
}

/* ---- mse, bce with logits ---------------------------------------------------------------- */

__global__ void pointwise_forward_kernel(kn_cuda_loss_kind kind, const float *x, const float *t,
                                         float *out, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        float xv = x[i], tv = t[i];
        if (kind == KN_CUDA_LOSS_MSE)
            out[i] = (xv - tv) * (xv - tv);
        else
            out[i] = (xv > 0.f ? xv : 0.f) - xv * tv + log1pf(expf(-fabsf(xv)));
    }
}

__global__ void pointwise_backward_kernel(kn_cuda_loss_kind kind, const float *x, const float *t,
                                          float *dx, float *dt, int64_t n, kn_cuda_upstream up)
{
    GRID_STRIDE(i, n)
    {
        float xv = x[i], tv = t[i], g = upstream_at(up, i);
        if (dx)
            dx[i] = (kind == KN_CUDA_LOSS_MSE ? 2.f * (xv - tv) : 1.f / (1.f + expf(-xv)) - tv) * g;
        if (dt) dt[i] = (kind == KN_CUDA_LOSS_MSE ? -2.f * (xv - tv) : -xv) * g;
    }
}

static const char *pointwise_name(kn_cuda_loss_kind kind)
{
    return kind == KN_CUDA_LOSS_MSE ? "mse_loss" : "binary_cross_entropy_with_logits";
}

const char *kn_cuda_pointwise_loss(int device, kn_cuda_loss_kind kind, const float *x,
                                   const float *t, float *out, int64_t n)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, pointwise_name(kind), &stream, NULL);
    if (error) return error;
    if (n <= 0) return NULL;
    pointwise_forward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(kind, x, t,
                                                                                     out, n);
    return kn_cuda_finish(pointwise_name(kind));
}

const char *kn_cuda_pointwise_loss_backward(int device, kn_cuda_loss_kind kind, const float *x,
                                            const float *t, float *dx, float *dt, int64_t n,
                                            kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, pointwise_name(kind), &stream, NULL);
    if (error) return error;
    if (n <= 0 || (!dx && !dt)) return NULL;
    pointwise_backward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(
        kind, x, t, dx, dt, n, up);
    return kn_cuda_finish(pointwise_name(kind));
}

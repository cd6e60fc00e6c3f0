/*
 * loss.cu — the CUDA module's fused losses (kn_cuda_reduce.h), with the formulas of
 * core/ops/ops_loss.c: cross entropy as one pass per target position (row max, sum of
 * exponentials, lse; NaN logits make the loss NaN; label smoothing; ignore_index gives 0
 * and no gradient; class weights), nll on log-probabilities, the elementwise losses (mse,
 * l1, smooth_l1, huber, and binary cross entropy with logits as max(x, 0) - x t +
 * log1p(exp(-|x|)), which never overflows, with pos_weight), each with its backward, and
 * the device-side check of class targets (count and first out-of-range position).
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

/* With class weights w (NULL: all 1, W = c): loss = (1 - eps) w[t] (lse - x[t]) +
 * eps / c (W lse - sum_j w[j] x[j]), torch's weighted, smoothed cross entropy. */
__global__ void ce_forward_kernel(const float *xs, const int64_t *ts, const float *w, float W,
                                  float *loss, float *lses, int64_t n, int64_t c, int64_t s,
                                  int64_t ignore, float smoothing)
{
    int lane = threadIdx.x & 31;
    WARP_LOOP(i, n)
    {
        const float *x = xs + (i / s) * c * s + i % s;
        float m = -INFINITY, sum = 0.f, sum_x = 0.f, sum_wx = 0.f;
        for (int64_t j = lane; j < c; j += 32) m = fmaxf(m, x[j * s]);
        m = warp_max(m);
        for (int64_t j = lane; j < c; j += 32) {
            sum += expf(x[j * s] - m);
            sum_x += x[j * s];
            sum_wx += (w ? w[j] : 1.f) * x[j * s];
        }
        sum = warp_sum(sum);
        sum_x = warp_sum(sum_x);
        sum_wx = warp_sum(sum_wx);
        if (lane == 0) {
            float lse = m + logf(sum);
            if (isnan(sum_x)) lse = NAN; /* the max skips NaN: a NaN logit makes the loss NaN */
            lses[i] = lse;
            int64_t t = ts[i];
            if (t == ignore) {
                loss[i] = 0.f;
            } else {
                float wt = w ? w[t] : 1.f;
                float nll = lse - x[t * s];
                float smooth = W * lse - sum_wx; /* sum over classes of -w log p */
                loss[i] = (1.f - smoothing) * wt * nll + smoothing / (float)c * smooth;
            }
        }
    }
}

/* d loss / d x[j] = p[j] ((1 - eps) w[t] + eps W / c) - (1 - eps) w[t] [j == t] - eps w[j] / c */
__global__ void ce_backward_kernel(const float *xs, const int64_t *ts, const float *w, float W,
                                   const float *lses, float *dxs, int64_t n, int64_t c, int64_t s,
                                   int64_t ignore, float smoothing, kn_cuda_upstream up)
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
        float wt = w ? w[t] : 1.f, scale = on * wt + off * W;
        for (int64_t j = lane; j < c; j += 32) {
            float v = (expf(x[j * s] - lse) * scale - off * (w ? w[j] : 1.f)) * g;
            if (j == t) v -= on * wt * g;
            dx[j * s] = v;
        }
    }
}

const char *kn_cuda_cross_entropy(int device, const float *x, const int64_t *t, const float *weight,
                                  float weight_total, float *loss, float *lse, int64_t n, int64_t c,
                                  int64_t s, int64_t ignore, float smoothing)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "cross_entropy", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0) return NULL;
    float W = weight ? weight_total : (float)c;
    ce_forward_kernel<<<kn_cuda_blocks_for(n, THREADS / 32), THREADS, 0, stream>>>(
        x, t, weight, W, loss, lse, n, c, s, ignore, smoothing);
    return kn_cuda_finish("cross_entropy");
}

const char *kn_cuda_cross_entropy_backward(int device, const float *x, const int64_t *t,
                                           const float *weight, float weight_total,
                                           const float *lse, float *dx, int64_t n, int64_t c,
                                           int64_t s, int64_t ignore, float smoothing,
                                           kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "cross_entropy backward", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0 || c <= 0) return NULL;
    float W = weight ? weight_total : (float)c;
    ce_backward_kernel<<<kn_cuda_blocks_for(n, THREADS / 32), THREADS, 0, stream>>>(
        x, t, weight, W, lse, dx, n, c, s, ignore, smoothing, up);
    return kn_cuda_finish("cross_entropy backward");
}

/* ---- nll ------------------------------------------------------------------------------ */

__global__ void nll_forward_kernel(const float *lp, const int64_t *ts, const float *w, float *loss,
                                   int64_t n, int64_t c, int64_t s, int64_t ignore)
{
    GRID_STRIDE(i, n)
    {
        int64_t t = ts[i];
        loss[i] = t == ignore ? 0.f : -(w ? w[t] : 1.f) * lp[(i / s) * c * s + i % s + t * s];
    }
}

__global__ void nll_backward_kernel(const int64_t *ts, const float *w, float *dx, int64_t n,
                                    int64_t c, int64_t s, int64_t ignore, kn_cuda_upstream up)
{
    GRID_STRIDE(i, n)
    {
        int64_t t = ts[i];
        if (t != ignore)
            dx[(i / s) * c * s + i % s + t * s] = -(w ? w[t] : 1.f) * upstream_at(up, i);
    }
}

const char *kn_cuda_nll(int device, const float *lp, const int64_t *t, const float *weight,
                        float *loss, int64_t n, int64_t c, int64_t s, int64_t ignore)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "nll_loss", &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0) return NULL;
    nll_forward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(lp, t, weight, loss,
                                                                               n, c, s, ignore);
    return kn_cuda_finish("nll_loss");
}

const char *kn_cuda_nll_backward(int device, const int64_t *t, const float *weight, float *dx,
                                 int64_t n, int64_t c, int64_t s, int64_t ignore,
                                 kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *op = "nll_loss backward";
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (n <= 0 || s <= 0 || c <= 0) return NULL;
    size_t bytes = sizeof(float) * (size_t)(n / s) * (size_t)c * (size_t)s;
    if ((error = kn_cuda_check(cudaMemsetAsync(dx, 0, bytes, stream), op))) return error;
    nll_backward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(t, weight, dx, n, c,
                                                                                s, ignore, up);
    return kn_cuda_finish(op);
}

/* ---- elementwise losses: mse, l1, smooth_l1, huber, bce with logits --------------------- */

/* The loss of one element, d = x - t (ops_loss.c has the same formulas, torch's). */
__device__ __forceinline__ float pointwise_value(const kn_cuda_pointwise_loss_args &a, float x,
                                                 float t, int64_t i)
{
    float d = x - t, z = fabsf(d);
    switch (a.kind) {
    case KN_CUDA_LOSS_MSE:
        return d * d;
    case KN_CUDA_LOSS_L1:
        return z;
    case KN_CUDA_LOSS_SMOOTH_L1:
        return z < a.param ? 0.5f * z * z / a.param : z - 0.5f * a.param;
    case KN_CUDA_LOSS_HUBER:
        return z < a.param ? 0.5f * z * z : a.param * (z - 0.5f * a.param);
    case KN_CUDA_LOSS_BCE: {
        if (!a.pos_weight) return fmaxf(x, 0.f) - x * t + log1pf(expf(-fabsf(x)));
        float softplus = log1pf(expf(-fabsf(x))) + fmaxf(-x, 0.f); /* log(1 + exp(-x)) */
        float pw = a.pos_weight[i % a.pos_weight_len];
        return (1.f - t) * x + (1.f + (pw - 1.f) * t) * softplus;
    }
    }
    return 0.f;
}

/* d loss / d x (d loss / d t is its negation, except for bce). */
__device__ __forceinline__ float pointwise_grad_x(const kn_cuda_pointwise_loss_args &a, float x,
                                                  float t, int64_t i)
{
    float d = x - t;
    switch (a.kind) {
    case KN_CUDA_LOSS_MSE:
        return 2.f * d;
    case KN_CUDA_LOSS_L1:
        return (float)((d > 0.f) - (d < 0.f));
    case KN_CUDA_LOSS_SMOOTH_L1:
        return d <= -a.param ? -1.f : d >= a.param ? 1.f : d / a.param;
    case KN_CUDA_LOSS_HUBER:
        return d <= -a.param ? -a.param : d >= a.param ? a.param : d;
    case KN_CUDA_LOSS_BCE: {
        float sig = 1.f / (1.f + expf(-x));
        if (!a.pos_weight) return sig - t;
        float pw = a.pos_weight[i % a.pos_weight_len];
        return (1.f - t) - (1.f + (pw - 1.f) * t) * (1.f - sig);
    }
    }
    return 0.f;
}

__device__ __forceinline__ float pointwise_grad_t(const kn_cuda_pointwise_loss_args &a, float x,
                                                  float t, int64_t i)
{
    if (a.kind != KN_CUDA_LOSS_BCE) return -pointwise_grad_x(a, x, t, i);
    if (!a.pos_weight) return -x;
    float pw = a.pos_weight[i % a.pos_weight_len];
    return -x + (pw - 1.f) * (log1pf(expf(-fabsf(x))) + fmaxf(-x, 0.f));
}

__global__ void pointwise_forward_kernel(kn_cuda_pointwise_loss_args a, const float *x,
                                         const float *t, float *out, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        out[i] = pointwise_value(a, x[i], t[i], i);
    }
}

__global__ void pointwise_backward_kernel(kn_cuda_pointwise_loss_args a, const float *x,
                                          const float *t, float *dx, float *dt, int64_t n,
                                          kn_cuda_upstream up)
{
    GRID_STRIDE(i, n)
    {
        float xv = x[i], tv = t[i], g = upstream_at(up, i);
        if (dx) dx[i] = pointwise_grad_x(a, xv, tv, i) * g;
        if (dt) dt[i] = pointwise_grad_t(a, xv, tv, i) * g;
    }
}

static const char *pointwise_name(kn_cuda_loss_kind kind)
{
    switch (kind) {
    case KN_CUDA_LOSS_MSE:
        return "mse_loss";
    case KN_CUDA_LOSS_L1:
        return "l1_loss";
    case KN_CUDA_LOSS_SMOOTH_L1:
        return "smooth_l1_loss";
    case KN_CUDA_LOSS_HUBER:
        return "huber_loss";
    case KN_CUDA_LOSS_BCE:
        break;
    }
    return "binary_cross_entropy_with_logits";
}

const char *kn_cuda_pointwise_loss(int device, kn_cuda_pointwise_loss_args args, const float *x,
                                   const float *t, float *out, int64_t n)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, pointwise_name(args.kind), &stream, NULL);
    if (error) return error;
    if (n <= 0) return NULL;
    pointwise_forward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(args, x, t,
                                                                                     out, n);
    return kn_cuda_finish(pointwise_name(args.kind));
}

const char *kn_cuda_pointwise_loss_backward(int device, kn_cuda_pointwise_loss_args args,
                                            const float *x, const float *t, float *dx, float *dt,
                                            int64_t n, kn_cuda_upstream up)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, pointwise_name(args.kind), &stream, NULL);
    if (error) return error;
    if (n <= 0 || (!dx && !dt)) return NULL;
    pointwise_backward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(
        args, x, t, dx, dt, n, up);
    return kn_cuda_finish(pointwise_name(args.kind));
}

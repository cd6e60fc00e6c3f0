/*
 * norm.cu — layer norm and batch norm on a CUDA device, forward and fused analytic
 * backward, with the formulas of kernels/cpu/norm.c and core/ops/ops_norm.c.
 *
 * Layer norm: one block per row (rows striding over the grid), sums in float as on the
 * CPU; the weight and bias gradients one thread per column. Batch norm: one block per
 * channel for the statistics and gradient sums, kept in double with the channel's first
 * value as the shift (as kn_cpu_batch_norm_stats); a per-channel kernel turns them into
 * the coefficients (and updates the running statistics on the device), and one
 * elementwise kernel applies them. Indices are int64; grids are capped and strided.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_train.h"

#include <math.h>

#define THREADS 256
#define MAX_BLOCKS (1 << 20)

/* ---- helpers ---------------------------------------------------------------------------- */

static unsigned blocks_for(int64_t items, int64_t per_block)
{
    int64_t b = (items + per_block - 1) / per_block;
    if (b < 1) b = 1;
    return (unsigned)(b < MAX_BLOCKS ? b : MAX_BLOCKS);
}

template <typename T> __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

/* The sum of v over the block, in every thread (blockDim.x a multiple of 32). */
template <typename T> __device__ T block_sum(T v)
{
    __shared__ T partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (int)(blockDim.x >> 5);
        v = lane < warps ? partial[lane] : (T)0;
        v = warp_sum(v);
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    v = partial[0];
    __syncthreads(); /* partial is reused by the next call */
    return v;
}

static const char *launched(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

/* Scratch device memory from the module's caching allocator. */
static const char *scratch(int device, size_t nbytes, void **out)
{
    return kn_cuda_backend_v1()->alloc(device, nbytes, out);
}

static void scratch_free(int device, void *ptr, size_t nbytes)
{
    kn_cuda_backend_v1()->free(device, ptr, nbytes);
}

/* ---- layer norm ------------------------------------------------------------------------- */

__global__ void ln_forward_kernel(const float *x, const float *w, const float *b, float *y,
                                  float *mean, float *rstd, int64_t rows, int64_t cols, float eps)
{
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float s = 0.f;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
        s = block_sum(s);
        float m = s / (float)cols;
        float q = 0.f;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float d = xr[j] - m;
            q += d * d;
        }
        q = block_sum(q);
        float rs = 1.f / sqrtf(q / (float)cols + eps);
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = (xr[j] - m) * rs;
            if (w) v = v * w[j];
            if (b) v = v + b[j];
            yr[j] = v;
        }
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight. */
__global__ void ln_backward_kernel(const float *dy, const float *x, const float *mean,
                                   const float *rstd, const float *w, float *dx, int64_t rows,
                                   int64_t cols)
{
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * cols, *dyr = dy + r * cols;
        float *dxr = dx + r * cols;
        float m = mean[r], rs = rstd[r];
        float sg = 0.f, sgx = 0.f;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float g = w ? dyr[j] * w[j] : dyr[j];
            sg += g;
            sgx += g * (xr[j] - m);
        }
        sg = block_sum(sg);
        sgx = block_sum(sgx) * rs;
        float a = sg / (float)cols, bb = sgx / (float)cols;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float g = w ? dyr[j] * w[j] : dyr[j];
            dxr[j] = rs * (g - a - (xr[j] - m) * rs * bb);
        }
    }
}

__global__ void ln_param_kernel(const float *dy, const float *x, const float *mean,
                                const float *rstd, float *dw, float *db, int64_t rows,
                                int64_t cols)
{
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cols;
         j += (int64_t)gridDim.x * blockDim.x) {
        float sw = 0.f, sb = 0.f;
        for (int64_t r = 0; r < rows; r++) {
            float d = dy[r * cols + j];
            sw += d * (x[r * cols + j] - mean[r]) * rstd[r];
            sb += d;
        }
        if (dw) dw[j] = sw;
        if (db) db[j] = sb;
    }
}

extern "C" const char *kn_cuda_layer_norm_forward(int device, const float *x, const float *weight,
                                                  const float *bias, float *y, float *mean,
                                                  float *rstd, int64_t rows, int64_t cols,
                                                  float eps)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "layer_norm", &stream, NULL);
    if (error || rows <= 0 || cols <= 0) return error;
    ln_forward_kernel<<<blocks_for(rows, 1), THREADS, 0, stream>>>(x, weight, bias, y, mean, rstd,
                                                                   rows, cols, eps);
    return launched("layer_norm");
}

extern "C" const char *kn_cuda_layer_norm_backward(int device, const float *dy, const float *x,
                                                   const float *mean, const float *rstd,
                                                   const float *weight, float *dx, float *dweight,
                                                   float *dbias, int64_t rows, int64_t cols)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "layer_norm backward", &stream, NULL);
    if (error || cols <= 0) return error;
    if (dx && rows > 0) {
        ln_backward_kernel<<<blocks_for(rows, 1), THREADS, 0, stream>>>(dy, x, mean, rstd, weight,
                                                                        dx, rows, cols);
        if ((error = launched("layer_norm backward"))) return error;
    }
    if (dweight || dbias) {
        ln_param_kernel<<<blocks_for(cols, THREADS), THREADS, 0, stream>>>(
            dy, x, mean, rstd, dweight, dbias, rows, cols);
        if ((error = launched("layer_norm backward"))) return error;
    }
    return NULL;
}

/* ---- batch norm ------------------------------------------------------------------------- */

/* Shifted sums of x - x[channel's first] and its square, per channel. */
__global__ void bn_stats_kernel(const float *x, int64_t n, int64_t c, int64_t s, double *s1,
                                double *s2)
{
    int64_t count = n * s;
    for (int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
        double shift = (double)x[ch * s];
        double a1 = 0, a2 = 0;
        for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
            int64_t idx = ((i / s) * c + ch) * s + i % s;
            double d = (double)x[idx] - shift;
            a1 += d;
            a2 += d * d;
        }
        a1 = block_sum(a1);
        a2 = block_sum(a2);
        if (threadIdx.x == 0) {
            s1[ch] = a1;
            s2[ch] = a2;
        }
    }
}

/* Per channel: the statistics, scale and shift of y = scale * (x - mean) + shift, and
 * the running statistics' update (the variance unbiased). */
__global__ void bn_finish_kernel(const float *x, const double *s1, const double *s2, int64_t n,
                                 int64_t c, int64_t s, bool training, double momentum, double eps,
                                 kn_cuda_fvec rm, kn_cuda_fvec rv, kn_cuda_fvec w, kn_cuda_fvec b,
                                 float *mean_out, float *rstd_out, float *scale, float *shift)
{
    int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double count = (double)(n * s);
    double mean, var;
    if (training) {
        if (n * s > 0) {
            double shifted_mean = s1[ch] / count;
            double v = s2[ch] / count - shifted_mean * shifted_mean;
            mean = shifted_mean + (double)x[ch * s];
            var = v > 0 ? v : 0;
        } else {
            mean = var = NAN;
        }
    } else {
        mean = rm.ptr[ch * rm.stride];
        var = rv.ptr[ch * rv.stride];
    }
    double rs = 1.0 / sqrt(var + eps);
    double wv = w.ptr ? (double)w.ptr[ch * w.stride] : 1.0;
    double bv = b.ptr ? (double)b.ptr[ch * b.stride] : 0.0;
    mean_out[ch] = (float)mean;
    rstd_out[ch] = (float)rs;
    scale[ch] = (float)(wv * rs);
    shift[ch] = (float)bv;
    if (training && n * s > 0) {
        double unbias = count > 1 ? count / (count - 1) : NAN;
        if (rm.ptr) {
            float *slot = rm.ptr + ch * rm.stride;
            *slot = (float)__dadd_rn(__dmul_rn(1 - momentum, (double)*slot),
                                     __dmul_rn(momentum, mean));
        }
        if (rv.ptr) {
            float *slot = rv.ptr + ch * rv.stride;
            *slot = (float)__dadd_rn(__dmul_rn(1 - momentum, (double)*slot),
                                     __dmul_rn(__dmul_rn(momentum, var), unbias));
        }
    }
}

/* out = p*u + q*(v - center) + r per channel (u or v NULL: that term left out). */
__global__ void bn_affine_kernel(const float *u, const float *v, const float *p, const float *q,
                                 const float *center, const float *r, float *out, int64_t total,
                                 int64_t c, int64_t s)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t ch = (i / s) % c;
        float y;
        if (u && v)
            y = p[ch] * u[i] + q[ch] * (v[i] - center[ch]) + r[ch];
        else if (u)
            y = p[ch] * u[i] + r[ch];
        else
            y = q[ch] * (v[i] - center[ch]) + r[ch];
        out[i] = y;
    }
}

extern "C" const char *kn_cuda_batch_norm_forward(int device, const float *x, int64_t n,
                                                  int64_t c, int64_t s, bool training,
                                                  double momentum, double eps,
                                                  kn_cuda_fvec running_mean,
                                                  kn_cuda_fvec running_var, kn_cuda_fvec weight,
                                                  kn_cuda_fvec bias, float *y, float *mean,
                                                  float *rstd)
{
    const char *op = "batch_norm";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error || c <= 0) return error;
    size_t nbytes = sizeof(double) * 2 * (size_t)c + sizeof(float) * 2 * (size_t)c;
    void *buf = NULL;
    if ((error = scratch(device, nbytes, &buf))) return error;
    double *s1 = (double *)buf, *s2 = s1 + c;
    float *scale = (float *)(s2 + c), *shift = scale + c;
    int64_t total = n * c * s;
    if (training && total > 0) {
        bn_stats_kernel<<<blocks_for(c, 1), THREADS, 0, stream>>>(x, n, c, s, s1, s2);
        error = launched(op);
    }
    if (!error) {
        bn_finish_kernel<<<blocks_for(c, THREADS), THREADS, 0, stream>>>(
            x, s1, s2, n, c, s, training, momentum, eps, running_mean, running_var, weight, bias,
            mean, rstd, scale, shift);
        error = launched(op);
    }
    if (!error && total > 0) {
        bn_affine_kernel<<<blocks_for(total, THREADS), THREADS, 0, stream>>>(
            NULL, x, NULL, scale, mean, shift, y, total, c, s);
        error = launched(op);
    }
    scratch_free(device, buf, nbytes);
    return error;
}

/* Per channel: sum(dy) and sum(dy * (x - mean)) in double. */
__global__ void bn_grad_kernel(const float *dy, const float *x, const float *mean, int64_t n,
                               int64_t c, int64_t s, double *s1, double *s2)
{
    int64_t count = n * s;
    for (int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
        float m = mean[ch];
        double a1 = 0, a2 = 0;
        for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
            int64_t idx = ((i / s) * c + ch) * s + i % s;
            a1 += dy[idx];
            a2 += (double)dy[idx] * (double)(x[idx] - m);
        }
        a1 = block_sum(a1);
        a2 = block_sum(a2);
        if (threadIdx.x == 0) {
            s1[ch] = a1;
            s2[ch] = a2;
        }
    }
}

/* dx = p*dy + q*(x-mean) + r per channel (core/ops/ops_norm.c's batch_norm_backward). */
__global__ void bn_coef_kernel(const double *sum_dy, const double *sum_dyx, const float *rstd,
                               kn_cuda_fvec w, int64_t c, double count, bool training, float *dw,
                               float *db, float *p, float *q, float *r)
{
    int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (ch >= c) return;
    if (dw) dw[ch] = (float)(sum_dyx[ch] * rstd[ch]);
    if (db) db[ch] = (float)sum_dy[ch];
    if (!p) return;
    double scale = (w.ptr ? (double)w.ptr[ch * w.stride] : 1.0) * rstd[ch];
    p[ch] = (float)scale;
    q[ch] = training ? (float)(-scale * rstd[ch] * rstd[ch] * sum_dyx[ch] / count) : 0.f;
    r[ch] = training ? (float)(-scale * sum_dy[ch] / count) : 0.f;
}

extern "C" const char *kn_cuda_batch_norm_backward(int device, const float *dy, const float *x,
                                                   const float *mean, const float *rstd,
                                                   kn_cuda_fvec weight, int64_t n, int64_t c,
                                                   int64_t s, bool training, float *dx,
                                                   float *dweight, float *dbias)
{
    const char *op = "batch_norm backward";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error || c <= 0) return error;
    size_t nbytes = sizeof(double) * 2 * (size_t)c + sizeof(float) * 3 * (size_t)c;
    void *buf = NULL;
    if ((error = scratch(device, nbytes, &buf))) return error;
    double *s1 = (double *)buf, *s2 = s1 + c;
    float *p = (float *)(s2 + c), *q = p + c, *r = q + c;
    int64_t total = n * c * s;
    /* an empty batch: zero sums (the kernel's loops are empty) */
    bn_grad_kernel<<<blocks_for(c, 1), THREADS, 0, stream>>>(dy, x, mean, n, c, s, s1, s2);
    error = launched(op);
    if (!error) {
        bn_coef_kernel<<<blocks_for(c, THREADS), THREADS, 0, stream>>>(
            s1, s2, rstd, weight, c, (double)(n * s), training, dweight, dbias, dx ? p : NULL, q,
            r);
        error = launched(op);
    }
    if (!error && dx && total > 0) {
        bn_affine_kernel<<<blocks_for(total, THREADS), THREADS, 0, stream>>>(
            dy, training ? x : NULL, p, q, mean, r, dx, total, c, s);
        error = launched(op);
    }
    scratch_free(device, buf, nbytes);
    return error;
}

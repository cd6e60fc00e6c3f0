/*
 * conv.cu — the CUDA module's convolution and pooling kernels: im2col / col2im for the
 * GEMM convolution (the GEMMs themselves go through cuBLAS from core/ops/ops_conv.c), 2-D
 * max and average pooling and adaptive average pooling, forward and backward.
 *
 * Every kernel is a grid-stride loop over int64 element numbers, one thread an output
 * element, with the window arithmetic (clipping, divisors, the tie and NaN rules) of
 * kernels/cpu/conv.c and kernels/cpu/pool.c. col2im gathers (no atomics); the pooling
 * backwards zero the input gradient and add each output's share with atomicAdd, so
 * overlapping windows sum in an unspecified order (float rounding only).
 */
#include "kn_cuda_conv.h"
#include "kn_cuda_internal.h"

#include <math.h>

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

/* Checks the launch that just went onto the stream. */
static const char *launched(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

/* ---- im2col / col2im ------------------------------------------------------------------ */

__global__ void im2col_kernel(kn_cpu_conv_geometry g, const float *images, int64_t count,
                              float *col, int64_t ld)
{
    int64_t L = g.out_h * g.out_w, cols = count * L;
    int64_t total = g.channels * g.kernel_h * g.kernel_w * cols;
    GRID_STRIDE(e, total)
    {
        int64_t row = e / cols, j = e % cols;
        int64_t image = j / L, l = j % L;
        int64_t oh = l / g.out_w, ow = l % g.out_w;
        int64_t kj = row % g.kernel_w, t = row / g.kernel_w;
        int64_t ki = t % g.kernel_h, c = t / g.kernel_h;
        int64_t h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
        int64_t w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
        float v = 0.f;
        if (h >= 0 && h < g.height && w >= 0 && w < g.width)
            v = images[((image * g.channels + c) * g.height + h) * g.width + w];
        col[row * ld + j] = v;
    }
}

__global__ void col2im_kernel(kn_cpu_conv_geometry g, const float *col, int64_t ld, int64_t count,
                              float *images)
{
    int64_t L = g.out_h * g.out_w;
    int64_t total = count * g.channels * g.height * g.width;
    GRID_STRIDE(e, total)
    {
        int64_t w = e % g.width, t = e / g.width;
        int64_t h = t % g.height;
        t /= g.height;
        int64_t c = t % g.channels, image = t / g.channels;
        float sum = 0.f;
        for (int64_t ki = 0; ki < g.kernel_h; ki++) {
            int64_t hh = h + g.pad_h - ki * g.dilation_h;
            if (hh < 0 || hh % g.stride_h) continue;
            int64_t oh = hh / g.stride_h;
            if (oh >= g.out_h) continue;
            for (int64_t kj = 0; kj < g.kernel_w; kj++) {
                int64_t ww = w + g.pad_w - kj * g.dilation_w;
                if (ww < 0 || ww % g.stride_w) continue;
                int64_t ow = ww / g.stride_w;
                if (ow >= g.out_w) continue;
                int64_t row = (c * g.kernel_h + ki) * g.kernel_w + kj;
                sum += col[row * ld + image * L + oh * g.out_w + ow];
            }
        }
        images[e] = sum;
    }
}

const char *kn_cuda_im2col(int device, const kn_cpu_conv_geometry *g, const float *images,
                           int64_t count, float *col, int64_t ld)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "conv2d", &stream, NULL);
    if (error) return error;
    int64_t total = g->channels * g->kernel_h * g->kernel_w * count * g->out_h * g->out_w;
    if (total <= 0) return NULL;
    im2col_kernel<<<grid_for(total), 256, 0, stream>>>(*g, images, count, col, ld);
    return launched("conv2d (im2col)");
}

const char *kn_cuda_col2im(int device, const kn_cpu_conv_geometry *g, const float *col, int64_t ld,
                           int64_t count, float *images)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "conv2d backward", &stream, NULL);
    if (error) return error;
    int64_t total = count * g->channels * g->height * g->width;
    if (total <= 0) return NULL;
    col2im_kernel<<<grid_for(total), 256, 0, stream>>>(*g, col, ld, count, images);
    return launched("conv2d backward (col2im)");
}

/* ---- max pooling ------------------------------------------------------------------------ */

__global__ void max_pool_kernel(kn_cpu_pool_geometry g, const float *in, float *out,
                                int64_t *indices)
{
    int64_t total = g.planes * g.out_h * g.out_w;
    GRID_STRIDE(e, total)
    {
        int64_t ow = e % g.out_w, t = e / g.out_w;
        int64_t oh = t % g.out_h, p = t / g.out_h;
        const float *plane = in + p * g.height * g.width;
        int64_t h0 = oh * g.stride_h - g.pad_h;
        int64_t h1 = h0 + (g.kernel_h - 1) * g.dilation_h + 1;
        if (h1 > g.height) h1 = g.height;
        while (h0 < 0) h0 += g.dilation_h;
        int64_t w0 = ow * g.stride_w - g.pad_w;
        int64_t w1 = w0 + (g.kernel_w - 1) * g.dilation_w + 1;
        if (w1 > g.width) w1 = g.width;
        while (w0 < 0) w0 += g.dilation_w;
        float best = -INFINITY;
        int64_t best_index = h0 * g.width + w0;
        for (int64_t h = h0; h < h1; h += g.dilation_h)
            for (int64_t w = w0; w < w1; w += g.dilation_w) {
                float v = plane[h * g.width + w];
                if (v > best || v != v) { /* first max wins; a later NaN takes over */
                    best = v;
                    best_index = h * g.width + w;
                }
            }
        out[e] = best;
        indices[e] = best_index;
    }
}

__global__ void max_pool_backward_kernel(kn_cpu_pool_geometry g, const float *grad_out,
                                         const int64_t *indices, float *grad_in)
{
    int64_t plane_out = g.out_h * g.out_w, total = g.planes * plane_out;
    GRID_STRIDE(e, total)
    {
        int64_t p = e / plane_out;
        atomicAdd(grad_in + p * g.height * g.width + indices[e], grad_out[e]);
    }
}

const char *kn_cuda_max_pool2d(int device, const kn_cpu_pool_geometry *g, const float *in,
                               float *out, int64_t *indices)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "max_pool2d", &stream, NULL);
    if (error) return error;
    int64_t total = g->planes * g->out_h * g->out_w;
    if (total <= 0) return NULL;
    max_pool_kernel<<<grid_for(total), 256, 0, stream>>>(*g, in, out, indices);
    return launched("max_pool2d");
}

static const char *zero(float *p, int64_t n, cudaStream_t stream, const char *op)
{
    if (n <= 0) return NULL;
    return kn_cuda_check(cudaMemsetAsync(p, 0, sizeof(float) * (size_t)n, stream), op);
}

const char *kn_cuda_max_pool2d_backward(int device, const kn_cpu_pool_geometry *g,
                                        const float *grad_out, const int64_t *indices,
                                        float *grad_in)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "max_pool2d backward", &stream, NULL);
    if (error) return error;
    if ((error = zero(grad_in, g->planes * g->height * g->width, stream, "max_pool2d backward")))
        return error;
    int64_t total = g->planes * g->out_h * g->out_w;
    if (total <= 0) return NULL;
    max_pool_backward_kernel<<<grid_for(total), 256, 0, stream>>>(*g, grad_out, indices, grad_in);
    return launched("max_pool2d backward");
}

/* ---- average pooling -------------------------------------------------------------------- */

/* avg_window of kernels/cpu/pool.c. */
__device__ bool avg_window(const kn_cpu_pool_geometry &g, int64_t oh, int64_t ow, int64_t *h0,
                           int64_t *h1, int64_t *w0, int64_t *w1, float *divisor)
{
    *h0 = oh * g.stride_h - g.pad_h;
    *w0 = ow * g.stride_w - g.pad_w;
    *h1 = *h0 + g.kernel_h;
    *w1 = *w0 + g.kernel_w;
    if (*h1 > g.height + g.pad_h) *h1 = g.height + g.pad_h;
    if (*w1 > g.width + g.pad_w) *w1 = g.width + g.pad_w;
    int64_t pool_size = (*h1 - *h0) * (*w1 - *w0);
    if (*h0 < 0) *h0 = 0;
    if (*w0 < 0) *w0 = 0;
    if (*h1 > g.height) *h1 = g.height;
    if (*w1 > g.width) *w1 = g.width;
    if (*h0 >= *h1 || *w0 >= *w1) return false;
    *divisor = (float)(g.exclude_padding ? (*h1 - *h0) * (*w1 - *w0) : pool_size);
    return true;
}

__global__ void avg_pool_kernel(kn_cpu_pool_geometry g, const float *in, float *out)
{
    int64_t total = g.planes * g.out_h * g.out_w;
    GRID_STRIDE(e, total)
    {
        int64_t ow = e % g.out_w, t = e / g.out_w;
        int64_t oh = t % g.out_h, p = t / g.out_h;
        const float *plane = in + p * g.height * g.width;
        int64_t h0, h1, w0, w1;
        float divisor, sum = 0.f;
        if (!avg_window(g, oh, ow, &h0, &h1, &w0, &w1, &divisor)) {
            out[e] = 0.f;
            continue;
        }
        for (int64_t h = h0; h < h1; h++)
            for (int64_t w = w0; w < w1; w++) sum += plane[h * g.width + w];
        out[e] = sum / divisor;
    }
}

__global__ void avg_pool_backward_kernel(kn_cpu_pool_geometry g, const float *grad_out,
                                         float *grad_in)
{
    int64_t total = g.planes * g.out_h * g.out_w;
    GRID_STRIDE(e, total)
    {
        int64_t ow = e % g.out_w, t = e / g.out_w;
        int64_t oh = t % g.out_h, p = t / g.out_h;
        float *plane = grad_in + p * g.height * g.width;
        int64_t h0, h1, w0, w1;
        float divisor;
        if (!avg_window(g, oh, ow, &h0, &h1, &w0, &w1, &divisor)) continue;
        float share = grad_out[e] / divisor;
        for (int64_t h = h0; h < h1; h++)
            for (int64_t w = w0; w < w1; w++) atomicAdd(plane + h * g.width + w, share);
    }
}

const char *kn_cuda_avg_pool2d(int device, const kn_cpu_pool_geometry *g, const float *in,
                               float *out)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "avg_pool2d", &stream, NULL);
    if (error) return error;
    int64_t total = g->planes * g->out_h * g->out_w;
    if (total <= 0) return NULL;
    avg_pool_kernel<<<grid_for(total), 256, 0, stream>>>(*g, in, out);
    return launched("avg_pool2d");
}

const char *kn_cuda_avg_pool2d_backward(int device, const kn_cpu_pool_geometry *g,
                                        const float *grad_out, float *grad_in)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "avg_pool2d backward", &stream, NULL);
    if (error) return error;
    if ((error = zero(grad_in, g->planes * g->height * g->width, stream, "avg_pool2d backward")))
        return error;
    int64_t total = g->planes * g->out_h * g->out_w;
    if (total <= 0) return NULL;
    avg_pool_backward_kernel<<<grid_for(total), 256, 0, stream>>>(*g, grad_out, grad_in);
    return launched("avg_pool2d backward");
}

/* ---- adaptive average pooling ------------------------------------------------------------ */

__global__ void adaptive_kernel(int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                const float *in, float *out)
{
    GRID_STRIDE(e, planes * OH * OW)
    {
        int64_t j = e % OW, t = e / OW;
        int64_t i = t % OH, p = t / OH;
        int64_t h0 = (i * H) / OH, h1 = ((i + 1) * H + OH - 1) / OH;
        int64_t w0 = (j * W) / OW, w1 = ((j + 1) * W + OW - 1) / OW;
        const float *plane = in + p * H * W;
        float sum = 0.f;
        for (int64_t r = h0; r < h1; r++)
            for (int64_t c = w0; c < w1; c++) sum += plane[r * W + c];
        out[e] = sum / (float)((h1 - h0) * (w1 - w0));
    }
}

__global__ void adaptive_backward_kernel(int64_t planes, int64_t H, int64_t W, int64_t OH,
                                         int64_t OW, const float *grad_out, float *grad_in)
{
    GRID_STRIDE(e, planes * OH * OW)
    {
        int64_t j = e % OW, t = e / OW;
        int64_t i = t % OH, p = t / OH;
        int64_t h0 = (i * H) / OH, h1 = ((i + 1) * H + OH - 1) / OH;
        int64_t w0 = (j * W) / OW, w1 = ((j + 1) * W + OW - 1) / OW;
        float *plane = grad_in + p * H * W;
        float g = grad_out[e] / (float)((h1 - h0) * (w1 - w0));
        for (int64_t r = h0; r < h1; r++)
            for (int64_t c = w0; c < w1; c++) atomicAdd(plane + r * W + c, g);
    }
}

const char *kn_cuda_adaptive_avg_pool2d(int device, int64_t planes, int64_t h, int64_t w,
                                        int64_t oh, int64_t ow, const float *in, float *out)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "adaptive_avg_pool2d", &stream, NULL);
    if (error) return error;
    int64_t total = planes * oh * ow;
    if (total <= 0 || h <= 0 || w <= 0) return NULL;
    adaptive_kernel<<<grid_for(total), 256, 0, stream>>>(planes, h, w, oh, ow, in, out);
    return launched("adaptive_avg_pool2d");
}

const char *kn_cuda_adaptive_avg_pool2d_backward(int device, int64_t planes, int64_t h, int64_t w,
                                                 int64_t oh, int64_t ow, const float *grad_out,
                                                 float *grad_in)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "adaptive_avg_pool2d backward", &stream, NULL);
    if (error) return error;
    if ((error = zero(grad_in, planes * h * w, stream, "adaptive_avg_pool2d backward")))
        return error;
    int64_t total = planes * oh * ow;
    if (total <= 0 || h <= 0 || w <= 0) return NULL;
    adaptive_backward_kernel<<<grid_for(total), 256, 0, stream>>>(planes, h, w, oh, ow, grad_out,
                                                                  grad_in);
    return launched("adaptive_avg_pool2d backward");
}

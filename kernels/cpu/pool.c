/*
 * pool.c — 2-D max and average pooling over contiguous [planes, H, W] buffers, forward
 * and backward, parallel over planes. The window arithmetic (clipping, divisors, the
 * NaN and tie rules) follows PyTorch's CPU kernels so results match bit for bit.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"

#include <math.h>
#include <string.h>

typedef struct pool_job {
    const kn_cpu_pool_geometry *g;
    const float *in;
    float *out;
    int64_t *indices;
    const int64_t *indices_in;
} pool_job;

static int64_t plane_grain(const kn_cpu_pool_geometry *g)
{
    int64_t work = g->out_h * g->out_w * g->kernel_h * g->kernel_w + g->height * g->width;
    int64_t grain = KN_CPU_GRAIN_ELEMENTWISE / (work > 0 ? work : 1);
    return grain > 0 ? grain : 1;
}

static inline float select_float(int64_t mask, float a, float b)
{
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    uint32_t r = ((uint32_t)mask & ua) | (~(uint32_t)mask & ub);
    float out;
    memcpy(&out, &r, 4);
    return out;
}

static void max_range(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    const kn_cpu_pool_geometry geometry = *job->g, *g = &geometry; /* no aliasing reloads */
    int64_t H = g->height, W = g->width, plane_out = g->out_h * g->out_w;
    for (int64_t p = begin; p < end; p++) {
        const float *in = job->in + p * H * W;
        float *out = job->out + p * plane_out;
        int64_t *indices = job->indices + p * plane_out;
        for (int64_t oh = 0; oh < g->out_h; oh++) {
            int64_t h0 = oh * g->stride_h - g->pad_h;
            int64_t h1 = h0 + (g->kernel_h - 1) * g->dilation_h + 1;
            if (h1 > H) h1 = H;
            while (h0 < 0) h0 += g->dilation_h;
            for (int64_t ow = 0; ow < g->out_w; ow++) {
                int64_t w0 = ow * g->stride_w - g->pad_w;
                int64_t w1 = w0 + (g->kernel_w - 1) * g->dilation_w + 1;
                if (w1 > W) w1 = W;
                while (w0 < 0) w0 += g->dilation_w;
                float best = -INFINITY;
                int64_t best_index = h0 * W + w0;
                for (int64_t h = h0; h < h1; h += g->dilation_h) {
                    for (int64_t w = w0; w < w1; w += g->dilation_w) {
                        float v = in[h * W + w];
                        /* first max wins, a NaN sticks. Masks, not branches: on real
                         * data a branch here mispredicts about half the time. */
                        int64_t take = -(int64_t)((v > best) | (v != v));
                        best = select_float(take, v, best);
                        best_index = (take & (h * W + w)) | (~take & best_index);
                    }
                }
                out[oh * g->out_w + ow] = best;
                indices[oh * g->out_w + ow] = best_index;
            }
        }
    }
}

void kn_cpu_max_pool2d(const kn_cpu_pool_geometry *g, const float *in, float *out, int64_t *indices)
{
    pool_job job = {.g = g, .in = in, .out = out, .indices = indices};
    kn_cpu_parallel_for(g->planes, plane_grain(g), max_range, &job);
}

static void max_backward_range(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    const kn_cpu_pool_geometry geometry = *job->g, *g = &geometry; /* no aliasing reloads */
    int64_t plane_in = g->height * g->width, plane_out = g->out_h * g->out_w;
    for (int64_t p = begin; p < end; p++) {
        float *grad_in = job->out + p * plane_in;
        const float *grad_out = job->in + p * plane_out;
        const int64_t *indices = job->indices_in + p * plane_out;
        memset(grad_in, 0, sizeof(float) * (size_t)plane_in);
        for (int64_t i = 0; i < plane_out; i++) grad_in[indices[i]] += grad_out[i];
    }
}

void kn_cpu_max_pool2d_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                const int64_t *indices, float *grad_in)
{
    pool_job job = {.g = g, .in = grad_out, .out = grad_in, .indices_in = indices};
    kn_cpu_parallel_for(g->planes, plane_grain(g), max_backward_range, &job);
}

/* The clipped window of output (oh, ow) and the divisor PyTorch uses for it; returns
 * false when the window holds no input element. */
static inline bool avg_window(const kn_cpu_pool_geometry *g, int64_t oh, int64_t ow, int64_t *h0,
                              int64_t *h1, int64_t *w0, int64_t *w1, float *divisor)
{
    *h0 = oh * g->stride_h - g->pad_h;
    *w0 = ow * g->stride_w - g->pad_w;
    *h1 = *h0 + g->kernel_h;
    *w1 = *w0 + g->kernel_w;
    if (*h1 > g->height + g->pad_h) *h1 = g->height + g->pad_h;
    if (*w1 > g->width + g->pad_w) *w1 = g->width + g->pad_w;
    int64_t pool_size = (*h1 - *h0) * (*w1 - *w0);
    if (*h0 < 0) *h0 = 0;
    if (*w0 < 0) *w0 = 0;
    if (*h1 > g->height) *h1 = g->height;
    if (*w1 > g->width) *w1 = g->width;
    if (*h0 >= *h1 || *w0 >= *w1) return false;
    *divisor = (float)(g->exclude_padding ? (*h1 - *h0) * (*w1 - *w0) : pool_size);
    return true;
}

static void avg_range(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    const kn_cpu_pool_geometry geometry = *job->g, *g = &geometry; /* no aliasing reloads */
    int64_t W = g->width, plane_out = g->out_h * g->out_w;
    for (int64_t p = begin; p < end; p++) {
        const float *in = job->in + p * g->height * W;
        float *out = job->out + p * plane_out;
        for (int64_t oh = 0; oh < g->out_h; oh++) {
            for (int64_t ow = 0; ow < g->out_w; ow++) {
                int64_t h0, h1, w0, w1;
                float divisor, sum = 0.f;
                if (!avg_window(g, oh, ow, &h0, &h1, &w0, &w1, &divisor)) {
                    out[oh * g->out_w + ow] = 0.f;
                    continue;
                }
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++) sum += in[h * W + w];
                out[oh * g->out_w + ow] = sum / divisor;
            }
        }
    }
}

void kn_cpu_avg_pool2d(const kn_cpu_pool_geometry *g, const float *in, float *out)
{
    pool_job job = {.g = g, .in = in, .out = out};
    kn_cpu_parallel_for(g->planes, plane_grain(g), avg_range, &job);
}

static void avg_backward_range(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    const kn_cpu_pool_geometry geometry = *job->g, *g = &geometry; /* no aliasing reloads */
    int64_t W = g->width, plane_in = g->height * W, plane_out = g->out_h * g->out_w;
    for (int64_t p = begin; p < end; p++) {
        float *grad_in = job->out + p * plane_in;
        const float *grad_out = job->in + p * plane_out;
        memset(grad_in, 0, sizeof(float) * (size_t)plane_in);
        for (int64_t oh = 0; oh < g->out_h; oh++) {
            for (int64_t ow = 0; ow < g->out_w; ow++) {
                int64_t h0, h1, w0, w1;
                float divisor;
                if (!avg_window(g, oh, ow, &h0, &h1, &w0, &w1, &divisor)) continue;
                float share = grad_out[oh * g->out_w + ow] / divisor;
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++) grad_in[h * W + w] += share;
            }
        }
    }
}

void kn_cpu_avg_pool2d_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                float *grad_in)
{
    pool_job job = {.g = g, .in = grad_out, .out = grad_in};
    kn_cpu_parallel_for(g->planes, plane_grain(g), avg_backward_range, &job);
}

/*
 * conv.c — im2col and col2im, the unfold/fold pair that turns a 2-D convolution into
 * one matrix product. Each (image, channel) pair is an independent work item, so both
 * directions run in parallel without write conflicts.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"

#include <string.h>

/* Output columns [lo, hi) whose input column ow*stride + offset lies in [0, size). */
static void valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out, int64_t *lo,
                        int64_t *hi)
{
    int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int64_t last = size - 1 - offset < 0 ? -1 : (size - 1 - offset) / stride; /* inclusive */
    *lo = first < out ? first : out;
    *hi = last + 1 < out ? last + 1 : out;
    if (*hi < *lo) *hi = *lo;
}

typedef struct col_job {
    const kn_cpu_conv_geometry *g;
    const float *images;
    float *col;
    int64_t ld;
    float *images_out;
    const float *col_in;
} col_job;

static void im2col_range(void *context, int64_t begin, int64_t end)
{
    const col_job *job = context;
    const kn_cpu_conv_geometry *g = job->g;
    int64_t L = g->out_h * g->out_w;
    for (int64_t item = begin; item < end; item++) {
        int64_t image = item / g->channels, c = item % g->channels;
        const float *plane = job->images + item * g->height * g->width;
        for (int64_t ki = 0; ki < g->kernel_h; ki++) {
            for (int64_t kj = 0; kj < g->kernel_w; kj++) {
                int64_t row = (c * g->kernel_h + ki) * g->kernel_w + kj;
                float *dst = job->col + row * job->ld + image * L;
                int64_t col_off = kj * g->dilation_w - g->pad_w, lo, hi;
                valid_range(col_off, g->stride_w, g->width, g->out_w, &lo, &hi);
                for (int64_t oh = 0; oh < g->out_h; oh++, dst += g->out_w) {
                    int64_t ih = oh * g->stride_h - g->pad_h + ki * g->dilation_h;
                    if (ih < 0 || ih >= g->height) {
                        memset(dst, 0, sizeof(float) * (size_t)g->out_w);
                        continue;
                    }
                    /* first valid input element; never points outside the plane */
                    const float *src = plane + ih * g->width + col_off + lo * g->stride_w;
                    for (int64_t ow = 0; ow < lo; ow++) dst[ow] = 0.f;
                    if (g->stride_w == 1)
                        memcpy(dst + lo, src, sizeof(float) * (size_t)(hi - lo));
                    else
                        for (int64_t ow = lo; ow < hi; ow++) dst[ow] = src[(ow - lo) * g->stride_w];
                    for (int64_t ow = hi; ow < g->out_w; ow++) dst[ow] = 0.f;
                }
            }
        }
    }
}

static int64_t grain_items(const kn_cpu_conv_geometry *g)
{
    int64_t per_item = g->kernel_h * g->kernel_w * g->out_h * g->out_w;
    int64_t grain = KN_CPU_GRAIN_ELEMENTWISE / (per_item > 0 ? per_item : 1);
    return grain > 0 ? grain : 1;
}

void kn_cpu_im2col(const kn_cpu_conv_geometry *g, const float *images, int64_t count, float *col,
                   int64_t ld)
{
    col_job job = {.g = g, .images = images, .col = col, .ld = ld};
    kn_cpu_parallel_for(count * g->channels, grain_items(g), im2col_range, &job);
}

static void col2im_range(void *context, int64_t begin, int64_t end)
{
    const col_job *job = context;
    const kn_cpu_conv_geometry *g = job->g;
    int64_t L = g->out_h * g->out_w;
    for (int64_t item = begin; item < end; item++) {
        int64_t image = item / g->channels, c = item % g->channels;
        float *plane = job->images_out + item * g->height * g->width;
        memset(plane, 0, sizeof(float) * (size_t)(g->height * g->width));
        for (int64_t ki = 0; ki < g->kernel_h; ki++) {
            for (int64_t kj = 0; kj < g->kernel_w; kj++) {
                int64_t row = (c * g->kernel_h + ki) * g->kernel_w + kj;
                const float *src = job->col_in + row * job->ld + image * L;
                int64_t col_off = kj * g->dilation_w - g->pad_w, lo, hi;
                valid_range(col_off, g->stride_w, g->width, g->out_w, &lo, &hi);
                for (int64_t oh = 0; oh < g->out_h; oh++, src += g->out_w) {
                    int64_t ih = oh * g->stride_h - g->pad_h + ki * g->dilation_h;
                    if (ih < 0 || ih >= g->height) continue;
                    float *dst = plane + ih * g->width + col_off + lo * g->stride_w;
                    if (g->stride_w == 1)
                        for (int64_t ow = lo; ow < hi; ow++) dst[ow - lo] += src[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ow++)
                            dst[(ow - lo) * g->stride_w] += src[ow];
                }
            }
        }
    }
}

void kn_cpu_col2im(const kn_cpu_conv_geometry *g, const float *col, int64_t ld, int64_t count,
                   float *images)
{
    col_job job = {.g = g, .images_out = images, .col_in = col, .ld = ld};
    kn_cpu_parallel_for(count * g->channels, grain_items(g), col2im_range, &job);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void
kn_cpu_conv_bias_grad(const float *grad, int64_t n, int64_t channels, int64_t l, float *gb)
{
    enum { LANES = 16 };
    for (int64_t oc = 0; oc < channels; oc++) {
        float acc[LANES] = {0};
        float tail = 0.f;
        for (int64_t i = 0; i < n; i++) {
            const float *restrict s = grad + (i * channels + oc) * l;
            int64_t j = 0;
            for (; j + LANES <= l; j += LANES)
                for (int k = 0; k < LANES; k++) acc[k] += s[j + k];
            for (; j < l; j++) tail += s[j];
        }
        float sum = tail;
        for (int k = 0; k < LANES; k++) sum += acc[k];
        gb[oc] = sum;
    }
}

/*
 * conv.c — 2-D convolution on the CPU: the entry points that pick a method per layer,
 * and the general method, im2col + GEMM, for what the direct kernels (conv_direct.c:
 * stride 1, dilation 1, one group) do not take.
 *
 * im2col goes image by image: unfold one image into columns [C*kH*kW, H'*W'] (in the
 * thread's scratch), then per group out_g = W_g · col_g straight into the output. Images
 * are the parallel tasks, and weight gradients are summed per fixed slice of the batch,
 * the slices added in order, so results do not depend on the thread count. A 1x1,
 * stride-1, unpadded convolution needs no unfolding: the input already is the column
 * matrix. A batch of one image runs its GEMMs in parallel instead.
 *
 * im2col and col2im themselves (also used by the CUDA backend's reference) unfold and
 * fold any number of images; each (image, channel) pair is an independent work item.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"
#include "kn_cpu_ukernel.h"

#include <stdlib.h>
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

/* ---- im2col + GEMM, image by image ---------------------------------------------------- */

#define MAX_SLICES 16

typedef struct conv_job {
    const kn_cpu_conv_geometry *g;
    int64_t n, o, groups, cg, og, k, l; /* k = cg*kH*kW rows per group, l = out_h*out_w */
    bool unfold;                        /* false: 1x1, stride 1, unpadded */
    const float *x, *w, *bias, *gout;
    float *out, *gx, *gw_parts; /* gw_parts: slices x [O, K] */
    int64_t slices;
    int failed;
} conv_job;

/* The column matrix [C*kH*kW, L] (row stride L) of image i: the input itself when no
 * unfolding is needed; NULL when the scratch cannot be had. */
static const float *image_cols(conv_job *job, int64_t i)
{
    const kn_cpu_conv_geometry *g = job->g;
    const float *image = job->x + i * g->channels * g->height * g->width;
    if (!job->unfold) return image;
    float *col = kn_cpu_scratch(KN_CPU_SCRATCH_CONV_IN, job->groups * job->k * job->l);
    if (col) kn_cpu_im2col(g, image, 1, col, job->l);
    return col;
}

static void forward_images(void *context, int64_t begin, int64_t end)
{
    conv_job *job = context;
    for (int64_t i = begin; i < end; i++) {
        const float *col = image_cols(job, i);
        if (!col) {
            __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        float *out = job->out + i * job->o * job->l;
        if (job->bias)
            for (int64_t oc = 0; oc < job->o; oc++)
                for (int64_t j = 0; j < job->l; j++) out[oc * job->l + j] = job->bias[oc];
        for (int64_t gi = 0; gi < job->groups; gi++)
            kn_cpu_gemm(false, false, job->og, job->l, job->k, 1.f, job->w + gi * job->og * job->k,
                        job->k, col + gi * job->k * job->l, job->l, job->bias ? 1.f : 0.f,
                        out + gi * job->og * job->l, job->l);
    }
}

static void input_grad_images(void *context, int64_t begin, int64_t end)
{
    conv_job *job = context;
    const kn_cpu_conv_geometry *g = job->g;
    for (int64_t i = begin; i < end; i++) {
        const float *gout = job->gout + i * job->o * job->l;
        float *gx = job->gx + i * g->channels * g->height * g->width;
        float *dcol = job->unfold
                          ? kn_cpu_scratch(KN_CPU_SCRATCH_CONV_OUT, job->groups * job->k * job->l)
                          : gx; /* dL/dcol = W_gᵀ · g_g, then folded back */
        if (!dcol) {
            __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        for (int64_t gi = 0; gi < job->groups; gi++)
            kn_cpu_gemm(true, false, job->k, job->l, job->og, 1.f, job->w + gi * job->og * job->k,
                        job->k, gout + gi * job->og * job->l, job->l, 0.f,
                        dcol + gi * job->k * job->l, job->l);
        if (job->unfold) kn_cpu_col2im(g, dcol, job->l, 1, gx);
    }
}

static void weight_grad_slices(void *context, int64_t begin, int64_t end)
{
    conv_job *job = context;
    for (int64_t s = begin; s < end; s++) {
        float *gw = job->gw_parts + s * job->o * job->k;
        int64_t i0 = job->n * s / job->slices, i1 = job->n * (s + 1) / job->slices;
        for (int64_t i = i0; i < i1; i++) {
            const float *gout = job->gout + i * job->o * job->l, *col = image_cols(job, i);
            if (!col) {
                __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
                return;
            }
            for (int64_t gi = 0; gi < job->groups; gi++) /* gW_g += g_g · col_gᵀ */
                kn_cpu_gemm(false, true, job->og, job->k, job->l, 1.f, gout + gi * job->og * job->l,
                            job->l, col + gi * job->k * job->l, job->l, i == i0 ? 0.f : 1.f,
                            gw + gi * job->og * job->k, job->k);
        }
    }
}

static void setup_job(conv_job *job, const kn_cpu_conv_geometry *g, int64_t n, int64_t o,
                      int64_t groups)
{
    *job = (conv_job){.g = g, .n = n, .o = o, .groups = groups};
    job->cg = g->channels / groups;
    job->og = o / groups;
    job->k = job->cg * g->kernel_h * g->kernel_w;
    job->l = g->out_h * g->out_w;
    job->unfold = !(g->kernel_h == 1 && g->kernel_w == 1 && g->stride_h == 1 && g->stride_w == 1 &&
                    g->pad_h == 0 && g->pad_w == 0);
}

/* Images as tasks; one image alone runs on the caller, its GEMMs in parallel. */
static bool run_images(conv_job *job, int64_t tasks, kn_cpu_range_fn fn)
{
    if (tasks > 1)
        kn_cpu_parallel_for(tasks, 1, fn, job);
    else if (tasks == 1)
        fn(job, 0, 1);
    return !job->failed;
}

bool kn_cpu_conv2d_forward(const kn_cpu_conv_geometry *g, int64_t n, int64_t o, int64_t groups,
                           const float *x, const float *w, const float *bias, float *y,
                           float *padded)
{
    if (n <= 0 || o <= 0 || g->out_h <= 0 || g->out_w <= 0) return true;
    if (kn_cpu_conv_direct_ok(g, groups))
        return kn_cpu_conv_direct_forward(g, n, o, x, w, bias, NULL, y, padded);
    conv_job job;
    setup_job(&job, g, n, o, groups);
    job.x = x;
    job.w = w;
    job.bias = bias;
    job.out = y;
    return run_images(&job, n, forward_images);
}

bool kn_cpu_conv2d_backward(const kn_cpu_conv_geometry *g, int64_t n, int64_t o, int64_t groups,
                            const float *x, const float *padded, const float *w, const float *gout,
                            float *gx, float *gw, float *gb)
{
    int64_t l = g->out_h * g->out_w;
    bool direct = kn_cpu_conv_direct_ok(g, groups);
    kn_cpu_conv_planes planes = {.dense = gout};
    if (gw && direct) { /* the bias gradient comes with the weight gradient */
        if (!kn_cpu_conv_direct_backward_weight(g, n, o, x, padded, &planes, gw, gb)) return false;
        gb = NULL;
    }
    if (gb) kn_cpu_conv_bias_grad(gout, n, o, l, gb);
    if (gx && direct && !kn_cpu_conv_direct_backward_input(g, n, o, &planes, w, gx)) return false;
    if (direct || (!gx && !gw)) return true;
    conv_job job;
    setup_job(&job, g, n, o, groups);
    job.x = x;
    job.w = w;
    job.gout = gout;
    job.gx = gx;
    if (gx && !run_images(&job, n, input_grad_images)) return false;
    if (!gw) return true;
    int64_t size = o * job.k;
    job.slices = n < MAX_SLICES ? n : MAX_SLICES;
    if (job.slices < 1) {
        memset(gw, 0, sizeof(float) * (size_t)size);
        return true;
    }
    job.gw_parts = malloc(sizeof(float) * (size_t)(job.slices * size));
    bool ok = job.gw_parts && run_images(&job, job.slices, weight_grad_slices);
    if (ok) { /* the slices' partial sums, in slice order */
        memcpy(gw, job.gw_parts, sizeof(float) * (size_t)size);
        for (int64_t s = 1; s < job.slices; s++)
            kn_cpu_sum_rows(job.gw_parts + s * size, 1, size, size, gw, true);
    }
    free(job.gw_parts);
    return ok;
}

/*
 * pool.c — 2-D max and average pooling over contiguous [planes, H, W] buffers, forward
 * and backward, parallel over planes. The window arithmetic (clipping, divisors, the
 * NaN and tie rules) follows PyTorch's CPU kernels so results match bit for bit.
 * The 2x2 stride-2 case has its own kernels: AVX-512 with masked tails (the CNN's rows
 * are 14 and 7 outputs, too short to vectorise otherwise) or a branch-free scalar loop,
 * and byte positions instead of int64 indices; backward writes every element, so no
 * zero fill first.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

typedef struct pool_job {
    const kn_cpu_pool_geometry *g;
    const float *in;
    float *out;
    int64_t *indices;
    const int64_t *indices_in;
    uint8_t *which;
    const uint8_t *which_in;
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

/* ---- 2x2 stride 2: the CNN's pooling, branch-free and vectorisable ---------------- */

bool kn_cpu_max_pool2d_is_2x2(const kn_cpu_pool_geometry *g)
{
    return g->kernel_h == 2 && g->kernel_w == 2 && g->stride_h == 2 && g->stride_w == 2 &&
           g->pad_h == 0 && g->pad_w == 0 && g->dilation_h == 1 && g->dilation_w == 1 &&
           2 * g->out_h <= g->height && 2 * g->out_w <= g->width;
}

/* Work items are output rows (plane, oh), so even a few planes split evenly. */
static int64_t row_grain(const kn_cpu_pool_geometry *g)
{
    int64_t grain = KN_CPU_GRAIN_ELEMENTWISE / (4 * g->out_w > 0 ? 4 * g->out_w : 1);
    return grain > 0 ? grain : 1;
}

static void max_2x2_range_scalar(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    for (int64_t r = begin; r < end; r++) {
        int64_t p = r / oh_n, oh = r % oh_n;
        const float *restrict in0 = job->in + (p * H + 2 * oh) * W, *restrict in1 = in0 + W;
        float *restrict out = job->out + r * ow_n;
        uint8_t *restrict which = job->which + r * ow_n;
        for (int64_t ow = 0; ow < ow_n; ow++) {
            /* the scan order of max_range: (0,0), (0,1), (1,0), (1,1); a later element
             * wins when greater or NaN. Integer masks, not ?: (which GCC turns into
             * branches that mispredict on real data), and they vectorise. */
            float a = in0[2 * ow], b = in0[2 * ow + 1], c = in1[2 * ow], d = in1[2 * ow + 1];
            int32_t m1 = -(int32_t)((b > a) | (b != b));
            float best = select_float(m1, b, a);
            int32_t m2 = -(int32_t)((c > best) | (c != c));
            best = select_float(m2, c, best);
            int32_t m3 = -(int32_t)((d > best) | (d != d));
            out[ow] = select_float(m3, d, best);
            int32_t at = (m1 & 1);
            at = (m2 & 2) | (~m2 & at);
            at = (m3 & 3) | (~m3 & at);
            which[ow] = (uint8_t)at;
        }
    }
}

/* Zeroes what no 2x2 window of a plane [H][W] covers (floor mode: an odd last column of
 * the covered rows, then the rows below), so a backward that writes every window needs
 * no zero fill first. */
static void zero_uncovered_2x2(float *plane, int64_t oh_n, int64_t ow_n, int64_t H, int64_t W)
{
    if (W > 2 * ow_n)
        for (int64_t r = 0; r < 2 * oh_n; r++) plane[r * W + W - 1] = 0.f;
    if (H > 2 * oh_n) memset(plane + 2 * oh_n * W, 0, sizeof(float) * (size_t)((H - 2 * oh_n) * W));
}

/* AVX-512 versions: the CNN's rows are short (14 and 7 outputs), too short for GCC's
 * vectoriser, so each row is one or two masked vectors: deinterleave even/odd columns
 * with a two-source permute, compare-and-blend in the scan order of the scalar loop. */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

AVX512 static inline __mmask16 tail_mask(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n > 0 ? n : 0)) - 1);
}

/* The four positions of up to 16 2x2 windows from output column ow of a row pair:
 * w[0] top-left, w[1] top-right, w[2] bottom-left, w[3] bottom-right (the scan order),
 * the columns past the row masked off; *m masks the outputs that exist. */
AVX512 static inline void windows_2x2(const float *in0, const float *in1, int64_t ow, int64_t ow_n,
                                      __m512 w[4], __mmask16 *m)
{
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    int64_t left = 2 * (ow_n - ow);
    __mmask16 lo = tail_mask(left), hi = tail_mask(left - 16);
    *m = tail_mask(ow_n - ow);
    __m512 t0 = _mm512_maskz_loadu_ps(lo, in0 + 2 * ow);
    __m512 t1 = _mm512_maskz_loadu_ps(hi, in0 + 2 * ow + 16);
    __m512 b0 = _mm512_maskz_loadu_ps(lo, in1 + 2 * ow);
    __m512 b1 = _mm512_maskz_loadu_ps(hi, in1 + 2 * ow + 16);
    w[0] = _mm512_permutex2var_ps(t0, even, t1);
    w[1] = _mm512_permutex2var_ps(t0, odd, t1);
    w[2] = _mm512_permutex2var_ps(b0, even, b1);
    w[3] = _mm512_permutex2var_ps(b0, odd, b1);
}

/* windows_2x2 the other way: the four values w[0..3] (scan order) of up to 16 windows
 * stored into the row pair gi0, gi1 from output column ow, the columns past the row
 * masked off. */
AVX512 static inline void store_windows_2x2(float *gi0, float *gi1, int64_t ow, int64_t ow_n,
                                            const __m512 w[4])
{
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
    int64_t left = 2 * (ow_n - ow);
    __mmask16 lo = tail_mask(left), hi = tail_mask(left - 16);
    _mm512_mask_storeu_ps(gi0 + 2 * ow, lo, _mm512_permutex2var_ps(w[0], first, w[1]));
    _mm512_mask_storeu_ps(gi0 + 2 * ow + 16, hi, _mm512_permutex2var_ps(w[0], second, w[1]));
    _mm512_mask_storeu_ps(gi1 + 2 * ow, lo, _mm512_permutex2var_ps(w[2], first, w[3]));
    _mm512_mask_storeu_ps(gi1 + 2 * ow + 16, hi, _mm512_permutex2var_ps(w[2], second, w[3]));
}

AVX512 static void max_2x2_range_avx512(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    for (int64_t r = begin; r < end; r++) {
        int64_t p = r / oh_n, oh = r % oh_n;
        const float *in0 = job->in + (p * H + 2 * oh) * W, *in1 = in0 + W;
        float *out = job->out + r * ow_n;
        uint8_t *which = job->which + r * ow_n;
        for (int64_t ow = 0; ow < ow_n; ow += 16) {
            __m512 w[4];
            __mmask16 m;
            windows_2x2(in0, in1, ow, ow_n, w, &m);
            __m512 a = w[0], b = w[1], c = w[2], d = w[3];
            __m512 best = a;
            __m512i at = _mm512_setzero_si512();
            __mmask16 k =
                _mm512_cmp_ps_mask(b, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, k, b);
            at = _mm512_mask_mov_epi32(at, k, _mm512_set1_epi32(1));
            k = _mm512_cmp_ps_mask(c, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, k, c);
            at = _mm512_mask_mov_epi32(at, k, _mm512_set1_epi32(2));
            k = _mm512_cmp_ps_mask(d, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, k, d);
            at = _mm512_mask_mov_epi32(at, k, _mm512_set1_epi32(3));
            _mm512_mask_storeu_ps(out + ow, m, best);
            _mm512_mask_cvtepi32_storeu_epi8(which + ow, m, at);
        }
    }
}

AVX512 static void unpool_2x2_plane_avx512(const float *go_plane, const uint8_t *which_plane,
                                           int64_t oh_n, int64_t ow_n, int64_t H, int64_t W,
                                           float *plane)
{
    for (int64_t oh = 0; oh < oh_n; oh++) {
        float *gi0 = plane + 2 * oh * W, *gi1 = gi0 + W;
        const float *go = go_plane + oh * ow_n;
        const uint8_t *which = which_plane + oh * ow_n;
        for (int64_t ow = 0; ow < ow_n; ow += 16) {
            __mmask16 m = tail_mask(ow_n - ow);
            __m512 g = _mm512_maskz_loadu_ps(m, go + ow), w[4];
            __m512i at = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, which + ow));
            for (int k = 0; k < 4; k++) /* g where the max was, 0 at the other three */
                w[k] = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(k)), g);
            store_windows_2x2(gi0, gi1, ow, ow_n, w);
        }
    }
    zero_uncovered_2x2(plane, oh_n, ow_n, H, W);
}

AVX512 static void max_2x2_backward_range_avx512(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    for (int64_t p = begin; p < end; p++)
        unpool_2x2_plane_avx512(job->in + p * oh_n * ow_n, job->which_in + p * oh_n * ow_n, oh_n,
                                ow_n, H, W, job->out + p * H * W);
}

static bool have_avx512(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    return cached;
}

void kn_cpu_max_pool2d_2x2(const kn_cpu_pool_geometry *g, const float *in, float *out,
                           uint8_t *which)
{
    pool_job job = {.g = g, .in = in, .out = out, .which = which};
    kn_cpu_parallel_for(g->planes * g->out_h, row_grain(g),
                        have_avx512() ? max_2x2_range_avx512 : max_2x2_range_scalar, &job);
}

/* One plane of the backward: grad_out [oh_n][ow_n] placed where which says, zero elsewhere,
 * into plane [H][W] (its odd last row / column, floor mode, zeroed too). */
static void unpool_2x2_plane_scalar(const float *go, const uint8_t *which, int64_t oh_n,
                                    int64_t ow_n, int64_t H, int64_t W, float *plane)
{
    for (int64_t oh = 0; oh < oh_n; oh++) {
        float *restrict gi0 = plane + 2 * oh * W, *restrict gi1 = gi0 + W;
        const float *restrict g_row = go + oh * ow_n;
        const uint8_t *restrict at_row = which + oh * ow_n;
        for (int64_t ow = 0; ow < ow_n; ow++) {
            float g = g_row[ow];
            int32_t at = at_row[ow];
            gi0[2 * ow] = select_float(-(int32_t)(at == 0), g, 0.f);
            gi0[2 * ow + 1] = select_float(-(int32_t)(at == 1), g, 0.f);
            gi1[2 * ow] = select_float(-(int32_t)(at == 2), g, 0.f);
            gi1[2 * ow + 1] = select_float(-(int32_t)(at == 3), g, 0.f);
        }
    }
    zero_uncovered_2x2(plane, oh_n, ow_n, H, W);
}

/* Items are planes here: a plane's odd last row / column (floor mode) must be zeroed
 * by whoever owns the plane. */
static void max_2x2_backward_range_scalar(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    for (int64_t p = begin; p < end; p++)
        unpool_2x2_plane_scalar(job->in + p * oh_n * ow_n, job->which_in + p * oh_n * ow_n, oh_n,
                                ow_n, H, W, job->out + p * H * W);
}

void kn_cpu_max_pool2d_2x2_backward(const kn_cpu_pool_geometry *g, const float *grad_out,
                                    const uint8_t *which, float *grad_in)
{
    pool_job job = {.g = g, .in = grad_out, .out = grad_in, .which_in = which};
    kn_cpu_parallel_for(
        g->planes, plane_grain(g),
        have_avx512() ? max_2x2_backward_range_avx512 : max_2x2_backward_range_scalar, &job);
}

void kn_cpu_max_unpool_2x2_plane(const float *grad_out, const uint8_t *which, int64_t out_h,
                                 int64_t out_w, int64_t height, int64_t width, float *plane)
{
    if (have_avx512())
        unpool_2x2_plane_avx512(grad_out, which, out_h, out_w, height, width, plane);
    else
        unpool_2x2_plane_scalar(grad_out, which, out_h, out_w, height, width, plane);
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

/* 2x2 stride 2 without padding (the ResNet's 14x14 -> 7x7 adaptive pool): AVX-512 rows
 * as max_2x2's, the same arithmetic as avg_range's window loop, so the same bits: the
 * sum starts at 0 and adds the window in scan order, then divides by 4; backward
 * writes 0 + g / 4 to each of the four inputs (windows do not overlap) and zeroes an
 * odd last row or column, so no zero fill first. */
AVX512 static void avg_2x2_range_avx512(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    const __m512 four = _mm512_set1_ps(4.f);
    for (int64_t r = begin; r < end; r++) {
        int64_t p = r / oh_n, oh = r % oh_n;
        const float *in0 = job->in + (p * H + 2 * oh) * W, *in1 = in0 + W;
        float *out = job->out + r * ow_n;
        for (int64_t ow = 0; ow < ow_n; ow += 16) {
            __m512 w[4];
            __mmask16 m;
            windows_2x2(in0, in1, ow, ow_n, w, &m);
            __m512 sum = _mm512_add_ps(_mm512_setzero_ps(), w[0]);
            sum = _mm512_add_ps(sum, w[1]);
            sum = _mm512_add_ps(sum, w[2]);
            sum = _mm512_add_ps(sum, w[3]);
            _mm512_mask_storeu_ps(out + ow, m, _mm512_div_ps(sum, four));
        }
    }
}

AVX512 static void avg_2x2_backward_range_avx512(void *context, int64_t begin, int64_t end)
{
    const pool_job *job = context;
    int64_t H = job->g->height, W = job->g->width, oh_n = job->g->out_h, ow_n = job->g->out_w;
    const __m512 four = _mm512_set1_ps(4.f);
    for (int64_t p = begin; p < end; p++) {
        float *plane = job->out + p * H * W;
        for (int64_t oh = 0; oh < oh_n; oh++) {
            float *gi0 = plane + 2 * oh * W, *gi1 = gi0 + W;
            const float *go = job->in + (p * oh_n + oh) * ow_n;
            for (int64_t ow = 0; ow < ow_n; ow += 16) {
                __mmask16 m = tail_mask(ow_n - ow);
                __m512 share = _mm512_add_ps(
                    _mm512_setzero_ps(), _mm512_div_ps(_mm512_maskz_loadu_ps(m, go + ow), four));
                const __m512 w[4] = {share, share, share, share};
                store_windows_2x2(gi0, gi1, ow, ow_n, w);
            }
        }
        zero_uncovered_2x2(plane, oh_n, ow_n, H, W);
    }
}

void kn_cpu_avg_pool2d(const kn_cpu_pool_geometry *g, const float *in, float *out)
{
    if (kn_cpu_max_pool2d_is_2x2(g) && have_avx512()) {
        pool_job job = {.g = g, .in = in, .out = out};
        kn_cpu_parallel_for(g->planes * g->out_h, row_grain(g), avg_2x2_range_avx512, &job);
        return;
    }
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
    kn_cpu_parallel_for(g->planes, plane_grain(g),
                        kn_cpu_max_pool2d_is_2x2(g) && have_avx512() ? avg_2x2_backward_range_avx512
                                                                     : avg_backward_range,
                        &job);
}

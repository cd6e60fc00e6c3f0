/*
 * conv_direct.c — 2-D convolution with stride 1, dilation 1 and one group (the CNNs'
 * 3x3 "same" layers), forward, input gradient and weight gradient, with no unfolding.
 *
 * The trick: pad an image once into planes of width wp = W + 2*pad_w, and index the
 * outputs "virtually" as v = oh*wp + ow over ho rows of wp. Then the column of the
 * unfolded matrix for weight step (c, ki, kj) is the padded plane itself, shifted by
 * c*hp*wp + ki*wp + kj: the GEMM micro-kernel (kn_cpu_ukernel.h) reads its B rows
 * straight out of the padded image, and im2col never happens. The wp - wo columns past
 * each output row are computed and dropped (wp/wo: 16/14 for a 14-wide map).
 *
 *   forward      y[o, v]  = sum over (c,ki,kj) of W[o, c,ki,kj] * xpad[c*hp*wp + ki*wp + kj + v]
 *   input grad   the forward of gout padded by (k - 1 - pad), with W's taps reversed and
 *                its in/out channels swapped: a full convolution, no col2im
 *   weight grad  gW[o, c,ki,kj] = sum over images and v of gout[o, v] * xpad[shift + v]:
 *                the row-pointer kernel with A the shifted padded rows read output row
 *                by output row (the dropped columns skipped), B gout transposed to [v, o];
 *                or dot products over the virtual layout (few weight steps or channels)
 *   forward by pixel rows, for 32k channels: a tile of 14 positions of an output row x
 *                32 channels (kn_cpu_pixels_fn), no dropped columns
 *
 * The forward can keep each padded image (kn_cpu_conv_direct_padded_floats a one) for
 * the weight gradient, which then reads x there instead of padding it again.
 *
 * Work is per image (forward, input gradient) or per fixed slice of the batch (weight
 * and bias gradient: a partial sum per slice, added in slice order), so results do not
 * depend on the thread count.
 */
#include "kn_cpu.h"
#include "kn_cpu_linalg.h"
#include "kn_cpu_ukernel.h"

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Partial sums of the weight gradient: at most this many slices of the batch and this
 * many floats for all of them. */
#define MAX_SLICES 16
#define PARTIAL_FLOATS ((int64_t)4 << 20)

typedef struct direct_conv {
    const kn_cpu_ukernel *uk;
    int64_t cin, h, w, ph, pw, kh, kw, cout; /* one image in, the padding, the taps */
    int64_t hp, wp, plane, ho, wo, lv;       /* padded planes; outputs; ho*wp virtual */
    int64_t kdim;                            /* cin*kh*kw weight steps */
    int32_t *offsets;                        /* [kdim]: each step's shift in the planes */
    float *apack;          /* weights packed in MR-row panels, or [cout/pchunk][kdim][pchunk] */
    int pchunk;            /* forward by pixel rows, this many channels a tile; 0: MR x NR tiles */
    const float *weights;  /* the one-channel forms: the weights as given, [cout][kh*kw] */
    bool one_channel;      /* the forward by one_channel_forward (see there) */
    bool rows_of_16;       /* the MR x NR tiles stored by tiles_into_rows_of_16 */
    kn_cpu_conv_planes in; /* the input images (forward's x, or the padded gout) */
    kn_cpu_conv_planes gout; /* the weight gradient's output gradient */
    float *keep;             /* forward: each padded image kept at keep + i*padded_floats */
    const float *padded;     /* weight gradient: the images as the forward kept them */
    const float *bias;
    float *out;
    const kn_cpu_conv_epilogue *epilogue; /* relu and 2x2 max pool after the sum, or NULL */
    int64_t count;                        /* images */
    int failed;                           /* a task found no memory for its scratch */
    /* weight gradient */
    int64_t slices;
    float *partial; /* [slices][kdim][cout] (rows form) or [slices][cout][kdim] (dot
                     * form) gradient, then [slices][cout] bias */
    bool want_bias;
    bool dot_form;          /* the weight gradient by dot products (see weight_grad_form) */
    bool one_channel_wgrad; /* ... or by one_channel_weight_grad; both sum into
                             * [cout][kdim], the rows form into [kdim][cout] */
    /* the rows form's tile: the micro-kernel's, or its narrow one for few channels */
    int wmr, wnr;
    kn_cpu_ukernel_rows_fn wrows;
} direct_conv;

bool kn_cpu_conv_direct_ok(const kn_cpu_conv_geometry *g, int64_t groups)
{
    return groups == 1 && g->stride_h == 1 && g->stride_w == 1 && g->dilation_h == 1 &&
           g->dilation_w == 1 && g->pad_h < g->kernel_h && g->pad_w < g->kernel_w && g->out_h > 0 &&
           g->out_w > 0;
}

static void setup(direct_conv *d, int64_t cin, int64_t h, int64_t w, int64_t ph, int64_t pw,
                  int64_t kh, int64_t kw, int64_t cout)
{
    *d = (direct_conv){.uk = kn_cpu_ukernel_get(),
                       .cin = cin,
                       .h = h,
                       .w = w,
                       .ph = ph,
                       .pw = pw,
                       .kh = kh,
                       .kw = kw,
                       .cout = cout};
    d->hp = h + 2 * ph;
    d->wp = w + 2 * pw;
    d->plane = d->hp * d->wp;
    d->ho = d->hp - kh + 1;
    d->wo = d->wp - kw + 1;
    d->lv = d->ho * d->wp;
    d->kdim = cin * kh * kw;
}

/* Floats of one padded image, with the slack the last tile of a forward reads past it. */
static int64_t padded_floats(const direct_conv *d)
{
    return d->cin * d->plane + d->uk->nr + d->kw + d->wp;
}

int64_t kn_cpu_conv_direct_padded_floats(const kn_cpu_conv_geometry *g)
{
    direct_conv d;
    setup(&d, g->channels, g->height, g->width, g->pad_h, g->pad_w, g->kernel_h, g->kernel_w, 1);
    return padded_floats(&d);
}

static bool make_offsets(direct_conv *d)
{
    d->offsets = malloc(sizeof(int32_t) * (size_t)d->kdim);
    if (!d->offsets) return false;
    for (int64_t c = 0, k = 0; c < d->cin; c++)
        for (int64_t ki = 0; ki < d->kh; ki++)
            for (int64_t kj = 0; kj < d->kw; kj++)
                d->offsets[k++] = (int32_t)(c * d->plane + ki * d->wp + kj);
    return true;
}

/* The forward's form: pixel rows (kn_cpu_pixels_fn: a tile of PR positions of one output
 * row x NC channels) where this ISA has them, the channels fill whole tiles and the
 * tiles would be no emptier than the MR x NR tiles over the virtual columns; else 0.
 * Both give the same bits. KN_CONV_FORWARD=tiles|pixels forces one, for tests ("tiles"
 * also through the virtual layout, not one_channel_forward or tiles_into_rows_of_16,
 * which give the same bits again). With 16 channels the MR x NR tiles stay: a 16-channel pixel tile
 * issues one broadcast per FMA and measured ~7% slower than the 8 x 32 tiles at 16x14x14. */
static int pixel_chunk(const direct_conv *d, const char *force)
{
    const kn_cpu_ukernel *uk = d->uk;
    if ((force && !strcmp(force, "tiles")) || !uk->pixels_fn || d->cout % uk->pixels_nc) return 0;
    int64_t pr = uk->pixels_pr, nr = uk->nr;
    double pixel_use = (double)d->wo / (double)(((d->wo + pr - 1) / pr) * pr);
    double tile_use = (double)(d->ho * d->wo) / (double)(((d->lv + nr - 1) / nr) * nr);
    if (pixel_use < tile_use && !(force && !strcmp(force, "pixels"))) return 0;
    return uk->pixels_nc;
}

/* ---- one input channel, 3x3 (a first layer: 1 -> 16 at 28x28) ----------------------
 * With kdim = 9 the MR x NR tiles run 9 steps per tile, so their stores and the
 * epilogue's pass from the virtual layout to the output cost as much as the FMAs. Here
 * the 9 shifted input vectors of 16 output columns stay in registers across every output
 * channel, and each channel's sums get the bias (and relu) and go straight into the
 * output: no virtual layout, no second pass. Each output is the tiles' FMA chain in the
 * same step order from zero, plus the bias, then kn_relu's expression: the same bits.
 * The products are written acc += a * b as in the micro-kernel (not _mm512_fmadd_ps), so
 * that both contract to FMAs, or both do not (-O0), in every build. */
static bool one_channel_ok(const direct_conv *d, const char *force)
{
    return d->cin == 1 && d->kh == 3 && d->kw == 3 && !strcmp(d->uk->name, "avx512") &&
           !(force && (!strcmp(force, "tiles") || !strcmp(force, "pixels")));
}

#if defined(__x86_64__)
/* The lanes of a row's next vector that exist: n (>= 1) values left in the row. */
static inline __mmask16 row_mask(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

__attribute__((target("avx512f,fma"))) static void
one_channel_forward(const direct_conv *d, const float *xpad, float *out, bool relu)
{
    int64_t wo = d->wo, wp = d->wp, plane = d->ho * d->wo;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = 0; r < d->ho; r++)
        for (int64_t c = 0; c < wo; c += 16) {
            __mmask16 mask = row_mask(wo - c);
            const float *x0 = xpad + r * wp + c;
            __m512 xv[9];
            for (int ki = 0; ki < 3; ki++)
                for (int kj = 0; kj < 3; kj++)
                    xv[ki * 3 + kj] = _mm512_maskz_loadu_ps(mask, x0 + ki * wp + kj);
            float *dst = out + r * wo + c;
            for (int64_t o = 0; o < d->cout; o++, dst += plane) {
                const float *wk = d->weights + o * 9;
                __m512 acc = zero;
                for (int t = 0; t < 9; t++)
                    acc += _mm512_set1_ps(wk[t]) * xv[t]; /* the tiles' expression */
                acc = _mm512_add_ps(acc, _mm512_set1_ps(d->bias ? d->bias[o] : 0.f));
                if (relu) acc = _mm512_max_ps(zero, acc); /* 0 > v ? 0 : v: NaN stays */
                _mm512_mask_storeu_ps(dst, mask, acc);
            }
        }
}
#else
static void one_channel_forward(const direct_conv *d, const float *xpad, float *out, bool relu)
{
    (void)d, (void)xpad, (void)out, (void)relu; /* one_channel_ok is false off x86 */
}
#endif

/* Packs weights [cout, kdim] (row-major) for the forward's form: MR-row panels, or
 * [cout/pchunk][kdim][pchunk] for pixel rows. */
static bool pack_weights(direct_conv *d, const float *w)
{
    const char *force = getenv("KN_CONV_FORWARD");
    d->weights = w;
    d->one_channel = one_channel_ok(d, force);
    if (d->one_channel) return true;
    d->pchunk = pixel_chunk(d, force);
    d->rows_of_16 = !d->pchunk && d->wp == 16 && !strcmp(d->uk->name, "avx512") && d->uk->mr == 8 &&
                    d->uk->nr == 32 && !(force && !strcmp(force, "tiles"));
    if (d->pchunk) {
        int64_t chunk = d->pchunk;
        d->apack = aligned_alloc(64, ((sizeof(float) * (size_t)(d->cout * d->kdim)) + 63) & ~63ul);
        if (!d->apack) return false;
        for (int64_t q = 0; q < d->cout / chunk; q++)
            for (int64_t k = 0; k < d->kdim; k++)
                for (int64_t j = 0; j < chunk; j++)
                    d->apack[(q * d->kdim + k) * chunk + j] = w[(q * chunk + j) * d->kdim + k];
        return true;
    }
    int mr = d->uk->mr;
    int64_t panels = (d->cout + mr - 1) / mr;
    d->apack = aligned_alloc(64, ((sizeof(float) * (size_t)(panels * mr * d->kdim)) + 63) & ~63ul);
    if (!d->apack) return false;
    for (int64_t q = 0; q < panels; q++) {
        int64_t o = q * mr;
        int m = d->cout - o < mr ? (int)(d->cout - o) : mr;
        kn_cpu_pack_a(d->uk, w + o * d->kdim, d->kdim, 1, m, d->kdim, 1.f,
                      d->apack + q * mr * d->kdim);
    }
    return true;
}

static void release(direct_conv *d)
{
    free(d->offsets);
    free(d->apack);
    free(d->partial);
}

/* Channel c of image i of src, [rows, cols] (rows*cols floats): in place when src is
 * dense, else spread into tmp from the pooled gradient (each value to its window's max,
 * zero elsewhere: what the 2x2 pool's backward writes). */
static const float *plane_of(const kn_cpu_conv_planes *src, int64_t i, int64_t c, int64_t channels,
                             int64_t rows, int64_t cols, float *tmp)
{
    int64_t index = i * channels + c;
    if (src->dense) return src->dense + index * rows * cols;
    int64_t ph = src->pooled_h, pw = src->pooled_w;
    kn_cpu_max_unpool_2x2_plane(src->pooled + index * ph * pw, src->which + index * ph * pw, ph, pw,
                                rows, cols, tmp);
    return tmp;
}

/* Image i of d->in [cin, h, w] into dst [cin, hp, wp], zero borders and zero slack after
 * (tmp: h*w floats for a pooled source). */
static void pad_image(const direct_conv *d, int64_t i, float *dst, float *tmp)
{
    memset(dst, 0, sizeof(float) * (size_t)padded_floats(d));
    for (int64_t c = 0; c < d->cin; c++) {
        const float *plane = plane_of(&d->in, i, c, d->cin, d->h, d->w, tmp);
        for (int64_t r = 0; r < d->h; r++)
            memcpy(dst + c * d->plane + (r + d->ph) * d->wp + d->pw, plane + r * d->w,
                   sizeof(float) * (size_t)d->w);
    }
}

/* ---- forward (and the input gradient, which is one) --------------------------------- */

/* One image's sums at yv[o*lv + r*wp + c]: MR x NR tiles over the virtual columns. */
static void sums_by_tiles(const direct_conv *d, const float *xpad, float *yv)
{
    const kn_cpu_ukernel *uk = d->uk;
    int mr = uk->mr, nr = uk->nr;
    int64_t panels = (d->cout + mr - 1) / mr;
    for (int64_t v = 0; v < d->lv; v += nr) {
        int nv = d->lv - v < nr ? (int)(d->lv - v) : nr;
        for (int64_t q = 0; q < panels; q++) {
            int m = d->cout - q * mr < mr ? (int)(d->cout - q * mr) : mr;
            uk->fn(d->kdim, d->apack + q * mr * d->kdim, xpad + v, d->offsets,
                   yv + q * mr * d->lv + v, d->lv, m, nv, false);
        }
    }
}

/* One image's sums at yv[(r*wo + c)*cout + o]: pixel-row tiles. */
static void sums_by_pixel_rows(const direct_conv *d, const float *xpad, float *yv)
{
    const kn_cpu_ukernel *uk = d->uk;
    for (int64_t r = 0; r < d->ho; r++)
        for (int64_t c = 0; c < d->wo; c += uk->pixels_pr) {
            int m = d->wo - c < uk->pixels_pr ? (int)(d->wo - c) : uk->pixels_pr;
            for (int64_t o = 0; o < d->cout; o += d->pchunk)
                uk->pixels_fn(d->kdim, d->apack + o * d->kdim, xpad + r * d->wp + c, d->offsets,
                              yv + (r * d->wo + c) * d->cout + o, d->cout, m);
        }
}

/* One image's sums plus the bias (and relu) into out [cout][ho][wo]. */
static void bias_relu(const direct_conv *d, const float *yv, float *out, bool relu)
{
    int64_t out_plane = d->ho * d->wo, cout = d->cout;
    if (d->pchunk) { /* the sums at yv[p*cout + o] */
        for (int64_t o = 0; o < cout; o++) {
            float b = d->bias ? d->bias[o] : 0.f, *dst = out + o * out_plane;
            for (int64_t p = 0; p < out_plane; p++) dst[p] = yv[p * cout + o] + b;
            if (relu) /* kn_relu's expression: NaN stays NaN */
                for (int64_t p = 0; p < out_plane; p++) dst[p] = dst[p] < 0.f ? 0.f : dst[p];
        }
        return;
    }
    for (int64_t o = 0; o < cout; o++) { /* the sums at yv[o*lv + r*wp + c] */
        float b = d->bias ? d->bias[o] : 0.f;
        for (int64_t r = 0; r < d->ho; r++) {
            const float *src = yv + o * d->lv + r * d->wp;
            float *dst = out + o * out_plane + r * d->wo;
            if (relu)
                for (int64_t c = 0; c < d->wo; c++) {
                    float v = src[c] + b;
                    dst[c] = v < 0.f ? 0.f : v;
                }
            else
                for (int64_t c = 0; c < d->wo; c++) dst[c] = src[c] + b;
        }
    }
}

/* Padded rows of 16 (a 14-wide map, 3x3, pad 1) with AVX-512: each vector of the
 * virtual layout is one output row (14 values and the 2 dropped), so the 8 x 32 tile
 * (the micro-kernel's: the same FMA chains from zero in step order, the same bits) can
 * add the bias, apply relu and store its rows straight into the output, masked to 14:
 * no virtual output in between and no epilogue pass over it. */
#if defined(__x86_64__)
__attribute__((target("avx512f,fma"))) static void
tiles_into_rows_of_16(const direct_conv *d, const float *xpad, float *out, bool relu)
{
    int64_t wo = d->wo, plane = d->ho * d->wo, panels = (d->cout + 7) / 8;
    const __mmask16 keep = (__mmask16)((1u << wo) - 1);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t v = 0; v < d->lv; v += 32) {
        int rows = d->lv - v >= 32 ? 2 : 1; /* the slack covers the second vector's reads */
        for (int64_t q = 0; q < panels; q++) {
            int m = d->cout - q * 8 < 8 ? (int)(d->cout - q * 8) : 8;
            const float *a = d->apack + q * 8 * d->kdim;
            __m512 acc[8][2];
            for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = zero;
            for (int64_t k = 0; k < d->kdim; k++) {
                const float *b = xpad + d->offsets[k] + v;
                __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
                for (int i = 0; i < 8; i++) {
                    __m512 ai = _mm512_set1_ps(a[k * 8 + i]);
                    acc[i][0] += ai * b0; /* the micro-kernel's expression */
                    acc[i][1] += ai * b1;
                }
            }
            for (int i = 0; i < m; i++) {
                int64_t o = q * 8 + i;
                __m512 bias = _mm512_set1_ps(d->bias ? d->bias[o] : 0.f);
                for (int j = 0; j < rows; j++) {
                    __m512 y = _mm512_add_ps(acc[i][j], bias);
                    if (relu) y = _mm512_max_ps(zero, y); /* 0 > y ? 0 : y: NaN stays */
                    _mm512_mask_storeu_ps(out + o * plane + (v / 16 + j) * wo, keep, y);
                }
            }
        }
    }
}
#else
static void tiles_into_rows_of_16(const direct_conv *d, const float *xpad, float *out, bool relu)
{
    (void)d, (void)xpad, (void)out, (void)relu; /* rows_of_16 is false off x86 */
}
#endif

static void forward_images(void *context, int64_t begin, int64_t end)
{
    direct_conv *d = context;
    int64_t out_plane = d->ho * d->wo;
    float *xpad = kn_cpu_scratch(KN_CPU_SCRATCH_CONV_IN, padded_floats(d));
    float *yv = kn_cpu_scratch(KN_CPU_SCRATCH_CONV_OUT, d->cout * d->lv);
    float *tmp = d->in.dense ? NULL : kn_cpu_scratch(KN_CPU_SCRATCH_CONV_PLANE, d->h * d->w);
    if (!xpad || !yv || (!d->in.dense && !tmp)) {
        __atomic_store_n(&d->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t i = begin; i < end; i++) {
        if (d->keep) xpad = d->keep + i * padded_floats(d); /* for the weight gradient */
        pad_image(d, i, xpad, tmp);
        const kn_cpu_conv_epilogue *e = d->epilogue;
        bool relu = e && e->relu, pool = e && e->pool;
        /* the pooled layer's activations stay in this thread's scratch (L2), never in y */
        float *out = pool ? kn_cpu_scratch(KN_CPU_SCRATCH_CONV_ACT, d->cout * out_plane)
                          : d->out + i * d->cout * out_plane;
        if (!out) {
            __atomic_store_n(&d->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        if (d->one_channel) {
            one_channel_forward(d, xpad, out, relu);
        } else if (d->rows_of_16) {
            tiles_into_rows_of_16(d, xpad, out, relu);
        } else {
            if (d->pchunk)
                sums_by_pixel_rows(d, xpad, yv);
            else
                sums_by_tiles(d, xpad, yv);
            bias_relu(d, yv, out, relu);
        }
        if (pool) { /* pool.c's own 2x2 kernel over this image's planes (inline: nested) */
            kn_cpu_pool_geometry g = *e->pool;
            g.planes = d->cout;
            int64_t pooled = d->cout * g.out_h * g.out_w;
            kn_cpu_max_pool2d_2x2(&g, out, e->pooled + i * pooled, e->which + i * pooled);
        }
    }
}

static bool run_forward(direct_conv *d)
{
    kn_cpu_parallel_for(d->count, 1, forward_images, d);
    return !d->failed;
}

bool kn_cpu_conv_direct_forward(const kn_cpu_conv_geometry *g, int64_t count, int64_t out_channels,
                                const float *x, const float *w, const float *bias,
                                const kn_cpu_conv_epilogue *epilogue, float *y, float *padded)
{
    direct_conv d;
    setup(&d, g->channels, g->height, g->width, g->pad_h, g->pad_w, g->kernel_h, g->kernel_w,
          out_channels);
    d.in = (kn_cpu_conv_planes){.dense = x};
    d.keep = padded;
    d.count = count;
    d.bias = bias;
    d.epilogue = epilogue;
    d.out = y;
    bool ok = make_offsets(&d) && pack_weights(&d, w) && run_forward(&d);
    release(&d);
    return ok;
}

bool kn_cpu_conv_direct_backward_input(const kn_cpu_conv_geometry *g, int64_t count,
                                       int64_t out_channels, const kn_cpu_conv_planes *gout,
                                       const float *w, float *gx)
{
    /* the forward of gout [count, O, oh, ow] padded by k - 1 - pad, with weights
     * wr[c, (o, ki, kj)] = w[o, c, kh-1-ki, kw-1-kj] */
    int64_t c = g->channels, o = out_channels, kh = g->kernel_h, kw = g->kernel_w;
    direct_conv d;
    setup(&d, o, g->out_h, g->out_w, kh - 1 - g->pad_h, kw - 1 - g->pad_w, kh, kw, c);
    d.in = *gout;
    d.count = count;
    d.out = gx;
    float *wr = malloc(sizeof(float) * (size_t)(c * o * kh * kw));
    bool ok = wr != NULL;
    if (ok)
        for (int64_t ci = 0; ci < c; ci++)
            for (int64_t oi = 0; oi < o; oi++)
                for (int64_t ki = 0; ki < kh; ki++)
                    for (int64_t kj = 0; kj < kw; kj++)
                        wr[((ci * o + oi) * kh + ki) * kw + kj] =
                            w[((oi * c + ci) * kh + (kh - 1 - ki)) * kw + (kw - 1 - kj)];
    ok = ok && make_offsets(&d) && pack_weights(&d, wr) && run_forward(&d);
    free(wr);
    release(&d);
    return ok;
}

/* ---- weight and bias gradient ------------------------------------------------------- */

/* *sum += the lane-parallel sum of a plane (kn_cpu_conv_bias_grad's order). */
static void add_plane_sum(const float *plane, int64_t n, float *sum)
{
    float s;
    kn_cpu_conv_bias_grad(plane, 1, 1, n, &s);
    *sum += s;
}

#if defined(__x86_64__)
/* dst[k * ld + c] = src[c][v + k] for a 16 x 16 block: 16 channel planes from position v
 * into 16 rows of gt. Three rounds of shuffles (32-bit pairs, 64-bit pairs, 128-bit
 * lanes twice) instead of 256 scalar stores, each to a line of its own. */
__attribute__((target("avx512f"))) static void transpose16(const float *const *src, int64_t v,
                                                           float *dst, int64_t ld)
{
    __m512 r[16], t[16];
    for (int c = 0; c < 16; c++) r[c] = _mm512_loadu_ps(src[c] + v);
    for (int c = 0; c < 16; c += 2) { /* per 128-bit lane: a0 b0 a1 b1, a2 b2 a3 b3 */
        t[c] = _mm512_unpacklo_ps(r[c], r[c + 1]);
        t[c + 1] = _mm512_unpackhi_ps(r[c], r[c + 1]);
    }
    for (int c = 0; c < 16; c += 4) { /* a0 b0 c0 d0, a1 .. d1, a2 .. d2, a3 .. d3 */
        __m512d lo = _mm512_castps_pd(t[c]), hi = _mm512_castps_pd(t[c + 1]);
        __m512d lo2 = _mm512_castps_pd(t[c + 2]), hi2 = _mm512_castps_pd(t[c + 3]);
        r[c] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
        r[c + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
        r[c + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
        r[c + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
    }
    /* r[j], r[4+j], r[8+j], r[12+j]: channels 0-3, 4-7, 8-11, 12-15 at positions j, j+4,
     * j+8, j+12 (one per 128-bit lane) */
    for (int j = 0; j < 4; j++) {
        __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);      /* positions j, j+8 */
        __m512 b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);      /* j+4, j+12 */
        __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88); /* j, j+8 */
        __m512 e = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd); /* j+4, j+12 */
        _mm512_storeu_ps(dst + j * ld, _mm512_shuffle_f32x4(a, c, 0x88));
        _mm512_storeu_ps(dst + (j + 8) * ld, _mm512_shuffle_f32x4(a, c, 0xdd));
        _mm512_storeu_ps(dst + (j + 4) * ld, _mm512_shuffle_f32x4(b, e, 0x88));
        _mm512_storeu_ps(dst + (j + 12) * ld, _mm512_shuffle_f32x4(b, e, 0xdd));
    }
}
#endif

/* Rows form: image i's gout into NR-column panels [panels][ho*wo][NR], gt[v][o], zero
 * past cout; each channel's sum added to bias_sum (or NULL). tmp: 16 planes of ho*wo.
 * With AVX-512, 16 channels at a time in 16 x 16 blocks (the same values moved). */
static void transpose_gout(const direct_conv *d, int64_t i, float *gt, float *tmp, float *bias_sum)
{
    int nr = d->wnr;
    int64_t panels = (d->cout + nr - 1) / nr, plane = d->ho * d->wo, o = 0;
    if (d->cout % nr) memset(gt, 0, sizeof(float) * (size_t)(panels * plane * nr));
#if defined(__x86_64__)
    if (nr % 16 == 0 && !strcmp(d->uk->name, "avx512"))
        for (; o + 16 <= d->cout; o += 16) {
            const float *src[16];
            for (int c = 0; c < 16; c++) {
                src[c] = plane_of(&d->gout, i, o + c, d->cout, d->ho, d->wo, tmp + c * plane);
                if (bias_sum) add_plane_sum(src[c], plane, &bias_sum[o + c]);
            }
            float *block = gt + (o / nr) * plane * nr + o % nr; /* within one panel */
            int64_t v = 0;
            for (; v + 16 <= plane; v += 16) transpose16(src, v, block + v * nr, nr);
            for (; v < plane; v++)
                for (int c = 0; c < 16; c++) block[v * nr + c] = src[c][v];
        }
#endif
    for (; o < d->cout; o++) {
        const float *src = plane_of(&d->gout, i, o, d->cout, d->ho, d->wo, tmp);
        if (bias_sum) add_plane_sum(src, plane, &bias_sum[o]);
        float *col = gt + (o / nr) * plane * nr + o % nr;
        for (int64_t v = 0; v < plane; v++) col[v * nr] = src[v];
    }
}

/* Dot form: image i's gout in virtual layout [cout][lv], zero in the dropped columns;
 * each channel's sum added to bias_sum (or NULL). */
static void virtual_gout(const direct_conv *d, int64_t i, float *gv, float *tmp, float *bias_sum)
{
    for (int64_t o = 0; o < d->cout; o++) {
        const float *src = plane_of(&d->gout, i, o, d->cout, d->ho, d->wo, tmp);
        if (bias_sum) add_plane_sum(src, d->ho * d->wo, &bias_sum[o]);
        for (int64_t r = 0; r < d->ho; r++) {
            float *dst = gv + o * d->lv + r * d->wp;
            memcpy(dst, src + r * d->wo, sizeof(float) * (size_t)d->wo);
            memset(dst + d->wo, 0, sizeof(float) * (size_t)(d->wp - d->wo));
        }
    }
}

/* Rows form: part[kdim][cout] += the image's products, MR steps x NR channels a tile. */
static void weight_grad_rows(const direct_conv *d, const float *xpad, const float *gt, float *part)
{
    int mr = d->wmr, nr = d->wnr;
    for (int64_t p = 0; p * mr < d->kdim; p++) {
        int m = d->kdim - p * mr < mr ? (int)(d->kdim - p * mr) : mr;
        for (int64_t q = 0; q * nr < d->cout; q++) {
            int n = d->cout - q * nr < nr ? (int)(d->cout - q * nr) : nr;
            d->wrows(d->ho, d->wo, d->wp, xpad, d->offsets + p * mr, gt + q * d->ho * d->wo * nr,
                     part + p * mr * d->cout + q * nr, d->cout, m, n, true);
        }
    }
}

/* Dot form: part[cout][kdim] += the image's dot products, 4 x 4 a block. */
static void weight_grad_dots(const direct_conv *d, const float *xpad, const float *gv, float *part)
{
    kn_cpu_dot_fn dot = kn_cpu_dot_kernel();
    for (int64_t o = 0; o < d->cout; o += KN_CPU_DOT_MR) {
        int m = d->cout - o < KN_CPU_DOT_MR ? (int)(d->cout - o) : KN_CPU_DOT_MR;
        const float *ar[KN_CPU_DOT_MR];
        for (int i = 0; i < KN_CPU_DOT_MR; i++) ar[i] = gv + (o + (i < m ? i : 0)) * d->lv;
        for (int64_t k = 0; k < d->kdim; k += KN_CPU_DOT_NR) {
            int n = d->kdim - k < KN_CPU_DOT_NR ? (int)(d->kdim - k) : KN_CPU_DOT_NR;
            const float *br[KN_CPU_DOT_NR];
            for (int j = 0; j < KN_CPU_DOT_NR; j++) br[j] = xpad + d->offsets[k + (j < n ? j : 0)];
            dot(d->lv, ar, br, 1.f, part + o * d->kdim + k, d->kdim, m, n, true);
        }
    }
}

/* One input channel, 3x3 (AVX-512): acc[o][t][lane] += gout[o][r][c + lane] * xpad[r*wp
 * + c + lane + (t/3)*wp + t%3] over every output row r and vector of 16 columns c (the
 * row's tail masked to zero on both sides, so an inf or NaN past it adds nothing), two
 * channels at a time with the 9 input vectors in registers. Sums over the whole slice
 * stay in acc, per lane; the slice's end adds the lanes in a fixed order. No gradient
 * copy (the dense planes are read in place), no dropped columns. */
#if defined(__x86_64__)
__attribute__((target("avx512f,fma"))) static void
one_channel_weight_grad(const direct_conv *d, int64_t i, const float *xpad, float *tmp,
                        float *bias_sum, float *acc)
{
    int64_t wo = d->wo, wp = d->wp, plane = d->ho * d->wo;
    for (int64_t o = 0; o < d->cout; o += 2) {
        bool two = o + 1 < d->cout;
        const float *g0 = plane_of(&d->gout, i, o, d->cout, d->ho, wo, tmp);
        const float *g1 = two ? plane_of(&d->gout, i, o + 1, d->cout, d->ho, wo, tmp + plane) : g0;
        if (bias_sum) {
            add_plane_sum(g0, plane, &bias_sum[o]);
            if (two) add_plane_sum(g1, plane, &bias_sum[o + 1]);
        }
        float *acc0 = acc + o * 9 * 16, *acc1 = two ? acc0 + 9 * 16 : acc0;
        __m512 a0[9], a1[9];
        for (int t = 0; t < 9; t++) {
            a0[t] = _mm512_loadu_ps(acc0 + t * 16);
            a1[t] = _mm512_loadu_ps(acc1 + t * 16);
        }
        for (int64_t r = 0; r < d->ho; r++)
            for (int64_t c = 0; c < wo; c += 16) {
                __mmask16 mask = row_mask(wo - c);
                const float *x0 = xpad + r * wp + c;
                __m512 v0 = _mm512_maskz_loadu_ps(mask, g0 + r * wo + c);
                __m512 v1 = _mm512_maskz_loadu_ps(mask, g1 + r * wo + c);
                for (int ki = 0; ki < 3; ki++)
                    for (int kj = 0; kj < 3; kj++) {
                        __m512 xv = _mm512_maskz_loadu_ps(mask, x0 + ki * wp + kj);
                        a0[ki * 3 + kj] = _mm512_fmadd_ps(v0, xv, a0[ki * 3 + kj]);
                        a1[ki * 3 + kj] = _mm512_fmadd_ps(v1, xv, a1[ki * 3 + kj]);
                    }
            }
        for (int t = 0; t < 9; t++) { /* acc1 last: with one channel left it is acc0 */
            _mm512_storeu_ps(acc0 + t * 16, a0[t]);
            if (two) _mm512_storeu_ps(acc1 + t * 16, a1[t]);
        }
    }
}

/* part[o][t] = the lanes of acc[o][t] added in a fixed order. */
__attribute__((target("avx512f"))) static void one_channel_lanes(const direct_conv *d,
                                                                 const float *acc, float *part)
{
    for (int64_t k = 0; k < d->cout * 9; k++)
        part[k] = _mm512_reduce_add_ps(_mm512_loadu_ps(acc + k * 16));
}
#else
static void one_channel_weight_grad(const direct_conv *d, int64_t i, const float *xpad, float *tmp,
                                    float *bias_sum, float *acc)
{
    (void)d, (void)i, (void)xpad, (void)tmp, (void)bias_sum, (void)acc; /* x86 only */
}
static void one_channel_lanes(const direct_conv *d, const float *acc, float *part)
{
    (void)d, (void)acc, (void)part;
}
#endif

/* Floats of the per-image gradient buffer each form needs. */
static int64_t gout_floats(const direct_conv *d)
{
    int nr = d->wnr;
    if (d->one_channel_wgrad) return d->cout * 9 * 16; /* the slice's lane sums */
    return d->dot_form ? d->cout * d->lv : ((d->cout + nr - 1) / nr) * d->ho * d->wo * nr;
}

static void weight_slices(void *context, int64_t begin, int64_t end)
{
    direct_conv *d = context;
    float *xpad = d->padded ? NULL : kn_cpu_scratch(KN_CPU_SCRATCH_CONV_IN, padded_floats(d));
    float *gbuf = kn_cpu_scratch(KN_CPU_SCRATCH_CONV_OUT, gout_floats(d));
    /* 16 gout planes (transpose_gout) or one input plane (pad_image) */
    int64_t tmp_floats = 16 * d->ho * d->wo > d->h * d->w ? 16 * d->ho * d->wo : d->h * d->w;
    float *tmp = kn_cpu_scratch(KN_CPU_SCRATCH_CONV_PLANE, tmp_floats);
    if ((!d->padded && !xpad) || !gbuf || !tmp) {
        __atomic_store_n(&d->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t s = begin; s < end; s++) {
        int64_t i0 = d->count * s / d->slices, i1 = d->count * (s + 1) / d->slices;
        float *part = d->partial + s * d->kdim * d->cout;
        float *bias_part = d->partial + d->slices * d->kdim * d->cout + s * d->cout;
        memset(part, 0, sizeof(float) * (size_t)(d->kdim * d->cout));
        memset(bias_part, 0, sizeof(float) * (size_t)d->cout);
        if (d->one_channel_wgrad) memset(gbuf, 0, sizeof(float) * (size_t)gout_floats(d));
        for (int64_t i = i0; i < i1; i++) {
            const float *xin = xpad;
            if (d->padded) /* as the forward padded it */
                xin = d->padded + i * padded_floats(d);
            else
                pad_image(d, i, xpad, tmp);
            float *bias = d->want_bias ? bias_part : NULL;
            if (d->one_channel_wgrad) {
                one_channel_weight_grad(d, i, xin, tmp, bias, gbuf);
            } else if (d->dot_form) {
                virtual_gout(d, i, gbuf, tmp, bias);
                weight_grad_dots(d, xin, gbuf, part);
            } else {
                transpose_gout(d, i, gbuf, tmp, bias);
                weight_grad_rows(d, xin, gbuf, part);
            }
        }
        if (d->one_channel_wgrad) one_channel_lanes(d, gbuf, part);
    }
}

/* The rows form keeps the FMA units busiest, but computes whole MR x NR tiles: with few
 * weight steps or channels (a first layer: 9 steps, 16 channels) most of a tile is
 * padding, and the dot form (4 x 4 blocks, about half the rows form's speed on full
 * tiles) wastes less. */
/* The weight gradient's form as KN_CONV_WGRAD forces it, for tests: read once a call, so
 * the tile width and the form below agree on it. */
typedef enum { WGRAD_CHOSEN, WGRAD_DOT, WGRAD_ROWS, WGRAD_ROWS_WIDE } wgrad_force;

static wgrad_force wgrad_forced(void)
{
    const char *force = getenv("KN_CONV_WGRAD");
    if (!force) return WGRAD_CHOSEN;
    if (!strcmp(force, "dot")) return WGRAD_DOT;
    if (!strcmp(force, "rows")) return WGRAD_ROWS;
    if (!strcmp(force, "rows-wide")) return WGRAD_ROWS_WIDE;
    return WGRAD_CHOSEN;
}

static bool weight_grad_form(const direct_conv *d, wgrad_force force)
{
    if (force == WGRAD_DOT) return true;
    if (force == WGRAD_ROWS || force == WGRAD_ROWS_WIDE) return false;
    int mr = d->uk->mr, nr = d->uk->nr; /* measured against the wide tile */
    double rows_use = (double)d->kdim / (double)(((d->kdim + mr - 1) / mr) * mr) * (double)d->cout /
                      (double)(((d->cout + nr - 1) / nr) * nr);
    double dot_use = (double)d->kdim / (double)(((d->kdim + 3) / 4) * 4) * (double)d->cout /
                     (double)(((d->cout + 3) / 4) * 4);
    return dot_use * 0.5 > rows_use;
}

bool kn_cpu_conv_direct_backward_weight(const kn_cpu_conv_geometry *g, int64_t count,
                                        int64_t out_channels, const float *x, const float *padded,
                                        const kn_cpu_conv_planes *gout, float *gw, float *gb)
{
    direct_conv d;
    setup(&d, g->channels, g->height, g->width, g->pad_h, g->pad_w, g->kernel_h, g->kernel_w,
          out_channels);
    d.in = (kn_cpu_conv_planes){.dense = x};
    d.padded = padded;
    d.gout = *gout;
    d.want_bias = gb != NULL;
    int64_t per_slice = d.kdim * d.cout + d.cout;
    d.slices = count < MAX_SLICES ? count : MAX_SLICES;
    if (d.slices * per_slice > PARTIAL_FLOATS) d.slices = PARTIAL_FLOATS / per_slice;
    if (d.slices < 1) d.slices = 1;
    d.count = count;
    /* few channels: the narrow tile, so no half-empty tiles (same bits either way;
     * KN_CONV_WGRAD=rows-wide keeps the MR x NR tile, for tests) */
    wgrad_force force = wgrad_forced();
    bool narrow = out_channels <= d.uk->narrow_nr && force != WGRAD_ROWS_WIDE;
    d.wmr = narrow ? d.uk->narrow_mr : d.uk->mr;
    d.wnr = narrow ? d.uk->narrow_nr : d.uk->nr;
    d.wrows = narrow ? d.uk->narrow_rows_fn : d.uk->rows_fn;
    d.dot_form = weight_grad_form(&d, force);
    d.one_channel_wgrad = force == WGRAD_CHOSEN && one_channel_ok(&d, NULL);
    d.partial = malloc(sizeof(float) * (size_t)(d.slices * per_slice));
    bool ok = d.partial && make_offsets(&d) &&
              (padded || kn_cpu_scratch(KN_CPU_SCRATCH_CONV_IN, padded_floats(&d))) &&
              kn_cpu_scratch(KN_CPU_SCRATCH_CONV_OUT, gout_floats(&d));
    if (ok) kn_cpu_parallel_for(d.slices, 1, weight_slices, &d);
    ok = ok && !d.failed;
    if (ok) {
        /* the slices' partial sums, in slice order, into gw [cout][kdim] */
        for (int64_t k = 0; k < d.kdim; k++)
            for (int64_t o = 0; o < d.cout; o++) {
                int64_t at = d.dot_form || d.one_channel_wgrad ? o * d.kdim + k : k * d.cout + o;
                float sum = 0.f;
                for (int64_t s = 0; s < d.slices; s++) sum += d.partial[s * d.kdim * d.cout + at];
                gw[o * d.kdim + k] = sum;
            }
        if (gb) {
            const float *bias_parts = d.partial + d.slices * d.kdim * d.cout;
            for (int64_t o = 0; o < d.cout; o++) {
                float sum = 0.f;
                for (int64_t s = 0; s < d.slices; s++) sum += bias_parts[s * d.cout + o];
                gb[o] = sum;
            }
        }
    }
    release(&d);
    return ok;
}

/*
 * norm.c — layer norm and batch norm kernels (forward statistics, normalisation and the
 * fused analytic backward) over contiguous float32 buffers.
 *
 * Reductions keep several independent accumulators (lanes) so the compiler can
 * vectorise them without reassociating a single sum. Layer norm rows are short, so
 * float lanes suffice; batch norm reduces up to N*H*W values per channel: float lanes
 * over each image's plane, folded into double lanes across the batch.
 */
#include "kn_cpu.h"
#include "kn_cpu_norm.h"
#include "kn_cpu_ukernel.h"
#include "kn_cpu_vec.h"

#include <math.h>
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define LANES 16

static int64_t grain_for(int64_t work_per_item)
{
    int64_t g = KN_CPU_GRAIN_ELEMENTWISE / (work_per_item > 0 ? work_per_item : 1);
    return g > 0 ? g : 1;
}

/* ---- layer norm ------------------------------------------------------------------------ */

typedef struct ln_ctx {
    const float *x, *weight, *bias;
    float *y, *mean_out, *rstd_out;
    int64_t rows, cols;
    float eps;
} ln_ctx;

static inline float lane_sum(const float *acc)
{
    float s = 0.f;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

CLONES static void ln_forward_rows(void *arg, int64_t begin, int64_t end)
{
    const ln_ctx *c = arg;
    int64_t n = c->cols;
    for (int64_t r = begin; r < end; r++) {
        const float *x = c->x + r * n;
        float *y = c->y + r * n;
        float acc[LANES] = {0};
        int64_t j = 0;
        for (; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += x[j + k];
        float sum = lane_sum(acc);
        for (; j < n; j++) sum += x[j];
        float m = sum / (float)n;
        float acc2[LANES] = {0};
        for (j = 0; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) {
                float d = x[j + k] - m;
                acc2[k] += d * d;
            }
        float sq = lane_sum(acc2);
        for (; j < n; j++) sq += (x[j] - m) * (x[j] - m);
        float rs = 1.f / sqrtf(sq / (float)n + c->eps);
        c->mean_out[r] = m;
        c->rstd_out[r] = rs;
        const float *w = c->weight, *b = c->bias;
        if (w && b)
            for (j = 0; j < n; j++) y[j] = (x[j] - m) * rs * w[j] + b[j];
        else if (w)
            for (j = 0; j < n; j++) y[j] = (x[j] - m) * rs * w[j];
        else if (b)
            for (j = 0; j < n; j++) y[j] = (x[j] - m) * rs + b[j];
        else
            for (j = 0; j < n; j++) y[j] = (x[j] - m) * rs;
    }
}

void kn_cpu_layer_norm_forward(const float *x, const float *weight, const float *bias, float *y,
                               float *mean, float *rstd, int64_t rows, int64_t cols, float eps)
{
    ln_ctx c = {.x = x,
                .weight = weight,
                .bias = bias,
                .y = y,
                .mean_out = mean,
                .rstd_out = rstd,
                .rows = rows,
                .cols = cols,
                .eps = eps};
    kn_cpu_parallel_for(rows, grain_for(cols), ln_forward_rows, &c);
}

/* ---- layer norm backward ---------------------------------------------------------------
 * One parallel region over fixed blocks of rows. Per row, in 16-float vectors:
 *   g = dy * weight, sum_g = sum(g), sum_gx = sum(g * (x - mean)) * rstd,
 *   dx = rstd * (g - sum_g / n - (x - mean) * rstd * sum_gx / n);
 * and each block adds its rows' dy * xhat and dy into its own partial dweight / dbias
 * (rows in order). The partials are then added in block order. The blocks depend on the
 * shape only, so the bits are the same for any thread count; before, dx, dweight and
 * dbias were three regions, and the row sums compiled to scalar horizontal adds. */

typedef struct ln_back {
    const float *x, *weight, *dy, *mean, *rstd;
    float *dx;
    float *parts; /* [blocks][2][cols]: dweight then dbias partials, or NULL */
    bool want_dw, want_db;
    int64_t rows, cols, block_rows;
} ln_back;

/* Rows per block: ~8K elements, at most 64 blocks (the partials stay <= 128 rows). */
static int64_t ln_block_rows(int64_t rows, int64_t cols)
{
    int64_t b = 8192 / (cols > 0 ? cols : 1);
    int64_t min_b = (rows + 63) / 64;
    if (b < min_b) b = min_b;
    return b > 0 ? b : 1;
}

CLONES static void ln_backward_blocks(void *arg, int64_t begin, int64_t end)
{
    const ln_back *c = arg;
    int64_t n = c->cols, nv = n - n % W;
    const float *w = c->weight;
    float inv_n = 1.f / (float)n;
    for (int64_t blk = begin; blk < end; blk++) {
        int64_t r0 = blk * c->block_rows, r1 = r0 + c->block_rows;
        if (r1 > c->rows) r1 = c->rows;
        float *pw = c->parts ? c->parts + blk * 2 * n : NULL, *pb = pw ? pw + n : NULL;
        if (pw) memset(pw, 0, sizeof(float) * 2 * (size_t)n);
        for (int64_t r = r0; r < r1; r++) {
            const float *x = c->x + r * n, *dy = c->dy + r * n;
            float m = c->mean[r], rs = c->rstd[r];
            if (c->dx) {
                vf acc_g = splat(0.f), acc_gx = splat(0.f);
                float sum_g = 0.f, sum_gx = 0.f;
                int64_t j = 0;
                for (; j < nv; j += W) {
                    vf g = w ? load(dy + j) * load(w + j) : load(dy + j);
                    acc_g += g;
                    acc_gx += g * (load(x + j) - m);
                }
                for (; j < n; j++) {
                    float g = w ? dy[j] * w[j] : dy[j];
                    sum_g += g;
                    sum_gx += g * (x[j] - m);
                }
                sum_g += hsum(acc_g);
                sum_gx = (sum_gx + hsum(acc_gx)) * rs;
                float a = sum_g * inv_n, b = sum_gx * inv_n * rs;
                float *dx = c->dx + r * n;
                for (j = 0; j < nv; j += W) {
                    vf g = w ? load(dy + j) * load(w + j) : load(dy + j);
                    store(dx + j, rs * (g - a - (load(x + j) - m) * b));
                }
                for (; j < n; j++) {
                    float g = w ? dy[j] * w[j] : dy[j];
                    dx[j] = rs * (g - a - (x[j] - m) * b);
                }
            }
            if (pw) {
                int64_t j = 0;
                for (; j < nv; j += W) {
                    vf d = load(dy + j);
                    if (c->want_dw) store(pw + j, load(pw + j) + d * ((load(x + j) - m) * rs));
                    if (c->want_db) store(pb + j, load(pb + j) + d);
                }
                for (; j < n; j++) {
                    pw[j] += dy[j] * ((x[j] - m) * rs);
                    pb[j] += dy[j];
                }
            }
        }
    }
}

bool kn_cpu_layer_norm_backward(const float *dy, const float *x, const float *mean,
                                const float *rstd, const float *weight, float *dx, float *dweight,
                                float *dbias, int64_t rows, int64_t cols)
{
    if (rows == 0 || cols == 0) {
        if (dweight) memset(dweight, 0, sizeof(float) * (size_t)cols);
        if (dbias) memset(dbias, 0, sizeof(float) * (size_t)cols);
        return true;
    }
    ln_back c = {.x = x,
                 .weight = weight,
                 .dy = dy,
                 .mean = mean,
                 .rstd = rstd,
                 .dx = dx,
                 .want_dw = dweight != NULL,
                 .want_db = dbias != NULL,
                 .rows = rows,
                 .cols = cols,
                 .block_rows = ln_block_rows(rows, cols)};
    int64_t blocks = (rows + c.block_rows - 1) / c.block_rows;
    if (dweight || dbias) {
        /* blocks <= 64, so this is at most 128 rows of floats */
        c.parts = kn_cpu_scratch(KN_CPU_SCRATCH_NORM, blocks * 2 * cols);
        if (!c.parts) return false;
    }
    kn_cpu_parallel_for(blocks, 1, ln_backward_blocks, &c);
    if (!c.parts) return true;
    for (int64_t j = 0; j < cols; j++) {
        float sw = c.parts[j], sb = c.parts[cols + j];
        for (int64_t blk = 1; blk < blocks; blk++) {
            sw += c.parts[blk * 2 * cols + j];
            sb += c.parts[(blk * 2 + 1) * cols + j];
        }
        if (dweight) dweight[j] = sw;
        if (dbias) dbias[j] = sb;
    }
    return true;
}

/* ---- batch norm ------------------------------------------------------------------------ */

typedef struct bn_ctx {
    const float *x, *dy, *mean_f;
    const float *u, *v, *p, *q, *r;
    float *out;
    double *out1, *out2;
    int64_t n, c, s;
} bn_ctx;

/* Per segment of at most BN_SEGMENT values of a row (one image's plane of the channel):
 * float lanes, then the segment's lanes added into double lanes. A lane sums at most
 * BN_SEGMENT / LANES = 64 floats, so its partial sum keeps ~7 digits, and the double
 * sum over segments and the N rows keeps them. Twice the vector width of double
 * accumulation on every element; the per-channel result depends on n, c, s alone,
 * never on how channels are split over threads. */
#define BN_SEGMENT 1024
typedef float vf8 __attribute__((vector_size(32)));
typedef double vd8 __attribute__((vector_size(64)));

/* acc[0] holds lanes 0-7, acc[1] lanes 8-15, each lane += the float lane widened:
 * two vector conversions and adds, not sixteen scalar ones. */
VINLINE void fold_segment(vd8 acc[2], vf part)
{
    vf8 lo, hi;
    memcpy(&lo, &part, sizeof lo);
    memcpy(&hi, (const char *)&part + sizeof lo, sizeof hi);
    acc[0] += __builtin_convertvector(lo, vd8);
    acc[1] += __builtin_convertvector(hi, vd8);
}

static inline double dlanes_sum(const vd8 acc[2])
{
    double s = 0;
    for (int k = 0; k < LANES; k++) s += acc[k / 8][k % 8];
    return s;
}

/* One row (an image's plane of a channel) into the channel's double lanes, in segments:
 * acc1 += a - ka, acc2 += (a - ka) * (b - kb). The statistics take a = b = x and ka =
 * kb = the shift, the gradient sums a = dy (ka = 0) and b = x, kb = the mean. */
VINLINE void row_sums(const float *a, float ka, const float *b, float kb, int64_t s, vd8 acc1[2],
                      vd8 acc2[2])
{
    for (int64_t j0 = 0; j0 < s; j0 += BN_SEGMENT) {
        const float *pa = a + j0, *pb = b + j0;
        int64_t len = s - j0 < BN_SEGMENT ? s - j0 : BN_SEGMENT, j = 0;
        vf f1 = splat(0.f), f2 = splat(0.f), va = splat(ka), vb = splat(kb);
        vf e1 = f1, e2 = f2; /* a second chain: the adds' latency, not one chain's */
        for (; j + 2 * LANES <= len; j += 2 * LANES) {
            vf d = load(pa + j) - va, e = load(pa + j + LANES) - va;
            f1 += d;
            f2 += d * (load(pb + j) - vb);
            e1 += e;
            e2 += e * (load(pb + j + LANES) - vb);
        }
        f1 += e1;
        f2 += e2;
        for (; j + LANES <= len; j += LANES) {
            vf d = load(pa + j) - va;
            f1 += d;
            f2 += d * (load(pb + j) - vb);
        }
        float t1 = 0.f, t2 = 0.f; /* the tail, scalar: keeps f1, f2 in registers */
        for (; j < len; j++) {
            float d = pa[j] - ka;
            t1 += d;
            t2 += d * (pb[j] - kb);
        }
        f1[0] += t1;
        f2[0] += t2;
        fold_segment(acc1, f1);
        fold_segment(acc2, f2);
    }
}

/* Sums of d = x - K and d*d per channel, K the channel's first value: the shift keeps
 * the one-pass variance exact enough even for data far from zero. */
CLONES static void bn_stats_channels(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    for (int64_t ch = begin; ch < end; ch++) {
        float shift = b->x[ch * b->s];
        vd8 a1[2] = {{0}, {0}}, a2[2] = {{0}, {0}};
        for (int64_t i = 0; i < b->n; i++) {
            const float *x = b->x + (i * b->c + ch) * b->s;
            row_sums(x, shift, x, shift, b->s, a1, a2);
        }
        b->out1[ch] = dlanes_sum(a1); /* shifted sums: the caller finishes them */
        b->out2[ch] = dlanes_sum(a2);
    }
}

CLONES static void bn_stats_cols(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    double *s1 = b->out1, *s2 = b->out2;
    const float *x0 = b->x;
    for (int64_t ch = begin; ch < end; ch++) s1[ch] = s2[ch] = 0;
    for (int64_t i = 0; i < b->n; i++) {
        const float *x = b->x + i * b->c;
        for (int64_t ch = begin; ch < end; ch++) {
            double d = (double)x[ch] - x0[ch];
            s1[ch] += d;
            s2[ch] += d * d;
        }
    }
}

void kn_cpu_batch_norm_stats(const float *x, int64_t n, int64_t c, int64_t s, double *mean,
                             double *var)
{
    bn_ctx b = {.x = x, .n = n, .c = c, .s = s, .out1 = mean, .out2 = var};
    if (s == 1) {
        int64_t grain = grain_for(n);
        kn_cpu_parallel_for(c, grain < 16 ? 16 : grain, bn_stats_cols, &b);
    } else {
        kn_cpu_parallel_for(c, grain_for(n * s), bn_stats_channels, &b);
    }
    double count = (double)(n * s);
    for (int64_t ch = 0; ch < c; ch++) {
        double shifted_mean = mean[ch] / count;
        double v = var[ch] / count - shifted_mean * shifted_mean;
        mean[ch] = shifted_mean + (double)x[ch * s];
        var[ch] = v > 0 ? v : 0;
    }
}

/* Sums of dy and dy*(x - mean) per channel (row_sums). */
CLONES static void bn_grad_channels(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    for (int64_t ch = begin; ch < end; ch++) {
        vd8 a1[2] = {{0}, {0}}, a2[2] = {{0}, {0}};
        for (int64_t i = 0; i < b->n; i++) {
            int64_t base = (i * b->c + ch) * b->s;
            row_sums(b->dy + base, 0.f, b->x + base, b->mean_f[ch], b->s, a1, a2);
        }
        b->out1[ch] = dlanes_sum(a1);
        b->out2[ch] = dlanes_sum(a2);
    }
}

CLONES static void bn_grad_cols(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    double *s1 = b->out1, *s2 = b->out2;
    for (int64_t ch = begin; ch < end; ch++) s1[ch] = s2[ch] = 0;
    for (int64_t i = 0; i < b->n; i++) {
        const float *x = b->x + i * b->c, *dy = b->dy + i * b->c;
        for (int64_t ch = begin; ch < end; ch++) {
            s1[ch] += dy[ch];
            s2[ch] += (double)dy[ch] * (x[ch] - b->mean_f[ch]);
        }
    }
}

void kn_cpu_batch_norm_grad_sums(const float *dy, const float *x, const float *mean, int64_t n,
                                 int64_t c, int64_t s, double *sum_dy, double *sum_dyx)
{
    bn_ctx b = {
        .x = x, .dy = dy, .mean_f = mean, .n = n, .c = c, .s = s, .out1 = sum_dy, .out2 = sum_dyx};
    if (s == 1) {
        int64_t grain = grain_for(n);
        kn_cpu_parallel_for(c, grain < 16 ? 16 : grain, bn_grad_cols, &b);
    } else {
        kn_cpu_parallel_for(c, grain_for(n * s), bn_grad_channels, &b);
    }
}

/* Blocks of s elements share one channel (s > 1), or rows of c channels (s == 1). */
CLONES static void bn_affine_blocks(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    int64_t s = b->s;
    for (int64_t blk = begin; blk < end; blk++) {
        int64_t ch = blk % b->c;
        const float *u = b->u ? b->u + blk * s : NULL, *v = b->v ? b->v + blk * s : NULL;
        float *out = b->out + blk * s;
        /* p is NULL without u, q and the centre without v: no offsets from NULL (UB) */
        const float *p = u ? b->p + ch : NULL, *q = v ? b->q + ch : NULL;
        const float *r = b->r + ch, *m = v ? b->mean_f + ch : NULL;
        if (u && v)
            for (int64_t j = 0; j < s; j++) out[j] = p[0] * u[j] + q[0] * (v[j] - m[0]) + r[0];
        else if (u)
            for (int64_t j = 0; j < s; j++) out[j] = p[0] * u[j] + r[0];
        else
            for (int64_t j = 0; j < s; j++) out[j] = q[0] * (v[j] - m[0]) + r[0];
    }
}

CLONES static void bn_affine_rows(void *arg, int64_t begin, int64_t end)
{
    const bn_ctx *b = arg;
    int64_t c = b->c;
    const float *p = b->p, *q = b->q, *r = b->r, *m = b->mean_f;
    for (int64_t i = begin; i < end; i++) {
        const float *u = b->u ? b->u + i * c : NULL, *v = b->v ? b->v + i * c : NULL;
        float *out = b->out + i * c;
        if (u && v)
            for (int64_t ch = 0; ch < c; ch++)
                out[ch] = p[ch] * u[ch] + q[ch] * (v[ch] - m[ch]) + r[ch];
        else if (u)
            for (int64_t ch = 0; ch < c; ch++) out[ch] = p[ch] * u[ch] + r[ch];
        else
            for (int64_t ch = 0; ch < c; ch++) out[ch] = q[ch] * (v[ch] - m[ch]) + r[ch];
    }
}

void kn_cpu_batch_norm_affine(const float *u, const float *v, const float *p, const float *q,
                              const float *center, const float *r, float *out, int64_t n, int64_t c,
                              int64_t s)
{
    bn_ctx b = {.u = u,
                .v = v,
                .p = p,
                .q = q,
                .r = r,
                .mean_f = center,
                .out = out,
                .n = n,
                .c = c,
                .s = s};
    if (s == 1)
        kn_cpu_parallel_for(n, grain_for(c), bn_affine_rows, &b);
    else
        kn_cpu_parallel_for(n * c, grain_for(s), bn_affine_blocks, &b);
}

/*
 * reduce.c — the reduction kernels (sum, mean, var, max/min with indices) and
 * softmax / log_softmax with their backward, over [outer, reduce, inner] blocks.
 *
 * Two shapes of work: inner == 1 reduces contiguous rows, with several float lanes
 * the compiler vectorises; inner > 1 accumulates whole rows into a tile of columns, so
 * the loop over columns vectorises. Sums are cascaded — float lanes over a block, then
 * a double total — which is as fast as plain float and keeps large sums accurate.
 * Work is cut into tasks that do not depend on the thread count, so results are the
 * same bits for any number of threads.
 */
#include "kn_cpu_reduce.h"
#include "kn_cpu.h"
#include "kn_cpu_vec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define BLOCK 4096     /* elements summed in float lanes before joining the double total */
#define CHUNK 65536    /* one task's share of a long row that is split */
#define TILE 256       /* columns per task when inner > 1 */
#define ROW_BLOCK 64   /* rows summed in float before joining the double totals */
#define GRAIN 32768    /* elements of cheap work per task */
#define GRAIN_EXP 8192 /* elements per task for work that calls exp */

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}
static int64_t grain_for(int64_t per_task, int64_t elements)
{
    int64_t g = elements / (per_task > 0 ? per_task : 1);
    return g > 0 ? g : 1;
}

/* ---- 16-float vectors (kn_cpu_vec.h) ----------------------------------------------------
 * The row loops are reductions (and exp has selects) that the auto-vectoriser leaves
 * scalar without -ffast-math, so they are written 16 lanes at a time (vexp is there). */
static inline float fast_expf(float x)
{
    return kn_cpu_expf_inline(x);
}

/* ---- contiguous row sums ---------------------------------------------------------- */

/* Sum of x (or of (x - c)^2) over n elements: two 8-float accumulators per BLOCK, the
 * block totals joined in double. */
#define BLOCK_SUM(NAME, TERM)                                                                      \
    CLONES static double NAME(const float *x, int64_t n, float c)                                  \
    {                                                                                              \
        double total = 0.0;                                                                        \
        vf cv = splat(c);                                                                          \
        for (int64_t start = 0; start < n; start += BLOCK) {                                       \
            int64_t m = min64(n - start, BLOCK);                                                   \
            const float *p = x + start;                                                            \
            vf a0 = splat(0.f), a1 = splat(0.f);                                                   \
            int64_t i = 0;                                                                         \
            for (; i + 2 * W <= m; i += 2 * W) {                                                   \
                vf v = load(p + i), u = load(p + i + W);                                           \
                a0 += TERM(v, cv);                                                                 \
                a1 += TERM(u, cv);                                                                 \
            }                                                                                      \
            float tail = 0.f;                                                                      \
            for (; i < m; i++) tail += TERM(p[i], c);                                              \
            total += (double)(hsum(a0 + a1) + tail);                                               \
        }                                                                                          \
        (void)cv;                                                                                  \
        return total;                                                                              \
    }

#define PLAIN(v, c) (v)
#define SQUARED(v, c) (((v) - (c)) * ((v) - (c)))
BLOCK_SUM(row_sum, PLAIN)
BLOCK_SUM(row_sumsq, SQUARED)

/* ---- column tiles: accumulate rows into w columns ----------------------------------- */

/* total[i] = sum over r of x[r * inner + i] (or of (x - center[i])^2), i < w. */
CLONES static void tile_sum(const float *x, int64_t reduce, int64_t inner, int64_t w,
                            const float *center, double *total)
{
    float part[TILE];
    for (int64_t i = 0; i < w; i++) total[i] = 0.0;
    for (int64_t r0 = 0; r0 < reduce; r0 += ROW_BLOCK) {
        int64_t r1 = min64(reduce, r0 + ROW_BLOCK);
        for (int64_t i = 0; i < w; i++) part[i] = 0.f;
        if (center) {
            for (int64_t r = r0; r < r1; r++) {
                const float *row = x + r * inner;
                for (int64_t i = 0; i < w; i++) {
                    float d = row[i] - center[i];
                    part[i] += d * d;
                }
            }
        } else {
            for (int64_t r = r0; r < r1; r++) {
                const float *row = x + r * inner;
                for (int64_t i = 0; i < w; i++) part[i] += row[i];
            }
        }
        for (int64_t i = 0; i < w; i++) total[i] += part[i];
    }
}

/* ---- sum / mean / var driver -------------------------------------------------------- */

typedef struct sum_job {
    const float *x;
    float *out;
    int64_t outer, reduce, inner;
    double divisor;
    bool var;
    int64_t chunks;      /* tasks per row when long rows are split (inner == 1) */
    double *partials;    /* one per task when split */
    const double *means; /* per row, second pass of a split var */
} sum_job;

static void row_task(void *arg, int64_t begin, int64_t end)
{
    sum_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        if (j->chunks == 1) {
            const float *row = j->x + t * j->reduce;
            double s = row_sum(row, j->reduce, 0.f);
            if (j->var) s = row_sumsq(row, j->reduce, (float)(s / (double)j->reduce));
            j->out[t] = (float)(s / j->divisor);
            continue;
        }
        int64_t o = t / j->chunks, c = t % j->chunks;
        int64_t start = c * CHUNK, n = min64(CHUNK, j->reduce - start);
        const float *p = j->x + o * j->reduce + start;
        j->partials[t] = j->means ? row_sumsq(p, n, (float)j->means[o]) : row_sum(p, n, 0.f);
    }
}

static void tile_task(void *arg, int64_t begin, int64_t end)
{
    sum_job *j = arg;
    int64_t tiles = (j->inner + TILE - 1) / TILE;
    double total[TILE];
    float center[TILE];
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / tiles, i0 = (t % tiles) * TILE, w = min64(TILE, j->inner - i0);
        const float *x = j->x + o * j->reduce * j->inner + i0;
        tile_sum(x, j->reduce, j->inner, w, NULL, total);
        if (j->var) {
            for (int64_t i = 0; i < w; i++) center[i] = (float)(total[i] / (double)j->reduce);
            tile_sum(x, j->reduce, j->inner, w, center, total);
        }
        float *out = j->out + o * j->inner + i0;
        for (int64_t i = 0; i < w; i++) out[i] = (float)(total[i] / j->divisor);
    }
}

/* Long rows are split in CHUNK pieces whose partial sums are joined in order. */
static void split_rows(sum_job *j)
{
    int64_t tasks = j->outer * j->chunks;
    double *partials = malloc(sizeof(double) * (size_t)tasks);
    double *means = j->var ? malloc(sizeof(double) * (size_t)j->outer) : NULL;
    if (!partials || (j->var && !means)) { /* no memory for the split: one task per row */
        free(partials);
        free(means);
        j->chunks = 1;
        kn_cpu_parallel_for(j->outer, 1, row_task, j);
        return;
    }
    j->partials = partials;
    for (int pass = 0; pass < (j->var ? 2 : 1); pass++) {
        j->means = pass ? means : NULL;
        kn_cpu_parallel_for(tasks, 1, row_task, j);
        for (int64_t o = 0; o < j->outer; o++) {
            double s = 0.0;
            for (int64_t c = 0; c < j->chunks; c++) s += partials[o * j->chunks + c];
            if (j->var && pass == 0)
                means[o] = s / (double)j->reduce;
            else
                j->out[o] = (float)(s / j->divisor);
        }
    }
    free(partials);
    free(means);
}

static void sum_like(const float *x, float *out, int64_t outer, int64_t reduce, int64_t inner,
                     double divisor, bool var)
{
    if (outer * inner == 0) return;
    if (reduce == 0) {
        float value = (float)((var ? NAN : 0.0) / divisor);
        for (int64_t i = 0; i < outer * inner; i++) out[i] = value;
        return;
    }
    sum_job j = {x, out, outer, reduce, inner, divisor, var, 1, NULL, NULL};
    if (inner == 1) {
        if (reduce >= 2 * CHUNK && outer < 8) {
            j.chunks = (reduce + CHUNK - 1) / CHUNK;
            split_rows(&j);
        } else {
            kn_cpu_parallel_for(outer, grain_for(reduce, GRAIN), row_task, &j);
        }
        return;
    }
    int64_t tiles = (inner + TILE - 1) / TILE;
    kn_cpu_parallel_for(outer * tiles, grain_for(reduce * min64(inner, TILE), GRAIN), tile_task,
                        &j);
}

void kn_cpu_sum(const float *x, float *out, int64_t outer, int64_t reduce, int64_t inner,
                double divisor)
{
    sum_like(x, out, outer, reduce, inner, divisor, false);
}

void kn_cpu_var(const float *x, float *out, int64_t outer, int64_t reduce, int64_t inner,
                double divisor)
{
    sum_like(x, out, outer, reduce, inner, divisor, true);
}

/* ---- max / min ------------------------------------------------------------------------ */

/* Index of the first element equal to value (there is one), 8 at a time. */
VINLINE int64_t find_first(const float *x, int64_t n, float value)
{
    vf target = splat(value);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        vi hit = load(x + i) == target;
        int any = 0;
        for (int k = 0; k < W; k++) any |= hit[k];
        if (any) break;
    }
    for (; i < n; i++)
        if (x[i] == value) return i;
    return 0;
}

/* Index of the first best element of a row: the best value by vector lanes, then a scan
 * for its first occurrence. A NaN wins (as in PyTorch); v * 0 flags NaN and inf lanes
 * cheaply, and only then do we look for a NaN. */
#define ROW_BEST(NAME, BETTER)                                                                     \
    CLONES static int64_t NAME(const float *x, int64_t n)                                          \
    {                                                                                              \
        float best = x[0], flag = 0.f;                                                             \
        int64_t i = 0;                                                                             \
        if (n >= 2 * W) {                                                                          \
            vf acc = load(x), acc2 = load(x + W);                                                  \
            vf chk = acc * 0.f + acc2 * 0.f;                                                       \
            for (i = 2 * W; i + 2 * W <= n; i += 2 * W) {                                          \
                vf v = load(x + i), u = load(x + i + W);                                           \
                acc = vselect(BETTER(v, acc), v, acc);                                             \
                acc2 = vselect(BETTER(u, acc2), u, acc2);                                          \
                chk += v * 0.f + u * 0.f;                                                          \
            }                                                                                      \
            acc = vselect(BETTER(acc2, acc), acc2, acc);                                           \
            best = acc[0];                                                                         \
            for (int k = 1; k < W; k++) best = (BETTER(acc[k], best)) ? acc[k] : best;             \
            flag = hsum(chk);                                                                      \
        }                                                                                          \
        for (; i < n; i++) {                                                                       \
            float v = x[i];                                                                        \
            best = (BETTER(v, best)) ? v : best;                                                   \
            flag += v * 0.f;                                                                       \
        }                                                                                          \
        if (flag != 0.f) /* a NaN or an infinity somewhere */                                      \
            for (int64_t k = 0; k < n; k++)                                                        \
                if (isnan(x[k])) return k;                                                         \
        return find_first(x, n, best);                                                             \
    }

#define GREATER(a, b) ((a) > (b))
#define LESS(a, b) ((a) < (b))
ROW_BEST(row_argmax, GREATER)
ROW_BEST(row_argmin, LESS)

#define TILE_BEST(NAME, BETTER)                                                                    \
    CLONES static void NAME(const float *x, int64_t reduce, int64_t inner, int64_t w, float *best, \
                            int64_t *index)                                                        \
    {                                                                                              \
        for (int64_t i = 0; i < w; i++) {                                                          \
            best[i] = x[i];                                                                        \
            index[i] = 0;                                                                          \
        }                                                                                          \
        for (int64_t r = 1; r < reduce; r++) {                                                     \
            const float *row = x + r * inner;                                                      \
            for (int64_t i = 0; i < w; i++) {                                                      \
                float v = row[i], b = best[i];                                                     \
                bool take = (BETTER(v, b)) || (v != v && b == b);                                  \
                best[i] = take ? v : b;                                                            \
                index[i] = take ? r : index[i];                                                    \
            }                                                                                      \
        }                                                                                          \
    }

TILE_BEST(tile_argmax, GREATER)
TILE_BEST(tile_argmin, LESS)

typedef struct max_job {
    const float *x;
    float *values;
    int64_t *indices;
    int64_t outer, reduce, inner;
    bool is_min;
} max_job;

static void max_row_task(void *arg, int64_t begin, int64_t end)
{
    max_job *j = arg;
    for (int64_t o = begin; o < end; o++) {
        const float *row = j->x + o * j->reduce;
        int64_t k = j->is_min ? row_argmin(row, j->reduce) : row_argmax(row, j->reduce);
        if (j->values) j->values[o] = row[k];
        if (j->indices) j->indices[o] = k;
    }
}

static void max_tile_task(void *arg, int64_t begin, int64_t end)
{
    max_job *j = arg;
    int64_t tiles = (j->inner + TILE - 1) / TILE;
    float best[TILE];
    int64_t index[TILE];
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / tiles, i0 = (t % tiles) * TILE, w = min64(TILE, j->inner - i0);
        const float *x = j->x + o * j->reduce * j->inner + i0;
        if (j->is_min)
            tile_argmin(x, j->reduce, j->inner, w, best, index);
        else
            tile_argmax(x, j->reduce, j->inner, w, best, index);
        for (int64_t i = 0; i < w; i++) {
            if (j->values) j->values[o * j->inner + i0 + i] = best[i];
            if (j->indices) j->indices[o * j->inner + i0 + i] = index[i];
        }
    }
}

/* One task per CHUNK of a long row; chunks are joined in order, so the first
 * occurrence (and the first NaN) still wins. */
typedef struct max_split_job {
    const float *x;
    int64_t reduce, chunks;
    bool is_min;
    int64_t *index; /* per task, absolute within the row */
} max_split_job;

static void max_split_task(void *arg, int64_t begin, int64_t end)
{
    max_split_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / j->chunks, start = (t % j->chunks) * CHUNK;
        const float *p = j->x + o * j->reduce + start;
        int64_t n = min64(CHUNK, j->reduce - start);
        j->index[t] = start + (j->is_min ? row_argmin(p, n) : row_argmax(p, n));
    }
}

static bool max_split(const float *x, float *values, int64_t *indices, int64_t outer,
                      int64_t reduce, bool is_min)
{
    int64_t chunks = (reduce + CHUNK - 1) / CHUNK;
    int64_t *index = malloc(sizeof(int64_t) * (size_t)(outer * chunks));
    max_split_job j = {x, reduce, chunks, is_min, index};
    if (!j.index) return false;
    kn_cpu_parallel_for(outer * chunks, 1, max_split_task, &j);
    for (int64_t o = 0; o < outer; o++) {
        const float *row = x + o * reduce;
        int64_t best = j.index[o * chunks];
        for (int64_t c = 1; c < chunks; c++) {
            float v = row[j.index[o * chunks + c]], b = row[best];
            bool better = is_min ? v < b : v > b;
            if (better || (isnan(v) && !isnan(b))) best = j.index[o * chunks + c];
        }
        if (values) values[o] = row[best];
        if (indices) indices[o] = best;
    }
    free(j.index);
    return true;
}

void kn_cpu_max(const float *x, float *values, int64_t *indices, int64_t outer, int64_t reduce,
                int64_t inner, bool is_min)
{
    if (outer * inner == 0 || reduce == 0) return;
    max_job j = {x, values, indices, outer, reduce, inner, is_min};
    if (inner == 1) {
        bool split = reduce >= 2 * CHUNK && outer < 8;
        if (split && max_split(x, values, indices, outer, reduce, is_min)) return;
        kn_cpu_parallel_for(outer, grain_for(reduce, GRAIN), max_row_task, &j);
        return;
    }
    int64_t tiles = (inner + TILE - 1) / TILE;
    kn_cpu_parallel_for(outer * tiles, grain_for(reduce * min64(inner, TILE), GRAIN), max_tile_task,
                        &j);
}

/* ---- softmax ------------------------------------------------------------------------- */

CLONES static float row_max(const float *x, int64_t n)
{
    vf acc = splat(-INFINITY);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        vf v = load(x + i);
        acc = vselect(v > acc, v, acc);
    }
    float m = -INFINITY;
    for (int k = 0; k < W; k++) m = acc[k] > m ? acc[k] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* sum of exp(x - m); stores the exponentials in y when y is not NULL */
CLONES static float row_exp_sum(const float *x, float *y, int64_t n, float m)
{
    vf acc = splat(0.f), mv = splat(m);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        vf e = vexp(load(x + i) - mv);
        if (y) store(y + i, e);
        acc += e;
    }
    float s = hsum(acc);
    for (; i < n; i++) {
        float e = fast_expf(x[i] - m);
        if (y) y[i] = e;
        s += e;
    }
    return s;
}

CLONES static void row_scale(float *y, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) y[i] *= scale;
}

/* (x - m) - lse, in that order: x - (m + lse) loses digits when |m| is large. */
CLONES static void row_shift(const float *x, float *y, int64_t n, float m, float lse)
{
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) - lse;
}

static void softmax_row(const float *x, float *y, int64_t n, bool log)
{
    float m = row_max(x, n); /* an all -inf row gives NaNs, as in PyTorch */
    if (log) {
        float s = row_exp_sum(x, NULL, n, m);
        row_shift(x, y, n, m, logf(s));
    } else {
        float s = row_exp_sum(x, y, n, m);
        row_scale(y, n, 1.f / s);
    }
}

/* Softmax down the rows of w columns at once, 8 columns per vector. */
CLONES static void softmax_tile(const float *x, float *y, int64_t dim, int64_t inner, int64_t w,
                                bool log)
{
    float m[TILE], s[TILE];
    for (int64_t i = 0; i < w; i++) {
        m[i] = -INFINITY;
        s[i] = 0.f;
    }
    for (int64_t r = 0; r < dim; r++)
        for (int64_t i = 0; i < w; i++) m[i] = x[r * inner + i] > m[i] ? x[r * inner + i] : m[i];
    for (int64_t r = 0; r < dim; r++) {
        const float *xr = x + r * inner;
        float *yr = y + r * inner;
        int64_t i = 0;
        for (; i + W <= w; i += W) {
            vf e = vexp(load(xr + i) - load(m + i));
            if (!log) store(yr + i, e);
            store(s + i, load(s + i) + e);
        }
        for (; i < w; i++) {
            float e = fast_expf(xr[i] - m[i]);
            if (!log) yr[i] = e;
            s[i] += e;
        }
    }
    if (log) {
        for (int64_t i = 0; i < w; i++) s[i] = logf(s[i]);
        for (int64_t r = 0; r < dim; r++)
            for (int64_t i = 0; i < w; i++) y[r * inner + i] = (x[r * inner + i] - m[i]) - s[i];
    } else {
        for (int64_t i = 0; i < w; i++) s[i] = 1.f / s[i];
        for (int64_t r = 0; r < dim; r++)
            for (int64_t i = 0; i < w; i++) y[r * inner + i] *= s[i];
    }
}

/* gx for one row: softmax y * (g - <g, y>), log_softmax g - exp(y) * sum(g). */
CLONES static void softmax_backward_row(const float *g, const float *y, float *gx, int64_t n,
                                        bool log)
{
    vf acc = splat(0.f);
    int64_t i = 0;
    for (; i + W <= n; i += W) acc += log ? load(g + i) : load(g + i) * load(y + i);
    float s = hsum(acc);
    for (; i < n; i++) s += log ? g[i] : g[i] * y[i];
    vf sv = splat(s);
    for (i = 0; i + W <= n; i += W) {
        vf gv = load(g + i), yv = load(y + i);
        store(gx + i, log ? gv - vexp(yv) * sv : yv * (gv - sv));
    }
    for (; i < n; i++) gx[i] = log ? g[i] - fast_expf(y[i]) * s : y[i] * (g[i] - s);
}

CLONES static void softmax_backward_tile(const float *g, const float *y, float *gx, int64_t dim,
                                         int64_t inner, int64_t w, bool log)
{
    float s[TILE];
    for (int64_t i = 0; i < w; i++) s[i] = 0.f;
    for (int64_t r = 0; r < dim; r++) {
        const float *gr = g + r * inner, *yr = y + r * inner;
        if (log)
            for (int64_t i = 0; i < w; i++) s[i] += gr[i];
        else
            for (int64_t i = 0; i < w; i++) s[i] += gr[i] * yr[i];
    }
    for (int64_t r = 0; r < dim; r++) {
        const float *gr = g + r * inner, *yr = y + r * inner;
        float *out = gx + r * inner;
        int64_t i = 0;
        for (; i + W <= w; i += W) {
            vf gv = load(gr + i), yv = load(yr + i), sv = load(s + i);
            store(out + i, log ? gv - vexp(yv) * sv : yv * (gv - sv));
        }
        for (; i < w; i++) out[i] = log ? gr[i] - fast_expf(yr[i]) * s[i] : yr[i] * (gr[i] - s[i]);
    }
}

typedef struct softmax_job {
    const float *x, *y; /* backward: x is the grad */
    float *out;
    int64_t outer, dim, inner;
    bool log;
} softmax_job;

static void softmax_task(void *arg, int64_t begin, int64_t end)
{
    softmax_job *j = arg;
    if (j->inner == 1) {
        for (int64_t o = begin; o < end; o++)
            softmax_row(j->x + o * j->dim, j->out + o * j->dim, j->dim, j->log);
        return;
    }
    int64_t tiles = (j->inner + TILE - 1) / TILE;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / tiles, i0 = (t % tiles) * TILE;
        int64_t at = o * j->dim * j->inner + i0;
        softmax_tile(j->x + at, j->out + at, j->dim, j->inner, min64(TILE, j->inner - i0), j->log);
    }
}

static void softmax_backward_task(void *arg, int64_t begin, int64_t end)
{
    softmax_job *j = arg;
    if (j->inner == 1) {
        for (int64_t o = begin; o < end; o++) {
            int64_t at = o * j->dim;
            softmax_backward_row(j->x + at, j->y + at, j->out + at, j->dim, j->log);
        }
        return;
    }
    int64_t tiles = (j->inner + TILE - 1) / TILE;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / tiles, i0 = (t % tiles) * TILE;
        int64_t at = o * j->dim * j->inner + i0;
        softmax_backward_tile(j->x + at, j->y + at, j->out + at, j->dim, j->inner,
                              min64(TILE, j->inner - i0), j->log);
    }
}

static void run_softmax(kn_cpu_range_fn fn, softmax_job *j)
{
    if (j->outer * j->dim * j->inner == 0) return;
    int64_t tasks = j->outer, per_task = j->dim;
    if (j->inner > 1) {
        tasks = j->outer * ((j->inner + TILE - 1) / TILE);
        per_task = j->dim * min64(j->inner, TILE);
    }
    kn_cpu_parallel_for(tasks, grain_for(per_task, GRAIN_EXP), fn, j);
}

void kn_cpu_softmax(const float *x, float *y, int64_t outer, int64_t dim, int64_t inner, bool log)
{
    softmax_job j = {x, NULL, y, outer, dim, inner, log};
    run_softmax(softmax_task, &j);
}

void kn_cpu_softmax_backward(const float *g, const float *y, float *gx, int64_t outer, int64_t dim,
                             int64_t inner, bool log)
{
    softmax_job j = {g, y, gx, outer, dim, inner, log};
    run_softmax(softmax_backward_task, &j);
}

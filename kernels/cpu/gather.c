/*
 * gather.c — index-driven copies and their scatter-add backwards: index_select and
 * embedding rows (one memcpy per row), gather / scatter-add along any dim of a strided
 * tensor; and the tiled copy that makes transposed tensors contiguous. Work is split
 * over the thread pool so that no two threads ever add into the same element.
 */
#include "kn_cpu.h"
#include "kn_cpu_gather.h"

#include <string.h>

#define MAX_DIMS KN_CPU_MAX_DIMS

static int64_t grain_for(int64_t work_per_item)
{
    int64_t g = KN_CPU_GRAIN_ELEMENTWISE / (work_per_item > 0 ? work_per_item : 1);
    return g > 0 ? g : 1;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) static void
add_row(float *restrict dst, const float *restrict src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* ---- index_select ---------------------------------------------------------------- */

typedef struct select_context {
    size_t elem_size;
    char *out;
    const char *in;
    const int64_t *index;
    int64_t n, in_size, inner;
} select_context;

#define SELECT_ELEMENTS(T)                                                                         \
    do {                                                                                           \
        T *o = (T *)c->out;                                                                        \
        const T *in = (const T *)c->in;                                                            \
        int64_t outer = begin / c->n, j = begin % c->n;                                            \
        for (int64_t r = begin; r < end; outer++, j = 0) {                                         \
            const T *src = in + outer * c->in_size;                                                \
            int64_t stop = c->n - j < end - r ? c->n : j + (end - r);                              \
            for (; j < stop; j++, r++) o[r] = src[c->index[j]];                                    \
        }                                                                                          \
    } while (0)

static void select_rows(void *arg, int64_t begin, int64_t end)
{
    const select_context *c = arg;
    if (c->inner == 1) { /* a row per element: typed loops beat memcpy calls */
        if (c->elem_size == 8)
            SELECT_ELEMENTS(int64_t);
        else
            SELECT_ELEMENTS(float);
        return;
    }
    size_t row = (size_t)c->inner * c->elem_size;
    for (int64_t r = begin; r < end; r++) {
        int64_t o = r / c->n, j = r % c->n;
        memcpy(c->out + (size_t)r * row, c->in + (size_t)(o * c->in_size + c->index[j]) * row, row);
    }
}

void kn_cpu_index_select(size_t elem_size, void *out, const void *in, const int64_t *index,
                         int64_t n, int64_t outer, int64_t in_size, int64_t inner)
{
    if (n == 0 || outer == 0 || inner == 0) return;
    select_context c = {elem_size, out, in, index, n, in_size, inner};
    kn_cpu_parallel_for(outer * n, grain_for(inner), select_rows, &c);
}

/* ---- index_add ------------------------------------------------------------------- */

typedef struct index_add_context {
    float *grad_in;
    const float *grad_out;
    const int64_t *index;
    int64_t n, in_size, inner;
} index_add_context;

/* Split over outer slices: each writes only its own slice of grad_in. */
static void index_add_outer(void *arg, int64_t begin, int64_t end)
{
    const index_add_context *c = arg;
    for (int64_t o = begin; o < end; o++)
        for (int64_t j = 0; j < c->n; j++)
            add_row(c->grad_in + (o * c->in_size + c->index[j]) * c->inner,
                    c->grad_out + (o * c->n + j) * c->inner, c->inner);
}

/* One outer slice (embedding): split over columns, so repeated indices never race. */
static void index_add_columns(void *arg, int64_t begin, int64_t end)
{
    const index_add_context *c = arg;
    for (int64_t j = 0; j < c->n; j++)
        add_row(c->grad_in + c->index[j] * c->inner + begin, c->grad_out + j * c->inner + begin,
                end - begin);
}

void kn_cpu_index_add(float *grad_in, const float *grad_out, const int64_t *index, int64_t n,
                      int64_t outer, int64_t in_size, int64_t inner)
{
    if (n == 0 || outer == 0 || inner == 0) return;
    index_add_context c = {grad_in, grad_out, index, n, in_size, inner};
    if (outer > 1)
        kn_cpu_parallel_for(outer, grain_for(n * inner), index_add_outer, &c);
    else
        kn_cpu_parallel_for(inner, grain_for(n) > 16 ? grain_for(n) : 16, index_add_columns, &c);
}

/* ---- gather / scatter_add -------------------------------------------------------- */

typedef struct gather_context {
    size_t elem_size;
    int ndim, dim;
    const int64_t *shape;
    const int64_t *in_strides;  /* the indexed tensor */
    const int64_t *out_strides; /* gather: NULL (contiguous out); scatter: grad_out's */
    const int64_t *index;       /* contiguous over shape */
    char *out;                  /* gather: out; scatter: grad_in */
    const char *in;             /* gather: in; scatter: grad_out */
    int64_t rows_per_lead;      /* rows per coordinate of dim 0 */
} gather_context;

/* Offsets of row r (all dims but the last) in the indexed tensor (without dim) and in
 * the strided operand. */
static void row_offsets(const gather_context *c, int64_t r, int64_t *indexed, int64_t *other)
{
    int last = c->ndim - 1;
    int64_t a = 0, b = 0;
    for (int d = last - 1; d >= 0; d--) {
        int64_t coord = r % c->shape[d];
        r /= c->shape[d];
        if (d != c->dim) a += coord * c->in_strides[d];
        if (c->out_strides) b += coord * c->out_strides[d];
    }
    *indexed = a;
    *other = b;
}

static void gather_rows(void *arg, int64_t begin, int64_t end)
{
    const gather_context *c = arg;
    int last = c->ndim - 1;
    int64_t len = c->shape[last], sd = c->in_strides[c->dim];
    int64_t s_last = last == c->dim ? 0 : c->in_strides[last];
    for (int64_t r = begin; r < end; r++) {
        int64_t base, unused;
        row_offsets(c, r, &base, &unused);
        const int64_t *idx = c->index + r * len;
        if (c->elem_size == 8) {
            int64_t *o = (int64_t *)c->out + r * len;
            const int64_t *in = (const int64_t *)c->in + base;
            for (int64_t k = 0; k < len; k++) o[k] = in[k * s_last + idx[k] * sd];
        } else {
            float *o = (float *)c->out + r * len;
            const float *in = (const float *)c->in + base;
            for (int64_t k = 0; k < len; k++) o[k] = in[k * s_last + idx[k] * sd];
        }
    }
}

void kn_cpu_gather(size_t elem_size, const int64_t *shape, int ndim, int dim, void *out,
                   const void *in, const int64_t *in_strides, const int64_t *index)
{
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (numel == 0) return;
    int64_t len = shape[ndim - 1];
    gather_context c = {elem_size, ndim, dim, shape, in_strides, NULL, index, out, in, 0};
    kn_cpu_parallel_for(numel / len, grain_for(len), gather_rows, &c);
}

/* Rows [begin, end) of dim-0 coordinates; when dim != 0 each writes its own slice. */
static void scatter_leads(void *arg, int64_t begin, int64_t end)
{
    const gather_context *c = arg;
    int last = c->ndim - 1;
    int64_t len = c->shape[last], sd = c->in_strides[c->dim];
    int64_t s_last = last == c->dim ? 0 : c->in_strides[last];
    int64_t g_last = c->out_strides[last];
    for (int64_t r = begin * c->rows_per_lead; r < end * c->rows_per_lead; r++) {
        int64_t base, gbase;
        row_offsets(c, r, &base, &gbase);
        const int64_t *idx = c->index + r * len;
        float *dst = (float *)c->out + base;
        const float *src = (const float *)c->in + gbase;
        for (int64_t k = 0; k < len; k++) dst[k * s_last + idx[k] * sd] += src[k * g_last];
    }
}

void kn_cpu_scatter_add(const int64_t *shape, int ndim, int dim, float *grad_in,
                        const int64_t *in_strides, const float *grad_out,
                        const int64_t *grad_strides, const int64_t *index)
{
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (numel == 0) return;
    /* With a rank-1 iteration the only row is the whole tensor. */
    int64_t leads = ndim > 1 ? shape[0] : 1;
    gather_context c = {4,
                        ndim,
                        dim,
                        shape,
                        in_strides,
                        grad_strides,
                        index,
                        (char *)grad_in,
                        (const char *)grad_out,
                        numel / shape[ndim - 1] / leads};
    if (dim == 0 || ndim == 1)
        scatter_leads(&c, 0, leads);
    else
        kn_cpu_parallel_for(leads, grain_for(numel / leads), scatter_leads, &c);
}

/* ---- copy to contiguous ------------------------------------------------------------ */

#define TILE 32

typedef struct tiled_context {
    size_t elem_size;
    int ndim, k; /* k: the dim that is unit-stride in the input */
    const int64_t *shape, *in_strides;
    int64_t out_strides[MAX_DIMS];
    int64_t k_tiles;
    char *out;
    const char *in;
} tiled_context;

#define COPY_TILE(T)                                                                               \
    do {                                                                                           \
        T *o = (T *)c->out + out_base;                                                             \
        const T *s = (const T *)c->in + in_base;                                                   \
        for (int64_t b0 = 0; b0 < len; b0 += TILE) {                                               \
            int64_t b1 = b0 + TILE < len ? b0 + TILE : len;                                        \
            for (int64_t a = a0; a < a1; a++)                                                      \
                for (int64_t b = b0; b < b1; b++) o[a * osk + b] = s[a + b * isl];                 \
        }                                                                                          \
    } while (0)

/* Units are (outer position, tile of dim k); each copies a TILE-row band of the last dim. */
static void copy_tiles(void *arg, int64_t begin, int64_t end)
{
    const tiled_context *c = arg;
    int last = c->ndim - 1;
    int64_t len = c->shape[last], osk = c->out_strides[c->k], isl = c->in_strides[last];
    for (int64_t u = begin; u < end; u++) {
        int64_t rest = u / c->k_tiles, a0 = (u % c->k_tiles) * TILE;
        int64_t a1 = a0 + TILE < c->shape[c->k] ? a0 + TILE : c->shape[c->k];
        int64_t in_base = 0, out_base = 0;
        for (int d = last - 1; d >= 0; d--) {
            if (d == c->k) continue;
            int64_t coord = rest % c->shape[d];
            rest /= c->shape[d];
            in_base += coord * c->in_strides[d];
            out_base += coord * c->out_strides[d];
        }
        if (c->elem_size == 8)
            COPY_TILE(int64_t);
        else
            COPY_TILE(float);
    }
}

void kn_cpu_copy_to_contiguous(const int64_t *shape, int ndim, size_t elem_size, void *out,
                               const void *in, const int64_t *in_strides)
{
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    int last = ndim - 1, k = -1;
    if (ndim >= 2 && numel > 0 && shape[last] > 1 && in_strides[last] != 1 &&
        (elem_size == 4 || elem_size == 8))
        for (int d = last - 1; d >= 0; d--)
            if (in_strides[d] == 1 && shape[d] > 1) {
                k = d;
                break;
            }
    kn_cpu_operand o = {out, {0}}, i = {(void *)in, {0}};
    int64_t stride = 1;
    for (int d = last; d >= 0; d--) {
        o.strides[d] = stride;
        stride *= shape[d];
        i.strides[d] = in_strides[d];
    }
    if (k < 0 || numel < TILE * TILE) { /* no transposition to block: the plain iterator */
        kn_cpu_copy(shape, ndim, elem_size, o, i);
        return;
    }
    tiled_context c = {elem_size, ndim, k, shape, in_strides, {0}, 0, out, in};
    memcpy(c.out_strides, o.strides, sizeof(int64_t) * (size_t)ndim);
    c.k_tiles = (shape[k] + TILE - 1) / TILE;
    int64_t units = numel / shape[k] / shape[last] * c.k_tiles;
    kn_cpu_parallel_for(units, grain_for(TILE * shape[last]), copy_tiles, &c);
}

/*
 * attention.c — the fused scaled-dot-product attention (../kn_attention.h) on the CPU,
 * flash-attention style: a block of BQ query rows meets the keys BK at a time; only that
 * BQ x BK block of the attention matrix exists, in a task's scratch.
 *
 * Forward, per (batch, head, query block): S = scale Q K^T for a key block (the NT
 * kernel), masked, then an online softmax (the running row max m and sum l; earlier
 * partial outputs rescaled by exp(m_old - m_new)) and acc += P V (the NN kernel); at the
 * end out = acc / l and lse = m + log l.
 *
 * Backward, per key block against each query block that sees it: P = exp(S - lse)
 * recomputed, dP = dO V^T, dS = scale P (dP - delta) with delta = rowsum(dO * O), then
 * dV += P^T dO, dK += dS^T Q, dQ += dS K. Tasks are whole (batch, head) pairs when there
 * are enough of them (or one key block); otherwise a pass over (batch, head, key block)
 * makes dK and dV and a pass over (batch, head, query block) makes dQ, recomputing S and
 * dP. Each gradient element sums its blocks in the same order either way, with the same
 * operations, so the bits do not depend on the split or the thread count.
 *
 * The two kernels are small register-tiled GEMMs written with GCC's vector types (16
 * floats; one AVX-512 register, two AVX2 ones): NT multiplies rows of Q (or dO) by a key
 * block packed transposed [D][BK]; NN adds a [rows, inner] block times a packed
 * [inner, width] matrix into an accumulator. Operands are packed with zeros up to
 * whole vectors, so no loop has a scalar tail.
 */
#include "kn_cpu_attention.h"
#include "kn_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define INLINE static inline __attribute__((always_inline))
#define BQ 32 /* query rows per block */
#define BK 64 /* keys per block: four vectors */
#define VW 16 /* floats per vector */

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(float))));

#define VLOAD(dst, p) memcpy(&(dst), (p), sizeof(vf))
#define VSTORE(p, src) memcpy((p), &(src), sizeof(vf))

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}
static int64_t round_up(int64_t n)
{
    return (n + VW - 1) / VW * VW;
}

static float *at(const kn_attention_operand *o, int64_t b, int64_t h, int64_t t)
{
    return o->data + b * o->batch_stride + h * o->head_stride + t * o->row_stride;
}

/* ---- the kernel ----------------------------------------------------------------------- */

/* c[r][0 .. VW*NV) for r < rows (<= R): the sum over k < inner of a_r[k * sa] b[k][...]
 * (b with row stride ldb), added in the order of k to c's old value when accumulate, else
 * started from zero and times scale. a_r are row pointers (sa > 1 reads a column of a
 * row-major block: A transposed); missing rows repeat the last one and are not stored. */
#define DEFINE_TILE(R, NV)                                                                         \
    INLINE void tile_##R##_##NV(const float *const *a, int64_t sa, int rows, const float *b,       \
                                int64_t ldb, int64_t inner, float scale, bool accumulate,          \
                                float *c, int64_t ldc)                                             \
    {                                                                                              \
        const float *ar[R];                                                                        \
        vf acc[R][NV];                                                                             \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                        \
        {                                                                                          \
            int rr = r < rows ? r : rows - 1;                                                      \
            ar[r] = a[rr];                                                                         \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                   \
            {                                                                                      \
                if (accumulate)                                                                    \
                    VLOAD(acc[r][v], c + rr * ldc + v * VW);                                       \
                else                                                                               \
                    acc[r][v] = (vf){0};                                                           \
            }                                                                                      \
        }                                                                                          \
        for (int64_t k = 0; k < inner; k++) {                                                      \
            vf bv[NV];                                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                   \
                VLOAD(bv[v], b + k * ldb + v * VW);                                                \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            {                                                                                      \
                float x = ar[r][k * sa];                                                           \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[r][v] += x * bv[v];       \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < rows; r++) _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)        \
            {                                                                                      \
                vf t = accumulate ? acc[r][v] : acc[r][v] * scale;                                 \
                VSTORE(c + r * ldc + v * VW, t);                                                   \
            }                                                                                      \
    }
DEFINE_TILE(8, 1)
DEFINE_TILE(8, 2)
DEFINE_TILE(4, 3)
DEFINE_TILE(4, 4)

/* c [rows][width] = scale * A B, or c += A B when accumulate: A's rows are pointers
 * (inner floats each), B [inner][width] with row stride ldb, width a multiple of VW
 * (and ldb, ldc too). Register tiles of 8 rows by 1-2 vectors or 4 rows by 3-4. */
INLINE void gemm(const float *const *a, int64_t sa, int64_t rows, const float *b, int64_t ldb,
                 int64_t inner, int64_t width, float scale, bool accumulate, float *c, int64_t ldc)
{
    for (int64_t w0 = 0; w0 < width; w0 += 4 * VW) {
        int nv = (int)min64(4, (width - w0) / VW), step = nv <= 2 ? 8 : 4;
        for (int64_t r0 = 0; r0 < rows; r0 += step) {
            int n = (int)min64(step, rows - r0);
            const float *const *ar = a + r0;
            float *cr = c + r0 * ldc + w0;
            switch (nv) {
            case 1:
                tile_8_1(ar, sa, n, b + w0, ldb, inner, scale, accumulate, cr, ldc);
                break;
            case 2:
                tile_8_2(ar, sa, n, b + w0, ldb, inner, scale, accumulate, cr, ldc);
                break;
            case 3:
                tile_4_3(ar, sa, n, b + w0, ldb, inner, scale, accumulate, cr, ldc);
                break;
            default:
                tile_4_4(ar, sa, n, b + w0, ldb, inner, scale, accumulate, cr, ldc);
                break;
            }
        }
    }
}

/* NT: s [rows][ncol] (row stride BK) = scale * A Bt, A's rows pointers of d_len floats,
 * bt a key block packed [d_len][BK]. */
INLINE void nt_block(const float *const *a, int rows, const float *bt, int64_t d_len, int64_t ncol,
                     float scale, float *s)
{
    gemm(a, 1, rows, bt, BK, d_len, ncol, scale, false, s, BK);
}

/* NN: c [rows][width] += A [rows][inner] b [inner][width], A's element (r, k) at
 * a[r * lda + k * sa] (sa 1: a row-major block; lda 1, sa its row stride: that block
 * transposed); rows <= BK. */
INLINE void nn_block(const float *a, int64_t lda, int64_t sa, int64_t rows, const float *b,
                     int64_t ldb, int64_t inner, int64_t width, float *c, int64_t ldc)
{
    const float *ar[BK];
    for (int64_t r = 0; r < rows; r++) ar[r] = a + r * lda;
    gemm(ar, sa, rows, b, ldb, inner, width, 1.f, true, c, ldc);
}

/* ---- row helpers ---------------------------------------------------------------------- */

INLINE float row_max(const float *s, int64_t n)
{
    vf m, x;
    VLOAD(m, s);
    for (int64_t c = VW; c < n; c += VW) {
        VLOAD(x, s + c);
        vi gt = x > m;
        m = (vf)(((vi)x & gt) | ((vi)m & ~gt));
    }
    float r = m[0];
    for (int k = 1; k < VW; k++) r = m[k] > r ? m[k] : r;
    return r;
}

INLINE float row_sum(const float *s, int64_t n)
{
    vf sum = {0}, x;
    for (int64_t c = 0; c < n; c += VW) {
        VLOAD(x, s + c);
        sum += x;
    }
    float r = 0.f;
    for (int k = 0; k < VW; k++) r += sum[k];
    return r;
}

/* ---- packing -------------------------------------------------------------------------- */

/* dst[d][c] = row c's element d (rows of o from key j0 on), for c < n; zero up to ncol.
 * dst has row stride BK. */
static void pack_transposed(const kn_attention_operand *o, int64_t b, int64_t h, int64_t j0,
                            int64_t n, int64_t ncol, int64_t d_len, float *dst)
{
    for (int64_t c = 0; c < n; c++) {
        const float *src = at(o, b, h, j0 + c);
        for (int64_t d = 0; d < d_len; d++) dst[d * BK + c] = src[d];
    }
    for (int64_t d = 0; d < d_len; d++)
        for (int64_t c = n; c < ncol; c++) dst[d * BK + c] = 0.f;
}

/* Rows of an operand as the kernel's B: whole vectors, row stride ld. */
typedef struct rows_view {
    const float *data;
    int64_t ld;
} rows_view;

/* Rows [t0, t0 + n) of o (d_len floats each) as a B of width floats a row: read in
 * place when a row is whole vectors (d_len == width: head dims 16, 32, 64, ...), else
 * copied into buf with zeros after each row. */
static rows_view rows_of(const kn_attention_operand *o, int64_t b, int64_t h, int64_t t0, int64_t n,
                         int64_t d_len, int64_t width, float *buf)
{
    if (d_len == width) return (rows_view){at(o, b, h, t0), o->row_stride};
    for (int64_t c = 0; c < n; c++) {
        memcpy(buf + c * width, at(o, b, h, t0 + c), sizeof(float) * (size_t)d_len);
        memset(buf + c * width + d_len, 0, sizeof(float) * (size_t)(width - d_len));
    }
    return (rows_view){buf, width};
}

/* The additive mask of a key block: 0 for a key that exists and is not padding, -inf
 * otherwise; false when every key of the block is visible (nothing to add). */
static bool key_bias(const kn_attention_problem *p, int64_t b, int64_t j0, int64_t n, int64_t ncol,
                     float *bias)
{
    if (!p->key_padding && n == ncol) return false;
    const int64_t *pad = p->key_padding ? p->key_padding + b * p->key_padding_stride + j0 : NULL;
    for (int64_t c = 0; c < ncol; c++) bias[c] = c < n && !(pad && pad[c]) ? 0.f : -INFINITY;
    return true;
}

/* The keys a query block [i0, i0 + rows) may see at all: [0, result). */
static int64_t key_end(const kn_attention_problem *p, int64_t i0, int64_t rows)
{
    int64_t end = p->kv_len;
    if (p->causal) end = min64(end, i0 + rows + p->causal_offset);
    return end > 0 ? end : 0;
}

/* Row r's scores masked in place: s[c] += bias[c], and -inf from the causal limit on. */
INLINE void mask_row(const kn_attention_problem *p, int64_t i, int64_t j0, int64_t ncol,
                     const float *bias, float *s)
{
    if (bias)
        for (int64_t c = 0; c < ncol; c++) s[c] += bias[c];
    if (p->causal) {
        int64_t limit = i + p->causal_offset - j0 + 1; /* keys c < limit are visible */
        for (int64_t c = limit < 0 ? 0 : limit; c < ncol; c++) s[c] = -INFINITY;
    }
}

/* Multiplies row s (keys j0 .. j0 + ncol of query i) by the dropout factors. */
INLINE void dropout_row(const kn_attention_problem *p, int64_t b, int64_t h, int64_t i, int64_t j0,
                        int64_t ncol, float *s)
{
    uint64_t base = (uint64_t)(((b * p->heads + h) * p->q_len + i) * p->kv_len + j0);
    for (int64_t c = 0; c < ncol; c++) {
        uint64_t z = KN_ATTENTION_HASH(p->dropout_seed, base + (uint64_t)c);
        s[c] *= (uint32_t)(z >> 40) >= p->dropout_threshold ? p->dropout_scale : 0.f;
    }
}

/* ---- scratch -------------------------------------------------------------------------- */

typedef struct scratch {
    float *block;
    float *kt, *vt, *kp, *vp, *qp, *dop; /* packed operands */
    rows_view kb, qb, gb;                /* K, Q, dO rows as B operands (in kp, qp, dop) */
    float *s, *dp;                       /* blocks of the attention matrix */
    float *acc, *dk, *dv, *dq;           /* accumulators */
    float *m, *l, *lse, *delta, *bias;   /* per row / per key */
} scratch;

/* Carves every buffer a task needs out of one allocation (64-byte aligned pieces);
 * dq_rows: rows of the dQ accumulator. NULL block when out of memory. */
static scratch scratch_new(const kn_attention_problem *p, int64_t dq_rows)
{
    int64_t dp = round_up(p->head_dim), dvp = round_up(p->value_dim);
    int64_t d_max = p->head_dim > p->value_dim ? p->head_dim : p->value_dim;
    int64_t sizes[] = {d_max * BK, d_max * BK, BK * dp,  BK * dvp, BQ * dp,  BQ * dvp,
                       BQ * BK,    BQ * BK,    BQ * dvp, BK * dp,  BK * dvp, dq_rows * dp,
                       BQ,         BQ,         BQ,       BQ,       BK};
    enum { N = sizeof sizes / sizeof sizes[0] };
    int64_t total = 0;
    for (int i = 0; i < N; i++) total += round_up(sizes[i]);
    scratch w = {0};
    w.block = aligned_alloc(64, sizeof(float) * (size_t)(total > 0 ? total : VW));
    if (!w.block) return w;
    float **slots[N] = {&w.kt, &w.vt, &w.kp, &w.vp, &w.qp, &w.dop, &w.s,     &w.dp,  &w.acc,
                        &w.dk, &w.dv, &w.dq, &w.m,  &w.l,  &w.lse, &w.delta, &w.bias};
    float *next = w.block;
    for (int i = 0; i < N; i++) {
        *slots[i] = next;
        next += round_up(sizes[i]);
    }
    return w;
}

/* ---- forward -------------------------------------------------------------------------- */

/* Output rows [i0, i0 + rows) of (b, h), and their lse. */
INLINE void forward_block(const kn_attention_problem *p, int64_t b, int64_t h, int64_t i0, int rows,
                          scratch *w)
{
    const int64_t dvp = round_up(p->value_dim);
    const float *qr[BQ];
    for (int r = 0; r < rows; r++) qr[r] = at(&p->q, b, h, i0 + r);
    for (int r = 0; r < rows; r++) {
        w->m[r] = -INFINITY;
        w->l[r] = 0.f;
    }
    memset(w->acc, 0, sizeof(float) * (size_t)(rows * dvp));
    int64_t kend = key_end(p, i0, rows);
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        int64_t nk = min64(BK, kend - j0), ncol = round_up(nk);
        pack_transposed(&p->k, b, h, j0, nk, ncol, p->head_dim, w->kt);
        rows_view vb = rows_of(&p->v, b, h, j0, nk, p->value_dim, dvp, w->vp);
        const float *bias = key_bias(p, b, j0, nk, ncol, w->bias) ? w->bias : NULL;
        nt_block(qr, rows, w->kt, p->head_dim, ncol, p->scale, w->s);
        for (int r = 0; r < rows; r++) {
            float *s = w->s + r * BK;
            mask_row(p, i0 + r, j0, ncol, bias, s);
            float tile_max = row_max(s, ncol), m_new = w->m[r] > tile_max ? w->m[r] : tile_max;
            if (m_new == -INFINITY) { /* nothing visible yet: no weight */
                memset(s, 0, sizeof(float) * (size_t)ncol);
                continue;
            }
            float correction = kn_cpu_expf_inline(w->m[r] - m_new);
            for (int64_t c = 0; c < ncol; c++) s[c] = kn_cpu_expf_inline(s[c] - m_new);
            w->l[r] = w->l[r] * correction + row_sum(s, ncol);
            w->m[r] = m_new;
            if (p->dropout_threshold) dropout_row(p, b, h, i0 + r, j0, ncol, s);
            if (correction != 1.f) {
                float *acc = w->acc + r * dvp;
                for (int64_t d = 0; d < dvp; d++) acc[d] *= correction;
            }
        }
        nn_block(w->s, BK, 1, rows, vb.data, vb.ld, nk, dvp, w->acc, dvp);
    }
    float *lse = p->lse + (b * p->heads + h) * p->q_len + i0;
    for (int r = 0; r < rows; r++) {
        float l = w->l[r], inv = l > 0.f ? 1.f / l : 0.f;
        const float *acc = w->acc + r * dvp;
        float *out = at(&p->out, b, h, i0 + r);
        for (int64_t d = 0; d < p->value_dim; d++) out[d] = acc[d] * inv;
        lse[r] = l > 0.f ? w->m[r] + logf(l) : INFINITY;
    }
}

/* ---- backward ------------------------------------------------------------------------- */

/* The per-query-block inputs of the backward: row pointers into Q and dO, lse, delta =
 * rowsum(dO * O), and (for dK and dV) Q and dO packed. */
INLINE void prepare_queries(const kn_attention_problem *p, int64_t b, int64_t h, int64_t i0,
                            int rows, bool pack, const float **qr, const float **dor, scratch *w)
{
    const float *lse = p->lse + (b * p->heads + h) * p->q_len + i0;
    for (int r = 0; r < rows; r++) {
        qr[r] = at(&p->q, b, h, i0 + r);
        dor[r] = at(&p->grad_out, b, h, i0 + r);
        const float *o = at(&p->out, b, h, i0 + r);
        float delta = 0.f;
        for (int64_t d = 0; d < p->value_dim; d++) delta += dor[r][d] * o[d];
        w->delta[r] = delta;
        w->lse[r] = lse[r];
    }
    if (pack) {
        w->qb = rows_of(&p->q, b, h, i0, rows, p->head_dim, round_up(p->head_dim), w->qp);
        w->gb = rows_of(&p->grad_out, b, h, i0, rows, p->value_dim, round_up(p->value_dim), w->dop);
    }
}

/* The per-key-block inputs: K and V packed transposed, K packed by rows (for dQ), the
 * key mask. Returns the mask or NULL. */
INLINE const float *prepare_keys(const kn_attention_problem *p, int64_t b, int64_t h, int64_t j0,
                                 int64_t nk, int64_t ncol, bool want_dq, scratch *w)
{
    pack_transposed(&p->k, b, h, j0, nk, ncol, p->head_dim, w->kt);
    pack_transposed(&p->v, b, h, j0, nk, ncol, p->value_dim, w->vt);
    if (want_dq) w->kb = rows_of(&p->k, b, h, j0, nk, p->head_dim, round_up(p->head_dim), w->kp);
    return key_bias(p, b, j0, nk, ncol, w->bias) ? w->bias : NULL;
}

/* One (query block, key block) pair: dS and P rebuilt, then dQ (into dq, row stride dp)
 * and / or dK, dV (into w->dk, w->dv) accumulated. */
INLINE void backward_block(const kn_attention_problem *p, int64_t b, int64_t h, int64_t i0,
                           int rows, int64_t j0, int64_t nk, int64_t ncol, const float *bias,
                           const float *const *qr, const float *const *dor, float *dq,
                           bool want_dkdv, scratch *w)
{
    const int64_t dp = round_up(p->head_dim), dvp = round_up(p->value_dim);
    nt_block(qr, rows, w->kt, p->head_dim, ncol, p->scale, w->s);
    nt_block(dor, rows, w->vt, p->value_dim, ncol, 1.f, w->dp);
    for (int r = 0; r < rows; r++) {
        float *s = w->s + r * BK, *dpr = w->dp + r * BK;
        mask_row(p, i0 + r, j0, ncol, bias, s);
        float lse = w->lse[r], delta = w->delta[r];
        for (int64_t c = 0; c < ncol; c++) s[c] = kn_cpu_expf_inline(s[c] - lse); /* P */
        if (p->dropout_threshold) { /* dP through the mask; s keeps P, dP becomes dP' */
            dropout_row(p, b, h, i0 + r, j0, ncol, dpr);
            for (int64_t c = 0; c < ncol; c++) dpr[c] = p->scale * s[c] * (dpr[c] - delta);
            if (want_dkdv) dropout_row(p, b, h, i0 + r, j0, ncol, s); /* P dropped, for dV */
        } else {
            for (int64_t c = 0; c < ncol; c++) dpr[c] = p->scale * s[c] * (dpr[c] - delta);
        }
    }
    /* w->dp now holds dS (scaled), w->s holds P (dropped) */
    if (dq) nn_block(w->dp, BK, 1, rows, w->kb.data, w->kb.ld, nk, dp, dq, dp);
    if (want_dkdv) { /* dV += P^T dO, dK += dS^T Q: the blocks read by columns */
        nn_block(w->s, 1, BK, ncol, w->gb.data, w->gb.ld, rows, dvp, w->dv, dvp);
        nn_block(w->dp, 1, BK, ncol, w->qb.data, w->qb.ld, rows, dp, w->dk, dp);
    }
}

static void store_rows(const kn_attention_operand *o, int64_t b, int64_t h, int64_t t0, int64_t n,
                       int64_t d_len, const float *src, int64_t width)
{
    if (!o->data) return;
    for (int64_t c = 0; c < n; c++)
        memcpy(at(o, b, h, t0 + c), src + c * width, sizeof(float) * (size_t)d_len);
}

/* dK and dV of key block j0 of (b, h), from every query block that sees it; with dq
 * (the whole [q_len][dp] accumulator of (b, h)), dQ's share of this key block too. */
INLINE void key_block_task(const kn_attention_problem *p, int64_t b, int64_t h, int64_t j0,
                           float *dq, scratch *w)
{
    const int64_t dp = round_up(p->head_dim), dvp = round_up(p->value_dim);
    int64_t nk = min64(BK, p->kv_len - j0), ncol = round_up(nk);
    const float *bias = prepare_keys(p, b, h, j0, nk, ncol, dq != NULL, w);
    memset(w->dk, 0, sizeof(float) * (size_t)(ncol * dp));
    memset(w->dv, 0, sizeof(float) * (size_t)(ncol * dvp));
    const float *qr[BQ], *dor[BQ];
    for (int64_t i0 = 0; i0 < p->q_len; i0 += BQ) {
        int rows = (int)min64(BQ, p->q_len - i0);
        if (key_end(p, i0, rows) <= j0) continue; /* no query of the block sees these keys */
        prepare_queries(p, b, h, i0, rows, true, qr, dor, w);
        backward_block(p, b, h, i0, rows, j0, nk, ncol, bias, qr, dor, dq ? dq + i0 * dp : NULL,
                       true, w);
    }
    store_rows(&p->grad_k, b, h, j0, nk, p->head_dim, w->dk, dp);
    store_rows(&p->grad_v, b, h, j0, nk, p->value_dim, w->dv, dvp);
}

/* Every gradient of (b, h) in one sweep over its key blocks (dq: a [q_len][dp]
 * accumulator, or NULL when dQ is not wanted). */
INLINE void pair_task(const kn_attention_problem *p, int64_t b, int64_t h, float *dq, scratch *w)
{
    const int64_t dp = round_up(p->head_dim);
    if (dq) memset(dq, 0, sizeof(float) * (size_t)(p->q_len * dp));
    for (int64_t j0 = 0; j0 < p->kv_len; j0 += BK) key_block_task(p, b, h, j0, dq, w);
    if (dq) store_rows(&p->grad_q, b, h, 0, p->q_len, p->head_dim, dq, dp);
}

/* dQ of query block i0 of (b, h), from every key block it sees. */
INLINE void query_block_task(const kn_attention_problem *p, int64_t b, int64_t h, int64_t i0,
                             scratch *w)
{
    const int64_t dp = round_up(p->head_dim);
    const float *qr[BQ], *dor[BQ];
    int rows = (int)min64(BQ, p->q_len - i0);
    memset(w->dq, 0, sizeof(float) * (size_t)(rows * dp));
    prepare_queries(p, b, h, i0, rows, false, qr, dor, w);
    int64_t kend = key_end(p, i0, rows);
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        int64_t nk = min64(BK, p->kv_len - j0), ncol = round_up(nk);
        const float *bias = prepare_keys(p, b, h, j0, nk, ncol, true, w);
        backward_block(p, b, h, i0, rows, j0, nk, ncol, bias, qr, dor, w->dq, false, w);
    }
    store_rows(&p->grad_q, b, h, i0, rows, p->head_dim, w->dq, dp);
}

/* ---- the tasks ------------------------------------------------------------------------ */

typedef enum {
    FORWARD, /* (batch, head, query block): out and lse */
    PAIRS,   /* (batch, head): every gradient */
    KEYS,    /* (batch, head, key block): dK and dV */
    QUERIES, /* (batch, head, query block): dQ */
} task_kind;

typedef struct task_context {
    const kn_attention_problem *p;
    task_kind kind;
    int64_t blocks; /* tasks per (batch, head) */
    bool want_dq;   /* PAIRS */
    int failed;     /* set (atomically) by a range that had no scratch */
} task_context;

/* One range of tasks, with one scratch allocation (made per range, not per task). */
CLONES static void run_tasks(void *context, int64_t begin, int64_t end)
{
    task_context *t = context;
    const kn_attention_problem *p = t->p;
    scratch w = scratch_new(p, t->kind == PAIRS ? p->q_len : t->kind == QUERIES ? BQ : 0);
    if (!w.block) {
        __atomic_store_n(&t->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t task = begin; task < end; task++) {
        int64_t bh = task / t->blocks, b = bh / p->heads, h = bh % p->heads;
        int64_t block = task % t->blocks;
        switch (t->kind) {
        case FORWARD:
            forward_block(p, b, h, block * BQ, (int)min64(BQ, p->q_len - block * BQ), &w);
            break;
        case PAIRS:
            pair_task(p, b, h, t->want_dq ? w.dq : NULL, &w);
            break;
        case KEYS:
            key_block_task(p, b, h, block * BK, NULL, &w);
            break;
        case QUERIES:
            query_block_task(p, b, h, block * BQ, &w);
            break;
        }
    }
    free(w.block);
}

/* Runs blocks tasks of kind per (batch, head) over the pool; false when out of memory. */
static bool run(const kn_attention_problem *p, task_kind kind, int64_t blocks, bool want_dq)
{
    task_context t = {.p = p, .kind = kind, .blocks = blocks, .want_dq = want_dq};
    kn_cpu_parallel_for(p->batch * p->heads * blocks, 1, run_tasks, &t);
    return !t.failed;
}

bool kn_cpu_attention_forward(const kn_attention_problem *p)
{
    return run(p, FORWARD, (p->q_len + BQ - 1) / BQ, false);
}

bool kn_cpu_attention_backward(const kn_attention_problem *p)
{
    int64_t pairs = p->batch * p->heads;
    int64_t key_blocks = (p->kv_len + BK - 1) / BK, query_blocks = (p->q_len + BQ - 1) / BQ;
    bool want_dq = p->grad_q.data != NULL;
    bool want_dkdv = p->grad_k.data != NULL || p->grad_v.data != NULL;
    if (pairs == 0) return true;
    /* whole pairs when there are enough of them to share out (or one key block each);
     * else the keys' pass then the queries' pass, which split finer */
    if (want_dkdv && (key_blocks <= 1 || pairs >= 4 * kn_cpu_get_num_threads()))
        return run(p, PAIRS, 1, want_dq);
    if (want_dkdv && !run(p, KEYS, key_blocks, false)) return false;
    return !want_dq || run(p, QUERIES, query_blocks, false);
}

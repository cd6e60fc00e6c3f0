/*
 * attention.cu — the fused scaled-dot-product attention (../kn_attention.h) on a CUDA
 * device, with kernels/cpu/attention.c's semantics: the same mask rules, the online
 * softmax with the lse saved, zeros for a row that sees no key, and the same dropout hash
 * (a seed drops the same weights on either device).
 *
 * One thread per query row (forward, dQ) or key row (dK and dV), blocks of ROWS threads;
 * the other side streams through shared memory a tile at a time, so the [L, S] weights
 * never exist. A thread keeps its row and its accumulators in local arrays of up to
 * KN_CUDA_ATTENTION_MAX_DIM floats. Simple rather than fast: tensor cores and warp
 * tiling would come with a GPU to measure on.
 */
#include "kn_cuda_attention.h"
#include "kn_cuda_internal.h"

#include <math.h>

#define ROWS 64 /* threads per block: one row each */
#define MAX_DIM KN_CUDA_ATTENTION_MAX_DIM
#define SHARED_FLOATS 12288 /* 48 KiB of tiles */

static unsigned blocks_for(int64_t items)
{
    int64_t b = (items + ROWS - 1) / ROWS;
    if (b < 1) b = 1;
    return (unsigned)(b < (1 << 30) ? b : (1 << 30));
}

/* Rows of the other side per shared-memory tile, for rows of width floats. */
static int tile_rows(int64_t width)
{
    int64_t t = SHARED_FLOATS / (width > 0 ? width : 1);
    return (int)(t > 32 ? 32 : t < 1 ? 1 : t);
}

__device__ static const float *row_of(const kn_attention_operand &o, int64_t b, int64_t h,
                                      int64_t t)
{
    return o.data + b * o.batch_stride + h * o.head_stride + t * o.row_stride;
}

__device__ static float *row_out(const kn_attention_operand &o, int64_t b, int64_t h, int64_t t)
{
    return o.data + b * o.batch_stride + h * o.head_stride + t * o.row_stride;
}

/* Whether query i sees key j of batch b. */
__device__ static bool visible(const kn_attention_problem &p, int64_t b, int64_t i, int64_t j)
{
    if (p.causal && j > i + p.causal_offset) return false;
    return !(p.key_padding && p.key_padding[b * p.key_padding_stride + j]);
}

__device__ static float drop_factor(const kn_attention_problem &p, int64_t b, int64_t h, int64_t i,
                                    int64_t j)
{
    if (!p.dropout_threshold) return 1.f;
    uint64_t index = (uint64_t)(((b * p.heads + h) * p.q_len + i) * p.kv_len + j);
    uint64_t z = KN_ATTENTION_HASH(p.dropout_seed, index);
    return (uint32_t)(z >> 40) >= p.dropout_threshold ? p.dropout_scale : 0.f;
}

__device__ static float dot(const float *a, const float *b, int64_t n)
{
    float sum = 0.f;
    for (int64_t d = 0; d < n; d++) sum += a[d] * b[d];
    return sum;
}

/* Copies rows [t0, t0 + n) of o (width floats each) of (b, h) into tile, by the block. */
__device__ static void load_tile(const kn_attention_operand &o, int64_t b, int64_t h, int64_t t0,
                                 int n, int64_t width, float *tile)
{
    for (int64_t e = threadIdx.x; e < (int64_t)n * width; e += blockDim.x) {
        int64_t r = e / width, d = e % width;
        tile[e] = row_of(o, b, h, t0 + r)[d];
    }
}

/* ---- forward ------------------------------------------------------------------------------ */

__global__ static void forward_kernel(kn_attention_problem p, int64_t row_blocks, int tile)
{
    extern __shared__ float shared[];
    float *ks = shared, *vs = shared + (int64_t)tile * p.head_dim;
    const int64_t D = p.head_dim, Dv = p.value_dim;
    for (int64_t item = blockIdx.x; item < p.batch * p.heads * row_blocks; item += gridDim.x) {
        int64_t bh = item / row_blocks, b = bh / p.heads, h = bh % p.heads;
        int64_t i = item % row_blocks * ROWS + threadIdx.x;
        bool active = i < p.q_len;
        float q[MAX_DIM], acc[MAX_DIM], s[32];
        float m = -INFINITY, l = 0.f;
        if (active) {
            const float *qr = row_of(p.q, b, h, i);
            for (int64_t d = 0; d < D; d++) q[d] = qr[d];
        }
        for (int64_t d = 0; d < Dv; d++) acc[d] = 0.f;
        int64_t last = item % row_blocks * ROWS + ROWS - 1; /* the block's last query */
        int64_t kend = p.kv_len;
        if (p.causal && last + p.causal_offset + 1 < kend) kend = last + p.causal_offset + 1;
        for (int64_t j0 = 0; j0 < kend; j0 += tile) {
            int n = (int)(kend - j0 < tile ? kend - j0 : tile);
            __syncthreads();
            load_tile(p.k, b, h, j0, n, D, ks);
            load_tile(p.v, b, h, j0, n, Dv, vs);
            __syncthreads();
            if (!active) continue;
            float tile_max = -INFINITY;
            for (int c = 0; c < n; c++) {
                float x = -INFINITY;
                if (visible(p, b, i, j0 + c)) x = dot(q, ks + c * D, D) * p.scale;
                s[c] = x;
                tile_max = fmaxf(tile_max, x);
            }
            float m_new = fmaxf(m, tile_max);
            if (m_new == -INFINITY) continue;
            float correction = expf(m - m_new), sum = 0.f;
            for (int64_t d = 0; d < Dv; d++) acc[d] *= correction;
            for (int c = 0; c < n; c++) {
                float w = expf(s[c] - m_new);
                sum += w;
                w *= drop_factor(p, b, h, i, j0 + c);
                for (int64_t d = 0; d < Dv; d++) acc[d] += w * vs[c * Dv + d];
            }
            l = l * correction + sum;
            m = m_new;
        }
        if (active) {
            float inv = l > 0.f ? 1.f / l : 0.f;
            float *out = row_out(p.out, b, h, i);
            for (int64_t d = 0; d < Dv; d++) out[d] = acc[d] * inv;
            p.lse[(b * p.heads + h) * p.q_len + i] = l > 0.f ? m + logf(l) : INFINITY;
        }
    }
}

/* ---- backward ----------------------------------------------------------------------------- */

/* delta[b, h, i] = sum_d dO * O */
__global__ static void delta_kernel(kn_attention_problem p, float *delta)
{
    GRID_STRIDE(r, p.batch * p.heads * p.q_len)
    {
        int64_t bh = r / p.q_len, b = bh / p.heads, h = bh % p.heads, i = r % p.q_len;
        delta[r] = dot(row_of(p.grad_out, b, h, i), row_of(p.out, b, h, i), p.value_dim);
    }
}

/* (i, j)'s weight and dS from q_i, k_j, dO_i, v_j: the weight p_ij (before dropout) from
 * lse, then ds = scale * p (dP * keep - delta) with dP = dO_i . v_j; *pd = p * keep (the
 * dropped weight). */
__device__ static float weight_grad(const kn_attention_problem &p, int64_t b, int64_t h, int64_t i,
                                    int64_t j, const float *q, const float *k, const float *g,
                                    const float *v, float lse, float delta, float *pd)
{
    float score = dot(q, k, p.head_dim), dp = dot(g, v, p.value_dim);
    float w = visible(p, b, i, j) ? expf(score * p.scale - lse) : 0.f;
    float keep = drop_factor(p, b, h, i, j);
    *pd = w * keep;
    return p.scale * w * (dp * keep - delta);
}

/* One thread per key row: dK and dV over every query that sees it. */
__global__ static void key_kernel(kn_attention_problem p, const float *delta, int64_t row_blocks,
                                  int tile)
{
    extern __shared__ float shared[];
    const int64_t D = p.head_dim, Dv = p.value_dim;
    float *qs = shared, *gs = shared + (int64_t)tile * D;
    for (int64_t item = blockIdx.x; item < p.batch * p.heads * row_blocks; item += gridDim.x) {
        int64_t bh = item / row_blocks, b = bh / p.heads, h = bh % p.heads;
        int64_t j = item % row_blocks * ROWS + threadIdx.x;
        bool active = j < p.kv_len;
        float k[MAX_DIM], v[MAX_DIM], dk[MAX_DIM], dv[MAX_DIM];
        if (active) {
            const float *kr = row_of(p.k, b, h, j), *vr = row_of(p.v, b, h, j);
            for (int64_t d = 0; d < D; d++) k[d] = kr[d];
            for (int64_t d = 0; d < Dv; d++) v[d] = vr[d];
        }
        for (int64_t d = 0; d < D; d++) dk[d] = 0.f;
        for (int64_t d = 0; d < Dv; d++) dv[d] = 0.f;
        const float *lse = p.lse + bh * p.q_len, *dl = delta + bh * p.q_len;
        for (int64_t i0 = 0; i0 < p.q_len; i0 += tile) {
            int n = (int)(p.q_len - i0 < tile ? p.q_len - i0 : tile);
            __syncthreads();
            load_tile(p.q, b, h, i0, n, D, qs);
            load_tile(p.grad_out, b, h, i0, n, Dv, gs);
            __syncthreads();
            if (!active) continue;
            for (int r = 0; r < n; r++) {
                int64_t i = i0 + r;
                if (!visible(p, b, i, j)) continue;
                float pd;
                float ds =
                    weight_grad(p, b, h, i, j, qs + r * D, k, gs + r * Dv, v, lse[i], dl[i], &pd);
                for (int64_t d = 0; d < Dv; d++) dv[d] += pd * gs[r * Dv + d];
                for (int64_t d = 0; d < D; d++) dk[d] += ds * qs[r * D + d];
            }
        }
        if (active) {
            if (p.grad_k.data) {
                float *o = row_out(p.grad_k, b, h, j);
                for (int64_t d = 0; d < D; d++) o[d] = dk[d];
            }
            if (p.grad_v.data) {
                float *o = row_out(p.grad_v, b, h, j);
                for (int64_t d = 0; d < Dv; d++) o[d] = dv[d];
            }
        }
    }
}

/* One thread per query row: dQ over every key it sees. */
__global__ static void query_kernel(kn_attention_problem p, const float *delta, int64_t row_blocks,
                                    int tile)
{
    extern __shared__ float shared[];
    const int64_t D = p.head_dim, Dv = p.value_dim;
    float *ks = shared, *vs = shared + (int64_t)tile * D;
    for (int64_t item = blockIdx.x; item < p.batch * p.heads * row_blocks; item += gridDim.x) {
        int64_t bh = item / row_blocks, b = bh / p.heads, h = bh % p.heads;
        int64_t i = item % row_blocks * ROWS + threadIdx.x;
        bool active = i < p.q_len;
        float q[MAX_DIM], g[MAX_DIM], dq[MAX_DIM];
        float lse = 0.f, dl = 0.f;
        if (active) {
            const float *qr = row_of(p.q, b, h, i), *gr = row_of(p.grad_out, b, h, i);
            for (int64_t d = 0; d < D; d++) q[d] = qr[d];
            for (int64_t d = 0; d < Dv; d++) g[d] = gr[d];
            lse = p.lse[bh * p.q_len + i];
            dl = delta[bh * p.q_len + i];
        }
        for (int64_t d = 0; d < D; d++) dq[d] = 0.f;
        for (int64_t j0 = 0; j0 < p.kv_len; j0 += tile) {
            int n = (int)(p.kv_len - j0 < tile ? p.kv_len - j0 : tile);
            __syncthreads();
            load_tile(p.k, b, h, j0, n, D, ks);
            load_tile(p.v, b, h, j0, n, Dv, vs);
            __syncthreads();
            if (!active) continue;
            for (int c = 0; c < n; c++) {
                int64_t j = j0 + c;
                if (!visible(p, b, i, j)) continue;
                float pd;
                float ds = weight_grad(p, b, h, i, j, q, ks + c * D, g, vs + c * Dv, lse, dl, &pd);
                for (int64_t d = 0; d < D; d++) dq[d] += ds * ks[c * D + d];
            }
        }
        if (active) {
            float *o = row_out(p.grad_q, b, h, i);
            for (int64_t d = 0; d < D; d++) o[d] = dq[d];
        }
    }
}

/* ---- the table ---------------------------------------------------------------------------- */

static const char *check_dims(const kn_attention_problem *p, const char *op)
{
    if (p->head_dim > MAX_DIM || p->value_dim > MAX_DIM)
        return kn_cuda_fail("%s: head dims up to %d on cuda, got %lld and %lld", op, MAX_DIM,
                            (long long)p->head_dim, (long long)p->value_dim);
    return NULL;
}

static const char *attention_forward(int device, const kn_attention_problem *p)
{
    const char *op = "scaled_dot_product_attention";
    const char *error = check_dims(p, op);
    cudaStream_t stream;
    if (error || (error = kn_cuda_enter(device, op, &stream, NULL))) return error;
    int64_t row_blocks = (p->q_len + ROWS - 1) / ROWS;
    if (p->batch * p->heads * row_blocks == 0) return NULL;
    int tile = tile_rows(p->head_dim + p->value_dim);
    size_t shared = sizeof(float) * (size_t)tile * (size_t)(p->head_dim + p->value_dim);
    forward_kernel<<<blocks_for(p->batch * p->heads * p->q_len), ROWS, shared, stream>>>(
        *p, row_blocks, tile);
    return kn_cuda_check(cudaGetLastError(), op);
}

static const char *attention_backward(int device, const kn_attention_problem *p)
{
    const char *op = "scaled_dot_product_attention backward";
    const char *error = check_dims(p, op);
    cudaStream_t stream;
    if (error || (error = kn_cuda_enter(device, op, &stream, NULL))) return error;
    int64_t rows = p->batch * p->heads * p->q_len;
    float *delta = NULL;
    const kn_cuda_backend *backend = kn_cuda_backend_v1();
    if (rows > 0 && (error = backend->alloc(device, sizeof(float) * (size_t)rows, (void **)&delta)))
        return error;
    int tile = tile_rows(p->head_dim + p->value_dim);
    size_t shared = sizeof(float) * (size_t)tile * (size_t)(p->head_dim + p->value_dim);
    if (rows > 0) delta_kernel<<<blocks_for(rows), ROWS, 0, stream>>>(*p, delta);
    if (!error && (p->grad_k.data || p->grad_v.data) && p->batch * p->heads * p->kv_len > 0) {
        int64_t blocks = (p->kv_len + ROWS - 1) / ROWS;
        key_kernel<<<blocks_for(p->batch * p->heads * p->kv_len), ROWS, shared, stream>>>(
            *p, delta, blocks, tile);
    }
    if (!error && p->grad_q.data && rows > 0) {
        int64_t blocks = (p->q_len + ROWS - 1) / ROWS;
        query_kernel<<<blocks_for(rows), ROWS, shared, stream>>>(*p, delta, blocks, tile);
    }
    error = kn_cuda_check(cudaGetLastError(), op);
    backend->free(device, delta, sizeof(float) * (size_t)rows); /* stream-ordered reuse */
    return error;
}

static const kn_cuda_attention attention_table = {
    KN_CUDA_ATTENTION_ABI,
    sizeof(kn_cuda_attention),
    attention_forward,
    attention_backward,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_attention *
kn_cuda_attention_v1(void)
{
    return &attention_table;
}

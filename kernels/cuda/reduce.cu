/*
 * reduce.cu — the CUDA module's reductions and softmax over a contiguous
 * [outer, reduce, inner] block (kn_cuda_reduce.h), with the semantics of
 * kernels/cpu/reduce.c: sums and variances totalled in double (two passes for var,
 * centred on the float mean), max/min where a NaN wins and ties go to the first index,
 * stable softmax (row max subtracted, an all -inf row gives NaN), and their backward
 * kernels. Also the module's second export, kn_cuda_reduce_v1, whose loss entries live
 * in loss.cu.
 *
 * Shapes: rows (inner == 1, or few long strided rows) get a block per output with a
 * block reduction; otherwise one thread per (o, i) column walks r, so neighbouring
 * threads read neighbouring addresses. When outputs are too few to fill the device with
 * a block each (a whole-tensor sum or max, a mean loss: outer = inner = 1), each
 * output's r range is cut into chunks, a block each, whose partials a second kernel
 * joins: no atomics, and a cut that depends on the shape alone, so the same input gives
 * the same bits on every run. Softmax rows up to 1024 long get a warp each. Every loop
 * is grid-strided with int64 indices, so any size launches.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_reduce.h"
#include "kn_cuda_reduce_internal.h"

#include <math.h>
#include <stdint.h>

#define THREADS 256
#define MAX_BLOCKS (1 << 20)

unsigned kn_cuda_blocks_for(int64_t items, int per_block)
{
    int64_t b = (items + per_block - 1) / per_block;
    return (unsigned)(b < 1 ? 1 : b > MAX_BLOCKS ? MAX_BLOCKS : b);
}

const char *kn_cuda_finish(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

/* Through the exported table, so the scratch follows whatever alloc and free do (the
 * graph pool while capturing) without reaching into runtime.cu. */
const char *kn_cuda_scratch_alloc(int device, size_t nbytes, void **out)
{
    return kn_cuda_backend_v1()->alloc(device, nbytes, out);
}

void kn_cuda_scratch_free(int device, void *ptr, size_t nbytes)
{
    kn_cuda_backend_v1()->free(device, ptr, nbytes);
}

/* ---- few outputs, long reductions: several blocks per output --------------------------- */

#define SPLIT_TARGET 1024 /* blocks the first pass aims for: several per SM of an H100 */
#define SPLIT_MIN 4096    /* elements a block takes at least (16 per thread) */

typedef struct split {
    int64_t chunks, len; /* output o's r range in chunks of len, the last maybe shorter */
} split;

/* Chunks per output, from the shape alone; chunks == 1: a block per output is enough. */
static split split_for(int64_t outputs, int64_t reduce)
{
    split s = {1, reduce};
    if (outputs >= SPLIT_TARGET / 2 || reduce < 2 * SPLIT_MIN) return s;
    int64_t by_work = (reduce + SPLIT_MIN - 1) / SPLIT_MIN;
    int64_t by_grid = (SPLIT_TARGET + outputs - 1) / outputs;
    int64_t chunks = by_work < by_grid ? by_work : by_grid;
    s.len = (reduce + chunks - 1) / chunks;
    s.chunks = (reduce + s.len - 1) / s.len; /* no empty chunk */
    return s;
}

/* ---- sum / mean / var ------------------------------------------------------------------ */

__global__ void sum_rows_kernel(const float *x, float *out, int64_t outer, int64_t reduce,
                                int64_t inner, double divisor, bool var)
{
    __shared__ double shared[32];
    for (int64_t k = blockIdx.x; k < outer * inner; k += gridDim.x) {
        const float *p = x + (k / inner) * reduce * inner + k % inner;
        double s = 0.0;
        for (int64_t r = threadIdx.x; r < reduce; r += blockDim.x) s += (double)p[r * inner];
        s = block_reduce(s, add_op(), shared);
        if (var) {
            float c = (float)(s / (double)reduce);
            double q = 0.0;
            for (int64_t r = threadIdx.x; r < reduce; r += blockDim.x) {
                float d = p[r * inner] - c;
                q += (double)(d * d);
            }
            s = block_reduce(q, add_op(), shared);
        }
        if (threadIdx.x == 0) out[k] = (float)(s / divisor);
    }
}

__global__ void sum_columns_kernel(const float *x, float *out, int64_t outer, int64_t reduce,
                                   int64_t inner, double divisor, bool var)
{
    GRID_STRIDE(k, outer * inner)
    {
        const float *p = x + (k / inner) * reduce * inner + k % inner;
        double s = 0.0;
        for (int64_t r = 0; r < reduce; r++) s += (double)p[r * inner];
        if (var) {
            float c = (float)(s / (double)reduce);
            double q = 0.0;
            for (int64_t r = 0; r < reduce; r++) {
                float d = p[r * inner] - c;
                q += (double)(d * d);
            }
            s = q;
        }
        out[k] = (float)(s / divisor);
    }
}

/* Block k = o * chunks + c: output o's elements r in chunk c, totalled in double, into
 * partial[k]; centred on center[o] (var's second pass) when center is given. */
__global__ void sum_chunks_kernel(const float *x, double *partial, int64_t outputs, int64_t reduce,
                                  int64_t inner, split sp, const float *center)
{
    __shared__ double shared[32];
    for (int64_t k = blockIdx.x; k < outputs * sp.chunks; k += gridDim.x) {
        int64_t o = k / sp.chunks, begin = (k % sp.chunks) * sp.len;
        int64_t end = begin + sp.len < reduce ? begin + sp.len : reduce;
        const float *p = x + (o / inner) * reduce * inner + o % inner;
        double s = 0.0;
        if (center) {
            float c = center[o];
            for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
                float d = p[r * inner] - c;
                s += (double)(d * d);
            }
        } else {
            for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x)
                s += (double)p[r * inner];
        }
        s = block_reduce(s, add_op(), shared);
        if (threadIdx.x == 0) partial[k] = s;
    }
}

/* A block per output joins its chunks' partials: out[o] = total / divisor. */
__global__ void sum_join_kernel(const double *partial, float *out, int64_t outputs, int64_t chunks,
                                double divisor)
{
    __shared__ double shared[32];
    for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
        double s = 0.0;
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) s += partial[o * chunks + c];
        s = block_reduce(s, add_op(), shared);
        if (threadIdx.x == 0) out[o] = (float)(s / divisor);
    }
}

/* sum or var over chunks: the partials, then (var) the float means and the centred
 * partials, then the result; the scratch goes back once the kernels are queued. */
static const char *sum_split(int device, cudaStream_t stream, const char *op, const float *x,
                             float *out, int64_t outputs, int64_t reduce, int64_t inner, split sp,
                             double divisor, bool var)
{
    size_t partial_bytes = sizeof(double) * (size_t)(outputs * sp.chunks);
    size_t bytes = partial_bytes + (var ? sizeof(float) * (size_t)outputs : 0);
    void *scratch;
    const char *error = kn_cuda_scratch_alloc(device, bytes, &scratch);
    if (error) return error;
    double *partial = (double *)scratch;
    float *means = var ? (float *)((char *)scratch + partial_bytes) : NULL;
    unsigned blocks = kn_cuda_blocks_for(outputs * sp.chunks, 1);
    unsigned joins = kn_cuda_blocks_for(outputs, 1);
    sum_chunks_kernel<<<blocks, THREADS, 0, stream>>>(x, partial, outputs, reduce, inner, sp, NULL);
    if (!(error = kn_cuda_finish(op))) {
        /* var's centre is the float mean, as the single-block kernel's */
        sum_join_kernel<<<joins, THREADS, 0, stream>>>(partial, var ? means : out, outputs,
                                                       sp.chunks, var ? (double)reduce : divisor);
        error = kn_cuda_finish(op);
    }
    if (!error && var) {
        sum_chunks_kernel<<<blocks, THREADS, 0, stream>>>(x, partial, outputs, reduce, inner, sp,
                                                          means);
        if (!(error = kn_cuda_finish(op))) {
            sum_join_kernel<<<joins, THREADS, 0, stream>>>(partial, out, outputs, sp.chunks,
                                                           divisor);
            error = kn_cuda_finish(op);
        }
    }
    kn_cuda_scratch_free(device, scratch, bytes);
    return error;
}

__global__ void fill_f32_kernel(float *out, int64_t n, float value)
{
    GRID_STRIDE(i, n) out[i] = value;
}

/* Rows when they are the contiguous axis or few and long; columns otherwise. */
static bool use_rows(int64_t outer, int64_t reduce, int64_t inner)
{
    return inner == 1 || (outer * inner < 2048 && reduce >= 64);
}

const char *kn_cuda_reduce_sum(int device, const float *x, float *out, int64_t outer,
                               int64_t reduce, int64_t inner, double divisor, bool var)
{
    const char *op = var ? "var" : "sum";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (outer < 0 || reduce < 0 || inner < 0)
        return kn_cuda_fail("%s: negative size [%lld, %lld, %lld]", op, (long long)outer,
                            (long long)reduce, (long long)inner);
    int64_t outputs = outer * inner;
    if (outputs == 0) return NULL;
    split sp = split_for(outputs, reduce);
    if (reduce == 0) {
        float value = (float)((var ? (double)NAN : 0.0) / divisor);
        fill_f32_kernel<<<kn_cuda_blocks_for(outputs, THREADS), THREADS, 0, stream>>>(out, outputs,
                                                                                      value);
    } else if (sp.chunks > 1) {
        return sum_split(device, stream, op, x, out, outputs, reduce, inner, sp, divisor, var);
    } else if (use_rows(outer, reduce, inner)) {
        sum_rows_kernel<<<kn_cuda_blocks_for(outputs, 1), THREADS, 0, stream>>>(
            x, out, outer, reduce, inner, divisor, var);
    } else {
        sum_columns_kernel<<<kn_cuda_blocks_for(outputs, THREADS), THREADS, 0, stream>>>(
            x, out, outer, reduce, inner, divisor, var);
    }
    return kn_cuda_finish(op);
}

/* ---- max / min ------------------------------------------------------------------------- */

/* Whether (bv, bi) beats (av, ai): a NaN wins, then the better value, then the first
 * index; index -1 means "nothing yet". */
__device__ __forceinline__ bool beats(float av, int64_t ai, float bv, int64_t bi, bool is_min)
{
    if (bi < 0) return false;
    if (ai < 0) return true;
    bool an = isnan(av), bn = isnan(bv);
    if (an || bn) return bn && (!an || bi < ai);
    bool better = is_min ? bv < av : bv > av;
    return better || (bv == av && bi < ai);
}

__device__ void block_best(float *v, int64_t *i, bool is_min, float *sv, int64_t *si)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, offset);
        int64_t oi = __shfl_xor_sync(0xffffffffu, *i, offset);
        if (beats(*v, *i, ov, oi, is_min)) *v = ov, *i = oi;
    }
    __syncthreads();
    if (lane == 0) sv[warp] = *v, si[warp] = *i;
    __syncthreads();
    if (warp == 0) {
        float bv = lane < warps ? sv[lane] : 0.f;
        int64_t bi = lane < warps ? si[lane] : -1;
        for (int offset = 16; offset > 0; offset >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
            int64_t oi = __shfl_xor_sync(0xffffffffu, bi, offset);
            if (beats(bv, bi, ov, oi, is_min)) bv = ov, bi = oi;
        }
        if (lane == 0) sv[0] = bv, si[0] = bi;
    }
    __syncthreads();
    *v = sv[0];
    *i = si[0];
}

__global__ void max_rows_kernel(const float *x, float *values, int64_t *indices, int64_t outer,
                                int64_t reduce, int64_t inner, bool is_min)
{
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    for (int64_t k = blockIdx.x; k < outer * inner; k += gridDim.x) {
        const float *p = x + (k / inner) * reduce * inner + k % inner;
        float bv = 0.f;
        int64_t bi = -1;
        for (int64_t r = threadIdx.x; r < reduce; r += blockDim.x) {
            float v = p[r * inner];
            if (beats(bv, bi, v, r, is_min)) bv = v, bi = r;
        }
        block_best(&bv, &bi, is_min, sv, si);
        if (threadIdx.x == 0) {
            if (values) values[k] = bv;
            if (indices) indices[k] = bi;
        }
    }
}

__global__ void max_columns_kernel(const float *x, float *values, int64_t *indices, int64_t outer,
                                   int64_t reduce, int64_t inner, bool is_min)
{
    GRID_STRIDE(k, outer * inner)
    {
        const float *p = x + (k / inner) * reduce * inner + k % inner;
        float bv = p[0];
        int64_t bi = 0;
        for (int64_t r = 1; r < reduce; r++) {
            float v = p[r * inner];
            if (beats(bv, bi, v, r, is_min)) bv = v, bi = r;
        }
        if (values) values[k] = bv;
        if (indices) indices[k] = bi;
    }
}

/* Block k = o * chunks + c: the best of output o's chunk c (index -1 when empty). */
__global__ void max_chunks_kernel(const float *x, float *pv, int64_t *pi, int64_t outputs,
                                  int64_t reduce, int64_t inner, split sp, bool is_min)
{
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    for (int64_t k = blockIdx.x; k < outputs * sp.chunks; k += gridDim.x) {
        int64_t o = k / sp.chunks, begin = (k % sp.chunks) * sp.len;
        int64_t end = begin + sp.len < reduce ? begin + sp.len : reduce;
        const float *p = x + (o / inner) * reduce * inner + o % inner;
        float bv = 0.f;
        int64_t bi = -1;
        for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
            float v = p[r * inner];
            if (beats(bv, bi, v, r, is_min)) bv = v, bi = r;
        }
        block_best(&bv, &bi, is_min, sv, si);
        if (threadIdx.x == 0) pv[k] = bv, pi[k] = bi;
    }
}

/* A block per output picks the best of its chunks' bests: beats() orders them by value,
 * NaN and first index, so the order they are joined in does not matter. */
__global__ void max_join_kernel(const float *pv, const int64_t *pi, float *values, int64_t *indices,
                                int64_t outputs, int64_t chunks, bool is_min)
{
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
        float bv = 0.f;
        int64_t bi = -1;
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x)
            if (beats(bv, bi, pv[o * chunks + c], pi[o * chunks + c], is_min))
                bv = pv[o * chunks + c], bi = pi[o * chunks + c];
        block_best(&bv, &bi, is_min, sv, si);
        if (threadIdx.x == 0) {
            if (values) values[o] = bv;
            if (indices) indices[o] = bi;
        }
    }
}

static const char *max_split(int device, cudaStream_t stream, const char *op, const float *x,
                             float *values, int64_t *indices, int64_t outputs, int64_t reduce,
                             int64_t inner, split sp, bool is_min)
{
    size_t n = (size_t)(outputs * sp.chunks);
    size_t bytes = n * (sizeof(int64_t) + sizeof(float));
    void *scratch;
    const char *error = kn_cuda_scratch_alloc(device, bytes, &scratch);
    if (error) return error;
    int64_t *pi = (int64_t *)scratch; /* first: the alignment of int64 */
    float *pv = (float *)(pi + n);
    max_chunks_kernel<<<kn_cuda_blocks_for(outputs * sp.chunks, 1), THREADS, 0, stream>>>(
        x, pv, pi, outputs, reduce, inner, sp, is_min);
    if (!(error = kn_cuda_finish(op))) {
        max_join_kernel<<<kn_cuda_blocks_for(outputs, 1), THREADS, 0, stream>>>(
            pv, pi, values, indices, outputs, sp.chunks, is_min);
        error = kn_cuda_finish(op);
    }
    kn_cuda_scratch_free(device, scratch, bytes);
    return error;
}

const char *kn_cuda_reduce_max(int device, const float *x, float *values, int64_t *indices,
                               int64_t outer, int64_t reduce, int64_t inner, bool is_min)
{
    const char *op = is_min ? "min" : "max";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (outer < 0 || reduce < 0 || inner < 0) return kn_cuda_fail("%s: negative size", op);
    int64_t outputs = outer * inner;
    if (outputs == 0 || reduce == 0) return NULL;
    split sp = split_for(outputs, reduce);
    if (sp.chunks > 1)
        return max_split(device, stream, op, x, values, indices, outputs, reduce, inner, sp,
                         is_min);
    if (use_rows(outer, reduce, inner))
        max_rows_kernel<<<kn_cuda_blocks_for(outputs, 1), THREADS, 0, stream>>>(
            x, values, indices, outer, reduce, inner, is_min);
    else
        max_columns_kernel<<<kn_cuda_blocks_for(outputs, THREADS), THREADS, 0, stream>>>(
            x, values, indices, outer, reduce, inner, is_min);
    return kn_cuda_finish(op);
}

__global__ void select_backward_kernel(const float *g, const int64_t *index, float *gx,
                                       int64_t outer, int64_t reduce, int64_t inner)
{
    GRID_STRIDE(k, outer * reduce * inner)
    {
        int64_t i = k % inner, o = k / (reduce * inner), r = (k / inner) % reduce;
        gx[k] = index[o * inner + i] == r ? g[o * inner + i] : 0.f;
    }
}

const char *kn_cuda_reduce_select_backward(int device, const float *g, const int64_t *index,
                                           float *gx, int64_t outer, int64_t reduce, int64_t inner)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "max backward", &stream, NULL);
    if (error) return error;
    int64_t n = outer * reduce * inner;
    if (n <= 0) return NULL;
    select_backward_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(
        g, index, gx, outer, reduce, inner);
    return kn_cuda_finish("max backward");
}

__device__ __forceinline__ bool matches(float x, float v)
{
    return isnan(v) ? isnan(x) : x == v;
}

__global__ void count_matches_kernel(const float *x, int64_t n, const float *value,
                                     unsigned long long *count)
{
    __shared__ unsigned long long shared[32];
    unsigned long long c = 0;
    float v = *value;
    GRID_STRIDE(i, n) c += matches(x[i], v);
    c = block_reduce(c, add_op(), shared);
    if (threadIdx.x == 0 && c) atomicAdd(count, c);
}

__global__ void share_kernel(const float *x, int64_t n, const float *value, const float *g,
                             float *gx, const unsigned long long *count)
{
    float v = *value, share = *g / (float)*count;
    GRID_STRIDE(i, n) gx[i] = matches(x[i], v) ? share : 0.f;
}

const char *kn_cuda_reduce_extreme_all_backward(int device, const float *x, int64_t n,
                                                const float *value, const float *g, float *gx,
                                                int64_t *scratch)
{
    cudaStream_t stream;
    const char *op = "max backward";
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (n <= 0) return NULL;
    unsigned long long *count = (unsigned long long *)scratch;
    if ((error = kn_cuda_check(cudaMemsetAsync(count, 0, sizeof *count, stream), op))) return error;
    unsigned blocks = kn_cuda_blocks_for(n, THREADS);
    if (blocks > 4096) blocks = 4096;
    count_matches_kernel<<<blocks, THREADS, 0, stream>>>(x, n, value, count);
    if ((error = kn_cuda_finish(op))) return error;
    share_kernel<<<kn_cuda_blocks_for(n, THREADS), THREADS, 0, stream>>>(x, n, value, g, gx, count);
    return kn_cuda_finish(op);
}

/* ---- softmax ----------------------------------------------------------------------------- */

/* One row of n at stride 1, handled by a group of `width` threads (a warp or the block)
 * with thread `lane`; reduce() joins the group's partials. */
template <bool BLOCK> struct group {
    float *shared;
    __device__ float sum(float v) const
    {
        return BLOCK ? block_reduce(v, add_op(), shared) : warp_reduce(v, add_op());
    }
    __device__ float max(float v) const
    {
        return BLOCK ? block_reduce(v, max_op(), shared) : warp_reduce(v, max_op());
    }
};

template <bool BLOCK>
__device__ void softmax_row(const float *x, float *y, int64_t n, bool log, int lane, int width,
                            group<BLOCK> grp)
{
    float m = -INFINITY;
    for (int64_t j = lane; j < n; j += width) m = fmaxf(m, x[j]);
    m = grp.max(m);
    float s = 0.f;
    for (int64_t j = lane; j < n; j += width) s += expf(x[j] - m);
    s = grp.sum(s);
    if (log) {
        float lse = logf(s);
        for (int64_t j = lane; j < n; j += width) y[j] = (x[j] - m) - lse;
    } else {
        float inv = 1.f / s;
        for (int64_t j = lane; j < n; j += width) y[j] = expf(x[j] - m) * inv;
    }
}

template <bool BLOCK>
__device__ void softmax_backward_row(const float *g, const float *y, float *gx, int64_t n, bool log,
                                     int lane, int width, group<BLOCK> grp)
{
    float s = 0.f;
    for (int64_t j = lane; j < n; j += width) s += log ? g[j] : g[j] * y[j];
    s = grp.sum(s);
    for (int64_t j = lane; j < n; j += width)
        gx[j] = log ? g[j] - expf(y[j]) * s : y[j] * (g[j] - s);
}

/* warp per row: 8 rows per block */
__global__ void softmax_warp_kernel(const float *x, const float *y, float *out, int64_t rows,
                                    int64_t n, bool log, bool backward)
{
    int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    group<false> grp = {NULL};
    for (int64_t row = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); row < rows;
         row += (int64_t)gridDim.x * warps) {
        int64_t at = row * n;
        if (backward)
            softmax_backward_row(x + at, y + at, out + at, n, log, lane, 32, grp);
        else
            softmax_row(x + at, out + at, n, log, lane, 32, grp);
    }
}

__global__ void softmax_block_kernel(const float *x, const float *y, float *out, int64_t rows,
                                     int64_t n, bool log, bool backward)
{
    __shared__ float shared[32];
    group<true> grp = {shared};
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int64_t at = row * n;
        if (backward)
            softmax_backward_row(x + at, y + at, out + at, n, log, threadIdx.x, blockDim.x, grp);
        else
            softmax_row(x + at, out + at, n, log, threadIdx.x, blockDim.x, grp);
    }
}

/* thread per (o, i) column down dim */
__global__ void softmax_columns_kernel(const float *x, const float *y, float *out, int64_t outer,
                                       int64_t dim, int64_t inner, bool log, bool backward)
{
    GRID_STRIDE(k, outer * inner)
    {
        int64_t at = (k / inner) * dim * inner + k % inner;
        const float *xr = x + at;
        float *o = out + at;
        if (backward) {
            const float *yr = y + at;
            float s = 0.f;
            for (int64_t r = 0; r < dim; r++)
                s += log ? xr[r * inner] : xr[r * inner] * yr[r * inner];
            for (int64_t r = 0; r < dim; r++) {
                float gv = xr[r * inner], yv = yr[r * inner];
                o[r * inner] = log ? gv - expf(yv) * s : yv * (gv - s);
            }
            continue;
        }
        float m = -INFINITY, s = 0.f;
        for (int64_t r = 0; r < dim; r++) m = fmaxf(m, xr[r * inner]);
        for (int64_t r = 0; r < dim; r++) s += expf(xr[r * inner] - m);
        if (log) {
            float lse = logf(s);
            for (int64_t r = 0; r < dim; r++) o[r * inner] = (xr[r * inner] - m) - lse;
        } else {
            float inv = 1.f / s;
            for (int64_t r = 0; r < dim; r++) o[r * inner] = expf(xr[r * inner] - m) * inv;
        }
    }
}

static const char *softmax_launch(int device, const float *x, const float *y, float *out,
                                  int64_t outer, int64_t dim, int64_t inner, bool log,
                                  bool backward)
{
    const char *op = backward ? (log ? "log_softmax backward" : "softmax backward")
                              : (log ? "log_softmax" : "softmax");
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (outer < 0 || dim < 0 || inner < 0) return kn_cuda_fail("%s: negative size", op);
    if (outer * dim * inner == 0) return NULL;
    if (inner == 1 && dim <= 1024)
        softmax_warp_kernel<<<kn_cuda_blocks_for(outer, THREADS / 32), THREADS, 0, stream>>>(
            x, y, out, outer, dim, log, backward);
    else if (inner == 1)
        softmax_block_kernel<<<kn_cuda_blocks_for(outer, 1), 1024, 0, stream>>>(x, y, out, outer,
                                                                                dim, log, backward);
    else
        softmax_columns_kernel<<<kn_cuda_blocks_for(outer * inner, THREADS), THREADS, 0, stream>>>(
            x, y, out, outer, dim, inner, log, backward);
    return kn_cuda_finish(op);
}

const char *kn_cuda_softmax(int device, const float *x, float *y, int64_t outer, int64_t dim,
                            int64_t inner, bool log)
{
    return softmax_launch(device, x, NULL, y, outer, dim, inner, log, false);
}

const char *kn_cuda_softmax_backward(int device, const float *g, const float *y, float *gx,
                                     int64_t outer, int64_t dim, int64_t inner, bool log)
{
    return softmax_launch(device, g, y, gx, outer, dim, inner, log, true);
}

/* ---- the table ------------------------------------------------------------------------- */

static const kn_cuda_reduce reduce_table = {
    KN_CUDA_REDUCE_ABI,    sizeof(kn_cuda_reduce),         kn_cuda_reduce_sum,
    kn_cuda_reduce_max,    kn_cuda_reduce_select_backward, kn_cuda_reduce_extreme_all_backward,
    kn_cuda_softmax,       kn_cuda_softmax_backward,       kn_cuda_check_targets,
    kn_cuda_cross_entropy, kn_cuda_cross_entropy_backward, kn_cuda_nll,
    kn_cuda_nll_backward,  kn_cuda_pointwise_loss,         kn_cuda_pointwise_loss_backward,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_reduce *kn_cuda_reduce_v1(void)
{
    return &reduce_table;
}

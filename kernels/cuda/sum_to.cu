/*
 * sum_to.cu — the sum that reduces a broadcast gradient back to its operand's shape
 * (kn_cuda_backend's sum_to): conv and linear bias gradients, every broadcast add/mul
 * backward, a whole tensor summed into a scalar. Kept apart from elementwise.cu because
 * its plan (a group or a thread per output, cut into chunks with a deterministic second
 * pass when outputs are few) is its own piece of work. Design notes below.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_reduce_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- sum_to ---------------------------------------------------------------------------
 * A broadcast gradient summed back to its operand's shape. The input's dims are kept
 * (the output has them: in and out strides) or reduced (summed away: in strides); each
 * set is ordered by falling input stride and merged where the strides line up, so the
 * last dim of each set is the one that walks memory most closely. How it runs is chosen
 * from the shapes and strides alone, so a launch always sums in the same order and gives
 * the same bits on every run (no atomics):
 *  - the reduction runs along memory (the smallest stride is a reduced dim's) and is at
 *    least a warp long: a group per output, a warp, or a block from 1024 elements, whose
 *    neighbouring lanes read neighbouring addresses (conv and linear bias gradients,
 *    a whole tensor summed into a scalar);
 *  - otherwise a thread per output, neighbouring threads taking neighbouring outputs, so
 *    their reads coalesce when a kept dim is the contiguous one ([N, C] -> [C]).
 * When outputs are too few to fill the device either way, each output's range is cut
 * into chunks, a group or thread each, and a second kernel joins the partials. Threads
 * step through the reduced dims with counters (a mixed-radix add: one compare per dim)
 * rather than dividing each index. Totals are double, as kernels/cpu/reduce.c joins its
 * float blocks. */

#define SUM_WARP 32              /* a group that is one warp */
#define SUM_BLOCK 256            /* a group that is the block; also threads per block */
#define SUM_BLOCK_FROM 1024      /* elements per output from which a group is a block */
#define SUM_PER_LANE 16          /* elements a lane takes at least when outputs are cut */
#define SUM_PER_THREAD 256       /* elements a thread takes at least when outputs are cut */
#define SUM_GROUP_TARGET 1024    /* blocks the cut aims for (several per SM of an H100) */
#define SUM_THREAD_TARGET 131072 /* threads the cut aims for in the thread-per-output way */

typedef struct sum_geometry {
    int kept_ndim, reduced_ndim;
    int64_t outputs, per_output;
    int64_t kept_shape[KN_CPU_MAX_DIMS], kept_in[KN_CPU_MAX_DIMS], kept_out[KN_CPU_MAX_DIMS];
    /* the reduced dims, padded at the front to the walker's width with size-1 dims */
    int64_t reduced_shape[KN_CPU_MAX_DIMS], reduced_in[KN_CPU_MAX_DIMS];
    int64_t wrap[KN_CPU_MAX_DIMS]; /* reduced_shape * reduced_in: a digit's wrap-around */
    int64_t step[KN_CPU_MAX_DIMS]; /* a lane's step (the group's width) in digits */
    int64_t chunks, len;           /* each output's range: chunks of len, the last shorter */
} sum_geometry;

/* Input and output offsets of output o (a division per kept dim, once per output). */
__device__ __forceinline__ void kept_offsets(const sum_geometry &g, int64_t o, int64_t *in,
                                             int64_t *out)
{
    *in = *out = 0;
    for (int d = g.kept_ndim - 1; d >= 0; d--) {
        int64_t idx = o % g.kept_shape[d];
        o /= g.kept_shape[d];
        *in += idx * g.kept_in[d];
        *out += idx * g.kept_out[d];
    }
}

/* The input offset of reduced element r, kept as R digits (R a compile-time width, so
 * the digits live in registers). */
template <int R> struct walker {
    int64_t idx[R], off;

    __device__ __forceinline__ void seek(const sum_geometry &g, int64_t r)
    {
        off = 0;
#pragma unroll
        for (int d = R - 1; d >= 0; d--) {
            idx[d] = r % g.reduced_shape[d];
            r /= g.reduced_shape[d];
            off += idx[d] * g.reduced_in[d];
        }
    }
    /* r += the step: every step digit is below its dim's size, so a digit wraps at most
     * once and carries 1. Past the last element the digits run on harmlessly. */
    __device__ __forceinline__ void advance(const sum_geometry &g)
    {
        int64_t carry = 0;
#pragma unroll
        for (int d = R - 1; d >= 0; d--) {
            int64_t by = g.step[d] + carry;
            idx[d] += by;
            off += by * g.reduced_in[d];
            carry = idx[d] >= g.reduced_shape[d];
            if (carry) {
                idx[d] -= g.reduced_shape[d];
                off -= g.wrap[d];
            }
        }
    }
};

/* Sum of in[base + offset of r] for r = first, first + step, ... < end, in that order. */
template <int R>
__device__ __forceinline__ double sum_range(const sum_geometry &g, const float *in, int64_t first,
                                            int64_t end, int step)
{
    double s = 0.0;
    if (first >= end) return s;
    walker<R> w;
    w.seek(g, first);
    int64_t r = first;
    /* four loads in flight before their adds wait */
    for (; r + 3 * (int64_t)step < end; r += 4 * (int64_t)step) {
        float v0 = in[w.off];
        w.advance(g);
        float v1 = in[w.off];
        w.advance(g);
        float v2 = in[w.off];
        w.advance(g);
        float v3 = in[w.off];
        w.advance(g);
        s += (double)v0;
        s += (double)v1;
        s += (double)v2;
        s += (double)v3;
    }
    for (; r < end; r += step) {
        s += (double)in[w.off];
        w.advance(g);
    }
    return s;
}

/* A group of WIDTH lanes per item k = o * chunks + c (output o's chunk c); the result
 * goes to out when chunks == 1, else to partial[c * outputs + o]. */
template <int R, int WIDTH>
__global__ void sum_group_kernel(sum_geometry g, float *out, double *partial, const float *in)
{
    __shared__ double shared[32];
    int lane = threadIdx.x % WIDTH, groups = blockDim.x / WIDTH;
    int64_t items = g.outputs * g.chunks;
    /* the bound is the same for every lane of a group: all of them reach the reduction */
    for (int64_t k = (int64_t)blockIdx.x * groups + threadIdx.x / WIDTH; k < items;
         k += (int64_t)gridDim.x * groups) {
        int64_t o = k / g.chunks, c = k % g.chunks, in_base, out_off;
        kept_offsets(g, o, &in_base, &out_off);
        int64_t begin = c * g.len,
                end = begin + g.len < g.per_output ? begin + g.len : g.per_output;
        double s = sum_range<R>(g, in + in_base, begin + lane, end, WIDTH);
        s = WIDTH == SUM_WARP ? warp_reduce(s, add_op()) : block_reduce(s, add_op(), shared);
        if (lane == 0) {
            if (g.chunks == 1)
                out[out_off] = (float)s;
            else
                partial[c * g.outputs + o] = s;
        }
    }
}

/* A thread per item k = c * outputs + o: neighbouring threads take neighbouring outputs. */
template <int R>
__global__ void sum_thread_kernel(sum_geometry g, float *out, double *partial, const float *in)
{
    GRID_STRIDE(k, g.outputs * g.chunks)
    {
        int64_t c = k / g.outputs, o = k % g.outputs, in_base, out_off;
        kept_offsets(g, o, &in_base, &out_off);
        int64_t begin = c * g.len,
                end = begin + g.len < g.per_output ? begin + g.len : g.per_output;
        double s = sum_range<R>(g, in + in_base, begin, end, 1);
        if (g.chunks == 1)
            out[out_off] = (float)s;
        else
            partial[k] = s;
    }
}

/* A group of WIDTH lanes per output joins its chunks' partials, in a fixed order. */
template <int WIDTH>
__global__ void sum_join_kernel(sum_geometry g, float *out, const double *partial)
{
    __shared__ double shared[32];
    int lane = threadIdx.x % WIDTH, groups = blockDim.x / WIDTH;
    for (int64_t o = (int64_t)blockIdx.x * groups + threadIdx.x / WIDTH; o < g.outputs;
         o += (int64_t)gridDim.x * groups) {
        double s = 0.0;
        for (int64_t c = lane; c < g.chunks; c += WIDTH) s += partial[c * g.outputs + o];
        s = WIDTH == SUM_WARP ? warp_reduce(s, add_op()) : block_reduce(s, add_op(), shared);
        if (lane == 0) {
            int64_t in_base, out_off;
            kept_offsets(g, o, &in_base, &out_off);
            out[out_off] = (float)s;
        }
    }
}

/* ---- planning and launching ------------------------------------------------------------ */

static const char *finish(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

/* Orders dims by falling |in stride| (stable: ties keep their order), then merges each
 * into the one before it where the strides line up (out strides too when out is given). */
static int order_and_merge(int n, int64_t *shape, int64_t *in, int64_t *out)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && llabs(in[j - 1]) < llabs(in[j]); j--) {
            int64_t t = shape[j];
            shape[j] = shape[j - 1], shape[j - 1] = t;
            t = in[j], in[j] = in[j - 1], in[j - 1] = t;
            if (out) t = out[j], out[j] = out[j - 1], out[j - 1] = t;
        }
    int m = 0;
    for (int d = 0; d < n; d++) {
        if (m > 0 && in[m - 1] == in[d] * shape[d] && (!out || out[m - 1] == out[d] * shape[d])) {
            shape[m - 1] *= shape[d];
            in[m - 1] = in[d];
            if (out) out[m - 1] = out[d];
            continue;
        }
        shape[m] = shape[d], in[m] = in[d];
        if (out) out[m] = out[d];
        m++;
    }
    return m;
}

/* Output o's range cut into chunks of at least min_len, aiming for target items in all. */
static void cut_outputs(sum_geometry *g, int64_t target, int64_t min_len)
{
    g->chunks = 1;
    g->len = g->per_output;
    if (g->outputs >= target / 2 || g->per_output < 2 * min_len) return;
    int64_t by_work = (g->per_output + min_len - 1) / min_len;
    int64_t by_grid = (target + g->outputs - 1) / g->outputs;
    int64_t chunks = by_work < by_grid ? by_work : by_grid;
    g->len = (g->per_output + chunks - 1) / chunks;
    g->chunks = (g->per_output + g->len - 1) / g->len; /* no empty chunk */
}

template <int R>
static void launch_sum(const sum_geometry &g, int width, cudaStream_t stream, float *out,
                       double *partial, const float *in)
{
    int64_t items = g.outputs * g.chunks;
    if (width == SUM_BLOCK)
        sum_group_kernel<R, SUM_BLOCK>
            <<<kn_cuda_blocks_for(items, 1), SUM_BLOCK, 0, stream>>>(g, out, partial, in);
    else if (width == SUM_WARP)
        sum_group_kernel<R, SUM_WARP>
            <<<kn_cuda_blocks_for(items, SUM_BLOCK / SUM_WARP), SUM_BLOCK, 0, stream>>>(
                g, out, partial, in);
    else
        sum_thread_kernel<R>
            <<<kn_cuda_blocks_for(items, SUM_BLOCK), SUM_BLOCK, 0, stream>>>(g, out, partial, in);
}

/* The geometry of a sum_to and its lanes per output (1: a thread per output). */
static int plan_sum(const int64_t *shape, int ndim, kn_cpu_operand out, kn_cpu_operand in,
                    sum_geometry &g)
{
    memset(&g, 0, sizeof g);
    g.outputs = g.per_output = 1;
    int64_t reduced_shape[KN_CPU_MAX_DIMS], reduced_in[KN_CPU_MAX_DIMS];
    int nr = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue; /* a 0-size dim summed away leaves zeros */
        if (out.strides[d] == 0) {
            reduced_shape[nr] = shape[d];
            reduced_in[nr++] = in.strides[d];
            g.per_output *= shape[d];
        } else {
            g.kept_shape[g.kept_ndim] = shape[d];
            g.kept_in[g.kept_ndim] = in.strides[d];
            g.kept_out[g.kept_ndim++] = out.strides[d];
            g.outputs *= shape[d];
        }
    }
    if (g.outputs == 0) return 1;
    g.kept_ndim = order_and_merge(g.kept_ndim, g.kept_shape, g.kept_in, g.kept_out);
    nr = order_and_merge(nr, reduced_shape, reduced_in, NULL);

    /* along memory: the reduced dim that walks closest beats every kept dim */
    bool along = nr > 0 && (g.kept_ndim == 0 ||
                            llabs(reduced_in[nr - 1]) < llabs(g.kept_in[g.kept_ndim - 1]));
    int width = 1; /* a thread per output */
    if (along && g.per_output >= SUM_WARP)
        width = g.per_output >= SUM_BLOCK_FROM ? SUM_BLOCK : SUM_WARP;
    if (width > 1)
        cut_outputs(&g, (int64_t)SUM_GROUP_TARGET * (SUM_BLOCK / width),
                    (int64_t)width * SUM_PER_LANE);
    else
        cut_outputs(&g, SUM_THREAD_TARGET, SUM_PER_THREAD);

    /* the walker's width: the reduced dims right-aligned, size-1 dims in front */
    int R = nr <= 1 ? 1 : nr <= 2 ? 2 : nr <= 4 ? 4 : 8;
    g.reduced_ndim = R;
    for (int d = 0; d < R; d++) {
        int from = d - (R - nr);
        g.reduced_shape[d] = from >= 0 ? reduced_shape[from] : 1;
        g.reduced_in[d] = from >= 0 ? reduced_in[from] : 0;
        g.wrap[d] = g.reduced_shape[d] * g.reduced_in[d];
    }
    if (g.per_output > 0) /* the step in digits (a 0-size dim: nothing to walk) */
        for (int64_t d = R - 1, rest = width; d >= 0; d--) {
            g.step[d] = rest % g.reduced_shape[d];
            rest /= g.reduced_shape[d];
        }
    return width;
}

const char *kn_cuda_sum_to(int device, const int64_t *shape, int ndim, kn_cpu_operand out,
                           kn_cpu_operand in)
{
    const char *op = "sum";
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, op, &stream, NULL);
    if (error) return error;
    if (ndim < 0 || ndim > KN_CPU_MAX_DIMS)
        return kn_cuda_fail("sum: rank %d is out of range (at most %d)", ndim, KN_CPU_MAX_DIMS);
    sum_geometry g;
    int width = plan_sum(shape, ndim, out, in, g);
    if (g.outputs == 0) return NULL;
    double *partial = NULL;
    size_t bytes = g.chunks > 1 ? sizeof(double) * (size_t)(g.outputs * g.chunks) : 0;
    if (bytes && (error = kn_cuda_scratch_alloc(device, bytes, (void **)&partial))) return error;
    float *o = (float *)out.data;
    const float *x = (const float *)in.data;
    switch (g.reduced_ndim) {
    case 1:
        launch_sum<1>(g, width, stream, o, partial, x);
        break;
    case 2:
        launch_sum<2>(g, width, stream, o, partial, x);
        break;
    case 4:
        launch_sum<4>(g, width, stream, o, partial, x);
        break;
    default:
        launch_sum<8>(g, width, stream, o, partial, x);
        break;
    }
    error = finish(op);
    if (!error && partial) {
        if (g.chunks >= SUM_BLOCK)
            sum_join_kernel<SUM_BLOCK>
                <<<kn_cuda_blocks_for(g.outputs, 1), SUM_BLOCK, 0, stream>>>(g, o, partial);
        else
            sum_join_kernel<SUM_WARP>
                <<<kn_cuda_blocks_for(g.outputs, SUM_BLOCK / SUM_WARP), SUM_BLOCK, 0, stream>>>(
                    g, o, partial);
        error = finish(op);
    }
    if (partial) kn_cuda_scratch_free(device, partial, bytes);
    return error;
}

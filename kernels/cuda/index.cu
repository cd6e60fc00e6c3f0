/*
 * index.cu — the CUDA module's indexed copies and where: index_select (rows picked by
 * an int64 index, any element size) and its backward index_add, gather and its backward
 * scatter_add, and where over strided broadcast operands; and the kn_cuda_conv_v1
 * table that exports them with conv.cu's kernels.
 *
 * Indices are checked on the host before these run (core/ops/ops_index.c). The
 * scatter-adding backwards use atomicAdd, so repeated indices sum in an unspecified
 * order (float rounding only); all loops are grid-stride over int64 element numbers.
 */
#include "kn_cuda_conv.h"
#include "kn_cuda_internal.h"

#include <string.h>

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

static const char *launched(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

/* conv.cu */
const char *kn_cuda_im2col(int device, const kn_cpu_conv_geometry *g, const float *images,
                           int64_t count, float *col, int64_t ld);
const char *kn_cuda_col2im(int device, const kn_cpu_conv_geometry *g, const float *col, int64_t ld,
                           int64_t count, float *images);
const char *kn_cuda_max_pool2d(int device, const kn_cpu_pool_geometry *g, const float *in,
                               float *out, int64_t *indices);
const char *kn_cuda_max_pool2d_backward(int device, const kn_cpu_pool_geometry *g,
                                        const float *grad_out, const int64_t *indices,
                                        float *grad_in);
const char *kn_cuda_avg_pool2d(int device, const kn_cpu_pool_geometry *g, const float *in,
                               float *out);
const char *kn_cuda_avg_pool2d_backward(int device, const kn_cpu_pool_geometry *g,
                                        const float *grad_out, float *grad_in);
const char *kn_cuda_adaptive_avg_pool2d(int device, int64_t planes, int64_t h, int64_t w,
                                        int64_t oh, int64_t ow, const float *in, float *out);
const char *kn_cuda_adaptive_avg_pool2d_backward(int device, int64_t planes, int64_t h, int64_t w,
                                                 int64_t oh, int64_t ow, const float *grad_out,
                                                 float *grad_in);

/* ---- where ----------------------------------------------------------------------------- */

typedef struct where_geometry {
    int ndim;
    int64_t numel;
    int64_t shape[KN_CPU_MAX_DIMS];
    int64_t strides[4][KN_CPU_MAX_DIMS]; /* out, cond, a, b */
} where_geometry;

__global__ void where_kernel(where_geometry g, float *out, const void *cond, bool cond_is_int64,
                             const float *a, const float *b)
{
    GRID_STRIDE(e, g.numel)
    {
        int64_t off[4] = {0, 0, 0, 0}, rest = e;
        for (int d = g.ndim - 1; d >= 0; d--) {
            int64_t i = rest % g.shape[d];
            rest /= g.shape[d];
            for (int k = 0; k < 4; k++) off[k] += i * g.strides[k][d];
        }
        bool take_a = cond_is_int64 ? ((const int64_t *)cond)[off[1]] != 0
                                    : ((const float *)cond)[off[1]] != 0.f;
        out[off[0]] = take_a ? a[off[2]] : b[off[3]];
    }
}

static const char *backend_where(int device, const int64_t *shape, int ndim, kn_cpu_operand out,
                                 kn_cpu_operand cond, bool cond_is_int64, kn_cpu_operand a,
                                 kn_cpu_operand b)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "where", &stream, NULL);
    if (error) return error;
    if (ndim < 0 || ndim > KN_CPU_MAX_DIMS)
        return kn_cuda_fail("where: rank %d is out of range (at most %d)", ndim, KN_CPU_MAX_DIMS);
    where_geometry g;
    memset(&g, 0, sizeof g);
    g.numel = 1;
    const kn_cpu_operand *ops[4] = {&out, &cond, &a, &b};
    for (int d = 0; d < ndim; d++) {
        g.numel *= shape[d];
        if (shape[d] == 1) continue; /* size-1 dims index nothing */
        g.shape[g.ndim] = shape[d];
        for (int k = 0; k < 4; k++) g.strides[k][g.ndim] = ops[k]->strides[d];
        g.ndim++;
    }
    if (g.numel <= 0) return NULL;
    where_kernel<<<grid_for(g.numel), 256, 0, stream>>>(g, (float *)out.data, cond.data,
                                                        cond_is_int64, (const float *)a.data,
                                                        (const float *)b.data);
    return launched("where");
}

/* ---- index_select / index_add ---------------------------------------------------------- */

template <typename T>
__global__ void index_select_kernel(T *out, const T *in, const int64_t *index, int64_t n,
                                    int64_t outer, int64_t in_size, int64_t inner)
{
    GRID_STRIDE(e, outer * n * inner)
    {
        int64_t k = e % inner, t = e / inner;
        int64_t j = t % n, o = t / n;
        out[e] = in[(o * in_size + index[j]) * inner + k];
    }
}

static const char *backend_index_select(int device, size_t elem_size, void *out, const void *in,
                                        const int64_t *index, int64_t n, int64_t outer,
                                        int64_t in_size, int64_t inner)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "index_select", &stream, NULL);
    if (error) return error;
    int64_t total = outer * n * inner;
    if (total <= 0) return NULL;
    unsigned grid = grid_for(total);
    switch (elem_size) {
    case 1:
        index_select_kernel<<<grid, 256, 0, stream>>>((uint8_t *)out, (const uint8_t *)in, index, n,
                                                      outer, in_size, inner);
        break;
    case 2:
        index_select_kernel<<<grid, 256, 0, stream>>>((uint16_t *)out, (const uint16_t *)in, index,
                                                      n, outer, in_size, inner);
        break;
    case 4:
        index_select_kernel<<<grid, 256, 0, stream>>>((uint32_t *)out, (const uint32_t *)in, index,
                                                      n, outer, in_size, inner);
        break;
    case 8:
        index_select_kernel<<<grid, 256, 0, stream>>>((uint64_t *)out, (const uint64_t *)in, index,
                                                      n, outer, in_size, inner);
        break;
    default:
        return kn_cuda_fail("index_select: element size %zu is not 1, 2, 4 or 8", elem_size);
    }
    return launched("index_select");
}

__global__ void index_add_kernel(float *grad_in, const float *grad_out, const int64_t *index,
                                 int64_t n, int64_t outer, int64_t in_size, int64_t inner)
{
    GRID_STRIDE(e, outer * n * inner)
    {
        int64_t k = e % inner, t = e / inner;
        int64_t j = t % n, o = t / n;
        atomicAdd(grad_in + (o * in_size + index[j]) * inner + k, grad_out[e]);
    }
}

static const char *backend_index_add(int device, float *grad_in, const float *grad_out,
                                     const int64_t *index, int64_t n, int64_t outer,
                                     int64_t in_size, int64_t inner)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "index_select backward", &stream, NULL);
    if (error) return error;
    int64_t total = outer * n * inner;
    if (total <= 0) return NULL;
    index_add_kernel<<<grid_for(total), 256, 0, stream>>>(grad_in, grad_out, index, n, outer,
                                                          in_size, inner);
    return launched("index_select backward");
}

/* ---- gather / scatter_add ---------------------------------------------------------------- */

typedef struct gather_geometry {
    int ndim, dim;
    int64_t numel;
    int64_t shape[KN_CPU_MAX_DIMS];
    int64_t in_strides[KN_CPU_MAX_DIMS];
    int64_t other_strides[KN_CPU_MAX_DIMS]; /* scatter_add: grad_out's */
} gather_geometry;

static const char *make_gather(const char *op, const int64_t *shape, int ndim, int dim,
                               const int64_t *in_strides, const int64_t *other_strides,
                               gather_geometry *g)
{
    memset(g, 0, sizeof *g);
    if (ndim < 1 || ndim > KN_CPU_MAX_DIMS || dim < 0 || dim >= ndim)
        return kn_cuda_fail("%s: rank %d / dim %d is out of range", op, ndim, dim);
    g->ndim = ndim;
    g->dim = dim;
    g->numel = 1;
    for (int d = 0; d < ndim; d++) {
        g->numel *= shape[d];
        g->shape[d] = shape[d];
        g->in_strides[d] = in_strides[d];
        if (other_strides) g->other_strides[d] = other_strides[d];
    }
    return NULL;
}

/* in's offset for element e of the index (coordinate dim replaced by the index value),
 * and the other operand's offset (contiguous when other is false). */
__device__ void gather_offsets(const gather_geometry &g, int64_t e, int64_t value, bool other,
                               int64_t *in_off, int64_t *other_off)
{
    int64_t rest = e, a = 0, b = 0;
    for (int d = g.ndim - 1; d >= 0; d--) {
        int64_t i = rest % g.shape[d];
        rest /= g.shape[d];
        a += (d == g.dim ? value : i) * g.in_strides[d];
        if (other) b += i * g.other_strides[d];
    }
    *in_off = a;
    *other_off = other ? b : e;
}

template <typename T>
__global__ void gather_kernel(gather_geometry g, T *out, const T *in, const int64_t *index)
{
    GRID_STRIDE(e, g.numel)
    {
        int64_t in_off, out_off;
        gather_offsets(g, e, index[e], false, &in_off, &out_off);
        out[out_off] = in[in_off];
    }
}

static const char *backend_gather(int device, size_t elem_size, const int64_t *shape, int ndim,
                                  int dim, void *out, const void *in, const int64_t *in_strides,
                                  const int64_t *index)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "gather", &stream, NULL);
    if (error) return error;
    gather_geometry g;
    if ((error = make_gather("gather", shape, ndim, dim, in_strides, NULL, &g))) return error;
    if (g.numel <= 0) return NULL;
    unsigned grid = grid_for(g.numel);
    switch (elem_size) {
    case 1:
        gather_kernel<<<grid, 256, 0, stream>>>(g, (uint8_t *)out, (const uint8_t *)in, index);
        break;
    case 2:
        gather_kernel<<<grid, 256, 0, stream>>>(g, (uint16_t *)out, (const uint16_t *)in, index);
        break;
    case 4:
        gather_kernel<<<grid, 256, 0, stream>>>(g, (uint32_t *)out, (const uint32_t *)in, index);
        break;
    case 8:
        gather_kernel<<<grid, 256, 0, stream>>>(g, (uint64_t *)out, (const uint64_t *)in, index);
        break;
    default:
        return kn_cuda_fail("gather: element size %zu is not 1, 2, 4 or 8", elem_size);
    }
    return launched("gather");
}

__global__ void scatter_add_kernel(gather_geometry g, float *grad_in, const float *grad_out,
                                   const int64_t *index)
{
    GRID_STRIDE(e, g.numel)
    {
        int64_t in_off, grad_off;
        gather_offsets(g, e, index[e], true, &in_off, &grad_off);
        atomicAdd(grad_in + in_off, grad_out[grad_off]);
    }
}

static const char *backend_scatter_add(int device, const int64_t *shape, int ndim, int dim,
                                       float *grad_in, const int64_t *in_strides,
                                       const float *grad_out, const int64_t *grad_strides,
                                       const int64_t *index)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "gather backward", &stream, NULL);
    if (error) return error;
    gather_geometry g;
    if ((error = make_gather("gather backward", shape, ndim, dim, in_strides, grad_strides, &g)))
        return error;
    if (g.numel <= 0) return NULL;
    scatter_add_kernel<<<grid_for(g.numel), 256, 0, stream>>>(g, grad_in, grad_out, index);
    return launched("gather backward");
}

/* ---- the table ------------------------------------------------------------------------- */

static const kn_cuda_conv_backend conv_backend = {
    KN_CUDA_CONV_ABI,
    sizeof(kn_cuda_conv_backend),
    kn_cuda_im2col,
    kn_cuda_col2im,
    kn_cuda_max_pool2d,
    kn_cuda_max_pool2d_backward,
    kn_cuda_avg_pool2d,
    kn_cuda_avg_pool2d_backward,
    kn_cuda_adaptive_avg_pool2d,
    kn_cuda_adaptive_avg_pool2d_backward,
    backend_where,
    backend_index_select,
    backend_index_add,
    backend_gather,
    backend_scatter_add,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_conv_backend *kn_cuda_conv_v1(void)
{
    return &conv_backend;
}

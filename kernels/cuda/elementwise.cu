/*
 * elementwise.cu — the CUDA module's elementwise kernels over strided operands: the
 * binary and unary ops of kernels/kn_ops.h (same op codes, same formulas as
 * kernels/cpu/elementwise.c), and strided copy and fill of any element size.
 *
 * Each launch describes its operands by an iteration shape and element strides (0 on
 * broadcast dims), up to 8 dims. Size-1 dims are dropped and neighbouring dims merged
 * where every operand allows, so contiguous and simply broadcast tensors index with
 * one division per dim at most; a fully contiguous launch indexes flat. The sum to a
 * broadcast operand's shape is in sum_to.cu.
 */
#include "kn_cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OPS 3

typedef struct geometry {
    int ndim, nops;
    bool flat; /* every operand contiguous over one merged dim */
    int64_t numel;
    int64_t shape[KN_CPU_MAX_DIMS];
    int64_t strides[MAX_OPS][KN_CPU_MAX_DIMS];
} geometry;

static const char *make_geometry(const char *op, const int64_t *shape, int ndim, int nops,
                                 const kn_cpu_operand *ops, geometry *g)
{
    memset(g, 0, sizeof *g);
    if (ndim < 0 || ndim > KN_CPU_MAX_DIMS)
        return kn_cuda_fail("%s: rank %d is out of range (at most %d)", op, ndim, KN_CPU_MAX_DIMS);
    g->nops = nops;
    g->numel = 1;
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        g->numel *= shape[d];
        if (shape[d] == 1) continue;
        g->shape[n] = shape[d];
        for (int k = 0; k < nops; k++) g->strides[k][n] = ops[k].strides[d];
        n++;
    }
    /* merge dim d into the one before it when every operand's strides line up */
    int out = 0;
    for (int d = 1; d < n; d++) {
        bool mergeable = true;
        for (int k = 0; k < nops; k++)
            if (g->strides[k][out] != g->strides[k][d] * g->shape[d]) mergeable = false;
        if (mergeable) {
            g->shape[out] *= g->shape[d];
            for (int k = 0; k < nops; k++) g->strides[k][out] = g->strides[k][d];
        } else {
            out++;
            g->shape[out] = g->shape[d];
            for (int k = 0; k < nops; k++) g->strides[k][out] = g->strides[k][d];
        }
    }
    g->ndim = n ? out + 1 : 0;
    g->flat = g->ndim <= 1;
    for (int k = 0; k < nops && g->ndim == 1; k++)
        if (g->strides[k][0] != 1) g->flat = false;
    return NULL;
}

/* Offsets (in elements) of linear element i for each operand. */
__device__ __forceinline__ void offsets(const geometry &g, int64_t i, int64_t *off)
{
    for (int k = 0; k < MAX_OPS; k++) off[k] = 0;
    if (g.flat) {
        for (int k = 0; k < MAX_OPS; k++) off[k] = i;
        return;
    }
    for (int d = g.ndim - 1; d >= 0; d--) {
        int64_t idx = i % g.shape[d];
        i /= g.shape[d];
        for (int k = 0; k < MAX_OPS; k++) off[k] += idx * g.strides[k][d];
    }
}

static void launch_dims(int64_t numel, unsigned *blocks, unsigned *threads)
{
    *threads = 256;
    int64_t b = (numel + 255) / 256;
    *blocks = (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

/* ---- math (as kernels/cpu/elementwise.c) ---------------------------------------------- */

#define SQRT1_2 0.70710678118654752440f
#define SQRT2_PI 0.79788456080286535588f

__device__ __forceinline__ float sigmoidf_(float x)
{
    return 1.f / (1.f + expf(-x));
}
__device__ __forceinline__ float gelu_exact(float x)
{
    return 0.5f * x * (1.f + erff(x * SQRT1_2));
}
__device__ __forceinline__ float gelu_tanh(float x)
{
    return 0.5f * x * (1.f + tanhf(SQRT2_PI * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float silu(float x)
{
    return x / (1.f + expf(-x));
}
__device__ __forceinline__ float silu_grad(float x)
{
    float s = 1.f / (1.f + expf(-x));
    return s * (1.f + x * (1.f - s));
}
__device__ __forceinline__ float gelu_exact_grad(float x)
{
    float cdf = 0.5f * (1.f + erff(x * SQRT1_2));
    float pdf = expf(-0.5f * x * x) * 0.39894228040143267794f;
    return cdf + x * pdf;
}
__device__ __forceinline__ float gelu_tanh_grad(float x)
{
    float inner = SQRT2_PI * (x + 0.044715f * x * x * x);
    float t = tanhf(inner);
    float left = 0.5f * x, right = 1.f + t;
    float left_d = 0.5f * right;
    float inner_d = SQRT2_PI * (1.f + 3.f * 0.044715f * x * x);
    float right_d = left * (1.f - t * t) * inner_d;
    return left_d + right_d;
}

__device__ __forceinline__ float binary_value(kn_binary_op op, float x, float y, float alpha,
                                              float beta)
{
    switch (op) {
    case KN_BINARY_ADD:
        return x + y;
    case KN_BINARY_SUB:
        return x - y;
    case KN_BINARY_MUL:
        return x * y;
    case KN_BINARY_DIV:
        return x / y;
    case KN_BINARY_EQ:
        return x == y ? 1.f : 0.f;
    case KN_BINARY_GT:
        return x > y ? 1.f : 0.f;
    case KN_BINARY_LT:
        return x < y ? 1.f : 0.f;
    case KN_BINARY_ADD_SCALED:
        return x + alpha * y;
    case KN_BINARY_RELU_BACKWARD:
        return y > 0.f ? x : 0.f;
    case KN_BINARY_LEAKY_RELU_BACKWARD:
        return y > 0.f ? x : x * alpha;
    case KN_BINARY_TANH_BACKWARD:
        return x * (1.f - y * y);
    case KN_BINARY_SIGMOID_BACKWARD:
        return x * y * (1.f - y);
    case KN_BINARY_GELU_BACKWARD:
        return x * gelu_exact_grad(y);
    case KN_BINARY_GELU_TANH_BACKWARD:
        return x * gelu_tanh_grad(y);
    case KN_BINARY_SILU_BACKWARD:
        return x * silu_grad(y);
    case KN_BINARY_POW_BACKWARD:
        return x * alpha * powf(y, alpha - 1.f);
    case KN_BINARY_CLAMP_BACKWARD:
        return (y >= alpha && y <= beta) ? x : 0.f;
    /* ---- sequence layers (issue 12) ---- */
    case KN_BINARY_ELU_BACKWARD:
        return y > 0.f ? x : x * alpha * expf(y);
    default:
        return 0.f;
    }
}

__device__ __forceinline__ float unary_value(kn_unary_op op, float x, float alpha, float beta)
{
    switch (op) {
    case KN_UNARY_COPY:
        return x;
    case KN_UNARY_NEG:
        return -x;
    case KN_UNARY_EXP:
        return expf(x);
    case KN_UNARY_LOG:
        return logf(x);
    case KN_UNARY_SQRT:
        return sqrtf(x);
    case KN_UNARY_ABS:
        return fabsf(x);
    case KN_UNARY_SIGN:
        return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
    case KN_UNARY_RELU:
        return x < 0.f ? 0.f : x; /* NaN stays NaN, as torch */
    case KN_UNARY_LEAKY_RELU:
        return x < 0.f ? x * alpha : x;
    case KN_UNARY_TANH:
        return tanhf(x);
    case KN_UNARY_SIGMOID:
        return sigmoidf_(x);
    case KN_UNARY_GELU:
        return gelu_exact(x);
    case KN_UNARY_GELU_TANH:
        return gelu_tanh(x);
    case KN_UNARY_SILU:
        return silu(x);
    case KN_UNARY_POW:
        if (alpha == 2.f) return x * x;
        if (alpha == 0.5f) return sqrtf(x);
        if (alpha == 1.f) return x;
        if (alpha == -1.f) return 1.f / x;
        return powf(x, alpha);
    case KN_UNARY_CLAMP:
        return isnan(x) ? x : (x < alpha ? alpha : (x > beta ? beta : x));
    case KN_UNARY_ADD_SCALAR:
        return x + alpha;
    case KN_UNARY_MUL_SCALAR:
        return x * alpha;
    case KN_UNARY_FILL:
        return alpha;
    /* ---- sequence layers (issue 12) ---- */
    case KN_UNARY_ELU:
        return x > 0.f ? x : alpha * expm1f(x);
    default:
        return 0.f;
    }
}

/* ---- kernels ---------------------------------------------------------------------------- */

__global__ void binary_kernel(geometry g, kn_binary_op op, float *out, const float *a,
                              const float *b, float alpha, float beta)
{
    GRID_STRIDE(i, g.numel)
    {
        int64_t off[MAX_OPS];
        offsets(g, i, off);
        out[off[0]] = binary_value(op, a[off[1]], b[off[2]], alpha, beta);
    }
}

__global__ void unary_kernel(geometry g, kn_unary_op op, float *out, const float *a, float alpha,
                             float beta)
{
    GRID_STRIDE(i, g.numel)
    {
        int64_t off[MAX_OPS];
        offsets(g, i, off);
        out[off[0]] = unary_value(op, op == KN_UNARY_FILL ? 0.f : a[off[1]], alpha, beta);
    }
}

template <typename T> __global__ void copy_kernel(geometry g, T *out, const T *in)
{
    GRID_STRIDE(i, g.numel)
    {
        int64_t off[MAX_OPS];
        offsets(g, i, off);
        out[off[0]] = in[off[1]];
    }
}

template <typename T> __global__ void fill_kernel(geometry g, T *out, T value)
{
    GRID_STRIDE(i, g.numel)
    {
        int64_t off[MAX_OPS];
        offsets(g, i, off);
        out[off[0]] = value;
    }
}

/* ---- entry points ----------------------------------------------------------------------- */

static const char *finish(const char *op)
{
    return kn_cuda_check(cudaGetLastError(), op);
}

const char *kn_cuda_binary(int device, kn_binary_op op, const int64_t *shape, int ndim,
                           kn_cpu_operand out, kn_cpu_operand a, kn_cpu_operand b, float alpha,
                           float beta)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "binary", &stream, NULL);
    if (error) return error;
    if ((unsigned)op >= KN_BINARY_COUNT) return kn_cuda_fail("binary: unknown op %d", (int)op);
    geometry g;
    kn_cpu_operand ops[3] = {out, a, b};
    if ((error = make_geometry("binary", shape, ndim, 3, ops, &g))) return error;
    if (g.numel == 0) return NULL;
    unsigned blocks, threads;
    launch_dims(g.numel, &blocks, &threads);
    binary_kernel<<<blocks, threads, 0, stream>>>(g, op, (float *)out.data, (const float *)a.data,
                                                  (const float *)b.data, alpha, beta);
    return finish("binary");
}

const char *kn_cuda_unary(int device, kn_unary_op op, const int64_t *shape, int ndim,
                          kn_cpu_operand out, kn_cpu_operand a, float alpha, float beta)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "unary", &stream, NULL);
    if (error) return error;
    if ((unsigned)op >= KN_UNARY_COUNT) return kn_cuda_fail("unary: unknown op %d", (int)op);
    geometry g;
    kn_cpu_operand ops[2] = {out, a};
    if (op == KN_UNARY_FILL) ops[1] = out; /* a is unused: do not let it split dims */
    if ((error = make_geometry("unary", shape, ndim, 2, ops, &g))) return error;
    if (g.numel == 0) return NULL;
    unsigned blocks, threads;
    launch_dims(g.numel, &blocks, &threads);
    unary_kernel<<<blocks, threads, 0, stream>>>(g, op, (float *)out.data, (const float *)a.data,
                                                 alpha, beta);
    return finish("unary");
}

const char *kn_cuda_copy(int device, const int64_t *shape, int ndim, size_t elem_size,
                         kn_cpu_operand out, kn_cpu_operand in)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "copy", &stream, NULL);
    if (error) return error;
    geometry g;
    kn_cpu_operand ops[2] = {out, in};
    if ((error = make_geometry("copy", shape, ndim, 2, ops, &g))) return error;
    if (g.numel == 0) return NULL;
    if (g.flat) /* one contiguous block */
        return kn_cuda_check(cudaMemcpyAsync(out.data, in.data, (size_t)g.numel * elem_size,
                                             cudaMemcpyDeviceToDevice, stream),
                             "copy");
    unsigned blocks, threads;
    launch_dims(g.numel, &blocks, &threads);
    switch (elem_size) {
    case 1:
        copy_kernel<<<blocks, threads, 0, stream>>>(g, (uint8_t *)out.data,
                                                    (const uint8_t *)in.data);
        break;
    case 2:
        copy_kernel<<<blocks, threads, 0, stream>>>(g, (uint16_t *)out.data,
                                                    (const uint16_t *)in.data);
        break;
    case 4:
        copy_kernel<<<blocks, threads, 0, stream>>>(g, (uint32_t *)out.data,
                                                    (const uint32_t *)in.data);
        break;
    case 8:
        copy_kernel<<<blocks, threads, 0, stream>>>(g, (uint64_t *)out.data,
                                                    (const uint64_t *)in.data);
        break;
    default:
        return kn_cuda_fail("copy: element size %zu is not supported", elem_size);
    }
    return finish("copy");
}

const char *kn_cuda_fill(int device, const int64_t *shape, int ndim, size_t elem_size,
                         kn_cpu_operand out, const void *host_value)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "fill", &stream, NULL);
    if (error) return error;
    geometry g;
    if ((error = make_geometry("fill", shape, ndim, 1, &out, &g))) return error;
    if (g.numel == 0) return NULL;
    unsigned blocks, threads;
    launch_dims(g.numel, &blocks, &threads);
    switch (elem_size) {
    case 4: {
        uint32_t v;
        memcpy(&v, host_value, 4);
        fill_kernel<<<blocks, threads, 0, stream>>>(g, (uint32_t *)out.data, v);
        break;
    }
    case 8: {
        uint64_t v;
        memcpy(&v, host_value, 8);
        fill_kernel<<<blocks, threads, 0, stream>>>(g, (uint64_t *)out.data, v);
        break;
    }
    default:
        return kn_cuda_fail("fill: element size %zu is not supported", elem_size);
    }
    return finish("fill");
}

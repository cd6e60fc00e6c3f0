/*
 * int64.cu — the CUDA module's int64 kernels (kn_cuda_int64_v1 of kn_cuda_int64.h): the
 * same conversions and binary ops as kernels/cpu/int64.c, flat over contiguous buffers.
 */
#include "kn_cuda_int64.h"
#include "kn_cuda_internal.h"

#include <math.h>

static unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + 255) / 256;
    return (unsigned)(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

__device__ __forceinline__ int64_t f32_to_i64(float x)
{
    if (isnan(x)) return INT64_MIN;
    if (x >= 9223372036854775808.0f) return INT64_MAX;
    if (x < -9223372036854775808.0f) return INT64_MIN;
    return (int64_t)x;
}

__global__ void to_int64_kernel(int64_t n, int64_t *out, const float *in)
{
    GRID_STRIDE(i, n) out[i] = f32_to_i64(in[i]);
}

__global__ void to_float_kernel(int64_t n, float *out, const int64_t *in)
{
    GRID_STRIDE(i, n) out[i] = (float)in[i];
}

__global__ void binary_kernel(kn_binary_op op, int64_t n, void *out, const int64_t *a,
                              const int64_t *b)
{
    int64_t *o = (int64_t *)out;
    float *f = (float *)out;
    GRID_STRIDE(i, n)
    {
        uint64_t x = (uint64_t)a[i], y = (uint64_t)b[i];
        switch (op) {
        case KN_BINARY_ADD:
            o[i] = (int64_t)(x + y);
            break;
        case KN_BINARY_SUB:
            o[i] = (int64_t)(x - y);
            break;
        case KN_BINARY_MUL:
            o[i] = (int64_t)(x * y);
            break;
        case KN_BINARY_EQ:
            f[i] = a[i] == b[i] ? 1.f : 0.f;
            break;
        case KN_BINARY_GT:
            f[i] = a[i] > b[i] ? 1.f : 0.f;
            break;
        case KN_BINARY_LT:
            f[i] = a[i] < b[i] ? 1.f : 0.f;
            break;
        default:
            break;
        }
    }
}

static const char *int64_cast(int device, bool to_int64, int64_t n, void *out, const void *in)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "to_dtype", &stream, NULL);
    if (error || n == 0) return error;
    if (to_int64)
        to_int64_kernel<<<grid_for(n), 256, 0, stream>>>(n, (int64_t *)out, (const float *)in);
    else
        to_float_kernel<<<grid_for(n), 256, 0, stream>>>(n, (float *)out, (const int64_t *)in);
    return kn_cuda_check(cudaGetLastError(), "to_dtype");
}

static const char *int64_binary(int device, kn_binary_op op, int64_t n, void *out, const int64_t *a,
                                const int64_t *b)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "int64 binary", &stream, NULL);
    if (error || n == 0) return error;
    switch (op) {
    case KN_BINARY_ADD:
    case KN_BINARY_SUB:
    case KN_BINARY_MUL:
    case KN_BINARY_EQ:
    case KN_BINARY_GT:
    case KN_BINARY_LT:
        break;
    default:
        return kn_cuda_fail("int64 binary: op %d has no int64 kernel", (int)op);
    }
    binary_kernel<<<grid_for(n), 256, 0, stream>>>(op, n, out, a, b);
    return kn_cuda_check(cudaGetLastError(), "int64 binary");
}

static const kn_cuda_int64 int64_table = {KN_CUDA_INT64_ABI, sizeof(kn_cuda_int64), int64_cast,
                                          int64_binary};

extern "C" __attribute__((visibility("default"))) const kn_cuda_int64 *kn_cuda_int64_v1(void)
{
    return &int64_table;
}

/*
 * int64.c — the CPU's int64 kernels (kn_cpu_int64.h): conversions to and from float32
 * and the int64 binary ops, flat loops over contiguous buffers, parallel above the
 * elementwise grain.
 */
#include "kn_cpu.h"
#include "kn_cpu_int64.h"

#include <math.h>

typedef struct cast_job {
    void *out;
    const void *in;
} cast_job;

static int64_t f32_to_i64(float x)
{
    /* 2^63 is exactly representable: anything at or above it saturates */
    if (isnan(x)) return INT64_MIN;
    if (x >= 9223372036854775808.0f) return INT64_MAX;
    if (x < -9223372036854775808.0f) return INT64_MIN;
    return (int64_t)x;
}

static void f32_to_i64_range(void *context, int64_t begin, int64_t end)
{
    cast_job *job = context;
    int64_t *out = job->out;
    const float *in = job->in;
    for (int64_t i = begin; i < end; i++) out[i] = f32_to_i64(in[i]);
}

static void i64_to_f32_range(void *context, int64_t begin, int64_t end)
{
    cast_job *job = context;
    float *out = job->out;
    const int64_t *in = job->in;
    for (int64_t i = begin; i < end; i++) out[i] = (float)in[i];
}

void kn_cpu_f32_to_i64(int64_t n, int64_t *out, const float *in)
{
    cast_job job = {out, in};
    kn_cpu_parallel_for(n, KN_CPU_GRAIN_ELEMENTWISE, f32_to_i64_range, &job);
}

void kn_cpu_i64_to_f32(int64_t n, float *out, const int64_t *in)
{
    cast_job job = {out, in};
    kn_cpu_parallel_for(n, KN_CPU_GRAIN_ELEMENTWISE, i64_to_f32_range, &job);
}

typedef struct binary_job {
    kn_binary_op op;
    void *out;
    const int64_t *a, *b;
} binary_job;

static void binary_range(void *context, int64_t begin, int64_t end)
{
    binary_job *job = context;
    const int64_t *a = job->a, *b = job->b;
    int64_t *o = job->out;
    float *f = job->out;
    /* unsigned arithmetic wraps where signed overflow would be undefined */
    switch (job->op) {
    case KN_BINARY_ADD:
        for (int64_t i = begin; i < end; i++) o[i] = (int64_t)((uint64_t)a[i] + (uint64_t)b[i]);
        break;
    case KN_BINARY_SUB:
        for (int64_t i = begin; i < end; i++) o[i] = (int64_t)((uint64_t)a[i] - (uint64_t)b[i]);
        break;
    case KN_BINARY_MUL:
        for (int64_t i = begin; i < end; i++) o[i] = (int64_t)((uint64_t)a[i] * (uint64_t)b[i]);
        break;
    case KN_BINARY_EQ:
        for (int64_t i = begin; i < end; i++) f[i] = a[i] == b[i] ? 1.f : 0.f;
        break;
    case KN_BINARY_GT:
        for (int64_t i = begin; i < end; i++) f[i] = a[i] > b[i] ? 1.f : 0.f;
        break;
    case KN_BINARY_LT:
        for (int64_t i = begin; i < end; i++) f[i] = a[i] < b[i] ? 1.f : 0.f;
        break;
    default:
        break;
    }
}

void kn_cpu_binary_i64(kn_binary_op op, int64_t n, void *out, const int64_t *a, const int64_t *b)
{
    binary_job job = {op, out, a, b};
    kn_cpu_parallel_for(n, KN_CPU_GRAIN_ELEMENTWISE, binary_range, &job);
}

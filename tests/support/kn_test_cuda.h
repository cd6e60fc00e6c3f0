/*
 * kn_test_cuda.h — what the CUDA tests (tests/test_cuda*.c) share: skipping with the
 * reason when there is no device, fake CUDA handles for the refusal checks (only where
 * no device exists: their storage is host memory), seeded inputs, and comparing a CUDA
 * result with the CPU's. Header-only because it uses Criterion's assertions.
 */
#ifndef KN_TEST_CUDA_H
#define KN_TEST_CUDA_H

#include "kn_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KN_TEST_UNUSED __attribute__((unused))

static const kn_device kn_test_cuda0 = {KN_DEVICE_CUDA, 0};

/* Skips the calling test, saying why CUDA is unavailable. */
static KN_TEST_UNUSED void kn_test_need_cuda(void)
{
    if (kn_cuda_device_count() > 0) return;
    const char *status = kn_cuda_status();
    if (strncmp(status, "no CUDA device", 14) == 0)
        cr_skip_test("%s", status);
    else
        cr_skip_test("no CUDA device: %s", status);
}

/* A handle that claims cuda:0 over a's CPU storage, to exercise the checks (never read);
 * belongs to the open scope. */
static KN_TEST_UNUSED kn_tensor *kn_test_fake_cuda(kn_tensor *a)
{
    kn_tensor *b = kn_autorelease(kn__view_raw(a, a->shape, a->strides, a->ndim, a->offset));
    b->device = kn_test_cuda0;
    return b;
}

/* Normal(0, 1) values from their own generator (the default one is left alone). */
static KN_TEST_UNUSED kn_tensor *kn_test_randn(const int64_t *shape, int ndim, uint64_t seed)
{
    kn_generator *g = kn_generator_new(seed);
    kn_tensor *t = kn_randn(shape, ndim, g);
    kn_generator_free(g);
    return t;
}

/* A CUDA result against the CPU's: same shape, |cpu - gpu| <= atol + rtol |cpu|, and a
 * NaN on one side only is a mismatch. */
static KN_TEST_UNUSED void kn_test_assert_close_cuda(const char *what, kn_tensor *cpu,
                                                     kn_tensor *gpu, double rtol, double atol)
{
    cr_assert_not_null(cpu, "%s (cpu): %s", what, kn_last_error());
    cr_assert_not_null(gpu, "%s (cuda): %s", what, kn_last_error());
    cr_assert_eq(gpu->device.type, KN_DEVICE_CUDA, "%s: result not on cuda", what);
    cr_assert(kn__same_shape(cpu, gpu), "%s: shapes %s vs %s", what, kn__shape(cpu),
              kn__shape(gpu));
    cr_assert_eq(gpu->dtype, KN_FLOAT32, "%s: result is not float32", what);
    int64_t n = kn_numel(cpu);
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1));
    float *y = malloc(sizeof(float) * (size_t)(n ? n : 1));
    cr_assert_eq(kn_copy_to_floats(cpu, x), KN_OK, "%s: %s", what, kn_last_error());
    cr_assert_eq(kn_copy_to_floats(gpu, y), KN_OK, "%s: %s", what, kn_last_error());
    for (int64_t i = 0; i < n; i++) {
        if (isnan(x[i]) || isnan(y[i])) {
            cr_assert(isnan(x[i]) && isnan(y[i]), "%s: element %lld is %g on the cpu, %g on cuda",
                      what, (long long)i, x[i], y[i]);
            continue;
        }
        double diff = fabs((double)x[i] - (double)y[i]);
        cr_assert(diff <= atol + rtol * fabs((double)x[i]),
                  "%s: element %lld is %.9g on the cpu and %.9g on cuda", what, (long long)i, x[i],
                  y[i]);
    }
    free(x);
    free(y);
}

#endif

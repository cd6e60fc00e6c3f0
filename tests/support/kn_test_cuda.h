/*
 * kn_test_cuda.h — what the CUDA tests (tests/test_cuda*.c) share: skipping with the
 * reason when there is no device, fake CUDA handles for the refusal checks (only where
 * no device exists: their storage is host memory), seeded inputs, and comparing a CUDA
 * result with the CPU's. Header-only because it uses Criterion's assertions.
 *
 * Whether there is a device is decided once per executable: Criterion runs every test in
 * a process of its own (fork and exec), and each would load the CUDA module, the runtime
 * and cuBLAS again (seconds) only to learn there is no device. The runner asks once,
 * before any test starts, in a child of its own (the runner itself must not initialise
 * CUDA: its state does not survive a fork), and passes the answer to every test through
 * the environment as KN_TEST_CUDA_PROBE="<device count> <kn_cuda_status()>".
 * An executable whose every test needs a device defines KN_TEST_CUDA_EVERY_TEST before
 * including this header (tests/golden/golden_case.h does, for test_cuda_golden_*):
 * without a device the runner then skips all its tests itself, the reason as each one's
 * description, and starts no process for them (each costs tens of milliseconds).
 */
#ifndef KN_TEST_CUDA_H
#define KN_TEST_CUDA_H

#include "kn_internal.h"

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <criterion/internal/ordered-set.h> /* FOREACH_SET over the runner's tests */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KN_TEST_UNUSED __attribute__((unused))

static const kn_device kn_test_cuda0 = {KN_DEVICE_CUDA, 0};

#define KN_TEST_CUDA_PROBE "KN_TEST_CUDA_PROBE"

/* Why there is no device, when the runner's probe found none; NULL when it found one or
 * could not tell. */
static KN_TEST_UNUSED const char *kn_test_cuda_probe_none(void)
{
    const char *probe = getenv(KN_TEST_CUDA_PROBE);
    return probe && probe[0] == '0' && probe[1] == ' ' ? probe + 2 : NULL;
}

/* In the runner, before the tests: the probe described at the top. Left unset when it
 * cannot be run, and then each test looks for itself. */
ReportHook(PRE_ALL)(struct criterion_test_set *tests)
{
    (void)tests;                  /* read only under KN_TEST_CUDA_EVERY_TEST */
    unsetenv(KN_TEST_CUDA_PROBE); /* never an answer from elsewhere */
    int fds[2];
    if (pipe(fds) != 0) return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        char line[1200];
        int n = snprintf(line, sizeof line, "%d %s", kn_cuda_device_count(), kn_cuda_status());
        size_t length = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        if (write(fds[1], line, length) < 0) {
            /* nothing to do: the runner then leaves each test to look for itself */
        }
        _exit(0); /* no exit handlers: they belong to the runner */
    }
    close(fds[1]);
    char line[1200];
    size_t got = 0;
    ssize_t n = 0;
    while (pid > 0 && got < sizeof line - 1 &&
           (n = read(fds[0], line + got, sizeof line - 1 - got)) > 0)
        got += (size_t)n;
    close(fds[0]);
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
        WEXITSTATUS(status) == 0 && got > 0) {
        line[got] = '\0';
        setenv(KN_TEST_CUDA_PROBE, line, 1);
    }
#ifdef KN_TEST_CUDA_EVERY_TEST
    const char *none = kn_test_cuda_probe_none();
    if (!none) return;
    static char reason[1300];
    snprintf(reason, sizeof reason, "%s%s",
             strncmp(none, "no CUDA device", 14) ? "no CUDA device: " : "", none);
    FOREACH_SET(struct criterion_suite_set * suite, tests->suites)
    {
        FOREACH_SET(struct criterion_test * test, suite->tests)
        {
            test->data->disabled = true;
            test->data->description = reason;
        }
    }
#endif
}

/* Skips the calling test, saying why CUDA is unavailable: from the runner's probe when
 * it found no device (nothing is loaded), else from this process's own look. */
static KN_TEST_UNUSED void kn_test_need_cuda(void)
{
    const char *status = kn_test_cuda_probe_none();
    if (!status) {
        if (kn_cuda_device_count() > 0) return;
        status = kn_cuda_status();
    }
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

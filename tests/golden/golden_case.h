/*
 * golden_case.h — what tests/test_golden_*.c share: loading a PyTorch fixture written by
 * tests/golden/generate.py, turning its inputs into leaves, and checking an op's output
 * and its gradients against the fixture.
 *
 * A test reads:
 *     GOLDEN_BEGIN("add_same");                 opens a scope, loads the fixture into g
 *     kn_tensor *a = golden_leaf(g, "a");       float inputs require grad
 *     kn_tensor *out = kn_add(a, b);
 *     golden_check(g, out, "out", GOLDEN_TOL);
 *     golden_backward(g, out, GOLDEN_TOL, "a", a, "b", b, NULL);
 *     GOLDEN_END();                             frees g, closes the scope
 *
 * Built with KN_GOLDEN_CUDA (CMake makes test_cuda_golden_* from every test_golden_*.c),
 * the same cases run on the GPU: each input is copied to cuda:0 as it is loaded, so the op
 * and its backward run there; outputs and gradients must be on cuda and are copied back
 * to be compared with PyTorch's (CPU) values. Without a device these tests skip, saying
 * why. Tolerances are the per-op constants below on both devices: CUDA's expf/logf/tanhf
 * are within 2 ulp (far inside 1e-5 relative), its reductions sum in another order
 * (inside the same bounds for these sizes), cuBLAS without TF32 is fp32 like the CPU's
 * BLAS. If a GPU run shows an op needing more, widen it here for CUDA only, with why.
 */
#ifndef GOLDEN_CASE_H
#define GOLDEN_CASE_H

#include "kn_test.h"
#ifdef KN_GOLDEN_CUDA
#define KN_TEST_CUDA_EVERY_TEST /* without a device the runner skips them all at once */
#include "kn_test_cuda.h"
#endif

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>

/* rtol, atol. The default: elementwise maths agrees with PyTorch to a few ulps. */
#define GOLDEN_TOL 1e-5, 1e-6
/* matmul/linear go through BLAS, whose blocking and FMA use depend on the CPU it picks
 * at run time, so the summation order is not PyTorch's: results near zero need more
 * absolute slack. */
#define GOLDEN_BLAS_TOL 1e-5, 1e-5
/* conv2d (im2col + GEMM vs. PyTorch's kernels): longer dot products in other orders. */
#define GOLDEN_CONV_TOL 1e-4, 1e-4
/* Integer results (indices, comparisons) must match exactly. */
#define GOLDEN_EXACT 0.0, 0.0

#ifdef KN_GOLDEN_CUDA
#define GOLDEN_NEED_DEVICE() kn_test_need_cuda()
#else
#define GOLDEN_NEED_DEVICE() ((void)0)
#endif

#define GOLDEN_BEGIN(name)                                                                         \
    GOLDEN_NEED_DEVICE();                                                                          \
    kn_scope_begin();                                                                              \
    kn_golden *g = kn_golden_load(name);                                                           \
    cr_assert_not_null(g, "fixture %s missing: run /usr/bin/python3 tests/golden/generate.py", name)

#define GOLDEN_END()                                                                               \
    do {                                                                                           \
        kn_golden_free(g);                                                                         \
        kn_scope_end();                                                                            \
    } while (0)

/* An input as stored (int64 stays int64, no grad). */
static inline kn_tensor *golden_input(kn_golden *g, const char *entry)
{
    kn_tensor *t = kn_golden_tensor(g, entry);
    cr_assert_not_null(t, "fixture entry '%s': %s", entry, kn_last_error());
#ifdef KN_GOLDEN_CUDA
    t = kn_to(t, kn_test_cuda0);
    cr_assert_not_null(t, "fixture entry '%s' to cuda: %s", entry, kn_last_error());
#endif
    return t;
}

/* What is compared with the fixture: t itself, or on CUDA its copy on the cpu once it is
 * checked to be on cuda (an op that quietly ran elsewhere would otherwise pass). */
static inline const kn_tensor *golden_host(const kn_tensor *t, const char *entry)
{
#ifdef KN_GOLDEN_CUDA
    if (!t) return t;
    cr_assert_eq(t->device.type, KN_DEVICE_CUDA, "%s: not on cuda", entry);
    kn_tensor *host = kn_to(kn_detach((kn_tensor *)t), kn_cpu());
    cr_assert_not_null(host, "%s back to the cpu: %s", entry, kn_last_error());
    return host;
#else
    (void)entry;
    return t;
#endif
}

/* A float input that requires grad (PyTorch's leaf with requires_grad=True). */
static inline kn_tensor *golden_leaf(kn_golden *g, const char *entry)
{
    kn_tensor *t = golden_input(g, entry);
    cr_assert_not_null(kn_set_requires_grad(t, true), "%s: %s", entry, kn_last_error());
    return t;
}

static inline void golden_check(kn_golden *g, const kn_tensor *t, const char *entry, double rtol,
                                double atol)
{
    KN_ASSERT_GOLDEN(g, golden_host(t, entry), entry, rtol, atol);
}

/* Backpropagates the fixture's grad_out from out, then compares each leaf's .grad with
 * the fixture's grad_NAME. Arguments after atol: (const char *name, kn_tensor *leaf)
 * pairs, ended by NULL. */
static inline void golden_backward(kn_golden *g, kn_tensor *out, double rtol, double atol, ...)
{
    cr_assert_not_null(out, "forward failed: %s", kn_last_error());
    cr_assert(out->requires_grad, "output does not require grad");
    kn_tensor *grad_out = golden_input(g, "grad_out");
    kn_status status = kn_backward(out, grad_out, false);
    cr_assert_eq(status, KN_OK, "backward failed: %s", kn_last_error());
    va_list args;
    va_start(args, atol);
    for (const char *name; (name = va_arg(args, const char *));) {
        kn_tensor *leaf = va_arg(args, kn_tensor *);
        char entry[160];
        snprintf(entry, sizeof entry, "grad_%s", name);
        cr_assert(kn_golden_has(g, entry), "fixture has no %s", entry);
        cr_assert_not_null(leaf->grad, "%s has no .grad after backward", name);
        KN_ASSERT_GOLDEN(g, golden_host(leaf->grad, entry), entry, rtol, atol);
    }
    va_end(args);
}

#endif

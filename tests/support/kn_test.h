/*
 * kn_test.h — what the Criterion tests share: comparing a tensor with expected values
 * (llm.c's check_tensor), loading golden fixtures written by tests/golden/generate.py,
 * and finite-difference gradient checks.
 */
#ifndef KN_TEST_H
#define KN_TEST_H

#include "kn.h"

#include <stdbool.h>

/* Compares t (any strides, float32 or int64) with n expected values in row-major order:
 * |got - want| <= atol + rtol * |want| for every element. On mismatch, fills message
 * with the first bad index and values and returns false. NaNs match NaNs. */
bool kn_test_close(const kn_tensor *t, const float *want, int64_t n, double rtol, double atol,
                   char *message, size_t size);

/* Golden fixtures: a file tests/golden/data/NAME.bin holds named tensors. */
typedef struct kn_golden kn_golden;
kn_golden *kn_golden_load(const char *name); /* NULL + message on stderr if missing */
void kn_golden_free(kn_golden *g);
/* A new tensor (caller owns one reference, or the open scope does) copied from the
 * fixture entry, or NULL when absent. Entries keep their dtype and shape. */
kn_tensor *kn_golden_tensor(kn_golden *g, const char *entry);
bool kn_golden_has(kn_golden *g, const char *entry);

/* Criterion assertion: t matches fixture entry within rtol/atol (default 1e-5/1e-6). */
#define KN_ASSERT_GOLDEN(g, t, entry, rtol, atol)                                              \
    do {                                                                                       \
        char kn_msg__[512];                                                                    \
        cr_assert(kn_golden_check((g), (t), (entry), (rtol), (atol), kn_msg__, sizeof kn_msg__), \
                  "%s", kn_msg__);                                                             \
    } while (0)
bool kn_golden_check(kn_golden *g, const kn_tensor *t, const char *entry, double rtol,
                     double atol, char *message, size_t size);

/* A function under gradient check: builds an output from the inputs. */
typedef kn_tensor *(*kn_test_fn)(kn_tensor **inputs, void *context);

/* Finite differences: for every float32 input that requires grad (contiguous leaves),
 * compares d(sum(out * w))/d(input) from kn_backward with central differences (eps),
 * w a fixed pseudo-random weight. Checks up to max_elements elements per input
 * (0 = all). Returns false with a message naming the input, index and both values. */
bool kn_test_gradcheck(kn_test_fn fn, kn_tensor **inputs, int n_inputs, void *context,
                       double eps, double rtol, double atol, int max_elements, char *message,
                       size_t size);

#define KN_ASSERT_GRADCHECK(fn, inputs, n, context)                                            \
    do {                                                                                       \
        char kn_msg__[512];                                                                    \
        cr_assert(kn_test_gradcheck((fn), (inputs), (n), (context), 1e-3, 2e-2, 2e-3, 0,     \
                                    kn_msg__, sizeof kn_msg__),                                \
                  "%s", kn_msg__);                                                             \
    } while (0)

/* Deterministic test data: a float32 tensor of uniform(low, high) values from seed. */
kn_tensor *kn_test_uniform(const int64_t *shape, int ndim, double low, double high,
                           uint64_t seed);

#endif

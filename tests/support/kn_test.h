/*
 * kn_test.h — what the Criterion tests share: comparing a tensor with expected values
 * (llm.c's check_tensor) and shapes, loading golden fixtures written by
 * tests/golden/generate.py, finite-difference gradient checks, and small input makers.
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

/* Criterion assertions over kn_test_close with rtol 1e-5, atol 1e-6: KN_ASSERT_CLOSE
 * takes the expected values as a braced list, KN_ASSERT_VALUES as a float array. */
#define KN_ASSERT_CLOSE(t, ...)                                                                    \
    do {                                                                                           \
        const float want__[] = __VA_ARGS__;                                                        \
        char msg__[256];                                                                           \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert_eq(kn_numel(t), (int64_t)(sizeof want__ / sizeof *want__));                      \
        cr_assert(kn_test_close((t), want__, (int64_t)(sizeof want__ / sizeof *want__), 1e-5,      \
                                1e-6, msg__, sizeof msg__),                                        \
                  "%s", msg__);                                                                    \
    } while (0)
#define KN_ASSERT_VALUES(t, want)                                                                  \
    do {                                                                                           \
        char msg__[256];                                                                           \
        cr_assert(kn_test_close((t), (want), (int64_t)(sizeof(want) / sizeof(float)), 1e-5, 1e-6,  \
                                msg__, sizeof msg__),                                              \
                  "%s", msg__);                                                                    \
    } while (0)

/* Whether t (non-NULL) has exactly this shape; if not, fills message and returns false. */
bool kn_test_shape_is(const kn_tensor *t, const int64_t *shape, int ndim, char *message,
                      size_t size);
/* KN_ASSERT_SHAPE(t, shape, ndim), or KN_ASSERT_SHAPE(t, KN_SHAPE(...)): variadic so that
 * KN_SHAPE's two values count as the last two arguments. */
#define KN_ASSERT_SHAPE(t, ...)                                                                    \
    do {                                                                                           \
        char msg__[256];                                                                           \
        cr_assert(kn_test_shape_is((t), __VA_ARGS__, msg__, sizeof msg__), "%s", msg__);           \
    } while (0)

/* Golden fixtures: a file tests/golden/data/NAME.bin holds named tensors. */
typedef struct kn_golden kn_golden;
kn_golden *kn_golden_load(const char *name); /* NULL + message on stderr if missing */
void kn_golden_free(kn_golden *g);
/* A new tensor (caller owns one reference, or the open scope does) copied from the
 * fixture entry, or NULL when absent. Entries keep their dtype and shape. */
kn_tensor *kn_golden_tensor(kn_golden *g, const char *entry);
bool kn_golden_has(kn_golden *g, const char *entry);

/* Criterion assertion: t matches fixture entry within rtol/atol (default 1e-5/1e-6). */
#define KN_ASSERT_GOLDEN(g, t, entry, rtol, atol)                                                  \
    do {                                                                                           \
        char kn_msg__[512];                                                                        \
        cr_assert(kn_golden_check((g), (t), (entry), (rtol), (atol), kn_msg__, sizeof kn_msg__),   \
                  "%s", kn_msg__);                                                                 \
    } while (0)
bool kn_golden_check(kn_golden *g, const kn_tensor *t, const char *entry, double rtol, double atol,
                     char *message, size_t size);

/* A function under gradient check: builds an output from the inputs. */
typedef kn_tensor *(*kn_test_fn)(kn_tensor **inputs, void *context);

/* Finite differences: for every float32 input that requires grad (contiguous leaves),
 * compares d(sum(out * w))/d(input) from kn_backward with central differences (eps),
 * w a fixed pseudo-random weight. Checks up to max_elements elements per input
 * (0 = all). Returns false with a message naming the input, index and both values. */
bool kn_test_gradcheck(kn_test_fn fn, kn_tensor **inputs, int n_inputs, void *context, double eps,
                       double rtol, double atol, int max_elements, char *message, size_t size);

#define KN_ASSERT_GRADCHECK(fn, inputs, n, context)                                                \
    do {                                                                                           \
        char kn_msg__[512];                                                                        \
        cr_assert(kn_test_gradcheck((fn), (inputs), (n), (context), 1e-3, 2e-2, 2e-3, 0, kn_msg__, \
                                    sizeof kn_msg__),                                              \
                  "%s", kn_msg__);                                                                 \
    } while (0)

/* Deterministic test data: a float32 tensor of uniform(low, high) values from seed. */
kn_tensor *kn_test_uniform(const int64_t *shape, int ndim, double low, double high, uint64_t seed);
/* The inputs the PyTorch scripts for the conv and matmul expectations used:
 * ((i * seed + 3) % 17 - 8) / 8 in row-major order, exact in float. */
kn_tensor *kn_test_seq(const int64_t *shape, int ndim, int seed);
/* The 24 values x[i] = 3 sin(1.3 i) (float32: no ties, both signs) that the PyTorch
 * scripts for the reduce and softmax expectations used, in a shape of 24 elements. */
kn_tensor *kn_test_sin24(const int64_t *shape, int ndim);
/* A 0-d float32 tensor (kn_from_floats with a non-NULL shape pointer and rank 0). */
kn_tensor *kn_test_scalar(float value);
/* A view of t with dims d0 and d1 swapped, made with kn__view_raw rather than the view
 * ops so that the op under test is the only one involved; handed to the open scope. */
kn_tensor *kn_test_transposed(kn_tensor *t, int d0, int d1);
/* Writes an .npy file as numpy does (version 1, header padded to 64 bytes): data in shape,
 * descr "<f4", "<f8", "<i8", "<i4", "<i2", "<u2", "|u1", "|i1" (the digit is the element's
 * bytes; little-endian, C order). false when it cannot be written. */
bool kn_test_write_npy(const char *path, const char *descr, const int64_t *shape, int ndim,
                       const void *data);
/* A new empty directory /tmp/<prefix>-XXXXXX (mkdtemp) written into out (size >= 32 +
 * strlen(prefix)); false when it cannot be made. Remove it with kn_test_remove_dir. */
bool kn_test_temp_dir(const char *prefix, char *out, size_t size);
/* Removes dir and everything under it without following links; nothing for "". */
void kn_test_remove_dir(const char *dir);
/* Runs a shell command (popen); its output (stdout, and stderr when the command says
 * 2>&1) into out, NUL-terminated, cut at size - 1 bytes. Returns the exit status, -1 when
 * it did not exit or could not start. */
int kn_test_run(const char *command, char *out, size_t size);

#endif

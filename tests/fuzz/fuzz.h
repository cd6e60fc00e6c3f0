/*
 * fuzz.h — what the fuzz targets in tests/fuzz share: the libFuzzer entry point each
 * defines, FUZZ_CHECK for invariants, and the checks several parsers' results need (an
 * error carries a message, a tensor's storage holds its shape, a model spec agrees with
 * the model built from it).
 *
 * A failed check prints what was wrong and aborts: libFuzzer and the replay driver
 * (replay_main.c) both report that as a crash together with the input. Only the
 * harness aborts; the library under test must answer every input with a value.
 */
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include "kapi.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

_Noreturn void fuzz_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, __VA_ARGS__);                                   \
    } while (0)

/* After a failed call: kn_last_error() must say why (what names the call). */
void fuzz_check_kn_error(const char *what);
/* After a failed kapi parse: at least one error, every one with a message, and the
 * renderings the CLI and kilnd send: text, and JSON that parses back. When the input
 * was valid UTF-8 (input_utf8), so must the JSON be: clients decode it as UTF-8. */
void fuzz_check_kapi_errors(const kapi_errors *errors, const char *what, bool input_utf8);
/* Whether bytes are well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
bool fuzz_utf8_valid(const uint8_t *bytes, size_t size);
/* A parsed tensor: on the CPU, contiguous, of dtype, its storage holding numel values. */
void fuzz_check_tensor(const kn_tensor *t, kn_dtype dtype);

/* kn_dataset_new on parsed tensors, as a job does with its data: either a dataset of
 * inputs->shape[0] samples whose num_classes exceeds every label, or an error. Either
 * tensor may be NULL: zeros of the fitting shape stand in for it. */
void fuzz_check_dataset(kn_tensor *inputs, kn_tensor *labels);

/* The bytes as kilnd reads an upload back (kapi_read_file): gunzipped when they start
 * with gzip's magic. Returns what to parse and sets *owned to the buffer to free (NULL
 * when that is data itself); NULL when the gzip data was refused (its error checked). */
const uint8_t *fuzz_gunzip_if_gzip(const uint8_t *data, size_t size, size_t *out_size,
                                   void **owned);

/* An array upload (IDX, NPY) as kilnd checks it: gunzipped when gzip, then parse()d as
 * inputs (float32) and as labels (int64, 1-D); a parsed tensor must pass
 * fuzz_check_tensor and fuzz_check_dataset, and check(t, data, size, as_labels) (the
 * format's own invariants; may be NULL); a refusal must say why. */
typedef kn_tensor *(*fuzz_array_parser)(const void *bytes, size_t size, bool as_labels);
typedef void (*fuzz_array_check)(const kn_tensor *t, const uint8_t *data, size_t size,
                                 bool as_labels);
void fuzz_array_upload(const uint8_t *data, size_t size, fuzz_array_parser parse,
                       fuzz_array_check check, const char *what);

/* A model spec that parsed: shapes chain from layer to layer, the parameter count adds
 * up, the summary is valid JSON; when the model is small, it builds, counts the same
 * parameters and a forward pass gives [2, output_shape...]. */
void fuzz_check_model_spec(const kapi_model_spec *spec);

/* The model the weights and checkpoint targets load into (make_corpus.py trains the
 * same one for their seeds): conv2d, batch_norm2d, relu, flatten, linear on [1, 4, 4]. */
#define FUZZ_SMALL_MODEL                                                                           \
    "{\"input_shape\": [1, 4, 4], \"layers\": [{\"type\": \"conv2d\", \"out_channels\": 2, "       \
    "\"kernel_size\": 3}, {\"type\": \"batch_norm2d\"}, {\"type\": \"relu\"}, {\"type\": "         \
    "\"flatten\"}, {\"type\": \"linear\", \"out_features\": 3}]}"
kn_module *fuzz_small_model(void);

/* A path that reads back as data (a memfd under /proc/self/fd), for loaders that take a
 * path; valid until the next call. */
const char *fuzz_as_file(const uint8_t *data, size_t size);

/* A copy of a module's state dict, to check that a refused load changed nothing. */
typedef struct fuzz_state fuzz_state;
fuzz_state *fuzz_state_save(const kn_module *model);
/* Whether model still has the saved shapes, dtypes and values (bit for bit). */
bool fuzz_state_same(const fuzz_state *saved, const kn_module *model);
/* Whether only the values may have changed: same names, shapes and dtypes. */
bool fuzz_state_same_shapes(const fuzz_state *saved, const kn_module *model);
void fuzz_state_free(fuzz_state *saved);

#endif

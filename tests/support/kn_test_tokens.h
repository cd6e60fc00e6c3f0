/*
 * kn_test_tokens.h — token data for the tests of issue 12's sequence models
 * (tests/test_sequence_data.c, tests/test_server_sequence.c): NumPy .npy files written as
 * np.save writes them (version 1, C order, little-endian: token matrices '<i8' '<i4',
 * labels per sample or per position), the two toy tasks both tests train on, and the
 * models for them parsed from JSON. Header-only: it uses Criterion's assertions.
 */
#ifndef KN_TEST_TOKENS_H
#define KN_TEST_TOKENS_H

#include "kapi.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes path with dtype descr ('<i8') and shape; bytes of data follow the header. */
static __attribute__((unused)) void kn_test_write_npy_file(const char *path, const char *descr,
                                                           const int64_t *shape, int ndim,
                                                           const void *data, size_t bytes)
{
    char dims[160] = "";
    for (int i = 0; i < ndim; i++)
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%lld,", (long long)shape[i]);
    char header[256];
    int n = snprintf(header, sizeof header,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int pad = (64 - (10 + n + 1) % 64) % 64; /* the data starts 64-byte aligned */
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    uint16_t length = (uint16_t)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&length, 2, 1, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    if (bytes) fwrite(data, 1, bytes, f);
    cr_assert_eq(fclose(f), 0, "%s", path);
}

/* ---- the two tasks: VOCAB tokens, sequences of SEQ ------------------------------------- */

#define KN_TEST_VOCAB 12
#define KN_TEST_SEQ 8

static __attribute__((unused)) uint64_t kn_test_lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* n sequences of KN_TEST_SEQ tokens in [0, KN_TEST_VOCAB) drawn from seed and, when the
 * arrays are given, per sequence whether token 7 occurs (a sequence classification), or
 * per position (3 token + t) % KN_TEST_VOCAB with position 0 ignored (-100): every
 * position scored, as a language model's output, and the position matters. */
static __attribute__((unused)) void kn_test_make_tokens(int64_t n, uint64_t seed, int64_t *tokens,
                                                        int64_t *has_seven, int64_t *per_position)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t seven = 0;
        for (int t = 0; t < KN_TEST_SEQ; t++) {
            int64_t token = (int64_t)(kn_test_lcg(&seed) % KN_TEST_VOCAB);
            tokens[i * KN_TEST_SEQ + t] = token;
            seven |= token == 7;
            if (per_position)
                per_position[i * KN_TEST_SEQ + t] = t == 0 ? -100 : (3 * token + t) % KN_TEST_VOCAB;
        }
        if (has_seven) has_seven[i] = seven;
    }
}

/* A classifier of the first task ([8] tokens -> [2]) and a tagger of the second ([8]
 * tokens -> [8, 12]: an embedding, a positional embedding, an MLP per position). */
#define KN_TEST_CLASSIFIER                                                                         \
    "{\"name\": \"seven\", \"input_shape\": [8], \"layers\": ["                                    \
    "{\"type\": \"embedding\", \"num_embeddings\": 12, \"embedding_dim\": 8},"                     \
    "{\"type\": \"flatten\"}, {\"type\": \"linear\", \"out_features\": 2}]}"
#define KN_TEST_TAGGER                                                                             \
    "{\"name\": \"tagger\", \"input_shape\": [8], \"layers\": ["                                   \
    "{\"type\": \"embedding\", \"num_embeddings\": 12, \"embedding_dim\": 16},"                    \
    "{\"type\": \"positional_embedding\", \"num_embeddings\": 8},"                                 \
    "{\"type\": \"linear\", \"in_features\": 16, \"out_features\": 64}, {\"type\": \"elu\"},"      \
    "{\"type\": \"dropout\", \"p\": 0.05},"                                                        \
    "{\"type\": \"linear\", \"in_features\": 64, \"out_features\": 12}]}"

/* A model spec that must parse (the errors are the failure message). */
static __attribute__((unused)) kapi_model_spec *kn_test_parse_model(const char *json)
{
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(json, strlen(json), &errors);
    char *text = kapi_errors_to_text(&errors);
    cr_assert_not_null(spec, "%s", text);
    free(text);
    kapi_errors_free(&errors);
    return spec;
}

#endif

/*
 * kn_test_tokens.h — token data for the tests of issue 12's sequence models
 * (tests/test_sequence_data.c, tests/test_server_sequence.c): the two toy tasks both tests
 * train on (token matrices, labels per sample or per position; the tests write them as
 * NumPy files with kn_test_write_npy) and the models for them parsed from JSON.
 * Header-only: it uses Criterion's assertions.
 */
#ifndef KN_TEST_TOKENS_H
#define KN_TEST_TOKENS_H

#include "kapi.h"
#include "kn_test.h"      /* kn_test_write_npy writes the token files */
#include "kn_test_spec.h" /* kn_test_parse_model for the models below */

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The tagger as a graph spec: named int64 input "tokens", nodes wte, wpe, a causal
 * pre-norm transformer_encoder_layer h0 (issue 12's graph specs and attention), ln_f and
 * the head. */
#define KN_TEST_GRAPH_TAGGER                                                                       \
    "{\"name\": \"graph-tagger\", \"inputs\": [{\"name\": \"tokens\", \"shape\": [8], "            \
    "\"dtype\": \"int64\"}], \"nodes\": ["                                                         \
    "{\"name\": \"wte\", \"type\": \"embedding\", \"num_embeddings\": 12, \"embedding_dim\": 16}," \
    "{\"name\": \"wpe\", \"type\": \"positional_embedding\", \"num_embeddings\": 8},"              \
    "{\"name\": \"h0\", \"type\": \"transformer_encoder_layer\", \"nhead\": 2, "                   \
    "\"dim_feedforward\": 64, \"dropout\": 0.0, \"activation\": \"gelu\", \"norm_first\": true, "  \
    "\"is_causal\": true},"                                                                        \
    "{\"name\": \"ln_f\", \"type\": \"layer_norm\"},"                                              \
    "{\"name\": \"head\", \"type\": \"linear\", \"out_features\": 12}], \"outputs\": [\"head\"]}"

#endif

/*
 * test_generate.c — kn_generate (core/nn/generate.c): the same seed gives the same
 * tokens, the key/value cache gives the tokens of the full forward (inside the window
 * and past it, sampled and greedy), within the window greedy decoding is nanoGPT's loop
 * of full forwards, a long prompt keeps its last block_size tokens, top_k and the
 * temperature shape the draws as softmax(logits / T) over the top k, a model without
 * attention generates without a cache, a callback sees every token and can stop, and
 * bad options are errors. Graph specs (issue 12) generate too: a nanoGPT-shaped graph
 * (wte, wpe, transformer_encoder_layer nodes, ln_f, lm_head tied to wte) and
 * tests/specs/valid/model-graph-gpt.json, whose key-padding input gets zeros.
 */
#include "kapi.h"
#include "kn_nn.h"
#include "kn_test_spec.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())

static kn_module *tiny_gpt(int64_t vocab, int64_t block)
{
    kn_module *m = kn_sequential_new();
    kn_generator *g = kn_generator_new(3);
    ASSERT_OK(kn_sequential_append(m, kn_embedding_new(vocab, 16, g)));
    ASSERT_OK(kn_sequential_append(m, kn_positional_embedding_new(block, 16, g)));
    for (int i = 0; i < 2; i++) {
        kn_transformer_encoder_layer_options o = {.d_model = 16,
                                                  .nhead = 4,
                                                  .dim_feedforward = 64,
                                                  .activation = KN_TRANSFORMER_GELU,
                                                  .layer_norm_eps = 1e-5,
                                                  .batch_first = true,
                                                  .norm_first = true,
                                                  .is_causal = true};
        ASSERT_OK(kn_sequential_append(m, kn_transformer_encoder_layer_new(&o, g)));
    }
    ASSERT_OK(kn_sequential_append(m, kn_linear_new(16, vocab, false, g)));
    kn_generator_free(g);
    kn_module_train(m, false);
    return m;
}

static kn_generate_options sampling(int64_t n, double temperature, int64_t top_k, uint64_t seed,
                                    int64_t block)
{
    return (kn_generate_options){.max_new_tokens = n,
                                 .do_sample = true,
                                 .temperature = temperature,
                                 .top_k = top_k,
                                 .seed = seed,
                                 .block_size = block};
}

static void generate(kn_module *m, const int64_t *prompt, int64_t n_prompt, kn_generate_options o,
                     int64_t *out)
{
    int64_t count = -1;
    ASSERT_OK(kn_generate(m, prompt, n_prompt, &o, NULL, out, &count));
    cr_assert_eq(count, o.max_new_tokens);
}

static const int64_t PROMPT[] = {1, 4, 2, 7, 3};

Test(generate, the_same_seed_gives_the_same_tokens)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    int64_t a[30], b[30], c[30];
    generate(m, PROMPT, 5, sampling(30, 1.0, 0, 42, 12), a);
    generate(m, PROMPT, 5, sampling(30, 1.0, 0, 42, 12), b);
    generate(m, PROMPT, 5, sampling(30, 1.0, 0, 43, 12), c);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    cr_assert_neq(memcmp(a, c, sizeof a), 0, "another seed, other tokens");
    for (int i = 0; i < 30; i++) cr_assert(a[i] >= 0 && a[i] < 11);
    kn_module_free(m);
    kn_scope_end();
}

/* 40 tokens from a window of 12: the cache is refilled past the window several times,
 * and gives what recomputing the same context whole gives. */
static void expect_cache_is_full_forward(kn_module *m)
{
    for (int sample = 0; sample < 2; sample++) {
        kn_generate_options o = sampling(40, 0.8, 5, 7, 12);
        o.do_sample = sample;
        int64_t cached[40], full[40];
        generate(m, PROMPT, 5, o, cached);
        o.no_cache = true;
        generate(m, PROMPT, 5, o, full);
        cr_assert_eq(memcmp(cached, full, sizeof cached), 0, "do_sample %d", sample);
    }
}

Test(generate, the_cache_gives_the_full_forwards_tokens)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    expect_cache_is_full_forward(m);
    kn_module_free(m);
    kn_scope_end();
}

/* Greedy decoding of n tokens after prompt by full forwards of every token so far
 * (nanoGPT's loop; the window is never passed); a graph's inputs after the first get zeros
 * (no padding). */
static void full_forward_greedy(kn_module *m, const int64_t *prompt, int64_t n_prompt, int64_t n,
                                int64_t vocab, int64_t *out)
{
    int64_t seq[64];
    memcpy(seq, prompt, sizeof(int64_t) * (size_t)n_prompt);
    int inputs = kn_graph_input_count(m) > 0 ? kn_graph_input_count(m) : 1;
    for (int64_t len = n_prompt; len < n_prompt + n; len++) {
        kn_scope_begin();
        kn_tensor *x[KN_GRAPH_MAX_INPUTS] = {kn_from_int64s(seq, (int64_t[]){1, len}, 2)};
        for (int i = 1; i < inputs; i++) x[i] = kn_zeros((int64_t[]){1, len}, 2, KN_INT64);
        kn_no_grad_begin();
        kn_tensor *y = kn_module_forward_n(m, x, inputs);
        kn_no_grad_end();
        cr_assert_not_null(y, "%s", kn_last_error());
        float logits[64];
        ASSERT_OK(kn_copy_to_floats(kn_narrow(y, 1, len - 1, 1), logits));
        int64_t best = 0;
        for (int64_t v = 1; v < vocab; v++)
            if (logits[v] > logits[best]) best = v;
        seq[len] = out[len - n_prompt] = best;
        kn_scope_end();
    }
}

/* Within the window, greedy decoding is nanoGPT's: argmax of a full forward of every
 * token so far. */
static void expect_greedy_is_nanogpts_loop(kn_module *m)
{
    kn_generate_options o = sampling(7, 1.0, 0, 0, 12);
    o.do_sample = false;
    int64_t got[7], want[7];
    generate(m, PROMPT, 5, o, got);
    full_forward_greedy(m, PROMPT, 5, 7, 11, want);
    cr_assert_eq(memcmp(got, want, sizeof got), 0);
}

Test(generate, greedy_within_the_window_is_nanogpts_loop)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    expect_greedy_is_nanogpts_loop(m);
    kn_module_free(m);
    kn_scope_end();
}

Test(generate, a_long_prompt_keeps_its_last_block_size_tokens)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    int64_t long_prompt[30];
    for (int i = 0; i < 30; i++) long_prompt[i] = (i * 5) % 11;
    int64_t a[10], b[10];
    generate(m, long_prompt, 30, sampling(10, 1.0, 0, 9, 12), a);
    generate(m, long_prompt + 18, 12, sampling(10, 1.0, 0, 9, 12), b);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    kn_module_free(m);
    kn_scope_end();
}

/* A bigram table as the model: token t's logits are row t of an embedding. Draws follow
 * softmax(logits / temperature) over the top_k tokens. */
Test(generate, top_k_and_temperature_shape_the_draws)
{
    kn_scope_begin();
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, kn_embedding_new(4, 4, NULL)));
    kn_module_train(m, false);
    int count = 0;
    kn_named_tensor *p = kn_module_parameters(m, &count);
    float table[16] = {1.0f, 0.5f, 0.0f, -1.0f}; /* row 0; the others alike */
    for (int r = 1; r < 4; r++) memcpy(table + 4 * r, table, 4 * sizeof(float));
    kn_no_grad_begin();
    ASSERT_OK(kn_copy_(p[0].tensor, kn_from_floats(table, KN_SHAPE(4, 4))));
    kn_no_grad_end();
    free(p);
    enum { N = 4000 };
    static int64_t out[N];
    int64_t prompt[1] = {0};
    for (int k = 0; k < 2; k++) {
        kn_generate_options o = sampling(N, 2.0, k ? 2 : 0, 5, 8);
        generate(m, prompt, 1, o, out); /* no attention: recomputed, no cache */
        int seen[4] = {0};
        for (int i = 0; i < N; i++) seen[out[i]]++;
        double w[4], total = 0;
        for (int v = 0; v < 4; v++) total += w[v] = (k && v >= 2) ? 0 : exp(table[v] / 2.0);
        for (int v = 0; v < 4; v++) {
            double want = w[v] / total, got = (double)seen[v] / N;
            cr_assert(fabs(got - want) < 0.03, "top_k %d token %d: %.3f drawn, %.3f expected",
                      k ? 2 : 0, v, got, want);
        }
    }
    kn_module_free(m);
    kn_scope_end();
}

static kn_status stop_after_three(void *context, int64_t token, int64_t index)
{
    int64_t *seen = context;
    seen[index] = token;
    return index == 2 ? KN_ERR_VALUE : KN_OK;
}

Test(generate, callbacks_see_every_token_and_can_stop)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    int64_t seen[10] = {0}, out[10], count = 0;
    kn_generate_callbacks cb = {.context = seen, .on_token = stop_after_three};
    kn_generate_options o = sampling(10, 1.0, 0, 1, 12);
    cr_assert_eq(kn_generate(m, PROMPT, 5, &o, &cb, out, &count), KN_ERR_VALUE);
    cr_assert_eq(count, 3);
    cr_assert_eq(memcmp(seen, out, 3 * sizeof(int64_t)), 0);
    kn_module_free(m);
    kn_scope_end();
}

Test(generate, bad_options_and_inputs_are_errors)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(11, 12);
    int64_t out[4], count = 9;
    kn_generate_options o = sampling(4, 0.0, 0, 1, 12);
    cr_assert_eq(kn_generate(m, PROMPT, 5, &o, NULL, out, &count), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "when sampling, a finite temperature > 0 (got 0)"), "%s",
              kn_last_error());
    cr_assert_eq(count, 0);
    o = sampling(-1, 1.0, 0, 1, 12);
    cr_assert_eq(kn_generate(m, PROMPT, 5, &o, NULL, out, &count), KN_ERR_VALUE);
    o = sampling(4, 1.0, 0, 1, 12);
    cr_assert_eq(kn_generate(m, PROMPT, 0, &o, NULL, out, &count), KN_ERR_VALUE);
    cr_assert_str_eq(kn_last_error(), "generate: the prompt has no tokens");
    int64_t bad[2] = {1, 11}; /* outside the embedding */
    cr_assert_neq(kn_generate(m, bad, 2, &o, NULL, out, &count), KN_OK);
    cr_assert_eq(count, 0);
    /* a model whose output is not [1, T, V] */
    kn_module *mlp = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(mlp, kn_embedding_new(11, 4, NULL)));
    ASSERT_OK(kn_sequential_append(mlp, kn_flatten_new(1, -1)));
    cr_assert_neq(kn_generate(mlp, PROMPT, 5, &o, NULL, out, &count), KN_OK);
    cr_assert(strstr(kn_last_error(), "expected the model's output as logits [1, 5, vocabulary]"),
              "%s", kn_last_error());
    o.max_new_tokens = 0;
    ASSERT_OK(kn_generate(m, PROMPT, 5, &o, NULL, NULL, &count));
    cr_assert_eq(count, 0);
    kn_module_free(mlp);
    kn_module_free(m);
    kn_scope_end();
}

/* ---- graph specs ------------------------------------------------------------------------ */

/* nanoGPT's shape as a graph spec: token and position tables, two causal pre-norm blocks,
 * the final norm and a head tied to the token table (one input: what a job trains). */
static const char GRAPH_GPT[] =
    "{\"name\": \"graph-gpt\", \"inputs\": [{\"name\": \"idx\", \"shape\": [12], \"dtype\": "
    "\"int64\"}], \"nodes\": ["
    "{\"name\": \"wte\", \"type\": \"embedding\", \"num_embeddings\": 11, \"embedding_dim\": 16},"
    "{\"name\": \"wpe\", \"type\": \"positional_embedding\", \"num_embeddings\": 12},"
    "{\"name\": \"h.0\", \"type\": \"transformer_encoder_layer\", \"nhead\": 4, "
    "\"dim_feedforward\": 64, \"dropout\": 0.0, \"activation\": \"gelu\", \"norm_first\": true, "
    "\"is_causal\": true},"
    "{\"name\": \"h.1\", \"type\": \"transformer_encoder_layer\", \"nhead\": 4, "
    "\"dim_feedforward\": 64, \"dropout\": 0.0, \"activation\": \"gelu\", \"norm_first\": true, "
    "\"is_causal\": true},"
    "{\"name\": \"ln_f\", \"type\": \"layer_norm\"},"
    "{\"name\": \"lm_head\", \"type\": \"linear\", \"out_features\": 11, \"bias\": false, "
    "\"tie\": {\"weight\": \"wte.weight\"}}], \"outputs\": [\"lm_head\"]}";

static kn_module *graph_model(const char *json)
{
    kapi_model_spec *spec = kn_test_parse_model(json);
    kn_generator *g = kn_generator_new(5);
    kn_module *m = kapi_model_build(spec, g);
    kn_generator_free(g);
    kapi_model_spec_free(spec);
    cr_assert_not_null(m, "%s", kn_last_error());
    kn_module_train(m, false);
    return m;
}

Test(generate, a_graph_gpt_generates_with_its_cache)
{
    kn_scope_begin();
    kn_module *m = graph_model(GRAPH_GPT);
    expect_cache_is_full_forward(m); /* past the window (12) several times */
    expect_greedy_is_nanogpts_loop(m);
    kn_module_free(m);
    kn_scope_end();
}

/* tests/specs/valid/model-graph-gpt.json takes a key-padding mask beside the tokens (and
 * has no position table): generation gives it zeros, with or without the cache. */
Test(generate, a_graph_with_a_padding_input_generates)
{
    kn_scope_begin();
    kapi_errors errors = {0};
    size_t size = 0;
    char *bytes =
        kapi_read_file(KILN_SOURCE_DIR "/tests/specs/valid/model-graph-gpt.json", &size, &errors);
    cr_assert_not_null(bytes);
    char *json = strndup(bytes, size); /* the file's bytes, NUL-terminated */
    free(bytes);
    kn_module *m = graph_model(json);
    free(json);
    cr_assert_eq(kn_graph_input_count(m), 2);
    kn_generate_options o = sampling(6, 1.0, 0, 0, 8);
    o.do_sample = false;
    int64_t cached[6], full[6], want[6];
    generate(m, PROMPT, 2, o, cached);
    o.no_cache = true;
    generate(m, PROMPT, 2, o, full);
    full_forward_greedy(m, PROMPT, 2, 6, 20, want);
    cr_assert_eq(memcmp(cached, want, sizeof want), 0);
    cr_assert_eq(memcmp(full, want, sizeof want), 0);
    kn_module_free(m);
    /* a graph whose second input is float is no language model */
    m = graph_model(
        "{\"inputs\": [{\"name\": \"idx\", \"shape\": [4], \"dtype\": \"int64\"}, {\"name\": "
        "\"f\", \"shape\": [4, 8]}], \"nodes\": [{\"name\": \"wte\", \"type\": \"embedding\", "
        "\"input\": \"idx\", \"num_embeddings\": 11, \"embedding_dim\": 8}, {\"name\": \"sum\", "
        "\"type\": \"add\", \"inputs\": [\"wte\", \"f\"]}, {\"name\": \"head\", \"type\": "
        "\"linear\", \"out_features\": 11}], \"outputs\": [\"head\"]}");
    o = sampling(3, 1.0, 0, 0, 4);
    int64_t out[3], count = 0;
    cr_assert_eq(kn_generate(m, PROMPT, 2, &o, NULL, out, &count), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "generate: the graph's input 1 is float32"), "%s",
              kn_last_error());
    kn_module_free(m);
    kn_scope_end();
}

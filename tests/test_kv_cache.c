/*
 * test_kv_cache.c — incremental decoding (kn_kv_cache, kn_module_forward_incremental):
 * a prompt prefilled and then one position at a time gives the full forward's outputs
 * at those positions (within 1e-5) for causal transformers of either norm order, a
 * non-causal model's last position too, key padding carried in the cache, two caches on
 * one model at once, and the limits: max_len, a batch change, a reset, a module used
 * twice, a model with no attention.
 */
#include "kn_nn.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())

/* |a - b| <= 1e-5 (absolute and relative to |b|) everywhere. */
static void assert_near(kn_tensor *a, kn_tensor *b, const char *what)
{
    cr_assert_not_null(a, "%s: %s", what, kn_last_error());
    cr_assert_eq(kn_numel(a), kn_numel(b), "%s", what);
    int64_t n = kn_numel(b);
    float *want = malloc(sizeof(float) * (size_t)n);
    kn_copy_to_floats(b, want);
    char msg[256];
    bool ok = kn_test_close(a, want, n, 1e-5, 1e-5, msg, sizeof msg);
    free(want);
    cr_assert(ok, "%s: %s", what, msg);
}

/* A character-level GPT in small: embedding, causal transformer layers, a head. */
static kn_module *tiny_gpt(int layers, bool norm_first, bool causal, int64_t vocab)
{
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, kn_embedding_new(vocab, 16, NULL)));
    for (int i = 0; i < layers; i++) {
        kn_transformer_encoder_layer_options o = {.d_model = 16,
                                                  .nhead = 4,
                                                  .dim_feedforward = 32,
                                                  .dropout = 0.1,
                                                  .activation = KN_TRANSFORMER_GELU,
                                                  .layer_norm_eps = 1e-5,
                                                  .batch_first = true,
                                                  .norm_first = norm_first,
                                                  .is_causal = causal};
        ASSERT_OK(kn_sequential_append(m, kn_transformer_encoder_layer_new(&o, NULL)));
    }
    ASSERT_OK(kn_sequential_append(m, kn_linear_new(16, vocab, false, NULL)));
    kn_module_train(m, false);
    return m;
}

static kn_tensor *tokens(int64_t batch, int64_t t, int64_t vocab, int seed)
{
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(batch * t));
    for (int64_t i = 0; i < batch * t; i++) ids[i] = (i * 7 + seed * 13 + i / 3) % vocab;
    kn_tensor *x = kn_from_int64s(ids, (int64_t[]){batch, t}, 2);
    free(ids);
    return x;
}

/* Prefill prefix positions, then feed the rest one at a time: each output equals the
 * full forward's at its positions. */
static void check_incremental(kn_module *m, kn_tensor *x, int64_t prefix)
{
    int64_t t = x->shape[1];
    kn_tensor *full = kn_module_forward(m, x);
    cr_assert_not_null(full, "%s", kn_last_error());
    kn_kv_cache *cache = kn_kv_cache_new(m, t);
    cr_assert_not_null(cache, "%s", kn_last_error());
    kn_tensor *y = kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 0, prefix));
    assert_near(y, kn_narrow(full, 1, 0, prefix), "the prefill");
    cr_assert_eq(kn_kv_cache_length(cache), prefix);
    for (int64_t i = prefix; i < t; i++) {
        kn_scope_begin();
        kn_tensor *step = kn_module_forward_incremental(m, cache, kn_narrow(x, 1, i, 1));
        char what[64];
        snprintf(what, sizeof what, "position %lld", (long long)i);
        assert_near(step, kn_narrow(full, 1, i, 1), what);
        cr_assert(!step->requires_grad, "an incremental forward records no graph");
        kn_scope_end();
    }
    cr_assert_eq(kn_kv_cache_length(cache), t);
    kn_kv_cache_free(cache);
}

Test(kv_cache, prefill_then_steps_equal_the_full_forward)
{
    kn_scope_begin();
    for (int norm_first = 0; norm_first < 2; norm_first++) {
        kn_module *m = tiny_gpt(2, norm_first, true, 11);
        check_incremental(m, tokens(2, 70, 11, norm_first), 5); /* past one key block of 64 */
        kn_module_free(m);
    }
    kn_scope_end();
}

/* Without the causal mask only the last position is the full forward's (the earlier
 * ones saw the future there). */
Test(kv_cache, a_non_causal_model_agrees_at_the_last_position)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(1, false, false, 9);
    kn_tensor *x = tokens(1, 12, 9, 4);
    kn_tensor *full = kn_module_forward(m, x);
    kn_kv_cache *cache = kn_kv_cache_new(m, 12);
    cr_assert_not_null(kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 0, 11)));
    kn_tensor *last = kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 11, 1));
    assert_near(last, kn_narrow(full, 1, 11, 1), "the last position");
    kn_kv_cache_free(cache);
    kn_module_free(m);
    kn_scope_end();
}

/* A MultiheadAttention on its own, with a key-padding mask given with each step's
 * positions: the cache keeps the mask of the positions it holds. */
Test(kv_cache, key_padding_is_cached_with_the_keys)
{
    kn_scope_begin();
    kn_module *m = kn_multi_head_attention_new(8, 2, 0.0, true, true, NULL);
    kn_tensor *x = kn_test_uniform(KN_SHAPE(2, 6, 8), -1, 1, 3);
    kn_tensor *pad =
        kn_from_int64s((int64_t[]){0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0}, KN_SHAPE(2, 6));
    kn_tensor *in[2] = {x, pad};
    kn_tensor *full = kn_module_forward_n(m, in, 2);
    kn_kv_cache *cache = kn_kv_cache_new(m, 8);
    for (int64_t i = 0; i < 6; i += 2) {
        kn_tensor *step[2] = {kn_narrow(x, 1, i, 2), kn_narrow(pad, 1, i, 2)};
        assert_near(kn_module_forward_incremental_n(m, cache, step, 2), kn_narrow(full, 1, i, 2),
                    "positions with padding");
    }
    /* after a reset, a sequence without masks must not see the old one's */
    kn_kv_cache_reset(cache);
    kn_tensor *plain = kn_module_forward(m, x);
    assert_near(kn_module_forward_incremental(m, cache, x), plain, "no mask after a reset");
    kn_kv_cache_free(cache);
    kn_module_free(m);
    kn_scope_end();
}

/* Two generations on one model at once, interleaved: each cache is its own. */
Test(kv_cache, two_caches_on_one_model)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(1, true, true, 13);
    kn_tensor *a = tokens(1, 9, 13, 1), *b = tokens(3, 9, 13, 2);
    kn_tensor *full_a = kn_module_forward(m, a), *full_b = kn_module_forward(m, b);
    kn_kv_cache *ca = kn_kv_cache_new(m, 9), *cb = kn_kv_cache_new(m, 9);
    for (int64_t i = 0; i < 9; i++) {
        assert_near(kn_module_forward_incremental(m, ca, kn_narrow(a, 1, i, 1)),
                    kn_narrow(full_a, 1, i, 1), "cache a");
        assert_near(kn_module_forward_incremental(m, cb, kn_narrow(b, 1, i, 1)),
                    kn_narrow(full_b, 1, i, 1), "cache b");
    }
    kn_kv_cache_free(ca);
    kn_kv_cache_free(cb);
    kn_module_free(m);
    kn_scope_end();
}

Test(kv_cache, limits_are_errors_that_change_nothing)
{
    kn_scope_begin();
    kn_module *m = tiny_gpt(1, false, true, 7);
    kn_tensor *x = tokens(2, 8, 7, 3);
    kn_tensor *full = kn_module_forward(m, x);
    kn_kv_cache *cache = kn_kv_cache_new(m, 8);
    cr_assert_eq(kn_kv_cache_max_len(cache), 8);
    cr_assert_not_null(kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 0, 6)));
    /* more positions than max_len in all */
    cr_assert_null(kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 0, 3)));
    cr_assert_str_eq(kn_last_error(),
                     "forward_incremental: 6 cached positions and 3 new ones exceed the cache's "
                     "max_len of 8 (kn_kv_cache_reset starts a new sequence)");
    /* another batch size */
    cr_assert_null(kn_module_forward_incremental(m, cache, tokens(1, 1, 7, 0)));
    cr_assert_str_eq(kn_last_error(), "forward_incremental: the cached positions have a batch of "
                                      "2, the input 1");
    /* no positions */
    cr_assert_null(kn_module_forward_incremental(m, cache, kn_zeros(KN_SHAPE(2), KN_INT64)));
    cr_assert(strstr(kn_last_error(), "expected the input as [N, T_new, ...]"), "%s",
              kn_last_error());
    /* a bad token fails inside the model: nothing is appended */
    kn_tensor *bad = kn_from_int64s((int64_t[]){1, 99}, KN_SHAPE(2, 1));
    cr_assert_null(kn_module_forward_incremental(m, cache, bad));
    cr_assert_eq(kn_kv_cache_length(cache), 6);
    /* and the sequence goes on as if nothing happened */
    assert_near(kn_module_forward_incremental(m, cache, kn_narrow(x, 1, 6, 2)),
                kn_narrow(full, 1, 6, 2), "after the errors");
    cr_assert_eq(kn_kv_cache_length(cache), 8);
    /* a reset takes a new sequence, of another batch size */
    kn_kv_cache_reset(cache);
    cr_assert_eq(kn_kv_cache_length(cache), 0);
    kn_tensor *one = kn_narrow(x, 0, 1, 1);
    assert_near(kn_module_forward_incremental(m, cache, one), kn_narrow(full, 0, 1, 1),
                "batch 1 after a reset");
    cr_assert_eq(kn_incremental_position(), 0); /* outside an incremental forward */
    kn_kv_cache_free(cache);
    kn_kv_cache_free(NULL);

    cr_assert_null(kn_kv_cache_new(m, 0));
    cr_assert_str_eq(kn_last_error(), "kv_cache_new: max_len must be positive, got 0");
    kn_module *mlp = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(mlp, kn_linear_new(4, 4, true, NULL)));
    cr_assert_null(kn_kv_cache_new(mlp, 8));
    cr_assert_str_eq(kn_last_error(), "kv_cache_new: the model (Sequential) has no "
                                      "MultiheadAttention module, so there is nothing to cache");
    cr_assert_null(kn_module_forward_incremental(NULL, cache, x));
    cr_assert_str_eq(kn_last_error(), "forward_incremental: model is NULL");
    kn_module_free(mlp);
    kn_module_free(m);
    kn_scope_end();
}

/* One module run by two places of a model holds one slot: refused, not mixed up. */
Test(kv_cache, a_module_run_twice_is_refused)
{
    kn_scope_begin();
    kn_module *attn = kn_multi_head_attention_new(8, 2, 0.0, true, true, NULL);
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, attn));
    ASSERT_OK(kn_sequential_append(m, kn_relu_new()));
    kn_module *relu = m->children[1];
    m->children[1] = attn; /* the same module twice (put back before freeing) */
    kn_kv_cache *cache = kn_kv_cache_new(m, 4);
    cr_assert_null(kn_module_forward_incremental(m, cache, kn_ones(KN_SHAPE(1, 2, 8), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(),
                     "MultiheadAttention ran twice in one incremental forward: a key/value "
                     "cache holds one slot per module"),
              "%s", kn_last_error());
    cr_assert_eq(kn_kv_cache_length(cache), 0);
    m->children[1] = relu;
    kn_kv_cache_free(cache);
    kn_module_free(m);
    kn_scope_end();
}

/* nanoGPT's shape: token and learned position embeddings, causal layers, a head. In an
 * incremental forward the positional table adds the rows of the positions after the
 * cached ones, so each step equals the full forward at its position; past the table it
 * is an error naming the positions, and nothing is appended. */
Test(kv_cache, a_positional_embedding_adds_the_cached_offset)
{
    kn_scope_begin();
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, kn_embedding_new(11, 16, NULL)));
    ASSERT_OK(kn_sequential_append(m, kn_positional_embedding_new(12, 16, NULL)));
    kn_transformer_encoder_layer_options o = {.d_model = 16,
                                              .nhead = 2,
                                              .dim_feedforward = 64,
                                              .activation = KN_TRANSFORMER_GELU,
                                              .layer_norm_eps = 1e-5,
                                              .batch_first = true,
                                              .norm_first = true,
                                              .is_causal = true};
    ASSERT_OK(kn_sequential_append(m, kn_transformer_encoder_layer_new(&o, NULL)));
    ASSERT_OK(kn_sequential_append(m, kn_linear_new(16, 11, false, NULL)));
    kn_module_train(m, false);
    check_incremental(m, tokens(2, 12, 11, 5), 3);

    kn_kv_cache *cache = kn_kv_cache_new(m, 20);
    cr_assert_not_null(kn_module_forward_incremental(m, cache, tokens(1, 12, 11, 1)));
    cr_assert_null(kn_module_forward_incremental(m, cache, tokens(1, 1, 11, 1)));
    cr_assert_str_eq(kn_last_error(),
                     "layer 1 (positional_embedding): PositionalEmbedding: positions 12..12 of "
                     "the sequence (12 cached, input [1, 1, 16]) go past num_embeddings (12)");
    cr_assert_eq(kn_kv_cache_length(cache), 12);
    kn_kv_cache_free(cache);
    kn_module_free(m);
    kn_scope_end();
}

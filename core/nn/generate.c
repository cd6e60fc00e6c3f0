/*
 * generate.c — text generation from a language model (nanoGPT's generate): the next
 * token drawn from the model's logits at the last position, divided by the temperature,
 * cut to the top_k most likely, softmaxed and sampled with a seeded generator (or the
 * argmax when not sampling), appended, and again.
 *
 * The context is the last block_size tokens at most. With a key/value cache (any model
 * with MultiheadAttention, kv_cache.c) each new token costs one position: the prompt is
 * prefilled once, then every token is fed alone. When the context would pass block_size
 * the oldest half of the window is dropped and the rest prefilled again (the positions
 * of a learned table are absolute, so the cached keys cannot be shifted): a token past
 * the window sees between block_size / 2 and block_size tokens, and costs on average
 * about two positions. Without a cache (no_cache, or a model without attention) the same
 * context is recomputed whole for each token, so both ways give the same tokens; within
 * the window the result is nanoGPT's exactly (its crop idx[:, -block_size:]).
 *
 * The model is a chain (an embedding first) or a graph (graph specs, issue 12) whose
 * first input takes the token ids; a graph's other inputs are int64 key-padding masks
 * (model-graph-gpt.json's "padding"), given zeros: the context has no padding. Its first
 * output is the logits.
 */
#include "nn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A double in [0, 1) with 53 random bits. */
static double uniform(kn_generator *gen)
{
    uint64_t a = kn_generator_next_u32(gen) >> 5, b = kn_generator_next_u32(gen) >> 6;
    return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

static int descending(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The next token from logits[v] (v = vocabulary; scratch has v floats). */
static int64_t pick(const float *logits, int64_t v, const kn_generate_options *o, float *scratch,
                    double *weights, kn_generator *gen)
{
    int64_t best = 0;
    for (int64_t i = 1; i < v; i++)
        if (logits[i] > logits[best]) best = i;
    if (!o->do_sample) return best;
    /* top_k: keep the logits >= the k-th largest (ties at the cut stay, as torch's
     * logits[logits < v[:, [-1]]] = -inf keeps them) */
    float cut = -INFINITY;
    if (o->top_k > 0 && o->top_k < v) {
        memcpy(scratch, logits, sizeof(float) * (size_t)v);
        qsort(scratch, (size_t)v, sizeof(float), descending);
        cut = scratch[o->top_k - 1];
    }
    double top = logits[best] / o->temperature, total = 0;
    for (int64_t i = 0; i < v; i++) {
        weights[i] = logits[i] >= cut ? exp(logits[i] / o->temperature - top) : 0;
        total += weights[i];
    }
    double u = uniform(gen) * total, sum = 0;
    int64_t last = best;
    for (int64_t i = 0; i < v; i++) {
        if (weights[i] == 0) continue;
        sum += weights[i];
        last = i;
        if (u < sum) return i;
    }
    return last; /* u fell past the rounding of the sum */
}

/* The number of inputs the model takes (1 for a chain), after checking that a graph's
 * first takes token ids and the others key-padding masks (int64 both). */
static kn_status model_inputs(const kn_module *model, int *count)
{
    int n = kn_graph_input_count(model);
    *count = n > 0 ? n : 1;
    for (int i = 0; i < n; i++)
        if (kn_graph_input_dtype(model, i) != KN_INT64)
            return kn__error(KN_ERR_VALUE,
                             "generate: the graph's input %d is float32: a language model's graph "
                             "takes the token ids first and int64 key-padding masks after them",
                             i);
    return KN_OK;
}

/* The model's logits at the last of positions tokens[start..len) into *out (made at the
 * first call, *vocab floats): fed whole (a prefill, or every time without a cache), or
 * only tokens[len - 1] with a cache. */
static kn_status step_logits(kn_module *model, kn_kv_cache *cache, const int64_t *tokens,
                             int64_t start, int64_t len, bool whole, float **out, int64_t *vocab)
{
    int count = 1;
    kn_status st = model_inputs(model, &count);
    if (st != KN_OK) return st;
    kn_scope_begin();
    int64_t from = whole || !cache ? start : len - 1, n = len - from;
    kn_tensor *x[KN_GRAPH_MAX_INPUTS] = {kn_from_int64s(tokens + from, (int64_t[]){1, n}, 2)};
    for (int i = 1; i < count && x[0]; i++) /* no padding: every position counts */
        if (!(x[i] = kn_zeros((int64_t[]){1, n}, 2, KN_INT64))) x[0] = NULL;
    kn_tensor *y = NULL;
    if (x[0] && cache) {
        if (whole) kn_kv_cache_reset(cache);
        y = kn_module_forward_incremental_n(model, cache, x, count);
    } else if (x[0]) {
        kn_no_grad_begin();
        y = kn_module_forward_n(model, x, count);
        kn_no_grad_end();
    }
    st = y ? KN_OK : kn_last_status();
    if (y && (y->ndim != 3 || y->shape[0] != 1 || y->shape[1] != n || y->dtype != KN_FLOAT32 ||
              y->shape[2] < 1))
        st = kn__error(KN_ERR_SHAPE,
                       "generate: expected the model's output as logits [1, %lld, vocabulary] "
                       "for a [1, %lld] input, got %s %s",
                       (long long)n, (long long)n, kn_dtype_name(y->dtype), kn__shape(y));
    if (st == KN_OK && !*out) {
        *vocab = y->shape[2];
        *out = malloc(sizeof(float) * (size_t)*vocab);
        if (!*out) st = kn__error(KN_ERR_MEMORY, "generate: out of memory");
    }
    if (st == KN_OK) {
        kn_tensor *last = kn_narrow(y, 1, n - 1, 1);
        st = last ? kn_copy_to_floats(last, *out) : kn_last_status();
    }
    kn_scope_end();
    return st;
}

struct kn_generation {
    kn_module *model;
    kn_generate_options o;
    kn_kv_cache *cache; /* NULL: the context is recomputed whole */
    kn_generator *gen;
    int64_t *tokens; /* the context's tokens and every new one */
    int64_t len, start, keep, made;
    int64_t vocab;
    float *logits, *scratch; /* vocab each: the next token's logits */
    double *weights;
    bool failed;
};

void kn_generation_free(kn_generation *g)
{
    if (!g) return;
    kn_kv_cache_free(g->cache);
    kn_generator_free(g->gen);
    free(g->tokens);
    free(g->logits);
    free(g->scratch);
    free(g->weights);
    free(g);
}

kn_generation *kn_generation_new(kn_module *model, const int64_t *prompt, int64_t n_prompt,
                                 const kn_generate_options *o)
{
    if (!model || !prompt || !o) return kn__error_null(KN_ERR_NULL, "generate: NULL argument");
    if (n_prompt < 1) return kn__error_null(KN_ERR_VALUE, "generate: the prompt has no tokens");
    if (o->max_new_tokens < 0 || o->block_size < 1 || o->top_k < 0 ||
        (o->do_sample && !(o->temperature > 0 && isfinite(o->temperature))))
        return kn__error_null(KN_ERR_VALUE,
                              "generate: expected max_new_tokens >= 0 (got %lld), block_size >= "
                              "1 (got %lld), top_k >= 0 (got %lld) and, when sampling, a finite "
                              "temperature > 0 (got %g)",
                              (long long)o->max_new_tokens, (long long)o->block_size,
                              (long long)o->top_k, o->temperature);
    kn_generation *g = calloc(1, sizeof *g);
    if (!g) return kn__error_null(KN_ERR_MEMORY, "generate: out of memory");
    g->model = model;
    g->o = *o;
    int64_t b = o->block_size;
    g->keep = b / 2 > 0 ? b / 2 : 1;
    /* the prompt's last block_size tokens, then room for every new one */
    int64_t first = n_prompt > b ? n_prompt - b : 0;
    g->len = n_prompt - first;
    g->tokens = malloc(sizeof(int64_t) * (size_t)(g->len + o->max_new_tokens));
    g->gen = kn_generator_new(o->seed);
    if (!g->tokens || !g->gen) {
        kn_generation_free(g);
        return kn__error_null(KN_ERR_MEMORY, "generate: out of memory");
    }
    memcpy(g->tokens, prompt + first, sizeof(int64_t) * (size_t)g->len);
    if (!o->no_cache && kn__module_has_attention(model) &&
        !(g->cache = kn_kv_cache_new(model, b))) {
        kn_generation_free(g);
        return NULL;
    }
    if (o->max_new_tokens == 0) return g;
    /* the prompt's forward tells the vocabulary, then the buffers fit it */
    kn_status st = step_logits(model, g->cache, g->tokens, 0, g->len, true, &g->logits, &g->vocab);
    if (st == KN_OK) {
        g->scratch = malloc(sizeof(float) * (size_t)g->vocab);
        g->weights = malloc(sizeof(double) * (size_t)g->vocab);
        if (!g->scratch || !g->weights) st = kn__error(KN_ERR_MEMORY, "generate: out of memory");
    }
    if (st != KN_OK) {
        kn_generation_free(g);
        return NULL;
    }
    return g;
}

kn_status kn_generation_next(kn_generation *g, int64_t *token)
{
    if (!g || !token) return kn__error(KN_ERR_NULL, "generate: NULL argument");
    if (g->failed) return kn__error(KN_ERR_VALUE, "generate: an earlier step failed");
    if (g->made >= g->o.max_new_tokens)
        return kn__error(KN_ERR_VALUE, "generate: all %lld tokens are made",
                         (long long)g->o.max_new_tokens);
    int64_t next = pick(g->logits, g->vocab, &g->o, g->scratch, g->weights, g->gen);
    g->tokens[g->len++] = next;
    *token = next;
    if (++g->made == g->o.max_new_tokens) return KN_OK;
    /* the logits of the token after it, now: an error is this step's, not the next's */
    bool shift = g->len - g->start > g->o.block_size;
    if (shift) g->start = g->len - g->keep;
    kn_status st =
        step_logits(g->model, g->cache, g->tokens, g->start, g->len, shift, &g->logits, &g->vocab);
    g->failed = st != KN_OK;
    return st;
}

int64_t kn_generation_remaining(const kn_generation *g)
{
    return g ? g->o.max_new_tokens - g->made : 0;
}

kn_status kn_generate(kn_module *model, const int64_t *prompt, int64_t n_prompt,
                      const kn_generate_options *o, const kn_generate_callbacks *callbacks,
                      int64_t *out, int64_t *count)
{
    if (count) *count = 0;
    if (!count || (!out && o && o->max_new_tokens > 0))
        return kn__error(KN_ERR_NULL, "generate: NULL argument");
    kn_generation *g = kn_generation_new(model, prompt, n_prompt, o);
    if (!g) return kn_last_status();
    kn_status st = KN_OK;
    for (int64_t i = 0; i < o->max_new_tokens; i++) {
        int64_t next = 0;
        kn_status step = kn_generation_next(g, &next); /* next is made even when it fails */
        out[i] = next;
        *count = i + 1;
        if (callbacks && callbacks->on_token &&
            (st = callbacks->on_token(callbacks->context, next, i)) != KN_OK)
            break;
        if ((st = step) != KN_OK) break;
    }
    kn_generation_free(g);
    return st;
}

/*
 * kv_cache.c — incremental decoding: a key/value cache holds one slot per
 * MultiheadAttention module of a model, and kn_module_forward_incremental runs the
 * model on the next positions of a sequence with the cache marked as this thread's, so
 * each self-attention module (layer_attention.c), whatever container runs it, finds its
 * slot, appends the new keys and values and attends over all cached positions. The
 * cache, not the module, holds the state: one model serves several generations at once,
 * each with its own cache, on any threads.
 *
 * A slot keeps keys and values as [N, max_len, E] (the heads side by side, as in_proj
 * makes them), so appending is one copy per step and the kernel reads the heads in place;
 * the causal mask of the new queries is offset by the positions already cached.
 */
#include "nn_internal.h"

#include <stdlib.h>
#include <string.h>

struct kn__kv_slot {
    const kn_module *module; /* the MultiheadAttention it serves */
    kn_kv_cache *cache;
    kn_tensor *keys, *values; /* [N, max_len, E], made at the first forward (owned) */
    kn_tensor *padding;       /* int64 [N, max_len], made once a mask is given (owned) */
    uint64_t step;            /* the forward that last appended */
};

struct kn_kv_cache {
    int64_t max_len, length;
    int64_t batch;     /* of the cached positions */
    int64_t appending; /* positions the running forward adds */
    uint64_t step;     /* forwards started */
    int n_slots;
    kn__kv_slot *slots;
};

/* The cache of the incremental forward running on this thread. */
static _Thread_local kn_kv_cache *running;

/* Appends m's MultiheadAttention modules (each once) to slots[n..]; returns the count.
 * slots NULL: only counts (an upper bound). */
static int collect(const kn_module *m, kn__kv_slot *slots, int n)
{
    if (m->kind == KN_MODULE_MULTI_HEAD_ATTENTION) {
        bool seen = false;
        for (int i = 0; slots && i < n; i++) seen = seen || slots[i].module == m;
        if (!seen) {
            if (slots) slots[n].module = m;
            n++;
        }
    }
    for (int i = 0; i < m->n_children; i++) n = collect(m->children[i], slots, n);
    return n;
}

bool kn__module_has_attention(const kn_module *model)
{
    return model && collect(model, NULL, 0) > 0;
}

kn_kv_cache *kn_kv_cache_new(const kn_module *model, int64_t max_len)
{
    if (!model) return kn__error_null(KN_ERR_NULL, "kv_cache_new: model is NULL");
    if (max_len < 1)
        return kn__error_null(KN_ERR_VALUE, "kv_cache_new: max_len must be positive, got %lld",
                              (long long)max_len);
    int most = collect(model, NULL, 0);
    if (most == 0)
        return kn__error_null(KN_ERR_VALUE,
                              "kv_cache_new: the model (%s) has no MultiheadAttention module, so "
                              "there is nothing to cache",
                              model->type_name);
    kn_kv_cache *c = calloc(1, sizeof *c);
    kn__kv_slot *slots = calloc((size_t)most, sizeof *slots);
    if (!c || !slots) {
        free(c);
        free(slots);
        return kn__error_null(KN_ERR_MEMORY, "kv_cache_new: out of memory");
    }
    c->max_len = max_len;
    c->slots = slots;
    c->n_slots = collect(model, slots, 0);
    for (int i = 0; i < c->n_slots; i++) slots[i].cache = c;
    return c;
}

static void release_slot(kn__kv_slot *s)
{
    kn_release(s->keys);
    kn_release(s->values);
    kn_release(s->padding);
    s->keys = s->values = s->padding = NULL;
}

void kn_kv_cache_free(kn_kv_cache *cache)
{
    if (!cache) return;
    for (int i = 0; i < cache->n_slots; i++) release_slot(&cache->slots[i]);
    free(cache->slots);
    free(cache);
}

int64_t kn_kv_cache_length(const kn_kv_cache *cache)
{
    return cache ? cache->length : 0;
}

int64_t kn_kv_cache_max_len(const kn_kv_cache *cache)
{
    return cache ? cache->max_len : 0;
}

void kn_kv_cache_reset(kn_kv_cache *cache)
{
    if (!cache) return;
    cache->length = 0;
    cache->batch = 0;
}

int64_t kn_incremental_position(void)
{
    return running ? running->length : 0;
}

kn__kv_slot *kn__kv_slot_of(const kn_module *m)
{
    for (int i = 0; running && i < running->n_slots; i++)
        if (running->slots[i].module == m) return &running->slots[i];
    return NULL;
}

/* The slot's buffers for a batch of n, e features on device (made anew when those
 * changed since the last sequence). */
static kn_status ensure_buffers(kn__kv_slot *s, int64_t n, int64_t e, kn_device device,
                                bool padding)
{
    int64_t shape[3] = {n, s->cache->max_len, e};
    if (s->keys && (s->keys->shape[0] != n || s->keys->shape[2] != e ||
                    !kn_device_equal(s->keys->device, device)))
        release_slot(s);
    if (!s->keys) {
        s->keys = kn__empty_raw(shape, 3, KN_FLOAT32, device);
        s->values = kn__empty_raw(shape, 3, KN_FLOAT32, device);
        if (!s->keys || !s->values) {
            release_slot(s);
            return kn_last_status();
        }
    }
    if (padding && !s->padding) {
        s->padding = kn__empty_raw(shape, 2, KN_INT64, device);
        if (!s->padding || kn_fill_(s->padding, 0) != KN_OK) {
            kn_release(s->padding);
            s->padding = NULL;
            return kn_last_status();
        }
    }
    return KN_OK;
}

/* x [n, len, E] (a prefix of a slot buffer, or the new columns of qkv) as [n, H, len, D]. */
static kn_tensor *heads(kn_tensor *x, int64_t num_heads)
{
    if (!x) return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], num_heads, x->shape[2] / num_heads};
    return kn_transpose(kn_view(x, shape, 4), 1, 2);
}

kn_tensor *kn__kv_attend(kn__kv_slot *slot, kn_tensor *qkv, kn_tensor *padding, int64_t num_heads,
                         const kn_attention_args *args)
{
    if (!qkv) return NULL;
    kn_kv_cache *c = slot->cache;
    const char *who = slot->module->type_name;
    if (slot->step == c->step)
        return kn__error_null(KN_ERR_VALUE,
                              "%s ran twice in one incremental forward: a key/value cache holds "
                              "one slot per module, so a module used by several layers cannot be "
                              "cached",
                              who);
    int64_t n = qkv->shape[0], t = qkv->shape[1], e = qkv->shape[2] / 3, len = c->length;
    if (t != c->appending)
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: the incremental forward feeds %lld new positions, but this "
                              "self-attention got %lld (its input must keep the model input's "
                              "positions)",
                              who, (long long)c->appending, (long long)t);
    if (padding && (padding->dtype != KN_INT64 || padding->ndim != 2 || padding->shape[0] != n ||
                    padding->shape[1] != t))
        return kn__error_null(KN_ERR_SHAPE,
                              "%s: expected the key-padding mask of the new positions as int64 "
                              "[%lld, %lld], got %s %s",
                              who, (long long)n, (long long)t, kn_dtype_name(padding->dtype),
                              kn__shape(padding));
    if (ensure_buffers(slot, n, e, qkv->device, padding != NULL) != KN_OK) return NULL;
    kn_scope_begin();
    kn_status st = kn_copy_(kn_narrow(slot->keys, 1, len, t), kn_narrow(qkv, 2, e, e));
    if (st == KN_OK) st = kn_copy_(kn_narrow(slot->values, 1, len, t), kn_narrow(qkv, 2, 2 * e, e));
    if (st == KN_OK && slot->padding)
        st = padding ? kn_copy_(kn_narrow(slot->padding, 1, len, t), padding)
                     : kn_fill_(kn_narrow(slot->padding, 1, len, t), 0);
    kn_tensor *out = NULL;
    if (st == KN_OK) {
        kn_attention_args a = *args;
        a.causal_offset = len; /* the new queries are the last t of len + t positions */
        a.key_padding_mask = slot->padding ? kn_narrow(slot->padding, 1, 0, len + t) : NULL;
        kn_tensor *o = kn_scaled_dot_product_attention(
            heads(kn_narrow(qkv, 2, 0, e), num_heads),
            heads(kn_narrow(slot->keys, 1, 0, len + t), num_heads),
            heads(kn_narrow(slot->values, 1, 0, len + t), num_heads), &a);
        out = o ? kn_reshape(kn_transpose(o, 1, 2), (int64_t[]){n, t, e}, 3) : NULL;
    }
    if (out) slot->step = c->step;
    return kn_scope_escape(out);
}

kn_tensor *kn_module_forward_incremental_n(kn_module *model, kn_kv_cache *cache,
                                           kn_tensor *const *inputs, int n)
{
    if (!model || !cache || !inputs || n < 1)
        return kn__error_null(KN_ERR_NULL, "forward_incremental: %s",
                              !model   ? "model is NULL"
                              : !cache ? "cache is NULL"
                                       : "no inputs");
    if (!inputs[0]) { /* an earlier error in the caller's chain keeps its message */
        if (kn_last_status() == KN_OK)
            kn__error(KN_ERR_NULL, "forward_incremental: the input is NULL");
        return NULL;
    }
    if (running)
        return kn__error_null(KN_ERR_VALUE,
                              "forward_incremental: an incremental forward is already running on "
                              "this thread");
    kn_tensor *x = inputs[0];
    if (x->ndim < 2 || x->shape[1] < 1)
        return kn__error_null(KN_ERR_SHAPE,
                              "forward_incremental: expected the input as [N, T_new, ...] (the "
                              "batch, then one or more new positions), got %s",
                              kn__shape(x));
    int64_t batch = x->shape[0], t = x->shape[1];
    if (cache->length + t > cache->max_len)
        return kn__error_null(KN_ERR_VALUE,
                              "forward_incremental: %lld cached positions and %lld new ones "
                              "exceed the cache's max_len of %lld (kn_kv_cache_reset starts a "
                              "new sequence)",
                              (long long)cache->length, (long long)t, (long long)cache->max_len);
    if (cache->length > 0 && batch != cache->batch)
        return kn__error_null(KN_ERR_SHAPE,
                              "forward_incremental: the cached positions have a batch of %lld, "
                              "the input %lld",
                              (long long)cache->batch, (long long)batch);
    cache->appending = t;
    cache->step++;
    running = cache;
    kn_no_grad_begin();
    kn_tensor *out = kn_module_forward_n(model, inputs, n);
    kn_no_grad_end();
    running = NULL;
    cache->appending = 0;
    if (!out) return NULL; /* nothing counted as appended */
    cache->length += t;
    cache->batch = batch;
    return out;
}

kn_tensor *kn_module_forward_incremental(kn_module *model, kn_kv_cache *cache, kn_tensor *x)
{
    return kn_module_forward_incremental_n(model, cache, &x, 1);
}

/*
 * inference.c — the Open Inference Protocol v2 (KServe/Triton REST) routes and the
 * model cache behind them.
 *
 * A model's versions are its succeeded jobs and its uploaded weights, and its aliases
 * name versions (server/versions.c resolves them; the default is the alias "default",
 * else the newest succeeded job); a version is loaded from its spec and weights and kept
 * in an LRU cache keyed by (model, version), bounded in entries (--model-cache-entries)
 * and in the bytes of their parameters and buffers (--model-cache-bytes). A request holds
 * (pins) the entry it uses from the look-up to its answer: eviction takes only entries
 * nobody holds, so the cache may run over its bounds while every entry is in use and
 * shrinks back as they are let go (the last holder of an entry over the bounds frees it).
 * Deleting a version or a model forgets its entries (ksrv_model_cache_forget): they are
 * never found again and go when their last holder lets them go, so a name uploaded again
 * is loaded afresh. Concurrent requests to one loaded version are batched: each
 * request enqueues its samples; one thread becomes the leader, takes what is queued,
 * stacks all inputs, runs one forward (eval mode, no grad) and hands each request its
 * rows; the others wait on a condition variable, and those that arrived during the
 * forward make the next batch. No request waits for others to come: a lone request runs
 * at once, and under load the batches grow by themselves (Triton's dynamic batcher with
 * no queue delay).
 *
 * Inputs are raw, like the training data: the preprocessing the job applied (scale,
 * normalize; in the weights' metadata) is applied to them here, unless the request says
 * "parameters": {"preprocessed": true}. Outputs are the model's raw outputs (logits for a
 * classifier). A request-level "parameters": {"softmax": true} turns each row of a
 * [N, classes] output into probabilities. A model's inputs and outputs are its spec's
 * values: a chain has one input, "input", and one output, "output"; a graph its named
 * inputs and outputs (each request gives every input by name, all with the same N, and
 * may ask for some of the outputs). A float32 input may be sent as FP32, FP64 or any
 * INT/UINT type (converted); an int64 input (token indices) as any INT/UINT type, kept
 * exact, and within the rows of an embedding that reads it; each with a shape [N, ...]
 * whose per-sample element count matches the input's shape (so [N, 784] feeds a
 * [1, 28, 28] model); data is flat or nested, row-major.
 * Outputs come back as FP32, or INT64 for an int64 output. A job's preprocessing is of
 * its one float32 input (a dataset feeds one input): a model that has it has one.
 */
#include "registry.h"

#include "kapi.h"
#include "kapi_text.h"

#include <cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BATCH_SAMPLES 4096
#define MAX_REQUEST_VALUES (64LL << 20)

/* Upper bounds (seconds) of server->stats.infer_buckets[0..10]; [11] is +Inf. Counts
 * are per bucket (not cumulative): the /metrics writer (routes_v1.c) uses the same
 * bounds and sums them. */
static const double ksrv_infer_bucket_bounds[11] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,   0.25,   0.5,   1,    10};

/* A request's samples: for each model input, n rows of its values (float or int64, as
 * the input's dtype); for each model output, the leader's malloc'd rows. */
typedef struct infer_request {
    void *inputs[KN_GRAPH_MAX_INPUTS];
    int64_t n; /* samples */
    void *outputs[KN_GRAPH_MAX_INPUTS];
    char error[256];
    bool done;
    struct infer_request *next;
} infer_request;

typedef struct cache_entry {
    char model[128], version[64];
    bool stale; /* forgotten while in use: never found again, freed when let go */
    kapi_model_spec *spec;
    kn_module *module;
    kapi_preprocessing preprocessing; /* from the weights' metadata: raw inputs are applied it */
    kapi_tokenizer *tokenizer;        /* a text model's (its weights' kiln.tokenizer); else NULL */
    int64_t in_numel[KN_GRAPH_MAX_INPUTS], out_numel[KN_GRAPH_MAX_INPUTS]; /* per sample */
    size_t bytes; /* parameters and buffers: what the byte bound counts */
    int refs;     /* requests holding it (cache lock): never freed while > 0 */
    uint64_t last_used;
    /* batching */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    infer_request *head, *tail;
    bool leader;
    struct cache_entry *next;
} cache_entry;

struct ksrv_model_cache {
    ksrv_server *server;
    pthread_mutex_t lock;
    cache_entry *entries;
    uint64_t clock;
    uint64_t forgets; /* ksrv_model_cache_forget calls: a load that spans one is stale */
    int max_entries;
    size_t max_bytes;
    ksrv_model_cache_stats stats; /* entries and bytes held now, loads, evictions */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the cache -------------------------------------------------------------------- */

ksrv_model_cache *ksrv_model_cache_new(ksrv_server *server)
{
    ksrv_model_cache *cache = calloc(1, sizeof *cache);
    if (!cache) return NULL;
    cache->server = server;
    cache->max_entries =
        server->config.model_cache_entries > 0 ? server->config.model_cache_entries : 4;
    cache->max_bytes = server->config.model_cache_bytes;
    pthread_mutex_init(&cache->lock, NULL);
    return cache;
}

ksrv_model_cache_stats ksrv_model_cache_get_stats(ksrv_model_cache *cache)
{
    pthread_mutex_lock(&cache->lock);
    ksrv_model_cache_stats stats = cache->stats;
    pthread_mutex_unlock(&cache->lock);
    return stats;
}

static void entry_free(cache_entry *e)
{
    if (!e) return;
    kapi_tokenizer_free(e->tokenizer);
    kn_module_free(e->module);
    kapi_model_spec_free(e->spec);
    kapi_preprocessing_free(&e->preprocessing);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cond);
    free(e);
}

void ksrv_model_cache_free(ksrv_model_cache *cache)
{
    if (!cache) return;
    for (cache_entry *e = cache->entries, *next; e; e = next) {
        next = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&cache->lock);
    free(cache);
}

static int64_t numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* Builds a version's module from its spec and weights, in eval mode. */
static cache_entry *entry_load(ksrv_server *server, kstore *store, const kstore_version *v,
                               char *error, size_t size)
{
    const char *model = v->model, *version = v->version;
    cache_entry *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(error, size, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    snprintf(e->model, sizeof e->model, "%.127s", model);
    snprintf(e->version, sizeof e->version, "%.63s", version);
    char path[1024];
    e->spec = ksrv_version_spec(server, store, v, path, sizeof path, error, size);
    if (!e->spec) goto fail;
    /* a private generator: the initial values are overwritten by the weights */
    kn_generator *gen = kn_generator_new(0);
    e->module = gen ? kapi_model_build(e->spec, gen) : NULL;
    kn_generator_free(gen);
    if (!e->module) {
        snprintf(error, size, "building the model: %s", kn_last_error());
        goto fail;
    }
    if (kn_module_load_weights(e->module, path, true) != KN_OK) {
        snprintf(error, size, "loading the weights of version %s: %s", version, kn_last_error());
        goto fail;
    }
    /* what the job did to its inputs travels in the weights (none in files from elsewhere) */
    kapi_errors errors = {0};
    bool found = false;
    if (!kapi_load_preprocessing(path, &e->preprocessing, &found, &errors)) {
        snprintf(error, size, "reading the preprocessing of version %s: %.360s", version,
                 errors.count ? errors.items[0].message : "unreadable");
        kapi_errors_free(&errors);
        goto fail;
    }
    kapi_errors_free(&errors);
    /* a text model's tokenizer (issue 12) travels in the weights too */
    bool text_model = false;
    e->tokenizer = kapi_load_tokenizer(path, "weights", &text_model, &errors);
    if (text_model && !e->tokenizer) {
        snprintf(error, size, "the tokenizer of version %s: %.360s", version,
                 errors.count ? errors.items[0].message : "unreadable");
        kapi_errors_free(&errors);
        goto fail;
    }
    kapi_errors_free(&errors);
    const kapi_model_spec *spec = e->spec;
    if (!kapi_preprocessing_is_identity(&e->preprocessing) &&
        (spec->n_inputs != 1 || spec->values[0].dtype != KN_FLOAT32)) {
        snprintf(error, size,
                 "version %s: its weights' preprocessing (kiln.preprocessing) is of one float32 "
                 "input, but the model has %d input%s, the first %s",
                 version, spec->n_inputs, spec->n_inputs == 1 ? "" : "s",
                 kn_dtype_name(spec->values[0].dtype));
        goto fail;
    }
    kn_module_train(e->module, false);
    for (int i = 0; i < spec->n_inputs; i++)
        e->in_numel[i] = numel(spec->values[i].shape, spec->values[i].ndim);
    for (int j = 0; j < spec->n_outputs; j++)
        e->out_numel[j] =
            numel(spec->values[spec->outputs[j]].shape, spec->values[spec->outputs[j]].ndim);
    int n_state = 0;
    kn_named_tensor *state = kn_module_state_dict(e->module, &n_state);
    for (int i = 0; i < n_state; i++)
        e->bytes += (size_t)kn_numel(state[i].tensor) * kn_dtype_size(state[i].tensor->dtype);
    free(state);
    return e;
fail:
    entry_free(e);
    return NULL;
}

static bool over_bounds(const ksrv_model_cache *cache)
{
    return cache->stats.entries > cache->max_entries ||
           (cache->max_bytes > 0 && cache->stats.bytes > cache->max_bytes);
}

/* Unlinks *p onto *victims (for entry_free outside the lock). Cache lock held. */
static void unlink_entry(ksrv_model_cache *cache, cache_entry **p, cache_entry **victims)
{
    cache_entry *gone = *p;
    *p = gone->next;
    cache->stats.entries--;
    cache->stats.bytes -= gone->bytes;
    gone->next = *victims;
    *victims = gone;
}

/* Unlinks least recently used entries that nobody holds while the cache is over its
 * bounds; they go on *victims. Cache lock held. */
static void evict(ksrv_model_cache *cache, cache_entry **victims)
{
    while (over_bounds(cache)) {
        cache_entry **victim = NULL;
        for (cache_entry **p = &cache->entries; *p; p = &(*p)->next)
            if ((*p)->refs == 0 && (!victim || (*p)->last_used < (*victim)->last_used)) victim = p;
        if (!victim) return; /* every entry is in use: the last release shrinks it */
        unlink_entry(cache, victim, victims);
        cache->stats.evictions++;
    }
}

static void free_victims(cache_entry *victims)
{
    for (cache_entry *e = victims, *next; e; e = next) {
        next = e->next;
        entry_free(e);
    }
}

/* The cached entry of (model, version), loaded when missing, held for the caller until
 * entry_release: it is pinned (refs > 0) before anything can be evicted. */
static cache_entry *cache_get(ksrv_model_cache *cache, kstore *store, const kstore_version *v,
                              char *error, size_t size)
{
    const char *model = v->model, *version = v->version;
    pthread_mutex_lock(&cache->lock);
    for (cache_entry *e = cache->entries; e; e = e->next) {
        if (!e->stale && !strcmp(e->model, model) && !strcmp(e->version, version)) {
            e->refs++;
            e->last_used = ++cache->clock;
            pthread_mutex_unlock(&cache->lock);
            return e;
        }
    }
    uint64_t forgets = cache->forgets;
    pthread_mutex_unlock(&cache->lock);

    /* loading happens outside the lock; a racing load of the same version loses */
    cache_entry *loaded = entry_load(cache->server, store, v, error, size);
    if (!loaded) return NULL;
    cache_entry *victims = NULL, *found = NULL;
    pthread_mutex_lock(&cache->lock);
    for (cache_entry *e = cache->entries; e && !found; e = e->next)
        if (!e->stale && !strcmp(e->model, model) && !strcmp(e->version, version)) found = e;
    if (found) {
        loaded->next = victims; /* the duplicate is freed below, outside the lock */
        victims = loaded;
        loaded = found;
    } else {
        /* a version forgotten while it loaded (deleted, uploaded again) may have been
         * read before or after: this request gets what it read, nobody else does */
        loaded->stale = cache->forgets != forgets;
        loaded->next = cache->entries;
        cache->entries = loaded;
        cache->stats.entries++;
        cache->stats.bytes += loaded->bytes;
        cache->stats.loads++;
    }
    loaded->refs++; /* pinned before the eviction below can see it */
    loaded->last_used = ++cache->clock;
    evict(cache, &victims);
    pthread_mutex_unlock(&cache->lock);
    free_victims(victims);
    return loaded;
}

static void entry_release(ksrv_model_cache *cache, cache_entry *e)
{
    cache_entry *victims = NULL;
    pthread_mutex_lock(&cache->lock);
    if (--e->refs == 0 && e->stale)
        for (cache_entry **p = &cache->entries; *p; p = &(*p)->next)
            if (*p == e) {
                unlink_entry(cache, p, &victims);
                break;
            }
    evict(cache, &victims); /* what was kept over the bounds while in use */
    pthread_mutex_unlock(&cache->lock);
    free_victims(victims);
}

void ksrv_model_cache_forget(ksrv_model_cache *cache, const char *model, const char *version)
{
    if (!cache) return;
    cache_entry *victims = NULL;
    pthread_mutex_lock(&cache->lock);
    cache->forgets++;
    for (cache_entry **p = &cache->entries; *p;) {
        cache_entry *e = *p;
        if (strcmp(e->model, model) != 0 || (version && strcmp(e->version, version) != 0)) {
            p = &e->next;
            continue;
        }
        e->stale = true; /* never found again; held ones go at their last release */
        if (e->refs == 0)
            unlink_entry(cache, p, &victims);
        else
            p = &e->next;
    }
    pthread_mutex_unlock(&cache->lock);
    free_victims(victims);
}

/* ---- batching --------------------------------------------------------------------- */

/* The model's input i (kapi_value_spec) and output j. */
static const kapi_value_spec *input_value(const cache_entry *e, int i)
{
    return &e->spec->values[i];
}

static const kapi_value_spec *output_value(const cache_entry *e, int j)
{
    return &e->spec->values[e->spec->outputs[j]];
}

/* Input i of the batch: every request's rows stacked into one [total, ...] tensor. */
static kn_tensor *stack_input(const cache_entry *e, int i, infer_request *batch, int64_t total)
{
    const kapi_value_spec *v = input_value(e, i);
    int64_t shape[KN_MAX_DIMS + 1];
    shape[0] = total;
    memcpy(shape + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
    kn_tensor *x = kn_empty(shape, v->ndim + 1, v->dtype);
    if (!x) return NULL;
    size_t row = (size_t)e->in_numel[i] * kn_dtype_size(v->dtype);
    char *at = v->dtype == KN_INT64 ? (char *)kn_data_i64(x) : (char *)kn_data_f32(x);
    for (infer_request *r = batch; r; r = r->next) {
        memcpy(at, r->inputs[i], row * (size_t)r->n);
        at += row * (size_t)r->n;
    }
    return x;
}

/* Output j of the batch handed out: each request gets a malloc'd copy of its rows. */
static bool hand_out(const cache_entry *e, int j, kn_tensor *y, infer_request *batch, int64_t total,
                     char *error, size_t size)
{
    const kapi_value_spec *v = output_value(e, j);
    y = y ? kn_contiguous(kn_to(y, kn_cpu())) : NULL;
    if (!y) {
        snprintf(error, size, "forward: %s", kn_last_error());
        return false;
    }
    if (kn_numel(y) != total * e->out_numel[j] || y->dtype != v->dtype) {
        snprintf(error, size, "the model gave %lld %s values for %lld samples of \"%s\"",
                 (long long)kn_numel(y), kn_dtype_name(y->dtype), (long long)total, v->name);
        return false;
    }
    size_t row = (size_t)e->out_numel[j] * kn_dtype_size(v->dtype);
    const char *at = v->dtype == KN_INT64 ? (char *)kn_data_i64(y) : (char *)kn_data_f32(y);
    for (infer_request *r = batch; r; r = r->next) {
        r->outputs[j] = malloc(row * (size_t)r->n + 1);
        if (!r->outputs[j]) {
            snprintf(r->error, sizeof r->error, "out of memory");
        } else {
            memcpy(r->outputs[j], at, row * (size_t)r->n);
        }
        at += row * (size_t)r->n;
    }
    return true;
}

/* One forward over the requests of a batch; each gets its rows or an error. */
static void run_batch(cache_entry *e, infer_request *batch)
{
    const kapi_model_spec *spec = e->spec;
    int64_t total = 0;
    for (infer_request *r = batch; r; r = r->next) total += r->n;
    char error[256] = "";
    kn_no_grad_begin();
    kn_scope_begin();
    kn_tensor *x[KN_GRAPH_MAX_INPUTS], *y[KN_GRAPH_MAX_INPUTS];
    int n_out = 0;
    for (int i = 0; i < spec->n_inputs && !error[0]; i++)
        if (!(x[i] = stack_input(e, i, batch, total)))
            snprintf(error, sizeof error, "stacking the inputs: %s", kn_last_error());
    if (!error[0] && kn_module_forward_outputs(e->module, x, spec->n_inputs, y, KN_GRAPH_MAX_INPUTS,
                                               &n_out) != KN_OK)
        snprintf(error, sizeof error, "forward: %s", kn_last_error());
    else if (!error[0] && n_out != spec->n_outputs)
        snprintf(error, sizeof error, "the model gave %d outputs, its spec says %d", n_out,
                 spec->n_outputs);
    for (int j = 0; j < spec->n_outputs && !error[0]; j++)
        hand_out(e, j, y[j], batch, total, error, sizeof error);
    kn_scope_end();
    kn_no_grad_end();
    if (error[0])
        for (infer_request *r = batch; r; r = r->next)
            snprintf(r->error, sizeof r->error, "%s", error);
}

static void count_batch(ksrv_stats *stats, infer_request *batch)
{
    uint64_t requests = 0;
    for (infer_request *r = batch; r; r = r->next) requests++;
    pthread_mutex_lock(&stats->lock);
    stats->infer_batches++;
    stats->infer_batched_requests += requests;
    pthread_mutex_unlock(&stats->lock);
}

/* Enqueues req and returns when it is done (by this thread as leader, or another). */
static void infer_batched(cache_entry *e, infer_request *req, ksrv_stats *stats)
{
    pthread_mutex_lock(&e->lock);
    if (e->tail)
        e->tail->next = req;
    else
        e->head = req;
    e->tail = req;
    while (!req->done) {
        if (e->leader) {
            pthread_cond_wait(&e->cond, &e->lock);
            continue;
        }
        e->leader = true;
        /* take the queued requests up to MAX_BATCH_SAMPLES (at least one) */
        infer_request *batch = e->head, *last = batch;
        int64_t samples = batch->n;
        while (last->next && samples + last->next->n <= MAX_BATCH_SAMPLES) {
            last = last->next;
            samples += last->n;
        }
        e->head = last->next;
        if (!e->head) e->tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&e->lock);
        run_batch(e, batch);
        count_batch(stats, batch);
        pthread_mutex_lock(&e->lock);
        for (infer_request *r = batch, *next; r; r = next) {
            next = r->next;
            r->next = NULL;
            r->done = true;
        }
        e->leader = false;
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- versions ------------------------------------------------------------------------ */

/* The version to serve (given: a version or alias; NULL: the default) into *out; false
 * with a 404 (or 500) response, whose message says "unknown model" for a model that does
 * not exist. */
static bool resolve_version(kstore *store, const char *model, const char *given,
                            kstore_version *out, ksrv_response *response)
{
    char alias[64], message[512];
    ksrv_resolve_status s =
        ksrv_resolve_version(store, model, given, out, alias, message, sizeof message);
    if (s == KSRV_RESOLVED) return true;
    ksrv_respond_v2_error(response, s == KSRV_RESOLVE_ERROR ? 500 : 404, "%s", message);
    return false;
}

int ksrv_model_hold(ksrv_server *server, kstore *store, const char *model, const char *version,
                    ksrv_held_model *out, char *message, size_t size)
{
    memset(out, 0, sizeof *out);
    kstore_version v;
    memset(&v, 0, sizeof v);
    char alias[64];
    ksrv_resolve_status s = ksrv_resolve_version(store, model, version, &v, alias, message, size);
    if (s != KSRV_RESOLVED) {
        kstore_version_free(&v);
        return s == KSRV_RESOLVE_ERROR ? 500 : 404;
    }
    snprintf(out->version, sizeof out->version, "%s", v.version);
    cache_entry *e = cache_get(server->models, store, &v, message, size);
    kstore_version_free(&v);
    if (!e) return 500;
    out->entry = e;
    out->module = e->module;
    out->spec = e->spec;
    out->tokenizer = e->tokenizer;
    return 0;
}

void ksrv_model_release(ksrv_server *server, ksrv_held_model *held)
{
    if (held && held->entry) entry_release(server->models, held->entry);
    if (held) held->entry = NULL;
}

static kstore *store_or_500(ksrv_server *server, ksrv_response *response)
{
    kstore *store = ksrv_thread_store(server);
    if (!store) ksrv_respond_v2_error(response, 500, "the store is not available");
    return store;
}

/* ---- health and metadata --------------------------------------------------------------- */

void ksrv_handle_v2_live(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)server;
    (void)request;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "live", true);
    ksrv_respond_json(response, 200, o);
}

void ksrv_handle_v2_ready(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)request;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ready", !server->stopping);
    ksrv_respond_json(response, 200, o);
}

/* The v2 datatype of a value: FP32, or INT64 for indices. */
static const char *datatype_of(const kapi_value_spec *v)
{
    return v->dtype == KN_INT64 ? "INT64" : "FP32";
}

static cJSON *tensor_meta(const kapi_value_spec *v)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", v->name);
    cJSON_AddStringToObject(o, "datatype", datatype_of(v));
    cJSON *s = cJSON_AddArrayToObject(o, "shape");
    cJSON_AddItemToArray(s, cJSON_CreateNumber(-1));
    for (int i = 0; i < v->ndim; i++)
        cJSON_AddItemToArray(s, cJSON_CreateNumber((double)v->shape[i]));
    return o;
}

void ksrv_handle_v2_model(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    const char *name = request->params[0];
    kstore *store = store_or_500(server, response);
    if (!store) return;
    kstore_version *list = NULL;
    int count = 0;
    if (kstore_version_list(store, name, &list, &count) != KSTORE_OK) {
        ksrv_respond_v2_error(response, 500, "%s", kstore_last_error(store));
        return;
    }
    /* the default version's spec; a model never trained describes itself */
    char error[512] = "", alias[64], path[1024];
    kstore_version v;
    kapi_model_spec *spec = NULL;
    if (count > 0 &&
        ksrv_resolve_version(store, name, NULL, &v, alias, error, sizeof error) == KSRV_RESOLVED) {
        spec = ksrv_version_spec(server, store, &v, path, sizeof path, error, sizeof error);
        kstore_version_free(&v);
    }
    if (!spec) {
        kstore_model m;
        memset(&m, 0, sizeof m);
        if (kstore_model_get(store, name, &m) == KSTORE_OK) {
            kapi_errors errors = {0};
            spec = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
            kapi_errors_free(&errors);
        }
        kstore_model_free(&m);
    }
    if (!spec) {
        kstore_version_list_free(list, count);
        ksrv_respond_v2_error(response, 404, "unknown model \"%s\"", name);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON *versions = cJSON_AddArrayToObject(o, "versions");
    for (int i = 0; i < count; i++)
        cJSON_AddItemToArray(versions, cJSON_CreateString(list[i].version));
    cJSON_AddStringToObject(o, "platform", "kiln");
    cJSON *inputs = cJSON_AddArrayToObject(o, "inputs");
    for (int i = 0; i < spec->n_inputs; i++)
        cJSON_AddItemToArray(inputs, tensor_meta(&spec->values[i]));
    cJSON *outputs = cJSON_AddArrayToObject(o, "outputs");
    for (int j = 0; j < spec->n_outputs; j++)
        cJSON_AddItemToArray(outputs, tensor_meta(&spec->values[spec->outputs[j]]));
    kapi_model_spec_free(spec);
    kstore_version_list_free(list, count);
    ksrv_respond_json(response, 200, o);
}

void ksrv_handle_v2_model_ready(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    const char *name = request->params[0];
    kstore *store = store_or_500(server, response);
    if (!store) return;
    kstore_version version;
    bool ready = resolve_version(store, name, NULL, &version, response);
    kstore_version_free(&version);
    /* an unknown model keeps its 404 (and a store failure its 500) */
    if (!ready && (response->status != 404 || strstr(response->body, "unknown model"))) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddBoolToObject(o, "ready", ready);
    ksrv_respond_json(response, 200, o);
}

/* ---- infer -------------------------------------------------------------------------- */

typedef enum { DT_FLOAT, DT_INT, DT_UINT } dtype_class;

static bool parse_datatype(const char *name, dtype_class *out)
{
    static const struct {
        const char *name;
        dtype_class cls;
    } types[] = {{"FP32", DT_FLOAT},  {"FP64", DT_FLOAT}, {"INT8", DT_INT},   {"INT16", DT_INT},
                 {"INT32", DT_INT},   {"INT64", DT_INT},  {"UINT8", DT_UINT}, {"UINT16", DT_UINT},
                 {"UINT32", DT_UINT}, {"UINT64", DT_UINT}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(types[i].name, name)) {
            *out = types[i].cls;
            return true;
        }
    return false;
}

/* Where flattened values go: float32 rows, or int64 rows (indices, kept exact). */
typedef struct flat_out {
    kn_dtype dtype;
    void *data;
    int64_t capacity, count;
    const char *where; /* "inputs[1]" */
} flat_out;

/* Flattens nested number arrays row-major into out. */
static bool flatten(const cJSON *node, dtype_class cls, const char *datatype, flat_out *out,
                    char *error, size_t size)
{
    if (cJSON_IsArray(node)) {
        for (const cJSON *c = node->child; c; c = c->next)
            if (!flatten(c, cls, datatype, out, error, size)) return false;
        return true;
    }
    if (!cJSON_IsNumber(node)) {
        snprintf(error, size, "%s.data: expected numbers (flat or nested arrays), found a %s",
                 out->where,
                 cJSON_IsString(node) ? "string"
                 : cJSON_IsBool(node) ? "boolean"
                 : cJSON_IsNull(node) ? "null"
                                      : "object");
        return false;
    }
    double v = node->valuedouble;
    /* the model computes in float32: 1e400 (read as infinity) and 1e39 (finite, but not
     * as a float) would come back as null outputs */
    if (!isfinite(v) || fabs(v) > FLT_MAX) {
        snprintf(error, size,
                 "%s.data[%lld]: %s is not a finite float32 value (at most %g in magnitude)",
                 out->where, (long long)out->count,
                 isnan(v)   ? "NaN"
                 : isinf(v) ? "an infinity"
                            : "a number",
                 (double)FLT_MAX);
        return false;
    }
    if (cls != DT_FLOAT && v != floor(v)) {
        snprintf(error, size, "%s.data: %s data must be integers, found %g", out->where, datatype,
                 v);
        return false;
    }
    if (cls == DT_UINT && v < 0) {
        snprintf(error, size, "%s.data: %s data must not be negative, found %g", out->where,
                 datatype, v);
        return false;
    }
    /* JSON numbers are doubles: integers beyond 2^53 did not arrive exactly */
    if (out->dtype == KN_INT64 && fabs(v) > 9007199254740992.0) {
        snprintf(error, size,
                 "%s.data[%lld]: %g is beyond the integers a JSON number holds exactly (2^53)",
                 out->where, (long long)out->count, v);
        return false;
    }
    if (out->count < out->capacity) {
        if (out->dtype == KN_INT64)
            ((int64_t *)out->data)[out->count] = (int64_t)v;
        else
            ((float *)out->data)[out->count] = (float)v;
    }
    out->count++; /* counted past capacity so the mismatch can say how many there were */
    return true;
}

static void shape_text(const int64_t *shape, int ndim, bool batch, char *out, size_t size)
{
    int64_t full[KN_MAX_DIMS + 1];
    int n = 0;
    if (batch) full[n++] = -1;
    for (int i = 0; i < ndim && n <= KN_MAX_DIMS; i++) full[n++] = shape[i];
    kn_shape_str(full, n, out, size);
}

/* The parsed request: each model input's rows (float32 or int64, as the input is), and
 * which outputs to answer with. */
typedef struct parsed_infer {
    void *data[KN_GRAPH_MAX_INPUTS];
    int64_t n;
    bool softmax;
    bool want[KN_GRAPH_MAX_INPUTS];
    bool preprocessed; /* the inputs are already as the model takes them */
    const char *id;
} parsed_infer;

static void parsed_free(parsed_infer *p)
{
    for (int i = 0; i < KN_GRAPH_MAX_INPUTS; i++) free(p->data[i]);
}

static bool only_keys(const cJSON *o, const char *const *keys, int n, const char *where,
                      char *error, size_t size)
{
    for (const cJSON *c = o->child; c; c = c->next) {
        bool known = false;
        for (int i = 0; i < n && !known; i++) known = !strcmp(c->string, keys[i]);
        if (!known) {
            snprintf(error, size, "%s: unknown field \"%s\"", where, c->string);
            return false;
        }
    }
    return true;
}

/* "tokens, features": the names of the model's inputs (or outputs). */
static const char *value_names(const cache_entry *e, bool outputs, char *buf, size_t size)
{
    const kapi_model_spec *spec = e->spec;
    int n = outputs ? spec->n_outputs : spec->n_inputs;
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "",
                                 (outputs ? output_value(e, i) : input_value(e, i))->name);
    return buf;
}

/* "outputs": [{"name": ...}]: which of the model's outputs to answer with. */
static bool parse_outputs(const cJSON *outputs, const cache_entry *e, parsed_infer *p, char *error,
                          size_t size)
{
    const kapi_model_spec *spec = e->spec;
    char names[512];
    for (int j = 0; j < spec->n_outputs; j++) p->want[j] = !outputs;
    if (!outputs) return true;
    if (!cJSON_IsArray(outputs) || cJSON_GetArraySize(outputs) < 1) {
        snprintf(error, size, "outputs: expected an array of {\"name\": ...} naming %s",
                 value_names(e, true, names, sizeof names));
        return false;
    }
    int k = 0;
    for (const cJSON *o = outputs->child; o; o = o->next, k++) {
        const cJSON *n = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "name") : NULL;
        int found = -1;
        for (int j = 0; cJSON_IsString(n) && j < spec->n_outputs && found < 0; j++)
            if (!strcmp(n->valuestring, output_value(e, j)->name)) found = j;
        if (found < 0) {
            if (spec->n_outputs == 1)
                snprintf(error, size, "outputs: the model has one output, named \"%s\"",
                         output_value(e, 0)->name);
            else
                snprintf(error, size, "outputs[%d].name: expected one of the model's outputs (%s)",
                         k, value_names(e, true, names, sizeof names));
            return false;
        }
        p->want[found] = true;
    }
    return true;
}

/* Token indices outside the embedding are refused here, as torch's nn.Embedding refuses
 * them, so that one request's bad token never fails the others batched with it. */
static bool tokens_in_range(const cache_entry *e, int which, const int64_t *data, int64_t count,
                            const char *where, char *error, size_t size)
{
    int64_t rows = kapi_model_input_rows(e->spec, which, NULL);
    for (int64_t i = 0; rows >= 0 && i < count; i++)
        if (data[i] < 0 || data[i] >= rows) {
            snprintf(error, size,
                     "%s.data[%lld]: token %lld is outside the embedding's %lld rows (0 to %lld)",
                     where, (long long)i, (long long)data[i], (long long)rows, (long long)rows - 1);
            return false;
        }
    return true;
}

/* One input object of the request (inputs[k]): its name picks the model's input, its
 * rows go to p->data[that input]. */
static bool parse_input(const cJSON *in, int k, const cache_entry *e, parsed_infer *p, char *error,
                        size_t size)
{
    static const char *const input_keys[] = {"name", "shape", "datatype", "data", "parameters"};
    const kapi_model_spec *spec = e->spec;
    char where[32], names[512];
    snprintf(where, sizeof where, "inputs[%d]", k);
    if (!cJSON_IsObject(in)) {
        snprintf(error, size, "%s: expected an input object", where);
        return false;
    }
    if (!only_keys(in, input_keys, 5, where, error, size)) return false;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    int which = -1;
    for (int i = 0; cJSON_IsString(name) && i < spec->n_inputs && which < 0; i++)
        if (!strcmp(name->valuestring, input_value(e, i)->name)) which = i;
    if (which < 0 && spec->n_inputs == 1) {
        snprintf(error, size, "%s.name: the model has one input, named \"%s\"%s%.60s%s", where,
                 input_value(e, 0)->name, cJSON_IsString(name) ? ", got \"" : "",
                 cJSON_IsString(name) ? name->valuestring : "", cJSON_IsString(name) ? "\"" : "");
        return false;
    }
    if (which < 0) {
        snprintf(error, size, "%s.name: expected one of the model's inputs (%s)%s%.60s%s", where,
                 value_names(e, false, names, sizeof names), cJSON_IsString(name) ? ", got \"" : "",
                 cJSON_IsString(name) ? name->valuestring : "", cJSON_IsString(name) ? "\"" : "");
        return false;
    }
    if (p->data[which]) {
        snprintf(error, size, "%s.name: input \"%s\" is given twice", where, name->valuestring);
        return false;
    }
    const kapi_value_spec *v = input_value(e, which);
    const cJSON *datatype = cJSON_GetObjectItemCaseSensitive(in, "datatype");
    dtype_class cls;
    if (!cJSON_IsString(datatype) || !parse_datatype(datatype->valuestring, &cls)) {
        snprintf(error, size, "%s.datatype: expected %s, got %s", where,
                 v->dtype == KN_INT64 ? "INT64 (or INT8..INT32, UINT8..UINT64)"
                                      : "FP32 (or FP64, INT8..INT64, UINT8..UINT64)",
                 cJSON_IsString(datatype) ? datatype->valuestring : "no string");
        return false;
    }
    if (v->dtype == KN_INT64 && cls == DT_FLOAT) {
        snprintf(error, size,
                 "%s.datatype: input \"%s\" takes int64 indices: expected INT64 (or another "
                 "integer type), got %s",
                 where, v->name, datatype->valuestring);
        return false;
    }
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(in, "shape");
    int64_t dims[KN_MAX_DIMS + 1];
    int ndim = 0;
    bool shape_ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) >= 1 &&
                    cJSON_GetArraySize(shape) <= KN_MAX_DIMS + 1;
    for (const cJSON *d = shape_ok ? shape->child : NULL; d; d = d->next) {
        if (!cJSON_IsNumber(d) || d->valuedouble != floor(d->valuedouble) || d->valuedouble < 0 ||
            d->valuedouble > (double)MAX_REQUEST_VALUES) {
            shape_ok = false;
            break;
        }
        dims[ndim++] = (int64_t)d->valuedouble;
    }
    if (!shape_ok) {
        snprintf(error, size, "%s.shape: expected an array of 1 to %d non-negative integers", where,
                 KN_MAX_DIMS + 1);
        return false;
    }
    char want[128], got[128];
    shape_text(v->shape, v->ndim, true, want, sizeof want);
    kn_shape_str(dims, ndim, got, sizeof got);
    int64_t per_sample = 1;
    for (int i = 1; i < ndim && per_sample <= MAX_REQUEST_VALUES; i++) per_sample *= dims[i];
    if (ndim < 2 || dims[0] < 1 || per_sample != e->in_numel[which]) {
        snprintf(error, size, "%s.shape: expected %s (or [N, %lld]), got %s", where, want,
                 (long long)e->in_numel[which], got);
        return false;
    }
    if (dims[0] * per_sample > MAX_REQUEST_VALUES) {
        snprintf(error, size, "%s.shape: %s is more than %lld values", where, got,
                 (long long)MAX_REQUEST_VALUES);
        return false;
    }
    if (p->n && dims[0] != p->n) {
        snprintf(error, size, "%s.shape: %lld samples, but the inputs before have %lld", where,
                 (long long)dims[0], (long long)p->n);
        return false;
    }
    p->n = dims[0];
    int64_t need = p->n * per_sample;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(in, "data");
    if (!cJSON_IsArray(data)) {
        snprintf(error, size, "%s.data: expected an array of %lld numbers", where, (long long)need);
        return false;
    }
    p->data[which] = malloc((size_t)need * kn_dtype_size(v->dtype));
    if (!p->data[which]) {
        snprintf(error, size, "out of memory");
        return false;
    }
    flat_out out = {.dtype = v->dtype, .data = p->data[which], .capacity = need, .where = where};
    if (!flatten(data, cls, datatype->valuestring, &out, error, size)) return false;
    if (out.count != need) {
        snprintf(error, size, "%s.data: shape %s needs %lld values, got %lld", where, got,
                 (long long)need, (long long)out.count);
        return false;
    }
    return v->dtype != KN_INT64 ||
           tokens_in_range(e, which, p->data[which], need, where, error, size);
}

static bool parse_infer(const cJSON *body, const cache_entry *e, parsed_infer *p, char *error,
                        size_t size)
{
    static const char *const top_keys[] = {"id", "parameters", "inputs", "outputs"};
    if (!only_keys(body, top_keys, 4, "request", error, size)) return false;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(body, "id");
    if (id && !cJSON_IsString(id)) {
        snprintf(error, size, "id: expected a string");
        return false;
    }
    p->id = id ? id->valuestring : NULL;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(body, "parameters");
    if (params && !cJSON_IsObject(params)) {
        snprintf(error, size, "parameters: expected an object");
        return false;
    }
    const cJSON *softmax = params ? cJSON_GetObjectItemCaseSensitive(params, "softmax") : NULL;
    if (softmax && !cJSON_IsBool(softmax)) {
        snprintf(error, size, "parameters.softmax: expected true or false");
        return false;
    }
    p->softmax = softmax && cJSON_IsTrue(softmax);
    const cJSON *preprocessed =
        params ? cJSON_GetObjectItemCaseSensitive(params, "preprocessed") : NULL;
    if (preprocessed && !cJSON_IsBool(preprocessed)) {
        snprintf(error, size, "parameters.preprocessed: expected true or false");
        return false;
    }
    p->preprocessed = preprocessed && cJSON_IsTrue(preprocessed);
    if (!parse_outputs(cJSON_GetObjectItemCaseSensitive(body, "outputs"), e, p, error, size))
        return false;
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(body, "inputs");
    int n_inputs = e->spec->n_inputs;
    char names[512];
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != n_inputs) {
        if (n_inputs == 1)
            snprintf(error, size,
                     "inputs: expected an array with one input object (the model has one "
                     "input, \"%s\")",
                     input_value(e, 0)->name);
        else
            snprintf(error, size,
                     "inputs: expected an array of %d input objects, one for each of the "
                     "model's inputs (%s)",
                     n_inputs, value_names(e, false, names, sizeof names));
        return false;
    }
    int k = 0;
    for (const cJSON *in = inputs->child; in; in = in->next, k++)
        if (!parse_input(in, k, e, p, error, size)) return false;
    return true;
}

/* A float as the shortest decimal that reads back as the same float. */
static double float_number(float f)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", (double)f);
    return strtod(buf, NULL);
}

/* Each row of a [n, classes] float output as probabilities (the request's softmax). */
static void softmax_rows(float *out, int64_t n, int64_t classes)
{
    for (int64_t i = 0; i < n; i++) {
        float *row = out + i * classes, max = row[0];
        for (int64_t k = 1; k < classes; k++) max = row[k] > max ? row[k] : max;
        double sum = 0;
        for (int64_t k = 0; k < classes; k++) sum += exp((double)(row[k] - max));
        for (int64_t k = 0; k < classes; k++) row[k] = (float)(exp((double)(row[k] - max)) / sum);
    }
}

static cJSON *infer_response(const cache_entry *e, const parsed_infer *p, void *const *outs)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_name", e->model);
    cJSON_AddStringToObject(o, "model_version", e->version);
    if (p->id) cJSON_AddStringToObject(o, "id", p->id);
    cJSON *outputs = cJSON_AddArrayToObject(o, "outputs");
    for (int j = 0; j < e->spec->n_outputs; j++) {
        if (!p->want[j]) continue;
        const kapi_value_spec *v = output_value(e, j);
        int64_t count = p->n * e->out_numel[j];
        if (p->softmax && v->ndim == 1 && v->dtype == KN_FLOAT32)
            softmax_rows(outs[j], p->n, e->out_numel[j]);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToArray(outputs, t);
        cJSON_AddStringToObject(t, "name", v->name);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)p->n));
        for (int i = 0; i < v->ndim; i++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)v->shape[i]));
        cJSON_AddStringToObject(t, "datatype", datatype_of(v));
        cJSON *data = cJSON_AddArrayToObject(t, "data");
        for (int64_t i = 0; i < count; i++)
            cJSON_AddItemToArray(
                data, cJSON_CreateNumber(v->dtype == KN_INT64
                                             ? (double)((const int64_t *)outs[j])[i]
                                             : float_number(((const float *)outs[j])[i])));
    }
    return o;
}

static void record_latency(ksrv_stats *stats, double seconds)
{
    int bucket = 11;
    for (int i = 0; i < 11; i++)
        if (seconds <= ksrv_infer_bucket_bounds[i]) {
            bucket = i;
            break;
        }
    pthread_mutex_lock(&stats->lock);
    stats->infer_buckets[bucket]++;
    stats->infer_count++;
    stats->infer_sum += seconds;
    pthread_mutex_unlock(&stats->lock);
}

/* ksrv_parse_body answers with the v1 error body; v2 routes say {"error": "..."}. */
static void v2_body_error(ksrv_response *response)
{
    cJSON *v1 = response->body ? cJSON_Parse(response->body) : NULL;
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(v1, "error");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
    ksrv_respond_v2_error(response, response->status ? response->status : 400, "%s",
                          cJSON_IsString(message) ? message->valuestring : "invalid body");
    cJSON_Delete(v1);
}

void ksrv_handle_v2_infer(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    double start = mono_now();
    const char *model = request->params[0];
    const char *given = request->n_params > 1 ? request->params[1] : NULL;
    kstore *store = store_or_500(server, response);
    kstore_version version;
    if (!store || !resolve_version(store, model, given, &version, response)) return;
    cJSON *body = ksrv_parse_body(request, response);
    if (!body) {
        kstore_version_free(&version);
        v2_body_error(response);
        return;
    }
    char error[512] = "";
    cache_entry *e = cache_get(server->models, store, &version, error, sizeof error);
    kstore_version_free(&version);
    if (!e) {
        cJSON_Delete(body);
        ksrv_respond_v2_error(response, 500, "loading %s version %s: %s", model, version.version,
                              error);
        return;
    }
    parsed_infer p = {0};
    if (!parse_infer(body, e, &p, error, sizeof error)) {
        ksrv_respond_v2_error(response, 400, "%s", error);
    } else if (!p.preprocessed &&
               kapi_preprocess(&e->preprocessing, p.data[0], p.n, e->in_numel[0]) != KN_OK) {
        ksrv_respond_v2_error(response, 500, "preprocessing the inputs: %s", kn_last_error());
    } else {
        infer_request req = {.n = p.n};
        memcpy(req.inputs, p.data, sizeof req.inputs);
        infer_batched(e, &req, &server->stats);
        bool answered = !req.error[0];
        for (int j = 0; answered && j < e->spec->n_outputs; j++) answered = req.outputs[j];
        if (!answered)
            ksrv_respond_v2_error(response, 500, "%s", req.error[0] ? req.error : "no output");
        else
            ksrv_respond_json(response, 200, infer_response(e, &p, req.outputs));
        for (int j = 0; j < KN_GRAPH_MAX_INPUTS; j++) free(req.outputs[j]);
    }
    parsed_free(&p);
    entry_release(server->models, e); /* after the response: it reads e's names */
    cJSON_Delete(body);
    record_latency(&server->stats, mono_now() - start);
}

/*
 * inference.c — the Open Inference Protocol v2 (KServe/Triton REST) routes and the
 * model cache behind them.
 *
 * A model's versions are its succeeded jobs (newest first, the default); a version is
 * loaded from the job's spec and its final weights and kept in an LRU cache keyed by
 * (model, version), bounded in entries (--model-cache-entries) and in the bytes of their
 * parameters and buffers (--model-cache-bytes). A request holds (pins) the entry it uses
 * from the look-up to its answer: eviction takes only entries nobody holds, so the cache
 * may run over its bounds while every entry is in use and shrinks back as they are let
 * go (the last holder of an entry over the bounds frees it). Concurrent requests to one
 * loaded version are batched: each
 * request enqueues its samples; one thread becomes the leader, takes what is queued,
 * stacks all inputs, runs one forward (eval mode, no grad) and hands each request its
 * rows; the others wait on a condition variable, and those that arrived during the
 * forward make the next batch. No request waits for others to come: a lone request runs
 * at once, and under load the batches grow by themselves (Triton's dynamic batcher with
 * no queue delay).
 *
 * Outputs are the model's raw outputs (logits for a classifier). A request-level
 * "parameters": {"softmax": true} turns each row of a [N, classes] output into
 * probabilities. Inputs may be FP32, FP64 or any INT/UINT type (converted to float32),
 * with a shape [N, ...] whose per-sample element count matches the model's input_shape
 * (so [N, 784] feeds a [1, 28, 28] model); data is flat or nested, row-major. A model
 * whose first layer is an embedding takes integer types only (its metadata says INT64),
 * each value a row of the embedding, and gets them as int64 indices.
 */
#include "ksrv.h"

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

typedef struct infer_request {
    const float *input;
    int64_t n;     /* samples */
    float *output; /* n * out_numel, malloc'd by the leader */
    char error[256];
    bool done;
    struct infer_request *next;
} infer_request;

typedef struct cache_entry {
    char model[128], version[40];
    kapi_model_spec *spec;
    kn_module *module;
    kapi_tokenizer *tokenizer; /* a text model's (its weights' kiln.tokenizer); else NULL */
    int64_t in_numel, out_numel;
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
    if (e) kapi_tokenizer_free(e->tokenizer);
    if (!e) return;
    kn_module_free(e->module);
    kapi_model_spec_free(e->spec);
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

/* The model spec a version (a job) was trained with: inline, or the stored model it
 * named. NULL with a message. */
static kapi_model_spec *version_spec(kstore *store, const char *version, char *error, size_t size)
{
    kstore_job job;
    memset(&job, 0, sizeof job);
    if (kstore_job_get(store, version, &job) != KSTORE_OK) {
        snprintf(error, size, "unknown version \"%s\"", version);
        return NULL;
    }
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = false};
    kapi_job_spec *spec =
        job.spec_json ? kapi_job_spec_parse(job.spec_json, strlen(job.spec_json), options, &errors)
                      : NULL;
    kapi_model_spec *model = NULL;
    if (spec && spec->model) {
        model = spec->model;
        spec->model = NULL; /* taken over */
    } else if (spec) {
        kstore_model m;
        memset(&m, 0, sizeof m);
        if (kstore_model_get(store, job.model_name, &m) == KSTORE_OK)
            model = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
        kstore_model_free(&m);
    }
    if (!model) snprintf(error, size, "the model spec of version %s cannot be read", version);
    kapi_errors_free(&errors);
    kapi_job_spec_free(spec);
    kstore_job_free(&job);
    return model;
}

static int64_t numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* Builds a version's module from its spec and final weights, in eval mode. */
static cache_entry *entry_load(ksrv_server *server, kstore *store, const char *model,
                               const char *version, char *error, size_t size)
{
    cache_entry *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(error, size, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    snprintf(e->model, sizeof e->model, "%.127s", model);
    snprintf(e->version, sizeof e->version, "%.39s", version);
    e->spec = version_spec(store, version, error, size);
    if (!e->spec) goto fail;
    kstore_checkpoint weights;
    char path[1024];
    if (kstore_checkpoint_latest(store, version, "final", &weights) != KSTORE_OK ||
        !ksrv_data_path(server, weights.path, path, sizeof path)) {
        snprintf(error, size, "version %s has no final weights", version);
        goto fail;
    }
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
    kapi_errors errors = {0};
    bool text_model = false;
    e->tokenizer = kapi_load_tokenizer(path, "weights", &text_model, &errors);
    if (text_model && !e->tokenizer) {
        snprintf(error, size, "the tokenizer of version %s: %s", version,
                 errors.count ? errors.items[0].message : "unreadable");
        kapi_errors_free(&errors);
        goto fail;
    }
    kapi_errors_free(&errors);
    kn_module_train(e->module, false);
    e->in_numel = numel(e->spec->input_shape, e->spec->input_ndim);
    e->out_numel = numel(e->spec->output_shape, e->spec->output_ndim);
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

/* Unlinks least recently used entries that nobody holds while the cache is over its
 * bounds; they go on *victims, for entry_free outside the lock. Cache lock held. */
static void evict(ksrv_model_cache *cache, cache_entry **victims)
{
    while (over_bounds(cache)) {
        cache_entry **victim = NULL;
        for (cache_entry **p = &cache->entries; *p; p = &(*p)->next)
            if ((*p)->refs == 0 && (!victim || (*p)->last_used < (*victim)->last_used)) victim = p;
        if (!victim) return; /* every entry is in use: the last release shrinks it */
        cache_entry *gone = *victim;
        *victim = gone->next;
        cache->stats.entries--;
        cache->stats.bytes -= gone->bytes;
        cache->stats.evictions++;
        gone->next = *victims;
        *victims = gone;
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
static cache_entry *cache_get(ksrv_model_cache *cache, kstore *store, const char *model,
                              const char *version, char *error, size_t size)
{
    pthread_mutex_lock(&cache->lock);
    for (cache_entry *e = cache->entries; e; e = e->next) {
        if (!strcmp(e->model, model) && !strcmp(e->version, version)) {
            e->refs++;
            e->last_used = ++cache->clock;
            pthread_mutex_unlock(&cache->lock);
            return e;
        }
    }
    pthread_mutex_unlock(&cache->lock);

    /* loading happens outside the lock; a racing load of the same version loses */
    cache_entry *loaded = entry_load(cache->server, store, model, version, error, size);
    if (!loaded) return NULL;
    cache_entry *victims = NULL, *found = NULL;
    pthread_mutex_lock(&cache->lock);
    for (cache_entry *e = cache->entries; e && !found; e = e->next)
        if (!strcmp(e->model, model) && !strcmp(e->version, version)) found = e;
    if (found) {
        loaded->next = victims; /* the duplicate is freed below, outside the lock */
        victims = loaded;
        loaded = found;
    } else {
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
    e->refs--;
    evict(cache, &victims); /* what was kept over the bounds while in use */
    pthread_mutex_unlock(&cache->lock);
    free_victims(victims);
}

/* ---- batching --------------------------------------------------------------------- */

/* One forward over the requests of a batch; each gets its rows or an error. */
static void run_batch(cache_entry *e, infer_request *batch)
{
    int64_t total = 0;
    for (infer_request *r = batch; r; r = r->next) total += r->n;
    char error[256] = "";
    float *stacked = malloc((size_t)(total * e->in_numel) * sizeof(float));
    float *out = NULL;
    if (!stacked) {
        snprintf(error, sizeof error, "out of memory");
    } else {
        int64_t at = 0;
        for (infer_request *r = batch; r; r = r->next) {
            memcpy(stacked + at * e->in_numel, r->input,
                   (size_t)(r->n * e->in_numel) * sizeof(float));
            at += r->n;
        }
        int64_t shape[KN_MAX_DIMS + 1];
        shape[0] = total;
        memcpy(shape + 1, e->spec->input_shape, sizeof(int64_t) * (size_t)e->spec->input_ndim);
        kn_no_grad_begin();
        kn_scope_begin();
        /* token indices for an embedding (issue 12): checked integers, exact below 2^24 */
        kn_tensor *x = kn_to_dtype(kn_from_floats(stacked, shape, e->spec->input_ndim + 1),
                                   e->spec->input_dtype);
        kn_tensor *y = kn_contiguous(kn_module_forward(e->module, x));
        if (!y) {
            snprintf(error, sizeof error, "forward: %s", kn_last_error());
        } else if (kn_numel(y) != total * e->out_numel || y->dtype != KN_FLOAT32) {
            snprintf(error, sizeof error, "the model gave %lld values for %lld samples",
                     (long long)kn_numel(y), (long long)total);
        } else {
            out = kn_data_f32(y);
            int64_t at2 = 0;
            for (infer_request *r = batch; r; r = r->next) {
                r->output = malloc((size_t)(r->n * e->out_numel) * sizeof(float));
                if (r->output)
                    memcpy(r->output, out + at2 * e->out_numel,
                           (size_t)(r->n * e->out_numel) * sizeof(float));
                else
                    snprintf(r->error, sizeof r->error, "out of memory");
                at2 += r->n;
            }
        }
        kn_scope_end();
        kn_no_grad_end();
        free(stacked);
    }
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

/* The version to serve (given, or the newest) into out; false with a 404 response. */
/* The version `given` names (NULL: the newest) into out; else the HTTP status (404, 500)
 * with message. */
static int find_version(kstore *store, const char *model, const char *given, char out[40],
                        int *n_versions, char *message, size_t size)
{
    char(*ids)[40] = NULL;
    int count = 0;
    if (kstore_model_versions(store, model, &ids, &count) != KSTORE_OK) {
        snprintf(message, size, "reading the versions of %s: %s", model, kstore_last_error(store));
        return 500;
    }
    if (n_versions) *n_versions = count;
    int status = 0;
    if (given) {
        status = 404;
        for (int i = 0; i < count && status; i++)
            if (!strcmp(ids[i], given)) {
                memcpy(out, ids[i], 40);
                status = 0;
            }
        if (status) snprintf(message, size, "unknown version \"%s\" of model \"%s\"", given, model);
    } else if (count > 0) {
        snprintf(out, 40, "%s", ids[0]);
    } else {
        kstore_model m;
        memset(&m, 0, sizeof m);
        bool exists = kstore_model_get(store, model, &m) == KSTORE_OK;
        kstore_model_free(&m);
        status = 404;
        if (exists)
            snprintf(message, size, "model \"%s\" has no version yet: no job of it has succeeded",
                     model);
        else
            snprintf(message, size, "unknown model \"%s\"", model);
    }
    free(ids);
    return status;
}

static bool resolve_version(kstore *store, const char *model, const char *given, char out[40],
                            int *n_versions, ksrv_response *response)
{
    char message[400];
    int status = find_version(store, model, given, out, n_versions, message, sizeof message);
    if (status) ksrv_respond_v2_error(response, status, "%s", message);
    return status == 0;
}

int ksrv_model_hold(ksrv_server *server, kstore *store, const char *model, const char *version,
                    ksrv_held_model *out, char *message, size_t size)
{
    memset(out, 0, sizeof *out);
    int status = find_version(store, model, version, out->version, NULL, message, size);
    if (status) return status;
    cache_entry *e = cache_get(server->models, store, model, out->version, message, size);
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

static cJSON *tensor_meta(const char *name, const int64_t *shape, int ndim, kn_dtype dtype)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "datatype", dtype == KN_INT64 ? "INT64" : "FP32");
    cJSON *s = cJSON_AddArrayToObject(o, "shape");
    cJSON_AddItemToArray(s, cJSON_CreateNumber(-1));
    for (int i = 0; i < ndim; i++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[i]));
    return o;
}

void ksrv_handle_v2_model(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    const char *name = request->params[0];
    kstore *store = store_or_500(server, response);
    if (!store) return;
    char(*ids)[40] = NULL;
    int count = 0;
    if (kstore_model_versions(store, name, &ids, &count) != KSTORE_OK) {
        ksrv_respond_v2_error(response, 500, "%s", kstore_last_error(store));
        return;
    }
    /* the newest version's spec; a model never trained describes itself */
    char error[256] = "";
    kapi_model_spec *spec = count > 0 ? version_spec(store, ids[0], error, sizeof error) : NULL;
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
        free(ids);
        ksrv_respond_v2_error(response, 404, "unknown model \"%s\"", name);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON *versions = cJSON_AddArrayToObject(o, "versions");
    for (int i = 0; i < count; i++) cJSON_AddItemToArray(versions, cJSON_CreateString(ids[i]));
    cJSON_AddStringToObject(o, "platform", "kiln");
    cJSON *inputs = cJSON_AddArrayToObject(o, "inputs");
    cJSON_AddItemToArray(
        inputs, tensor_meta("input", spec->input_shape, spec->input_ndim, spec->input_dtype));
    cJSON *outputs = cJSON_AddArrayToObject(o, "outputs");
    cJSON_AddItemToArray(outputs,
                         tensor_meta("output", spec->output_shape, spec->output_ndim, KN_FLOAT32));
    kapi_model_spec_free(spec);
    free(ids);
    ksrv_respond_json(response, 200, o);
}

void ksrv_handle_v2_model_ready(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    const char *name = request->params[0];
    kstore *store = store_or_500(server, response);
    if (!store) return;
    char version[40];
    int count = 0;
    bool ready = resolve_version(store, name, NULL, version, &count, response);
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

/* Flattens nested number arrays row-major into out (capacity values). */
static bool flatten(const cJSON *node, dtype_class cls, const char *datatype, float *out,
                    int64_t capacity, int64_t *count, char *error, size_t size)
{
    if (cJSON_IsArray(node)) {
        for (const cJSON *c = node->child; c; c = c->next)
            if (!flatten(c, cls, datatype, out, capacity, count, error, size)) return false;
        return true;
    }
    if (!cJSON_IsNumber(node)) {
        snprintf(error, size,
                 "inputs[0].data: expected numbers (flat or nested arrays), found "
                 "a %s",
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
                 "inputs[0].data[%lld]: %s is not a finite float32 value (at most %g in "
                 "magnitude)",
                 (long long)*count,
                 isnan(v)   ? "NaN"
                 : isinf(v) ? "an infinity"
                            : "a number",
                 (double)FLT_MAX);
        return false;
    }
    if (cls != DT_FLOAT && v != floor(v)) {
        snprintf(error, size, "inputs[0].data: %s data must be integers, found %g", datatype, v);
        return false;
    }
    if (cls == DT_UINT && v < 0) {
        snprintf(error, size, "inputs[0].data: %s data must not be negative, found %g", datatype,
                 v);
        return false;
    }
    if (*count < capacity) out[*count] = (float)v;
    (*count)++; /* counted past capacity so the mismatch can say how many there were */
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

/* The parsed request: one input as float32 [n, in_numel]. */
typedef struct parsed_infer {
    float *data;
    int64_t n;
    bool softmax;
    const char *id;
} parsed_infer;

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

/* A model whose first layer takes int64 indices (issue 12: an embedding) takes integer
 * data of its range, as torch's nn.Embedding refuses float indices: checked here so that
 * one request's bad token never fails the others batched with it. */
static bool token_indices(const cache_entry *e, const parsed_infer *p, const char *datatype,
                          dtype_class cls, char *error, size_t size)
{
    if (e->spec->input_dtype != KN_INT64) return true;
    if (cls == DT_FLOAT) {
        snprintf(error, size,
                 "inputs[0].datatype: the model takes token indices (its first layer is an "
                 "embedding): expected INT64 (or another integer type), got %s",
                 datatype);
        return false;
    }
    const kapi_layer_spec *first = &e->spec->layers[0];
    int64_t vocab =
        first->kind == KN_MODULE_EMBEDDING ? first->options.embedding.num_embeddings : INT64_MAX;
    for (int64_t i = 0; i < p->n * e->in_numel; i++) {
        double v = p->data[i];
        if (v >= 16777216.0) { /* the values travel as float32 here */
            snprintf(error, size,
                     "inputs[0].data[%lld]: token %.0f is beyond 16777215, the largest index "
                     "this route carries exactly",
                     (long long)i, v);
            return false;
        }
        if (v < 0 || v >= (double)vocab) {
            snprintf(error, size,
                     "inputs[0].data[%lld]: token %.0f is outside the embedding's %lld rows "
                     "(0 to %lld)",
                     (long long)i, v, (long long)vocab, (long long)vocab - 1);
            return false;
        }
    }
    return true;
}

static bool parse_infer(const cJSON *body, const cache_entry *e, parsed_infer *p, char *error,
                        size_t size)
{
    static const char *const top_keys[] = {"id", "parameters", "inputs", "outputs"};
    static const char *const input_keys[] = {"name", "shape", "datatype", "data", "parameters"};
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
    const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(body, "outputs");
    if (outputs) {
        if (!cJSON_IsArray(outputs)) {
            snprintf(error, size, "outputs: expected an array of {\"name\": \"output\"}");
            return false;
        }
        for (const cJSON *o = outputs->child; o; o = o->next) {
            const cJSON *n = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "name") : NULL;
            if (!cJSON_IsString(n) || strcmp(n->valuestring, "output") != 0) {
                snprintf(error, size, "outputs: the model has one output, named \"output\"");
                return false;
            }
        }
    }
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(body, "inputs");
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != 1 ||
        !cJSON_IsObject(inputs->child)) {
        snprintf(error, size,
                 "inputs: expected an array with one input object (the model has "
                 "one input, \"input\")");
        return false;
    }
    const cJSON *in = inputs->child;
    if (!only_keys(in, input_keys, 5, "inputs[0]", error, size)) return false;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    if (!cJSON_IsString(name) || strcmp(name->valuestring, "input") != 0) {
        snprintf(error, size, "inputs[0].name: the model has one input, named \"input\"%s%.60s%s",
                 cJSON_IsString(name) ? ", got \"" : "",
                 cJSON_IsString(name) ? name->valuestring : "", cJSON_IsString(name) ? "\"" : "");
        return false;
    }
    const cJSON *datatype = cJSON_GetObjectItemCaseSensitive(in, "datatype");
    dtype_class cls;
    if (!cJSON_IsString(datatype) || !parse_datatype(datatype->valuestring, &cls)) {
        snprintf(error, size,
                 "inputs[0].datatype: expected FP32 (or FP64, INT8..INT64, "
                 "UINT8..UINT64), got %s",
                 cJSON_IsString(datatype) ? datatype->valuestring : "no string");
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
        snprintf(error, size,
                 "inputs[0].shape: expected an array of 1 to %d non-negative "
                 "integers",
                 KN_MAX_DIMS + 1);
        return false;
    }
    char want[128], got[128];
    shape_text(e->spec->input_shape, e->spec->input_ndim, true, want, sizeof want);
    kn_shape_str(dims, ndim, got, sizeof got);
    int64_t per_sample = 1;
    for (int i = 1; i < ndim && per_sample <= MAX_REQUEST_VALUES; i++) per_sample *= dims[i];
    if (ndim < 2 || dims[0] < 1 || per_sample != e->in_numel) {
        snprintf(error, size, "inputs[0].shape: expected %s (or [N, %lld]), got %s", want,
                 (long long)e->in_numel, got);
        return false;
    }
    if (dims[0] * per_sample > MAX_REQUEST_VALUES) {
        snprintf(error, size, "inputs[0].shape: %s is more than %lld values", got,
                 (long long)MAX_REQUEST_VALUES);
        return false;
    }
    p->n = dims[0];
    int64_t need = p->n * e->in_numel, have = 0;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(in, "data");
    if (!cJSON_IsArray(data)) {
        snprintf(error, size, "inputs[0].data: expected an array of %lld numbers", (long long)need);
        return false;
    }
    p->data = malloc((size_t)need * sizeof(float));
    if (!p->data) {
        snprintf(error, size, "out of memory");
        return false;
    }
    if (!flatten(data, cls, datatype->valuestring, p->data, need, &have, error, size)) return false;
    if (have != need) {
        snprintf(error, size, "inputs[0].data: shape %s needs %lld values, got %lld", got,
                 (long long)need, (long long)have);
        return false;
    }
    return token_indices(e, p, datatype->valuestring, cls, error, size);
}

/* A float as the shortest decimal that reads back as the same float. */
static double float_number(float f)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", (double)f);
    return strtod(buf, NULL);
}

static cJSON *infer_response(const cache_entry *e, const parsed_infer *p, float *out)
{
    int64_t classes = e->out_numel;
    if (p->softmax && e->spec->output_ndim == 1) {
        for (int64_t i = 0; i < p->n; i++) {
            float *row = out + i * classes, max = row[0];
            for (int64_t k = 1; k < classes; k++) max = row[k] > max ? row[k] : max;
            double sum = 0;
            for (int64_t k = 0; k < classes; k++) sum += exp((double)(row[k] - max));
            for (int64_t k = 0; k < classes; k++)
                row[k] = (float)(exp((double)(row[k] - max)) / sum);
        }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_name", e->model);
    cJSON_AddStringToObject(o, "model_version", e->version);
    if (p->id) cJSON_AddStringToObject(o, "id", p->id);
    cJSON *outputs = cJSON_AddArrayToObject(o, "outputs");
    cJSON *t = cJSON_CreateObject();
    cJSON_AddItemToArray(outputs, t);
    cJSON_AddStringToObject(t, "name", "output");
    cJSON *shape = cJSON_AddArrayToObject(t, "shape");
    cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)p->n));
    for (int i = 0; i < e->spec->output_ndim; i++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->spec->output_shape[i]));
    cJSON_AddStringToObject(t, "datatype", "FP32");
    cJSON *data = cJSON_AddArrayToObject(t, "data");
    for (int64_t i = 0; i < p->n * classes; i++)
        cJSON_AddItemToArray(data, cJSON_CreateNumber(float_number(out[i])));
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
    char version[40];
    if (!store || !resolve_version(store, model, given, version, NULL, response)) return;
    cJSON *body = ksrv_parse_body(request, response);
    if (!body) {
        v2_body_error(response);
        return;
    }
    char error[512] = "";
    cache_entry *e = cache_get(server->models, store, model, version, error, sizeof error);
    if (!e) {
        cJSON_Delete(body);
        ksrv_respond_v2_error(response, 500, "loading %s version %s: %s", model, version, error);
        return;
    }
    parsed_infer p = {0};
    if (!parse_infer(body, e, &p, error, sizeof error)) {
        ksrv_respond_v2_error(response, 400, "%s", error);
    } else {
        infer_request req = {.input = p.data, .n = p.n};
        infer_batched(e, &req, &server->stats);
        if (req.error[0] || !req.output)
            ksrv_respond_v2_error(response, 500, "%s", req.error[0] ? req.error : "no output");
        else
            ksrv_respond_json(response, 200, infer_response(e, &p, req.output));
        free(req.output);
    }
    free(p.data);
    entry_release(server->models, e); /* after the response: it reads e's names */
    cJSON_Delete(body);
    record_latency(&server->stats, mono_now() - start);
}

/*
 * routes_samples.c — GET /v1/datasets/{name}/samples?split=test&offset=0&limit=16: a page
 * of a stored dataset's samples as JSON, for the dashboard's "pick a test image":
 *   {"dataset", "split", "total", "shape": [per-sample], "samples": [{"index", "label",
 *    "data": [flat floats as stored, unscaled]}]}
 * The split's files are found in the store as the workers find them (role prefixes
 * train/test, formats idx, npy, csv) and parsed with kapi_load_data_source. Parsed
 * splits are kept in a small in-memory cache (a few entries, a byte budget) keyed by
 * the files' paths, sizes and modification times, so paging through a split parses it
 * once and a re-upload is seen at once.
 */
#define _GNU_SOURCE /* struct stat's st_mtim */
#include "ksrv_http.h"
#include "routes_v1.h"

#include "kn_data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_LIMIT 256
#define CACHE_ENTRIES 4
#define CACHE_BYTES ((size_t)512 << 20) /* parsed inputs held at most, all entries */

/* ---- the cache ---------------------------------------------------------------------- */
typedef struct entry {
    char key[2048];
    kn_dataset *ds;
    size_t bytes;
    int refs;           /* requests reading ds now: it is freed when the last one ends */
    bool evicted;       /* out of the table; freed by the last reader */
    unsigned long used; /* LRU clock */
} entry;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static entry *cache[CACHE_ENTRIES];
static unsigned long cache_clock;

static void entry_free(entry *e)
{
    kn_dataset_free(e->ds);
    free(e);
}

/* A cached dataset for key with one reference taken, or NULL. */
static entry *cache_get(const char *key)
{
    entry *found = NULL;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (cache[i] && !strcmp(cache[i]->key, key)) {
            found = cache[i];
            found->refs++;
            found->used = ++cache_clock;
            break;
        }
    pthread_mutex_unlock(&cache_lock);
    return found;
}

static void cache_release(entry *e)
{
    pthread_mutex_lock(&cache_lock);
    bool free_it = --e->refs == 0 && e->evicted;
    pthread_mutex_unlock(&cache_lock);
    if (free_it) entry_free(e);
}

/* Drops the table's hold on slot i (the caller holds the lock); returns the entry when
 * nobody reads it, for freeing outside the lock. */
static entry *evict(int i)
{
    entry *e = cache[i];
    cache[i] = NULL;
    e->evicted = true;
    return e->refs == 0 ? e : NULL;
}

/* Inserts a freshly parsed dataset (one reference taken for the caller). Another
 * request may have parsed the same split meanwhile: then that entry is used and ours
 * freed. Too big for the budget: returned uncached (evicted, freed on release). */
static entry *cache_put(entry *e)
{
    entry *dropped[CACHE_ENTRIES] = {0};
    int n_dropped = 0;
    e->refs = 1;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (cache[i] && !strcmp(cache[i]->key, e->key)) {
            entry *winner = cache[i];
            winner->refs++;
            winner->used = ++cache_clock;
            pthread_mutex_unlock(&cache_lock);
            entry_free(e);
            return winner;
        }
    if (e->bytes > CACHE_BYTES) {
        e->evicted = true;
        pthread_mutex_unlock(&cache_lock);
        return e;
    }
    for (;;) {
        size_t total = e->bytes;
        int free_slot = -1, oldest = -1;
        for (int i = 0; i < CACHE_ENTRIES; i++) {
            if (!cache[i]) {
                if (free_slot < 0) free_slot = i;
                continue;
            }
            total += cache[i]->bytes;
            if (oldest < 0 || cache[i]->used < cache[oldest]->used) oldest = i;
        }
        if (free_slot >= 0 && total <= CACHE_BYTES) {
            e->used = ++cache_clock;
            cache[free_slot] = e;
            break;
        }
        entry *gone = evict(oldest);
        if (gone) dropped[n_dropped++] = gone;
    }
    pthread_mutex_unlock(&cache_lock);
    for (int i = 0; i < n_dropped; i++) entry_free(dropped[i]);
    return e;
}

void ksrv_samples_cache_clear(void)
{
    entry *dropped[CACHE_ENTRIES] = {0};
    int n = 0;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (cache[i]) {
            entry *gone = evict(i);
            if (gone) dropped[n++] = gone;
        }
    pthread_mutex_unlock(&cache_lock);
    for (int i = 0; i < n; i++) entry_free(dropped[i]);
}

/* ---- finding and parsing a split ------------------------------------------------------ */
/* The source of split from the dataset's files, as the workers read them, and the
 * cache key (absolute paths, sizes, mtimes). false with the response set. */
static bool split_source(ksrv_server *server, const kstore_dataset *ds, const char *split,
                         kapi_data_source *out, char *key, size_t key_size, ksrv_response *response)
{
    memset(out, 0, sizeof *out);
    size_t n = strlen(split), used = (size_t)snprintf(key, key_size, "%s", split);
    for (int i = 0; i < ds->n_files; i++) {
        const kstore_dataset_file *f = &ds->files[i];
        if (strncmp(f->role, split, n) != 0) continue;
        const char *rest = f->role + n;
        char *target = NULL;
        if (!strcmp(rest, "") || !strcmp(rest, "_images") || !strcmp(rest, "_inputs") ||
            !strcmp(rest, "_csv"))
            target = out->inputs_path;
        else if (!strcmp(rest, "_labels"))
            target = out->labels_path;
        if (!target) continue;
        if (!strcmp(f->format, "idx"))
            out->format = KAPI_FORMAT_IDX;
        else if (!strcmp(f->format, "npy"))
            out->format = KAPI_FORMAT_NPY;
        else if (!strcmp(f->format, "csv"))
            out->format = KAPI_FORMAT_CSV;
        else {
            ksrv_respond_error(response, 422, "invalid_data", NULL,
                               "dataset %s: file %s has format %s, which cannot be read", ds->name,
                               f->role, f->format);
            return false;
        }
        if (!ksrv_data_path(server, f->path, target, sizeof out->inputs_path)) {
            ksrv_respond_error(response, 500, "internal", NULL,
                               "dataset %s: file %s: path too "
                               "long",
                               ds->name, f->role);
            return false;
        }
        struct stat st;
        long long mtime = stat(target, &st) == 0
                              ? (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec
                              : -1;
        if (used < key_size)
            used += (size_t)snprintf(key + used, key_size - used, "|%s|%lld|%lld", target,
                                     (long long)f->bytes, mtime);
        out->present = true;
    }
    if (!out->present) {
        ksrv_respond_error(response, 404, "split_not_found", "split", "dataset %s has no %s files",
                           ds->name, split);
        return false;
    }
    if (out->format != KAPI_FORMAT_CSV && (!out->inputs_path[0] || !out->labels_path[0])) {
        ksrv_respond_error(response, 422, "dataset_incomplete", "split",
                           "dataset %s: %s needs both %s_images (or %s_inputs) and %s_labels",
                           ds->name, split, split, split, split);
        return false;
    }
    if (out->format == KAPI_FORMAT_CSV)
        snprintf(out->label_column, sizeof out->label_column, "label");
    if (used >= key_size) {
        ksrv_respond_error(response, 500, "internal", NULL, "dataset %s: too many files", ds->name);
        return false;
    }
    return true;
}

/* The parsed split, cached or parsed now; NULL with the response set. */
static entry *load_split(ksrv_server *server, kstore *store, const char *name, const char *split,
                         ksrv_response *response)
{
    kstore_dataset ds;
    memset(&ds, 0, sizeof ds);
    kstore_status s = kstore_dataset_get(store, name, &ds);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "dataset");
        return NULL;
    }
    kapi_data_source source;
    char key[2048];
    bool found = split_source(server, &ds, split, &source, key, sizeof key, response);
    kstore_dataset_free(&ds);
    if (!found) return NULL;
    entry *e = cache_get(key);
    if (e) return e;

    kapi_errors errors = {0};
    kn_dataset *parsed = kapi_load_data_source(&source, &errors);
    if (!parsed) {
        /* the message names a file under the data directory: say which split instead */
        ksrv_respond_error(response, 422, "invalid_data", "split",
                           "dataset %s: the %s split "
                           "cannot be read: %s",
                           name, split, errors.count ? errors.items[0].message : "unknown error");
        kapi_errors_free(&errors);
        return NULL;
    }
    kapi_errors_free(&errors);
    e = calloc(1, sizeof *e);
    if (!e) {
        kn_dataset_free(parsed);
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return NULL;
    }
    snprintf(e->key, sizeof e->key, "%s", key);
    e->ds = parsed;
    e->bytes = (size_t)kn_numel(parsed->inputs) * kn_dtype_size(parsed->inputs->dtype) +
               (size_t)kn_numel(parsed->labels) * sizeof(int64_t);
    return cache_put(e);
}

/* ---- the response ----------------------------------------------------------------------- */
static void append_float(ksrv_text *t, float v)
{
    char text[32];
    if (isfinite(v))
        ksrv_text_put(t, text, (size_t)ksrv_format_number(text, v));
    else
        ksrv_text_printf(t, "null");
}

void ksrv_handle_datasets_samples(ksrv_server *server, ksrv_request *request,
                                  ksrv_response *response)
{
    const char *name = request->params[0];
    const char *split = ksrv_query(request, "split");
    if (!split) split = "test";
    if (strcmp(split, "test") != 0 && strcmp(split, "train") != 0) {
        ksrv_respond_error(response, 400, "invalid_value", "split",
                           "split: expected \"test\" or \"train\", got \"%.64s\"", split);
        return;
    }
    long long offset = 0, limit = 16;
    if (!ksrv_query_int(request, response, "offset", 0, INT64_MAX / 2, &offset) ||
        !ksrv_query_int(request, response, "limit", 1, MAX_LIMIT, &limit))
        return;
    if (!ksrv_valid_name(name)) {
        ksrv_respond_error(response, 404, "not_found", NULL, "no dataset named \"%.128s\"", name);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    entry *e = load_split(server, store, name, split, response);
    if (!e) return;

    const kn_dataset *ds = e->ds;
    kn_tensor *inputs = ds->inputs;
    int64_t per = 1, labels_per = 1;
    for (int d = 1; d < inputs->ndim; d++) per *= inputs->shape[d];
    for (int d = 1; d < ds->labels->ndim; d++) labels_per *= ds->labels->shape[d];
    int64_t first = offset < ds->count ? offset : ds->count;
    int64_t last = first + limit < ds->count ? first + limit : ds->count;
    /* float32 features, or int64 token indices (issue 12) */
    const float *x = inputs->dtype == KN_FLOAT32 ? kn_data_f32(inputs) : NULL;
    const int64_t *tokens = inputs->dtype == KN_INT64 ? kn_data_i64(inputs) : NULL;
    const int64_t *y = kn_data_i64(ds->labels);

    ksrv_text t = {0};
    ksrv_text_printf(&t, "{\"dataset\":");
    ksrv_text_json_string(&t, name);
    ksrv_text_printf(&t, ",\"split\":\"%s\",\"total\":%lld,\"offset\":%lld,\"shape\":[", split,
                     (long long)ds->count, (long long)first);
    for (int d = 1; d < inputs->ndim; d++)
        ksrv_text_printf(&t, "%s%lld", d > 1 ? "," : "", (long long)inputs->shape[d]);
    ksrv_text_printf(&t, "],\"samples\":[");
    for (int64_t i = first; i < last && !t.failed; i++) {
        ksrv_text_printf(&t, "%s{\"index\":%lld,\"label\":", i > first ? "," : "", (long long)i);
        if (ds->labels->ndim == 1) { /* a class per sample, or a list: one per position */
            ksrv_text_printf(&t, "%lld", (long long)y[i]);
        } else {
            for (int64_t k = 0; k < labels_per; k++)
                ksrv_text_printf(&t, "%s%lld", k ? "," : "[", (long long)y[i * labels_per + k]);
            ksrv_text_printf(&t, "%s", labels_per ? "]" : "[]");
        }
        ksrv_text_printf(&t, ",\"data\":[");
        for (int64_t k = 0; k < per; k++) {
            if (k) ksrv_text_printf(&t, ",");
            if (tokens)
                ksrv_text_printf(&t, "%lld", (long long)tokens[i * per + k]);
            else
                append_float(&t, x[i * per + k]);
        }
        ksrv_text_printf(&t, "]}");
    }
    ksrv_text_printf(&t, "]}");
    cache_release(e);
    if (t.failed) {
        free(t.data);
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    free(response->body);
    response->status = 200;
    response->body = t.data;
    response->body_length = t.length;
    response->content_type = "application/json";
}

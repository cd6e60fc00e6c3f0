/*
 * routes_v1.c — the v1 routes that are not datasets or jobs: GET /v1/health, GET /metrics
 * (Prometheus text) and the models (create, validate_only, list, get; their versions,
 * aliases and deletion are in routes_v1_models.c), plus the helpers every v1 route file
 * shares (store errors, names, validation error bodies, active jobs).
 */
#include "ksrv_http.h"
#include "registry.h"
#include "routes_v1.h"

#include "kapi.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ksrv_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 127 || name[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

void ksrv_respond_store_error(ksrv_response *response, kstore *store, kstore_status status,
                              const char *what)
{
    const char *detail = store ? kstore_last_error(store) : "";
    switch (status) {
    case KSTORE_NOT_FOUND:
        ksrv_respond_error(response, 404, "not_found", NULL, "%s not found", what);
        break;
    case KSTORE_CONFLICT:
        ksrv_respond_error(response, 409, "conflict", NULL, "%s: %s", what, detail);
        break;
    case KSTORE_BUSY:
        ksrv_respond_error(response, 503, "busy", NULL, "the database is busy, retry");
        snprintf(response->header_name, sizeof response->header_name, "Retry-After");
        snprintf(response->header_value, sizeof response->header_value, "1");
        break;
    case KSTORE_FULL:
        ksrv_log(KSRV_LOG_ERROR, "store full on %s: %s", what, detail);
        ksrv_respond_error(response, 507, "insufficient_storage", NULL,
                           "the data directory is full: the %s change was not saved; deleting "
                           "datasets frees space",
                           what);
        break;
    default:
        ksrv_log(KSRV_LOG_ERROR, "store error on %s: %s", what, detail);
        ksrv_respond_error(response, 500, "internal", NULL, "storage error: %s", detail);
        break;
    }
}

kstore_status ksrv_store_delete(ksrv_server *server, kstore *store,
                                kstore_status (*delete_op)(kstore *store, void *context),
                                void *context)
{
    kstore_status status = delete_op(store, context);
    if (status == KSTORE_FULL && ksrv_space_reserve_release(server))
        status = delete_op(store, context);
    if (status == KSTORE_OK) ksrv_space_reserve_make(server); /* again, when there is room */
    return status;
}

kstore *ksrv_store_or_500(ksrv_server *server, ksrv_response *response)
{
    kstore *store = ksrv_thread_store(server);
    if (!store) ksrv_respond_error(response, 500, "internal", NULL, "cannot open the store");
    return store;
}

void ksrv_respond_validation(ksrv_response *response, int status, const char *code,
                             const kapi_errors *errors, const char *prefix)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *error = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(error, "code", code);
    cJSON *details = cJSON_CreateArray();
    for (int i = 0; i < errors->count; i++) {
        char path[200];
        const char *p = errors->items[i].path;
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] && p[0] ? "." : "", p);
        if (i == 0) {
            char message[sizeof path + sizeof errors->items[i].message + 2];
            snprintf(message, sizeof message, "%s%s%s", path, path[0] ? ": " : "",
                     errors->items[i].message);
            cJSON_AddStringToObject(error, "message", message);
            cJSON_AddStringToObject(error, "path", path);
        }
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "path", path);
        cJSON_AddStringToObject(item, "message", errors->items[i].message);
        cJSON_AddItemToArray(details, item);
    }
    if (errors->count == 0) cJSON_AddStringToObject(error, "message", "invalid request");
    cJSON_AddItemToObject(error, "details", details);
    ksrv_respond_json(response, status, root);
}

bool ksrv_query_int(const ksrv_request *request, ksrv_response *response, const char *name,
                    long long min, long long max, long long *out)
{
    const char *text = ksrv_query(request, name);
    if (!text) return true;
    char *end;
    long long value = strtoll(text, &end, 10);
    if (!text[0] || *end || value < min || value > max) {
        ksrv_respond_error(response, 400, "invalid_query", name,
                           "query parameter %s: expected an integer in [%lld, %lld], got \"%.60s\"",
                           name, min, max, text);
        return false;
    }
    *out = value;
    return true;
}

bool ksrv_query_bool(const ksrv_request *request, ksrv_response *response, const char *name,
                     bool *out)
{
    const char *text = ksrv_query(request, name);
    if (!text) return true;
    if (!strcmp(text, "true") || !strcmp(text, "1") || !text[0])
        *out = true;
    else if (!strcmp(text, "false") || !strcmp(text, "0"))
        *out = false;
    else {
        ksrv_respond_error(response, 400, "invalid_query", name,
                           "query parameter %s: expected true or false, got \"%.60s\"", name, text);
        return false;
    }
    return true;
}

/* ---- health ------------------------------------------------------------------------ */
void ksrv_handle_health(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)request;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", server->stopping ? "stopping" : "ok");
    cJSON_AddStringToObject(root, "version", KSRV_VERSION);
    cJSON_AddNumberToObject(root, "uptime_seconds", ksrv_now() - server->started_at);
    cJSON *devices = cJSON_AddArrayToObject(root, "devices");
    char list[sizeof server->config.devices];
    snprintf(list, sizeof list, "%s", server->config.devices);
    for (char *save = NULL, *d = strtok_r(list, ",", &save); d; d = strtok_r(NULL, ",", &save))
        cJSON_AddItemToArray(devices, cJSON_CreateString(d));
    cJSON *workers = cJSON_AddObjectToObject(root, "workers");
    cJSON_AddNumberToObject(workers, "total", server->workers ? server->config.workers : 0);
    cJSON_AddNumberToObject(workers, "busy",
                            server->workers ? ksrv_workers_busy(server->workers) : 0);
    cJSON_AddNumberToObject(root, "queue_depth",
                            (double)kstore_job_count(store, KSTORE_JOB_QUEUED));
    cJSON_AddNumberToObject(root, "queue_capacity", server->config.queue_capacity);
    ksrv_respond_json(response, 200, root);
}

/* ---- GET /metrics ------------------------------------------------------------------ */
void ksrv_handle_prometheus(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)request;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    ksrv_text t = {0};
    ksrv_text_put(&t, "", 0);
    if (!t.data) {
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    t.data[0] = '\0';
    ksrv_text_printf(&t,
                     "# HELP kilnd_http_requests_total HTTP requests by route pattern and status.\n"
                     "# TYPE kilnd_http_requests_total counter\n");
    ksrv_stats *s = &server->stats;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->n_requests; i++)
        ksrv_text_printf(&t, "kilnd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                         s->requests[i].route, s->requests[i].status,
                         (unsigned long long)s->requests[i].count);
    uint64_t buckets[12], count = s->infer_count;
    uint64_t batches = s->infer_batches, batched = s->infer_batched_requests;
    uint64_t header_timeouts = s->header_timeouts;
    double sum = s->infer_sum;
    memcpy(buckets, s->infer_buckets, sizeof buckets);
    pthread_mutex_unlock(&s->lock);

    ksrv_text_printf(&t, "# HELP kilnd_jobs Jobs by state.\n# TYPE kilnd_jobs gauge\n");
    for (int state = KSTORE_JOB_QUEUED; state <= KSTORE_JOB_CANCELED; state++)
        ksrv_text_printf(&t, "kilnd_jobs{state=\"%s\"} %lld\n", kstore_job_state_name(state),
                         (long long)kstore_job_count(store, state));
    ksrv_text_printf(&t,
                     "# HELP kilnd_queue_depth Queued jobs.\n# TYPE kilnd_queue_depth gauge\n"
                     "kilnd_queue_depth %lld\n",
                     (long long)kstore_job_count(store, KSTORE_JOB_QUEUED));

    /* samples/s of running jobs, read from the store (the workers write progress there) */
    ksrv_text_printf(&t,
                     "# HELP kilnd_job_samples_per_second Training throughput of running jobs.\n"
                     "# TYPE kilnd_job_samples_per_second gauge\n");
    kstore_job_state running = KSTORE_JOB_RUNNING;
    kstore_job *jobs = NULL;
    int n = 0;
    char next[40];
    if (kstore_job_list(store, &running, NULL, 1000, &jobs, &n, next) == KSTORE_OK) {
        for (int i = 0; i < n; i++)
            /* job_id, not job: Prometheus gives every scraped series the target's job */
            ksrv_text_printf(&t, "kilnd_job_samples_per_second{job_id=\"%s\",device=\"%s\"} %.6g\n",
                             jobs[i].id, jobs[i].device,
                             isfinite(jobs[i].samples_per_second) ? jobs[i].samples_per_second
                                                                  : 0.0);
        kstore_job_list_free(jobs, n);
    }

    static const double bounds[11] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,   0.25,   0.5,   1.0,  10.0};
    ksrv_text_printf(&t, "# HELP kilnd_inference_latency_seconds Inference request latency.\n"
                         "# TYPE kilnd_inference_latency_seconds histogram\n");
    /* the buckets hold per-bucket counts; Prometheus wants them cumulative */
    uint64_t cumulative = 0;
    for (int i = 0; i < 11; i++) {
        cumulative += buckets[i];
        ksrv_text_printf(&t, "kilnd_inference_latency_seconds_bucket{le=\"%g\"} %llu\n", bounds[i],
                         (unsigned long long)cumulative);
    }
    ksrv_text_printf(&t,
                     "kilnd_inference_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
                     "kilnd_inference_latency_seconds_sum %.9g\n"
                     "kilnd_inference_latency_seconds_count %llu\n",
                     (unsigned long long)count, sum, (unsigned long long)count);
    ksrv_text_printf(&t,
                     "# HELP kilnd_inference_batches_total Forward passes of the inference "
                     "batcher.\n# TYPE kilnd_inference_batches_total counter\n"
                     "kilnd_inference_batches_total %llu\n"
                     "# HELP kilnd_inference_batched_requests_total Inference requests those "
                     "passes served (over batches: the mean batch).\n"
                     "# TYPE kilnd_inference_batched_requests_total counter\n"
                     "kilnd_inference_batched_requests_total %llu\n",
                     (unsigned long long)batches, (unsigned long long)batched);
    ksrv_model_cache_stats cache = ksrv_model_cache_get_stats(server->models);
    ksrv_text_printf(&t,
                     "# HELP kilnd_inference_cache_entries Model versions loaded for inference.\n"
                     "# TYPE kilnd_inference_cache_entries gauge\n"
                     "kilnd_inference_cache_entries %d\n"
                     "# HELP kilnd_inference_cache_bytes Their parameters and buffers.\n"
                     "# TYPE kilnd_inference_cache_bytes gauge\n"
                     "kilnd_inference_cache_bytes %zu\n"
                     "# HELP kilnd_inference_cache_loads_total Versions loaded from disk.\n"
                     "# TYPE kilnd_inference_cache_loads_total counter\n"
                     "kilnd_inference_cache_loads_total %llu\n"
                     "# HELP kilnd_inference_cache_evictions_total Versions let go for room.\n"
                     "# TYPE kilnd_inference_cache_evictions_total counter\n"
                     "kilnd_inference_cache_evictions_total %llu\n"
                     "# HELP kilnd_http_header_timeouts_total Connections cut for not sending "
                     "their headers within --header-timeout.\n"
                     "# TYPE kilnd_http_header_timeouts_total counter\n"
                     "kilnd_http_header_timeouts_total %llu\n",
                     cache.entries, cache.bytes, (unsigned long long)cache.loads,
                     (unsigned long long)cache.evictions, (unsigned long long)header_timeouts);
    ksrv_respond_text(response, &t, "text/plain; version=0.0.4");
}

/* ---- models ------------------------------------------------------------------------ */
static cJSON *model_json(const kstore_model *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddNumberToObject(o, "parameter_count", (double)m->parameter_count);
    cJSON_AddNumberToObject(o, "created_at", m->created_at);
    cJSON *spec = m->spec_json ? cJSON_Parse(m->spec_json) : NULL;
    cJSON_AddItemToObject(o, "spec", spec ? spec : cJSON_CreateNull());
    return o;
}

void ksrv_handle_models_create(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    bool validate_only = false;
    long long batch_size = 64;
    if (!ksrv_query_bool(request, response, "validate_only", &validate_only) ||
        !ksrv_query_int(request, response, "batch_size", 1, 1000000, &batch_size))
        return;
    cJSON *root = ksrv_parse_body(request, response);
    if (!root) return;
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(request->body, request->body_length, &errors);
    if (!spec) {
        /* validate_only or not, an invalid spec is a 400 with every problem listed */
        ksrv_respond_validation(response, 400, "invalid_spec", &errors, "");
        kapi_errors_free(&errors);
        cJSON_Delete(root);
        return;
    }
    char *summary = kapi_model_spec_summary_json(spec, batch_size);
    cJSON *body = summary ? cJSON_Parse(summary) : NULL;
    free(summary);
    if (!body) {
        kapi_model_spec_free(spec);
        cJSON_Delete(root);
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    if (validate_only) {
        kapi_model_spec_free(spec);
        cJSON_Delete(root);
        ksrv_respond_json(response, 200, body);
        return;
    }
    if (!ksrv_valid_name(spec->name)) {
        kapi_model_spec_free(spec);
        cJSON_Delete(root);
        cJSON_Delete(body);
        ksrv_respond_error(response, 400, "invalid_spec", "name",
                           "name: a stored model needs a name of 1-127 characters from "
                           "A-Z a-z 0-9 . _ - (not starting with .)");
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    char *normalised = cJSON_PrintUnformatted(root);
    kstore_status status =
        store && normalised ? kstore_model_put(store, spec->name, normalised, spec->parameter_count)
                            : KSTORE_ERROR;
    if (status == KSTORE_CONFLICT)
        ksrv_respond_error(response, 409, "already_exists", "name",
                           "a model named \"%s\" exists (delete it first)", spec->name);
    else if (status != KSTORE_OK && store)
        ksrv_respond_store_error(response, store, status, "model");
    else if (status == KSTORE_OK) {
        ksrv_log(KSRV_LOG_INFO, "model %s stored (%lld parameters)", spec->name,
                 (long long)spec->parameter_count);
        ksrv_respond_json(response, 201, body);
        body = NULL;
    }
    cJSON_Delete(body);
    free(normalised);
    kapi_model_spec_free(spec);
    cJSON_Delete(root);
}

void ksrv_handle_models_list(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)request;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_model *models = NULL;
    int n = 0;
    kstore_status status = kstore_model_list(store, &models, &n);
    if (status != KSTORE_OK) {
        ksrv_respond_store_error(response, store, status, "models");
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(root, "models");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", models[i].name);
        cJSON_AddNumberToObject(o, "parameter_count", (double)models[i].parameter_count);
        cJSON_AddNumberToObject(o, "created_at", models[i].created_at);
        ksrv_model_registry_json(store, models[i].name, o, true);
        cJSON_AddItemToArray(list, o);
    }
    kstore_model_list_free(models, n);
    ksrv_respond_json(response, 200, root);
}

void ksrv_handle_models_get(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_model m;
    memset(&m, 0, sizeof m);
    kstore_status status = kstore_model_get(store, request->params[0], &m);
    if (status != KSTORE_OK) {
        ksrv_respond_store_error(response, store, status, "model");
        return;
    }
    cJSON *o = model_json(&m);
    ksrv_model_registry_json(store, m.name, o, false);
    ksrv_respond_json(response, 200, o);
    kstore_model_free(&m);
}

int ksrv_active_job_find(kstore *store, bool (*match)(const kstore_job *job, void *context),
                         void *context, char job_id[40])
{
    static const kstore_job_state active[] = {KSTORE_JOB_QUEUED, KSTORE_JOB_RUNNING,
                                              KSTORE_JOB_PAUSED};
    for (int s = 0; s < 3; s++) {
        char cursor[40] = "";
        for (int page = 0; page < 100000; page++) {
            kstore_job *jobs = NULL;
            int n = 0;
            char next[40] = "";
            if (kstore_job_list(store, &active[s], cursor[0] ? cursor : NULL, 500, &jobs, &n,
                                next) != KSTORE_OK)
                return -1;
            bool found = false;
            for (int i = 0; i < n && !found; i++)
                if (match(&jobs[i], context)) {
                    snprintf(job_id, 40, "%s", jobs[i].id);
                    found = true;
                }
            kstore_job_list_free(jobs, n);
            if (found) return 1;
            if (!next[0]) break;
            snprintf(cursor, sizeof cursor, "%s", next);
        }
    }
    return 0;
}

typedef struct names_pair {
    const char *model, *dataset;
} names_pair;

static bool uses_model_or_dataset(const kstore_job *job, void *context)
{
    const names_pair *p = context;
    return (p->model && !strcmp(job->model_name, p->model)) ||
           (p->dataset && !strcmp(job->dataset_name, p->dataset));
}

int ksrv_active_job_using(kstore *store, const char *model, const char *dataset, char job_id[40])
{
    names_pair p = {model, dataset};
    return ksrv_active_job_find(store, uses_model_or_dataset, &p, job_id);
}

/*
 * routes_v1_jobs.c — jobs: submit (queue bound, idempotent submission_id), list, get,
 * cancel/pause/resume, metrics series for dashboards, checkpoints and weights.
 *
 * Non-finite numbers have no JSON form: wherever a metric value is not finite it is
 * written as one of the strings "NaN", "Infinity" or "-Infinity" (never null), so a
 * diverging loss stays visible.
 */
#include "dist_launch.h"
#include "job_memory.h"
#include "ksrv_http.h"
#include "registry.h"
#include "routes_v1.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <microhttpd.h>
#include <string.h>
#include <zlib.h>

#define QUEUE_FULL_RETRY_AFTER "30"

static cJSON *number(double v)
{
    if (isnan(v)) return cJSON_CreateString("NaN");
    if (isinf(v)) return cJSON_CreateString(v > 0 ? "Infinity" : "-Infinity");
    return cJSON_CreateNumber(v);
}

static cJSON *time_or_null(double t)
{
    return t > 0 ? cJSON_CreateNumber(t) : cJSON_CreateNull();
}

/* The run's name and the recipe a list shows beside it (the spec with its defaults). */
static void add_recipe(cJSON *o, const kstore_job *j)
{
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = false};
    kapi_job_spec *spec =
        j->spec_json ? kapi_job_spec_parse(j->spec_json, strlen(j->spec_json), options, &errors)
                     : NULL;
    kapi_errors_free(&errors);
    cJSON_AddItemToObject(o, "name",
                          spec && spec->run_name[0] ? cJSON_CreateString(spec->run_name)
                                                    : cJSON_CreateNull());
    if (spec) {
        const kn_train_config *t = &spec->train;
        cJSON *h = cJSON_AddObjectToObject(o, "hyperparameters");
        cJSON_AddStringToObject(h, "optimizer", kn_optimizer_kind_name(t->optimizer.kind));
        cJSON_AddNumberToObject(h, "lr", t->optimizer.lr);
        cJSON_AddNumberToObject(h, "batch_size", (double)t->batch_size);
        if (t->max_steps > 0)
            cJSON_AddNumberToObject(h, "max_steps", (double)t->max_steps);
        else
            cJSON_AddNumberToObject(h, "epochs", (double)t->epochs);
        cJSON_AddItemToObject(h, "seed", kapi_json_integer((int64_t)t->seed));
    }
    kapi_job_spec_free(spec);
}

static cJSON *job_json(const kstore_job *j)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    add_recipe(o, j);
    cJSON_AddStringToObject(o, "state", kstore_job_state_name(j->state));
    cJSON_AddStringToObject(o, "model", j->model_name);
    cJSON_AddStringToObject(o, "dataset", j->dataset_name);
    if (j->submission_id[0]) cJSON_AddStringToObject(o, "submission_id", j->submission_id);
    cJSON_AddNumberToObject(o, "priority", j->priority);
    cJSON_AddStringToObject(o, "device", j->device);
    cJSON_AddStringToObject(o, "requested_device", j->requested_device);
    cJSON *progress = cJSON_AddObjectToObject(o, "progress");
    cJSON_AddNumberToObject(progress, "step", (double)j->step);
    cJSON_AddNumberToObject(progress, "total_steps", (double)j->total_steps);
    cJSON_AddNumberToObject(progress, "epoch", (double)j->epoch);
    cJSON_AddItemToObject(o, "samples_per_second", number(j->samples_per_second));
    cJSON_AddItemToObject(o, "eta_seconds",
                          j->eta_seconds >= 0 ? number(j->eta_seconds) : cJSON_CreateNull());
    cJSON *metrics = j->latest_metrics_json ? cJSON_Parse(j->latest_metrics_json) : NULL;
    /* the final evaluation's details (confusion matrix, per-label F1) travel with the
     * latest metrics (job_runner.c) but are the job's own field */
    cJSON *evaluation = cJSON_DetachItemFromObjectCaseSensitive(metrics, "evaluation");
    cJSON_AddItemToObject(o, "metrics", metrics ? metrics : cJSON_CreateObject());
    if (evaluation) cJSON_AddItemToObject(o, "evaluation", evaluation);
    cJSON_AddBoolToObject(o, "cancel_requested", j->cancel_requested);
    cJSON_AddBoolToObject(o, "pause_requested", j->pause_requested);
    cJSON *distributed = j->distributed_json ? cJSON_Parse(j->distributed_json) : NULL;
    if (distributed) cJSON_AddItemToObject(o, "distributed", distributed); /* dist_launch.c */
    cJSON_AddItemToObject(o, "created_at", time_or_null(j->created_at));
    cJSON_AddItemToObject(o, "started_at", time_or_null(j->started_at));
    cJSON_AddItemToObject(o, "finished_at", time_or_null(j->finished_at));
    cJSON_AddItemToObject(o, "updated_at", time_or_null(j->updated_at));
    if (j->error_code[0]) {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "code", j->error_code);
        cJSON_AddStringToObject(e, "message", j->error_message ? j->error_message : "");
        cJSON_AddItemToObject(e, "step",
                              j->error_step >= 0 ? cJSON_CreateNumber((double)j->error_step)
                                                 : cJSON_CreateNull());
    }
    return o;
}

/* The job of the path ({id}) or a 404/500 response. */
static bool load_job(kstore *store, ksrv_request *request, ksrv_response *response, kstore_job *j)
{
    memset(j, 0, sizeof *j);
    kstore_status s = kstore_job_get(store, request->params[0], j);
    if (s == KSTORE_OK) return true;
    if (s == KSTORE_NOT_FOUND)
        ksrv_respond_error(response, 404, "not_found", NULL, "no job %s", request->params[0]);
    else
        ksrv_respond_store_error(response, store, s, "job");
    return false;
}

/* ---- submit ------------------------------------------------------------------------- */
/* Whether two job specs (JSON texts) say the same: keys in any order, same values. */
static bool same_spec(const char *stored, const char *given)
{
    cJSON *a = stored ? cJSON_Parse(stored) : NULL, *b = given ? cJSON_Parse(given) : NULL;
    bool same = a && b && cJSON_Compare(a, b, true);
    cJSON_Delete(a);
    cJSON_Delete(b);
    return same;
}

/* Does the dataset have what training reads, and how many training samples? */
static bool dataset_ready(const kstore_dataset *d, int64_t *train_samples)
{
    bool table = false, inputs = false, labels = false;
    *train_samples = -1;
    for (int i = 0; i < d->n_files; i++) {
        const char *role = d->files[i].role;
        if (!strcmp(role, "train") || !strcmp(role, "train_csv")) {
            table = true;
            *train_samples = d->files[i].samples;
        } else if (!strcmp(role, "train_images") || !strcmp(role, "train_inputs")) {
            inputs = true;
        } else if (!strcmp(role, "train_labels")) {
            labels = true;
            *train_samples = d->files[i].samples;
        } else if (!strcmp(role, "train_text")) { /* a language model's (issue 12) */
            table = true;
            *train_samples = d->files[i].samples; /* about one window a token */
        }
    }
    return table || (inputs && labels);
}

static int64_t estimate_total_steps(const kapi_job_spec *spec, int64_t samples)
{
    const kn_train_config *t = &spec->train;
    if (t->max_steps > 0) return t->max_steps;
    if (samples <= 0 || t->batch_size <= 0) return 0;
    int64_t n = samples - (int64_t)floor(spec->data.validation_split * (double)samples);
    int64_t per_epoch = t->drop_last ? n / t->batch_size : (n + t->batch_size - 1) / t->batch_size;
    return per_epoch * t->epochs;
}

/* The job's model spec: inline, or the stored model's (valid when stored); *parsed is
 * the caller's to free. NULL when there is none to read. */
static const kapi_model_spec *job_model(const kapi_job_spec *spec, const kstore_model *stored,
                                        kapi_model_spec **parsed)
{
    *parsed = NULL;
    if (spec->model) return spec->model;
    if (!stored->spec_json) return NULL;
    kapi_errors errors = {0};
    *parsed = kapi_model_spec_parse(stored->spec_json, strlen(stored->spec_json), &errors);
    kapi_errors_free(&errors);
    return *parsed;
}

/* Labels files up to this size are read at submission to check them against the model
 * and the task; bigger ones are checked by the worker when the job starts. */
#define SUBMIT_CHECK_BYTES ((int64_t)64 << 20)

/* The dataset's labels (or targets) against the model and the task, as the worker would
 * find them: false with a 400 naming the field (data.dataset, loss.weight, ...). */
static bool labels_fit(ksrv_server *server, const kapi_job_spec *spec, const kapi_model_spec *model,
                       const kstore_dataset *dataset, ksrv_response *response)
{
    static const char *const splits[2] = {"train", "test"};
    kapi_errors errors = {0};
    for (int i = 0; i < 2 && errors.count == 0; i++) {
        kapi_data_source source;
        char message[600];
        if (ksrv_dataset_source(server, dataset, splits[i], &spec->data, &source, message,
                                sizeof message)) {
            kapi_errors_add(&errors, "data.dataset", "%s", message);
            break;
        }
        int64_t bytes = 0;
        size_t n = strlen(splits[i]);
        for (int f = 0; f < dataset->n_files; f++) {
            const char *role = dataset->files[f].role;
            if (!strncmp(role, splits[i], n) &&
                (source.format == KAPI_FORMAT_CSV || !strcmp(role + n, "_labels")))
                bytes += dataset->files[f].bytes;
        }
        if (!source.present || bytes > SUBMIT_CHECK_BYTES) continue;
        kapi_errors found = {0};
        kn_tensor *labels = kapi_load_labels(&source, spec->train.task, &found);
        if (labels) kapi_check_labels(labels, model, &spec->train, "data.dataset", &found);
        const char *kind = labels && labels->dtype == KN_FLOAT32 ? "targets" : "labels";
        kn_release(labels);
        /* the loader names the stored file, the checks the field: the user knows the data
         * as the dataset's split ("the train targets: ...") */
        for (int e = 0; e < found.count; e++) {
            const char *path = found.items[e].path;
            if (strcmp(path, "data.dataset") && strcmp(path, source.inputs_path) &&
                strcmp(path, source.labels_path))
                kapi_errors_add(&errors, path, "%s", found.items[e].message);
            else
                kapi_errors_add(&errors, "data.dataset", "the %s %s: %s", splits[i], kind,
                                found.items[e].message);
        }
        kapi_errors_free(&found);
    }
    bool ok = errors.count == 0;
    if (!ok) ksrv_respond_validation(response, 400, "invalid_data", &errors, "");
    kapi_errors_free(&errors);
    return ok;
}

/* Whether the job fits this server's per-job memory (job_memory.h); false with the 400
 * response set. need gets the estimate. */
static bool job_fits(ksrv_server *server, const kapi_job_spec *spec, const kapi_model_spec *model,
                     int64_t samples, ksrv_response *response, ksrv_job_memory *need)
{
    memset(need, 0, sizeof *need);
    if (!model) return true; /* nothing to estimate: the worker reports the spec */
    /* where it will train, as choose_device decides: auto is a GPU when there is one */
    const char *device = spec->device;
    bool on_gpu =
        !strncmp(device, "cuda", 4) || (!strcmp(device, "auto") && kn_cuda_device_count() > 0);
    *need = ksrv_job_memory_needed(spec, model, samples, on_gpu);
    char message[512];
    const char *path = "";
    if (ksrv_job_fits_memory(*need, server->job_memory_limit, spec, message, sizeof message, &path))
        return true;
    ksrv_respond_error(response, 400, "insufficient_memory", path, "%s: %s", path, message);
    return false;
}

/* "init_weights": the version (or alias) or job must exist, have weights, and hold weights
 * of the job's model. An alias is pinned here: the stored spec names the version it named
 * now, and the alias beside it, so a job queued for an hour still starts from what was
 * asked for. False with the response set. */
static bool check_init_weights(ksrv_server *server, kstore *store, const kapi_job_spec *spec,
                               const kapi_model_spec *target, cJSON *root, ksrv_response *response)
{
    if (!spec->init_version[0] && !spec->init_job[0]) return true;
    const char *model_name = spec->model_name[0] ? spec->model_name : spec->model->name;
    const char *field = spec->init_version[0] ? "init_weights.version" : "init_weights.job";
    kstore_version v;
    char alias[64] = "", message[512];
    memset(&v, 0, sizeof v);
    if (spec->init_version[0]) {
        ksrv_resolve_status rs = ksrv_resolve_version(store, model_name, spec->init_version, &v,
                                                      alias, message, sizeof message);
        if (rs != KSRV_RESOLVED) {
            if (rs == KSRV_RESOLVE_ERROR)
                ksrv_respond_error(response, 500, "internal", NULL, "%s", message);
            else
                ksrv_respond_error(response, 404, "version_not_found", field, "%s: %s", field,
                                   message);
            return false;
        }
    } else {
        kstore_job from;
        kstore_status s = kstore_job_get(store, spec->init_job, &from);
        if (s == KSTORE_NOT_FOUND) {
            ksrv_respond_error(response, 404, "job_not_found", field, "%s: no job %s", field,
                               spec->init_job);
            return false;
        }
        if (s != KSTORE_OK) {
            ksrv_respond_store_error(response, store, s, "job");
            return false;
        }
        bool succeeded = from.state == KSTORE_JOB_SUCCEEDED;
        if (succeeded) s = kstore_version_get(store, from.model_name, from.id, &v);
        if (!succeeded || s != KSTORE_OK) {
            ksrv_respond_error(response, 400, "invalid_spec", field,
                               "%s: job %s is %s: only a succeeded job has final weights to "
                               "start from",
                               field, from.id, kstore_job_state_name(from.state));
            kstore_job_free(&from);
            return false;
        }
        kstore_job_free(&from);
    }
    char path[1024], why[256];
    kapi_model_spec *source =
        ksrv_version_spec(server, store, &v, path, sizeof path, message, sizeof message);
    bool ok = false;
    if (!source)
        ksrv_respond_error(response, 400, "invalid_spec", field, "%s: %s", field, message);
    else if (target && !ksrv_specs_share_weights(source, target, why, sizeof why))
        ksrv_respond_error(response, 400, "invalid_spec", field,
                           "%s: the weights of %s are for another model: its %s", field, v.version,
                           why);
    else
        ok = true;
    if (ok && spec->init_version[0]) { /* pin the alias to its version */
        cJSON *init = cJSON_CreateObject();
        cJSON_AddStringToObject(init, "version", v.version);
        const char *through = alias[0] ? alias : spec->init_alias;
        if (through[0]) cJSON_AddStringToObject(init, "alias", through);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "init_weights", init);
    }
    kapi_model_spec_free(source);
    kstore_version_free(&v);
    return ok;
}

void ksrv_handle_jobs_create(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    long long priority = 0;
    bool validate_only = false;
    if (!ksrv_query_int(request, response, "priority", -1000000, 1000000, &priority) ||
        !ksrv_query_bool(request, response, "validate_only", &validate_only))
        return;
    cJSON *root = ksrv_parse_body(request, response);
    if (!root) return;
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = false};
    kapi_job_spec *spec =
        kapi_job_spec_parse(request->body, request->body_length, options, &errors);
    kstore *store = spec ? ksrv_store_or_500(server, response) : NULL;
    kstore_model model;
    kstore_dataset dataset;
    kapi_model_spec *parsed_model = NULL;
    memset(&model, 0, sizeof model);
    memset(&dataset, 0, sizeof dataset);
    char *spec_json = NULL;
    if (!spec) {
        ksrv_respond_validation(response, 400, "invalid_spec", &errors, "");
        goto done;
    }
    if (!store) goto done;
    if (spec->model_name[0]) {
        kstore_status s = kstore_model_get(store, spec->model_name, &model);
        if (s == KSTORE_NOT_FOUND) {
            ksrv_respond_error(response, 404, "model_not_found", "model",
                               "model: no model named \"%s\" (POST /v1/models first)",
                               spec->model_name);
            goto done;
        }
        if (s != KSTORE_OK) {
            ksrv_respond_store_error(response, store, s, "model");
            goto done;
        }
    }
    if (!spec->data.dataset[0]) {
        ksrv_respond_error(response, 400, "invalid_spec", "data.dataset",
                           "data.dataset: the server trains on uploaded datasets, by name");
        goto done;
    }
    kstore_status s = kstore_dataset_get(store, spec->data.dataset, &dataset);
    if (s == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "dataset_not_found", "data.dataset",
                           "data.dataset: no dataset named \"%s\"", spec->data.dataset);
        goto done;
    }
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "dataset");
        goto done;
    }
    int64_t samples = -1;
    if (!dataset_ready(&dataset, &samples)) {
        ksrv_respond_error(
            response, 400, "dataset_incomplete", "data.dataset",
            "data.dataset: dataset %s has no training data yet (upload train_text, train, "
            "or train_images and train_labels)",
            dataset.name);
        goto done;
    }
    ksrv_job_memory need;
    const kapi_model_spec *model_spec = job_model(spec, &model, &parsed_model);
    if (!job_fits(server, spec, model_spec, samples, response, &need)) goto done;
    if (!ksrv_dist_check(server, spec, response)) goto done; /* distributed: slots, MPI */
    if (model_spec && !labels_fit(server, spec, model_spec, &dataset, response)) goto done;
    if (!check_init_weights(server, store, spec, model_spec, root, response)) goto done;
    if (validate_only) {
        /* every check a submission gets, nothing queued (the dashboard's submit form) */
        cJSON *out = cJSON_CreateObject();
        cJSON_AddBoolToObject(out, "valid", true);
        cJSON_AddStringToObject(out, "dataset", spec->data.dataset);
        cJSON_AddNumberToObject(out, "total_steps", (double)estimate_total_steps(spec, samples));
        cJSON_AddNumberToObject(out, "memory_bytes", (double)need.total);
        cJSON_AddNumberToObject(out, "job_memory_limit_bytes", (double)server->job_memory_limit);
        ksrv_respond_json(response, 200, out);
        goto done;
    }
    if (kstore_job_count(store, KSTORE_JOB_QUEUED) >= server->config.queue_capacity) {
        ksrv_respond_error(response, 503, "queue_full", NULL,
                           "the queue holds %d jobs, its capacity: retry later",
                           server->config.queue_capacity);
        snprintf(response->header_name, sizeof response->header_name, "Retry-After");
        snprintf(response->header_value, sizeof response->header_value, QUEUE_FULL_RETRY_AFTER);
        goto done;
    }
    spec_json = cJSON_PrintUnformatted(root);
    const char *model_name = spec->model_name[0] ? spec->model_name
                             : spec->model       ? spec->model->name
                                                 : "";
    kstore_job job;
    memset(&job, 0, sizeof job);
    bool created = false;
    s = spec_json
            ? kstore_job_create(store, spec_json, model_name, spec->data.dataset,
                                spec->submission_id[0] ? spec->submission_id : NULL, spec->device,
                                (int)priority, estimate_total_steps(spec, samples), &job, &created)
            : KSTORE_ERROR;
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "job");
        goto done;
    }
    if (created) {
        ksrv_job_log(store, job.id, KSRV_JOB_INFO,
                     "queued: model %s, dataset %s, priority %lld%s%s", model_name,
                     spec->data.dataset, priority, spec->run_name[0] ? ", name " : "",
                     spec->run_name);
        cJSON *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "id", job.id);
        cJSON_AddStringToObject(out, "state", kstore_job_state_name(job.state));
        ksrv_respond_json(response, 202, out);
        if (server->workers) ksrv_workers_notify(server->workers);
    } else if (!same_spec(job.spec_json, spec_json)) {
        /* the id names another submission: answering with its job would hide the mistake */
        cJSON *e;
        cJSON *out = ksrv_error_json(&e, "conflict", "submission_id",
                                     "submission_id \"%s\" was given to job %s, whose spec "
                                     "differs: a retry sends the same spec; a new job needs a "
                                     "new submission_id",
                                     spec->submission_id, job.id);
        cJSON_AddStringToObject(e, "job_id", job.id);
        ksrv_respond_json(response, 409, out);
    } else {
        /* a retried submission: the job it made the first time */
        ksrv_respond_json(response, 200, job_json(&job));
    }
    kstore_job_free(&job);
done:
    free(spec_json);
    kapi_model_spec_free(parsed_model);
    kstore_model_free(&model);
    kstore_dataset_free(&dataset);
    kapi_job_spec_free(spec);
    kapi_errors_free(&errors);
    cJSON_Delete(root);
}

/* ---- list and get ------------------------------------------------------------------- */
void ksrv_handle_jobs_list(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    long long limit = 100;
    if (!ksrv_query_int(request, response, "limit", 1, 1000, &limit)) return;
    const char *state_name = ksrv_query(request, "state");
    kstore_job_state state;
    if (state_name && !kstore_job_state_parse(state_name, &state)) {
        ksrv_respond_error(response, 400, "invalid_query", "state",
                           "state: expected queued, running, paused, succeeded, failed or "
                           "canceled, got \"%.40s\"",
                           state_name);
        return;
    }
    const char *cursor = ksrv_query(request, "cursor");
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_job *jobs = NULL;
    int n = 0;
    char next[40] = "";
    kstore_status s =
        kstore_job_list(store, state_name ? &state : NULL, cursor && cursor[0] ? cursor : NULL,
                        (int)limit, &jobs, &n, next);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "jobs");
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *array = cJSON_AddArrayToObject(root, "jobs");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(array, job_json(&jobs[i]));
    cJSON_AddItemToObject(root, "next_cursor",
                          next[0] ? cJSON_CreateString(next) : cJSON_CreateNull());
    kstore_job_list_free(jobs, n);
    ksrv_respond_json(response, 200, root);
}

void ksrv_handle_jobs_get(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    kstore_job j;
    if (!store || !load_job(store, request, response, &j)) return;
    cJSON *o = job_json(&j);
    /* one job (not the list) carries its spec: the dashboard's job page shows it */
    cJSON *spec = j.spec_json ? cJSON_Parse(j.spec_json) : NULL;
    cJSON_AddItemToObject(o, "spec", spec ? spec : cJSON_CreateNull());
    ksrv_respond_json(response, 200, o);
    kstore_job_free(&j);
}

/* ---- transitions -------------------------------------------------------------------- */
typedef kstore_status (*transition)(kstore *, const char *, kstore_job *);

static void change(ksrv_server *server, ksrv_request *request, ksrv_response *response,
                   transition fn, const char *verb)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_job j;
    memset(&j, 0, sizeof j);
    kstore_status s = fn(store, request->params[0], &j);
    if (s == KSTORE_OK) {
        ksrv_job_log(store, j.id, KSRV_JOB_INFO, "%s: %s%s", verb, kstore_job_state_name(j.state),
                     j.cancel_requested || j.pause_requested ? " (requested: the worker stops "
                                                               "at its next step)"
                                                             : "");
        ksrv_respond_json(response, 200, job_json(&j));
        if (server->workers && !strcmp(verb, "resume")) ksrv_workers_notify(server->workers);
    } else if (s == KSTORE_CONFLICT) {
        kstore_job now;
        const char *state = "unknown";
        memset(&now, 0, sizeof now);
        if (kstore_job_get(store, request->params[0], &now) == KSTORE_OK)
            state = kstore_job_state_name(now.state);
        cJSON *e;
        cJSON *root = ksrv_error_json(&e, "illegal_transition", NULL, "cannot %s a job that is %s",
                                      verb, state);
        cJSON_AddStringToObject(e, "state", state);
        ksrv_respond_json(response, 409, root);
        kstore_job_free(&now);
    } else if (s == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "not_found", NULL, "no job %s", request->params[0]);
    } else {
        ksrv_respond_store_error(response, store, s, "job");
    }
    kstore_job_free(&j);
}

void ksrv_handle_jobs_cancel(ksrv_server *s, ksrv_request *q, ksrv_response *r)
{
    change(s, q, r, kstore_job_cancel, "cancel");
}

void ksrv_handle_jobs_pause(ksrv_server *s, ksrv_request *q, ksrv_response *r)
{
    change(s, q, r, kstore_job_pause, "pause");
}

void ksrv_handle_jobs_resume(ksrv_server *s, ksrv_request *q, ksrv_response *r)
{
    change(s, q, r, kstore_job_resume, "resume");
}

/* ---- metrics ------------------------------------------------------------------------ */
static void put_value(ksrv_text *b, double v)
{
    char text[32];
    int n = isnan(v)   ? snprintf(text, sizeof text, "\"NaN\"")
            : isinf(v) ? snprintf(text, sizeof text, v > 0 ? "\"Infinity\"" : "\"-Infinity\"")
                       : ksrv_format_number(text, v);
    ksrv_text_put(b, text, (size_t)n);
}

/* gzip of text (malloc'd, *size bytes), or NULL. The strongest level: a finished job's answer
 * is compressed once and sent many times. Z_FILTERED because a series is mostly digits that
 * do not repeat: favouring Huffman coding over short matches makes it about 5% smaller. */
static char *gzip_text(const char *text, size_t length, size_t *size)
{
    z_stream z = {0};
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_FILTERED) != Z_OK) return NULL;
    size_t capacity = deflateBound(&z, (uLong)length) + 1;
    char *out = malloc(capacity);
    if (!out) {
        deflateEnd(&z);
        return NULL;
    }
    z.next_in = (Bytef *)text;
    z.avail_in = (uInt)length;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)(capacity - 1);
    int rc = deflate(&z, Z_FINISH);
    *size = z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    out[*size] = '\0';
    return out;
}

static void release_shared(void *handle)
{
    ksrv_metrics_cache_release(handle);
}

/* The entity tag of a finished answer: FNV-1a over the bytes sent, so the gzip'd and the
 * plain answer differ (a strong validator names one representation) and the same answer
 * gets the same tag after a restart. */
static void entity_tag(const char *data, size_t size, char etag[24])
{
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++) hash = (hash ^ (unsigned char)data[i]) * 0x100000001b3ull;
    snprintf(etag, 24, "\"%016llx\"", (unsigned long long)hash);
}

/* 304: no body; the validator and Vary as the 200 would have them. */
static void respond_not_modified(ksrv_response *response, const char *etag)
{
    response->status = 304;
    response->body = strdup("");
    snprintf(response->etag, sizeof response->etag, "%s", etag);
}

static void set_encoding(ksrv_response *response, bool gzip)
{
    if (!gzip) return;
    snprintf(response->header_name, sizeof response->header_name, "Content-Encoding");
    snprintf(response->header_value, sizeof response->header_value, "gzip");
}

/* Answers from the cache without copying the body: MHD sends the shared bytes and lets
 * go of them when done. False when key is not cached. */
static bool respond_shared(ksrv_response *response, const char *key, bool gzip,
                           const char *if_none_match)
{
    const char *data;
    size_t size;
    char etag[24];
    void *handle = ksrv_metrics_cache_acquire(key, &data, &size, etag);
    if (!handle) return false;
    if (ksrv_etag_listed(if_none_match, etag)) {
        ksrv_metrics_cache_release(handle);
        respond_not_modified(response, etag);
        return true;
    }
    response->prepared = MHD_create_response_from_buffer_with_free_callback_cls(
        size, (void *)data, release_shared, handle);
    if (!response->prepared) {
        ksrv_metrics_cache_release(handle);
        return false;
    }
    response->status = 200;
    memcpy(response->etag, etag, sizeof etag);
    set_encoding(response, gzip);
    return true;
}

/* A finished answer computed now (key NULL: not to be cached), or 304 when the client
 * has it. Takes body. */
static void respond_final(ksrv_response *response, const char *key, char *body, size_t size,
                          bool gzip, const char *if_none_match)
{
    char etag[24];
    entity_tag(body, size, etag);
    if (key) ksrv_metrics_cache_put(key, body, size, etag);
    if (ksrv_etag_listed(if_none_match, etag)) {
        free(body);
        respond_not_modified(response, etag);
        return;
    }
    response->status = 200;
    response->body = body;
    response->body_length = size;
    memcpy(response->etag, etag, sizeof etag);
    set_encoding(response, gzip);
}

/* names=: at most this many distinct series per request (repeats count once). */
#define MAX_METRIC_NAMES 64
#define MAX_METRIC_NAME_LENGTH 128
/* The most points one answer holds (about 35 bytes each): a longer history is read in
 * pages (after_step) or downsampled (max_points). */
#define MAX_ANSWER_POINTS 1000000
/* the names joined by commas: never cut, so two lists never share a cache key */
#define JOINED_NAMES_SIZE (MAX_METRIC_NAMES * (MAX_METRIC_NAME_LENGTH + 1) + 1)

/* The distinct names of names= in their first order, into *out (malloc'd array of malloc'd
 * strings, kstore_strings_free) and *joined ("a,b": the cache key's part); false with a
 * 400 (or 500) response. */
static bool parse_names(const char *wanted, char ***out, int *count, char joined[JOINED_NAMES_SIZE],
                        ksrv_response *response)
{
    char **names = calloc(MAX_METRIC_NAMES, sizeof *names);
    int n = 0;
    joined[0] = '\0';
    size_t used = 0;
    if (!names) {
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return false;
    }
    for (const char *at = wanted; *at;) {
        size_t length = strcspn(at, ",");
        bool seen = length == 0;
        for (int i = 0; i < n && !seen; i++)
            seen = strlen(names[i]) == length && !memcmp(names[i], at, length);
        if (!seen && (length > MAX_METRIC_NAME_LENGTH || n == MAX_METRIC_NAMES)) {
            kstore_strings_free(names, n);
            if (length > MAX_METRIC_NAME_LENGTH)
                ksrv_respond_error(response, 400, "invalid_query", "names",
                                   "names: a series name has at most %d characters",
                                   MAX_METRIC_NAME_LENGTH);
            else
                ksrv_respond_error(response, 400, "invalid_query", "names",
                                   "names: at most %d different series per request",
                                   MAX_METRIC_NAMES);
            return false;
        }
        if (!seen) {
            if (!(names[n] = strndup(at, length))) {
                kstore_strings_free(names, n);
                ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
                return false;
            }
            used += (size_t)snprintf(joined + used, JOINED_NAMES_SIZE - used, "%s%s", n ? "," : "",
                                     names[n]);
            n++;
        }
        at += length;
        if (*at == ',') at++;
    }
    *out = names;
    *count = n;
    return true;
}

/* Written by hand, not through cJSON: dashboards poll this with thousands of points. */
void ksrv_handle_jobs_metrics(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    long long after_step = -1, max_points = 0;
    if (!ksrv_query_int(request, response, "after_step", -1, (long long)1 << 62, &after_step) ||
        !ksrv_query_int(request, response, "max_points", 0, 1000000, &max_points))
        return;
    /* names=loss,loss,... once made one answer hold a series per repeat: repeats count once */
    char **names = NULL;
    int n_names = 0;
    char joined[JOINED_NAMES_SIZE];
    const char *wanted = ksrv_query(request, "names");
    bool named = wanted && wanted[0];
    if (named && !parse_names(wanted, &names, &n_names, joined, response)) return;
    const char *wanted_names = named ? joined : NULL;
    /* Browsers ask for gzip; a 10,000-point series shrinks about fourfold. Only finished
     * jobs' (cached) answers are compressed: compressing live ones would cost each poll. */
    const char *encodings =
        MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND, "Accept-Encoding");
    bool accepts_gzip = encodings && strstr(encodings, "gzip");
    const char *if_none_match =
        MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND, "If-None-Match");
    response->varies_by_encoding = true;
    char key[512];
    int key_length = snprintf(key, sizeof key, "%s|%s|%lld|%lld|%s", request->params[0],
                              wanted_names ? wanted_names : "*", after_step, max_points,
                              accepts_gzip ? "gzip" : "identity");
    bool keyed = key_length > 0 && (size_t)key_length < sizeof key;
    /* Only finished jobs are cached, and deleting a model's jobs (DELETE /v1/models/{name}
     * ?force=true) forgets theirs, so a hit needs no look-up of the job. */
    if (keyed && respond_shared(response, key, accepts_gzip, if_none_match)) {
        kstore_strings_free(names, n_names);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    kstore_job j;
    if (!store || !load_job(store, request, response, &j)) {
        kstore_strings_free(names, n_names);
        return;
    }
    /* a finished job's series are final: its answers can be kept and sent again */
    bool final = keyed && (j.state == KSTORE_JOB_SUCCEEDED || j.state == KSTORE_JOB_FAILED ||
                           j.state == KSTORE_JOB_CANCELED);
    bool gzip = final && accepts_gzip;
    kstore_job_free(&j);

    if (!named && kstore_metrics_names(store, request->params[0], &names, &n_names) != KSTORE_OK) {
        ksrv_respond_store_error(response, store, KSTORE_ERROR, "metrics");
        return;
    }
    int64_t total_points = 0;
    ksrv_text b = {0};
    ksrv_text_put(&b, "{\"job_id\":", 10);
    ksrv_text_json_string(&b, request->params[0]);
    ksrv_text_put(&b, ",\"series\":{", 11);
    for (int i = 0; i < n_names && !b.failed; i++) {
        if (!names[i]) continue;
        kstore_metric_point *points = NULL;
        int count = 0;
        if (kstore_metrics_query(store, request->params[0], names[i], after_step, (int)max_points,
                                 &points, &count) != KSTORE_OK) {
            b.failed = true;
            break;
        }
        total_points += count;
        if (total_points > MAX_ANSWER_POINTS) {
            free(points);
            free(b.data);
            kstore_strings_free(names, n_names);
            ksrv_respond_error(response, 400, "too_many_points", NULL,
                               "the answer would hold more than %d points: ask for fewer "
                               "names, a page at a time (after_step) or downsampled "
                               "(max_points)",
                               MAX_ANSWER_POINTS);
            return;
        }
        if (i) ksrv_text_put(&b, ",", 1);
        ksrv_text_json_string(&b, names[i]);
        ksrv_text_put(&b, ":[", 2);
        for (int k = 0; k < count; k++) {
            char text[64];
            int len = snprintf(text, sizeof text, "%s[%lld,%.3f,", k ? "," : "",
                               (long long)points[k].step, points[k].wall_time);
            ksrv_text_put(&b, text, (size_t)len);
            put_value(&b, points[k].value);
            ksrv_text_put(&b, "]", 1);
        }
        ksrv_text_put(&b, "]", 1);
        free(points);
    }
    ksrv_text_put(&b, "}}", 2);
    kstore_strings_free(names, n_names);
    if (b.failed) {
        free(b.data);
        ksrv_respond_store_error(response, store, KSTORE_ERROR, "metrics");
        return;
    }
    response->status = 200;
    response->body = b.data;
    response->body_length = b.length;
    if (!final) return;
    response->body = NULL;
    if (gzip) {
        size_t size = 0;
        char *compressed = gzip_text(b.data, b.length, &size);
        if (compressed) {
            free(b.data);
            respond_final(response, key, compressed, size, true, if_none_match);
            return;
        }
        /* could not compress: send it plain, and keep it away from the gzip key */
    }
    respond_final(response, gzip ? NULL : key, b.data, b.length, false, if_none_match);
}

/* ---- checkpoints and weights ------------------------------------------------------------ */
void ksrv_handle_jobs_checkpoints(ksrv_server *server, ksrv_request *request,
                                  ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    kstore_job j;
    if (!store || !load_job(store, request, response, &j)) return;
    kstore_job_free(&j);
    kstore_checkpoint *list = NULL;
    int n = 0;
    kstore_status s = kstore_checkpoint_list(store, request->params[0], &list, &n);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "checkpoints");
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "job_id", request->params[0]);
    cJSON *array = cJSON_AddArrayToObject(root, "checkpoints");
    for (int i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "step", (double)list[i].step);
        cJSON_AddStringToObject(c, "kind", list[i].kind);
        cJSON_AddNumberToObject(c, "bytes", (double)list[i].bytes);
        cJSON_AddNumberToObject(c, "created_at", list[i].created_at);
        char url[200];
        if (!strcmp(list[i].kind, "final"))
            snprintf(url, sizeof url, "/v1/jobs/%s/weights", list[i].job_id);
        else
            snprintf(url, sizeof url, "/v1/jobs/%s/checkpoints/%lld", list[i].job_id,
                     (long long)list[i].step);
        cJSON_AddStringToObject(c, "url", url);
        cJSON_AddItemToArray(array, c);
    }
    free(list);
    ksrv_respond_json(response, 200, root);
}

static void send_file(ksrv_server *server, ksrv_response *response, const kstore_checkpoint *c,
                      const char *filename)
{
    char path[700];
    if (!ksrv_data_path(server, c->path, path, sizeof path)) {
        ksrv_respond_error(response, 500, "internal", NULL, "checkpoint path too long");
        return;
    }
    response->status = 200;
    response->file_path = strdup(path);
    response->content_type = "application/octet-stream";
    snprintf(response->header_name, sizeof response->header_name, "Content-Disposition");
    snprintf(response->header_value, sizeof response->header_value, "attachment; filename=\"%s\"",
             filename);
}

void ksrv_handle_jobs_checkpoint_download(ksrv_server *server, ksrv_request *request,
                                          ksrv_response *response)
{
    char *end;
    errno = 0;
    long long step = strtoll(request->params[1], &end, 10);
    if (!request->params[1][0] || *end || step < 0 || errno == ERANGE) {
        ksrv_respond_error(response, 400, "invalid_value", "step",
                           "step: expected an integer in [0, %lld], got \"%.40s\"", LLONG_MAX,
                           request->params[1]);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_checkpoint *list = NULL;
    int n = 0;
    kstore_status s = kstore_checkpoint_list(store, request->params[0], &list, &n);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "checkpoints");
        return;
    }
    int found = -1;
    for (int i = 0; i < n; i++)
        if (list[i].step == step && strcmp(list[i].kind, "final") != 0) found = i;
    if (found < 0) {
        ksrv_respond_error(response, 404, "not_found", NULL,
                           "job %s has no checkpoint at step %lld", request->params[0], step);
    } else {
        char filename[120];
        snprintf(filename, sizeof filename, "%s-step%lld.safetensors", list[found].job_id, step);
        send_file(server, response, &list[found], filename);
    }
    free(list);
}

void ksrv_handle_jobs_weights(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    kstore_job j;
    if (!store || !load_job(store, request, response, &j)) return;
    kstore_checkpoint c;
    memset(&c, 0, sizeof c);
    kstore_status s = kstore_checkpoint_latest(store, j.id, "final", &c);
    if (s == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "no_weights", NULL,
                           "job %s is %s: final weights exist once it has succeeded", j.id,
                           kstore_job_state_name(j.state));
    } else if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "weights");
    } else {
        char filename[120];
        snprintf(filename, sizeof filename, "%s.safetensors", j.id);
        send_file(server, response, &c, filename);
    }
    kstore_job_free(&j);
}

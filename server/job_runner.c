/*
 * job_runner.c — one job, claimed by a worker, run to its end: the spec parsed again
 * (allow_paths off), the model resolved (by name from the store or inline), the
 * dataset's files found in the store, the model built from the job's seed, data loaded,
 * normalised and shaped as cli/job.c does it (through the same kapi/kn functions), and
 * the trainer run with callbacks that write metrics, progress and checkpoints to the
 * store and obey cancel, pause and server shutdown. A checkpoint in the store makes the
 * run resume with the same step counter and data order; without one, "init_weights" (a
 * version of the model, or a succeeded job) gives the starting weights. What happens is
 * written to the job's own log (server/job_log.c): start and device, each evaluation,
 * checkpoints, warnings, the end or the error with its step.
 *
 * Engine state shared between workers: the default generator (initial weights, dropout,
 * and the RNG state saved in checkpoints) and the thread count of the engine's pool and
 * OpenBLAS are process-wide. Seeding and building a model happen under one lock so the
 * initial weights are a function of the job's seed; with workers > 1, dropout draws of
 * concurrent jobs interleave on the shared generator (runs stay correct but are not
 * bit-reproducible). The data order is always reproducible (seed, epoch).
 */
#include "job_runner.h"
#include "dist_launch.h"
#include "job_memory.h"
#include "registry.h"
#include "routes_v1.h"

#include "kapi.h"
#include "kapi_text.h"
#include "kn_train.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FLUSH_SECONDS 0.5
#define FLUSH_STEPS 50
#define POLL_SECONDS 0.2
#define DEFAULT_CHECKPOINT_EVERY 500

typedef enum {
    STOP_NONE,
    STOP_CANCEL,
    STOP_PAUSE,
    STOP_SHUTDOWN,
    STOP_CHECKPOINT_FAILED, /* the job fails: docs/job-spec.md says why */
} stop_reason;

typedef struct job_run {
    ksrv_server *server;
    kstore *store;
    const kstore_job *job;
    kn_trainer *trainer;
    volatile int *stopping;
    const char *eval_prefix; /* "val" (a split) or "test" (the test set validates) */
    /* buffered loss and lr points, flushed every FLUSH_SECONDS or FLUSH_STEPS */
    kstore_metric_point loss[FLUSH_STEPS], lr[FLUSH_STEPS];
    int n_points;
    double last_flush, last_poll, start;
    int64_t first_step, step, epoch, total_steps;
    double samples_per_second, eta;
    double latest_loss, latest_lr;
    /* the latest evaluation of the validation data (eval_prefix), and the final one of a
     * test set that was not the validation data */
    struct eval_numbers {
        bool has;
        double loss;
        kapi_metric metrics[KAPI_MAX_METRICS];
        int n_metrics;
    } eval, test;
    char *evaluation; /* the final evaluation's details (JSON), for the job's "evaluation" */
    char *evaluation_pending; /* the latest evaluation's, until the run ends */
    int64_t last_checkpoint_step;
    stop_reason stop;
    bool store_failed;
    char checkpoint_error[512]; /* why the last checkpoint could not be saved */
    /* a language model's job (issue 12): its tokenizer goes with the weights, and the
     * window's tokens turn samples/s into tokens/s */
    kapi_tokenizer *tokenizer;
    int64_t block_size;
} job_run;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Writes the failure and logs it. */
/* Every occurrence of path in text replaced by label, in place (text holds size). */
static void replace_path(char *text, size_t size, const char *path, const char *label)
{
    size_t n = strlen(path);
    char *at;
    if (!n) return;
    while ((at = strstr(text, path))) {
        char rest[1024];
        snprintf(rest, sizeof rest, "%s", at + n);
        snprintf(at, size - (size_t)(at - text), "%s%s", label, rest);
    }
}

static ksrv_run_outcome fail(job_run *r, const char *code, int64_t step, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ksrv_run_outcome fail(job_run *r, const char *code, int64_t step, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* engine messages name files by their paths: users see them relative to the data
     * directory ("jobs/<id>/..."), not where the server keeps it */
    char root[600];
    if (ksrv_data_path(r->server, "", root, sizeof root) && root[0]) {
        size_t n = strlen(root);
        if (root[n - 1] != '/' && n + 1 < sizeof root) strcat(root, "/");
        replace_path(message, sizeof message, root, "");
    }
    if (step >= 0)
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_ERROR, "failed at step %lld: %s: %s",
                     (long long)step, code, message);
    else
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_ERROR, "failed: %s: %s", code, message);
    if (kstore_job_finish(r->store, r->job->id, KSTORE_JOB_FAILED, code, message, step) !=
        KSTORE_OK)
        ksrv_log(KSRV_LOG_ERROR, "job %s: recording the failure: %s", r->job->id,
                 kstore_last_error(r->store));
    return KSRV_RUN_FINISHED;
}

/* The code for an engine error: memory, or internal. */
static const char *engine_code(void)
{
    return kn_last_status() == KN_ERR_MEMORY ? "out_of_memory" : "internal";
}

static ksrv_run_outcome fail_errors(job_run *r, const char *code, const kapi_errors *errors)
{
    char *text = kapi_errors_to_text(errors);
    ksrv_run_outcome o = fail(r, code, -1, "%s", text ? text : kn_last_error());
    free(text);
    return o;
}

/* "jobs/<id>/<name>" relative, and its absolute path. */
static bool job_file(job_run *r, const char *name, char *relative, size_t rsize, char *absolute,
                     size_t asize)
{
    int n = snprintf(relative, rsize, "jobs/%s/%s", r->job->id, name);
    return n > 0 && (size_t)n < rsize && ksrv_data_path(r->server, relative, absolute, asize);
}

/* The job's folder, 0700 as the data directory: checkpoints hold the model's weights. */
static bool make_job_dir(job_run *r)
{
    char rel[128], path[1024];
    if (!ksrv_data_path(r->server, "jobs", path, sizeof path)) return false;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) return false;
    snprintf(rel, sizeof rel, "jobs/%s", r->job->id);
    if (!ksrv_data_path(r->server, rel, path, sizeof path)) return false;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) return false;
    return chmod(path, 0700) == 0; /* one an older kilnd made 0755 */
}

/* ---- metrics and progress ---------------------------------------------------------- */

static char *latest_metrics_json(const job_run *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (r->step > 0) {
        cJSON_AddNumberToObject(o, "loss", r->latest_loss);
        cJSON_AddNumberToObject(o, "lr", r->latest_lr);
    }
    const struct eval_numbers *sets[2] = {&r->eval, &r->test};
    const char *prefixes[2] = {r->eval_prefix, "test"};
    for (int k = 0; k < 2; k++) {
        if (!sets[k]->has) continue;
        char name[64];
        snprintf(name, sizeof name, "%s_loss", prefixes[k]);
        cJSON_AddNumberToObject(o, name, sets[k]->loss);
        for (int i = 0; i < sets[k]->n_metrics; i++) {
            snprintf(name, sizeof name, "%s_%s", prefixes[k], sets[k]->metrics[i].name);
            cJSON_AddNumberToObject(o, name, sets[k]->metrics[i].value);
        }
    }
    /* the end of the run: the confusion matrix or per-label F1 (routes_v1_jobs.c shows it
     * as the job's "evaluation") */
    cJSON *evaluation = r->evaluation ? cJSON_Parse(r->evaluation) : NULL;
    if (evaluation) cJSON_AddItemToObject(o, "evaluation", evaluation);
    /* a language model's speed in its own unit (issue 12) */
    if (r->tokenizer && r->step > 0)
        cJSON_AddNumberToObject(o, "tokens_per_second",
                                r->samples_per_second * (double)r->block_size);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static void store_warn(job_run *r, const char *what)
{
    if (!r->store_failed)
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_WARN, "%s: %s", what,
                     kstore_last_error(r->store));
    r->store_failed = true; /* log once; the next write may succeed */
}

static void flush(job_run *r)
{
    if (r->n_points > 0) {
        if (kstore_metrics_append(r->store, r->job->id, "loss", r->loss, r->n_points) !=
                KSTORE_OK ||
            kstore_metrics_append(r->store, r->job->id, "lr", r->lr, r->n_points) != KSTORE_OK)
            store_warn(r, "writing metrics");
        r->n_points = 0;
    }
    char *latest = latest_metrics_json(r);
    if (kstore_job_progress(r->store, r->job->id, r->step, r->epoch, r->total_steps,
                            r->samples_per_second, r->eta, latest) != KSTORE_OK)
        store_warn(r, "writing progress");
    free(latest);
    r->last_flush = mono_now();
}

static void add_metric(job_run *r, const char *suffix, int64_t step, double value)
{
    char name[64];
    snprintf(name, sizeof name, "%s_%s", r->eval_prefix, suffix);
    kstore_metric_point p = {.step = step, .wall_time = wall_now(), .value = value};
    if (kstore_metrics_append(r->store, r->job->id, name, &p, 1) != KSTORE_OK)
        store_warn(r, "writing metrics");
}

/* ---- checkpoints ------------------------------------------------------------------- */

/* A long job would fill the disk with checkpoints: keep the newest few (resuming needs
 * only the last; the others guard against a file damaged by a crash mid-write). */
#define CHECKPOINTS_KEPT 3

static void prune_checkpoints(job_run *r)
{
    kstore_checkpoint *list = NULL;
    int count = 0;
    if (kstore_checkpoint_list(r->store, r->job->id, &list, &count) != KSTORE_OK) return;
    int kept = 0;
    /* newest first: walk from the highest step down */
    for (int pass = count - 1; pass >= 0; pass--) {
        int best = -1;
        for (int i = 0; i < count; i++)
            if (strcmp(list[i].kind, "checkpoint") == 0 && list[i].step >= 0 &&
                (best < 0 || list[i].step > list[best].step))
                best = i;
        if (best < 0) break;
        if (++kept > CHECKPOINTS_KEPT) {
            char path[1024];
            if (kstore_checkpoint_delete(r->store, r->job->id, "checkpoint", list[best].step) ==
                    KSTORE_OK &&
                ksrv_data_path(r->server, list[best].path, path, sizeof path))
                unlink(path);
        }
        list[best].step = -1; /* visited */
    }
    free(list);
}

/* Saves and records a checkpoint; on failure r->checkpoint_error says why. */
static kn_status save_checkpoint(job_run *r, kn_trainer *trainer, int64_t step)
{
    if (step == r->last_checkpoint_step) return KN_OK;
    flush(r); /* the metrics up to the checkpoint are durable before it is */
    char name[64], rel[256], path[1024];
    snprintf(name, sizeof name, "checkpoint-%lld.safetensors", (long long)step);
    if (!job_file(r, name, rel, sizeof rel, path, sizeof path)) {
        snprintf(r->checkpoint_error, sizeof r->checkpoint_error, "the path is too long");
        return KN_ERR_VALUE;
    }
    if (!trainer) { /* a distributed job's rank 0 wrote the file (dist_launch.c) */
        if (access(path, R_OK) != 0) {
            snprintf(r->checkpoint_error, sizeof r->checkpoint_error,
                     "rank 0 reported %s but it cannot be read: %s", rel, strerror(errno));
            return KN_ERR_VALUE;
        }
    } else {
        kn_status st = kn_trainer_save_checkpoint(trainer, path);
        if (st != KN_OK) {
            snprintf(r->checkpoint_error, sizeof r->checkpoint_error, "%s", kn_last_error());
            unlink(path); /* a partial file is not a checkpoint */
            return st;
        }
    }
    chmod(path, 0600);
    struct stat sb;
    kstore_checkpoint c = {
        .step = step, .bytes = stat(path, &sb) == 0 ? sb.st_size : -1, .created_at = wall_now()};
    snprintf(c.job_id, sizeof c.job_id, "%s", r->job->id);
    snprintf(c.kind, sizeof c.kind, "checkpoint");
    snprintf(c.path, sizeof c.path, "%s", rel);
    if (kstore_checkpoint_add(r->store, &c) != KSTORE_OK) {
        snprintf(r->checkpoint_error, sizeof r->checkpoint_error, "recording it: %s",
                 kstore_last_error(r->store));
        unlink(path);
        return KN_ERR_VALUE;
    }
    r->last_checkpoint_step = step;
    ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO, "checkpoint at step %lld (%lld bytes)",
                 (long long)step, (long long)c.bytes);
    prune_checkpoints(r);
    return KN_OK;
}

/* ---- trainer callbacks ------------------------------------------------------------- */

static kn_status on_step(void *context, const kn_step_info *info)
{
    job_run *r = context;
    r->step = info->step;
    r->epoch = info->epoch;
    r->total_steps = info->total_steps;
    r->samples_per_second = info->samples_per_second;
    r->latest_loss = info->loss;
    r->latest_lr = info->lr;
    double now = mono_now();
    int64_t done = info->step - r->first_step;
    r->eta =
        done > 0 ? (now - r->start) / (double)done * (double)(info->total_steps - info->step) : -1;
    double wall = wall_now();
    r->loss[r->n_points] = (kstore_metric_point){info->step, wall, info->loss};
    r->lr[r->n_points] = (kstore_metric_point){info->step, wall, info->lr};
    r->n_points++;
    if (info->skipped)
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_WARN,
                     "step %lld: the loss is not finite (%g): the step was skipped",
                     (long long)info->step, info->loss);
    if (r->n_points >= FLUSH_STEPS || now - r->last_flush >= FLUSH_SECONDS) flush(r);

    if (*r->stopping) {
        r->stop = STOP_SHUTDOWN;
    } else if (now - r->last_poll >= POLL_SECONDS) {
        r->last_poll = now;
        bool cancel = false, pause = false;
        if (kstore_job_flags(r->store, r->job->id, &cancel, &pause) == KSTORE_OK)
            r->stop = cancel ? STOP_CANCEL : pause ? STOP_PAUSE : STOP_NONE;
    }
    if (r->stop == STOP_NONE) return KN_OK;
    flush(r);
    /* a distributed job's ranks checkpoint themselves when asked (no trainer here) */
    if (r->stop != STOP_CANCEL && r->trainer && save_checkpoint(r, r->trainer, info->step) != KN_OK)
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_WARN, "checkpoint at step %lld failed: %s",
                     (long long)info->step, r->checkpoint_error);
    return KN_ERR_VALUE; /* stops kn_trainer_run; r->stop says why */
}

/* An evaluation's loss and the task's metrics as <prefix>_<name> series; the details of
 * the latest are kept for the end of the run. */
static void record_eval(job_run *r, const kn_eval_result *result, int64_t step,
                        struct eval_numbers *numbers)
{
    numbers->has = true;
    numbers->loss = result->loss;
    numbers->n_metrics = kapi_eval_metrics(result, numbers->metrics);
    /* a language model's perplexity, exp(mean cross-entropy per token) (issue 12) */
    if (r->tokenizer && numbers->n_metrics < KAPI_MAX_METRICS)
        numbers->metrics[numbers->n_metrics++] = (kapi_metric){"perplexity", exp(result->loss)};
    add_metric(r, "loss", step, result->loss);
    for (int i = 0; i < numbers->n_metrics; i++)
        add_metric(r, numbers->metrics[i].name, step, numbers->metrics[i].value);
    /* the job's log: "evaluation at step 20 (epoch 2): val_loss 0.31, val_accuracy 0.9,
     * ... on 128 samples" (the test set's: "test at step 40: test_loss ...") */
    char line[1024];
    size_t n = 0;
    if (numbers == &r->test)
        n = (size_t)snprintf(line, sizeof line, "test at step %lld: ", (long long)step);
    else
        n = (size_t)snprintf(line, sizeof line,
                             "evaluation at step %lld (epoch %lld): ", (long long)step,
                             (long long)result->epoch + 1);
    n += (size_t)snprintf(line + n, sizeof line - n, "%s_loss %.6g", r->eval_prefix, result->loss);
    for (int i = 0; i < numbers->n_metrics && n < sizeof line; i++)
        n += (size_t)snprintf(line + n, sizeof line - n, ", %s_%s %.4g", r->eval_prefix,
                              numbers->metrics[i].name, numbers->metrics[i].value);
    if (n < sizeof line)
        snprintf(line + n, sizeof line - n, " on %lld samples", (long long)result->count);
    ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO, "%s", line);
    char *details = kapi_eval_details_json(result);
    if (details) {
        cJSON *o = cJSON_Parse(details);
        cJSON_AddStringToObject(o, "split", r->eval_prefix);
        cJSON_AddNumberToObject(o, "step", (double)step);
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        free(details);
        free(r->evaluation_pending);
        r->evaluation_pending = text;
    }
}

static kn_status on_eval(void *context, const kn_eval_result *result)
{
    job_run *r = context;
    record_eval(r, result, result->step, &r->eval);
    return KN_OK;
}

/* A checkpoint that cannot be written stops the job, which fails with checkpoint_failed
 * at that step (after_stop): training on would look fine until a restart or a pause threw
 * the unsaved steps away, and on a full disk the final weights would fail too, after all
 * the compute. docs/job-spec.md gives the reasons to users. */
static kn_status on_checkpoint(void *context, kn_trainer *trainer, int64_t step)
{
    job_run *r = context;
    if (save_checkpoint(r, trainer, step) == KN_OK) return KN_OK;
    r->stop = STOP_CHECKPOINT_FAILED;
    r->step = step;
    return KN_ERR_VALUE; /* stops kn_trainer_run */
}

/* ---- set-up ------------------------------------------------------------------------ */

/* "init_weights": the file of the pinned version of the job's model, or of a succeeded
 * job's final weights, into path. False after writing the failure. */
static bool init_weights_path(job_run *r, const kapi_job_spec *spec,
                              const kapi_model_spec *model_spec, char *path, size_t size)
{
    const char *model_name = spec->model_name[0] ? spec->model_name : model_spec->name;
    kstore_version v;
    kstore_status s;
    if (spec->init_version[0]) {
        s = kstore_version_get(r->store, model_name, spec->init_version, &v);
    } else {
        kstore_job from;
        s = kstore_job_get(r->store, spec->init_job, &from);
        if (s == KSTORE_OK) s = kstore_version_get(r->store, from.model_name, from.id, &v);
        if (s == KSTORE_OK || s == KSTORE_NOT_FOUND) kstore_job_free(&from);
    }
    const char *field = spec->init_version[0] ? "init_weights.version" : "init_weights.job";
    const char *name = spec->init_version[0] ? spec->init_version : spec->init_job;
    if (s != KSTORE_OK) {
        fail(r, "invalid_spec", -1, "%s: %s", field,
             s == KSTORE_NOT_FOUND ? "it is gone (deleted since the job was queued)"
                                   : kstore_last_error(r->store));
        return false;
    }
    bool ok = v.path[0] && ksrv_data_path(r->server, v.path, path, size);
    if (!ok)
        fail(r, "invalid_spec", -1, "%s: %s has no weights", field, name);
    else
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO, "initial weights: %s %s%s%s%s (%s)",
                     spec->init_version[0] ? "version" : "job", name,
                     spec->init_alias[0] ? " (alias " : "", spec->init_alias,
                     spec->init_alias[0] ? ")" : "", v.path);
    kstore_version_free(&v);
    return ok;
}

/* init_weights_path's file loaded strictly into model (before it moves to its device).
 * False after writing the failure. */
static bool load_init_weights(job_run *r, const kapi_job_spec *spec,
                              const kapi_model_spec *model_spec, kn_module *model)
{
    char path[1024];
    if (!init_weights_path(r, spec, model_spec, path, sizeof path)) return false;
    if (kn_module_load_weights(model, path, true) == KN_OK) return true;
    fail(r, "invalid_spec", -1, "%s: loading %s: %s",
         spec->init_version[0] ? "init_weights.version" : "init_weights.job",
         spec->init_version[0] ? spec->init_version : spec->init_job, kn_last_error());
    return false;
}

/* The model spec: inline, or the stored model of that name. */
static kapi_model_spec *resolve_model(job_run *r, const kapi_job_spec *spec, bool *owned)
{
    *owned = false;
    if (spec->model) return spec->model;
    kstore_model m = {0};
    kstore_status s = kstore_model_get(r->store, spec->model_name, &m);
    if (s != KSTORE_OK) {
        fail(r, "invalid_spec", -1, "model: %s",
             s == KSTORE_NOT_FOUND ? "no such model" : kstore_last_error(r->store));
        return NULL;
    }
    kapi_errors errors = {0};
    kapi_model_spec *model = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
    kstore_model_free(&m);
    if (!model) fail_errors(r, "invalid_spec", &errors);
    kapi_errors_free(&errors);
    *owned = model != NULL;
    return model;
}

/* The sources of one split ("train", "test") from the dataset's files; false after
 * writing the failure. */
static bool dataset_source(job_run *r, const kstore_dataset *ds, const char *split,
                           const kapi_data_spec *data, kapi_data_source *out)
{
    char message[600];
    if (!ksrv_dataset_source(r->server, ds, split, data, out, message, sizeof message)) return true;
    fail(r, "data_error", -1, "%s", message);
    return false;
}

/* The engine names the files it read by their paths under the data directory: a user of
 * the server knows them as a dataset's files, and the server's paths are not theirs to
 * see. Each error is put at `what` ("data.train"), its file named "dataset/file". */
static void name_files(kapi_errors *errors, const kapi_data_source *source, const char *dataset,
                       const char *what)
{
    const char *paths[] = {source->inputs_path, source->labels_path};
    for (int i = 0; i < errors->count; i++) {
        kapi_error *e = &errors->items[i];
        for (int k = 0; k < 2; k++) {
            if (!paths[k][0]) continue;
            const char *base = strrchr(paths[k], '/');
            char label[128];
            snprintf(label, sizeof label, "%.64s/%.60s", dataset, base ? base + 1 : paths[k]);
            replace_path(e->message, sizeof e->message, paths[k], label);
            if (!strcmp(e->path, paths[k]))
                snprintf(e->path, sizeof e->path, "%.24s (%.120s)", what, label);
        }
    }
}

/* Loads one split as the task takes it and fits it to the model (shaped, labels checked);
 * NULL after writing the failure. Preprocessing comes later (kapi_prepare_data). */
static kn_dataset *load_split(job_run *r, const kapi_job_spec *spec, const kapi_model_spec *model,
                              const kapi_data_source *source, const char *what)
{
    kapi_errors errors = {0};
    kapi_load_options load = {.task = spec->train.task};
    kn_dataset *ds = kapi_load_data(source, load, &errors);
    if (!ds) {
        if (errors.count == 0) kapi_errors_add(&errors, what, "%s", kn_last_error());
        name_files(&errors, source, spec->data.dataset, what);
        fail_errors(r, kn_last_status() == KN_ERR_MEMORY ? "out_of_memory" : "data_error", &errors);
        kapi_errors_free(&errors);
        return NULL;
    }
    if (!kapi_dataset_fit_job(ds, model, &spec->train, what, &errors)) {
        fail_errors(r, "data_error", &errors);
        kn_dataset_free(ds);
        ds = NULL;
    }
    kapi_errors_free(&errors);
    return ds;
}

/* A language model's job (issue 12): the dataset's train_text tokenised as data.tokenizer
 * says (chars by default), nanoGPT's split and windows of the model's input length. The
 * model takes [block_size] token ids and gives [block_size, vocabulary] logits at least as
 * wide as the text's vocabulary. false after writing the failure. */
static bool load_text(job_run *r, const kapi_job_spec *spec, const kapi_model_spec *model,
                      const kstore_dataset *ds, const kstore_dataset_file *file, kn_dataset **train,
                      kn_dataset **validation)
{
    if (!file) {
        fail(r, "invalid_spec", -1,
             "data.tokenizer: dataset %s has no train_text (upload one with PUT "
             "/v1/datasets/%s/files/train_text?format=text)",
             ds->name, ds->name);
        return false;
    }
    if (model->input_ndim != 1 || model->output_ndim != 2 || model->input_dtype != KN_INT64) {
        fail(r, "invalid_spec", -1,
             "%s: a language model takes [block_size] int64 token ids (an embedding reads "
             "them) and gives [block_size, vocabulary] logits; this model takes %d dims of %s "
             "and gives %d",
             model->graph ? "model.inputs" : "model.input_shape", model->input_ndim,
             kn_dtype_name(model->input_dtype), model->output_ndim);
        return false;
    }
    kapi_tokenizer_kind kind = KAPI_TOKENIZER_CHARS;
    if (spec->data.tokenizer[0]) kapi_tokenizer_kind_parse(spec->data.tokenizer, &kind);
    char path[1024];
    if (!ksrv_data_path(r->server, file->path, path, sizeof path)) {
        fail(r, "data_error", -1, "dataset %s: train_text: path too long", ds->name);
        return false;
    }
    kapi_errors errors = {0};
    size_t size = 0;
    char *text = kapi_read_file(path, &size, &errors);
    kapi_text_data td = {0};
    /* errors name the dataset's file, never the server's path */
    char where[200];
    snprintf(where, sizeof where, "data.dataset (%s/train_text)", ds->name);
    kapi_errors_free(&errors);
    if (!text) {
        fail(r, "data_error", -1, "%s: cannot be read back", where);
        return false;
    }
    bool ok =
        kapi_text_data_make(text, size, kind, model->input_shape[0], spec->data.validation_split,
                            spec->data.validation_windows, where, &td, &errors);
    free(text);
    if (!ok) {
        fail_errors(r, "data_error", &errors);
        kapi_errors_free(&errors);
        return false;
    }
    int64_t vocab = td.tokenizer->vocab_size, logits = model->output_shape[1];
    if (logits < vocab) {
        fail(r, "invalid_spec", -1,
             "model: the text's %s tokenizer has %lld tokens but the model gives %lld logits a "
             "position (its last layer's out_features, and the embedding's num_embeddings, "
             "must be at least %lld)",
             kapi_tokenizer_kind_name(kind), (long long)vocab, (long long)logits, (long long)vocab);
        kapi_text_data_free(&td);
        return false;
    }
    int embedding = -1; /* the embedding that reads the tokens (a chain's layers[0]) */
    int64_t rows = kapi_model_input_rows(model, 0, &embedding);
    if (rows >= 0 && rows < vocab) {
        char field[KAPI_NODE_NAME_MAX + 64];
        if (model->graph)
            snprintf(field, sizeof field, "model (node %s).num_embeddings",
                     model->layers[embedding].name);
        else
            snprintf(field, sizeof field, "model.layers[%d].num_embeddings", embedding);
        fail(r, "invalid_spec", -1,
             "%s: expected at least the text's %lld tokens (%s tokenizer), got %lld", field,
             (long long)vocab, kapi_tokenizer_kind_name(kind), (long long)rows);
        kapi_text_data_free(&td);
        return false;
    }
    ksrv_log(KSRV_LOG_INFO,
             "job %s: text of %lld tokens (%s, vocabulary %lld): %lld to train on, %lld to "
             "validate",
             r->job->id, (long long)td.tokens, kapi_tokenizer_kind_name(kind), (long long)vocab,
             (long long)td.train_tokens, (long long)td.validation_tokens);
    *train = td.train;
    *validation = td.validation;
    r->tokenizer = td.tokenizer;
    r->block_size = model->input_shape[0];
    return true;
}

/* The device the job runs on, or false after writing device_unavailable. "auto" is the
 * worker's GPU when it has one, else cuda:0 when this machine has a CUDA device, else
 * the CPU; "cuda" without an index is the worker's GPU when it has one. */
static bool choose_device(job_run *r, const kapi_job_spec *spec, kn_device worker, kn_device *out)
{
    const char *name = spec->device[0] ? spec->device : "cpu";
    bool worker_gpu = worker.type == KN_DEVICE_CUDA && kn_device_available(worker);
    if (!strcmp(name, "auto")) {
        if (worker_gpu)
            *out = worker;
        else if (kn_cuda_device_count() > 0)
            *out = (kn_device){KN_DEVICE_CUDA, 0};
        else
            *out = kn_cpu();
        return true;
    }
    if (!strcmp(name, "cuda") && worker_gpu) {
        *out = worker;
        return true;
    }
    if (kn_device_parse(name, out) != KN_OK) {
        fail(r, "invalid_spec", -1,
             "device: expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", "
             "got \"%s\"",
             name);
        return false;
    }
    if (!kn_device_available(*out)) {
        fail(r, "device_unavailable", -1, "device %s is not available on this server (it has %s)",
             name, r->server->config.devices[0] ? r->server->config.devices : "cpu");
        return false;
    }
    return true;
}

/* The end of a successful run whose final weights are in the job's model.safetensors:
 * the test set's numbers (NULL: none apart from validation), the weights recorded, the
 * final metrics and evaluation details, succeeded. */
static ksrv_run_outcome record_success(job_run *r, const kn_eval_result *test)
{
    if (test) {
        const char *prefix = r->eval_prefix;
        r->eval_prefix = "test";
        record_eval(r, test, r->step, &r->test);
        r->eval_prefix = prefix;
    }
    r->evaluation = r->evaluation_pending;
    r->evaluation_pending = NULL;
    char rel[256], path[1024];
    if (!job_file(r, "model.safetensors", rel, sizeof rel, path, sizeof path))
        return fail(r, "internal", -1, "the data directory path is too long");
    struct stat sb;
    kstore_checkpoint c = {
        .step = r->step, .bytes = stat(path, &sb) == 0 ? sb.st_size : -1, .created_at = wall_now()};
    snprintf(c.job_id, sizeof c.job_id, "%s", r->job->id);
    snprintf(c.kind, sizeof c.kind, "final");
    snprintf(c.path, sizeof c.path, "%s", rel);
    if (kstore_checkpoint_add(r->store, &c) != KSTORE_OK)
        return fail(r, "internal", -1, "recording the weights: %s", kstore_last_error(r->store));
    r->eta = 0;
    flush(r);
    /* the last line before the state: a follower that sees the end has seen it */
    ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO,
                 "succeeded at step %lld (%.0f samples/s): weights %s (%lld bytes)",
                 (long long)r->step, r->samples_per_second, rel, (long long)c.bytes);
    if (kstore_job_finish(r->store, r->job->id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1) != KSTORE_OK)
        ksrv_log(KSRV_LOG_ERROR, "job %s: recording success: %s", r->job->id,
                 kstore_last_error(r->store));
    return KSRV_RUN_FINISHED;
}

/* The end of a local run: a test evaluation when the test set was not the validation
 * set, the final weights written with the job's preprocessing in their metadata, then
 * recorded. */
static ksrv_run_outcome finish_success(job_run *r, kn_module *model,
                                       const kapi_model_spec *model_spec, const kapi_job_spec *spec,
                                       const kn_dataset *test, bool test_was_validation,
                                       const kapi_preprocessing *preprocessing)
{
    kn_eval_result e = {0};
    bool tested = test && !test_was_validation;
    if (tested && kn_evaluate_config(model, test, &spec->train, &e) != KN_OK)
        return fail(r, engine_code(), -1, "evaluating the test set: %s", kn_last_error());
    char rel[256], path[1024];
    ksrv_run_outcome o;
    kapi_errors errors = {0};
    if (!job_file(r, "model.safetensors", rel, sizeof rel, path, sizeof path)) {
        o = fail(r, "internal", -1, "the data directory path is too long");
    } else if (!kapi_save_weights(model, path, preprocessing, model_spec, r->tokenizer, &errors)) {
        unlink(path);
        o = fail(r, engine_code(), r->step, "writing the weights: %s",
                 errors.count ? errors.items[0].message : kn_last_error());
        kapi_errors_free(&errors);
    } else {
        chmod(path, 0600);
        o = record_success(r, tested ? &e : NULL);
    }
    kn_eval_result_clear(&e);
    return o;
}

/* After kn_trainer_run returned an error: why it stopped. */
static ksrv_run_outcome after_stop(job_run *r)
{
    switch (r->stop) {
    case STOP_CANCEL:
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO, "canceled at step %lld",
                     (long long)r->step);
        if (kstore_job_finish(r->store, r->job->id, KSTORE_JOB_CANCELED, NULL, NULL, -1) !=
            KSTORE_OK)
            store_warn(r, "recording the cancel");
        return KSRV_RUN_FINISHED;
    case STOP_PAUSE:
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO,
                     "paused at step %lld (checkpointed; resume continues from there)",
                     (long long)r->step);
        if (kstore_job_set_paused(r->store, r->job->id) != KSTORE_OK)
            store_warn(r, "recording the pause");
        return KSRV_RUN_PAUSED;
    case STOP_SHUTDOWN:
        ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO,
                     "stopped at step %lld: the server is shutting down (the job resumes when "
                     "it starts again)",
                     (long long)r->step);
        return KSRV_RUN_STOPPED;
    case STOP_CHECKPOINT_FAILED: {
        char last[64] = "no checkpoint was written";
        if (r->last_checkpoint_step >= 0)
            snprintf(last, sizeof last, "the last checkpoint is at step %lld",
                     (long long)r->last_checkpoint_step);
        return fail(r, "checkpoint_failed", r->step,
                    "the checkpoint at step %lld could not be written: %s; training stopped "
                    "rather than go on without one (%s)",
                    (long long)r->step, r->checkpoint_error, last);
    }
    default:
        break;
    }
    /* the trainer's own error: "step N: ..." names the step */
    char message[1024];
    snprintf(message, sizeof message, "%s", kn_last_error());
    long long step = -1;
    if (sscanf(message, "step %lld:", &step) != 1) step = -1;
    const char *code = engine_code();
    if (strstr(message, "loss is") || strstr(message, "not finite")) code = "non_finite_loss";
    return fail(r, code, step, "%s", message);
}

/* ---- distributed jobs ----------------------------------------------------------------------
 * The ranks train (dist_launch.c); this side records what rank 0 reports through the same
 * callbacks a local trainer drives, and ends the job as a local run would. */
static ksrv_run_outcome run_distributed(job_run *r, const kapi_job_spec *spec,
                                        const kapi_model_spec *model_spec,
                                        const kapi_data_source *train, const kapi_data_source *test)
{
    kstore_model stored = {0};
    if (!spec->model && kstore_model_get(r->store, spec->model_name, &stored) != KSTORE_OK)
        return fail(r, "invalid_spec", -1, "model: no such model");
    char error[256];
    int every = r->server->config.checkpoint_every_steps > 0
                    ? r->server->config.checkpoint_every_steps
                    : DEFAULT_CHECKPOINT_EVERY;
    cJSON *rank_spec = ksrv_dist_rank_spec(r->job->spec_json, spec->model ? NULL : stored.spec_json,
                                           train, test, every, error, sizeof error);
    kstore_model_free(&stored);
    if (!rank_spec) return fail(r, "internal", -1, "%s", error);
    /* the ranks read init_weights as the command line does: a file (a resumed job's
     * checkpoint has the weights, and each launch's resume_from wins over it) */
    cJSON_DeleteItemFromObjectCaseSensitive(rank_spec, "init_weights");
    if (spec->init_version[0] || spec->init_job[0]) {
        char path[1024];
        if (!init_weights_path(r, spec, model_spec, path, sizeof path)) {
            cJSON_Delete(rank_spec);
            return KSRV_RUN_FINISHED;
        }
        cJSON_AddStringToObject(rank_spec, "init_weights", path);
    }
    if (!make_job_dir(r)) {
        cJSON_Delete(rank_spec);
        return fail(r, "internal", -1, "creating the job's folder: %s", strerror(errno));
    }
    kstore_checkpoint latest;
    if (kstore_checkpoint_latest(r->store, r->job->id, "checkpoint", &latest) == KSTORE_OK)
        r->last_checkpoint_step = r->first_step = r->step = latest.step;
    r->start = r->last_flush = r->last_poll = mono_now();
    ksrv_log(KSRV_LOG_INFO, "job %s: training on %d processes (%s) from step %lld", r->job->id,
             spec->distributed.processes, spec->distributed.devices, (long long)r->first_step);
    ksrv_job_log(r->store, r->job->id, KSRV_JOB_INFO,
                 "training on %d processes (%s) through mpirun, from step %lld",
                 spec->distributed.processes, spec->distributed.devices, (long long)r->first_step);
    kn_train_callbacks callbacks = {
        .context = r, .on_step = on_step, .on_eval = on_eval, .on_checkpoint = on_checkpoint};
    ksrv_dist_job job = {.server = r->server,
                         .store = r->store,
                         .job = r->job,
                         .spec = spec,
                         .rank_spec = rank_spec,
                         .callbacks = &callbacks,
                         .stopping = r->stopping};
    ksrv_dist_result result;
    ksrv_dist_run(&job, &result);
    cJSON_Delete(rank_spec);
    switch (result.end) {
    case KSRV_DIST_SUCCEEDED: {
        r->step = result.steps;
        return record_success(r, result.has_test ? &result.test : NULL);
    }
    case KSRV_DIST_CANCELED:
        r->stop = STOP_CANCEL;
        break;
    case KSRV_DIST_PAUSED:
        r->stop = STOP_PAUSE;
        break;
    case KSRV_DIST_SHUTDOWN:
        r->stop = STOP_SHUTDOWN;
        break;
    case KSRV_DIST_FAILED:
        flush(r);
        return fail(r, result.code, result.step, "%s", result.message);
    }
    flush(r);
    return after_stop(r);
}

ksrv_run_outcome ksrv_job_run(ksrv_server *server, kstore *store, const kstore_job *job,
                              kn_device worker_device, volatile int *stopping)
{
    job_run *r = calloc(1, sizeof *r);
    if (!r) return KSRV_RUN_STOPPED; /* left running: retried at the next start */
    *r = (job_run){.server = server,
                   .store = store,
                   .job = job,
                   .stopping = stopping,
                   .eval_prefix = "val",
                   .eta = -1,
                   .last_checkpoint_step = -1};
    ksrv_run_outcome outcome = KSRV_RUN_FINISHED;
    kapi_job_spec *spec = NULL;
    kapi_model_spec *model_spec = NULL;
    bool model_owned = false;
    kstore_dataset dataset = {0};
    bool have_dataset = false;
    kn_module *model = NULL;
    kn_generator *generator = NULL;
    kn_dataset *train = NULL, *validation = NULL, *test = NULL;
    kapi_preprocessing preprocessing = {.scale = 1};
    bool tf32_before = kn_get_allow_tf32(); /* the job's choice, on this thread, until done */

    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = false};
    spec = job->spec_json
               ? kapi_job_spec_parse(job->spec_json, strlen(job->spec_json), options, &errors)
               : NULL;
    if (!spec) {
        outcome = fail_errors(r, "invalid_spec", &errors);
        goto done;
    }
    kn_set_allow_tf32(spec->allow_tf32);
    kn_device device = kn_cpu(); /* a distributed job's ranks choose their own */
    if (spec->distributed.processes == 0 && !choose_device(r, spec, worker_device, &device))
        goto done;
    model_spec = resolve_model(r, spec, &model_owned);
    if (!model_spec) goto done;
    if (!spec->data.dataset[0]) {
        outcome = fail(r, "invalid_spec", -1,
                       "data.dataset: the server trains on stored "
                       "datasets; upload one and name it here");
        goto done;
    }
    kstore_status s = kstore_dataset_get(store, spec->data.dataset, &dataset);
    if (s != KSTORE_OK) {
        outcome = fail(r, "data_error", -1, "dataset %s: %s", spec->data.dataset,
                       s == KSTORE_NOT_FOUND ? "no such dataset" : kstore_last_error(store));
        goto done;
    }
    have_dataset = true;
    const kstore_dataset_file *text_file = NULL;
    for (int i = 0; i < dataset.n_files; i++)
        if (!strcmp(dataset.files[i].role, "train_text")) text_file = &dataset.files[i];
    bool text_job = text_file || spec->data.tokenizer[0];
    kapi_data_source train_source, test_source;
    if (!dataset_source(r, &dataset, "train", &spec->data, &train_source) ||
        !dataset_source(r, &dataset, "test", &spec->data, &test_source))
        goto done;
    if (!train_source.present && !text_job) {
        outcome = fail(r, "data_error", -1, "dataset %s has no training files", dataset.name);
        goto done;
    }

    /* Submission checked this, but the job may be older than the server's budget, and a
     * model too big for the machine would not fail at its first malloc: it would get
     * kilnd killed, and again at every restart as the job resumed. */
    ksrv_job_memory need =
        ksrv_job_memory_needed(spec, model_spec, -1, device.type == KN_DEVICE_CUDA);
    char memory_message[512];
    const char *memory_path = "";
    if (!ksrv_job_fits_memory(need, server->job_memory_limit, spec, memory_message,
                              sizeof memory_message, &memory_path)) {
        outcome = fail(r, "out_of_memory", -1, "%s: %s", memory_path, memory_message);
        goto done;
    }
    if (spec->distributed.processes > 0 && text_job) {
        outcome = fail(r, "invalid_spec", -1,
                       "distributed: a language model's text (data.tokenizer, train_text) trains "
                       "in one process: leave distributed out");
        goto done;
    }
    if (spec->distributed.processes > 0) { /* ranks of kiln train through mpirun */
        outcome = run_distributed(r, spec, model_spec, &train_source, &test_source);
        goto done;
    }
    /* The job's own generator, as torch.manual_seed(seed) before building: it decides
     * the initial weights, then dropout's masks, and checkpoints keep its state. Each
     * job has its own, so jobs on other workers neither race on nor perturb it. */
    generator = kn_generator_new(spec->train.seed);
    model = generator ? kapi_model_build(model_spec, generator) : NULL;
    if (!model) {
        outcome = fail(r, engine_code(), -1, "building the model: %s", kn_last_error());
        goto done;
    }
    /* a checkpoint (a resumed job) holds the weights; else init_weights gives them */
    kstore_checkpoint latest;
    bool resuming = kstore_checkpoint_latest(store, job->id, "checkpoint", &latest) == KSTORE_OK;
    if (!resuming && (spec->init_version[0] || spec->init_job[0]) &&
        !load_init_weights(r, spec, model_spec, model))
        goto done;
    if (device.type != KN_DEVICE_CPU && kn_module_to(model, device) != KN_OK) {
        /* CUDA out of memory (the message gives the sizes) is the job's, not the device's */
        const char *code =
            kn_last_status() == KN_ERR_MEMORY ? "out_of_memory" : "device_unavailable";
        outcome = fail(r, code, -1, "device: %s", kn_last_error());
        goto done;
    }
    if (text_job) {
        if (!load_text(r, spec, model_spec, &dataset, text_file, &train, &validation)) goto done;
    } else {
        train = load_split(r, spec, model_spec, &train_source, "data.train");
        if (!train) goto done;
    }
    if (test_source.present && !text_job) {
        test = load_split(r, spec, model_spec, &test_source, "data.test");
        if (!test) goto done;
    }
    /* split, scale and normalise ("auto" measured on the training part only); a text's
     * windows come split from load_text (nanoGPT's first 90% / last 10%), tokens unscaled */
    if (text_job) {
        preprocessing.task = spec->train.task;
    } else if (!kapi_prepare_data(spec, model_spec, &train, &validation, &test, &preprocessing,
                                  &errors)) {
        outcome = fail_errors(r, "data_error", &errors);
        goto done;
    }
    if (!validation && test) r->eval_prefix = "test";
    if (!make_job_dir(r)) {
        outcome = fail(r, "internal", -1, "creating the job's folder: %s", strerror(errno));
        goto done;
    }

    kn_train_config config = spec->train;
    config.generator = generator;
    if (config.checkpoint_every_steps <= 0)
        config.checkpoint_every_steps = server->config.checkpoint_every_steps > 0
                                            ? server->config.checkpoint_every_steps
                                            : DEFAULT_CHECKPOINT_EVERY;
    r->trainer = kn_trainer_new(model, &config);
    if (!r->trainer) {
        outcome = fail(r, "invalid_spec", -1, "train: %s", kn_last_error());
        goto done;
    }
    if (resuming) {
        char path[1024];
        if (!ksrv_data_path(server, latest.path, path, sizeof path) ||
            kn_trainer_load_checkpoint(r->trainer, path) != KN_OK) {
            outcome = fail(r, "internal", -1, "resuming from %s: %s", latest.path, kn_last_error());
            goto done;
        }
        r->last_checkpoint_step = latest.step;
        ksrv_job_log(store, job->id, KSRV_JOB_INFO, "resuming from the checkpoint at step %lld",
                     (long long)latest.step);
    }
    if (*stopping) { /* shutdown began while loading: stay running, resume at start */
        outcome = KSRV_RUN_STOPPED;
        goto done;
    }
    r->first_step = r->step = kn_trainer_step(r->trainer);
    r->start = r->last_flush = r->last_poll = mono_now();
    char device_name[32];
    ksrv_job_log(store, job->id, KSRV_JOB_INFO,
                 "started on %s (worker %s, %d engine threads): model %s (%lld parameters), "
                 "dataset %s: %lld training samples%s, %lld test samples, %lld steps from step "
                 "%lld",
                 kn_device_str(device, device_name, sizeof device_name), job->device,
                 kn_get_num_threads(), model_spec->name[0] ? model_spec->name : "(inline)",
                 (long long)kn_module_parameter_count(model), spec->data.dataset,
                 (long long)train->count, validation ? " (a validation split held out)" : "",
                 test ? (long long)test->count : 0LL, (long long)job->total_steps,
                 (long long)r->first_step);

    kn_train_callbacks callbacks = {
        .context = r, .on_step = on_step, .on_eval = on_eval, .on_checkpoint = on_checkpoint};
    kn_train_summary summary;
    kn_status st =
        kn_trainer_run(r->trainer, train, validation ? validation : test, &callbacks, &summary);
    if (st != KN_OK) {
        outcome = after_stop(r);
        goto done;
    }
    r->step = summary.steps;
    outcome = finish_success(r, model, model_spec, spec, test, !validation, &preprocessing);

done:
    kapi_errors_free(&errors);
    kn_trainer_free(r->trainer);
    kn_dataset_free(train);
    kn_dataset_free(validation);
    kn_dataset_free(test);
    kapi_tokenizer_free(r->tokenizer);
    kn_module_free(model);
    kn_generator_free(generator);
    kapi_preprocessing_free(&preprocessing);
    free(r->evaluation);
    free(r->evaluation_pending);
    if (have_dataset) kstore_dataset_free(&dataset);
    if (model_owned) kapi_model_spec_free(model_spec);
    kapi_job_spec_free(spec);
    free(r);
    kn_set_allow_tf32(tf32_before);
    return outcome;
}

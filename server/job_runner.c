/*
 * job_runner.c — one job, claimed by a worker, run to its end: the spec parsed again
 * (allow_paths off), the model resolved (by name from the store or inline), the
 * dataset's files found in the store, the model built from the job's seed, data loaded,
 * normalised and shaped as cli/job.c does it (through the same kapi/kn functions), and
 * the trainer run with callbacks that write metrics, progress and checkpoints to the
 * store and obey cancel, pause and server shutdown. A checkpoint in the store makes the
 * run resume with the same step counter and data order.
 *
 * Engine state shared between workers: the default generator (initial weights, dropout,
 * and the RNG state saved in checkpoints) and the thread count of the engine's pool and
 * OpenBLAS are process-wide. Seeding and building a model happen under one lock so the
 * initial weights are a function of the job's seed; with workers > 1, dropout draws of
 * concurrent jobs interleave on the shared generator (runs stay correct but are not
 * bit-reproducible). The data order is always reproducible (seed, epoch).
 */
#include "job_runner.h"
#include "job_memory.h"

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
    double latest_loss, latest_lr, eval_loss, eval_accuracy;
    bool has_eval;
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
    ksrv_log(KSRV_LOG_WARN, "job %s: failed (%s) %s", r->job->id, code, message);
    /* engine messages name files by their paths: users see them relative to the data
     * directory ("jobs/<id>/..."), not where the server keeps it */
    char root[600];
    if (ksrv_data_path(r->server, "", root, sizeof root) && root[0]) {
        size_t n = strlen(root);
        if (root[n - 1] != '/' && n + 1 < sizeof root) strcat(root, "/");
        replace_path(message, sizeof message, root, "");
    }
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
    if (r->has_eval) {
        char name[32];
        snprintf(name, sizeof name, "%s_loss", r->eval_prefix);
        cJSON_AddNumberToObject(o, name, r->eval_loss);
        snprintf(name, sizeof name, "%s_accuracy", r->eval_prefix);
        cJSON_AddNumberToObject(o, name, r->eval_accuracy);
        if (r->tokenizer) {
            snprintf(name, sizeof name, "%s_perplexity", r->eval_prefix);
            cJSON_AddNumberToObject(o, name, exp(r->eval_loss));
        }
    }
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
        ksrv_log(KSRV_LOG_WARN, "job %s: %s: %s", r->job->id, what, kstore_last_error(r->store));
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
    char name[32];
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
    kn_status st = kn_trainer_save_checkpoint(trainer, path);
    if (st != KN_OK) {
        snprintf(r->checkpoint_error, sizeof r->checkpoint_error, "%s", kn_last_error());
        unlink(path); /* a partial file is not a checkpoint */
        return st;
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
    ksrv_log(KSRV_LOG_DEBUG, "job %s: checkpoint at step %lld", r->job->id, (long long)step);
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
    if (r->stop != STOP_CANCEL && save_checkpoint(r, r->trainer, info->step) != KN_OK)
        ksrv_log(KSRV_LOG_ERROR, "job %s: checkpoint at step %lld: %s", r->job->id,
                 (long long)info->step, r->checkpoint_error);
    return KN_ERR_VALUE; /* stops kn_trainer_run; r->stop says why */
}

static kn_status on_eval(void *context, const kn_eval_result *result)
{
    job_run *r = context;
    r->has_eval = true;
    r->eval_loss = result->loss;
    r->eval_accuracy = result->accuracy;
    add_metric(r, "loss", result->step, result->loss);
    add_metric(r, "accuracy", result->step, result->accuracy);
    if (r->tokenizer) add_metric(r, "perplexity", result->step, exp(result->loss));
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

/* The sources of one split ("train", "test") from the dataset's files. */
static bool dataset_source(job_run *r, const kstore_dataset *ds, const char *split,
                           kapi_data_source *out)
{
    memset(out, 0, sizeof *out);
    size_t n = strlen(split);
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
        if (!strcmp(f->format, "idx")) {
            out->format = KAPI_FORMAT_IDX;
        } else if (!strcmp(f->format, "npy")) {
            out->format = KAPI_FORMAT_NPY;
        } else if (!strcmp(f->format, "csv")) {
            out->format = KAPI_FORMAT_CSV;
        } else {
            fail(r, "data_error", -1,
                 "dataset %s: file %s has format %s, which training cannot read", ds->name, f->role,
                 f->format);
            return false;
        }
        if (!ksrv_data_path(r->server, f->path, target, sizeof out->inputs_path)) {
            fail(r, "data_error", -1, "dataset %s: file %s: path too long", ds->name, f->role);
            return false;
        }
        out->present = true;
    }
    if (out->present && out->format != KAPI_FORMAT_CSV &&
        (!out->inputs_path[0] || !out->labels_path[0])) {
        fail(r, "data_error", -1,
             "dataset %s: %s needs both %s_images (or %s_inputs) and %s_labels", ds->name, split,
             split, split, split);
        return false;
    }
    if (out->format == KAPI_FORMAT_CSV)
        snprintf(out->label_column, sizeof out->label_column, "label");
    return true;
}

/* Loads, normalises and shapes one split; NULL after writing the failure. */
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

static kn_dataset *load_split(job_run *r, const kapi_job_spec *spec, const kapi_model_spec *model,
                              const kapi_data_source *source, const char *what)
{
    kapi_errors errors = {0};
    kn_dataset *ds = kapi_load_data_source(source, &errors);
    if (!ds) {
        if (errors.count == 0) kapi_errors_add(&errors, what, "%s", kn_last_error());
        name_files(&errors, source, spec->data.dataset, what);
        fail_errors(r, kn_last_status() == KN_ERR_MEMORY ? "out_of_memory" : "data_error", &errors);
        kapi_errors_free(&errors);
        return NULL;
    }
    const kapi_data_spec *d = &spec->data;
    if (kn_dataset_normalize(ds, d->scale, d->mean, d->std, d->channels) != KN_OK) {
        fail(r, "data_error", -1, "%s: %s", what, kn_last_error());
        kn_dataset_free(ds);
        kapi_errors_free(&errors);
        return NULL;
    }
    if (!kapi_dataset_fit_model(ds, model, what, &errors)) {
        fail_errors(r, "data_error", &errors);
        kn_dataset_free(ds);
        ds = NULL;
    }
    kapi_errors_free(&errors);
    return ds;
}

/* The device the job runs on, or false after writing device_unavailable. "auto" is the
 * worker's GPU when it has one, else cuda:0 when this machine has a CUDA device, else
 * the CPU; "cuda" without an index is the worker's GPU when it has one. */
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
    if (model->input_ndim != 1 || model->output_ndim != 2) {
        fail(r, "invalid_spec", -1,
             "model.input_shape: a language model takes [block_size] token ids and gives "
             "[block_size, vocabulary] logits; this model takes %d dims and gives %d",
             model->input_ndim, model->output_ndim);
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
    if (model->n_layers > 0 && model->layers[0].kind == KN_MODULE_EMBEDDING &&
        model->layers[0].options.embedding.num_embeddings < vocab) {
        fail(r, "invalid_spec", -1,
             "model.layers[0].num_embeddings: expected at least the text's %lld tokens (%s "
             "tokenizer), got %lld",
             (long long)vocab, kapi_tokenizer_kind_name(kind),
             (long long)model->layers[0].options.embedding.num_embeddings);
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

/* The end of a successful run: a test evaluation when the test set was not the
 * validation set, the final weights, the final metrics, succeeded. */
static ksrv_run_outcome finish_success(job_run *r, kn_module *model, const kapi_job_spec *spec,
                                       const kn_dataset *test, bool test_was_validation)
{
    if (test && !test_was_validation) {
        kn_eval_result e;
        if (kn_evaluate(model, test, spec->train.loss, spec->train.eval_batch_size, &e) != KN_OK)
            return fail(r, engine_code(), -1, "evaluating the test set: %s", kn_last_error());
        const char *prefix = r->eval_prefix;
        r->eval_prefix = "test";
        add_metric(r, "loss", r->step, e.loss);
        add_metric(r, "accuracy", r->step, e.accuracy);
        r->eval_prefix = prefix;
    }
    char rel[256], path[1024];
    if (!job_file(r, "model.safetensors", rel, sizeof rel, path, sizeof path))
        return fail(r, "internal", -1, "the data directory path is too long");
    char *tokenizer = r->tokenizer ? kapi_tokenizer_to_json(r->tokenizer) : NULL;
    kn_safetensors_meta meta[] = {{KAPI_META_TOKENIZER, tokenizer}};
    kn_status saved = r->tokenizer && !tokenizer
                          ? KN_ERR_MEMORY
                          : kn_module_save_weights_meta(model, path, meta, tokenizer ? 1 : 0);
    free(tokenizer);
    if (saved != KN_OK) {
        unlink(path);
        return fail(r, engine_code(), r->step, "writing the weights: %s", kn_last_error());
    }
    chmod(path, 0600);
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
    if (kstore_job_finish(r->store, r->job->id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1) != KSTORE_OK)
        ksrv_log(KSRV_LOG_ERROR, "job %s: recording success: %s", r->job->id,
                 kstore_last_error(r->store));
    else
        ksrv_log(KSRV_LOG_INFO, "job %s: succeeded at step %lld (%.0f samples/s)", r->job->id,
                 (long long)r->step, r->samples_per_second);
    return KSRV_RUN_FINISHED;
}

/* After kn_trainer_run returned an error: why it stopped. */
static ksrv_run_outcome after_stop(job_run *r)
{
    switch (r->stop) {
    case STOP_CANCEL:
        ksrv_log(KSRV_LOG_INFO, "job %s: canceled at step %lld", r->job->id, (long long)r->step);
        if (kstore_job_finish(r->store, r->job->id, KSTORE_JOB_CANCELED, NULL, NULL, -1) !=
            KSTORE_OK)
            store_warn(r, "recording the cancel");
        return KSRV_RUN_FINISHED;
    case STOP_PAUSE:
        ksrv_log(KSRV_LOG_INFO, "job %s: paused at step %lld", r->job->id, (long long)r->step);
        if (kstore_job_set_paused(r->store, r->job->id) != KSTORE_OK)
            store_warn(r, "recording the pause");
        return KSRV_RUN_PAUSED;
    case STOP_SHUTDOWN:
        ksrv_log(KSRV_LOG_INFO, "job %s: stopped at step %lld for shutdown (resumes at start)",
                 r->job->id, (long long)r->step);
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
    kn_device device;
    if (!choose_device(r, spec, worker_device, &device)) goto done;
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
    if (!dataset_source(r, &dataset, "train", &train_source) ||
        !dataset_source(r, &dataset, "test", &test_source))
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
    /* The job's own generator, as torch.manual_seed(seed) before building: it decides
     * the initial weights, then dropout's masks, and checkpoints keep its state. Each
     * job has its own, so jobs on other workers neither race on nor perturb it. */
    generator = kn_generator_new(spec->train.seed);
    model = generator ? kapi_model_build(model_spec, generator) : NULL;
    if (!model) {
        outcome = fail(r, engine_code(), -1, "building the model: %s", kn_last_error());
        goto done;
    }
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
    if (spec->data.validation_split > 0 && !text_job) {
        kn_dataset *part = NULL;
        if (kn_dataset_split(train, spec->data.validation_split, spec->train.seed, &part,
                             &validation) != KN_OK) {
            outcome = fail(r, "data_error", -1, "data.validation_split: %s", kn_last_error());
            goto done;
        }
        kn_dataset_free(train);
        train = part;
    } else if (test) {
        r->eval_prefix = "test";
    }
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
    kstore_checkpoint latest;
    if (kstore_checkpoint_latest(store, job->id, "checkpoint", &latest) == KSTORE_OK) {
        char path[1024];
        if (!ksrv_data_path(server, latest.path, path, sizeof path) ||
            kn_trainer_load_checkpoint(r->trainer, path) != KN_OK) {
            outcome = fail(r, "internal", -1, "resuming from %s: %s", latest.path, kn_last_error());
            goto done;
        }
        r->last_checkpoint_step = latest.step;
        ksrv_log(KSRV_LOG_INFO, "job %s: resuming from step %lld", job->id, (long long)latest.step);
    }
    if (*stopping) { /* shutdown began while loading: stay running, resume at start */
        outcome = KSRV_RUN_STOPPED;
        goto done;
    }
    r->first_step = r->step = kn_trainer_step(r->trainer);
    r->start = r->last_flush = r->last_poll = mono_now();
    char device_name[32];
    ksrv_log(KSRV_LOG_INFO, "job %s: training %s on %lld samples, %s, from step %lld", job->id,
             model_spec->name[0] ? model_spec->name : "model", (long long)train->count,
             kn_device_str(device, device_name, sizeof device_name), (long long)r->first_step);

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
    outcome = finish_success(r, model, spec, test, !validation);

done:
    kapi_errors_free(&errors);
    kn_trainer_free(r->trainer);
    kn_dataset_free(train);
    kn_dataset_free(validation);
    kn_dataset_free(test);
    kapi_tokenizer_free(r->tokenizer);
    kn_module_free(model);
    kn_generator_free(generator);
    if (have_dataset) kstore_dataset_free(&dataset);
    if (model_owned) kapi_model_spec_free(model_spec);
    kapi_job_spec_free(spec);
    free(r);
    kn_set_allow_tf32(tf32_before);
    return outcome;
}

/*
 * job_spec.c — the job spec's parser: model (inline or by name), data sources and their
 * target columns, normalisation (given or "auto"), the task and its loss (weights, beta,
 * delta), optimizer, schedule and the training knobs, read into kapi_job_spec / kn_train_config
 * with torch's defaults, every problem reported at its JSON path. Local file paths are
 * accepted only when the caller allows them (the CLI); the server takes dataset names.
 */
#include "kapi_internal.h"
#include "kapi_text.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BATCH 1000000
#define MAX_EPOCHS 1000000
#define MAX_STEPS 1000000000000LL
#define MAX_SEED 9007199254740991LL /* 2^53 - 1: larger integers are not exact in JSON */

static const char *const JOB_FIELDS[] = {"model",          "data",
                                         "loss",           "optimizer",
                                         "lr_schedule",    "batch_size",
                                         "epochs",         "max_steps",
                                         "seed",           "shuffle",
                                         "drop_last",      "device",
                                         "allow_tf32",     "cuda_graph",
                                         "validation",     "checkpoint_every_steps",
                                         "grad_clip_norm", "skip_non_finite",
                                         "early_stopping", "resume_from",
                                         "init_weights",   "submission_id",
                                         "task",           "name",
                                         "distributed",    NULL};
static const char *const DATA_FIELDS[] = {"train", "test", "dataset", "validation_split", "scale",
                                          "normalize", "label_column", "target_columns",
                                          /* ---- language models (issue 12) ---- */
                                          "tokenizer", "validation_windows", NULL};
static const char *const IDX_FIELDS[] = {"format", "images", "labels", NULL};
static const char *const CSV_FIELDS[] = {"format", "path", "label_column", "target_columns", NULL};
static const char *const NPY_FIELDS[] = {"format", "inputs", "labels", NULL};
static const char *const NORMALIZE_FIELDS[] = {"mean", "std", NULL};
static const char *const LOSS_FIELDS[] = {"type", "label_smoothing", "weight", "pos_weight",
                                          "beta", "delta",           NULL};
static const char *const LOSS_NAMES =
    "\"cross_entropy\", \"nll\", \"mse\", \"l1\", \"smooth_l1\", \"huber\" or \"bce_with_logits\"";
static const char *const SGD_FIELDS[] = {
    "type", "lr", "momentum", "dampening", "nesterov", "weight_decay", "weight_decay_params", NULL};
static const char *const ADAM_FIELDS[] = {
    "type", "lr", "betas", "eps", "weight_decay", "weight_decay_params", "amsgrad", NULL};
static const char *const RMSPROP_FIELDS[] = {"type",     "lr",           "alpha",
                                             "eps",      "weight_decay", "weight_decay_params",
                                             "momentum", "centered",     NULL};
static const char *const STEP_FIELDS[] = {"type",         "step_size",           "gamma",
                                          "warmup_steps", "warmup_start_factor", NULL};
static const char *const COSINE_FIELDS[] = {
    "type", "t_max", "eta_min", "warmup_steps", "warmup_start_factor", NULL};
static const char *const CONSTANT_FIELDS[] = {"type", "warmup_steps", "warmup_start_factor", NULL};
static const char *const VALIDATION_FIELDS[] = {"every_steps", "batch_size", NULL};
static const char *const EARLY_STOPPING_FIELDS[] = {"patience", "min_delta", NULL};
static const char *const DISTRIBUTED_FIELDS[] = {"processes",     "devices",      "sync_batch_norm",
                                                 "bucket_cap_mb", "max_restarts", NULL};
#define MAX_RESTARTS 1000
#define MAX_BUCKET_MB 65536
static const char *const INIT_WEIGHTS_FIELDS[] = {"version", "alias", "job", NULL};

static const char *const NO_PATHS =
    "file paths are not accepted here: upload the data as a dataset and reference it by "
    "name (\"data\": {\"dataset\": \"NAME\"})";

static const char *const NO_WEIGHT_PATHS =
    "file paths are not accepted here: only the command line (kiln train) reads local "
    "checkpoints and weights";

/* "init_weights": {"version": V[, "alias": A]} or {"job": ID}, for the server. */
static void parse_init_weights(kapi_errors *errors, const cJSON *init, bool allow_paths,
                               kapi_job_spec *job)
{
    if (allow_paths) {
        kapi_errors_add(errors, "init_weights",
                        "a version or job lives on a server: kiln train takes a local weights "
                        "file (a string); download a version with kiln weights");
        return;
    }
    kapi__check_fields(errors, init, "init_weights", INIT_WEIGHTS_FIELDS);
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(init, "version");
    const cJSON *alias = cJSON_GetObjectItemCaseSensitive(init, "alias");
    const cJSON *from_job = cJSON_GetObjectItemCaseSensitive(init, "job");
    if (!version == !from_job) {
        kapi_errors_add(errors, "init_weights",
                        "expected one of \"version\" (a version or alias of the job's model) "
                        "and \"job\" (a succeeded job's id)");
        return;
    }
    if (version)
        kapi__check_name(errors, "init_weights.version", version, job->init_version,
                         sizeof job->init_version);
    if (alias && !version)
        kapi_errors_add(errors, "init_weights.alias", "an alias goes with a version");
    else if (alias)
        kapi__check_name(errors, "init_weights.alias", alias, job->init_alias,
                         sizeof job->init_alias);
    if (from_job) {
        bool ok = cJSON_IsString(from_job) && !strncmp(from_job->valuestring, "job_", 4) &&
                  strlen(from_job->valuestring) < sizeof job->init_job;
        if (ok)
            snprintf(job->init_job, sizeof job->init_job, "%s", from_job->valuestring);
        else {
            char got[120];
            kapi__describe(from_job, got, sizeof got);
            kapi_errors_add(errors, "init_weights.job", "expected a job id (\"job_...\"), got %s",
                            got);
        }
    }
}

/* "name": a run's label, 1-127 bytes of printable text (spaces allowed). */
static void parse_run_name(kapi_errors *errors, const cJSON *value, char *out, size_t size)
{
    bool ok = cJSON_IsString(value) && value->valuestring[0] && strlen(value->valuestring) < size;
    for (const unsigned char *c = ok ? (const unsigned char *)value->valuestring : NULL; c && *c;
         c++)
        if (*c < 0x20 || *c == 0x7f) ok = false;
    if (!ok) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, "name",
                        "expected a run name of 1 to %zu characters without control "
                        "characters, got %s",
                        size - 1, got);
        return;
    }
    snprintf(out, size, "%s", value->valuestring);
}

/* torch.optim's defaults (SGD's lr has none in torch: 0.01 here). */
static kn_optimizer_options optimizer_defaults(kn_optimizer_kind kind)
{
    kn_optimizer_options o;
    memset(&o, 0, sizeof o);
    o.kind = kind;
    o.lr = kind == KN_OPTIM_ADAM || kind == KN_OPTIM_ADAMW ? 1e-3 : 1e-2;
    o.beta1 = 0.9;
    o.beta2 = 0.999;
    o.eps = 1e-8;
    o.alpha = 0.99;
    o.weight_decay = kind == KN_OPTIM_ADAMW ? 1e-2 : 0;
    return o;
}

/* An object field (absent: NULL; present but not an object: an error, NULL). */
static const cJSON *get_object(kapi_errors *errors, const cJSON *obj, const char *key,
                               const char *prefix, const char *what, bool *bad)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value || cJSON_IsObject(value)) return value;
    char path[KAPI_PATH_MAX], got[120];
    kapi__path(path, prefix, key);
    kapi__describe(value, got, sizeof got);
    kapi_errors_add(errors, path, "expected %s, got %s", what, got);
    if (bad) *bad = true;
    return NULL;
}

/* A path field: only when paths are allowed. */
static void get_path(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                     bool allow_paths, bool required, const char *refusal, char *out, size_t size)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    char path[KAPI_PATH_MAX];
    kapi__path(path, prefix, key);
    if (!value) {
        if (required) kapi__missing(errors, prefix, key, "a file path (a string)");
        return;
    }
    if (!allow_paths) {
        kapi_errors_add(errors, path, "%s", refusal);
        return;
    }
    kapi__get_string(errors, obj, key, prefix, out, size);
}

/* label_column (a string) or target_columns (a list of column names, kept comma-separated:
 * a CSV header name has no comma), not both. */
static void parse_columns(kapi_errors *errors, const cJSON *obj, const char *prefix, char *label,
                          size_t label_size, char *targets, size_t targets_size)
{
    char path[KAPI_PATH_MAX], item[KAPI_PATH_MAX], got[120];
    int has_label = kapi__get_string(errors, obj, "label_column", prefix, label, label_size);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(obj, "target_columns");
    if (!list) return;
    kapi__path(path, prefix, "target_columns");
    if (has_label != KAPI_ABSENT) {
        kapi_errors_add(errors, path,
                        "give either label_column (one column) or target_columns, not both");
        return;
    }
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    if (n < 1 || n > KAPI_MAX_TARGET_COLUMNS) {
        kapi__describe(list, got, sizeof got);
        kapi_errors_add(errors, path, "expected a list of 1 to %d column names, got %s",
                        KAPI_MAX_TARGET_COLUMNS, got);
        return;
    }
    size_t used = 0;
    int i = 0;
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        kapi__path_index(item, path, i);
        const char *name = cJSON_IsString(c) ? c->valuestring : NULL;
        if (!name || !name[0] || strchr(name, ',') || strchr(name, '\n')) {
            kapi__describe(c, got, sizeof got);
            kapi_errors_add(errors, item,
                            "expected a column name (a non-empty string without commas), got %s",
                            got);
            return;
        }
        for (const cJSON *d = list->child; d != c; d = d->next)
            if (!strcmp(d->valuestring, name)) {
                kapi_errors_add(errors, item, "column \"%.60s\" is named twice", name);
                return;
            }
        size_t len = strlen(name);
        if (used + len + 2 > targets_size) {
            kapi_errors_add(errors, path, "the column names are longer than %zu characters in all",
                            targets_size - 1);
            return;
        }
        if (used) targets[used++] = ',';
        memcpy(targets + used, name, len + 1);
        used += len;
    }
}

static void parse_source(kapi_errors *errors, const cJSON *obj, const char *path, bool allow_paths,
                         kapi_data_source *source)
{
    source->present = true;
    snprintf(source->label_column, sizeof source->label_column, "label");
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(obj, "format");
    char field[KAPI_PATH_MAX], got[120];
    kapi__path(field, path, "format");
    if (!format) {
        kapi__missing(errors, path, "format", "\"idx\", \"csv\" or \"npy\"");
        return;
    }
    const char *f = cJSON_IsString(format) ? format->valuestring : "";
    if (strcmp(f, "idx") == 0) {
        source->format = KAPI_FORMAT_IDX;
        kapi__check_fields(errors, obj, path, IDX_FIELDS);
        get_path(errors, obj, "images", path, allow_paths, true, NO_PATHS, source->inputs_path,
                 sizeof source->inputs_path);
        get_path(errors, obj, "labels", path, allow_paths, true, NO_PATHS, source->labels_path,
                 sizeof source->labels_path);
    } else if (strcmp(f, "npy") == 0) {
        source->format = KAPI_FORMAT_NPY;
        kapi__check_fields(errors, obj, path, NPY_FIELDS);
        get_path(errors, obj, "inputs", path, allow_paths, true, NO_PATHS, source->inputs_path,
                 sizeof source->inputs_path);
        get_path(errors, obj, "labels", path, allow_paths, true, NO_PATHS, source->labels_path,
                 sizeof source->labels_path);
    } else if (strcmp(f, "csv") == 0) {
        source->format = KAPI_FORMAT_CSV;
        kapi__check_fields(errors, obj, path, CSV_FIELDS);
        get_path(errors, obj, "path", path, allow_paths, true, NO_PATHS, source->inputs_path,
                 sizeof source->inputs_path);
        parse_columns(errors, obj, path, source->label_column, sizeof source->label_column,
                      source->target_columns, sizeof source->target_columns);
    } else {
        kapi__describe(format, got, sizeof got);
        kapi_errors_add(errors, field, "expected \"idx\", \"csv\" or \"npy\", got %s", got);
    }
}

/* A list of 1..max numbers >= min (normalize.mean / .std, loss weights) into a malloc'd
 * array; returns the count, or -1 (*out NULL) with an error added. */
static int number_list(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                       double min, bool min_inclusive, int max, const char *what, double **out)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    char path[KAPI_PATH_MAX], item[KAPI_PATH_MAX], got[120];
    kapi__path(path, prefix, key);
    *out = NULL;
    if (!value) {
        kapi__missing(errors, prefix, key, what);
        return -1;
    }
    int n = cJSON_IsArray(value) ? cJSON_GetArraySize(value) : 0;
    if (n < 1 || n > max) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected %s (1 to %d numbers), got %s", what, max, got);
        return -1;
    }
    *out = malloc(sizeof **out * (size_t)n);
    if (!*out) {
        kapi_errors_add(errors, path, "out of memory");
        return -1;
    }
    bool ok = true;
    int i = 0;
    for (const cJSON *c = value->child; c; c = c->next, i++) {
        kapi__path_index(item, path, i);
        if (kapi__number_value(errors, c, item, min, min_inclusive, INFINITY, false, &(*out)[i]) !=
            KAPI_OK)
            ok = false;
    }
    if (ok) return n;
    free(*out);
    *out = NULL;
    return -1;
}

static void parse_data(kapi_errors *errors, const cJSON *data, bool allow_paths,
                       kapi_data_spec *spec)
{
    spec->scale = 1;
    kapi__check_fields(errors, data, "data", DATA_FIELDS);
    const cJSON *dataset = cJSON_GetObjectItemCaseSensitive(data, "dataset");
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(data, "train");
    const cJSON *test = cJSON_GetObjectItemCaseSensitive(data, "test");
    if (dataset) {
        kapi__check_name(errors, "data.dataset", dataset, spec->dataset, sizeof spec->dataset);
        if (train || test)
            kapi_errors_add(errors, "data.dataset",
                            "give either a dataset name or train/test sources, not both");
    } else if (!train) {
        kapi__missing(errors, "data", "train",
                      "a data source such as {\"format\": \"idx\", \"images\": PATH, \"labels\": "
                      "PATH}, or a dataset name in data.dataset");
    }
    const char *what = "a data source object such as {\"format\": \"idx\", ...}";
    const cJSON *source = get_object(errors, data, "train", "data", what, NULL);
    if (source) parse_source(errors, source, "data.train", allow_paths, &spec->train);
    source = get_object(errors, data, "test", "data", what, NULL);
    if (source) parse_source(errors, source, "data.test", allow_paths, &spec->test);

    kapi__get_number(errors, data, "validation_split", "data", 0, true, 1, false,
                     &spec->validation_split);
    /* a language model's text (issue 12) */
    const cJSON *tokenizer = cJSON_GetObjectItemCaseSensitive(data, "tokenizer");
    kapi_tokenizer_kind kind;
    if (tokenizer &&
        (!cJSON_IsString(tokenizer) || !kapi_tokenizer_kind_parse(tokenizer->valuestring, &kind))) {
        char got[120];
        kapi__describe(tokenizer, got, sizeof got);
        kapi_errors_add(errors, "data.tokenizer",
                        "expected \"chars\" (the characters of the text) or \"bytes\" (256 "
                        "byte values), got %s",
                        got);
    } else if (tokenizer) {
        snprintf(spec->tokenizer, sizeof spec->tokenizer, "%s", tokenizer->valuestring);
    }
    spec->validation_windows = KAPI_DEFAULT_VALIDATION_WINDOWS;
    kapi__get_int(errors, data, "validation_windows", "data", 1, INT64_MAX,
                  &spec->validation_windows);
    kapi__get_number(errors, data, "scale", "data", 0, false, INFINITY, false, &spec->scale);
    const cJSON *normalize = cJSON_GetObjectItemCaseSensitive(data, "normalize");
    if (cJSON_IsString(normalize) && strcmp(normalize->valuestring, "auto") == 0) {
        spec->normalize_auto = true;
    } else if (normalize && !cJSON_IsObject(normalize)) {
        char got[120];
        kapi__describe(normalize, got, sizeof got);
        kapi_errors_add(errors, "data.normalize",
                        "expected \"auto\" or an object {\"mean\": [...], \"std\": [...]}, got %s",
                        got);
    } else if (normalize) {
        kapi__check_fields(errors, normalize, "data.normalize", NORMALIZE_FIELDS);
        const char *what = "a list of numbers, one per channel (or one for all)";
        int n_mean = number_list(errors, normalize, "mean", "data.normalize", -INFINITY, false,
                                 KAPI_MAX_CHANNELS, what, &spec->mean);
        int n_std = number_list(errors, normalize, "std", "data.normalize", 0, false,
                                KAPI_MAX_CHANNELS, what, &spec->std);
        if (n_mean > 0 && n_std > 0 && n_mean != n_std)
            kapi_errors_add(errors, "data.normalize.std",
                            "expected as many values as mean (%d), got %d", n_mean, n_std);
        else if (n_mean > 0 && n_std > 0)
            spec->channels = n_mean;
    }
    if (cJSON_GetObjectItemCaseSensitive(data, "label_column") ||
        cJSON_GetObjectItemCaseSensitive(data, "target_columns")) {
        if (!dataset)
            kapi_errors_add(errors,
                            cJSON_GetObjectItemCaseSensitive(data, "label_column")
                                ? "data.label_column"
                                : "data.target_columns",
                            "names the columns of a dataset's CSV files: with train/test sources, "
                            "give it in the csv source");
        else
            parse_columns(errors, data, "data", spec->label_column, sizeof spec->label_column,
                          spec->target_columns, sizeof spec->target_columns);
    }
}

static const struct {
    const char *name;
    kn_loss_kind kind;
} LOSSES[] = {{"cross_entropy", KN_LOSS_CROSS_ENTROPY},
              {"nll", KN_LOSS_NLL},
              {"mse", KN_LOSS_MSE},
              {"l1", KN_LOSS_L1},
              {"smooth_l1", KN_LOSS_SMOOTH_L1},
              {"huber", KN_LOSS_HUBER},
              {"bce_with_logits", KN_LOSS_BCE_WITH_LOGITS}};

/* A loss weight list as floats (job->... owns it, c points at it). */
static int weight_list(kapi_errors *errors, const cJSON *obj, const char *key, const char *what,
                       float **out)
{
    double *values = NULL;
    int n = number_list(errors, obj, key, "loss", 0, true, KAPI_MAX_WEIGHTS, what, &values);
    if (n > 0) {
        *out = malloc(sizeof **out * (size_t)n);
        if (*out) {
            for (int i = 0; i < n; i++) (*out)[i] = (float)values[i];
        } else {
            kapi_errors_add(errors, "loss", "out of memory");
            n = -1;
        }
    }
    free(values);
    return n;
}

static void parse_loss(kapi_errors *errors, const cJSON *value, kapi_job_spec *job)
{
    kn_train_config *c = &job->train;
    char got[120];
    const cJSON *type = value;
    if (cJSON_IsObject(value)) {
        kapi__check_fields(errors, value, "loss", LOSS_FIELDS);
        type = cJSON_GetObjectItemCaseSensitive(value, "type");
        if (!type) {
            kapi__missing(errors, "loss", "type", LOSS_NAMES);
            return;
        }
    }
    const char *name = cJSON_IsString(type) ? type->valuestring : NULL;
    int found = -1;
    for (size_t i = 0; name && i < sizeof LOSSES / sizeof LOSSES[0]; i++)
        if (strcmp(name, LOSSES[i].name) == 0) found = (int)i;
    if (found < 0) {
        kapi__describe(type, got, sizeof got);
        kapi_errors_add(errors, type == value ? "loss" : "loss.type", "expected %s%s, got %s",
                        LOSS_NAMES, type == value ? " (or an object with a type)" : "", got);
        return;
    }
    c->loss = LOSSES[found].kind;
    if (!cJSON_IsObject(value)) return;
    /* each parameter belongs to one loss (weight to two) */
    const struct {
        const char *key;
        bool allowed;
        const char *owner;
    } params[] = {
        {"label_smoothing", c->loss == KN_LOSS_CROSS_ENTROPY, "cross_entropy"},
        {"weight", c->loss == KN_LOSS_CROSS_ENTROPY || c->loss == KN_LOSS_NLL,
         "cross_entropy and nll"},
        {"pos_weight", c->loss == KN_LOSS_BCE_WITH_LOGITS, "bce_with_logits"},
        {"beta", c->loss == KN_LOSS_SMOOTH_L1, "smooth_l1"},
        {"delta", c->loss == KN_LOSS_HUBER, "huber"},
    };
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        if (!cJSON_GetObjectItemCaseSensitive(value, params[i].key) || params[i].allowed) continue;
        char path[KAPI_PATH_MAX];
        kapi__path(path, "loss", params[i].key);
        kapi_errors_add(errors, path, "only %s take%s %s (the loss is %s)", params[i].owner,
                        strchr(params[i].owner, ' ') ? "" : "s", params[i].key, name);
        return;
    }
    kapi__get_number(errors, value, "label_smoothing", "loss", 0, true, 1, true,
                     &c->label_smoothing);
    kapi__get_number(errors, value, "beta", "loss", 0, true, INFINITY, false, &c->smooth_l1_beta);
    kapi__get_number(errors, value, "delta", "loss", 0, false, INFINITY, false, &c->huber_delta);
    if (cJSON_GetObjectItemCaseSensitive(value, "weight")) {
        int n = weight_list(errors, value, "weight", "a weight >= 0 per class", &job->class_weight);
        if (n > 0) {
            c->class_weight = job->class_weight;
            c->class_weight_count = n;
        }
    }
    if (cJSON_GetObjectItemCaseSensitive(value, "pos_weight")) {
        int n = weight_list(errors, value, "pos_weight",
                            "a weight >= 0 per output (or one for all)", &job->pos_weight);
        if (n > 0) {
            c->pos_weight = job->pos_weight;
            c->pos_weight_count = n;
        }
    }
}

/* "task", or the loss's task; the loss must suit it. */
static void parse_task(kapi_errors *errors, const cJSON *root, kapi_job_spec *job)
{
    kn_train_config *c = &job->train;
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(root, "task");
    if (!task) {
        c->task = kn_task_of_loss(c->loss);
        return;
    }
    const char *name = cJSON_IsString(task) ? task->valuestring : "";
    if (!strcmp(name, "classification")) {
        c->task = KN_TASK_CLASSIFICATION;
    } else if (!strcmp(name, "regression")) {
        c->task = KN_TASK_REGRESSION;
    } else if (!strcmp(name, "multilabel")) {
        c->task = KN_TASK_MULTILABEL;
    } else {
        char got[120];
        kapi__describe(task, got, sizeof got);
        kapi_errors_add(errors, "task",
                        "expected \"classification\", \"regression\" or \"multilabel\", got %s",
                        got);
        return;
    }
    job->task_given = true;
    const char *loss = kn_loss_name(c->loss);
    switch (c->task) {
    case KN_TASK_CLASSIFICATION:
        if (c->loss == KN_LOSS_L1 || c->loss == KN_LOSS_SMOOTH_L1 || c->loss == KN_LOSS_HUBER)
            kapi_errors_add(errors, "loss",
                            "%s is a regression loss: task classification takes cross_entropy or "
                            "nll (or mse and bce_with_logits on one-hot labels)",
                            loss);
        break;
    case KN_TASK_REGRESSION:
        if (kn_task_of_loss(c->loss) != KN_TASK_REGRESSION)
            kapi_errors_add(errors, "loss",
                            "%s does not fit task regression: use mse, l1, smooth_l1 or huber",
                            loss);
        break;
    default:
        if (c->loss != KN_LOSS_BCE_WITH_LOGITS)
            kapi_errors_add(errors, "loss",
                            "%s does not fit task multilabel: use bce_with_logits (one output "
                            "per label)",
                            loss);
        break;
    }
}

/* "weight_decay_params": "all" (every parameter, the default) or "matrices" (parameters
 * of 2+ dimensions only: nanoGPT's decay / no-decay groups). */
static void parse_decay_params(kapi_errors *errors, const cJSON *obj, kn_optimizer_options *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "weight_decay_params");
    if (!v) return;
    if (cJSON_IsString(v) && !strcmp(v->valuestring, "all")) {
        o->weight_decay_params = KN_DECAY_ALL;
    } else if (cJSON_IsString(v) && !strcmp(v->valuestring, "matrices")) {
        o->weight_decay_params = KN_DECAY_MATRICES;
    } else {
        char got[120];
        kapi__describe(v, got, sizeof got);
        kapi_errors_add(errors, "optimizer.weight_decay_params",
                        "expected \"all\" or \"matrices\" (parameters of 2 or more dimensions: "
                        "weights and embeddings, not biases or norm parameters), got %s",
                        got);
    }
}

static void parse_optimizer(kapi_errors *errors, const cJSON *obj, kn_optimizer_options *o)
{
    const char *p = "optimizer";
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    const char *name = cJSON_IsString(type) ? type->valuestring : "";
    const char *const *fields;
    if (strcmp(name, "sgd") == 0) {
        *o = optimizer_defaults(KN_OPTIM_SGD);
        fields = SGD_FIELDS;
    } else if (strcmp(name, "adam") == 0) {
        *o = optimizer_defaults(KN_OPTIM_ADAM);
        fields = ADAM_FIELDS;
    } else if (strcmp(name, "adamw") == 0) {
        *o = optimizer_defaults(KN_OPTIM_ADAMW);
        fields = ADAM_FIELDS;
    } else if (strcmp(name, "rmsprop") == 0) {
        *o = optimizer_defaults(KN_OPTIM_RMSPROP);
        fields = RMSPROP_FIELDS;
    } else {
        if (!type) {
            kapi__missing(errors, p, "type", "\"sgd\", \"adam\", \"adamw\" or \"rmsprop\"");
        } else {
            char got[120];
            kapi__describe(type, got, sizeof got);
            kapi_errors_add(errors, "optimizer.type",
                            "expected \"sgd\", \"adam\", \"adamw\" or \"rmsprop\", got %s", got);
        }
        return;
    }
    kapi__check_fields(errors, obj, p, fields);
    kapi__get_number(errors, obj, "lr", p, 0, true, INFINITY, false, &o->lr);
    kapi__get_number(errors, obj, "weight_decay", p, 0, true, INFINITY, false, &o->weight_decay);
    parse_decay_params(errors, obj, o);
    if (o->kind == KN_OPTIM_SGD) {
        kapi__get_number(errors, obj, "momentum", p, 0, true, INFINITY, false, &o->momentum);
        kapi__get_number(errors, obj, "dampening", p, -INFINITY, false, INFINITY, false,
                         &o->dampening);
        if (kapi__get_bool(errors, obj, "nesterov", p, &o->nesterov) == KAPI_OK && o->nesterov &&
            (o->momentum <= 0 || o->dampening != 0))
            kapi_errors_add(
                errors, "optimizer.nesterov",
                "nesterov needs a momentum > 0 and zero dampening (as torch.optim.SGD)");
    } else if (o->kind == KN_OPTIM_RMSPROP) {
        kapi__get_number(errors, obj, "alpha", p, 0, true, INFINITY, false, &o->alpha);
        kapi__get_number(errors, obj, "eps", p, 0, true, INFINITY, false, &o->eps);
        kapi__get_number(errors, obj, "momentum", p, 0, true, INFINITY, false, &o->momentum);
        kapi__get_bool(errors, obj, "centered", p, &o->centered);
    } else {
        kapi__get_number(errors, obj, "eps", p, 0, true, INFINITY, false, &o->eps);
        kapi__get_bool(errors, obj, "amsgrad", p, &o->amsgrad);
        const cJSON *betas = cJSON_GetObjectItemCaseSensitive(obj, "betas");
        if (betas) {
            if (!cJSON_IsArray(betas) || cJSON_GetArraySize(betas) != 2) {
                char got[120];
                kapi__describe(betas, got, sizeof got);
                kapi_errors_add(errors, "optimizer.betas",
                                "expected a pair [beta1, beta2] of numbers in [0, 1), got %s", got);
            } else {
                kapi__number_value(errors, cJSON_GetArrayItem(betas, 0), "optimizer.betas[0]", 0,
                                   true, 1, false, &o->beta1);
                kapi__number_value(errors, cJSON_GetArrayItem(betas, 1), "optimizer.betas[1]", 0,
                                   true, 1, false, &o->beta2);
            }
        }
    }
}

static void parse_schedule(kapi_errors *errors, const cJSON *obj, kn_lr_schedule *s)
{
    const char *p = "lr_schedule";
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    const char *name = cJSON_IsString(type) ? type->valuestring : "";
    if (strcmp(name, "constant") == 0) {
        s->kind = KN_LR_CONSTANT;
        kapi__check_fields(errors, obj, p, CONSTANT_FIELDS);
    } else if (strcmp(name, "step") == 0) {
        s->kind = KN_LR_STEP;
        kapi__check_fields(errors, obj, p, STEP_FIELDS);
        if (kapi__get_int(errors, obj, "step_size", p, 1, MAX_STEPS, &s->step_size) == KAPI_ABSENT)
            kapi__missing(errors, p, "step_size", "a positive integer (optimizer steps)");
        kapi__get_number(errors, obj, "gamma", p, 0, false, INFINITY, false, &s->gamma);
    } else if (strcmp(name, "cosine") == 0) {
        s->kind = KN_LR_COSINE;
        kapi__check_fields(errors, obj, p, COSINE_FIELDS);
        if (kapi__get_int(errors, obj, "t_max", p, 1, MAX_STEPS, &s->t_max) == KAPI_ABSENT)
            kapi__missing(errors, p, "t_max", "a positive integer (optimizer steps)");
        kapi__get_number(errors, obj, "eta_min", p, 0, true, INFINITY, false, &s->eta_min);
    } else {
        if (!type) {
            kapi__missing(errors, p, "type", "\"constant\", \"step\" or \"cosine\"");
        } else {
            char got[120];
            kapi__describe(type, got, sizeof got);
            kapi_errors_add(errors, "lr_schedule.type",
                            "expected \"constant\", \"step\" or \"cosine\", got %s", got);
        }
        return;
    }
    kapi__get_int(errors, obj, "warmup_steps", p, 0, MAX_STEPS, &s->warmup_steps);
    kapi__get_number(errors, obj, "warmup_start_factor", p, 0, false, 1, true,
                     &s->warmup_start_factor);
}

static void parse_device(kapi_errors *errors, const cJSON *value, char *out, size_t size)
{
    const char *d = cJSON_IsString(value) ? value->valuestring : NULL;
    bool ok = d && (strcmp(d, "cpu") == 0 || strcmp(d, "cuda") == 0 || strcmp(d, "auto") == 0);
    if (d && !ok && strncmp(d, "cuda:", 5) == 0) {
        size_t n = strlen(d + 5);
        ok = n >= 1 && n <= 2;
        for (size_t i = 0; ok && i < n; i++) ok = isdigit((unsigned char)d[5 + i]);
    }
    if (!ok) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, "device",
                        "expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", got %s", got);
        return;
    }
    snprintf(out, size, "%s", d);
}

/* The knobs of kn_train_config that are plain numbers and flags. */
static void parse_training(kapi_errors *errors, const cJSON *root, kapi_job_spec *job)
{
    kn_train_config *c = &job->train;
    kapi__get_int(errors, root, "batch_size", "", 1, MAX_BATCH, &c->batch_size);
    int has_epochs = kapi__get_int(errors, root, "epochs", "", 1, MAX_EPOCHS, &c->epochs);
    int has_steps = kapi__get_int(errors, root, "max_steps", "", 1, MAX_STEPS, &c->max_steps);
    if (has_epochs != KAPI_ABSENT && has_steps != KAPI_ABSENT)
        kapi_errors_add(errors, "max_steps", "give either epochs or max_steps, not both");
    int64_t seed;
    if (kapi__get_int(errors, root, "seed", "", 0, MAX_SEED, &seed) == KAPI_OK)
        c->seed = (uint64_t)seed;
    kapi__get_bool(errors, root, "shuffle", "", &c->shuffle);
    kapi__get_bool(errors, root, "drop_last", "", &c->drop_last);
    kapi__get_bool(errors, root, "skip_non_finite", "", &c->skip_non_finite);
    kapi__get_int(errors, root, "checkpoint_every_steps", "", 1, MAX_STEPS,
                  &c->checkpoint_every_steps);
    kapi__get_number(errors, root, "grad_clip_norm", "", 0, false, INFINITY, false,
                     &c->grad_clip_norm);
    const cJSON *device = cJSON_GetObjectItemCaseSensitive(root, "device");
    if (device) parse_device(errors, device, job->device, sizeof job->device);
    job->device_given = device != NULL;
    kapi__get_bool(errors, root, "allow_tf32", "", &job->allow_tf32);
    kapi__get_bool(errors, root, "cuda_graph", "", &c->cuda_graph);

    const cJSON *validation = get_object(errors, root, "validation", "",
                                         "an object {\"every_steps\": N, \"batch_size\": N}", NULL);
    if (validation) {
        kapi__check_fields(errors, validation, "validation", VALIDATION_FIELDS);
        kapi__get_int(errors, validation, "every_steps", "validation", 1, MAX_STEPS,
                      &c->eval_every_steps);
        kapi__get_int(errors, validation, "batch_size", "validation", 1, MAX_BATCH,
                      &c->eval_batch_size);
    }
    const cJSON *early = get_object(errors, root, "early_stopping", "",
                                    "an object {\"patience\": N, \"min_delta\": x}", NULL);
    if (early) {
        kapi__check_fields(errors, early, "early_stopping", EARLY_STOPPING_FIELDS);
        if (kapi__get_int(errors, early, "patience", "early_stopping", 1, MAX_EPOCHS,
                          &c->early_stopping_patience) == KAPI_ABSENT)
            kapi__missing(errors, "early_stopping", "patience",
                          "a positive integer (evaluations without improvement)");
        kapi__get_number(errors, early, "min_delta", "early_stopping", 0, true, INFINITY, false,
                         &c->early_stopping_min_delta);
        const kapi_data_spec *d = &job->data;
        if (!d->dataset[0] && !d->test.present && d->validation_split == 0)
            kapi_errors_add(errors, "early_stopping",
                            "needs validation data: set data.validation_split or data.test");
    }
}

/* "distributed": the processes of one job and how they train together.
 * The command line may leave processes to its --processes; the server needs it here. */
static void parse_distributed(kapi_errors *errors, const cJSON *obj, kapi_job_spec *job,
                              bool require_processes)
{
    const char *p = "distributed";
    kapi_dist_spec *d = &job->distributed;
    kapi__check_fields(errors, obj, p, DISTRIBUTED_FIELDS);
    int64_t processes = 0, restarts = 0;
    if (kapi__get_int(errors, obj, "processes", p, 1, KAPI_MAX_PROCESSES, &processes) ==
            KAPI_ABSENT &&
        require_processes)
        kapi__missing(errors, p, "processes", "a positive integer (one rank per process)");
    d->processes = (int)processes;
    /* one rank per GPU when the job runs on CUDA, else CPU processes */
    snprintf(d->devices, sizeof d->devices, "%s", strncmp(job->device, "cuda", 4) ? "cpu" : "cuda");
    const cJSON *devices = cJSON_GetObjectItemCaseSensitive(obj, "devices");
    if (devices) {
        const char *v = cJSON_IsString(devices) ? devices->valuestring : NULL;
        if (v && (!strcmp(v, "cpu") || !strcmp(v, "cuda"))) {
            snprintf(d->devices, sizeof d->devices, "%s", v);
        } else {
            char got[120];
            kapi__describe(devices, got, sizeof got);
            kapi_errors_add(errors, "distributed.devices",
                            "expected \"cpu\" or \"cuda\" (one GPU per process), got %s", got);
        }
    }
    kapi__get_bool(errors, obj, "sync_batch_norm", p, &job->train.sync_batch_norm);
    kapi__get_number(errors, obj, "bucket_cap_mb", p, 0, false, MAX_BUCKET_MB, true,
                     &job->train.bucket_cap_mb);
    if (kapi__get_int(errors, obj, "max_restarts", p, 0, MAX_RESTARTS, &restarts) == KAPI_OK)
        d->max_restarts = (int)restarts;
}

bool kapi_job_check_distributed(const kapi_job_spec *job, kapi_errors *errors)
{
    const kapi_dist_spec *d = &job->distributed;
    if (d->processes <= 0) return true;
    int before = errors->count;
    if (job->train.batch_size % d->processes != 0)
        kapi_errors_add(errors, "batch_size",
                        "the global batch of %lld does not divide by distributed.processes "
                        "(%d): each process takes batch_size / processes samples a step",
                        (long long)job->train.batch_size, d->processes);
    if (!strncmp(job->device, "cuda:", 5))
        kapi_errors_add(errors, "device",
                        "a distributed job puts each process on a GPU of its own: give "
                        "\"cuda\" (process r takes cuda:r of its host), not \"%s\"",
                        job->device);
    else if (!strcmp(job->device, "cpu") && !strcmp(d->devices, "cuda") && job->device_given)
        kapi_errors_add(errors, "distributed.devices",
                        "\"cuda\" contradicts \"device\": \"cpu\"; give one of them");
    return errors->count == before;
}

/* The columns a task reads from a CSV: classification one integer label column. */
static void check_columns(kapi_errors *errors, const kapi_job_spec *job)
{
    const char *paths[3] = {"data.train.target_columns", "data.test.target_columns",
                            "data.target_columns"};
    const char *lists[3] = {job->data.train.target_columns, job->data.test.target_columns,
                            job->data.target_columns};
    if (job->train.task != KN_TASK_CLASSIFICATION) return;
    for (int i = 0; i < 3; i++)
        if (strchr(lists[i], ','))
            kapi_errors_add(errors, paths[i],
                            "task classification reads one integer label column: give it as "
                            "label_column (several target columns are for regression or "
                            "multilabel)");
}

/* Cross-checks between the data, the loss and an inline model. */
static void check_data_against_model(kapi_errors *errors, const kapi_job_spec *job)
{
    const kapi_model_spec *m = job->model;
    const kapi_data_spec *d = &job->data;
    if (!m || !kapi_model_takes_one_input(m, "model.inputs", errors)) return;
    char shape[96];
    kn_shape_str(m->input_shape, m->input_ndim, shape, sizeof shape);
    if (d->channels > 1 && d->channels != m->input_shape[0]) {
        char counts[48] = "1 value";
        if (m->input_shape[0] > 1)
            snprintf(counts, sizeof counts, "1 or %lld values", (long long)m->input_shape[0]);
        kapi_errors_add(errors, "data.normalize.mean",
                        "expected %s (one per channel of input_shape %s), got %d", counts, shape,
                        d->channels);
    }
    kapi__check_token_preprocessing(d, m, errors);
    /* the classes are the output's last dim ([T, V] per sample for labels per position) */
    int64_t outputs = m->output_ndim > 0 ? m->output_shape[m->output_ndim - 1] : 1;
    const kn_train_config *c = &job->train;
    if (c->class_weight && c->class_weight_count != outputs)
        kapi_errors_add(errors, "loss.weight",
                        "expected one weight per class: %lld (the model's outputs), got %lld",
                        (long long)outputs, (long long)c->class_weight_count);
    if (m->output_ndim != 1) return;
    if (c->pos_weight && c->pos_weight_count != 1 && c->pos_weight_count != outputs) {
        char counts[48] = "1 value";
        if (outputs > 1) snprintf(counts, sizeof counts, "1 or %lld values", (long long)outputs);
        kapi_errors_add(errors, "loss.pos_weight",
                        "expected %s (one per output of the model), got %lld", counts,
                        (long long)c->pos_weight_count);
    }
}

kapi_job_spec *kapi_job_spec_parse(const char *json, size_t length, kapi_job_parse_options options,
                                   kapi_errors *errors)
{
    cJSON *root = kapi__parse_object(json, length, errors);
    if (!root) return NULL;
    int before = errors->count;
    kapi_job_spec *job = calloc(1, sizeof *job);
    if (!job) {
        cJSON_Delete(root);
        kapi_errors_add(errors, "", "out of memory");
        return NULL;
    }
    job->train = kn_train_config_defaults();
    job->data.scale = 1;
    snprintf(job->device, sizeof job->device, "cpu");
    kapi__check_fields(errors, root, "", JOB_FIELDS);

    char got[120];
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) {
        kapi__missing(errors, "", "model", "a model spec object or a model name");
    } else if (cJSON_IsObject(model)) {
        job->model = kapi__model_spec_from_json(model, "model", errors);
    } else if (cJSON_IsString(model)) {
        kapi__check_name(errors, "model", model, job->model_name, sizeof job->model_name);
    } else {
        kapi__describe(model, got, sizeof got);
        kapi_errors_add(errors, "model", "expected a model spec object or a model name, got %s",
                        got);
    }

    const cJSON *data =
        get_object(errors, root, "data", "",
                   "an object with train (and test) sources or a dataset name", NULL);
    if (data)
        parse_data(errors, data, options.allow_paths, &job->data);
    else if (!cJSON_GetObjectItemCaseSensitive(root, "data"))
        kapi__missing(errors, "", "data",
                      "an object with train (and test) sources or a dataset name");

    const cJSON *loss = cJSON_GetObjectItemCaseSensitive(root, "loss");
    if (loss) parse_loss(errors, loss, job);
    parse_task(errors, root, job);
    const cJSON *optimizer =
        get_object(errors, root, "optimizer", "",
                   "an object such as {\"type\": \"adam\", \"lr\": 0.001}", NULL);
    if (optimizer) parse_optimizer(errors, optimizer, &job->train.optimizer);
    const cJSON *schedule =
        get_object(errors, root, "lr_schedule", "",
                   "an object such as {\"type\": \"cosine\", \"t_max\": 1000}", NULL);
    if (schedule) parse_schedule(errors, schedule, &job->train.lr_schedule);
    parse_training(errors, root, job);

    get_path(errors, root, "resume_from", "", options.allow_paths, false, NO_WEIGHT_PATHS,
             job->resume_from, sizeof job->resume_from);
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(root, "init_weights");
    if (cJSON_IsObject(init))
        parse_init_weights(errors, init, options.allow_paths, job);
    else
        get_path(errors, root, "init_weights", "", options.allow_paths, false,
                 "expected {\"version\": \"...\"} (a version or alias of the model) or "
                 "{\"job\": \"...\"} (a succeeded job); only the command line (kiln train) "
                 "reads local weights files",
                 job->init_weights, sizeof job->init_weights);
    const cJSON *run_name = cJSON_GetObjectItemCaseSensitive(root, "name");
    if (run_name) parse_run_name(errors, run_name, job->run_name, sizeof job->run_name);
    if (cJSON_GetObjectItemCaseSensitive(root, "resume_from") &&
        cJSON_GetObjectItemCaseSensitive(root, "init_weights"))
        kapi_errors_add(errors, "init_weights",
                        "give either resume_from or init_weights, not both (a checkpoint "
                        "already holds the weights)");
    const cJSON *submission = cJSON_GetObjectItemCaseSensitive(root, "submission_id");
    if (submission)
        kapi__check_name(errors, "submission_id", submission, job->submission_id,
                         sizeof job->submission_id);
    check_columns(errors, job);
    check_data_against_model(errors, job);
    const cJSON *distributed =
        get_object(errors, root, "distributed", "", "an object such as {\"processes\": 2}", NULL);
    if (distributed) {
        parse_distributed(errors, distributed, job, !options.allow_paths);
        kapi_job_check_distributed(job, errors);
    }
    cJSON_Delete(root);
    if (errors->count > before) {
        kapi_job_spec_free(job);
        return NULL;
    }
    return job;
}

void kapi_job_spec_free(kapi_job_spec *spec)
{
    if (!spec) return;
    kapi_model_spec_free(spec->model);
    free(spec->data.mean);
    free(spec->data.std);
    free(spec->class_weight);
    free(spec->pos_weight);
    free(spec);
}

/*
 * job_spec.c — the job spec's parser: model (inline or by name), data sources, loss,
 * optimizer, schedule and the training knobs, read into kapi_job_spec / kn_train_config
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

static const char *const JOB_FIELDS[] = {"model",
                                         "data",
                                         "loss",
                                         "optimizer",
                                         "lr_schedule",
                                         "batch_size",
                                         "epochs",
                                         "max_steps",
                                         "seed",
                                         "shuffle",
                                         "drop_last",
                                         "device",
                                         "allow_tf32",
                                         "cuda_graph",
                                         "validation",
                                         "checkpoint_every_steps",
                                         "grad_clip_norm",
                                         "skip_non_finite",
                                         "early_stopping",
                                         "resume_from",
                                         "init_weights",
                                         "submission_id",
                                         NULL};
static const char *const DATA_FIELDS[] = {"train", "test", "dataset", "validation_split", "scale",
                                          "normalize",
                                          /* ---- language models (issue 12) ---- */
                                          "tokenizer", "validation_windows", NULL};
static const char *const IDX_FIELDS[] = {"format", "images", "labels", NULL};
static const char *const CSV_FIELDS[] = {"format", "path", "label_column", NULL};
static const char *const NPY_FIELDS[] = {"format", "inputs", "labels", NULL};
static const char *const NORMALIZE_FIELDS[] = {"mean", "std", NULL};
static const char *const LOSS_FIELDS[] = {"type", "label_smoothing", NULL};
static const char *const SGD_FIELDS[] = {"type",     "lr",           "momentum", "dampening",
                                         "nesterov", "weight_decay", NULL};
static const char *const ADAM_FIELDS[] = {"type",         "lr",      "betas", "eps",
                                          "weight_decay", "amsgrad", NULL};
static const char *const RMSPROP_FIELDS[] = {"type",         "lr",       "alpha",    "eps",
                                             "weight_decay", "momentum", "centered", NULL};
static const char *const STEP_FIELDS[] = {"type",         "step_size",           "gamma",
                                          "warmup_steps", "warmup_start_factor", NULL};
static const char *const COSINE_FIELDS[] = {
    "type", "t_max", "eta_min", "warmup_steps", "warmup_start_factor", NULL};
static const char *const CONSTANT_FIELDS[] = {"type", "warmup_steps", "warmup_start_factor", NULL};
static const char *const VALIDATION_FIELDS[] = {"every_steps", "batch_size", NULL};
static const char *const EARLY_STOPPING_FIELDS[] = {"patience", "min_delta", NULL};

static const char *const NO_PATHS =
    "file paths are not accepted here: upload the data as a dataset and reference it by "
    "name (\"data\": {\"dataset\": \"NAME\"})";

static const char *const NO_WEIGHT_PATHS =
    "file paths are not accepted here: only the command line (kiln train) reads local "
    "checkpoints and weights";

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

static kn_train_config train_defaults(void)
{
    kn_train_config c;
    memset(&c, 0, sizeof c);
    c.loss = KN_LOSS_CROSS_ENTROPY;
    c.optimizer = optimizer_defaults(KN_OPTIM_ADAM);
    c.lr_schedule.kind = KN_LR_CONSTANT;
    c.lr_schedule.gamma = 0.1;
    c.lr_schedule.warmup_start_factor = 1.0 / 3.0; /* torch's LinearLR */
    c.batch_size = 64;
    c.epochs = 1;
    c.shuffle = true;
    c.eval_batch_size = 1000;
    return c;
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
        kapi__get_string(errors, obj, "label_column", path, source->label_column,
                         sizeof source->label_column);
    } else {
        kapi__describe(format, got, sizeof got);
        kapi_errors_add(errors, field, "expected \"idx\", \"csv\" or \"npy\", got %s", got);
    }
}

/* A list of 1..16 numbers (normalize.mean / .std); returns the count or -1. */
static int number_list(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                       double min, bool min_inclusive, double *out)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    char path[KAPI_PATH_MAX], item[KAPI_PATH_MAX], got[120];
    kapi__path(path, prefix, key);
    if (!value) {
        kapi__missing(errors, prefix, key, "a list of numbers, one per channel");
        return -1;
    }
    int n = cJSON_IsArray(value) ? cJSON_GetArraySize(value) : 0;
    if (n < 1 || n > 16) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected a list of 1 to 16 numbers (one per channel), got %s", got);
        return -1;
    }
    bool ok = true;
    for (int i = 0; i < n; i++) {
        kapi__path_index(item, path, i);
        if (kapi__number_value(errors, cJSON_GetArrayItem(value, i), item, min, min_inclusive,
                               INFINITY, false, &out[i]) != KAPI_OK)
            ok = false;
    }
    return ok ? n : -1;
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
    const cJSON *normalize = get_object(errors, data, "normalize", "data",
                                        "an object {\"mean\": [...], \"std\": [...]}", NULL);
    if (normalize) {
        kapi__check_fields(errors, normalize, "data.normalize", NORMALIZE_FIELDS);
        int n_mean =
            number_list(errors, normalize, "mean", "data.normalize", -INFINITY, false, spec->mean);
        int n_std = number_list(errors, normalize, "std", "data.normalize", 0, false, spec->std);
        if (n_mean > 0 && n_std > 0 && n_mean != n_std)
            kapi_errors_add(errors, "data.normalize.std",
                            "expected as many values as mean (%d), got %d", n_mean, n_std);
        else if (n_mean > 0 && n_std > 0)
            spec->channels = n_mean;
    }
}

static void parse_loss(kapi_errors *errors, const cJSON *value, kn_train_config *c)
{
    char got[120];
    const cJSON *type = value;
    if (cJSON_IsObject(value)) {
        kapi__check_fields(errors, value, "loss", LOSS_FIELDS);
        type = cJSON_GetObjectItemCaseSensitive(value, "type");
        if (!type) {
            kapi__missing(errors, "loss", "type",
                          "\"cross_entropy\", \"nll\", \"mse\" or \"bce_with_logits\"");
            return;
        }
    }
    const char *name = cJSON_IsString(type) ? type->valuestring : NULL;
    if (name && strcmp(name, "cross_entropy") == 0) {
        c->loss = KN_LOSS_CROSS_ENTROPY;
    } else if (name && strcmp(name, "nll") == 0) {
        c->loss = KN_LOSS_NLL;
    } else if (name && strcmp(name, "mse") == 0) {
        c->loss = KN_LOSS_MSE;
    } else if (name && strcmp(name, "bce_with_logits") == 0) {
        c->loss = KN_LOSS_BCE_WITH_LOGITS;
    } else {
        kapi__describe(type, got, sizeof got);
        kapi_errors_add(errors, type == value ? "loss" : "loss.type",
                        "expected \"cross_entropy\", \"nll\", \"mse\" or \"bce_with_logits\"%s, "
                        "got %s",
                        type == value ? " (or an object with a type)" : "", got);
        return;
    }
    if (!cJSON_IsObject(value)) return;
    if (kapi__get_number(errors, value, "label_smoothing", "loss", 0, true, 1, true,
                         &c->label_smoothing) == KAPI_OK &&
        c->loss != KN_LOSS_CROSS_ENTROPY)
        kapi_errors_add(errors, "loss.label_smoothing", "only cross_entropy takes label_smoothing");
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

/* Cross-checks between the data and an inline model. */
static void check_data_against_model(kapi_errors *errors, const kapi_job_spec *job)
{
    const kapi_model_spec *m = job->model;
    const kapi_data_spec *d = &job->data;
    if (!m || d->channels <= 1) return;
    if (d->channels != m->input_shape[0]) {
        char shape[96], counts[48] = "1 value";
        if (m->input_shape[0] > 1)
            snprintf(counts, sizeof counts, "1 or %lld values", (long long)m->input_shape[0]);
        kapi_errors_add(errors, "data.normalize.mean",
                        "expected %s (one per channel of input_shape %s), got %d", counts,
                        kn_shape_str(m->input_shape, m->input_ndim, shape, sizeof shape),
                        d->channels);
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
    job->train = train_defaults();
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
    if (loss) parse_loss(errors, loss, &job->train);
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
    get_path(errors, root, "init_weights", "", options.allow_paths, false, NO_WEIGHT_PATHS,
             job->init_weights, sizeof job->init_weights);
    if (cJSON_GetObjectItemCaseSensitive(root, "resume_from") &&
        cJSON_GetObjectItemCaseSensitive(root, "init_weights"))
        kapi_errors_add(errors, "init_weights",
                        "give either resume_from or init_weights, not both (a checkpoint "
                        "already holds the weights)");
    const cJSON *submission = cJSON_GetObjectItemCaseSensitive(root, "submission_id");
    if (submission)
        kapi__check_name(errors, "submission_id", submission, job->submission_id,
                         sizeof job->submission_id);
    check_data_against_model(errors, job);
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
    free(spec);
}

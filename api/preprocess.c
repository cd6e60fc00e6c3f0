/*
 * preprocess.c — the preprocessing a job applies to its inputs (scale, then normalise per
 * channel, with "normalize": "auto" measured on the training split), done to a job's data
 * before training, written with the weights (safetensors metadata "kiln.preprocessing",
 * JSON, and "kiln.task") and read back to apply the very same arithmetic at inference,
 * so a downloaded weights file is self-contained and clients send raw inputs.
 */
#include "kapi_internal.h"
#include "kapi_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_PREPROCESSING "kiln.preprocessing"
#define META_TASK "kiln.task"
#define FORMAT_VERSION 1

void kapi_preprocessing_free(kapi_preprocessing *p)
{
    if (!p) return;
    free(p->mean);
    free(p->std);
    p->mean = p->std = NULL;
    p->channels = 0;
}

bool kapi_preprocessing_is_identity(const kapi_preprocessing *p)
{
    return !p || (p->scale == 1 && p->channels == 0);
}

/* An array of doubles written back exactly (%.17g reads back to the same double). */
static cJSON *exact_numbers(const double *values, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        char text[40];
        snprintf(text, sizeof text, "%.17g", values[i]);
        cJSON_AddItemToArray(a, cJSON_CreateRaw(text));
    }
    return a;
}

char *kapi_preprocessing_to_json(const kapi_preprocessing *p, const kapi_model_spec *model)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "version", FORMAT_VERSION);
    if (model) {
        cJSON *shape = cJSON_AddArrayToObject(o, "input_shape");
        for (int i = 0; shape && i < model->input_ndim; i++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)model->input_shape[i]));
    }
    cJSON *steps = cJSON_AddArrayToObject(o, "steps");
    if (p && p->scale != 1) {
        cJSON *step = cJSON_CreateObject();
        cJSON_AddStringToObject(step, "type", "scale");
        char text[40];
        snprintf(text, sizeof text, "%.17g", p->scale);
        cJSON_AddItemToObject(step, "factor", cJSON_CreateRaw(text));
        cJSON_AddItemToArray(steps, step);
    }
    if (p && p->channels > 0) {
        cJSON *step = cJSON_CreateObject();
        cJSON_AddStringToObject(step, "type", "normalize");
        cJSON_AddItemToObject(step, "mean", exact_numbers(p->mean, p->channels));
        cJSON_AddItemToObject(step, "std", exact_numbers(p->std, p->channels));
        cJSON_AddItemToArray(steps, step);
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* A list of n numbers into a malloc'd array; -1 with an error added. */
static int numbers(const cJSON *list, const char *path, double min, bool min_inclusive,
                   double **out, kapi_errors *errors)
{
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    if (n < 1 || n > KAPI_MAX_CHANNELS) {
        kapi_errors_add(errors, path, "expected a list of 1 to %d numbers", KAPI_MAX_CHANNELS);
        return -1;
    }
    *out = malloc(sizeof **out * (size_t)n);
    if (!*out) {
        kapi_errors_add(errors, path, "out of memory");
        return -1;
    }
    int i = 0;
    char item[KAPI_PATH_MAX];
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        kapi__path_index(item, path, i);
        if (kapi__number_value(errors, c, item, min, min_inclusive, INFINITY, false, &(*out)[i]) !=
            KAPI_OK)
            return -1;
    }
    return n;
}

bool kapi_preprocessing_from_json(const char *json, kapi_preprocessing *out, kapi_errors *errors)
{
    memset(out, 0, sizeof *out);
    out->scale = 1;
    int before = errors->count;
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    if (!cJSON_IsObject(root) || !cJSON_IsNumber(version) || !cJSON_IsArray(steps)) {
        kapi_errors_add(errors, META_PREPROCESSING,
                        "expected {\"version\": 1, \"steps\": [...]}, the metadata is not that");
    } else if (version->valuedouble != FORMAT_VERSION) {
        kapi_errors_add(errors, META_PREPROCESSING,
                        "version %g is newer than this kiln reads (%d): upgrade kiln",
                        version->valuedouble, FORMAT_VERSION);
    } else {
        int i = 0;
        for (const cJSON *step = steps->child; step && errors->count == before; step = step->next) {
            char path[KAPI_PATH_MAX], field[KAPI_PATH_MAX];
            snprintf(path, sizeof path, META_PREPROCESSING ".steps[%d]", i++);
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(step, "type");
            const char *name = cJSON_IsString(type) ? type->valuestring : "";
            if (!strcmp(name, "scale")) {
                kapi__get_number(errors, step, "factor", path, 0, false, INFINITY, false,
                                 &out->scale);
            } else if (!strcmp(name, "normalize") && out->channels == 0) {
                kapi__path(field, path, "mean");
                int n_mean = numbers(cJSON_GetObjectItemCaseSensitive(step, "mean"), field,
                                     -INFINITY, false, &out->mean, errors);
                kapi__path(field, path, "std");
                int n_std = n_mean > 0 ? numbers(cJSON_GetObjectItemCaseSensitive(step, "std"),
                                                 field, 0, false, &out->std, errors)
                                       : -1;
                if (n_mean > 0 && n_std != n_mean)
                    kapi_errors_add(errors, field, "expected as many values as mean (%d)", n_mean);
                else if (n_mean > 0)
                    out->channels = n_mean;
            } else {
                /* a step this build does not know: serving without it would be wrong */
                kapi_errors_add(errors, path, "unknown preprocessing step \"%.40s\"", name);
            }
        }
    }
    cJSON_Delete(root);
    if (errors->count == before) return true;
    kapi_preprocessing_free(out);
    return false;
}

kn_status kapi_preprocess(const kapi_preprocessing *p, float *x, int64_t n, int64_t in_numel)
{
    if (kapi_preprocessing_is_identity(p)) return KN_OK;
    return kn_normalize_floats(x, n, in_numel, p->scale, p->mean, p->std, p->channels);
}

bool kapi_save_weights(const kn_module *model, const char *path, const kapi_preprocessing *p,
                       const kapi_model_spec *spec, const kapi_tokenizer *tokenizer,
                       kapi_errors *errors)
{
    char *json = kapi_preprocessing_to_json(p, spec);
    char *vocabulary = tokenizer ? kapi_tokenizer_to_json(tokenizer) : NULL;
    if (!json || (tokenizer && !vocabulary)) {
        free(json);
        free(vocabulary);
        kapi_errors_add(errors, path, "out of memory");
        return false;
    }
    char task[32];
    snprintf(task, sizeof task, "%s", p ? kn_task_name(p->task) : "auto");
    kn_safetensors_meta meta[3] = {{META_PREPROCESSING, json}};
    int count = 1;
    if (p && p->task != KN_TASK_AUTO) meta[count++] = (kn_safetensors_meta){META_TASK, task};
    if (vocabulary) meta[count++] = (kn_safetensors_meta){KAPI_META_TOKENIZER, vocabulary};
    kn_status st = kn_module_save_weights_meta(model, path, meta, count);
    free(json);
    free(vocabulary);
    if (st != KN_OK) kapi_errors_add(errors, path, "%s", kn_last_error());
    return st == KN_OK;
}

bool kapi_load_preprocessing(const char *path, kapi_preprocessing *out, bool *found,
                             kapi_errors *errors)
{
    memset(out, 0, sizeof *out);
    out->scale = 1;
    *found = false;
    kn_safetensors *file = kn_safetensors_load(path);
    if (!file) {
        kapi_errors_add(errors, path, "%s", kn_last_error());
        return false;
    }
    const char *json = kn_safetensors_get_meta(file, META_PREPROCESSING);
    const char *task = kn_safetensors_get_meta(file, META_TASK);
    bool ok = true;
    if (json) {
        *found = true;
        ok = kapi_preprocessing_from_json(json, out, errors);
    }
    if (ok && task)
        out->task = !strcmp(task, "classification") ? KN_TASK_CLASSIFICATION
                    : !strcmp(task, "regression")   ? KN_TASK_REGRESSION
                    : !strcmp(task, "multilabel")   ? KN_TASK_MULTILABEL
                                                    : KN_TASK_AUTO;
    kn_safetensors_free(file);
    return ok;
}

/* ---- a job's data ------------------------------------------------------------------- */

/* Scale then normalise one split (NULL: nothing). */
static bool apply(kn_dataset *ds, const kapi_preprocessing *p, const char *what,
                  kapi_errors *errors)
{
    if (!ds || kapi_preprocessing_is_identity(p)) return true;
    if (kn_dataset_normalize(ds, p->scale, p->mean, p->std, p->channels) == KN_OK) return true;
    kapi_errors_add(errors, what, "%s", kn_last_error());
    return false;
}

const char *kapi__token_taker(const kapi_model_spec *model, char *buf, size_t size)
{
    if (model->graph)
        snprintf(buf, size, "the model's input \"%s\"", model->values[0].name);
    else
        snprintf(buf, size, "the model's first layer");
    return buf;
}

bool kapi__check_token_preprocessing(const kapi_data_spec *data, const kapi_model_spec *model,
                                     kapi_errors *errors)
{
    if (!model || model->input_dtype != KN_INT64) return true;
    bool scaled = data->scale > 0 && data->scale != 1;
    if (!scaled && !data->normalize_auto && data->channels == 0) return true;
    char taker[96];
    kapi_errors_add(errors, scaled ? "data.scale" : "data.normalize",
                    "%s takes int64 token indices, which are not scaled or normalised: leave "
                    "data.scale and data.normalize out",
                    kapi__token_taker(model, taker, sizeof taker));
    return false;
}

bool kapi_prepare_data(const kapi_job_spec *job, const kapi_model_spec *model, kn_dataset **train,
                       kn_dataset **validation, kn_dataset **test, kapi_preprocessing *out,
                       kapi_errors *errors)
{
    const kapi_data_spec *d = &job->data;
    memset(out, 0, sizeof *out);
    if (!kapi__check_token_preprocessing(d, model, errors)) return false;
    out->scale = d->scale > 0 ? d->scale : 1;
    out->task = job->train.task;
    *validation = NULL;
    if (d->validation_split > 0) {
        kn_dataset *part = NULL;
        if (kn_dataset_split(*train, d->validation_split, job->train.seed, &part, validation) !=
            KN_OK) {
            kapi_errors_add(errors, "data.validation_split", "%s", kn_last_error());
            return false;
        }
        kn_dataset_free(*train);
        *train = part;
    }
    int channels = d->normalize_auto ? (int)model->input_shape[0] : d->channels;
    if (channels > 0) {
        out->mean = malloc(sizeof(double) * (size_t)channels);
        out->std = malloc(sizeof(double) * (size_t)channels);
        if (!out->mean || !out->std) {
            kapi_preprocessing_free(out);
            kapi_errors_add(errors, "data.normalize", "out of memory");
            return false;
        }
        out->channels = channels;
    }
    if (!d->normalize_auto) {
        if (channels > 0) {
            memcpy(out->mean, d->mean, sizeof(double) * (size_t)channels);
            memcpy(out->std, d->std, sizeof(double) * (size_t)channels);
        }
        return apply(*train, out, "data.train", errors) &&
               apply(*validation, out, "data.validation_split", errors) &&
               apply(test ? *test : NULL, out, "data.test", errors);
    }
    /* auto: measured on the scaled training part, never on validation or test data */
    kapi_preprocessing scale_only = {.scale = out->scale};
    if (!apply(*train, &scale_only, "data.train", errors) ||
        !apply(*validation, &scale_only, "data.validation_split", errors) ||
        !apply(test ? *test : NULL, &scale_only, "data.test", errors))
        return false;
    if (kn_dataset_channel_stats(*train, channels, out->mean, out->std) != KN_OK) {
        kapi_errors_add(errors, "data.normalize", "%s", kn_last_error());
        return false;
    }
    kapi_preprocessing normalize_only = *out;
    normalize_only.scale = 1;
    return apply(*train, &normalize_only, "data.train", errors) &&
           apply(*validation, &normalize_only, "data.validation_split", errors) &&
           apply(test ? *test : NULL, &normalize_only, "data.test", errors);
}

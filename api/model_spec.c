/*
 * model_spec.c — the model spec's parser: torch.nn's layer names and arguments read from
 * JSON with every problem reported at its path (wrong types, out-of-range values,
 * unknown or duplicate fields, unknown layer types), defaults filled as torch.nn fills
 * them. Shapes, parameter counts and building live in model_shape.c.
 */
#include "kapi_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZE 100000000 /* features, channels, input dims */
#define MAX_WINDOW 100000  /* kernel_size, stride, padding, dilation, output_size */
#define MAX_LAYERS 1000
#define MAX_SAMPLE_NUMEL (1LL << 31)

static const char *const LINEAR_FIELDS[] = {"type", "in_features", "out_features", "bias", NULL};
static const char *const CONV2D_FIELDS[] = {"type",   "in_channels", "out_channels", "kernel_size",
                                            "stride", "padding",     "dilation",     "groups",
                                            "bias",   NULL};
static const char *const MAX_POOL_FIELDS[] = {"type",     "kernel_size", "stride", "padding",
                                              "dilation", "ceil_mode",   NULL};
static const char *const AVG_POOL_FIELDS[] = {"type",      "kernel_size",       "stride", "padding",
                                              "ceil_mode", "count_include_pad", NULL};
static const char *const ADAPTIVE_FIELDS[] = {"type", "output_size", NULL};
static const char *const FLATTEN_FIELDS[] = {"type", "start_dim", "end_dim", NULL};
static const char *const INPLACE_FIELDS[] = {"type", "inplace", NULL};
static const char *const LEAKY_FIELDS[] = {"type", "negative_slope", "inplace", NULL};
static const char *const GELU_FIELDS[] = {"type", "approximate", NULL};
static const char *const NO_FIELDS[] = {"type", NULL};
static const char *const SOFTMAX_FIELDS[] = {"type", "dim", NULL};
static const char *const DROPOUT_FIELDS[] = {"type", "p", "inplace", NULL};
static const char *const BATCH_NORM_FIELDS[] = {"type",   "num_features",        "eps", "momentum",
                                                "affine", "track_running_stats", NULL};
static const char *const LAYER_NORM_FIELDS[] = {"type", "normalized_shape", "eps",
                                                "elementwise_affine", NULL};
static const char *const EMBEDDING_FIELDS[] = {"type", "num_embeddings", "embedding_dim", NULL};

typedef struct layer_type {
    const char *name;
    kn_module_kind kind;
    const char *const *fields;
} layer_type;

static const layer_type LAYER_TYPES[] = {
    {"linear", KN_MODULE_LINEAR, LINEAR_FIELDS},
    {"conv2d", KN_MODULE_CONV2D, CONV2D_FIELDS},
    {"max_pool2d", KN_MODULE_MAX_POOL2D, MAX_POOL_FIELDS},
    {"avg_pool2d", KN_MODULE_AVG_POOL2D, AVG_POOL_FIELDS},
    {"adaptive_avg_pool2d", KN_MODULE_ADAPTIVE_AVG_POOL2D, ADAPTIVE_FIELDS},
    {"flatten", KN_MODULE_FLATTEN, FLATTEN_FIELDS},
    {"relu", KN_MODULE_RELU, INPLACE_FIELDS},
    {"leaky_relu", KN_MODULE_LEAKY_RELU, LEAKY_FIELDS},
    {"gelu", KN_MODULE_GELU, GELU_FIELDS},
    {"tanh", KN_MODULE_TANH, NO_FIELDS},
    {"sigmoid", KN_MODULE_SIGMOID, NO_FIELDS},
    {"softmax", KN_MODULE_SOFTMAX, SOFTMAX_FIELDS},
    {"dropout", KN_MODULE_DROPOUT, DROPOUT_FIELDS},
    {"batch_norm1d", KN_MODULE_BATCH_NORM1D, BATCH_NORM_FIELDS},
    {"batch_norm2d", KN_MODULE_BATCH_NORM2D, BATCH_NORM_FIELDS},
    {"layer_norm", KN_MODULE_LAYER_NORM, LAYER_NORM_FIELDS},
    {"embedding", KN_MODULE_EMBEDDING, EMBEDDING_FIELDS},
};
#define N_LAYER_TYPES ((int)(sizeof LAYER_TYPES / sizeof *LAYER_TYPES))

static const char *const MODEL_FIELDS[] = {"name", "input_shape", "layers", NULL};

/* Shape inference, in model_shape.c. */
bool kapi__infer_shapes(kapi_model_spec *spec, const char *prefix, const bool *layer_ok,
                        kapi_errors *errors);

/* An int or an [h, w] pair, as torch's _pair accepts. */
static int get_pair(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                    int64_t min, int64_t max, int out[2])
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value) return KAPI_ABSENT;
    char path[KAPI_PATH_MAX], item_path[KAPI_PATH_MAX];
    kapi__path(path, prefix, key);
    int64_t v[2];
    if (cJSON_IsNumber(value)) {
        if (kapi__int_value(errors, value, path, min, max, &v[0]) != KAPI_OK) return KAPI_BAD;
        out[0] = out[1] = (int)v[0];
        return KAPI_OK;
    }
    if (!cJSON_IsArray(value) || cJSON_GetArraySize(value) != 2) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected %s integer or an [h, w] pair of them, got %s",
                        min == 1 ? "a positive" : "a non-negative", got);
        return KAPI_BAD;
    }
    int status = KAPI_OK;
    for (int i = 0; i < 2; i++) {
        kapi__path_index(item_path, path, i);
        if (kapi__int_value(errors, cJSON_GetArrayItem(value, i), item_path, min, max, &v[i]) !=
            KAPI_OK)
            status = KAPI_BAD;
    }
    if (status == KAPI_OK) {
        out[0] = (int)v[0];
        out[1] = (int)v[1];
    }
    return status;
}

/* A positive size that must be given. */
static bool require_size(kapi_errors *errors, const cJSON *obj, const char *key, const char *prefix,
                         int64_t *out)
{
    int status = kapi__get_int(errors, obj, key, prefix, 1, MAX_SIZE, out);
    if (status == KAPI_ABSENT) kapi__missing(errors, prefix, key, "a positive integer");
    return status == KAPI_OK;
}

static bool parse_normalized_shape(kapi_errors *errors, const cJSON *obj, const char *prefix,
                                   kapi_layer_spec *layer)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, "normalized_shape");
    if (!value) return true;
    char path[KAPI_PATH_MAX], item_path[KAPI_PATH_MAX];
    kapi__path(path, prefix, "normalized_shape");
    if (cJSON_IsNumber(value)) {
        if (kapi__int_value(errors, value, path, 1, MAX_SIZE, &layer->normalized_shape[0]) !=
            KAPI_OK)
            return false;
        layer->normalized_ndim = 1;
        return true;
    }
    int n = cJSON_IsArray(value) ? cJSON_GetArraySize(value) : 0;
    if (n < 1 || n > KN_MAX_DIMS - 1) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected a positive integer or a list of 1 to %d of them, got %s",
                        KN_MAX_DIMS - 1, got);
        return false;
    }
    bool ok = true;
    for (int i = 0; i < n; i++) {
        kapi__path_index(item_path, path, i);
        if (kapi__int_value(errors, cJSON_GetArrayItem(value, i), item_path, 1, MAX_SIZE,
                            &layer->normalized_shape[i]) != KAPI_OK)
            ok = false;
    }
    if (ok) layer->normalized_ndim = n;
    return ok;
}

/* Reads one layer's arguments into layer (defaults as torch.nn); false on any error. */
static bool parse_layer_args(kapi_errors *errors, const cJSON *obj, const char *path,
                             kapi_layer_spec *layer)
{
    int before = errors->count;
    bool b;
    int64_t n;
    layer->bias = true;
    switch (layer->kind) {
    case KN_MODULE_LINEAR:
        require_size(errors, obj, "out_features", path, &layer->out_features);
        kapi__get_int(errors, obj, "in_features", path, 1, MAX_SIZE, &layer->given_in_features);
        kapi__get_bool(errors, obj, "bias", path, &layer->bias);
        break;
    case KN_MODULE_CONV2D:
        require_size(errors, obj, "out_channels", path, &layer->out_channels);
        kapi__get_int(errors, obj, "in_channels", path, 1, MAX_SIZE, &layer->given_in_features);
        if (get_pair(errors, obj, "kernel_size", path, 1, MAX_WINDOW, layer->kernel_size) ==
            KAPI_ABSENT)
            kapi__missing(errors, path, "kernel_size",
                          "a positive integer or an [h, w] pair of them");
        layer->conv.stride[0] = layer->conv.stride[1] = 1;
        layer->conv.dilation[0] = layer->conv.dilation[1] = 1;
        layer->conv.groups = 1;
        get_pair(errors, obj, "stride", path, 1, MAX_WINDOW, layer->conv.stride);
        get_pair(errors, obj, "padding", path, 0, MAX_WINDOW, layer->conv.padding);
        get_pair(errors, obj, "dilation", path, 1, MAX_WINDOW, layer->conv.dilation);
        if (kapi__get_int(errors, obj, "groups", path, 1, MAX_SIZE, &n) == KAPI_OK)
            layer->conv.groups = (int)n;
        kapi__get_bool(errors, obj, "bias", path, &layer->bias);
        break;
    case KN_MODULE_MAX_POOL2D:
    case KN_MODULE_AVG_POOL2D: {
        kn_pool2d_args *pool = &layer->pool;
        if (get_pair(errors, obj, "kernel_size", path, 1, MAX_WINDOW, pool->kernel_size) ==
            KAPI_ABSENT)
            kapi__missing(errors, path, "kernel_size",
                          "a positive integer or an [h, w] pair of them");
        layer->kernel_size[0] = pool->kernel_size[0];
        layer->kernel_size[1] = pool->kernel_size[1];
        pool->dilation[0] = pool->dilation[1] = 1;
        /* torch: stride=None means the kernel size */
        if (get_pair(errors, obj, "stride", path, 1, MAX_WINDOW, pool->stride) == KAPI_ABSENT) {
            pool->stride[0] = pool->kernel_size[0];
            pool->stride[1] = pool->kernel_size[1];
        }
        get_pair(errors, obj, "padding", path, 0, MAX_WINDOW, pool->padding);
        if (layer->kind == KN_MODULE_MAX_POOL2D)
            get_pair(errors, obj, "dilation", path, 1, MAX_WINDOW, pool->dilation);
        kapi__get_bool(errors, obj, "ceil_mode", path, &pool->ceil_mode);
        if (kapi__get_bool(errors, obj, "count_include_pad", path, &b) == KAPI_OK)
            pool->exclude_padding_from_count = !b;
        break;
    }
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        if (get_pair(errors, obj, "output_size", path, 1, MAX_WINDOW, layer->output_size) ==
            KAPI_ABSENT)
            kapi__missing(errors, path, "output_size",
                          "a positive integer or an [h, w] pair of them");
        break;
    case KN_MODULE_FLATTEN:
        /* the precise range depends on the input's rank: checked with the shapes */
        layer->start_dim = 1;
        layer->end_dim = -1;
        if (kapi__get_int(errors, obj, "start_dim", path, -KN_MAX_DIMS, KN_MAX_DIMS - 1, &n) ==
            KAPI_OK)
            layer->start_dim = (int)n;
        if (kapi__get_int(errors, obj, "end_dim", path, -KN_MAX_DIMS, KN_MAX_DIMS - 1, &n) ==
            KAPI_OK)
            layer->end_dim = (int)n;
        break;
    case KN_MODULE_RELU:
        kapi__get_bool(errors, obj, "inplace", path, &layer->inplace);
        break;
    case KN_MODULE_LEAKY_RELU:
        layer->negative_slope = 0.01;
        kapi__get_number(errors, obj, "negative_slope", path, -INFINITY, false, INFINITY, false,
                         &layer->negative_slope);
        kapi__get_bool(errors, obj, "inplace", path, &layer->inplace);
        break;
    case KN_MODULE_GELU: {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, "approximate");
        layer->approximate = KN_GELU_EXACT;
        if (value) {
            if (cJSON_IsString(value) && strcmp(value->valuestring, "none") == 0) {
                layer->approximate = KN_GELU_EXACT;
            } else if (cJSON_IsString(value) && strcmp(value->valuestring, "tanh") == 0) {
                layer->approximate = KN_GELU_TANH;
            } else {
                char field[KAPI_PATH_MAX], got[120];
                kapi__path(field, path, "approximate");
                kapi__describe(value, got, sizeof got);
                kapi_errors_add(errors, field, "expected \"none\" or \"tanh\", got %s", got);
            }
        }
        break;
    }
    case KN_MODULE_TANH:
    case KN_MODULE_SIGMOID:
        break;
    case KN_MODULE_SOFTMAX: {
        /* torch's implicit dim is deprecated and rank-dependent: the spec asks for it */
        int status = kapi__get_int(errors, obj, "dim", path, -KN_MAX_DIMS, KN_MAX_DIMS - 1, &n);
        if (status == KAPI_ABSENT)
            kapi__missing(errors, path, "dim", "the dim to normalise over, e.g. 1 or -1");
        if (status == KAPI_OK) layer->dim = (int)n;
        break;
    }
    case KN_MODULE_DROPOUT:
        layer->p = 0.5;
        kapi__get_number(errors, obj, "p", path, 0, true, 1, true, &layer->p);
        kapi__get_bool(errors, obj, "inplace", path, &layer->inplace);
        break;
    case KN_MODULE_BATCH_NORM1D:
    case KN_MODULE_BATCH_NORM2D:
        layer->eps = 1e-5;
        layer->momentum = 0.1;
        layer->affine = layer->track_running_stats = true;
        kapi__get_int(errors, obj, "num_features", path, 1, MAX_SIZE, &layer->given_in_features);
        kapi__get_number(errors, obj, "eps", path, 0, false, INFINITY, false, &layer->eps);
        kapi__get_number(errors, obj, "momentum", path, 0, true, 1, true, &layer->momentum);
        kapi__get_bool(errors, obj, "affine", path, &layer->affine);
        kapi__get_bool(errors, obj, "track_running_stats", path, &layer->track_running_stats);
        break;
    case KN_MODULE_LAYER_NORM:
        layer->eps = 1e-5;
        layer->elementwise_affine = true;
        parse_normalized_shape(errors, obj, path, layer);
        kapi__get_number(errors, obj, "eps", path, 0, false, INFINITY, false, &layer->eps);
        kapi__get_bool(errors, obj, "elementwise_affine", path, &layer->elementwise_affine);
        break;
    case KN_MODULE_EMBEDDING:
        require_size(errors, obj, "num_embeddings", path, &layer->num_embeddings);
        require_size(errors, obj, "embedding_dim", path, &layer->embedding_dim);
        break;
    case KN_MODULE_SEQUENTIAL:
        break;
    }
    return errors->count == before;
}

/* Type and arguments of layers[index]; false when anything was wrong. */
static bool parse_layer(kapi_errors *errors, const cJSON *obj, const char *path,
                        kapi_layer_spec *layer)
{
    char got[120], field[KAPI_PATH_MAX];
    if (!cJSON_IsObject(obj)) {
        kapi__describe(obj, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected a layer object such as {\"type\": \"relu\"}, got %s", got);
        return false;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    kapi__path(field, path, "type");
    const layer_type *known = NULL;
    if (!type) {
        kapi_errors_add(errors, field,
                        "required field missing: expected a layer type such as "
                        "\"linear\" or \"conv2d\"");
    } else if (!cJSON_IsString(type)) {
        kapi__describe(type, got, sizeof got);
        kapi_errors_add(errors, field, "expected a layer type (a string), got %s", got);
    } else {
        for (int i = 0; i < N_LAYER_TYPES; i++)
            if (strcmp(type->valuestring, LAYER_TYPES[i].name) == 0) known = &LAYER_TYPES[i];
        if (!known) {
            const char *names[N_LAYER_TYPES + 1];
            char list[300] = "";
            size_t used = 0;
            for (int i = 0; i < N_LAYER_TYPES; i++) {
                names[i] = LAYER_TYPES[i].name;
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                         names[i]);
            }
            names[N_LAYER_TYPES] = NULL;
            const char *suggestion = kapi__suggest(type->valuestring, names);
            char hint[64] = "";
            if (suggestion) snprintf(hint, sizeof hint, " (did you mean %s?)", suggestion);
            kapi__describe(type, got, sizeof got);
            kapi_errors_add(errors, field, "unknown layer type %s%s; known types: %s", got, hint,
                            list);
        }
    }
    if (!known) {
        /* without a type the fields cannot be checked, except for a miswritten "type" */
        static const char *const TYPE_ONLY[] = {"type", NULL};
        for (const cJSON *child = obj->child; child && !type; child = child->next) {
            if (child->string && kapi__suggest(child->string, TYPE_ONLY)) {
                kapi__path(field, path, child->string);
                kapi_errors_add(errors, field, "unknown field (did you mean type?)");
            }
        }
        return false;
    }
    layer->kind = known->kind;
    layer->type = known->name;
    bool fields_ok = kapi__check_fields(errors, obj, path, known->fields);
    bool args_ok = parse_layer_args(errors, obj, path, layer);
    return fields_ok && args_ok;
}

static bool parse_input_shape(kapi_errors *errors, const cJSON *root, const char *prefix,
                              kapi_model_spec *spec)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(root, "input_shape");
    char path[KAPI_PATH_MAX], item_path[KAPI_PATH_MAX], got[120];
    kapi__path(path, prefix, "input_shape");
    if (!value) {
        kapi__missing(errors, prefix, "input_shape",
                      "the shape of one sample without the batch dim, e.g. [1, 28, 28]");
        return false;
    }
    int n = cJSON_IsArray(value) ? cJSON_GetArraySize(value) : -1;
    if (n < 1 || n > KN_MAX_DIMS - 1) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected a list of 1 to %d positive integers (one sample's shape "
                        "without the batch dim, e.g. [1, 28, 28]), got %s",
                        KN_MAX_DIMS - 1, got);
        return false;
    }
    bool ok = true;
    double numel = 1;
    for (int i = 0; i < n; i++) {
        kapi__path_index(item_path, path, i);
        if (kapi__int_value(errors, cJSON_GetArrayItem(value, i), item_path, 1, MAX_SIZE,
                            &spec->input_shape[i]) != KAPI_OK)
            ok = false;
        else
            numel *= (double)spec->input_shape[i];
    }
    if (ok && numel > (double)MAX_SAMPLE_NUMEL) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected at most %lld elements per sample, got %s (%.0f)",
                        (long long)MAX_SAMPLE_NUMEL, got, numel);
        ok = false;
    }
    if (ok) spec->input_ndim = n;
    return ok;
}

kapi_model_spec *kapi__model_spec_from_json(const cJSON *root, const char *prefix,
                                            kapi_errors *errors)
{
    int before = errors->count;
    kapi_model_spec *spec = calloc(1, sizeof *spec);
    if (!spec) {
        kapi_errors_add(errors, prefix, "out of memory");
        return NULL;
    }
    snprintf(spec->name, sizeof spec->name, "model");
    char path[KAPI_PATH_MAX], got[120];
    kapi__check_fields(errors, root, prefix, MODEL_FIELDS);

    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    kapi__path(path, prefix, "name");
    if (name) kapi__check_name(errors, path, name, spec->name, sizeof spec->name);

    bool shape_ok = parse_input_shape(errors, root, prefix, spec);

    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    kapi__path(path, prefix, "layers");
    int n = cJSON_IsArray(layers) ? cJSON_GetArraySize(layers) : -1;
    if (!layers) {
        kapi__missing(errors, prefix, "layers", "a list of layer objects");
    } else if (n < 0) {
        kapi__describe(layers, got, sizeof got);
        kapi_errors_add(errors, path, "expected a list of layer objects, got %s", got);
    } else if (n == 0) {
        kapi_errors_add(errors, path, "expected at least one layer, got []");
    } else if (n > MAX_LAYERS) {
        kapi_errors_add(errors, path, "expected at most %d layers, got %d", MAX_LAYERS, n);
    } else {
        spec->layers = calloc((size_t)n, sizeof *spec->layers);
        bool *layer_ok = calloc((size_t)n, sizeof *layer_ok);
        if (!spec->layers || !layer_ok) {
            free(layer_ok);
            kapi_errors_add(errors, path, "out of memory");
        } else {
            spec->n_layers = n;
            int i = 0;
            for (const cJSON *item = layers->child; item; item = item->next, i++) {
                char layer_path[KAPI_PATH_MAX];
                kapi__path_index(layer_path, path, i);
                layer_ok[i] = parse_layer(errors, item, layer_path, &spec->layers[i]);
            }
            if (shape_ok) kapi__infer_shapes(spec, prefix, layer_ok, errors);
            free(layer_ok);
        }
    }
    if (errors->count > before) {
        kapi_model_spec_free(spec);
        return NULL;
    }
    return spec;
}

kapi_model_spec *kapi_model_spec_parse(const char *json, size_t length, kapi_errors *errors)
{
    cJSON *root = kapi__parse_object(json, length, errors);
    if (!root) return NULL;
    kapi_model_spec *spec = kapi__model_spec_from_json(root, "", errors);
    cJSON_Delete(root);
    return spec;
}

void kapi_model_spec_free(kapi_model_spec *spec)
{
    if (!spec) return;
    free(spec->layers);
    free(spec);
}

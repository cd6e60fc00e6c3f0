/*
 * model_spec.c — the model spec's parser: layers read from JSON by the layer table's
 * descriptions of their arguments (kn_layer.h: torch.nn's names, types, defaults,
 * ranges), with every problem reported at its path (wrong types, out-of-range values,
 * unknown or duplicate fields, unknown layer types, with did-you-mean suggestions).
 * Shapes, parameter counts and building live in model_shape.c.
 */
#include "kapi_internal.h"
#include "kn_layer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LAYERS 1000
#define MAX_SAMPLE_NUMEL (1LL << 31)

static const char *const MODEL_FIELDS[] = {"name",   "input_shape", "layers",  "inputs",
                                           "blocks", "nodes",       "outputs", NULL};

/* Shape inference, in model_shape.c. */
bool kapi__infer_shapes(kapi_model_spec *spec, const char *prefix, const bool *layer_ok,
                        kapi_errors *errors);

/* ---- one argument, as its descriptor says ---------------------------------------------- */

/* What a value of a's type is called after "expected" ("a positive integer or an [h, w]
 * pair of them", "\"none\" or \"tanh\""). */
static const char *expected_value(const kn_layer_arg *a, char *buf, size_t size)
{
    char item[96];
    kapi__int_description((int64_t)a->min, (int64_t)a->max, item, sizeof item);
    switch (a->type) {
    case KN_ARG_INT:
        snprintf(buf, size, "%s", item);
        break;
    case KN_ARG_PAIR:
        snprintf(buf, size, "%s or an [h, w] pair of them", item);
        break;
    case KN_ARG_INTS:
        snprintf(buf, size, "%s or a list of 1 to %d of them", item, KN_MAX_DIMS - 1);
        break;
    case KN_ARG_NUMBER:
        kapi__number_description(a->min, !(a->flags & KN_ARG_MIN_OPEN), a->max,
                                 !(a->flags & KN_ARG_MAX_OPEN), buf, size);
        break;
    case KN_ARG_BOOL:
        snprintf(buf, size, "true or false");
        break;
    case KN_ARG_CHOICE: {
        size_t used = 0;
        buf[0] = '\0';
        for (int i = 0; a->choices[i] && used < size; i++)
            used += (size_t)snprintf(buf + used, size - used, "%s\"%s\"",
                                     i == 0              ? ""
                                     : a->choices[i + 1] ? ", "
                                                         : " or ",
                                     a->choices[i]);
        break;
    }
    }
    return buf;
}

static void wrong_value(kapi_errors *errors, const char *path, const kn_layer_arg *a,
                        const cJSON *value)
{
    char what[160], got[120];
    kapi__describe(value, got, sizeof got);
    kapi_errors_add(errors, path, "expected %s, got %s", expected_value(a, what, sizeof what), got);
}

/* A list of integers in [min, max] at path, as an int ([k]) or a JSON list of 1 to max_n;
 * false with errors added. */
static bool int_items(kapi_errors *errors, const cJSON *value, const char *path,
                      const kn_layer_arg *a, int min_n, int max_n, int64_t *out, int *n)
{
    int64_t lo = (int64_t)a->min, hi = (int64_t)a->max;
    if (cJSON_IsNumber(value)) {
        *n = 1;
        return kapi__int_value(errors, value, path, lo, hi, &out[0]) == KAPI_OK;
    }
    int count = cJSON_IsArray(value) ? cJSON_GetArraySize(value) : -1;
    if (count < min_n || count > max_n) {
        wrong_value(errors, path, a, value);
        return false;
    }
    bool ok = true;
    char item_path[KAPI_PATH_MAX];
    for (int i = 0; i < count; i++) {
        kapi__path_index(item_path, path, i);
        if (kapi__int_value(errors, cJSON_GetArrayItem(value, i), item_path, lo, hi, &out[i]) !=
            KAPI_OK)
            ok = false;
    }
    *n = count;
    return ok;
}

/* Reads a's value from obj into options: KAPI_OK, KAPI_ABSENT (a required one is then an
 * error) or KAPI_BAD, errors at the argument's path. */
static int parse_arg(kapi_errors *errors, const cJSON *obj, const char *prefix,
                     const kn_layer_arg *a, kn_layer_options *options)
{
    char path[KAPI_PATH_MAX], what[160];
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, a->name);
    if (!value) {
        if (a->flags & KN_ARG_REQUIRED)
            kapi__missing(errors, prefix, a->name,
                          a->expected ? a->expected : expected_value(a, what, sizeof what));
        return KAPI_ABSENT;
    }
    kapi__path(path, prefix, a->name);
    void *field = (char *)options + a->offset;
    int64_t items[KN_MAX_DIMS];
    int n = 0;
    switch (a->type) {
    case KN_ARG_INT:
        return kapi__int_value(errors, value, path, (int64_t)a->min, (int64_t)a->max, field);
    case KN_ARG_NUMBER:
        return kapi__number_value(errors, value, path, a->min, !(a->flags & KN_ARG_MIN_OPEN),
                                  a->max, !(a->flags & KN_ARG_MAX_OPEN), field);
    case KN_ARG_BOOL:
        if (!cJSON_IsBool(value)) {
            wrong_value(errors, path, a, value);
            return KAPI_BAD;
        }
        *(bool *)field = cJSON_IsTrue(value);
        return KAPI_OK;
    case KN_ARG_PAIR:
        if (!int_items(errors, value, path, a, 2, 2, items, &n)) return KAPI_BAD;
        ((int *)field)[0] = (int)items[0];
        ((int *)field)[1] = (int)items[n - 1]; /* an int stands for both */
        return KAPI_OK;
    case KN_ARG_INTS: {
        if (!int_items(errors, value, path, a, 1, KN_MAX_DIMS - 1, items, &n)) return KAPI_BAD;
        kn_int_list *list = field;
        memcpy(list->size, items, sizeof(int64_t) * (size_t)n);
        list->n = n;
        return KAPI_OK;
    }
    case KN_ARG_CHOICE:
        for (int i = 0; cJSON_IsString(value) && a->choices[i]; i++) {
            if (strcmp(value->valuestring, a->choices[i]) == 0) {
                *(int *)field = i;
                return KAPI_OK;
            }
        }
        wrong_value(errors, path, a, value);
        return KAPI_BAD;
    }
    return KAPI_BAD;
}

/* Reads one layer's arguments into layer->options, defaults as torch.nn's; false on any
 * error. */
static bool parse_layer_args(kapi_errors *errors, const cJSON *obj, const char *path,
                             const kn_layer_type *row, kapi_layer_spec *layer)
{
    int before = errors->count;
    kn_layer_defaults(row->kind, &layer->options);
    bool given[KN_LAYER_MAX_ARGS] = {false};
    for (int i = 0; row->args && row->args[i].name && i < KN_LAYER_MAX_ARGS; i++)
        given[i] = parse_arg(errors, obj, path, &row->args[i], &layer->options) == KAPI_OK;
    /* an absent argument whose default is another's value (a pool's stride) */
    for (int i = 0; row->args && row->args[i].name && i < KN_LAYER_MAX_ARGS; i++) {
        const kn_layer_arg *a = &row->args[i];
        const kn_layer_arg *from = a->default_from ? kn_layer_arg_find(row, a->default_from) : NULL;
        if (from && !given[i])
            memcpy((char *)&layer->options + a->offset, (char *)&layer->options + from->offset,
                   sizeof(int[2]));
    }
    return errors->count == before;
}

/* ---- one layer ------------------------------------------------------------------------- */

void kapi__unknown_type(kapi_errors *errors, const char *field, const cJSON *type,
                        const char *const *blocks)
{
    const char *names[KN_MODULE_KIND_COUNT + KAPI_MAX_BLOCKS + 1];
    int n = 0;
    char list[1024] = "", block_list[600] = "";
    size_t used = 0;
    for (int i = 0; i < KN_MODULE_KIND_COUNT; i++) {
        const kn_layer_type *row = kn_layer_at(i);
        if (row->flags & KN_LAYER_CONTAINER) continue;
        names[n++] = row->name;
        if (used < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", n > 1 ? ", " : "",
                                     row->name);
    }
    used = 0;
    for (int i = 0; blocks && blocks[i] && i < KAPI_MAX_BLOCKS; i++) {
        names[n++] = blocks[i];
        if (used < sizeof block_list)
            used += (size_t)snprintf(block_list + used, sizeof block_list - used, "%s%s",
                                     i ? ", " : "; blocks: ", blocks[i]);
    }
    names[n] = NULL;
    const char *suggestion = kapi__suggest(type->valuestring, names);
    char hint[64] = "", got[120];
    if (suggestion) snprintf(hint, sizeof hint, " (did you mean %s?)", suggestion);
    kapi__describe(type, got, sizeof got);
    kapi_errors_add(errors, field, "unknown %s %s%s; known types: %s%s",
                    blocks ? "layer or block type" : "layer type", got, hint, list, block_list);
}

bool kapi__layer_fields(kapi_errors *errors, const cJSON *obj, const char *path,
                        const kn_layer_type *row, const char *const *extra,
                        kn_layer_options *options)
{
    const char *fields[KN_LAYER_MAX_ARGS + 16] = {"type"};
    int n = 1;
    for (int i = 0; extra && extra[i] && n < 15; i++) fields[n++] = extra[i];
    for (int i = 0; row->args && row->args[i].name && n <= KN_LAYER_MAX_ARGS + 14; i++)
        fields[n++] = row->args[i].name;
    fields[n] = NULL;
    bool fields_ok = kapi__check_fields(errors, obj, path, fields);
    kapi_layer_spec layer;
    memset(&layer, 0, sizeof layer);
    bool args_ok = parse_layer_args(errors, obj, path, row, &layer);
    *options = layer.options;
    return fields_ok && args_ok;
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
    const kn_layer_type *known = NULL;
    if (!type) {
        kapi_errors_add(errors, field,
                        "required field missing: expected a layer type such as "
                        "\"linear\" or \"conv2d\"");
    } else if (!cJSON_IsString(type)) {
        kapi__describe(type, got, sizeof got);
        kapi_errors_add(errors, field, "expected a layer type (a string), got %s", got);
    } else {
        known = kn_layer_find(type->valuestring);
        if (known && (known->flags & KN_LAYER_CONTAINER)) known = NULL;
        if (!known) kapi__unknown_type(errors, field, type, NULL);
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
    return kapi__layer_fields(errors, obj, path, known, NULL, &layer->options);
}

static bool parse_input_shape(kapi_errors *errors, const cJSON *root, const char *prefix,
                              kapi_model_spec *spec)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(root, "input_shape");
    char path[KAPI_PATH_MAX];
    kapi__path(path, prefix, "input_shape");
    if (!value) {
        kapi__missing(errors, prefix, "input_shape",
                      "the shape of one sample without the batch dim, e.g. [1, 28, 28]");
        return false;
    }
    return kapi__sample_shape(errors, value, path, spec->input_shape, &spec->input_ndim);
}

bool kapi__sample_shape(kapi_errors *errors, const cJSON *value, const char *path, int64_t *shape,
                        int *ndim)
{
    char item_path[KAPI_PATH_MAX], got[120];
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
        if (kapi__int_value(errors, cJSON_GetArrayItem(value, i), item_path, 1, KN_ARG_MAX_SIZE,
                            &shape[i]) != KAPI_OK)
            ok = false;
        else
            numel *= (double)shape[i];
    }
    if (ok && numel > (double)MAX_SAMPLE_NUMEL) {
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path, "expected at most %lld elements per sample, got %s (%.0f)",
                        (long long)MAX_SAMPLE_NUMEL, got, numel);
        ok = false;
    }
    if (ok) *ndim = n;
    return ok;
}

/* A graph spec has nodes (and inputs, outputs, blocks) instead of layers. */
static bool is_graph(const cJSON *root)
{
    static const char *const GRAPH_FIELDS[] = {"nodes", "inputs", "outputs", "blocks"};
    for (int i = 0; i < 4; i++)
        if (cJSON_GetObjectItemCaseSensitive(root, GRAPH_FIELDS[i])) return true;
    return false;
}

/* A graph spec: a chain's fields are errors (each names what a graph has instead). */
static void graph_spec(const cJSON *root, const char *prefix, kapi_model_spec *spec,
                       kapi_errors *errors)
{
    char path[KAPI_PATH_MAX];
    if (cJSON_GetObjectItemCaseSensitive(root, "layers")) {
        kapi__path(path, prefix, "layers");
        kapi_errors_add(errors, path,
                        "a model has either \"layers\" (a chain) or \"nodes\" (a graph with "
                        "\"inputs\" and \"outputs\"), not both");
    }
    if (cJSON_GetObjectItemCaseSensitive(root, "input_shape")) {
        kapi__path(path, prefix, "input_shape");
        kapi_errors_add(errors, path,
                        "a graph declares its inputs in \"inputs\" ([{\"name\": \"x\", "
                        "\"shape\": [784]}]), not input_shape");
    }
    kapi__graph_from_json(root, prefix, spec, errors);
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

    if (is_graph(root)) {
        graph_spec(root, prefix, spec, errors);
        if (errors->count > before) {
            kapi_model_spec_free(spec);
            return NULL;
        }
        return spec;
    }

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
            for (i = 0; i < n; i++)
                snprintf(spec->layers[i].name, sizeof spec->layers[i].name, "%d", i);
            if (shape_ok && kapi__infer_shapes(spec, prefix, layer_ok, errors) &&
                !kapi__chain_values(spec))
                kapi_errors_add(errors, path, "out of memory");
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
    free(spec->values);
    free(spec->run_order);
    free(spec->containers);
    free(spec);
}

/*
 * model_shape.c — what a parsed model spec implies: each layer's input and output shape
 * inferred from input_shape by its row's shape rule (kn_layer.h; in_features,
 * in_channels, num_features filled in and checked), parameter counts, a training-memory
 * estimate, the summary JSON, and the kn_module built from the spec.
 */
#include "kapi_internal.h"
#include "kn_layer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAMPLE_NUMEL (1LL << 31)
#define MAX_PARAMETERS (1LL << 36)

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t size)
{
    return kn_shape_str(shape, ndim, buf, size);
}

/* One layer's output, parameter count and buffers from its input through its row's
 * shape rule (kn_layer_infer), which fills in the arguments inferred from the input; false
 * with an error at the layer's path, or at its argument's, when the input does not fit. */
static bool infer_layer(kapi_errors *errors, const char *path, int index, kapi_layer_spec *layer,
                        const kn_layer_io *in, kn_layer_io *out)
{
    const kn_layer_type *row = kn_layer_of(layer->kind);
    if (row->input_dtype == KN_INT64 && index != 0) {
        /* in a chain only the spec's input can be indices */
        kapi_errors_add(errors, path, "%s takes integer indices, so it must be the first layer",
                        layer->type);
        return false;
    }
    kn_layer_shape s = {.type = row, .options = &layer->options, .inputs = in, .n_inputs = 1};
    if (!kn_layer_infer(&s)) {
        char field[KAPI_PATH_MAX];
        if (s.field) {
            kapi__path(field, path, s.field);
            kapi_errors_add(errors, field, "%s", s.message);
        } else {
            kapi_errors_add(errors, path, "%s %s", layer->type, s.message);
        }
        return false;
    }
    *out = s.output;
    layer->parameter_count = s.parameter_count;
    layer->buffer_bytes = s.buffer_bytes;
    layer->saved_elements = s.saved_elements;
    return true;
}

bool kapi__infer_shapes(kapi_model_spec *spec, const char *prefix, const bool *layer_ok,
                        kapi_errors *errors)
{
    /* the spec's input is what its first layer takes: indices for an embedding */
    kn_layer_io io = {.ndim = spec->input_ndim,
                      .dtype = spec->n_layers > 0 ? kn_layer_of(spec->layers[0].kind)->input_dtype
                                                  : KN_FLOAT32};
    memcpy(io.shape, spec->input_shape, sizeof io.shape);
    double parameters = 0;
    char layers_path[KAPI_PATH_MAX], path[KAPI_PATH_MAX], text[96];
    kapi__path(layers_path, prefix, "layers");
    for (int i = 0; i < spec->n_layers; i++) {
        /* a layer with bad arguments has no shape: later layers' shape errors would
         * only be echoes of it */
        if (!layer_ok[i]) return false;
        kapi_layer_spec *layer = &spec->layers[i];
        kapi__path_index(path, layers_path, i);
        memcpy(layer->in_shape, io.shape, sizeof io.shape);
        layer->in_ndim = io.ndim;
        kn_layer_io out;
        if (!infer_layer(errors, path, i, layer, &io, &out)) return false;
        memcpy(layer->out_shape, out.shape, sizeof out.shape);
        layer->out_ndim = out.ndim;
        double numel = 1;
        for (int d = 0; d < layer->out_ndim; d++) numel *= (double)layer->out_shape[d];
        if (numel > (double)MAX_SAMPLE_NUMEL) {
            kapi_errors_add(errors, path,
                            "the output %s has %.0f elements per sample (at most %lld)",
                            shape_str(layer->out_shape, layer->out_ndim, text, sizeof text), numel,
                            (long long)MAX_SAMPLE_NUMEL);
            return false;
        }
        parameters += (double)layer->parameter_count;
        io = out;
    }
    if (parameters > (double)MAX_PARAMETERS) {
        kapi_errors_add(errors, layers_path, "the model has %.0f parameters (at most %lld)",
                        parameters, (long long)MAX_PARAMETERS);
        return false;
    }
    spec->parameter_count = (int64_t)parameters;
    spec->input_dtype =
        spec->n_layers > 0 ? kn_layer_of(spec->layers[0].kind)->input_dtype : KN_FLOAT32;
    memcpy(spec->output_shape, io.shape, sizeof io.shape);
    spec->output_ndim = io.ndim;
    return true;
}

bool kapi__chain_values(kapi_model_spec *spec)
{
    /* the input, then each layer's output; the last is the model's "output" */
    spec->values = calloc((size_t)spec->n_layers + 1, sizeof *spec->values);
    if (!spec->values) return false;
    kapi_value_spec *in = &spec->values[0];
    snprintf(in->name, sizeof in->name, "input");
    memcpy(in->shape, spec->input_shape, sizeof in->shape);
    in->ndim = spec->input_ndim;
    in->dtype = spec->n_layers > 0 ? kn_layer_of(spec->layers[0].kind)->input_dtype : KN_FLOAT32;
    for (int i = 0; i < spec->n_layers; i++) {
        kapi_layer_spec *layer = &spec->layers[i];
        kapi_value_spec *v = &spec->values[i + 1];
        snprintf(v->name, sizeof v->name, "%s", i + 1 == spec->n_layers ? "output" : layer->name);
        memcpy(v->shape, layer->out_shape, sizeof v->shape);
        v->ndim = layer->out_ndim;
        v->dtype = KN_FLOAT32;
        layer->n_inputs = 1;
        layer->inputs[0] = i;
        layer->first_output = i + 1;
        layer->n_outputs = 1;
    }
    spec->n_values = spec->n_layers + 1;
    spec->n_inputs = 1;
    spec->n_outputs = 1;
    spec->outputs[0] = spec->n_layers;
    return true;
}

int64_t kapi_model_input_rows(const kapi_model_spec *spec, int input, int *layer)
{
    int64_t rows = -1;
    for (int l = 0; l < spec->n_layers; l++) {
        const kapi_layer_spec *e = &spec->layers[l];
        if (e->kind != KN_MODULE_EMBEDDING) continue;
        for (int k = 0; k < e->n_inputs; k++) {
            int64_t n = e->options.embedding.num_embeddings;
            if (e->inputs[k] != input || (rows >= 0 && n >= rows)) continue;
            rows = n;
            if (layer) *layer = l;
        }
    }
    return rows;
}

static int64_t numel_of(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

int64_t kapi_model_training_memory(const kapi_model_spec *spec, int64_t batch_size,
                                   kn_optimizer_kind optimizer)
{
    if (!spec || batch_size <= 0) return 0;
    /* float32 everywhere: weights + gradients + optimizer state per parameter */
    int64_t states = optimizer == KN_OPTIM_ADAM || optimizer == KN_OPTIM_ADAMW ? 2 : 1;
    int64_t bytes = 4 * spec->parameter_count * (2 + states);
    /* the input batch (int64 indices take 8 bytes each, and have no gradient), then each
     * layer's output kept for backward and its gradient */
    int64_t input =
        numel_of(spec->input_shape, spec->input_ndim) * (int64_t)kn_dtype_size(spec->input_dtype);
    int64_t activations = 0;
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        activations += 2 * numel_of(layer->out_shape, layer->out_ndim) + layer->saved_elements;
        bytes += layer->buffer_bytes; /* running statistics */
    }
    return bytes + batch_size * (input + 4 * activations);
}

static cJSON *shape_json(const int64_t *shape, int ndim)
{
    cJSON *array = cJSON_CreateArray();
    for (int i = 0; i < ndim; i++)
        cJSON_AddItemToArray(array, cJSON_CreateNumber((double)shape[i]));
    return array;
}

static cJSON *value_json(const kapi_value_spec *v)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", v->name);
    cJSON_AddItemToObject(o, "shape", shape_json(v->shape, v->ndim));
    cJSON_AddStringToObject(o, "dtype", kn_dtype_name(v->dtype));
    return o;
}

/* A graph's inputs, outputs and nodes (in the order their modules are registered): each
 * node's inputs by the names of their values, its output shape (one per output when it
 * has several), parameters (a tied one counts at its first node) and ties. */
static void graph_summary(const kapi_model_spec *spec, cJSON *root)
{
    cJSON *inputs = cJSON_AddArrayToObject(root, "inputs");
    for (int i = 0; i < spec->n_inputs; i++)
        cJSON_AddItemToArray(inputs, value_json(&spec->values[i]));
    cJSON *outputs = cJSON_AddArrayToObject(root, "outputs");
    for (int i = 0; i < spec->n_outputs; i++)
        cJSON_AddItemToArray(outputs, value_json(&spec->values[spec->outputs[i]]));
    cJSON *nodes = cJSON_AddArrayToObject(root, "nodes");
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "name", layer->name);
        cJSON_AddStringToObject(item, "type", layer->type);
        cJSON *ins = cJSON_AddArrayToObject(item, "inputs");
        for (int k = 0; k < layer->n_inputs; k++)
            cJSON_AddItemToArray(ins, cJSON_CreateString(spec->values[layer->inputs[k]].name));
        const kapi_value_spec *out = &spec->values[layer->first_output];
        cJSON_AddItemToObject(item, "output_shape", shape_json(out->shape, out->ndim));
        if (layer->n_outputs > 1) {
            cJSON *shapes = cJSON_AddArrayToObject(item, "output_shapes");
            for (int j = 0; j < layer->n_outputs; j++)
                cJSON_AddItemToArray(shapes, shape_json(out[j].shape, out[j].ndim));
        }
        if (out->dtype != KN_FLOAT32)
            cJSON_AddStringToObject(item, "dtype", kn_dtype_name(out->dtype));
        cJSON_AddNumberToObject(item, "parameters", (double)layer->parameter_count);
        if (layer->n_ties > 0) {
            cJSON *tie = cJSON_AddObjectToObject(item, "tie");
            for (int t = 0; t < layer->n_ties; t++)
                cJSON_AddStringToObject(tie, layer->ties[t].parameter, layer->ties[t].to);
        }
        cJSON_AddItemToArray(nodes, item);
    }
}

char *kapi_model_spec_summary_json(const kapi_model_spec *spec, int64_t batch_size)
{
    if (!spec) return NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddBoolToObject(root, "valid", true);
    cJSON_AddStringToObject(root, "name", spec->name);
    cJSON_AddItemToObject(root, "input_shape", shape_json(spec->input_shape, spec->input_ndim));
    cJSON_AddNumberToObject(root, "parameter_count", (double)spec->parameter_count);
    cJSON_AddItemToObject(root, "output_shape", shape_json(spec->output_shape, spec->output_ndim));
    cJSON_AddNumberToObject(root, "batch_size", (double)batch_size);
    cJSON_AddNumberToObject(root, "training_memory_bytes",
                            (double)kapi_model_training_memory(spec, batch_size, KN_OPTIM_ADAM));
    if (spec->graph) {
        graph_summary(spec, root);
        char *text = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        return text;
    }
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "type", layer->type);
        cJSON_AddItemToObject(item, "output_shape", shape_json(layer->out_shape, layer->out_ndim));
        cJSON_AddNumberToObject(item, "parameters", (double)layer->parameter_count);
        cJSON_AddItemToArray(layers, item);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* Makes the containers on the way to path that the spec names (a repeat's ModuleList, a
 * block's copies), in the order a node first needs them, as torch's __init__ would. */
static kn_status make_containers(kn_module *graph, const kapi_model_spec *spec, const char *path)
{
    char prefix[KAPI_NODE_NAME_MAX];
    for (const char *dot = strchr(path, '.'); dot; dot = strchr(dot + 1, '.')) {
        snprintf(prefix, sizeof prefix, "%.*s", (int)(dot - path), path);
        if (kn_module_find(graph, prefix)) continue;
        const char *class_name = NULL;
        for (int i = 0; i < spec->n_containers && !class_name; i++)
            if (strcmp(spec->containers[i].path, prefix) == 0)
                class_name = spec->containers[i].class_name;
        kn_status status = kn_module_add(graph, prefix, kn_module_container_new(class_name));
        if (status != KN_OK) return status;
    }
    return KN_OK;
}

/* A graph spec's model: modules in registration order, nodes in run order, then ties. */
static kn_module *build_graph(const kapi_model_spec *spec, kn_generator *gen)
{
    kn_module *graph = kn_graph_new();
    kn_status status = graph ? KN_OK : kn_last_status();
    for (int i = 0; status == KN_OK && i < spec->n_inputs; i++)
        if (kn_graph_add_input(graph, spec->values[i].name, spec->values[i].dtype) < 0)
            status = kn_last_status();
    for (int i = 0; status == KN_OK && i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        status = make_containers(graph, spec, layer->name);
        kn_module *m = status == KN_OK ? kn_module_new(layer->kind, &layer->options, gen) : NULL;
        if (status == KN_OK) status = m ? kn_module_add(graph, layer->name, m) : kn_last_status();
    }
    for (int i = 0; status == KN_OK && i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[spec->run_order[i]];
        int first =
            kn_graph_add_node(graph, layer->name, layer->inputs, layer->n_inputs, layer->n_outputs);
        if (first < 0)
            status = kn_last_status();
        else if (first != layer->first_output)
            status = KN_ERR_VALUE; /* the spec's value ids are the graph's */
    }
    for (int i = 0; status == KN_OK && i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        for (int t = 0; status == KN_OK && t < layer->n_ties; t++) {
            char name[KAPI_NODE_NAME_MAX + 40];
            snprintf(name, sizeof name, "%s.%s", layer->name, layer->ties[t].parameter);
            status = kn_module_tie(graph, name, layer->ties[t].to);
        }
    }
    if (status == KN_OK) status = kn_graph_set_outputs(graph, spec->outputs, spec->n_outputs);
    if (status != KN_OK) {
        kn_module_free(graph);
        return NULL;
    }
    return graph;
}

kn_module *kapi_model_build(const kapi_model_spec *spec, kn_generator *gen)
{
    if (!spec) return NULL;
    if (spec->graph) return build_graph(spec, gen);
    kn_module *model = kn_sequential_new();
    if (!model) return NULL;
    for (int i = 0; i < spec->n_layers; i++) {
        /* layers are made in order so the generator is drawn as torch draws it */
        kn_module *child = kn_module_new(spec->layers[i].kind, &spec->layers[i].options, gen);
        if (!child || kn_sequential_append(model, child) != KN_OK) {
            kn_module_free(model);
            return NULL;
        }
    }
    return model;
}

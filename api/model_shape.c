/*
 * model_shape.c — what a parsed model spec implies: each layer's input and output shape
 * inferred from input_shape (with in_features / in_channels / num_features filled in
 * and checked), parameter counts, a training-memory estimate, the summary JSON, and the
 * kn_module built from the spec.
 */
#include "kapi_internal.h"

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

/* "[N, 32, 7, 7]": the batched shape the dims of flatten and softmax count in. */
static const char *batched_str(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[N");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, ", %lld", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* torch's pooling_output_shape. */
static int64_t pool_out(int64_t in, int k, int s, int p, int d, bool ceil_mode)
{
    int64_t out = floor_div(in + 2 * p - (int64_t)d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p) out--;
    return out;
}

/* "expected 784 (the input is [784]), got 100" for an inferred size written by hand. */
static bool check_given(kapi_errors *errors, const char *path, const char *field,
                        kapi_layer_spec *layer, int64_t inferred, const int64_t *in, int in_ndim)
{
    layer->in_features = inferred;
    if (!layer->given_in_features || layer->given_in_features == inferred) return true;
    char fpath[KAPI_PATH_MAX], shape[96];
    kapi__path(fpath, path, field);
    kapi_errors_add(errors, fpath, "expected %lld (inferred from the input %s), got %lld",
                    (long long)inferred, shape_str(in, in_ndim, shape, sizeof shape),
                    (long long)layer->given_in_features);
    return false;
}

/* Normalises a dim counted over the batched rank; an error names the valid range. */
static bool batched_dim(kapi_errors *errors, const char *path, const char *field, int dim,
                        const int64_t *in, int in_ndim, int *out)
{
    int rank = in_ndim + 1;
    char fpath[KAPI_PATH_MAX], shape[96];
    kapi__path(fpath, path, field);
    if (dim < -rank || dim >= rank) {
        kapi_errors_add(errors, fpath,
                        "expected an integer from %d to %d (the batched input %s has %d dims), "
                        "got %d",
                        -rank, rank - 1, batched_str(in, in_ndim, shape, sizeof shape), rank, dim);
        return false;
    }
    *out = dim < 0 ? dim + rank : dim;
    if (*out == 0) {
        kapi_errors_add(errors, fpath,
                        "dim %d is the batch dim of the batched input %s: expected a dim from 1 "
                        "to %d (or from %d to -1)",
                        dim, batched_str(in, in_ndim, shape, sizeof shape), rank - 1, -(rank - 1));
        return false;
    }
    return true;
}

static bool window_output(kapi_errors *errors, const char *path, kapi_layer_spec *layer,
                          const int64_t *in, const int k[2], const int s[2], const int p[2],
                          const int d[2], bool ceil_mode, int64_t *out)
{
    out[0] = in[0];
    for (int i = 0; i < 2; i++) out[1 + i] = pool_out(in[1 + i], k[i], s[i], p[i], d[i], ceil_mode);
    if (out[1] > 0 && out[2] > 0) return true;
    char a[96], b[96];
    kapi_errors_add(errors, path,
                    "%s would output %s from the input %s: the input is too small for "
                    "kernel_size [%d, %d] (stride [%d, %d], padding [%d, %d], dilation [%d, %d])",
                    layer->type, shape_str(out, 3, a, sizeof a), shape_str(in, 3, b, sizeof b),
                    k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]);
    return false;
}

static bool needs_image(kapi_errors *errors, const char *path, const kapi_layer_spec *layer,
                        const int64_t *in, int in_ndim)
{
    if (in_ndim == 3) return true;
    char shape[96];
    kapi_errors_add(errors, path, "%s expects a [channels, height, width] input, got %s%s",
                    layer->type, shape_str(in, in_ndim, shape, sizeof shape),
                    in_ndim == 2 ? " — give input_shape a channel dim, e.g. [1, H, W]" : "");
    return false;
}

/* One layer: out shape and parameter count from in shape; false (with errors) when the
 * layer cannot take that input. */
static bool infer_layer(kapi_errors *errors, const char *path, int index, kapi_layer_spec *layer,
                        const int64_t *in, int in_ndim, int64_t *out, int *out_ndim)
{
    char shape[96];
    memcpy(out, in, sizeof(int64_t) * (size_t)in_ndim);
    *out_ndim = in_ndim;
    layer->parameter_count = 0;
    switch (layer->kind) {
    case KN_MODULE_LINEAR: {
        /* Linear applies to the last dim; a multi-dim input is almost always a missing
         * flatten, so it is allowed only when in_features says it is meant. */
        int64_t last = in[in_ndim - 1];
        if (in_ndim != 1 && layer->given_in_features != last) {
            kapi_errors_add(errors, path, "linear expects a 1-D input, got %s — add a flatten",
                            shape_str(in, in_ndim, shape, sizeof shape));
            return false;
        }
        if (!check_given(errors, path, "in_features", layer, last, in, in_ndim)) return false;
        out[in_ndim - 1] = layer->out_features;
        layer->parameter_count =
            last * layer->out_features + (layer->bias ? layer->out_features : 0);
        return true;
    }
    case KN_MODULE_CONV2D: {
        if (!needs_image(errors, path, layer, in, in_ndim)) return false;
        if (!check_given(errors, path, "in_channels", layer, in[0], in, in_ndim)) return false;
        int g = layer->conv.groups;
        if (in[0] % g || layer->out_channels % g) {
            char fpath[KAPI_PATH_MAX];
            kapi__path(fpath, path, "groups");
            kapi_errors_add(errors, fpath,
                            "in_channels (%lld) and out_channels (%lld) must both be divisible "
                            "by groups, got %d",
                            (long long)in[0], (long long)layer->out_channels, g);
            return false;
        }
        if (!window_output(errors, path, layer, in, layer->kernel_size, layer->conv.stride,
                           layer->conv.padding, layer->conv.dilation, false, out))
            return false;
        out[0] = layer->out_channels;
        layer->parameter_count =
            layer->out_channels * (in[0] / g) * layer->kernel_size[0] * layer->kernel_size[1] +
            (layer->bias ? layer->out_channels : 0);
        return true;
    }
    case KN_MODULE_MAX_POOL2D:
    case KN_MODULE_AVG_POOL2D: {
        if (!needs_image(errors, path, layer, in, in_ndim)) return false;
        const kn_pool2d_args *pool = &layer->pool;
        if (pool->padding[0] > pool->kernel_size[0] / 2 ||
            pool->padding[1] > pool->kernel_size[1] / 2) {
            char fpath[KAPI_PATH_MAX];
            kapi__path(fpath, path, "padding");
            kapi_errors_add(
                errors, fpath, "expected at most half of kernel_size [%d, %d], got [%d, %d]",
                pool->kernel_size[0], pool->kernel_size[1], pool->padding[0], pool->padding[1]);
            return false;
        }
        return window_output(errors, path, layer, in, pool->kernel_size, pool->stride,
                             pool->padding, pool->dilation, pool->ceil_mode, out);
    }
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        if (!needs_image(errors, path, layer, in, in_ndim)) return false;
        out[1] = layer->output_size[0];
        out[2] = layer->output_size[1];
        return true;
    case KN_MODULE_FLATTEN: {
        int start, end;
        bool ok = batched_dim(errors, path, "start_dim", layer->start_dim, in, in_ndim, &start);
        ok = batched_dim(errors, path, "end_dim", layer->end_dim, in, in_ndim, &end) && ok;
        if (!ok) return false;
        if (end < start) {
            kapi_errors_add(
                errors, path, "end_dim (%d) comes before start_dim (%d) in the batched input %s",
                layer->end_dim, layer->start_dim, batched_str(in, in_ndim, shape, sizeof shape));
            return false;
        }
        int n = 0;
        for (int i = 0; i < start - 1; i++) out[n++] = in[i];
        int64_t product = 1;
        for (int i = start - 1; i <= end - 1; i++) product *= in[i];
        out[n++] = product;
        for (int i = end; i < in_ndim; i++) out[n++] = in[i];
        *out_ndim = n;
        return true;
    }
    case KN_MODULE_SOFTMAX: {
        int dim;
        return batched_dim(errors, path, "dim", layer->dim, in, in_ndim, &dim);
    }
    case KN_MODULE_BATCH_NORM1D:
        if (in_ndim != 1 && in_ndim != 2) {
            kapi_errors_add(errors, path,
                            "batch_norm1d expects a [features] or [channels, length] input, got %s",
                            shape_str(in, in_ndim, shape, sizeof shape));
            return false;
        }
        if (!check_given(errors, path, "num_features", layer, in[0], in, in_ndim)) return false;
        layer->parameter_count = layer->affine ? 2 * in[0] : 0;
        return true;
    case KN_MODULE_BATCH_NORM2D:
        if (!needs_image(errors, path, layer, in, in_ndim)) return false;
        if (!check_given(errors, path, "num_features", layer, in[0], in, in_ndim)) return false;
        layer->parameter_count = layer->affine ? 2 * in[0] : 0;
        return true;
    case KN_MODULE_LAYER_NORM: {
        if (layer->normalized_ndim == 0) {
            layer->normalized_ndim = 1;
            layer->normalized_shape[0] = in[in_ndim - 1];
        }
        int k = layer->normalized_ndim;
        bool match = k <= in_ndim;
        for (int i = 0; match && i < k; i++)
            match = layer->normalized_shape[i] == in[in_ndim - k + i];
        if (!match) {
            char fpath[KAPI_PATH_MAX], given[96];
            kapi__path(fpath, path, "normalized_shape");
            kapi_errors_add(errors, fpath, "expected the trailing dims of the input %s, got %s",
                            shape_str(in, in_ndim, shape, sizeof shape),
                            shape_str(layer->normalized_shape, k, given, sizeof given));
            return false;
        }
        int64_t numel = 1;
        for (int i = 0; i < k; i++) numel *= layer->normalized_shape[i];
        layer->parameter_count = layer->elementwise_affine ? 2 * numel : 0;
        return true;
    }
    case KN_MODULE_EMBEDDING:
        if (index != 0) {
            kapi_errors_add(errors, path,
                            "embedding takes integer indices, so it must be the first layer");
            return false;
        }
        if (in_ndim + 1 > KN_MAX_DIMS - 1) {
            kapi_errors_add(errors, path, "embedding would output more than %d dims",
                            KN_MAX_DIMS - 1);
            return false;
        }
        out[in_ndim] = layer->embedding_dim;
        *out_ndim = in_ndim + 1;
        layer->parameter_count = layer->num_embeddings * layer->embedding_dim;
        return true;
    default: /* elementwise: relu, leaky_relu, gelu, tanh, sigmoid, dropout */
        return true;
    }
}

bool kapi__infer_shapes(kapi_model_spec *spec, const char *prefix, const bool *layer_ok,
                        kapi_errors *errors)
{
    int64_t shape[KN_MAX_DIMS];
    int ndim = spec->input_ndim;
    memcpy(shape, spec->input_shape, sizeof shape);
    double parameters = 0;
    char layers_path[KAPI_PATH_MAX], path[KAPI_PATH_MAX], text[96];
    kapi__path(layers_path, prefix, "layers");
    for (int i = 0; i < spec->n_layers; i++) {
        /* a layer with bad arguments has no shape: later layers' shape errors would
         * only be echoes of it */
        if (!layer_ok[i]) return false;
        kapi_layer_spec *layer = &spec->layers[i];
        kapi__path_index(path, layers_path, i);
        memcpy(layer->in_shape, shape, sizeof shape);
        layer->in_ndim = ndim;
        if (!infer_layer(errors, path, i, layer, shape, ndim, layer->out_shape, &layer->out_ndim))
            return false;
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
        memcpy(shape, layer->out_shape, sizeof shape);
        ndim = layer->out_ndim;
    }
    if (parameters > (double)MAX_PARAMETERS) {
        kapi_errors_add(errors, layers_path, "the model has %.0f parameters (at most %lld)",
                        parameters, (long long)MAX_PARAMETERS);
        return false;
    }
    spec->parameter_count = (int64_t)parameters;
    memcpy(spec->output_shape, shape, sizeof shape);
    spec->output_ndim = ndim;
    return true;
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
    /* the input batch, then each layer's output kept for backward and its gradient */
    int64_t activations = numel_of(spec->input_shape, spec->input_ndim);
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *layer = &spec->layers[i];
        activations += 2 * numel_of(layer->out_shape, layer->out_ndim);
        if (layer->kind == KN_MODULE_BATCH_NORM1D || layer->kind == KN_MODULE_BATCH_NORM2D)
            bytes += 4 * 2 * layer->in_features + 8; /* running stats, num_batches_tracked */
    }
    return bytes + 4 * batch_size * activations;
}

static cJSON *shape_json(const int64_t *shape, int ndim)
{
    cJSON *array = cJSON_CreateArray();
    for (int i = 0; i < ndim; i++)
        cJSON_AddItemToArray(array, cJSON_CreateNumber((double)shape[i]));
    return array;
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

static kn_module *build_layer(const kapi_layer_spec *layer, kn_generator *gen)
{
    switch (layer->kind) {
    case KN_MODULE_LINEAR:
        return kn_linear_new(layer->in_features, layer->out_features, layer->bias, gen);
    case KN_MODULE_CONV2D:
        return kn_conv2d_new(layer->in_features, layer->out_channels, layer->kernel_size,
                             layer->conv, layer->bias, gen);
    case KN_MODULE_MAX_POOL2D:
        return kn_max_pool2d_new(layer->pool);
    case KN_MODULE_AVG_POOL2D:
        return kn_avg_pool2d_new(layer->pool);
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        return kn_adaptive_avg_pool2d_new(layer->output_size[0], layer->output_size[1]);
    case KN_MODULE_FLATTEN:
        return kn_flatten_new(layer->start_dim, layer->end_dim);
    case KN_MODULE_RELU:
        return kn_relu_new();
    case KN_MODULE_LEAKY_RELU:
        return kn_leaky_relu_new(layer->negative_slope);
    case KN_MODULE_GELU:
        return kn_gelu_new(layer->approximate);
    case KN_MODULE_TANH:
        return kn_tanh_new();
    case KN_MODULE_SIGMOID:
        return kn_sigmoid_new();
    case KN_MODULE_SOFTMAX:
        return kn_softmax_new(layer->dim);
    case KN_MODULE_DROPOUT:
        return kn_dropout_new(layer->p);
    case KN_MODULE_BATCH_NORM1D:
        return kn_batch_norm1d_new(layer->in_features, layer->eps, layer->momentum, layer->affine,
                                   layer->track_running_stats);
    case KN_MODULE_BATCH_NORM2D:
        return kn_batch_norm2d_new(layer->in_features, layer->eps, layer->momentum, layer->affine,
                                   layer->track_running_stats);
    case KN_MODULE_LAYER_NORM:
        return kn_layer_norm_new(layer->normalized_shape, layer->normalized_ndim, layer->eps,
                                 layer->elementwise_affine);
    case KN_MODULE_EMBEDDING:
        return kn_embedding_new(layer->num_embeddings, layer->embedding_dim, gen);
    case KN_MODULE_SEQUENTIAL:
        break;
    }
    return NULL;
}

kn_module *kapi_model_build(const kapi_model_spec *spec, kn_generator *gen)
{
    if (!spec) return NULL;
    kn_module *model = kn_sequential_new();
    if (!model) return NULL;
    for (int i = 0; i < spec->n_layers; i++) {
        /* layers are made in order so the generator is drawn as torch draws it */
        kn_module *child = build_layer(&spec->layers[i], gen);
        if (!child || kn_sequential_append(model, child) != KN_OK) {
            kn_module_free(model);
            return NULL;
        }
    }
    return model;
}
